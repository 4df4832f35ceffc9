#!/usr/bin/env bash
# Regenerates what kernels-cu keeps in the repository from the CUDA sources:
#   kernels-cu/ptx/<family>.ptx      PTX built ahead (NVRTC 12.4, compute_80), embedded in the binary
#   kernels-cu/ptxas-report.txt      ptxas -v resources per kernel for sm_80 and sm_90
#   kernels-cu/cubin/<family>.<arch>.cubin  ptxas output for sm_80/86/89/90, embedded beside the PTX
# Run it after changing anything under kernels-cu/cuda/. Installs the tools first if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/install-cuda-tools.sh --env)"
# Two passes: the first rewrites the PTX; the second rebuilds with the new PTX embedded, writes
# the report and the cubins from it, and checks everything is current.
KERNELS_CU_UPDATE=1 cargo test -p kernels-cu --release --test gates -- gate1_embedded_ptx_is_current
KERNELS_CU_UPDATE=1 cargo test -p kernels-cu --release --test gates -- gate2 gate3
cargo test -p kernels-cu --release --test gates
