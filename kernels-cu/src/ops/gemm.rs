//! NF4 dequantization and tensor-core GEMMs (cuda/gemm.cu).
//!
//! - [`Nf4Weight`]: a 4-bit weight `W[N][K]` on the device in bitsandbytes' layout (packed codes,
//!   double-quantized absmax), uploaded from its parts (engine's `QuantizedWeight`).
//! - [`dequantize`]: `w[i] = round_T(fp32(table[code(i)] · absmax[i / blocksize]))`, bit-identical
//!   to `QuantizedWeight::dequantize_bf16` / `dequantize_f32`, with
//!   `absmax[b] = fp32(fp32(code_map[am_codes[b]] · nested[b / 256]) + offset)` (no FMA).
//! - [`quantize`]: blockwise absmax and packed NF4 codes, bit-identical to the CPU (double
//!   quantization of the small absmax vector stays on the host).
//! - [`nf4_forward`]: `Y[M][N] = α·X[M][K]·Wᵀ + β·Y`; [`nf4_backward_input`]:
//!   `dX[M][K] = α·dY[M][N]·W + β·dX`, with W dequantized to bf16 tile by tile in shared memory
//!   (the values of `dequantize_bf16`), never as a whole in global memory.
//! - [`gemm`]: `C[M][N] = α·op(A)·op(B) + β·C` for bf16 A, B in the three [`Layout`]s a linear
//!   layer's forward and backward need.
//!
//! All GEMMs: bf16 inputs, fp32 accumulation (mma.sync m16n8k16), output f32 or bf16 (rounded once).
//! `β = 0` never reads C. Requirements, checked here: the NF4 GEMMs need blocksize 64, double
//! quantization and `K % 64 == 0`; M and N (and K of [`gemm`]) are arbitrary. Leading dimensions
//! that are a multiple of 8 take the 16-byte `cp.async` path; others a slower element path.

use super::n_i32;
use crate::defines;
use crate::device::{Dim3, Launch};
use crate::error::{Error, Result};
use crate::kernels::*;
use crate::{Arg, Buffer, DType, Device, Kernel};

/// Threads per GEMM block (8 warps).
pub const GEMM_THREADS: u32 = defines::gemm::GEMM_THREADS as u32;
/// Output rows per GEMM block.
pub const TILE_M: usize = defines::gemm::GEMM_BM;
/// Output columns per GEMM block.
pub const TILE_N: usize = defines::gemm::GEMM_BN;
/// The NF4 blocksize the GEMMs support (QLoRA's).
pub const NF4_GEMM_BLOCKSIZE: usize = 64;
/// Codes per nested absmax block (bitsandbytes' double quantization).
pub const NESTED_BLOCKSIZE: usize = 256;

// The shared-memory layout of the tiles (see cuda/gemm.cu).
const PAD: usize = defines::gemm::PAD;
const BF_BK: usize = defines::gemm::BF_BK;
const BF_STAGES: usize = defines::gemm::BF_STAGES;
const NF_BK: usize = defines::gemm::NF_BK;
const NF_STAGES: usize = defines::gemm::NF_STAGES;

/// A 4-bit weight `W[out_features][in_features]` on the device (bitsandbytes' layout).
#[derive(Debug)]
pub struct Nf4Weight {
    /// `ceil(n·k / 2)` bytes; element i's code is the high nibble of byte i/2 when i is even.
    pub packed: Buffer,
    /// One u8 code per absmax block (into `code_map`).
    pub absmax_codes: Buffer,
    /// One f32 per 256 absmax blocks.
    pub nested_absmax: Buffer,
    /// The 256-entry map of the absmax codes.
    pub code_map: Buffer,
    /// The 16 values of the 4-bit codes (NF4 or FP4 dequant table).
    pub table: Buffer,
    /// Added to every reconstructed absmax.
    pub offset: f32,
    pub out_features: usize,
    pub in_features: usize,
    pub blocksize: usize,
}

/// Host parts of an [`Nf4Weight`] (what engine's `QuantizedWeight` holds).
#[derive(Debug, Clone, Copy)]
pub struct Nf4Parts<'a> {
    pub packed: &'a [u8],
    pub absmax_codes: &'a [u8],
    pub nested_absmax: &'a [f32],
    pub code_map: &'a [f32],
    pub table: &'a [f32; 16],
    pub offset: f32,
    pub out_features: usize,
    pub in_features: usize,
    pub blocksize: usize,
}

fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::Length {
            what,
            expected,
            got,
        })
    }
}

fn check_buf(what: &'static str, b: &Buffer, dtype: DType, len: usize) -> Result<()> {
    if b.dtype() != dtype {
        return Err(Error::DType {
            what,
            expected: dtype,
            got: b.dtype(),
        });
    }
    check_len(what, len, b.len())
}

fn invalid(kernel: Kernel, reason: String) -> Error {
    Error::InvalidLaunch {
        kernel: kernel.name,
        reason,
    }
}

impl Nf4Weight {
    /// Uploads a weight, checking that the parts agree with its shape.
    pub fn upload(dev: &Device, p: &Nf4Parts<'_>) -> Result<Nf4Weight> {
        let n = p
            .out_features
            .checked_mul(p.in_features)
            .ok_or(Error::Length {
                what: "nf4 weight: out_features * in_features",
                expected: usize::MAX,
                got: p.out_features,
            })?;
        if p.blocksize == 0 || !p.blocksize.is_multiple_of(2) {
            return Err(Error::Length {
                what: "nf4 weight: blocksize (even, > 0)",
                expected: NF4_GEMM_BLOCKSIZE,
                got: p.blocksize,
            });
        }
        let blocks = n.div_ceil(p.blocksize);
        check_len("nf4 weight: packed bytes", n.div_ceil(2), p.packed.len())?;
        check_len("nf4 weight: absmax codes", blocks, p.absmax_codes.len())?;
        check_len(
            "nf4 weight: nested absmax",
            blocks.div_ceil(NESTED_BLOCKSIZE),
            p.nested_absmax.len(),
        )?;
        check_len("nf4 weight: code map", 256, p.code_map.len())?;
        // Empty buffers cannot be uploaded as such; a 1-element stand-in is never read.
        let nested = if p.nested_absmax.is_empty() {
            dev.htod(&[0f32])?
        } else {
            dev.htod(p.nested_absmax)?
        };
        Ok(Nf4Weight {
            packed: dev.htod(p.packed)?,
            absmax_codes: dev.htod(p.absmax_codes)?,
            nested_absmax: nested,
            code_map: dev.htod(p.code_map)?,
            table: dev.htod(&p.table[..])?,
            offset: p.offset,
            out_features: p.out_features,
            in_features: p.in_features,
            blocksize: p.blocksize,
        })
    }

    /// Number of weight elements.
    pub fn numel(&self) -> usize {
        self.out_features * self.in_features
    }
}

/// Dequantizes the whole weight into a new `[out_features, in_features]` buffer of `dtype`
/// (bf16 or f32), bit-identical to the CPU.
pub fn dequantize(dev: &Device, w: &Nf4Weight, dtype: DType) -> Result<Buffer> {
    let kernel = match dtype {
        DType::BF16 => NF4_DEQUANT_BF16,
        DType::F32 => NF4_DEQUANT_F32,
        got => {
            return Err(Error::DType {
                what: "nf4 dequantize: output",
                expected: DType::BF16,
                got,
            })
        }
    };
    let n = w.numel();
    let mut out = dev.alloc(dtype, n)?;
    if n == 0 {
        return Ok(out);
    }
    let bytes = n.div_ceil(2);
    let blocks = bytes.div_ceil(256);
    let grid = u32::try_from(blocks)
        .map_err(|_| invalid(kernel, format!("{n} elements need too many blocks")))?;
    let bs = n_i32("nf4 dequantize: blocksize", w.blocksize)?;
    // SAFETY: out holds n elements; thread t writes elements 2t, 2t+1 < n and reads packed[t]
    // (< ceil(n/2)), absmax code i/blocksize (< blocks), nested (< blocks/256 + 1), table[16],
    // code_map[256]; all lengths were checked by Nf4Weight::upload.
    unsafe {
        dev.launch(&Launch {
            kernel,
            grid: Dim3::x(grid),
            block: Dim3::x(256),
            shared_bytes: 0,
            args: &[
                out.arg_mut(),
                w.packed.arg(),
                w.absmax_codes.arg(),
                w.nested_absmax.arg(),
                w.code_map.arg(),
                w.table.arg(),
                Arg::F32(w.offset),
                Arg::I64(n as i64),
                Arg::I32(bs),
            ],
        })?;
    }
    Ok(out)
}

/// Blockwise 4-bit quantization of `src` (f32 or bf16, `n` elements, flattened row-major):
/// returns `(packed, absmax)` with `ceil(n/2)` bytes and `ceil(n/blocksize)` fp32 absmax,
/// bit-identical to engine's `QuantizedWeight::quantize` without double quantization (the
/// small absmax vector is double-quantized on the host). `thresholds`: the 15 ascending
/// decision thresholds of the NF4 table (engine's `NF4_THRESHOLDS`); the code is the number of
/// thresholds below the scaled value, which is the stored nibble for NF4.
pub fn quantize(
    dev: &Device,
    src: &Buffer,
    blocksize: usize,
    thresholds: &[f32; 15],
) -> Result<(Buffer, Buffer)> {
    let kernel = match src.dtype() {
        DType::F32 => NF4_QUANTIZE_F32,
        DType::BF16 => NF4_QUANTIZE_BF16,
        got => {
            return Err(Error::DType {
                what: "nf4 quantize: source",
                expected: DType::BF16,
                got,
            })
        }
    };
    if blocksize == 0 || !blocksize.is_multiple_of(2) {
        return Err(invalid(
            kernel,
            format!("blocksize {blocksize} must be even and > 0"),
        ));
    }
    let n = src.len();
    let blocks = n.div_ceil(blocksize);
    let mut packed = dev.alloc(DType::U8, n.div_ceil(2).max(1))?;
    let mut absmax = dev.alloc(DType::F32, blocks.max(1))?;
    if n == 0 {
        return Ok((packed, absmax));
    }
    let thr = dev.htod(&thresholds[..])?;
    let grid = u32::try_from(blocks.div_ceil(8))
        .map_err(|_| invalid(kernel, format!("{n} elements need too many blocks")))?;
    let bs = n_i32("nf4 quantize: blocksize", blocksize)?;
    // SAFETY: one warp per absmax block b < ceil(n/blocksize) reads src[b·bs .. min(n, (b+1)·bs))
    // and writes absmax[b] and packed bytes (b·bs/2 ..) < ceil(n/2); thr holds 15 floats.
    unsafe {
        dev.launch(&Launch {
            kernel,
            grid: Dim3::x(grid),
            block: Dim3::x(256),
            shared_bytes: 0,
            args: &[
                packed.arg_mut(),
                absmax.arg_mut(),
                src.arg(),
                thr.arg(),
                Arg::I64(n as i64),
                Arg::I32(bs),
            ],
        })?;
    }
    Ok((packed, absmax))
}

/// Storage layouts of [`gemm`]'s operands (row-major), for `C[M][N] = Σ_k A[m][k]·B[k][n]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A stored `[M][K]`, B stored `[N][K]`: `C = A·Bᵀ` (linear forward `x·Wᵀ`).
    Nt,
    /// A stored `[M][K]`, B stored `[K][N]`: `C = A·B` (input gradient `dY·W`).
    Nn,
    /// A stored `[K][M]`, B stored `[K][N]`: `C = Aᵀ·B` (weight gradient `dYᵀ·X`).
    Tn,
}

/// Dynamic shared memory of the bf16 GEMM in `layout` (mirrors the kernel's tile sizes).
pub fn gemm_shared_bytes(layout: Layout) -> usize {
    let kmajor = TILE_M * (BF_BK + PAD); // [128][32 + 8]
    let rmajor = BF_BK * (TILE_N + PAD); // [32][128 + 8]
    let (a, b) = match layout {
        Layout::Nt => (kmajor, kmajor),
        Layout::Nn => (kmajor, rmajor),
        Layout::Tn => (rmajor, rmajor),
    };
    BF_STAGES * (a + b) * 2
}

/// Dynamic shared memory of the NF4 GEMM (forward, or backward when `backward`).
pub fn nf4_shared_bytes(backward: bool) -> usize {
    let a = TILE_M * (NF_BK + PAD);
    let w = if backward {
        NF_BK * (TILE_N + PAD)
    } else {
        TILE_N * (NF_BK + PAD)
    };
    let packed = TILE_N * NF_BK / 2;
    NF_STAGES * a * 2 + w * 2 + NF_STAGES * packed + (16 + 256) * 4
}

fn grid(kernel: Kernel, m: usize, n_out: usize) -> Result<Dim3> {
    let gx = u32::try_from(n_out.div_ceil(TILE_N))
        .map_err(|_| invalid(kernel, format!("{n_out} output columns")))?;
    let gy = m.div_ceil(TILE_M);
    if gy > 65_535 {
        return Err(invalid(
            kernel,
            format!("{m} rows: at most {} supported", 65_535 * TILE_M),
        ));
    }
    Ok(Dim3 {
        x: gx,
        y: gy as u32,
        z: 1,
    })
}

fn out_kernel(what: &'static str, out: &Buffer, bf: Kernel, f32k: Kernel) -> Result<Kernel> {
    match out.dtype() {
        DType::BF16 => Ok(bf),
        DType::F32 => Ok(f32k),
        got => Err(Error::DType {
            what,
            expected: DType::F32,
            got,
        }),
    }
}

/// `C[M][N] = α·op(A)·op(B) + β·C` with bf16 `a`, `b` (see [`Layout`] for their shapes) and
/// `c` of dtype f32 or bf16, `M·N` elements. Any M, N, K ≥ 0 (K = 0 gives `β·C`).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    dev: &Device,
    layout: Layout,
    a: &Buffer,
    b: &Buffer,
    c: &mut Buffer,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    beta: f32,
) -> Result<()> {
    let kernel = match layout {
        Layout::Nt => out_kernel("gemm: C", c, GEMM_BF16_NT_BF16, GEMM_BF16_NT_F32)?,
        Layout::Nn => out_kernel("gemm: C", c, GEMM_BF16_NN_BF16, GEMM_BF16_NN_F32)?,
        Layout::Tn => out_kernel("gemm: C", c, GEMM_BF16_TN_BF16, GEMM_BF16_TN_F32)?,
    };
    check_buf("gemm: A", a, DType::BF16, m * k)?;
    check_buf("gemm: B", b, DType::BF16, n * k)?;
    check_len("gemm: C", m * n, c.len())?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let (lda, ldb) = match layout {
        Layout::Nt => (k, k),
        Layout::Nn => (k, n),
        Layout::Tn => (m, n),
    };
    let (mi, ni, ki) = (
        n_i32("gemm: M", m)?,
        n_i32("gemm: N", n)?,
        n_i32("gemm: K", k)?,
    );
    // Element offsets are computed as i64 in the kernel, but row indices are i32.
    n_i32("gemm: A elements", m * k)?;
    n_i32("gemm: B elements", n * k)?;
    let grid = grid(kernel, m, n)?;
    // SAFETY: a holds m·k, b n·k, c m·n elements (checked); the kernel reads A/B only inside
    // their [rows][ld] extents and writes C only at m < M, n < N.
    unsafe {
        dev.launch(&Launch {
            kernel,
            grid,
            block: Dim3::x(GEMM_THREADS),
            shared_bytes: gemm_shared_bytes(layout) as u32,
            args: &[
                c.arg_mut(),
                a.arg(),
                b.arg(),
                Arg::I32(mi),
                Arg::I32(ni),
                Arg::I32(ki),
                Arg::I32(lda as i32),
                Arg::I32(ldb as i32),
                Arg::F32(alpha),
                Arg::F32(beta),
            ],
        })?;
    }
    Ok(())
}

fn check_nf4_gemm(kernel: Kernel, w: &Nf4Weight) -> Result<()> {
    if w.blocksize != NF4_GEMM_BLOCKSIZE {
        return Err(invalid(
            kernel,
            format!(
                "NF4 GEMM needs blocksize {NF4_GEMM_BLOCKSIZE}, the weight has {}",
                w.blocksize
            ),
        ));
    }
    if !w.in_features.is_multiple_of(NF_BK) {
        return Err(invalid(
            kernel,
            format!(
                "NF4 GEMM needs in_features (K) a multiple of {NF_BK}, the weight has {}",
                w.in_features
            ),
        ));
    }
    n_i32("nf4 gemm: weight elements", w.numel())?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn nf4_launch(
    dev: &Device,
    kernel: Kernel,
    backward: bool,
    a: &Buffer,
    w: &Nf4Weight,
    out: &mut Buffer,
    m: usize,
    alpha: f32,
    beta: f32,
) -> Result<()> {
    check_nf4_gemm(kernel, w)?;
    let (n, k) = (w.out_features, w.in_features);
    let (red, n_out) = if backward { (n, k) } else { (k, n) };
    check_buf(
        if backward {
            "nf4 backward: dY"
        } else {
            "nf4 forward: X"
        },
        a,
        DType::BF16,
        m * red,
    )?;
    check_len(
        if backward {
            "nf4 backward: dX"
        } else {
            "nf4 forward: Y"
        },
        m * n_out,
        out.len(),
    )?;
    if m == 0 || n_out == 0 {
        return Ok(());
    }
    let mi = n_i32("nf4 gemm: M", m)?;
    n_i32("nf4 gemm: activation elements", m * red.max(n_out))?;
    let grid = grid(kernel, m, n_out)?;
    // SAFETY: a holds m·red, out m·n_out elements (checked); the weight's buffers were checked
    // against its shape on upload; K % 64 == 0 and blocksize 64 (checked) keep every packed
    // chunk and absmax index inside W.
    unsafe {
        dev.launch(&Launch {
            kernel,
            grid,
            block: Dim3::x(GEMM_THREADS),
            shared_bytes: nf4_shared_bytes(backward) as u32,
            args: &[
                out.arg_mut(),
                a.arg(),
                w.packed.arg(),
                w.absmax_codes.arg(),
                w.nested_absmax.arg(),
                w.code_map.arg(),
                w.table.arg(),
                Arg::F32(w.offset),
                Arg::I32(mi),
                Arg::I32(n as i32),
                Arg::I32(k as i32),
                Arg::F32(alpha),
                Arg::F32(beta),
            ],
        })?;
    }
    Ok(())
}

/// `Y[M][N] = α·X[M][K]·dequant_bf16(W)ᵀ + β·Y`: `x` bf16 `M·K`, `y` f32 or bf16 `M·N`.
pub fn nf4_forward(
    dev: &Device,
    x: &Buffer,
    w: &Nf4Weight,
    y: &mut Buffer,
    m: usize,
    alpha: f32,
    beta: f32,
) -> Result<()> {
    let kernel = out_kernel("nf4 forward: Y", y, NF4_GEMM_FWD_BF16, NF4_GEMM_FWD_F32)?;
    nf4_launch(dev, kernel, false, x, w, y, m, alpha, beta)
}

/// `dX[M][K] = α·dY[M][N]·dequant_bf16(W) + β·dX`: `dy` bf16 `M·N`, `dx` f32 or bf16 `M·K`.
pub fn nf4_backward_input(
    dev: &Device,
    dy: &Buffer,
    w: &Nf4Weight,
    dx: &mut Buffer,
    m: usize,
    alpha: f32,
    beta: f32,
) -> Result<()> {
    let kernel = out_kernel("nf4 backward: dX", dx, NF4_GEMM_BWD_BF16, NF4_GEMM_BWD_F32)?;
    nf4_launch(dev, kernel, true, dy, w, dx, m, alpha, beta)
}
