//! Exact GELU (erf form, torch's default `approximate='none'`):
//! `gelu(x) = x·Φ(x) = ½x(1 + erf(x/√2))`, `gelu'(x) = Φ(x) + x·φ(x)`, `φ(x) = e^{-x²/2}/√(2π)`.

use super::with_float;
use crate::autograd::record;
use crate::element::Float;
use crate::{Element, Result, Tensor, Var};
use rayon::prelude::*;

pub fn gelu_scalar<T: Float>(x: T) -> T {
    let half = T::from_f64(0.5);
    half * x * (T::ONE + (x * T::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf())
}

pub fn gelu_grad_scalar<T: Float>(x: T) -> T {
    let cdf =
        T::from_f64(0.5) * (T::ONE + (x * T::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf());
    let pdf = (-(x * x) * T::from_f64(0.5)).exp() * T::from_f64(0.398_942_280_401_432_7);
    cdf + x * pdf
}

/// `gelu(x)`. When the op is recorded for backward, the forward also computes `gelu'(x)` and
/// keeps it instead of `x` (same memory), so backward is one multiply and the erf is evaluated
/// once per element rather than twice.
/// `(gelu(x), gelu'(x))` with one erf; each value is computed with the same operations, in the
/// same order, as [`gelu_scalar`] and [`gelu_grad_scalar`], so the results are identical.
fn gelu_with_grad<T: Float>(x: T) -> (T, T) {
    let half = T::from_f64(0.5);
    let e = (x * T::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf();
    let y = half * x * (T::ONE + e);
    let cdf = half * (T::ONE + e);
    let pdf = (-(x * x) * half).exp() * T::from_f64(0.398_942_280_401_432_7);
    (y, cdf + x * pdf)
}

pub fn gelu(x: &Var) -> Result<Var> {
    let xv = x.value();
    let recorded = crate::autograd::grad_enabled() && x.requires_grad();
    with_float!(xv.dtype(), "gelu", |T| {
        let src = xv.as_slice::<T>()?;
        if !recorded {
            let y: Vec<T> = src.par_iter().map(|&v| gelu_scalar(v)).collect();
            return Ok(Var::constant(Tensor::from_storage(
                T::wrap(y),
                xv.shape().clone(),
            )));
        }
        let (y, dydx): (Vec<T>, Vec<T>) = src.par_iter().map(|&v| gelu_with_grad(v)).unzip();
        let shape = xv.shape().clone();
        let out = Tensor::from_storage(T::wrap(y), shape.clone());
        Ok(record("gelu", out, &[x], move |g, _, _| {
            let dx: Vec<T> = dydx
                .par_iter()
                .zip(g.as_slice::<T>()?.par_iter())
                .map(|(&dv, &gv)| gv * dv)
                .collect();
            Ok(vec![Some(Tensor::from_storage(T::wrap(dx), shape.clone()))])
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_erf_gives_the_same_bits_as_the_separate_functions() {
        for i in -400..400 {
            let x = i as f32 * 0.0173 + 0.001;
            let (y, d) = gelu_with_grad(x);
            assert_eq!(y.to_bits(), gelu_scalar(x).to_bits(), "gelu({x})");
            assert_eq!(d.to_bits(), gelu_grad_scalar(x).to_bits(), "gelu'({x})");
            let xd = x as f64 * 1.37;
            let (y, d) = gelu_with_grad(xd);
            assert_eq!(y.to_bits(), gelu_scalar(xd).to_bits(), "gelu({xd})");
            assert_eq!(d.to_bits(), gelu_grad_scalar(xd).to_bits(), "gelu'({xd})");
        }
    }
}
