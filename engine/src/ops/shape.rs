//! Layout ops: reshape (shares the buffer), permute, narrow (slice) and concat (copies).

use crate::autograd::record;
use crate::storage::CpuStorage;
use crate::{DType, Error, Result, Shape, Tensor, Var};

/// Same elements with a new shape.
pub fn reshape(x: &Var, shape: impl Into<Shape>) -> Result<Var> {
    let xv = x.value();
    let old = xv.shape().clone();
    let out = xv.reshape(shape)?;
    Ok(record("reshape", out, &[x], move |g, _, _| {
        Ok(vec![Some(g.reshape(old.clone())?)])
    }))
}

/// Builds `out_shape` from runs of `run` elements that are contiguous in both tensors:
/// output run `r` (elements `r·run..(r+1)·run`) is copied from `src[start(r)..start(r) + run]`.
/// `run` must divide the element count. Copying whole runs instead of mapping each element
/// is what makes head splits and slices cheap (their innermost dims stay in place).
fn gather_runs(
    src: &Tensor,
    out_shape: &Shape,
    run: usize,
    start: impl Fn(usize) -> usize + Sync,
) -> Result<Tensor> {
    fn go<T: Copy + Send + Sync>(
        s: &[T],
        n: usize,
        run: usize,
        start: &(impl Fn(usize) -> usize + Sync),
    ) -> Vec<T> {
        use rayon::prelude::*;
        if n == 0 {
            return Vec::new();
        }
        if run == 1 {
            return if n >= 1 << 15 {
                (0..n).into_par_iter().map(|i| s[start(i)]).collect()
            } else {
                (0..n).map(|i| s[start(i)]).collect()
            };
        }
        let mut out = Vec::with_capacity(n);
        if n >= 1 << 15 {
            // Every element is written below before the vector is read.
            out.resize(n, s[0]);
            out.par_chunks_mut(run).enumerate().for_each(|(r, dst)| {
                let o = start(r);
                dst.copy_from_slice(&s[o..o + run]);
            });
        } else {
            for r in 0..n / run {
                let o = start(r);
                out.extend_from_slice(&s[o..o + run]);
            }
        }
        out
    }
    let n = out_shape.elem_count();
    debug_assert!(
        run > 0 && n.is_multiple_of(run),
        "run {run} does not divide {n}"
    );
    let st = match src.cpu_storage() {
        CpuStorage::F64(s) => CpuStorage::F64(go(s, n, run, &start)),
        CpuStorage::F32(s) => CpuStorage::F32(go(s, n, run, &start)),
        CpuStorage::BF16(s) => CpuStorage::BF16(go(s, n, run, &start)),
        CpuStorage::F16(s) => CpuStorage::F16(go(s, n, run, &start)),
        CpuStorage::I32(s) => CpuStorage::I32(go(s, n, run, &start)),
        CpuStorage::U32(s) => CpuStorage::U32(go(s, n, run, &start)),
        CpuStorage::U8(s) => CpuStorage::U8(go(s, n, run, &start)),
    };
    Ok(Tensor::from_storage(st, out_shape.clone()))
}

/// `out.dims[i] = x.dims[perm[i]]`, materialized contiguous.
pub fn permute_tensor(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    let d = x.dims();
    let mut seen = vec![false; d.len()];
    if perm.len() != d.len()
        || perm
            .iter()
            .any(|&p| p >= d.len() || std::mem::replace(&mut seen[p], true))
    {
        return Err(Error::invalid(
            "permute",
            format!("{perm:?} is not a permutation of the dims of {}", x.shape()),
        ));
    }
    let out_shape = Shape::new(perm.iter().map(|&p| d[p]).collect::<Vec<_>>());
    if out_shape.elem_count() == 0 {
        return gather_runs(x, &out_shape, 1, |i| i);
    }
    // Trailing dims the permutation leaves in place are copied as contiguous runs.
    let mut kept = perm.len();
    while kept > 0 && perm[kept - 1] == kept - 1 {
        kept -= 1;
    }
    let run: usize = d[kept..].iter().product();
    let in_strides = x.shape().strides();
    let out_dims = out_shape.dims()[..kept].to_vec();
    let src_strides: Vec<usize> = perm[..kept].iter().map(|&p| in_strides[p]).collect();
    gather_runs(x, &out_shape, run, |mut r| {
        let mut off = 0;
        for ax in (0..out_dims.len()).rev() {
            off += (r % out_dims[ax]) * src_strides[ax];
            r /= out_dims[ax];
        }
        off
    })
}

/// Permutes the dimensions; backward applies the inverse permutation.
pub fn permute(x: &Var, perm: &[usize]) -> Result<Var> {
    let out = permute_tensor(&x.value(), perm)?;
    let mut inv = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    Ok(record("permute", out, &[x], move |g, _, _| {
        Ok(vec![Some(permute_tensor(g, &inv)?)])
    }))
}

/// Elements `start..start+len` along `dim`.
pub fn narrow_tensor(x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
    let d = x.dims();
    if dim >= d.len() || start + len > d[dim] {
        return Err(Error::invalid(
            "narrow",
            format!("{start}..{} of dim {dim} in {}", start + len, x.shape()),
        ));
    }
    let inner: usize = d[dim + 1..].iter().product();
    let mut od = d.to_vec();
    od[dim] = len;
    let full = d[dim];
    let run = len * inner;
    if run == 0 {
        return gather_runs(x, &Shape::new(od), 1, |i| i);
    }
    // Each outer index contributes one contiguous run of `len·inner` elements.
    gather_runs(x, &Shape::new(od), run, |o| {
        o * full * inner + start * inner
    })
}

/// Writes `parts` (each `[.., len_i, ..]` along `dim`) side by side; all other dims equal.
fn concat_tensors(parts: &[Tensor], dim: usize) -> Result<Tensor> {
    let first = parts
        .first()
        .ok_or_else(|| Error::invalid("concat", "no tensors"))?;
    let d0 = first.dims().to_vec();
    if dim >= d0.len() {
        return Err(Error::invalid(
            "concat",
            format!("dim {dim} for rank {}", d0.len()),
        ));
    }
    let dt = first.dtype();
    for p in parts {
        let d = p.dims();
        if p.dtype() != dt || d.len() != d0.len() || (0..d.len()).any(|i| i != dim && d[i] != d0[i])
        {
            return Err(Error::shapes("concat", first.shape(), p.shape()));
        }
    }
    let outer: usize = d0[..dim].iter().product();
    let inner: usize = d0[dim + 1..].iter().product();
    let total: usize = parts.iter().map(|p| p.dims()[dim]).sum();
    let mut od = d0.clone();
    od[dim] = total;
    let mut out = CpuStorage::zeros(dt, outer * total * inner);
    let mut col = 0;
    for p in parts {
        let len = p.dims()[dim];
        let chunk = len * inner;
        let src = p.cpu_storage();
        macro_rules! copy {
            ($o:expr, $s:expr) => {
                for i in 0..outer {
                    let dst = i * total * inner + col * inner;
                    $o[dst..dst + chunk].copy_from_slice(&$s[i * chunk..(i + 1) * chunk]);
                }
            };
        }
        match (&mut out, src) {
            (CpuStorage::F64(o), CpuStorage::F64(s)) => copy!(o, s),
            (CpuStorage::F32(o), CpuStorage::F32(s)) => copy!(o, s),
            (CpuStorage::BF16(o), CpuStorage::BF16(s)) => copy!(o, s),
            (CpuStorage::F16(o), CpuStorage::F16(s)) => copy!(o, s),
            (CpuStorage::I32(o), CpuStorage::I32(s)) => copy!(o, s),
            (CpuStorage::U32(o), CpuStorage::U32(s)) => copy!(o, s),
            (CpuStorage::U8(o), CpuStorage::U8(s)) => copy!(o, s),
            _ => unreachable!("dtypes were checked above"),
        }
        col += len;
    }
    Ok(Tensor::from_storage(out, Shape::new(od)))
}

/// Slice `start..start+len` of `dim`; backward scatters the gradient into zeros.
pub fn narrow(x: &Var, dim: usize, start: usize, len: usize) -> Result<Var> {
    let xv = x.value();
    let out = narrow_tensor(&xv, dim, start, len)?;
    let full = xv.dims()[dim];
    let dims = xv.dims().to_vec();
    let dt: DType = xv.dtype();
    Ok(record("narrow", out, &[x], move |g, _, _| {
        let mut parts = Vec::new();
        let zeros = |n: usize| {
            let mut d = dims.clone();
            d[dim] = n;
            Tensor::zeros(d, dt)
        };
        if start > 0 {
            parts.push(zeros(start));
        }
        parts.push(g.clone());
        if start + len < full {
            parts.push(zeros(full - start - len));
        }
        Ok(vec![Some(concat_tensors(&parts, dim)?)])
    }))
}

/// Concatenates along `dim`; backward narrows the gradient back into pieces.
pub fn concat(xs: &[&Var], dim: usize) -> Result<Var> {
    let vals: Vec<Tensor> = xs.iter().map(|x| x.value()).collect();
    let out = concat_tensors(&vals, dim)?;
    let lens: Vec<usize> = vals.iter().map(|v| v.dims()[dim]).collect();
    Ok(record("concat", out, xs, move |g, needs, _| {
        let mut start = 0;
        let mut grads = Vec::with_capacity(lens.len());
        for (&len, &need) in lens.iter().zip(needs) {
            grads.push(if need {
                Some(narrow_tensor(g, dim, start, len)?)
            } else {
                None
            });
            start += len;
        }
        Ok(grads)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Rng;

    /// Distinct values, so a misplaced element cannot go unnoticed.
    fn distinct(dims: &[usize], seed: u64) -> Tensor {
        let n: usize = dims.iter().product();
        let mut rng = Rng::new(seed);
        let v: Vec<f32> = (0..n).map(|i| i as f32 + rng.uniform(0.0, 0.5)).collect();
        Tensor::from_vec(v, dims.to_vec()).unwrap()
    }

    /// The element-by-element definition: `out[i0, i1, ..] = x[.., i_k at axis perm[k], ..]`.
    fn permute_reference(x: &[f32], d: &[usize], perm: &[usize]) -> Vec<f32> {
        let strides = Shape::new(d.to_vec()).strides();
        let od: Vec<usize> = perm.iter().map(|&p| d[p]).collect();
        let n: usize = od.iter().product();
        (0..n)
            .map(|mut i| {
                let mut off = 0;
                for ax in (0..od.len()).rev() {
                    off += (i % od[ax]) * strides[perm[ax]];
                    i /= od[ax];
                }
                x[off]
            })
            .collect()
    }

    #[test]
    fn permute_matches_the_elementwise_definition() {
        // Small and large (parallel) sizes; runs of 1 (last axis moves), of the last dim, of
        // the last two dims, and the identity.
        for (dims, perm) in [
            (vec![2, 3, 4], vec![2, 0, 1]),
            (vec![2, 3, 4], vec![1, 0, 2]),
            (vec![2, 3, 4, 5], vec![1, 0, 2, 3]),
            (vec![2, 3, 4], vec![0, 1, 2]),
            (vec![2, 256, 8, 64], vec![0, 2, 1, 3]),
            (vec![2, 8, 256, 64], vec![0, 2, 1, 3]),
            (vec![3, 64, 200], vec![2, 1, 0]),
            (vec![4, 0, 3], vec![2, 1, 0]),
        ] {
            let x = distinct(&dims, 7);
            let got = permute_tensor(&x, &perm).unwrap();
            let want = permute_reference(x.as_slice::<f32>().unwrap(), &dims, &perm);
            let od: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
            assert_eq!(got.dims(), &od[..], "{dims:?} {perm:?}");
            assert_eq!(
                got.as_slice::<f32>().unwrap(),
                &want[..],
                "{dims:?} {perm:?}"
            );
        }
    }

    #[test]
    fn narrow_matches_the_elementwise_definition() {
        for (dims, dim, start, len) in [
            (vec![2, 4, 3], 1, 1, 2),
            (vec![2, 4, 3], 2, 2, 1),
            (vec![2, 4, 3], 0, 1, 1),
            (vec![2, 256, 10, 64], 2, 8, 1),
            (vec![2, 256, 10, 64], 2, 0, 8),
            (vec![2, 4, 3], 1, 4, 0),
        ] {
            let x = distinct(&dims, 9);
            let got = narrow_tensor(&x, dim, start, len).unwrap();
            let mut od = dims.clone();
            od[dim] = len;
            let strides = Shape::new(dims.clone()).strides();
            let n: usize = od.iter().product();
            let src = x.as_slice::<f32>().unwrap();
            let want: Vec<f32> = (0..n)
                .map(|mut i| {
                    let mut off = 0;
                    for ax in (0..od.len()).rev() {
                        let idx = i % od[ax] + if ax == dim { start } else { 0 };
                        off += idx * strides[ax];
                        i /= od[ax];
                    }
                    src[off]
                })
                .collect();
            assert_eq!(got.dims(), &od[..]);
            assert_eq!(got.as_slice::<f32>().unwrap(), &want[..], "{dims:?} {dim}");
        }
    }
}
