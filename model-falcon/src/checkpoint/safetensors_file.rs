//! One safetensors file, memory-mapped, with its header parsed and checked.
//!
//! Format: an 8-byte little-endian header length `n`, `n` bytes of JSON
//! `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {..}}`, then the data
//! section; offsets are relative to the start of the data section and tensors are stored
//! row-major, little-endian. The header is parsed here (not by the safetensors crate) so that
//! an unknown dtype or a truncated file is reported with the tensor it concerns.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rayon::prelude::*;
use serde_json::Value;

use crate::error::{FalconError, Result};

/// Largest header accepted (the safetensors reference implementation uses the same limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Element types a safetensors file can declare (whole-byte types only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StDType {
    Bool,
    U8,
    I8,
    F8E5M2,
    F8E4M3,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
}

impl StDType {
    /// Parses the header's dtype string; `None` for types this crate does not know.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "BOOL" => StDType::Bool,
            "U8" => StDType::U8,
            "I8" => StDType::I8,
            "F8_E5M2" => StDType::F8E5M2,
            "F8_E4M3" => StDType::F8E4M3,
            "I16" => StDType::I16,
            "U16" => StDType::U16,
            "F16" => StDType::F16,
            "BF16" => StDType::BF16,
            "I32" => StDType::I32,
            "U32" => StDType::U32,
            "F32" => StDType::F32,
            "F64" => StDType::F64,
            "I64" => StDType::I64,
            "U64" => StDType::U64,
            _ => return None,
        })
    }

    /// The header's name of this type.
    pub fn name(self) -> &'static str {
        match self {
            StDType::Bool => "BOOL",
            StDType::U8 => "U8",
            StDType::I8 => "I8",
            StDType::F8E5M2 => "F8_E5M2",
            StDType::F8E4M3 => "F8_E4M3",
            StDType::I16 => "I16",
            StDType::U16 => "U16",
            StDType::F16 => "F16",
            StDType::BF16 => "BF16",
            StDType::I32 => "I32",
            StDType::U32 => "U32",
            StDType::F32 => "F32",
            StDType::F64 => "F64",
            StDType::I64 => "I64",
            StDType::U64 => "U64",
        }
    }

    pub fn size_in_bytes(self) -> usize {
        match self {
            StDType::Bool | StDType::U8 | StDType::I8 | StDType::F8E5M2 | StDType::F8E4M3 => 1,
            StDType::I16 | StDType::U16 | StDType::F16 | StDType::BF16 => 2,
            StDType::I32 | StDType::U32 | StDType::F32 => 4,
            StDType::F64 | StDType::I64 | StDType::U64 => 8,
        }
    }

    /// Float types a model weight may be stored in (and that [`decode_f32`] converts).
    pub fn is_weight_float(self) -> bool {
        matches!(self, StDType::F32 | StDType::F16 | StDType::BF16)
    }

    /// The engine's element type for this storage type, where there is one.
    pub fn to_engine(self) -> Option<engine::DType> {
        Some(match self {
            StDType::F64 => engine::DType::F64,
            StDType::F32 => engine::DType::F32,
            StDType::BF16 => engine::DType::BF16,
            StDType::F16 => engine::DType::F16,
            StDType::I32 => engine::DType::I32,
            StDType::U32 => engine::DType::U32,
            StDType::U8 => engine::DType::U8,
            _ => return None,
        })
    }

    /// The safetensors type of an engine element type.
    pub fn from_engine(dtype: engine::DType) -> Self {
        match dtype {
            engine::DType::F64 => StDType::F64,
            engine::DType::F32 => StDType::F32,
            engine::DType::BF16 => StDType::BF16,
            engine::DType::F16 => StDType::F16,
            engine::DType::I32 => StDType::I32,
            engine::DType::U32 => StDType::U32,
            engine::DType::U8 => StDType::U8,
        }
    }
}

impl std::fmt::Display for StDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One tensor as the header describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: StDType,
    /// Row-major shape; `[]` for a scalar.
    pub shape: Vec<usize>,
    /// The file holding the tensor.
    pub file: PathBuf,
    /// Absolute byte range of the data inside `file`.
    pub(crate) begin: usize,
    pub(crate) end: usize,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn size_in_bytes(&self) -> usize {
        self.end - self.begin
    }
}

/// A memory-mapped safetensors file whose header has been validated: every tensor has a known
/// dtype, a byte size equal to `numel · dtype size`, no overlap with another tensor, and lies
/// inside the file.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    tensors: BTreeMap<String, TensorInfo>,
    metadata: BTreeMap<String, String>,
}

impl SafetensorsFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| FalconError::io(&path, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| FalconError::io(&path, e))?
            .len();
        if file_len < 8 {
            return Err(FalconError::Header {
                path,
                message: format!(
                    "file is truncated: {file_len} bytes, shorter than the 8-byte header length"
                ),
            });
        }
        // SAFETY: the map is read-only and lives as long as `self`. Like every mmap-based
        // loader we rely on the checkpoint file not being truncated or rewritten by another
        // process while it is open; all offsets are checked against the length seen here.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| FalconError::io(&path, e))?;
        let mut len_bytes = [0u8; 8];
        len_bytes.copy_from_slice(&mmap[..8]);
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_HEADER_BYTES {
            return Err(FalconError::Header {
                path,
                message: format!("header length {header_len} is larger than the {MAX_HEADER_BYTES} bytes allowed; not a safetensors file?"),
            });
        }
        if 8 + header_len > file_len {
            return Err(FalconError::Header {
                path,
                message: format!(
                    "file is truncated: the header needs {} bytes but the file holds {file_len}",
                    8 + header_len
                ),
            });
        }
        let data_start = 8 + header_len as usize;
        let header: Value =
            serde_json::from_slice(&mmap[8..data_start]).map_err(|e| FalconError::Header {
                path: path.clone(),
                message: format!("header is not valid JSON: {e}"),
            })?;
        let obj = header.as_object().ok_or_else(|| FalconError::Header {
            path: path.clone(),
            message: "header is not a JSON object".into(),
        })?;

        let mut tensors = BTreeMap::new();
        let mut metadata = BTreeMap::new();
        for (name, entry) in obj {
            if name == "__metadata__" {
                if let Some(m) = entry.as_object() {
                    for (k, v) in m {
                        if let Some(s) = v.as_str() {
                            metadata.insert(k.clone(), s.to_string());
                        }
                    }
                }
                continue;
            }
            let info = parse_entry(&path, name, entry, data_start)?;
            tensors.insert(name.clone(), info);
        }

        // Check bounds in file order so that a truncated file names the first tensor cut off.
        let mut by_offset: Vec<&TensorInfo> = tensors.values().collect();
        by_offset.sort_by_key(|t| (t.begin, t.end));
        let data_len = file_len - data_start as u64;
        let mut prev: Option<&TensorInfo> = None;
        for t in by_offset {
            if t.end as u64 > file_len {
                return Err(FalconError::Truncated {
                    path,
                    tensor: t.name.clone(),
                    needed: (t.end - data_start) as u64,
                    available: data_len,
                });
            }
            if let Some(p) = prev {
                if t.begin < p.end && t.begin != t.end {
                    return Err(FalconError::Header {
                        path,
                        message: format!("tensors `{}` and `{}` overlap", p.name, t.name),
                    });
                }
            }
            prev = Some(t);
        }
        Ok(SafetensorsFile {
            path,
            mmap,
            tensors,
            metadata,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensors sorted by name.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorInfo> {
        self.tensors.values()
    }

    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// The `__metadata__` string map (e.g. `{"format": "pt"}`).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The raw little-endian bytes of a tensor of this file.
    pub fn bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.mmap[info.begin..info.end]
    }

    /// Tells the kernel that a tensor's pages are no longer needed, so a checkpoint read once
    /// tensor by tensor does not stay resident (a 14 GB checkpoint would otherwise count fully
    /// toward the process's RSS while quantizing it). Reading the tensor again later is still
    /// correct: the pages are read back from the file. Best effort: errors are ignored.
    pub fn release(&self, info: &TensorInfo) {
        #[cfg(unix)]
        {
            // SAFETY: MADV_DONTNEED on a read-only private file mapping only drops clean pages;
            // later reads fault them back in from the unchanged file, so every slice handed
            // out by `bytes` keeps reading the same values.
            let _ = unsafe {
                self.mmap.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    info.begin,
                    info.end - info.begin,
                )
            };
        }
        #[cfg(not(unix))]
        let _ = info;
    }
}

fn parse_entry(path: &Path, name: &str, entry: &Value, data_start: usize) -> Result<TensorInfo> {
    let bad = |message: String| FalconError::Header {
        path: path.to_path_buf(),
        message: format!("tensor `{name}`: {message}"),
    };
    let dtype_name = entry
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("missing string field `dtype`".into()))?;
    let dtype = StDType::from_name(dtype_name).ok_or_else(|| FalconError::UnknownDType {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        dtype: dtype_name.to_string(),
    })?;
    let shape = entry
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("missing array field `shape`".into()))?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| bad("`shape` must hold non-negative integers".into()))?;
    let offsets = entry
        .get("data_offsets")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("missing array field `data_offsets`".into()))?;
    let (begin, end) = match offsets.as_slice() {
        [a, b] => match (a.as_u64(), b.as_u64()) {
            (Some(a), Some(b)) if a <= b => (a as usize, b as usize),
            _ => return Err(bad(format!("bad data_offsets {offsets:?}"))),
        },
        _ => {
            return Err(bad(format!(
                "data_offsets must be [begin, end], found {offsets:?}"
            )))
        }
    };
    let numel = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    let expected_bytes = numel
        .checked_mul(dtype.size_in_bytes())
        .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    if end - begin != expected_bytes {
        return Err(bad(format!(
            "data_offsets [{begin}, {end}] span {} bytes but shape {shape:?} of {dtype} needs {expected_bytes}",
            end - begin
        )));
    }
    Ok(TensorInfo {
        name: name.to_string(),
        dtype,
        shape,
        file: path.to_path_buf(),
        begin: data_start + begin,
        end: data_start + end,
    })
}

/// Elements converted per parallel task: large enough to amortize scheduling, small enough to
/// spread a 4544x18176 weight over all cores.
const CONVERT_CHUNK: usize = 1 << 16;

/// Converts little-endian F32 / F16 / BF16 bytes to f32 (exact: every F16 and BF16 value is
/// representable in f32). Returns `None` for other dtypes.
pub fn decode_f32(dtype: StDType, bytes: &[u8]) -> Option<Vec<f32>> {
    let size = dtype.size_in_bytes();
    let n = bytes.len() / size;
    let mut out = vec![0f32; n];
    match dtype {
        StDType::F32 => out
            .par_chunks_mut(CONVERT_CHUNK)
            .zip(bytes.par_chunks(CONVERT_CHUNK * 4))
            .for_each(|(o, b)| {
                for (x, c) in o.iter_mut().zip(b.chunks_exact(4)) {
                    *x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }),
        StDType::BF16 => out
            .par_chunks_mut(CONVERT_CHUNK)
            .zip(bytes.par_chunks(CONVERT_CHUNK * 2))
            .for_each(|(o, b)| {
                for (x, c) in o.iter_mut().zip(b.chunks_exact(2)) {
                    *x = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }),
        StDType::F16 => out
            .par_chunks_mut(CONVERT_CHUNK)
            .zip(bytes.par_chunks(CONVERT_CHUNK * 2))
            .for_each(|(o, b)| {
                for (x, c) in o.iter_mut().zip(b.chunks_exact(2)) {
                    *x = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }),
        _ => return None,
    }
    Some(out)
}
