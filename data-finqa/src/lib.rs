//! FinQA data pipeline: loading, prompts, labels, batching, metrics.
//!
//! The path of an example through this crate:
//!
//! 1. [`load::load_file`] reads a FinQA file (original release or Hugging Face export) or a
//!    generic prompt/completion JSON-lines file into [`Record`]s / [`PromptCompletion`]s,
//!    reporting bad records ([`LoadReport`]).
//! 2. [`split::split_train_val`] picks a deterministic validation subset.
//! 3. [`tokenize::tokenize_records`] builds the seed's prompt ([`prompt`]), tokenizes it with a
//!    `tokenizers::Tokenizer`, appends the answer and EOS, masks the prompt in the labels and
//!    cuts over-long examples under a [`TruncationPolicy`].
//! 4. [`sampler::Sampler`] yields batches of example indices (seeded, optionally grouped by
//!    length, resumable from a [`SamplerState`]); [`Batch::collate`] right-pads them.
//! 5. [`metrics`] scores generated answers; [`summary()`] reports what `trainer data` prints.
//!
//! [`synthetic`] makes FinQA-style records and a small byte-level BPE tokenizer for the default
//! run and the tests; [`rng`] is the crate's bit-stable PRNG.

pub mod batch;
pub mod error;
pub mod load;
pub mod metrics;
pub mod prompt;
pub mod pyrepr;
mod raw;
pub mod record;
pub mod rng;
pub mod sampler;
pub mod split;
pub mod summary;
pub mod synthetic;
pub mod tokenize;

pub use batch::Batch;
pub use error::{BadRecord, DataError, Result};
pub use load::{
    load_file, load_file_limited, parse_bytes, BadRecordPolicy, DataFormat, LoadOptions,
    LoadReport, DEFAULT_MAX_DATA_BYTES, MAX_RECORD_TEXT_BYTES,
};
pub use prompt::{seed_example, seed_prompt, Example};
pub use record::{AnswerSource, ExeAns, GoldFact, PromptCompletion, Record};
pub use sampler::{Sampler, SamplerConfig, SamplerState};
pub use split::{split_train_val, TrainValSplit};
pub use summary::{dump_rows, summary, DataSummary, DumpRow};
pub use tokenize::{
    tokenize_pairs, tokenize_records, tokenize_report, TokenizeOptions, TokenizedExample,
    TokenizedSet, TruncationPolicy, IGNORE_INDEX,
};
