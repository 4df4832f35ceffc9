//! The LoRA branch added to a base product, as one op:
//! `y = base + s·(dropout(x)·Aᵀ)·Bᵀ` with `x [.., in]`, `A [r, in]`, `B [out, r]`,
//! `base [.., out]`, `s` the LoRA scaling.
//!
//! The same math as `add(base, scale(linear(linear(dropout(x), A), B), s))`, without the three
//! `rows x out` intermediates of that chain (the product, its scaled copy, the sum): the scaling
//! is applied to the `rows x r` product `u = h·Aᵀ` and `(s·u)·Bᵀ` accumulates into a copy of
//! `base`. Backward, for an output gradient `g`:
//! `dbase = g`, `du = s·g·B`, `dB = s·gᵀ·u`, `dA = duᵀ·h`, `dx = dropout'(du·A)`, each only when
//! its input needs it. The dropout mask is the one [`super::dropout`] draws (same RNG use), so
//! a recomputed segment reproduces it.

use super::matmul::gemm;
use super::{same_dtype, with_float};
use crate::autograd::record;
use crate::element::Float;
use crate::{rng, Element, Error, Result, Tensor, Var};

/// `y = base + scaling·(dropout(x)·Aᵀ)·Bᵀ`; dropout with probability `p` only when `train`.
pub fn lora_add(
    base: &Var,
    x: &Var,
    a: &Var,
    b: &Var,
    scaling: f64,
    p: f32,
    train: bool,
) -> Result<Var> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::invalid(
            "lora_add",
            format!("dropout probability {p} is not in [0, 1)"),
        ));
    }
    let (bv, xv, av, wv) = (base.value(), x.value(), a.value(), b.value());
    let dt = same_dtype("lora_add", &[&bv, &xv, &av, &wv])?;
    let (ad, wd, xd) = (av.dims(), wv.dims(), xv.dims());
    if ad.len() != 2 || wd.len() != 2 || xd.is_empty() {
        return Err(Error::shape(
            "lora_add",
            format!(
                "A must be [r, in] and B [out, r], got A {} and B {}, x {}",
                av.shape(),
                wv.shape(),
                xv.shape()
            ),
        ));
    }
    let (r, inp, out) = (ad[0], ad[1], wd[0]);
    let rows = xv.elem_count().checked_div(inp).unwrap_or(0);
    let mut want = xd[..xd.len() - 1].to_vec();
    want.push(out);
    if xd[xd.len() - 1] != inp || wd[1] != r || bv.dims() != want.as_slice() {
        return Err(Error::shape(
            "lora_add",
            format!(
                "x {} with A {} and B {} gives [.., {out}] outputs, but base is {}",
                xv.shape(),
                av.shape(),
                wv.shape(),
                bv.shape()
            ),
        ));
    }
    let dropping = train && p > 0.0;
    // The RNG is consumed exactly as the unfused chain's `dropout` does.
    let st = dropping.then(|| rng::reserve(xv.elem_count() as u64));
    with_float!(dt, "lora_add", |T| {
        let s = T::from_f64(scaling);
        let h: Tensor = match st {
            Some(st) => Tensor::from_storage(
                T::wrap(super::dropout::apply(xv.as_slice::<T>()?, p, st)),
                xv.shape().clone(),
            ),
            None => xv.clone(),
        };
        let (hs, aw, bw) = (h.as_slice::<T>()?, av.as_slice::<T>()?, wv.as_slice::<T>()?);
        let mut u = vec![T::ZERO; rows * r];
        gemm(false, true, rows, r, inp, hs, aw, &mut u, false, true);
        let su: Vec<T> = u.iter().map(|&v| v * s).collect();
        let mut y = bv.as_slice::<T>()?.to_vec();
        gemm(false, true, rows, out, r, &su, bw, &mut y, true, true);
        let y = Tensor::from_storage(T::wrap(y), bv.shape().clone());
        let (xshape, ashape, bshape) = (xv.shape().clone(), av.shape().clone(), wv.shape().clone());
        Ok(record(
            "lora_add",
            y,
            &[base, x, a, b],
            move |g, needs, _| {
                let gs = g.as_slice::<T>()?;
                let (aw, bw) = (av.as_slice::<T>()?, wv.as_slice::<T>()?);
                let gbase = needs[0].then(|| g.clone());
                let gb = if needs[3] {
                    let mut db = vec![T::ZERO; out * r];
                    gemm(true, false, out, r, rows, gs, &u, &mut db, false, true);
                    db.iter_mut().for_each(|v| *v *= s);
                    Some(Tensor::from_storage(T::wrap(db), bshape.clone()))
                } else {
                    None
                };
                let (mut ga, mut gx) = (None, None);
                if needs[1] || needs[2] {
                    let mut du = vec![T::ZERO; rows * r];
                    gemm(false, false, rows, r, out, gs, bw, &mut du, false, true);
                    du.iter_mut().for_each(|v| *v *= s);
                    if needs[2] {
                        let mut da = vec![T::ZERO; r * inp];
                        gemm(
                            true,
                            false,
                            r,
                            inp,
                            rows,
                            &du,
                            h.as_slice::<T>()?,
                            &mut da,
                            false,
                            true,
                        );
                        ga = Some(Tensor::from_storage(T::wrap(da), ashape.clone()));
                    }
                    if needs[1] {
                        let mut dh = vec![T::ZERO; rows * inp];
                        gemm(false, false, rows, inp, r, &du, aw, &mut dh, false, true);
                        let dx = match st {
                            Some(st) => super::dropout::apply(&dh, p, st),
                            None => dh,
                        };
                        gx = Some(Tensor::from_storage(T::wrap(dx), xshape.clone()));
                    }
                }
                Ok(vec![gbase, gx, ga, gb])
            },
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{add, dropout, linear, scale};
    use crate::testing::{check_gradients, randn};
    use crate::DType;

    fn unfused(base: &Var, x: &Var, a: &Var, b: &Var, s: f64, p: f32) -> Result<Var> {
        let h = dropout(x, p, true)?;
        add(base, &scale(&linear(&linear(&h, a)?, b)?, s)?)
    }

    fn vars(dt: DType, seed: u64) -> [Tensor; 4] {
        // base [2, 3, 7], x [2, 3, 6], A [4, 6], B [7, 4]: rows 6, in 6, r 4, out 7.
        [
            randn(vec![2, 3, 7], dt, seed, 1.0),
            randn(vec![2, 3, 6], dt, seed + 1, 1.0),
            randn(vec![4, 6], dt, seed + 2, 0.5),
            randn(vec![7, 4], dt, seed + 3, 0.5),
        ]
    }

    #[test]
    fn gradients_match_finite_differences_with_dropout() {
        for (s, p) in [(2.0, 0.3f32), (0.7, 0.0)] {
            let inputs = vars(DType::F64, 11);
            check_gradients(
                |v| {
                    rng::set_state(rng::RngState { seed: 5, offset: 0 });
                    lora_add(&v[0], &v[1], &v[2], &v[3], s, p, true)
                },
                &inputs,
                &[true; 4],
                1e-5,
                1e-6,
                1e-6,
            )
            .unwrap();
        }
    }

    /// Values and gradients of every input against the unfused op chain, in f32. With a
    /// power-of-two scaling (PEFT's default α/r = 2) the products are the same roundings in
    /// the same order, so the results are bitwise equal; other scalings are close.
    #[test]
    fn equals_the_unfused_chain() {
        for (s, p, exact) in [(2.0, 0.05f32, true), (0.375, 0.2, false)] {
            let t = vars(DType::F32, 23);
            let run = |fused: bool| -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
                let v: Vec<Var> = t.iter().map(|x| Var::parameter(x.clone())).collect();
                rng::set_state(rng::RngState {
                    seed: 77,
                    offset: 3,
                });
                let y = if fused {
                    lora_add(&v[0], &v[1], &v[2], &v[3], s, p, true)?
                } else {
                    unfused(&v[0], &v[1], &v[2], &v[3], s, p)?
                };
                let w = randn(y.value().shape().clone(), DType::F32, 99, 1.0);
                let loss = crate::ops::sum_all(&crate::ops::mul(&y, &Var::constant(w))?)?;
                let grads = loss.backward()?;
                let gs = v
                    .iter()
                    .map(|x| grads.get(x).expect("gradient").to_f32_vec())
                    .collect::<Result<Vec<_>>>()?;
                Ok((y.value().to_f32_vec()?, gs))
            };
            let (y1, g1) = run(true).unwrap();
            let (y0, g0) = run(false).unwrap();
            let close = |a: &[f32], b: &[f32], what: &str| {
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    if exact {
                        assert_eq!(x.to_bits(), y.to_bits(), "{what}[{i}]: {x} vs {y}");
                    } else {
                        assert!(
                            (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                            "{what}[{i}]: {x} vs {y}"
                        );
                    }
                }
            };
            close(&y1, &y0, "y");
            for (i, (a, b)) in g1.iter().zip(&g0).enumerate() {
                close(a, b, ["dbase", "dx", "dA", "dB"][i]);
            }
        }
    }

    #[test]
    fn shape_mismatch_is_an_error_naming_the_op() {
        let [base, x, a, _] = vars(DType::F32, 3);
        let b_wrong = randn(vec![7, 5], DType::F32, 1, 1.0);
        let v = |t: &Tensor| Var::constant(t.clone());
        let e = lora_add(&v(&base), &v(&x), &v(&a), &v(&b_wrong), 2.0, 0.0, true).unwrap_err();
        assert!(e.to_string().contains("lora_add"), "{e}");
        let e = lora_add(&v(&base), &v(&x), &v(&a), &v(&a), 2.0, 0.0, true).unwrap_err();
        assert!(e.to_string().contains("base"), "{e}");
        let e = lora_add(&v(&base), &v(&x), &v(&a), &v(&b_wrong), 2.0, 1.0, true).unwrap_err();
        assert!(e.to_string().contains("dropout"), "{e}");
    }
}
