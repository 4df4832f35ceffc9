//! The Falcon decoder: forward for training (with per-layer activation recompute), the causal-LM
//! loss, logits for evaluation, and the trainable LoRA parameters.
//!
//! Block (docs/hf-semantics.md §1.7): `out = x + Attn(LN_a(x)) + MLP(LN_m(x))` where the 7B layout uses
//! one LayerNorm for both branches. `Attn`: fused QKV projection split per layout, RoPE (NeoX)
//! on q and k, causal attention over grouped KV heads with the key padding mask, `dense`.
//! `MLP`: `dense_4h_to_h(gelu(dense_h_to_4h(h)))`. Final LayerNorm, tied lm_head.

use crate::config::{AttentionLayout, FalconConfig};
use crate::layers::{BaseWeight, LayerNorm, Linear};
use engine::{checkpoint, ops, DType, Error, Result, Tensor, Var};
use std::rc::Rc;

/// LayerNorms of a decoder layer.
#[derive(Clone, Debug)]
pub enum Norms {
    /// `input_layernorm` feeds both branches.
    Single(LayerNorm),
    /// `ln_attn` and `ln_mlp`.
    Separate { attn: LayerNorm, mlp: LayerNorm },
}

#[derive(Clone, Debug)]
pub struct DecoderLayer {
    pub norms: Norms,
    pub qkv: Linear,
    pub dense: Linear,
    pub h_to_4h: Linear,
    pub four_h_to_h: Linear,
}

/// Keys and values of one layer for the tokens seen so far: `[b, T, kv_heads, head_dim]`,
/// RoPE already applied to the keys.
#[derive(Clone, Debug, Default)]
pub struct LayerCache {
    pub k: Option<Tensor>,
    pub v: Option<Tensor>,
}

/// Per-forward inputs shared by all layers.
#[derive(Clone, Debug)]
pub struct ForwardCtx {
    /// `[b, t]` u32 positions of the new tokens.
    pub positions: Tensor,
    /// `[b, total_len]` u8 key mask (1 = real token), covering cached and new tokens.
    pub key_mask: Option<Tensor>,
    pub train: bool,
}

/// Geometry the layer needs from the config.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    grouped: bool,
    rope_theta: f64,
}

impl DecoderLayer {
    /// Splits the fused projection `[b, t, (heads + 2·kv_heads)·head_dim]` into token-major
    /// `q [b, t, heads, head_dim]` and `k, v [b, t, kv_heads, head_dim]`: narrowing only, the
    /// attention kernels read this order directly.
    fn split_qkv(&self, qkv: &Var, g: &Geometry) -> Result<(Var, Var, Var)> {
        let d = qkv.dims();
        let (b, t) = (d[0], d[1]);
        let hd = g.head_dim;
        let heads = |x: Var, heads: usize| -> Result<Var> { ops::reshape(&x, [b, t, heads, hd]) };
        if g.grouped {
            let r = g.heads / g.kv_heads;
            let x = ops::reshape(qkv, [b, t, g.kv_heads, r + 2, hd])?;
            let q = heads(ops::narrow(&x, 3, 0, r)?, g.heads)?;
            let k = heads(ops::narrow(&x, 3, r, 1)?, g.kv_heads)?;
            let v = heads(ops::narrow(&x, 3, r + 1, 1)?, g.kv_heads)?;
            Ok((q, k, v))
        } else {
            let x = ops::reshape(qkv, [b, t, g.heads + 2, hd])?;
            let q = ops::narrow(&x, 2, 0, g.heads)?;
            let k = ops::narrow(&x, 2, g.heads, 1)?;
            let v = ops::narrow(&x, 2, g.heads + 1, 1)?;
            Ok((q, k, v))
        }
    }

    fn attn_norm(&self, x: &Var) -> Result<Var> {
        match &self.norms {
            Norms::Single(ln) | Norms::Separate { attn: ln, .. } => ln.forward(x),
        }
    }

    fn mlp_norm(&self, x: &Var) -> Result<Var> {
        match &self.norms {
            Norms::Single(ln) | Norms::Separate { mlp: ln, .. } => ln.forward(x),
        }
    }

    fn forward(
        &self,
        x: &Var,
        g: &Geometry,
        ctx: &ForwardCtx,
        cache: Option<&mut LayerCache>,
    ) -> Result<Var> {
        let h_attn = self.attn_norm(x)?;
        // Recorded, the MLP branch normalizes `x` itself even when both branches share one
        // LayerNorm, as the second segment of a checkpointed layer must: the contributions to
        // x's gradient then sum in the same order either way, so checkpointing a layer or not
        // gives the same gradients bit for bit.
        let h_mlp = match (&self.norms, engine::grad_enabled()) {
            (Norms::Single(_), false) => h_attn.clone(),
            _ => self.mlp_norm(x)?,
        };
        let qkv = self.qkv.forward(&h_attn, ctx.train)?;
        self.forward_from_qkv(x, &qkv, &h_mlp, g, ctx, cache)
    }

    /// The first of a checkpointed layer's two segments: the attention LayerNorm and the fused
    /// QKV projection, whose output the second segment keeps. Re-run for backward, the
    /// projection's value is this segment's (unread) output, so its product is skipped: a
    /// checkpointed layer never computes its QKV projection twice.
    fn qkv_segment(&self, x: &Var, ctx: &ForwardCtx) -> Result<Var> {
        let h = self.attn_norm(x)?;
        if engine::recomputing() {
            self.qkv.forward_unread(&h, ctx.train)
        } else {
            self.qkv.forward(&h, ctx.train)
        }
    }

    /// The rest of the layer from its fused QKV projection `qkv` and the MLP branch's
    /// normalized input `h_mlp`: attention, the MLP, and the residual sum.
    fn forward_from_qkv(
        &self,
        x: &Var,
        qkv: &Var,
        h_mlp: &Var,
        g: &Geometry,
        ctx: &ForwardCtx,
        cache: Option<&mut LayerCache>,
    ) -> Result<Var> {
        let (q, k, v) = self.split_qkv(qkv, g)?;
        let q = ops::rope_tokens(&q, &ctx.positions, g.rope_theta)?;
        let mut k = ops::rope_tokens(&k, &ctx.positions, g.rope_theta)?;
        let mut v = v;
        if let Some(c) = cache {
            if let (Some(pk), Some(pv)) = (&c.k, &c.v) {
                k = ops::concat(&[&Var::constant(pk.clone()), &k], 1)?;
                v = ops::concat(&[&Var::constant(pv.clone()), &v], 1)?;
            }
            c.k = Some(k.value());
            c.v = Some(v.value());
        }
        // When this layer is re-run for its backward, its output value is never read, and the
        // output projections' backward needs only their inputs: their products are skipped,
        // and so is the attention output when the projection reading it has no adapter.
        let unread = engine::recomputing();
        let scale = 1.0 / (g.head_dim as f64).sqrt();
        let attention = if unread && self.dense.lora.is_none() {
            ops::attention_tokens_unread
        } else {
            ops::attention_tokens
        };
        let a = attention(&q, &k, &v, ctx.key_mask.as_ref(), true, scale)?;
        let ad = a.dims();
        let a = ops::reshape(&a, [ad[0], ad[1], ad[2] * ad[3]])?;
        let out_proj = |lin: &Linear, x: &Var| {
            if unread {
                lin.forward_unread(x, ctx.train)
            } else {
                lin.forward(x, ctx.train)
            }
        };
        let attn_out = out_proj(&self.dense, &a)?;
        // Re-run for backward, a branch with nothing trainable in it and an input that needs no
        // gradient (the first layer's MLP over the frozen embedding, LoRA on attention only)
        // contributes nothing to the backward: it is not recomputed.
        let mlp_frozen = self.h_to_4h.lora.is_none() && self.four_h_to_h.lora.is_none();
        if unread && mlp_frozen && !h_mlp.requires_grad() {
            return ops::add(x, &attn_out);
        }
        let m = ops::gelu(&self.h_to_4h.forward(h_mlp, ctx.train)?)?;
        let mlp_out = out_proj(&self.four_h_to_h, &m)?;
        ops::add(x, &ops::add(&attn_out, &mlp_out)?)
    }

    pub fn linears(&self) -> [&Linear; 4] {
        [&self.qkv, &self.dense, &self.h_to_4h, &self.four_h_to_h]
    }

    pub fn linears_mut(&mut self) -> [&mut Linear; 4] {
        [
            &mut self.qkv,
            &mut self.dense,
            &mut self.h_to_4h,
            &mut self.four_h_to_h,
        ]
    }
}

/// A Falcon causal LM with a frozen base and optional LoRA adapters.
pub struct FalconModel {
    pub config: FalconConfig,
    /// `[vocab, hidden]`, frozen; also the tied lm_head.
    pub embed: Var,
    pub layers: Vec<Rc<DecoderLayer>>,
    pub ln_f: LayerNorm,
    /// Recompute each decoder layer in backward instead of keeping its activations.
    pub recompute: bool,
    /// Rows of logits the fused loss materializes at once.
    pub loss_chunk_rows: usize,
}

/// Bytes of logits (f32) the host model's fused loss materializes at once, by default.
pub const LOSS_CHUNK_BYTES: usize = 64 << 20;

/// Rows of logits per chunk of the host model's fused loss, by default: as many as fit
/// [`LOSS_CHUNK_BYTES`], in multiples of 64, at least 64. Large chunks pay off because each
/// chunk's two products read (and pack) the whole `[vocab, hidden]` lm_head: with a vocabulary of
/// 8192 a batch of 2 x 256 is one chunk; Falcon's 65,024 give 256 rows (64 MiB) per chunk.
pub fn default_loss_chunk_rows(vocab: usize) -> usize {
    let rows = LOSS_CHUNK_BYTES / (4 * vocab.max(1));
    (rows / 64 * 64).max(64)
}

/// Parameter counts as PEFT's `print_trainable_parameters` reports them (a 4-bit weight counts
/// as half its elements, as bitsandbytes' packed `Params4bit` does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamCounts {
    pub trainable: usize,
    pub all: usize,
}

impl std::fmt::Display for ParamCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = 100.0 * self.trainable as f64 / self.all.max(1) as f64;
        write!(
            f,
            "trainable params: {} || all params: {} || trainable%: {pct:.4}",
            thousands(self.trainable),
            thousands(self.all)
        )
    }
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Labels shifted for next-token prediction: row position t learns `labels[t+1]`; the last
/// position of each row learns nothing.
pub fn shift_labels(labels: &[i32], batch: usize, seq: usize) -> Vec<i32> {
    let mut out = vec![ops::IGNORE_INDEX; batch * seq];
    for b in 0..batch {
        for t in 0..seq.saturating_sub(1) {
            out[b * seq + t] = labels[b * seq + t + 1];
        }
    }
    out
}

/// `0..seq` for every row (HF training positions, independent of padding).
pub fn training_positions(batch: usize, seq: usize) -> Tensor {
    let p: Vec<u32> = (0..batch).flat_map(|_| 0..seq as u32).collect();
    Tensor::from_vec(p, [batch, seq]).expect("length matches")
}

/// Checks `ids` is u32 `[batch, seq]` and `mask` (if any) u8 of the same shape; `(batch, seq)`.
pub(crate) fn check_ids(ids: &Tensor, mask: Option<&Tensor>) -> Result<(usize, usize)> {
    if ids.rank() != 2 || ids.dtype() != DType::U32 {
        return Err(Error::Invalid {
            op: "falcon forward",
            detail: format!(
                "input ids must be u32 [batch, seq], got {} {}",
                ids.dtype(),
                ids.shape()
            ),
        });
    }
    if let Some(m) = mask {
        if m.dims() != ids.dims() || m.dtype() != DType::U8 {
            return Err(Error::Invalid {
                op: "falcon forward",
                detail: format!(
                    "attention mask must be u8 {}, got {} {}",
                    ids.shape(),
                    m.dtype(),
                    m.shape()
                ),
            });
        }
    }
    Ok((ids.dims()[0], ids.dims()[1]))
}

impl FalconModel {
    fn geometry(&self) -> Geometry {
        let c = &self.config;
        Geometry {
            heads: c.num_attention_heads,
            kv_heads: c.num_kv_heads(),
            head_dim: c.head_dim(),
            grouped: matches!(c.attention, AttentionLayout::Grouped { .. }),
            rope_theta: c.rope_theta,
        }
    }

    /// Final hidden states `[b, t, hidden]` (after ln_f) for a training or evaluation forward.
    ///
    /// With [`Self::recompute`], every decoder layer but the last is checkpointed: the last
    /// layer's backward runs right after the forward, so its activations are kept instead of
    /// recomputed (one layer's forward less per step; the gradients are bitwise those of
    /// checkpointing it too, `model-falcon/tests/recompute_last_layer.rs`). A checkpointed
    /// layer is two segments, LayerNorm + QKV projection and the rest, so besides its input it
    /// keeps its QKV projection (`(heads + 2·kv_heads)·head_dim` values per token, about
    /// 1.03x hidden for Falcon-7B) and the re-run for backward skips that product: selective
    /// recompute, which trades a little activation memory for about a fifth of each recomputed
    /// layer's products.
    pub fn forward_hidden(&self, ids: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<Var> {
        self.forward_hidden_with(ids, mask, train, false)
    }

    /// [`Self::forward_hidden`], choosing whether the last layer is checkpointed too when
    /// [`Self::recompute`] is on (`true` is the plain per-layer recompute, kept to test that
    /// keeping the last layer changes no gradient).
    pub fn forward_hidden_with(
        &self,
        ids: &Tensor,
        mask: Option<&Tensor>,
        train: bool,
        checkpoint_last: bool,
    ) -> Result<Var> {
        let (b, t) = check_ids(ids, mask)?;
        let g = self.geometry();
        let ctx = ForwardCtx {
            positions: training_positions(b, t),
            key_mask: mask.cloned(),
            train,
        };
        let mut h = ops::embedding(ids, &self.embed)?;
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            let checkpointed = self.recompute && (i < last || checkpoint_last);
            h = if checkpointed && engine::grad_enabled() {
                let (l, c) = (layer.clone(), ctx.clone());
                let qkv = checkpoint(&[&h], move |x| l.qkv_segment(&x[0], &c))?;
                let (l, c) = (layer.clone(), ctx.clone());
                checkpoint(&[&h, &qkv], move |x| {
                    let h_mlp = l.mlp_norm(&x[0])?;
                    l.forward_from_qkv(&x[0], &x[1], &h_mlp, &g, &c, None)
                })?
            } else {
                layer.forward(&h, &g, &ctx, None)?
            };
        }
        self.ln_f.forward(&h)
    }

    /// Causal-LM loss: `Σ CE(logits[t], labels[t+1]) / count` over targets ≠ −100, where `count`
    /// is the number of targets in the whole accumulation window (HF ≥ 5 semantics).
    pub fn loss(
        &self,
        ids: &Tensor,
        mask: Option<&Tensor>,
        labels: &[i32],
        count: f64,
        train: bool,
    ) -> Result<Var> {
        let (b, t) = check_ids(ids, mask)?;
        if labels.len() != b * t {
            return Err(Error::Invalid {
                op: "falcon loss",
                detail: format!("{} labels for a [{b}, {t}] batch", labels.len()),
            });
        }
        let h = self.forward_hidden(ids, mask, train)?;
        let h = ops::reshape(&h, [b * t, self.config.hidden_size])?;
        ops::linear_cross_entropy(
            &h,
            &self.embed,
            &shift_labels(labels, b, t),
            count,
            self.loss_chunk_rows,
        )
    }

    /// Logits `[b, t, vocab]` without recording gradients.
    pub fn logits(&self, ids: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        engine::no_grad(|| {
            let h = self.forward_hidden(ids, mask, false)?;
            Ok(ops::linear(&h, &self.embed)?.value())
        })
    }

    /// One incremental step with a KV cache (no gradients): feeds `ids [b, t_new]` at
    /// `positions`, with `key_mask [b, cached + t_new]`, and returns the logits of the last
    /// new position `[b, vocab]`.
    pub fn forward_cached(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        key_mask: &Tensor,
        caches: &mut [LayerCache],
    ) -> Result<Tensor> {
        let (b, t) = check_ids(ids, None)?;
        if caches.len() != self.layers.len() {
            return Err(Error::Invalid {
                op: "falcon forward_cached",
                detail: format!("{} caches for {} layers", caches.len(), self.layers.len()),
            });
        }
        let g = self.geometry();
        engine::no_grad(|| {
            let ctx = ForwardCtx {
                positions: positions.clone(),
                key_mask: Some(key_mask.clone()),
                train: false,
            };
            let mut h = ops::embedding(ids, &self.embed)?;
            for (layer, cache) in self.layers.iter().zip(caches.iter_mut()) {
                h = layer.forward(&h, &g, &ctx, Some(cache))?;
            }
            let last = ops::narrow(&h, 1, t - 1, 1)?;
            let last = self
                .ln_f
                .forward(&ops::reshape(&last, [b, self.config.hidden_size])?)?;
            Ok(ops::linear(&last, &self.embed)?.value())
        })
    }

    /// The trainable LoRA parameters with their PEFT state-dict keys
    /// (`base_model.model.<module>.lora_A.weight`), in layer order.
    pub fn lora_parameters(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for layer in &self.layers {
            for lin in layer.linears() {
                if let Some(l) = &lin.lora {
                    out.push((
                        format!("base_model.model.{}.lora_A.weight", lin.name),
                        l.a.clone(),
                    ));
                    out.push((
                        format!("base_model.model.{}.lora_B.weight", lin.name),
                        l.b.clone(),
                    ));
                }
            }
        }
        out
    }

    /// Counts as PEFT prints them.
    pub fn param_counts(&self) -> ParamCounts {
        let mut all = self.embed.value().elem_count() + 2 * self.ln_f.weight.value().elem_count();
        let mut trainable = 0;
        for layer in &self.layers {
            all += match &layer.norms {
                Norms::Single(_) => 2 * self.config.hidden_size,
                Norms::Separate { .. } => 4 * self.config.hidden_size,
            };
            for lin in layer.linears() {
                let [o, i] = lin.base.shape();
                all += match lin.base {
                    BaseWeight::Dense(_) => o * i,
                    BaseWeight::Quantized(_) => o * i / 2,
                };
                if let Some(l) = &lin.lora {
                    let n = l.a.value().elem_count() + l.b.value().elem_count();
                    trainable += n;
                    all += n;
                }
            }
        }
        ParamCounts { trainable, all }
    }

    /// Bytes of the frozen base (embedding, norms, linear weights as stored).
    pub fn base_bytes(&self) -> usize {
        let mut n =
            self.embed.value().size_in_bytes() + 2 * self.ln_f.weight.value().size_in_bytes();
        for layer in &self.layers {
            n += layer
                .linears()
                .iter()
                .map(|l| l.base.storage_bytes())
                .sum::<usize>();
            n += match &layer.norms {
                Norms::Single(_) => 2,
                Norms::Separate { .. } => 4,
            } * self.config.hidden_size
                * 4;
        }
        n
    }
}
