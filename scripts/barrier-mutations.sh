#!/usr/bin/env bash
# Barrier mutation testing of the kernel families: deletes each `__syncthreads()` in
# kernels-cu/cuda/*.cu in turn (the emulator's KERNELS_CU_EMU_SKIP_BARRIER=FILE:LINE, so nothing is
# rebuilt) and runs the kernel tests on the emulator. A deletion that leaves every test green is
# a barrier whose absence the tests cannot see.
#
#   scripts/barrier-mutations.sh          with the emulator's memory checker (the default)
#   KERNELS_CU_EMU_CHECKS=0 scripts/barrier-mutations.sh   values only, as before the checker
set -euo pipefail
cd "$(dirname "$0")/.."

exes=()
collect() {
  cargo test --release --no-run --message-format=json "$@" 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m.get("profile", {}).get("test"):
        print(m["executable"])
'
}
while read -r e; do exes+=("$e"); done < <(collect -p kernels-cu --test device --test emulator)
while read -r e; do
  case "$e" in */matmul_props-*|*/integration_tests-*) ;; *) exes+=("$e") ;; esac
done < <(collect -p integration-tests)
[ "${#exes[@]}" -gt 0 ] || { echo "no test binaries built" >&2; exit 1; }

total=0
caught=0
survivors=()
while IFS=: read -r file line _; do
  total=$((total + 1))
  fam=$(basename "$file" .cu)
  # The family's own tests first: most deletions fail there, and the loop stops at the first.
  ordered=()
  for e in "${exes[@]}"; do case "$(basename "$e")" in "$fam"_*) ordered+=("$e") ;; esac; done
  for e in "${exes[@]}"; do case "$(basename "$e")" in "$fam"_*) ;; *) ordered+=("$e") ;; esac; done
  by=""
  for e in "${ordered[@]}"; do
    # A failing proptest would save its case beside the test source; these are deliberately
    # broken kernels, so nothing is saved (and shrinking, which only costs time, is off).
    if ! KERNELS_CU_EMU_SKIP_BARRIER="$file:$line" PROPTEST_DISABLE_FAILURE_PERSISTENCE=1 \
      PROPTEST_MAX_SHRINK_ITERS=0 timeout 600 "$e" -q >/dev/null 2>&1; then
      by=$(basename "$e" | sed 's/-[0-9a-f]*$//')
      break
    fi
  done
  if [ -n "$by" ]; then
    caught=$((caught + 1))
    echo "caught    $file:$line  (by $by)"
  else
    survivors+=("$file:$line")
    echo "NOT SEEN  $file:$line"
  fi
done < <(grep -n "__syncthreads();" kernels-cu/cuda/*.cu)

echo
echo "deleted barriers caught: $caught of $total (checker ${KERNELS_CU_EMU_CHECKS:-on})"
for s in "${survivors[@]}"; do echo "  not seen: $s"; done
