#!/usr/bin/env bash
# The kernel tests under the emulator's checkers, on the binaries that `cargo test --workspace
# --release` built (found through cargo's artifact list; for the same package selection that
# rebuilds nothing):
#   1. with the memory checker (races, cp.async, alignment, bounds), blocks and threads in
#      ascending order;
#   2. with KERNELS_CU_EMU_ORDER=all:SEED: every launch runs ascending, descending and in a
#      seeded random order from the same inputs and must give identical bytes. The checker is
#      off in this pass: its happens-before analysis does not depend on the order, and pass 1
#      has run it.
# The other emulator tests (the model step, the trainer) run the same kernels at larger sizes;
# CI runs them without the checker (see .ci/run).
#
#   scripts/ci-kernel-checks.sh [SEED]      (default seed 2026)
set -euo pipefail
cd "$(dirname "$0")/.."
seed="${1:-2026}"

mapfile -t exes < <(cargo test --workspace --release --no-run --message-format=json 2>/dev/null |
  python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    if not m.get("profile", {}).get("test"):
        continue
    pkg, target = m["package_id"], m["target"]["name"]
    # The kernel tests: integration-tests/tests/*_kernels.rs and kernels-cu'"'"'s emulator,
    # device, seeded-bug (checkers) and warpgroup MMA (wgmma) tests.
    if "integration-tests" in pkg and target.endswith("_kernels"):
        print(m["executable"])
    elif "/kernels-cu#" in pkg and target in ("emulator", "device", "checkers", "wgmma"):
        print(m["executable"])
')
[ "${#exes[@]}" -ge 10 ] || { echo "ci-kernel-checks: expected the kernel test binaries, found ${#exes[@]}" >&2; exit 1; }
for e in "${exes[@]}"; do
  echo "== $(basename "$e" | sed 's/-[0-9a-f]*$//') (memory checker)"
  KERNELS_CU_EMU_ORDER=ascending KERNELS_CU_EMU_CHECKS=1 "$e" -q
done
for e in "${exes[@]}"; do
  echo "== $(basename "$e" | sed 's/-[0-9a-f]*$//') (all orders, seed $seed)"
  KERNELS_CU_EMU_ORDER="all:$seed" KERNELS_CU_EMU_CHECKS=0 "$e" -q
done
