//! `trainer ask`: the seed's `ask_model`. The question and its context are formatted with the
//! training prompt template (data_finqa's prompt code, so the bytes are the ones the adapter was
//! trained on), the answer is generated greedily (at most `--max-new-tokens`, stopping at EOS)
//! and its first line is printed.

use super::{decode, load_model_with_adapter};
use crate::args::AskArgs;
use crate::gen_device::open_generation_backend;
use anyhow::{bail, Context, Result};
use data_finqa::metrics::answer_from_generation;
use data_finqa::prompt::{context_pieces, prompt_from_pieces};
use data_finqa::tokenize::tokenize_record;
use data_finqa::{load_file, LoadOptions, Record, TokenizeOptions, TruncationPolicy};
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

    /// The record `id` of a data file (FinQA original, HF flat JSON or JSON lines), loaded
    /// as `trainer train` loads it (records that are bad for training are skipped).
    pub fn from_data_file(path: &Path, id: &str) -> Result<Self> {
        let report = load_file(path, &LoadOptions::default())?;
        let Some(r) = report.records.iter().find(|r| r.id == id) else {
            bail!(
                "{}: no record with id `{id}` ({} records read)",
                path.display(),
                report.records.len()
            );
        };
        Ok(AskContext {
            pre_text: r.pre_text.clone(),
            table: r.table.clone(),
            post_text: r.post_text.clone(),
            question: Some(r.question.clone()),
        })
    }

    /// From `--context-file`: a JSON object (or a one-element array) in the original FinQA
    /// layout (`pre_text`, `table`, `post_text`, `qa.question`) or the flat HF layout
    /// (`question` at the top level); any other text is used whole as `pre_text`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = read_limited(path, data_finqa::DEFAULT_MAX_DATA_BYTES)?;
        let trimmed = text.trim_start_matches('\u{feff}').trim();
        if !(trimmed.starts_with('{') || trimmed.starts_with('[')) {
            return Ok(AskContext {
                pre_text: vec![trimmed.to_string()],
                ..AskContext::default()
            });
        }
        let mut values = serde_json::Deserializer::from_str(trimmed).into_iter::<Value>();
        let v = values.next().transpose().ok().flatten().with_context(|| {
            format!(
                "{}: looks like JSON but does not parse (expected one FinQA record)",
                path.display()
            )
        })?;
        if values.next().is_some() {
            bail!(
                "{}: holds several JSON values (JSON lines?); pick one record with --record-id",
                path.display()
            );
        }
        let obj = match &v {
            Value::Array(items) if items.len() == 1 => &items[0],
            Value::Array(items) => bail!(
                "{}: holds {} records; pick one with --record-id",
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

/// A text file of at most `limit` bytes (checked before and while reading, so a wrong path
/// cannot exhaust memory).
fn read_limited(path: &Path, limit: u64) -> Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read the context file {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read the context file {}", path.display()))?;
    if bytes.len() as u64 > limit {
        bail!(
            "the context file {} is larger than {limit} bytes; a context that size cannot be \
             a prompt",
            path.display()
        );
    }
    String::from_utf8(bytes)
        .with_context(|| format!("the context file {} is not UTF-8 text", path.display()))
}

/// The prompt tokens for a question, with the context cut by the keep-answer policy so that
/// the prompt has at most `max_length − reserve` tokens (`max_length` 0: never cut).
///
/// Training cuts contexts so that prompt + answer + EOS fit `max_length`; at inference the
/// answer is unknown, so `reserve` (the generation budget) stands in for it. The cut is the
/// training pipeline's own: the record is tokenized with a one-token stand-in answer whose
/// target length (answer + EOS) is added to the limit, so exactly `reserve` tokens are kept
/// free.
pub fn ask_prompt_ids(
    tokenizer: &tokenizers::Tokenizer,
    eos_id: u32,
    ctx: &AskContext,
    question: &str,
    max_length: usize,
    reserve: usize,
) -> Result<Vec<u32>> {
    let prompt = ask_prompt(ctx, question);
    // A prompt longer than what max_length tokens can cover goes straight to the (bounded)
    // cut, instead of being tokenized whole first.
    if max_length == 0 || prompt.len() <= data_finqa::text_bound(tokenizer, max_length) {
        let full = tokenizer
            .encode(prompt.as_str(), false)
            .map_err(|e| anyhow::anyhow!("cannot tokenize the prompt: {e}"))?
            .get_ids()
            .to_vec();
        if max_length == 0 || full.len() + reserve <= max_length {
            return Ok(full);
        }
    }
    if reserve >= max_length {
        bail!("--max-length {max_length} leaves no room for a prompt after --max-new-tokens {reserve}");
    }
    let stand_in = "0";
    let target_len = tokenizer
        .encode(format!(" {stand_in}"), false)
        .map_err(|e| anyhow::anyhow!("cannot tokenize: {e}"))?
        .len()
        + 1;
    let record = Record {
        id: "ask".into(),
        pre_text: ctx.pre_text.clone(),
        post_text: ctx.post_text.clone(),
        table: ctx.table.clone(),
        question: question.to_string(),
        answer: stand_in.into(),
        final_result: None,
        exe_ans: None,
        program: None,
        gold_inds: None,
    };
    let opts = TokenizeOptions {
        max_length: max_length - reserve + target_len,
        eos_id,
        policy: TruncationPolicy::KeepAnswer,
    };
    match tokenize_record(tokenizer, &record, &opts)? {
        Ok(ex) => Ok(ex.prompt_ids().to_vec()),
        Err(d) => bail!(
            "the question does not fit in --max-length {max_length} with --max-new-tokens {reserve}: {}",
            d.reason
        ),
    }
}

pub fn ask(a: &AskArgs) -> Result<()> {
    let mut a = a.clone();
    if let Some(run) = crate::run_defaults::RunDefaults::of(a.adapter.as_deref(), &a.explicit) {
        run.usize("max_length", &mut a.max_length);
    }
    let a = &a;
    let ctx = match (&a.context_file, &a.record_id) {
        (Some(p), Some(id)) => AskContext::from_data_file(p, id)?,
        (Some(p), None) => AskContext::from_file(p)?,
        (None, _) => AskContext::from_flags(&a.pre_text, &a.table, &a.post_text),
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
    let max_pos = session.model.config.max_position_embeddings;
    if a.max_length == 0 {
        // The whole context is tokenized: refuse, before tokenizing, a text too long for the
        // model's positions however it tokenizes (tokenizing it would take memory out of
        // proportion; see data_finqa::text_bound).
        let bytes = ask_prompt(&ctx, &question).len();
        if bytes > data_finqa::text_bound(&session.tokenizer, max_pos) {
            bail!(
                "the prompt has {bytes} bytes of text, more than the model's {max_pos} \
                 positions can hold however it is tokenized; give --max-length (e.g. {max_pos}) \
                 to cut the context as training does"
            );
        }
    }
    let ids = ask_prompt_ids(
        &session.tokenizer,
        session.eos_id,
        &ctx,
        &question,
        a.max_length,
        a.max_new_tokens,
    )?;
    if a.verbose {
        eprintln!(
            "prompt ({} tokens):\n{}",
            ids.len(),
            decode(&session, &ids)?
        );
    }
    if ids.len() + a.max_new_tokens > max_pos {
        // Generating past the positions would cost attention memory quadratic in a length
        // the model was never trained for, for an answer that means nothing.
        bail!(
            "the prompt has {} tokens; with {} new tokens it exceeds the model's {max_pos} positions: give --max-length {max_pos} to cut the context as training does",
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
    let backend = open_generation_backend(&a.gen_device, &session.model, !a.verbose)?;
    let out = backend
        .generate_batch(&[ids], &gen)
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
    fn max_length_cuts_the_context_as_training_does() {
        let tok = data_finqa::synthetic::build_tokenizer(1024, 3).unwrap();
        let eos = data_finqa::synthetic::eos_id(&tok).unwrap();
        let rec = data_finqa::synthetic::generate(1, 5).remove(0);
        let ctx = AskContext {
            pre_text: rec.pre_text.clone(),
            table: rec.table.clone(),
            post_text: rec.post_text.clone(),
            question: None,
        };
        let full = ask_prompt_ids(&tok, eos, &ctx, &rec.question, 0, 15).unwrap();
        let seed = tok
            .encode(data_finqa::seed_prompt(&rec), false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(full, seed);
        let limit = full.len() / 2 + 15;
        let cut = ask_prompt_ids(&tok, eos, &ctx, &rec.question, limit, 15).unwrap();
        assert!(cut.len() <= limit - 15 && cut.len() > 10, "{}", cut.len());
        // The training pipeline cuts a record with a one-token answer to the same prompt when
        // its limit leaves the same room.
        let mut r = rec.clone();
        r.answer = "7".into();
        let target = tok.encode(" 7", false).unwrap().len() + 1;
        let opts = TokenizeOptions {
            max_length: limit - 15 + target,
            eos_id: eos,
            policy: TruncationPolicy::KeepAnswer,
        };
        let ex = tokenize_record(&tok, &r, &opts).unwrap().unwrap();
        assert!(ex.context_trimmed);
        assert_eq!(cut, ex.prompt_ids());
        assert!(ask_prompt_ids(&tok, eos, &ctx, &rec.question, 15, 15).is_err());
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
