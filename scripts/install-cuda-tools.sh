#!/usr/bin/env bash
# Installs the CUDA compile tools that the kernels-cu gates need, without a CUDA toolkit or GPU:
#   NVRTC (libnvrtc.so.12 + builtins) from the pip wheel nvidia-cuda-nvrtc-cu12,
#   ptxas from the pip wheel nvidia-cuda-nvcc-cu12,
#   nvdisasm from the pip wheel nvidia-cuda-nvdisasm (no -cu12 wheel exists; the 13.x
#   disassembler reads the 12.4 ptxas cubins for sm_80..sm_90), for the SASS counts of the
#   performance model.
# Both are unpacked into .tools/cuda (ignored by git). Idempotent: a second run does nothing.
#
# Prints the environment to export, e.g.
#   eval "$(scripts/install-cuda-tools.sh --env)"
# which sets KERNELS_CU_NVRTC (path of libnvrtc.so.12), KERNELS_CU_PTXAS (path of ptxas) and
# KERNELS_CU_NVDISASM (path of nvdisasm).
set -euo pipefail
cd "$(dirname "$0")/.."

# CUDA 12.4: its NVRTC writes PTX ISA 8.4, which every driver from R550 on (CUDA 12.4+, including
# R580 / CUDA 13) loads. A newer NVRTC would raise the minimum driver of the embedded PTX.
NVRTC_VERSION="12.4.127"
NVCC_VERSION="12.4.131"
NVDISASM_VERSION="13.2.51"
ROOT="$PWD/.tools/cuda"
NVRTC_LIB="$ROOT/nvrtc/nvidia/cuda_nvrtc/lib/libnvrtc.so.12"
PTXAS_BIN="$ROOT/nvcc/nvidia/cuda_nvcc/bin/ptxas"
NVDISASM_BIN="$ROOT/nvdisasm/nvidia/cu13/bin/nvdisasm"

install_wheel() { # package version target-dir
  local pkg="$1" version="$2" dir="$3"
  if [ -f "$dir/.installed-$version" ]; then return; fi
  rm -rf "$dir" "$ROOT/dl-$pkg"
  mkdir -p "$dir" "$ROOT/dl-$pkg"
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
    --python-version 3.11 --dest "$ROOT/dl-$pkg" "$pkg==$version" >&2
  # A wheel is a zip file; python's zipfile avoids needing unzip on the machine.
  python3 - "$ROOT/dl-$pkg" "$dir" <<'PY'
import glob, os, sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
wheels = glob.glob(os.path.join(src, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one wheel in {src}, found {wheels}")
with zipfile.ZipFile(wheels[0]) as z:
    for info in z.infolist():
        name = info.filename
        # Keep only what the gates use: shared libraries, binaries and headers.
        if "/lib/" in name or "/bin/" in name or "/include/" in name:
            z.extract(info, dst)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(os.path.join(dst, name), mode)
PY
  rm -rf "$ROOT/dl-$pkg"
  touch "$dir/.installed-$version"
}

mode="${1:-}"
install_wheel nvidia-cuda-nvrtc-cu12 "$NVRTC_VERSION" "$ROOT/nvrtc"
install_wheel nvidia-cuda-nvcc-cu12 "$NVCC_VERSION" "$ROOT/nvcc"
install_wheel nvidia-cuda-nvdisasm "$NVDISASM_VERSION" "$ROOT/nvdisasm"
chmod +x "$PTXAS_BIN" "$NVDISASM_BIN"

test -f "$NVRTC_LIB" || { echo "install-cuda-tools: $NVRTC_LIB missing after install" >&2; exit 1; }
test -x "$PTXAS_BIN" || { echo "install-cuda-tools: $PTXAS_BIN missing after install" >&2; exit 1; }
test -x "$NVDISASM_BIN" || { echo "install-cuda-tools: $NVDISASM_BIN missing after install" >&2; exit 1; }

if [ "$mode" = "--env" ]; then
  echo "export KERNELS_CU_NVRTC='$NVRTC_LIB'"
  echo "export KERNELS_CU_PTXAS='$PTXAS_BIN'"
  echo "export KERNELS_CU_NVDISASM='$NVDISASM_BIN'"
else
  echo "NVRTC: $NVRTC_LIB" >&2
  echo "ptxas: $PTXAS_BIN" >&2
  echo "nvdisasm: $NVDISASM_BIN" >&2
  echo "export KERNELS_CU_NVRTC='$NVRTC_LIB' KERNELS_CU_PTXAS='$PTXAS_BIN' KERNELS_CU_NVDISASM='$NVDISASM_BIN'" >&2
fi
