//! Subcommands other than `train` and the demo, one module each, plus what they share:
//! loading a base with an optional adapter, and opening output files with clear errors.

mod ask;
mod data;
mod eval;
mod generate;
mod info;
mod info_gpu;
mod merge;
mod quantize;

pub use ask::{ask, ask_prompt, AskContext};
pub use data::data;
pub use eval::{eval, EvalReport, Prediction};
pub use generate::generate;
pub use info::{info, ModelInfo};
pub use merge::merge;
pub use quantize::quantize;

use crate::args::ModelArgs;
use crate::session::{base_options, load_session, Session};
use anyhow::{bail, Context, Result};
use model_falcon::load_lora;
use model_falcon::peft::load_adapter;
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

/// Loads the base model of `--model` (quantized as `--quant` / `--double-quant` say) and, when
/// given, a PEFT adapter on top of it. The adapter directory is checked before the base is
/// loaded, so a typo fails at once even for a 14 GB checkpoint.
pub fn load_model_with_adapter(m: &ModelArgs, adapter: Option<&Path>) -> Result<Session> {
    let opts = base_options(&m.quant, m.double_quant)?;
    if let Some(a) = adapter {
        if !a.is_dir() {
            bail!("adapter directory {} does not exist", a.display());
        }
    }
    let mut session = load_session(&m.model, &opts)?;
    for n in &session.notes {
        eprintln!("note: {n}");
    }
    if let Some(a) = adapter {
        let (cfg, weights) = load_adapter(a, &session.model.config)
            .with_context(|| format!("loading the adapter in {}", a.display()))?;
        load_lora(&mut session.model, &cfg, &weights)
            .with_context(|| format!("applying the adapter in {}", a.display()))?;
    }
    Ok(session)
}

/// Creates (truncates) an output file, creating its parent directories. Called before any
/// expensive work, so an unwritable path fails first.
pub fn create_output_file(path: &Path, what: &str) -> Result<BufWriter<File>> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| {
            format!(
                "cannot create the directory {} for the {what} file {}",
                parent.display(),
                path.display()
            )
        })?;
    }
    let f = File::create(path)
        .with_context(|| format!("cannot write the {what} file {}", path.display()))?;
    Ok(BufWriter::new(f))
}

/// Decodes generated ids to text (special tokens such as EOS left out).
pub fn decode(session: &Session, ids: &[u32]) -> Result<String> {
    session
        .tokenizer
        .decode(ids, true)
        .map_err(|e| anyhow::anyhow!("cannot decode the generated tokens: {e}"))
}

/// Encodes text without special tokens, as the training data pipeline does.
pub fn encode(session: &Session, text: &str) -> Result<Vec<u32>> {
    Ok(session
        .tokenizer
        .encode(text, false)
        .map_err(|e| anyhow::anyhow!("cannot tokenize the prompt: {e}"))?
        .get_ids()
        .to_vec())
}
