//! Merging a LoRA adapter into its base and writing the result as a bf16 Hugging Face
//! checkpoint (PEFT's `merge_and_unload` followed by `save_pretrained`, docs/hf-semantics.md §4.7).
//!
//! For every adapted linear `W ← W + s·B·A` in fp32 (`W [out, in]`, `B [out, r]`,
//! `A [r, in]`, `s = lora_alpha/r`, or `lora_alpha/√r` with rsLoRA), then one rounding to bf16
//! (round to nearest even). A 4-bit base (a bitsandbytes pre-quantized checkpoint) is
//! dequantized exactly as bitsandbytes does first; the result is **not** re-quantized, since
//! that would lose the precision the merge added (docs/hf-semantics.md §6.19).
//!
//! Every other tensor (embedding, LayerNorms, biases, an untied lm_head) is converted to bf16
//! as is. A tied lm_head is not written, as transformers does not write it.
//!
//! Memory: tensors are produced one at a time inside [`write_sharded_checkpoint`]'s fetch
//! callback, so the peak is about one f32 weight plus its bf16 copy besides the mapped files.

use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::Value;

use crate::checkpoint::{
    plan_shards, write_sharded_checkpoint, write_text_atomic, StDType, TensorRole, TensorSpec,
};
use crate::construct::{dequantize_like_bnb, prequantized_weight};
use crate::error::{read_json, FalconError, Result};
use crate::peft::{load_adapter, LoraConfig, LoraPair, LoraWeights};
use crate::FalconCheckpoint;

/// Files besides the weights that `save_pretrained` / the tokenizer put in a checkpoint and
/// that an exported checkpoint carries over unchanged when the source has them.
pub const SIDE_FILES: &[&str] = &[
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
];

/// What an export wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportSummary {
    /// Weight files (shards, then the index if sharded), then config.json and the side files.
    pub files: Vec<PathBuf>,
    /// Tensors written.
    pub tensors: usize,
    /// Bytes of tensor data written.
    pub tensor_bytes: usize,
    /// Number of weight shards.
    pub shards: usize,
    /// Linear modules changed by the adapter (merge) or quantized (quantize).
    pub modules: usize,
}

/// `W += s·B·A` for one adapted linear: `w` is `[out, in]` row-major f32, `B [out, r]`,
/// `A [r, in]`. The product is accumulated in f32 over `r` (as PEFT's fp32 `B @ A`), scaled
/// by `s` in f32 and added once.
pub fn add_lora_delta(w: &mut [f32], pair: &LoraPair, scaling: f64) -> Result<()> {
    let (o, i, r) = (pair.out_features, pair.in_features, pair.r);
    if w.len() != o * i || pair.a.len() != r * i || pair.b.len() != o * r {
        return Err(FalconError::InvalidArgument(format!(
            "LoRA merge: weight has {} values, adapter is r={r} [{i}->{o}] (A {} values, B {})",
            w.len(),
            pair.a.len(),
            pair.b.len()
        )));
    }
    let s = scaling as f32;
    w.par_chunks_mut(i.max(1))
        .zip(pair.b.par_chunks(r.max(1)))
        .for_each(|(row, b_row)| {
            let mut delta = vec![0f32; i];
            for (k, &b) in b_row.iter().enumerate() {
                let a_row = &pair.a[k * i..(k + 1) * i];
                for (d, &a) in delta.iter_mut().zip(a_row) {
                    *d += b * a;
                }
            }
            for (x, d) in row.iter_mut().zip(&delta) {
                *x += s * d;
            }
        });
    Ok(())
}

/// f32 values as little-endian bf16 bytes (round to nearest even).
pub fn f32_to_bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
        .collect()
}

/// The smallest shard limit that splits `specs` into at most `shards` files with
/// [`plan_shards`] (so an export is sharded like its source); `usize::MAX` for one shard.
pub fn shard_limit_for_count(specs: &[TensorSpec], shards: usize) -> usize {
    let total: usize = specs.iter().map(TensorSpec::size_in_bytes).sum();
    if shards <= 1 || total == 0 {
        return usize::MAX;
    }
    // The shard count of the greedy plan never grows with the limit: bisect.
    let (mut lo, mut hi) = (total.div_ceil(shards).max(1), total);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if plan_shards(specs, mid).len() <= shards {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// Refuses to write an export into its own source directory (the source is memory-mapped
/// and would be overwritten while read).
pub(crate) fn check_out_dir(source: &Path, out: &Path) -> Result<()> {
    fs::create_dir_all(out).map_err(|e| FalconError::io(out, e))?;
    let a = fs::canonicalize(source).map_err(|e| FalconError::io(source, e))?;
    let b = fs::canonicalize(out).map_err(|e| FalconError::io(out, e))?;
    if a == b {
        return Err(FalconError::InvalidArgument(format!(
            "{}: the output directory is the source checkpoint; choose another directory",
            out.display()
        )));
    }
    Ok(())
}

/// Copies [`SIDE_FILES`] present in `src` to `out` (each atomically), returning the copies.
pub(crate) fn copy_side_files(src: &Path, out: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for name in SIDE_FILES {
        let from = src.join(name);
        if !from.is_file() {
            continue;
        }
        let to = out.join(name);
        let tmp = out.join(format!(".{name}.tmp-{}", std::process::id()));
        let result = fs::copy(&from, &tmp)
            .map_err(|e| FalconError::io(&from, e))
            .and_then(|_| {
                fs::File::open(&tmp)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| FalconError::io(&tmp, e))
            })
            .and_then(|()| fs::rename(&tmp, &to).map_err(|e| FalconError::io(&to, e)));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result?;
        written.push(to);
    }
    Ok(written)
}

/// Writes `config` (pretty JSON, as transformers) to `out/config.json` atomically.
pub(crate) fn write_config(out: &Path, config: &Value) -> Result<PathBuf> {
    let path = out.join("config.json");
    let mut text = serde_json::to_string_pretty(config)
        .map_err(|e| FalconError::InvalidArgument(format!("cannot serialize config.json: {e}")))?;
    text.push('\n');
    write_text_atomic(&path, &text)?;
    Ok(path)
}

/// Sets the dtype fields of a config.json object: `dtype` (transformers 5.x) and, when the
/// source has it, the older `torch_dtype`.
pub(crate) fn set_dtype(config: &mut Value, dtype: &str) {
    if let Some(obj) = config.as_object_mut() {
        obj.insert("dtype".into(), Value::String(dtype.into()));
        if obj.contains_key("torch_dtype") {
            obj.insert("torch_dtype".into(), Value::String(dtype.into()));
        }
    }
}

/// The tensors a Falcon checkpoint writes (model order, a tied lm_head left out), all in
/// `dtype`.
fn merged_specs(ckpt: &FalconCheckpoint) -> Vec<TensorSpec> {
    ckpt.manifest()
        .iter()
        .map(|t| TensorSpec::new(t.name.clone(), StDType::BF16, t.shape.clone()))
        .collect()
}

/// A stored tensor as f32: dequantized for a 4-bit linear, converted otherwise; refused
/// when it holds a NaN or infinity.
fn base_tensor_f32(ckpt: &FalconCheckpoint, name: &str) -> Result<Vec<f32>> {
    let v = match name
        .strip_suffix(".weight")
        .map(|module| prequantized_weight(ckpt, module))
        .transpose()?
        .flatten()
    {
        Some(q) => dequantize_like_bnb(&q),
        None => ckpt.tensor_f32(name)?.0,
    };
    check_finite(ckpt, name, &v)?;
    Ok(v)
}

fn check_finite(ckpt: &FalconCheckpoint, name: &str, v: &[f32]) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(index) => Err(FalconError::NonFinite {
            path: ckpt.tensor_info(name)?.file.clone(),
            tensor: name.to_string(),
            index,
            value: v[index],
        }),
    }
}

/// Merges `weights` (targets and scaling from `lora`) into `ckpt` and writes a bf16
/// checkpoint to `out`: weights sharded like the source (as many files, or fewer when
/// very unequal tensor sizes make that impossible) unless
/// `max_shard_bytes` is given, HF shard names and index, `config.json` with `dtype: bfloat16`
/// and no `quantization_config`, and the tokenizer and generation config files copied.
/// config.json is written last, so an interrupted merge leaves no loadable half checkpoint.
pub fn merge_adapter(
    ckpt: &FalconCheckpoint,
    lora: &LoraConfig,
    weights: &LoraWeights,
    out: &Path,
    max_shard_bytes: Option<usize>,
) -> Result<ExportSummary> {
    check_out_dir(ckpt.dir(), out)?;
    let modules: Vec<String> = ckpt
        .manifest()
        .iter()
        .filter(|t| matches!(t.role, TensorRole::LinearWeight { .. }))
        .map(|t| t.name.trim_end_matches(".weight").to_string())
        .collect();
    if let Some(extra) = weights.modules.keys().find(|m| !modules.contains(m)) {
        return Err(FalconError::InvalidArgument(format!(
            "adapter has weights for `{extra}`, which is not a linear layer of {}",
            ckpt.dir().display()
        )));
    }
    let scaling = lora.scaling();
    let specs = merged_specs(ckpt);
    let limit =
        max_shard_bytes.unwrap_or_else(|| shard_limit_for_count(&specs, ckpt.files().len()));
    let mut fetch = |spec: &TensorSpec| -> Result<Vec<u8>> {
        let pair = spec
            .name
            .strip_suffix(".weight")
            .and_then(|m| weights.modules.get(m));
        if pair.is_none() && ckpt.tensor_info(&spec.name)?.dtype == StDType::BF16 {
            // Already bf16 and unchanged: the stored bytes are the result, no f32 round trip.
            let raw = ckpt.tensor_raw(&spec.name)?;
            if let Some((index, value)) =
                crate::construct::first_non_finite_le(raw.bytes, engine::DType::BF16)
            {
                return Err(FalconError::NonFinite {
                    path: raw.info.file.clone(),
                    tensor: spec.name.clone(),
                    index,
                    value,
                });
            }
            return Ok(raw.bytes.to_vec());
        }
        let mut w = base_tensor_f32(ckpt, &spec.name)?;
        if let Some(pair) = pair {
            add_lora_delta(&mut w, pair, scaling).map_err(|e| {
                FalconError::InvalidArgument(format!("merging into `{}`: {e}", spec.name))
            })?;
            // Finite inputs can still overflow f32 (or later bf16) in the sum.
            if let Some(i) = w
                .iter()
                .position(|x| !half::bf16::from_f32(*x).to_f32().is_finite())
            {
                return Err(FalconError::InvalidArgument(format!(
                    "merging into `{}`: element {i} becomes {} in bf16; the adapter is too \
                     large for this base",
                    spec.name, w[i]
                )));
            }
        }
        Ok(f32_to_bf16_bytes(&w))
    };
    let mut files = write_sharded_checkpoint(out, &specs, limit, &mut fetch)?;
    let shards = files.len() - usize::from(files.len() > 1);

    files.extend(copy_side_files(ckpt.dir(), out)?);
    let mut config = read_json(&ckpt.dir().join("config.json"))?;
    if let Some(obj) = config.as_object_mut() {
        obj.remove("quantization_config");
    }
    set_dtype(&mut config, "bfloat16");
    files.push(write_config(out, &config)?);
    Ok(ExportSummary {
        files,
        tensors: specs.len(),
        tensor_bytes: specs.iter().map(TensorSpec::size_in_bytes).sum(),
        shards,
        modules: weights.modules.len(),
    })
}

/// [`merge_adapter`] from directories: opens the checkpoint and reads the PEFT adapter
/// (checked against the model) first.
pub fn merge_adapter_dirs(
    model_dir: &Path,
    adapter_dir: &Path,
    out: &Path,
    max_shard_bytes: Option<usize>,
) -> Result<ExportSummary> {
    let ckpt = FalconCheckpoint::open(model_dir)?;
    let (lora, weights) = load_adapter(adapter_dir, ckpt.config())?;
    merge_adapter(&ckpt, &lora, &weights, out, max_shard_bytes)
}
