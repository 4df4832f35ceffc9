//! PEFT LoRA adapters: `adapter_config.json` ([`LoraConfig`]) and `adapter_model.safetensors`
//! ([`LoraWeights`]), read and written exactly as PEFT does, and PEFT's choice of target
//! modules.

mod config;
mod weights;

pub use config::{InitLoraWeights, LoraConfig, TargetModules, PEFT_FORMAT_VERSION};
pub use weights::{
    load_adapter, lora_a_key, lora_b_key, save_adapter, LoraPair, LoraWeights, ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
};
