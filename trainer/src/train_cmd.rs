//! `trainer train`: load model and data as the flags say, then run the training loop.

use crate::args::TrainArgs;
use crate::session::{base_options, builtin_session, load_session};
use crate::train::train_with;
use anyhow::{bail, Context, Result};
use data_finqa::{
    load_file_limited, split_train_val, synthetic, tokenize_report, BadRecordPolicy, DataFormat,
    LoadOptions, LoadReport, TokenizeOptions, TruncationPolicy,
};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

pub fn data_format(s: &str) -> Result<DataFormat> {
    s.parse().map_err(|e| anyhow::anyhow!("--data-format: {e}"))
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
    // The report's text starts with its own "warning:".
    if let Some(w) = report.skipped_warning(5) {
        eprintln!("{w}");
    }
    if report.is_empty() {
        bail!("{}: no usable examples", path.display());
    }
    Ok(report)
}

/// `trainer train`, as one rank of a data-parallel job when an MPI launcher started it. An
/// error on any rank ends every rank (MPI_Abort) after printing it, so that none waits in a
/// collective for a rank that is gone.
pub fn run(args: &TrainArgs, stop: Arc<AtomicBool>) -> Result<()> {
    let (dist, device) = crate::distributed::init(crate::device::device_request(args)?)?;
    if dist.size() == 1 {
        return run_rank(args, stop, dist.as_ref(), device);
    }
    if !dist.is_main() {
        crate::distributed::launch::silence_stdout();
    }
    let result = run_rank(args, stop, dist.as_ref(), device);
    if let Err(e) = &result {
        eprintln!(
            "error on rank {} of {}: {e:#}\nending all ranks",
            dist.rank(),
            dist.size()
        );
        dist.abort(1);
    }
    result
}

fn run_rank(
    args: &TrainArgs,
    stop: Arc<AtomicBool>,
    dist: &dyn crate::distributed::Collective,
    device: model_falcon::DeviceRequest,
) -> Result<()> {
    crate::validate::train_args(args)?;
    // Fail on an unusable output directory before spending minutes loading a model.
    std::fs::create_dir_all(&args.output_dir).with_context(|| {
        format!(
            "cannot create output directory {}",
            args.output_dir.display()
        )
    })?;
    // Held until the run ends; the kernel releases it however the process ends. With several
    // ranks, rank 0 alone holds the lock and writes the output directory.
    let _lock = match dist.is_main() {
        true => Some(crate::lock::lock_output_dir(&args.output_dir)?),
        false => None,
    };
    if dist.is_main() {
        crate::output_dir::prepare_new_run(args)?;
        if args.resume == crate::args::ResumeMode::Auto
            && crate::resume_args::resume_dir(args).is_none()
        {
            println!(
                "--resume auto: no checkpoint in {}; starting a new run",
                args.output_dir.display()
            );
        }
    }
    let resolved = crate::resume_args::resolve(args)?;
    let args = &resolved;
    // Contradictory best-model flags fail now, not after the model is loaded.
    crate::best_model::BestModel::from_args(args)?;
    let max_data = crate::validate::parse_size_flag("--max-data-size", &args.max_data_size)?;
    let opts = base_options(&args.quant, args.double_quant)?;
    let mut session = match &args.model {
        Some(dir) => {
            crate::ram_check::check(dir, args)?;
            load_session(dir, &opts)?
        }
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
                    conversations: Vec::new(),
                    skipped: Vec::new(),
                    total,
                },
                None,
            )
        }
    };
    let chat = crate::chat_data::template_for(&train_report, args.model.as_deref())?;
    let set = tokenize_report(&session.tokenizer, &train_report, &tok_opts, chat.as_ref())
        .context("tokenizing the training data")?;
    let (train_set, eval_set) = match eval_report {
        Some(r) => {
            let chat = crate::chat_data::template_for(&r, args.model.as_deref())?;
            (
                set.examples,
                tokenize_report(&session.tokenizer, &r, &tok_opts, chat.as_ref())?.examples,
            )
        }
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
    println!("{}", truncation_summary(&train_set, args.max_length));
    let record = crate::run_record::provenance(args, &session)?;
    if dist.is_main() {
        if let Some(dir) = crate::resume_args::resume_dir(args) {
            if let Some((_, saved)) = crate::run_record::read_run_args(&dir) {
                for w in
                    crate::run_record::changed_inputs(&serde_json::Value::Object(saved), &record)
                {
                    eprintln!("warning: {w}");
                }
            }
        }
        // Written before the first checkpoint, which copies it.
        crate::resume_args::write(args, &record)?;
    }
    let s = train_with(
        &mut session,
        args,
        &train_set,
        &eval_set,
        stop,
        dist,
        device,
    )?;
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
    if s.ranks > 1 {
        let total = s.tokens_seen as f64 / s.seconds.max(1e-9);
        println!(
            "data parallel: {} ranks, global batch {}, {:.0} tok/s in total, {:.0} tok/s per rank",
            s.ranks,
            s.global_batch,
            total,
            total / s.ranks as f64
        );
    }
    if let (Some(f), Some(l)) = (s.first_eval_accuracy, s.last_eval_accuracy) {
        println!("eval_accuracy: {f:.3} before training -> {l:.3} at the last evaluation");
    }
    if let (Some(dir), Some(m)) = (&s.best_model_checkpoint, s.best_metric) {
        println!(
            "best checkpoint: {dir} ({} {m:.4}){}{}",
            args.metric_for_best_model.as_deref().unwrap_or("loss"),
            if s.loaded_best {
                ", written as the run's adapter"
            } else {
                ""
            },
            if s.early_stopped {
                "; stopped early"
            } else {
                ""
            }
        );
    }
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

/// One line on what `--max-length` cost the training examples: how many had their context
/// (or, under `seed`, their sequence) shortened, and by how many tokens.
pub fn truncation_summary(train_set: &[data_finqa::TokenizedExample], max_length: usize) -> String {
    let cut: Vec<usize> = train_set
        .iter()
        .map(|e| e.tokens_cut())
        .filter(|&c| c > 0)
        .collect();
    if cut.is_empty() {
        return format!(
            "truncation: no training example was shortened (all fit in --max-length {max_length})"
        );
    }
    let mean = cut.iter().sum::<usize>() as f64 / cut.len() as f64;
    let max = cut.iter().max().copied().unwrap_or(0);
    let share = cut.len() as f64 / train_set.len().max(1) as f64;
    // Most examples losing context usually means the limit, not the data, is wrong.
    let hint = if share > 0.5 {
        "; a larger --max-length keeps more of each context (README: what 512 costs on FinQA)"
    } else {
        ""
    };
    format!(
        "truncation: {} of {} training examples ({:.1}%) shortened to fit --max-length {max_length}, \
         by {mean:.1} tokens on average (at most {max}){hint}",
        cut.len(),
        train_set.len(),
        100.0 * share
    )
}
