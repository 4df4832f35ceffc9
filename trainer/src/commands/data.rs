//! `trainer data`: what the model will see. Loads and tokenizes a data file exactly as
//! training does (prompt template, labels, max length, truncation policy) and prints
//! data_finqa's summary; `--dump` writes every formatted example as JSONL.

use super::create_output_file;
use crate::args::DataArgs;
use crate::train_cmd::{load_data, truncation};
use anyhow::{bail, Context, Result};
use data_finqa::summary::write_jsonl;
use data_finqa::{dump_rows, summary, tokenize_report, TokenizeOptions, TokenizedExample};
use model_falcon::tokenizer::FALCON_EOS_TOKEN;
use model_falcon::FalconTokenizer;
use std::io::Write;
use std::path::Path;
use tokenizers::Tokenizer;

/// The tokenizer and eos id of `--model DIR` or `--tokenizer FILE`.
fn tokenizer(a: &DataArgs) -> Result<(Tokenizer, u32)> {
    match (&a.model, &a.tokenizer) {
        (Some(dir), _) => {
            if !dir.is_dir() {
                bail!("model directory {} does not exist", dir.display());
            }
            let t = FalconTokenizer::from_dir(dir)?;
            for n in t.notes() {
                eprintln!("note: {n}");
            }
            Ok((t.inner().clone(), t.eos_id()))
        }
        (None, Some(file)) => {
            let t = Tokenizer::from_file(file).map_err(|e| {
                anyhow::anyhow!("cannot load the tokenizer file {}: {e}", file.display())
            })?;
            let eos = t.token_to_id(FALCON_EOS_TOKEN).with_context(|| {
                format!(
                    "{}: no `{FALCON_EOS_TOKEN}` token to use as end of sequence; use --model DIR to read the eos id from the checkpoint",
                    file.display()
                )
            })?;
            Ok((t, eos))
        }
        (None, None) => bail!("give --model DIR or --tokenizer FILE"),
    }
}

pub fn data(a: &DataArgs) -> Result<()> {
    let policy = truncation(&a.truncation)?;
    let (tok, eos_id) = tokenizer(a)?;
    let report = load_data(&a.data, &a.data_format, false)?;
    let mut dump = match &a.dump {
        Some(p) => Some(create_output_file(p, "dump")?),
        None => None,
    };
    let opts = TokenizeOptions {
        max_length: a.max_length,
        eos_id,
        policy,
    };
    let dir = match (&a.model, &a.tokenizer) {
        (Some(m), _) => Some(m.clone()),
        (None, Some(t)) => t.parent().map(Path::to_path_buf),
        (None, None) => None,
    };
    let chat = crate::chat_data::template_for(&report, dir.as_deref())?;
    let set = tokenize_report(&tok, &report, &opts, chat.as_ref())
        .with_context(|| format!("tokenizing {}", a.data.display()))?;
    let s = summary(&set, report.skipped.len());
    if a.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        println!(
            "{} ({} format, {} records)",
            a.data.display(),
            report.format,
            report.total
        );
        println!("{s}");
        if let Some(e) = set.examples.first() {
            print_example(e);
        }
    }
    if let (Some(out), Some(p)) = (dump.as_mut(), &a.dump) {
        let rows = dump_rows(&set);
        write_jsonl(&rows, &mut *out)
            .and_then(|_| out.flush())
            .with_context(|| format!("cannot write the dump file {}", p.display()))?;
        if !a.json {
            println!("wrote {} examples to {}", rows.len(), p.display());
        }
    }
    Ok(())
}

/// The first example exactly as the model sees it: the prompt (not learned) and the target
/// (learned, followed by the end-of-sequence token), with its token counts.
fn print_example(e: &TokenizedExample) {
    let cut = if e.tokens_cut() > 0 {
        format!(", {} tokens cut to fit --max-length", e.tokens_cut())
    } else {
        String::new()
    };
    println!(
        "\nfirst example (`{}`): {} tokens = {} prompt (masked) + {} learned (answer + EOS){cut}",
        e.id,
        e.input_ids.len(),
        e.prompt_len.min(e.input_ids.len()),
        e.learned_len()
    );
    println!("----- prompt -----\n{}", e.prompt_text);
    println!(
        "----- target -----\n{}<EOS>\n------------------",
        e.target_text
    );
}
