//! The engine's error type.

use crate::{DType, Device, Shape};

/// Errors raised by tensor ops, devices and the optimizer.
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

    #[error("{op}: tensors are on different devices ({a} and {b})")]
    DeviceMismatch {
        op: &'static str,
        a: Device,
        b: Device,
    },

    #[error("device {device} is not available: {reason}")]
    DeviceUnavailable { device: Device, reason: String },

    /// Host access (a slice, a CPU kernel) to a tensor whose elements live in device memory.
    #[error(
        "{op}: the tensor is on {device}; its elements are in device memory \
         (copy it to the host first with to_device(Device::Cpu))"
    )]
    NotOnHost { op: &'static str, device: Device },

    /// An op (or a dtype of it) that has no implementation on this device yet.
    #[error("{op} is not implemented on {device} yet: {detail}")]
    Unsupported {
        op: &'static str,
        device: Device,
        detail: String,
    },

    /// A failure of the CUDA device layer (driver, emulator, launch checks, out of memory).
    #[error("{op} on {device}: {source}")]
    Cuda {
        op: &'static str,
        device: Device,
        #[source]
        source: kernels_cu::Error,
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
