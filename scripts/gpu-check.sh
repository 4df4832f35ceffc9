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
#   .gpu-bundle/gpu-check.sh sanitize     on the GPU machine: the GPU tests again under
#                                         compute-sanitizer (memcheck, racecheck, synccheck,
#                                         initcheck), within GPU_CHECK_SANITIZER_BUDGET seconds
#                                         (default 420); appends to report.md.
#   scripts/gpu-check.sh                  both, on a machine that has Rust and a GPU.
#
# compute-sanitizer: the GPU machine's own where it has one (/usr/local/cuda/bin on CUDA
# images), else the bundle's, from the pip wheel nvidia-cuda-sanitizer-api 13.0 (the cu12 wheels
# ship only its libraries): scripts/install-cuda-tools.sh --sanitizer. It needs an R580+ driver;
# on an older one the sanitize step says so and fails. GPU_CHECK_SANITIZER=0 leaves it out of
# the bundle.
#
# For a short lease, split the work over calls: GPU_CHECK_PHASES (any of "tests step predict
# decode bench", default all of those, and "profile": Nsight Compute on the hot kernels),
# GPU_CHECK_TESTS (test binary names; default all), GPU_CHECK_BENCHES (benchmark names; default
# all), GPU_CHECK_BENCH_TIME (criterion warm-up and measurement seconds; default "1 2"),
# GPU_CHECK_TIMEOUT (seconds per binary; default 240), GPU_CHECK_SANITIZER_TOOLS (default
# "memcheck racecheck synccheck initcheck"), GPU_CHECK_SANITIZER_BUDGET and _TIMEOUT.
# On an H200 (2026-12-04) the whole `run` took 250 s with GPU_CHECK_BENCH_TIME="0.5 1", and
# `sanitize` 230 s with a 60 s limit per binary (the GEMM tests under racecheck need more).
#
# Packages whose tests are bundled: GPU_CHECK_TEST_PACKAGES (default "kernels-cu integration-tests
# model-falcon trainer", GPU tests only; the trainer's run bin/trainer through TRAINER_BIN); release
# binaries: GPU_CHECK_BIN_PACKAGES (default "trainer"; skipped with a warning if they do not
# build). The binaries load libcuda.so.1 from the driver at run time and need no NVRTC or
# toolkit: the kernels are embedded as cubins (sm_80/86/89/90) and PTX. Everything must finish
# within 8 minutes on an H200. The binaries travel as one solid xz archive (payload.tar.xz):
# each embeds the same kernel images, which a solid archive stores once.
# Record the report's numbers in BENCHMARKS.md (GPU, date, commit).
set -euo pipefail

MAX_BUNDLE_BYTES=$((60 * 1024 * 1024))
PER_BINARY_TIMEOUT="${GPU_CHECK_TIMEOUT:-240}"

build() {
  cd "$(dirname "$0")/.."
  local bundle="$PWD/.gpu-bundle"
  local tests="${GPU_CHECK_TEST_PACKAGES:-kernels-cu integration-tests model-falcon trainer}"
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
    # Of the model's, the training step and decoding on the device; of the trainer's, training,
    # ask, eval and generate with --device cuda (they run the bundled bin/trainer, TRAINER_BIN).
    if pkg == "model-falcon" and m["target"]["name"] not in ("cuda_step", "cuda_generate"):
        continue
    if pkg == "trainer" and m["target"]["name"] not in ("cuda_train", "generate_device"):
        continue
    seen.add(name)
    shutil.copy2(m["executable"], os.path.join(bundle, "tests", name))
    print("  test binary:", name)
PY
  rm -f "$bundle/.cargo-tests.json"

  echo "== building the Falcon-7B step benchmark"
  cargo build --release -p model-falcon --example falcon_step_gpu --example perf_table --example decode_table
  cp target/release/examples/falcon_step_gpu target/release/examples/perf_table \
    target/release/examples/decode_table "$bundle/step/"

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

  mkdir -p "$bundle/sanitizer"
  if [ "${GPU_CHECK_SANITIZER:-1}" != 0 ]; then
    echo "== compute-sanitizer"
    local san sandir
    san=$(scripts/install-cuda-tools.sh --sanitizer)
    sandir=$(dirname "$(dirname "$san")")
    # The launcher finds its injection libraries beside itself.
    cp "$san" "$sandir"/lib/*.so "$bundle/sanitizer/"
  fi

  # One solid archive: `run` unpacks it.
  (cd "$bundle" && tar -cf - tests bench bin step sanitizer | xz -9 -T1 >payload.tar.xz)
  rm -rf "$bundle"/tests "$bundle"/bench "$bundle"/bin "$bundle"/step "$bundle"/sanitizer
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

unpack() {
  [ -e payload.tar.xz ] || return 0
  if command -v xz >/dev/null; then
    tar -xJf payload.tar.xz
  else
    python3 -c 'import lzma, tarfile; tarfile.open(fileobj=lzma.open("payload.tar.xz")).extractall()'
  fi
  rm -f payload.tar.xz
}

# The GPU tests under each compute-sanitizer tool: the hazards only a GPU shows. racecheck sees
# shared-memory races between warps as the hardware schedules them, synccheck barrier misuse,
# memcheck out-of-bounds and misaligned device accesses, initcheck reads of uninitialised
# device memory.
sanitize() {
  local bundle
  bundle="$(cd "${1:-$(dirname "$0")}" && pwd)"
  local report="$bundle/report.md"
  local budget="${GPU_CHECK_SANITIZER_BUDGET:-420}"
  local per_run="${GPU_CHECK_SANITIZER_TIMEOUT:-150}"
  local failed=0
  cd "$bundle"
  unpack
  chmod +x tests/* sanitizer/compute-sanitizer 2>/dev/null || true
  log() { echo "$@" | tee -a "$report"; }
  log ""
  log "## compute-sanitizer"
  log ""
  # The GPU machine's own compute-sanitizer first (CUDA images carry it), else the bundle's.
  # On an H200 with driver 580.159 (2026-12-04) the pip wheel's launcher ended every run with
  # "Target application terminated before first instrumented API call" while the image's
  # /usr/local/cuda/bin/compute-sanitizer (2025.3.1) worked.
  local san
  san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer \
    /usr/local/cuda*/compute-sanitizer/compute-sanitizer 2>/dev/null | head -1 || true)
  if [ -z "$san" ] || [ ! -x "$san" ]; then
    san=sanitizer/compute-sanitizer
  fi
  if [ ! -x "$san" ]; then
    log "compute-sanitizer is neither in the bundle (built with GPU_CHECK_SANITIZER=0) nor installed: NOT RUN"
    return 1
  fi
  log '```'
  echo "$san" | tee -a "$report"
  "$san" --version 2>&1 | tail -1 | tee -a "$report"
  log '```'
  # The kernel tests: every kernel family and the execution-model self-tests.
  local set=()
  for t in tests/kernels-cu-device tests/kernels-cu-emulator tests/tests-*_kernels; do
    [ -x "$t" ] && set+=("$t")
  done
  log ""
  log "| tool | binary | result | seconds |"
  log "| --- | --- | --- | --- |"
  export KERNELS_CU_REQUIRE_GPU=1
  local start_all tool t
  start_all=$(date +%s)
  for tool in ${GPU_CHECK_SANITIZER_TOOLS:-memcheck racecheck synccheck initcheck}; do
    for t in "${set[@]}"; do
      local name start status rc
      name=$(basename "$t")
      if [ $(($(date +%s) - start_all)) -ge "$budget" ]; then
        log "| $tool | $name | not run (budget of ${budget}s spent) | 0 |"
        failed=1
        continue
      fi
      start=$(date +%s)
      rc=0
      # racecheck on one test thread (with four it lost track of a launch: "Internal Sanitizer
      # Error: Detected a failure to track a kernel launch", H200, 2026-12-04) and with twice
      # the time limit (the slowest tool: the GEMM tests did not finish in 60 s).
      # The skipped test asks for device 1000000 on purpose, an API error memcheck reports.
      local threads=4 limit="$per_run"
      [ "$tool" = racecheck ] && threads=1 && limit=$((2 * per_run))
      timeout "$limit" "$san" --tool "$tool" --error-exitcode 86 \
        "$t" --test-threads "$threads" --skip cuda_device_without_driver_is_an_error_not_a_panic \
        >"$t.$tool.log" 2>&1 || rc=$?
      if [ "$rc" = 0 ]; then status=pass; else status="FAIL (exit $rc, see $t.$tool.log)"; failed=1; fi
      if grep -q "Internal Sanitizer Error" "$t.$tool.log"; then status="$status (sanitizer internal error)"; fi
      log "| $tool | $name | $status $(grep -E 'ERROR SUMMARY' "$t.$tool.log" | tail -1 | sed 's/^=* *//') | $(($(date +%s) - start)) |"
    done
  done
  if grep -qsi "driver" tests/*.memcheck.log && grep -qsi "insufficient\|not supported\|unsupported" tests/*.memcheck.log; then
    log ""
    log "compute-sanitizer reports an unsupported driver: version 13.0 needs R580 or newer."
  fi
  return $failed
}

run() {
  local bundle
  bundle="$(cd "${1:-$(dirname "$0")}" && pwd)"
  local report="$bundle/report.md"
  local failed=0
  cd "$bundle"
  unpack
  chmod +x tests/* bench/* bin/* step/* 2>/dev/null || true
  : >"$report"
  log() { echo "$@" | tee -a "$report"; }
  # GPU_CHECK_PHASES picks parts of the check (default: all of them, in this order), so that a
  # short lease can split them over calls; GPU_CHECK_BENCH_TIME sets criterion's warm-up and
  # measurement windows in seconds (default "1 2").
  # The files named in $2 (space-separated) in folder $1, one per line; all of it when empty.
  pick() {
    local n
    if [ -n "$2" ]; then
      for n in $2; do echo "$1/$n"; done
    else
      printf '%s\n' "$1"/*
    fi
  }
  local phases=" ${GPU_CHECK_PHASES:-tests step predict decode bench} "
  phase() { [[ "$phases" == *" $1 "* ]]; }
  local bench_time
  read -r -a bench_time <<<"${GPU_CHECK_BENCH_TIME:-1 2}"
  local bench_args=(--bench --warm-up-time "${bench_time[0]}" --measurement-time "${bench_time[1]}")

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
  export KERNELS_CU_REQUIRE_GPU=1
  # The trainer's device tests run this binary instead of the build tree's.
  export TRAINER_BIN="$bundle/bin/trainer"
  if phase tests; then
    log "## Tests (real GPU, KERNELS_CU_REQUIRE_GPU=1)"
    log ""
    log "| binary | result | seconds |"
    log "| --- | --- | --- |"
    # GPU_CHECK_TESTS: the test binaries to run, by name (default: all in the bundle).
    local test_set=()
    mapfile -t test_set < <(pick tests "${GPU_CHECK_TESTS:-}")
    for t in "${test_set[@]}"; do
      [ -x "$t" ] || continue
      local start status
      start=$(date +%s)
      if timeout "$PER_BINARY_TIMEOUT" "$t" >"$t.log" 2>&1; then status=pass; else status="FAIL (see $t.log)"; failed=1; fi
      log "| $(basename "$t") | $status $(grep -E '^test result' "$t.log" | tail -1 | sed 's/test result: //') | $(($(date +%s) - start)) |"
    done
    log ""
  fi
  if phase step; then
    log "## Falcon-7B-shaped QLoRA step (random NF4 base, LoRA r=8, recompute, AdamW every step)"
    log ""
    log '```'
    for targets in query_key_value query_key_value,dense,dense_h_to_4h,dense_4h_to_h; do
      log "targets: $targets"
      timeout "$PER_BINARY_TIMEOUT" step/falcon_step_gpu --batch 2 --seq 512 --steps 5 --targets "$targets" 2>&1 | tee -a "$report" || { failed=1; log "falcon_step_gpu failed"; }
    done
    log '```'
    log ""
  fi
  # Nsight Compute on the step's hot kernels, opt-in (add "profile" to GPU_CHECK_PHASES; about
  # a minute): one step of a 2-layer model at Falcon-7B's shapes, the first launches of each
  # kernel family, with the sections that say what bounds a kernel (speed of light, compute
  # and memory workload, warp stall reasons, occupancy, scheduler and instruction statistics;
  # for the NF4 GEMMs also the source counters). The clocks are left as they are
  # (--clock-control none). Full text in ncu-*.txt beside the report and appended to it.
  if phase profile; then
    log "## Nsight Compute: the step's hot kernels (2 layers, batch 2 x 512)"
    log ""
    local ncu
    ncu=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1 || true)
    if [ -z "$ncu" ]; then
      log "ncu not found: NOT RUN"
      failed=1
    else
      log '```'
      local k
      for k in nf4_gemm_fwd_wgmma nf4_gemm_bwd_wgmma attn_fwd attn_bwd_dkdv gemm_bf16_nt_f32; do
        timeout "$PER_BINARY_TIMEOUT" "$ncu" --clock-control none --kernel-name "regex:^$k" \
          --launch-count 4 --section SpeedOfLight --section ComputeWorkloadAnalysis \
          --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy \
          --section LaunchStats --section SchedulerStats --section InstructionStats \
          $([[ "$k" == nf4_* ]] && echo --section SourceCounters) step/falcon_step_gpu --layers 2 --batch 2 --seq 512 --steps 1 \
          >"ncu-$k.txt" 2>&1 || { failed=1; log "ncu on $k failed (see ncu-$k.txt)"; }
        cat "ncu-$k.txt" >>"$report"
      done
      log '```'
    fi
    log ""
  fi
  # The performance model's prediction for the same steps and for every distinct launch of
  # them, beside the measurements above and the benchmarks below (same Falcon-7B shapes):
  # the first run on a GPU calibrates the model (record both in BENCHMARKS.md).
  local gpu_name
  gpu_name="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)"
  if phase predict; then
    log "## PREDICTED by the performance model for ${gpu_name:-h200} (same steps; per launch)"
    log ""
    for targets in query_key_value all-linear; do
      step/perf_table --gpu "${gpu_name:-h200}" --batch 2 --seq 512 --targets "$targets" --top 12 \
        $([ "$targets" = query_key_value ] && echo --launches) 2>&1 | tee -a "$report" \
        || step/perf_table --gpu h200 --targets "$targets" 2>&1 | tee -a "$report" || true
      log ""
    done
    log ""
  fi
  # Decoding: the model's prediction, then the decode kernels measured at the same Falcon-7B
  # shapes (decode_gpu: the GEMV at M = 1, 8, 32, attention at batch 1 and 32), first, so that
  # they stand next to each other in the report (record both in BENCHMARKS.md).
  if phase decode; then
    log "## Decoding: PREDICTED (performance model) and measured (decode_gpu)"
    log ""
    log '```'
    step/decode_table --gpu "${gpu_name:-h200}" 2>&1 | tee -a "$report" \
      || step/decode_table --gpu h200 2>&1 | tee -a "$report" || true
    if [ -x bench/decode_gpu ]; then
      timeout "$PER_BINARY_TIMEOUT" bench/decode_gpu "${bench_args[@]}" 2>&1 | tee -a "$report" || { failed=1; log "decode_gpu failed"; }
    else
      failed=1
      log "decode_gpu is missing from the bundle"
    fi
    log '```'
    log ""
  fi
  if phase bench; then
    log "## Benchmarks"
    log ""
    log '```'
    # GPU_CHECK_BENCHES: the benchmarks to run, by name (default: all in the bundle).
    local bench_set=()
    mapfile -t bench_set < <(pick bench "${GPU_CHECK_BENCHES:-}")
    for b in "${bench_set[@]}"; do
      [ -x "$b" ] || continue
      [ "$(basename "$b")" = decode_gpu ] && continue  # measured above, next to its prediction
      # --bench: criterion runs the measurements (kc_bench ignores the flags); short windows keep
      # the whole run within the time budget.
      timeout "$PER_BINARY_TIMEOUT" "$b" "${bench_args[@]}" 2>&1 | tee -a "$report" || { failed=1; log "$(basename "$b") failed"; }
    done
    log '```'
    log ""
  fi
  echo "report: $report"
  return $failed
}

case "${1:-all}" in
  build) build ;;
  run) run "${2:-}" ;;
  sanitize) sanitize "${2:-}" ;;
  all)
    build
    "$(dirname "$0")/../.gpu-bundle/gpu-check.sh" run
    "$(dirname "$0")/../.gpu-bundle/gpu-check.sh" sanitize
    ;;
  *)
    echo "usage: $0 [build | run [bundle-dir] | sanitize [bundle-dir] | all]" >&2
    exit 2
    ;;
esac
