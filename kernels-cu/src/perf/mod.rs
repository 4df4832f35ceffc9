//! The GPU performance model: what each launch of a step costs and how long it must take on a
//! given GPU, computed from the launch itself (kernel, grid, block, shared memory, shapes)
//! without running it.
//!
//! - [`trace`]: a recording wrapper around any backend, and a dry-run backend that records a
//!   step's launches at any size without memory or execution;
//! - [`cost`]: hand-derived FLOPs and compulsory bytes per kernel;
//! - [`gpu`]: the GPU table (published peaks, per-SM limits);
//! - [`model`]: occupancy from the ptxas report, waves, per-launch time bounds, step totals;
//! - [`validate`]: launch limits at real sizes (grid, block, shared memory per target, 32-bit
//!   indices);
//! - [`sass`]: the SASS instruction mix of a kernel's main loop and its issue-slot bound;
//! - [`calibration`]: predictions for published measurements, and their error;
//! - [`report`]: the per-kernel and per-launch tables.
//!
//! Every time this module gives is PREDICTED from datasheet peaks and the stated
//! efficiencies; none is measured.

pub mod calibration;
pub mod cost;
pub mod gpu;
pub mod model;
pub mod report;
pub mod sass;
pub mod trace;
pub mod validate;

pub use cost::{cost, Cost};
pub use gpu::{gpu, gpu_for_device, Gpu, GPUS};
pub use model::{estimate, KernelRow, LaunchEstimate, StepEstimate};
pub use trace::{DryRun, LaunchRecord, Recording, Trace};
