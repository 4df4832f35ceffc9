//! The `trainer` binary's library: CLI flags, the training loop, checkpoints, logging and the
//! subcommands. `main.rs` only parses arguments and reports errors.

pub mod accuracy;
pub mod args;
pub mod best_model;
pub mod chat_data;
pub mod commands;
pub mod demo;
pub mod device;
pub mod distributed;
pub mod gen_device;
pub mod lock;
pub mod manifest;
pub mod metrics;
pub mod model_card;
pub mod nonfinite;
pub mod output_dir;
pub mod plot;
pub mod ram_check;
pub mod resume_args;
pub mod run_defaults;
pub mod run_record;
pub mod session;
pub mod sha256;
pub mod signals;
pub mod state;
pub mod tensorboard;
pub mod train;
pub mod train_cmd;
pub mod validate;
