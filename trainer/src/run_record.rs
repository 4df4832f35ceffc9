//! What a run remembers about itself besides its flags: digests of its inputs, the versions
//! that trained it and the command line. Written into `training_args.json` next to the flags
//! (and so into every checkpoint, which copies that file), read back by the model card and by
//! `ask`/`eval` pointed at the run's adapter.

use crate::args::TrainArgs;
use crate::session::Session;
use crate::sha256::{to_hex, Sha256};
use crate::state::TRAINING_ARGS_FILE;
use anyhow::{Context, Result};
use serde_json::{json, Map, Value};
use std::io::Read;
use std::path::{Path, PathBuf};

/// SHA-256 of a file, read in chunks (data files may be gigabytes).
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(to_hex(&h.finish()))
}

/// The command line as a shell would re-run it (arguments quoted where needed).
pub fn command_line() -> String {
    std::env::args()
        .enumerate()
        .map(|(i, a)| {
            let a = if i == 0 {
                Path::new(&a)
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or(a)
            } else {
                a
            };
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
            if plain {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The base model's `_name_or_path` from its config.json (the Hub id a saved model came
/// from), when it has a non-empty one.
pub fn config_name_or_path(model_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(model_dir.join("config.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v.get("_name_or_path")?
        .as_str()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
}

/// Digests and versions of a run: the keys added to its `training_args.json`.
pub fn provenance(args: &TrainArgs, session: &Session) -> Result<Map<String, Value>> {
    let mut m = Map::new();
    let digest = |p: &Option<PathBuf>| -> Result<Value> {
        Ok(match p {
            Some(p) => json!(file_sha256(p)?),
            None => Value::Null,
        })
    };
    m.insert("data_sha256".into(), digest(&args.data)?);
    m.insert("eval_data_sha256".into(), digest(&args.eval_data)?);
    let tokenizer_file = args.model.as_ref().map(|d| d.join("tokenizer.json"));
    let tokenizer_sha = match tokenizer_file.filter(|f| f.is_file()) {
        Some(f) => file_sha256(&f)?,
        None => {
            // The built-in tokenizer has no file: its canonical serialization stands for it.
            let text = session
                .tokenizer
                .to_string(false)
                .map_err(|e| anyhow::anyhow!("cannot serialize the tokenizer: {e}"))?;
            crate::sha256::hex_digest(text.as_bytes())
        }
    };
    m.insert("tokenizer_sha256".into(), json!(tokenizer_sha));
    m.insert(
        "base_config_sha256".into(),
        match &args.model {
            Some(d) => json!(file_sha256(&d.join("config.json"))?),
            None => Value::Null,
        },
    );
    m.insert(
        "base_model_name_or_path".into(),
        json!(session.name_or_path),
    );
    m.insert(
        "versions".into(),
        json!({
            "trainer": env!("CARGO_PKG_VERSION"),
            "os": std::env::consts::OS,
            "arch": std::env::consts::ARCH,
        }),
    );
    m.insert("command".into(), json!(command_line()));
    Ok(m)
}

/// Digest keys whose change between a checkpoint and its resume is worth a warning.
const INPUT_DIGESTS: &[(&str, &str)] = &[
    ("data_sha256", "--data"),
    ("eval_data_sha256", "--eval-data"),
    ("tokenizer_sha256", "the tokenizer"),
    ("base_config_sha256", "the base model's config.json"),
];

/// Warnings for inputs that differ from those the resumed run was trained on (files may be
/// re-exported byte-differently, so this warns instead of refusing).
pub fn changed_inputs(saved: &Value, now: &Map<String, Value>) -> Vec<String> {
    INPUT_DIGESTS
        .iter()
        .filter_map(|(key, what)| {
            let (Some(a), Some(b)) = (saved.get(*key)?.as_str(), now.get(*key)?.as_str()) else {
                return None;
            };
            (a != b).then(|| {
                format!(
                    "{what} differs from the one the resumed run was trained on (sha256 {}… \
                     in the checkpoint, {}… now)",
                    &a[..a.len().min(12)],
                    &b[..b.len().min(12)]
                )
            })
        })
        .collect()
}

/// The `training_args.json` of the run an adapter directory comes from (a run's output
/// directory and each of its checkpoints hold one), when it has one.
pub fn read_run_args(adapter_dir: &Path) -> Option<(PathBuf, Map<String, Value>)> {
    let path = adapter_dir.join(TRAINING_ARGS_FILE);
    let text = std::fs::read_to_string(&path).ok()?;
    match serde_json::from_str(&text).ok()? {
        Value::Object(m) => Some((path, m)),
        _ => None,
    }
}
