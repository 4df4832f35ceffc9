//! `trainer generate`: raw continuation of a prompt (no template). Greedy at temperature 0,
//! else temperature + top-p sampling seeded by `--seed`. With `--json` stdout carries exactly
//! one JSON object `{"token_ids": [new ids], "text": "<decoded new ids>"}`; notes go to stderr.

use super::{decode, encode, load_model_with_adapter};
use crate::args::GenerateArgs;
use anyhow::{bail, Context, Result};
use model_falcon::{GenerationConfig, Sampling};

/// The sampling mode the flags describe.
pub fn sampling(temperature: f64, top_p: f64, seed: u64) -> Result<Sampling> {
    if !(temperature.is_finite() && temperature >= 0.0) {
        bail!("--temperature must be a number >= 0, got {temperature}");
    }
    if !(top_p > 0.0 && top_p <= 1.0) {
        bail!("--top-p must be in (0, 1], got {top_p}");
    }
    Ok(if temperature == 0.0 {
        Sampling::Greedy
    } else {
        Sampling::TopP {
            temperature,
            top_p,
            seed,
        }
    })
}

/// Prompt plus new tokens must fit the model's positions: the KV cache and rotary tables are
/// sized by them, and a model is not trained beyond them.
pub fn check_positions(prompt: usize, max_new_tokens: usize, positions: usize) -> Result<()> {
    if prompt.saturating_add(max_new_tokens) > positions {
        bail!(
            "--max-new-tokens {max_new_tokens} with a {prompt}-token prompt exceeds the model's \
             {positions} positions (max_position_embeddings); use --max-new-tokens {} or less",
            positions.saturating_sub(prompt)
        );
    }
    Ok(())
}

pub fn generate(a: &GenerateArgs) -> Result<()> {
    let sampling = sampling(a.temperature, a.top_p, a.seed)?;
    if a.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    let session = load_model_with_adapter(&a.model, a.adapter.as_deref())?;
    let ids = encode(&session, &a.prompt)?;
    if ids.is_empty() {
        bail!("the prompt is empty (it encodes to no tokens)");
    }
    check_positions(
        ids.len(),
        a.max_new_tokens,
        session.model.config.max_position_embeddings,
    )?;
    let gen = GenerationConfig {
        max_new_tokens: a.max_new_tokens,
        stop_ids: session.stop_ids.clone(),
        pad_id: session.pad_id,
        sampling,
    };
    let out = session.model.generate(&[ids], &gen).context("generating")?;
    let tokens = out.first().map(|g| g.tokens.clone()).unwrap_or_default();
    let text = decode(&session, &tokens)?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "token_ids": tokens, "text": text })
        );
    } else {
        println!("{text}");
    }
    Ok(())
}
