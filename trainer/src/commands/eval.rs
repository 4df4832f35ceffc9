//! `trainer eval`: evaluation loss and, for FinQA data, answer accuracy.
//!
//! * Loss: the exact token-level mean `Σ CE(target tokens) / #target tokens` over all examples
//!   (the same function the training loop uses for its eval loss), with the training prompt
//!   format, max length and truncation policy.
//! * Accuracy (FinQA records only): greedy generation of at most `--max-new-tokens` for the
//!   examples' prompts, `--batch-size` prompts per batch (left-padded, each prompt sees only
//!   its own tokens); the answer is the first line of the generated text. An answer is
//!   correct when it matches the gold answer numerically (data_finqa::metrics::numeric_match)
//!   or as normalized text (exact_match). The FinQA-style `exe_ans` comparisons (exact at 5
//!   decimals, and tolerant) are reported too where the records have `exe_ans`.
//! * Per-example predictions go to a JSONL file: id, question, gold, prediction, correct, ...

use super::{create_output_file, decode, load_model_with_adapter};
use crate::args::EvalArgs;
use crate::train::evaluate;
use crate::train_cmd::{load_data, truncation};
use anyhow::{bail, Context, Result};
use data_finqa::metrics::{answer_from_generation, score, Accuracy};
use data_finqa::{tokenize_report, Record, TokenizeOptions, TokenizedExample};
use engine::optim::AdamWConfig;
use model_falcon::{Backend, GenerationConfig, Sampling};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// One line of the predictions file.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub id: String,
    pub question: String,
    /// The record's answer (falling back to final_result, then exe_ans, as training does).
    pub gold: String,
    /// First line of the generated text, trimmed.
    pub prediction: String,
    /// Numeric or exact match with `gold`.
    pub correct: bool,
    pub exact_match: bool,
    pub numeric_match: bool,
    /// Match with exe_ans at 5 decimals (None without exe_ans).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe_exact: Option<bool>,
    /// Match with exe_ans within the tolerance (None without exe_ans).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe_tolerant: Option<bool>,
    /// The whole generated text.
    pub generated: String,
}

/// What `trainer eval --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub data: String,
    pub examples: usize,
    pub target_tokens: usize,
    pub eval_loss: f64,
    /// Fraction of correct answers (numeric or exact match), when answers were generated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact_match: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub numeric_match: Option<f64>,
    /// Examples whose record has exe_ans, and the exe_ans accuracies over them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub with_exe_ans: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe_ans_exact: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe_ans_tolerant: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predictions: Option<String>,
    pub seconds: f64,
}

/// Pairs every tokenized example with its record. Tokenization keeps record order and only
/// leaves records out (dropped ones), so a forward walk matching ids finds each one.
fn records_of<'a>(examples: &[TokenizedExample], records: &'a [Record]) -> Result<Vec<&'a Record>> {
    let mut out = Vec::with_capacity(examples.len());
    let mut j = 0;
    for ex in examples {
        while j < records.len() && records[j].id != ex.id {
            j += 1;
        }
        let Some(r) = records.get(j) else {
            bail!("internal: no record for example `{}`", ex.id);
        };
        out.push(r);
        j += 1;
    }
    Ok(out)
}

pub fn eval(a: &EvalArgs) -> Result<()> {
    let start = Instant::now();
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if a.generate && a.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    let policy = truncation(&a.truncation)?;
    if let Some(ad) = &a.adapter {
        if !ad.is_dir() {
            bail!("adapter directory {} does not exist", ad.display());
        }
    }
    let mut report = load_data(&a.data, &a.data_format, false)?;
    if a.limit > 0 {
        // Only the first N records are tokenized (a few of them may still be dropped as too
        // long; the examples are cut to N again below).
        report.records.truncate(a.limit);
        report.pairs.truncate(a.limit);
    }
    let finqa = report.pairs.is_empty();
    let score_answers = a.generate && finqa;
    if a.generate && !finqa {
        eprintln!(
            "note: {} holds prompt/completion pairs; answer accuracy is computed for FinQA data only",
            a.data.display()
        );
    }
    let pred_path: Option<PathBuf> = score_answers.then(|| {
        a.predictions.clone().unwrap_or_else(|| match &a.adapter {
            Some(ad) => ad.join("predictions.jsonl"),
            None => PathBuf::from("predictions.jsonl"),
        })
    });
    let mut pred_file = match &pred_path {
        Some(p) => Some(create_output_file(p, "predictions")?),
        None => None,
    };

    let session = load_model_with_adapter(&a.model, a.adapter.as_deref())?;
    let opts = TokenizeOptions {
        max_length: a.max_length,
        eos_id: session.eos_id,
        policy,
    };
    let set = tokenize_report(&session.tokenizer, &report, &opts)
        .with_context(|| format!("tokenizing {}", a.data.display()))?;
    if !set.dropped.is_empty() {
        eprintln!(
            "warning: {} examples do not fit in --max-length {} and are left out",
            set.dropped.len(),
            a.max_length
        );
    }
    let mut examples = set.examples;
    if a.limit > 0 {
        examples.truncate(a.limit);
    }
    if examples.is_empty() {
        bail!("{}: no example to evaluate", a.data.display());
    }
    // The loss is evaluated on the CPU, as the generation below runs there.
    let backend = Backend::host(&session.model, AdamWConfig::default())?;
    let (eval_loss, target_tokens) = evaluate(&backend, session.pad_id, &examples, a.batch_size)
        .with_context(|| format!("evaluating the loss on {}", a.data.display()))?;
    if !a.json {
        println!(
            "eval loss {eval_loss:.4} over {target_tokens} target tokens of {} examples",
            examples.len()
        );
    }

    let mut result = EvalReport {
        data: a.data.display().to_string(),
        examples: examples.len(),
        target_tokens,
        eval_loss,
        accuracy: None,
        exact_match: None,
        numeric_match: None,
        with_exe_ans: None,
        exe_ans_exact: None,
        exe_ans_tolerant: None,
        predictions: None,
        seconds: 0.0,
    };
    if let (Some(file), Some(path)) = (pred_file.as_mut(), &pred_path) {
        let records = records_of(&examples, &report.records)?;
        let gen = GenerationConfig {
            max_new_tokens: a.max_new_tokens,
            stop_ids: session.stop_ids.clone(),
            pad_id: session.pad_id,
            sampling: Sampling::Greedy,
        };
        let mut acc = Accuracy::default();
        let mut correct = 0usize;
        let mut done = 0;
        for (chunk, recs) in examples
            .chunks(a.batch_size)
            .zip(records.chunks(a.batch_size))
        {
            let prompts: Vec<Vec<u32>> = chunk.iter().map(|e| e.prompt_ids().to_vec()).collect();
            let outs = session
                .model
                .generate(&prompts, &gen)
                .context("generating answers")?;
            for ((ex, rec), out) in chunk.iter().zip(recs).zip(outs) {
                let generated = decode(&session, &out.tokens)?;
                let pred = answer_from_generation(&generated).to_string();
                let s = score(&pred, rec);
                acc.add(&s);
                correct += usize::from(s.exact || s.numeric);
                let p = Prediction {
                    id: ex.id.clone(),
                    question: rec.question.clone(),
                    gold: rec.resolved_answer().map(|(g, _)| g).unwrap_or_default(),
                    prediction: pred,
                    correct: s.exact || s.numeric,
                    exact_match: s.exact,
                    numeric_match: s.numeric,
                    exe_exact: s.exe.map(|e| e.exact),
                    exe_tolerant: s.exe.map(|e| e.tolerant),
                    generated,
                };
                serde_json::to_writer(&mut *file, &p)?;
                file.write_all(b"\n")
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            done += chunk.len();
            if !a.json {
                eprint!("\rgenerated answers: {done}/{}", examples.len());
            }
        }
        if !a.json {
            eprintln!();
        }
        file.flush()
            .with_context(|| format!("cannot write {}", path.display()))?;
        result.accuracy = Some(correct as f64 / acc.n.max(1) as f64);
        result.exact_match = Some(acc.exact_rate());
        result.numeric_match = Some(acc.numeric_rate());
        if acc.with_exe > 0 {
            result.with_exe_ans = Some(acc.with_exe);
            result.exe_ans_exact = Some(acc.exe_exact_rate());
            result.exe_ans_tolerant = Some(acc.exe_tolerant_rate());
        }
        result.predictions = Some(path.display().to_string());
    }
    result.seconds = start.elapsed().as_secs_f64();
    if a.json {
        println!("{}", serde_json::to_string(&result)?);
    } else if let Some(acc) = result.accuracy {
        println!(
            "accuracy {:.4} ({} examples; exact match {:.4}, numeric match {:.4})",
            acc,
            result.examples,
            result.exact_match.unwrap_or(0.0),
            result.numeric_match.unwrap_or(0.0)
        );
        if let (Some(n), Some(e), Some(t)) = (
            result.with_exe_ans,
            result.exe_ans_exact,
            result.exe_ans_tolerant,
        ) {
            println!("exe_ans accuracy over {n} examples: exact {e:.4}, tolerant {t:.4}");
        }
        if let Some(p) = &result.predictions {
            println!("predictions written to {p}");
        }
    }
    Ok(())
}
