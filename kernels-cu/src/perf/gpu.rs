//! The GPUs the performance model knows: published datasheet peaks and the per-SM limits that
//! decide occupancy.
//!
//! Sources (vendor datasheets and architecture whitepapers; dense rates, no sparsity, boost
//! clock): NVIDIA A100 Tensor Core GPU datasheet and "NVIDIA A100 Tensor Core GPU
//! Architecture" whitepaper (A100-80GB SXM); NVIDIA H100 Tensor Core GPU datasheet and the
//! "NVIDIA H100 Tensor Core GPU Architecture" whitepaper (H100 SXM5); NVIDIA H200 Tensor Core
//! GPU datasheet (same GH100 SM configuration as the H100 SXM, HBM3e); "NVIDIA Ada GPU
//! Architecture" whitepaper (RTX 4090) and "NVIDIA Ampere GA102 GPU Architecture" whitepaper
//! (RTX 3090). The GeForce bf16 rates are those with fp32 accumulation (what `mma.sync ...
//! .f32.bf16.bf16.f32` does), half the fp16-accumulate rate on those parts. Per-SM limits are
//! from the CUDA C++ Programming Guide's table of compute-capability features.
//!
//! L2 bandwidth is not a datasheet number; the values here are rough estimates (bytes per
//! clock per SM times SMs times clock) and only serve as an upper bound for reuse traffic.
//! `launch_gap_us` is an assumption: back-to-back launches on one stream without CUDA graphs
//! leave a gap of a few microseconds on every GPU.

/// One GPU of the table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gpu {
    /// Short name used on command lines (`h200`, `a100`, ...).
    pub key: &'static str,
    pub name: &'static str,
    /// The model part of the name the CUDA driver reports for this exact part (vendor and
    /// brand prefixes removed, see [`gpu_for_device`]).
    pub driver_name: &'static str,
    /// ptxas target whose resource report applies (sm_86/sm_89 use the sm_80 report).
    pub arch: &'static str,
    pub compute_capability: (i32, i32),
    pub sms: u32,
    pub boost_mhz: u32,
    /// Dense bf16 tensor-core rate with fp32 accumulation, TFLOP/s.
    pub bf16_tflops: f64,
    /// fp32 (CUDA core, non-tensor) rate, TFLOP/s.
    pub fp32_tflops: f64,
    /// DRAM bandwidth, GB/s (10^9 bytes).
    pub dram_gbs: f64,
    pub dram_gib: f64,
    pub l2_mib: f64,
    /// Estimated L2 bandwidth, GB/s (see the module docs).
    pub l2_gbs: f64,
    pub regs_per_sm: u32,
    /// Shared memory per SM available to blocks, bytes.
    pub smem_per_sm: u32,
    /// Largest dynamic + static shared memory one block may opt in to, bytes.
    pub smem_per_block_optin: u32,
    /// Shared memory the system reserves per resident block, bytes.
    pub smem_reserved_per_block: u32,
    pub max_threads_per_sm: u32,
    pub max_blocks_per_sm: u32,
    pub launch_gap_us: f64,
    /// Fraction of the dense bf16 peak a well-tuned `mma.sync` GEMM reaches (checked against
    /// published measurements in [`crate::perf::calibration`]).
    pub mma_efficiency: f64,
    /// Fraction of DRAM bandwidth a streaming kernel reaches: 0.85 everywhere (an assumption,
    /// to be calibrated by the first measured run).
    pub dram_efficiency: f64,
}

const KIB: u32 = 1024;

/// Every GPU the model knows, the step's primary target first.
pub const GPUS: &[Gpu] = &[
    Gpu {
        key: "h200",
        name: "NVIDIA H200 SXM (141 GB)",
        driver_name: "H200",
        arch: "sm_90",
        compute_capability: (9, 0),
        sms: 132,
        boost_mhz: 1980,
        bf16_tflops: 989.4,
        fp32_tflops: 66.9,
        dram_gbs: 4800.0,
        dram_gib: 141.0e9 / (1u64 << 30) as f64,
        l2_mib: 50.0,
        l2_gbs: 12_000.0,
        regs_per_sm: 65536,
        smem_per_sm: 228 * KIB,
        smem_per_block_optin: 227 * KIB,
        smem_reserved_per_block: KIB,
        max_threads_per_sm: 2048,
        max_blocks_per_sm: 32,
        launch_gap_us: 2.0,
        mma_efficiency: HOPPER_MMA_SYNC_EFFICIENCY,
        dram_efficiency: 0.85,
    },
    Gpu {
        key: "h100",
        name: "NVIDIA H100 SXM5 (80 GB)",
        driver_name: "H100 80GB HBM3",
        arch: "sm_90",
        compute_capability: (9, 0),
        sms: 132,
        boost_mhz: 1980,
        bf16_tflops: 989.4,
        fp32_tflops: 66.9,
        dram_gbs: 3350.0,
        dram_gib: 80.0,
        l2_mib: 50.0,
        l2_gbs: 12_000.0,
        regs_per_sm: 65536,
        smem_per_sm: 228 * KIB,
        smem_per_block_optin: 227 * KIB,
        smem_reserved_per_block: KIB,
        max_threads_per_sm: 2048,
        max_blocks_per_sm: 32,
        launch_gap_us: 2.0,
        mma_efficiency: HOPPER_MMA_SYNC_EFFICIENCY,
        dram_efficiency: 0.85,
    },
    Gpu {
        key: "a100",
        name: "NVIDIA A100-SXM4-80GB",
        driver_name: "A100-SXM4-80GB",
        arch: "sm_80",
        compute_capability: (8, 0),
        sms: 108,
        boost_mhz: 1410,
        bf16_tflops: 312.0,
        fp32_tflops: 19.5,
        dram_gbs: 2039.0,
        dram_gib: 80.0,
        l2_mib: 40.0,
        l2_gbs: 5_000.0,
        regs_per_sm: 65536,
        smem_per_sm: 164 * KIB,
        smem_per_block_optin: 163 * KIB,
        smem_reserved_per_block: KIB,
        max_threads_per_sm: 2048,
        max_blocks_per_sm: 32,
        launch_gap_us: 2.0,
        mma_efficiency: AMPERE_MMA_EFFICIENCY,
        dram_efficiency: 0.85,
    },
    Gpu {
        key: "rtx4090",
        name: "NVIDIA GeForce RTX 4090",
        driver_name: "RTX 4090",
        arch: "sm_89",
        compute_capability: (8, 9),
        sms: 128,
        boost_mhz: 2520,
        bf16_tflops: 165.2,
        fp32_tflops: 82.6,
        dram_gbs: 1008.0,
        dram_gib: 24.0,
        l2_mib: 72.0,
        l2_gbs: 5_000.0,
        regs_per_sm: 65536,
        smem_per_sm: 100 * KIB,
        smem_per_block_optin: 99 * KIB,
        smem_reserved_per_block: KIB,
        max_threads_per_sm: 1536,
        max_blocks_per_sm: 24,
        launch_gap_us: 2.0,
        mma_efficiency: AMPERE_MMA_EFFICIENCY,
        dram_efficiency: 0.85,
    },
    Gpu {
        key: "rtx3090",
        name: "NVIDIA GeForce RTX 3090",
        driver_name: "RTX 3090",
        arch: "sm_86",
        compute_capability: (8, 6),
        sms: 82,
        boost_mhz: 1695,
        bf16_tflops: 71.0,
        fp32_tflops: 35.6,
        dram_gbs: 936.0,
        dram_gib: 24.0,
        l2_mib: 6.0,
        l2_gbs: 2_000.0,
        regs_per_sm: 65536,
        smem_per_sm: 100 * KIB,
        smem_per_block_optin: 99 * KIB,
        smem_reserved_per_block: KIB,
        max_threads_per_sm: 1536,
        max_blocks_per_sm: 16,
        launch_gap_us: 2.0,
        mma_efficiency: AMPERE_MMA_EFFICIENCY,
        dram_efficiency: 0.85,
    },
];

/// `mma.sync` on Hopper: the warp-level instruction cannot feed the SM's tensor cores at the
/// rate the warpgroup `wgmma` path does; tuned `mma.sync` code is reported near 60-65 % of
/// the dense peak, and the SASS of our GEMM loops (12-16 instructions per HMMA against 8
/// issue slots, [`crate::perf::sass`]) caps them at 50-66 %. 0.62; FlashAttention-2 forward on
/// H100 is predicted within -1..+33 % with it (`perf::calibration`).
pub const HOPPER_MMA_SYNC_EFFICIENCY: f64 = 0.62;
/// `mma.sync` on Ampere/Ada, where it is the native path: tuned GEMMs reach ~80-90 % of peak
/// at large sizes; 0.85 (FlashAttention-2 forward on A100 is predicted 19 % low with it; no
/// published A100 GEMM figure was at hand to check it directly).
pub const AMPERE_MMA_EFFICIENCY: f64 = 0.85;

/// The GPU with `key` or whose name contains it (case-insensitive), e.g. "h200", "A100".
pub fn gpu(name: &str) -> Option<&'static Gpu> {
    let n = name.to_ascii_lowercase().replace([' ', '-', '_'], "");
    GPUS.iter().find(|g| g.key == n).or_else(|| {
        GPUS.iter().find(|g| {
            g.name
                .to_ascii_lowercase()
                .replace([' ', '-', '_'], "")
                .contains(&n)
        })
    })
}

/// The table entry of an opened device: the driver-reported name must match an entry's
/// [`Gpu::driver_name`] exactly, with its compute capability, so variants with other clocks or
/// memory (an "H200 NVL", an "RTX 3090 Ti", a 40 GB A100) get no entry rather than a wrong
/// one. `None` for the emulator and other backends.
pub fn gpu_for_device(info: &crate::DeviceInfo) -> Option<&'static Gpu> {
    if info.kind != crate::BackendKind::Cuda {
        return None;
    }
    let n = info.name.trim();
    let n = n.strip_prefix("NVIDIA ").unwrap_or(n);
    let model = n.strip_prefix("GeForce ").unwrap_or(n).trim();
    GPUS.iter()
        .find(|g| g.driver_name == model && g.compute_capability == info.compute_capability)
}

/// The keys of [`GPUS`], for error messages.
pub fn gpu_keys() -> String {
    GPUS.iter().map(|g| g.key).collect::<Vec<_>>().join(", ")
}
