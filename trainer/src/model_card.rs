//! The model card `README.md` written beside the final adapter, as PEFT's `save_pretrained`
//! writes one: YAML metadata the Hugging Face Hub reads (`base_model`, `library_name: peft`,
//! tags), then what a person needs to judge and reuse the adapter: base model, data (paths,
//! digests, sizes), hyper-parameters, evaluation results, the command and the versions.

use crate::args::TrainArgs;
use crate::run_record::{command_line, read_run_args};
use crate::state::LogEntry;
use anyhow::{Context, Result};
use model_falcon::model::ParamCounts;
use model_falcon::peft::LoraConfig;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::Path;

/// What the card describes.
pub struct CardInputs<'a> {
    pub args: &'a TrainArgs,
    pub lora: &'a LoraConfig,
    pub history: &'a [LogEntry],
    pub train_examples: usize,
    pub eval_examples: usize,
    pub params: ParamCounts,
}

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn fmt_num(v: f64) -> String {
    if v == 0.0 || (1e-3..1e5).contains(&v.abs()) {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.3e}")
    }
}

/// The card's text. `record` is the run's `training_args.json` (digests, command, versions)
/// when the run wrote one.
pub fn render(c: &CardInputs, record: Option<&serde_json::Map<String, Value>>) -> String {
    let a = c.args;
    let base = c
        .lora
        .base_model_name_or_path
        .clone()
        .unwrap_or_else(|| "unknown".into());
    let get = |k: &str| record.and_then(|r| r.get(k)).and_then(Value::as_str);
    let mut s = String::new();
    let _ = writeln!(s, "---");
    let _ = writeln!(s, "base_model: {}", yaml_str(&base));
    let _ = writeln!(s, "library_name: peft");
    let _ = writeln!(s, "pipeline_tag: text-generation");
    let _ = writeln!(s, "tags:");
    let _ = writeln!(s, "- {}", yaml_str(&format!("base_model:adapter:{base}")));
    let _ = writeln!(s, "- lora");
    if a.quant != "none" {
        let _ = writeln!(s, "- qlora");
    }
    let _ = writeln!(s, "- qlora-rs");
    let _ = writeln!(s, "---\n");
    let name = a
        .output_dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "adapter".into());
    let _ = writeln!(s, "# {name}\n");
    let _ = writeln!(
        s,
        "A LoRA adapter for `{base}`, in Hugging Face PEFT's format (`adapter_config.json` + \
         `adapter_model.safetensors`), trained with the qlora-rs `trainer` on a frozen base \
         stored as {}.\n",
        match a.quant.as_str() {
            "none" => "f32 (plain LoRA)".to_string(),
            q if a.double_quant => format!("{} with double quantization", q.to_uppercase()),
            q => q.to_uppercase(),
        }
    );

    let _ = writeln!(s, "## Training data\n");
    let data = a
        .data
        .as_ref()
        .map(|p| format!("`{}`", p.display()))
        .unwrap_or_else(|| "synthetic FinQA-style questions (built in)".into());
    let digest = |k: &str| {
        get(k)
            .map(|d| format!(" (sha256 `{d}`)"))
            .unwrap_or_default()
    };
    let _ = writeln!(
        s,
        "- train: {data}{}, {} examples",
        digest("data_sha256"),
        c.train_examples
    );
    let eval_src = match &a.eval_data {
        Some(p) => format!("`{}`{}", p.display(), digest("eval_data_sha256")),
        None => format!("a {} held-out split of the train file", a.val_fraction),
    };
    let _ = writeln!(s, "- evaluation: {eval_src}, {} examples", c.eval_examples);
    let _ = writeln!(
        s,
        "- format `{}`, at most {} tokens per example (truncation `{}`)",
        a.data_format, a.max_length, a.truncation
    );
    if let Some(t) = get("tokenizer_sha256") {
        let _ = writeln!(s, "- tokenizer sha256 `{t}`");
    }

    let _ = writeln!(s, "\n## Training hyper-parameters\n");
    let _ = writeln!(s, "| parameter | value |\n|---|---|");
    let steps = if a.max_steps > 0 {
        format!("max_steps {}", a.max_steps)
    } else {
        format!("num_train_epochs {}", a.num_train_epochs)
    };
    let rows: Vec<(&str, String)> = vec![
        ("learning_rate", fmt_num(a.learning_rate)),
        ("lr_scheduler_type", a.lr_scheduler_type.clone()),
        (
            "warmup",
            if a.warmup_steps > 0 {
                format!("{} steps", a.warmup_steps)
            } else {
                format!("ratio {}", a.warmup_ratio)
            },
        ),
        (
            "per_device_train_batch_size",
            a.per_device_train_batch_size.to_string(),
        ),
        (
            "gradient_accumulation_steps",
            a.gradient_accumulation_steps.to_string(),
        ),
        (
            "total_train_batch_size",
            (a.per_device_train_batch_size * a.gradient_accumulation_steps).to_string(),
        ),
        ("length", steps),
        (
            "optimizer",
            format!(
                "AdamW (betas {}, {}; eps {}; weight decay {})",
                a.adam_beta1,
                a.adam_beta2,
                fmt_num(a.adam_epsilon),
                a.weight_decay
            ),
        ),
        ("max_grad_norm", a.max_grad_norm.to_string()),
        ("seed", a.seed.to_string()),
        (
            "lora r / alpha / dropout",
            format!(
                "{} / {} / {}",
                c.lora.r, c.lora.lora_alpha, c.lora.lora_dropout
            ),
        ),
        ("target_modules", a.target_modules.clone()),
        ("use_rslora", c.lora.use_rslora.to_string()),
        (
            "quantization",
            format!("{} (double quant {})", a.quant, a.double_quant),
        ),
    ];
    for (k, v) in rows {
        let _ = writeln!(s, "| {k} | {v} |");
    }
    let _ = writeln!(s, "\n{} {}.", c.params, crate::commands::PARAM_COUNT_NOTE);

    let _ = writeln!(s, "\n## Results\n");
    let evals: Vec<serde_json::Map<String, Value>> = c
        .history
        .iter()
        .filter(|e| e.eval_loss.is_some())
        .filter_map(|e| crate::metrics::entry_fields(e).ok())
        .collect();
    if evals.is_empty() {
        let _ = writeln!(s, "No evaluation was run.");
    } else {
        let metrics: Vec<String> = {
            let mut m = vec!["eval_loss".to_string()];
            m.extend(crate::plot::extra_eval_metrics(&evals));
            m
        };
        let _ = writeln!(s, "| step | epoch | {} |", metrics.join(" | "));
        let _ = writeln!(s, "|---:|---:|{}", "---:|".repeat(metrics.len()));
        for row in &evals {
            let cells: Vec<String> = metrics
                .iter()
                .map(|k| {
                    row.get(k)
                        .and_then(Value::as_f64)
                        .map(fmt_num)
                        .unwrap_or_default()
                })
                .collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} |",
                row.get("step").and_then(Value::as_u64).unwrap_or(0),
                row.get("epoch")
                    .and_then(Value::as_f64)
                    .map(fmt_num)
                    .unwrap_or_default(),
                cells.join(" | ")
            );
        }
    }
    if let Some(f) = c.history.iter().rev().find(|e| e.train_loss.is_some()) {
        let _ = writeln!(
            s,
            "\nTrain loss (mean over all steps) {}; {} steps in {} s.",
            f.train_loss.map(fmt_num).unwrap_or_default(),
            f.step,
            f.train_runtime.map(fmt_num).unwrap_or_default()
        );
    }

    let _ = writeln!(s, "\n## Command\n");
    let cmd = get("command")
        .map(String::from)
        .unwrap_or_else(command_line);
    let _ = writeln!(s, "```\n{cmd}\n```\n");
    let _ = writeln!(s, "## Use\n");
    let _ = writeln!(
        s,
        "```python\nfrom transformers import AutoModelForCausalLM\nfrom peft import PeftModel\n\
         base = AutoModelForCausalLM.from_pretrained({})\nmodel = PeftModel.from_pretrained(base, \"path/to/{name}\")\n```\n",
        yaml_str(&base)
    );
    let _ = writeln!(
        s,
        "or `trainer ask --model <base dir> --adapter path/to/{name} --question ...`.\n"
    );
    let _ = writeln!(s, "## Framework versions\n");
    let version = record
        .and_then(|r| r.get("versions"))
        .and_then(|v| v.get("trainer"))
        .and_then(Value::as_str)
        .unwrap_or(env!("CARGO_PKG_VERSION"))
        .to_string();
    let _ = writeln!(s, "- qlora-rs trainer {version}");
    let _ = writeln!(s, "- adapter format: PEFT LoRA (`peft_type: LORA`)");
    s
}

/// Writes `dir/README.md` for the adapter saved in `dir`.
pub fn write(dir: &Path, c: &CardInputs) -> Result<()> {
    let record = read_run_args(&c.args.output_dir).map(|(_, m)| m);
    let path = dir.join("README.md");
    std::fs::write(&path, render(c, record.as_ref()))
        .with_context(|| format!("cannot write the model card {}", path.display()))
}
