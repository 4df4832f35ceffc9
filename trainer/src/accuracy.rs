//! Generation-based evaluation: greedy answers to the validation prompts, scored against the
//! gold answers with FinQA's tolerant match (a numeric match at the gold's precision, with
//! percent and scale readings, or an exact match after normalization; `data_finqa::metrics`).
//!
//! [`generate_batch`] is the only place evaluation generates; it runs on the backend's device.

use anyhow::{Context, Result};
use data_finqa::{metrics, TokenizedExample};
use model_falcon::{Backend, GenerationConfig, Sampling};
use std::time::Instant;
use tokenizers::Tokenizer;

/// What the accuracy evaluation generates and scores.
#[derive(Clone, Debug)]
pub struct AccuracyConfig {
    /// Most new tokens per answer.
    pub max_new_tokens: usize,
    /// Prompts generated together (left-padded).
    pub batch_size: usize,
    /// Score only the first N examples (0: all).
    pub max_samples: usize,
    /// Ids that end an answer (the model's EOS).
    pub stop_ids: Vec<u32>,
    /// Id used for left padding.
    pub pad_id: u32,
}

/// The result of one accuracy evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct AccuracyResult {
    /// `correct / total`.
    pub accuracy: f64,
    pub correct: usize,
    pub total: usize,
    pub seconds: f64,
}

/// Greedy continuations (new token ids, ending with a stop id when one was produced) of
/// `prompts`, from the model the backend trains, with its current adapters, on the backend's
/// device (the CUDA decode kernels there, the host model on the CPU).
pub fn generate_batch(
    backend: &Backend,
    prompts: &[Vec<u32>],
    max_new_tokens: usize,
    stop_ids: &[u32],
    pad_id: u32,
) -> Result<Vec<Vec<u32>>> {
    let cfg = GenerationConfig {
        max_new_tokens,
        stop_ids: stop_ids.to_vec(),
        pad_id,
        sampling: Sampling::Greedy,
    };
    Ok(backend
        .generate_batch(prompts, &cfg)
        .context("generating answers for eval_accuracy")?
        .into_iter()
        .map(|g| g.tokens)
        .collect())
}

/// Whether a generated text answers `gold` (the first line of the generation is the answer).
pub fn is_correct(generated: &str, gold: &str) -> bool {
    let pred = metrics::answer_from_generation(generated);
    let gold = gold.trim();
    metrics::numeric_match(pred, gold) || metrics::exact_match(pred, gold)
}

/// Accuracy of greedy answers to `examples` (each: its prompt ids and target text).
pub fn evaluate_accuracy(
    backend: &Backend,
    tokenizer: &Tokenizer,
    examples: &[TokenizedExample],
    cfg: &AccuracyConfig,
) -> Result<AccuracyResult> {
    let start = Instant::now();
    let n = match cfg.max_samples {
        0 => examples.len(),
        k => k.min(examples.len()),
    };
    let scored: Vec<&TokenizedExample> =
        examples[..n].iter().filter(|e| e.prompt_len > 0).collect();
    let mut correct = 0;
    for chunk in scored.chunks(cfg.batch_size.max(1)) {
        let prompts: Vec<Vec<u32>> = chunk.iter().map(|e| e.prompt_ids().to_vec()).collect();
        let outs = generate_batch(
            backend,
            &prompts,
            cfg.max_new_tokens,
            &cfg.stop_ids,
            cfg.pad_id,
        )?;
        for (ex, tokens) in chunk.iter().zip(outs) {
            let text = tokenizer
                .decode(&tokens, true)
                .map_err(|e| anyhow::anyhow!("decoding a generated answer: {e}"))?;
            correct += usize::from(is_correct(&text, &ex.target_text));
        }
    }
    let total = scored.len();
    Ok(AccuracyResult {
        accuracy: if total == 0 {
            0.0
        } else {
            correct as f64 / total as f64
        },
        correct,
        total,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::is_correct;

    #[test]
    fn answers_are_scored_tolerantly_on_their_first_line() {
        assert!(is_correct(" 13.7 million\nQuestion: x", " 13.7"));
        assert!(is_correct(" 25%", "0.25"));
        assert!(is_correct(" yes", "yes"));
        assert!(!is_correct(" 13.8", " 13.7"));
        assert!(!is_correct("", "13.7"));
    }
}
