//! The best checkpoint and early stopping, with Hugging Face Trainer semantics:
//! - `--metric-for-best-model` names an evaluation metric (`loss`, `accuracy`, with or
//!   without the `eval_` prefix); with `--load-best-model-at-end` it defaults to `loss`;
//! - `--greater-is-better` defaults to false for metrics ending in `loss`, true otherwise;
//! - a new best is strictly better than the best so far (`best_metric`, `best_global_step`);
//!   `best_model_checkpoint` names the checkpoint saved at that step (so `--save-steps` must be
//!   a multiple of `--eval-steps` with `--load-best-model-at-end`, as HF requires);
//! - early stopping (`EarlyStoppingCallback`) counts evaluations that do not improve on the
//!   best by more than `--early-stopping-threshold` and stops the run after
//!   `--early-stopping-patience` of them in a row; it needs `--load-best-model-at-end`;
//! - checkpoint rotation never deletes the best checkpoint.
//!
//! All of this lives in `trainer_state.json`, so a resumed run keeps its best model and its
//! patience count.

use crate::args::TrainArgs;
use crate::state::TrainerState;
use anyhow::{bail, Result};
use std::path::Path;

/// The metrics one evaluation produced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalMetrics {
    pub eval_loss: f64,
    pub eval_accuracy: Option<f64>,
}

/// How the best model is chosen and when the run stops early.
#[derive(Clone, Debug, PartialEq)]
pub struct BestModel {
    /// `eval_loss` or `eval_accuracy`.
    pub metric: String,
    pub greater_is_better: bool,
    pub load_at_end: bool,
    pub patience: Option<u64>,
    pub threshold: f64,
}

/// What an evaluation did to the best-model state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observed {
    pub new_best: bool,
    /// Early stopping's patience ran out: stop after this step.
    pub stop: bool,
}

impl BestModel {
    /// The flags' choice, or None when no metric is tracked. Contradictory flags are errors.
    pub fn from_args(a: &TrainArgs) -> Result<Option<BestModel>> {
        if a.predict_with_generate && a.generation_max_new_tokens == 0 {
            bail!("--generation-max-new-tokens must be at least 1 with --predict-with-generate");
        }
        let metric = match (&a.metric_for_best_model, a.load_best_model_at_end) {
            (Some(m), _) => m.clone(),
            (None, true) => "loss".to_string(),
            (None, false) => {
                if a.early_stopping_patience.is_some() {
                    bail!(
                        "--early-stopping-patience needs --load-best-model-at-end (and a \
                         --metric-for-best-model, loss by default), as Hugging Face's \
                         EarlyStoppingCallback does"
                    );
                }
                if a.greater_is_better.is_some() {
                    bail!("--greater-is-better needs --metric-for-best-model");
                }
                return Ok(None);
            }
        };
        let metric = if metric.starts_with("eval_") {
            metric
        } else {
            format!("eval_{metric}")
        };
        match metric.as_str() {
            "eval_loss" => {}
            "eval_accuracy" if a.predict_with_generate => {}
            "eval_accuracy" => bail!(
                "--metric-for-best-model accuracy needs --predict-with-generate (accuracy is \
                 measured by generating answers at each evaluation)"
            ),
            other => bail!(
                "--metric-for-best-model {other}: unknown metric; evaluations report loss \
                 (eval_loss) and, with --predict-with-generate, accuracy (eval_accuracy)"
            ),
        }
        if a.load_best_model_at_end && !a.save_steps.is_multiple_of(a.eval_steps) {
            bail!(
                "--load-best-model-at-end needs --save-steps ({}) to be a multiple of \
                 --eval-steps ({}), so that every best evaluation has a checkpoint",
                a.save_steps,
                a.eval_steps
            );
        }
        if a.early_stopping_patience.is_some() && !a.load_best_model_at_end {
            bail!(
                "--early-stopping-patience needs --load-best-model-at-end, as Hugging Face's \
                 EarlyStoppingCallback does"
            );
        }
        if a.early_stopping_patience == Some(0) {
            bail!("--early-stopping-patience must be at least 1");
        }
        if !(a.early_stopping_threshold.is_finite() && a.early_stopping_threshold >= 0.0) {
            bail!(
                "--early-stopping-threshold must be a finite number >= 0, got {}",
                a.early_stopping_threshold
            );
        }
        let greater_is_better = a.greater_is_better.unwrap_or(!metric.ends_with("loss"));
        Ok(Some(BestModel {
            metric,
            greater_is_better,
            load_at_end: a.load_best_model_at_end,
            patience: a.early_stopping_patience,
            threshold: a.early_stopping_threshold,
        }))
    }

    /// The tracked metric's value in `m`.
    pub fn value(&self, m: &EvalMetrics) -> Option<f64> {
        match self.metric.as_str() {
            "eval_loss" => Some(m.eval_loss),
            _ => m.eval_accuracy,
        }
    }

    fn better(&self, value: f64, than: f64) -> bool {
        if self.greater_is_better {
            value > than
        } else {
            value < than
        }
    }

    /// Records an evaluation at `st.global_step`: the patience count against the best so far
    /// (before it is updated, as HF's callback runs before the Trainer's update), then the
    /// new best. A NaN metric is never a new best and counts against patience.
    pub fn observe(&self, st: &mut TrainerState, m: &EvalMetrics) -> Observed {
        let Some(value) = self.value(m) else {
            return Observed {
                new_best: false,
                stop: false,
            };
        };
        let improved_enough = match st.best_metric {
            None => !value.is_nan(),
            Some(best) => self.better(value, best) && (value - best).abs() > self.threshold,
        };
        st.early_stopping_patience_counter = if improved_enough {
            0
        } else {
            st.early_stopping_patience_counter + 1
        };
        let new_best = !value.is_nan() && st.best_metric.is_none_or(|b| self.better(value, b));
        if new_best {
            st.best_metric = Some(value);
            st.best_global_step = Some(st.global_step);
        }
        let stop = self
            .patience
            .is_some_and(|p| st.early_stopping_patience_counter >= p);
        Observed { new_best, stop }
    }

    /// Before saving `checkpoint-{step}` in `dir`: when this step holds the best metric, the
    /// state names this checkpoint as the best.
    pub fn on_save(&self, st: &mut TrainerState, dir: &Path) {
        if st.best_global_step == Some(st.global_step) {
            st.best_model_checkpoint = Some(dir.display().to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> TrainArgs {
        let mut a = TrainArgs::defaults();
        a.eval_steps = 10;
        a.save_steps = 20;
        a
    }

    #[test]
    fn defaults_follow_hugging_face() {
        let mut a = args();
        assert_eq!(BestModel::from_args(&a).unwrap(), None);
        a.load_best_model_at_end = true;
        let b = BestModel::from_args(&a).unwrap().unwrap();
        assert_eq!(
            (b.metric.as_str(), b.greater_is_better),
            ("eval_loss", false)
        );
        a.metric_for_best_model = Some("accuracy".into());
        let e = BestModel::from_args(&a).unwrap_err().to_string();
        assert!(e.contains("--predict-with-generate"), "{e}");
        a.predict_with_generate = true;
        let b = BestModel::from_args(&a).unwrap().unwrap();
        assert_eq!(
            (b.metric.as_str(), b.greater_is_better),
            ("eval_accuracy", true)
        );
        a.greater_is_better = Some(false);
        assert!(!BestModel::from_args(&a).unwrap().unwrap().greater_is_better);
        a.metric_for_best_model = Some("eval_bleu".into());
        let e = BestModel::from_args(&a).unwrap_err().to_string();
        assert!(
            e.contains("eval_bleu") && e.contains("eval_accuracy"),
            "{e}"
        );
        a.metric_for_best_model = None;
        a.save_steps = 25;
        let e = BestModel::from_args(&a).unwrap_err().to_string();
        assert!(e.contains("multiple of --eval-steps"), "{e}");
        let mut a = args();
        a.early_stopping_patience = Some(2);
        let e = BestModel::from_args(&a).unwrap_err().to_string();
        assert!(e.contains("--load-best-model-at-end"), "{e}");
        let mut a = args();
        a.predict_with_generate = true;
        a.generation_max_new_tokens = 0;
        let e = BestModel::from_args(&a).unwrap_err().to_string();
        assert!(e.contains("--generation-max-new-tokens"), "{e}");
    }

    #[test]
    fn best_and_patience_track_strict_improvements() {
        let mut a = args();
        a.load_best_model_at_end = true;
        a.early_stopping_patience = Some(2);
        a.early_stopping_threshold = 0.05;
        let b = BestModel::from_args(&a).unwrap().unwrap();
        let mut st = crate::train::fresh_state(&a, 100);
        let eval = |st: &mut TrainerState, step: u64, loss: f64| {
            st.global_step = step;
            b.observe(
                st,
                &EvalMetrics {
                    eval_loss: loss,
                    eval_accuracy: None,
                },
            )
        };
        assert_eq!(
            eval(&mut st, 10, 2.0),
            Observed {
                new_best: true,
                stop: false
            }
        );
        // Better, but by less than the threshold: a new best that does not reset patience.
        assert_eq!(
            eval(&mut st, 20, 1.97),
            Observed {
                new_best: true,
                stop: false
            }
        );
        assert_eq!(st.early_stopping_patience_counter, 1);
        assert_eq!(
            eval(&mut st, 30, 1.5),
            Observed {
                new_best: true,
                stop: false
            }
        );
        assert_eq!(st.early_stopping_patience_counter, 0);
        assert_eq!(
            eval(&mut st, 40, 1.5),
            Observed {
                new_best: false,
                stop: false
            }
        );
        assert_eq!(
            eval(&mut st, 50, f64::NAN),
            Observed {
                new_best: false,
                stop: true
            }
        );
        assert_eq!((st.best_metric, st.best_global_step), (Some(1.5), Some(30)));
        st.global_step = 30;
        b.on_save(&mut st, Path::new("out/checkpoint-30"));
        assert_eq!(
            st.best_model_checkpoint.as_deref(),
            Some("out/checkpoint-30")
        );
        st.global_step = 40;
        b.on_save(&mut st, Path::new("out/checkpoint-40"));
        assert_eq!(
            st.best_model_checkpoint.as_deref(),
            Some("out/checkpoint-30")
        );
    }
}
