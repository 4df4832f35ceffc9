//! What `trainer data` prints, and JSON-lines dump rows.
//!
//! Percentiles are nearest-rank: the `p`-quantile of `n` sorted lengths is element
//! `ceil(p * n) - 1`.

use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::tokenize::{TokenizedSet, TruncationPolicy};

/// Statistics of a tokenized data set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSummary {
    /// Usable (tokenized) examples.
    pub examples: usize,
    /// Bad records skipped while loading.
    pub skipped: usize,
    /// Examples dropped because they cannot fit under the policy.
    pub dropped: usize,
    /// The truncation policy.
    pub policy: TruncationPolicy,
    /// The sequence-length limit.
    pub max_length: usize,
    /// Median sequence length (prompt + target + EOS, after truncation).
    pub tokens_p50: usize,
    /// 90th percentile sequence length.
    pub tokens_p90: usize,
    /// Longest sequence.
    pub tokens_max: usize,
    /// Examples whose context (or, for prompt/completion, prompt) was shortened.
    pub contexts_trimmed: usize,
    /// Examples that lost answer or EOS tokens (0 under keep-answer for FinQA).
    pub answers_truncated: usize,
    /// Records without gold evidence under the evidence policy.
    pub evidence_fallbacks: usize,
    /// Learned target tokens in all examples (answer + EOS).
    pub target_tokens: usize,
    /// Tokenization wall time.
    pub seconds: f64,
    /// Examples tokenized per second.
    pub examples_per_second: f64,
}

fn nearest_rank(sorted: &[usize], p: f64) -> usize {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Summarizes a tokenized set; `skipped` is the loader's bad-record count.
pub fn summary(set: &TokenizedSet, skipped: usize) -> DataSummary {
    let mut lengths = set.lengths();
    lengths.sort_unstable();
    DataSummary {
        examples: set.examples.len(),
        skipped,
        dropped: set.dropped.len(),
        policy: set.options.policy,
        max_length: set.options.max_length,
        tokens_p50: nearest_rank(&lengths, 0.5),
        tokens_p90: nearest_rank(&lengths, 0.9),
        tokens_max: lengths.last().copied().unwrap_or(0),
        contexts_trimmed: set.examples.iter().filter(|e| e.context_trimmed).count(),
        answers_truncated: set.answers_truncated(),
        evidence_fallbacks: set.evidence_fallbacks,
        target_tokens: set.examples.iter().map(|e| e.learned_len()).sum(),
        seconds: set.seconds,
        examples_per_second: set.examples_per_second(),
    }
}

impl std::fmt::Display for DataSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "examples: {} (skipped bad records: {}, dropped as too long: {})",
            self.examples, self.skipped, self.dropped
        )?;
        writeln!(
            f,
            "tokens per example: p50 {}  p90 {}  max {}  (max_length {})",
            self.tokens_p50, self.tokens_p90, self.tokens_max, self.max_length
        )?;
        writeln!(
            f,
            "truncation policy {}: contexts shortened {}, answers truncated {}",
            self.policy, self.contexts_trimmed, self.answers_truncated
        )?;
        if self.policy == TruncationPolicy::Evidence {
            writeln!(
                f,
                "records without gold evidence: {}",
                self.evidence_fallbacks
            )?;
        }
        write!(
            f,
            "learned target tokens: {}; tokenized in {:.2} s ({:.0} examples/s)",
            self.target_tokens, self.seconds, self.examples_per_second
        )
    }
}

/// One example as text and token counts, for `trainer data --dump`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpRow {
    /// The record id.
    pub id: String,
    /// The prompt text after truncation.
    pub prompt: String,
    /// The target text (EOS not shown).
    pub target: String,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Learned tokens (target + EOS that were kept).
    pub target_tokens: usize,
    /// All tokens.
    pub total_tokens: usize,
    /// Some answer or EOS token was cut.
    pub answer_truncated: bool,
    /// The context / prompt was shortened.
    pub context_trimmed: bool,
}

/// Dump rows for all examples.
pub fn dump_rows(set: &TokenizedSet) -> Vec<DumpRow> {
    set.examples
        .iter()
        .map(|e| DumpRow {
            id: e.id.clone(),
            prompt: e.prompt_text.clone(),
            target: e.target_text.clone(),
            prompt_tokens: e.prompt_len,
            target_tokens: e.learned_len(),
            total_tokens: e.input_ids.len(),
            answer_truncated: e.answer_truncated,
            context_trimmed: e.context_trimmed,
        })
        .collect()
}

/// Writes rows as JSON lines.
pub fn write_jsonl<W: Write>(rows: &[DumpRow], mut out: W) -> std::io::Result<()> {
    for r in rows {
        serde_json::to_writer(&mut out, r)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::nearest_rank;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<usize> = (1..=10).collect();
        assert_eq!(nearest_rank(&v, 0.5), 5);
        assert_eq!(nearest_rank(&v, 0.9), 9);
        assert_eq!(nearest_rank(&v, 1.0), 10);
        assert_eq!(nearest_rank(&[7], 0.5), 7);
        assert_eq!(nearest_rank(&[], 0.5), 0);
    }
}
