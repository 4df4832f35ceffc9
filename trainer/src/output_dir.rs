//! An output directory holds one run. A new run (not a resume) into a directory holding
//! checkpoints of another run would mix the two: rotation would delete the other run's
//! checkpoints by step number, `--resume` would later pick whichever is newest, and the
//! final adapter could be either's. As Hugging Face's `--overwrite-output-dir`, such a
//! directory is refused unless the flag says to start over.

use crate::args::TrainArgs;
use crate::state::list_checkpoints;
use anyhow::{bail, Context, Result};

/// Files of a run's final adapter and its card, removed with its checkpoints on overwrite.
const RUN_FILES: &[&str] = &[
    "adapter_config.json",
    "adapter_model.safetensors",
    "README.md",
];

/// Refuses, or with `--overwrite-output-dir` clears, the checkpoints of another run in the
/// output directory when this invocation starts a new run.
pub fn prepare_new_run(args: &TrainArgs) -> Result<()> {
    if crate::resume_args::resume_dir(args).is_some() {
        return Ok(());
    }
    let checkpoints = list_checkpoints(&args.output_dir);
    if checkpoints.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = checkpoints
        .iter()
        .map(|(_, p)| {
            p.file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default()
        })
        .collect();
    if !args.overwrite_output_dir {
        bail!(
            "{} holds checkpoints of another run ({}): continue it with --resume (or \
             --resume auto), start over with --overwrite-output-dir (deletes them and its \
             adapter), or choose another --output-dir",
            args.output_dir.display(),
            names.join(", ")
        );
    }
    if let Some(init) = &args.init_adapter {
        let inside = |p: &std::path::Path| match (init.canonicalize(), p.canonicalize()) {
            (Ok(a), Ok(b)) => a.starts_with(b),
            _ => false,
        };
        if checkpoints.iter().any(|(_, p)| inside(p)) {
            bail!(
                "--init-adapter {} is a checkpoint that --overwrite-output-dir would delete;                  copy it elsewhere first",
                init.display()
            );
        }
    }
    for (_, p) in &checkpoints {
        std::fs::remove_dir_all(p)
            .with_context(|| format!("--overwrite-output-dir: cannot remove {}", p.display()))?;
    }
    for f in RUN_FILES {
        let p = args.output_dir.join(f);
        if p.is_file() {
            std::fs::remove_file(&p).with_context(|| {
                format!("--overwrite-output-dir: cannot remove {}", p.display())
            })?;
        }
    }
    println!(
        "--overwrite-output-dir: removed {} of the previous run in {}",
        names.join(", "),
        args.output_dir.display()
    );
    Ok(())
}
