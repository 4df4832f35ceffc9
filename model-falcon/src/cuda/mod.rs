//! The QLoRA training step on a CUDA device.
//!
//! [`CudaFalcon`] mirrors a host [`FalconModel`] on a GPU (or on the kernels-cu emulator, which
//! is how CI runs it): the frozen base uploaded once (4-bit weights with their double-quantized
//! statistics, bf16 LayerNorms and embedding), the LoRA adapters packed into f32 master
//! buffers, and the AdamW moments next to them. A step is written out explicitly, as llm.c
//! does, rather than recorded op by op on the host autograd tape: the fused kernels (QKV split
//! with RoPE, flash attention with its logsumexp, the 4-bit GEMM accumulating into a shared
//! gradient buffer, the lm_head fused with the cross-entropy) each replace several tape ops,
//! and the explicit order lets every activation be freed as soon as backward is done with it.
//!
//! Precision: activations and activation gradients bf16 (as with bitsandbytes'
//! `bnb_4bit_compute_dtype=bfloat16`), every GEMM and reduction accumulating in f32, the
//! attention and cross-entropy statistics f32, adapter weights, gradients and moments f32.
//! The host model (f32) is the reference; `model-falcon/tests/cuda_step.rs` states the
//! tolerance.
//!
//! Memory: with `recompute` (gradient checkpointing) only each layer's input (`[M, hidden]`
//! bf16) is kept through the forward pass; backward re-runs one layer's forward and frees its
//! activations before moving to the next. Dropout masks are never stored: each layer keeps the
//! dropout stream position it started at, and the recompute draws the same masks from it.
//!
//! Semantics match [`FalconModel::loss`] and the host training loop: the same dropout stream
//! (positions reserved in the same order, so a run can move between devices mid-way without
//! changing its masks), loss `Σ CE / count` over shifted labels, gradients accumulated over
//! micro-batches until [`CudaFalcon::optimizer_step`] clips them by global norm and applies
//! AdamW (torch semantics) to every adapter matrix in one launch.

mod adapters;
mod decode;
mod layer;
pub mod memory_plan;
pub mod plan;
mod weights;

pub use decode::{DecodeWeights, MergedWeights};
pub use memory_plan::{BaseStorage, MemoryPlan, StepShape};
pub use weights::nf4_parts;

use crate::model::{check_ids, shift_labels, FalconModel};
use crate::{FalconError, Result};
use adapters::AdapterStore;
use engine::optim::{AdamWConfig, AdamWState};
use engine::rng::{self, RngState};
use engine::Tensor;
use kernels_cu::ops::adamw::{self, AdamWHyper, AdamWScalars};
use kernels_cu::ops::{convert, cross_entropy, layernorm, pointwise, rope};
use kernels_cu::{Buffer, DType, MemoryStats};
use layer::StepCtx;
use weights::{alloc, DeviceBaseModel, Geometry};

pub(crate) type Dev = kernels_cu::Device;

pub(crate) fn cuda_err(what: String) -> impl FnOnce(kernels_cu::Error) -> FalconError {
    move |source| FalconError::Cuda { what, source }
}

/// A position in the dropout stream, advanced as [`rng::reserve`] advances the host's.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RngCursor(pub(crate) RngState);

impl RngCursor {
    pub fn take(&mut self, n: u64) -> RngState {
        let st = self.0;
        self.0.offset = st.offset.wrapping_add(n);
        st
    }
}

/// Adapter moments and the step count.
pub(crate) struct DeviceAdamW {
    exp_avg: Buffer,
    exp_avg_sq: Buffer,
    step: u64,
}

/// A Falcon model with LoRA adapters, resident on one CUDA device, that trains the adapters.
pub struct CudaFalcon {
    dev: Dev,
    g: Geometry,
    base: DeviceBaseModel,
    adapters: AdapterStore,
    opt: DeviceAdamW,
    /// `inv_freq [head_dim/2]` f32 of the rotary embedding.
    inv_freq: Buffer,
    /// Re-run each layer's forward in backward instead of keeping its activations.
    pub recompute: bool,
    /// Generation replays each decode step from a captured launch graph (see
    /// [`decode`]); off: every step launches its kernels one by one.
    pub decode_graphs: bool,
}

/// Inputs of one micro-batch on the device.
pub(crate) struct DeviceBatch {
    batch: usize,
    seq: usize,
    ids: Buffer,
    mask: Option<Buffer>,
    labels: Buffer,
    rope: Buffer,
}

impl CudaFalcon {
    /// Uploads `model` (its frozen base and its LoRA adapters, which must be attached) to
    /// `dev` (`kernels_cu::Device::cuda(0)`, or the emulator).
    pub fn new(model: &FalconModel, dev: Dev) -> Result<CudaFalcon> {
        let g = Geometry::of(model)?;
        let adapters = AdapterStore::upload(&dev, model)?;
        let base = DeviceBaseModel::upload(&dev, model, |name| {
            adapters.slots.iter().position(|s| s.module == name)
        })?;
        let inv = rope::inv_freq(g.head_dim, model.config.rope_theta);
        let inv_freq = dev
            .htod(&inv)
            .map_err(cuda_err("upload rotary frequencies".into()))?;
        let n = adapters.len();
        let zeros = |what: &str| {
            dev.alloc_zeros(DType::F32, n)
                .map_err(cuda_err(format!("allocate {what}")))
        };
        let opt = DeviceAdamW {
            exp_avg: zeros("AdamW exp_avg")?,
            exp_avg_sq: zeros("AdamW exp_avg_sq")?,
            step: 0,
        };
        Ok(CudaFalcon {
            dev,
            g,
            base,
            adapters,
            opt,
            inv_freq,
            recompute: model.recompute,
            decode_graphs: true,
        })
    }

    pub fn device(&self) -> &Dev {
        &self.dev
    }

    /// Bytes of the frozen base on the device.
    pub fn base_bytes(&self) -> usize {
        self.base.bytes()
    }

    /// The device allocator's counters (bytes in use, peak, cached).
    pub fn memory(&self) -> MemoryStats {
        self.dev.memory()
    }

    fn upload_batch(
        &self,
        ids: &Tensor,
        mask: Option<&Tensor>,
        labels: &[i32],
    ) -> Result<DeviceBatch> {
        let (b, t) = check_ids(ids, mask)?;
        if b * t == 0 {
            return Err(FalconError::InvalidArgument("empty batch".into()));
        }
        if labels.len() != b * t {
            return Err(FalconError::InvalidArgument(format!(
                "{} labels for a [{b}, {t}] batch",
                labels.len()
            )));
        }
        let host_ids = ids.as_slice::<u32>()?;
        if let Some((i, &id)) = host_ids
            .iter()
            .enumerate()
            .find(|(_, &id)| id as usize >= self.g.vocab)
        {
            return Err(FalconError::InvalidArgument(format!(
                "token id {id} at position {i} is outside the vocabulary of {}",
                self.g.vocab
            )));
        }
        let mask = match mask {
            Some(m) => Some(m.as_slice::<u8>()?),
            None => None,
        };
        device_batch(
            &self.dev,
            &self.inv_freq,
            self.g,
            [b, t],
            host_ids,
            mask,
            &shift_labels(labels, b, t),
        )
    }

    /// The summed-over-`count` cross-entropy loss of `ids` (`Σ CE / count`), forward only,
    /// without dropout. `count` 1 gives the sum, as [`FalconModel::loss`] does.
    pub fn loss(
        &self,
        ids: &Tensor,
        mask: Option<&Tensor>,
        labels: &[i32],
        count: f64,
    ) -> Result<f64> {
        let db = self.upload_batch(ids, mask, labels)?;
        let ctx = step_ctx(&self.dev, self.g, &db, false);
        let mut rng = RngCursor(RngState::default());
        let mut x = embed_tokens(&ctx, &self.base, &db)?;
        for layer in &self.base.layers {
            x = layer::forward(&ctx, layer, &self.adapters, &x, &mut rng)?.0;
        }
        let (h, _) = layer::norm_forward(&ctx, &self.base.ln_f, &x)?;
        let f = cross_entropy::forward(
            &self.dev,
            &h,
            &self.base.embed,
            &db.labels,
            &ctx.lce_shape(),
            count,
        )
        .map_err(cuda_err("cross-entropy".into()))?;
        read_scalar(&self.dev, &f.loss, "loss")
    }

    /// One micro-batch of training: forward (dropout on, drawing from the thread's dropout
    /// stream as the host model does), the loss `Σ CE / count`, and backward, adding the
    /// adapter gradients to those of earlier micro-batches. Returns the loss.
    pub fn forward_backward(
        &mut self,
        ids: &Tensor,
        mask: Option<&Tensor>,
        labels: &[i32],
        count: f64,
    ) -> Result<f64> {
        let db = self.upload_batch(ids, mask, labels)?;
        let start = RngCursor(rng::state());
        let (loss, end) = {
            // Split borrows: the layers read the base, backward writes the adapters' grads.
            let Self {
                dev,
                g,
                base,
                adapters,
                recompute,
                ..
            } = self;
            let ctx = step_ctx(dev, *g, &db, true);
            run_step(&ctx, base, adapters, &db, *recompute, start, count)?
        };
        rng::set_state(end.0);
        Ok(loss)
    }

    /// Clears the accumulated adapter gradients.
    pub fn zero_grads(&mut self) -> Result<()> {
        self.adapters.zero_grads(&self.dev)
    }

    /// Host copies of the accumulated adapter gradients, with the PEFT keys of
    /// [`FalconModel::lora_parameters`], in that order.
    pub fn gradients(&self) -> Result<Vec<(String, Tensor)>> {
        let host: Vec<f32> = self
            .dev
            .dtoh(&self.adapters.grads)
            .map_err(cuda_err("download adapter gradients".into()))?;
        let tensors = self.adapters.unpack(&host)?;
        Ok(self.keys().into_iter().zip(tensors).collect())
    }

    /// The accumulated adapter gradients as the device holds them: one packed f32 vector
    /// (every matrix at its aligned offset, zeros between), for an all-reduce over ranks.
    pub fn gradients_packed(&self) -> Result<Vec<f32>> {
        self.dev
            .dtoh(&self.adapters.grads)
            .map_err(cuda_err("download adapter gradients".into()))
    }

    /// Replaces the accumulated gradients with `packed` (the layout of
    /// [`Self::gradients_packed`]).
    pub fn set_gradients_packed(&mut self, packed: &[f32]) -> Result<()> {
        if packed.len() != self.adapters.len() {
            return Err(FalconError::InvalidArgument(format!(
                "{} gradient values for a packed adapter buffer of {}",
                packed.len(),
                self.adapters.len()
            )));
        }
        self.dev
            .write(&mut self.adapters.grads, packed)
            .map_err(cuda_err("upload adapter gradients".into()))
    }

    fn keys(&self) -> Vec<String> {
        self.adapters
            .slots
            .iter()
            .flat_map(|s| {
                [
                    format!("base_model.model.{}.lora_A.weight", s.module),
                    format!("base_model.model.{}.lora_B.weight", s.module),
                ]
            })
            .collect()
    }

    /// Clips the accumulated gradients to global norm `max_grad_norm` (no clipping when it is
    /// ≤ 0), applies one AdamW update with learning rate `lr`, and clears the gradients.
    /// Returns the gradient norm before clipping. When that norm is NaN or infinite nothing is
    /// applied: the gradients are cleared, the adapters, moments and step count stay as they
    /// were, and the non-finite norm is returned for the caller to report.
    pub fn optimizer_step(
        &mut self,
        lr: f64,
        config: &AdamWConfig,
        max_grad_norm: f64,
    ) -> Result<f64> {
        let norm = grad_norm_launch(&self.dev, &self.adapters, max_grad_norm)?;
        // Read the norm before updating: a NaN or infinite norm must not reach the adapters
        // or the AdamW moments (the caller decides whether to skip the step or stop).
        let value = read_scalar(&self.dev, &norm, "gradient norm")?;
        if !value.is_finite() {
            self.adapters.zero_grads(&self.dev)?;
            return Ok(value);
        }
        update_launches(
            &self.dev,
            &mut self.adapters,
            &mut self.opt,
            &norm,
            lr,
            config,
        )?;
        Ok(value)
    }

    /// Writes the device adapter weights into the host model's LoRA parameters (for saving,
    /// generation or evaluation on the host).
    pub fn store_adapters_to_host(&self) -> Result<()> {
        self.adapters.store_to_host(&self.dev)
    }

    /// Reloads the adapter weights from the host model's LoRA parameters.
    pub fn load_adapters_from_host(&mut self) -> Result<()> {
        self.adapters.load_from_host(&self.dev)
    }

    /// The AdamW state in the host optimizer's form (one entry per LoRA parameter, in
    /// [`FalconModel::lora_parameters`] order; `None` before the first step).
    pub fn optimizer_state(&self) -> Result<Vec<Option<AdamWState>>> {
        let n = 2 * self.adapters.slots.len();
        if self.opt.step == 0 {
            return Ok(vec![None; n]);
        }
        let down = |b: &Buffer, what: &str| -> Result<Vec<Tensor>> {
            let host: Vec<f32> = self
                .dev
                .dtoh(b)
                .map_err(cuda_err(format!("download {what}")))?;
            self.adapters.unpack(&host)
        };
        let m = down(&self.opt.exp_avg, "exp_avg")?;
        let v = down(&self.opt.exp_avg_sq, "exp_avg_sq")?;
        Ok(m.into_iter()
            .zip(v)
            .map(|(exp_avg, exp_avg_sq)| {
                Some(AdamWState {
                    step: self.opt.step,
                    exp_avg,
                    exp_avg_sq,
                })
            })
            .collect())
    }

    /// Restores the AdamW state (resume). All entries must be present with one step count, or
    /// all absent.
    pub fn set_optimizer_state(&mut self, state: &[Option<AdamWState>]) -> Result<()> {
        let n = 2 * self.adapters.slots.len();
        if state.len() != n {
            return Err(FalconError::InvalidArgument(format!(
                "optimizer state for {} parameters, the model has {n}",
                state.len()
            )));
        }
        if state.iter().all(|s| s.is_none()) {
            self.opt.step = 0;
            for b in [&mut self.opt.exp_avg, &mut self.opt.exp_avg_sq] {
                *b = self
                    .dev
                    .alloc_zeros(DType::F32, self.adapters.len())
                    .map_err(cuda_err("reset AdamW state".into()))?;
            }
            return Ok(());
        }
        let present: Vec<&AdamWState> = state.iter().flatten().collect();
        let step = present[0].step;
        if present.len() != n || present.iter().any(|s| s.step != step) {
            return Err(FalconError::InvalidArgument(
                "the CUDA optimizer keeps one step count for all adapter matrices; the saved \
                 state has parameters at different steps"
                    .into(),
            ));
        }
        let m: Vec<Tensor> = present.iter().map(|s| s.exp_avg.clone()).collect();
        let v: Vec<Tensor> = present.iter().map(|s| s.exp_avg_sq.clone()).collect();
        let (m, v) = (self.adapters.pack(&m)?, self.adapters.pack(&v)?);
        let up = |what: &str| cuda_err(format!("upload {what}"));
        self.dev
            .write(&mut self.opt.exp_avg, &m)
            .map_err(up("exp_avg"))?;
        self.dev
            .write(&mut self.opt.exp_avg_sq, &v)
            .map_err(up("exp_avg_sq"))?;
        self.opt.step = step;
        Ok(())
    }
}

/// The batch's ids, key mask and shifted labels on the device, and its rotary table.
fn device_batch(
    dev: &Dev,
    inv_freq: &Buffer,
    g: Geometry,
    [b, t]: [usize; 2],
    ids: &[u32],
    mask: Option<&[u8]>,
    shifted_labels: &[i32],
) -> Result<DeviceBatch> {
    let up = |what: &str| cuda_err(format!("upload {what}"));
    let mask = match mask {
        Some(m) => Some(dev.htod(m).map_err(up("mask"))?),
        None => None,
    };
    let positions: Vec<u32> = (0..b).flat_map(|_| 0..t as u32).collect();
    let pos = dev.htod(&positions).map_err(up("positions"))?;
    let rope =
        rope::table(dev, &pos, inv_freq, g.head_dim).map_err(cuda_err("rotary table".into()))?;
    Ok(DeviceBatch {
        batch: b,
        seq: t,
        ids: dev.htod(ids).map_err(up("ids"))?,
        mask,
        labels: dev.htod(shifted_labels).map_err(up("labels"))?,
        rope,
    })
}

/// The global gradient norm and clipping coefficient (`[‖g‖₂, c]` on the device).
fn grad_norm_launch(dev: &Dev, a: &AdapterStore, max_grad_norm: f64) -> Result<Buffer> {
    adamw::grad_norm(dev, &a.grads, max_grad_norm.max(0.0) as f32)
        .map_err(cuda_err("gradient norm".into()))
}

/// One AdamW update of every adapter with the clipping of `norm`, the bf16 refresh and the
/// cleared gradients.
fn update_launches(
    dev: &Dev,
    a: &mut AdapterStore,
    opt: &mut DeviceAdamW,
    norm: &Buffer,
    lr: f64,
    config: &AdamWConfig,
) -> Result<()> {
    opt.step += 1;
    let scalars = AdamWScalars::new(
        &AdamWHyper {
            lr,
            beta1: config.beta1,
            beta2: config.beta2,
            eps: config.eps,
            weight_decay: config.weight_decay,
        },
        opt.step,
    );
    adamw::step(
        dev,
        &mut a.params,
        &mut opt.exp_avg,
        &mut opt.exp_avg_sq,
        &a.grads,
        norm,
        1,
        &scalars,
    )
    .map_err(cuda_err("AdamW".into()))?;
    a.refresh_bf16(dev)?;
    a.zero_grads(dev)
}

/// Forward and backward of one micro-batch; returns the loss and the dropout stream position
/// after the forward pass.
fn run_step(
    ctx: &StepCtx,
    base: &DeviceBaseModel,
    adapters: &mut AdapterStore,
    db: &DeviceBatch,
    recompute: bool,
    start: RngCursor,
    count: f64,
) -> Result<(f64, RngCursor)> {
    let dev = ctx.dev;
    let g = ctx.g;
    let mut rng = start;
    let mut x = embed_tokens(ctx, base, db)?;

    // Forward: keep each layer's input and where its dropout masks start (and, without
    // recompute, its activations).
    let mut inputs = Vec::with_capacity(base.layers.len());
    for l in &base.layers {
        let at = rng;
        let (out, acts) = layer::forward(ctx, l, adapters, &x, &mut rng)?;
        inputs.push((x, at, (!recompute).then_some(acts)));
        x = out;
    }
    let (h, st) = layer::norm_forward(ctx, &base.ln_f, &x)?;
    let shape = ctx.lce_shape();
    let f = cross_entropy::forward(dev, &h, &base.embed, &db.labels, &shape, count)
        .map_err(cuda_err("cross-entropy".into()))?;

    // Backward. The loss stays on the device until the step's launches are all queued: reading
    // it here would make the host wait for the forward, leaving the GPU idle while the first
    // backward launches are issued.
    let (dh32, _) = cross_entropy::backward(
        dev,
        &h,
        &base.embed,
        &db.labels,
        &f.lse,
        &shape,
        count,
        1.0,
        false,
    )
    .map_err(cuda_err("cross-entropy backward".into()))?;
    let mut dh = alloc(dev, "ln_f output gradient", DType::BF16, dh32.len())?;
    convert::cast(dev, &mut dh, &dh32).map_err(cuda_err("ln_f gradient to bf16".into()))?;
    drop((dh32, h));
    let mut dx = alloc(dev, "final hidden gradient", DType::BF16, x.len())?;
    layernorm::backward(dev, &mut dx, &x, &base.ln_f.gamma, &st, &dh, g.hidden)
        .map_err(cuda_err("ln_f backward".into()))?;
    drop((x, dh));
    for (l, (input, at, saved)) in base.layers.iter().zip(inputs).rev() {
        let acts = match saved {
            Some(a) => a,
            None => {
                let mut r = at;
                layer::recompute(ctx, l, adapters, &input, &mut r)?
            }
        };
        dx = layer::backward(ctx, l, adapters, &input, &acts, &dx)?;
    }
    let loss = read_scalar(dev, &f.loss, "loss")?;
    Ok((loss, rng))
}

fn step_ctx<'a>(dev: &'a Dev, g: Geometry, db: &'a DeviceBatch, train: bool) -> StepCtx<'a> {
    StepCtx {
        dev,
        g,
        batch: db.batch,
        seq: db.seq,
        rope: &db.rope,
        mask: db.mask.as_ref(),
        train,
    }
}

fn embed_tokens(ctx: &StepCtx, base: &DeviceBaseModel, db: &DeviceBatch) -> Result<Buffer> {
    let g = ctx.g;
    let mut x = alloc(ctx.dev, "embeddings", DType::BF16, ctx.m() * g.hidden)?;
    pointwise::embedding_forward(ctx.dev, &mut x, &db.ids, &base.embed, g.vocab, g.hidden)
        .map_err(cuda_err("embedding".into()))?;
    Ok(x)
}

/// Element 0 of an f32 device buffer (synchronizes).
fn read_scalar(dev: &Dev, b: &Buffer, what: &str) -> Result<f64> {
    let v: Vec<f32> = dev.dtoh(b).map_err(cuda_err(format!("read the {what}")))?;
    Ok(v[0] as f64)
}
