//! Time bounds of launches on a [`Gpu`]: occupancy from the ptxas report, waves, and the
//! roofline of each launch's [`Cost`] against the GPU's peaks.
//!
//! Per launch (every figure PREDICTED, none measured):
//! ```text
//! blocks/SM   = min(registers, shared memory, threads, block slots)    (CUDA occupancy rules)
//! SM waves    = ⌈grid / SMs⌉,  wave efficiency = grid / (SMs · SM waves)
//! t_tensor    = tensor FLOPs / (bf16 peak · mma efficiency) / wave efficiency
//! t_decode    = decoded NF4 elements · DECODE_SLOTS / 32 lanes / (4 schedulers · SMs · clock)
//!               / wave efficiency
//! t_softmax   = (exponentials / (16 per SM per clock · SMs · clock)
//!               + fp32 ops / (fp32 peak / 2)) / wave efficiency     (serial with t_tensor)
//! t_memory    = bytes / (DRAM bandwidth · DRAM efficiency) / min(1, 2 · busy SMs / SMs)
//! time        = max(t_tensor + t_decode + t_softmax, t_memory) + launch gap
//! ```
//! An overlapped decode ([`Cost::decode_overlapped`]: decoded in registers, no barrier between
//! decode and products: the NF4 GEMM) on an SM that holds at least [`OVERLAP_MIN_BLOCKS`]
//! blocks is not added to the tensor time; the loop is bounded instead by whichever of the
//! tensor pipe, the issue slots and the shared-memory bandwidth runs out first:
//! ```text
//! t_issue     = HMMAs · loop instructions per HMMA / (4 schedulers · SMs · clock · issue eff.)
//!               / wave eff.   (issue efficiency: measured for the wgmma kernels, 1 otherwise)
//! t_smem      = HMMAs · shared-memory wavefronts per HMMA / (SMs · clock) / wave efficiency
//! time        = max(max(t_tensor, t_issue, t_smem) + t_softmax, t_memory) + launch gap
//! ```
//! (reported as t_tensor plus a decode term `max(t_issue, t_smem) − t_tensor` when positive).
//! The assumption: with two or more blocks (16 warps, 4 per scheduler) a scheduler that finds
//! one warp waiting on the tensor pipe issues another warp's decode (the ALU and LSU pipes are
//! separate from the tensor pipe). Instructions per HMMA are the SASS count of the kernel's
//! k-loop ([`Cost::loop_instructions_per_mma`]); wavefronts (128 bytes each, one per SM per
//! clock) are counted from the loop's shared-memory accesses ([`NF4_SMEM_WAVEFRONTS_PER_MMA`]).
//! The wgmma kernels (sm_90a, [`Cost::wgmma`]) use [`WGMMA_EFFICIENCY`] for the tensor pipe and
//! their own wavefront count ([`super::cost::NF4_WGMMA_SMEM_WAVEFRONTS_PER_MMA`], which includes
//! the tensor cores' reads of the shared-memory operand); an HMMA there is an HMMA-equivalent
//! (4096 FLOP of the warpgroup's products).
//! With one block per SM the decode stays serial (counted as before). These two bounds are
//! applied only to the NF4 GEMM and the 4-bit decode GEMV (whose loop decodes in registers
//! and feeds `mma.sync` the same way; its wavefronts are its code-pair table loads and stores,
//! [`Cost::smem_wavefronts_per_mma`]); the other kernels keep the coarser rules above.
//! The SM-wave count assumes that one resident block keeps an SM's tensor cores as busy as
//! several (8-warp GEMM blocks); the memory term lets one SM draw at most twice its share of
//! DRAM bandwidth, so a grid of a few blocks cannot stream at full rate. L2 reuse is assumed
//! perfect (see [`super::cost`]); CUDA-core work other than the NF4 decode (softmax
//! exponentials, address arithmetic) is not counted: the SASS issue-slot count of the hot
//! loops is what refines that. There is no latency term: a warp whose loop waits on each of its
//! loads in turn (a dependent chain of memory round trips) is priced at its work, so such loops
//! must be removed from the kernels rather than trusted to the model.

use super::cost::{cost, Cost};
use super::gpu::Gpu;
use super::trace::LaunchRecord;

/// Issue slots (warp instructions × 32 lanes, i.e. thread instructions) per decoded NF4
/// element: load of the packed byte (½), nibble extract (1), table lookup (1), scale by the
/// block's absmax (1), convert and pack to bf16 (½), store to shared memory (½), plus the
/// absmax decode amortized over 64 elements. An estimate from reading the kernel, to be replaced
/// by the SASS count of its main loop.
pub const DECODE_SLOTS: f64 = 5.0;

/// FLOPs of one `mma.m16n8k16` (`HMMA.16816`).
pub const HMMA_FLOPS: f64 = 2.0 * 16.0 * 8.0 * 16.0;

/// Shared-memory wavefronts (128-byte transfers; an SM moves one per clock) per `HMMA.16816`
/// of the NF4 GEMM's k-loop, counted per warp and 64-wide k-tile (64 HMMAs): activation
/// fragments 16 `ldmatrix.x4` × 4 = 64; code-table loads 64 (one element per lane per HMMA,
/// 16 distinct words in 16 banks: one wavefront each); packed words 8 and absmax 16
/// (broadcasts); plus the block's cp.async writes (18 KiB activations + 4 KiB codes per
/// k-tile over 8 warps: 22 per warp): 174 / 64 ≈ 2.7. With one HMMA per SM per clock at the
/// dense peak this caps the loop near 37 % of it on Hopper.
pub const NF4_SMEM_WAVEFRONTS_PER_MMA: f64 = 2.7;

/// ASSUMED cost of one kernel node of a replayed CUDA graph, µs, in place of
/// [`super::Gpu::launch_gap_us`] (a stream launch): the gap between dependent kernels when the
/// driver submits the whole sequence at once. NVIDIA's "Getting Started with CUDA Graphs"
/// (developer blog, 2019) reports well under a microsecond of overhead per kernel node for a
/// straight-line graph of short kernels on a V100, against more than that for the same kernels
/// launched on a stream; 0.5 µs is our assumption in that range, not a measurement
/// (`scripts/gpu-check.sh` prints the decode prediction beside the `decode_gpu` benchmark).
pub const GRAPH_NODE_US: f64 = 0.5;

/// Fraction of the dense bf16 peak the tensor pipe reaches under `wgmma` (sm_90a kernels only):
/// the cuBLAS bf16 GEMM 8192³ observed at 788 TFLOP/s on an H200 (`perf::calibration`), 0.80,
/// rounded down to 0.78 for a kernel that waits for its products once per k-tile
/// (`wgmma.wait_group 0`) with two blocks per SM to cover the wait. An assumption until measured.
pub const WGMMA_EFFICIENCY: f64 = 0.78;

/// Fraction of the issue slots the wgmma NF4 GEMM fills, MEASURED: Nsight Compute on an H200
/// (2026-12-04, BENCHMARKS.md) found 53-56 % of them busy in the products with full waves
/// (48 % split in four), with four warps per scheduler waiting on a barrier per k-tile and on
/// their own loads: the loop is latency-bound, neither the tensor pipe (about 37 % busy) nor
/// instruction issue is saturated. The model has no latency term, so the issue bound of these
/// kernels is divided by this measured rate (the `mma.sync` kernels keep the full rate,
/// unmeasured).
pub const NF4_WGMMA_ISSUE_EFFICIENCY: f64 = 0.55;

/// Resident blocks per SM from which an overlapped decode hides behind other warps' products.
pub const OVERLAP_MIN_BLOCKS: u32 = 2;

/// `ex2` throughput of the special-function units: 16 per SM per clock on sm_80..sm_90
/// (CUDA C++ Programming Guide, arithmetic instruction throughput table).
pub const SFU_OPS_PER_SM_CLOCK: f64 = 16.0;

/// The embedded ptxas report (registers, static shared memory per kernel and target).
const REPORT: &str = include_str!("../../ptxas-report.txt");

/// What ptxas reports for one kernel on one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    pub registers: u32,
    pub static_smem: u32,
}

/// Registers and static shared memory of `kernel` for `arch` from the ptxas report; sm_86 and
/// sm_89 use the sm_80 line (the report covers sm_80 and sm_90, and sm_90a for the wgmma kernels).
pub fn resources(arch: &str, kernel: &str) -> Option<Resources> {
    let arch = match arch {
        // The wgmma kernels exist only as sm_90a code (their own report rows).
        "sm_90" if crate::sources::SM90A_KERNELS.contains(&kernel) => crate::ptxas::SM90A_ARCH,
        "sm_90" => "sm_90",
        _ => "sm_80",
    };
    REPORT.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() >= 4 && f[0] == arch && f[1] == kernel {
            Some(Resources {
                registers: f[2].parse().ok()?,
                static_smem: f[3].parse().ok()?,
            })
        } else {
            None
        }
    })
}

/// Resident blocks per SM and what limits them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occupancy {
    pub blocks_per_sm: u32,
    pub limiter: &'static str,
}

/// Blocks of `threads` threads, `res` resources and `dynamic_smem` bytes that fit on one SM
/// (register allocation per warp in units of 256, shared memory plus the per-block reserve).
pub fn occupancy(gpu: &Gpu, res: Resources, threads: u32, dynamic_smem: u32) -> Occupancy {
    let warps = threads.div_ceil(32).max(1);
    let regs_per_warp = (res.registers.max(1) * 32).div_ceil(256) * 256;
    let by_regs = (gpu.regs_per_sm / regs_per_warp) / warps;
    let smem = res.static_smem + dynamic_smem + gpu.smem_reserved_per_block;
    let by_smem = gpu.smem_per_sm / smem.max(1);
    let by_threads = gpu.max_threads_per_sm / (warps * 32);
    let limits = [
        (by_regs, "registers"),
        (by_smem, "shared memory"),
        (by_threads, "threads"),
        (gpu.max_blocks_per_sm, "block slots"),
    ];
    let (blocks_per_sm, limiter) = limits
        .into_iter()
        .min_by_key(|(n, _)| *n)
        .unwrap_or((0, "none"));
    Occupancy {
        blocks_per_sm,
        limiter,
    }
}

/// SM waves of a grid and the fraction of SM time they keep busy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Waves {
    /// ⌈grid / SMs⌉: blocks the busiest SM runs.
    pub sm_waves: u64,
    /// ⌈grid / (SMs · blocks per SM)⌉: full-occupancy waves.
    pub occupancy_waves: u64,
    /// grid / (SMs · sm_waves).
    pub efficiency: f64,
}

pub fn waves(gpu: &Gpu, grid_blocks: u64, blocks_per_sm: u32) -> Waves {
    let sms = gpu.sms as u64;
    let sm_waves = grid_blocks.div_ceil(sms).max(1);
    Waves {
        sm_waves,
        occupancy_waves: grid_blocks.div_ceil(sms * blocks_per_sm.max(1) as u64),
        efficiency: grid_blocks as f64 / (sms * sm_waves) as f64,
    }
}

/// The model's estimate of one launch.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchEstimate {
    pub kernel: &'static str,
    pub grid_blocks: u64,
    pub threads: u32,
    pub dynamic_smem: u32,
    pub cost: Cost,
    pub resources: Option<Resources>,
    pub occupancy: Occupancy,
    pub waves: Waves,
    pub t_tensor_us: f64,
    pub t_decode_us: f64,
    pub t_softmax_us: f64,
    pub t_memory_us: f64,
    /// Predicted time including the launch gap.
    pub time_us: f64,
    /// "tensor", "tensor+decode", "memory" or "launch".
    pub bound: &'static str,
}

/// The time terms of the module docs, seconds, for `c` spread over `grid_blocks` blocks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Times {
    pub tensor: f64,
    pub decode: f64,
    pub softmax: f64,
    pub memory: f64,
}

impl Times {
    /// The launch's time without the launch gap, seconds.
    pub fn bound(&self) -> f64 {
        (self.tensor + self.decode + self.softmax).max(self.memory)
    }
}

pub fn times(gpu: &Gpu, c: &Cost, grid_blocks: u64) -> Times {
    times_at(gpu, c, grid_blocks, 1)
}

/// [`times`] with `blocks_per_sm` resident blocks: an overlapped decode with at least
/// [`OVERLAP_MIN_BLOCKS`] of them is reported as the part of the issue-slot bound that exceeds
/// the tensor time (0 when the decode hides entirely), so `tensor + decode` stays the compute
/// time of the module docs.
pub fn times_at(gpu: &Gpu, c: &Cost, grid_blocks: u64, blocks_per_sm: u32) -> Times {
    let eff = waves(gpu, grid_blocks, 1).efficiency.max(1e-9);
    let clock = gpu.boost_mhz as f64 * 1e6;
    let issue_rate = 4.0 * gpu.sms as f64 * clock; // warp instructions per second
    let busy = grid_blocks.min(gpu.sms as u64) as f64;
    let bw_share = (2.0 * busy / gpu.sms as f64).min(1.0);
    let mma_efficiency = if c.wgmma {
        WGMMA_EFFICIENCY
    } else {
        gpu.mma_efficiency
    };
    let tensor = c.tensor_flops / (gpu.bf16_tflops * 1e12 * mma_efficiency) / eff;
    let decode = if c.decode_overlapped && blocks_per_sm >= OVERLAP_MIN_BLOCKS {
        let hmmas = c.tensor_flops / HMMA_FLOPS;
        let issue_efficiency = if c.wgmma {
            NF4_WGMMA_ISSUE_EFFICIENCY
        } else {
            1.0
        };
        let issue = hmmas * c.loop_instructions_per_mma / (issue_rate * issue_efficiency) / eff;
        let wavefronts = if c.wgmma {
            super::cost::NF4_WGMMA_SMEM_WAVEFRONTS_PER_MMA
        } else if c.smem_wavefronts_per_mma > 0.0 {
            c.smem_wavefronts_per_mma
        } else {
            NF4_SMEM_WAVEFRONTS_PER_MMA
        };
        let smem = hmmas * wavefronts / (gpu.sms as f64 * clock) / eff;
        (issue.max(smem) - tensor).max(0.0)
    } else {
        c.decoded_elements * DECODE_SLOTS / 32.0 / issue_rate / eff
    };
    Times {
        tensor,
        decode,
        softmax: (c.special_ops / (SFU_OPS_PER_SM_CLOCK * gpu.sms as f64 * clock)
            + c.fp32_ops / (gpu.fp32_tflops * 1e12 / 2.0))
            / eff,
        memory: c.bytes / (gpu.dram_gbs * 1e9 * gpu.dram_efficiency) / bw_share,
    }
}

/// Predicts one recorded launch on `gpu`, launched on a stream ([`Gpu::launch_gap_us`]).
pub fn estimate(gpu: &Gpu, r: &LaunchRecord) -> LaunchEstimate {
    estimate_with_gap(gpu, r, gpu.launch_gap_us)
}

/// [`estimate`] with `gap_us` per launch (e.g. [`GRAPH_NODE_US`] for a graph node).
pub fn estimate_with_gap(gpu: &Gpu, r: &LaunchRecord, gap_us: f64) -> LaunchEstimate {
    let c = cost(r);
    let threads = r.block.count() as u32;
    let res = resources(gpu.arch, r.kernel.name);
    let occ = match res {
        Some(res) => occupancy(gpu, res, threads, r.shared_bytes),
        None => Occupancy {
            blocks_per_sm: 1,
            limiter: "unknown (not in the ptxas report)",
        },
    };
    let grid_blocks = r.grid.count();
    let w = waves(gpu, grid_blocks, occ.blocks_per_sm);
    let t = times_at(gpu, &c, grid_blocks, occ.blocks_per_sm);
    let compute = t.tensor + t.decode + t.softmax;
    let work = compute.max(t.memory) * 1e6;
    let bound = if work < gap_us {
        "launch"
    } else if t.memory >= compute {
        "memory"
    } else if t.decode > 0.0 {
        "tensor+decode"
    } else if t.softmax > 0.0 {
        "tensor+softmax"
    } else {
        "tensor"
    };
    let (t_tensor, t_decode, t_softmax, t_memory) = (t.tensor, t.decode, t.softmax, t.memory);
    LaunchEstimate {
        kernel: r.kernel.name,
        grid_blocks,
        threads,
        dynamic_smem: r.shared_bytes,
        cost: c,
        resources: res,
        occupancy: occ,
        waves: w,
        t_tensor_us: t_tensor * 1e6,
        t_decode_us: t_decode * 1e6,
        t_softmax_us: t_softmax * 1e6,
        t_memory_us: t_memory * 1e6,
        time_us: work + gap_us,
        bound,
    }
}

/// Launches of one kernel summed over a step.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelRow {
    pub kernel: &'static str,
    pub launches: usize,
    pub time_us: f64,
    pub tensor_flops: f64,
    pub bytes: f64,
    /// Mean wave efficiency, weighted by time.
    pub wave_efficiency: f64,
    pub blocks_per_sm: u32,
    pub occupancy_limiter: &'static str,
    /// The bound of the launches that take most of this kernel's time.
    pub bound: &'static str,
}

/// A step's launches on one GPU.
#[derive(Debug, Clone)]
pub struct StepEstimate {
    pub gpu: Gpu,
    pub launches: Vec<LaunchEstimate>,
}

impl StepEstimate {
    pub fn new(gpu: &Gpu, trace: &[LaunchRecord]) -> StepEstimate {
        StepEstimate {
            gpu: *gpu,
            launches: trace.iter().map(|r| estimate(gpu, r)).collect(),
        }
    }

    /// The launches replayed as one CUDA graph: [`GRAPH_NODE_US`] per launch instead of the
    /// stream launch gap.
    pub fn graph(gpu: &Gpu, trace: &[LaunchRecord]) -> StepEstimate {
        StepEstimate {
            gpu: *gpu,
            launches: trace
                .iter()
                .map(|r| estimate_with_gap(gpu, r, GRAPH_NODE_US))
                .collect(),
        }
    }

    /// Predicted time of the whole step, µs (launches back to back on one stream).
    pub fn time_us(&self) -> f64 {
        self.launches.iter().map(|l| l.time_us).sum()
    }

    pub fn tensor_flops(&self) -> f64 {
        self.launches.iter().map(|l| l.cost.tensor_flops).sum()
    }

    /// Per kernel, largest total time first.
    pub fn by_kernel(&self) -> Vec<KernelRow> {
        let mut rows: Vec<KernelRow> = Vec::new();
        let mut bound_time: Vec<Vec<(&'static str, f64)>> = Vec::new();
        for l in &self.launches {
            let i = match rows.iter().position(|r| r.kernel == l.kernel) {
                Some(i) => i,
                None => {
                    rows.push(KernelRow {
                        kernel: l.kernel,
                        launches: 0,
                        time_us: 0.0,
                        tensor_flops: 0.0,
                        bytes: 0.0,
                        wave_efficiency: 0.0,
                        blocks_per_sm: l.occupancy.blocks_per_sm,
                        occupancy_limiter: l.occupancy.limiter,
                        bound: l.bound,
                    });
                    bound_time.push(Vec::new());
                    rows.len() - 1
                }
            };
            let r = &mut rows[i];
            r.launches += 1;
            r.time_us += l.time_us;
            r.tensor_flops += l.cost.tensor_flops;
            r.bytes += l.cost.bytes;
            r.wave_efficiency += l.waves.efficiency * l.time_us;
            r.blocks_per_sm = r.blocks_per_sm.min(l.occupancy.blocks_per_sm);
            match bound_time[i].iter_mut().find(|(b, _)| *b == l.bound) {
                Some(e) => e.1 += l.time_us,
                None => bound_time[i].push((l.bound, l.time_us)),
            }
        }
        for (r, b) in rows.iter_mut().zip(&bound_time) {
            r.wave_efficiency /= r.time_us.max(1e-12);
            if let Some((bound, _)) = b.iter().copied().max_by(|x, y| x.1.total_cmp(&y.1)) {
                r.bound = bound;
            }
        }
        rows.sort_by(|a, b| b.time_us.total_cmp(&a.time_us));
        rows
    }
}
