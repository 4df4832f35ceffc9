//! The default run: the whole QLoRA pipeline on a built-in tiny Falcon-shaped model and
//! synthetic FinQA-style data, in about a minute on two CPU cores. It shows learning, not
//! just a falling loss: the accuracy of greedy answers to held-out questions is measured
//! before training and at every evaluation (`--predict-with-generate`), and the best
//! checkpoint by that accuracy becomes the adapter (`--load-best-model-at-end`).

use crate::accuracy::is_correct;
use crate::args::{DemoArgs, TrainArgs};
use crate::session::{builtin_session, save_base};
use crate::train::train;
use anyhow::Result;
use data_finqa::{
    metrics, split_train_val, synthetic, tokenize_records, TokenizeOptions, TruncationPolicy,
};
use model_falcon::{BaseOptions, GenerationConfig, Sampling};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Demo hyper-parameters: a random base knows nothing, so the adapters need a large learning
/// rate, every linear layer and a few hundred examples to show learning within a minute.
pub fn demo_train_args(a: &DemoArgs) -> TrainArgs {
    let mut t = TrainArgs::defaults();
    t.output_dir = a.output_dir.join("run");
    t.seed = a.seed;
    t.max_length = 128;
    t.per_device_train_batch_size = 8;
    t.per_device_eval_batch_size = 16;
    t.gradient_accumulation_steps = 1;
    t.max_steps = 200;
    t.learning_rate = 3e-3;
    t.lr_scheduler_type = "cosine".into();
    t.warmup_steps = 5;
    t.logging_steps = 25;
    t.eval_steps = 50;
    t.save_steps = 50;
    t.predict_with_generate = true;
    t.generation_max_new_tokens = 8;
    t.metric_for_best_model = Some("accuracy".into());
    t.load_best_model_at_end = true;
    t.lora_r = 16;
    t.lora_alpha = 32.0;
    t.lora_dropout = 0.05;
    t.target_modules = "all-linear".into();
    // Each demo is a new run: the previous demo's checkpoints are replaced, not mixed in.
    t.overwrite_output_dir = true;
    t
}

pub fn run_demo(a: &DemoArgs, stop: Arc<AtomicBool>) -> Result<()> {
    println!("QLoRA demo: a tiny Falcon-shaped model (random weights, NF4 + double quantization),");
    println!("LoRA on every linear layer, synthetic FinQA-style questions. The real job is");
    println!("  trainer train --model ./falcon-7b-instruct --data ./finqa/train.json\n");
    let args = demo_train_args(a);
    let mut session = builtin_session(a.seed, &BaseOptions::default())?;
    let base_dir = save_base(&session, &a.output_dir.join("base-model"))?;
    let records = synthetic::generate_demo(600, a.seed);
    let split = split_train_val(records.len(), 0.1, a.seed)?;
    let (train_records, val_records) = split.apply(&records);
    let opts = TokenizeOptions {
        max_length: args.max_length,
        eos_id: session.eos_id,
        policy: TruncationPolicy::KeepAnswer,
    };
    std::fs::create_dir_all(&args.output_dir)?;
    crate::output_dir::prepare_new_run(&args)?;
    let train_set = tokenize_records(&session.tokenizer, &train_records, &opts)?;
    let val_set = tokenize_records(&session.tokenizer, &val_records, &opts)?;
    let base = &session.model;
    println!(
        "model: {} layers, hidden {}, {} heads (multi-query), vocab {}; base weights {:.2} MiB",
        base.config.num_hidden_layers,
        base.config.hidden_size,
        base.config.num_attention_heads,
        base.config.vocab_size,
        base.base_bytes() as f64 / (1 << 20) as f64
    );
    println!(
        "data: {} train / {} validation examples (synthetic), max length {}",
        train_set.examples.len(),
        val_set.examples.len(),
        args.max_length
    );
    let summary = train(
        &mut session,
        &args,
        &train_set.examples,
        &val_set.examples,
        stop,
    )?;
    println!(
        "\ntrained {} steps in {:.1} s ({:.0} tokens/s); train loss {:.4}",
        summary.global_step,
        summary.seconds,
        summary.tokens_seen as f64 / summary.seconds.max(1e-9),
        summary.train_loss
    );
    if let (Some(f), Some(l)) = (summary.first_eval_loss, summary.last_eval_loss) {
        println!("eval loss: {f:.4} before training -> {l:.4} after");
    }
    if let (Some(f), Some(l)) = (summary.first_eval_accuracy, summary.best_metric) {
        let n = val_set.examples.len() as f64;
        println!(
            "held-out accuracy: {f:.3} before training -> {l:.3} after ({:.0} -> {:.0} of {n} \
             questions answered right)",
            f * n,
            l * n
        );
    }
    if summary.interrupted {
        println!(
            "interrupted; checkpoint in {}",
            summary.adapter_dir.display()
        );
        return Ok(());
    }

    println!("\nheld-out questions (greedy, at most 15 new tokens):");
    let gen = GenerationConfig {
        max_new_tokens: 15,
        stop_ids: session.stop_ids.clone(),
        pad_id: session.pad_id,
        sampling: Sampling::Greedy,
    };
    let mut correct = 0;
    let shown = val_set.examples.iter().take(3).collect::<Vec<_>>();
    for ex in &shown {
        let out = session.model.generate(&[ex.prompt_ids().to_vec()], &gen)?;
        let text = session
            .tokenizer
            .decode(&out[0].tokens, true)
            .map_err(|e| anyhow::anyhow!("decode: {e}"))?;
        let pred = metrics::answer_from_generation(&text);
        let gold = ex.target_text.trim();
        let ok = is_correct(&text, gold);
        correct += usize::from(ok);
        let q = ex
            .prompt_text
            .rsplit("Question:")
            .next()
            .unwrap_or("")
            .trim_end_matches("Answer:")
            .trim();
        println!(
            "  Q: {q}\n     gold {gold:<12} model {pred:<12} {}",
            if ok { "(match)" } else { "" }
        );
    }
    println!("  {correct}/{} match", shown.len());
    println!("\nadapter (PEFT format): {}", summary.adapter_dir.display());
    println!(
        "metrics: {}  loss curve: {}",
        args.output_dir.join("metrics.jsonl").display(),
        args.output_dir.join("loss.png").display()
    );
    println!("base model written to {}; try:", base_dir.display());
    println!(
        "  trainer ask --model {} --adapter {} --question \"...\" --quant nf4",
        base_dir.display(),
        summary.adapter_dir.display()
    );
    println!("Real run: trainer train --model ./falcon-7b-instruct --data ./finqa/train.json --output-dir ./falcon-finqa");
    Ok(())
}
