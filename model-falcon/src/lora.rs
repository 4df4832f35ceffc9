//! LoRA adapters exactly as PEFT applies them to a linear layer:
//! `y = base(x) + scaling · B(A(dropout(x)))`, with `scaling = α/r` (or `α/√r` with rsLoRA),
//! dropout on the input of A (a fresh mask per wrapped layer), A initialized
//! kaiming-uniform(a=√5) = U(−1/√in, 1/√in), B initialized to zeros, fp32 master weights.

use crate::checkpoint::LinearKind;
use engine::{rng, DType, Tensor, Var};

/// Which linear modules get adapters (PEFT `target_modules`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetModules {
    /// Module names; a name matches a module whose own name (or path suffix) equals it.
    Names(Vec<String>),
    /// `"all-linear"`: every linear layer except the output layer.
    AllLinear,
}

impl TargetModules {
    /// Parses a comma-separated list or `all-linear`.
    pub fn parse(s: &str) -> Self {
        if s.trim() == "all-linear" {
            TargetModules::AllLinear
        } else {
            TargetModules::Names(
                s.split(',')
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
                    .collect(),
            )
        }
    }

    /// PEFT's match: the module path equals the name or ends with `.name`.
    pub fn matches(&self, kind: LinearKind) -> bool {
        match self {
            TargetModules::AllLinear => true,
            TargetModules::Names(names) => names.iter().any(|n| {
                let path = kind.path_in_layer();
                n == kind.short_name() || n == path || path.ends_with(&format!(".{n}"))
            }),
        }
    }

    /// Every name must denote one of Falcon's linear modules.
    pub fn validate(&self) -> Result<(), String> {
        if let TargetModules::Names(names) = self {
            if names.is_empty() {
                return Err("target modules list is empty".into());
            }
            for n in names {
                if !LinearKind::ALL
                    .iter()
                    .any(|k| TargetModules::Names(vec![n.clone()]).matches(*k))
                {
                    return Err(format!(
                        "target module `{n}` is not a Falcon linear layer (expected query_key_value, dense, dense_h_to_4h, dense_4h_to_h or all-linear)"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// LoRA hyper-parameters (PEFT `LoraConfig` fields that change the math).
#[derive(Clone, Debug, PartialEq)]
pub struct LoraSettings {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f32,
    pub use_rslora: bool,
    pub targets: TargetModules,
}

impl Default for LoraSettings {
    /// The seed tutorial's values: r=8, α=16, dropout 0.05, query_key_value.
    fn default() -> Self {
        LoraSettings {
            r: 8,
            alpha: 16.0,
            dropout: 0.05,
            use_rslora: false,
            targets: TargetModules::Names(vec!["query_key_value".into()]),
        }
    }
}

impl LoraSettings {
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }
}

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
        settings: &LoraSettings,
        seed: u64,
    ) -> Self {
        let bound = 1.0 / (in_features as f64).sqrt();
        let a: Vec<f32> = (0..(settings.r * in_features) as u64)
            .map(|i| ((2.0 * rng::uniform_f64(seed, i) - 1.0) * bound) as f32)
            .collect();
        LoraAdapter {
            a: Var::parameter(
                Tensor::from_vec(a, [settings.r, in_features]).expect("length matches"),
            ),
            b: Var::parameter(Tensor::zeros([out_features, settings.r], DType::F32)),
            scaling: settings.scaling(),
            dropout: settings.dropout,
        }
    }

    /// Adapter from given weights (a loaded PEFT adapter).
    pub fn from_weights(a: Tensor, b: Tensor, settings: &LoraSettings) -> Self {
        LoraAdapter {
            a: Var::parameter(a),
            b: Var::parameter(b),
            scaling: settings.scaling(),
            dropout: settings.dropout,
        }
    }
}
