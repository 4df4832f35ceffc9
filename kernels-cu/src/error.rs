//! Errors of the device layer.

use crate::DType;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no CUDA driver: libcuda could not be loaded")]
    NoDriver,
    #[error("CUDA device {ordinal} not available: {msg}")]
    NoDevice { ordinal: usize, msg: String },
    #[error("CUDA driver call {call} failed: {msg}")]
    Driver { call: &'static str, msg: String },
    #[error("the emulator is not built into this binary (feature `emulator` is off)")]
    NoEmulator,
    #[error("environment variable {var}={value:?} is not valid: expected {expected}")]
    Env {
        var: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("kernel {kernel} failed in the emulator: {msg}")]
    Emulator { kernel: &'static str, msg: String },
    #[error("kernel {kernel} is not known to the {backend} backend")]
    UnknownKernel {
        kernel: &'static str,
        backend: &'static str,
    },
    #[error("kernel {kernel} takes {expected} arguments, the launch passes {got}")]
    ArgCount {
        kernel: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("kernel {kernel}: argument {index} must be {expected}, the launch passes {got}")]
    ArgType {
        kernel: &'static str,
        index: usize,
        expected: String,
        got: String,
    },
    #[error("kernel {kernel}: invalid launch: {reason}")]
    InvalidLaunch {
        kernel: &'static str,
        reason: String,
    },
    #[error("{what}: the buffer belongs to another device")]
    WrongDevice { what: &'static str },
    #[error("{what}: expected dtype {expected:?}, got {got:?}")]
    DType {
        what: &'static str,
        expected: DType,
        got: DType,
    },
    #[error("{what}: expected {expected} elements, got {got}")]
    Length {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("launch graph: {0}")]
    Capture(String),
    #[error("out of device memory allocating {bytes} bytes: {msg}")]
    OutOfMemory { bytes: usize, msg: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
