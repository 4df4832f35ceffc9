//! A tiny random Falcon (multi-query or grouped, two layers) whose weights the host and the
//! CUDA device represent exactly: embedding, norms and 4-bit weights made from bf16 values, so
//! the host's dequantized weights equal the device's bf16 dequantization; random adapters on
//! all four linears. Shared by the device step and device generation tests.

use engine::nf4::{QuantConfig, QuantType, QuantizedWeight};
use engine::{rng, Tensor, Var};
use half::bf16;
use model_falcon::layers::BaseWeight;
use model_falcon::model::Norms;
use model_falcon::peft::{LoraConfig, TargetModules};
use model_falcon::{attach_lora, random_model, BaseOptions, FalconConfig, FalconModel, QuantMode};
use std::rc::Rc;
use std::sync::Arc;

pub fn config(grouped: bool, head_dim: usize) -> FalconConfig {
    let text = if grouped {
        format!(
            r#"{{"model_type": "falcon", "hidden_size": {h}, "num_attention_heads": 4,
            "num_kv_heads": 2, "num_hidden_layers": 2, "new_decoder_architecture": true,
            "parallel_attn": true, "bias": false, "alibi": false, "vocab_size": 152,
            "layer_norm_epsilon": 1e-5, "bos_token_id": 1, "eos_token_id": 2}}"#,
            h = 4 * head_dim
        )
    } else {
        format!(
            r#"{{"model_type": "falcon", "hidden_size": {h}, "num_attention_heads": 2,
            "num_hidden_layers": 2, "multi_query": true, "new_decoder_architecture": false,
            "parallel_attn": true, "bias": false, "alibi": false, "vocab_size": 152,
            "layer_norm_epsilon": 1e-5, "bos_token_id": 1, "eos_token_id": 2}}"#,
            h = 2 * head_dim
        )
    };
    FalconConfig::from_json_str(&text, "config.json").expect("valid tiny config")
}

pub fn round_bf16(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

pub fn bf16_values(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect()
}

pub fn set_bf16(v: &Var, values: Vec<f32>) {
    let shape = v.value().shape().clone();
    v.set_value(Tensor::from_vec(bf16_values(&values), shape).unwrap())
        .unwrap();
}

/// Deterministic noise in [-1, 1).
pub fn noise(seed: u64, n: usize) -> Vec<f32> {
    (0..n as u64)
        .map(|i| (2.0 * rng::uniform_f64(seed, i) - 1.0) as f32)
        .collect()
}

/// A random model whose weights both backends represent exactly, with random rank-`rank`
/// adapters on all four linears of every layer.
pub fn model(grouped: bool, rank: usize, dropout: f64, seed: u64) -> FalconModel {
    model_with_targets(
        grouped,
        rank,
        dropout,
        seed,
        "query_key_value,dense,dense_h_to_4h,dense_4h_to_h",
    )
}

/// [`model`] with adapters on the `targets` modules only (a `--target-modules` value).
pub fn model_with_targets(
    grouped: bool,
    rank: usize,
    dropout: f64,
    seed: u64,
    targets: &str,
) -> FalconModel {
    let dense = BaseOptions {
        quant: QuantMode::None,
        ..BaseOptions::default()
    };
    let mut m = random_model(config(grouped, 64), seed, &dense).unwrap();
    let e = m.embed.value().to_f32_vec().unwrap();
    set_bf16(&m.embed, e.iter().map(|x| x * 20.0).collect());
    let qcfg = QuantConfig {
        quant_type: QuantType::Nf4,
        blocksize: 64,
        double_quant: true,
    };
    let mut k = seed;
    let mut next = || {
        k += 1;
        k
    };
    let ln_noise = |ln: &model_falcon::layers::LayerNorm, s: u64| {
        let d = ln.weight.dims()[0];
        set_bf16(
            &ln.weight,
            noise(s, d).iter().map(|x| 1.0 + 0.2 * x).collect(),
        );
        set_bf16(
            &ln.bias,
            noise(s + 1000, d).iter().map(|x| 0.1 * x).collect(),
        );
    };
    ln_noise(&m.ln_f, next());
    for layer in &mut m.layers {
        let l = Rc::get_mut(layer).expect("unshared layer");
        match &l.norms {
            Norms::Single(n) => ln_noise(n, next()),
            Norms::Separate { attn, mlp } => {
                ln_noise(attn, next());
                ln_noise(mlp, next());
            }
        }
        for lin in l.linears_mut() {
            let [o, i] = lin.base.shape();
            let w = round_bf16(&lin.base.to_f32().unwrap());
            let q = QuantizedWeight::quantize(&w, o, i, qcfg).unwrap();
            lin.base = BaseWeight::Quantized(Arc::new(q));
        }
    }
    let targets = TargetModules::from_flag(targets);
    let cfg = LoraConfig::new(rank, 2.0 * rank as f64, dropout, targets);
    attach_lora(&mut m, &cfg, seed).unwrap();
    for (name, p) in m.lora_parameters() {
        let n = p.value().elem_count();
        let scale = if name.contains("lora_B") { 0.05 } else { 0.1 };
        let v: Vec<f32> = noise(next(), n).iter().map(|x| x * scale).collect();
        p.set_value(Tensor::from_vec(v, p.value().shape().clone()).unwrap())
            .unwrap();
    }
    m
}
