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
}

impl MetricsLog {
    /// Opens `dir/metrics.jsonl` (appending when resuming, else truncating).
    pub fn open(dir: &Path, append: bool) -> Result<Self> {
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
        })
    }

    pub fn write(&mut self, e: &LogEntry) -> Result<()> {
        writeln!(self.file, "{}", serde_json::to_string(e)?)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// Redraws the loss curve (train and eval) from the log history.
    pub fn plot(&self, history: &[LogEntry]) -> Result<()> {
        plot_losses(&self.png, history)
    }
}

/// Draws train loss and eval loss against the step into a PNG.
pub fn plot_losses(path: &Path, history: &[LogEntry]) -> Result<()> {
    use plotters::prelude::*;
    let train: Vec<(f64, f64)> = history
        .iter()
        .filter_map(|e| e.loss.map(|l| (e.step as f64, l)))
        .collect();
    let eval: Vec<(f64, f64)> = history
        .iter()
        .filter_map(|e| e.eval_loss.map(|l| (e.step as f64, l)))
        .collect();
    if train.is_empty() && eval.is_empty() {
        return Ok(());
    }
    let all = train.iter().chain(&eval);
    let max_x = all.clone().map(|p| p.0).fold(1.0, f64::max);
    let (lo, hi) = all
        .map(|p| p.1)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
            (a.min(y), b.max(y))
        });
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(15)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..max_x, (lo - pad)..(hi + pad))?;
        // Built without a font engine (no system fonts are guaranteed): grid lines only; train
        // loss is blue, eval loss red with dots, the x axis is the optimizer step.
        chart
            .configure_mesh()
            .disable_x_axis()
            .disable_y_axis()
            .draw()?;
        if !train.is_empty() {
            chart.draw_series(LineSeries::new(train.clone(), &BLUE))?;
        }
        if !eval.is_empty() {
            chart.draw_series(LineSeries::new(eval.clone(), &RED))?;
            chart.draw_series(eval.iter().map(|&p| Circle::new(p, 3, RED.filled())))?;
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("cannot draw {}: {e}", path.display()))
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
    if let Some(l) = e.eval_loss {
        s += &format!("  eval_loss {l:.4}");
    }
    if let Some(a) = e.eval_accuracy {
        s += &format!("  eval_accuracy {a:.3}");
    }
    s
}
