//! Run output for people and tools: a progress bar with loss, lr, grad norm, tokens/s and
//! memory; metrics as JSON lines (`metrics.jsonl`); a loss-curve PNG (`loss.png`).

use crate::state::LogEntry;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct MetricsLog {
    file: File,
    path: PathBuf,
    png: PathBuf,
    tensorboard: Option<crate::tensorboard::EventWriter>,
}

impl MetricsLog {
    /// Opens `dir/metrics.jsonl` (appending when resuming, else truncating) and, with
    /// `tensorboard_dir`, a new TensorBoard event file there that gets every row too.
    pub fn open(dir: &Path, append: bool, tensorboard_dir: Option<&Path>) -> Result<Self> {
        let tensorboard = tensorboard_dir
            .map(crate::tensorboard::EventWriter::create)
            .transpose()?;
        let path = dir.join("metrics.jsonl");
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(MetricsLog {
            file,
            path,
            png: dir.join("loss.png"),
            tensorboard,
        })
    }

    /// The TensorBoard event file being written, if any.
    pub fn tensorboard_file(&self) -> Option<&Path> {
        self.tensorboard.as_ref().map(|t| t.path())
    }

    /// Appends a row to `metrics.jsonl` (and the TensorBoard file).
    pub fn write(&mut self, e: &LogEntry) -> Result<()> {
        writeln!(self.file, "{}", serde_json::to_string(e)?)
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        if let Some(tb) = &mut self.tensorboard {
            tb.write_row(&entry_fields(e)?)?;
        }
        Ok(())
    }

    /// Redraws the loss curve (train and eval) from the log history.
    pub fn plot(&self, history: &[LogEntry]) -> Result<()> {
        plot_losses(&self.png, history)
    }
}

/// Draws `loss.png` (see [`crate::plot`]) from the log history.
pub fn plot_losses(path: &Path, history: &[LogEntry]) -> Result<()> {
    let rows = history
        .iter()
        .map(entry_fields)
        .collect::<Result<Vec<_>>>()?;
    let run = path
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| format!(": {}", n.to_string_lossy()))
        .unwrap_or_default();
    crate::plot::plot_history(path, &rows, &format!("Training run{run}"))
}

/// A log entry as the JSON object written to `metrics.jsonl`, so that readers (the plot,
/// TensorBoard) see every scalar it has, whatever its name.
pub fn entry_fields(e: &LogEntry) -> Result<serde_json::Map<String, serde_json::Value>> {
    match serde_json::to_value(e)? {
        serde_json::Value::Object(m) => Ok(m),
        _ => anyhow::bail!("a log entry is not a JSON object"),
    }
}

/// The progress bar (or plain log lines when disabled / not a terminal).
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn new(total: u64, done: u64, disabled: bool) -> Self {
        let bar = (!disabled).then(|| {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps  {msg}  [{elapsed} < {eta}]",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            b.set_position(done);
            b
        });
        Progress { bar }
    }

    /// Advances the bar; `peak_bytes` is the peak memory of the device training runs on.
    pub fn step(&mut self, step: u64, loss: f64, lr: f64, grad_norm: f64, peak_bytes: usize) {
        if let Some(b) = &self.bar {
            b.set_position(step);
            let mem = peak_bytes as f64 / (1u64 << 20) as f64;
            b.set_message(format!(
                "loss {loss:.4}  lr {lr:.2e}  grad {grad_norm:.3}  peak {mem:.0} MiB"
            ));
        }
    }

    /// A log line: printed above the bar.
    pub fn log(&mut self, e: &LogEntry) {
        let line = format_entry(e);
        match &self.bar {
            Some(b) if !b.is_hidden() => b.println(line),
            _ => println!("{line}"),
        }
    }

    pub fn note(&mut self, s: &str) {
        match &self.bar {
            Some(b) if !b.is_hidden() => b.println(s),
            _ => println!("{s}"),
        }
    }

    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

pub fn format_entry(e: &LogEntry) -> String {
    let mut s = format!("step {:>5}  epoch {:.2}", e.step, e.epoch);
    if let Some(l) = e.loss {
        s += &format!("  loss {l:.4}");
    }
    if let Some(g) = e.grad_norm {
        s += &format!("  grad_norm {g:.4}");
    }
    if let Some(lr) = e.learning_rate {
        s += &format!("  lr {lr:.3e}");
    }
    if let Some(t) = e.tokens_per_second {
        s += &format!("  {t:.0} tok/s");
    }
    if let (Some(n), Some(t)) = (e.ranks, e.tokens_per_second_per_rank) {
        s += &format!(" ({n} ranks, {t:.0} tok/s per rank)");
    }
    if let Some(l) = e.eval_loss {
        s += &format!("  eval_loss {l:.4}");
    }
    if let Some(a) = e.eval_accuracy {
        s += &format!("  eval_accuracy {a:.3}");
    }
    s
}
