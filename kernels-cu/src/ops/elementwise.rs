//! Elementwise ops on f32 or bf16 buffers (cuda/elementwise.cu). bf16 computes in f32 and
//! rounds once to nearest even.
//!
//! Reference (the definition):
//! `add: out[i] = a[i] + b[i]`, `scale: out[i] = s * x[i]`, `axpy: y[i] = alpha * x[i] + y[i]`.

use super::{float_dtype, n_i32, same, BLOCK};
use crate::device::{Dim3, Launch};
use crate::error::Result;
use crate::kernels::*;
use crate::{Buffer, DType, Device};

/// Grid for a grid-stride loop over n elements (capped: each thread then takes several).
fn grid(n: usize) -> Dim3 {
    Dim3::x((n.div_ceil(BLOCK as usize)).clamp(1, 4096) as u32)
}

/// `out = a + b`; all three the same dtype (f32 or bf16) and length.
pub fn add(dev: &Device, out: &mut Buffer, a: &Buffer, b: &Buffer) -> Result<()> {
    float_dtype("add: a", a)?;
    same("add: b", a, b)?;
    same("add: out", a, out)?;
    let n = n_i32("add: length", a.len())?;
    let kernel = if a.dtype() == DType::F32 {
        ADD_F32
    } else {
        ADD_BF16
    };
    let g = grid(a.len());
    // SAFETY: out, a and b hold n elements each; the kernel touches indices < n only.
    unsafe {
        dev.launch(&Launch {
            kernel,
            grid: g,
            block: Dim3::x(BLOCK),
            shared_bytes: 0,
            args: &[out.arg_mut(), a.arg(), b.arg(), crate::Arg::I32(n)],
        })
    }
}

/// `out = s * x`; same dtype (f32 or bf16) and length.
pub fn scale(dev: &Device, out: &mut Buffer, x: &Buffer, s: f32) -> Result<()> {
    float_dtype("scale: x", x)?;
    same("scale: out", x, out)?;
    let n = n_i32("scale: length", x.len())?;
    let kernel = if x.dtype() == DType::F32 {
        SCALE_F32
    } else {
        SCALE_BF16
    };
    let g = grid(x.len());
    // SAFETY: out and x hold n elements; the kernel touches indices < n only.
    unsafe {
        dev.launch(&Launch {
            kernel,
            grid: g,
            block: Dim3::x(BLOCK),
            shared_bytes: 0,
            args: &[
                out.arg_mut(),
                x.arg(),
                crate::Arg::F32(s),
                crate::Arg::I32(n),
            ],
        })
    }
}

/// `y = alpha * x + y` in place; same dtype (f32 or bf16) and length.
pub fn axpy(dev: &Device, y: &mut Buffer, x: &Buffer, alpha: f32) -> Result<()> {
    float_dtype("axpy: x", x)?;
    same("axpy: y", x, y)?;
    let n = n_i32("axpy: length", x.len())?;
    let kernel = if x.dtype() == DType::F32 {
        AXPY_F32
    } else {
        AXPY_BF16
    };
    let g = grid(x.len());
    // SAFETY: y and x hold n elements; the kernel touches indices < n only.
    unsafe {
        dev.launch(&Launch {
            kernel,
            grid: g,
            block: Dim3::x(BLOCK),
            shared_bytes: 0,
            args: &[
                y.arg_mut(),
                x.arg(),
                crate::Arg::F32(alpha),
                crate::Arg::I32(n),
            ],
        })
    }
}
