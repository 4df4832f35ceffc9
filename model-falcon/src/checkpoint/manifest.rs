//! The tensors a Falcon checkpoint must hold, derived from its config (HF naming; the old
//! RefinedWeb checkpoints use the same names). Shapes are `[out, in]` for linear weights
//! (`y = x·Wᵀ`).

use crate::config::{FalconConfig, NormLayout};

/// Name of the embedding matrix `[vocab, hidden]`; lm_head reads it when tied.
pub const EMBEDDING: &str = "transformer.word_embeddings.weight";
/// Name of the output projection `[vocab, hidden]` (absent from tied safetensors saves).
pub const LM_HEAD: &str = "lm_head.weight";

/// The four linear layers of a decoder layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinearKind {
    /// `self_attention.query_key_value`: `[qkv_out, hidden]`, fused per the attention layout.
    QueryKeyValue,
    /// `self_attention.dense`: `[hidden, hidden]`.
    Dense,
    /// `mlp.dense_h_to_4h`: `[ffn, hidden]`.
    DenseHTo4h,
    /// `mlp.dense_4h_to_h`: `[hidden, ffn]`.
    Dense4hToH,
}

impl LinearKind {
    pub const ALL: [LinearKind; 4] = [
        LinearKind::QueryKeyValue,
        LinearKind::Dense,
        LinearKind::DenseHTo4h,
        LinearKind::Dense4hToH,
    ];

    /// The module's own name (what PEFT `target_modules` lists).
    pub fn short_name(self) -> &'static str {
        match self {
            LinearKind::QueryKeyValue => "query_key_value",
            LinearKind::Dense => "dense",
            LinearKind::DenseHTo4h => "dense_h_to_4h",
            LinearKind::Dense4hToH => "dense_4h_to_h",
        }
    }

    /// Path inside a decoder layer.
    pub fn path_in_layer(self) -> &'static str {
        match self {
            LinearKind::QueryKeyValue => "self_attention.query_key_value",
            LinearKind::Dense => "self_attention.dense",
            LinearKind::DenseHTo4h => "mlp.dense_h_to_4h",
            LinearKind::Dense4hToH => "mlp.dense_4h_to_h",
        }
    }

    /// `(in_features, out_features)` for a config.
    pub fn features(self, cfg: &FalconConfig) -> (usize, usize) {
        let h = cfg.hidden_size;
        match self {
            LinearKind::QueryKeyValue => (h, cfg.qkv_out_features()),
            LinearKind::Dense => (h, h),
            LinearKind::DenseHTo4h => (h, cfg.ffn_hidden_size),
            LinearKind::Dense4hToH => (cfg.ffn_hidden_size, h),
        }
    }
}

/// One linear module of the model, e.g. `transformer.h.3.mlp.dense_h_to_4h`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinearModule {
    /// Module path without `.weight`.
    pub name: String,
    pub layer: usize,
    pub kind: LinearKind,
    pub in_features: usize,
    pub out_features: usize,
}

impl LinearModule {
    pub fn weight_name(&self) -> String {
        format!("{}.weight", self.name)
    }
}

/// The decoder-layer linear modules in layer order (`h.0.qkv, h.0.dense, …`). lm_head is not
/// included: it is the tied embedding, never quantized nor adapted.
pub fn linear_modules(cfg: &FalconConfig) -> Vec<LinearModule> {
    let mut out = Vec::with_capacity(cfg.num_hidden_layers * 4);
    for layer in 0..cfg.num_hidden_layers {
        for kind in LinearKind::ALL {
            let (in_features, out_features) = kind.features(cfg);
            out.push(LinearModule {
                name: format!("transformer.h.{layer}.{}", kind.path_in_layer()),
                layer,
                kind,
                in_features,
                out_features,
            });
        }
    }
    out
}

/// Which LayerNorm a norm tensor belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// `input_layernorm` (single-LN layout).
    Input,
    /// `ln_attn` (two-LN layout).
    Attn,
    /// `ln_mlp` (two-LN layout).
    Mlp,
    /// `transformer.ln_f`.
    Final,
}

/// What a checkpoint tensor is, so the loader can decide what to quantize (linear weights
/// only; embeddings and LayerNorms stay as they are, like bitsandbytes/transformers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorRole {
    Embedding,
    /// Only expected when `tie_word_embeddings` is false.
    LmHead,
    /// LayerNorm γ (`bias = false`) or β (`bias = true`); `layer` is None for ln_f.
    Norm {
        layer: Option<usize>,
        kind: NormKind,
        bias: bool,
    },
    LinearWeight {
        layer: usize,
        kind: LinearKind,
    },
    /// Only when the config has `bias = true`.
    LinearBias {
        layer: usize,
        kind: LinearKind,
    },
}

/// One tensor the checkpoint must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: TensorRole,
}

/// All tensors of a checkpoint for `cfg`, in model order: embedding, then per layer the norms
/// and the four linears (weights, then biases if any), then ln_f, then lm_head if untied.
pub fn expected_tensors(cfg: &FalconConfig) -> Vec<ExpectedTensor> {
    let h = cfg.hidden_size;
    let mut out = vec![ExpectedTensor {
        name: EMBEDDING.into(),
        shape: vec![cfg.vocab_size, h],
        role: TensorRole::Embedding,
    }];
    let norm = |out: &mut Vec<ExpectedTensor>, prefix: &str, layer: Option<usize>, kind| {
        for (suffix, bias) in [("weight", false), ("bias", true)] {
            out.push(ExpectedTensor {
                name: format!("{prefix}.{suffix}"),
                shape: vec![h],
                role: TensorRole::Norm { layer, kind, bias },
            });
        }
    };
    for layer in 0..cfg.num_hidden_layers {
        let p = format!("transformer.h.{layer}");
        match cfg.norms {
            NormLayout::Single => norm(
                &mut out,
                &format!("{p}.input_layernorm"),
                Some(layer),
                NormKind::Input,
            ),
            NormLayout::Separate => {
                norm(
                    &mut out,
                    &format!("{p}.ln_attn"),
                    Some(layer),
                    NormKind::Attn,
                );
                norm(&mut out, &format!("{p}.ln_mlp"), Some(layer), NormKind::Mlp);
            }
        }
        for kind in LinearKind::ALL {
            let (i, o) = kind.features(cfg);
            out.push(ExpectedTensor {
                name: format!("{p}.{}.weight", kind.path_in_layer()),
                shape: vec![o, i],
                role: TensorRole::LinearWeight { layer, kind },
            });
            if cfg.bias {
                out.push(ExpectedTensor {
                    name: format!("{p}.{}.bias", kind.path_in_layer()),
                    shape: vec![o],
                    role: TensorRole::LinearBias { layer, kind },
                });
            }
        }
    }
    norm(&mut out, "transformer.ln_f", None, NormKind::Final);
    if !cfg.tie_word_embeddings {
        out.push(ExpectedTensor {
            name: LM_HEAD.into(),
            shape: vec![cfg.vocab_size, h],
            role: TensorRole::LmHead,
        });
    }
    out
}
