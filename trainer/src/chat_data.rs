//! The chat template conversational data is rendered with: the model's own, from the
//! `tokenizer_config.json` beside its `tokenizer.json`.

use anyhow::{bail, Result};
use data_finqa::{ChatTemplate, LoadReport};
use std::path::Path;

/// The template for `report`'s conversations (None when it holds none): `dir` is the model
/// directory (or the folder of a tokenizer file); the built-in model has no template.
pub fn template_for(report: &LoadReport, dir: Option<&Path>) -> Result<Option<ChatTemplate>> {
    if report.conversations.is_empty() {
        return Ok(None);
    }
    let Some(dir) = dir else {
        bail!(
            "{} holds conversations, which are rendered with the model's chat template; the \
             built-in model has none: give --model DIR with a tokenizer_config.json that has \
             a `chat_template`",
            report.path.display()
        );
    };
    Ok(Some(ChatTemplate::from_tokenizer_config(
        &dir.join("tokenizer_config.json"),
    )?))
}
