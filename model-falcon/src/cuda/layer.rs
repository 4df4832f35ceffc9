//! One Falcon decoder layer on the device: forward (keeping what backward needs) and backward.
//!
//! Forward, activations bf16 `[M = b·t, ·]` row-major (docs/hf-semantics.md §1.7):
//! `h = LN(x)` (one LN, or `ln_attn`/`ln_mlp`), `qkv = h·Wqkvᵀ (+LoRA)`, split + RoPE into
//! `q [b, hq, t, d]`, `k, v [b, hkv, t, d]` (one fused kernel), flash attention (causal, key
//! mask) with its logsumexp, written as `[b, t, hq·d]` (no transpose), `dense`;
//! `m = gelu(h·W4hᵀ)`, `4h_to_h`;
//! `out = x + attn + mlp`. Backward runs the same chain in reverse; the two branches' input
//! gradients meet in one buffer (the 4-bit GEMM accumulates with β = 1) before the LayerNorm.

use super::adapters::{AdapterStore, LoraActs};
use super::weights::{alloc, DeviceLayer, DeviceLinear, DeviceNorm, DeviceNorms, Geometry};
use super::{cuda_err, Dev, RngCursor};
use crate::Result;
use kernels_cu::ops::attention::{self, AttnShape};
use kernels_cu::ops::layernorm::{self, LayerNormStats};
use kernels_cu::ops::rope::{self, QkvLayout};
use kernels_cu::ops::{elementwise, pointwise};
use kernels_cu::{Buffer, DType};

/// Per-forward inputs shared by all layers.
pub(crate) struct StepCtx<'a> {
    pub dev: &'a Dev,
    pub g: Geometry,
    pub batch: usize,
    pub seq: usize,
    /// RoPE cos/sin table `[M, head_dim]` f32 for the batch's positions.
    pub rope: &'a Buffer,
    /// `[b, t]` u8 key mask (1 = real token).
    pub mask: Option<&'a Buffer>,
    pub train: bool,
}

impl StepCtx<'_> {
    pub fn m(&self) -> usize {
        self.batch * self.seq
    }
    fn layout(&self) -> QkvLayout {
        QkvLayout {
            batch: self.batch,
            seq: self.seq,
            heads: self.g.heads,
            kv_heads: self.g.kv_heads,
            head_dim: self.g.head_dim,
            grouped: self.g.grouped,
        }
    }
    fn attn_shape(&self) -> AttnShape {
        AttnShape {
            batch: self.batch,
            q_heads: self.g.heads,
            kv_heads: self.g.kv_heads,
            q_len: self.seq,
            kv_len: self.seq,
            head_dim: self.g.head_dim,
            causal: true,
            scale: (1.0 / (self.g.head_dim as f64).sqrt()) as f32,
            // O straight into the `[M, hq·d]` rows `dense` reads; its gradient comes back so.
            o_token_major: true,
        }
    }
    pub fn lce_shape(&self) -> kernels_cu::ops::cross_entropy::LceShape {
        kernels_cu::ops::cross_entropy::LceShape::new(self.m(), self.g.hidden, self.g.vocab)
    }
    fn q_elems(&self) -> usize {
        self.m() * self.g.heads * self.g.head_dim
    }
    fn kv_elems(&self) -> usize {
        self.m() * self.g.kv_heads * self.g.head_dim
    }
}

/// What a layer's backward needs from its forward.
pub(crate) struct LayerActs {
    /// LayerNorm outputs and statistics: one entry (shared), or attention then MLP.
    norms: Vec<(Buffer, LayerNormStats)>,
    qkv: Option<LoraActs>,
    q: Buffer,
    k: Buffer,
    v: Buffer,
    lse: Buffer,
    /// Attention output as `[M, hq·d]` (token-major), the input of `dense`.
    attn: Buffer,
    dense: Option<LoraActs>,
    /// `h_to_4h` output before GELU.
    pre: Buffer,
    h_to_4h: Option<LoraActs>,
    /// `gelu(pre)`, the input of `4h_to_h`.
    act: Buffer,
    four_h_to_h: Option<LoraActs>,
}

impl LayerActs {
    /// The layer's keys and values `[b, hkv, t, d]` (after RoPE), for a KV cache.
    pub(crate) fn kv(&self) -> (&Buffer, &Buffer) {
        (&self.k, &self.v)
    }
    fn h_attn(&self) -> &Buffer {
        &self.norms[0].0
    }
    fn h_mlp(&self) -> &Buffer {
        &self.norms[self.norms.len() - 1].0
    }
}

/// `LayerNorm(x)` over rows of `hidden` (bf16) and the statistics its backward needs.
pub(crate) fn norm_forward(
    ctx: &StepCtx,
    n: &DeviceNorm,
    x: &Buffer,
) -> Result<(Buffer, LayerNormStats)> {
    let mut h = alloc(ctx.dev, "LayerNorm output", DType::BF16, x.len())?;
    let st = layernorm::forward(
        ctx.dev,
        &mut h,
        x,
        &n.gamma,
        &n.beta,
        ctx.g.hidden,
        ctx.g.eps,
    )
    .map_err(cuda_err("LayerNorm".into()))?;
    Ok((h, st))
}

fn linear_forward(
    ctx: &StepCtx,
    lin: &DeviceLinear,
    store: &AdapterStore,
    x: &Buffer,
    rng: &mut RngCursor,
) -> Result<(Buffer, Option<LoraActs>)> {
    let m = ctx.m();
    let mut y = alloc(ctx.dev, &lin.name, DType::BF16, m * lin.shape[0])?;
    lin.base
        .forward(ctx.dev, x, &mut y, m, lin.shape, 0.0)
        .map_err(cuda_err(lin.name.clone()))?;
    let acts = match lin.lora {
        Some(i) => {
            let rng = if ctx.train { Some(rng) } else { None };
            Some(store.forward(ctx.dev, i, x, &mut y, m, rng)?)
        }
        None => None,
    };
    Ok((y, acts))
}

/// A linear of a recomputed forward whose output no backward reads (the attention and MLP
/// branch outputs only feed the layer output): no product, only what its adapter's backward
/// needs, with the same dropout draw as [`linear_forward`].
fn linear_unread(
    ctx: &StepCtx,
    lin: &DeviceLinear,
    store: &AdapterStore,
    x: &Buffer,
    rng: &mut RngCursor,
) -> Result<Option<LoraActs>> {
    match lin.lora {
        Some(i) => {
            let rng = if ctx.train { Some(rng) } else { None };
            Ok(Some(store.forward_acts(ctx.dev, i, x, ctx.m(), rng)?))
        }
        None => Ok(None),
    }
}

/// `dx = dy·W (+ adapter) + β·dx`; adapter gradients accumulate into `store`.
#[allow(clippy::too_many_arguments)]
fn linear_backward(
    ctx: &StepCtx,
    lin: &DeviceLinear,
    store: &mut AdapterStore,
    dy: &Buffer,
    x: &Buffer,
    acts: Option<&LoraActs>,
    dx: &mut Buffer,
    beta: f32,
) -> Result<()> {
    let m = ctx.m();
    lin.base
        .backward_input(ctx.dev, dy, dx, m, lin.shape, beta)
        .map_err(cuda_err(format!("{} backward", lin.name)))?;
    if let (Some(i), Some(a)) = (lin.lora, acts) {
        store.backward(ctx.dev, i, dy, x, a, dx, m)?;
    }
    Ok(())
}

/// Forward of one layer: `out [M, hidden]` bf16 and the saved activations.
pub(crate) fn forward(
    ctx: &StepCtx,
    layer: &DeviceLayer,
    store: &AdapterStore,
    x: &Buffer,
    rng: &mut RngCursor,
) -> Result<(Buffer, LayerActs)> {
    let (attn_out, mlp_out, acts) = forward_parts(ctx, layer, store, x, rng, |lin, input, rng| {
        linear_forward(ctx, lin, store, input, rng)
    })?;
    let mut out = alloc(ctx.dev, "layer output", DType::BF16, ctx.m() * ctx.g.hidden)?;
    pointwise::residual_add3(ctx.dev, &mut out, x, &attn_out, &mlp_out)
        .map_err(cuda_err("residual".into()))?;
    Ok((out, acts))
}

/// The saved activations of [`forward`], recomputed for the layer's backward (gradient
/// checkpointing). The layer output is not: the backward never reads it, nor the two branch
/// outputs that only feed it, so the dense and 4h_to_h products are skipped (about a sixth of
/// the step's NF4 GEMM work); their adapters still compute what their backward needs, with
/// the same dropout draws in the same order.
pub(crate) fn recompute(
    ctx: &StepCtx,
    layer: &DeviceLayer,
    store: &AdapterStore,
    x: &Buffer,
    rng: &mut RngCursor,
) -> Result<LayerActs> {
    let ((), (), acts) = forward_parts(ctx, layer, store, x, rng, |lin, input, rng| {
        Ok(((), linear_unread(ctx, lin, store, input, rng)?))
    })?;
    Ok(acts)
}

/// One layer's forward up to its two branch outputs, which `branch` computes (or not) for the
/// dense and 4h_to_h linears, in the module order of the forward (so dropout draws keep their
/// order): the attention branch output, the MLP branch output and the saved activations.
fn forward_parts<T>(
    ctx: &StepCtx,
    layer: &DeviceLayer,
    store: &AdapterStore,
    x: &Buffer,
    rng: &mut RngCursor,
    mut branch: impl FnMut(&DeviceLinear, &Buffer, &mut RngCursor) -> Result<(T, Option<LoraActs>)>,
) -> Result<(T, T, LayerActs)> {
    let dev = ctx.dev;
    let norms = match &layer.norms {
        DeviceNorms::Single(n) => vec![norm_forward(ctx, n, x)?],
        DeviceNorms::Separate { attn, mlp } => {
            vec![norm_forward(ctx, attn, x)?, norm_forward(ctx, mlp, x)?]
        }
    };
    let h_attn = &norms[0].0;
    let h_mlp = &norms[norms.len() - 1].0;

    let (qkv, qkv_acts) = linear_forward(ctx, &layer.qkv, store, h_attn, rng)?;
    let mut q = alloc(dev, "q", DType::BF16, ctx.q_elems())?;
    let mut k = alloc(dev, "k", DType::BF16, ctx.kv_elems())?;
    let mut v = alloc(dev, "v", DType::BF16, ctx.kv_elems())?;
    rope::forward(dev, &mut q, &mut k, &mut v, &qkv, ctx.rope, &ctx.layout())
        .map_err(cuda_err("QKV split + RoPE".into()))?;
    drop(qkv);
    let mut attn = alloc(dev, "attention output", DType::BF16, ctx.q_elems())?;
    let lse = attention::forward(dev, &ctx.attn_shape(), &mut attn, &q, &k, &v, ctx.mask)
        .map_err(cuda_err("attention".into()))?;
    let (attn_out, dense_acts) = branch(&layer.dense, &attn, rng)?;

    let (pre, h4h_acts) = linear_forward(ctx, &layer.h_to_4h, store, h_mlp, rng)?;
    let mut act = alloc(dev, "gelu", DType::BF16, pre.len())?;
    pointwise::gelu_forward(dev, &mut act, &pre).map_err(cuda_err("gelu".into()))?;
    let (mlp_out, fhh_acts) = branch(&layer.four_h_to_h, &act, rng)?;
    Ok((
        attn_out,
        mlp_out,
        LayerActs {
            norms,
            qkv: qkv_acts,
            q,
            k,
            v,
            lse,
            attn,
            dense: dense_acts,
            pre,
            h_to_4h: h4h_acts,
            act,
            four_h_to_h: fhh_acts,
        },
    ))
}

fn norm_backward(
    ctx: &StepCtx,
    n: &DeviceNorm,
    x: &Buffer,
    st: &LayerNormStats,
    dh: &Buffer,
) -> Result<Buffer> {
    let mut dx = alloc(ctx.dev, "LayerNorm input gradient", DType::BF16, x.len())?;
    // dγ and dβ of the frozen norm are computed by the kernel and dropped.
    layernorm::backward(ctx.dev, &mut dx, x, &n.gamma, st, dh, ctx.g.hidden)
        .map_err(cuda_err("LayerNorm backward".into()))?;
    Ok(dx)
}

/// Backward of one layer: returns `dx [M, hidden]` given `dout` and the layer input `x`.
pub(crate) fn backward(
    ctx: &StepCtx,
    layer: &DeviceLayer,
    store: &mut AdapterStore,
    x: &Buffer,
    acts: &LayerActs,
    dout: &Buffer,
) -> Result<Buffer> {
    let dev = ctx.dev;
    let m = ctx.m();
    let hidden = ctx.g.hidden;

    // MLP branch: 4h_to_h, GELU, h_to_4h.
    let mut dact = alloc(dev, "gelu output gradient", DType::BF16, acts.act.len())?;
    linear_backward(
        ctx,
        &layer.four_h_to_h,
        store,
        dout,
        &acts.act,
        acts.four_h_to_h.as_ref(),
        &mut dact,
        0.0,
    )?;
    let mut dpre = alloc(dev, "gelu input gradient", DType::BF16, acts.pre.len())?;
    pointwise::gelu_backward(dev, &mut dpre, &acts.pre, &dact)
        .map_err(cuda_err("gelu backward".into()))?;
    drop(dact);
    let mut dh_mlp = alloc(dev, "MLP input gradient", DType::BF16, m * hidden)?;
    linear_backward(
        ctx,
        &layer.h_to_4h,
        store,
        &dpre,
        acts.h_mlp(),
        acts.h_to_4h.as_ref(),
        &mut dh_mlp,
        0.0,
    )?;
    drop(dpre);

    // Attention branch: dense, layout, attention, RoPE + split, qkv.
    let mut dattn = alloc(dev, "attention output gradient", DType::BF16, ctx.q_elems())?;
    linear_backward(
        ctx,
        &layer.dense,
        store,
        dout,
        &acts.attn,
        acts.dense.as_ref(),
        &mut dattn,
        0.0,
    )?;
    let grads = attention::backward(
        dev,
        &ctx.attn_shape(),
        &acts.q,
        &acts.k,
        &acts.v,
        ctx.mask,
        &acts.attn,
        &acts.lse,
        &dattn,
    )
    .map_err(cuda_err("attention backward".into()))?;
    drop(dattn);
    // The f32 gradients are rotated back, merged into the fused layout and rounded to bf16 in
    // one pass.
    let mut dqkv = alloc(dev, "qkv gradient", DType::BF16, m * ctx.g.qkv_out())?;
    rope::backward(
        dev,
        &mut dqkv,
        &grads.dq,
        &grads.dk,
        &grads.dv,
        ctx.rope,
        &ctx.layout(),
    )
    .map_err(cuda_err("QKV split + RoPE backward".into()))?;
    drop(grads);

    let mut dx = match &layer.norms {
        DeviceNorms::Single(n) => {
            // Both branches read the same LN output: their gradients add up in dh_mlp.
            linear_backward(
                ctx,
                &layer.qkv,
                store,
                &dqkv,
                acts.h_attn(),
                acts.qkv.as_ref(),
                &mut dh_mlp,
                1.0,
            )?;
            norm_backward(ctx, n, x, &acts.norms[0].1, &dh_mlp)?
        }
        DeviceNorms::Separate { attn, mlp } => {
            let mut dh_attn = alloc(dev, "attention input gradient", DType::BF16, m * hidden)?;
            linear_backward(
                ctx,
                &layer.qkv,
                store,
                &dqkv,
                acts.h_attn(),
                acts.qkv.as_ref(),
                &mut dh_attn,
                0.0,
            )?;
            let mut dx = norm_backward(ctx, attn, x, &acts.norms[0].1, &dh_attn)?;
            let dx_mlp = norm_backward(ctx, mlp, x, &acts.norms[1].1, &dh_mlp)?;
            elementwise::axpy(dev, &mut dx, &dx_mlp, 1.0)
                .map_err(cuda_err("LayerNorm gradients".into()))?;
            dx
        }
    };
    // The residual path.
    elementwise::axpy(dev, &mut dx, dout, 1.0).map_err(cuda_err("residual gradient".into()))?;
    Ok(dx)
}
