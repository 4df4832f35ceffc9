//! LoRA weights in PEFT's `adapter_model.safetensors`.
//!
//! Keys are the PEFT model's state-dict names with the adapter name removed:
//! `base_model.model.<module>.lora_A.weight` with shape `[r, in_features]` and
//! `base_model.model.<module>.lora_B.weight` with shape `[out_features, r]`, fp32, metadata
//! `{"format": "pt"}`. The adapted layer computes `y = x·Wᵀ + s·(dropout(x)·Aᵀ)·Bᵀ`.

use std::collections::BTreeMap;
use std::path::Path;

use super::config::{adapter_err, LoraConfig};
use crate::checkpoint::{
    decode_f32, write_safetensors_file, write_text_atomic, LinearModule, SafetensorsFile, StDType,
    TensorSpec,
};
use crate::config::FalconConfig;
use crate::error::{FalconError, Result};

pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
const KEY_PREFIX: &str = "base_model.model.";

/// `base_model.model.<module>.lora_A.weight`.
pub fn lora_a_key(module: &str) -> String {
    format!("{KEY_PREFIX}{module}.lora_A.weight")
}

/// `base_model.model.<module>.lora_B.weight`.
pub fn lora_b_key(module: &str) -> String {
    format!("{KEY_PREFIX}{module}.lora_B.weight")
}

/// One adapted linear: `A` is `[r, in]`, `B` is `[out, r]`, row-major f32.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraPair {
    pub r: usize,
    pub in_features: usize,
    pub out_features: usize,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
}

impl LoraPair {
    pub fn num_parameters(&self) -> usize {
        self.r * (self.in_features + self.out_features)
    }

    fn check(&self, module: &str) -> Result<()> {
        if self.a.len() != self.r * self.in_features || self.b.len() != self.out_features * self.r {
            return Err(FalconError::InvalidArgument(format!(
                "LoRA weights of `{module}`: A has {} values (expected r·in = {}·{}), B has {} (expected out·r = {}·{})",
                self.a.len(),
                self.r,
                self.in_features,
                self.b.len(),
                self.out_features,
                self.r
            )));
        }
        Ok(())
    }
}

/// All LoRA pairs of an adapter, by module path (e.g. `transformer.h.0.self_attention.dense`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoraWeights {
    pub modules: BTreeMap<String, LoraPair>,
}

impl LoraWeights {
    /// Trainable parameter count (what PEFT prints as "trainable params").
    pub fn num_parameters(&self) -> usize {
        self.modules.values().map(LoraPair::num_parameters).sum()
    }
}

/// Writes `dir/adapter_config.json` and `dir/adapter_model.safetensors` as PEFT's
/// `save_pretrained` does, each file atomically. Every pair must have rank `config.r`.
pub fn save_adapter(
    dir: impl AsRef<Path>,
    config: &LoraConfig,
    weights: &LoraWeights,
) -> Result<()> {
    let dir = dir.as_ref();
    let mut specs = Vec::with_capacity(2 * weights.modules.len());
    let mut data: BTreeMap<String, &[f32]> = BTreeMap::new();
    for (module, pair) in &weights.modules {
        pair.check(module)?;
        if pair.r != config.r {
            return Err(FalconError::InvalidArgument(format!(
                "LoRA weights of `{module}` have rank {}, the config says r = {}",
                pair.r, config.r
            )));
        }
        specs.push(TensorSpec::new(
            lora_a_key(module),
            StDType::F32,
            vec![pair.r, pair.in_features],
        ));
        specs.push(TensorSpec::new(
            lora_b_key(module),
            StDType::F32,
            vec![pair.out_features, pair.r],
        ));
        data.insert(lora_a_key(module), &pair.a);
        data.insert(lora_b_key(module), &pair.b);
    }
    if specs.is_empty() {
        return Err(FalconError::InvalidArgument(
            "an adapter needs at least one LoRA module".into(),
        ));
    }
    // The Python writer orders tensors by dtype, then name; all are f32 here.
    specs.sort_by(|x, y| x.name.cmp(&y.name));
    std::fs::create_dir_all(dir).map_err(|e| FalconError::io(dir, e))?;
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors_file(
        dir.join(ADAPTER_WEIGHTS_FILE),
        &specs,
        &metadata,
        &mut |spec| {
            let values = data.get(&spec.name).ok_or_else(|| {
                FalconError::InvalidArgument(format!("no data for `{}`", spec.name))
            })?;
            Ok(values.iter().flat_map(|x| x.to_le_bytes()).collect())
        },
    )?;
    let mut text = config.to_json_string();
    text.push('\n');
    write_text_atomic(&dir.join(ADAPTER_CONFIG_FILE), &text)
}

/// Reads a PEFT adapter directory for `model` and checks it completely: the config is
/// supported, and the weights hold exactly the lora_A / lora_B pair of every targeted module
/// with shapes `[r, in]` / `[out, r]` in a float dtype (converted to f32).
pub fn load_adapter(
    dir: impl AsRef<Path>,
    model: &FalconConfig,
) -> Result<(LoraConfig, LoraWeights)> {
    let dir = dir.as_ref();
    let config_path = dir.join(ADAPTER_CONFIG_FILE);
    let config = LoraConfig::from_file(&config_path)?;
    let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
    if !weights_path.is_file() {
        let hint = if dir.join("adapter_model.bin").is_file() {
            "; found adapter_model.bin: pickle adapters are not read, save with safetensors"
        } else {
            ""
        };
        return Err(adapter_err(&weights_path, format!("file not found{hint}")));
    }
    let file = SafetensorsFile::open(&weights_path)?;
    let targets = config.targets(model, &config_path)?;
    let mut weights = LoraWeights::default();
    let mut expected_keys = std::collections::BTreeSet::new();
    for target in &targets {
        let pair = read_pair(&file, &weights_path, target, config.r)?;
        expected_keys.insert(lora_a_key(&target.name));
        expected_keys.insert(lora_b_key(&target.name));
        weights.modules.insert(target.name.clone(), pair);
    }
    if let Some(extra) = file.tensors().find(|t| !expected_keys.contains(&t.name)) {
        let hint = if extra.name.contains(".default.") {
            " (keys must not contain the adapter name `default`)"
        } else {
            ""
        };
        return Err(adapter_err(
            &weights_path,
            format!("unexpected tensor `{}`: not a lora_A/lora_B of a module targeted by adapter_config.json{hint}", extra.name),
        ));
    }
    Ok((config, weights))
}

fn read_pair(
    file: &SafetensorsFile,
    path: &Path,
    target: &LinearModule,
    r: usize,
) -> Result<LoraPair> {
    let read = |key: String, shape: [usize; 2]| -> Result<Vec<f32>> {
        let info = file.get(&key).ok_or_else(|| {
            adapter_err(
                path,
                format!("missing tensor `{key}` (expected shape {shape:?})"),
            )
        })?;
        if info.shape != shape {
            return Err(FalconError::ShapeMismatch {
                path: path.to_path_buf(),
                tensor: key,
                found: info.shape.clone(),
                expected: shape.to_vec(),
            });
        }
        let v =
            decode_f32(info.dtype, file.bytes(info)).ok_or_else(|| FalconError::WrongDType {
                path: path.to_path_buf(),
                tensor: key.clone(),
                found: info.dtype.to_string(),
                expected: "F32, F16 or BF16".into(),
            })?;
        // A NaN adapter must not load: eval, generation and merge would run on it silently.
        if let Some(index) = v.iter().position(|x| !x.is_finite()) {
            return Err(FalconError::NonFinite {
                path: path.to_path_buf(),
                tensor: key,
                index,
                value: v[index],
            });
        }
        Ok(v)
    };
    let a = read(lora_a_key(&target.name), [r, target.in_features])?;
    let b = read(lora_b_key(&target.name), [target.out_features, r])?;
    Ok(LoraPair {
        r,
        in_features: target.in_features,
        out_features: target.out_features,
        a,
        b,
    })
}
