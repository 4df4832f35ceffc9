//! Tensors, devices, autograd, optimizers and the NF4 format.
//!
//! - [`Tensor`]: an immutable contiguous host array with shape, dtype and shared storage.
//! - [`Var`]: a tensor in the autograd graph; [`ops`] are differentiable functions of vars.
//! - [`checkpoint`]: activation recompute of a segment (one decoder layer).
//! - [`optim`]: AdamW, gradient clipping, LR schedules with HF Trainer semantics.
//! - [`nf4`]: 4-bit NormalFloat quantization, bit-compatible with bitsandbytes.
//!
//! The engine is the CPU backend and the reference every CUDA kernel is tested against; it does
//! not know about devices. The CUDA training step (model-falcon's `cuda` module) drives
//! kernels-cu's device buffers and launchers directly, as llm.c's `train_gpt2.cu` does, so there
//! is one device layer (kernels-cu) rather than two.

pub mod autograd;
pub mod dtype;
pub mod element;
pub mod error;
pub mod host_alloc;
pub mod memory;
pub mod nf4;
pub mod ops;
pub mod optim;
pub mod rng;
pub mod shape;
pub mod storage;
pub mod tensor;
pub mod testing;
pub mod threads;
pub mod vmath;

pub use autograd::{checkpoint, grad_enabled, no_grad, recomputing, GradStore, Var};
pub use dtype::DType;
pub use element::{Element, Float};
pub use error::{Error, Result};
pub use shape::Shape;
pub use storage::CpuStorage;
pub use tensor::Tensor;
