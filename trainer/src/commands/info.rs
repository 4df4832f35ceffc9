//! `trainer info`: config summary, parameter counts and a training memory estimate, from
//! `config.json` alone (no weights are read, so it is instant on a 14 GB checkpoint).
//!
//! # Parameter counts
//! * total: as transformers counts it (tied lm_head once), [`FalconConfig::num_parameters`];
//! * quantized linear: the weights of the four decoder linears of every layer
//!   (`query_key_value [qkv_out, h]`, `dense [h, h]`, `dense_h_to_4h [f, h]`,
//!   `dense_4h_to_h [h, f]`); embeddings (= tied lm_head), LayerNorms and biases stay
//!   unquantized;
//! * trainable: `Σ r·(in + out)` over the LoRA-targeted linears (lora_A `[r, in]`, lora_B
//!   `[out, r]`).
//!
//! # Quantized storage (bitsandbytes 4-bit, blocksize 64)
//! A linear of `m` weights takes `⌈m/2⌉` bytes of codes plus its statistics over
//! `B = ⌈m/64⌉` blocks: `4·B` bytes of fp32 absmax, or with double quantization `B` u8 codes,
//! `4·⌈B/256⌉` bytes of fp32 second-level absmax and a 4-byte offset — about
//! `4 + 8/64 + 32/16384 ≈ 4.127` bits per weight (4.5 without double quantization).
//!
//! # Training memory estimate (bytes; batch b, length T, fp32 as the CPU backend computes)
//! ```text
//! base        = quantized linears (above) + 4·(embedding + norms + biases)
//! lora        = 16·P            P trainable params: fp32 weight, grad, Adam exp_avg, exp_avg_sq
//! stored      = 4·L·b·T·(h + qkv_out)
//!                               each decoder layer's input and QKV projection, kept for the
//!                               layer's (selective) recompute in backward
//!             + 8·b·T·h         final hidden state and its ln_f output
//! layer       = 8·b·T·(4h + qkv_out + 2f) + 8·b·n·T²
//!               one layer's forward (recomputed) + backward working set: LN out, qkv,
//!               attention out, dense out, MLP up and GELU out, MLP out, and the attention
//!               probabilities of its n query heads, each with its gradient
//! loss        = 8·min(c, b·T)·V  one chunk of c = 256 rows of logits and their gradient
//! total       = base + lora + stored + layer + loss
//! ```
//!
//! # GPU training memory (the CUDA step: bf16 activations, flash attention)
//! The device step's memory plan, [`model_falcon::cuda::MemoryPlan`]: computed by walking the
//! step's buffers, and equal to the emulator's measured peak to the byte
//! (`model-falcon/tests/memory_plan.rs`). The CUDA context and allocator size-class slack
//! come on top on a GPU.

use crate::args::InfoArgs;
use crate::distributed::plan::DataParallelPlan;
use anyhow::{bail, Result};
use engine::nf4::{QuantConfig, NESTED_BLOCKSIZE};
use model_falcon::checkpoint::linear_modules;
use model_falcon::cuda::{BaseStorage, MemoryPlan, StepShape};
use model_falcon::model::default_loss_chunk_rows;
use model_falcon::peft::{LoraConfig, TargetModules};
use model_falcon::{AttentionLayout, FalconConfig, NormLayout};
use serde::Serialize;

/// Parameter counts and the memory estimate.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelInfo {
    pub model_type: String,
    pub attention: String,
    pub layers: usize,
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_hidden_size: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub parallel_norms: String,
    pub torch_dtype: Option<String>,
    pub prequantized: Option<String>,
    pub total_parameters: usize,
    pub quantized_linear_parameters: usize,
    pub unquantized_parameters: usize,
    pub trainable_parameters: usize,
    pub quant: String,
    pub double_quant: bool,
    /// Storage of the quantized linears, and bits per quantized weight.
    pub linear_bytes: usize,
    pub bits_per_linear_parameter: f64,
    pub memory: MemoryEstimate,
    /// The CUDA step's memory plan, when the step can train this configuration.
    pub gpu_memory: Option<MemoryPlan>,
    /// Why the CUDA step cannot, otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_unsupported: Option<String>,
    /// Global batch and gradient all-reduce volume with `--ranks`.
    pub data_parallel: DataParallelPlan,
}

/// The training memory estimate (see the module docs), in bytes.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MemoryEstimate {
    pub batch_size: usize,
    pub seq_len: usize,
    pub base: usize,
    pub lora_state: usize,
    pub stored_activations: usize,
    pub layer_working_set: usize,
    pub loss_chunk: usize,
    pub total: usize,
}

impl MemoryEstimate {
    /// From `[batch, seq]` and the parts `[base, lora_state, stored_activations,
    /// layer_working_set, loss_chunk]`; the total is their sum.
    fn new([batch_size, seq_len]: [usize; 2], parts: [usize; 5]) -> Self {
        let [base, lora_state, stored_activations, layer_working_set, loss_chunk] = parts;
        MemoryEstimate {
            batch_size,
            seq_len,
            base,
            lora_state,
            stored_activations,
            layer_working_set,
            loss_chunk,
            total: parts.iter().sum(),
        }
    }
}

/// Bytes of one `m`-element linear weight stored as `quant`.
pub fn linear_storage_bytes(m: usize, quant: &str, double_quant: bool) -> usize {
    if quant == "none" {
        return 4 * m;
    }
    // The default block size, bitsandbytes' (and the CUDA GEMM's).
    let blocks = m.div_ceil(QuantConfig::default().blocksize);
    let stats = if double_quant {
        blocks + 4 * blocks.div_ceil(NESTED_BLOCKSIZE) + 4
    } else {
        4 * blocks
    };
    m.div_ceil(2) + stats
}

/// The count `train` prints for this configuration (model_falcon's `param_counts` of the
/// loaded model with its adapters), from the config alone.
pub fn peft_counts(i: &ModelInfo) -> model_falcon::model::ParamCounts {
    let linear = if i.quant == "none" {
        i.quantized_linear_parameters
    } else {
        i.quantized_linear_parameters / 2
    };
    model_falcon::model::ParamCounts {
        trainable: i.trainable_parameters,
        all: i.unquantized_parameters + linear + i.trainable_parameters,
    }
}

/// Computes everything `trainer info` reports.
pub fn model_info(cfg: &FalconConfig, a: &InfoArgs) -> Result<ModelInfo> {
    let path = a.model.join("config.json");
    let targets = TargetModules::from_flag(&a.target_modules);
    let lora = LoraConfig::new(a.lora_r, 2.0 * a.lora_r as f64, a.lora_dropout, targets);
    let trainable: usize = lora
        .targets(cfg, &path)?
        .iter()
        .map(|m| a.lora_r * (m.in_features + m.out_features))
        .sum();
    let linears = linear_modules(cfg);
    let quantized: usize = linears.iter().map(|m| m.in_features * m.out_features).sum();
    let linear_bytes: usize = linears
        .iter()
        .map(|m| linear_storage_bytes(m.in_features * m.out_features, &a.quant, a.double_quant))
        .sum();
    let gpu_plan = gpu_plan(cfg, a, &lora);
    let total = cfg.num_parameters();
    let unquantized = total - quantized;

    let (b, t) = (a.per_device_train_batch_size, a.max_length);
    let (h, f, n, v) = (
        cfg.hidden_size,
        cfg.ffn_hidden_size,
        cfg.num_attention_heads,
        cfg.vocab_size,
    );
    let bt = b * t;
    let memory = {
        let base = linear_bytes + 4 * unquantized;
        let lora_state = 16 * trainable;
        let stored_activations =
            4 * cfg.num_hidden_layers * bt * (h + cfg.qkv_out_features()) + 8 * bt * h;
        let layer_working_set =
            8 * bt * (4 * h + cfg.qkv_out_features() + 2 * f) + 8 * b * n * t * t;
        let loss_chunk = 8 * default_loss_chunk_rows(v).min(bt) * v;
        MemoryEstimate::new(
            [b, t],
            [
                base,
                lora_state,
                stored_activations,
                layer_working_set,
                loss_chunk,
            ],
        )
    };
    Ok(ModelInfo {
        model_type: cfg.model_type.clone(),
        attention: match cfg.attention {
            AttentionLayout::MultiQuery => "multi-query".into(),
            AttentionLayout::Grouped { num_kv_heads } => {
                format!("grouped ({num_kv_heads} kv heads)")
            }
        },
        layers: cfg.num_hidden_layers,
        hidden_size: h,
        num_attention_heads: n,
        num_kv_heads: cfg.num_kv_heads(),
        head_dim: cfg.head_dim(),
        ffn_hidden_size: f,
        vocab_size: v,
        max_position_embeddings: cfg.max_position_embeddings,
        parallel_norms: match cfg.norms {
            NormLayout::Single => "one input_layernorm".into(),
            NormLayout::Separate => "ln_attn + ln_mlp".into(),
        },
        torch_dtype: cfg.torch_dtype.clone(),
        prequantized: cfg.quantization.as_ref().map(|q| {
            format!(
                "bitsandbytes {}{}",
                q.quant_type,
                if q.use_double_quant {
                    " + double quant"
                } else {
                    ""
                }
            )
        }),
        total_parameters: total,
        quantized_linear_parameters: quantized,
        unquantized_parameters: unquantized,
        trainable_parameters: trainable,
        quant: a.quant.clone(),
        double_quant: a.double_quant,
        linear_bytes,
        bits_per_linear_parameter: if quantized == 0 {
            0.0
        } else {
            8.0 * linear_bytes as f64 / quantized as f64
        },
        memory,
        gpu_memory: gpu_plan.as_ref().ok().cloned(),
        gpu_unsupported: gpu_plan.err(),
        data_parallel: DataParallelPlan::new(
            a.ranks,
            a.per_device_train_batch_size,
            a.gradient_accumulation_steps,
            trainable,
        ),
    })
}

/// The CUDA step's plan, or why the step cannot train this configuration.
fn gpu_plan(cfg: &FalconConfig, a: &InfoArgs, lora: &LoraConfig) -> Result<MemoryPlan, String> {
    let base = match (a.quant.as_str(), a.double_quant) {
        ("none", _) => BaseStorage::Bf16,
        (_, true) => BaseStorage::FourBit,
        (_, false) => return Err(
            "the CUDA step's 4-bit GEMM reads double-quantized statistics (--double-quant true)"
                .into(),
        ),
    };
    let shape = StepShape {
        batch: a.per_device_train_batch_size,
        seq: a.max_length,
        recompute: true,
    };
    // The 4-bit GEMM's split-K partials depend on the GPU's SM count: planned for --gpu when
    // it is given, otherwise for a GPU that never splits (a lower bound on Hopper/Ampere).
    let sms = a
        .gpu
        .as_deref()
        .and_then(model_falcon::cuda::plan::perf::gpu)
        .map_or(0, |g| g.sms as usize);
    MemoryPlan::for_step(cfg, lora, base, shape, sms).map_err(|e| e.to_string())
}

fn gib(bytes: usize) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else {
        format!("{:.2} MiB", b / (1u64 << 20) as f64)
    }
}

fn millions(n: usize) -> String {
    format!("{n} ({:.2} M)", n as f64 / 1e6)
}

pub fn info(a: &InfoArgs) -> Result<()> {
    if !matches!(a.quant.as_str(), "nf4" | "fp4" | "none") {
        bail!("unknown --quant `{}` (expected nf4, fp4 or none)", a.quant);
    }
    if a.per_device_train_batch_size == 0 || a.max_length == 0 || a.lora_r == 0 {
        bail!("--per-device-train-batch-size, --max-length and --lora-r must be at least 1");
    }
    if a.ranks == 0 || a.gradient_accumulation_steps == 0 {
        bail!("--ranks and --gradient-accumulation-steps must be at least 1");
    }
    if !a.model.is_dir() {
        bail!("model directory {} does not exist", a.model.display());
    }
    let cfg = FalconConfig::from_dir(&a.model)?;
    let i = model_info(&cfg, a)?;
    if a.json {
        println!("{}", serde_json::to_string(&i)?);
        return Ok(());
    }
    println!("{} ({})", a.model.display(), i.model_type);
    println!(
        "  {} layers, hidden {}, {} query heads of {} ({}), ffn {}, vocab {}, {} positions, {}{}",
        i.layers,
        i.hidden_size,
        i.num_attention_heads,
        i.head_dim,
        i.attention,
        i.ffn_hidden_size,
        i.vocab_size,
        i.max_position_embeddings,
        i.parallel_norms,
        i.torch_dtype
            .as_deref()
            .map(|d| format!(", stored as {d}"))
            .unwrap_or_default()
    );
    if let Some(q) = &i.prequantized {
        println!("  pre-quantized checkpoint: {q}");
    }
    println!("parameters:");
    let rows = [
        ("total", i.total_parameters, String::new()),
        (
            "quantized linear",
            i.quantized_linear_parameters,
            String::new(),
        ),
        (
            "unquantized",
            i.unquantized_parameters,
            " (embedding = tied lm_head, norms, biases)".to_string(),
        ),
        (
            "trainable",
            i.trainable_parameters,
            format!(" (LoRA r={} on {})", a.lora_r, a.target_modules),
        ),
    ];
    for (name, n, note) in rows {
        println!("  {name:<18} {:>26}{note}", millions(n));
    }
    println!("{}", peft_counts(&i));
    println!(
        "  {}; the table above counts every weight once",
        super::PARAM_COUNT_NOTE
    );
    println!(
        "base linears as {}{}: {} ({:.3} bits per weight)",
        i.quant,
        if i.quant != "none" && i.double_quant {
            " + double quant"
        } else {
            ""
        },
        gib(i.linear_bytes),
        i.bits_per_linear_parameter
    );
    let m = &i.memory;
    println!(
        "training memory estimate on the CPU, fp32 activations (batch {} x length {}, recompute):",
        m.batch_size, m.seq_len
    );
    for (name, bytes) in [
        ("frozen base", m.base),
        ("LoRA weights, grads, AdamW state", m.lora_state),
        ("stored layer inputs and QKV", m.stored_activations),
        ("one layer's working set", m.layer_working_set),
        ("loss chunk", m.loss_chunk),
        ("total", m.total),
    ] {
        println!("  {name:<33} {:>12}", gib(bytes));
    }
    match (&i.gpu_memory, &i.gpu_unsupported) {
        (Some(p), _) => {
            println!(
                "device memory plan of the CUDA step, bf16 activations (batch {} x length {}, \
                 recompute, LoRA dropout {}):",
                p.batch, p.seq, a.lora_dropout
            );
            for (name, bytes) in [
                ("frozen base", p.base_weights),
                ("LoRA weights, grads, bf16 copies", p.adapters),
                ("AdamW state", p.optimizer),
                ("batch inputs", p.batch_inputs),
                ("saved layer inputs", p.saved_activations),
                ("largest working set", p.working_set),
                ("peak", p.peak),
            ] {
                println!("  {name:<33} {:>12}", gib(bytes));
            }
            println!(
                "  (the working set peaks in the {} phase; the CUDA context and the caching allocator's \
                 size-class rounding, about 5 % on Falcon-7B, come on top{})",
                p.working_set_phase,
                if a.gpu.is_some() {
                    "; with the 4-bit GEMM's split-K partials on this GPU"
                } else {
                    "; without split-K partials: --gpu NAME plans for its SM count"
                }
            );
        }
        (None, Some(why)) => println!("the CUDA step cannot train this configuration: {why}"),
        (None, None) => {}
    }
    for line in i.data_parallel.lines() {
        println!("{line}");
    }
    if let Some(gpu) = &a.gpu {
        super::info_gpu::print(&cfg, a, i.gpu_memory.as_ref(), gpu)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn double_quant_storage_is_about_4_127_bits() {
        let m = 4544 * 18176;
        let bits = 8.0 * linear_storage_bytes(m, "nf4", true) as f64 / m as f64;
        assert!((bits - 4.127).abs() < 1e-3, "{bits}");
        let bits = 8.0 * linear_storage_bytes(m, "nf4", false) as f64 / m as f64;
        assert!((bits - 4.5).abs() < 1e-9, "{bits}");
        assert_eq!(linear_storage_bytes(10, "none", true), 40);
    }
}
