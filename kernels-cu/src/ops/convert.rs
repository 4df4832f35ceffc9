//! Conversions and layout changes (cuda/convert.cu): f32 ↔ bf16 casts and the swap of axes 1
//! and 2 of a 4-d tensor. Both are pure data movement.
//!
//! Reference (the definition):
//! - `cast`: f32 → bf16 rounds to nearest even (NaN stays NaN, quiet bit set, sign and top
//!   payload bits kept: bit-identical to `half::bf16::from_f32`); bf16 → f32 is exact (the bits
//!   shifted into the top half, NaN payloads included).
//! - `swap_axes12`: `x` row-major `[d0, d1, d2, d3]`, `out` `[d0, d2, d1, d3]`,
//!   `out[a][c][b][e] = x[a][b][c][e]` (bit-exact copies), e.g. attention output
//!   `[b, heads, t, hd]` → `[b, t, heads, hd]`, and back with `dims = [b, t, heads, hd]`.
//!
//! Both use 16-byte vector accesses when the buffers (or views) start 16-byte aligned, and a
//! scalar path otherwise, so views at any offset are correct.

use super::{check, BLOCK};
use crate::device::{Dim3, Launch};
use crate::error::{Error, Result};
use crate::kernels::*;
use crate::{Arg, Buffer, DType, Device};

/// Grid of a grid-stride loop over `units` work items, one per thread per step.
fn grid(units: usize) -> Dim3 {
    Dim3::x(units.div_ceil(BLOCK as usize).clamp(1, 8192) as u32)
}

/// `out = x` converted: f32 → bf16 (round to nearest even) or bf16 → f32 (exact). Same length;
/// any other dtype pair is an [`Error::DType`].
pub fn cast(dev: &Device, out: &mut Buffer, x: &Buffer) -> Result<()> {
    let kernel = match (x.dtype(), out.dtype()) {
        (DType::F32, DType::BF16) => CAST_F32_BF16,
        (DType::BF16, DType::F32) => CAST_BF16_F32,
        (DType::F32 | DType::BF16, got) => {
            return Err(Error::DType {
                what: "cast: out (f32 <-> bf16 only)",
                expected: if x.dtype() == DType::F32 {
                    DType::BF16
                } else {
                    DType::F32
                },
                got,
            })
        }
        (got, _) => {
            return Err(Error::DType {
                what: "cast: x (f32 <-> bf16 only)",
                expected: DType::F32,
                got,
            })
        }
    };
    check("cast: out", out, out.dtype(), x.len())?;
    if x.is_empty() {
        return Ok(());
    }
    let vec = out.is_aligned(16) && x.is_aligned(16);
    // SAFETY: out and x hold n elements (checked); the vector path runs only when both start
    // 16-byte aligned; the kernel touches indices < n only.
    unsafe {
        dev.launch(&Launch {
            kernel,
            grid: grid(x.len().div_ceil(8)),
            block: Dim3::x(BLOCK),
            shared_bytes: 0,
            args: &[
                out.arg_mut(),
                x.arg(),
                Arg::I64(x.len() as i64),
                Arg::I32(vec as i32),
            ],
        })
    }
}

/// `out[a][c][b][e] = x[a][b][c][e]` with `x` `[d0, d1, d2, d3]` and `out` `[d0, d2, d1, d3]`
/// (row-major); both f32 or both bf16, `d0·d1·d2·d3` elements each. Any `d3 ≥ 1`; rows move as
/// 16-byte vectors when `d3·size` is a multiple of 16 and both buffers are 16-byte aligned.
pub fn swap_axes12(dev: &Device, out: &mut Buffer, x: &Buffer, dims: [usize; 4]) -> Result<()> {
    let kernel = match x.dtype() {
        DType::F32 => SWAP_AXES12_F32,
        DType::BF16 => SWAP_AXES12_BF16,
        got => {
            return Err(Error::DType {
                what: "swap_axes12: x",
                expected: DType::BF16,
                got,
            })
        }
    };
    let [_, d1, d2, d3] = dims;
    let n = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .unwrap_or(usize::MAX);
    check("swap_axes12: x ([d0, d1, d2, d3])", x, x.dtype(), n)?;
    check("swap_axes12: out ([d0, d2, d1, d3])", out, x.dtype(), n)?;
    if n == 0 {
        return Ok(());
    }
    let per = 16 / x.dtype().size();
    let vec = (d3 * x.dtype().size()).is_multiple_of(16) && out.is_aligned(16) && x.is_aligned(16);
    let chunks = if vec { n / per } else { n };
    // 32-bit index math in the kernel: chunks, and the row products it forms, below 2^31.
    if chunks > i32::MAX as usize || d3 > i32::MAX as usize {
        return Err(Error::Length {
            what: "swap_axes12: 16-byte chunks (or elements) of x",
            expected: i32::MAX as usize,
            got: chunks,
        });
    }
    // SAFETY: out and x hold d0·d1·d2·d3 elements (checked); every output chunk u < chunks
    // reads input row (a·d1 + b)·d2 + c < d0·d1·d2 of the same length; the vector path runs
    // only when both buffers are 16-byte aligned and rows are whole 16-byte chunks.
    unsafe {
        dev.launch(&Launch {
            kernel,
            grid: grid(chunks),
            block: Dim3::x(BLOCK),
            shared_bytes: 0,
            args: &[
                out.arg_mut(),
                x.arg(),
                Arg::U32(d1 as u32),
                Arg::U32(d2 as u32),
                Arg::U32(d3 as u32),
                Arg::U32(chunks as u32),
                Arg::I32(vec as i32),
            ],
        })
    }
}
