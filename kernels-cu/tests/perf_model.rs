//! The performance model (`kernels_cu::perf`): hand-checked FLOP and byte counts of a few
//! launches, occupancy and wave efficiency at the shapes the step uses, the launch checker on
//! seeded violations, and the recording / dry-run backends.

use kernels_cu::perf::model::{estimate, occupancy, resources, waves};
use kernels_cu::perf::{cost, gpu, validate, DryRun, LaunchRecord, Recording};
use kernels_cu::{kernels, Arg, ArgValue, DType, Device, Dim3, Kernel, Launch};

fn ptr(dtype: DType, mutable: bool) -> ArgValue {
    ArgValue::Ptr {
        addr: 0,
        dtype,
        mutable,
    }
}

fn record(kernel: Kernel, grid: Dim3, block: u32, smem: u32, args: Vec<ArgValue>) -> LaunchRecord {
    let reach = args.iter().map(|_| None).collect();
    LaunchRecord {
        kernel,
        grid,
        block: Dim3::x(block),
        shared_bytes: smem,
        args,
        reach,
    }
}

/// Falcon-7B's fused QKV projection at 2 x 512 tokens: M = 1024, N = 4672, K = 4544.
fn qkv_gemm(kernel: Kernel, beta: f32) -> LaunchRecord {
    let mut args = vec![
        ptr(DType::BF16, true),
        ptr(DType::BF16, false),
        ptr(DType::BF16, false),
    ];
    args.extend([
        ArgValue::I32(1024),
        ArgValue::I32(4672),
        ArgValue::I32(4544),
        ArgValue::I32(4544),
        ArgValue::I32(4544),
        ArgValue::F32(1.0),
        ArgValue::F32(beta),
    ]);
    record(kernel, Dim3::xy(37, 8), 256, 81920, args)
}

#[test]
fn bf16_gemm_flops_and_bytes_are_the_hand_counts() {
    let c = cost(&qkv_gemm(kernels::GEMM_BF16_NT_BF16, 0.0));
    // 2·M·N·K
    assert_eq!(c.tensor_flops, 43_478_155_264.0);
    // A 2·M·K = 9,306,112; B 2·N·K = 42,459,136; C written 2·M·N = 9,568,256.
    assert_eq!(c.bytes, 61_333_504.0);
    // β ≠ 0 reads C too.
    let c1 = cost(&qkv_gemm(kernels::GEMM_BF16_NT_BF16, 1.0));
    assert_eq!(c1.bytes, 61_333_504.0 + 9_568_256.0);
}

/// The NF4 forward GEMM of the QKV projection with `splits` reduction splits.
fn nf4_qkv(splits: u32) -> LaunchRecord {
    let mut args = vec![
        ptr(DType::BF16, true),
        ptr(DType::F32, true),
        ptr(DType::U32, true),
        ptr(DType::BF16, false),
        ptr(DType::U8, false),
    ];
    args.extend([
        ptr(DType::U8, false),
        ptr(DType::F32, false),
        ptr(DType::F32, false),
    ]);
    args.extend([
        ptr(DType::F32, false),
        ArgValue::F32(0.03),
        ArgValue::I32(1024),
        ArgValue::I32(4672),
        ArgValue::I32(4544),
        ArgValue::F32(1.0),
        ArgValue::F32(0.0),
        ArgValue::I32(0),
    ]);
    let smem = kernels_cu::ops::gemm::nf4_shared_bytes() as u32;
    record(
        kernels::NF4_GEMM_FWD_BF16,
        Dim3::xyz(37, 8, splits),
        256,
        smem,
        args,
    )
}

#[test]
fn nf4_gemm_flops_bytes_and_decode_are_the_hand_counts() {
    let c = cost(&nf4_qkv(1));
    assert_eq!(c.tensor_flops, 43_478_155_264.0);
    // 8 M-tiles of 128 rows, each decoding all 4672·4544 = 21,229,568 weights once per warp
    // row (2).
    assert_eq!(c.decoded_elements, 2.0 * 169_836_544.0);
    assert!(c.decode_overlapped);
    // x 2·1024·4544 = 9,306,112; W ½ + 1/64 byte per weight = 10,946,496; y 2·1024·4672.
    assert_eq!(c.bytes, 9_306_112.0 + 10_946_496.0 + 9_568_256.0);
    // Three splits: three fp32 partial tiles per output tile (296 of 128 x 128) written, all
    // read back but the last block's own (5 tile passes).
    let c3 = cost(&nf4_qkv(3));
    assert_eq!(c3.tensor_flops, c.tensor_flops);
    assert_eq!(c3.bytes, c.bytes + 5.0 * 4.0 * 296.0 * 16384.0);
    // A launch of the last 4 of the 37 tile columns (col0 = 33: outputs 4224 .. 4672) does
    // 448 / 4672 of the work and reads that share of W (and all of x).
    let mut tail = nf4_qkv(1);
    tail.grid = Dim3::xyz(4, 8, 1);
    *tail.args.last_mut().unwrap() = ArgValue::I32(33);
    let t = cost(&tail);
    assert_eq!(t.tensor_flops, 2.0 * 1024.0 * 448.0 * 4544.0);
    assert_eq!(t.decoded_elements, 2.0 * 8.0 * 448.0 * 4544.0);
    assert_eq!(
        t.bytes,
        9_306_112.0 + 448.0 * 4544.0 * (0.5 + 1.0 / 64.0) + 2.0 * 1024.0 * 448.0
    );
    // The last column tile hangs over the output (4672 = 36.5 x 128): 64 columns.
    tail.grid = Dim3::xyz(1, 8, 1);
    *tail.args.last_mut().unwrap() = ArgValue::I32(36);
    assert_eq!(cost(&tail).tensor_flops, 2.0 * 1024.0 * 64.0 * 4544.0);
}

#[test]
fn nf4_split_k_fills_the_waves_of_the_issue_shapes() {
    let h200 = gpu("h200").unwrap();
    let one = estimate(h200, &nf4_qkv(1));
    let four = estimate(h200, &nf4_qkv(4));
    // 296 tiles: 3 SM waves for 2.24 of work; x4: 1184 blocks in 9 waves (99.7 %).
    assert!((one.waves.efficiency - 296.0 / 396.0).abs() < 1e-12);
    assert!((four.waves.efficiency - 1184.0 / 1188.0).abs() < 1e-12);
    assert!(four.time_us.is_finite() && one.time_us.is_finite());
}

/// The launcher's schedule at the step's shapes on an H200 (132 SMs, 2 blocks each): the
/// whole columns of the full waves unsplit, the last partial wave's split to fill the slots.
#[test]
fn nf4_schedule_splits_only_the_last_partial_wave() {
    use kernels_cu::ops::gemm::{
        nf4_schedule, nf4_shared_bytes, nf4_slots, nf4_wgmma_shared_bytes, Nf4Schedule,
    };
    let sched = |head_cols, tail_splits| Nf4Schedule {
        head_cols,
        tail_splits,
    };
    let h200 = gpu("h200").unwrap();
    let slots = nf4_slots(
        h200.sms as usize,
        h200.smem_per_block_optin as usize,
        nf4_wgmma_shared_bytes(),
    );
    assert_eq!(slots, 264);
    // qkv forward, 8 x 37 tiles, 71 steps: 33 columns (264 tiles) unsplit, the 4 left (32
    // tiles) in 8 (256 blocks; 71 / 8 keeps 8 steps each, 9 would keep 7).
    assert_eq!(nf4_schedule(8, 37, 71, slots), sched(33, 8));
    // dense and the qkv input gradient, 8 x 36: 24 tiles left, also in 8.
    assert_eq!(nf4_schedule(8, 36, 71, slots), sched(33, 8));
    // mlp_up forward, 8 x 142 (4.3 waves): 132 columns in 4 full waves, 80 tiles in 3.
    assert_eq!(nf4_schedule(8, 142, 71, slots), sched(132, 3));
    // mlp_down forward, K = 18176 (284 steps): the 24 tiles left in 11 (264 blocks).
    assert_eq!(nf4_schedule(8, 36, 284, slots), sched(33, 11));
    // 256 tokens (2 x 37 tiles, less than a wave): all of it split in 3 (222 blocks).
    assert_eq!(nf4_schedule(2, 37, 71, slots), sched(0, 3));
    // Whole waves, a reduction too short to split, an unknown device: one unsplit launch.
    assert_eq!(nf4_schedule(8, 33, 71, slots), Nf4Schedule::split(1));
    assert_eq!(nf4_schedule(8, 37, 15, slots), Nf4Schedule::split(1));
    assert_eq!(nf4_schedule(8, 37, 71, 0), Nf4Schedule::split(1));
    // A tail too large to split in two (17 columns, 136 tiles): no tail.
    assert_eq!(nf4_schedule(8, 50, 71, slots), Nf4Schedule::split(1));
    assert_eq!(nf4_schedule(8, 49, 71, slots), sched(33, 2));
    // Slots: one ~70 KB block per SM where an SM has ~100 KB (sm_86), two on sm_80.
    assert_eq!(nf4_slots(84, 99 * 1024, nf4_shared_bytes()), 84);
    assert_eq!(nf4_slots(108, 163 * 1024, nf4_shared_bytes()), 216);
}

#[test]
fn causal_attention_flops_count_the_lower_triangle_of_tiles() {
    // Falcon-7B: 71 query heads, 1 kv head, d = 64, batch 2, 512 tokens, causal.
    let mut args = vec![ptr(DType::BF16, true), ptr(DType::F32, true)];
    args.extend([
        ptr(DType::BF16, false),
        ptr(DType::BF16, false),
        ptr(DType::BF16, false),
    ]);
    args.extend([
        ptr(DType::U8, false),
        ArgValue::I32(1),
        ArgValue::I32(71),
        ArgValue::I32(1),
        ArgValue::I32(512),
        ArgValue::I32(512),
        ArgValue::I32(1),
        ArgValue::F32(0.125),
    ]);
    let r = record(kernels::ATTN_FWD_D64, Dim3::xyz(8, 71, 2), 128, 0, args);
    let c = cost(&r);
    // 8 query tiles: 8·9/2 = 36 of the 64 tiles; per tile 2 products of 2·64·64·64 FLOPs;
    // 2·71 (batch, head) pairs: 36 · 1,048,576 · 142.
    assert_eq!(c.tensor_flops, 5_360_320_512.0);
    // q and o 2·2·71·512·64 bytes each, k and v 2·2·1·512·64 each, lse 4·2·71·512.
    let q = 2.0 * 2.0 * 71.0 * 512.0 * 64.0;
    let kv = 2.0 * 2.0 * 512.0 * 64.0;
    assert_eq!(c.bytes, 2.0 * q + 2.0 * kv + 4.0 * 2.0 * 71.0 * 512.0);
}

#[test]
fn attention_dkdv_counts_one_partial_slice_per_split_and_the_reduction_reads_them() {
    // Falcon-7B at 2 x 512: 71 query heads in runs of hs = 3 -> 24 splits, grid 8 x 24 x 2.
    let mut args = vec![ptr(DType::F32, true), ptr(DType::F32, true)];
    args.extend([
        ptr(DType::BF16, false),
        ptr(DType::BF16, false),
        ptr(DType::BF16, false),
        ptr(DType::U8, false),
    ]);
    args.extend([ArgValue::I32(1)]);
    args.extend([
        ptr(DType::BF16, false),
        ptr(DType::F32, false),
        ptr(DType::F32, false),
    ]);
    args.extend([
        ArgValue::I32(71),
        ArgValue::I32(1),
        ArgValue::I32(512),
        ArgValue::I32(512),
        ArgValue::I32(1),
        ArgValue::F32(0.125),
        ArgValue::I32(3),
        ArgValue::I32(1),
    ]);
    let r = record(
        kernels::ATTN_BWD_DKDV_D64,
        Dim3::xyz(8, 24, 2),
        128,
        0,
        args,
    );
    let c = cost(&r);
    // The split changes who computes, not what: 36 tiles x 4 products x 2·71 heads.
    assert_eq!(
        c.tensor_flops,
        36.0 * 4.0 * 2.0 * 64.0 * 64.0 * 64.0 * 142.0
    );
    let q = 2.0 * 2.0 * 71.0 * 512.0 * 64.0;
    let kv = 2.0 * 2.0 * 512.0 * 64.0;
    // q, dO, lse, D and k, v in; dK, dV (f32) out once per split.
    assert_eq!(
        c.bytes,
        2.0 * q + 8.0 * 2.0 * 71.0 * 512.0 + 2.0 * kv + 4.0 * kv * 24.0
    );
    let n = 2 * 512 * 64;
    let red = record(
        kernels::ATTN_BWD_DKDV_REDUCE,
        Dim3::xyz((n / 4 / 256) as u32, 2, 1),
        256,
        0,
        vec![
            ptr(DType::F32, true),
            ptr(DType::F32, true),
            ptr(DType::F32, false),
            ptr(DType::F32, false),
            ArgValue::I32(n),
            ArgValue::I32(24),
        ],
    );
    // 24 slices of dK and dV read, dK and dV written (f32).
    assert_eq!(cost(&red).bytes, 8.0 * n as f64 * 25.0);
}

#[test]
fn nf4_gemm_fits_two_blocks_per_sm_on_hopper_and_ampere() {
    let smem = kernels_cu::ops::gemm::nf4_shared_bytes() as u32;
    for (name, arch) in [("h200", "sm_90"), ("a100", "sm_80")] {
        let g = gpu(name).unwrap();
        let res = resources(arch, "nf4_gemm_fwd_bf16").expect("in the ptxas report");
        // __launch_bounds__(256, 2): at most 128 registers, so two 8-warp blocks fit by
        // registers, and the ~70 KiB of shared memory fits twice.
        assert!(res.registers <= 128, "{arch}: {res:?}");
        let occ = occupancy(g, res, 256, smem);
        assert!(occ.blocks_per_sm >= 2, "{arch}: {occ:?}");
    }
    // A kernel of fewer than 32 registers and no shared memory is limited by threads: 2048 /
    // 256 = 8 blocks; at 33 registers the register file limits it (a warp's 33 · 32 registers
    // are allocated in units of 256: 1280, so 51 warps, 6 blocks of 8).
    let h200 = gpu("h200").unwrap();
    let mut small = resources("sm_90", "add_f32").unwrap();
    small.registers = 24;
    let occ = occupancy(h200, small, 256, 0);
    assert_eq!((occ.blocks_per_sm, occ.limiter), (8, "threads"));
    small.registers = 33;
    let occ = occupancy(h200, small, 256, 0);
    assert_eq!((occ.blocks_per_sm, occ.limiter), (6, "registers"));
}

/// The wgmma NF4 GEMMs (sm_90a report rows, which an H200 uses): at most 128 registers and
/// ~64 KiB of shared memory, so two 8-warp blocks (four warpgroups) per SM, which the model's
/// overlap of the decode with other warpgroups' products assumes.
#[test]
fn wgmma_nf4_gemm_fits_two_blocks_per_sm_on_hopper() {
    let smem = kernels_cu::ops::gemm::nf4_wgmma_shared_bytes() as u32;
    let h200 = gpu("h200").unwrap();
    for kernel in kernels_cu::SM90A_KERNELS {
        let res = resources("sm_90", kernel).expect("an sm_90a row in the ptxas report");
        assert!(res.registers <= 128, "{kernel}: {res:?}");
        let occ = occupancy(h200, res, 256, smem);
        assert!(occ.blocks_per_sm >= 2, "{kernel}: {occ:?}");
    }
    // Not available to sm_80 targets.
    assert!(resources("sm_80", "nf4_gemm_fwd_wgmma_bf16").is_none());
}

#[test]
fn wave_efficiency_of_the_issue_shapes() {
    let h200 = gpu("h200").unwrap();
    // 296 blocks on 132 SMs: 3 SM waves for 2.24 waves of work.
    let w = waves(h200, 296, 1);
    assert_eq!(w.sm_waves, 3);
    assert!((w.efficiency - 296.0 / 396.0).abs() < 1e-12);
    // 264 = 2·132 blocks: full waves.
    assert_eq!(waves(h200, 264, 1).efficiency, 1.0);
    // 16 blocks (MQA dK/dV at 2 x 512: 8 key tiles x 1 kv head x 2): 16 of 132 SMs busy.
    let w = waves(h200, 16, 2);
    assert_eq!((w.sm_waves, w.occupancy_waves), (1, 1));
    assert!((w.efficiency - 16.0 / 132.0).abs() < 1e-12);
}

#[test]
fn a_streaming_launch_takes_its_bytes_over_the_bandwidth_plus_the_launch_gap() {
    let h200 = gpu("h200").unwrap();
    let n = 64 << 20;
    let args = vec![
        ptr(DType::F32, true),
        ptr(DType::F32, false),
        ptr(DType::F32, false),
        ArgValue::I32(n),
    ];
    let r = record(kernels::ADD_F32, Dim3::x(1056), 256, 0, args);
    let e = estimate(h200, &r);
    let bytes = 12.0 * n as f64;
    assert_eq!(e.cost.bytes, bytes);
    let want = bytes / (4800e9 * h200.dram_efficiency) * 1e6 + h200.launch_gap_us;
    assert!((e.time_us - want).abs() < 1e-9, "{} vs {want}", e.time_us);
    assert_eq!(e.bound, "memory");
}

#[test]
fn the_launch_checker_reports_each_seeded_violation() {
    let rtx = gpu("rtx4090").unwrap();
    let h200 = gpu("h200").unwrap();
    let args = |reach: Option<u64>| {
        let mut r = record(
            kernels::ADD_F32,
            Dim3::x(4),
            256,
            0,
            vec![
                ptr(DType::F32, true),
                ptr(DType::F32, false),
                ptr(DType::F32, false),
                ArgValue::I32(1024),
            ],
        );
        r.reach[1] = reach;
        r
    };
    assert!(validate::check(h200, 0, &args(Some(1024))).is_empty());
    // An int-indexed pointer reaching 2^31 elements.
    let v = validate::check(h200, 0, &args(Some(1 << 31)));
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].what.contains("reaches"), "{}", v[0]);
    // Shared memory over sm_89's opt-in maximum, within Hopper's.
    let mut big = args(None);
    big.shared_bytes = 120_000;
    assert!(validate::check(h200, 0, &big).is_empty());
    let v = validate::check(rtx, 3, &big);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(
        v[0].what.contains("opt-in maximum") && v[0].launch == 3,
        "{}",
        v[0]
    );
    // Grid and block limits.
    let mut g = args(None);
    g.grid = Dim3::xy(1, 70_000);
    assert!(validate::check(h200, 0, &g)
        .iter()
        .any(|v| v.what.contains("grid")));
    let mut b = args(None);
    b.block = Dim3::x(2048);
    assert!(validate::check(h200, 0, &b)
        .iter()
        .any(|v| v.what.contains("1024 threads")));
    // A grid whose thread index overflows int.
    let mut t = args(None);
    t.grid = Dim3::x(1 << 23);
    assert!(validate::check(h200, 0, &t)
        .iter()
        .any(|v| v.what.contains("32-bit thread index")));
}

/// The recording backend logs what ran; the dry run logs the same launch without running it.
#[test]
fn recording_and_dry_run_log_the_same_launch() {
    let run = |dev: &Device| {
        let a = dev.htod(&[1.0f32, 2.0, 3.0]).unwrap();
        let b = dev.htod(&[10.0f32, 20.0, 30.0]).unwrap();
        let mut out = dev.alloc(DType::F32, 3).unwrap();
        // SAFETY: 3 elements each; add_f32 touches indices < n.
        unsafe {
            dev.launch(&Launch {
                kernel: kernels::ADD_F32,
                grid: Dim3::x(1),
                block: Dim3::x(64),
                shared_bytes: 0,
                args: &[out.arg_mut(), a.arg(), b.arg(), Arg::I32(3)],
            })
            .unwrap();
        }
        dev.dtoh::<f32>(&out).unwrap()
    };
    let (emu, trace) = Recording::emulator();
    assert_eq!(run(&emu), vec![11.0, 22.0, 33.0]);
    let (dry, dtrace) = DryRun::device("test", (9, 0), 232_448);
    assert_eq!(run(&dry), vec![0.0; 3], "the dry run executes nothing");
    let (real, planned) = (trace.take(), dtrace.take());
    assert_eq!(real.len(), 1);
    assert_eq!(real, planned);
    assert_eq!(real[0].reach, vec![Some(3), Some(3), Some(3), None]);
    // The dry run still applies the device's launch limits.
    let (small, _) = DryRun::device("small", (8, 6), 1024);
    let x = small.alloc(DType::F32, 4).unwrap();
    // SAFETY: nothing executes on a dry run.
    let e = unsafe {
        small.launch(&Launch {
            kernel: kernels::ADD_F32,
            grid: Dim3::x(1),
            block: Dim3::x(64),
            shared_bytes: 4096,
            args: &[x.arg()],
        })
    };
    assert!(e.is_err());
}

/// The calibration table in BENCHMARKS.md: each published measurement predicted within the
/// stated error, and the sign of each error as stated (the model is optimistic for attention
/// backward, pessimistic for cuBLAS's wgmma GEMM).
#[test]
fn calibration_errors_stay_within_the_stated_bounds() {
    let refs = kernels_cu::perf::calibration::references();
    assert!(refs.len() >= 10);
    for r in &refs {
        let e = r.error();
        eprintln!(
            "{:<28} {:<5} published {:>6.0} predicted {:>6.0} error {:+.0} %",
            r.what,
            r.gpu,
            r.published_tflops,
            r.predicted_tflops,
            100.0 * e
        );
        assert!(
            e.abs() < kernels_cu::perf::calibration::stated_bound(r),
            "{}: error {e:+.2}",
            r.what
        );
    }
    let gemm = &refs[0];
    assert!(gemm.error() < 0.0, "mma.sync model vs a wgmma library GEMM");
    assert!(refs
        .iter()
        .filter(|r| r.what.contains("backward"))
        .all(|r| r.error() > 0.0));
}

/// Every hot kernel (the ones a training step launches) has its own cost formula, so that a
/// new kernel cannot enter the step costed by the generic fallback unnoticed.
#[test]
fn every_hot_kernel_has_a_cost_formula() {
    let missing: Vec<&str> = kernels_cu::KERNELS
        .iter()
        .filter(|k| k.hot)
        .filter(|k| cost(&record(**k, Dim3::x(1), 32, 0, Vec::new())).formula == "generic")
        .map(|k| k.name)
        .collect();
    assert!(
        missing.is_empty(),
        "hot kernels without a cost formula: {missing:?}"
    );
}
