//! Falcon-family causal LMs on top of `engine`.

pub mod backend;
pub mod checkpoint;
pub mod config;
pub mod construct;
pub mod cuda;
pub mod error;
pub mod generate;
pub mod layers;
pub mod lora;
pub mod merge;
pub mod model;
pub mod peft;
pub mod quantize_export;
pub mod tokenizer;

pub use backend::{Backend, DeviceRequest};
pub use checkpoint::FalconCheckpoint;
pub use config::{AttentionLayout, BnbQuantizationConfig, FalconConfig, NormLayout};
pub use construct::{
    attach_lora, dequantize_like_bnb, load_lora, load_model, lora_weights, prequantized_weight,
    random_model, BaseOptions, QuantMode,
};
pub use cuda::CudaFalcon;
pub use error::{FalconError, Result};
pub use generate::{Generated, GenerationConfig, Sampling};
pub use model::FalconModel;
pub use tokenizer::FalconTokenizer;
