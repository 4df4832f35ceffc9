//! What a step does when its loss or gradient norm is NaN or infinite.
//!
//! The decision is taken after the norm is known and before AdamW runs, so a non-finite
//! update never reaches the adapters, the optimizer moments or a checkpoint. With
//! `--on-nonfinite skip` the step is counted (the data window is consumed, the schedule moves
//! on) but nothing is applied, with a warning naming the cause; after
//! [`MAX_CONSECUTIVE_SKIPS`] skipped steps in a row the run stops, since it is no longer
//! training. With `--on-nonfinite stop` the first one is an error. Either way the checkpoint
//! written afterwards holds the last finite adapter: the backend's optimizer step
//! ([`model_falcon::Backend::optimizer_step`]) never applies a non-finite update.

use anyhow::{bail, Result};

/// Skipped steps in a row after which the run stops.
pub const MAX_CONSECUTIVE_SKIPS: u64 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Skip,
    Stop,
}

impl Policy {
    pub fn from_flag(s: &str) -> Result<Policy> {
        match s {
            "skip" => Ok(Policy::Skip),
            "stop" => Ok(Policy::Stop),
            o => bail!("--on-nonfinite `{o}`: expected skip or stop"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepAction {
    /// The update was (or may be) applied.
    Apply,
    /// Nothing was applied.
    Skip,
}

/// Counts skipped steps and applies the policy.
#[derive(Debug, Clone)]
pub struct Guard {
    policy: Policy,
    consecutive: u64,
}

impl Guard {
    pub fn new(flag: &str) -> Result<Guard> {
        Ok(Guard {
            policy: Policy::from_flag(flag)?,
            consecutive: 0,
        })
    }

    /// Decides step `step` (1-based) from its loss and pre-clip gradient norm. `culprit`
    /// names the first parameter whose gradient is not finite, where that is known.
    pub fn check_update(
        &mut self,
        step: u64,
        step_loss: f64,
        grad_norm: f64,
        culprit: impl FnOnce() -> Option<String>,
    ) -> Result<StepAction> {
        if step_loss.is_finite() && grad_norm.is_finite() {
            self.consecutive = 0;
            return Ok(StepAction::Apply);
        }
        let what = if !step_loss.is_finite() {
            format!("the loss is {step_loss}")
        } else {
            format!("the gradient norm is {grad_norm}")
        };
        let cause = match culprit() {
            Some(name) => format!("; first non-finite gradient: {name}"),
            None => String::new(),
        };
        let advice = "the base weights were checked finite at load, so lower --learning-rate \
                      or --max-grad-norm, or check the data";
        match self.policy {
            Policy::Stop => bail!(
                "step {step}: {what}{cause}; stopping (--on-nonfinite stop), nothing of this \
                 step was applied; {advice}"
            ),
            Policy::Skip => {
                self.consecutive += 1;
                if self.consecutive >= MAX_CONSECUTIVE_SKIPS {
                    bail!(
                        "step {step}: {what}{cause}; {} steps in a row had a non-finite update, \
                         stopping; {advice}",
                        self.consecutive
                    );
                }
                eprintln!(
                    "warning: step {step}: {what}{cause}; update skipped (adapter and \
                     optimizer unchanged)"
                );
                Ok(StepAction::Skip)
            }
        }
    }
}

/// The loss a skipped step contributes to the logged averages: the mean of the logging
/// window so far (as transformers' `logging_nan_inf_filter`), so one bad step does not turn
/// the logged and final losses into NaN.
pub fn loss_for_logging(step_loss: f64, loss_since_log: f64, steps_since_log: u64) -> f64 {
    if step_loss.is_finite() {
        step_loss
    } else if steps_since_log > 0 {
        loss_since_log / steps_since_log as f64
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finite_steps_apply_and_too_many_skips_in_a_row_stop() {
        let mut g = Guard::new("skip").unwrap();
        for step in 1..MAX_CONSECUTIVE_SKIPS {
            assert_eq!(
                g.check_update(step, f64::NAN, 1.0, || None).unwrap(),
                StepAction::Skip
            );
        }
        let e = g
            .check_update(MAX_CONSECUTIVE_SKIPS, 1.0, f64::INFINITY, || None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("in a row") && e.contains("inf"), "{e}");
        let mut g = Guard::new("skip").unwrap();
        g.check_update(1, f64::NAN, 1.0, || None).unwrap();
        assert_eq!(
            g.check_update(2, 1.0, 1.0, || None).unwrap(),
            StepAction::Apply
        );
        assert!(Guard::new("ignore").is_err());
    }

    #[test]
    fn a_skipped_loss_is_logged_as_the_window_mean() {
        assert_eq!(loss_for_logging(2.0, 10.0, 4), 2.0);
        assert_eq!(loss_for_logging(f64::NAN, 10.0, 4), 2.5);
        assert_eq!(loss_for_logging(f64::INFINITY, 0.0, 0), 0.0);
    }
}
