//! Skinny products for the LoRA down-projections (cuda/skinny.cu):
//! `C[M][N] = α·A[M][K]·B[N][K]ᵀ + β·C` with `N ≤ 32`, A and B bf16 (row-major), C f32 or bf16,
//! f32 accumulation. One warp per row of A; memory-bound at the rate A streams in. Up to
//! [`ROWS_MAX_M`] rows (a decode step's batch) one block per row instead, its warps splitting K,
//! so that a few rows still keep many loads in flight. For wide N use [`super::gemm::gemm`]
//! (tensor cores).

use super::{check, n_i32};
use crate::device::{Dim3, Launch};
use crate::error::{Error, Result};
use crate::kernels::*;
use crate::{Arg, Buffer, DType, Device};

/// Largest N the kernel handles (its register accumulators).
pub const MAX_N: usize = 32;
const WARPS_PER_BLOCK: usize = 8;
/// Most rows of A for which the product runs one block per row (`skinny_nt_rows_*`).
pub const ROWS_MAX_M: usize = 64;
const ROW_THREADS: u32 = crate::defines::skinny::SKINNY_ROW_THREADS as u32;

/// `C = α·A·Bᵀ + β·C` with `a` `[m, k]`, `b` `[n, k]` bf16 and `c` `[m, n]` f32 or bf16;
/// `n ≤ MAX_N`. β = 0 does not read C.
#[allow(clippy::too_many_arguments)]
pub fn nt(
    dev: &Device,
    a: &Buffer,
    b: &Buffer,
    c: &mut Buffer,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    beta: f32,
) -> Result<()> {
    let by_rows = m <= ROWS_MAX_M;
    let kernel = match (c.dtype(), by_rows) {
        (DType::F32, false) => SKINNY_NT_F32,
        (DType::BF16, false) => SKINNY_NT_BF16,
        (DType::F32, true) => SKINNY_NT_ROWS_F32,
        (DType::BF16, true) => SKINNY_NT_ROWS_BF16,
        (got, _) => {
            return Err(Error::DType {
                what: "skinny_nt: C",
                expected: DType::F32,
                got,
            })
        }
    };
    check("skinny_nt: A", a, DType::BF16, m * k)?;
    check("skinny_nt: B", b, DType::BF16, n * k)?;
    check("skinny_nt: C", c, c.dtype(), m * n)?;
    if n > MAX_N {
        return Err(Error::InvalidLaunch {
            kernel: kernel.name,
            reason: format!("N = {n} exceeds {MAX_N}; use the tensor-core GEMM"),
        });
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let (mi, ni, ki) = (
        n_i32("skinny_nt: M", m)?,
        n_i32("skinny_nt: N", n)?,
        n_i32("skinny_nt: K", k)?,
    );
    // 16-byte loads need every row start aligned: K a multiple of 8 and aligned bases.
    let vec = k.is_multiple_of(8) && a.is_aligned(16) && b.is_aligned(16);
    let (blocks, threads) = if by_rows {
        (m, ROW_THREADS)
    } else {
        (m.div_ceil(WARPS_PER_BLOCK), 32 * WARPS_PER_BLOCK as u32)
    };
    let blocks = u32::try_from(blocks).map_err(|_| Error::InvalidLaunch {
        kernel: kernel.name,
        reason: format!("{m} rows exceed the grid"),
    })?;
    // SAFETY: a holds m·k and b n·k bf16, c m·n elements (checked); warp w (block w with
    // by_rows) reads row w < m of A, rows < n of B (16-byte loads only when every row start is
    // 16-byte aligned) and writes C[w][0..n] only.
    unsafe {
        dev.launch(&Launch {
            kernel,
            grid: Dim3::x(blocks),
            block: Dim3::x(threads),
            shared_bytes: 0,
            args: &[
                c.arg_mut(),
                a.arg(),
                b.arg(),
                Arg::I32(mi),
                Arg::I32(ni),
                Arg::I32(ki),
                Arg::F32(alpha),
                Arg::F32(beta),
                Arg::I32(vec as i32),
            ],
        })
    }
}
