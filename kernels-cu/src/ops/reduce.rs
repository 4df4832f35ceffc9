//! Deterministic sums (cuda/reduce.cu): `sum(x) = Σ x[i]`, `sum_squares(x) = Σ x[i]²`, in f32.
//!
//! Two passes with a launch shape that depends only on n: pass 1 writes one partial sum per
//! block, pass 2 (one block) adds the partials. Same n and inputs give the same bits.

use super::{n_i32, BLOCK};
use crate::device::{Dim3, Launch};
use crate::error::{Error, Result};
use crate::kernels::*;
use crate::{Arg, Buffer, DType, Device, Kernel};

/// Most blocks of pass 1 (each thread then accumulates several elements in a fixed order).
pub const MAX_PARTIALS: usize = 256;

/// Number of pass-1 blocks for n elements (a pure function of n).
pub fn partial_blocks(n: usize) -> usize {
    n.div_ceil(BLOCK as usize * 4).clamp(1, MAX_PARTIALS)
}

fn two_pass(dev: &Device, kernel: Kernel, x: &Buffer) -> Result<Buffer> {
    let n = n_i32("reduce: length", x.len())?;
    let blocks = partial_blocks(x.len());
    let mut partial = dev.alloc(DType::F32, blocks)?;
    let mut out = dev.alloc(DType::F32, 1)?;
    // SAFETY: x holds n elements (indices < n read); partial holds one f32 per block; out one.
    unsafe {
        dev.launch(&Launch {
            kernel,
            grid: Dim3::x(blocks as u32),
            block: Dim3::x(BLOCK),
            shared_bytes: 0,
            args: &[partial.arg_mut(), x.arg(), Arg::I32(n)],
        })?;
        dev.launch(&Launch {
            kernel: SUM_PARTIALS_F32,
            grid: Dim3::x(1),
            block: Dim3::x(BLOCK),
            shared_bytes: 0,
            args: &[out.arg_mut(), partial.arg(), Arg::I32(blocks as i32)],
        })?;
    }
    Ok(out)
}

/// `Σ x[i]` of an f32 buffer, as a one-element f32 buffer.
pub fn sum(dev: &Device, x: &Buffer) -> Result<Buffer> {
    match x.dtype() {
        DType::F32 => two_pass(dev, SUM_F32, x),
        got => Err(Error::DType {
            what: "sum: x",
            expected: DType::F32,
            got,
        }),
    }
}

/// `Σ x[i]²` of an f32 or bf16 buffer, as a one-element f32 buffer.
pub fn sum_squares(dev: &Device, x: &Buffer) -> Result<Buffer> {
    match x.dtype() {
        DType::F32 => two_pass(dev, SUMSQ_F32, x),
        DType::BF16 => two_pass(dev, SUMSQ_BF16, x),
        got => Err(Error::DType {
            what: "sum_squares: x",
            expected: DType::F32,
            got,
        }),
    }
}
