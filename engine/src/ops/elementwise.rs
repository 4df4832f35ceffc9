//! Element-wise arithmetic: add (with broadcast of a trailing-suffix shape), mul, scale, sum.

use super::{same_dtype, with_float};
use crate::autograd::record;
use crate::element::Float;
use crate::{Error, Result, Tensor, Var};
use rayon::prelude::*;

const PAR_MIN: usize = 1 << 15;

fn map2<T: Float>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    // Collected, not written into a zero-filled buffer: one pass of stores.
    if a.len() >= PAR_MIN {
        a.par_iter()
            .zip(b.par_iter())
            .map(|(&x, &y)| f(x, y))
            .collect()
    } else {
        a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
    }
}

fn map1<T: Float>(a: &[T], f: impl Fn(T) -> T + Sync) -> Vec<T> {
    if a.len() >= PAR_MIN {
        a.par_iter().map(|&x| f(x)).collect()
    } else {
        a.iter().map(|&x| f(x)).collect()
    }
}

/// `a + b` for tensors of one shape and float dtype.
pub fn add_tensors(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        return Err(Error::shapes("add", a.shape(), b.shape()));
    }
    let dt = same_dtype("add", &[a, b])?;
    with_float!(dt, "add", |T| {
        let out = map2(a.as_slice::<T>()?, b.as_slice::<T>()?, |x, y| x + y);
        Ok(Tensor::from_storage(
            <T as crate::Element>::wrap(out),
            a.shape().clone(),
        ))
    })
}

/// `acc + g`, written into `acc`'s buffer when `acc` is its only handle (a gradient being
/// summed), else into a new one. The same bits as [`add_tensors`] either way.
pub fn accumulate_tensors(mut acc: Tensor, g: &Tensor) -> Result<Tensor> {
    if acc.shape() != g.shape() {
        return Err(Error::shapes("add", acc.shape(), g.shape()));
    }
    let dt = same_dtype("add", &[&acc, g])?;
    with_float!(dt, "add", |T| {
        let gs = g.as_slice::<T>()?;
        if let Some(a) = acc.unique_slice_mut::<T>() {
            if a.len() >= PAR_MIN {
                a.par_iter_mut()
                    .zip(gs.par_iter())
                    .for_each(|(x, &y)| *x += y);
            } else {
                a.iter_mut().zip(gs).for_each(|(x, &y)| *x += y);
            }
            return Ok(acc);
        }
        add_tensors(&acc, g)
    })
}

/// `a * b` element-wise.
pub fn mul_tensors(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        return Err(Error::shapes("mul", a.shape(), b.shape()));
    }
    let dt = same_dtype("mul", &[a, b])?;
    with_float!(dt, "mul", |T| {
        let out = map2(a.as_slice::<T>()?, b.as_slice::<T>()?, |x, y| x * y);
        Ok(Tensor::from_storage(
            <T as crate::Element>::wrap(out),
            a.shape().clone(),
        ))
    })
}

/// `s * a`.
pub fn scale_tensor(a: &Tensor, s: f64) -> Result<Tensor> {
    with_float!(a.dtype(), "scale", |T| {
        let s = T::from_f64(s);
        let out = map1(a.as_slice::<T>()?, |x| x * s);
        Ok(Tensor::from_storage(
            <T as crate::Element>::wrap(out),
            a.shape().clone(),
        ))
    })
}

/// Sums `a` viewed as `[rows, n]` over its rows, giving `[n]`; the order of additions is fixed.
pub fn sum_rows(a: &Tensor, n: usize) -> Result<Tensor> {
    with_float!(a.dtype(), "sum_rows", |T| {
        let x = a.as_slice::<T>()?;
        let mut out = vec![T::ZERO; n];
        for row in x.chunks_exact(n) {
            for (o, &v) in out.iter_mut().zip(row) {
                *o += v;
            }
        }
        Ok(Tensor::from_storage(<T as crate::Element>::wrap(out), [n]))
    })
}

/// True when `small`'s dims are a trailing suffix of `big`'s (broadcast over leading dims).
fn is_suffix(big: &[usize], small: &[usize]) -> bool {
    small.len() <= big.len() && big[big.len() - small.len()..] == *small
}

/// `y = a + b`. `b` may have the shape of a trailing suffix of `a`'s shape (e.g. a bias `[n]`
/// added to `[.., n]`); it is then broadcast over the leading dimensions.
pub fn add(a: &Var, b: &Var) -> Result<Var> {
    let (av, bv) = (a.value(), b.value());
    let dt = same_dtype("add", &[&av, &bv])?;
    if av.shape() == bv.shape() {
        let out = add_tensors(&av, &bv)?;
        return Ok(record("add", out, &[a, b], |g, _, _| {
            Ok(vec![Some(g.clone()), Some(g.clone())])
        }));
    }
    if !is_suffix(av.dims(), bv.dims()) {
        return Err(Error::shapes("add", av.shape(), bv.shape()));
    }
    let n = bv.elem_count().max(1);
    let out = with_float!(dt, "add", |T| {
        let x = av.as_slice::<T>()?;
        let y = bv.as_slice::<T>()?;
        let mut out = x.to_vec();
        for row in out.chunks_exact_mut(n) {
            for (o, &v) in row.iter_mut().zip(y) {
                *o += v;
            }
        }
        Tensor::from_storage(<T as crate::Element>::wrap(out), av.shape().clone())
    });
    let bshape = bv.shape().clone();
    Ok(record("add_broadcast", out, &[a, b], move |g, needs, _| {
        let gb = if needs[1] {
            Some(sum_rows(g, n)?.reshape(bshape.clone())?)
        } else {
            None
        };
        Ok(vec![Some(g.clone()), gb])
    }))
}

/// `y = a * b` element-wise (same shapes).
pub fn mul(a: &Var, b: &Var) -> Result<Var> {
    let (av, bv) = (a.value(), b.value());
    let out = mul_tensors(&av, &bv)?;
    Ok(record("mul", out, &[a, b], move |g, needs, _| {
        let ga = if needs[0] {
            Some(mul_tensors(g, &bv)?)
        } else {
            None
        };
        let gb = if needs[1] {
            Some(mul_tensors(g, &av)?)
        } else {
            None
        };
        Ok(vec![ga, gb])
    }))
}

/// `y = s * a`.
pub fn scale(a: &Var, s: f64) -> Result<Var> {
    let out = scale_tensor(&a.value(), s)?;
    Ok(record("scale", out, &[a], move |g, _, _| {
        Ok(vec![Some(scale_tensor(g, s)?)])
    }))
}

/// The sum of all elements (summed in f64 in index order), as a one-element tensor.
/// The gradient is `∂/∂a_i = g`.
pub fn sum_all(a: &Var) -> Result<Var> {
    let av = a.value();
    let dt = av.dtype();
    let total: f64 = with_float!(dt, "sum_all", |T| {
        av.as_slice::<T>()?.iter().map(|x| x.to_f64()).sum()
    });
    let value = Tensor::scalar(total, dt);
    let shape = av.shape().clone();
    Ok(record("sum_all", value, &[a], move |g, _, _| {
        Ok(vec![Some(Tensor::full(g.to_scalar()?, shape.clone(), dt))])
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng;

    fn randt(n: usize, seed: u64) -> Tensor {
        let v: Vec<f32> = (0..n as u64)
            .map(|i| rng::normal_f64(seed, i) as f32)
            .collect();
        Tensor::from_vec(v, [n]).unwrap()
    }

    #[test]
    fn accumulate_adds_in_place_only_into_an_unshared_buffer() {
        // Below and above the parallel threshold.
        for n in [5, PAR_MIN + 3] {
            let (a, g) = (randt(n, 1), randt(n, 2));
            let want = add_tensors(&a, &g).unwrap().to_vec::<f32>().unwrap();
            let bits = |t: &Tensor| -> Vec<u32> {
                t.as_slice::<f32>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect()
            };
            // A sole handle: the sum lands in its own buffer, with add's bits.
            let sole = Tensor::from_vec(a.to_vec::<f32>().unwrap(), [n]).unwrap();
            let ptr = sole.as_slice::<f32>().unwrap().as_ptr();
            let sum = accumulate_tensors(sole, &g).unwrap();
            assert_eq!(sum.as_slice::<f32>().unwrap().as_ptr(), ptr);
            assert_eq!(
                bits(&sum),
                want.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
            // A shared buffer (a clone, or a reshape, is alive): a new buffer, the old unchanged.
            let before = bits(&a);
            let view = a.reshape([1, n]).unwrap();
            let sum = accumulate_tensors(a, &g).unwrap();
            assert!(!sum.same_storage(&view));
            assert_eq!(bits(&view), before);
            assert_eq!(
                bits(&sum),
                want.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
        }
    }
}
