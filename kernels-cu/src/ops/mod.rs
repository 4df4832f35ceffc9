//! Safe launchers of the kernel families: they check dtypes and lengths, choose the launch
//! shape, and launch. The engine's CUDA device calls these.

pub mod adamw;
pub mod attention;
pub mod convert;
pub mod cross_entropy;
pub mod dropout;
pub mod elementwise;
pub mod gemm;
pub mod layernorm;
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
