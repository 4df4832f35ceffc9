//! Errors of this crate: loading and writing configs, checkpoints, tokenizers and adapters,
//! the model's ops, and the CUDA step. Every message names the file (and the tensor or field)
//! or the argument, and says what was expected, so a bad input can be fixed from the message
//! alone.

use std::path::PathBuf;

/// Everything that can go wrong while reading or writing Falcon configs, checkpoints,
/// tokenizers and PEFT adapters, running the model, or training it on a CUDA device.
#[derive(Debug, thiserror::Error)]
pub enum FalconError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A config field is missing, has the wrong type, or an impossible value.
    #[error("{path}: field `{field}`: {message}")]
    ConfigField {
        path: PathBuf,
        field: String,
        message: String,
    },

    /// A valid config that describes a variant this crate does not implement.
    #[error("{path}: unsupported Falcon variant: field `{field}` {message}")]
    Unsupported {
        path: PathBuf,
        field: String,
        message: String,
    },

    /// The safetensors header of a file is malformed.
    #[error("{path}: invalid safetensors header: {message}")]
    Header { path: PathBuf, message: String },

    /// The file ends before the data the header announces.
    #[error("{path}: file is truncated: tensor `{tensor}` needs bytes up to {needed} of the data section but the file holds only {available}")]
    Truncated {
        path: PathBuf,
        tensor: String,
        needed: u64,
        available: u64,
    },

    #[error("{path}: tensor `{tensor}` has unknown dtype `{dtype}`")]
    UnknownDType {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },

    #[error("{path}: tensor `{tensor}` has dtype {found}, expected {expected}")]
    WrongDType {
        path: PathBuf,
        tensor: String,
        found: String,
        expected: String,
    },

    #[error("{dir}: missing tensor `{tensor}` (expected shape {expected:?})")]
    MissingTensor {
        dir: PathBuf,
        tensor: String,
        expected: Vec<usize>,
    },

    #[error("{path}: unexpected tensor `{tensor}`: not part of a {model} checkpoint")]
    UnexpectedTensor {
        path: PathBuf,
        tensor: String,
        model: String,
    },

    #[error("{path}: tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        tensor: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },

    #[error("{path}: tensor `{tensor}` holds {value} at element {index}: weights must be finite (a diverged run, or a corrupt or badly converted file)")]
    NonFinite {
        path: PathBuf,
        tensor: String,
        index: usize,
        value: f32,
    },

    #[error("tensor `{tensor}` is stored twice: in {first} and in {second}")]
    DuplicateTensor {
        tensor: String,
        first: PathBuf,
        second: PathBuf,
    },

    /// The sharded index and the shards disagree.
    #[error("{path}: {message}")]
    Index { path: PathBuf, message: String },

    #[error("{dir}: no checkpoint found: expected model.safetensors or model.safetensors.index.json{hint}")]
    NoCheckpoint { dir: PathBuf, hint: String },

    #[error("tensor `{0}` is not in this checkpoint")]
    UnknownTensor(String),

    #[error("{path}: tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },

    /// A PEFT adapter (config or weights) that does not match what is expected.
    #[error("{path}: adapter: {message}")]
    Adapter { path: PathBuf, message: String },

    /// Invalid arguments given to a writer (not input-file problems).
    #[error("{0}")]
    InvalidArgument(String),

    /// A tensor op failed (shapes, dtypes, devices) while building or running the model.
    #[error(transparent)]
    Engine(#[from] engine::Error),

    /// The CUDA training step failed on the device (launch checks, out of memory, driver).
    #[error("CUDA step: {what}: {source}")]
    Cuda {
        what: String,
        #[source]
        source: kernels_cu::Error,
    },

    /// A 4-bit weight could not be quantized or parsed.
    #[error("tensor `{tensor}`: {source}")]
    Quant {
        tensor: String,
        source: engine::nf4::Nf4Error,
    },
}

pub type Result<T> = std::result::Result<T, FalconError>;

impl FalconError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FalconError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn field(
        path: impl Into<PathBuf>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        FalconError::ConfigField {
            path: path.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn unsupported(
        path: impl Into<PathBuf>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        FalconError::Unsupported {
            path: path.into(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Reads and parses a JSON file.
pub(crate) fn read_json(path: &std::path::Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| FalconError::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| FalconError::Json {
        path: path.to_path_buf(),
        source,
    })
}
