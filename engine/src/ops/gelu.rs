//! Exact GELU (erf form, torch's default `approximate='none'`):
//! `gelu(x) = x·Φ(x) = ½x(1 + erf(x/√2))`, `gelu'(x) = Φ(x) + x·φ(x)`, `φ(x) = e^{-x²/2}/√(2π)`.

use super::with_float;
use crate::autograd::record;
use crate::element::Float;
use crate::{Element, Result, Tensor, Var};
use rayon::prelude::*;
use std::mem::MaybeUninit;

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

/// `(gelu(x), gelu'(x))` with one erf; each value is computed with the same operations, in the
/// same order, as [`gelu_scalar`] and [`gelu_grad_scalar`], so the results are identical. The
/// per-element definition `gelu_slices` follows (the tests hold the two together).
#[cfg(test)]
fn gelu_with_grad<T: Float>(x: T) -> (T, T) {
    let half = T::from_f64(0.5);
    let e = (x * T::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf();
    let y = half * x * (T::ONE + e);
    let cdf = half * (T::ONE + e);
    let pdf = (-(x * x) * half).exp() * T::from_f64(0.398_942_280_401_432_7);
    (y, cdf + x * pdf)
}

/// Elements per parallel task.
const TASK: usize = 1 << 14;
/// Elements per pass of the slice kernels: the erf and exp buffers stay in L1.
const LANES: usize = 256;

/// `y = gelu(x)` and, when `dydx` is given, `dydx = gelu'(x)`, computed with the same
/// operations in the same order as [`gelu_with_grad`] but with erf and exp over slices
/// ([`Float::erf_slice`], [`Float::exp_shifted_slice`]: vectorized for f32, libm for f64).
/// The outputs may be uninitialized memory: every element of `y` (and `dydx`) is written.
fn gelu_slices<T: Float>(
    x: &[T],
    y: &mut [MaybeUninit<T>],
    mut dydx: Option<&mut [MaybeUninit<T>]>,
) {
    let half = T::from_f64(0.5);
    let inv_sqrt2 = T::from_f64(std::f64::consts::FRAC_1_SQRT_2);
    let inv_sqrt_2pi = T::from_f64(0.398_942_280_401_432_7);
    let mut e = [T::ZERO; LANES];
    let mut p = [T::ZERO; LANES];
    for i0 in (0..x.len()).step_by(LANES) {
        let n = LANES.min(x.len() - i0);
        let xs = &x[i0..i0 + n];
        let e = &mut e[..n];
        for (ev, &xv) in e.iter_mut().zip(xs) {
            *ev = xv * inv_sqrt2;
        }
        T::erf_slice(e);
        for ((yv, &xv), &ev) in y[i0..i0 + n].iter_mut().zip(xs).zip(e.iter()) {
            yv.write(half * xv * (T::ONE + ev));
        }
        if let Some(d) = dydx.as_deref_mut() {
            let p = &mut p[..n];
            for (pv, &xv) in p.iter_mut().zip(xs) {
                *pv = -(xv * xv) * half;
            }
            T::exp_shifted_slice(p, T::ZERO);
            for (((dv, &xv), &ev), &pv) in
                d[i0..i0 + n].iter_mut().zip(xs).zip(e.iter()).zip(p.iter())
            {
                let cdf = half * (T::ONE + ev);
                dv.write(cdf + xv * (pv * inv_sqrt_2pi));
            }
        }
    }
}

/// `gelu(x)`. When the op is recorded for backward, the forward also computes `gelu'(x)` and
/// keeps it instead of `x` (same memory), so backward is one multiply and the erf is evaluated
/// once per element rather than twice.
pub fn gelu(x: &Var) -> Result<Var> {
    let xv = x.value();
    let recorded = crate::autograd::grad_enabled() && x.requires_grad();
    with_float!(xv.dtype(), "gelu", |T| {
        let src = xv.as_slice::<T>()?;
        let n = src.len();
        // Outputs without a zero fill first: gelu_slices writes every element.
        let mut y = Vec::with_capacity(n);
        if !recorded {
            y.spare_capacity_mut()[..n]
                .par_chunks_mut(TASK)
                .zip(src.par_chunks(TASK))
                .for_each(|(yc, xc)| gelu_slices(xc, yc, None));
            // SAFETY: gelu_slices initialized the first n elements.
            unsafe { y.set_len(n) };
            return Ok(Var::constant(Tensor::from_storage(
                T::wrap(y),
                xv.shape().clone(),
            )));
        }
        let mut dydx = Vec::with_capacity(n);
        y.spare_capacity_mut()[..n]
            .par_chunks_mut(TASK)
            .zip(dydx.spare_capacity_mut()[..n].par_chunks_mut(TASK))
            .zip(src.par_chunks(TASK))
            .for_each(|((yc, dc), xc)| gelu_slices(xc, yc, Some(dc)));
        // SAFETY: gelu_slices initialized the first n elements of both.
        unsafe {
            y.set_len(n);
            dydx.set_len(n);
        }
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

    /// [`gelu_slices`] into initialized outputs.
    fn gelu_slices_init<T: Float>(x: &[T], y: &mut [T], d: Option<&mut [T]>) {
        fn uninit<T>(s: &mut [T]) -> &mut [MaybeUninit<T>] {
            // SAFETY: MaybeUninit<T> has T's layout, and only initialized T values are
            // written through the view.
            unsafe { &mut *(s as *mut [T] as *mut [MaybeUninit<T>]) }
        }
        gelu_slices(x, uninit(y), d.map(uninit));
    }

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

    fn fresh_inputs(n: usize, spread: f64) -> Vec<f64> {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                ((seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * spread
            })
            .collect()
    }

    #[test]
    fn slice_kernel_in_f64_is_bitwise_the_scalar_reference() {
        let x = fresh_inputs(1000, 20.0);
        let (mut y, mut d) = (vec![f64::NAN; x.len()], vec![f64::NAN; x.len()]);
        gelu_slices_init(&x, &mut y, Some(&mut d));
        for i in 0..x.len() {
            let (yr, dr) = gelu_with_grad(x[i]);
            assert_eq!(y[i].to_bits(), yr.to_bits(), "gelu({})", x[i]);
            assert_eq!(d[i].to_bits(), dr.to_bits(), "gelu'({})", x[i]);
        }
    }

    #[test]
    fn vectorized_f32_gelu_and_derivative_match_float64() {
        // Large |x| (erf saturated, exp underflowing), the erf branch points and odd lengths.
        let mut x64 = fresh_inputs(3001, 24.0);
        x64.extend([
            0.0,
            -0.0,
            1.0 * std::f64::consts::SQRT_2,
            -6.0,
            9.5,
            -13.0,
            1e-30,
        ]);
        let x: Vec<f32> = x64.iter().map(|&v| v as f32).collect();
        let (mut y, mut d) = (vec![f32::NAN; x.len()], vec![f32::NAN; x.len()]);
        gelu_slices_init(&x, &mut y, Some(&mut d));
        let mut y_only = vec![f32::NAN; x.len()];
        gelu_slices_init(&x, &mut y_only, None);
        for i in 0..x.len() {
            let xd = x[i] as f64;
            // 1 + erf(x/√2) cancels for negative x: the error is relative to |x|, not to y.
            let tol = 4.0 * f32::EPSILON as f64 * (1.0 + xd.abs());
            let (yr, dr) = (gelu_scalar(xd), gelu_grad_scalar(xd));
            assert!(
                (y[i] as f64 - yr).abs() <= tol,
                "gelu({xd}) = {} vs {yr}",
                y[i]
            );
            assert!(
                (d[i] as f64 - dr).abs() <= tol,
                "gelu'({xd}) = {} vs {dr}",
                d[i]
            );
            assert_eq!(y[i].to_bits(), y_only[i].to_bits());
        }
        let (mut yn, mut dn) = ([0f32; 3], [0f32; 3]);
        gelu_slices_init(
            &[f32::NAN, f32::INFINITY, f32::NEG_INFINITY],
            &mut yn,
            Some(&mut dn),
        );
        assert!(yn[0].is_nan() && dn[0].is_nan());
        assert_eq!(yn[1], f32::INFINITY);
        assert!(yn[2].is_nan() || yn[2] == 0.0, "gelu(-inf) = {}", yn[2]);
    }
}
