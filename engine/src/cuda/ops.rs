//! The engine ops that run on a CUDA device: thin adapters from tensors to the kernels-cu
//! launchers (which check dtypes and lengths and pick the launch shape). The public ops in
//! [`crate::ops`] dispatch here when their inputs are on a CUDA device.
//!
//! | op | dtypes | launcher |
//! | --- | --- | --- |
//! | `add` (same shapes) | f32, bf16 | [`kernels_cu::ops::elementwise::add`] |
//! | `scale` | f32, bf16 | [`kernels_cu::ops::elementwise::scale`] |
//! | `sum_all` | f32 | [`kernels_cu::ops::reduce::sum`] (deterministic, two passes) |

use super::storage::{kernel_dtype, CudaStorage};
use crate::{DType, Device, Error, Result, Shape, Tensor};

/// The device storage of `t`, or an error if it is on the CPU.
fn storage<'a>(op: &'static str, t: &'a Tensor) -> Result<&'a CudaStorage> {
    t.cuda_storage().ok_or_else(|| {
        Error::invalid(
            op,
            format!(
                "expected a tensor on a CUDA device, got one on {}",
                t.device()
            ),
        )
    })
}

/// Errors for dtypes that have no kernel in this family.
fn require_dtype(op: &'static str, s: &CudaStorage, allowed: &[DType]) -> Result<()> {
    if allowed.contains(&s.dtype()) {
        return Ok(());
    }
    let names: Vec<String> = allowed.iter().map(|d| d.to_string()).collect();
    Err(Error::Unsupported {
        op,
        device: s.device(),
        detail: format!(
            "no {} kernel (CUDA kernels exist for {})",
            s.dtype(),
            names.join(", ")
        ),
    })
}

fn cuda_err(op: &'static str, device: Device) -> impl FnOnce(kernels_cu::Error) -> Error {
    move |source| Error::Cuda { op, device, source }
}

/// A tensor over a fresh device buffer of `s`'s device.
fn wrap(
    op: &'static str,
    s: &CudaStorage,
    buf: kernels_cu::Buffer,
    dtype: DType,
    shape: Shape,
) -> Result<Tensor> {
    let storage = CudaStorage::new(op, buf, s.handle().clone(), s.device(), dtype)?;
    Ok(Tensor::from_cuda(storage, shape))
}

/// `out[i] = a[i] + b[i]`; both on the same CUDA device, same shape and dtype (the caller
/// checks devices and shapes).
pub(crate) fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (sa, sb) = (storage("add", a)?, storage("add", b)?);
    require_dtype("add", sa, &[DType::F32, DType::BF16])?;
    let dev = sa.handle();
    let err = || cuda_err("add", sa.device());
    let mut out = dev
        .alloc(kernel_dtype(sa.dtype()), sa.len())
        .map_err(err())?;
    kernels_cu::ops::elementwise::add(dev, &mut out, sa.buffer(), sb.buffer()).map_err(err())?;
    wrap("add", sa, out, sa.dtype(), a.shape().clone())
}

/// `out[i] = s * x[i]`, with `s` rounded to f32 (the kernel's scalar type).
pub(crate) fn scale(x: &Tensor, s: f64) -> Result<Tensor> {
    let sx = storage("scale", x)?;
    require_dtype("scale", sx, &[DType::F32, DType::BF16])?;
    let dev = sx.handle();
    let err = || cuda_err("scale", sx.device());
    let mut out = dev
        .alloc(kernel_dtype(sx.dtype()), sx.len())
        .map_err(err())?;
    kernels_cu::ops::elementwise::scale(dev, &mut out, sx.buffer(), s as f32).map_err(err())?;
    wrap("scale", sx, out, sx.dtype(), x.shape().clone())
}

/// `Σ x[i]` as a rank-0 f32 tensor on the same device, summed in f32 in a fixed order that
/// depends only on the length (same inputs, same bits).
pub(crate) fn sum_all(x: &Tensor) -> Result<Tensor> {
    let sx = storage("sum_all", x)?;
    require_dtype("sum_all", sx, &[DType::F32])?;
    let out = kernels_cu::ops::reduce::sum(sx.handle(), sx.buffer())
        .map_err(cuda_err("sum_all", sx.device()))?;
    wrap("sum_all", sx, out, DType::F32, Shape::new(vec![]))
}
