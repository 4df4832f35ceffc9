//! Throughput and memory of the QLoRA training step on a CUDA device, on a Falcon-7B-shaped
//! model with random NF4 weights (double-quantized, blocksize 64), LoRA r = 8 on
//! `query_key_value` (the seed's setup), per-layer recompute, AdamW every step.
//!
//! ```text
//! cargo run -p model-falcon --release --example falcon_step_gpu -- \
//!     [--device cuda|cuda:N|emulator] [--layers 32] [--batch 2] [--seq 512] [--steps 5] \
//!     [--targets query_key_value] [--peak-tflops 989] [--hidden 4544 --vocab 65024]
//! ```
//!
//! `--hidden` (a multiple of 64: heads of 64) and `--vocab` shrink the model for a smoke run,
//! e.g. on the emulator: `--device emulator --layers 2 --hidden 256 --vocab 512 --seq 64`.
//!
//! Reports tokens/s, step time, MFU and the device allocator's peak. MFU counts
//! 2·(linear + lm_head parameters) FLOPs per token per matmul pass and three passes per step
//! (forward, the recomputed forward, the input-gradient pass; the frozen weights get no
//! weight-gradient pass), against the device's dense bf16 tensor-core peak (looked up from the
//! device name, or `--peak-tflops`). Attention FLOPs are not counted.
//!
//! The weights are random bit patterns, not a quantized Gaussian: generating and quantizing
//! 6.7 B normal values takes minutes, and the kernels' speed does not depend on the values.

use engine::nf4::{Absmax, DoubleQuantState, QuantType, QuantizedWeight};
use engine::{rng, DType, Tensor, Var};
use model_falcon::layers::{BaseWeight, LayerNorm, Linear};
use model_falcon::model::{DecoderLayer, Norms};
use model_falcon::peft::{LoraConfig, TargetModules};
use model_falcon::{attach_lora, CudaFalcon, FalconConfig, FalconModel};
use rayon::prelude::*;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

struct Opts {
    device: String,
    layers: usize,
    hidden: usize,
    vocab: usize,
    batch: usize,
    seq: usize,
    steps: usize,
    targets: String,
    peak_tflops: Option<f64>,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        device: "cuda".into(),
        layers: 32,
        hidden: 4544,
        vocab: 65024,
        batch: 2,
        seq: 512,
        steps: 5,
        targets: "query_key_value".into(),
        peak_tflops: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        // criterion-style flags from scripts that run every bench binary alike are ignored.
        if a == "--bench" {
            continue;
        }
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        let num = |s: String| s.parse::<usize>().map_err(|e| format!("{a}: {e}"));
        match a.as_str() {
            "--device" => o.device = val()?,
            "--layers" => o.layers = num(val()?)?,
            "--hidden" => o.hidden = num(val()?)?,
            "--vocab" => o.vocab = num(val()?)?,
            "--batch" => o.batch = num(val()?)?,
            "--seq" => o.seq = num(val()?)?,
            "--steps" => o.steps = num(val()?)?,
            "--targets" => o.targets = val()?,
            "--peak-tflops" => {
                o.peak_tflops = Some(val()?.parse().map_err(|e| format!("{a}: {e}"))?)
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if o.batch * o.seq * o.steps * o.layers * o.vocab == 0 {
        return Err("--layers, --vocab, --batch, --seq and --steps must be positive".into());
    }
    if o.hidden == 0 || !o.hidden.is_multiple_of(64) {
        return Err("--hidden must be a positive multiple of 64 (heads of 64)".into());
    }
    Ok(o)
}

fn config(o: &Opts) -> FalconConfig {
    let json = serde_json::json!({
        "model_type": "falcon", "vocab_size": o.vocab, "hidden_size": o.hidden,
        "num_hidden_layers": o.layers, "num_attention_heads": o.hidden / 64, "multi_query": true,
        "new_decoder_architecture": false, "parallel_attn": true, "alibi": false, "bias": false,
        "layer_norm_epsilon": 1e-5, "bos_token_id": 11, "eos_token_id": 11
    });
    FalconConfig::from_json_str(&json.to_string(), "Falcon-7B shape").expect("valid config")
}

fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    v.par_chunks_mut(8).enumerate().for_each(|(i, c)| {
        let b = rng::bits(seed, i as u64).to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    });
    v
}

/// A 4-bit weight with random codes and random double-quantized block scales of about 0.02·3.
fn random_4bit(out_f: usize, in_f: usize, seed: u64, code_map: &[f32]) -> QuantizedWeight {
    let n = out_f * in_f;
    let blocks = n.div_ceil(64);
    let dq = DoubleQuantState {
        codes: random_bytes(seed ^ 1, blocks),
        nested_absmax: vec![0.03; blocks.div_ceil(256)],
        offset: 0.06,
        code: code_map.to_vec(),
        nested_blocksize: 256,
    };
    QuantizedWeight::from_parts(
        random_bytes(seed, n.div_ceil(2)),
        out_f,
        in_f,
        QuantType::Nf4,
        64,
        Absmax::Double(dq),
        DType::BF16,
    )
    .expect("consistent parts")
}

fn norm(d: usize) -> LayerNorm {
    LayerNorm {
        weight: Var::constant(Tensor::from_vec(vec![1f32; d], [d]).expect("shape")),
        bias: Var::constant(Tensor::zeros([d], DType::F32)),
        eps: 1e-5,
    }
}

fn model(o: &Opts) -> FalconModel {
    let c = config(o);
    let (h, v) = (c.hidden_size, c.vocab_size);
    // The 256-entry map of the double-quantized statistics, as quantizing produces it.
    let code_map = DoubleQuantState::quantize(&[0.01, 0.02, 0.05], 0.02).code;
    let embed: Vec<f32> = (0..v * h)
        .into_par_iter()
        .map(|i| (rng::uniform_f32(7, i as u64) - 0.5) * 0.1)
        .collect();
    let lin = |name: String, o: usize, i: usize, seed: u64| Linear {
        name,
        base: BaseWeight::Quantized(Arc::new(random_4bit(o, i, seed, &code_map))),
        lora: None,
    };
    let layers = (0..o.layers)
        .map(|l| {
            let p = format!("transformer.h.{l}");
            let s = 100 * l as u64;
            Rc::new(DecoderLayer {
                norms: Norms::Single(norm(h)),
                qkv: lin(
                    format!("{p}.self_attention.query_key_value"),
                    c.qkv_out_features(),
                    h,
                    s + 1,
                ),
                dense: lin(format!("{p}.self_attention.dense"), h, h, s + 2),
                h_to_4h: lin(format!("{p}.mlp.dense_h_to_4h"), 4 * h, h, s + 3),
                four_h_to_h: lin(format!("{p}.mlp.dense_4h_to_h"), h, 4 * h, s + 4),
            })
        })
        .collect();
    FalconModel {
        embed: Var::constant(Tensor::from_vec(embed, [v, h]).expect("shape")),
        layers,
        ln_f: norm(h),
        recompute: true,
        loss_chunk_rows: 256,
        config: c,
    }
}

/// Dense bf16 tensor-core peak (FLOP/s) of known GPUs, fp32 accumulation.
fn peak_flops(name: &str) -> Option<f64> {
    let n = name.to_ascii_uppercase();
    let t = if n.contains("H100") || n.contains("H200") || n.contains("H800") {
        989.4
    } else if n.contains("A100") || n.contains("A800") {
        312.0
    } else if n.contains("L40S") {
        362.1
    } else if n.contains("4090") {
        165.2
    } else if n.contains("3090") {
        71.0
    } else if n.contains("A10") {
        125.0
    } else if n.contains("L4") {
        121.0
    } else {
        return None;
    };
    Some(t * 1e12)
}

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let dev = match o.device.as_str() {
        "emulator" => kernels_cu::Device::emulator(),
        d => {
            let n = d
                .strip_prefix("cuda:")
                .map(|x| x.parse().unwrap_or(usize::MAX))
                .unwrap_or(0);
            kernels_cu::Device::cuda(n)
        }
    };
    let dev = match dev {
        Ok(d) => d,
        Err(e) => {
            println!("falcon_step_gpu: skipped, no CUDA device ({e})");
            return;
        }
    };
    let info = dev.info().clone();
    let t0 = Instant::now();
    let mut m = model(&o);
    let lora = LoraConfig::new(8, 16.0, 0.05, TargetModules::from_flag(&o.targets));
    attach_lora(&mut m, &lora, 3).expect("adapters attach");
    let linear_params: usize = m
        .layers
        .iter()
        .flat_map(|l| l.linears().map(|x| x.base.shape()[0] * x.base.shape()[1]))
        .sum::<usize>()
        + m.config.vocab_size * m.config.hidden_size;
    let mut c = match CudaFalcon::new(&m, dev) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    drop(m);
    println!(
        "model: Falcon-7B layout, hidden {}, {} layers, {:.1} MiB of weights on {} (built and uploaded in {:.1} s)",
        o.hidden,
        o.layers,
        c.base_bytes() as f64 / (1u64 << 20) as f64,
        info.name,
        t0.elapsed().as_secs_f64()
    );
    let (b, t) = (o.batch, o.seq);
    let ids: Vec<u32> = (0..b * t)
        .map(|i| (rng::bits(5, i as u64) % o.vocab as u64) as u32)
        .collect();
    let labels: Vec<i32> = ids.iter().map(|&x| x as i32).collect();
    let ids = Tensor::from_vec(ids, [b, t]).expect("shape");
    let mask = Tensor::from_vec(vec![1u8; b * t], [b, t]).expect("shape");
    let count = (b * (t - 1)) as f64;
    let cfg = engine::optim::AdamWConfig::default();
    let step = |c: &mut CudaFalcon| -> f64 {
        let loss = c
            .forward_backward(&ids, Some(&mask), &labels, count)
            .unwrap_or_else(|e| {
                eprintln!("error: {e}");
                std::process::exit(1)
            });
        c.optimizer_step(1e-4, &cfg, 1.0).unwrap_or_else(|e| {
            eprintln!("error: {e}");
            std::process::exit(1)
        });
        loss
    };
    rng::manual_seed(1);
    let first = step(&mut c);
    let start = Instant::now();
    let mut last = first;
    for _ in 0..o.steps {
        last = step(&mut c);
    }
    let secs = start.elapsed().as_secs_f64() / o.steps as f64;
    let tokens = (b * t) as f64 / secs;
    let flops = 3.0 * 2.0 * linear_params as f64 * tokens;
    let peak = o.peak_tflops.map(|t| t * 1e12).or(peak_flops(&info.name));
    let mem = c.memory();
    println!(
        "falcon_step_gpu: batch {b} x {t}, {:.1} ms/step, {tokens:.0} tokens/s, {:.1} TFLOP/s{}, \
         peak device memory {:.1} MiB (allocator peak in use), loss {first:.3} -> {last:.3}",
        secs * 1e3,
        flops / 1e12,
        peak.map(|p| format!(", MFU {:.1}%", 100.0 * flops / p))
            .unwrap_or_else(|| ", MFU n/a (unknown device peak; pass --peak-tflops)".into()),
        mem.peak_in_use as f64 / (1u64 << 20) as f64,
    );
}
