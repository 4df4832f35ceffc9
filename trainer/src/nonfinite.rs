//! What a step does when its loss or gradient norm is NaN or infinite.
//!
//! The decision is taken after the norm is known and before AdamW runs, so a non-finite
//! update never reaches the adapters, the optimizer moments or a checkpoint. With
//! `--on-nonfinite skip` the step is counted (the data window is consumed, the schedule moves
//! on) but nothing is applied, with a warning naming the cause; after
//! [`MAX_CONSECUTIVE_SKIPS`] skipped steps in a row the run stops, since it is no longer
//! training. With `--on-nonfinite stop` the first one is an error. Either way the checkpoint
//! written afterwards holds the last finite adapter.

use anyhow::{bail, Result};
use engine::optim::{clip_grad_norm, AdamW, AdamWConfig};
use engine::{GradStore, Var};
use model_falcon::CudaFalcon;

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

/// The first parameter (by name) whose gradient holds a NaN or infinity.
pub fn first_nonfinite_grad(grads: &GradStore, names: &[String], params: &[Var]) -> Option<String> {
    names.iter().zip(params).find_map(|(n, p)| {
        let g = grads.get(p)?;
        let v = g.to_f64_vec().ok()?;
        v.iter().any(|x| !x.is_finite()).then(|| n.clone())
    })
}

/// The CPU update: clip, decide, and run AdamW only when the step is applied. Returns the
/// pre-clip norm and what was done.
#[allow(clippy::too_many_arguments)]
pub fn cpu_update(
    guard: &mut Guard,
    step: u64,
    step_loss: f64,
    grads: &mut GradStore,
    params: &[Var],
    names: &[String],
    opt: &mut AdamW,
    lr: f64,
    max_grad_norm: f64,
) -> Result<(f64, StepAction)> {
    let norm = clip_grad_norm(grads, params, max_grad_norm)?;
    let action = guard.check_update(step, step_loss, norm, || {
        first_nonfinite_grad(grads, names, params)
    })?;
    if action == StepAction::Apply {
        opt.step(grads, lr)?;
    }
    Ok((norm, action))
}

/// The device update: [`CudaFalcon::optimizer_step`] applies nothing when the norm is not
/// finite; a non-finite loss discards the gradients without computing a norm.
pub fn cuda_update(
    guard: &mut Guard,
    step: u64,
    step_loss: f64,
    cuda: &mut CudaFalcon,
    lr: f64,
    config: &AdamWConfig,
    max_grad_norm: f64,
) -> Result<(f64, StepAction)> {
    let norm = if step_loss.is_finite() {
        cuda.optimizer_step(lr, config, max_grad_norm)?
    } else {
        cuda.zero_grads()?;
        f64::NAN
    };
    let action = guard.check_update(step, step_loss, norm, || None)?;
    Ok((norm, action))
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::optim::AdamWConfig;
    use engine::{Tensor, Var};

    fn param(v: Vec<f32>) -> Var {
        let n = v.len();
        Var::parameter(Tensor::from_vec(v, [n]).unwrap())
    }

    #[test]
    fn a_nan_gradient_changes_neither_the_parameters_nor_the_optimizer() {
        let good = param(vec![0.3, -1.2, 0.7]);
        let bad = param(vec![2.0, 0.5]);
        let params = vec![good.clone(), bad.clone()];
        let names = vec!["layer.lora_A".to_string(), "layer.lora_B".to_string()];
        let mut opt = AdamW::new(params.clone(), AdamWConfig::default()).unwrap();
        let mut grads = GradStore::default();
        grads.insert(
            &good,
            Tensor::from_vec(vec![0.1f32, 0.2, -0.3], [3]).unwrap(),
        );
        grads.insert(&bad, Tensor::from_vec(vec![f32::NAN, 1.0], [2]).unwrap());
        let mut guard = Guard::new("skip").unwrap();
        let (norm, action) = cpu_update(
            &mut guard, 1, 2.5, &mut grads, &params, &names, &mut opt, 1e-2, 1.0,
        )
        .unwrap();
        assert!(norm.is_nan());
        assert_eq!(action, StepAction::Skip);
        assert_eq!(good.value().to_f32_vec().unwrap(), vec![0.3, -1.2, 0.7]);
        assert_eq!(bad.value().to_f32_vec().unwrap(), vec![2.0, 0.5]);
        assert!(
            opt.state().iter().all(|s| s.is_none()),
            "moments were created"
        );

        let mut stop = Guard::new("stop").unwrap();
        let e = cpu_update(
            &mut stop, 7, 2.5, &mut grads, &params, &names, &mut opt, 1e-2, 1.0,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("step 7") && e.contains("layer.lora_B"), "{e}");
        assert_eq!(bad.value().to_f32_vec().unwrap(), vec![2.0, 0.5]);
    }

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
