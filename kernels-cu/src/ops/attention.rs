//! Fused flash-style attention, forward and backward (cuda/attention.cu).
//!
//! Reference: `engine::ops::attention::{attention_forward, attention_backward}`, same shapes and
//! semantics: `q [b, hq, t, d]`, `k, v [b, hkv, tk, d]` (bf16, row-major), query head `h`
//! reads KV head `h / (hq/hkv)`, query row `i` sits at absolute position `tk − t + i` and, when
//! causal, sees keys `j ≤ tk − t + i`; `key_mask [b, tk]` (u8, 0 = padding). Forward:
//! `S = scale·Q·Kᵀ` (hidden entries −∞), `lse = logsumexp_rows(S)`, `O = softmax(S)·V`; a row
//! with no visible key gets `O = 0`, `lse = −∞` and no gradient. Backward:
//! `D = rowsum(dO∘O)`, `dV = Pᵀ·dO`, `dS = scale·P∘(dO·Vᵀ − D)`, `dQ = dS·K`, `dK = dSᵀ·Q`.
//!
//! `O` is bf16, `lse` `[b, hq, t]` f32 (natural log), `dQ/dK/dV` f32 in the layouts of q/k/v.
//! The backward is deterministic: every gradient element has exactly one writer and the sum
//! over the query heads of a KV group runs in head order inside one block (no atomics).
//! `head_dim` must be 64 or 128.

use super::check;
use crate::defines;
use crate::device::{Dim3, Launch};
use crate::error::{Error, Result};
use crate::kernels::*;
use crate::{Arg, Buffer, DType, Device, Kernel};

/// Threads per block of the tile kernels (`ATT_THREADS` in cuda/attention.cu).
pub const THREADS: u32 = defines::attention::ATT_THREADS as u32;
/// Query rows per forward / dQ block, keys per dK/dV block (`ATT_TILE`).
pub const TILE: usize = defines::attention::ATT_TILE;

/// Problem geometry.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnShape {
    pub batch: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub head_dim: usize,
    pub causal: bool,
    pub scale: f32,
}

/// Gradients returned by [`backward`] (f32, layouts of q, k, v).
pub struct AttnGrads {
    pub dq: Buffer,
    pub dk: Buffer,
    pub dv: Buffer,
}

impl AttnShape {
    fn q_elems(&self) -> usize {
        self.batch * self.q_heads * self.q_len * self.head_dim
    }
    fn kv_elems(&self) -> usize {
        self.batch * self.kv_heads * self.kv_len * self.head_dim
    }
    fn rows(&self) -> usize {
        self.batch * self.q_heads * self.q_len
    }

    fn validate(&self, kernel: &'static str) -> Result<()> {
        let bad = |reason: String| Error::InvalidLaunch { kernel, reason };
        if self.head_dim != 64 && self.head_dim != 128 {
            return Err(bad(format!("head_dim {} (64 or 128)", self.head_dim)));
        }
        if self.batch == 0 || self.q_heads == 0 || self.kv_heads == 0 || self.q_len == 0 {
            return Err(bad(format!("empty attention problem {self:?}")));
        }
        if !self.q_heads.is_multiple_of(self.kv_heads) {
            return Err(bad(format!(
                "q_heads {} not a multiple of kv_heads {}",
                self.q_heads, self.kv_heads
            )));
        }
        if self.kv_len < self.q_len {
            return Err(bad(format!(
                "kv_len {} < q_len {} (queries sit at the end of the keys)",
                self.kv_len, self.q_len
            )));
        }
        if !self.scale.is_finite() {
            return Err(bad(format!("scale {}", self.scale)));
        }
        let fits = |n: usize| i32::try_from(n).is_ok();
        if !fits(self.q_elems().max(self.kv_elems()))
            || self.q_heads > 65_535
            || self.batch > 65_535
        {
            return Err(bad(format!(
                "problem too large for 32-bit indexing {self:?}"
            )));
        }
        Ok(())
    }

    fn ints(&self) -> [Arg<'static>; 4] {
        [
            Arg::I32(self.q_heads as i32),
            Arg::I32(self.kv_heads as i32),
            Arg::I32(self.q_len as i32),
            Arg::I32(self.kv_len as i32),
        ]
    }
}

fn check_inputs(
    s: &AttnShape,
    q: &Buffer,
    k: &Buffer,
    v: &Buffer,
    mask: Option<&Buffer>,
) -> Result<()> {
    check("attention: q", q, DType::BF16, s.q_elems())?;
    check("attention: k", k, DType::BF16, s.kv_elems())?;
    check("attention: v", v, DType::BF16, s.kv_elems())?;
    if let Some(m) = mask {
        check("attention: key_mask", m, DType::U8, s.batch * s.kv_len)?;
    }
    Ok(())
}

/// Dynamic shared memory of the tile kernels (bf16 tiles with rows padded to d + 8, plus the
/// per-row/per-key f32/i32 side arrays; the streamed tiles of the backward kernels in two
/// stages), as cuda/attention.cu lays it out. At most 69.6 KB (d = 128), above the 48 KB
/// default: the CUDA backend opts each kernel in to the device's maximum.
fn smem_fwd(d: usize) -> u32 {
    (2 * TILE * (d + 8) * 2 + TILE * 4) as u32
}
fn bwd_tile(d: usize) -> usize {
    if d == 64 {
        64
    } else {
        32
    }
}
fn smem_dkdv(d: usize) -> u32 {
    let bq = bwd_tile(d);
    (2 * TILE * (d + 8) * 2 + 2 * (2 * bq * (d + 8) * 2 + 2 * bq * 4) + TILE * 4) as u32
}
fn smem_dq(d: usize) -> u32 {
    let bk = bwd_tile(d);
    (2 * TILE * (d + 8) * 2 + 2 * (2 * bk * (d + 8) * 2 + bk * 4)) as u32
}

fn pick(d: usize, k64: Kernel, k128: Kernel) -> Kernel {
    if d == 64 {
        k64
    } else {
        k128
    }
}

/// The mask argument pair: the buffer (or a one-byte placeholder, never read, when absent) and
/// the `has_mask` flag.
fn mask_args<'a>(mask: Option<&'a Buffer>, placeholder: &'a Buffer) -> [Arg<'a>; 2] {
    match mask {
        Some(m) => [m.arg(), Arg::I32(1)],
        None => [placeholder.arg(), Arg::I32(0)],
    }
}

/// Forward: writes `o [b, hq, t, d]` (bf16) and returns `lse [b, hq, t]` (f32).
pub fn forward(
    dev: &Device,
    s: &AttnShape,
    o: &mut Buffer,
    q: &Buffer,
    k: &Buffer,
    v: &Buffer,
    key_mask: Option<&Buffer>,
) -> Result<Buffer> {
    let kernel = pick(s.head_dim, ATTN_FWD_D64, ATTN_FWD_D128);
    s.validate(kernel.name)?;
    check_inputs(s, q, k, v, key_mask)?;
    check("attention: o", o, DType::BF16, s.q_elems())?;
    let mut lse = dev.alloc(DType::F32, s.rows())?;
    let none = dev.alloc(DType::U8, 1)?;
    let [ma, mf] = mask_args(key_mask, &none);
    let [hq, hkv, t, tk] = s.ints();
    // SAFETY: q/o hold b·hq·t·d bf16, k/v b·hkv·tk·d, the mask b·tk u8 (read only when
    // has_mask), lse b·hq·t f32 (checked above). Block (x, h, b) reads rows of head (b, h) and
    // its KV head and writes query rows 64x..64x+63 (< t) of head (b, h) only. The dynamic
    // shared memory matches the kernel's layout.
    unsafe {
        dev.launch(&Launch {
            kernel,
            grid: Dim3 {
                x: s.q_len.div_ceil(TILE) as u32,
                y: s.q_heads as u32,
                z: s.batch as u32,
            },
            block: Dim3::x(THREADS),
            shared_bytes: smem_fwd(s.head_dim),
            args: &[
                o.arg_mut(),
                lse.arg_mut(),
                q.arg(),
                k.arg(),
                v.arg(),
                ma,
                mf,
                hq,
                hkv,
                t,
                tk,
                Arg::I32(s.causal as i32),
                Arg::F32(s.scale),
            ],
        })?;
    }
    Ok(lse)
}

/// Backward of [`forward`] given its output `o`, `lse` and the output gradient `dout` (bf16,
/// shape of `o`). Returns f32 `dQ`, `dK`, `dV`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dev: &Device,
    s: &AttnShape,
    q: &Buffer,
    k: &Buffer,
    v: &Buffer,
    key_mask: Option<&Buffer>,
    o: &Buffer,
    lse: &Buffer,
    dout: &Buffer,
) -> Result<AttnGrads> {
    let (kdq, kdkdv) = (
        pick(s.head_dim, ATTN_BWD_DQ_D64, ATTN_BWD_DQ_D128),
        pick(s.head_dim, ATTN_BWD_DKDV_D64, ATTN_BWD_DKDV_D128),
    );
    s.validate(kdq.name)?;
    check_inputs(s, q, k, v, key_mask)?;
    check("attention_backward: o", o, DType::BF16, s.q_elems())?;
    check("attention_backward: dout", dout, DType::BF16, s.q_elems())?;
    check("attention_backward: lse", lse, DType::F32, s.rows())?;
    let rows = s.rows();
    let mut dd = dev.alloc(DType::F32, rows)?;
    // SAFETY: o/dout hold rows·d bf16, dd rows f32; warp w of block x handles row 8x + w only.
    unsafe {
        dev.launch(&Launch {
            kernel: ATTN_BWD_DOT,
            grid: Dim3::x(rows.div_ceil(8) as u32),
            block: Dim3::x(256),
            shared_bytes: 0,
            args: &[
                dd.arg_mut(),
                o.arg(),
                dout.arg(),
                Arg::I32(rows as i32),
                Arg::I32(s.head_dim as i32),
            ],
        })?;
    }
    let mut dq = dev.alloc(DType::F32, s.q_elems())?;
    let mut dk = dev.alloc(DType::F32, s.kv_elems())?;
    let mut dv = dev.alloc(DType::F32, s.kv_elems())?;
    let none = dev.alloc(DType::U8, 1)?;
    let [hq, hkv, t, tk] = s.ints();
    {
        let [ma, mf] = mask_args(key_mask, &none);
        // SAFETY: sizes checked above; block (x, g, b) writes keys 64x..64x+63 (< tk) of KV head
        // (b, g) of dK and dV only, reading the query heads of that group.
        unsafe {
            dev.launch(&Launch {
                kernel: kdkdv,
                grid: Dim3 {
                    x: s.kv_len.div_ceil(TILE) as u32,
                    y: s.kv_heads as u32,
                    z: s.batch as u32,
                },
                block: Dim3::x(THREADS),
                shared_bytes: smem_dkdv(s.head_dim),
                args: &[
                    dk.arg_mut(),
                    dv.arg_mut(),
                    q.arg(),
                    k.arg(),
                    v.arg(),
                    ma,
                    mf,
                    dout.arg(),
                    lse.arg(),
                    dd.arg(),
                    hq,
                    hkv,
                    t,
                    tk,
                    Arg::I32(s.causal as i32),
                    Arg::F32(s.scale),
                ],
            })?;
        }
    }
    let [ma, mf] = mask_args(key_mask, &none);
    let [hq, hkv, t, tk] = s.ints();
    // SAFETY: sizes checked above; block (x, h, b) writes query rows 64x..64x+63 (< t) of head
    // (b, h) of dQ only.
    unsafe {
        dev.launch(&Launch {
            kernel: kdq,
            grid: Dim3 {
                x: s.q_len.div_ceil(TILE) as u32,
                y: s.q_heads as u32,
                z: s.batch as u32,
            },
            block: Dim3::x(THREADS),
            shared_bytes: smem_dq(s.head_dim),
            args: &[
                dq.arg_mut(),
                q.arg(),
                k.arg(),
                v.arg(),
                ma,
                mf,
                dout.arg(),
                lse.arg(),
                dd.arg(),
                hq,
                hkv,
                t,
                tk,
                Arg::I32(s.causal as i32),
                Arg::F32(s.scale),
            ],
        })?;
    }
    Ok(AttnGrads { dq, dk, dv })
}
