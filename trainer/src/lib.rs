//! The `trainer` binary's library: CLI flags, the training loop, checkpoints, logging and the
//! subcommands. `main.rs` only parses arguments and reports errors.

pub mod args;
pub mod commands;
pub mod demo;
pub mod device;
pub mod lock;
pub mod manifest;
pub mod metrics;
pub mod nonfinite;
pub mod resume_args;
pub mod session;
pub mod sha256;
pub mod signals;
pub mod state;
pub mod train;
pub mod train_cmd;
pub mod validate;
