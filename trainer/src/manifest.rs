//! `manifest.json` of a checkpoint: the size and SHA-256 of every other file in it, written
//! last, so that resume can tell a complete, unmodified checkpoint from one that was
//! truncated, edited or bit-rotted, before trusting any of it.

use crate::sha256::{to_hex, Sha256};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

pub const MANIFEST_FILE: &str = "manifest.json";
const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub files: BTreeMap<String, FileEntry>,
}

fn hash_file(path: &Path) -> Result<FileEntry> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(FileEntry {
        bytes,
        sha256: to_hex(&h.finish()),
    })
}

/// Hashes every regular file of `dir` (not recursing) and writes the manifest into it.
pub fn write(dir: &Path) -> Result<()> {
    let mut files = BTreeMap::new();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != MANIFEST_FILE)
        .collect();
    names.sort();
    for n in names {
        files.insert(n.clone(), hash_file(&dir.join(&n))?);
    }
    let m = Manifest {
        format: FORMAT,
        files,
    };
    let path = dir.join(MANIFEST_FILE);
    std::fs::write(&path, serde_json::to_string_pretty(&m)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Verified {
    /// Every listed file is present with its size and hash.
    Ok,
    /// No manifest: a checkpoint written before manifests existed.
    NoManifest,
}

/// Checks every file listed in `dir`'s manifest; the error names the first file that is
/// missing, has another size or another hash.
pub fn verify(dir: &Path) -> Result<Verified> {
    let path = dir.join(MANIFEST_FILE);
    if !path.exists() {
        return Ok(Verified::NoManifest);
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let m: Manifest = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a checkpoint manifest", path.display()))?;
    if m.format != FORMAT {
        bail!(
            "{}: manifest format {} (this version reads {FORMAT})",
            path.display(),
            m.format
        );
    }
    for (name, want) in &m.files {
        if name.contains('/') || name.contains('\\') || name == ".." {
            bail!("{}: invalid file name `{name}`", path.display());
        }
        let p = dir.join(name);
        if !p.is_file() {
            bail!("{}: {name} is missing", dir.display());
        }
        let got = hash_file(&p)?;
        if got.bytes != want.bytes {
            bail!(
                "{}: {name} has {} bytes, the manifest says {} (truncated or replaced)",
                dir.display(),
                got.bytes,
                want.bytes
            );
        }
        if got.sha256 != want.sha256 {
            bail!(
                "{}: {name} does not match its SHA-256 in the manifest (modified or corrupt)",
                dir.display()
            );
        }
    }
    Ok(Verified::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_truncated_or_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a.json"), "{\"x\": 1}").unwrap();
        std::fs::write(d.join("b.bin"), [1u8, 2, 3, 4]).unwrap();
        write(d).unwrap();
        assert_eq!(verify(d).unwrap(), Verified::Ok);

        std::fs::write(d.join("b.bin"), [1u8, 2, 3, 5]).unwrap();
        let e = verify(d).unwrap_err().to_string();
        assert!(e.contains("b.bin") && e.contains("SHA-256"), "{e}");

        std::fs::write(d.join("b.bin"), [1u8, 2]).unwrap();
        let e = verify(d).unwrap_err().to_string();
        assert!(e.contains("b.bin") && e.contains("2 bytes"), "{e}");

        std::fs::remove_file(d.join("a.json")).unwrap();
        let e = verify(d).unwrap_err().to_string();
        assert!(e.contains("a.json is missing"), "{e}");

        std::fs::remove_file(d.join(MANIFEST_FILE)).unwrap();
        assert_eq!(verify(d).unwrap(), Verified::NoManifest);
    }
}
