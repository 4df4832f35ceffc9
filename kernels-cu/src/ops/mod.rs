//! Safe launchers of the kernel families: they check dtypes and lengths, choose the launch
//! shape, and launch. The engine's CUDA device calls these.

pub mod adamw;
pub mod attention;
pub mod convert;
pub mod cross_entropy;
pub mod decode;
pub mod dropout;
pub mod elementwise;
pub mod gemm;
pub mod layernorm;
pub mod nf4_layout;
pub mod pointwise;
pub mod reduce;
pub mod rope;
pub mod skinny;

use crate::error::{Error, Result};
use crate::{Buffer, DType};

/// Threads per block of the elementwise and reduction kernels.
pub const BLOCK: u32 = 256;

fn n_i32(what: &'static str, n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| Error::Length {
        what,
        expected: i32::MAX as usize,
        got: n,
    })
}

/// Checks a launcher argument's dtype and element count, naming it in the error.
pub(crate) fn check(what: &'static str, b: &Buffer, dtype: DType, len: usize) -> Result<()> {
    if b.dtype() != dtype {
        return Err(Error::DType {
            what,
            expected: dtype,
            got: b.dtype(),
        });
    }
    if b.len() != len {
        return Err(Error::Length {
            what,
            expected: len,
            got: b.len(),
        });
    }
    Ok(())
}

fn same(what: &'static str, a: &Buffer, b: &Buffer) -> Result<()> {
    if a.dtype() != b.dtype() {
        return Err(Error::DType {
            what,
            expected: a.dtype(),
            got: b.dtype(),
        });
    }
    if a.len() != b.len() {
        return Err(Error::Length {
            what,
            expected: a.len(),
            got: b.len(),
        });
    }
    Ok(())
}

/// Split-K factor for a grid of `groups` independent output blocks on `sms` SMs (0: unknown,
/// no split): the factor in `1..=max` that minimizes the predicted time
/// `⌈groups·s / sms⌉ / s · (1 + overhead·(s − 1))` (SM waves per unit of work, each split beyond
/// the first costing `overhead` for its partial planes), the smallest on ties, trying factors
/// in increasing order while `allowed(s)` holds. Splitting pays only where the last wave of
/// the unsplit grid is mostly empty (wave quantization).
fn wave_split(
    groups: usize,
    sms: usize,
    max: usize,
    overhead: f64,
    allowed: impl Fn(usize) -> bool,
) -> usize {
    if sms == 0 || groups == 0 {
        return 1;
    }
    let cost =
        |s: usize| (groups * s).div_ceil(sms) as f64 / s as f64 * (1.0 + overhead * (s - 1) as f64);
    let mut best = 1;
    for s in 2..=max {
        if !allowed(s) {
            break;
        }
        if cost(s) < cost(best) - 1e-12 {
            best = s;
        }
    }
    best
}

fn float_dtype(what: &'static str, b: &Buffer) -> Result<()> {
    match b.dtype() {
        DType::F32 | DType::BF16 => Ok(()),
        got => Err(Error::DType {
            what,
            expected: DType::F32,
            got,
        }),
    }
}
