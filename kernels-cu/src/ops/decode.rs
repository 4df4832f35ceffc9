//! Decoding kernels (cuda/decode.cu): the products and the attention of one new token per
//! sequence, for batches of a few sequences.
//!
//! - [`gemv_nf4`]: `Y[M][N] = α·X[M][K]·Wᵀ + β·Y` for small M, reading the packed 4-bit weight
//!   once; each weight is bf16(NF4 table value) times its fp32 absmax, the absmax applied to
//!   each 64-column block's fp32 sum (within one bf16 rounding of the values of
//!   [`super::gemm::nf4_forward`]'s W, see `cuda/decode.cu`); M > 32 runs in groups of
//!   [`MAX_ROWS`] rows, one launch each.
//! - [`gemv_bf16`]: the same for a bf16 `W[N][K]` (the tied lm_head, merged weights).
//! - [`attention`]: flash-decoding of one query row per (sequence, head) over a KV cache
//!   `[b, hkv, cap, d]`, split over the cache in chunks of [`ATTN_CHUNK`] keys and combined in a
//!   fixed order (deterministic).
//!   [`attention_at`] reads the filled length from device memory (a captured decode step,
//!   [`crate::graph`]).
//! - [`rope_append`]: a decode step's RoPE and its two cache writes in one launch.
//! - [`kv_write`] and [`take_last_rows`]: the prefill's cache writes and last rows.
//!
//! Precision: bf16 inputs, f32 accumulation, output rounded once.

use super::{check, n_i32};
use crate::defines::decode as def;
use crate::device::{Dim3, Launch};
use crate::error::{Error, Result};
use crate::kernels::*;
use crate::ops::gemm::{Nf4Weight, NF4_GEMM_BLOCKSIZE};
use crate::{Arg, Buffer, DType, Device, Kernel};

/// Rows of X one GEMV launch takes (its register accumulators).
pub const MAX_ROWS: usize = def::DECODE_MAX_ROWS;
/// Output columns per GEMV block (one warp each).
pub const GEMV_WARPS: usize = def::DECODE_GEMV_WARPS;
/// Weight rows per 4-bit GEMV block (one patch row of the fragment layout).
pub const GEMV_NF4_ROWS: usize = 16;
/// Keys per flash-decoding split.
pub const ATTN_CHUNK: usize = def::DECODE_ATTN_CHUNK;
const ATTN_THREADS: u32 = def::DECODE_ATTN_THREADS as u32;
const GEMV_THREADS: u32 = def::DECODE_GEMV_THREADS as u32;
const COPY_THREADS: u32 = def::DECODE_COPY_THREADS as u32;

fn invalid(kernel: Kernel, reason: String) -> Error {
    Error::InvalidLaunch {
        kernel: kernel.name,
        reason,
    }
}

fn out_kernel(what: &'static str, y: &Buffer, bf: Kernel, f: Kernel) -> Result<Kernel> {
    match y.dtype() {
        DType::BF16 => Ok(bf),
        DType::F32 => Ok(f),
        got => Err(Error::DType {
            what,
            expected: DType::BF16,
            got,
        }),
    }
}

fn gemv_grid(kernel: Kernel, n: usize) -> Result<Dim3> {
    u32::try_from(n.div_ceil(GEMV_WARPS))
        .map(Dim3::x)
        .map_err(|_| invalid(kernel, format!("{n} output columns exceed the grid")))
}

/// Runs `launch(x_rows, y_rows, first row, rows)` over groups of at most [`MAX_ROWS`] rows.
fn by_row_groups(
    x: &Buffer,
    y: &mut Buffer,
    m: usize,
    k: usize,
    n: usize,
    mut launch: impl FnMut(&Buffer, &mut Buffer, usize, usize) -> Result<()>,
) -> Result<()> {
    if m <= MAX_ROWS {
        return launch(x, y, 0, m);
    }
    let mut r0 = 0;
    while r0 < m {
        let rows = MAX_ROWS.min(m - r0);
        let xv = x.view(r0 * k, rows * k)?;
        let mut yv = y.view_mut(r0 * n, rows * n)?;
        launch(&xv, &mut yv, r0, rows)?;
        r0 += rows;
    }
    Ok(())
}

/// What the 4-bit GEMV does to each output before storing it (bf16 outputs only), so that a
/// decode step saves the launch that would do it. Each rounds the product to bf16 first, then
/// computes what the separate kernel computes from that bf16 value.
#[derive(Debug, Clone, Copy)]
pub enum Epilogue<'a> {
    /// Store the product.
    None,
    /// `y = gelu(y)`, as [`super::pointwise::gelu_forward`].
    Gelu,
    /// `y = r1 + r2 + y` (`[M, N]` bf16 each, added left to right), as
    /// [`super::pointwise::residual_add3`]`(out, r1, r2, y)`.
    Residual(&'a Buffer, &'a Buffer),
}

/// `Y[M][N] = α·X[M][K]·dequant_bf16(W)ᵀ + β·Y`: `x` bf16 `M·K` (16-byte aligned), `y` bf16 or
/// f32 `M·N`. Needs the NF4 GEMM's weight format (blocksize 64, double quantization) and
/// `K % 64 == 0`. β = 0 never reads Y.
pub fn gemv_nf4(
    dev: &Device,
    x: &Buffer,
    w: &Nf4Weight,
    y: &mut Buffer,
    m: usize,
    alpha: f32,
    beta: f32,
) -> Result<()> {
    gemv_nf4_then(dev, x, w, y, m, alpha, beta, Epilogue::None, None)
}

/// Arrival counters of the split-K 4-bit GEMV, one per 16-row group, zeroed once: every launch
/// leaves them zero (the last block of each group resets its counter), so one scratch serves
/// every GEMV of a step, and a captured step needs no memset.
pub struct GemvScratch {
    counters: Buffer,
}

impl GemvScratch {
    /// Counters for weights of up to `max_out_features` rows.
    pub fn new(dev: &Device, max_out_features: usize) -> Result<GemvScratch> {
        Ok(GemvScratch {
            counters: dev
                .alloc_zeros(DType::U32, max_out_features.div_ceil(GEMV_NF4_ROWS).max(1))?,
        })
    }
}

/// Most blocks that share one 16-row group of the 4-bit GEMV (split-K).
pub const GEMV_MAX_SPLITS: usize = 4;

/// Split-K factor of the 4-bit GEMV for `groups` 16-row groups, `tiles` 64-column super-tiles
/// and `sms` SMs (0: unknown, no split): the factor whose busiest SM runs the least work per
/// row group (⌈groups·s / SMs⌉ / s), each split beyond the first costing what its blocks repeat
/// (the per-block setup and code-pair table, `perf::cost::GEMV_NF4_BLOCK_SETUP`, against a
/// warp's share of the k-loop) plus 2 % for its partial planes, each split keeping at least one
/// super-tile per warp.
pub fn gemv_splits(groups: usize, tiles: usize, sms: usize) -> usize {
    use crate::perf::cost::{GEMV_NF4_BLOCK_SETUP, GEMV_NF4_LOOP_BASE, GEMV_NF4_LOOP_PER_TILE};
    let warp_loop =
        tiles as f64 / GEMV_WARPS as f64 * (GEMV_NF4_LOOP_BASE + GEMV_NF4_LOOP_PER_TILE);
    let overhead = 0.02 + GEMV_NF4_BLOCK_SETUP / warp_loop.max(1.0);
    super::wave_split(groups, sms, GEMV_MAX_SPLITS, overhead, |s| {
        tiles >= s * GEMV_WARPS
    })
}

/// [`gemv_nf4`] followed by `epi` in the same launch (`y` bf16 for an epilogue), split over K
/// as [`gemv_splits`] chooses for the device; `scratch` holds the split's counters (needed
/// when capturing: without it a split launch allocates zeroed counters, a memset).
#[allow(clippy::too_many_arguments)]
pub fn gemv_nf4_then(
    dev: &Device,
    x: &Buffer,
    w: &Nf4Weight,
    y: &mut Buffer,
    m: usize,
    alpha: f32,
    beta: f32,
    epi: Epilogue<'_>,
    scratch: Option<&mut GemvScratch>,
) -> Result<()> {
    let splits = gemv_splits(
        w.out_features.div_ceil(GEMV_NF4_ROWS),
        w.in_features / 64,
        dev.info().multiprocessors as usize,
    );
    gemv_nf4_split(dev, x, w, y, m, alpha, beta, epi, splits, scratch)
}

/// [`gemv_nf4_then`] with `splits` blocks per 16-row group (1..=[`GEMV_MAX_SPLITS`]).
#[allow(clippy::too_many_arguments)]
pub fn gemv_nf4_split(
    dev: &Device,
    x: &Buffer,
    w: &Nf4Weight,
    y: &mut Buffer,
    m: usize,
    alpha: f32,
    beta: f32,
    epi: Epilogue<'_>,
    splits: usize,
    scratch: Option<&mut GemvScratch>,
) -> Result<()> {
    // The M ≤ 8 entry points carry one column tile of X rows; the others four.
    let small = m <= 8;
    let pick = |wide: Kernel, narrow: Kernel| if small { narrow } else { wide };
    let kernel = match epi {
        Epilogue::None => out_kernel(
            "decode gemv nf4: Y",
            y,
            pick(DECODE_GEMV_NF4_BF16, DECODE_GEMV_NF4_M8_BF16),
            pick(DECODE_GEMV_NF4_F32, DECODE_GEMV_NF4_M8_F32),
        )?,
        Epilogue::Gelu => pick(DECODE_GEMV_NF4_GELU_BF16, DECODE_GEMV_NF4_M8_GELU_BF16),
        Epilogue::Residual(..) => pick(
            DECODE_GEMV_NF4_RESIDUAL_BF16,
            DECODE_GEMV_NF4_M8_RESIDUAL_BF16,
        ),
    };
    if !matches!(epi, Epilogue::None) {
        check("decode gemv nf4 (epilogue): Y", y, DType::BF16, y.len())?;
    }
    let (n, k) = (w.out_features, w.in_features);
    if w.blocksize != NF4_GEMM_BLOCKSIZE || !k.is_multiple_of(64) {
        return Err(invalid(
            kernel,
            format!(
                "needs blocksize {NF4_GEMM_BLOCKSIZE} and in_features a multiple of 64; the \
                 weight has blocksize {} and in_features {k}",
                w.blocksize
            ),
        ));
    }
    if w.layout != super::gemm::CodeLayout::Fragment {
        return Err(invalid(
            kernel,
            "needs the codes in the NF4 GEMM's fragment layout (made at upload)".into(),
        ));
    }
    check("decode gemv nf4: X", x, DType::BF16, m * k)?;
    check("decode gemv nf4: Y", y, y.dtype(), m * n)?;
    if !x.is_aligned(16) || !w.packed.is_aligned(16) {
        return Err(invalid(
            kernel,
            "X and the packed codes must be 16-byte aligned".into(),
        ));
    }
    n_i32("decode gemv nf4: weight elements", w.numel())?;
    if let Epilogue::Residual(r1, r2) = epi {
        check("decode gemv nf4: residual", r1, DType::BF16, m * n)?;
        check("decode gemv nf4: second residual", r2, DType::BF16, m * n)?;
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    // One block per 16 weight rows (a patch row of the fragment layout).
    let groups = n.div_ceil(GEMV_NF4_ROWS);
    let gx = u32::try_from(groups)
        .map_err(|_| invalid(kernel, format!("{n} output columns exceed the grid")))?;
    if splits == 0 || splits > GEMV_MAX_SPLITS {
        return Err(invalid(
            kernel,
            format!("{splits} splits (1..={GEMV_MAX_SPLITS})"),
        ));
    }
    let grid = Dim3::xy(gx, splits as u32);
    // Split-K: fp32 planes of the rows of one launch, and the counters (the caller's, or fresh
    // zeroed ones). 1-element stand-ins otherwise (never touched).
    let mut own;
    let (mut part, counters) = if splits > 1 {
        let counters = match scratch {
            Some(s) if s.counters.len() >= groups => &mut s.counters,
            Some(s) => {
                return Err(invalid(
                    kernel,
                    format!(
                        "a scratch of {} counters for {groups} row groups",
                        s.counters.len()
                    ),
                ))
            }
            None => {
                own = dev.alloc_zeros(DType::U32, groups)?;
                &mut own
            }
        };
        n_i32(
            "decode gemv nf4: split planes",
            splits * m.min(MAX_ROWS) * n,
        )?;
        (
            dev.alloc(DType::F32, splits * m.min(MAX_ROWS) * n)?,
            counters,
        )
    } else {
        own = dev.alloc(DType::U32, 1)?;
        (dev.alloc(DType::F32, 1)?, &mut own)
    };
    by_row_groups(x, y, m, k, n, |x, y, r0, rows| {
        let residuals = match epi {
            Epilogue::Residual(r1, r2) => {
                Some((r1.view(r0 * n, rows * n)?, r2.view(r0 * n, rows * n)?))
            }
            _ => None,
        };
        let mut args = vec![y.arg_mut(), part.arg_mut(), counters.arg_mut(), x.arg()];
        // The weight's arguments, with the residuals (when fused) before its absmax offset.
        let [packed, codes, nested, map, table, offset] = w.device_args();
        args.extend([packed, codes, nested, map, table]);
        if let Some((r1, r2)) = &residuals {
            args.push(r1.arg());
            args.push(r2.arg());
        }
        args.extend([
            offset,
            Arg::I32(rows as i32),
            Arg::I32(n as i32),
            Arg::I32(k as i32),
            Arg::F32(alpha),
            Arg::F32(beta),
        ]);
        // SAFETY: x holds rows·k, y (and the residuals) rows·n elements (checked above, views
        // of checked buffers); with splits > 1, part holds splits·rows·n floats and counters
        // one u32 per row group, zero (fresh, or left zero by every launch); block b reads the codes of rows 16b..16b + 16 inside super-tile
        // row 16b / 64 of the fragment layout (fragment_bytes(n, k) uploaded: rows padded to
        // 64), the absmax codes of its rows < N only, X rows < rows, and reads the residuals at
        // and writes Y[r][n] for r < rows, n < N only.
        unsafe {
            dev.launch(&Launch {
                kernel,
                grid,
                block: Dim3::x(GEMV_THREADS),
                shared_bytes: 0,
                args: &args,
            })
        }
    })
}

/// `Y[M][N] = α·X[M][K]·Wᵀ + β·Y` with `w` bf16 `[n, k]`: `x` bf16 `M·K`, `y` bf16 or f32 `M·N`;
/// `K % 8 == 0`, X and W 16-byte aligned. β = 0 never reads Y.
#[allow(clippy::too_many_arguments)]
pub fn gemv_bf16(
    dev: &Device,
    x: &Buffer,
    w: &Buffer,
    y: &mut Buffer,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    beta: f32,
) -> Result<()> {
    // The M ≤ 8 entry points keep 8 accumulators per lane; the others 32.
    let (to_bf16, to_f32) = if m <= 8 {
        (DECODE_GEMV_BF16_M8_BF16, DECODE_GEMV_BF16_M8_F32)
    } else {
        (DECODE_GEMV_BF16_BF16, DECODE_GEMV_BF16_F32)
    };
    let kernel = out_kernel("decode gemv bf16: Y", y, to_bf16, to_f32)?;
    check("decode gemv bf16: X", x, DType::BF16, m * k)?;
    check("decode gemv bf16: W", w, DType::BF16, n * k)?;
    check("decode gemv bf16: Y", y, y.dtype(), m * n)?;
    if !k.is_multiple_of(8) || !x.is_aligned(16) || !w.is_aligned(16) {
        return Err(invalid(
            kernel,
            format!("needs K % 8 == 0 (K = {k}) and 16-byte aligned X and W"),
        ));
    }
    n_i32("decode gemv bf16: weight elements", n * k)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let grid = gemv_grid(kernel, n)?;
    by_row_groups(x, y, m, k, n, |x, y, _, rows| {
        // SAFETY: x holds rows·k, w n·k and y rows·n elements (checked); warp n < N reads row n
        // of W with 16-byte loads at k0 % 8 == 0 (aligned) and writes Y[r][n], r < rows.
        unsafe {
            dev.launch(&Launch {
                kernel,
                grid,
                block: Dim3::x(GEMV_THREADS),
                shared_bytes: 0,
                args: &[
                    y.arg_mut(),
                    x.arg(),
                    w.arg(),
                    Arg::I32(rows as i32),
                    Arg::I32(n as i32),
                    Arg::I32(k as i32),
                    Arg::F32(alpha),
                    Arg::F32(beta),
                ],
            })
        }
    })
}

/// Shape of a KV cache: `[batch, kv_heads, capacity, head_dim]` bf16 per layer for K and V.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheShape {
    pub batch: usize,
    pub kv_heads: usize,
    pub capacity: usize,
    pub head_dim: usize,
}

impl CacheShape {
    pub fn elems(&self) -> usize {
        self.batch * self.kv_heads * self.capacity * self.head_dim
    }
}

/// `cache[b][h][pos + i][:] = src[b][h][i][:]` for `i < s`: `src` bf16 `[batch, kv_heads, s,
/// head_dim]`, `pos + s ≤ capacity`.
pub fn kv_write(
    dev: &Device,
    cache: &mut Buffer,
    src: &Buffer,
    shape: &CacheShape,
    s: usize,
    pos: usize,
) -> Result<()> {
    let kernel = DECODE_KV_WRITE;
    check("decode kv_write: cache", cache, DType::BF16, shape.elems())?;
    check(
        "decode kv_write: source",
        src,
        DType::BF16,
        shape.batch * shape.kv_heads * s * shape.head_dim,
    )?;
    if pos + s > shape.capacity {
        return Err(invalid(
            kernel,
            format!(
                "columns {pos}..{} past the cache capacity {}",
                pos + s,
                shape.capacity
            ),
        ));
    }
    if !shape.head_dim.is_multiple_of(8) || !cache.is_aligned(16) || !src.is_aligned(16) {
        return Err(invalid(
            kernel,
            "needs head_dim % 8 == 0 and 16-byte aligned buffers".into(),
        ));
    }
    let chunks = src.len() / 8;
    if chunks == 0 {
        return Ok(());
    }
    n_i32("decode kv_write: capacity", shape.capacity)?;
    // SAFETY: chunk c < chunks reads src[8c .. 8c + 8] (in bounds) and writes one 16-byte
    // chunk of cache row (b·h)·cap + pos + i < b·h·cap (pos + s ≤ cap, checked).
    unsafe {
        dev.launch(&Launch {
            kernel,
            grid: Dim3::x(chunks.div_ceil(COPY_THREADS as usize).clamp(1, 4096) as u32),
            block: Dim3::x(COPY_THREADS),
            shared_bytes: 0,
            args: &[
                cache.arg_mut(),
                src.arg(),
                Arg::I32(s as i32),
                Arg::I32(shape.head_dim as i32),
                Arg::I32(shape.capacity as i32),
                Arg::I32(pos as i32),
                Arg::I64(chunks as i64),
            ],
        })
    }
}

/// `out[r][:] = x[r·t + t − 1][:]`: the last row of each of `b` sequences of `t` rows of width
/// `w` (bf16, `w % 8 == 0`, 16-byte aligned).
pub fn take_last_rows(
    dev: &Device,
    out: &mut Buffer,
    x: &Buffer,
    b: usize,
    t: usize,
    w: usize,
) -> Result<()> {
    let kernel = DECODE_TAKE_ROWS;
    check("decode take_last_rows: x", x, DType::BF16, b * t * w)?;
    check("decode take_last_rows: out", out, DType::BF16, b * w)?;
    if !w.is_multiple_of(8) || !x.is_aligned(16) || !out.is_aligned(16) {
        return Err(invalid(
            kernel,
            format!("needs width % 8 == 0 (width {w}) and 16-byte aligned buffers"),
        ));
    }
    let chunks = b * w / 8;
    if chunks == 0 || t == 0 {
        return Ok(());
    }
    // SAFETY: chunk c of row r reads x row r·t + t − 1 < b·t and writes out row r < b.
    unsafe {
        dev.launch(&Launch {
            kernel,
            grid: Dim3::x(chunks.div_ceil(COPY_THREADS as usize).clamp(1, 4096) as u32),
            block: Dim3::x(COPY_THREADS),
            shared_bytes: 0,
            args: &[
                out.arg_mut(),
                x.arg(),
                Arg::I32(n_i32("decode take_last_rows: t", t)?),
                Arg::I32(n_i32("decode take_last_rows: width", w)?),
                Arg::I64(chunks as i64),
            ],
        })
    }
}

/// One decode step's attention: `q` bf16 `[batch, q_heads, head_dim]`, the caches' first `len`
/// columns, `key_mask` u8 `[batch, capacity]` (0 = padding). Returns `o` bf16
/// `[batch, q_heads · head_dim]` (the layout the output projection reads). Uploads `len`: for
/// a captured step use [`attention_at`].
#[allow(clippy::too_many_arguments)]
pub fn attention(
    dev: &Device,
    q: &Buffer,
    k_cache: &Buffer,
    v_cache: &Buffer,
    key_mask: &Buffer,
    shape: &CacheShape,
    q_heads: usize,
    len: usize,
    scale: f32,
) -> Result<Buffer> {
    let len_d = dev.htod(&[u32::try_from(len).unwrap_or(u32::MAX)])?;
    attention_at(
        dev, q, k_cache, v_cache, key_mask, shape, q_heads, &len_d, len, scale,
    )
}

/// [`attention`] over the first `len_d[0]` columns (u32 in device memory, read by the kernel:
/// a captured step replays with the current value), at most `max_len ≤ capacity`; the grid is
/// sized for `max_len`.
#[allow(clippy::too_many_arguments)]
pub fn attention_at(
    dev: &Device,
    q: &Buffer,
    k_cache: &Buffer,
    v_cache: &Buffer,
    key_mask: &Buffer,
    shape: &CacheShape,
    q_heads: usize,
    len_d: &Buffer,
    max_len: usize,
    scale: f32,
) -> Result<Buffer> {
    let len = max_len;
    check("decode attention: filled length", len_d, DType::U32, 1)?;
    let (split, combine) = match shape.head_dim {
        64 => (DECODE_ATTN_SPLIT_D64, DECODE_ATTN_COMBINE_D64),
        128 => (DECODE_ATTN_SPLIT_D128, DECODE_ATTN_COMBINE_D128),
        d => {
            return Err(invalid(
                DECODE_ATTN_SPLIT_D64,
                format!("head_dim {d}: 64 or 128 supported"),
            ))
        }
    };
    let (b, d) = (shape.batch, shape.head_dim);
    if shape.kv_heads == 0 || !q_heads.is_multiple_of(shape.kv_heads) {
        return Err(invalid(
            split,
            format!(
                "{q_heads} query heads are not a multiple of {} KV heads",
                shape.kv_heads
            ),
        ));
    }
    if len == 0 || len > shape.capacity {
        return Err(invalid(
            split,
            format!(
                "a bound of {len} filled columns for a cache of {}",
                shape.capacity
            ),
        ));
    }
    check("decode attention: q", q, DType::BF16, b * q_heads * d)?;
    check(
        "decode attention: K cache",
        k_cache,
        DType::BF16,
        shape.elems(),
    )?;
    check(
        "decode attention: V cache",
        v_cache,
        DType::BF16,
        shape.elems(),
    )?;
    check(
        "decode attention: key mask",
        key_mask,
        DType::U8,
        b * shape.capacity,
    )?;
    let chunks = len.div_ceil(ATTN_CHUNK);
    let mut out = dev.alloc(DType::BF16, b * q_heads * d)?;
    if b == 0 {
        return Ok(out);
    }
    let mut part_o = dev.alloc(DType::F32, b * q_heads * chunks * d)?;
    let mut part_ml = dev.alloc(DType::F32, b * q_heads * chunks * 2)?;
    let (hq, hkv) = (
        n_i32("decode attention: q heads", q_heads)?,
        n_i32("decode attention: kv heads", shape.kv_heads)?,
    );
    n_i32("decode attention: cache elements", shape.elems())?;
    let grid_yz = |kernel| -> Result<(u32, u32)> {
        if q_heads > 65_535 || b > 65_535 {
            return Err(invalid(kernel, format!("{b} sequences x {q_heads} heads")));
        }
        Ok((q_heads as u32, b as u32))
    };
    let (gy, gz) = grid_yz(split)?;
    // SAFETY: block (c, h, b) reads q[b][h], len_d[0], cache rows (b, h / (hq/hkv), j) for
    // j < min(len_d[0], max_len) ≤ cap and key_mask[b][j] (all lengths checked), and writes
    // part slot (b, h, c) < b·hq·chunks.
    unsafe {
        dev.launch(&Launch {
            kernel: split,
            grid: Dim3 {
                x: chunks as u32,
                y: gy,
                z: gz,
            },
            block: Dim3::x(ATTN_THREADS),
            shared_bytes: 0,
            args: &[
                part_o.arg_mut(),
                part_ml.arg_mut(),
                q.arg(),
                k_cache.arg(),
                v_cache.arg(),
                key_mask.arg(),
                len_d.arg(),
                Arg::I32(hq),
                Arg::I32(hkv),
                Arg::I32(shape.capacity as i32),
                Arg::I32(len as i32),
                Arg::F32(scale),
            ],
        })?;
    }
    // SAFETY: block (h, b) reads the chunks of slot (b, h) written above and writes out[b][h].
    unsafe {
        dev.launch(&Launch {
            kernel: combine,
            grid: Dim3 { x: gy, y: gz, z: 1 },
            block: Dim3::x(d as u32),
            shared_bytes: 0,
            args: &[
                out.arg_mut(),
                part_o.arg(),
                part_ml.arg(),
                Arg::I32(hq),
                Arg::I32(chunks as i32),
            ],
        })?;
    }
    Ok(out)
}

/// A decode step's RoPE fused with its cache writes: `qkv` bf16 `[batch, (q_heads + 2·kv_heads)
/// · head_dim]` (Falcon's fused layout, `grouped` as in [`crate::ops::rope::QkvLayout`]),
/// `table` f32 `[batch, head_dim]` from [`crate::ops::rope::table`] of the step's positions.
/// Writes `q` bf16 `[batch, q_heads, head_dim]` and the rotated key and the value into column
/// `len_d[0] − 1` of each cache (u32 in device memory, at most the capacity; nothing when 0).
/// The same values as [`crate::ops::rope::forward`] followed by two [`kv_write`]s.
#[allow(clippy::too_many_arguments)]
pub fn rope_append(
    dev: &Device,
    q: &mut Buffer,
    k_cache: &mut Buffer,
    v_cache: &mut Buffer,
    qkv: &Buffer,
    table: &Buffer,
    len_d: &Buffer,
    shape: &CacheShape,
    q_heads: usize,
    grouped: bool,
) -> Result<()> {
    let kernel = DECODE_ROPE_APPEND;
    let (b, hkv, d) = (shape.batch, shape.kv_heads, shape.head_dim);
    if hkv == 0 || !q_heads.is_multiple_of(hkv) || (!grouped && hkv != 1) {
        return Err(invalid(
            kernel,
            format!("{q_heads} query heads and {hkv} KV heads (grouped: {grouped})"),
        ));
    }
    if d == 0 || d / 2 > def::DECODE_ROPE_MAX_HALF {
        return Err(invalid(kernel, format!("head_dim {d}")));
    }
    check(
        "decode rope_append: qkv",
        qkv,
        DType::BF16,
        b * (q_heads + 2 * hkv) * d,
    )?;
    check(
        "decode rope_append: table",
        table,
        DType::F32,
        b * 2 * (d / 2),
    )?;
    check("decode rope_append: filled length", len_d, DType::U32, 1)?;
    check("decode rope_append: q", q, DType::BF16, b * q_heads * d)?;
    check(
        "decode rope_append: K cache",
        k_cache,
        DType::BF16,
        shape.elems(),
    )?;
    check(
        "decode rope_append: V cache",
        v_cache,
        DType::BF16,
        shape.elems(),
    )?;
    n_i32("decode rope_append: cache elements", shape.elems())?;
    if b == 0 {
        return Ok(());
    }
    let grid =
        u32::try_from(b).map_err(|_| invalid(kernel, format!("{b} sequences exceed the grid")))?;
    // SAFETY: block r reads qkv row r and table row r, writes q[r] and cache rows
    // (r, head, min(len_d[0], cap) − 1) < cap (lengths checked above).
    unsafe {
        dev.launch(&Launch {
            kernel,
            grid: Dim3::x(grid),
            block: Dim3::x(def::DECODE_ROPE_THREADS as u32),
            shared_bytes: 0,
            args: &[
                q.arg_mut(),
                k_cache.arg_mut(),
                v_cache.arg_mut(),
                qkv.arg(),
                table.arg(),
                len_d.arg(),
                Arg::I32(q_heads as i32),
                Arg::I32(hkv as i32),
                Arg::I32(d as i32),
                Arg::I32(shape.capacity as i32),
                Arg::I32(grouped as i32),
            ],
        })
    }
}
