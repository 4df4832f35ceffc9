//! Falcon-family causal LMs on top of `engine`.

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod peft;
pub mod tokenizer;

pub use checkpoint::FalconCheckpoint;
pub use config::{AttentionLayout, BnbQuantizationConfig, FalconConfig, NormLayout};
pub use error::{FalconError, Result};
pub use tokenizer::FalconTokenizer;
