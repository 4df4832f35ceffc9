//! Cross-entropy fused with the lm_head in vocab chunks (cuda/cross_entropy.cu and the
//! tensor-core GEMM of cuda/gemm.cu).
//!
//! With `hidden [rows, d]` bf16, the lm_head `W [V, d]` bf16 and `labels [rows]` i32
//! (`−100` = ignored), `z = hidden·Wᵀ` (bf16 products, f32 accumulation):
//! `loss = Σ_{label_r ≠ −100} (logsumexp(z_r) − z_r[label_r]) / count`;
//! backward with upstream gradient `g`: `dz_r = (g/count)·(softmax(z_r) − onehot(label_r))`
//! (0 for ignored rows), `dhidden = dz·W`, `dW = dzᵀ·hidden`.
//! Reference: `engine::ops::linear_cross_entropy`.
//!
//! Every lm_head product runs on [`gemm`] (mma.sync, f32 accumulation) over vocab chunks of
//! `C` columns `[v0, v0 + C)` (the last one shorter), each chunk a view of W's rows:
//! - forward, per chunk: `Z = hidden·W_cᵀ` (f32 `[rows, C]` scratch), folded into a running
//!   per-row (max, Σexp) in chunk order; then `lse_r` and the loss.
//! - backward, per chunk: `Z` recomputed; `dZ = bf16(softmax − onehot)` (`[rows, C]` bf16, 0 on
//!   ignored rows); `dhidden (+)= (g/count)·dZ·W_c` (β = 0 for the first chunk, then 1: chunks
//!   accumulate in order); with `want_dw`, `dW[v0..v0+C] = (g/count)·dZᵀ·hidden`.
//!
//! Precision: logits as any bf16 GEMM (exact bf16 products, f32 sums over d). The gradients use
//! `dZ` rounded once to bf16 (relative error ≤ 2⁻⁸ per element: bf16 keeps 8 significant bits) before the two products, which
//! accumulate in f32; the scale `g/count` is the GEMMs' α, applied to the f32 sums.
//!
//! Determinism: no atomics; the GEMMs have a fixed reduction order, the row reductions a fixed
//! tree, and chunks are combined in order, so repeated calls give bit-identical results.
//!
//! Memory: besides the outputs, the forward holds `rows x min(fwd_chunk, V)` f32 (Z) and three
//! f32 per row; the backward `rows x min(bwd_chunk, V)` f32 (Z) plus the same in bf16 (dZ), i.e.
//! 32 MiB and 16 MiB at rows = 1024 and the default chunk 8192. Labels are validated on the host before
//! upload (as the engine does); a label outside `[0, V)` other than −100 makes the loss NaN.
//!
//! Alignment: W chunk views start at `v0·d` elements with `v0` a multiple of 16, so they are
//! 16-byte aligned whenever `d % 8 == 0` (Falcon: d = 4544), which is exactly when the GEMM takes
//! its 16-byte `cp.async` path for W and hidden; for other `d` the GEMM uses element loads, so
//! every `d ≥ 1` is correct.

use super::check;
use super::gemm::{gemm, Layout};
use crate::defines;
use crate::device::{Dim3, Launch};
use crate::error::{Error, Result};
use crate::kernels::*;
use crate::{Arg, Buffer, DType, Device};

/// Threads per block of the row kernels (`CE_THREADS`).
const THREADS: u32 = defines::cross_entropy::CE_THREADS as u32;
/// Chunks must be a multiple of this many columns.
const CHUNK_MULTIPLE: usize = 16;
/// Default vocab columns per forward chunk (the Z scratch is `rows x FWD_CHUNK` f32: 32 MiB at
/// rows = 1024).
pub const FWD_CHUNK: usize = 8192;
/// Default vocab columns per backward chunk (Z `rows x BWD_CHUNK` f32 plus dZ in bf16).
pub const BWD_CHUNK: usize = 8192;

/// Shapes and chunking of one fused lm_head + cross-entropy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LceShape {
    pub rows: usize,
    pub d: usize,
    pub vocab: usize,
    /// Vocab columns per forward chunk (a positive multiple of 16).
    pub fwd_chunk: usize,
    /// Vocab columns per backward chunk (a positive multiple of 16).
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
        let chunk_ok = |c: usize| c > 0 && c.is_multiple_of(CHUNK_MULTIPLE);
        let ok = self.rows > 0
            && self.d > 0
            && self.vocab > 0
            && chunk_ok(self.fwd_chunk)
            && chunk_ok(self.bwd_chunk)
            && self.rows <= i32::MAX as usize
            && self.d <= i32::MAX as usize
            && self.vocab <= i32::MAX as usize
            // The GEMMs index whole operands with i32 element counts.
            && self.rows.checked_mul(self.d).is_some_and(|n| n <= i32::MAX as usize)
            && self.vocab.checked_mul(self.d).is_some_and(|n| n <= i32::MAX as usize)
            && self
                .rows
                .checked_mul(self.fwd_chunk.max(self.bwd_chunk).min(self.vocab))
                .is_some_and(|n| n <= i32::MAX as usize);
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidLaunch {
                kernel: "linear_cross_entropy",
                reason: format!(
                    "invalid shape {self:?} (positive sizes, chunks positive multiples of \
                     {CHUNK_MULTIPLE}, rows·d, V·d and rows·chunk below 2^31)"
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

/// One block per row (the row kernels' grid).
fn row_grid(rows: usize) -> Dim3 {
    Dim3::x(rows as u32)
}

/// `z[:, 0..vc] = hidden·W[v0..v0+vc]ᵀ` (f32, `[rows, vc]` at the start of the scratch) on the
/// tensor-core GEMM.
fn logits_chunk(
    dev: &Device,
    s: &LceShape,
    hidden: &Buffer,
    w: &Buffer,
    z: &mut Buffer,
    v0: usize,
    vc: usize,
) -> Result<()> {
    let wc = w.view(v0 * s.d, vc * s.d)?;
    let mut zc = z.view_mut(0, s.rows * vc)?;
    gemm(
        dev,
        Layout::Nt,
        hidden,
        &wc,
        &mut zc,
        s.rows,
        vc,
        s.d,
        1.0,
        0.0,
    )
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
    let cmax = s.fwd_chunk.min(s.vocab);
    let mut z = dev.alloc(DType::F32, s.rows * cmax)?;
    let mut run_m = dev.alloc(DType::F32, s.rows)?;
    let mut run_s = dev.alloc(DType::F32, s.rows)?;
    let mut zlab = dev.alloc(DType::F32, s.rows)?;
    let mut loss = dev.alloc(DType::F32, 1)?;
    let mut lse = dev.alloc(DType::F32, s.rows)?;
    let mut v0 = 0;
    while v0 < s.vocab {
        let vc = cmax.min(s.vocab - v0);
        logits_chunk(dev, s, hidden, w, &mut z, v0, vc)?;
        // z is a whole allocation: 16-byte aligned, and each row is when vc % 4 == 0.
        let vec = z.is_aligned(16) && vc.is_multiple_of(4);
        // SAFETY: z holds rows·vc f32 [rows, vc] (written by the GEMM above); block r reads row
        // r and labels[r], writes run_m/run_s/zlab[r] (each [rows] f32); 16-byte loads only when
        // vec (checked above).
        unsafe {
            dev.launch(&Launch {
                kernel: LCE_FWD_FOLD,
                grid: row_grid(s.rows),
                block: Dim3::x(THREADS),
                shared_bytes: 0,
                args: &[
                    run_m.arg_mut(),
                    run_s.arg_mut(),
                    zlab.arg_mut(),
                    z.arg(),
                    labels.arg(),
                    Arg::I32(vc as i32),
                    Arg::I32(v0 as i32),
                    Arg::I32((v0 == 0) as i32),
                    Arg::I32(vec as i32),
                ],
            })?;
        }
        v0 += vc;
    }
    // SAFETY: run_m/run_s/zlab/labels/lse hold rows elements, loss one f32; the first chunk
    // wrote every run_m/run_s/zlab element (zlab NaN where no chunk holds the label).
    unsafe {
        dev.launch(&Launch {
            kernel: LCE_FWD_FINALIZE,
            grid: Dim3::x(1),
            block: Dim3::x(THREADS),
            shared_bytes: 0,
            args: &[
                loss.arg_mut(),
                lse.arg_mut(),
                run_m.arg(),
                run_s.arg(),
                zlab.arg(),
                labels.arg(),
                Arg::I32(s.rows as i32),
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
    let cmax = s.bwd_chunk.min(s.vocab);
    let mut z = dev.alloc(DType::F32, s.rows * cmax)?;
    let mut dz = dev.alloc(DType::BF16, s.rows * cmax)?;
    let mut dh = dev.alloc(DType::F32, s.rows * s.d)?;
    let mut dw = if want_dw {
        Some(dev.alloc(DType::F32, s.vocab * s.d)?)
    } else {
        None
    };
    let scale = (grad_loss / count) as f32;
    let mut v0 = 0;
    while v0 < s.vocab {
        let vc = cmax.min(s.vocab - v0);
        logits_chunk(dev, s, hidden, w, &mut z, v0, vc)?;
        let wc = w.view(v0 * s.d, vc * s.d)?;
        // Whole allocations: rows are 16-byte aligned when vc % 8 == 0.
        let vec = z.is_aligned(16) && dz.is_aligned(16) && vc.is_multiple_of(8);
        // SAFETY: z and dz hold rows·vc elements [rows, vc]; block r reads z row r, labels[r],
        // lse[r] and writes dz row r (every element); 16-byte accesses only when vec.
        unsafe {
            dev.launch(&Launch {
                kernel: LCE_BWD_DZ,
                grid: row_grid(s.rows),
                block: Dim3::x(THREADS),
                shared_bytes: 0,
                args: &[
                    dz.arg_mut(),
                    z.arg(),
                    labels.arg(),
                    lse.arg(),
                    Arg::I32(vc as i32),
                    Arg::I32(v0 as i32),
                    Arg::I32(vec as i32),
                ],
            })?;
        }
        let dzc = dz.view(0, s.rows * vc)?;
        // Chunks accumulate into dh in order: the first overwrites (β = 0 never reads dh).
        let beta = if v0 == 0 { 0.0 } else { 1.0 };
        gemm(
            dev,
            Layout::Nn,
            &dzc,
            &wc,
            &mut dh,
            s.rows,
            s.d,
            vc,
            scale,
            beta,
        )?;
        if let Some(dw) = dw.as_mut() {
            let mut dwc = dw.view_mut(v0 * s.d, vc * s.d)?;
            gemm(
                dev,
                Layout::Tn,
                &dzc,
                hidden,
                &mut dwc,
                vc,
                s.d,
                s.rows,
                scale,
                0.0,
            )?;
        }
        v0 += vc;
    }
    Ok((dh, dw))
}
