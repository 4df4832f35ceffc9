//! Writing safetensors files and sharded checkpoints the way transformers' `save_pretrained`
//! lays them out: `model.safetensors` when everything fits one shard, otherwise
//! `model-00001-of-0000N.safetensors` … plus `model.safetensors.index.json`
//! (`{"metadata": {"total_size", "total_parameters"}, "weight_map": {name: file}}`).
//!
//! Tensor data is pulled one tensor at a time from a callback, so a merge can produce each
//! weight just before it is written. Files are written under temporary names and renamed into
//! place only when complete (the index last), so a reader never sees a half-written checkpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};

use super::safetensors_file::StDType;
use super::store::{INDEX_FILE, SINGLE_FILE};
use crate::error::{FalconError, Result};

/// Name, dtype and shape of a tensor to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: StDType,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, dtype: StDType, shape: Vec<usize>) -> Self {
        TensorSpec {
            name: name.into(),
            dtype,
            shape,
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn size_in_bytes(&self) -> usize {
        self.numel() * self.dtype.size_in_bytes()
    }
}

/// Splits tensors, in the given order, into shards of at most `max_shard_bytes` of tensor data:
/// a new shard starts when the next tensor would overflow the current one; a tensor larger than
/// the limit gets a shard of its own (as transformers does).
pub fn plan_shards(specs: &[TensorSpec], max_shard_bytes: usize) -> Vec<Vec<usize>> {
    let mut shards: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut current_bytes = 0usize;
    for (i, spec) in specs.iter().enumerate() {
        let size = spec.size_in_bytes();
        if !current.is_empty() && current_bytes + size > max_shard_bytes {
            shards.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current.push(i);
        current_bytes += size;
    }
    if !current.is_empty() {
        shards.push(current);
    }
    shards
}

/// `model-00001-of-00002.safetensors` for `index = 1, total = 2` (1-based, as transformers).
pub fn shard_file_name(index: usize, total: usize) -> String {
    format!("model-{index:05}-of-{total:05}.safetensors")
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn tmp_suffix() -> String {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("tmp-{}-{n}", std::process::id())
}

/// Writes one safetensors file atomically (temporary file in the same directory, fsync,
/// rename). `fetch` is called once per spec, in order, and must return exactly
/// `spec.size_in_bytes()` little-endian bytes.
pub fn write_safetensors_file(
    path: impl AsRef<Path>,
    specs: &[TensorSpec],
    metadata: &BTreeMap<String, String>,
    fetch: &mut dyn FnMut(&TensorSpec) -> Result<Vec<u8>>,
) -> Result<()> {
    let path = path.as_ref();
    check_specs(specs)?;
    let name = path.file_name().ok_or_else(|| {
        FalconError::InvalidArgument(format!("{} is not a file path", path.display()))
    })?;
    let tmp = path.with_file_name(format!(".{}.{}", name.to_string_lossy(), tmp_suffix()));
    let result = write_file_at(&tmp, specs, metadata, fetch)
        .and_then(|()| fs::rename(&tmp, path).map_err(|e| FalconError::io(path, e)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes a checkpoint's tensors into `dir` as transformers would: one `model.safetensors` if
/// all fit in `max_shard_bytes`, otherwise numbered shards plus `model.safetensors.index.json`.
/// Everything is written into a temporary directory inside `dir` first and renamed into place
/// (shards first, index last); shards of an earlier save with other names are then removed.
/// Returns the files written.
pub fn write_sharded_checkpoint(
    dir: impl AsRef<Path>,
    specs: &[TensorSpec],
    max_shard_bytes: usize,
    fetch: &mut dyn FnMut(&TensorSpec) -> Result<Vec<u8>>,
) -> Result<Vec<PathBuf>> {
    let dir = dir.as_ref();
    check_specs(specs)?;
    if max_shard_bytes == 0 {
        return Err(FalconError::InvalidArgument(
            "max_shard_bytes must be positive".into(),
        ));
    }
    fs::create_dir_all(dir).map_err(|e| FalconError::io(dir, e))?;
    let tmp_dir = dir.join(format!(".{}", tmp_suffix()));
    fs::create_dir(&tmp_dir).map_err(|e| FalconError::io(&tmp_dir, e))?;
    let result = write_into(dir, &tmp_dir, specs, max_shard_bytes, fetch);
    let _ = fs::remove_dir_all(&tmp_dir);
    result
}

fn write_into(
    dir: &Path,
    tmp_dir: &Path,
    specs: &[TensorSpec],
    max_shard_bytes: usize,
    fetch: &mut dyn FnMut(&TensorSpec) -> Result<Vec<u8>>,
) -> Result<Vec<PathBuf>> {
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let shards = plan_shards(specs, max_shard_bytes);
    let total = shards.len();
    let mut names = Vec::with_capacity(total);
    let mut weight_map = BTreeMap::new();
    for (i, shard) in shards.iter().enumerate() {
        let name = if total == 1 {
            SINGLE_FILE.to_string()
        } else {
            shard_file_name(i + 1, total)
        };
        let shard_specs: Vec<TensorSpec> = shard.iter().map(|&j| specs[j].clone()).collect();
        write_file_at(&tmp_dir.join(&name), &shard_specs, &metadata, fetch)?;
        for s in &shard_specs {
            weight_map.insert(s.name.clone(), Value::String(name.clone()));
        }
        names.push(name);
    }
    if total > 1 {
        let total_size: usize = specs.iter().map(TensorSpec::size_in_bytes).sum();
        let total_parameters: usize = specs.iter().map(TensorSpec::numel).sum();
        let index = json!({
            "metadata": {"total_parameters": total_parameters, "total_size": total_size},
            "weight_map": weight_map,
        });
        let mut text = serde_json::to_string_pretty(&index).map_err(|e| {
            FalconError::InvalidArgument(format!("cannot serialize the index: {e}"))
        })?;
        text.push('\n');
        let path = tmp_dir.join(INDEX_FILE);
        write_bytes_synced(&path, text.as_bytes())?;
        names.push(INDEX_FILE.to_string());
    }
    let mut written = Vec::with_capacity(names.len());
    for name in &names {
        let target = dir.join(name);
        fs::rename(tmp_dir.join(name), &target).map_err(|e| FalconError::io(&target, e))?;
        written.push(target);
    }
    remove_stale_files(dir, &names.iter().cloned().collect())?;
    Ok(written)
}

/// Removes weight files of a previous save that the new one does not use, so the directory
/// does not hold two inconsistent checkpoints.
fn remove_stale_files(dir: &Path, keep: &BTreeSet<String>) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| FalconError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| FalconError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_weights = name == SINGLE_FILE
            || name == INDEX_FILE
            || (name.starts_with("model-")
                && name.contains("-of-")
                && name.ends_with(".safetensors"));
        if is_weights && !keep.contains(&name) {
            let path = entry.path();
            fs::remove_file(&path).map_err(|e| FalconError::io(&path, e))?;
        }
    }
    Ok(())
}

fn check_specs(specs: &[TensorSpec]) -> Result<()> {
    let mut seen = BTreeSet::new();
    for s in specs {
        if s.name == "__metadata__" || s.name.is_empty() {
            return Err(FalconError::InvalidArgument(format!(
                "invalid tensor name `{}`",
                s.name
            )));
        }
        if !seen.insert(s.name.as_str()) {
            return Err(FalconError::InvalidArgument(format!(
                "tensor `{}` given twice",
                s.name
            )));
        }
    }
    Ok(())
}

/// Header JSON padded with spaces so that the data section starts 8-byte aligned.
fn header_bytes(specs: &[TensorSpec], metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let mut obj = serde_json::Map::new();
    if !metadata.is_empty() {
        obj.insert("__metadata__".into(), json!(metadata));
    }
    let mut offset = 0usize;
    for s in specs {
        let end = offset + s.size_in_bytes();
        obj.insert(
            s.name.clone(),
            json!({"dtype": s.dtype.name(), "shape": s.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut bytes = serde_json::to_vec(&Value::Object(obj))
        .map_err(|e| FalconError::InvalidArgument(format!("cannot serialize a header: {e}")))?;
    while (bytes.len() + 8) % 8 != 0 {
        bytes.push(b' ');
    }
    Ok(bytes)
}

fn write_file_at(
    path: &Path,
    specs: &[TensorSpec],
    metadata: &BTreeMap<String, String>,
    fetch: &mut dyn FnMut(&TensorSpec) -> Result<Vec<u8>>,
) -> Result<()> {
    let header = header_bytes(specs, metadata)?;
    let file = File::create(path).map_err(|e| FalconError::io(path, e))?;
    let mut w = BufWriter::new(file);
    let io = |e| FalconError::io(path, e);
    w.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(&header).map_err(io)?;
    for s in specs {
        let data = fetch(s)?;
        if data.len() != s.size_in_bytes() {
            return Err(FalconError::InvalidArgument(format!(
                "tensor `{}`: {} bytes given, {:?} of {} needs {}",
                s.name,
                data.len(),
                s.shape,
                s.dtype,
                s.size_in_bytes()
            )));
        }
        w.write_all(&data).map_err(io)?;
    }
    let file = w
        .into_inner()
        .map_err(|e| FalconError::io(path, e.into_error()))?;
    file.sync_all().map_err(io)
}

fn write_bytes_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::create(path).map_err(|e| FalconError::io(path, e))?;
    file.write_all(bytes)
        .map_err(|e| FalconError::io(path, e))?;
    file.sync_all().map_err(|e| FalconError::io(path, e))
}

/// Writes a small text file atomically (temporary file, fsync, rename).
pub(crate) fn write_text_atomic(path: &Path, text: &str) -> Result<()> {
    let name = path.file_name().ok_or_else(|| {
        FalconError::InvalidArgument(format!("{} is not a file path", path.display()))
    })?;
    let tmp = path.with_file_name(format!(".{}.{}", name.to_string_lossy(), tmp_suffix()));
    let result = write_bytes_synced(&tmp, text.as_bytes())
        .and_then(|()| fs::rename(&tmp, path).map_err(|e| FalconError::io(path, e)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
