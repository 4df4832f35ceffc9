//! Errors of the NF4 module.

use crate::DType;

/// Everything that can go wrong when quantizing, loading or applying a 4-bit weight.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Nf4Error {
    #[error(
        "blocksize {0} is not one bitsandbytes accepts (32, 64, 128, 256, 512, 1024, 2048, 4096)"
    )]
    BadBlocksize(usize),
    #[error("nested blocksize {0} must be a positive even number")]
    BadNestedBlocksize(usize),
    #[error(
        "source has {got} elements but the shape [{out_features}, {in_features}] needs {expected}"
    )]
    SourceLength {
        got: usize,
        expected: usize,
        out_features: usize,
        in_features: usize,
    },
    #[error("shape [{0}, {1}] has more elements than this machine can address")]
    ShapeOverflow(usize, usize),
    #[error("{what}: expected {expected} elements, got {got}")]
    Length {
        what: String,
        expected: usize,
        got: usize,
    },
    #[error("row range {start}..{end} is outside a weight with {rows} rows")]
    RowRange {
        start: usize,
        end: usize,
        rows: usize,
    },
    #[error("tensor `{0}` is missing from the state dict")]
    MissingTensor(String),
    #[error("tensor `{name}`: expected dtype {expected}, found {found}")]
    TensorDtype {
        name: String,
        expected: DType,
        found: DType,
    },
    #[error("tensor `{name}`: expected shape {expected:?}, found {found:?}")]
    TensorShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor `{name}`: {reason}")]
    TensorData { name: String, reason: String },
    #[error("tensor `{name}`: bad quant state JSON: {reason}")]
    QuantStateJson { name: String, reason: String },
    #[error("no quant state for `{prefix}`: expected exactly one of `{prefix}.weight.quant_state.bitsandbytes__nf4` or `__fp4`, found {found}")]
    QuantStateKey { prefix: String, found: usize },
    #[error("dtype {0} cannot be the source or output dtype of a 4-bit weight (f32, bf16, f16)")]
    UnsupportedDtype(DType),
}
