//! Tensors, devices, autograd, optimizers and the NF4 format.

pub mod nf4;
