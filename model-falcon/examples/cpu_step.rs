//! Throughput of the LoRA training step on the CPU backend, on a small Falcon-7B-layout model
//! with random weights: the side of `scripts/cpu-vs-torch.py` that runs this project.
//!
//! ```text
//! cargo run -p model-falcon --release --example cpu_step -- \
//!     [--quant none|nf4] [--layers 4] [--hidden 512] [--vocab 8192] [--batch 2] [--seq 256] \
//!     [--steps 5] [--warmup 1] [--targets query_key_value] [--no-recompute] \
//!     [--dequant-cache-mib 256]
//! ```
//!
//! One step: forward with per-layer recompute, loss over every position (all labels are
//! targets), backward, AdamW (lr 1e-4) on the LoRA parameters. LoRA r = 8, alpha 16,
//! dropout 0.05. Prints one JSON line: tokens/s over the timed steps, the mean step time, the
//! process CPU seconds per step and the last loss. `--dequant-cache-mib` sets the budget of
//! dequantized 4-bit weights kept between products (`engine::nf4::dequant_cache`; 0
//! dequantizes tile by tile on every call).

use engine::optim::{AdamW, AdamWConfig};
use engine::{rng, Tensor};
use model_falcon::peft::{LoraConfig, TargetModules};
use model_falcon::{attach_lora, random_model, BaseOptions, FalconConfig, QuantMode};
use std::time::Instant;

struct Opts {
    quant: QuantMode,
    layers: usize,
    hidden: usize,
    vocab: usize,
    batch: usize,
    seq: usize,
    steps: usize,
    warmup: usize,
    targets: String,
    recompute: bool,
    dequant_cache_mib: usize,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        quant: QuantMode::None,
        layers: 4,
        hidden: 512,
        vocab: 8192,
        batch: 2,
        seq: 256,
        steps: 5,
        warmup: 1,
        targets: "query_key_value".into(),
        recompute: true,
        dequant_cache_mib: engine::nf4::dequant_cache::DEFAULT_BUDGET_BYTES >> 20,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        let num = |s: String| s.parse::<usize>().map_err(|e| format!("{a}: {e}"));
        match a.as_str() {
            "--quant" => o.quant = val()?.parse()?,
            "--layers" => o.layers = num(val()?)?,
            "--hidden" => o.hidden = num(val()?)?,
            "--vocab" => o.vocab = num(val()?)?,
            "--batch" => o.batch = num(val()?)?,
            "--seq" => o.seq = num(val()?)?,
            "--steps" => o.steps = num(val()?)?,
            "--warmup" => o.warmup = num(val()?)?,
            "--targets" => o.targets = val()?,
            "--no-recompute" => o.recompute = false,
            "--dequant-cache-mib" => o.dequant_cache_mib = num(val()?)?,
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

/// User + system CPU seconds of this process, all threads (Linux `/proc/self/stat`, in the
/// kernel's 100 Hz clock ticks); `None` where that file is absent. On a shared machine the CPU
/// time of a step varies less than its wall-clock time.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn config(o: &Opts) -> FalconConfig {
    let json = serde_json::json!({
        "model_type": "falcon", "vocab_size": o.vocab, "hidden_size": o.hidden,
        "num_hidden_layers": o.layers, "num_attention_heads": o.hidden / 64, "multi_query": true,
        "new_decoder_architecture": false, "parallel_attn": true, "alibi": false, "bias": false,
        "layer_norm_epsilon": 1e-5, "max_position_embeddings": 2048,
        "tie_word_embeddings": true, "bos_token_id": 11, "eos_token_id": 11
    });
    FalconConfig::from_json_str(&json.to_string(), "cpu_step config").expect("valid config")
}

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("cpu_step: {e}");
            std::process::exit(2);
        }
    };
    // The main thread is the rayon pool's first worker (RAYON_NUM_THREADS counts it), and
    // freed activation buffers stay in the process for the next step (see both functions).
    if let Err(e) = engine::threads::use_calling_thread_in_pool() {
        eprintln!("cpu_step: thread pool: {e}");
        std::process::exit(1);
    }
    engine::host_alloc::retain_freed_memory();
    engine::nf4::dequant_cache::set_budget_bytes(o.dequant_cache_mib << 20);
    let opts = BaseOptions {
        quant: o.quant,
        ..BaseOptions::default()
    };
    let mut model = match random_model(config(&o), 1, &opts) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("cpu_step: building the model: {e}");
            std::process::exit(1);
        }
    };
    let lora = LoraConfig::new(8, 16.0, 0.05, TargetModules::from_flag(&o.targets));
    if let Err(e) = attach_lora(&mut model, &lora, 2) {
        eprintln!("cpu_step: attaching LoRA: {e}");
        std::process::exit(1);
    }
    model.recompute = o.recompute;
    let (b, t) = (o.batch, o.seq);
    let ids: Vec<u32> = (0..(b * t) as u64)
        .map(|i| (rng::bits(3, i) % o.vocab as u64) as u32)
        .collect();
    // Labels are the inputs, as a causal-LM collator makes them.
    let labels: Vec<i32> = ids.iter().map(|&x| x as i32).collect();
    let count = (b * (t - 1)) as f64;
    let ids = Tensor::from_vec(ids, [b, t]).expect("ids");
    let mask = Tensor::from_vec(vec![1u8; b * t], [b, t]).expect("mask");
    let params: Vec<_> = model
        .lora_parameters()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    let mut opt = AdamW::new(params, AdamWConfig::default()).expect("trainable parameters");
    let mut last_loss = f64::NAN;
    let step = |opt: &mut AdamW| -> engine::Result<f64> {
        let loss = model.loss(&ids, Some(&mask), &labels, count, true)?;
        let l = loss.value().to_f32_vec()?[0] as f64;
        let grads = loss.backward()?;
        opt.step(&grads, 1e-4)?;
        Ok(l)
    };
    for _ in 0..o.warmup {
        if let Err(e) = step(&mut opt) {
            eprintln!("cpu_step: warm-up step: {e}");
            std::process::exit(1);
        }
    }
    let cpu_start = process_cpu_seconds();
    let start = Instant::now();
    for _ in 0..o.steps {
        match step(&mut opt) {
            Ok(l) => last_loss = l,
            Err(e) => {
                eprintln!("cpu_step: step: {e}");
                std::process::exit(1);
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu_per_step = match (cpu_start, process_cpu_seconds()) {
        (Some(a), Some(b)) => Some((b - a) / o.steps as f64),
        _ => None,
    };
    let quant = match o.quant {
        QuantMode::None => "none",
        QuantMode::Nf4 => "nf4",
        QuantMode::Fp4 => "fp4",
    };
    println!(
        "{}",
        serde_json::json!({
            "impl": "qlora-rs", "quant": quant, "threads": rayon::current_num_threads(),
            "dequant_cache_mib": o.dequant_cache_mib, "steps": o.steps, "step_s": secs / o.steps as f64,
            "cpu_s_per_step": cpu_per_step,
            "tokens_per_s": (o.steps * b * t) as f64 / secs, "loss": last_loss,
        })
    );
}
