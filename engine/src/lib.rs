//! Tensors, devices, autograd, optimizers and the NF4 format.

pub mod dtype;
pub mod nf4;

pub use dtype::DType;
