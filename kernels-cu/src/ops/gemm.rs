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
//!   `dX[M][K] = α·dY[M][N]·W + β·dX`, with W's codes (in the fragment layout
//!   [`CodeLayout::Fragment`], made at upload) decoded to bf16 in the warps' registers (the
//!   values of `dequantize_bf16`), never as a whole in memory; the tiles of a grid's last,
//!   partial wave split along the reduction ([`nf4_schedule`]).
//! - [`gemm`]: `C[M][N] = α·op(A)·op(B) + β·C` for bf16 A, B in the three [`Layout`]s a linear
//!   layer's forward and backward need.
//!
//! All GEMMs: bf16 inputs, fp32 accumulation (mma.sync m16n8k16), output f32 or bf16 (rounded once).
//! `β = 0` never reads C. Requirements, checked here: the NF4 GEMMs need blocksize 64, double
//! quantization and `K % 64 == 0`; M and N (and K of [`gemm`]) are arbitrary. Leading dimensions
//! that are a multiple of 8 take the 16-byte `cp.async` path; others a slower element path.

use super::{n_i32, nf4_layout};
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
const NF_ST_BYTES: usize = defines::gemm::NF_ST_BYTES;

/// Where a 4-bit weight's codes sit in its `packed` buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeLayout {
    /// bitsandbytes': `ceil(n·k / 2)` bytes, element i's code is the high nibble of byte i/2
    /// when i is even, the low nibble when odd.
    Bnb,
    /// The order of the GEMM's mma fragments ([`super::nf4_layout`]): rows padded to a
    /// multiple of 64, `k % 64 == 0`. What [`Nf4Weight::upload`] makes for blocksize 64.
    Fragment,
}

impl CodeLayout {
    /// The layout [`Nf4Weight::upload`] chooses for a `[n][k]` weight with `blocksize`: the
    /// fragment order wherever the NF4 GEMM can use the weight.
    pub fn for_weight(k: usize, blocksize: usize) -> CodeLayout {
        if blocksize == NF4_GEMM_BLOCKSIZE && k.is_multiple_of(NF_BK) {
            CodeLayout::Fragment
        } else {
            CodeLayout::Bnb
        }
    }

    /// Bytes of the codes of a `[n][k]` weight in this layout.
    pub fn packed_bytes(self, n: usize, k: usize) -> usize {
        match self {
            CodeLayout::Bnb => (n * k).div_ceil(2),
            CodeLayout::Fragment => nf4_layout::fragment_bytes(n, k),
        }
    }
}

/// A 4-bit weight `W[out_features][in_features]` on the device: bitsandbytes' quantization
/// state (double-quantized absmax) with the codes in `layout`.
#[derive(Debug)]
pub struct Nf4Weight {
    /// The 4-bit codes in `layout`.
    pub packed: Buffer,
    pub layout: CodeLayout,
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
    /// The weight's arguments of every 4-bit kernel, in the order their signatures take them:
    /// packed codes, absmax codes, nested absmax, code map, NF4 table, absmax offset.
    pub(crate) fn device_args(&self) -> [Arg<'_>; 6] {
        [
            self.packed.arg(),
            self.absmax_codes.arg(),
            self.nested_absmax.arg(),
            self.code_map.arg(),
            self.table.arg(),
            Arg::F32(self.offset),
        ]
    }

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
        // Reordered once here so that every GEMM decodes straight from its loads.
        let layout = CodeLayout::for_weight(p.in_features, p.blocksize);
        let packed = match layout {
            CodeLayout::Bnb => dev.htod(p.packed)?,
            CodeLayout::Fragment => dev.htod(&nf4_layout::to_fragment(
                p.packed,
                p.out_features,
                p.in_features,
            ))?,
        };
        Ok(Nf4Weight {
            packed,
            layout,
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
    let k_frag = match w.layout {
        CodeLayout::Bnb => 0,
        CodeLayout::Fragment => n_i32("nf4 dequantize: in_features", w.in_features)?,
    };
    // SAFETY: out holds n elements; thread t writes elements 2t, 2t+1 < n and reads their codes
    // (packed[t] < ceil(n/2), or inside the fragment layout's fragment_bytes(n, k)), absmax code i/blocksize (< blocks), nested (< blocks/256 + 1), table[16],
    // code_map[256]; all lengths were checked by Nf4Weight::upload.
    unsafe {
        dev.launch(&Launch {
            kernel,
            grid: Dim3::x(grid),
            block: Dim3::x(256),
            shared_bytes: 0,
            args: &{
                let mut args = vec![out.arg_mut()];
                args.extend(w.device_args());
                args.extend([Arg::I64(n as i64), Arg::I32(bs), Arg::I32(k_frag)]);
                args
            },
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

/// Dynamic shared memory of the NF4 GEMM (the same forward and backward): per stage the
/// activation tile `[128][64 + 8]` bf16, two packed super-tiles and 128 absmax; then the absmax
/// code map and the split-K flag (the 16-entry code table is static shared memory).
pub fn nf4_shared_bytes() -> usize {
    let a = TILE_M * (NF_BK + PAD) * 2;
    let codes = 2 * NF_ST_BYTES;
    NF_STAGES * (a + codes + 128 * 4) + (256 + 4) * 4
}

/// Dynamic shared memory of the NF4 GEMM on wgmma (sm_90a), forward and backward: per stage the activation
/// tile `[128][64]` bf16 in the 128-byte swizzle layout (no padding), two packed super-tiles and
/// 128 absmax; the code map and the split-K flag; and 1 KiB of slack to put the swizzled tiles at
/// a 1024-byte boundary of shared memory.
pub fn nf4_wgmma_shared_bytes() -> usize {
    let a = TILE_M * NF_BK * 2;
    let codes = 2 * NF_ST_BYTES;
    1024 + NF_STAGES * (a + codes + 128 * 4) + (256 + 4) * 4
}

/// True when the NF4 GEMM runs on wgmma on `dev` (the backward also needs out_features a
/// multiple of 8): compute capability 9.0 exactly (the
/// sm_90a code runs nowhere else), where the CUDA backend loads the gemm family's sm_90a cubin.
pub fn nf4_uses_wgmma(dev: &Device) -> bool {
    dev.info().compute_capability == (9, 0)
}

/// Most reduction splits of the NF4 GEMM.
pub const NF4_MAX_SPLITS: usize = defines::gemm::NF_MAX_SPLITS;
/// Fewest 64-wide reduction steps a split keeps, so that its pipeline fill and its fp32
/// partial tile stay small against its products (K ≥ 512 per split; an assumption).
/// History, H200 (2026-12-04, BENCHMARKS.md): splitting every tile of a 288-tile grid in 4 ran
/// 20 % slower at K = 4544 (the partial planes, 4 x 19 MB, spilled out of L2) and 18-20 %
/// faster at K = 18176; the schedule now splits only the last wave's tiles, whose partials
/// stay in L2 (at most about 16 MB at Falcon-7B's shapes).
pub const NF4_MIN_SPLIT_STEPS: usize = 8;
/// NF4 GEMM blocks one SM holds at once where its shared memory allows (`__launch_bounds__`
/// minimum of the kernels; two ~70 KB blocks fit on sm_80 and sm_90, one on sm_86/sm_89).
pub const NF4_BLOCKS_PER_SM: usize = defines::gemm::NF_MIN_BLOCKS;

/// How an NF4 GEMM's grid of output tiles (`⌈M/128⌉` rows by `⌈n_out/128⌉` columns) is
/// launched: the tile columns `0..head_cols` in one launch without a reduction split, then
/// the columns `head_cols..` in a second launch whose blocks each reduce `1/tail_splits` of
/// the reduction. `head_cols = 0` is a single launch of the whole grid.
///
/// Why: a grid of 288 tiles on 264 block slots (132 SMs x 2) runs its last 24 tiles as a
/// second wave that leaves most of the GPU idle (those blocks, alone on their SMs, run about
/// twice as fast as paired ones, which is not enough). Running the 264 tiles of the full wave
/// unsplit and the 24 left over split in 8 fills the GPU again for 1/8 of a block's work.
/// Measured on an H200 (BENCHMARKS.md, 2026-12-04): -17 to -20 % on the 288- and 296-tile
/// products of Falcon-7B, -11 % where the reduction is 18176 long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nf4Schedule {
    /// Tile columns of the unsplit first launch (0: none, the whole grid is one launch).
    pub head_cols: usize,
    /// Reduction splits of the launch over the remaining columns (1 ..= [`NF4_MAX_SPLITS`]).
    pub tail_splits: usize,
}

impl Nf4Schedule {
    /// One launch of the whole grid, each tile split `splits` ways along the reduction.
    pub fn split(splits: usize) -> Nf4Schedule {
        Nf4Schedule {
            head_cols: 0,
            tail_splits: splits,
        }
    }
}

/// Block slots for the NF4 GEMM on a device of `sms` SMs with `max_shared_bytes` of shared
/// memory per block (the opt-in limit, about the SM's capacity): SMs times the blocks of
/// `block_shared_bytes` that fit, at most [`NF4_BLOCKS_PER_SM`]. 0 where the SM count is
/// unknown (the emulator: no schedule, one unsplit launch).
pub fn nf4_slots(sms: usize, max_shared_bytes: usize, block_shared_bytes: usize) -> usize {
    // Each resident block also costs the SM 1 KiB of reserved shared memory.
    let fit = (max_shared_bytes + 1024) / (block_shared_bytes + 1024);
    sms * fit.clamp(1, NF4_BLOCKS_PER_SM)
}

/// The schedule for `tiles_m x tiles_n` output tiles with `steps` 64-wide reduction steps on
/// `slots` block slots ([`nf4_slots`]; 0: unknown, one unsplit launch). The head takes the
/// whole columns that fit in the grid's full waves; the rest form the tail, split as far as
/// the slots allow (at most [`NF4_MAX_SPLITS`], each split keeping [`NF4_MIN_SPLIT_STEPS`]).
/// A tail that cannot be split is no tail: one launch.
pub fn nf4_schedule(tiles_m: usize, tiles_n: usize, steps: usize, slots: usize) -> Nf4Schedule {
    let one = Nf4Schedule::split(1);
    if slots == 0 || tiles_m == 0 || tiles_n == 0 {
        return one;
    }
    let full_waves = tiles_m * tiles_n / slots;
    let head_cols = (full_waves * slots / tiles_m).min(tiles_n);
    let tail_tiles = (tiles_n - head_cols) * tiles_m;
    if tail_tiles == 0 {
        return one;
    }
    let splits = (1..=NF4_MAX_SPLITS)
        .take_while(|&s| tail_tiles * s <= slots && steps / s >= NF4_MIN_SPLIT_STEPS)
        .last()
        .unwrap_or(1);
    if splits == 1 {
        return one;
    }
    Nf4Schedule {
        head_cols,
        tail_splits: splits,
    }
}

/// The schedule [`nf4_gemm`] chooses for an `m × n_out` output over a reduction of `red` on
/// `slots` block slots.
pub fn nf4_schedule_for(m: usize, n_out: usize, red: usize, slots: usize) -> Nf4Schedule {
    nf4_schedule(
        m.div_ceil(TILE_M),
        n_out.div_ceil(TILE_N),
        red.div_ceil(NF_BK),
        slots,
    )
}

/// Device bytes one NF4 GEMM call allocates for itself and frees before returning, for memory
/// plans: for its split launch, `tail_splits` fp32 partial tiles (128 x 128) per tile of the
/// launch and one arrival counter per tile; a 1-element stand-in for each otherwise. `red` is
/// the reduction length (K for the forward, N for the input gradient), `slots` as for
/// [`nf4_schedule`] (0: unknown, no split).
pub fn nf4_scratch_bytes(m: usize, n_out: usize, red: usize, slots: usize) -> usize {
    if m == 0 || n_out == 0 {
        return 0;
    }
    let s = nf4_schedule_for(m, n_out, red, slots);
    if s.tail_splits > 1 {
        let tiles = m.div_ceil(TILE_M) * (n_out.div_ceil(TILE_N) - s.head_cols);
        4 * s.tail_splits * tiles * TILE_M * TILE_N + 4 * tiles
    } else {
        4 + 4
    }
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
    if w.layout != CodeLayout::Fragment {
        return Err(invalid(
            kernel,
            "NF4 GEMM needs the codes in the fragment layout (Nf4Weight::upload makes it)".into(),
        ));
    }
    check_len(
        "nf4 weight: packed bytes (fragment layout)",
        CodeLayout::Fragment.packed_bytes(w.out_features, w.in_features),
        w.packed.len(),
    )?;
    n_i32("nf4 gemm: weight elements", w.numel())?;
    Ok(())
}

/// Which product an NF4 GEMM launch computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nf4Product {
    /// `Y[M][N] = α·X[M][K]·Wᵀ + β·Y`.
    Forward,
    /// `dX[M][K] = α·dY[M][N]·W + β·dX`.
    BackwardInput,
}

/// The NF4 GEMM launched by `schedule` ([`Nf4Schedule`]; `None`: [`nf4_schedule`] for the
/// device). The result does not depend on the schedule beyond fp32 rounding, and for a given
/// schedule it is the same on every run.
#[allow(clippy::too_many_arguments)]
pub fn nf4_gemm(
    dev: &Device,
    product: Nf4Product,
    a: &Buffer,
    w: &Nf4Weight,
    out: &mut Buffer,
    m: usize,
    alpha: f32,
    beta: f32,
    schedule: Option<Nf4Schedule>,
) -> Result<()> {
    let backward = product == Nf4Product::BackwardInput;
    // The wgmma kernels load whole 16-byte activation chunks: the backward's reduction length
    // (out_features) must be a multiple of 8 there (the forward's, K, is one of 64).
    let wgmma = nf4_uses_wgmma(dev) && (!backward || w.out_features.is_multiple_of(8));
    let kernel = if backward && wgmma {
        out_kernel(
            "nf4 backward: dX",
            out,
            NF4_GEMM_BWD_WGMMA_BF16,
            NF4_GEMM_BWD_WGMMA_F32,
        )?
    } else if backward {
        out_kernel("nf4 backward: dX", out, NF4_GEMM_BWD_BF16, NF4_GEMM_BWD_F32)?
    } else if wgmma {
        out_kernel(
            "nf4 forward: Y",
            out,
            NF4_GEMM_FWD_WGMMA_BF16,
            NF4_GEMM_FWD_WGMMA_F32,
        )?
    } else {
        out_kernel("nf4 forward: Y", out, NF4_GEMM_FWD_BF16, NF4_GEMM_FWD_F32)?
    };
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
    let full = grid(kernel, m, n_out)?;
    let steps = red.div_ceil(NF_BK);
    let shared_bytes = if wgmma {
        nf4_wgmma_shared_bytes()
    } else {
        nf4_shared_bytes()
    };
    let schedule = match schedule {
        Some(s) if !(1..=NF4_MAX_SPLITS).contains(&s.tail_splits) => {
            return Err(invalid(
                kernel,
                format!(
                    "{} reduction splits: 1 ..= {NF4_MAX_SPLITS} supported",
                    s.tail_splits
                ),
            ))
        }
        Some(s) if s.head_cols >= full.x as usize => {
            return Err(invalid(
                kernel,
                format!(
                    "a head of {} tile columns leaves no tail of the {} columns",
                    s.head_cols, full.x
                ),
            ))
        }
        Some(s) => s,
        // The same choice `nf4_scratch_bytes` plans for.
        None => nf4_schedule_for(
            m,
            n_out,
            red,
            nf4_slots(
                dev.info().multiprocessors as usize,
                dev.info().max_shared_bytes as usize,
                shared_bytes,
            ),
        ),
    };
    let launch = |out: &mut Buffer, grid: Dim3, col0: usize| -> Result<()> {
        let splits = grid.z as usize;
        let tiles = (grid.x * grid.y) as usize;
        // Split-K: per split one fp32 partial 128 x 128 tile per tile of the launch, and one
        // arrival counter per tile (zeroed; the last block of each tile resets its counter).
        // A 1-element stand-in otherwise (never touched).
        let (mut part, mut counters) = if splits > 1 {
            (
                dev.alloc(DType::F32, splits * tiles * TILE_M * TILE_N)?,
                dev.alloc_zeros(DType::U32, tiles)?,
            )
        } else {
            (dev.alloc(DType::F32, 1)?, dev.alloc(DType::U32, 1)?)
        };
        // SAFETY: a holds m·red, out m·n_out elements (checked); the weight's buffers were
        // checked against its shape (fragment layout, fragment_bytes) on upload and here;
        // K % 64 == 0 and blocksize 64 keep every packed chunk and absmax index inside W. The
        // grid's tile columns col0 .. col0 + grid.x lie inside the output's. With splits > 1,
        // part holds splits·tiles·128·128 floats and counters one u32 per tile, zeroed.
        unsafe {
            dev.launch(&Launch {
                kernel,
                grid,
                block: Dim3::x(GEMM_THREADS),
                shared_bytes: shared_bytes as u32,
                args: &{
                    let mut args = vec![out.arg_mut(), part.arg_mut(), counters.arg_mut(), a.arg()];
                    args.extend(w.device_args());
                    args.extend([
                        Arg::I32(mi),
                        Arg::I32(n as i32),
                        Arg::I32(k as i32),
                        Arg::F32(alpha),
                        Arg::F32(beta),
                        Arg::I32(col0 as i32),
                    ]);
                    args
                },
            })?;
        }
        Ok(())
    };
    let head = schedule.head_cols;
    if head > 0 {
        launch(
            out,
            Dim3 {
                x: head as u32,
                ..full
            },
            0,
        )?;
    }
    launch(
        out,
        Dim3 {
            x: full.x - head as u32,
            z: schedule.tail_splits.min(steps.max(1)) as u32,
            ..full
        },
        head,
    )
}

/// `Y[M][N] = α·X[M][K]·dequant_bf16(W)ᵀ + β·Y`: `x` bf16 `M·K`, `y` f32 or bf16 `M·N`; the
/// schedule chosen for the device ([`nf4_schedule`]).
pub fn nf4_forward(
    dev: &Device,
    x: &Buffer,
    w: &Nf4Weight,
    y: &mut Buffer,
    m: usize,
    alpha: f32,
    beta: f32,
) -> Result<()> {
    nf4_gemm(dev, Nf4Product::Forward, x, w, y, m, alpha, beta, None)
}

/// `dX[M][K] = α·dY[M][N]·dequant_bf16(W) + β·dX`: `dy` bf16 `M·N`, `dx` f32 or bf16 `M·K`;
/// the schedule chosen for the device ([`nf4_schedule`]).
pub fn nf4_backward_input(
    dev: &Device,
    dy: &Buffer,
    w: &Nf4Weight,
    dx: &mut Buffer,
    m: usize,
    alpha: f32,
    beta: f32,
) -> Result<()> {
    nf4_gemm(
        dev,
        Nf4Product::BackwardInput,
        dy,
        w,
        dx,
        m,
        alpha,
        beta,
        None,
    )
}
