//! Activation checkpointing: keep a segment's inputs, recompute the segment in backward.

use super::{backward_from, grad_enabled, record_node, GradModeGuard, GradStore, Var, NEXT_ID};
use crate::{rng, Result, Tensor};
use std::cell::Cell;
use std::sync::atomic::Ordering;

thread_local! {
    static RECOMPUTING: Cell<bool> = const { Cell::new(false) };
}

/// Whether a checkpointed segment is being re-run for its backward on this thread. The
/// segment's output value is then never read (only the recorded graph is differentiated), so
/// a segment may skip computing values that no backward reads (see `ops::linear_unread`).
pub fn recomputing() -> bool {
    RECOMPUTING.with(|r| r.get())
}

/// Sets [`recomputing`] for a scope and restores the previous value when dropped.
struct RecomputeGuard(bool);

impl RecomputeGuard {
    fn set() -> Self {
        RecomputeGuard(RECOMPUTING.with(|r| r.replace(true)))
    }
}

impl Drop for RecomputeGuard {
    fn drop(&mut self) {
        RECOMPUTING.with(|r| r.set(self.0));
    }
}

/// Runs `segment(inputs)` without recording its intermediate ops, keeping only `inputs` (and the
/// dropout RNG state) for backward. In backward the segment is run again with recording on and
/// the RNG restored, so dropout masks are identical, and differentiated; the gradients of the
/// parameters it captures (leaves) go straight to the store.
///
/// The segment may capture leaves (parameters, constants); every non-leaf it reads must be
/// passed in `inputs` (capturing one is reported as an error in backward). Since a segment can
/// hold trainable parameters even when no input requires a gradient (the first decoder layer
/// reads frozen embeddings), the output is always recorded while gradients are enabled.
pub fn checkpoint<F>(inputs: &[&Var], segment: F) -> Result<Var>
where
    F: Fn(&[Var]) -> Result<Var> + 'static,
{
    let saved: Vec<Var> = inputs.iter().map(|v| (*v).clone()).collect();
    if !grad_enabled() {
        return segment(&saved);
    }
    let rng_at_forward = rng::state();
    let value = {
        let _g = GradModeGuard::set(false);
        segment(&saved)?.value()
    };
    let backward = move |grad: &Tensor,
                         _needs: &[bool],
                         store: &mut GradStore|
          -> Result<Vec<Option<Tensor>>> {
        let rng_now = rng::state();
        rng::set_state(rng_at_forward);
        let first_id = NEXT_ID.load(Ordering::Relaxed);
        let leaves: Vec<Var> = saved
            .iter()
            .map(|v| Var::leaf(v.value(), v.requires_grad()))
            .collect();
        let recomputed = {
            let _g = GradModeGuard::set(true);
            let _r = RecomputeGuard::set();
            segment(&leaves)
        };
        rng::set_state(rng_now);
        let recomputed = recomputed?;
        if !recomputed.requires_grad() {
            return Ok(vec![None; leaves.len()]);
        }
        let mut inner = GradStore::default();
        backward_from(&recomputed, grad.clone(), &mut inner, first_id)?;
        let input_grads = leaves.iter().map(|leaf| inner.remove(leaf)).collect();
        store.merge(inner)?;
        Ok(input_grads)
    };
    Ok(record_node("checkpoint", value, inputs, true, backward))
}
