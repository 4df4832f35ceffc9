//! Multi-tensor AdamW over packed flat f32 buffers and the global gradient norm with clipping
//! (cuda/adamw.cu).
//!
//! Layout: all trainable tensors are contiguous ranges of one flat f32 buffer each for the
//! parameters, gradients, `exp_avg` and `exp_avg_sq` (same offsets in all four), so one launch
//! updates every tensor.
//!
//! Reference: `engine::optim::adamw::adamw_update` (torch.optim.AdamW) and
//! `engine::optim::clip::clip_grad_norm`. The scalars are computed here in f64 exactly as the
//! reference computes them and rounded once to f32 ([`AdamWScalars::new`]):
//! `step_size = f32(lr/(1−β1ᵗ))`, `bc2_sqrt = f32(√(1−β2ᵗ))`, `decay = f32(1 − lr·λ)`,
//! `b1 = f32(β1)`, `b2 = f32(β2)`, `ob1 = f32(1−β1)`, `ob2 = f32(1−β2)`, `eps = f32(ε)`
//! (with `βᵗ = β.powi(t)`). The kernel then evaluates, with IEEE round-to-nearest f32
//! operations and no FMA contraction, for `g' = g·c` (c the clipping coefficient):
//! `p ← p·decay; m ← b1·m + ob1·g'; v ← b2·v + (ob2·g')·g'; p ← p − step_size·(m/(√v/bc2_sqrt + eps))`,
//! the same sequence as the reference, so results are bit-identical.

use crate::defines;

/// Threads per block of the AdamW and norm kernels (`ADAMW_BLOCK`).
const BLOCK: u32 = defines::adamw::ADAMW_BLOCK as u32;
use crate::device::{Dim3, Launch};
use crate::error::{Error, Result};
use crate::kernels::*;
use crate::{Arg, Buffer, DType, Device};

/// Most blocks of the gradient-norm pass 1.
pub const MAX_NORM_PARTIALS: usize = 1024;

/// AdamW hyper-parameters (torch names).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWHyper {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// The f32 scalars the kernel takes, computed in f64 and rounded once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWScalars {
    pub step_size: f32,
    pub bc2_sqrt: f32,
    pub decay: f32,
    pub b1: f32,
    pub b2: f32,
    pub ob1: f32,
    pub ob2: f32,
    pub eps: f32,
}

impl AdamWScalars {
    /// Scalars of step `step` (1-based), as `adamw_update` computes them.
    pub fn new(h: &AdamWHyper, step: u64) -> Self {
        let t = i32::try_from(step).unwrap_or(i32::MAX);
        let bc1 = 1.0 - h.beta1.powi(t);
        let bc2 = 1.0 - h.beta2.powi(t);
        AdamWScalars {
            step_size: (h.lr / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
            decay: (1.0 - h.lr * h.weight_decay) as f32,
            b1: h.beta1 as f32,
            b2: h.beta2 as f32,
            ob1: (1.0 - h.beta1) as f32,
            ob2: (1.0 - h.beta2) as f32,
            eps: h.eps as f32,
        }
    }
}

fn check_f32(what: &'static str, b: &Buffer, len: usize) -> Result<()> {
    if b.dtype() != DType::F32 {
        return Err(Error::DType {
            what,
            expected: DType::F32,
            got: b.dtype(),
        });
    }
    if b.len() != len {
        return Err(Error::Length {
            what,
            expected: len,
            got: b.len(),
        });
    }
    Ok(())
}

/// One AdamW step over the packed buffers `p`, `m`, `v` (updated in place) with gradients `g`,
/// all f32 of the same length. `gscale` is a one-element f32 device buffer holding the factor
/// the gradients are multiplied by first: `[1.0]` without clipping, or element 1 of
/// [`grad_norm`]'s output (pass that buffer and `scale_index = 1`) to clip without a host sync.
#[allow(clippy::too_many_arguments)]
pub fn step(
    dev: &Device,
    p: &mut Buffer,
    m: &mut Buffer,
    v: &mut Buffer,
    g: &Buffer,
    gscale: &Buffer,
    scale_index: usize,
    s: &AdamWScalars,
) -> Result<()> {
    let n = p.len();
    check_f32("adamw: p", p, n)?;
    check_f32("adamw: exp_avg", m, n)?;
    check_f32("adamw: exp_avg_sq", v, n)?;
    check_f32("adamw: grad", g, n)?;
    if gscale.dtype() != DType::F32 || scale_index >= gscale.len() {
        return Err(Error::Length {
            what: "adamw: gradient scale (f32 buffer holding the index)",
            expected: scale_index + 1,
            got: gscale.len(),
        });
    }
    if n == 0 {
        return Ok(());
    }
    let grid = n.div_ceil(BLOCK as usize * 4).clamp(1, 4096) as u32;
    // SAFETY: p, m, v, g hold n f32 (checked), 16-byte aligned device allocations; gscale holds
    // at least scale_index + 1 f32; the kernel touches indices < n only.
    unsafe {
        dev.launch(&Launch {
            kernel: ADAMW_F32,
            grid: Dim3::x(grid),
            block: Dim3::x(BLOCK),
            shared_bytes: 0,
            args: &[
                p.arg_mut(),
                m.arg_mut(),
                v.arg_mut(),
                g.arg(),
                Arg::RefAt(gscale, scale_index),
                Arg::I64(n as i64),
                Arg::F32(s.step_size),
                Arg::F32(s.bc2_sqrt),
                Arg::F32(s.decay),
                Arg::F32(s.b1),
                Arg::F32(s.b2),
                Arg::F32(s.ob1),
                Arg::F32(s.ob2),
                Arg::F32(s.eps),
            ],
        })
    }
}

/// Pass-1 blocks of [`grad_norm`] for `n` gradient elements (a function of `n` only).
pub fn norm_partials(n: usize) -> usize {
    n.div_ceil(BLOCK as usize * 8).clamp(1, MAX_NORM_PARTIALS)
}

/// Global L2 norm of the packed f32 gradients `g` and the clipping coefficient:
/// returns a 2-element f32 buffer `[‖g‖₂, c]` with `c = max_norm/(‖g‖₂ + 1e-6)` when
/// `max_norm > 0` and that is below 1, else `c = 1` (torch's clip_grad_norm_). Deterministic:
/// fixed-order f32 partial sums per block, then their f64 sum.
pub fn grad_norm(dev: &Device, g: &Buffer, max_norm: f32) -> Result<Buffer> {
    check_f32("grad_norm: grad", g, g.len())?;
    let blocks = norm_partials(g.len());
    let mut partial = dev.alloc(DType::F32, blocks)?;
    let mut out = dev.alloc(DType::F32, 2)?;
    // SAFETY: g holds n f32 (read at indices < n); partial holds one f32 per pass-1 block; out 2.
    unsafe {
        dev.launch(&Launch {
            kernel: GRAD_SUMSQ_PARTIALS,
            grid: Dim3::x(blocks as u32),
            block: Dim3::x(BLOCK),
            shared_bytes: 0,
            args: &[partial.arg_mut(), g.arg(), Arg::I64(g.len() as i64)],
        })?;
        dev.launch(&Launch {
            kernel: GRAD_NORM_FINALIZE,
            grid: Dim3::x(1),
            block: Dim3::x(BLOCK),
            shared_bytes: 0,
            args: &[
                out.arg_mut(),
                partial.arg(),
                Arg::I32(blocks as i32),
                Arg::F32(max_norm),
            ],
        })?;
    }
    Ok(out)
}
