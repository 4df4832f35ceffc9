//! Helpers shared by the integration tests: fixture paths, scratch directories, rewriting
//! safetensors files to build corrupted checkpoints.
#![allow(dead_code)]

pub mod bf16_model;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use model_falcon::checkpoint::{write_safetensors_file, SafetensorsFile, TensorSpec};
use serde_json::Value;

/// `tests/fixtures/falcon` at the workspace root.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/falcon")
}

pub fn checkpoint_dir(layout: &str) -> PathBuf {
    fixtures().join(layout).join("checkpoint")
}

pub fn read_json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

/// A scratch directory removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "model-falcon-test-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Copies the files of `src` (not recursive) into a fresh scratch directory.
pub fn copy_dir(src: &Path, tag: &str) -> Scratch {
    let s = Scratch::new(tag);
    for entry in fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            fs::copy(entry.path(), s.path().join(entry.file_name())).unwrap();
        }
    }
    s
}

/// All tensors of a safetensors file as (spec, bytes), in name order.
pub fn read_all(path: &Path) -> Vec<(TensorSpec, Vec<u8>)> {
    let f = SafetensorsFile::open(path).unwrap();
    f.tensors()
        .map(|t| {
            (
                TensorSpec::new(t.name.clone(), t.dtype, t.shape.clone()),
                f.bytes(t).to_vec(),
            )
        })
        .collect()
}

/// Writes tensors (spec, bytes) as a safetensors file.
pub fn write_all(path: &Path, tensors: &[(TensorSpec, Vec<u8>)]) {
    let specs: Vec<TensorSpec> = tensors.iter().map(|(s, _)| s.clone()).collect();
    let data: BTreeMap<String, Vec<u8>> = tensors
        .iter()
        .map(|(s, b)| (s.name.clone(), b.clone()))
        .collect();
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors_file(path, &specs, &meta, &mut |s| Ok(data[&s.name].clone())).unwrap();
}

/// Rewrites the JSON header of a safetensors file in place, keeping the data section.
pub fn rewrite_header(path: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let bytes = fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(header.as_object_mut().unwrap());
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&bytes[8 + n..]);
    fs::write(path, out).unwrap();
}

/// Little-endian f32 bytes.
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Deterministic pseudo-random values in [-1, 1) (splitmix64), never all zero.
pub fn random_f32(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// The error message of a result that must fail.
pub fn err_msg<T>(r: model_falcon::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}
