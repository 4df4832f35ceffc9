//! Cross-entropy fused with the lm_head in vocab chunks (cuda/cross_entropy.cu).
//!
//! With `hidden [rows, d]` bf16, the lm_head `W [V, d]` bf16 and `labels [rows]` i32
//! (`−100` = ignored), `z = hidden·Wᵀ` (f32 accumulation):
//! `loss = Σ_{label_r ≠ −100} (logsumexp(z_r) − z_r[label_r]) / count`;
//! backward with upstream gradient `g`: `dz_r = (g/count)·(softmax(z_r) − onehot(label_r))`
//! (0 for ignored rows), `dhidden = dz·W`, `dW = dzᵀ·hidden`.
//! Reference: `engine::ops::linear_cross_entropy`.
//!
//! Memory: the forward keeps two f32 per (row, chunk) and never the logits; the backward keeps
//! one `rows x bwd_chunk` f32 scratch of dz. Labels are validated on the host before upload (as
//! the engine does); a label ≥ V matches no column and makes the loss NaN.
//!
//! The logits are computed inside these kernels with a plain shared-memory tiled f32 dot product
//! (not the tensor-core GEMM): correct and memory-lean, but far from the GEMM's rate on Falcon's
//! 65024 x 4544 lm_head.

use super::check;
use crate::device::{Dim3, Launch};
use crate::error::{Error, Result};
use crate::kernels::*;
use crate::{Arg, Buffer, DType, Device};

/// Tile edge of the kernels (`CE_T`).
const T: usize = 16;
/// Default vocab columns per forward chunk (one grid column of blocks per chunk).
pub const FWD_CHUNK: usize = 4096;
/// Default vocab columns per backward chunk (the dz scratch is `rows x BWD_CHUNK` f32).
pub const BWD_CHUNK: usize = 8192;

/// Shapes and chunking of one fused lm_head + cross-entropy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LceShape {
    pub rows: usize,
    pub d: usize,
    pub vocab: usize,
    /// Vocab columns per forward chunk (a multiple of 16).
    pub fwd_chunk: usize,
    /// Vocab columns per backward chunk.
    pub bwd_chunk: usize,
}

impl LceShape {
    /// The default chunking.
    pub fn new(rows: usize, d: usize, vocab: usize) -> Self {
        LceShape {
            rows,
            d,
            vocab,
            fwd_chunk: FWD_CHUNK,
            bwd_chunk: BWD_CHUNK,
        }
    }
    fn validate(&self) -> Result<()> {
        let ok = self.rows > 0
            && self.d > 0
            && self.vocab > 0
            && self.fwd_chunk > 0
            && self.fwd_chunk.is_multiple_of(T)
            && self.bwd_chunk > 0
            && self.rows <= i32::MAX as usize
            && self.d <= i32::MAX as usize
            && self.vocab <= i32::MAX as usize
            && self.vocab.div_ceil(self.fwd_chunk) <= 65535
            && self.rows.div_ceil(T) <= i32::MAX as usize;
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidLaunch {
                kernel: "linear_cross_entropy",
                reason: format!(
                    "invalid shape {self:?} (fwd_chunk must be a positive multiple of 16)"
                ),
            })
        }
    }
}

/// Saved by [`forward`]: the loss (one f32) and the per-row logsumexp (`[rows]` f32).
pub struct LceForward {
    pub loss: Buffer,
    pub lse: Buffer,
}

fn inputs(s: &LceShape, hidden: &Buffer, w: &Buffer, labels: &Buffer, count: f64) -> Result<()> {
    s.validate()?;
    check(
        "linear_cross_entropy: hidden",
        hidden,
        DType::BF16,
        s.rows * s.d,
    )?;
    check(
        "linear_cross_entropy: weight",
        w,
        DType::BF16,
        s.vocab * s.d,
    )?;
    check("linear_cross_entropy: labels", labels, DType::I32, s.rows)?;
    if !(count.is_finite() && count > 0.0) {
        return Err(Error::InvalidLaunch {
            kernel: "linear_cross_entropy",
            reason: format!("the token count must be positive, got {count}"),
        });
    }
    Ok(())
}

/// Loss and per-row logsumexp of `hidden·Wᵀ` against `labels`, divided by `count`.
pub fn forward(
    dev: &Device,
    hidden: &Buffer,
    w: &Buffer,
    labels: &Buffer,
    s: &LceShape,
    count: f64,
) -> Result<LceForward> {
    inputs(s, hidden, w, labels, count)?;
    let nchunks = s.vocab.div_ceil(s.fwd_chunk);
    let mut part_m = dev.alloc(DType::F32, s.rows * nchunks)?;
    let mut part_s = dev.alloc(DType::F32, s.rows * nchunks)?;
    let mut zlab = dev.alloc(DType::F32, s.rows)?;
    let mut loss = dev.alloc(DType::F32, 1)?;
    let mut lse = dev.alloc(DType::F32, s.rows)?;
    // SAFETY: hidden [rows, d], W [V, d], labels [rows] checked; part_* hold rows·nchunks f32 and
    // block (x, c) writes rows of tile x at column c only; zlab/lse hold rows; loss one f32.
    unsafe {
        dev.launch(&Launch {
            kernel: LCE_FWD_PARTIAL,
            grid: Dim3 {
                x: s.rows.div_ceil(T) as u32,
                y: nchunks as u32,
                z: 1,
            },
            block: Dim3 {
                x: T as u32,
                y: T as u32,
                z: 1,
            },
            shared_bytes: 0,
            args: &[
                part_m.arg_mut(),
                part_s.arg_mut(),
                zlab.arg_mut(),
                hidden.arg(),
                w.arg(),
                labels.arg(),
                Arg::I32(s.rows as i32),
                Arg::I32(s.d as i32),
                Arg::I32(s.vocab as i32),
                Arg::I32(s.fwd_chunk as i32),
            ],
        })?;
        dev.launch(&Launch {
            kernel: LCE_FWD_FINALIZE,
            grid: Dim3::x(1),
            block: Dim3::x(256),
            shared_bytes: 0,
            args: &[
                loss.arg_mut(),
                lse.arg_mut(),
                part_m.arg(),
                part_s.arg(),
                zlab.arg(),
                labels.arg(),
                Arg::I32(s.rows as i32),
                Arg::I32(nchunks as i32),
                Arg::F32((1.0 / count) as f32),
            ],
        })?;
    }
    Ok(LceForward { loss, lse })
}

/// Gradients of [`forward`]'s loss scaled by `grad_loss`: `dhidden [rows, d]` f32, and
/// `dW [V, d]` f32 when `want_dw`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dev: &Device,
    hidden: &Buffer,
    w: &Buffer,
    labels: &Buffer,
    lse: &Buffer,
    s: &LceShape,
    count: f64,
    grad_loss: f64,
    want_dw: bool,
) -> Result<(Buffer, Option<Buffer>)> {
    inputs(s, hidden, w, labels, count)?;
    check("linear_cross_entropy: lse", lse, DType::F32, s.rows)?;
    let vc_max = s.bwd_chunk.min(s.vocab);
    let mut dz = dev.alloc(DType::F32, s.rows * vc_max)?;
    let mut dh = dev.alloc(DType::F32, s.rows * s.d)?;
    let mut dw = if want_dw {
        Some(dev.alloc(DType::F32, s.vocab * s.d)?)
    } else {
        None
    };
    let scale = (grad_loss / count) as f32;
    let block = Dim3 {
        x: T as u32,
        y: T as u32,
        z: 1,
    };
    let mut v0 = 0;
    while v0 < s.vocab {
        let vc = vc_max.min(s.vocab - v0);
        // SAFETY: dz holds rows·vc_max ≥ rows·vc f32, written at [r][j < vc]; W rows
        // v0..v0+vc < V are read; dh holds rows·d (the first chunk writes every element, later
        // chunks accumulate); dW rows v0..v0+vc are written by this chunk only.
        unsafe {
            dev.launch(&Launch {
                kernel: LCE_BWD_DLOGITS,
                grid: Dim3 {
                    x: s.rows.div_ceil(T) as u32,
                    y: vc.div_ceil(T) as u32,
                    z: 1,
                },
                block,
                shared_bytes: 0,
                args: &[
                    dz.arg_mut(),
                    hidden.arg(),
                    w.arg(),
                    labels.arg(),
                    lse.arg(),
                    Arg::I32(s.rows as i32),
                    Arg::I32(s.d as i32),
                    Arg::I32(v0 as i32),
                    Arg::I32(vc as i32),
                    Arg::F32(scale),
                ],
            })?;
            dev.launch(&Launch {
                kernel: LCE_BWD_DHIDDEN,
                grid: Dim3 {
                    x: s.rows.div_ceil(T) as u32,
                    y: s.d.div_ceil(T) as u32,
                    z: 1,
                },
                block,
                shared_bytes: 0,
                args: &[
                    dh.arg_mut(),
                    dz.arg(),
                    w.arg(),
                    Arg::I32(s.rows as i32),
                    Arg::I32(s.d as i32),
                    Arg::I32(v0 as i32),
                    Arg::I32(vc as i32),
                    Arg::I32((v0 > 0) as i32),
                ],
            })?;
            if let Some(dw) = dw.as_mut() {
                dev.launch(&Launch {
                    kernel: LCE_BWD_DW,
                    grid: Dim3 {
                        x: vc.div_ceil(T) as u32,
                        y: s.d.div_ceil(T) as u32,
                        z: 1,
                    },
                    block,
                    shared_bytes: 0,
                    args: &[
                        dw.arg_mut(),
                        dz.arg(),
                        hidden.arg(),
                        Arg::I32(s.rows as i32),
                        Arg::I32(s.d as i32),
                        Arg::I32(v0 as i32),
                        Arg::I32(vc as i32),
                    ],
                })?;
            }
        }
        v0 += vc;
    }
    Ok((dh, dw))
}
