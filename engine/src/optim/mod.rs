//! Optimizers over trainable leaves: AdamW, global-norm clipping, learning-rate schedules.

mod adamw;
mod clip;
mod schedule;

pub use adamw::{adamw_update, AdamW, AdamWConfig, AdamWState};
pub use clip::{clip_grad_norm, global_grad_norm};
pub use schedule::{LrSchedule, SchedulerKind};
