//! The frozen base on the device: 4-bit (or bf16) linear weights, LayerNorms and the embedding
//! (also the tied lm_head), uploaded once from a host [`FalconModel`].

use super::{cuda_err, Dev};
use crate::config::AttentionLayout;
use crate::layers::{BaseWeight, LayerNorm};
use crate::model::{FalconModel, Norms};
use crate::{FalconError, Result};
use engine::nf4::{Absmax, QuantizedWeight};
use half::bf16;
use kernels_cu::ops::gemm::{self, Layout, Nf4Parts, Nf4Weight};
use kernels_cu::{Buffer, DType};

/// Shapes the step needs from the config.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub grouped: bool,
    pub vocab: usize,
    pub eps: f32,
}

impl Geometry {
    pub fn of(model: &FalconModel) -> Result<Geometry> {
        Geometry::from_config(&model.config)
    }

    pub fn from_config(c: &crate::FalconConfig) -> Result<Geometry> {
        let g = Geometry {
            hidden: c.hidden_size,
            heads: c.num_attention_heads,
            kv_heads: c.num_kv_heads(),
            head_dim: c.head_dim(),
            grouped: matches!(c.attention, AttentionLayout::Grouped { .. }),
            vocab: c.vocab_size,
            eps: c.layer_norm_epsilon as f32,
        };
        if g.head_dim != 64 && g.head_dim != 128 {
            return Err(FalconError::InvalidArgument(format!(
                "the CUDA step's attention kernels take head_dim 64 or 128; this model has {} \
                 (hidden_size {} / {} heads)",
                g.head_dim, g.hidden, g.heads
            )));
        }
        Ok(g)
    }

    /// Columns of the fused QKV projection.
    pub fn qkv_out(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }
}

/// `f32` host values as a bf16 device buffer (round to nearest even).
pub(crate) fn upload_bf16(dev: &Dev, what: &str, values: &[f32]) -> Result<Buffer> {
    let v: Vec<bf16> = values.iter().map(|&x| bf16::from_f32(x)).collect();
    dev.htod(&v).map_err(cuda_err(format!("upload {what}")))
}

/// LayerNorm parameters (bf16, the activations' dtype) and epsilon.
pub(crate) struct DeviceNorm {
    pub gamma: Buffer,
    pub beta: Buffer,
}

impl DeviceNorm {
    fn upload(dev: &Dev, what: &str, ln: &LayerNorm) -> Result<DeviceNorm> {
        Ok(DeviceNorm {
            gamma: upload_bf16(dev, what, &ln.weight.value().to_f32_vec()?)?,
            beta: upload_bf16(dev, what, &ln.bias.value().to_f32_vec()?)?,
        })
    }
}

/// A frozen linear weight `[out, in]`.
pub(crate) enum DeviceBase {
    /// Double-quantized NF4/FP4, dequantized to bf16 inside the GEMM.
    FourBit(Nf4Weight),
    /// An unquantized base (`--quant none`) as bf16.
    Bf16(Buffer),
}

impl DeviceBase {
    fn upload(dev: &Dev, name: &str, base: &BaseWeight) -> Result<DeviceBase> {
        match base {
            BaseWeight::Quantized(q) => Ok(DeviceBase::FourBit(upload_4bit(dev, name, q)?)),
            BaseWeight::Dense(w) => Ok(DeviceBase::Bf16(upload_bf16(
                dev,
                name,
                &w.value().to_f32_vec()?,
            )?)),
        }
    }

    /// `y[M, out] = α·x[M, in]·Wᵀ + β·y` (x bf16; y bf16 or f32).
    pub fn forward(
        &self,
        dev: &Dev,
        x: &Buffer,
        y: &mut Buffer,
        m: usize,
        shape: [usize; 2],
        beta: f32,
    ) -> kernels_cu::Result<()> {
        match self {
            DeviceBase::FourBit(w) => gemm::nf4_forward(dev, x, w, y, m, 1.0, beta),
            DeviceBase::Bf16(w) => {
                gemm::gemm(dev, Layout::Nt, x, w, y, m, shape[0], shape[1], 1.0, beta)
            }
        }
    }

    /// `dx[M, in] = dy[M, out]·W + β·dx`.
    pub fn backward_input(
        &self,
        dev: &Dev,
        dy: &Buffer,
        dx: &mut Buffer,
        m: usize,
        shape: [usize; 2],
        beta: f32,
    ) -> kernels_cu::Result<()> {
        match self {
            DeviceBase::FourBit(w) => gemm::nf4_backward_input(dev, dy, w, dx, m, 1.0, beta),
            DeviceBase::Bf16(w) => {
                gemm::gemm(dev, Layout::Nn, dy, w, dx, m, shape[1], shape[0], 1.0, beta)
            }
        }
    }

    pub fn bytes(&self) -> usize {
        match self {
            DeviceBase::FourBit(w) => {
                w.packed.bytes()
                    + w.absmax_codes.bytes()
                    + w.nested_absmax.bytes()
                    + w.code_map.bytes()
                    + w.table.bytes()
            }
            DeviceBase::Bf16(b) => b.bytes(),
        }
    }
}

/// The parts of a double-quantized 4-bit weight as the device GEMM takes them (`name` is
/// the tensor's, for errors): packed codes, 8-bit absmax codes with their nested absmax,
/// dynamic map and offset, the 4-bit code table. A single-quantized weight is an error naming
/// the tensor.
pub fn nf4_parts<'q>(name: &str, q: &'q QuantizedWeight) -> Result<Nf4Parts<'q>> {
    let Absmax::Double(dq) = q.absmax() else {
        return Err(FalconError::InvalidArgument(format!(
            "`{name}`: the CUDA step's 4-bit GEMM reads double-quantized statistics; load the \
             model with double quantization on (--double-quant true)"
        )));
    };
    Ok(Nf4Parts {
        packed: q.packed(),
        absmax_codes: &dq.codes,
        nested_absmax: &dq.nested_absmax,
        code_map: &dq.code,
        table: q.quant_type().dequant_table(),
        offset: dq.offset,
        out_features: q.out_features(),
        in_features: q.in_features(),
        blocksize: q.blocksize(),
    })
}

fn upload_4bit(dev: &Dev, name: &str, q: &QuantizedWeight) -> Result<Nf4Weight> {
    let parts = nf4_parts(name, q)?;
    if q.blocksize() != gemm::NF4_GEMM_BLOCKSIZE {
        return Err(FalconError::InvalidArgument(format!(
            "`{name}`: the CUDA step's 4-bit GEMM needs blocksize {}, the weight has {}",
            gemm::NF4_GEMM_BLOCKSIZE,
            q.blocksize()
        )));
    }
    Nf4Weight::upload(dev, &parts).map_err(cuda_err(format!("upload `{name}`")))
}

/// One linear layer's frozen weight and the index of its adapter slot, if adapted.
pub(crate) struct DeviceLinear {
    pub name: String,
    pub base: DeviceBase,
    /// `[out, in]`
    pub shape: [usize; 2],
    pub lora: Option<usize>,
}

pub(crate) enum DeviceNorms {
    Single(DeviceNorm),
    Separate { attn: DeviceNorm, mlp: DeviceNorm },
}

pub(crate) struct DeviceLayer {
    pub norms: DeviceNorms,
    pub qkv: DeviceLinear,
    pub dense: DeviceLinear,
    pub h_to_4h: DeviceLinear,
    pub four_h_to_h: DeviceLinear,
}

/// The whole frozen base.
pub(crate) struct DeviceBaseModel {
    /// `[vocab, hidden]` bf16: the input embedding and the tied lm_head.
    pub embed: Buffer,
    pub layers: Vec<DeviceLayer>,
    pub ln_f: DeviceNorm,
}

impl DeviceBaseModel {
    /// Uploads `model`'s frozen weights; `slot_of(name)` gives the adapter slot of a module.
    pub fn upload(
        dev: &Dev,
        model: &FalconModel,
        slot_of: impl Fn(&str) -> Option<usize>,
    ) -> Result<DeviceBaseModel> {
        let embed = upload_bf16(
            dev,
            "transformer.word_embeddings",
            &model.embed.value().to_f32_vec()?,
        )?;
        let mut layers = Vec::with_capacity(model.layers.len());
        for (i, l) in model.layers.iter().enumerate() {
            let norms = match &l.norms {
                Norms::Single(n) => DeviceNorms::Single(DeviceNorm::upload(
                    dev,
                    &format!("transformer.h.{i}.input_layernorm"),
                    n,
                )?),
                Norms::Separate { attn, mlp } => DeviceNorms::Separate {
                    attn: DeviceNorm::upload(dev, &format!("transformer.h.{i}.ln_attn"), attn)?,
                    mlp: DeviceNorm::upload(dev, &format!("transformer.h.{i}.ln_mlp"), mlp)?,
                },
            };
            let lin = |x: &crate::layers::Linear| -> Result<DeviceLinear> {
                Ok(DeviceLinear {
                    name: x.name.clone(),
                    base: DeviceBase::upload(dev, &x.name, &x.base)?,
                    shape: x.base.shape(),
                    lora: slot_of(&x.name),
                })
            };
            layers.push(DeviceLayer {
                norms,
                qkv: lin(&l.qkv)?,
                dense: lin(&l.dense)?,
                h_to_4h: lin(&l.h_to_4h)?,
                four_h_to_h: lin(&l.four_h_to_h)?,
            });
        }
        let ln_f = DeviceNorm::upload(dev, "transformer.ln_f", &model.ln_f)?;
        Ok(DeviceBaseModel {
            embed,
            layers,
            ln_f,
        })
    }

    /// Device bytes of the frozen base.
    pub fn bytes(&self) -> usize {
        let norm = |n: &DeviceNorm| n.gamma.bytes() + n.beta.bytes();
        let mut total = self.embed.bytes() + norm(&self.ln_f);
        for l in &self.layers {
            total += match &l.norms {
                DeviceNorms::Single(n) => norm(n),
                DeviceNorms::Separate { attn, mlp } => norm(attn) + norm(mlp),
            };
            for x in [&l.qkv, &l.dense, &l.h_to_4h, &l.four_h_to_h] {
                total += x.base.bytes();
            }
        }
        total
    }
}

/// Fresh device memory for `len` elements of `dtype`.
pub(crate) fn alloc(dev: &Dev, what: &str, dtype: DType, len: usize) -> Result<Buffer> {
    dev.alloc(dtype, len)
        .map_err(cuda_err(format!("allocate {what}")))
}

/// Unset device memory shaped like a weight, for a launch plan (on the dry-run device it
/// costs no memory).
fn placeholder(dev: &Dev, what: &str, dtype: DType, len: usize) -> Result<Buffer> {
    alloc(dev, what, dtype, len.max(1))
}

impl DeviceNorm {
    fn placeholder(dev: &Dev, hidden: usize) -> Result<DeviceNorm> {
        Ok(DeviceNorm {
            gamma: placeholder(dev, "LayerNorm weight", DType::BF16, hidden)?,
            beta: placeholder(dev, "LayerNorm bias", DType::BF16, hidden)?,
        })
    }
}

impl DeviceBase {
    /// A frozen weight `[out, in]` with the buffers [`Nf4Weight::upload`] would make
    /// (double-quantized, blocksize [`gemm::NF4_GEMM_BLOCKSIZE`]), or bf16.
    fn placeholder(dev: &Dev, out_f: usize, in_f: usize, four_bit: bool) -> Result<DeviceBase> {
        if !four_bit {
            return Ok(DeviceBase::Bf16(placeholder(
                dev,
                "bf16 weight",
                DType::BF16,
                out_f * in_f,
            )?));
        }
        let n = out_f * in_f;
        let blocks = n.div_ceil(gemm::NF4_GEMM_BLOCKSIZE);
        Ok(DeviceBase::FourBit(Nf4Weight {
            packed: placeholder(dev, "4-bit codes", DType::U8, n.div_ceil(2))?,
            absmax_codes: placeholder(dev, "absmax codes", DType::U8, blocks)?,
            nested_absmax: placeholder(
                dev,
                "nested absmax",
                DType::F32,
                blocks.div_ceil(gemm::NESTED_BLOCKSIZE),
            )?,
            code_map: placeholder(dev, "absmax code map", DType::F32, 256)?,
            table: placeholder(dev, "4-bit table", DType::F32, 16)?,
            offset: 0.0,
            out_features: out_f,
            in_features: in_f,
            blocksize: gemm::NF4_GEMM_BLOCKSIZE,
        }))
    }
}

impl DeviceBaseModel {
    /// The frozen base of `config` with unset weights, for a launch plan: the buffers
    /// [`Self::upload`] would make, 4-bit when `four_bit` (else bf16); `slot_of(name)` gives
    /// the adapter slot of a module.
    pub fn placeholder(
        dev: &Dev,
        config: &crate::FalconConfig,
        four_bit: bool,
        slot_of: impl Fn(&str) -> Option<usize>,
    ) -> Result<DeviceBaseModel> {
        use crate::checkpoint::{linear_modules, LinearKind};
        use crate::config::NormLayout;
        let h = config.hidden_size;
        let embed = placeholder(dev, "embedding", DType::BF16, config.vocab_size * h)?;
        let modules = linear_modules(config);
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let norms = match config.norms {
                NormLayout::Single => DeviceNorms::Single(DeviceNorm::placeholder(dev, h)?),
                NormLayout::Separate => DeviceNorms::Separate {
                    attn: DeviceNorm::placeholder(dev, h)?,
                    mlp: DeviceNorm::placeholder(dev, h)?,
                },
            };
            let lin = |kind: LinearKind| -> Result<DeviceLinear> {
                let m = modules
                    .iter()
                    .find(|m| m.layer == i && m.kind == kind)
                    .ok_or_else(|| {
                        FalconError::InvalidArgument(format!("layer {i} has no {kind:?} linear"))
                    })?;
                Ok(DeviceLinear {
                    name: m.name.clone(),
                    base: DeviceBase::placeholder(dev, m.out_features, m.in_features, four_bit)?,
                    shape: [m.out_features, m.in_features],
                    lora: slot_of(&m.name),
                })
            };
            layers.push(DeviceLayer {
                norms,
                qkv: lin(LinearKind::QueryKeyValue)?,
                dense: lin(LinearKind::Dense)?,
                h_to_4h: lin(LinearKind::DenseHTo4h)?,
                four_h_to_h: lin(LinearKind::Dense4hToH)?,
            });
        }
        Ok(DeviceBaseModel {
            embed,
            layers,
            ln_f: DeviceNorm::placeholder(dev, h)?,
        })
    }
}
