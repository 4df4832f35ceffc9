//! The checkpoint's tokenizer (`tokenizer.json` through the `tokenizers` crate) and the
//! resolution of the end-of-sequence id.
//!
//! Falcon's tokenizer adds no special tokens (no BOS, no post-processor) and defines no pad
//! token. The eos id is taken from `generation_config.json`, then `config.json`, but a value
//! is only accepted if it is the id of the tokenizer's eos token (`eos_token` of
//! tokenizer_config.json, else `<|endoftext|>`): old Falcon-7B / 7B-instruct revisions ship a
//! generation config with eos 2 (`>>INTRODUCTION<<`) and bos 1, which are wrong (the real eos
//! is 11, `<|endoftext|>`). Such a value is skipped and noted in [`FalconTokenizer::notes`].
//! Padding uses the eos id, as the usual Falcon recipe (`pad_token = eos_token`) does.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::Tokenizer;

use crate::error::{read_json, FalconError, Result};

/// Runs `f`, turning a panic into `None` without printing it. The `tokenizers` crate panics
/// instead of returning an error on some malformed files (its decoder deserializer unwraps),
/// and a bad input file must give an error, not a crash report. Panics of other threads
/// still reach the previous hook while `f` runs.
fn contain_panic<R>(f: impl FnOnce() -> R) -> Option<R> {
    use std::panic::{self, AssertUnwindSafe, PanicHookInfo};
    use std::sync::Arc;
    type Hook = Arc<dyn Fn(&PanicHookInfo<'_>) + Send + Sync>;
    let prev: Hook = Arc::from(panic::take_hook());
    let me = std::thread::current().id();
    let others = prev.clone();
    panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() != me {
            others(info)
        }
    }));
    let r = panic::catch_unwind(AssertUnwindSafe(f));
    let _ = panic::take_hook();
    panic::set_hook(Box::new(move |info| prev(info)));
    r.ok()
}

/// Falcon's end-of-text token.
pub const FALCON_EOS_TOKEN: &str = "<|endoftext|>";

/// Where the eos id came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EosSource {
    GenerationConfig,
    Config,
    /// The id of the tokenizer's eos token (no config value was usable).
    Tokenizer,
}

/// Tokenizer plus the special ids a Falcon pipeline needs.
pub struct FalconTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    eos_token: Option<String>,
    eos_id: u32,
    eos_source: EosSource,
    stop_ids: Vec<u32>,
    notes: Vec<String>,
}

impl FalconTokenizer {
    /// Loads `dir/tokenizer.json` and resolves eos from `dir/generation_config.json`,
    /// `dir/config.json` and `dir/tokenizer_config.json` (each optional).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let path = dir.join("tokenizer.json");
        let bytes = std::fs::read(&path).map_err(|e| FalconError::Tokenizer {
            path: path.clone(),
            message: format!("cannot read: {e}"),
        })?;
        let inner = match contain_panic(|| Tokenizer::from_bytes(&bytes)) {
            Some(Ok(t)) => t,
            Some(Err(e)) => {
                return Err(FalconError::Tokenizer {
                    path,
                    message: format!("cannot load: {e}"),
                })
            }
            None => {
                return Err(FalconError::Tokenizer {
                    path,
                    message: "cannot load: a section is malformed (the tokenizers library \
                              rejected it)"
                        .into(),
                })
            }
        };
        let optional = |name: &str| -> Result<Option<(PathBuf, Value)>> {
            let p = dir.join(name);
            if p.is_file() {
                Ok(Some((p.clone(), read_json(&p)?)))
            } else {
                Ok(None)
            }
        };
        let tokenizer_config = optional("tokenizer_config.json")?;
        let generation_config = optional("generation_config.json")?;
        let config = optional("config.json")?;

        let eos_token = match &tokenizer_config {
            Some((p, v)) => token_content(p, v.get("eos_token"))?,
            None => None,
        }
        .or_else(|| {
            inner
                .token_to_id(FALCON_EOS_TOKEN)
                .map(|_| FALCON_EOS_TOKEN.to_string())
        });
        let tokenizer_eos = match &eos_token {
            Some(t) => Some(inner.token_to_id(t).ok_or_else(|| FalconError::Tokenizer {
                path: path.clone(),
                message: format!(
                    "eos token `{t}` (from tokenizer_config.json) is not in the vocabulary"
                ),
            })?),
            None => None,
        };

        let vocab = inner.get_vocab_size(true);
        let mut notes = Vec::new();
        let mut chosen: Option<(u32, EosSource, Vec<u32>)> = None;
        for (source, file) in [
            (EosSource::GenerationConfig, &generation_config),
            (EosSource::Config, &config),
        ] {
            let Some((p, v)) = file else { continue };
            let ids = ids_field(p, v.get("eos_token_id"))?;
            if ids.is_empty() {
                continue;
            }
            let valid: Vec<u32> = ids
                .iter()
                .copied()
                .filter(|&id| (id as usize) < vocab)
                .collect();
            let accepted = match tokenizer_eos {
                Some(t) if valid.contains(&t) => Some(t),
                Some(t) => {
                    let shown: Vec<String> = ids
                        .iter()
                        .map(|&id| match inner.id_to_token(id) {
                            Some(tok) => format!("{id} (`{tok}`)"),
                            None => format!("{id} (not in the vocabulary)"),
                        })
                        .collect();
                    notes.push(format!(
                        "{}: eos_token_id {} is not the eos token `{}` ({t}); ignored (old Falcon generation configs carry eos 2)",
                        p.display(),
                        shown.join(", "),
                        eos_token.as_deref().unwrap_or(FALCON_EOS_TOKEN),
                    ));
                    None
                }
                None => valid.first().copied(),
            };
            if let Some(id) = accepted {
                chosen = Some((id, source, valid));
                break;
            }
        }
        let (eos_id, eos_source, stop_ids) = match (chosen, tokenizer_eos) {
            (Some(c), _) => c,
            (None, Some(t)) => (t, EosSource::Tokenizer, vec![t]),
            (None, None) => {
                return Err(FalconError::Tokenizer {
                    path,
                    message: format!("cannot determine the eos id: no usable eos_token_id in generation_config.json / config.json and no `{FALCON_EOS_TOKEN}` or eos_token in the tokenizer"),
                })
            }
        };
        Ok(FalconTokenizer {
            inner,
            path,
            eos_token,
            eos_id,
            eos_source,
            stop_ids,
            notes,
        })
    }

    /// Token ids of `text`. Falcon's tokenizer adds no special tokens either way; the flag is
    /// passed through for tokenizers that do (HF's `tokenizer(text)` uses `true`).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.inner
            .encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| FalconError::Tokenizer {
                path: self.path.clone(),
                message: format!("cannot encode text: {e}"),
            })
    }

    /// Text of `ids`; `skip_special_tokens` drops `<|endoftext|>` and the like.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| FalconError::Tokenizer {
                path: self.path.clone(),
                message: format!("cannot decode ids: {e}"),
            })
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Padding id: the eos id (Falcon has no pad token).
    pub fn pad_id(&self) -> u32 {
        self.eos_id
    }

    /// All ids that end generation (the accepted eos list; usually just `[eos_id]`).
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    pub fn eos_source(&self) -> EosSource {
        self.eos_source
    }

    /// The eos token text, when the tokenizer defines one.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Config values that were rejected while resolving eos (for logging).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

/// A special token given as a string or as `{"content": "..."}` (AddedToken form).
fn token_content(path: &Path, v: Option<&Value>) -> Result<Option<String>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(o)) => match o.get("content").and_then(Value::as_str) {
            Some(s) => Ok(Some(s.to_string())),
            None => Err(FalconError::field(
                path,
                "eos_token",
                "object without a string `content`",
            )),
        },
        Some(other) => Err(FalconError::field(
            path,
            "eos_token",
            format!("is {other}, expected a string"),
        )),
    }
}

/// `eos_token_id` as an int, a list of ints, or null.
fn ids_field(path: &Path, v: Option<&Value>) -> Result<Vec<u32>> {
    let one = |x: &Value| -> Result<u32> {
        x.as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| {
                FalconError::field(path, "eos_token_id", format!("is {x}, expected a token id"))
            })
    };
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(one).collect(),
        Some(x) => Ok(vec![one(x)?]),
    }
}
