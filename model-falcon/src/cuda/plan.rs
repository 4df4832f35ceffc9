//! The launch plan of one training step: the step's own code run against a device that
//! records its launches, from a config alone (no weights, no host model).
//!
//! [`record_step`] builds the device state a [`super::CudaFalcon`] would hold (the base as
//! unset 4-bit or bf16 buffers of the uploaded sizes, the packed adapters, the AdamW moments)
//! and runs what [`super::CudaFalcon::forward_backward`] and
//! [`super::CudaFalcon::optimizer_step`] run: the batch upload and rotary table, forward,
//! (recompute,) backward, then gradient norm, AdamW and the bf16 refresh. On
//! [`kernels_cu::perf::DryRun`] this costs no memory and executes nothing, so the plan of a
//! Falcon-180B step at batch 8 x 4096 takes a moment; `tests/cuda_plan.rs` checks that at
//! small sizes the plan equals the trace of a real step on the emulator, launch for launch.
//!
//! Users: the performance model ([`kernels_cu::perf::StepEstimate`]) and the launch
//! validation at real sizes ([`kernels_cu::perf::validate`]).

use super::adapters::AdapterStore;
use super::weights::{DeviceBaseModel, Geometry};
use super::{
    cuda_err, device_batch, grad_norm_launch, run_step, step_ctx, update_launches, DeviceAdamW,
    RngCursor,
};
use crate::checkpoint::linear_modules;
use crate::peft::{LoraConfig, TargetModules};
use crate::{FalconConfig, FalconError, Result};
use engine::optim::AdamWConfig;
use engine::rng::RngState;
use kernels_cu::perf::{DryRun, Gpu, LaunchRecord};
use kernels_cu::DType;

/// The performance model these plans feed (re-exported for crates without kernels-cu).
pub use kernels_cu::perf;

/// The optimizer part of a planned step.
#[derive(Debug, Clone)]
pub struct OptimizerShape {
    pub lr: f64,
    pub config: AdamWConfig,
    pub max_grad_norm: f64,
}

/// What a step plan depends on besides the model config.
#[derive(Debug, Clone)]
pub struct StepShape {
    pub batch: usize,
    pub seq: usize,
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub targets: TargetModules,
    /// Gradient checkpointing (re-run each layer's forward in backward).
    pub recompute: bool,
    /// A key mask is passed (padded batches).
    pub masked: bool,
    /// The base is 4-bit (NF4, double-quantized); otherwise bf16.
    pub four_bit: bool,
    /// The loss normalizer `count` of `Σ CE / count`.
    pub count: f64,
    /// The optimizer step after the micro-batch (`None`: forward and backward only).
    pub optimizer: Option<OptimizerShape>,
}

impl StepShape {
    /// The default training step: r = 8, α = 16, dropout 0.05 on `query_key_value`, 4-bit
    /// base, recompute, a key mask, AdamW (lr 2e-4, clip 1.0) after the micro-batch.
    pub fn new(batch: usize, seq: usize) -> StepShape {
        StepShape {
            batch,
            seq,
            lora_r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.05,
            targets: TargetModules::from_flag("query_key_value"),
            recompute: true,
            masked: true,
            four_bit: true,
            count: (batch * seq) as f64,
            optimizer: Some(OptimizerShape {
                lr: 2e-4,
                config: AdamWConfig::default(),
                max_grad_norm: 1.0,
            }),
        }
    }

    pub fn tokens(&self) -> usize {
        self.batch * self.seq
    }
}

/// FLOPs of one step as the project counts them for MFU (BENCHMARKS.md,
/// `examples/falcon_step_gpu.rs`): `2 · (decoder linear + lm_head parameters)` per token and
/// pass, three passes (forward, recomputed forward, input gradients), i.e. the usual 6 per
/// parameter and token. 42.5 TFLOP for Falcon-7B at 2 x 512. The step itself does less: its
/// recompute skips the dense and 4h_to_h products, whose outputs no backward reads.
pub fn model_flops(config: &FalconConfig, tokens: usize) -> f64 {
    let linear: usize = linear_modules(config)
        .iter()
        .map(|m| m.in_features * m.out_features)
        .sum();
    let lm_head = config.vocab_size * config.hidden_size;
    6.0 * (linear + lm_head) as f64 * tokens as f64
}

/// Runs the launches of one training step of `config` at `shape` on `dev` (any device;
/// the weights are unset, so only a dry run or a trace is meaningful). Returns the device
/// allocator's peak bytes in use over the step.
pub fn record_step(
    dev: &kernels_cu::Device,
    config: &FalconConfig,
    shape: &StepShape,
) -> Result<usize> {
    if shape.batch == 0 || shape.seq == 0 {
        return Err(FalconError::InvalidArgument(format!(
            "step plan: batch {} x length {} (both must be at least 1)",
            shape.batch, shape.seq
        )));
    }
    let g = Geometry::from_config(config)?;
    let lora = LoraConfig::new(
        shape.lora_r,
        shape.lora_alpha,
        shape.lora_dropout,
        shape.targets.clone(),
    );
    let modules: Vec<(String, usize, usize)> = lora
        .targets(config, std::path::Path::new("step plan"))?
        .into_iter()
        .map(|m| (m.name, m.in_features, m.out_features))
        .collect();
    let mut adapters = AdapterStore::placeholder(
        dev,
        &modules,
        shape.lora_r,
        lora.scaling() as f32,
        shape.lora_dropout as f32,
    )?;
    let base = DeviceBaseModel::placeholder(dev, config, shape.four_bit, |name| {
        adapters.slots.iter().position(|s| s.module == name)
    })?;
    let zeros = |what: &str| {
        dev.alloc_zeros(DType::F32, adapters.len())
            .map_err(cuda_err(format!("allocate {what}")))
    };
    let mut opt = DeviceAdamW {
        exp_avg: zeros("AdamW exp_avg")?,
        exp_avg_sq: zeros("AdamW exp_avg_sq")?,
        step: 0,
    };
    let inv_freq = dev
        .htod(&kernels_cu::ops::rope::inv_freq(
            g.head_dim,
            config.rope_theta,
        ))
        .map_err(cuda_err("upload rotary frequencies".into()))?;
    let (b, t) = (shape.batch, shape.seq);
    let ids = vec![0u32; b * t];
    let mask = vec![1u8; b * t];
    let labels = vec![0i32; b * t];
    let db = device_batch(
        dev,
        &inv_freq,
        g,
        [b, t],
        &ids,
        shape.masked.then_some(&mask[..]),
        &labels,
    )?;
    let ctx = step_ctx(dev, g, &db, true);
    run_step(
        &ctx,
        &base,
        &mut adapters,
        &db,
        shape.recompute,
        RngCursor(RngState::default()),
        shape.count,
    )?;
    if let Some(o) = &shape.optimizer {
        // The plan of a step whose gradient norm is finite (the update is applied).
        let norm = grad_norm_launch(dev, &adapters, o.max_grad_norm)?;
        update_launches(dev, &mut adapters, &mut opt, &norm, o.lr, &o.config)?;
    }
    Ok(dev.memory().peak_in_use)
}

/// A step's launches, planned on a dry run.
#[derive(Debug, Clone)]
pub struct StepPlan {
    pub launches: Vec<LaunchRecord>,
    /// Peak bytes the step's allocations hold at once, base and adapters included (exact
    /// request sizes: no allocator size classes, no CUDA context).
    pub peak_bytes: usize,
    pub tokens: usize,
    /// [`model_flops`] of the step.
    pub model_flops: f64,
}

/// Plans one step of `config` at `shape` for `gpu` without executing it: every launch is
/// checked against `gpu`'s grid, block and shared-memory limits as a real launch would be.
pub fn dry_run(config: &FalconConfig, shape: &StepShape, gpu: &Gpu) -> Result<StepPlan> {
    let (dev, trace) = DryRun::device_with_sms(
        gpu.name,
        gpu.compute_capability,
        gpu.smem_per_block_optin,
        gpu.sms,
    );
    let peak_bytes = record_step(&dev, config, shape)?;
    Ok(StepPlan {
        launches: trace.take(),
        peak_bytes,
        tokens: shape.tokens(),
        model_flops: model_flops(config, shape.tokens()),
    })
}

/// Published configs of the Falcon family (hidden size, heads, layers, vocab as released),
/// for plans and validation at real sizes without a checkpoint.
pub fn falcon_config(name: &str) -> Result<FalconConfig> {
    let text = match name {
        "falcon-7b" => {
            r#"{"model_type": "falcon", "hidden_size": 4544, "num_attention_heads": 71,
            "num_hidden_layers": 32, "multi_query": true, "new_decoder_architecture": false,
            "parallel_attn": true, "bias": false, "alibi": false, "vocab_size": 65024,
            "layer_norm_epsilon": 1e-5, "bos_token_id": 11, "eos_token_id": 11}"#
        }
        "falcon-40b" => {
            r#"{"model_type": "falcon", "hidden_size": 8192, "num_attention_heads": 128,
            "num_kv_heads": 8, "num_hidden_layers": 60, "new_decoder_architecture": true,
            "parallel_attn": true, "bias": false, "alibi": false, "vocab_size": 65024,
            "layer_norm_epsilon": 1e-5, "bos_token_id": 11, "eos_token_id": 11}"#
        }
        "falcon-180b" => {
            r#"{"model_type": "falcon", "hidden_size": 14848, "num_attention_heads": 232,
            "num_kv_heads": 8, "num_hidden_layers": 80, "new_decoder_architecture": true,
            "parallel_attn": true, "bias": false, "alibi": false, "vocab_size": 65024,
            "layer_norm_epsilon": 1e-5, "bos_token_id": 11, "eos_token_id": 11}"#
        }
        other => {
            return Err(FalconError::InvalidArgument(format!(
                "unknown model `{other}` (expected falcon-7b, falcon-40b or falcon-180b)"
            )))
        }
    };
    FalconConfig::from_json_str(text, format!("{name} (built-in)"))
}

/// What a decode-step plan depends on besides the model config: one new token for each of
/// `batch` sequences whose cache holds `context` columns (the new one included).
#[derive(Debug, Clone)]
pub struct DecodeShape {
    pub batch: usize,
    pub context: usize,
    pub lora_r: usize,
    pub targets: TargetModules,
    /// The base is 4-bit (NF4, double-quantized); otherwise bf16.
    pub four_bit: bool,
    /// The adapters merged into bf16 copies of their linears (`--merge`): no adapter
    /// launches, 2 bytes per weight of the adapted linears.
    pub merged: bool,
    /// The step is replayed from a captured graph (as `generate` does after its first step):
    /// launches are priced as graph nodes ([`perf::model::GRAPH_NODE_US`]).
    pub graphs: bool,
}

impl DecodeShape {
    /// Decoding with the default adapter (r = 8 on `query_key_value`), 4-bit, unmerged.
    pub fn new(batch: usize, context: usize) -> DecodeShape {
        DecodeShape {
            batch,
            context,
            lora_r: 8,
            targets: TargetModules::from_flag("query_key_value"),
            four_bit: true,
            merged: false,
            graphs: true,
        }
    }
}

/// Runs the launches of one decode step ([`super::decode`]'s, as `generate` runs it) of
/// `config` at `shape` on `dev`. Returns the allocator's peak bytes in use.
pub fn record_decode_step(
    dev: &kernels_cu::Device,
    config: &FalconConfig,
    shape: &DecodeShape,
) -> Result<usize> {
    use super::decode::{decode_step, DecodeParts, KvCache, StepInputs};
    if shape.batch == 0 || shape.context == 0 {
        return Err(FalconError::InvalidArgument(format!(
            "decode plan: batch {} x context {} (both must be at least 1)",
            shape.batch, shape.context
        )));
    }
    let g = Geometry::from_config(config)?;
    let lora = LoraConfig::new(
        shape.lora_r,
        2.0 * shape.lora_r as f64,
        0.0,
        shape.targets.clone(),
    );
    let modules: Vec<(String, usize, usize)> = lora
        .targets(config, std::path::Path::new("decode plan"))?
        .into_iter()
        .map(|m| (m.name, m.in_features, m.out_features))
        .collect();
    let adapters =
        AdapterStore::placeholder(dev, &modules, shape.lora_r, lora.scaling() as f32, 0.0)?;
    let base = if shape.merged {
        // The adapted linears become bf16; the others keep their storage.
        let mut b = DeviceBaseModel::placeholder(dev, config, shape.four_bit, |_| None)?;
        let bf = DeviceBaseModel::placeholder(dev, config, false, |_| None)?;
        for (l, lb) in b.layers.iter_mut().zip(bf.layers) {
            let pairs = [
                (&mut l.qkv, lb.qkv),
                (&mut l.dense, lb.dense),
                (&mut l.h_to_4h, lb.h_to_4h),
                (&mut l.four_h_to_h, lb.four_h_to_h),
            ];
            for (lin, merged) in pairs {
                if modules.iter().any(|m| m.0 == lin.name) {
                    *lin = merged;
                }
            }
        }
        b
    } else {
        DeviceBaseModel::placeholder(dev, config, shape.four_bit, |name| {
            adapters.slots.iter().position(|s| s.module == name)
        })?
    };
    let inv_freq = dev
        .htod(&kernels_cu::ops::rope::inv_freq(
            g.head_dim,
            config.rope_theta,
        ))
        .map_err(cuda_err("upload rotary frequencies".into()))?;
    let (b, ctx) = (shape.batch, shape.context);
    let cache_shape = kernels_cu::ops::decode::CacheShape {
        batch: b,
        kv_heads: g.kv_heads,
        capacity: ctx,
        head_dim: g.head_dim,
    };
    let mut cache = KvCache::alloc(dev, base.layers.len(), cache_shape)?;
    let mask = dev
        .htod(&vec![1u8; b * ctx])
        .map_err(cuda_err("upload the key mask".into()))?;
    let parts = DecodeParts {
        dev,
        g,
        inv_freq: &inv_freq,
        base: &base,
        adapters: &adapters,
    };
    let mut inputs = StepInputs::alloc(dev, b, super::decode::max_out_features(&base))?;
    inputs.set(dev, &vec![0u32; b], &vec![(ctx - 1) as u32; b], ctx)?;
    if shape.graphs {
        // Captured as `generate` captures it; on the dry run the capture traces each launch.
        let (_logits, graph) = dev.capture(cuda_err("capture the decode step".into()), || {
            decode_step(&parts, &mut cache, &mut inputs, &mask)
        })?;
        let peak = dev.memory().peak_in_use;
        drop(graph);
        return Ok(peak);
    }
    decode_step(&parts, &mut cache, &mut inputs, &mask)?;
    Ok(dev.memory().peak_in_use)
}

/// A decode step's launches, planned on a dry run.
#[derive(Debug, Clone)]
pub struct DecodePlan {
    pub launches: Vec<LaunchRecord>,
    pub peak_bytes: usize,
    /// Tokens the step produces (one per sequence).
    pub tokens: usize,
}

/// Plans one decode step of `config` at `shape` for `gpu` without executing it.
pub fn dry_run_decode(config: &FalconConfig, shape: &DecodeShape, gpu: &Gpu) -> Result<DecodePlan> {
    // The GPU's SM count, so that the GEMVs split over K as they would there.
    let (dev, trace) = DryRun::device_with_sms(
        gpu.name,
        gpu.compute_capability,
        gpu.smem_per_block_optin,
        gpu.sms,
    );
    let peak_bytes = record_decode_step(&dev, config, shape)?;
    Ok(DecodePlan {
        launches: trace.take(),
        peak_bytes,
        tokens: shape.batch,
    })
}

/// The PREDICTED speed of one decode step ([`kernels_cu::perf::StepEstimate`] of its plan).
#[derive(Debug, Clone, Copy)]
pub struct DecodeEstimate {
    /// Predicted time of the step, µs.
    pub step_us: f64,
    /// `batch / step time`.
    pub tokens_per_s: f64,
    /// Bytes the step's GEMVs read from their weights (4-bit codes and absmax codes, or
    /// bf16), the lm_head included: the floor of the step's DRAM traffic.
    pub weight_bytes: f64,
    /// Launches of the step.
    pub launches: usize,
}

/// Predicts a decode step of `config` at `shape` on `gpu` (nothing is executed or measured).
pub fn decode_estimate(
    config: &FalconConfig,
    shape: &DecodeShape,
    gpu: &Gpu,
) -> Result<DecodeEstimate> {
    let p = dry_run_decode(config, shape, gpu)?;
    let est = if shape.graphs {
        perf::StepEstimate::graph(gpu, &p.launches)
    } else {
        perf::StepEstimate::new(gpu, &p.launches)
    };
    let step_us = est.time_us();
    let weight_bytes = p
        .launches
        .iter()
        .filter(|r| r.kernel.name.starts_with("decode_gemv_"))
        .map(|r| {
            if r.kernel.name.starts_with("decode_gemv_nf4_") {
                (0.5 + 1.0 / 64.0) * (r.int(2) * r.int(3)) as f64
            } else {
                2.0 * (r.int(1) * r.int(2)) as f64
            }
        })
        .sum();
    Ok(DecodeEstimate {
        step_us,
        tokens_per_s: p.tokens as f64 / (step_us * 1e-6),
        weight_bytes,
        launches: p.launches.len(),
    })
}
