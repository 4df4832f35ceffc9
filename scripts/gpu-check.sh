#!/usr/bin/env bash
# GPU check in two halves, for a GPU machine without Rust, without network, and with at most
# 64 MiB brought to it.
#
#   scripts/gpu-check.sh build            on the build machine: release binaries, test binaries
#                                         (cargo test --release --no-run) and benchmarks, stripped,
#                                         into .gpu-bundle/ (ignored by git), with this script.
#   .gpu-bundle/gpu-check.sh run          on the GPU machine (copy .gpu-bundle/ there): prints the
#                                         device, runs every test binary against the real GPU
#                                         (KERNELS_CU_REQUIRE_GPU=1: a GPU that does not open
#                                         fails), a Falcon-7B-shaped QLoRA step at batch 2 x 512
#                                         (tokens/s, MFU, peak device memory), the performance
#                                         model's prediction of the same step and of each of its
#                                         launches, the benchmarks, and writes report.md.
#   scripts/gpu-check.sh                  both, on a machine that has Rust and a GPU.
#
# Packages whose tests are bundled: GPU_CHECK_TEST_PACKAGES (default "kernels-cu integration-tests
# model-falcon", GPU tests only); release
# binaries: GPU_CHECK_BIN_PACKAGES (default "trainer"; skipped with a warning if they do not
# build). The binaries load libcuda.so.1 from the driver at run time and need no NVRTC or
# toolkit: the kernels are embedded as PTX. Everything must finish within 8 minutes on an H200.
# Record the report's numbers in BENCHMARKS.md (GPU, date, commit).
set -euo pipefail

MAX_BUNDLE_BYTES=$((60 * 1024 * 1024))
PER_BINARY_TIMEOUT="${GPU_CHECK_TIMEOUT:-240}"

build() {
  cd "$(dirname "$0")/.."
  local bundle="$PWD/.gpu-bundle"
  local tests="${GPU_CHECK_TEST_PACKAGES:-kernels-cu integration-tests model-falcon}"
  local bins="${GPU_CHECK_BIN_PACKAGES:-trainer}"
  rm -rf "$bundle"
  mkdir -p "$bundle/tests" "$bundle/bin" "$bundle/bench" "$bundle/step"

  local pargs=()
  for p in $tests; do pargs+=(-p "$p"); done
  echo "== building test binaries: $tests"
  cargo test --release --no-run "${pargs[@]}" --message-format=json 2>/dev/null >"$bundle/.cargo-tests.json" || {
    cargo test --release --no-run "${pargs[@]}" # show the errors
    exit 1
  }
  python3 - "$bundle" <<'PY'
import json, shutil, sys, os
bundle = sys.argv[1]
seen = set()
for line in open(os.path.join(bundle, ".cargo-tests.json")):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable") or not m.get("profile", {}).get("test"):
        continue
    pkg = m["package_id"].split("#")[0].rstrip("/").split("/")[-1].split("@")[0]
    name = f'{pkg}-{m["target"]["name"]}'
    # Tests that never touch a GPU stay home: the compile/resource gates (they need NVRTC and
    # ptxas, which the GPU machine lacks), the AddressSanitizer build, CPU-only property tests.
    if name in seen or name in ("kernels-cu-gates", "kernels-cu-asan", "tests-matmul_props"):
        continue
    # Of the model's, only the training step on the device.
    if pkg == "model-falcon" and m["target"]["name"] != "cuda_step":
        continue
    seen.add(name)
    shutil.copy2(m["executable"], os.path.join(bundle, "tests", name))
    print("  test binary:", name)
PY
  rm -f "$bundle/.cargo-tests.json"

  echo "== building the Falcon-7B step benchmark"
  cargo build --release -p model-falcon --example falcon_step_gpu --example perf_table
  cp target/release/examples/falcon_step_gpu target/release/examples/perf_table "$bundle/step/"

  echo "== building benchmarks"
  cargo build --release -p kernels-cu --example kc_bench
  cp target/release/examples/kc_bench "$bundle/bench/"
  # The criterion benchmarks of the kernel families (benches/benches/*_gpu.rs; they skip
  # without a GPU).
  for f in benches/benches/*_gpu.rs; do
    local name exe
    name=$(basename "$f" .rs)
    exe=$(cargo bench --no-run -p benches --bench "$name" 2>&1 | sed -n 's/.*Executable.*(\(.*\)).*/\1/p' | tail -1)
    if [ -n "$exe" ] && [ -x "$exe" ]; then cp "$exe" "$bundle/bench/$name"; else
      echo "WARNING: benchmark $name does not build; it is not in the bundle" >&2
    fi
  done

  for p in $bins; do
    echo "== building release binaries of $p"
    if cargo build --release -p "$p" --bins; then
      find target/release -maxdepth 1 -type f -executable -name "$p" -exec cp {} "$bundle/bin/" \;
    else
      echo "WARNING: $p does not build; its binaries are not in the bundle" >&2
    fi
  done

  strip "$bundle"/tests/* "$bundle"/bench/* "$bundle"/bin/* "$bundle"/step/* 2>/dev/null || true
  # Compressed, the binaries travel in a third of the space; `run` unpacks them.
  gzip -9 "$bundle"/tests/* "$bundle"/bench/* "$bundle"/bin/* "$bundle"/step/*
  cp "$0" "$bundle/gpu-check.sh"
  chmod +x "$bundle/gpu-check.sh"
  cp kernels-cu/ptxas-report.txt "$bundle/"
  {
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m)"
    echo "rustc: $(rustc --version)"
  } >"$bundle/BUILD_INFO"
  local size
  size=$(du -sb "$bundle" | cut -f1)
  echo "== bundle: $bundle, $((size / 1024 / 1024)) MiB"
  if [ "$size" -gt "$MAX_BUNDLE_BYTES" ]; then
    echo "ERROR: the bundle exceeds $((MAX_BUNDLE_BYTES / 1024 / 1024)) MiB" >&2
    exit 1
  fi
}

run() {
  local bundle
  bundle="$(cd "${1:-$(dirname "$0")}" && pwd)"
  local report="$bundle/report.md"
  local failed=0
  cd "$bundle"
  for z in tests/*.gz bench/*.gz bin/*.gz step/*.gz; do
    [ -e "$z" ] && gunzip -f "$z"
  done
  chmod +x tests/* bench/* bin/* step/* 2>/dev/null || true
  : >"$report"
  log() { echo "$@" | tee -a "$report"; }

  log "# GPU check"
  log ""
  log '```'
  cat BUILD_INFO | tee -a "$report"
  log "run: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1 | tee -a "$report" || true
  else
    log "nvidia-smi: not found"
  fi
  if ldconfig -p 2>/dev/null | grep -q 'libcuda.so.1'; then
    log "libcuda.so.1: $(ldconfig -p | grep 'libcuda.so.1' | head -1 | sed 's/.*=> //')"
  else
    log "libcuda.so.1: not in the ldconfig cache (set LD_LIBRARY_PATH to the driver's directory)"
  fi
  log '```'
  log ""
  log "## Tests (real GPU, KERNELS_CU_REQUIRE_GPU=1)"
  log ""
  log "| binary | result | seconds |"
  log "| --- | --- | --- |"
  export KERNELS_CU_REQUIRE_GPU=1
  for t in tests/*; do
    [ -x "$t" ] || continue
    local start status
    start=$(date +%s)
    if timeout "$PER_BINARY_TIMEOUT" "$t" >"$t.log" 2>&1; then status=pass; else status="FAIL (see $t.log)"; failed=1; fi
    log "| $(basename "$t") | $status $(grep -E '^test result' "$t.log" | tail -1 | sed 's/test result: //') | $(($(date +%s) - start)) |"
  done
  log ""
  log "## Falcon-7B-shaped QLoRA step (random NF4 base, LoRA r=8, recompute, AdamW every step)"
  log ""
  log '```'
  for targets in query_key_value query_key_value,dense,dense_h_to_4h,dense_4h_to_h; do
    log "targets: $targets"
    timeout "$PER_BINARY_TIMEOUT" step/falcon_step_gpu --batch 2 --seq 512 --steps 5 --targets "$targets" 2>&1 | tee -a "$report" || { failed=1; log "falcon_step_gpu failed"; }
  done
  log '```'
  log ""
  # The performance model's prediction for the same steps and for every distinct launch of
  # them, beside the measurements above and the benchmarks below (same Falcon-7B shapes):
  # the first run on a GPU calibrates the model (record both in BENCHMARKS.md).
  local gpu_name
  gpu_name="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)"
  log "## PREDICTED by the performance model for ${gpu_name:-h200} (same steps; per launch)"
  log ""
  for targets in query_key_value all-linear; do
    step/perf_table --gpu "${gpu_name:-h200}" --batch 2 --seq 512 --targets "$targets" --top 12 \
      $([ "$targets" = query_key_value ] && echo --launches) 2>&1 | tee -a "$report" \
      || step/perf_table --gpu h200 --targets "$targets" 2>&1 | tee -a "$report" || true
    log ""
  done
  log ""
  log "## Benchmarks"
  log ""
  log '```'
  for b in bench/*; do
    [ -x "$b" ] || continue
    # --bench: criterion runs the measurements (kc_bench ignores the flags); short windows keep
    # the whole run within the time budget.
    timeout "$PER_BINARY_TIMEOUT" "$b" --bench --warm-up-time 1 --measurement-time 2 2>&1 | tee -a "$report" || { failed=1; log "$(basename "$b") failed"; }
  done
  log '```'
  log ""
  echo "report: $report"
  return $failed
}

case "${1:-all}" in
  build) build ;;
  run) run "${2:-}" ;;
  all)
    build
    "$(dirname "$0")/../.gpu-bundle/gpu-check.sh" run
    ;;
  *)
    echo "usage: $0 [build | run [bundle-dir] | all]" >&2
    exit 2
    ;;
esac
