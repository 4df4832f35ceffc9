//! The safetensors files of a checkpoint directory: one `model.safetensors`, or the shards
//! listed by `model.safetensors.index.json`, behind one name -> tensor lookup.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::safetensors_file::{SafetensorsFile, TensorInfo};
use crate::error::{read_json, FalconError, Result};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// All tensors of a checkpoint directory, memory-mapped, nothing read yet.
pub struct TensorStore {
    dir: PathBuf,
    files: Vec<SafetensorsFile>,
    /// name -> index into `files`.
    index: BTreeMap<String, usize>,
    index_path: Option<PathBuf>,
}

impl TensorStore {
    /// Opens `dir/model.safetensors.index.json` and its shards if the index exists, otherwise
    /// `dir/model.safetensors`. With an index, the index and the shards must agree exactly:
    /// every listed tensor is in its shard, and every tensor of a shard is listed.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let index_path = dir.join(INDEX_FILE);
        if index_path.is_file() {
            return Self::open_sharded(dir, index_path);
        }
        let single = dir.join(SINGLE_FILE);
        if single.is_file() {
            let file = SafetensorsFile::open(&single)?;
            let index = file.tensors().map(|t| (t.name.clone(), 0)).collect();
            return Ok(TensorStore {
                dir,
                files: vec![file],
                index,
                index_path: None,
            });
        }
        let hint = if dir.join("pytorch_model.bin").is_file()
            || dir.join("pytorch_model.bin.index.json").is_file()
        {
            "; found pytorch_model.bin: pickle checkpoints are not read, convert them to safetensors"
                .to_string()
        } else if !dir.is_dir() {
            " (the directory does not exist)".to_string()
        } else {
            String::new()
        };
        Err(FalconError::NoCheckpoint { dir, hint })
    }

    fn open_sharded(dir: PathBuf, index_path: PathBuf) -> Result<Self> {
        let index_json = read_json(&index_path)?;
        let weight_map = index_json
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| FalconError::Index {
                path: index_path.clone(),
                message: "missing object `weight_map`".into(),
            })?;
        let mut wanted: BTreeMap<String, String> = BTreeMap::new();
        for (name, file) in weight_map {
            let file = file.as_str().ok_or_else(|| FalconError::Index {
                path: index_path.clone(),
                message: format!("weight_map entry for `{name}` is not a file name"),
            })?;
            if file.contains('/') || file.contains('\\') || file == ".." {
                return Err(FalconError::Index {
                    path: index_path.clone(),
                    message: format!("weight_map entry for `{name}` points outside the checkpoint directory: `{file}`"),
                });
            }
            wanted.insert(name.clone(), file.to_string());
        }
        let shard_names: BTreeSet<&String> = wanted.values().collect();
        let mut files = Vec::new();
        let mut file_index: BTreeMap<&str, usize> = BTreeMap::new();
        for shard in shard_names {
            let path = dir.join(shard);
            if !path.is_file() {
                return Err(FalconError::Index {
                    path: index_path.clone(),
                    message: format!(
                        "shard `{shard}` listed in the index does not exist ({})",
                        path.display()
                    ),
                });
            }
            file_index.insert(shard.as_str(), files.len());
            files.push(SafetensorsFile::open(&path)?);
        }
        let mut index = BTreeMap::new();
        for (name, shard) in &wanted {
            let i = file_index[shard.as_str()];
            if files[i].get(name).is_none() {
                return Err(FalconError::Index {
                    path: index_path.clone(),
                    message: format!(
                        "the index puts tensor `{name}` in `{shard}`, which does not contain it"
                    ),
                });
            }
            index.insert(name.clone(), i);
        }
        for (i, file) in files.iter().enumerate() {
            for t in file.tensors() {
                match index.get(&t.name) {
                    Some(&j) if j == i => {}
                    Some(&j) => {
                        return Err(FalconError::DuplicateTensor {
                            tensor: t.name.clone(),
                            first: files[j].path().to_path_buf(),
                            second: file.path().to_path_buf(),
                        })
                    }
                    None => {
                        return Err(FalconError::Index {
                            path: index_path.clone(),
                            message: format!(
                                "tensor `{}` is stored in {} but not listed in the index",
                                t.name,
                                file.path().display()
                            ),
                        })
                    }
                }
            }
        }
        Ok(TensorStore {
            dir,
            files,
            index,
            index_path: Some(index_path),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The index file when the checkpoint is sharded.
    pub fn index_path(&self) -> Option<&Path> {
        self.index_path.as_deref()
    }

    /// The safetensors files, in shard order.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|f| f.path())
    }

    /// Every stored tensor, sorted by name.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorInfo> {
        self.index
            .iter()
            .filter_map(|(name, &i)| self.files[i].get(name))
    }

    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).and_then(|&i| self.files[i].get(name))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The raw bytes of a stored tensor.
    pub fn bytes(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let &i = self
            .index
            .get(name)
            .ok_or_else(|| FalconError::UnknownTensor(name.to_string()))?;
        let file = &self.files[i];
        let info = file
            .get(name)
            .ok_or_else(|| FalconError::UnknownTensor(name.to_string()))?;
        Ok((info, file.bytes(info)))
    }

    /// Drops the resident pages of a tensor that has been consumed (see
    /// [`SafetensorsFile::release`]).
    pub fn release(&self, name: &str) {
        if let Some(&i) = self.index.get(name) {
            if let Some(info) = self.files[i].get(name) {
                self.files[i].release(info);
            }
        }
    }
}
