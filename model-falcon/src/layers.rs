//! The building blocks of a Falcon decoder: linear layers over a frozen (dense or 4-bit) base
//! with an optional LoRA adapter, and LayerNorm.

use crate::lora::LoraAdapter;
use engine::nf4::QuantizedWeight;
use engine::{ops, Result, Var};
use std::sync::Arc;

/// A frozen base weight `[out, in]`.
#[derive(Clone, Debug)]
pub enum BaseWeight {
    /// Unquantized (f32), a constant of the graph.
    Dense(Var),
    /// NF4/FP4, dequantized tile by tile inside the op.
    Quantized(Arc<QuantizedWeight>),
}

impl BaseWeight {
    pub fn shape(&self) -> [usize; 2] {
        match self {
            BaseWeight::Dense(w) => {
                let d = w.dims();
                [d[0], d[1]]
            }
            BaseWeight::Quantized(q) => q.shape(),
        }
    }

    /// Bytes the weight occupies (packed codes and statistics for 4-bit).
    pub fn storage_bytes(&self) -> usize {
        match self {
            BaseWeight::Dense(w) => w.value().size_in_bytes(),
            BaseWeight::Quantized(q) => q.storage_bytes(),
        }
    }

    /// The weight as f32 `[out, in]` (dequantized for 4-bit), for merging and exports.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        match self {
            BaseWeight::Dense(w) => w.value().to_f32_vec(),
            BaseWeight::Quantized(q) => Ok(q.dequantize_stored_f32()),
        }
    }
}

/// `y = x·Wᵀ (+ scaling·B·A·dropout(x))`.
#[derive(Clone, Debug)]
pub struct Linear {
    /// Module path, e.g. `transformer.h.0.self_attention.query_key_value`.
    pub name: String,
    pub base: BaseWeight,
    pub lora: Option<LoraAdapter>,
}

impl Linear {
    pub fn forward(&self, x: &Var, train: bool) -> Result<Var> {
        self.forward_impl(x, train, false)
    }

    /// [`Self::forward`] for an output whose value is never read, only differentiated (a
    /// recomputed segment's output projection): the base product is skipped (its backward
    /// needs only `x` and `W`) and the value is NaN. The LoRA branch runs as usual, since its
    /// backward reads its intermediate `A·x`.
    pub fn forward_unread(&self, x: &Var, train: bool) -> Result<Var> {
        self.forward_impl(x, train, true)
    }

    fn forward_impl(&self, x: &Var, train: bool, unread: bool) -> Result<Var> {
        let y = match (&self.base, unread) {
            (BaseWeight::Dense(w), false) => ops::linear(x, w)?,
            (BaseWeight::Dense(w), true) => ops::linear_unread(x, w)?,
            (BaseWeight::Quantized(q), false) => ops::quant_linear(x, q)?,
            (BaseWeight::Quantized(q), true) => ops::quant_linear_unread(x, q)?,
        };
        let Some(l) = &self.lora else { return Ok(y) };
        ops::lora_add(&y, x, &l.a, &l.b, l.scaling, l.dropout, train)
    }
}

/// LayerNorm with affine parameters (frozen).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Var,
    pub bias: Var,
    pub eps: f64,
}

impl LayerNorm {
    pub fn forward(&self, x: &Var) -> Result<Var> {
        ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}
