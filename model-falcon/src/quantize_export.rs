//! Writing a 4-bit checkpoint in the bitsandbytes serialization (docs/nf4-spec.md §4), as
//! transformers' `save_pretrained` writes a model loaded with `load_in_4bit`.
//!
//! Every decoder linear `m` becomes the six tensors of `Linear4bit._save_to_state_dict`, in
//! that order: `m.weight` (U8 `[ceil(n/2), 1]` packed codes), `m.weight.absmax` (U8 codes with
//! double quantization, else F32), `m.weight.quant_map` (F32 `[16]`), with double
//! quantization `m.weight.nested_absmax` (F32) and `m.weight.nested_quant_map` (F32 `[256]`),
//! and `m.weight.quant_state.bitsandbytes__nf4` (or `__fp4`; U8 UTF-8 JSON). The embedding,
//! LayerNorms, biases and an untied lm_head stay unquantized in their stored dtype, as
//! transformers keeps them. config.json gains the `quantization_config` transformers writes.
//!
//! Memory: the packed JSON holds the double-quantization offset, whose printed length is only
//! known after quantizing, and the shard plan needs every size first; so all linears are
//! quantized first (one at a time from the mapped files: peak ≈ quantized size + one source
//! tensor in f32), then written one module at a time, each quantized weight dropped once
//! written.

use std::collections::BTreeMap;
use std::path::Path;

use engine::nf4::{QuantConfig, QuantType, QuantizedWeight, StateTensor};
use serde_json::{json, Value};

use crate::checkpoint::{write_sharded_checkpoint, StDType, TensorRole, TensorSpec};
use crate::error::{read_json, FalconError, Result};
use crate::merge::{
    check_out_dir, copy_side_files, shard_limit_for_count, write_config, ExportSummary,
};
use crate::FalconCheckpoint;

/// The `quantization_config` object transformers 5.x writes for a `BitsAndBytesConfig` with
/// `load_in_4bit=True`, the given quant type and double quantization, uint8 storage, and
/// `bnb_4bit_compute_dtype` = `compute_dtype`.
pub fn bnb_quantization_config(cfg: QuantConfig, compute_dtype: &str) -> Value {
    json!({
        "_load_in_4bit": true,
        "_load_in_8bit": false,
        "bnb_4bit_compute_dtype": compute_dtype,
        "bnb_4bit_quant_storage": "uint8",
        "bnb_4bit_quant_type": cfg.quant_type.name(),
        "bnb_4bit_use_double_quant": cfg.double_quant,
        "llm_int8_enable_fp32_cpu_offload": false,
        "llm_int8_has_fp16_weight": false,
        "llm_int8_skip_modules": null,
        "llm_int8_threshold": 6.0,
        "load_in_4bit": true,
        "load_in_8bit": false,
        "quant_method": "bitsandbytes"
    })
}

fn state_spec(t: &StateTensor) -> TensorSpec {
    TensorSpec::new(
        t.name.clone(),
        StDType::from_engine(t.dtype),
        t.shape.clone(),
    )
}

/// Quantizes every decoder linear of `ckpt` with `cfg` (bitsandbytes' `quantize_4bit`
/// semantics, from the stored bf16/f16/f32 values) and writes the 4-bit checkpoint to `out`:
/// sharded like the source (as many files, or fewer when
/// very unequal tensor sizes make that impossible) unless `max_shard_bytes` is given,
/// config.json with `quantization_config` (compute dtype: the source's `dtype`, bfloat16 when
/// it has none), tokenizer and generation config copied; config.json last. A checkpoint that
/// is already 4-bit is refused.
pub fn quantize_checkpoint(
    ckpt: &FalconCheckpoint,
    out: &Path,
    cfg: QuantConfig,
    max_shard_bytes: Option<usize>,
) -> Result<ExportSummary> {
    if ckpt.is_prequantized() {
        return Err(FalconError::InvalidArgument(format!(
            "{}: the checkpoint is already bitsandbytes 4-bit quantized",
            ckpt.dir().display()
        )));
    }
    check_out_dir(ckpt.dir(), out)?;

    // Pass 1: quantize (one source tensor at a time, read from the mapped files).
    let mut quantized: BTreeMap<String, QuantizedWeight> = BTreeMap::new();
    let mut specs = Vec::new();
    for t in ckpt.manifest() {
        if !matches!(t.role, TensorRole::LinearWeight { .. }) {
            let raw = ckpt.tensor_raw(&t.name)?;
            if let Some(dtype) = raw.dtype().to_engine() {
                refuse_non_finite(raw.bytes, dtype, &raw.info.file, &t.name)?;
            }
            specs.push(TensorSpec::new(
                t.name.clone(),
                raw.dtype(),
                t.shape.clone(),
            ));
            continue;
        }
        let module = t.name.trim_end_matches(".weight").to_string();
        let raw = ckpt.tensor_raw(&t.name)?;
        let dtype = raw
            .dtype()
            .to_engine()
            .ok_or_else(|| FalconError::WrongDType {
                path: raw.info.file.clone(),
                tensor: t.name.clone(),
                found: raw.dtype().to_string(),
                expected: "F32, F16 or BF16".into(),
            })?;
        refuse_non_finite(raw.bytes, dtype, &raw.info.file, &t.name)?;
        let q = QuantizedWeight::quantize_le_bytes(raw.bytes, dtype, t.shape[0], t.shape[1], cfg)
            .map_err(|source| FalconError::Quant {
            tensor: t.name.clone(),
            source,
        })?;
        specs.extend(q.to_state_dict(&module).iter().map(state_spec));
        quantized.insert(module, q);
    }

    // Pass 2: write, one module's state dict at a time.
    let limit =
        max_shard_bytes.unwrap_or_else(|| shard_limit_for_count(&specs, ckpt.files().len()));
    let modules = quantized.len();
    let mut pending: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut fetch = |spec: &TensorSpec| -> Result<Vec<u8>> {
        if let Some(data) = pending.remove(&spec.name) {
            return Ok(data);
        }
        if let Some(module) = spec.name.strip_suffix(".weight") {
            if let Some(q) = quantized.remove(module) {
                for t in q.to_state_dict(module) {
                    pending.insert(t.name, t.data);
                }
                return pending.remove(&spec.name).ok_or_else(|| {
                    FalconError::InvalidArgument(format!("no packed tensor for `{module}`"))
                });
            }
        }
        Ok(ckpt.tensor_raw(&spec.name)?.bytes.to_vec())
    };
    let mut files = write_sharded_checkpoint(out, &specs, limit, &mut fetch)?;
    let shards = files.len() - usize::from(files.len() > 1);

    files.extend(copy_side_files(ckpt.dir(), out)?);
    let mut config = read_json(&ckpt.dir().join("config.json"))?;
    let compute = ckpt
        .config()
        .torch_dtype
        .clone()
        .filter(|d| matches!(d.as_str(), "bfloat16" | "float16" | "float32"))
        .unwrap_or_else(|| "bfloat16".into());
    if let Some(obj) = config.as_object_mut() {
        obj.insert(
            "quantization_config".into(),
            bnb_quantization_config(cfg, &compute),
        );
    }
    files.push(write_config(out, &config)?);
    Ok(ExportSummary {
        files,
        tensors: specs.len(),
        tensor_bytes: specs.iter().map(TensorSpec::size_in_bytes).sum(),
        shards,
        modules,
    })
}

/// A NaN or infinity would make its block's absmax (and so the whole block) NaN, or be
/// hidden by it: refused with the tensor's name before anything is written.
fn refuse_non_finite(
    bytes: &[u8],
    dtype: engine::DType,
    file: &std::path::Path,
    name: &str,
) -> Result<()> {
    match crate::construct::first_non_finite_le(bytes, dtype) {
        None => Ok(()),
        Some((index, value)) => Err(FalconError::NonFinite {
            path: file.to_path_buf(),
            tensor: name.to_string(),
            index,
            value,
        }),
    }
}

/// [`quantize_checkpoint`] from a directory with NF4 or FP4, double quantization on/off,
/// blocksize 64 (what transformers uses for 4-bit).
pub fn quantize_checkpoint_dir(
    model_dir: &Path,
    out: &Path,
    quant_type: QuantType,
    double_quant: bool,
    max_shard_bytes: Option<usize>,
) -> Result<ExportSummary> {
    let ckpt = FalconCheckpoint::open(model_dir)?;
    let cfg = QuantConfig {
        quant_type,
        blocksize: 64,
        double_quant,
    };
    quantize_checkpoint(&ckpt, out, cfg, max_shard_bytes)
}
