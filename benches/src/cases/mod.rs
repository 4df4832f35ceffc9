//! One module per kernel family: the inputs a benchmark times, at any shape (the benchmark's
//! own, or a small one for the tests here, which run the checks on the emulator), and the
//! check of one run against the CPU reference with the kernel tests' tolerances.

pub mod adamw;
pub mod attention;
pub mod convert;
pub mod cross_entropy;
pub mod gemm;
pub mod layernorm;
pub mod pointwise;
pub mod rope;
pub mod skinny;
