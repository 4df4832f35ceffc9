//! Learning-rate schedules with HF Trainer's step semantics (`transformers.optimization`).
//!
//! The multiplier λ(s) is evaluated at optimizer step s = 0, 1, ..., so update number s+1
//! uses `lr·λ(s)`; with warmup the first update uses lr = 0. W = warmup steps, T = total steps:
//! - linear: s < W → s/max(1,W); else max(0, (T−s)/max(1, T−W))
//! - cosine: s < W → s/max(1,W); else max(0, ½(1 + cos(π·progress))), progress = (s−W)/max(1,T−W)
//! - constant: 1 (ignores warmup, as HF does)
//! - constant_with_warmup: s < W → s/max(1,W); else 1

use serde::{Deserialize, Serialize};
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerKind {
    Linear,
    Cosine,
    Constant,
    ConstantWithWarmup,
}

impl FromStr for SchedulerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "linear" => Ok(SchedulerKind::Linear),
            "cosine" => Ok(SchedulerKind::Cosine),
            "constant" => Ok(SchedulerKind::Constant),
            "constant_with_warmup" => Ok(SchedulerKind::ConstantWithWarmup),
            other => Err(format!("unknown lr scheduler type `{other}` (expected linear, cosine, constant or constant_with_warmup)")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub kind: SchedulerKind,
    pub base_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl LrSchedule {
    /// Warmup as HF resolves it: `warmup_steps` if > 0, else `ceil(total · warmup_ratio)`.
    pub fn new(
        kind: SchedulerKind,
        base_lr: f64,
        warmup_steps: u64,
        warmup_ratio: f64,
        total_steps: u64,
    ) -> Self {
        let warmup = if warmup_steps > 0 {
            warmup_steps
        } else {
            (total_steps as f64 * warmup_ratio).ceil() as u64
        };
        LrSchedule {
            kind,
            base_lr,
            warmup_steps: warmup,
            total_steps,
        }
    }

    /// λ(s).
    pub fn multiplier(&self, step: u64) -> f64 {
        let (s, w, t) = (
            step as f64,
            self.warmup_steps as f64,
            self.total_steps as f64,
        );
        let warm = || s / w.max(1.0);
        match self.kind {
            SchedulerKind::Constant => 1.0,
            SchedulerKind::ConstantWithWarmup => {
                if s < w {
                    warm()
                } else {
                    1.0
                }
            }
            SchedulerKind::Linear => {
                if s < w {
                    warm()
                } else {
                    ((t - s) / (t - w).max(1.0)).max(0.0)
                }
            }
            SchedulerKind::Cosine => {
                if s < w {
                    warm()
                } else {
                    let progress = (s - w) / (t - w).max(1.0);
                    (0.5 * (1.0 + (std::f64::consts::PI * 2.0 * 0.5 * progress).cos())).max(0.0)
                }
            }
        }
    }

    /// The learning rate of update number `step + 1`.
    pub fn lr(&self, step: u64) -> f64 {
        self.base_lr * self.multiplier(step)
    }
}
