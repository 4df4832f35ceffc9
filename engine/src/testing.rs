//! Test support: seeded random tensors, float64 finite-difference gradient checks.
//! Public so the cross-crate tests and other crates' tests use the same tools.

use crate::ops::{mul, sum_all};
use crate::{rng, DType, Result, Shape, Tensor, Var};

/// A tensor of standard-normal values drawn from `(seed, 0..n)`, times `scale`.
pub fn randn(shape: impl Into<Shape>, dtype: DType, seed: u64, scale: f64) -> Tensor {
    let shape = shape.into();
    let v: Vec<f64> = (0..shape.elem_count() as u64)
        .map(|i| rng::normal_f64(seed, i) * scale)
        .collect();
    Tensor::from_vec(v, shape)
        .and_then(|t| t.to_dtype(dtype))
        .expect("shape matches by construction")
}

/// Uniform values in `[lo, hi)`.
pub fn rand_uniform(shape: impl Into<Shape>, dtype: DType, seed: u64, lo: f64, hi: f64) -> Tensor {
    let shape = shape.into();
    let v: Vec<f64> = (0..shape.elem_count() as u64)
        .map(|i| lo + (hi - lo) * rng::uniform_f64(seed, i))
        .collect();
    Tensor::from_vec(v, shape)
        .and_then(|t| t.to_dtype(dtype))
        .expect("shape matches by construction")
}

/// Result of a gradient check: the worst mismatch found.
#[derive(Debug)]
pub struct GradCheck {
    pub max_abs_err: f64,
    pub max_rel_err: f64,
    pub worst: String,
}

/// Compares the analytic gradient of `L = Σ w ∘ f(inputs)` (w a fixed random projection, so
/// every output element matters) with central differences, for every element of every input
/// whose `check[i]` is true. Inputs are f64; `eps` is the step.
///
/// Returns an error message when some element differs by more than `atol + rtol·|fd|`.
pub fn check_gradients(
    f: impl Fn(&[Var]) -> Result<Var>,
    inputs: &[Tensor],
    check: &[bool],
    eps: f64,
    atol: f64,
    rtol: f64,
) -> std::result::Result<GradCheck, String> {
    let vars: Vec<Var> = inputs
        .iter()
        .zip(check)
        .map(|(t, &c)| Var::leaf(t.clone(), c))
        .collect();
    let y = f(&vars).map_err(|e| e.to_string())?;
    let w = randn(y.shape(), DType::F64, 0xC0FFEE, 1.0);
    let objective = |vs: &[Var]| -> Result<f64> {
        let y = f(vs)?;
        sum_all(&mul(&y, &Var::constant(w.clone()))?)?
            .value()
            .to_scalar()
    };
    let l = sum_all(&mul(&y, &Var::constant(w.clone())).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let grads = l.backward().map_err(|e| e.to_string())?;
    let mut report = GradCheck {
        max_abs_err: 0.0,
        max_rel_err: 0.0,
        worst: String::new(),
    };
    for (i, t) in inputs.iter().enumerate() {
        if !check[i] {
            continue;
        }
        let analytic = match grads.get(&vars[i]) {
            Some(g) => g.to_f64_vec().map_err(|e| e.to_string())?,
            None => vec![0.0; t.elem_count()],
        };
        let base = t.to_f64_vec().map_err(|e| e.to_string())?;
        for j in 0..base.len() {
            let eval = |delta: f64| -> std::result::Result<f64, String> {
                let mut x = base.clone();
                x[j] += delta;
                let vs: Vec<Var> = inputs
                    .iter()
                    .enumerate()
                    .map(|(k, tk)| {
                        if k == i {
                            Var::constant(
                                Tensor::from_vec(x.clone(), t.shape().clone()).expect("same shape"),
                            )
                        } else {
                            Var::constant(tk.clone())
                        }
                    })
                    .collect();
                objective(&vs).map_err(|e| e.to_string())
            };
            let fd = (eval(eps)? - eval(-eps)?) / (2.0 * eps);
            let err = (fd - analytic[j]).abs();
            if err > report.max_abs_err {
                report.max_abs_err = err;
                report.worst = format!(
                    "input {i} element {j}: analytic {} vs finite difference {fd}",
                    analytic[j]
                );
            }
            report.max_rel_err = report.max_rel_err.max(err / fd.abs().max(1e-12));
            if err > atol + rtol * fd.abs() {
                return Err(format!("gradient mismatch at input {i} element {j}: analytic {} vs finite difference {fd}", analytic[j]));
            }
        }
    }
    Ok(report)
}
