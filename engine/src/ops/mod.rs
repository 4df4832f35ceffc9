//! Differentiable ops. Each module holds one op family: the public op on [`Var`]s, its CPU
//! kernels (generic over f32/f64, so the same code is the float64 reference), and its backward.
//!
//! [`Var`]: crate::Var

pub mod attention;
pub mod attention_kept;
pub mod attention_tiled;
pub mod cross_entropy;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod gelu;
pub mod layernorm;
pub mod lora;
pub mod matmul;
pub mod quant_linear;
pub mod rope;
pub mod shape;

pub use attention::{attention, attention_tokens, attention_tokens_unread};
pub use cross_entropy::{cross_entropy, linear_cross_entropy, IGNORE_INDEX};
pub use dropout::dropout;
pub use elementwise::{add, mul, scale, sum_all};
pub use embedding::embedding;
pub use gelu::gelu;
pub use layernorm::layer_norm;
pub use lora::lora_add;
pub use matmul::{linear, linear_unread, matmul, matmul_t};
pub use quant_linear::{quant_linear, quant_linear_unread};
pub use rope::{rope, rope_tokens, RopeTable};
pub use shape::{concat, narrow, permute, reshape};

/// Runs `$body` with `$T` bound to the Rust float type of `$dtype` (f32 or f64); any other dtype
/// is an error naming the op.
macro_rules! with_float {
    ($dtype:expr, $op:expr, |$T:ident| $body:expr) => {
        match $dtype {
            $crate::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::DType::F64 => {
                type $T = f64;
                $body
            }
            d => {
                return Err($crate::Error::DType {
                    op: $op,
                    dtype: d,
                    expected: "f32 or f64",
                })
            }
        }
    };
}
pub(crate) use with_float;

/// Checks that all tensors share `a`'s dtype.
pub(crate) fn same_dtype(op: &'static str, ts: &[&crate::Tensor]) -> crate::Result<crate::DType> {
    let d = ts[0].dtype();
    for t in ts {
        if t.dtype() != d {
            return Err(crate::Error::invalid(
                op,
                format!("mixed dtypes {d} and {}", t.dtype()),
            ));
        }
    }
    Ok(d)
}

/// `Σ xs` in eight interleaved partial sums, added pairwise at the end: a fixed order (so
/// results do not depend on threads or CPU) that the compiler turns into vector adds, where a
/// single running sum would wait on each add's latency.
pub(crate) fn sum_lanes<T: crate::Float>(xs: &[T]) -> T {
    let mut acc = [T::ZERO; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a += v;
    }
    fold_lanes(acc)
}

/// `Σ xs[i]·ys[i]` in the eight-lane order of [`sum_lanes`].
pub(crate) fn dot_lanes<T: crate::Float>(xs: &[T], ys: &[T]) -> T {
    debug_assert_eq!(xs.len(), ys.len());
    let mut acc = [T::ZERO; 8];
    let (xc, yc) = (xs.chunks_exact(8), ys.chunks_exact(8));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (x, y) in xc.zip(yc) {
        for ((a, &p), &q) in acc.iter_mut().zip(x).zip(y) {
            *a += p * q;
        }
    }
    for ((a, &p), &q) in acc.iter_mut().zip(xr).zip(yr) {
        *a += p * q;
    }
    fold_lanes(acc)
}

/// The eight partial sums of [`sum_lanes`] and [`dot_lanes`], added pairwise.
fn fold_lanes<T: crate::Float>(acc: [T; 8]) -> T {
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}
