//! Reading Hugging Face Falcon checkpoints (safetensors, single file or sharded) and writing
//! sharded safetensors checkpoints.
//!
//! [`FalconCheckpoint::open`] reads `config.json`, maps every safetensors file and checks the
//! stored tensors against the names and shapes the config implies ([`expected_tensors`]),
//! without reading any tensor data. Tensors are then read one at a time
//! ([`FalconCheckpoint::tensor_f32`], [`FalconCheckpoint::tensor_raw`]) so a loader that
//! quantizes layer by layer holds about one layer in host memory besides the mapped files
//! (whose pages the OS can drop).

mod manifest;
mod prequant;
mod safetensors_file;
mod store;
mod writer;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub use manifest::{
    expected_tensors, linear_modules, ExpectedTensor, LinearKind, LinearModule, NormKind,
    TensorRole, EMBEDDING, LM_HEAD,
};
pub use prequant::Bnb4bitModule;
pub use safetensors_file::{decode_f32, SafetensorsFile, StDType, TensorInfo};
pub use store::{TensorStore, INDEX_FILE, SINGLE_FILE};
pub(crate) use writer::write_text_atomic;
pub use writer::{
    plan_shards, shard_file_name, write_safetensors_file, write_sharded_checkpoint, TensorSpec,
};

use crate::config::{AttentionLayout, FalconConfig, NormLayout};
use crate::error::{FalconError, Result};

/// A tensor's bytes as stored (little-endian, row-major), borrowed from the mapped file.
#[derive(Clone, Copy, Debug)]
pub struct RawTensor<'a> {
    pub info: &'a TensorInfo,
    pub bytes: &'a [u8],
}

impl RawTensor<'_> {
    pub fn dtype(&self) -> StDType {
        self.info.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.info.shape
    }
}

/// The raw components of one bitsandbytes 4-bit weight (see [`Bnb4bitModule`]).
#[derive(Clone, Copy, Debug)]
pub struct Bnb4bitTensors<'a> {
    pub module: &'a Bnb4bitModule,
    pub weight: RawTensor<'a>,
    pub absmax: RawTensor<'a>,
    pub quant_map: RawTensor<'a>,
    pub nested_absmax: Option<RawTensor<'a>>,
    pub nested_quant_map: Option<RawTensor<'a>>,
    /// UTF-8 JSON bytes of the packed quant state.
    pub quant_state: RawTensor<'a>,
}

/// A validated Falcon checkpoint directory.
pub struct FalconCheckpoint {
    config: FalconConfig,
    store: TensorStore,
    manifest: Vec<ExpectedTensor>,
    lm_head_stored: bool,
    bnb4bit: BTreeMap<String, Bnb4bitModule>,
}

impl FalconCheckpoint {
    /// Opens `dir` (config.json + safetensors) and checks every tensor name, shape and dtype
    /// against the config. Errors name the file and tensor: a missing tensor, one that is not
    /// part of a Falcon checkpoint of this layout, a wrong shape, a non-float weight, an unknown
    /// dtype, a truncated file, an index that disagrees with its shards.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config = FalconConfig::from_dir(dir)?;
        let store = TensorStore::open(dir)?;
        Self::from_parts(config, store)
    }

    /// Validates an already opened store against a config.
    pub fn from_parts(config: FalconConfig, store: TensorStore) -> Result<Self> {
        let manifest = expected_tensors(&config);
        let linears = linear_modules(&config);
        let mut consumed = BTreeSet::new();
        let bnb4bit = prequant::group_modules(&store, &linears, &mut consumed)?;
        if config.quantization.is_some() && bnb4bit.is_empty() {
            return Err(FalconError::field(
                store.dir().join("config.json"),
                "quantization_config",
                "declares a bitsandbytes 4-bit checkpoint, but no tensor has a `weight.quant_state.bitsandbytes__nf4` / `__fp4` component",
            ));
        }

        for expected in &manifest {
            if let TensorRole::LinearWeight { .. } = expected.role {
                let module = expected.name.trim_end_matches(".weight");
                if bnb4bit.contains_key(module) {
                    continue;
                }
            }
            let info = store
                .get(&expected.name)
                .ok_or_else(|| FalconError::MissingTensor {
                    dir: store.dir().to_path_buf(),
                    tensor: expected.name.clone(),
                    expected: expected.shape.clone(),
                })?;
            check_float(info)?;
            if info.shape != expected.shape {
                return Err(FalconError::ShapeMismatch {
                    path: info.file.clone(),
                    tensor: info.name.clone(),
                    found: info.shape.clone(),
                    expected: expected.shape.clone(),
                });
            }
            consumed.insert(expected.name.clone());
        }

        // A tied lm_head may be stored too (.bin conversions, some safetensors saves); it is
        // then an alias of the embedding and only its shape and dtype are checked.
        let mut lm_head_stored = false;
        if config.tie_word_embeddings {
            if let Some(info) = store.get(LM_HEAD) {
                check_float(info)?;
                let expected = vec![config.vocab_size, config.hidden_size];
                if info.shape != expected {
                    return Err(FalconError::ShapeMismatch {
                        path: info.file.clone(),
                        tensor: info.name.clone(),
                        found: info.shape.clone(),
                        expected,
                    });
                }
                consumed.insert(LM_HEAD.to_string());
                lm_head_stored = true;
            }
        } else {
            lm_head_stored = true;
        }

        if let Some(extra) = store.tensors().find(|t| !consumed.contains(&t.name)) {
            return Err(FalconError::UnexpectedTensor {
                path: extra.file.clone(),
                tensor: extra.name.clone(),
                model: describe_layout(&config),
            });
        }
        Ok(FalconCheckpoint {
            config,
            store,
            manifest,
            lm_head_stored,
            bnb4bit,
        })
    }

    pub fn config(&self) -> &FalconConfig {
        &self.config
    }

    pub fn dir(&self) -> &Path {
        self.store.dir()
    }

    /// The underlying files (for listing shards).
    pub fn store(&self) -> &TensorStore {
        &self.store
    }

    /// The index file, when the checkpoint is sharded.
    pub fn index_path(&self) -> Option<&Path> {
        self.store.index_path()
    }

    /// The safetensors files in shard order.
    pub fn files(&self) -> Vec<PathBuf> {
        self.store.files().map(Path::to_path_buf).collect()
    }

    /// The tensors the model needs, in model order (for a pre-quantized checkpoint the linear
    /// weights are listed with their unquantized shape; see [`Self::bnb4bit_module`]).
    pub fn manifest(&self) -> &[ExpectedTensor] {
        &self.manifest
    }

    /// Every stored tensor (name, dtype, shape, file), sorted by name.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorInfo> {
        self.store.tensors()
    }

    /// Whether `lm_head.weight` is stored (otherwise it reads the tied embedding).
    pub fn lm_head_stored(&self) -> bool {
        self.lm_head_stored
    }

    /// The stored tensor a name reads: `lm_head.weight` of a tied model reads the embedding.
    pub fn resolve<'a>(&self, name: &'a str) -> &'a str {
        if name == LM_HEAD && self.config.tie_word_embeddings {
            EMBEDDING
        } else {
            name
        }
    }

    /// Metadata of one stored tensor (after [`Self::resolve`]).
    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo> {
        self.store
            .get(self.resolve(name))
            .ok_or_else(|| FalconError::UnknownTensor(name.to_string()))
    }

    /// A tensor's stored bytes, without conversion.
    /// Releases the resident pages of a tensor the caller has finished reading.
    pub fn release(&self, name: &str) {
        self.store.release(self.resolve(name));
    }

    pub fn tensor_raw(&self, name: &str) -> Result<RawTensor<'_>> {
        let (info, bytes) = self.store.bytes(self.resolve(name))?;
        Ok(RawTensor { info, bytes })
    }

    /// A float tensor converted to f32 (exact from BF16 / F16 / F32), row-major, with its shape.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let raw = self.tensor_raw(name)?;
        let data =
            decode_f32(raw.info.dtype, raw.bytes).ok_or_else(|| FalconError::WrongDType {
                path: raw.info.file.clone(),
                tensor: raw.info.name.clone(),
                found: raw.info.dtype.to_string(),
                expected: "F32, F16 or BF16".into(),
            })?;
        Ok((data, raw.info.shape.clone()))
    }

    /// Whether the checkpoint holds bitsandbytes pre-quantized 4-bit weights.
    pub fn is_prequantized(&self) -> bool {
        !self.bnb4bit.is_empty()
    }

    /// The pre-quantized modules, by module path.
    pub fn bnb4bit_modules(&self) -> &BTreeMap<String, Bnb4bitModule> {
        &self.bnb4bit
    }

    /// The raw components of one pre-quantized module; `None` if the module is stored
    /// unquantized (or the checkpoint is not pre-quantized).
    pub fn bnb4bit_module(&self, module: &str) -> Result<Option<Bnb4bitTensors<'_>>> {
        let Some(m) = self.bnb4bit.get(module) else {
            return Ok(None);
        };
        let raw = |name: &str| -> Result<RawTensor<'_>> {
            let (info, bytes) = self.store.bytes(name)?;
            Ok(RawTensor { info, bytes })
        };
        Ok(Some(Bnb4bitTensors {
            module: m,
            weight: raw(&m.weight)?,
            absmax: raw(&m.absmax)?,
            quant_map: raw(&m.quant_map)?,
            nested_absmax: m.nested_absmax.as_deref().map(raw).transpose()?,
            nested_quant_map: m.nested_quant_map.as_deref().map(raw).transpose()?,
            quant_state: raw(&m.quant_state)?,
        }))
    }
}

fn check_float(info: &TensorInfo) -> Result<()> {
    if info.dtype.is_weight_float() {
        Ok(())
    } else {
        Err(FalconError::WrongDType {
            path: info.file.clone(),
            tensor: info.name.clone(),
            found: info.dtype.to_string(),
            expected: "F32, F16 or BF16".into(),
        })
    }
}

fn describe_layout(cfg: &FalconConfig) -> String {
    let attn = match cfg.attention {
        AttentionLayout::MultiQuery => "multi-query".to_string(),
        AttentionLayout::Grouped { num_kv_heads } => {
            format!("grouped-KV ({num_kv_heads} KV heads)")
        }
    };
    let norms = match cfg.norms {
        NormLayout::Single => "input_layernorm",
        NormLayout::Separate => "ln_attn/ln_mlp",
    };
    format!(
        "Falcon {} layers, {attn}, {norms}{}",
        cfg.num_hidden_layers,
        if cfg.bias { ", linear biases" } else { "" }
    )
}
