//! Batch sampling: seeded shuffling, optional length grouping, and a resumable position.
//!
//! The batches of epoch `e` are a pure function of `(lengths, config, e)`:
//!
//! 1. `order` = `0..n`, shuffled with [`SplitMix64::for_stream`]`(seed, e)` when `shuffle`.
//! 2. With `group_by_length` (like Hugging Face's `LengthGroupedSampler`): `order` is cut into
//!    mega-batches of `batch_size * megabatch_factor` indices, each sorted by length, longest
//!    first (ties by index); then cut into batches, and the batch holding the longest example of
//!    the epoch is swapped to the front (an out-of-memory shows up in the first step).
//! 3. `order` is cut into batches of `batch_size`; a short last batch is kept unless
//!    `drop_last`.
//!
//! The position is `(epoch, next batch in the epoch)`; [`SamplerState`] stores it with the
//! configuration and a fingerprint of the lengths, so a resumed run rebuilds the same epoch
//! and continues at exactly the next batch, and a resume on other data is refused.

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::rng::SplitMix64;

/// How batches are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerConfig {
    /// Examples per batch.
    pub batch_size: usize,
    /// Shuffle every epoch.
    pub shuffle: bool,
    /// Seed of the shuffles.
    pub seed: u64,
    /// Put examples of similar length together (less padding).
    pub group_by_length: bool,
    /// Mega-batch size in batches for length grouping (Hugging Face uses 50).
    pub megabatch_factor: usize,
    /// Drop a short last batch.
    pub drop_last: bool,
}

impl SamplerConfig {
    /// Shuffled, not grouped, keeps the last batch (Hugging Face Trainer defaults).
    pub fn new(batch_size: usize, seed: u64) -> Self {
        Self {
            batch_size,
            shuffle: true,
            seed,
            group_by_length: false,
            megabatch_factor: 50,
            drop_last: false,
        }
    }
}

/// The saved data position (serialize it into the checkpoint).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    /// The configuration the position belongs to.
    pub config: SamplerConfig,
    /// Number of examples.
    pub n_examples: usize,
    /// FNV-1a fingerprint of the example lengths.
    pub lengths_fingerprint: u64,
    /// The current epoch (0-based).
    pub epoch: u64,
    /// The next batch to hand out within the epoch.
    pub next_batch: usize,
    /// Batches handed out since the start (all epochs).
    pub batches_served: u64,
}

/// Hands out batches of example indices, epoch after epoch.
#[derive(Debug, Clone)]
pub struct Sampler {
    config: SamplerConfig,
    lengths: Vec<usize>,
    fingerprint: u64,
    epoch: u64,
    next_batch: usize,
    batches_served: u64,
    batches: Vec<Vec<usize>>,
}

fn fingerprint(lengths: &[usize]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &l in lengths {
        for b in (l as u64).to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

impl Sampler {
    /// A sampler at the start of epoch 0. `lengths[i]` is example `i`'s token count.
    pub fn new(lengths: Vec<usize>, config: SamplerConfig) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(DataError::InvalidOption {
                name: "batch_size",
                message: "must be at least 1".to_string(),
            });
        }
        if config.group_by_length && config.megabatch_factor == 0 {
            return Err(DataError::InvalidOption {
                name: "megabatch_factor",
                message: "must be at least 1".to_string(),
            });
        }
        let per_epoch = batches_per_epoch(lengths.len(), &config);
        if per_epoch == 0 {
            return Err(DataError::InvalidOption {
                name: "batch_size",
                message: format!(
                    "{} examples give no batch of {} (drop_last = {})",
                    lengths.len(),
                    config.batch_size,
                    config.drop_last
                ),
            });
        }
        let fingerprint = fingerprint(&lengths);
        let mut s = Self {
            config,
            lengths,
            fingerprint,
            epoch: 0,
            next_batch: 0,
            batches_served: 0,
            batches: Vec::new(),
        };
        s.batches = s.epoch_batches(0);
        Ok(s)
    }

    /// A sampler positioned where `state` was saved. Fails when the data or configuration
    /// differ from the saved ones.
    pub fn resume(
        lengths: Vec<usize>,
        config: SamplerConfig,
        state: &SamplerState,
    ) -> Result<Self> {
        if state.config != config {
            return Err(DataError::ResumeMismatch(format!(
                "sampler configuration changed: saved {:?}, now {:?}",
                state.config, config
            )));
        }
        if state.n_examples != lengths.len() || state.lengths_fingerprint != fingerprint(&lengths) {
            return Err(DataError::ResumeMismatch(format!(
                "the training data differ from the saved run ({} examples saved, {} now, or \
                 other token lengths); resume with the same data, tokenizer and max_length",
                state.n_examples,
                lengths.len()
            )));
        }
        let mut s = Self::new(lengths, config)?;
        if state.next_batch > s.batches_per_epoch() {
            return Err(DataError::ResumeMismatch(format!(
                "saved position {} is past the {} batches of an epoch",
                state.next_batch,
                s.batches_per_epoch()
            )));
        }
        s.epoch = state.epoch;
        s.next_batch = state.next_batch;
        s.batches_served = state.batches_served;
        s.batches = s.epoch_batches(s.epoch);
        Ok(s)
    }

    /// The current position.
    pub fn state(&self) -> SamplerState {
        SamplerState {
            config: self.config,
            n_examples: self.lengths.len(),
            lengths_fingerprint: self.fingerprint,
            epoch: self.epoch,
            next_batch: self.next_batch,
            batches_served: self.batches_served,
        }
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        batches_per_epoch(self.lengths.len(), &self.config)
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The next batch of example indices; moves to the next epoch after the last batch.
    pub fn next_batch(&mut self) -> Vec<usize> {
        if self.next_batch >= self.batches.len() {
            self.epoch += 1;
            self.next_batch = 0;
            self.batches = self.epoch_batches(self.epoch);
        }
        let b = self.batches[self.next_batch].clone();
        self.next_batch += 1;
        self.batches_served += 1;
        b
    }

    /// All batches of epoch `epoch` (pure; does not move the position).
    pub fn epoch_batches(&self, epoch: u64) -> Vec<Vec<usize>> {
        let n = self.lengths.len();
        let bs = self.config.batch_size;
        let mut order: Vec<usize> = (0..n).collect();
        if self.config.shuffle {
            SplitMix64::for_stream(self.config.seed, epoch).shuffle(&mut order);
        }
        let mut batches: Vec<Vec<usize>> = if self.config.group_by_length {
            let mega = bs * self.config.megabatch_factor;
            for chunk in order.chunks_mut(mega) {
                chunk.sort_by(|&a, &b| self.lengths[b].cmp(&self.lengths[a]).then(a.cmp(&b)));
            }
            let mut batches: Vec<Vec<usize>> = order.chunks(bs).map(|c| c.to_vec()).collect();
            let longest = batches
                .iter()
                .enumerate()
                .max_by(|(ia, a), (ib, b)| {
                    let la = a.iter().map(|&i| self.lengths[i]).max().unwrap_or(0);
                    let lb = b.iter().map(|&i| self.lengths[i]).max().unwrap_or(0);
                    la.cmp(&lb).then(ib.cmp(ia))
                })
                .map(|(i, _)| i)
                .unwrap_or(0);
            batches.swap(0, longest);
            batches
        } else {
            order.chunks(bs).map(|c| c.to_vec()).collect()
        };
        if self.config.drop_last {
            batches.retain(|b| b.len() == bs);
        }
        batches
    }
}

fn batches_per_epoch(n: usize, config: &SamplerConfig) -> usize {
    if config.batch_size == 0 {
        0
    } else if config.drop_last {
        n / config.batch_size
    } else {
        n.div_ceil(config.batch_size)
    }
}
