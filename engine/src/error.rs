//! The engine's error type.

use crate::{DType, Shape};

/// Errors raised by tensor ops and the optimizer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: shape mismatch: {detail}")]
    Shape { op: &'static str, detail: String },

    #[error("{op}: unsupported dtype {dtype} (expected {expected})")]
    DType {
        op: &'static str,
        dtype: DType,
        expected: &'static str,
    },

    #[error("{op}: {detail}")]
    Invalid { op: &'static str, detail: String },

    #[error(transparent)]
    Quant(#[from] crate::nf4::Nf4Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape {
            op,
            detail: detail.into(),
        }
    }

    pub(crate) fn invalid(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Invalid {
            op,
            detail: detail.into(),
        }
    }

    pub(crate) fn shapes(op: &'static str, a: &Shape, b: &Shape) -> Self {
        Error::shape(op, format!("{a} vs {b}"))
    }
}
