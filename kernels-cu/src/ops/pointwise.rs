//! Pointwise ops of the Falcon block (cuda/pointwise.cu): exact GELU forward/backward, the
//! three-term residual add, the embedding gather and its deterministic scatter-add backward.
//! f32 math; bf16 outputs are rounded once to nearest even.
//!
//! Reference (`engine::ops::gelu::{gelu_scalar, gelu_grad_scalar}`, `engine::ops::embedding`):
//! `gelu(x) = ½x(1 + erf(x/√2))`, `dx = dy·(Φ(x) + x·φ(x))`;
//! `residual_add3: out = x + a + b` (left to right);
//! `embedding: out[r, :] = table[ids[r], :]`, backward `dtable[v, :] = Σ_{ids[r]=v} dy[r, :]` in
//! token order (rows of unused ids are 0).

use super::check;
use super::BLOCK;
use crate::device::{Dim3, Launch};
use crate::error::{Error, Result};
use crate::kernels::*;
use crate::{Arg, Buffer, DType, Device, Kernel};

/// Grid of a grid-stride loop over `n` elements handled `per_thread` at a time.
fn grid(n: usize, per_thread: usize) -> Dim3 {
    Dim3::x(n.div_ceil(BLOCK as usize * per_thread).clamp(1, 8192) as u32)
}

/// The kernel for f32 or bf16 `x`, and the elements one thread handles per vector access.
fn pick(what: &'static str, x: &Buffer, f32k: Kernel, bf16k: Kernel) -> Result<(Kernel, usize)> {
    match x.dtype() {
        DType::F32 => Ok((f32k, 4)),
        DType::BF16 => Ok((bf16k, 8)),
        got => Err(Error::DType {
            what,
            expected: DType::BF16,
            got,
        }),
    }
}

/// `y = gelu(x)` (exact erf form); `y`, `x` same dtype (f32 or bf16) and length.
pub fn gelu_forward(dev: &Device, y: &mut Buffer, x: &Buffer) -> Result<()> {
    let (kernel, per) = pick("gelu: x", x, GELU_FWD_F32, GELU_FWD_BF16)?;
    check("gelu: y", y, x.dtype(), x.len())?;
    // SAFETY: x and y hold n elements (checked); the launcher refuses views that are not 16-byte
    // aligned, as the vector loads need; the kernel touches indices < n only.
    unsafe {
        dev.launch(&Launch {
            kernel,
            grid: grid(x.len(), per),
            block: Dim3::x(BLOCK),
            shared_bytes: 0,
            args: &[y.arg_mut(), x.arg(), Arg::I64(x.len() as i64)],
        })
    }
}

/// `dx = dy·gelu'(x)`; all three the same dtype (f32 or bf16) and length.
pub fn gelu_backward(dev: &Device, dx: &mut Buffer, x: &Buffer, dy: &Buffer) -> Result<()> {
    let (kernel, per) = pick("gelu_backward: x", x, GELU_BWD_F32, GELU_BWD_BF16)?;
    check("gelu_backward: dy", dy, x.dtype(), x.len())?;
    check("gelu_backward: dx", dx, x.dtype(), x.len())?;
    // SAFETY: as in gelu_forward.
    unsafe {
        dev.launch(&Launch {
            kernel,
            grid: grid(x.len(), per),
            block: Dim3::x(BLOCK),
            shared_bytes: 0,
            args: &[dx.arg_mut(), x.arg(), dy.arg(), Arg::I64(x.len() as i64)],
        })
    }
}

/// `out = x + a + b` (Falcon's parallel block: residual + attention + MLP), one rounding.
pub fn residual_add3(
    dev: &Device,
    out: &mut Buffer,
    x: &Buffer,
    a: &Buffer,
    b: &Buffer,
) -> Result<()> {
    let (kernel, per) = pick("residual_add3: x", x, RESIDUAL_ADD3_F32, RESIDUAL_ADD3_BF16)?;
    check("residual_add3: a", a, x.dtype(), x.len())?;
    check("residual_add3: b", b, x.dtype(), x.len())?;
    check("residual_add3: out", out, x.dtype(), x.len())?;
    // SAFETY: as in gelu_forward.
    unsafe {
        dev.launch(&Launch {
            kernel,
            grid: grid(x.len(), per),
            block: Dim3::x(BLOCK),
            shared_bytes: 0,
            args: &[
                out.arg_mut(),
                x.arg(),
                a.arg(),
                b.arg(),
                Arg::I64(x.len() as i64),
            ],
        })
    }
}

/// Threads per block of the embedding kernels (one block per token row).
pub const EMB_BLOCK: u32 = 128;

fn table_dims(what: &'static str, table_len: usize, vocab: usize, d: usize) -> Result<()> {
    if d == 0 || vocab == 0 || vocab.checked_mul(d) != Some(table_len) {
        return Err(Error::Length {
            what,
            expected: vocab.saturating_mul(d),
            got: table_len,
        });
    }
    if d > i32::MAX as usize || vocab > u32::MAX as usize {
        return Err(Error::Length {
            what,
            expected: i32::MAX as usize,
            got: d.max(vocab),
        });
    }
    Ok(())
}

/// `out[r, :] = table[ids[r], :]` with `ids` `[n]` u32, `table` `[vocab, d]` and `out` `[n, d]`
/// (f32 or bf16, bit-exact copies). Ids are validated on the host before upload; should one
/// still be out of range, its row is NaN and the returned one-element i32 buffer holds the
/// smallest such token position (`i32::MAX` when all ids are valid), to read when convenient.
pub fn embedding_forward(
    dev: &Device,
    out: &mut Buffer,
    ids: &Buffer,
    table: &Buffer,
    vocab: usize,
    d: usize,
) -> Result<Buffer> {
    let mut bad = dev.htod(&[i32::MAX])?;
    embedding_forward_flagged(dev, out, &mut bad, ids, table, vocab, d)?;
    Ok(bad)
}

/// [`embedding_forward`] into a caller's one-element i32 flag `bad` (holding `i32::MAX`, left so
/// when every id is valid): no copy, so that it can be captured into a graph.
pub fn embedding_forward_flagged(
    dev: &Device,
    out: &mut Buffer,
    bad: &mut Buffer,
    ids: &Buffer,
    table: &Buffer,
    vocab: usize,
    d: usize,
) -> Result<()> {
    table_dims("embedding: table", table.len(), vocab, d)?;
    let (kernel, _) = pick(
        "embedding: table",
        table,
        EMBEDDING_FWD_F32,
        EMBEDDING_FWD_BF16,
    )?;
    let n = ids.len();
    check("embedding: ids", ids, DType::U32, n)?;
    check("embedding: out", out, table.dtype(), n * d)?;
    check("embedding: invalid-id flag", bad, DType::I32, 1)?;
    if n == 0 {
        return Ok(());
    }
    // SAFETY: ids hold n entries, out n·d, table vocab·d (checked); an id ≥ vocab is never used
    // as an index (the kernel writes NaN instead); block r writes row r only.
    unsafe {
        dev.launch(&Launch {
            kernel,
            grid: Dim3::x(n as u32),
            block: Dim3::x(EMB_BLOCK),
            shared_bytes: 0,
            args: &[
                out.arg_mut(),
                bad.arg_mut(),
                ids.arg(),
                table.arg(),
                Arg::I32(d as i32),
                Arg::U32(vocab as u32),
            ],
        })
    }
}

/// Gradient of the embedding table: `dtable [vocab, d]` f32 from `dy [n, d]` (f32 or bf16),
/// summed per id in token order without atomics (bitwise reproducible). Ids ≥ vocab are skipped.
pub fn embedding_backward(
    dev: &Device,
    dtable: &mut Buffer,
    ids: &Buffer,
    dy: &Buffer,
    vocab: usize,
    d: usize,
) -> Result<()> {
    table_dims("embedding_backward: dtable", dtable.len(), vocab, d)?;
    check("embedding_backward: dtable", dtable, DType::F32, vocab * d)?;
    let n = ids.len();
    check("embedding_backward: ids", ids, DType::U32, n)?;
    let (kernel, _) = pick(
        "embedding_backward: dy",
        dy,
        EMBEDDING_BWD_F32,
        EMBEDDING_BWD_BF16,
    )?;
    check("embedding_backward: dy", dy, dy.dtype(), n * d)?;
    let n_i32 = i32::try_from(n).map_err(|_| Error::Length {
        what: "embedding_backward: ids",
        expected: i32::MAX as usize,
        got: n,
    })?;
    // SAFETY: dtable holds vocab·d f32 (checked); the zero kernel touches indices < vocab·d; the
    // scatter kernel reads ids[0..n) and dy[0..n·d) and writes only rows id < vocab.
    unsafe {
        dev.launch(&Launch {
            kernel: EMBEDDING_ZERO_F32,
            grid: grid(vocab * d, 1),
            block: Dim3::x(BLOCK),
            shared_bytes: 0,
            args: &[dtable.arg_mut(), Arg::I64((vocab * d) as i64)],
        })?;
        if n == 0 {
            return Ok(());
        }
        dev.launch(&Launch {
            kernel,
            grid: Dim3::x(n as u32),
            block: Dim3::x(EMB_BLOCK),
            shared_bytes: 0,
            args: &[
                dtable.arg_mut(),
                ids.arg(),
                dy.arg(),
                Arg::I32(n_i32),
                Arg::I32(d as i32),
                Arg::U32(vocab as u32),
            ],
        })
    }
}
