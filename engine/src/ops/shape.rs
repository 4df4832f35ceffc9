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

/// Applies `f(dst_index, src_index)` element-wise copy for any dtype.
fn gather_copy(
    src: &Tensor,
    out_shape: &Shape,
    map: impl Fn(usize) -> usize + Sync,
) -> Result<Tensor> {
    fn go<T: Copy + Send + Sync>(
        s: &[T],
        n: usize,
        map: &(impl Fn(usize) -> usize + Sync),
    ) -> Vec<T> {
        use rayon::prelude::*;
        if n >= 1 << 15 {
            (0..n).into_par_iter().map(|i| s[map(i)]).collect()
        } else {
            (0..n).map(|i| s[map(i)]).collect()
        }
    }
    let n = out_shape.elem_count();
    let st = match src.cpu_storage() {
        CpuStorage::F64(s) => CpuStorage::F64(go(s, n, &map)),
        CpuStorage::F32(s) => CpuStorage::F32(go(s, n, &map)),
        CpuStorage::BF16(s) => CpuStorage::BF16(go(s, n, &map)),
        CpuStorage::F16(s) => CpuStorage::F16(go(s, n, &map)),
        CpuStorage::I32(s) => CpuStorage::I32(go(s, n, &map)),
        CpuStorage::U32(s) => CpuStorage::U32(go(s, n, &map)),
        CpuStorage::U8(s) => CpuStorage::U8(go(s, n, &map)),
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
    let in_strides = x.shape().strides();
    let out_dims = out_shape.dims().to_vec();
    let src_strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    gather_copy(x, &out_shape, |mut i| {
        let mut off = 0;
        for ax in (0..out_dims.len()).rev() {
            off += (i % out_dims[ax]) * src_strides[ax];
            i /= out_dims[ax];
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
    gather_copy(x, &Shape::new(od), |i| {
        let (o, rest) = (i / (len * inner), i % (len * inner));
        o * full * inner + start * inner + rest
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
