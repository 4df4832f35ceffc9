//! RoPE (NeoX rotate-half) fused with Falcon's QKV split (cuda/rope.cu).
//!
//! Forward: the fused projection `qkv [b, t, (hq + 2·hkv)·d]` (f32 or bf16) in Falcon's layout
//! (multi-query `[q_0..q_{hq−1} | k | v]` with hkv = 1, or grouped: hkv groups of
//! `(hq/hkv query heads, k, v)`; see `model-falcon` `split_qkv`) becomes `q [b, hq, t, d]` and
//! `k [b, hkv, t, d]` rotated and `v [b, hkv, t, d]` copied. With `positions [b, t]` u32 and
//! `θ_i = f32(p)·inv_freq[i]`, `inv_freq[i] = 1/base^(2i/d)` in f32 ([`inv_freq`], computed as
//! `engine::ops::rope::RopeTable` does):
//! `y[i] = x[i]·cos θ_i − x[i+h]·sin θ_i`, `y[i+h] = x[i+h]·cos θ_i + x[i]·sin θ_i`, `h = d/2`
//! (an odd last element passes through). Backward: `(dq, dk, dv) → dqkv` with −θ.
//! cos/sin come from a table built once per step by [`table`] (every layer, the forward, the
//! recompute and the backward share the positions, hence the table).
//! Reference: `engine::ops::rope::rope` after `narrow`/`permute` of the fused projection.

use super::check;
use crate::defines;
use crate::device::{Dim3, Launch};
use crate::error::{Error, Result};
use crate::kernels::*;
use crate::{Arg, Buffer, DType, Device};

/// Threads per block (one block per token).
pub const ROPE_BLOCK: u32 = defines::rope::ROPE_BLOCK as u32;
/// Largest supported head_dim (the kernel keeps d/2 cos/sin values in shared memory).
pub const MAX_HEAD_DIM: usize = 2 * defines::rope::ROPE_MAX_HALF;

/// Shapes of the fused projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QkvLayout {
    pub batch: usize,
    pub seq: usize,
    /// Query heads (hq).
    pub heads: usize,
    /// Key/value heads (hkv): 1 for multi-query.
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Grouped layout `[hkv × (r q heads, k, v)]`; otherwise multi-query `[q heads | k | v]`.
    pub grouped: bool,
}

impl QkvLayout {
    fn tokens(&self) -> usize {
        self.batch * self.seq
    }
    /// Elements of the fused projection.
    pub fn qkv_len(&self) -> usize {
        self.tokens() * (self.heads + 2 * self.kv_heads) * self.head_dim
    }
    /// Elements of q.
    pub fn q_len(&self) -> usize {
        self.tokens() * self.heads * self.head_dim
    }
    /// Elements of k (and of v).
    pub fn kv_len(&self) -> usize {
        self.tokens() * self.kv_heads * self.head_dim
    }

    fn validate(&self) -> Result<()> {
        let bad = |reason: String| Error::InvalidLaunch {
            kernel: "rope_qkv",
            reason,
        };
        if self.tokens() == 0 || self.heads == 0 || self.kv_heads == 0 || self.head_dim == 0 {
            return Err(bad(format!("empty layout {self:?}")));
        }
        if self.head_dim > MAX_HEAD_DIM {
            return Err(bad(format!(
                "head_dim {} above {MAX_HEAD_DIM}",
                self.head_dim
            )));
        }
        if self.grouped && !self.heads.is_multiple_of(self.kv_heads) {
            return Err(bad(format!(
                "{} query heads do not split into {} groups",
                self.heads, self.kv_heads
            )));
        }
        if !self.grouped && self.kv_heads != 1 {
            return Err(bad(format!(
                "the multi-query layout has one kv head, got {}",
                self.kv_heads
            )));
        }
        if self.qkv_len() > i32::MAX as usize * 64 || self.tokens() > i32::MAX as usize {
            return Err(bad(format!("layout {self:?} too large")));
        }
        Ok(())
    }
}

/// `inv_freq[i] = 1/base^(2i/d)` for `i < d/2`, in f32 exactly as the CPU reference computes it.
pub fn inv_freq(head_dim: usize, base: f64) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| 1.0f32 / (base as f32).powf((2 * i) as f32 / head_dim as f32))
        .collect()
}

fn common(l: &QkvLayout, dt: DType, table: &Buffer) -> Result<()> {
    l.validate()?;
    if !matches!(dt, DType::F32 | DType::BF16) {
        return Err(Error::DType {
            what: "rope_qkv: qkv",
            expected: DType::BF16,
            got: dt,
        });
    }
    check(
        "rope_qkv: cos/sin table",
        table,
        DType::F32,
        l.tokens() * 2 * (l.head_dim / 2),
    )
}

/// The cos/sin table `[tokens, 2·(d/2)]` f32 (cos θ then sin θ per token) for `positions`
/// (`[tokens]` u32 on the device) and `inv` (the device copy of [`inv_freq`]`(head_dim, base)`):
/// `θ = f32(p)·inv_freq[i]`, cos and sin in f32.
pub fn table(dev: &Device, positions: &Buffer, inv: &Buffer, head_dim: usize) -> Result<Buffer> {
    let h = head_dim / 2;
    let tokens = positions.len();
    check("rope_table: positions", positions, DType::U32, tokens)?;
    check("rope_table: inv_freq", inv, DType::F32, h)?;
    if head_dim > MAX_HEAD_DIM || tokens > i32::MAX as usize {
        return Err(Error::InvalidLaunch {
            kernel: "rope_table",
            reason: format!("{tokens} tokens with head_dim {head_dim}"),
        });
    }
    let mut cs = dev.alloc(DType::F32, tokens * 2 * h)?;
    if tokens * h == 0 {
        return Ok(cs);
    }
    let grid = (tokens * h).div_ceil(256).clamp(1, 4096) as u32;
    // SAFETY: positions hold `tokens` u32, inv h f32, cs tokens·2h f32 (checked/allocated); the
    // kernel touches w < tokens·h only.
    unsafe {
        dev.launch(&Launch {
            kernel: ROPE_TABLE,
            grid: Dim3::x(grid),
            block: Dim3::x(256),
            shared_bytes: 0,
            args: &[
                cs.arg_mut(),
                positions.arg(),
                inv.arg(),
                Arg::I32(tokens as i32),
                Arg::I32(h as i32),
            ],
        })?;
    }
    Ok(cs)
}

fn scalars(l: &QkvLayout) -> [Arg<'static>; 5] {
    [
        Arg::I32(l.seq as i32),
        Arg::I32(l.heads as i32),
        Arg::I32(l.kv_heads as i32),
        Arg::I32(l.head_dim as i32),
        Arg::I32(l.grouped as i32),
    ]
}

/// Splits and rotates `qkv` into `q`, `k` (rotated) and `v` (copied); all the same dtype.
/// `table` comes from [`table`] for this batch's positions.
pub fn forward(
    dev: &Device,
    q: &mut Buffer,
    k: &mut Buffer,
    v: &mut Buffer,
    qkv: &Buffer,
    table: &Buffer,
    l: &QkvLayout,
) -> Result<()> {
    let dt = qkv.dtype();
    common(l, dt, table)?;
    check("rope_qkv: qkv", qkv, dt, l.qkv_len())?;
    check("rope_qkv: q", q, dt, l.q_len())?;
    check("rope_qkv: k", k, dt, l.kv_len())?;
    check("rope_qkv: v", v, dt, l.kv_len())?;
    let kernel = if dt == DType::F32 {
        ROPE_QKV_FWD_F32
    } else {
        ROPE_QKV_FWD_BF16
    };
    let [a, b, c, d, e] = scalars(l);
    // SAFETY: every buffer has the length the layout implies (checked); block (b, s) reads its
    // fused row and writes row s of each output head of batch b; head_dim ≤ MAX_HEAD_DIM.
    unsafe {
        dev.launch(&Launch {
            kernel,
            grid: Dim3::x(l.tokens() as u32),
            block: Dim3::x(ROPE_BLOCK),
            shared_bytes: 0,
            args: &[
                q.arg_mut(),
                k.arg_mut(),
                v.arg_mut(),
                qkv.arg(),
                table.arg(),
                a,
                b,
                c,
                d,
                e,
            ],
        })
    }
}

/// Gradient of [`forward`]: `dqkv` (fused layout) from `dq`, `dk`, `dv`; every element of
/// `dqkv` is written.
pub fn backward(
    dev: &Device,
    dqkv: &mut Buffer,
    dq: &Buffer,
    dk: &Buffer,
    dv: &Buffer,
    table: &Buffer,
    l: &QkvLayout,
) -> Result<()> {
    let dt = dq.dtype();
    common(l, dt, table)?;
    check("rope_qkv_backward: dqkv", dqkv, dt, l.qkv_len())?;
    check("rope_qkv_backward: dq", dq, dt, l.q_len())?;
    check("rope_qkv_backward: dk", dk, dt, l.kv_len())?;
    check("rope_qkv_backward: dv", dv, dt, l.kv_len())?;
    let kernel = if dt == DType::F32 {
        ROPE_QKV_BWD_F32
    } else {
        ROPE_QKV_BWD_BF16
    };
    let [a, b, c, d, e] = scalars(l);
    // SAFETY: as in forward, with the roles of the fused row and the head rows swapped.
    unsafe {
        dev.launch(&Launch {
            kernel,
            grid: Dim3::x(l.tokens() as u32),
            block: Dim3::x(ROPE_BLOCK),
            shared_bytes: 0,
            args: &[
                dqkv.arg_mut(),
                dq.arg(),
                dk.arg(),
                dv.arg(),
                table.arg(),
                a,
                b,
                c,
                d,
                e,
            ],
        })
    }
}
