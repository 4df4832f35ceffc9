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

pub fn gelu(x: &Var) -> Result<Var> {
    let xv = x.value();
    with_float!(xv.dtype(), "gelu", |T| {
        let y: Vec<T> = xv
            .as_slice::<T>()?
            .par_iter()
            .map(|&v| gelu_scalar(v))
            .collect();
        let out = Tensor::from_storage(T::wrap(y), xv.shape().clone());
        Ok(record("gelu", out, &[x], move |g, _, _| {
            let dx: Vec<T> = xv
                .as_slice::<T>()?
                .par_iter()
                .zip(g.as_slice::<T>()?.par_iter())
                .map(|(&v, &gv)| gv * gelu_grad_scalar(v))
                .collect();
            Ok(vec![Some(Tensor::from_storage(
                T::wrap(dx),
                xv.shape().clone(),
            ))])
        }))
    })
}
