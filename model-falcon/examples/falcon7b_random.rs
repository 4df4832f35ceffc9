//! Writes a Falcon-7B-shaped checkpoint with random bf16 weights (for load / quantize
//! benchmarks; the values mean nothing). Laid out as the Hub's tiiuae/falcon-7b is after
//! `save_pretrained`: config.json (the 7B architecture: 32 layers, hidden 4544, 71 query heads,
//! multi-query, parallel attention, vocab 65024, tied embeddings), safetensors shards of at
//! most 10 GB (two shards, ~13.8 GB in all) and the index. Tensors are generated one at a time,
//! so memory stays at about one tensor.
//!
//! Usage: `cargo run -p model-falcon --release --example falcon7b_random -- OUT_DIR [LAYERS]`
//! (LAYERS defaults to 32; fewer layers give a smaller checkpoint of the same widths).
//!
//! Weights are uniform in ±0.0346 (standard deviation 0.02, the HF init scale); LayerNorm
//! weights are 1 and biases 0.

use model_falcon::checkpoint::{
    expected_tensors, write_sharded_checkpoint, StDType, TensorRole, TensorSpec,
};
use model_falcon::FalconConfig;
use rayon::prelude::*;
use std::path::PathBuf;
use std::time::Instant;

fn config_json(layers: usize) -> serde_json::Value {
    serde_json::json!({
        "activation": "gelu",
        "alibi": false,
        "architectures": ["FalconForCausalLM"],
        "attention_dropout": 0.0,
        "bias": false,
        "bos_token_id": 11,
        "dtype": "bfloat16",
        "eos_token_id": 11,
        "hidden_dropout": 0.0,
        "hidden_size": 4544,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05,
        "max_position_embeddings": 2048,
        "model_type": "falcon",
        "multi_query": true,
        "new_decoder_architecture": false,
        "num_attention_heads": 71,
        "num_hidden_layers": layers,
        "num_kv_heads": 71,
        "parallel_attn": true,
        "rope_theta": 10000.0,
        "tie_word_embeddings": true,
        "use_cache": true,
        "vocab_size": 65024
    })
}

/// splitmix64 of (seed, index): counter-based, so chunks can be filled in parallel.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn random_bf16_bytes(n: usize, seed: u64) -> Vec<u8> {
    const HALF_WIDTH: f32 = 0.034_641; // √3 · 0.02
    let mut out = vec![0u8; 2 * n];
    out.par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(c, chunk)| {
            let base = (c as u64) << 15;
            for (j, b) in chunk.chunks_exact_mut(2).enumerate() {
                let r = mix(seed ^ mix(base + j as u64));
                let u = (r >> 40) as f32 / (1u64 << 24) as f32;
                let v = half::bf16::from_f32((2.0 * u - 1.0) * HALF_WIDTH);
                b.copy_from_slice(&v.to_le_bytes());
            }
        });
    out
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(
        args.next()
            .ok_or("usage: falcon7b_random OUT_DIR [LAYERS]")?,
    );
    let layers: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(32);
    std::fs::create_dir_all(&out)?;
    let config = config_json(layers);
    let cfg = FalconConfig::from_value(&config, &out.join("config.json"))?;
    let specs: Vec<TensorSpec> = expected_tensors(&cfg)
        .into_iter()
        .map(|t| TensorSpec::new(t.name, StDType::BF16, t.shape))
        .collect();
    let roles: std::collections::BTreeMap<String, TensorRole> = expected_tensors(&cfg)
        .into_iter()
        .map(|t| (t.name, t.role))
        .collect();
    let total: usize = specs.iter().map(TensorSpec::size_in_bytes).sum();
    eprintln!(
        "writing {} tensors, {:.2} GB, to {}",
        specs.len(),
        total as f64 / 1e9,
        out.display()
    );
    let start = Instant::now();
    let mut k = 0u64;
    let files = write_sharded_checkpoint(&out, &specs, 10_000_000_000, &mut |s| {
        k += 1;
        Ok(match roles[&s.name] {
            TensorRole::Norm { bias: false, .. } => half::bf16::ONE.to_le_bytes().repeat(s.numel()),
            TensorRole::Norm { bias: true, .. } => vec![0u8; s.size_in_bytes()],
            _ => random_bf16_bytes(s.numel(), mix(k)),
        })
    })?;
    std::fs::write(
        out.join("config.json"),
        serde_json::to_string_pretty(&config)? + "\n",
    )?;
    eprintln!(
        "done in {:.1} s: {}",
        start.elapsed().as_secs_f64(),
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
