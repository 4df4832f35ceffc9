//! `trainer ask`: the seed's `ask_model`. The question and its context are formatted with the
//! training prompt template (data_finqa's prompt code, so the bytes are the ones the adapter was
//! trained on), the answer is generated greedily (at most `--max-new-tokens`, stopping at EOS)
//! and its first line is printed.

use super::{decode, encode, load_model_with_adapter};
use crate::args::AskArgs;
use anyhow::{bail, Context, Result};
use data_finqa::metrics::answer_from_generation;
use data_finqa::prompt::{context_pieces, prompt_from_pieces};
use data_finqa::Record;
use model_falcon::{GenerationConfig, Sampling};
use serde_json::Value;
use std::path::Path;

/// The context of a question: the three FinQA pieces, and the record's own question if the
/// context came from a record.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AskContext {
    pub pre_text: Vec<String>,
    pub table: Vec<Vec<String>>,
    pub post_text: Vec<String>,
    pub question: Option<String>,
}

impl AskContext {
    /// From `--pre-text`, `--table` (rows by newline, cells by '|') and `--post-text`.
    pub fn from_flags(pre: &str, table: &str, post: &str) -> Self {
        let one = |s: &str| {
            if s.is_empty() {
                Vec::new()
            } else {
                vec![s.to_string()]
            }
        };
        AskContext {
            pre_text: one(pre),
            table: table
                .lines()
                .map(|row| row.split('|').map(str::to_string).collect())
                .collect(),
            post_text: one(post),
            question: None,
        }
    }

    /// From `--context-file`: a JSON object (or a one-element array) in the original FinQA
    /// layout (`pre_text`, `table`, `post_text`, `qa.question`) or the flat HF layout
    /// (`question` at the top level); any other text is used whole as `pre_text`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the context file {}", path.display()))?;
        let trimmed = text.trim_start_matches('\u{feff}').trim();
        if !(trimmed.starts_with('{') || trimmed.starts_with('[')) {
            return Ok(AskContext {
                pre_text: vec![trimmed.to_string()],
                ..AskContext::default()
            });
        }
        let v: Value = serde_json::from_str(trimmed).with_context(|| {
            format!(
                "{}: looks like JSON but does not parse (expected one FinQA record)",
                path.display()
            )
        })?;
        let obj = match &v {
            Value::Array(items) if items.len() == 1 => &items[0],
            Value::Array(items) => bail!(
                "{}: holds {} records; give a file with exactly one FinQA record",
                path.display(),
                items.len()
            ),
            other => other,
        };
        let Value::Object(map) = obj else {
            bail!(
                "{}: expected a FinQA record (a JSON object)",
                path.display()
            );
        };
        let strings = |key: &str| -> Result<Vec<String>> {
            match map.get(key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::String(s)) => Ok(vec![s.clone()]),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|i| match i {
                        Value::String(s) => Ok(s.clone()),
                        other => bail!(
                            "{}: `{key}` must hold strings, found {other}",
                            path.display()
                        ),
                    })
                    .collect(),
                Some(other) => bail!(
                    "{}: `{key}` must be a list of strings, found {other}",
                    path.display()
                ),
            }
        };
        let table = match map.get("table") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(rows)) => rows
                .iter()
                .map(|row| match row {
                    Value::Array(cells) => cells
                        .iter()
                        .map(|c| match c {
                            Value::String(s) => Ok(s.clone()),
                            Value::Number(n) => Ok(n.to_string()),
                            other => bail!(
                                "{}: table cells must be strings, found {other}",
                                path.display()
                            ),
                        })
                        .collect::<Result<Vec<String>>>(),
                    other => bail!(
                        "{}: table rows must be lists of strings, found {other}",
                        path.display()
                    ),
                })
                .collect::<Result<Vec<_>>>()?,
            Some(other) => bail!(
                "{}: `table` must be a list of rows, found {other}",
                path.display()
            ),
        };
        let question = map
            .get("qa")
            .and_then(|qa| qa.get("question"))
            .or_else(|| map.get("question"))
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(AskContext {
            pre_text: strings("pre_text")?,
            table,
            post_text: strings("post_text")?,
            question,
        })
    }
}

/// The training prompt for a question in a context (the seed's template).
pub fn ask_prompt(ctx: &AskContext, question: &str) -> String {
    let record = Record {
        id: "ask".into(),
        pre_text: ctx.pre_text.clone(),
        post_text: ctx.post_text.clone(),
        table: ctx.table.clone(),
        question: question.to_string(),
        answer: String::new(),
        final_result: None,
        exe_ans: None,
        program: None,
        gold_inds: None,
    };
    prompt_from_pieces(&context_pieces(&record), question)
}

pub fn ask(a: &AskArgs) -> Result<()> {
    let ctx = match &a.context_file {
        Some(p) => AskContext::from_file(p)?,
        None => AskContext::from_flags(&a.pre_text, &a.table, &a.post_text),
    };
    let question = match (&a.question, &ctx.question) {
        (Some(q), _) => q.clone(),
        (None, Some(q)) => q.clone(),
        (None, None) => bail!("give --question (or a --context-file record that has one)"),
    };
    if question.trim().is_empty() {
        bail!("the question is empty");
    }
    if a.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    let session = load_model_with_adapter(&a.model, a.adapter.as_deref())?;
    let prompt = ask_prompt(&ctx, &question);
    let ids = encode(&session, &prompt)?;
    if a.verbose {
        eprintln!("prompt ({} tokens):\n{prompt}", ids.len());
    }
    let max_pos = session.model.config.max_position_embeddings;
    if ids.len() + a.max_new_tokens > max_pos {
        eprintln!(
            "warning: the prompt has {} tokens; with {} new tokens it exceeds the model's {max_pos} positions",
            ids.len(),
            a.max_new_tokens
        );
    }
    let gen = GenerationConfig {
        max_new_tokens: a.max_new_tokens,
        stop_ids: session.stop_ids.clone(),
        pad_id: session.pad_id,
        sampling: Sampling::Greedy,
    };
    let out = session
        .model
        .generate(&[ids], &gen)
        .context("generating the answer")?;
    let tokens = out.first().map(|g| g.tokens.as_slice()).unwrap_or(&[]);
    let text = decode(&session, tokens)?;
    if a.verbose {
        eprintln!("generated ({} tokens): {text:?}", tokens.len());
    }
    println!("{}", answer_from_generation(&text));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_give_the_training_template() {
        let ctx = AskContext::from_flags("revenue rose .", "|2019\nsales|$ 5", "");
        assert_eq!(
            ask_prompt(&ctx, "what?"),
            "Context:\nrevenue rose .\n|2019\nsales|$ 5\n\nQuestion: what?\nAnswer:"
        );
    }

    #[test]
    fn record_file_matches_seed_prompt() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        std::fs::write(
            &p,
            r#"{"id":"x","pre_text":["a .","b ."],"post_text":["c ."],"table":[["","2019"],["x","1"]],"qa":{"question":"q?","answer":"1"}}"#,
        )
        .unwrap();
        let ctx = AskContext::from_file(&p).unwrap();
        assert_eq!(ctx.question.as_deref(), Some("q?"));
        let rec = Record {
            id: "x".into(),
            pre_text: vec!["a .".into(), "b .".into()],
            post_text: vec!["c .".into()],
            table: vec![vec!["".into(), "2019".into()], vec!["x".into(), "1".into()]],
            question: "q?".into(),
            answer: "1".into(),
            final_result: None,
            exe_ans: None,
            program: None,
            gold_inds: None,
        };
        assert_eq!(ask_prompt(&ctx, "q?"), data_finqa::seed_prompt(&rec));
        std::fs::write(&p, "{ not json").unwrap();
        let e = AskContext::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("r.json"), "{e}");
    }
}
