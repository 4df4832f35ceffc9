//! Tensors, devices, autograd, optimizers and the NF4 format.
//!
//! - [`Tensor`]: an immutable contiguous array with shape, dtype, device and shared storage.
//! - [`Var`]: a tensor in the autograd graph; [`ops`] are differentiable functions of vars.
//! - [`checkpoint`]: activation recompute of a segment (one decoder layer).
//! - [`optim`]: AdamW, gradient clipping, LR schedules with HF Trainer semantics.
//! - [`nf4`]: 4-bit NormalFloat quantization, bit-compatible with bitsandbytes.
//! - [`cuda`]: the CUDA device (a GPU through the driver, or the host emulator): device
//!   tensors, host<->device copies, and the ops that run there.

pub mod autograd;
pub mod cuda;
pub mod device;
pub mod dtype;
pub mod element;
pub mod error;
pub mod memory;
pub mod nf4;
pub mod ops;
pub mod optim;
pub mod rng;
pub mod shape;
pub mod storage;
pub mod tensor;
pub mod testing;

pub use autograd::{checkpoint, grad_enabled, no_grad, recomputing, GradStore, Var};
pub use device::Device;
pub use dtype::DType;
pub use element::{Element, Float};
pub use error::{Error, Result};
pub use shape::Shape;
pub use storage::CpuStorage;
pub use tensor::Tensor;
