//! Launch validation at sizes the test machines cannot run: each recorded launch against each
//! target GPU's limits, without executing it.
//!
//! Checked per launch and target:
//! - grid `x < 2^31`, `y, z ≤ 65535`; block `≤ 1024` threads (`z ≤ 64`);
//! - static (ptxas report) + dynamic shared memory per block `≤` the target's opt-in maximum;
//! - at least one block fits on an SM (registers × threads, shared memory);
//! - 32-bit indexing: `grid.x · block.x < 2^31` (the kernels form `blockIdx.x · blockDim.x +
//!   threadIdx.x` in `int`), every integer scalar argument `< 2^31`, and for kernels that take
//!   an `int` size, every pointer argument reaches fewer than `2^31` elements to the end of its
//!   allocation (an `int` element index into it cannot overflow). Kernels whose sizes are all
//!   64-bit (`long long` n) index in 64 bits and are exempt from the last check.

use super::gpu::Gpu;
use super::model::{occupancy, resources};
use super::trace::LaunchRecord;
use crate::ArgValue;

const I32_LIMIT: u64 = 1 << 31;

/// One violated limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub kernel: &'static str,
    /// Index of the launch in its trace.
    pub launch: usize,
    pub gpu: &'static str,
    pub what: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "launch {} ({}) on {}: {}",
            self.launch, self.kernel, self.gpu, self.what
        )
    }
}

/// Every limit that `launch` (number `index` of its trace) violates on `gpu`.
pub fn check(gpu: &Gpu, index: usize, r: &LaunchRecord) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut bad = |what: String| {
        out.push(Violation {
            kernel: r.kernel.name,
            launch: index,
            gpu: gpu.key,
            what,
        })
    };
    let (g, b) = (r.grid, r.block);
    if g.x == 0 || g.y == 0 || g.z == 0 || b.x == 0 || b.y == 0 || b.z == 0 {
        bad(format!("zero dimension in grid {g:?} or block {b:?}"));
    }
    if g.x as u64 >= I32_LIMIT || g.y > 65535 || g.z > 65535 {
        bad(format!("grid {g:?} exceeds (2^31-1, 65535, 65535)"));
    }
    if b.x > 1024 || b.y > 1024 || b.z > 64 || b.count() > 1024 {
        bad(format!("block {b:?} exceeds 1024 threads"));
    }
    if r.kernel.sm90a_only() && gpu.compute_capability != (9, 0) {
        bad(format!(
            "sm_90a code (wgmma) on compute capability {}.{}: it runs on 9.0 only",
            gpu.compute_capability.0, gpu.compute_capability.1
        ));
    }
    match resources(gpu.arch, r.kernel.name) {
        Some(res) => {
            let smem = res.static_smem + r.shared_bytes;
            if smem > gpu.smem_per_block_optin {
                bad(format!(
                    "{smem} bytes of shared memory per block (static {} + dynamic {}) exceed \
                     the opt-in maximum of {}",
                    res.static_smem, r.shared_bytes, gpu.smem_per_block_optin
                ));
            } else if occupancy(gpu, res, b.count() as u32, r.shared_bytes).blocks_per_sm == 0 {
                bad(format!(
                    "no block fits on an SM ({} registers x {} threads, {smem} bytes shared)",
                    res.registers,
                    b.count()
                ));
            }
        }
        None => bad("kernel missing from the ptxas report".into()),
    }
    if g.x as u64 * b.x as u64 >= I32_LIMIT {
        bad(format!(
            "grid.x * block.x = {} overflows a 32-bit thread index",
            g.x as u64 * b.x as u64
        ));
    }
    let mut int_sized = false;
    for a in &r.args {
        if matches!(a, ArgValue::I32(_) | ArgValue::U32(_)) {
            int_sized = true;
        }
        if let ArgValue::U32(v) = *a {
            if v as u64 >= I32_LIMIT {
                bad(format!("unsigned argument {v} is not below 2^31"));
            }
        }
    }
    if int_sized {
        for (i, reach) in r.reach.iter().enumerate() {
            if let Some(n) = reach {
                if *n >= I32_LIMIT {
                    bad(format!(
                        "pointer argument {i} reaches {n} elements: an int index into it can \
                         overflow"
                    ));
                }
            }
        }
    }
    out
}

/// Every violation of every launch of `trace` on every GPU of `gpus`.
pub fn check_all(gpus: &[Gpu], trace: &[LaunchRecord]) -> Vec<Violation> {
    let mut out = Vec::new();
    for gpu in gpus {
        for (i, r) in trace.iter().enumerate() {
            out.extend(check(gpu, i, r));
        }
    }
    out
}
