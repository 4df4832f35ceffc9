//! Global-norm gradient clipping, as `torch.nn.utils.clip_grad_norm_` (norm_type 2).

use crate::ops::elementwise::scale_tensor;
use crate::{GradStore, Result, Var};

/// `‖g‖₂` over all gradients of `params`, accumulated in f64 in parameter order.
pub fn global_grad_norm(grads: &GradStore, params: &[Var]) -> Result<f64> {
    let mut sq = 0.0f64;
    for p in params {
        if let Some(g) = grads.get(p) {
            sq += g.to_f64_vec()?.iter().map(|x| x * x).sum::<f64>();
        }
    }
    Ok(sq.sqrt())
}

/// Scales all gradients by `min(1, max_norm/(norm + 1e-6))` and returns the pre-clip norm.
/// `max_norm <= 0` disables clipping (the norm is still returned).
pub fn clip_grad_norm(grads: &mut GradStore, params: &[Var], max_norm: f64) -> Result<f64> {
    let norm = global_grad_norm(grads, params)?;
    if max_norm > 0.0 {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for p in params {
                if let Some(g) = grads.remove(p) {
                    grads.insert(p, scale_tensor(&g, coef)?);
                }
            }
        }
    }
    Ok(norm)
}
