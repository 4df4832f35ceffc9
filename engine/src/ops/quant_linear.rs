//! Linear layer over a frozen 4-bit (NF4/FP4) weight: `y = x · dequant(W)ᵀ`.
//!
//! The weight is a frozen QLoRA base: backward computes only `dx = dy · dequant(W)`, and no
//! weight-sized gradient ever exists. The fp32 products use the weight's dequantized copy from
//! [`crate::nf4::dequant_cache`] (one GEMM, no dequantization after the first use) when it
//! fits the cache's budget, and otherwise dequantize tile by tile ([`crate::nf4::linear`]). The f64 path
//! dequantizes the weight whole; it exists for float64 reference checks on small shapes.

use super::matmul::gemm;
use crate::autograd::record;
use crate::nf4::{self, QuantizedWeight};
use crate::{DType, Error, Result, Shape, Tensor, Var};
use std::sync::Arc;

/// The weight as the matmul sees it (stored-dtype rounding), widened to f64 for the reference path.
fn dequantized_f64(w: &QuantizedWeight) -> Vec<f64> {
    w.dequantize_stored_f32()
        .into_iter()
        .map(f64::from)
        .collect()
}

fn forward_tensor(x: &Tensor, w: &Arc<QuantizedWeight>) -> Result<Tensor> {
    let (n_out, k) = (w.out_features(), w.in_features());
    let m = x.elem_count() / k.max(1);
    let mut od = x.dims().to_vec();
    *od.last_mut().expect("rank checked by caller") = n_out;
    match x.dtype() {
        DType::F32 => {
            let mut y = vec![f32::NAN; m * n_out];
            let xs = x.as_slice::<f32>()?;
            match nf4::dequant_cache::dequantized(w)? {
                Some(wd) => gemm(false, true, m, n_out, k, xs, &wd, &mut y, false, true),
                None => nf4::linear_forward(xs, m, w, &mut y)?,
            }
            Ok(Tensor::from_vec(y, Shape::new(od))?)
        }
        DType::F64 => {
            let wd = dequantized_f64(w);
            let mut y = vec![0f64; m * n_out];
            gemm(
                false,
                true,
                m,
                n_out,
                k,
                x.as_slice::<f64>()?,
                &wd,
                &mut y,
                false,
                true,
            );
            Ok(Tensor::from_vec(y, Shape::new(od))?)
        }
        d => Err(Error::DType {
            op: "quant_linear",
            dtype: d,
            expected: "f32 or f64",
        }),
    }
}

fn backward_tensor(dy: &Tensor, w: &Arc<QuantizedWeight>, x_shape: &Shape) -> Result<Tensor> {
    let (n_out, k) = (w.out_features(), w.in_features());
    let m = dy.elem_count() / n_out.max(1);
    match dy.dtype() {
        DType::F32 => {
            let mut dx = vec![f32::NAN; m * k];
            let dys = dy.as_slice::<f32>()?;
            match nf4::dequant_cache::dequantized(w)? {
                Some(wd) => gemm(false, false, m, k, n_out, dys, &wd, &mut dx, false, true),
                None => nf4::linear_backward_input(dys, m, w, &mut dx)?,
            }
            Ok(Tensor::from_vec(dx, x_shape.clone())?)
        }
        DType::F64 => {
            let wd = dequantized_f64(w);
            let mut dx = vec![0f64; m * k];
            gemm(
                false,
                false,
                m,
                k,
                n_out,
                dy.as_slice::<f64>()?,
                &wd,
                &mut dx,
                false,
                true,
            );
            Ok(Tensor::from_vec(dx, x_shape.clone())?)
        }
        d => Err(Error::DType {
            op: "quant_linear",
            dtype: d,
            expected: "f32 or f64",
        }),
    }
}

/// `y[.., out] = x[.., in] · dequant(W)ᵀ` for a frozen quantized `W [out, in]`.
pub fn quant_linear(x: &Var, w: &Arc<QuantizedWeight>) -> Result<Var> {
    quant_linear_impl(x, w, false)
}

/// [`quant_linear`] whose output value will never be read, only differentiated (see
/// [`super::matmul::linear_unread`]): same backward, no product, a NaN value.
pub fn quant_linear_unread(x: &Var, w: &Arc<QuantizedWeight>) -> Result<Var> {
    quant_linear_impl(x, w, true)
}

fn quant_linear_impl(x: &Var, w: &Arc<QuantizedWeight>, unread: bool) -> Result<Var> {
    let xv = x.value();
    if xv.rank() == 0 || xv.shape().last() != w.in_features() {
        return Err(Error::shape(
            "quant_linear",
            format!(
                "input {} does not end in {} (weight [{}, {}])",
                xv.shape(),
                w.in_features(),
                w.out_features(),
                w.in_features()
            ),
        ));
    }
    let out = if unread {
        let mut od = xv.dims().to_vec();
        *od.last_mut().expect("rank checked above") = w.out_features();
        super::matmul::poison(od, xv.dtype())?
    } else {
        forward_tensor(&xv, w)?
    };
    let w = w.clone();
    let x_shape = xv.shape().clone();
    drop(xv);
    Ok(record("quant_linear", out, &[x], move |g, _, _| {
        Ok(vec![Some(backward_tensor(g, &w, &x_shape)?)])
    }))
}
