//! LayerNorm over the last dimension (cuda/layernorm.cu), fp32 math, x/y/γ/β in f32 or bf16.
//!
//! Reference: `engine::ops::layernorm::{layer_norm_forward, layer_norm_backward}`:
//! `mean = Σx/d`, `var = Σ(x−mean)²/d`, `rstd = 1/√(var+eps)`, `y = (x−mean)·rstd·γ + β`;
//! backward with `x̂ = (x−mean)·rstd`, `ĝ = dy·γ`:
//! `dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂))`, `dγ = Σ_rows dy·x̂`, `dβ = Σ_rows dy`.
//!
//! Layout: `x`, `y`, `dy`, `dx` are `[rows, d]` row-major; `γ`, `β` are `[d]` (same dtype as
//! `x`); `mean`, `rstd` are `[rows]` f32; `dγ`, `dβ` are `[d]` f32. dγ/dβ are reduced without
//! atomics (per-block partial rows, then a fixed-order sum), so they are bitwise reproducible.

use super::check;
use crate::defines;
use crate::device::{Dim3, Launch};
use crate::error::{Error, Result};
use crate::kernels::*;
use crate::{Arg, Buffer, DType, Device};

/// Threads per block (`LN_BLOCK` in cuda/layernorm.cu).
pub const LN_BLOCK: u32 = defines::layernorm::LN_BLOCK as u32;
/// Most blocks of the backward (each block then takes several rows and keeps one partial
/// dγ/dβ row). About two waves on 132 SMs.
pub const MAX_BWD_BLOCKS: usize = 264;

/// The per-row statistics saved by [`forward`]: `[rows]` f32 each.
#[derive(Debug)]
pub struct LayerNormStats {
    pub mean: Buffer,
    pub rstd: Buffer,
}

/// Number of backward blocks for `rows` rows (a pure function of `rows`, so dγ/dβ do not depend
/// on the device).
pub fn bwd_blocks(rows: usize) -> usize {
    rows.clamp(1, MAX_BWD_BLOCKS)
}

/// Rows of `x` for row length `d`, checking `x` is a whole number of rows of f32 or bf16.
fn rows_of(x: &Buffer, d: usize) -> Result<usize> {
    if !matches!(x.dtype(), DType::F32 | DType::BF16) {
        return Err(Error::DType {
            what: "layer_norm: x",
            expected: DType::BF16,
            got: x.dtype(),
        });
    }
    if d == 0 || !x.len().is_multiple_of(d) || x.is_empty() {
        return Err(Error::Length {
            what: "layer_norm: x (a positive multiple of d)",
            expected: d.max(1) * (x.len() / d.max(1)).max(1),
            got: x.len(),
        });
    }
    i32::try_from(d).map_err(|_| Error::Length {
        what: "layer_norm: d",
        expected: i32::MAX as usize,
        got: d,
    })?;
    let rows = x.len() / d;
    i32::try_from(rows).map_err(|_| Error::Length {
        what: "layer_norm: rows",
        expected: i32::MAX as usize,
        got: rows,
    })?;
    Ok(rows)
}

/// `y = LayerNorm(x; γ, β, eps)` over rows of length `d`; returns the saved `mean`, `rstd`.
pub fn forward(
    dev: &Device,
    y: &mut Buffer,
    x: &Buffer,
    gamma: &Buffer,
    beta: &Buffer,
    d: usize,
    eps: f32,
) -> Result<LayerNormStats> {
    let rows = rows_of(x, d)?;
    let dt = x.dtype();
    check("layer_norm: y", y, dt, x.len())?;
    check("layer_norm: gamma", gamma, dt, d)?;
    check("layer_norm: beta", beta, dt, d)?;
    let mut mean = dev.alloc(DType::F32, rows)?;
    let mut rstd = dev.alloc(DType::F32, rows)?;
    let kernel = if dt == DType::F32 {
        LAYERNORM_FWD_F32
    } else {
        LAYERNORM_FWD_BF16
    };
    // SAFETY: x and y hold rows·d elements, γ/β d, mean/rstd rows (checked above); block r
    // touches row r only; the dynamic shared memory is d f32, as the kernel indexes it.
    unsafe {
        dev.launch(&Launch {
            kernel,
            grid: Dim3::x(rows as u32),
            block: Dim3::x(LN_BLOCK),
            shared_bytes: (d * 4) as u32,
            args: &[
                y.arg_mut(),
                mean.arg_mut(),
                rstd.arg_mut(),
                x.arg(),
                gamma.arg(),
                beta.arg(),
                Arg::I32(d as i32),
                Arg::F32(eps),
            ],
        })?;
    }
    Ok(LayerNormStats { mean, rstd })
}

/// Gradients of [`forward`]: writes `dx` (dtype of `x`) and returns `(dγ, dβ)` as `[d]` f32.
pub fn backward(
    dev: &Device,
    dx: &mut Buffer,
    x: &Buffer,
    gamma: &Buffer,
    stats: &LayerNormStats,
    dy: &Buffer,
    d: usize,
) -> Result<(Buffer, Buffer)> {
    let rows = rows_of(x, d)?;
    let dt = x.dtype();
    check("layer_norm_backward: dx", dx, dt, x.len())?;
    check("layer_norm_backward: dy", dy, dt, x.len())?;
    check("layer_norm_backward: gamma", gamma, dt, d)?;
    check("layer_norm_backward: mean", &stats.mean, DType::F32, rows)?;
    check("layer_norm_backward: rstd", &stats.rstd, DType::F32, rows)?;
    let g = bwd_blocks(rows);
    let mut part_dg = dev.alloc(DType::F32, g * d)?;
    let mut part_db = dev.alloc(DType::F32, g * d)?;
    let mut dgamma = dev.alloc(DType::F32, d)?;
    let mut dbeta = dev.alloc(DType::F32, d)?;
    let kernel = if dt == DType::F32 {
        LAYERNORM_BWD_F32
    } else {
        LAYERNORM_BWD_BF16
    };
    // SAFETY: lengths checked above; block b writes partial row b < g of [g, d]; the dynamic
    // shared memory is 2·d f32; the reduce kernel reads [g, d] and writes d columns.
    unsafe {
        dev.launch(&Launch {
            kernel,
            grid: Dim3::x(g as u32),
            block: Dim3::x(LN_BLOCK),
            shared_bytes: (2 * d * 4) as u32,
            args: &[
                dx.arg_mut(),
                part_dg.arg_mut(),
                part_db.arg_mut(),
                x.arg(),
                gamma.arg(),
                stats.mean.arg(),
                stats.rstd.arg(),
                dy.arg(),
                Arg::I32(rows as i32),
                Arg::I32(d as i32),
            ],
        })?;
        dev.launch(&Launch {
            kernel: LAYERNORM_BWD_REDUCE,
            grid: Dim3::x(d.div_ceil(LN_BLOCK as usize) as u32),
            block: Dim3::x(LN_BLOCK),
            shared_bytes: 0,
            args: &[
                dgamma.arg_mut(),
                dbeta.arg_mut(),
                part_dg.arg(),
                part_db.arg(),
                Arg::I32(g as i32),
                Arg::I32(d as i32),
            ],
        })?;
    }
    Ok((dgamma, dbeta))
}
