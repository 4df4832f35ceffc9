//! Loading a Falcon checkpoint with NF4 quantization on the CPU (what `trainer train` does
//! before the first step), and the 4-bit export of `trainer quantize`, on a small
//! Falcon-7B-shaped checkpoint: the 7B widths divided by 4 (hidden 1136, ffn 4544, fused
//! QKV 1168 for 71 query heads of 16 + one K/V head), 4 layers, vocab 8128, random bf16
//! weights, written once to a temporary directory. Throughput is bytes of bf16 checkpoint.
//! The full-size measurement (14 GB, peak memory) is model-falcon's `load_quantize` example;
//! see BENCHMARKS.md.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use engine::nf4::{QuantConfig, QuantType};
use model_falcon::checkpoint::{
    expected_tensors, write_sharded_checkpoint, StDType, TensorRole, TensorSpec,
};
use model_falcon::quantize_export::quantize_checkpoint;
use model_falcon::{load_model, BaseOptions, FalconCheckpoint, FalconConfig, QuantMode};
use std::hint::black_box;
use std::path::{Path, PathBuf};

fn config() -> serde_json::Value {
    serde_json::json!({
        "model_type": "falcon", "architectures": ["FalconForCausalLM"],
        "hidden_size": 1136, "num_attention_heads": 71, "num_hidden_layers": 4,
        "ffn_hidden_size": 4544, "vocab_size": 8128, "multi_query": true,
        "new_decoder_architecture": false, "parallel_attn": true, "bias": false,
        "alibi": false, "layer_norm_epsilon": 1e-5, "max_position_embeddings": 2048,
        "bos_token_id": 11, "eos_token_id": 11, "tie_word_embeddings": true,
        "dtype": "bfloat16"
    })
}

/// Writes the checkpoint; returns its directory and size in bytes.
fn write_checkpoint(dir: &Path) -> usize {
    let value = config();
    let cfg = FalconConfig::from_value(&value, &dir.join("config.json")).expect("bench config");
    let tensors = expected_tensors(&cfg);
    let specs: Vec<TensorSpec> = tensors
        .iter()
        .map(|t| TensorSpec::new(t.name.clone(), StDType::BF16, t.shape.clone()))
        .collect();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut k = 0;
    write_sharded_checkpoint(dir, &specs, 64 << 20, &mut |s| {
        let role = &tensors[k].role;
        k += 1;
        Ok(match role {
            TensorRole::Norm { bias: false, .. } => half::bf16::ONE.to_le_bytes().repeat(s.numel()),
            TensorRole::Norm { bias: true, .. } => vec![0; s.size_in_bytes()],
            _ => (0..s.numel())
                .flat_map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let u = (state >> 40) as f32 / (1u64 << 24) as f32;
                    half::bf16::from_f32((u - 0.5) * 0.07).to_le_bytes()
                })
                .collect(),
        })
    })
    .expect("write the bench checkpoint");
    std::fs::write(dir.join("config.json"), value.to_string()).expect("write config.json");
    specs.iter().map(TensorSpec::size_in_bytes).sum()
}

fn bench(c: &mut Criterion) {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("falcon-load-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bytes = write_checkpoint(&dir);
    let ckpt = FalconCheckpoint::open(&dir).expect("open the bench checkpoint");

    let mut g = c.benchmark_group("falcon_load");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(bytes as u64));
    for (name, quant, double_quant) in [
        ("nf4_dq", QuantMode::Nf4, true),
        ("nf4", QuantMode::Nf4, false),
        ("none_f32", QuantMode::None, false),
    ] {
        let opts = BaseOptions {
            quant,
            double_quant,
            blocksize: 64,
        };
        g.bench_function(BenchmarkId::new(name, "7b_div4_4layers"), |b| {
            b.iter(|| black_box(load_model(&ckpt, &opts).expect("load")))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("falcon_quantize_export");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(bytes as u64));
    let out = dir.join("nf4");
    let cfg = QuantConfig {
        quant_type: QuantType::Nf4,
        blocksize: 64,
        double_quant: true,
    };
    g.bench_function(BenchmarkId::new("nf4_dq", "7b_div4_4layers"), |b| {
        b.iter(|| black_box(quantize_checkpoint(&ckpt, &out, cfg, None).expect("export")))
    });
    g.finish();
    drop(ckpt);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
