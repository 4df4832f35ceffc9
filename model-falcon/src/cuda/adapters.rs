//! The LoRA adapters on the device, packed: every A and B lives at its own offset of one f32
//! buffer (master weights), with a bf16 copy for the GEMMs and one f32 gradient buffer of the
//! same layout. One buffer per role lets the gradient norm and AdamW run as single multi-tensor
//! launches; the GEMMs see each matrix through a view. Offsets are multiples of 64 elements so
//! every view keeps the 16-byte alignment the vectorized kernels rely on.
//!
//! Per adapted linear (PEFT): `y += s·B·A·dropout(x)` with `s = scaling`, computed as
//! `u = dropout(x)·Aᵀ` (`[M, r]`, bf16) and `y += s·u·Bᵀ` (accumulated into the base output).
//! Backward, with `dy [M, out]`:
//! `dB += s·dyᵀ·u`, `du = s·dy·B`, `dA += duᵀ·dropout(x)`, `dx += dropout_mask(du·A)`.
//!
//! The two products with r output columns (`u` and `du`) run on the skinny kernel (one warp per
//! row, memory-bound) rather than the tensor-core GEMM, whose 128-wide tiles would leave a
//! 1024-token product with 8 blocks walking all of K; `du = dy·B` reads a transposed bf16 copy
//! `Bᵀ [r, out]` kept next to the weights. The other three are wide and use the GEMM.

use super::weights::alloc;
use super::{cuda_err, Dev, RngCursor};
use crate::model::FalconModel;
use crate::{FalconError, Result};
use engine::rng::RngState;
use engine::{Tensor, Var};
use kernels_cu::ops::gemm::{gemm, Layout};
use kernels_cu::ops::{convert, dropout, skinny};
use kernels_cu::{Buffer, DType};

/// Alignment of each matrix in the packed buffers, in elements.
const ALIGN: usize = 64;

/// Where one adapter lives in the packed buffers.
#[derive(Clone, Debug)]
pub(crate) struct Slot {
    /// Module path, e.g. `transformer.h.0.self_attention.query_key_value`.
    pub module: String,
    pub a_off: usize,
    pub b_off: usize,
    pub r: usize,
    pub in_f: usize,
    pub out_f: usize,
    pub scaling: f32,
    pub dropout: f32,
    /// The host parameters this slot mirrors (A, B); `None` in a launch plan, which has no
    /// host model.
    pub host: Option<(Var, Var)>,
}

impl Slot {
    pub fn a_len(&self) -> usize {
        self.r * self.in_f
    }
    pub fn b_len(&self) -> usize {
        self.out_f * self.r
    }
}

fn host_vars(s: &Slot) -> Result<(&Var, &Var)> {
    s.host.as_ref().map(|(a, b)| (a, b)).ok_or_else(|| {
        FalconError::InvalidArgument(format!(
            "adapter of `{}` has no host parameters (a launch plan)",
            s.module
        ))
    })
}

/// What the backward pass of one adapter needs from its forward pass.
pub(crate) struct LoraActs {
    /// `dropout(x)` when a mask was applied (otherwise the input itself is used).
    xd: Option<Buffer>,
    /// `dropout(x)·Aᵀ`, `[M, r]` bf16.
    u: Buffer,
    /// The dropout stream position of this layer's mask, when one was applied.
    mask: Option<RngState>,
}

pub(crate) struct AdapterStore {
    pub slots: Vec<Slot>,
    /// f32 master weights (packed).
    pub params: Buffer,
    /// bf16 copy of `params` for the GEMMs; refreshed after every change of `params`.
    pub params_bf16: Buffer,
    /// The B matrices of `params_bf16` transposed (`[r, out]` at each B's offset).
    pub b_t_bf16: Buffer,
    /// f32 gradients (packed), accumulated over micro-batches until [`Self::zero_grads`].
    pub grads: Buffer,
}

impl AdapterStore {
    /// Packs the adapters of `model` (layer order, then qkv, dense, h_to_4h, 4h_to_h; A then
    /// B), as [`FalconModel::lora_parameters`] lists them.
    pub fn upload(dev: &Dev, model: &FalconModel) -> Result<AdapterStore> {
        let mut slots = Vec::new();
        let mut len = 0usize;
        let mut take = |n: usize| {
            let off = len;
            len += n.div_ceil(ALIGN) * ALIGN;
            off
        };
        for layer in &model.layers {
            for lin in layer.linears() {
                let Some(l) = &lin.lora else { continue };
                let [out_f, in_f] = lin.base.shape();
                let r = l.a.dims()[0];
                let a_off = take(r * in_f);
                let b_off = take(out_f * r);
                slots.push(Slot {
                    module: lin.name.clone(),
                    a_off,
                    b_off,
                    r,
                    in_f,
                    out_f,
                    scaling: l.scaling as f32,
                    dropout: l.dropout,
                    host: Some((l.a.clone(), l.b.clone())),
                });
            }
        }
        if slots.is_empty() {
            return Err(FalconError::InvalidArgument(
                "the CUDA step trains LoRA adapters, and this model has none attached".into(),
            ));
        }
        let store = AdapterStore::allocate(dev, slots, len)?;
        let mut s = store;
        s.load_from_host(dev)?;
        Ok(s)
    }

    /// Adapters for a launch plan: rank `r` on each of `modules` (`(path, in, out)`, model
    /// order), packed as [`Self::upload`] packs them, with unset weights and no host
    /// parameters.
    pub fn placeholder(
        dev: &Dev,
        modules: &[(String, usize, usize)],
        r: usize,
        scaling: f32,
        dropout: f32,
    ) -> Result<AdapterStore> {
        let mut len = 0usize;
        let mut take = |n: usize| {
            let off = len;
            len += n.div_ceil(ALIGN) * ALIGN;
            off
        };
        let slots: Vec<Slot> = modules
            .iter()
            .map(|(module, in_f, out_f)| Slot {
                module: module.clone(),
                a_off: take(r * in_f),
                b_off: take(out_f * r),
                r,
                in_f: *in_f,
                out_f: *out_f,
                scaling,
                dropout,
                host: None,
            })
            .collect();
        if slots.is_empty() {
            return Err(FalconError::InvalidArgument(
                "a launch plan needs at least one adapted module".into(),
            ));
        }
        AdapterStore::allocate(dev, slots, len)
    }

    fn allocate(dev: &Dev, slots: Vec<Slot>, len: usize) -> Result<AdapterStore> {
        let packed_len = len.max(1);
        Ok(AdapterStore {
            params: alloc(dev, "adapter weights", DType::F32, packed_len)?,
            params_bf16: alloc(dev, "adapter weights (bf16)", DType::BF16, packed_len)?,
            b_t_bf16: dev
                .alloc_zeros(DType::BF16, packed_len)
                .map_err(cuda_err("allocate transposed adapter weights".into()))?,
            grads: dev
                .alloc_zeros(DType::F32, packed_len)
                .map_err(cuda_err("allocate adapter gradients".into()))?,
            slots,
        })
    }

    /// Elements of each packed buffer.
    pub fn len(&self) -> usize {
        self.params.len()
    }

    /// Copies the host parameters (the slots' Vars) into the device buffers.
    pub fn load_from_host(&mut self, dev: &Dev) -> Result<()> {
        let mut host = vec![0f32; self.len()];
        for s in &self.slots {
            let (a, b) = host_vars(s)?;
            for (v, off, n) in [(a, s.a_off, s.a_len()), (b, s.b_off, s.b_len())] {
                let vals = v.value().to_f32_vec()?;
                if vals.len() != n {
                    return Err(FalconError::InvalidArgument(format!(
                        "adapter of `{}` changed shape since upload",
                        s.module
                    )));
                }
                host[off..off + n].copy_from_slice(&vals);
            }
        }
        dev.write(&mut self.params, &host)
            .map_err(cuda_err("upload adapter weights".into()))?;
        self.refresh_bf16(dev)
    }

    /// `params_bf16 = bf16(params)`, and the transposed copies of the B matrices.
    pub fn refresh_bf16(&mut self, dev: &Dev) -> Result<()> {
        convert::cast(dev, &mut self.params_bf16, &self.params)
            .map_err(cuda_err("round adapter weights to bf16".into()))?;
        let err = || cuda_err("transpose adapter B".into());
        for s in &self.slots {
            let b = self.params_bf16.view(s.b_off, s.b_len()).map_err(err())?;
            let mut bt = self.b_t_bf16.view_mut(s.b_off, s.b_len()).map_err(err())?;
            // [out, r] as [1, out, r, 1] -> [1, r, out, 1].
            convert::swap_axes12(dev, &mut bt, &b, [1, s.out_f, s.r, 1]).map_err(err())?;
        }
        Ok(())
    }

    /// Writes the device parameters back into the slots' host Vars.
    pub fn store_to_host(&self, dev: &Dev) -> Result<()> {
        let host: Vec<f32> = dev
            .dtoh(&self.params)
            .map_err(cuda_err("download adapter weights".into()))?;
        for s in &self.slots {
            let (a, b) = host_vars(s)?;
            a.set_value(Tensor::from_vec(
                host[s.a_off..s.a_off + s.a_len()].to_vec(),
                [s.r, s.in_f],
            )?)?;
            b.set_value(Tensor::from_vec(
                host[s.b_off..s.b_off + s.b_len()].to_vec(),
                [s.out_f, s.r],
            )?)?;
        }
        Ok(())
    }

    /// Host copies of a packed buffer's matrices in parameter order (A, B per slot).
    pub fn unpack(&self, host: &[f32]) -> Result<Vec<Tensor>> {
        let mut out = Vec::with_capacity(2 * self.slots.len());
        for s in &self.slots {
            out.push(Tensor::from_vec(
                host[s.a_off..s.a_off + s.a_len()].to_vec(),
                [s.r, s.in_f],
            )?);
            out.push(Tensor::from_vec(
                host[s.b_off..s.b_off + s.b_len()].to_vec(),
                [s.out_f, s.r],
            )?);
        }
        Ok(out)
    }

    /// The inverse of [`Self::unpack`]: matrices in parameter order into one packed host vec.
    pub fn pack(&self, tensors: &[Tensor]) -> Result<Vec<f32>> {
        if tensors.len() != 2 * self.slots.len() {
            return Err(FalconError::InvalidArgument(format!(
                "{} tensors for {} adapter matrices",
                tensors.len(),
                2 * self.slots.len()
            )));
        }
        let mut host = vec![0f32; self.len()];
        for (i, s) in self.slots.iter().enumerate() {
            for (t, off, n) in [
                (&tensors[2 * i], s.a_off, s.a_len()),
                (&tensors[2 * i + 1], s.b_off, s.b_len()),
            ] {
                let v = t.to_f32_vec()?;
                if v.len() != n {
                    return Err(FalconError::InvalidArgument(format!(
                        "state of `{}` has {} elements, expected {n}",
                        s.module,
                        v.len()
                    )));
                }
                host[off..off + n].copy_from_slice(&v);
            }
        }
        Ok(host)
    }

    pub fn zero_grads(&mut self, dev: &Dev) -> Result<()> {
        self.grads = dev
            .alloc_zeros(DType::F32, self.len())
            .map_err(cuda_err("zero adapter gradients".into()))?;
        Ok(())
    }

    /// Adds the adapter of slot `i` to the base output `y [M, out]` (bf16) for input
    /// `x [M, in]` (bf16). When training (`rng` given) with p > 0, a dropout mask is drawn
    /// from `rng`.
    pub fn forward(
        &self,
        dev: &Dev,
        i: usize,
        x: &Buffer,
        y: &mut Buffer,
        m: usize,
        rng: Option<&mut RngCursor>,
    ) -> Result<LoraActs> {
        let acts = self.forward_acts(dev, i, x, m, rng)?;
        let s = &self.slots[i];
        let b = self.view_bf16(s.b_off, s.b_len())?;
        gemm(
            dev,
            Layout::Nt,
            &acts.u,
            &b,
            y,
            m,
            s.out_f,
            s.r,
            s.scaling,
            1.0,
        )
        .map_err(cuda_err(format!("{} LoRA u·Bᵀ", s.module)))?;
        Ok(acts)
    }

    /// What the backward of [`Self::forward`] needs from it (the dropout copy of `x` and
    /// `u = x·Aᵀ`), drawing the same dropout mask, without adding the adapter's output to
    /// anything: for a recomputed forward whose output no backward reads.
    pub fn forward_acts(
        &self,
        dev: &Dev,
        i: usize,
        x: &Buffer,
        m: usize,
        rng: Option<&mut RngCursor>,
    ) -> Result<LoraActs> {
        let s = &self.slots[i];
        let err = |what: &str| cuda_err(format!("{} LoRA {what}", s.module));
        let mask = match rng {
            Some(r) if s.dropout > 0.0 => Some(r.take((m * s.in_f) as u64)),
            _ => None,
        };
        let xd = match mask {
            Some(st) => {
                let mut xd = alloc(dev, "LoRA dropout", DType::BF16, m * s.in_f)?;
                dropout::forward(dev, &mut xd, x, s.dropout, st.seed, st.offset)
                    .map_err(err("dropout"))?;
                Some(xd)
            }
            None => None,
        };
        let a = self.view_bf16(s.a_off, s.a_len())?;
        let mut u = alloc(dev, "LoRA u", DType::BF16, m * s.r)?;
        let xin = xd.as_ref().unwrap_or(x);
        down_projection(dev, xin, &a, &mut u, m, s.r, s.in_f, 1.0).map_err(err("x·Aᵀ"))?;
        Ok(LoraActs { xd, u, mask })
    }

    /// Backward of [`Self::forward`]: accumulates dA, dB into the gradient buffer and adds the
    /// adapter's input gradient to `dx [M, in]` (bf16, already holding the base's).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        dev: &Dev,
        i: usize,
        dy: &Buffer,
        x: &Buffer,
        acts: &LoraActs,
        dx: &mut Buffer,
        m: usize,
    ) -> Result<()> {
        let s = self.slots[i].clone();
        let err = |what: &str| cuda_err(format!("{} LoRA backward {what}", s.module));
        let xin = acts.xd.as_ref().unwrap_or(x);
        {
            // dB[out, r] += s·dyᵀ·u
            let mut gb = self.grad_view(s.b_off, s.b_len())?;
            gemm(
                dev,
                Layout::Tn,
                dy,
                &acts.u,
                &mut gb,
                s.out_f,
                s.r,
                m,
                s.scaling,
                1.0,
            )
            .map_err(err("dB"))?;
        }
        let mut du = alloc(dev, "LoRA du", DType::BF16, m * s.r)?;
        {
            // du[M, r] = s·dy·B = s·dy·(Bᵀ)ᵀ
            let bt = self
                .b_t_bf16
                .view(s.b_off, s.b_len())
                .map_err(cuda_err("adapter weight view".into()))?;
            down_projection(dev, dy, &bt, &mut du, m, s.r, s.out_f, s.scaling)
                .map_err(err("du"))?;
        }
        {
            // dA[r, in] += duᵀ·dropout(x)
            let mut ga = self.grad_view(s.a_off, s.a_len())?;
            gemm(dev, Layout::Tn, &du, xin, &mut ga, s.r, s.in_f, m, 1.0, 1.0)
                .map_err(err("dA"))?;
        }
        let a = self.view_bf16(s.a_off, s.a_len())?;
        match acts.mask {
            None => {
                gemm(dev, Layout::Nn, &du, &a, dx, m, s.in_f, s.r, 1.0, 1.0).map_err(err("dx"))?
            }
            Some(st) => {
                let mut t = alloc(dev, "LoRA dx", DType::BF16, m * s.in_f)?;
                gemm(dev, Layout::Nn, &du, &a, &mut t, m, s.in_f, s.r, 1.0, 0.0)
                    .map_err(err("dx"))?;
                dropout::backward_add(dev, dx, &t, s.dropout, st.seed, st.offset)
                    .map_err(err("dropout"))?;
            }
        }
        Ok(())
    }

    fn view_bf16(&self, off: usize, len: usize) -> Result<kernels_cu::BufferView<'_>> {
        self.params_bf16
            .view(off, len)
            .map_err(cuda_err("adapter weight view".into()))
    }

    fn grad_view(&mut self, off: usize, len: usize) -> Result<kernels_cu::BufferViewMut<'_>> {
        self.grads
            .view_mut(off, len)
            .map_err(cuda_err("adapter gradient view".into()))
    }
}

/// `c[m, n] = α·a[m, k]·b[n, k]ᵀ` for the rank-wide products: the skinny kernel up to its
/// width, the tensor-core GEMM beyond (rank > 32).
#[allow(clippy::too_many_arguments)]
fn down_projection(
    dev: &Dev,
    a: &Buffer,
    b: &Buffer,
    c: &mut Buffer,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
) -> kernels_cu::Result<()> {
    if n <= skinny::MAX_N {
        skinny::nt(dev, a, b, c, m, n, k, alpha, 0.0)
    } else {
        gemm(dev, Layout::Nt, a, b, c, m, n, k, alpha, 0.0)
    }
}
