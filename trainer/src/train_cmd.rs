//! `trainer train`: load model and data as the flags say, then run the training loop.

use crate::args::TrainArgs;
use crate::session::{base_options, builtin_session, load_session};
use crate::train::train;
use anyhow::{bail, Context, Result};
use data_finqa::{
    load_file_limited, split_train_val, synthetic, tokenize_report, BadRecordPolicy, DataFormat,
    LoadOptions, LoadReport, TokenizeOptions, TruncationPolicy,
};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

pub fn data_format(s: &str) -> Result<DataFormat> {
    Ok(match s {
        "auto" => DataFormat::Auto,
        "finqa" => DataFormat::FinqaOriginal,
        "hf" => DataFormat::HfFlat,
        "jsonl" => DataFormat::PromptCompletion,
        o => bail!("unknown --data-format `{o}` (expected auto, finqa, hf or jsonl)"),
    })
}

pub fn truncation(s: &str) -> Result<TruncationPolicy> {
    s.parse().map_err(|e| anyhow::anyhow!("--truncation: {e}"))
}

/// Loads a data file, printing a warning for skipped records.
pub fn load_data(path: &Path, format: &str, strict: bool) -> Result<LoadReport> {
    load_data_limited(path, format, strict, data_finqa::DEFAULT_MAX_DATA_BYTES)
}

/// [`load_data`] refusing files larger than `max_bytes`.
pub fn load_data_limited(
    path: &Path,
    format: &str,
    strict: bool,
    max_bytes: u64,
) -> Result<LoadReport> {
    let opts = LoadOptions {
        format: data_format(format)?,
        bad_records: if strict {
            BadRecordPolicy::Fail
        } else {
            BadRecordPolicy::Skip
        },
    };
    let report = load_file_limited(path, &opts, max_bytes)?;
    if let Some(w) = report.skipped_warning(5) {
        eprintln!("warning: {w}");
    }
    if report.is_empty() {
        bail!("{}: no usable examples", path.display());
    }
    Ok(report)
}

pub fn run(args: &TrainArgs, stop: Arc<AtomicBool>) -> Result<()> {
    crate::validate::train_args(args)?;
    // Fail on an unusable output directory before spending minutes loading a model.
    std::fs::create_dir_all(&args.output_dir).with_context(|| {
        format!(
            "cannot create output directory {}",
            args.output_dir.display()
        )
    })?;
    // Held until the run ends; the kernel releases it however the process ends.
    let _lock = crate::lock::lock_output_dir(&args.output_dir)?;
    let resolved = crate::resume_args::resolve(args)?;
    let args = &resolved;
    crate::resume_args::write(args)?;
    let max_data = crate::validate::parse_size_flag("--max-data-size", &args.max_data_size)?;
    let opts = base_options(&args.quant, args.double_quant)?;
    let mut session = match &args.model {
        Some(dir) => load_session(dir, &opts)?,
        None => {
            println!("no --model given: training the built-in tiny model");
            builtin_session(args.seed, &opts)?
        }
    };
    for n in &session.notes {
        eprintln!("note: {n}");
    }
    let tok_opts = TokenizeOptions {
        max_length: args.max_length,
        eos_id: session.eos_id,
        policy: truncation(&args.truncation)?,
    };
    let (train_report, eval_report) = match &args.data {
        Some(p) => {
            let all = load_data_limited(p, &args.data_format, args.strict_data, max_data)?;
            match &args.eval_data {
                Some(e) => (
                    all,
                    Some(load_data_limited(
                        e,
                        &args.data_format,
                        args.strict_data,
                        max_data,
                    )?),
                ),
                None => (all, None),
            }
        }
        None => {
            println!("no --data given: using synthetic FinQA-style data");
            let records = synthetic::generate(600, args.seed);
            let total = records.len();
            (
                LoadReport {
                    path: "synthetic".into(),
                    format: DataFormat::FinqaOriginal,
                    records,
                    pairs: Vec::new(),
                    skipped: Vec::new(),
                    total,
                },
                None,
            )
        }
    };
    let set = tokenize_report(&session.tokenizer, &train_report, &tok_opts)
        .context("tokenizing the training data")?;
    let (train_set, eval_set) = match eval_report {
        Some(r) => (
            set.examples,
            tokenize_report(&session.tokenizer, &r, &tok_opts)?.examples,
        ),
        None => {
            let split = split_train_val(set.examples.len(), args.val_fraction, args.seed)?;
            split.apply(&set.examples)
        }
    };
    let lost = train_set.iter().filter(|e| e.answer_truncated).count();
    println!(
        "data: {} train / {} eval examples; {} dropped as too long; {lost} with truncated answers ({} policy)",
        train_set.len(),
        eval_set.len(),
        set.dropped.len(),
        args.truncation
    );
    let s = train(&mut session, args, &train_set, &eval_set, stop)?;
    println!(
        "done: {} / {} steps in {:.1} s, train loss {:.4}{}",
        s.global_step,
        s.max_steps,
        s.seconds,
        s.train_loss,
        s.last_eval_loss
            .map(|l| format!(", eval loss {l:.4}"))
            .unwrap_or_default()
    );
    println!(
        "peak host tensor memory: {:.1} MiB",
        s.peak_host_bytes as f64 / (1 << 20) as f64
    );
    if let Some(d) = s.peak_device_bytes {
        println!(
            "peak device memory (allocator, in use): {:.1} MiB",
            d as f64 / (1 << 20) as f64
        );
    }
    if s.interrupted {
        println!(
            "stopped early; resume with --resume (checkpoint {})",
            s.adapter_dir.display()
        );
    } else {
        println!("adapter written to {}", s.adapter_dir.display());
    }
    Ok(())
}
