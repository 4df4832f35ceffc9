//! Collation: right padding of tokenized examples into one row-major batch.
//!
//! Layout: `input_ids`, `labels` and `attention_mask` are `[batch_size, seq_len]`, row-major
//! (element `(b, t)` at `b * seq_len + t`). Row `b` holds example `b`'s tokens at `t < len_b`,
//! then padding: `input_ids = pad_id`, `labels = -100`, `attention_mask = 0`. Positions are
//! `0..seq_len` in every row (right padding keeps RoPE positions of real tokens unchanged).
//! `seq_len` is the longest example, rounded up to `pad_to_multiple_of` when given.

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::tokenize::{TokenizedExample, IGNORE_INDEX};

/// A padded batch, row-major `[batch_size, seq_len]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// Token ids; padding is the caller's pad id (Falcon: the EOS id).
    pub input_ids: Vec<u32>,
    /// Unshifted labels; -100 on prompt and padding.
    pub labels: Vec<i32>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<u8>,
    /// Rows.
    pub batch_size: usize,
    /// Columns.
    pub seq_len: usize,
}

impl Batch {
    /// Right-pads `examples` to a common length (see the module docs).
    pub fn collate(
        examples: &[&TokenizedExample],
        pad_id: u32,
        pad_to_multiple_of: Option<usize>,
    ) -> Result<Batch> {
        if examples.is_empty() {
            return Err(DataError::InvalidOption {
                name: "batch",
                message: "cannot collate an empty batch".to_string(),
            });
        }
        let longest = examples
            .iter()
            .map(|e| e.input_ids.len())
            .max()
            .unwrap_or(0);
        let seq_len = match pad_to_multiple_of {
            None => longest,
            Some(0) => {
                return Err(DataError::InvalidOption {
                    name: "pad_to_multiple_of",
                    message: "must be at least 1".to_string(),
                })
            }
            Some(m) => longest.div_ceil(m) * m,
        };
        let n = examples.len() * seq_len;
        let mut input_ids = vec![pad_id; n];
        let mut labels = vec![IGNORE_INDEX; n];
        let mut attention_mask = vec![0u8; n];
        for (b, e) in examples.iter().enumerate() {
            if e.labels.len() != e.input_ids.len() {
                return Err(DataError::InvalidOption {
                    name: "example",
                    message: format!(
                        "example {:?} has {} labels for {} tokens",
                        e.id,
                        e.labels.len(),
                        e.input_ids.len()
                    ),
                });
            }
            let row = b * seq_len;
            let len = e.input_ids.len();
            input_ids[row..row + len].copy_from_slice(&e.input_ids);
            labels[row..row + len].copy_from_slice(&e.labels);
            attention_mask[row..row + len].fill(1);
        }
        Ok(Batch {
            input_ids,
            labels,
            attention_mask,
            batch_size: examples.len(),
            seq_len,
        })
    }

    /// Number of targets the causal loss uses: labels `!= -100` at positions `1..seq_len` of each
    /// row (position 0 has no preceding logit after the shift).
    pub fn target_token_count(&self) -> usize {
        if self.seq_len == 0 {
            return 0;
        }
        self.labels
            .chunks(self.seq_len)
            .map(|row| row[1..].iter().filter(|&&l| l != IGNORE_INDEX).count())
            .sum()
    }

    /// Number of real (unpadded) tokens.
    pub fn real_token_count(&self) -> usize {
        self.attention_mask.iter().filter(|&&m| m != 0).count()
    }

    /// Position ids `[batch_size, seq_len]`: `0..seq_len` in every row.
    pub fn position_ids(&self) -> Vec<u32> {
        (0..self.batch_size)
            .flat_map(|_| 0..self.seq_len as u32)
            .collect()
    }
}
