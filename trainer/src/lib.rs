//! The `trainer` binary's library: CLI flags, the training loop, checkpoints, logging and the
//! subcommands. `main.rs` only parses arguments and reports errors.

pub mod args;
pub mod commands;
pub mod demo;
pub mod device;
pub mod metrics;
pub mod session;
pub mod state;
pub mod train;
pub mod train_cmd;
