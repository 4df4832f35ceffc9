//! Test support: seeded random tensors, float64 finite-difference gradient checks.
//! Public so the cross-crate tests and other crates' tests use the same tools.

use crate::ops::{mul, sum_all};
use crate::{rng, DType, Result, Shape, Tensor, Var};

/// `f()` run on a fresh rayon pool of `threads` threads: for tests that a result does not
/// depend on the thread count.
pub fn with_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a rayon pool")
        .install(f)
}

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

/// The unit roundoff of f32 (2⁻²⁴): the relative error of one correctly rounded f32
/// operation, the unit the kernel tests derive their tolerances in.
pub const F32_UNIT_ROUNDOFF: f64 = 1.0 / 16_777_216.0;

/// A sequential SplitMix64 generator for test inputs ([`rng::splitmix64`] over a counter
/// advancing by the golden ratio). The training code draws from the counter-based
/// [`rng::bits`] instead; tests want a stream they can pull from in any order.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose first state is `seed` mixed with the golden-ratio constant (so that
    /// seeds 0, 1, 2 ... give unrelated streams).
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// A generator whose first state is exactly `state`.
    pub fn from_state(state: u64) -> Rng {
        Rng(state)
    }

    pub fn next_u64(&mut self) -> u64 {
        let z = rng::splitmix64(self.0);
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z
    }

    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Uniform in `[0, n)` (`n > 0`; the modulo bias is irrelevant for test sizes).
    pub fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % n as u64) as u32
    }

    /// Uniform in `[lo, hi)` with 24 bits of resolution.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }

    /// `n` draws of [`Rng::uniform`].
    pub fn vec_f32(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }

    /// Uniform in `(0, 1]` with 53 bits of resolution (never 0, so its logarithm is finite).
    pub fn open_unit_f64(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal draw (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        (-2.0 * self.open_unit_f64().ln()).sqrt()
            * (2.0 * std::f64::consts::PI * self.open_unit_f64()).cos()
    }
}

/// Asserts `|got[i] − want[i]| ≤ tol[i]` and `got[i]` finite for every element, naming the
/// first element that is not (a NaN left by an unwritten output fails too).
pub fn assert_close(what: &str, got: &[f64], want: &[f64], tol: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    assert_eq!(tol.len(), want.len(), "{what}: tolerance length");
    for i in 0..got.len() {
        let err = (got[i] - want[i]).abs();
        assert!(
            err <= tol[i] && got[i].is_finite(),
            "{what}[{i}]: got {} want {} (|Δ| {err:e} > tol {:e})",
            got[i],
            want[i],
            tol[i]
        );
    }
}

/// Per-element tolerances `atol + rtol·|want|`.
pub fn mixed_tolerance(want: &[f64], atol: f64, rtol: f64) -> Vec<f64> {
    want.iter().map(|w| atol + rtol * w.abs()).collect()
}

/// Asserts that `r` is an error whose message contains `needle`: a test of a refusal checks
/// which refusal it is, not just that something failed.
#[track_caller]
pub fn assert_err_contains<T: std::fmt::Debug, E: std::fmt::Display>(
    r: std::result::Result<T, E>,
    needle: &str,
) {
    match r {
        Ok(v) => panic!("expected an error containing {needle:?}, got Ok({v:?})"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(needle),
                "the error {msg:?} does not contain {needle:?}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_the_splitmix64_sequence() {
        // Reference values of SplitMix64 seeded with 1234567 (Vigna's splitmix64.c).
        let mut r = Rng::from_state(1234567);
        let want = [
            6457827717110365317u64,
            3203168211198807973,
            9817491932198370423,
        ];
        for w in want {
            assert_eq!(r.next_u64(), w);
        }
    }

    #[test]
    #[should_panic(expected = "x[1]")]
    fn assert_close_names_the_element() {
        assert_close("x", &[1.0, 2.5], &[1.0, 2.0], &[0.1, 0.1]);
    }

    #[test]
    #[should_panic(expected = "x[0]")]
    fn assert_close_rejects_nan() {
        assert_close("x", &[f64::NAN], &[1.0], &[f64::INFINITY]);
    }
}
