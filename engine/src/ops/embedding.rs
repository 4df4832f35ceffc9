//! Embedding lookup: `y[.., :] = table[ids[..], :]`.

use super::with_float;
use crate::autograd::record;
use crate::element::Float;
use crate::{Element, Error, Result, Shape, Tensor, Var};

/// Gathers rows of `table [vocab, dim]` for `ids` (u32, any shape), giving `[ids.., dim]`.
/// An id outside the table is an error naming its position. Backward (only when the table
/// requires a gradient) scatter-adds rows in token order, so it is deterministic.
pub fn embedding(ids: &Tensor, table: &Var) -> Result<Var> {
    let tv = table.value();
    if tv.rank() != 2 {
        return Err(Error::shape(
            "embedding",
            format!("table must be [vocab, dim], got {}", tv.shape()),
        ));
    }
    let (vocab, dim) = (tv.dims()[0], tv.dims()[1]);
    let idx = ids.as_slice::<u32>()?.to_vec();
    if let Some((pos, &bad)) = idx.iter().enumerate().find(|(_, &i)| i as usize >= vocab) {
        return Err(Error::invalid(
            "embedding",
            format!("token id {bad} at position {pos} is outside the vocabulary of {vocab}"),
        ));
    }
    let mut od = ids.dims().to_vec();
    od.push(dim);
    let out = with_float!(tv.dtype(), "embedding", |T| {
        let t = tv.as_slice::<T>()?;
        let mut out = Vec::with_capacity(idx.len() * dim);
        for &i in &idx {
            out.extend_from_slice(&t[i as usize * dim..(i as usize + 1) * dim]);
        }
        Tensor::from_storage(T::wrap(out), Shape::new(od))
    });
    let dt = tv.dtype();
    Ok(record("embedding", out, &[table], move |g, _, _| {
        with_float!(dt, "embedding_backward", |T| {
            let gs = g.as_slice::<T>()?;
            let mut gt = vec![T::ZERO; vocab * dim];
            for (r, &i) in idx.iter().enumerate() {
                let dst = &mut gt[i as usize * dim..(i as usize + 1) * dim];
                for (d, &s) in dst.iter_mut().zip(&gs[r * dim..(r + 1) * dim]) {
                    *d += s;
                }
            }
            Ok(vec![Some(Tensor::from_storage(T::wrap(gt), [vocab, dim]))])
        })
    }))
}
