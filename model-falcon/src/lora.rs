//! LoRA adapters exactly as PEFT applies them to a linear layer:
//! `y = base(x) + scaling · B(A(dropout(x)))`, with `scaling = α/r` (or `α/√r` with rsLoRA),
//! dropout on the input of A (a fresh mask per wrapped layer), A initialized
//! kaiming-uniform(a=√5) = U(−1/√in, 1/√in), B initialized to zeros, fp32 master weights.
//! Which modules are wrapped, and the adapter file format, live in [`crate::peft`].

use engine::{rng, DType, Tensor, Var};

/// The trainable pair of one adapted layer.
#[derive(Clone, Debug)]
pub struct LoraAdapter {
    /// `[r, in]`
    pub a: Var,
    /// `[out, r]`
    pub b: Var,
    pub scaling: f64,
    pub dropout: f32,
}

impl LoraAdapter {
    /// PEFT's default init: A ~ U(−1/√in, 1/√in) drawn from `(seed, index)`, B = 0.
    pub fn init(
        in_features: usize,
        out_features: usize,
        r: usize,
        scaling: f64,
        dropout: f32,
        seed: u64,
    ) -> Self {
        let bound = 1.0 / (in_features as f64).sqrt();
        let a: Vec<f32> = (0..(r * in_features) as u64)
            .map(|i| ((2.0 * rng::uniform_f64(seed, i) - 1.0) * bound) as f32)
            .collect();
        LoraAdapter {
            a: Var::parameter(Tensor::from_vec(a, [r, in_features]).expect("length matches")),
            b: Var::parameter(Tensor::zeros([out_features, r], DType::F32)),
            scaling,
            dropout,
        }
    }

    /// An adapter with given weights `a [r, in]`, `b [out, r]` (a loaded PEFT adapter).
    pub fn from_weights(a: Tensor, b: Tensor, scaling: f64, dropout: f32) -> Self {
        LoraAdapter {
            a: Var::parameter(a),
            b: Var::parameter(b),
            scaling,
            dropout,
        }
    }
}
