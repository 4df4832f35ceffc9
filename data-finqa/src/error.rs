//! Errors of the data pipeline. Every message names the file (and record) it is about.

use std::path::PathBuf;

/// Errors returned by this crate.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("cannot read data file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file is not valid JSON / JSON lines at all (not a per-record problem).
    #[error("{path}: not valid JSON: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What serde_json reported, with line and column.
        message: String,
    },
    /// Auto-detection found no known format.
    #[error("{path}: cannot detect the data format: {reason}; pass the format explicitly (finqa, hf, prompt-completion)")]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// Why detection failed (for example the keys of the first record).
        reason: String,
    },
    /// A record is malformed and the policy is to fail.
    #[error("{0}")]
    BadRecord(BadRecord),
    /// The file holds no usable record.
    #[error("{path}: no usable records ({skipped} skipped){first_reasons}")]
    Empty {
        /// The file.
        path: PathBuf,
        /// How many records were skipped as bad.
        skipped: usize,
        /// The first few skipped records with their reasons (record, field, why), one per
        /// line, or empty.
        first_reasons: String,
    },
    /// The file is larger than the stated limit and was not read.
    #[error("{path}: {bytes} bytes is more than the {limit}-byte limit on data files; raise it with --max-data-size if the file is right")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// A string could not be parsed as a data format / policy name.
    #[error("unknown {what} {value:?}; expected one of: {expected}")]
    UnknownName {
        /// What kind of name ("data format", "truncation policy").
        what: &'static str,
        /// The name given.
        value: String,
        /// The accepted names.
        expected: &'static str,
    },
    /// The tokenizer failed on a text.
    #[error("tokenizer failed on record {id:?}: {message}")]
    Tokenizer {
        /// The record id.
        id: String,
        /// The tokenizer's message.
        message: String,
    },
    /// Building or training the synthetic tokenizer failed.
    #[error("building the synthetic tokenizer failed: {0}")]
    TokenizerBuild(String),
    /// An option is out of range.
    #[error("invalid option {name}: {message}")]
    InvalidOption {
        /// The option.
        name: &'static str,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A saved sampler position does not belong to this data or configuration.
    #[error("cannot resume the data position: {0}")]
    ResumeMismatch(String),
}

/// One malformed record: where it is and what is wrong with it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BadRecord {
    /// The file the record came from.
    pub path: PathBuf,
    /// 0-based index of the record in the file (array element or non-empty line).
    pub index: usize,
    /// 1-based line number for JSON-lines files.
    pub line: Option<usize>,
    /// The record's `id` when it has a readable one.
    pub id: Option<String>,
    /// What is wrong, naming the field and the expected type.
    pub reason: String,
}

impl std::fmt::Display for BadRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: record {}", self.path.display(), self.index)?;
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        if let Some(id) = &self.id {
            write!(f, " id {id:?}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Result alias of this crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
