//! The 4-bit linear op on the CPU: `y = x · dequant(W)ᵀ` and `dx = dy · dequant(W)`.
//!
//! The weight is never dequantized whole: rows of W are dequantized [`tile_rows`] at a time
//! (at most [`TILE_ROWS`], at most 4 MiB of fp32) into a per-thread reusable buffer, and each
//! tile is multiplied with the `gemm` crate.
//! There is no gradient for W (the frozen QLoRA base).

use std::cell::RefCell;

use rayon::prelude::*;

use super::error::Nf4Error;
use super::weight::QuantizedWeight;

/// Most rows of W dequantized per tile.
pub const TILE_ROWS: usize = 256;

/// Cap on one tile's fp32 buffer: 256 rows while `in_features <= 4096`, fewer rows for wider
/// inputs (57 for Falcon-7B's 18176-wide dense_4h_to_h), never fewer than 16.
const TILE_BYTES: usize = 4 << 20;

/// Rows per tile for a weight with `in_features` columns.
pub fn tile_rows(in_features: usize) -> usize {
    (TILE_BYTES / (4 * in_features.max(1))).clamp(16, TILE_ROWS)
}

thread_local! {
    /// The tile buffer, kept per calling thread so repeated calls neither allocate nor
    /// fault in fresh pages.
    static TILE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's tile buffer of at least `len` elements.
fn with_tile<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    TILE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // Re-entered on this thread (rayon work stealing inside `f`): use a fresh buffer.
        Err(_) => f(&mut vec![0.0; len]),
    })
}

fn check_len(what: &str, expected: usize, got: usize) -> Result<(), Nf4Error> {
    if expected == got {
        Ok(())
    } else {
        Err(Nf4Error::Length {
            what: what.to_string(),
            expected,
            got,
        })
    }
}

/// Dequantizes rows `r0..r0 + rows` of `w` into `buf` (fp32, `[rows, in]`), one row per task.
fn dequantize_tile(
    w: &QuantizedWeight,
    r0: usize,
    rows: usize,
    buf: &mut [f32],
) -> Result<(), Nf4Error> {
    let k = w.in_features();
    buf[..rows * k]
        .par_chunks_mut(k)
        .enumerate()
        .try_for_each(|(j, row)| {
            w.dequantize_rows_into(r0 + j..r0 + j + 1, row)?;
            // Match bitsandbytes, whose dequantized weight is in the stored dtype.
            w.round_to_stored(row);
            Ok(())
        })
}

fn parallelism(flops: usize) -> gemm::Parallelism {
    // Small products are faster on one thread; the split never changes the result
    // (gemm partitions the output, not the reduction).
    if flops >= 1 << 20 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    }
}

/// Forward: `y[m, out] = x[m, in] · dequant(W)ᵀ`, all row-major fp32.
///
/// `x.len() == m·in`, `y.len() == m·out`; `y` is overwritten.
pub fn linear_forward(
    x: &[f32],
    m: usize,
    w: &QuantizedWeight,
    y: &mut [f32],
) -> Result<(), Nf4Error> {
    let (n_out, k) = (w.out_features(), w.in_features());
    check_len("linear_forward input x", m.saturating_mul(k), x.len())?;
    check_len("linear_forward output y", m.saturating_mul(n_out), y.len())?;
    if m == 0 || n_out == 0 {
        return Ok(());
    }
    if k == 0 {
        y.fill(0.0);
        return Ok(());
    }
    let tile = tile_rows(k).min(n_out);
    with_tile(tile * k, |buf| forward_tiles(x, m, w, y, tile, buf))
}

fn forward_tiles(
    x: &[f32],
    m: usize,
    w: &QuantizedWeight,
    y: &mut [f32],
    tile: usize,
    buf: &mut [f32],
) -> Result<(), Nf4Error> {
    let (n_out, k) = (w.out_features(), w.in_features());
    for r0 in (0..n_out).step_by(tile) {
        let rows = tile.min(n_out - r0);
        dequantize_tile(w, r0, rows, buf)?;
        // y[:, r0..r0+rows] = x · tileᵀ, where tileᵀ[c, j] = buf[j·k + c].
        // SAFETY: dst covers y[i·n_out + r0 + j] for i < m, j < rows: inside y because
        // r0 + rows <= n_out and y.len() == m·n_out. lhs reads x[i·k + c] for i < m, c < k
        // (x.len() == m·k); rhs reads buf[j·k + c] for j < rows, c < k (buf.len() == tile·k >= rows·k).
        // dst does not alias lhs or rhs (distinct borrows).
        unsafe {
            gemm::gemm(
                m,
                rows,
                k,
                y.as_mut_ptr().add(r0),
                1,
                n_out as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                buf.as_ptr(),
                k as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism(m * rows * k),
            );
        }
    }
    Ok(())
}

/// Backward with respect to the input: `dx[m, in] = dy[m, out] · dequant(W)`, row-major fp32.
///
/// `dy.len() == m·out`, `dx.len() == m·in`; `dx` is overwritten. Tiles are accumulated in
/// a fixed order, so the result is deterministic.
pub fn linear_backward_input(
    dy: &[f32],
    m: usize,
    w: &QuantizedWeight,
    dx: &mut [f32],
) -> Result<(), Nf4Error> {
    let (n_out, k) = (w.out_features(), w.in_features());
    check_len(
        "linear_backward_input gradient dy",
        m.saturating_mul(n_out),
        dy.len(),
    )?;
    check_len(
        "linear_backward_input output dx",
        m.saturating_mul(k),
        dx.len(),
    )?;
    if m == 0 || k == 0 {
        return Ok(());
    }
    if n_out == 0 {
        dx.fill(0.0);
        return Ok(());
    }
    let tile = tile_rows(k).min(n_out);
    with_tile(tile * k, |buf| backward_tiles(dy, m, w, dx, tile, buf))
}

fn backward_tiles(
    dy: &[f32],
    m: usize,
    w: &QuantizedWeight,
    dx: &mut [f32],
    tile: usize,
    buf: &mut [f32],
) -> Result<(), Nf4Error> {
    let (n_out, k) = (w.out_features(), w.in_features());
    for r0 in (0..n_out).step_by(tile) {
        let rows = tile.min(n_out - r0);
        dequantize_tile(w, r0, rows, buf)?;
        // dx (+)= dy[:, r0..r0+rows] · tile, tile[j, c] = buf[j·k + c].
        // SAFETY: dst covers dx[i·k + c] for i < m, c < k (dx.len() == m·k). lhs reads
        // dy[i·n_out + r0 + j] for i < m, j < rows (r0 + rows <= n_out, dy.len() == m·n_out);
        // rhs reads buf[j·k + c] for j < rows, c < k. dst aliases neither.
        unsafe {
            gemm::gemm(
                m,
                k,
                rows,
                dx.as_mut_ptr(),
                1,
                k as isize,
                r0 > 0,
                dy.as_ptr().add(r0),
                1,
                n_out as isize,
                buf.as_ptr(),
                1,
                k as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism(m * rows * k),
            );
        }
    }
    Ok(())
}
