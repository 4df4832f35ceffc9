//! Training checkpoints: `checkpoint-{step}/` with the PEFT adapter, optimizer moments,
//! scheduler, RNG and data position, and an HF-like `trainer_state.json`.
//!
//! A checkpoint is written into a hidden temporary directory and renamed into place, so a
//! crash or a full disk never leaves a half-written `checkpoint-N`. Rotation keeps the newest
//! `save_total_limit` checkpoints (by step number).

use anyhow::{bail, Context, Result};
use data_finqa::SamplerState;
use engine::optim::{AdamW, AdamWState, LrSchedule};
use engine::rng::RngState;
use engine::Tensor;
use model_falcon::checkpoint::{write_safetensors_file, StDType, TensorSpec};
use model_falcon::peft::{save_adapter, LoraConfig};
use model_falcon::{lora_weights, FalconModel};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "trainer_state.json";
pub const RNG_FILE: &str = "rng_state.json";
pub const SCHEDULER_FILE: &str = "scheduler.json";
/// The run's resolved flags; kept in the output directory and copied into each checkpoint.
pub const TRAINING_ARGS_FILE: &str = "training_args.json";

/// One entry of `log_history`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LogEntry {
    pub step: u64,
    pub epoch: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub grad_norm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub learning_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub eval_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tokens_per_second: Option<f64>,
}

impl LogEntry {
    /// An evaluation record.
    pub fn eval(step: u64, epoch: f64, eval_loss: f64) -> Self {
        LogEntry {
            step,
            epoch,
            loss: None,
            grad_norm: None,
            learning_rate: None,
            eval_loss: Some(eval_loss),
            tokens_per_second: None,
        }
    }
}

/// `trainer_state.json` (HF's fields plus what an exact resume needs).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    pub global_step: u64,
    pub epoch: f64,
    pub max_steps: u64,
    pub logging_steps: u64,
    pub eval_steps: u64,
    pub save_steps: u64,
    pub train_batch_size: usize,
    pub num_train_epochs: f64,
    pub num_input_tokens_seen: u64,
    pub total_flos: f64,
    pub log_history: Vec<LogEntry>,
    pub best_metric: Option<f64>,
    pub best_global_step: Option<u64>,
    pub best_model_checkpoint: Option<String>,
    pub is_local_process_zero: bool,
    pub is_world_process_zero: bool,
    /// Sum of step losses since the last log, and how many steps it holds.
    pub loss_since_log: f64,
    pub steps_since_log: u64,
    /// Sum of all step losses (for the final train_loss).
    pub total_loss: f64,
    /// Steps whose update was skipped because the loss or gradient norm was not finite: the
    /// optimizer's step count is `global_step - skipped_updates`.
    #[serde(default)]
    pub skipped_updates: u64,
}

/// RNG and data position.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RngFile {
    pub dropout: RngState,
    pub sampler: SamplerState,
}

/// Everything restored on resume.
pub struct Restored {
    pub state: TrainerState,
    pub rng: RngFile,
    pub schedule: LrSchedule,
}

fn tmp_name(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    dir.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

fn write_json(path: &Path, v: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(v)?;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Writes the full training state into `dir` (atomically: temp dir, then rename). The
/// output directory's `training_args.json` (written by `trainer train` before the loop) is
/// copied in, and `manifest.json` with the SHA-256 of every file is written last.
#[allow(clippy::too_many_arguments)]
pub fn save_checkpoint(
    dir: &Path,
    model: &FalconModel,
    lora: &LoraConfig,
    opt: &AdamW,
    names: &[String],
    schedule: &LrSchedule,
    state: &TrainerState,
    rng: &RngFile,
) -> Result<()> {
    let tmp = tmp_name(dir);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("cannot remove stale {}", tmp.display()))?;
    }
    let result = (|| -> Result<()> {
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        save_adapter(&tmp, lora, &lora_weights(model)?)?;
        save_optimizer(&tmp.join(OPTIMIZER_FILE), opt, names)?;
        write_json(&tmp.join(SCHEDULER_FILE), schedule)?;
        write_json(&tmp.join(RNG_FILE), rng)?;
        write_json(&tmp.join(STATE_FILE), state)?;
        if let Some(args) = dir.parent().map(|p| p.join(TRAINING_ARGS_FILE)) {
            if args.is_file() {
                std::fs::copy(&args, tmp.join(TRAINING_ARGS_FILE))
                    .with_context(|| format!("cannot copy {}", args.display()))?;
            }
        }
        crate::manifest::write(&tmp)?;
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("cannot replace {}", dir.display()))?;
        }
        std::fs::rename(&tmp, dir)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), dir.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn save_optimizer(path: &Path, opt: &AdamW, names: &[String]) -> Result<()> {
    let mut specs = Vec::new();
    let mut data: Vec<Vec<u8>> = Vec::new();
    let mut steps = BTreeMap::new();
    for (name, st) in names.iter().zip(opt.state()) {
        if let Some(s) = st {
            for (suffix, t) in [("exp_avg", &s.exp_avg), ("exp_avg_sq", &s.exp_avg_sq)] {
                specs.push(TensorSpec::new(
                    format!("{name}.{suffix}"),
                    StDType::F32,
                    t.dims().to_vec(),
                ));
                data.push(bytemuck::cast_slice::<f32, u8>(t.as_slice::<f32>()?).to_vec());
            }
            steps.insert(name.clone(), s.step.to_string());
        }
    }
    let mut i = 0;
    write_safetensors_file(path, &specs, &steps, &mut |_| {
        i += 1;
        Ok(data[i - 1].clone())
    })?;
    Ok(())
}

/// Restores optimizer moments saved by [`save_checkpoint`] for parameters `names`.
pub fn load_optimizer(path: &Path, opt: &mut AdamW, names: &[String]) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("{}: invalid safetensors", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}: invalid safetensors", path.display()))?;
    let steps = meta.metadata().clone().unwrap_or_default();
    let mut out = Vec::with_capacity(names.len());
    for (name, p) in names.iter().zip(opt.params()) {
        let Some(step) = steps.get(name) else {
            out.push(None);
            continue;
        };
        let step: u64 = step
            .parse()
            .with_context(|| format!("{}: bad step for {name}", path.display()))?;
        let load = |suffix: &str| -> Result<Tensor> {
            let key = format!("{name}.{suffix}");
            let v = st
                .tensor(&key)
                .with_context(|| format!("{}: missing tensor {key}", path.display()))?;
            if v.shape() != p.value().dims() {
                bail!(
                    "{}: tensor {key} has shape {:?}, the parameter has {:?}",
                    path.display(),
                    v.shape(),
                    p.value().dims()
                );
            }
            Ok(Tensor::from_vec(
                bytemuck::pod_collect_to_vec::<u8, f32>(v.data()),
                v.shape().to_vec(),
            )?)
        };
        out.push(Some(AdamWState {
            step,
            exp_avg: load("exp_avg")?,
            exp_avg_sq: load("exp_avg_sq")?,
        }));
    }
    opt.set_state(out)?;
    Ok(())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: unexpected content", path.display()))
}

/// Reads the non-tensor parts of a checkpoint after [`verify_checkpoint`]; when the
/// checkpoint is not valid, the error names the problem and offers the newest older valid
/// checkpoint of the same output directory.
pub fn load_checkpoint_meta(dir: &Path) -> Result<Restored> {
    match verify_checkpoint(dir) {
        Ok(r) => Ok(r),
        Err(e) => {
            let older = dir.parent().and_then(|out| newest_valid_before(out, dir));
            match older {
                Some(o) => Err(e.context(format!(
                    "{} cannot be resumed; the newest valid older checkpoint is {}: resume \
                     with --resume-from {}",
                    dir.display(),
                    o.display(),
                    o.display()
                ))),
                None => Err(e.context(format!(
                    "{} cannot be resumed and there is no valid older checkpoint",
                    dir.display()
                ))),
            }
        }
    }
}

/// Checks a checkpoint before it is trusted: the manifest's sizes and SHA-256 (a checkpoint
/// without a manifest is accepted with a warning), then that `global_step` agrees with the
/// folder name, the scheduler's length and the optimizer's step count.
pub fn verify_checkpoint(dir: &Path) -> Result<Restored> {
    if !dir.join(STATE_FILE).is_file() {
        bail!(
            "{} is not a training checkpoint (no {STATE_FILE})",
            dir.display()
        );
    }
    if crate::manifest::verify(dir)? == crate::manifest::Verified::NoManifest {
        eprintln!(
            "warning: {} has no {} (written by an older version): its files are not verified",
            dir.display(),
            crate::manifest::MANIFEST_FILE
        );
    }
    let r = Restored {
        state: read_json(&dir.join(STATE_FILE))?,
        rng: read_json(&dir.join(RNG_FILE))?,
        schedule: read_json(&dir.join(SCHEDULER_FILE))?,
    };
    check_consistency(dir, &r)?;
    Ok(r)
}

fn check_consistency(dir: &Path, r: &Restored) -> Result<()> {
    let st = &r.state;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(n) = name
        .strip_prefix("checkpoint-")
        .and_then(|s| s.parse::<u64>().ok())
    {
        if n != st.global_step {
            bail!(
                "{}: {STATE_FILE} says global_step {}, the folder name says {n}",
                dir.display(),
                st.global_step
            );
        }
    }
    if st.global_step > st.max_steps || st.skipped_updates > st.global_step {
        bail!(
            "{}: {STATE_FILE} is inconsistent (global_step {}, max_steps {}, skipped_updates {})",
            dir.display(),
            st.global_step,
            st.max_steps,
            st.skipped_updates
        );
    }
    if r.schedule.total_steps != st.max_steps {
        bail!(
            "{}: {SCHEDULER_FILE} is planned for {} steps, {STATE_FILE} for {}",
            dir.display(),
            r.schedule.total_steps,
            st.max_steps
        );
    }
    let applied = st.global_step - st.skipped_updates;
    for (param, step) in optimizer_steps(&dir.join(OPTIMIZER_FILE))? {
        if step != applied {
            bail!(
                "{}: {OPTIMIZER_FILE} has taken {step} steps for {param}, {STATE_FILE} says {applied} \
                 updates were applied (global_step {} - skipped_updates {})",
                dir.display(),
                st.global_step,
                st.skipped_updates
            );
        }
    }
    Ok(())
}

/// The step count of each parameter's AdamW state, from the optimizer file's header.
fn optimizer_steps(path: &Path) -> Result<Vec<(String, u64)>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("{}: invalid safetensors", path.display()))?;
    meta.metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            let step = v
                .parse()
                .with_context(|| format!("{}: bad step `{v}` for {k}", path.display()))?;
            Ok((k, step))
        })
        .collect()
}

/// The newest checkpoint of `output_dir` older than `dir` that passes
/// [`verify_checkpoint`].
pub fn newest_valid_before(output_dir: &Path, dir: &Path) -> Option<PathBuf> {
    let this = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("checkpoint-"))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    list_checkpoints(output_dir)
        .into_iter()
        .rev()
        .filter(|(n, _)| *n < this)
        .find(|(_, p)| verify_checkpoint(p).is_ok())
        .map(|(_, p)| p)
}

/// `checkpoint-N` folders of `output_dir`, sorted by N.
pub fn list_checkpoints(output_dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(output_dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(n) = name
                .strip_prefix("checkpoint-")
                .and_then(|s| s.parse::<u64>().ok())
            {
                if e.path().join(STATE_FILE).is_file() {
                    out.push((n, e.path()));
                }
            }
        }
    }
    out.sort();
    out
}

/// Deletes the oldest checkpoints until at most `limit` remain (0 keeps all).
pub fn rotate(output_dir: &Path, limit: usize) -> Result<Vec<PathBuf>> {
    let all = list_checkpoints(output_dir);
    let mut removed = Vec::new();
    if limit > 0 && all.len() > limit {
        for (_, p) in &all[..all.len() - limit] {
            std::fs::remove_dir_all(p)
                .with_context(|| format!("cannot remove old checkpoint {}", p.display()))?;
            removed.push(p.clone());
        }
    }
    Ok(removed)
}
