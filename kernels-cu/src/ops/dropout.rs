//! Inverted dropout on the device (cuda/dropout.cu), bit-compatible with the engine's CPU op.
//!
//! Reference (`engine::ops::dropout` with `engine::rng`): element `i` (flat index) is kept iff
//! `uniform_f32(seed, offset + i) >= p` with `uniform_f32(seed, idx) = (bits >> 40)·2⁻²⁴`,
//! `bits = splitmix64(seed ^ splitmix64(idx))` (wrapping u64; `offset + i` wraps too); kept
//! values are multiplied by [`keep_scale`]`(p)` in f32, dropped ones are 0. The mask is never
//! stored: the backward recomputes it from the same `(seed, offset)`.
//!
//! - [`forward`]: `out[i] = kept_i ? x[i]·s : 0`.
//! - [`backward_add`]: `dx[i] = dx[i] + (kept_i ? g[i]·s : 0)` (accumulates).
//!
//! f32 results are bit-identical to the CPU's f32 dropout; bf16 widens to f32, computes the same
//! f32 value and rounds once to nearest even (`bf16::from_f32` of the f32 result). NaN inputs
//! give NaN (payload bits unspecified).

use super::{check, BLOCK};
use crate::device::{Dim3, Launch};
use crate::error::{Error, Result};
use crate::kernels::*;
use crate::{Arg, Buffer, DType, Device, Kernel};

/// The scale of kept elements, `f32(1 / (1 - p))` computed in f64 (as the CPU op does).
pub fn keep_scale(p: f32) -> f32 {
    (1.0 / (1.0 - p as f64)) as f32
}

/// Grid of a grid-stride loop over `n` elements, `per` per thread per step.
fn grid(n: usize, per: usize) -> Dim3 {
    Dim3::x(n.div_ceil(BLOCK as usize * per).clamp(1, 8192) as u32)
}

/// Checks `p`, the dtypes and lengths; returns the kernel and whether the 16-byte vector path
/// may run.
fn prepare(
    what: &'static str,
    out: &Buffer,
    x: &Buffer,
    p: f32,
    f32k: Kernel,
    bf16k: Kernel,
) -> Result<(Kernel, usize)> {
    let (kernel, per) = match x.dtype() {
        DType::F32 => (f32k, 4),
        DType::BF16 => (bf16k, 8),
        got => {
            return Err(Error::DType {
                what,
                expected: DType::BF16,
                got,
            })
        }
    };
    if !(0.0..1.0).contains(&p) {
        return Err(Error::InvalidLaunch {
            kernel: kernel.name,
            reason: format!("dropout probability {p} is not in [0, 1)"),
        });
    }
    check(what, out, x.dtype(), x.len())?;
    Ok((kernel, per))
}

fn run(
    dev: &Device,
    (kernel, per): (Kernel, usize),
    out: &mut Buffer,
    x: &Buffer,
    p: f32,
    seed: u64,
    offset: u64,
) -> Result<()> {
    let n = x.len();
    if n == 0 {
        return Ok(());
    }
    let vec = out.is_aligned(16) && x.is_aligned(16);
    // SAFETY: out and x hold n elements of the kernel's dtype (checked by `prepare`); the vector
    // path runs only when both start 16-byte aligned; the kernel touches indices < n only.
    unsafe {
        dev.launch(&Launch {
            kernel,
            grid: grid(n, per),
            block: Dim3::x(BLOCK),
            shared_bytes: 0,
            args: &[
                out.arg_mut(),
                x.arg(),
                Arg::I64(n as i64),
                Arg::F32(p),
                Arg::F32(keep_scale(p)),
                Arg::U64(seed),
                Arg::U64(offset),
                Arg::I32(vec as i32),
            ],
        })
    }
}

/// `out = dropout(x)` with the stream `(seed, offset)`: element `i` uses index `offset + i`.
/// `out` and `x` the same dtype (f32 or bf16) and length; `p` in `[0, 1)`, else an error.
/// The caller advances its stream offset by `x.len()` (as `engine::rng::reserve` does).
pub fn forward(
    dev: &Device,
    out: &mut Buffer,
    x: &Buffer,
    p: f32,
    seed: u64,
    offset: u64,
) -> Result<()> {
    let k = prepare("dropout: out", out, x, p, DROPOUT_FWD_F32, DROPOUT_FWD_BF16)?;
    run(dev, k, out, x, p, seed, offset)
}

/// `dx += dropout_backward(g)`: `dx[i] = dx[i] + (kept_i ? g[i]·s : 0)` with the mask of the
/// forward that used `(seed, offset)`. Both f32 or both bf16 (f32 math, one rounding), same
/// length; `p` in `[0, 1)`, else an error.
pub fn backward_add(
    dev: &Device,
    dx: &mut Buffer,
    g: &Buffer,
    p: f32,
    seed: u64,
    offset: u64,
) -> Result<()> {
    let k = prepare(
        "dropout backward: dx",
        dx,
        g,
        p,
        DROPOUT_BWD_ADD_F32,
        DROPOUT_BWD_ADD_BF16,
    )?;
    run(dev, k, dx, g, p, seed, offset)
}
