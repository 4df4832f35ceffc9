//! Generation on the device: prefill, then one token per step through a KV cache.
//!
//! Semantics are those of [`FalconModel::generate`] (the host reference): prompts left-padded
//! to a common length, padded keys masked, positions `cumsum(mask) − 1`, the same token choice
//! ([`crate::generate::choose_tokens`]: greedy, or temperature/top-p from the seed's counter
//! stream), each prompt stopping at its own stop id.
//!
//! - Prefill: the training step's forward ([`layer::forward`], eval mode: tensor-core GEMMs,
//!   flash attention with the key mask) over `[b, len]`; each layer's K and V (after RoPE) go
//!   into its cache, `[b, hkv, cap, d]` bf16 with `cap = len + max_new_tokens`. The logits are
//!   those of each sequence's last position (`ln_f`, then the tied lm_head).
//! - Decode step (M = b rows): LayerNorm, the 4-bit (or bf16) GEMV that reads each weight once,
//!   LoRA unmerged (the adapter's skinny down-projection and its up-projection), RoPE of the
//!   new token at its own position, the cache write, flash-decoding attention over the filled
//!   columns, dense, GELU MLP, residual, and the lm_head GEMV to f32 logits, which the host
//!   reads to choose the next tokens.
//! - Graphs: the first step runs its launches one by one (and loads every kernel module); then
//!   the step is captured once ([`kernels_cu::Device::capture`]) and replayed for every later
//!   token, so the driver's per-launch cost is paid once per step instead of ~450 times. What
//!   changes per token lives in device memory ([`StepInputs`]: the token ids, their positions
//!   and the filled cache length), uploaded by one copy before each step; the kernels read it
//!   there. [`CudaFalcon::decode_graphs`] turns this off (plain launches every step).
//!
//! With [`MergedWeights`] the adapted linears run as bf16 copies of `W + s·B·A` (no adapter
//! launches), which costs 4x the 4-bit weight bytes per token but fewer launches.

use super::adapters::AdapterStore;
use super::layer::{self, StepCtx};
use super::weights::{alloc, DeviceBase, DeviceBaseModel, DeviceLinear, DeviceNorms, Geometry};
use super::{cuda_err, CudaFalcon, Dev, RngCursor};
use crate::generate::{choose_tokens, finished, fresh_outputs, left_pad, Padded};
use crate::{FalconError, FalconModel, Generated, GenerationConfig, Result};
use engine::rng::RngState;
use kernels_cu::graph::Graph;
use kernels_cu::ops::decode::{self, CacheShape, Epilogue, GemvScratch};
use kernels_cu::ops::pointwise;
use kernels_cu::ops::rope;
use kernels_cu::{Buffer, DType};

/// The base with the adapters merged into bf16 copies (`--merge`), built by
/// [`CudaFalcon::merged_weights`].
pub struct MergedWeights {
    base: DeviceBaseModel,
}

impl MergedWeights {
    /// Device bytes of the merged base.
    pub fn bytes(&self) -> usize {
        self.base.bytes()
    }
}

/// Which weights generation reads.
#[derive(Clone, Copy)]
pub enum DecodeWeights<'a> {
    /// The 4-bit base with the adapters applied unmerged (as trained).
    Adapters,
    /// Merged bf16 copies.
    Merged(&'a MergedWeights),
}

/// Per-layer K and V caches.
pub(crate) struct KvCache {
    pub k: Vec<Buffer>,
    pub v: Vec<Buffer>,
    pub shape: CacheShape,
}

impl KvCache {
    /// Unset caches for `layers` layers (a launch plan fills them with nothing).
    pub fn alloc(dev: &Dev, layers: usize, shape: CacheShape) -> Result<KvCache> {
        let mut c = KvCache {
            k: Vec::with_capacity(layers),
            v: Vec::with_capacity(layers),
            shape,
        };
        for _ in 0..layers {
            c.k.push(alloc(dev, "K cache", DType::BF16, shape.elems())?);
            c.v.push(alloc(dev, "V cache", DType::BF16, shape.elems())?);
        }
        Ok(c)
    }
}

/// What changes from one decode step to the next, in device memory so that a captured step
/// replays with the current values: `[ids (b) | positions (b) | filled length (1)]` u32, the
/// filled length counting the new token's column.
pub(crate) struct StepInputs {
    buf: Buffer,
    batch: usize,
    /// The embedding's invalid-id flag (ids are checked on the host; never set).
    bad_id: Buffer,
    /// The split-K counters of the step's 4-bit GEMVs (zeroed once, left zero by each launch).
    gemv: GemvScratch,
}

impl StepInputs {
    /// Inputs for `batch` sequences of a model whose widest linear has `max_out` rows.
    pub fn alloc(dev: &Dev, batch: usize, max_out: usize) -> Result<StepInputs> {
        Ok(StepInputs {
            gemv: GemvScratch::new(dev, max_out)
                .map_err(cuda_err("allocate the GEMV split counters".into()))?,
            buf: alloc(dev, "decode step inputs", DType::U32, 2 * batch + 1)?,
            batch,
            bad_id: dev
                .htod(&[i32::MAX])
                .map_err(cuda_err("upload the embedding flag".into()))?,
        })
    }

    /// Uploads one step's inputs (one copy).
    pub fn set(&mut self, dev: &Dev, ids: &[u32], positions: &[u32], len: usize) -> Result<()> {
        let b = self.batch;
        if ids.len() != b || positions.len() != b {
            return Err(FalconError::InvalidArgument(format!(
                "decode step: {} ids and {} positions for a batch of {b}",
                ids.len(),
                positions.len()
            )));
        }
        let len = u32::try_from(len).map_err(|_| {
            FalconError::InvalidArgument(format!("decode step: cache length {len}"))
        })?;
        let mut v = Vec::with_capacity(2 * b + 1);
        v.extend_from_slice(ids);
        v.extend_from_slice(positions);
        v.push(len);
        dev.write(&mut self.buf, &v)
            .map_err(cuda_err("upload the decode step's inputs".into()))
    }
}

/// What a decode step reads besides the cache: the device, the shapes, the rotary
/// frequencies, the base and the adapters.
pub(crate) struct DecodeParts<'a> {
    pub dev: &'a Dev,
    pub g: Geometry,
    pub inv_freq: &'a Buffer,
    pub base: &'a DeviceBaseModel,
    pub adapters: &'a AdapterStore,
}

impl CudaFalcon {
    /// Uploads a merged copy of `model`'s base and adapters (whose current values must be on
    /// the host: [`CudaFalcon::store_adapters_to_host`]). Fails with the allocator's error
    /// when the copy does not fit next to the 4-bit base.
    pub fn merged_weights(&self, model: &FalconModel) -> Result<MergedWeights> {
        Ok(MergedWeights {
            base: DeviceBaseModel::upload_merged(&self.dev, model)?,
        })
    }

    /// Generates up to `cfg.max_new_tokens` for each prompt, on the device; the same
    /// semantics as [`FalconModel::generate`]. Steps after the first replay a captured graph
    /// when [`CudaFalcon::decode_graphs`] is on (the default).
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        cfg: &GenerationConfig,
        weights: DecodeWeights<'_>,
    ) -> Result<Vec<Generated>> {
        let base = match weights {
            DecodeWeights::Adapters => &self.base,
            DecodeWeights::Merged(m) => &m.base,
        };
        let b = prompts.len();
        if b == 0 || cfg.max_new_tokens == 0 {
            return Ok(fresh_outputs(b));
        }
        let Padded {
            ids,
            mask,
            pos,
            mut next_pos,
            len,
        } = left_pad(prompts, cfg.pad_id)?;
        if let Some((i, &id)) = ids
            .iter()
            .enumerate()
            .find(|(_, &id)| id as usize >= self.g.vocab)
        {
            return Err(FalconError::InvalidArgument(format!(
                "prompt {}: token id {id} is outside the vocabulary of {}",
                i / len,
                self.g.vocab
            )));
        }
        let dev = &self.dev;
        let g = self.g;
        let cap = len + cfg.max_new_tokens;
        let shape = CacheShape {
            batch: b,
            kv_heads: g.kv_heads,
            capacity: cap,
            head_dim: g.head_dim,
        };
        // The decode key mask: the prompt's columns, then every generated column visible.
        let mut full_mask = vec![1u8; b * cap];
        for r in 0..b {
            full_mask[r * cap..r * cap + len].copy_from_slice(&mask[r * len..(r + 1) * len]);
        }
        let up = |what: &str| cuda_err(format!("upload {what}"));
        let key_mask = dev.htod(&full_mask).map_err(up("decode key mask"))?;

        let (mut cache, first_logits) = self.prefill(base, &ids, &mask, &pos, [b, len], shape)?;
        let mut out = fresh_outputs(b);
        let vocab = g.vocab;
        let parts = DecodeParts {
            dev,
            g,
            inv_freq: &self.inv_freq,
            base,
            adapters: &self.adapters,
        };
        let mut inputs = StepInputs::alloc(dev, b, max_out_features(base))?;
        // The logits of the last step: the prefill's, then a plain step's or the graph's.
        let mut plain: Buffer = first_logits;
        let mut graph: Option<(Graph, Buffer)> = None;
        for step in 0..cfg.max_new_tokens {
            let z: Vec<f32> = {
                let logits = match &graph {
                    Some((_, l)) => l,
                    None => &plain,
                };
                dev.dtoh(logits)
                    .map_err(cuda_err("download logits".into()))?
            };
            let step_ids = choose_tokens(&mut out, &z, vocab, step, cfg)?;
            if finished(&out, step, cfg) {
                break;
            }
            inputs.set(dev, &step_ids, &next_pos, len + step + 1)?;
            next_pos.iter_mut().for_each(|p| *p += 1);
            if !self.decode_graphs || step == 0 {
                plain = decode_step(&parts, &mut cache, &mut inputs, &key_mask)?;
                continue;
            }
            if graph.is_none() {
                let captured = dev.capture(cuda_err("capture the decode step".into()), || {
                    decode_step(&parts, &mut cache, &mut inputs, &key_mask)
                })?;
                graph = Some((captured.1, captured.0));
            }
            if let Some((gr, _)) = &graph {
                // SAFETY: the graph's launches address the weights, adapters, rotary
                // frequencies, key mask, caches and step inputs, all alive until this function
                // returns (the graph is dropped first, being declared after them), and the
                // buffers the captured step allocated, which the graph keeps.
                unsafe { gr.launch() }.map_err(cuda_err("replay the decode step".into()))?;
            }
        }
        Ok(out)
    }

    /// The prompt pass: fills the caches' first `len` columns and returns the logits of each
    /// sequence's last position `[b, vocab]` f32.
    fn prefill(
        &self,
        base: &DeviceBaseModel,
        ids: &[u32],
        mask: &[u8],
        pos: &[u32],
        [b, len]: [usize; 2],
        shape: CacheShape,
    ) -> Result<(KvCache, Buffer)> {
        let dev = &self.dev;
        let g = self.g;
        let up = |what: &str| cuda_err(format!("upload {what}"));
        let ids_d = dev.htod(ids).map_err(up("prompt ids"))?;
        let mask_d = dev.htod(mask).map_err(up("prompt mask"))?;
        let pos_d = dev.htod(pos).map_err(up("prompt positions"))?;
        let table = rope::table(dev, &pos_d, &self.inv_freq, g.head_dim)
            .map_err(cuda_err("rotary table".into()))?;
        let ctx = StepCtx {
            dev,
            g,
            batch: b,
            seq: len,
            rope: &table,
            mask: Some(&mask_d),
            train: false,
        };
        let mut x = embed(dev, g, base, &ids_d, b * len)?;
        let mut cache = KvCache {
            k: Vec::with_capacity(base.layers.len()),
            v: Vec::with_capacity(base.layers.len()),
            shape,
        };
        // Eval mode draws no dropout; the cursor is never advanced.
        let mut rng = RngCursor(RngState::default());
        for (i, l) in base.layers.iter().enumerate() {
            let (next, acts) = layer::forward(&ctx, l, &self.adapters, &x, &mut rng)?;
            let (k, v) = acts.kv();
            let mut kc = alloc(dev, "K cache", DType::BF16, shape.elems())?;
            let mut vc = alloc(dev, "V cache", DType::BF16, shape.elems())?;
            let werr = |what: &str| cuda_err(format!("layer {i}: write the prompt's {what}"));
            decode::kv_write(dev, &mut kc, k, &shape, len, 0).map_err(werr("keys"))?;
            decode::kv_write(dev, &mut vc, v, &shape, len, 0).map_err(werr("values"))?;
            cache.k.push(kc);
            cache.v.push(vc);
            x = next;
        }
        let mut last = alloc(dev, "last hidden rows", DType::BF16, b * g.hidden)?;
        decode::take_last_rows(dev, &mut last, &x, b, len, g.hidden)
            .map_err(cuda_err("last positions".into()))?;
        drop(x);
        let logits = lm_head(&ctx, base, &last, b)?;
        Ok((cache, logits))
    }
}

/// One new token per sequence (`inputs`: ids, positions, and the filled length `len` after
/// this token): writes cache column `len − 1`, attends over columns `0..len` where `key_mask`
/// (`[b, cap]`) is set, and returns the logits `[b, vocab]` f32. Only launches and
/// allocations: it can be captured into a graph and replayed with new `inputs`.
pub(crate) fn decode_step(
    p: &DecodeParts,
    cache: &mut KvCache,
    inputs: &mut StepInputs,
    key_mask: &Buffer,
) -> Result<Buffer> {
    let (dev, g, base) = (p.dev, p.g, p.base);
    let b = inputs.batch;
    let part = |offset, len, what: &str| {
        inputs
            .buf
            .view(offset, len)
            .map_err(cuda_err(format!("decode step inputs: {what}")))
    };
    let (ids_d, pos_d, len_d) = (
        part(0, b, "ids")?,
        part(b, b, "positions")?,
        part(2 * b, 1, "filled length")?,
    );
    // Written only for an invalid id, which the host has ruled out.
    let bad_id = &mut inputs.bad_id;
    let scratch = &mut inputs.gemv;
    let table = rope::table(dev, &pos_d, p.inv_freq, g.head_dim)
        .map_err(cuda_err("rotary table".into()))?;
    let ctx = StepCtx {
        dev,
        g,
        batch: b,
        seq: 1,
        rope: &table,
        mask: None,
        train: false,
    };
    let cap = cache.shape.capacity;
    let mut x = alloc(dev, "embeddings", DType::BF16, b * g.hidden)?;
    pointwise::embedding_forward_flagged(
        dev,
        &mut x,
        bad_id,
        &ids_d,
        &base.embed,
        g.vocab,
        g.hidden,
    )
    .map_err(cuda_err("embedding".into()))?;
    for (i, l) in base.layers.iter().enumerate() {
        let (h_attn, h_mlp) = match &l.norms {
            DeviceNorms::Single(n) => (layer::norm_forward(&ctx, n, &x)?.0, None),
            DeviceNorms::Separate { attn, mlp } => (
                layer::norm_forward(&ctx, attn, &x)?.0,
                Some(layer::norm_forward(&ctx, mlp, &x)?.0),
            ),
        };
        let h_mlp = h_mlp.as_ref().unwrap_or(&h_attn);
        let qkv = linear(dev, (p.adapters, &mut *scratch), &l.qkv, &h_attn, b)?;
        let mut q = alloc(dev, "q", DType::BF16, b * g.heads * g.head_dim)?;
        decode::rope_append(
            dev,
            &mut q,
            &mut cache.k[i],
            &mut cache.v[i],
            &qkv,
            &table,
            &len_d,
            &cache.shape,
            g.heads,
            g.grouped,
        )
        .map_err(cuda_err(format!(
            "layer {i}: RoPE + cache the new key and value"
        )))?;
        let scale = (1.0 / (g.head_dim as f64).sqrt()) as f32;
        let attn = decode::attention_at(
            dev,
            &q,
            &cache.k[i],
            &cache.v[i],
            key_mask,
            &cache.shape,
            g.heads,
            &len_d,
            cap,
            scale,
        )
        .map_err(cuda_err(format!("layer {i}: decode attention")))?;
        let attn_out = linear(dev, (p.adapters, &mut *scratch), &l.dense, &attn, b)?;
        let act = linear_then(
            dev,
            (p.adapters, &mut *scratch),
            &l.h_to_4h,
            h_mlp,
            b,
            Epilogue::Gelu,
        )?;
        // The block's output x + attention + MLP.
        x = linear_then(
            dev,
            (p.adapters, &mut *scratch),
            &l.four_h_to_h,
            &act,
            b,
            Epilogue::Residual(&x, &attn_out),
        )?;
    }
    lm_head(&ctx, base, &x, b)
}

fn embed(dev: &Dev, g: Geometry, base: &DeviceBaseModel, ids: &Buffer, m: usize) -> Result<Buffer> {
    let mut x = alloc(dev, "embeddings", DType::BF16, m * g.hidden)?;
    pointwise::embedding_forward(dev, &mut x, ids, &base.embed, g.vocab, g.hidden)
        .map_err(cuda_err("embedding".into()))?;
    Ok(x)
}

/// `ln_f`, then the tied lm_head: `[m, vocab]` f32 logits of `x [m, hidden]`.
fn lm_head(ctx: &StepCtx, base: &DeviceBaseModel, x: &Buffer, m: usize) -> Result<Buffer> {
    let g = ctx.g;
    let (h, _) = layer::norm_forward(ctx, &base.ln_f, x)?;
    let mut logits = alloc(ctx.dev, "logits", DType::F32, m * g.vocab)?;
    decode::gemv_bf16(
        ctx.dev,
        &h,
        &base.embed,
        &mut logits,
        m,
        g.vocab,
        g.hidden,
        1.0,
        0.0,
    )
    .map_err(cuda_err("lm_head".into()))?;
    Ok(logits)
}

/// `y = x·Wᵀ (+ s·B·A·x)` for a few rows: the GEMV for the base, the adapter's own launches.
fn linear(
    dev: &Dev,
    (store, scratch): (&AdapterStore, &mut GemvScratch),
    lin: &DeviceLinear,
    x: &Buffer,
    m: usize,
) -> Result<Buffer> {
    let mut y = alloc(dev, &lin.name, DType::BF16, m * lin.shape[0])?;
    let r = match &lin.base {
        DeviceBase::FourBit(w) => decode::gemv_nf4_then(
            dev,
            x,
            w,
            &mut y,
            m,
            1.0,
            0.0,
            Epilogue::None,
            Some(scratch),
        ),
        DeviceBase::Bf16(w) => {
            decode::gemv_bf16(dev, x, w, &mut y, m, lin.shape[0], lin.shape[1], 1.0, 0.0)
        }
    };
    r.map_err(cuda_err(format!("{} (decode)", lin.name)))?;
    if let Some(i) = lin.lora {
        store.forward(dev, i, x, &mut y, m, None)?;
    }
    Ok(y)
}

/// `epi(x·Wᵀ (+ s·B·A·x))`: fused into the 4-bit GEMV's launch when the linear has no adapter
/// (the adapter's product must land before the epilogue), else the separate kernel after it.
/// Either way the same values (the fused epilogues compute the separate kernels' arithmetic).
fn linear_then(
    dev: &Dev,
    (store, scratch): (&AdapterStore, &mut GemvScratch),
    lin: &DeviceLinear,
    x: &Buffer,
    m: usize,
    epi: Epilogue<'_>,
) -> Result<Buffer> {
    if let (DeviceBase::FourBit(w), None) = (&lin.base, lin.lora) {
        let mut y = alloc(dev, &lin.name, DType::BF16, m * lin.shape[0])?;
        decode::gemv_nf4_then(dev, x, w, &mut y, m, 1.0, 0.0, epi, Some(scratch))
            .map_err(cuda_err(format!("{} (decode, fused epilogue)", lin.name)))?;
        return Ok(y);
    }
    let y = linear(dev, (store, scratch), lin, x, m)?;
    let mut out = alloc(dev, &lin.name, DType::BF16, y.len())?;
    match epi {
        Epilogue::None => return Ok(y),
        Epilogue::Gelu => pointwise::gelu_forward(dev, &mut out, &y),
        Epilogue::Residual(r1, r2) => pointwise::residual_add3(dev, &mut out, r1, r2, &y),
    }
    .map_err(cuda_err(format!("{} epilogue", lin.name)))?;
    Ok(out)
}

/// Rows of the widest linear of the decoder layers (the GEMV split counters cover it).
pub(crate) fn max_out_features(base: &DeviceBaseModel) -> usize {
    base.layers
        .iter()
        .flat_map(|l| [&l.qkv, &l.dense, &l.h_to_4h, &l.four_h_to_h])
        .map(|lin| lin.shape[0])
        .max()
        .unwrap_or(0)
}
