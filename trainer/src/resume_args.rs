//! Resume and `--init-adapter` against the flags of the run that wrote them.
//!
//! Every checkpoint holds the resolved flags of its run (`training_args.json`). On resume:
//! - a flag given explicitly (on the command line or in `--config`) that contradicts the
//!   checkpoint's value is an error naming the flag and both values: silently keeping either
//!   value would train something other than what the user asked for;
//! - a flag left at its default takes the checkpoint's value, so `trainer train --resume
//!   --output-dir X` alone continues the run as it was planned.
//!
//! Flags that do not change what is trained (where output goes, logging and saving cadence,
//! the device, evaluation batch size) may differ freely. Input paths (`--model`, `--data`,
//! `--eval-data`) are taken from the checkpoint when not given, and not compared when given,
//! since files may move. With `--init-adapter`, explicit LoRA flags must agree with the
//! adapter's `adapter_config.json`, whose values are the ones trained.

use crate::args::TrainArgs;
use crate::state::{list_checkpoints, TRAINING_ARGS_FILE};
use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// Flags that decide what is trained: compared when explicit, adopted when not.
pub const PLAN_FLAGS: &[&str] = &[
    "data_format",
    "val_fraction",
    "max_length",
    "truncation",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "warmup_ratio",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "seed",
    "bf16",
    "group_by_length",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "use_rslora",
    "quant",
    "double_quant",
];

/// Input paths: adopted when not given, never compared.
pub const INPUT_FLAGS: &[&str] = &["model", "data", "eval_data"];

fn flag(id: &str) -> String {
    format!("--{}", id.replace('_', "-"))
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "(not set)".into(),
        o => o.to_string(),
    }
}

fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) if a.is_number() && b.is_number() => {
            x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs())
        }
        _ => a == b,
    }
}

/// The checkpoint this invocation resumes from, if any (as the training loop picks it).
pub fn resume_dir(args: &TrainArgs) -> Option<PathBuf> {
    match (&args.resume_from, args.resume) {
        (Some(d), _) => Some(d.clone()),
        (None, true) => list_checkpoints(&args.output_dir)
            .last()
            .map(|(_, d)| d.clone()),
        (None, false) => None,
    }
}

fn as_map(args: &TrainArgs) -> Result<Map<String, Value>> {
    match serde_json::to_value(args)? {
        Value::Object(m) => Ok(m),
        _ => unreachable!("TrainArgs serializes to an object"),
    }
}

/// Merges the flags saved by the run being resumed into `args` (see the module docs).
/// `saved` is the content of its `training_args.json`; `source` names it in messages.
pub fn merge_saved(args: &TrainArgs, saved: &Value, source: &Path) -> Result<TrainArgs> {
    let saved = saved
        .as_object()
        .with_context(|| format!("{}: expected a JSON object", source.display()))?;
    let mut mine = as_map(args)?;
    let mut conflicts = Vec::new();
    for id in PLAN_FLAGS.iter().chain(INPUT_FLAGS) {
        let Some(theirs) = saved.get(*id) else {
            continue;
        };
        let ours = mine.get(*id).cloned().unwrap_or(Value::Null);
        if args.explicit.contains(*id) {
            if PLAN_FLAGS.contains(id) && !same(&ours, theirs) {
                conflicts.push(format!(
                    "{} is {} here but {} in the checkpoint",
                    flag(id),
                    show(&ours),
                    show(theirs)
                ));
            }
        } else {
            mine.insert(id.to_string(), theirs.clone());
        }
    }
    if !conflicts.is_empty() {
        bail!(
            "the flags contradict the run being resumed ({}):\n  {}\nresume with the \
             checkpoint's values (leave these flags out), or start a new run in another \
             --output-dir (--init-adapter starts from its adapter)",
            source.display(),
            conflicts.join("\n  ")
        );
    }
    let mut merged: TrainArgs = serde_json::from_value(Value::Object(mine))
        .with_context(|| format!("{}: unexpected flag values", source.display()))?;
    merged.explicit = args.explicit.clone();
    Ok(merged)
}

fn target_set(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = match v {
        Value::String(s) if s == "all-linear" => {
            ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
                .iter()
                .map(|s| s.to_string())
                .collect()
        }
        Value::String(s) => s
            .split(',')
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect(),
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str())
            .map(String::from)
            .collect(),
        _ => Vec::new(),
    };
    out.sort();
    out.dedup();
    out
}

/// With `--init-adapter`: explicit LoRA flags against the adapter's `adapter_config.json`.
pub fn check_init_adapter(args: &TrainArgs, adapter_dir: &Path) -> Result<()> {
    let path = adapter_dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("--init-adapter: cannot read {}", path.display()))?;
    let cfg: Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    let mine = as_map(args)?;
    let mut conflicts = Vec::new();
    for (id, key) in [
        ("lora_r", "r"),
        ("lora_alpha", "lora_alpha"),
        ("lora_dropout", "lora_dropout"),
        ("use_rslora", "use_rslora"),
        ("target_modules", "target_modules"),
    ] {
        if !args.explicit.contains(id) {
            continue;
        }
        let (Some(ours), Some(theirs)) = (mine.get(id), cfg.get(key)) else {
            continue;
        };
        let differs = if id == "target_modules" {
            target_set(ours) != target_set(theirs)
        } else {
            !same(ours, theirs)
        };
        if differs {
            conflicts.push(format!(
                "{} is {} here but {key} = {} in the adapter",
                flag(id),
                show(ours),
                show(theirs)
            ));
        }
    }
    if !conflicts.is_empty() {
        bail!(
            "the flags contradict --init-adapter {}:\n  {}\nthe adapter's own values are the \
             ones trained; leave these flags out",
            adapter_dir.display(),
            conflicts.join("\n  ")
        );
    }
    Ok(())
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Resolves the flags of this invocation against what it resumes or starts from; the
/// result is what the run uses and what goes into `training_args.json`.
pub fn resolve(args: &TrainArgs) -> Result<TrainArgs> {
    if let Some(init) = &args.init_adapter {
        if same_dir(init, &args.output_dir) {
            bail!(
                "--init-adapter {} is the --output-dir: training would overwrite its own input \
                 adapter; choose another --output-dir",
                init.display()
            );
        }
        if resume_dir(args).is_none() {
            check_init_adapter(args, init)?;
        }
    }
    let Some(dir) = resume_dir(args) else {
        return Ok(args.clone());
    };
    let path = dir.join(TRAINING_ARGS_FILE);
    if !path.is_file() {
        eprintln!(
            "warning: {} has no {TRAINING_ARGS_FILE} (written by an older version): the flags \
             are not checked against it",
            dir.display()
        );
        return Ok(args.clone());
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let saved: Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    merge_saved(args, &saved, &path)
}

/// Writes the resolved flags as `output_dir/training_args.json` (each checkpoint copies it).
pub fn write(args: &TrainArgs) -> Result<()> {
    let path = args.output_dir.join(TRAINING_ARGS_FILE);
    let tmp = args.output_dir.join(format!(".{TRAINING_ARGS_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_string_pretty(args)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_contradictions_fail_naming_both_values_and_defaults_are_adopted() {
        let mut saved = TrainArgs::defaults();
        saved.learning_rate = 1e-3;
        saved.lora_r = 16;
        saved.per_device_train_batch_size = 4;
        saved.model = Some("/models/falcon".into());
        let saved = serde_json::to_value(&saved).unwrap();

        // Nothing explicit: the checkpoint's values are taken.
        let args = TrainArgs::defaults();
        let m = merge_saved(&args, &saved, Path::new("t.json")).unwrap();
        assert_eq!(
            (m.learning_rate, m.lora_r, m.per_device_train_batch_size),
            (1e-3, 16, 4)
        );
        assert_eq!(m.model.as_deref(), Some(Path::new("/models/falcon")));

        // Explicit and different: one line per flag with both values.
        let mut args = TrainArgs::defaults();
        args.learning_rate = 5e-4;
        args.lora_r = 8;
        args.per_device_train_batch_size = 4;
        args.output_dir = "elsewhere".into();
        args.explicit = [
            "learning_rate",
            "lora_r",
            "per_device_train_batch_size",
            "output_dir",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let e = merge_saved(&args, &saved, Path::new("t.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--learning-rate is 0.0005 here but 0.001"),
            "{e}"
        );
        assert!(e.contains("--lora-r is 8 here but 16"), "{e}");
        assert!(
            !e.contains("batch-size") && !e.contains("--output-dir is"),
            "{e}"
        );
    }
}
