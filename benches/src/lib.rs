//! Benchmarks live in `benches/benches/`; this library holds what the GPU benchmarks share:
//! the harness that opens the device, checks each kernel against its CPU reference before
//! timing it and reports the achieved rate against the device's peak ([`harness`],
//! [`peaks`], [`check`]), and one case per kernel family: inputs at a shape, the reference and
//! the check ([`cases`]).

pub mod cases;
pub mod check;
pub mod harness;
pub mod peaks;

pub use harness::{open_gpu_or_skip, GpuBench, Work};
pub use peaks::{peak_for, Peaks};
