//! A loaded base model with its tokenizer and special ids, from a checkpoint directory or the
//! built-in tiny model.

use anyhow::{Context, Result};
use data_finqa::synthetic;
use model_falcon::checkpoint::{write_sharded_checkpoint, StDType, TensorSpec};
use model_falcon::layers::BaseWeight;
use model_falcon::model::Norms;
use model_falcon::{
    load_model, random_model, BaseOptions, FalconCheckpoint, FalconConfig, FalconModel,
    FalconTokenizer, QuantMode,
};
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

pub struct Session {
    pub model: FalconModel,
    pub tokenizer: Tokenizer,
    pub eos_id: u32,
    pub pad_id: u32,
    pub stop_ids: Vec<u32>,
    /// Where the base came from (a directory, or "built-in").
    pub source: String,
    /// What adapters record as their base (`base_model_name_or_path`): the config's
    /// `_name_or_path` (the Hub id a saved model came from) when it has one, else `source`.
    pub name_or_path: String,
    /// Notes about special tokens worth telling the user (e.g. a corrected eos).
    pub notes: Vec<String>,
}

/// Parses `--quant` / `--double-quant` into loader options.
pub fn base_options(quant: &str, double_quant: bool) -> Result<BaseOptions> {
    let quant: QuantMode = quant.parse().map_err(anyhow::Error::msg)?;
    Ok(BaseOptions {
        quant,
        double_quant,
        ..BaseOptions::default()
    })
}

/// Loads `dir` (config, weights, tokenizer), quantizing linear weights as they are read.
pub fn load_session(dir: &Path, opts: &BaseOptions) -> Result<Session> {
    if !dir.is_dir() {
        anyhow::bail!("model directory {} does not exist", dir.display());
    }
    let ckpt = FalconCheckpoint::open(dir)?;
    let tok = FalconTokenizer::from_dir(dir)?;
    let model = load_model(&ckpt, opts).with_context(|| format!("loading {}", dir.display()))?;
    Ok(Session {
        model,
        tokenizer: tok.inner().clone(),
        eos_id: tok.eos_id(),
        pad_id: tok.pad_id(),
        stop_ids: tok.stop_ids().to_vec(),
        source: dir.display().to_string(),
        name_or_path: crate::run_record::config_name_or_path(dir)
            .unwrap_or_else(|| dir.display().to_string()),
        notes: tok.notes().to_vec(),
    })
}

/// The built-in tiny Falcon-7B-shaped model (multi-query, parallel attention, one LayerNorm)
/// with a byte-level BPE tokenizer trained on synthetic FinQA-style text.
pub fn tiny_config(vocab_size: usize, eos: u32) -> Result<FalconConfig> {
    let json = serde_json::json!({
        "model_type": "falcon",
        "architectures": ["FalconForCausalLM"],
        "vocab_size": vocab_size,
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "multi_query": true,
        "new_decoder_architecture": false,
        "parallel_attn": true,
        "alibi": false,
        "bias": false,
        "ffn_hidden_size": 512,
        "layer_norm_epsilon": 1e-5,
        "max_position_embeddings": 512,
        "rope_theta": 10000.0,
        "tie_word_embeddings": true,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
        "torch_dtype": "float32"
    });
    Ok(FalconConfig::from_json_str(
        &json.to_string(),
        "built-in tiny config",
    )?)
}

pub fn builtin_session(seed: u64, opts: &BaseOptions) -> Result<Session> {
    let tokenizer = synthetic::build_tokenizer(1024, seed)?;
    let eos = synthetic::eos_id(&tokenizer)?;
    let config = tiny_config(tokenizer.get_vocab_size(true), eos)?;
    let mut model = random_model(config, seed, opts)?;
    // HF's N(0, 0.02²) embeddings at width 128 cap every logit of the tied lm_head near
    // 0.02·√128·√128 ≈ 2.6, too flat to ever predict a token confidently (the loss floor
    // would be ~ln(vocab) − 2.6). A pretrained model has no such limit; the demo's random base
    // gets embeddings with std 0.1 so that adapters can learn visibly in a minute.
    let scaled = engine::ops::elementwise::scale_tensor(&model.embed.value(), 5.0)?;
    model.embed = engine::Var::constant(scaled);
    Ok(Session {
        model,
        tokenizer,
        eos_id: eos,
        pad_id: eos,
        stop_ids: vec![eos],
        source: "built-in tiny model".into(),
        name_or_path: "built-in tiny model".into(),
        notes: Vec::new(),
    })
}

/// Writes a session's base model as a Hugging Face checkpoint directory (config.json,
/// model.safetensors in f32, tokenizer.json), so other subcommands can load it. Quantized
/// layers are written dequantized.
pub fn save_base(session: &Session, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let m = &session.model;
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = vec![(
        "transformer.word_embeddings.weight".into(),
        m.embed.dims(),
        m.embed.value().to_f32_vec()?,
    )];
    for (i, layer) in m.layers.iter().enumerate() {
        let norms: Vec<(&str, &model_falcon::layers::LayerNorm)> = match &layer.norms {
            Norms::Single(ln) => vec![("input_layernorm", ln)],
            Norms::Separate { attn, mlp } => vec![("ln_attn", attn), ("ln_mlp", mlp)],
        };
        for (n, ln) in norms {
            tensors.push((
                format!("transformer.h.{i}.{n}.weight"),
                ln.weight.dims(),
                ln.weight.value().to_f32_vec()?,
            ));
            tensors.push((
                format!("transformer.h.{i}.{n}.bias"),
                ln.bias.dims(),
                ln.bias.value().to_f32_vec()?,
            ));
        }
        for lin in layer.linears() {
            let [o, inp] = lin.base.shape();
            let w = match &lin.base {
                BaseWeight::Dense(w) => w.value().to_f32_vec()?,
                BaseWeight::Quantized(q) => q.dequantize_stored_f32(),
            };
            tensors.push((format!("{}.weight", lin.name), vec![o, inp], w));
        }
    }
    tensors.push((
        "transformer.ln_f.weight".into(),
        m.ln_f.weight.dims(),
        m.ln_f.weight.value().to_f32_vec()?,
    ));
    tensors.push((
        "transformer.ln_f.bias".into(),
        m.ln_f.bias.dims(),
        m.ln_f.bias.value().to_f32_vec()?,
    ));
    let specs: Vec<TensorSpec> = tensors
        .iter()
        .map(|(n, s, _)| TensorSpec::new(n.clone(), StDType::F32, s.clone()))
        .collect();
    let mut idx = 0;
    write_sharded_checkpoint(dir, &specs, usize::MAX / 2, &mut |_spec| {
        let bytes = bytemuck::cast_slice::<f32, u8>(&tensors[idx].2).to_vec();
        idx += 1;
        Ok(bytes)
    })?;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config_json(&m.config, session.eos_id))?,
    )?;
    session
        .tokenizer
        .save(dir.join("tokenizer.json"), false)
        .map_err(|e| {
            anyhow::anyhow!("cannot write {}: {e}", dir.join("tokenizer.json").display())
        })?;
    Ok(dir.to_path_buf())
}

fn config_json(c: &FalconConfig, eos: u32) -> serde_json::Value {
    let grouped = matches!(c.attention, model_falcon::AttentionLayout::Grouped { .. });
    serde_json::json!({
        "model_type": "falcon",
        "architectures": ["FalconForCausalLM"],
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_kv_heads": c.num_kv_heads(),
        "multi_query": !grouped,
        "new_decoder_architecture": grouped,
        "parallel_attn": true,
        "alibi": false,
        "bias": false,
        "ffn_hidden_size": c.ffn_hidden_size,
        "layer_norm_epsilon": c.layer_norm_epsilon,
        "max_position_embeddings": c.max_position_embeddings,
        "rope_theta": c.rope_theta,
        "tie_word_embeddings": true,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "torch_dtype": "float32"
    })
}
