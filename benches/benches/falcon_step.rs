//! End-to-end training step on the CPU backend: forward + backward of a small Falcon-7B-shaped
//! model (multi-query, parallel attention) with an NF4 base and LoRA on every linear, with and
//! without per-layer recompute. Throughput is reported in tokens per second.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use engine::Tensor;
use model_falcon::peft::{LoraConfig, TargetModules};
use model_falcon::{attach_lora, random_model, BaseOptions, FalconConfig};
use std::hint::black_box;

fn config() -> FalconConfig {
    // Falcon-7B's shape scaled down: head_dim 64, hidden = 8 heads, ffn = 4·hidden.
    let json = serde_json::json!({
        "model_type": "falcon", "vocab_size": 4096, "hidden_size": 512, "num_hidden_layers": 4,
        "num_attention_heads": 8, "multi_query": true, "new_decoder_architecture": false,
        "parallel_attn": true, "alibi": false, "bias": false, "layer_norm_epsilon": 1e-5,
        "max_position_embeddings": 1024, "tie_word_embeddings": true, "eos_token_id": 11
    });
    FalconConfig::from_json_str(&json.to_string(), "bench config").expect("valid config")
}

fn bench_step(c: &mut Criterion) {
    let mut g = c.benchmark_group("falcon_step_cpu");
    g.sample_size(10);
    let (b, t) = (2usize, 256usize);
    let mut model = random_model(config(), 1, &BaseOptions::default()).expect("model");
    let lora = LoraConfig::new(8, 16.0, 0.05, TargetModules::AllLinear);
    attach_lora(&mut model, &lora, 2).expect("lora");
    let ids: Vec<u32> = (0..b * t).map(|i| (i as u32 * 7919) % 4096).collect();
    let ids = Tensor::from_vec(ids, [b, t]).expect("ids");
    let mask = Tensor::from_vec(vec![1u8; b * t], [b, t]).expect("mask");
    // Learn the second half of each row (as answer tokens after a prompt).
    let labels: Vec<i32> = (0..b * t)
        .map(|i| {
            if i % t >= t / 2 {
                ((i * 31) % 4096) as i32
            } else {
                -100
            }
        })
        .collect();
    let count = labels.iter().filter(|&&l| l != -100).count() as f64;
    g.throughput(Throughput::Elements((b * t) as u64));
    for recompute in [true, false] {
        model.recompute = recompute;
        g.bench_function(
            format!("fwd+bwd b{b} t{t} h512 L4 nf4 lora-all recompute={recompute}"),
            |bch| {
                bch.iter(|| {
                    let loss = model
                        .loss(&ids, Some(&mask), &labels, count, true)
                        .expect("loss");
                    black_box(loss.backward().expect("backward"));
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench_step);
criterion_main!(benches);
