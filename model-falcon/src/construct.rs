//! Building a [`FalconModel`]: from a checkpoint (quantizing layer by layer while loading, so
//! host memory stays near the quantized size plus one layer), or randomly initialized
//! (the built-in tiny model of the default run and tests), and attaching LoRA adapters.

use crate::checkpoint::{LinearKind, EMBEDDING};
use crate::config::{FalconConfig, NormLayout};
use crate::error::{FalconError, Result};
use crate::layers::{BaseWeight, LayerNorm, Linear};
use crate::lora::LoraAdapter;
use crate::model::{DecoderLayer, FalconModel, Norms};
use crate::peft::{LoraConfig, LoraPair, LoraWeights};
use crate::FalconCheckpoint;
use engine::nf4::{Nf4Error, QuantConfig, QuantType, QuantizedWeight, TensorRef};
use engine::{rng, Tensor, Var};
use std::rc::Rc;
use std::str::FromStr;
use std::sync::Arc;

/// How the frozen linear weights are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantMode {
    /// f32 base: plain LoRA.
    None,
    Nf4,
    Fp4,
}

impl FromStr for QuantMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(QuantMode::None),
            "nf4" => Ok(QuantMode::Nf4),
            "fp4" => Ok(QuantMode::Fp4),
            o => Err(format!(
                "unknown quantization `{o}` (expected nf4, fp4 or none)"
            )),
        }
    }
}

/// Base-model storage options (BitsAndBytesConfig's `bnb_4bit_quant_type`,
/// `bnb_4bit_use_double_quant`; blocksize 64 as bitsandbytes uses for 4-bit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseOptions {
    pub quant: QuantMode,
    pub double_quant: bool,
    pub blocksize: usize,
}

impl Default for BaseOptions {
    fn default() -> Self {
        BaseOptions {
            quant: QuantMode::Nf4,
            double_quant: true,
            blocksize: 64,
        }
    }
}

fn make_base(
    name: &str,
    w: Vec<f32>,
    out_f: usize,
    in_f: usize,
    opts: &BaseOptions,
) -> Result<BaseWeight> {
    let qt = match opts.quant {
        QuantMode::None => {
            return Ok(BaseWeight::Dense(Var::constant(Tensor::from_vec(
                w,
                [out_f, in_f],
            )?)))
        }
        QuantMode::Nf4 => QuantType::Nf4,
        QuantMode::Fp4 => QuantType::Fp4,
    };
    let cfg = QuantConfig {
        quant_type: qt,
        blocksize: opts.blocksize,
        double_quant: opts.double_quant,
    };
    let q =
        QuantizedWeight::quantize(&w, out_f, in_f, cfg).map_err(|source| FalconError::Quant {
            tensor: name.to_string(),
            source,
        })?;
    Ok(BaseWeight::Quantized(Arc::new(q)))
}

fn norm(weight: Vec<f32>, bias: Vec<f32>, eps: f64) -> Result<LayerNorm> {
    let d = weight.len();
    Ok(LayerNorm {
        weight: Var::constant(Tensor::from_vec(weight, [d])?),
        bias: Var::constant(Tensor::from_vec(bias, [d])?),
        eps,
    })
}

/// Source of the model's tensors by checkpoint name.
trait WeightSource {
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;
    /// The 4-bit weight of a linear module when the source produces it itself (a
    /// pre-quantized weight, or one quantized straight from stored bytes); `None` to have
    /// [`Self::get`]'s f32 values quantized (or kept dense) by the caller.
    fn linear_4bit(&mut self, _module: &str) -> Result<Option<QuantizedWeight>> {
        Ok(None)
    }
}

fn assemble(
    config: FalconConfig,
    src: &mut dyn WeightSource,
    opts: &BaseOptions,
) -> Result<FalconModel> {
    if config.bias {
        return Err(FalconError::InvalidArgument(
            "linear biases (`bias: true`, falcon-rw) are not supported by this model implementation".into(),
        ));
    }
    let (h, v) = (config.hidden_size, config.vocab_size);
    let eps = config.layer_norm_epsilon;
    let embed = Var::constant(Tensor::from_vec(src.get(EMBEDDING, &[v, h])?, [v, h])?);
    let mut layers = Vec::with_capacity(config.num_hidden_layers);
    for i in 0..config.num_hidden_layers {
        let p = format!("transformer.h.{i}");
        let ln = |src: &mut dyn WeightSource, n: &str| -> Result<LayerNorm> {
            norm(
                src.get(&format!("{p}.{n}.weight"), &[h])?,
                src.get(&format!("{p}.{n}.bias"), &[h])?,
                eps,
            )
        };
        let norms = match config.norms {
            NormLayout::Single => Norms::Single(ln(src, "input_layernorm")?),
            NormLayout::Separate => Norms::Separate {
                attn: ln(src, "ln_attn")?,
                mlp: ln(src, "ln_mlp")?,
            },
        };
        let mut lin = |kind: LinearKind| -> Result<Linear> {
            let name = format!("{p}.{}", kind.path_in_layer());
            let (in_f, out_f) = kind.features(&config);
            let base = match src.linear_4bit(&name)? {
                Some(q) => {
                    if q.shape() != [out_f, in_f] {
                        return Err(FalconError::InvalidArgument(format!(
                            "pre-quantized `{name}` has shape {:?}, expected [{out_f}, {in_f}]",
                            q.shape()
                        )));
                    }
                    BaseWeight::Quantized(Arc::new(q))
                }
                None => make_base(
                    &name,
                    src.get(&format!("{name}.weight"), &[out_f, in_f])?,
                    out_f,
                    in_f,
                    opts,
                )?,
            };
            Ok(Linear {
                name,
                base,
                lora: None,
            })
        };
        layers.push(Rc::new(DecoderLayer {
            norms,
            qkv: lin(LinearKind::QueryKeyValue)?,
            dense: lin(LinearKind::Dense)?,
            h_to_4h: lin(LinearKind::DenseHTo4h)?,
            four_h_to_h: lin(LinearKind::Dense4hToH)?,
        }));
    }
    let ln_f = norm(
        src.get("transformer.ln_f.weight", &[h])?,
        src.get("transformer.ln_f.bias", &[h])?,
        eps,
    )?;
    let loss_chunk_rows = crate::model::default_loss_chunk_rows(config.vocab_size);
    Ok(FalconModel {
        config,
        embed,
        layers,
        ln_f,
        recompute: true,
        loss_chunk_rows,
    })
}

struct CheckpointSource<'a> {
    ckpt: &'a FalconCheckpoint,
    opts: &'a BaseOptions,
}

/// Parses the bitsandbytes components of one pre-quantized linear into a [`QuantizedWeight`]
/// (docs/nf4-spec.md §4.3), without re-quantizing: codes, absmax (or its double-quantized codes,
/// nested absmax, offset and nested map) are taken as stored, so dequantization reproduces
/// bitsandbytes' `dequantize_4bit` exactly. `Ok(None)` when `module` is not stored 4-bit.
/// Errors name the module and the component that is missing or malformed.
pub fn prequantized_weight(
    ckpt: &FalconCheckpoint,
    module: &str,
) -> Result<Option<QuantizedWeight>> {
    let Some(parts) = ckpt.bnb4bit_module(module)? else {
        return Ok(None);
    };
    let mut components = vec![
        parts.weight,
        parts.absmax,
        parts.quant_map,
        parts.quant_state,
    ];
    components.extend(parts.nested_absmax);
    components.extend(parts.nested_quant_map);
    let get = |name: &str| -> std::result::Result<Option<TensorRef<'_>>, Nf4Error> {
        let Some(raw) = components.iter().find(|t| t.info.name == name) else {
            return Ok(None);
        };
        let dtype = raw
            .dtype()
            .to_engine()
            .ok_or_else(|| Nf4Error::TensorData {
                name: name.to_string(),
                reason: format!("unsupported dtype {}", raw.dtype()),
            })?;
        Ok(Some(TensorRef {
            dtype,
            shape: raw.shape().to_vec(),
            data: raw.bytes,
        }))
    };
    let q = QuantizedWeight::from_state_dict(module, get).map_err(|source| FalconError::Quant {
        tensor: format!("{module}.weight"),
        source,
    })?;
    if q.shape() != parts.module.shape {
        return Err(FalconError::ShapeMismatch {
            path: parts.quant_state.info.file.clone(),
            tensor: parts.quant_state.info.name.clone(),
            found: q.shape().to_vec(),
            expected: parts.module.shape.to_vec(),
        });
    }
    Ok(Some(q))
}

/// The first NaN or infinity in little-endian `dtype` values (F32, BF16 or F16), with its
/// index. Checked before quantizing: a block's absmax would otherwise hide or spread it.
pub fn first_non_finite_le(bytes: &[u8], dtype: engine::DType) -> Option<(usize, f32)> {
    use engine::DType;
    let decode = |c: &[u8]| -> f32 {
        match dtype {
            DType::BF16 => half::bf16::from_le_bytes([c[0], c[1]]).to_f32(),
            DType::F16 => half::f16::from_le_bytes([c[0], c[1]]).to_f32(),
            _ => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
        }
    };
    let size = match dtype {
        DType::BF16 | DType::F16 => 2,
        DType::F32 => 4,
        _ => return None,
    };
    bytes
        .chunks_exact(size)
        .map(decode)
        .enumerate()
        .find(|(_, x)| !x.is_finite())
}

/// Dequantizes as bitsandbytes' `dequantize_4bit` does: `fp32(table[code] · absmax)` rounded
/// once to the state's dtype (the JSON `dtype`, e.g. bfloat16), returned widened to f32
/// (exact). Merges and dense loads of 4-bit checkpoints use this, so they see the values
/// transformers sees.
pub fn dequantize_like_bnb(q: &QuantizedWeight) -> Vec<f32> {
    q.dequantize_stored_f32()
}

impl WeightSource for CheckpointSource<'_> {
    /// A 4-bit module is kept as stored (whatever `opts` asks for: re-quantizing would only
    /// lose precision), except with `QuantMode::None`, where it is dequantized to an f32 base.
    /// Other linears are quantized directly from the mapped bf16/f16/f32 bytes (the same
    /// values as from an f32 copy, without the transient f32 copy of the whole weight).
    fn linear_4bit(&mut self, module: &str) -> Result<Option<QuantizedWeight>> {
        let quant_type = match self.opts.quant {
            QuantMode::None => return Ok(None),
            QuantMode::Nf4 => QuantType::Nf4,
            QuantMode::Fp4 => QuantType::Fp4,
        };
        if let Some(q) = prequantized_weight(self.ckpt, module)? {
            return Ok(Some(q));
        }
        let name = format!("{module}.weight");
        let raw = self.ckpt.tensor_raw(&name)?;
        let (Some(dtype), [out_f, in_f]) = (raw.dtype().to_engine(), raw.shape()) else {
            return Err(FalconError::WrongDType {
                path: raw.info.file.clone(),
                tensor: name,
                found: format!("{} {:?}", raw.dtype(), raw.shape()),
                expected: "a 2-D F32, F16 or BF16 weight".into(),
            });
        };
        if let Some((index, value)) = first_non_finite_le(raw.bytes, dtype) {
            return Err(FalconError::NonFinite {
                path: raw.info.file.clone(),
                tensor: name,
                index,
                value,
            });
        }
        let cfg = QuantConfig {
            quant_type,
            blocksize: self.opts.blocksize,
            double_quant: self.opts.double_quant,
        };
        let q = QuantizedWeight::quantize_le_bytes(raw.bytes, dtype, *out_f, *in_f, cfg);
        self.ckpt.release(&name);
        q.map(Some).map_err(|source| FalconError::Quant {
            tensor: name,
            source,
        })
    }

    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        if let Some(module) = name.strip_suffix(".weight") {
            // Only reached for a 4-bit module with `QuantMode::None`: an f32 dense base.
            if let Some(q) = prequantized_weight(self.ckpt, module)? {
                return Ok(dequantize_like_bnb(&q));
            }
        }
        let (data, found) = self.ckpt.tensor_f32(name)?;
        self.ckpt.release(name);
        if found != shape {
            return Err(FalconError::ShapeMismatch {
                path: self.ckpt.tensor_info(name)?.file.clone(),
                tensor: name.to_string(),
                found,
                expected: shape.to_vec(),
            });
        }
        if let Some(index) = data.iter().position(|x| !x.is_finite()) {
            return Err(FalconError::NonFinite {
                path: self.ckpt.tensor_info(name)?.file.clone(),
                tensor: name.to_string(),
                index,
                value: data[index],
            });
        }
        Ok(data)
    }
}

/// Loads a checkpoint, quantizing each linear weight as soon as it is read. Linears of a
/// bitsandbytes pre-quantized checkpoint are taken as stored (no re-quantization; see
/// [`prequantized_weight`]), or dequantized to f32 ([`dequantize_like_bnb`]) when `opts.quant`
/// is `QuantMode::None`.
pub fn load_model(ckpt: &FalconCheckpoint, opts: &BaseOptions) -> Result<FalconModel> {
    assemble(
        ckpt.config().clone(),
        &mut CheckpointSource { ckpt, opts },
        opts,
    )
}

struct RandomSource {
    seed: u64,
    counter: u64,
}

impl WeightSource for RandomSource {
    /// HF init (§1.11): N(0, 0.02²) for matrices, γ = 1 and β = 0 for norms.
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let n: usize = shape.iter().product();
        self.counter += 1;
        if name.ends_with("norm.weight") || name.contains("ln_") && name.ends_with(".weight") {
            return Ok(vec![1.0; n]);
        }
        if name.ends_with(".bias") {
            return Ok(vec![0.0; n]);
        }
        let s = rng::splitmix64(self.seed ^ self.counter.wrapping_mul(0x9E37_79B9));
        Ok((0..n as u64)
            .map(|i| (rng::normal_f64(s, i) * 0.02) as f32)
            .collect())
    }
}

/// A randomly initialized model (deterministic in `seed`).
pub fn random_model(config: FalconConfig, seed: u64, opts: &BaseOptions) -> Result<FalconModel> {
    assemble(config, &mut RandomSource { seed, counter: 0 }, opts)
}

/// Wraps every linear layer that `config` targets with a freshly initialized adapter (PEFT
/// `get_peft_model`). Each layer's A draws from its own stream derived from `seed` and the
/// module name, so adding a target never changes another layer's init.
pub fn attach_lora(model: &mut FalconModel, config: &LoraConfig, seed: u64) -> Result<()> {
    attach(model, config, |name, i, o| {
        Ok(LoraAdapter::init(
            i,
            o,
            config.r,
            config.scaling(),
            config.lora_dropout as f32,
            name_seed(seed, name),
        ))
    })
}

/// Wraps the targeted layers with the given adapter weights (a loaded PEFT adapter). Every
/// targeted module must have weights of rank `config.r` and the layer's shape.
pub fn load_lora(
    model: &mut FalconModel,
    config: &LoraConfig,
    weights: &LoraWeights,
) -> Result<()> {
    let extra: Vec<&String> = weights
        .modules
        .keys()
        .filter(|k| {
            !model
                .layers
                .iter()
                .any(|l| l.linears().iter().any(|x| &x.name == *k))
        })
        .collect();
    if let Some(k) = extra.first() {
        return Err(FalconError::InvalidArgument(format!(
            "adapter has weights for `{k}`, which is not a linear layer of this model"
        )));
    }
    attach(model, config, |name, i, o| {
        let pair: &LoraPair = weights.modules.get(name).ok_or_else(|| {
            FalconError::InvalidArgument(format!(
                "adapter has no weights for targeted module `{name}`"
            ))
        })?;
        if pair.r != config.r || pair.in_features != i || pair.out_features != o {
            return Err(FalconError::InvalidArgument(format!(
                "adapter weights of `{name}` are r={} [{}->{}], expected r={} [{i}->{o}]",
                pair.r, pair.in_features, pair.out_features, config.r
            )));
        }
        let a = Tensor::from_vec(pair.a.clone(), [pair.r, i])?;
        let b = Tensor::from_vec(pair.b.clone(), [o, pair.r])?;
        Ok(LoraAdapter::from_weights(
            a,
            b,
            config.scaling(),
            config.lora_dropout as f32,
        ))
    })
}

fn attach(
    model: &mut FalconModel,
    config: &LoraConfig,
    mut make: impl FnMut(&str, usize, usize) -> Result<LoraAdapter>,
) -> Result<()> {
    if config.r == 0 {
        return Err(FalconError::InvalidArgument(
            "LoRA rank r must be at least 1".into(),
        ));
    }
    if !(0.0..1.0).contains(&config.lora_dropout) {
        return Err(FalconError::InvalidArgument(format!(
            "lora_dropout {} is not in [0, 1)",
            config.lora_dropout
        )));
    }
    let targets = config.targets(&model.config, std::path::Path::new("adapter_config.json"))?;
    for layer in model.layers.iter_mut() {
        let layer = Rc::get_mut(layer).ok_or_else(|| {
            FalconError::InvalidArgument(
                "model layers are shared; attach adapters before use".into(),
            )
        })?;
        for lin in layer.linears_mut() {
            if targets.iter().any(|t| t.name == lin.name) {
                let [o, i] = lin.base.shape();
                lin.lora = Some(make(&lin.name, i, o)?);
            }
        }
    }
    Ok(())
}

/// The adapter weights in PEFT's layout, by module path.
pub fn lora_weights(model: &FalconModel) -> Result<LoraWeights> {
    let mut out = LoraWeights::default();
    for layer in &model.layers {
        for lin in layer.linears() {
            if let Some(l) = &lin.lora {
                let (a, b) = (l.a.value(), l.b.value());
                out.modules.insert(
                    lin.name.clone(),
                    LoraPair {
                        r: a.dims()[0],
                        in_features: a.dims()[1],
                        out_features: b.dims()[0],
                        a: a.to_f32_vec()?,
                        b: b.to_f32_vec()?,
                    },
                );
            }
        }
    }
    Ok(out)
}

fn name_seed(seed: u64, name: &str) -> u64 {
    name.bytes()
        .fold(rng::splitmix64(seed), |h, b| rng::splitmix64(h ^ b as u64))
}
