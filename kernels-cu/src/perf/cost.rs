//! The work of one launch: tensor-core FLOPs, CUDA-core work, and the DRAM bytes it must move,
//! derived by hand from each kernel's code and its scalar arguments (the shapes it receives).
//!
//! Bytes count each input read once and each output written once (plus read when the kernel
//! accumulates into it, β ≠ 0): the compulsory traffic, assuming re-reads of tiles by other
//! blocks hit L2. That is optimistic for operands larger than L2 and is the floor a kernel
//! can approach, not what a naive kernel moves.

use super::trace::LaunchRecord;
use crate::ArgValue;

/// Work of one launch.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Cost {
    /// Multiply-adds on tensor cores, as FLOPs (2 per multiply-add).
    pub tensor_flops: f64,
    /// Elements the NF4 GEMM decodes from 4 bits to bf16: each block decodes its own copy of
    /// its weight tile, once per warp row of the block (the decode goes straight into the
    /// warps' registers, [`NF4_DECODING_WARP_ROWS`]). CUDA-core work that overlaps the
    /// warps' `mma.sync` when the SM holds enough warps ([`super::model`]).
    /// The decode GEMV decodes each weight once.
    pub decoded_elements: f64,
    /// The decode runs in the warps' registers with no barrier between it and the products
    /// (the NF4 GEMM), so other warps' `mma.sync` can proceed while a warp decodes.
    pub decode_overlapped: bool,
    /// Warp instructions the kernel's k-loop issues per `HMMA.16816` (its SASS count; 0 where
    /// not counted).
    pub loop_instructions_per_mma: f64,
    /// Shared-memory wavefronts the k-loop moves per `HMMA.16816` of an overlapped decode (0:
    /// the NF4 GEMM's [`super::model::NF4_SMEM_WAVEFRONTS_PER_MMA`]).
    pub smem_wavefronts_per_mma: f64,
    /// Special-function operations (`ex2` on the SFUs): the softmax exponentials.
    pub special_ops: f64,
    /// Other fp32 operations on CUDA cores inside a tensor-core loop (softmax scaling, row
    /// max and sum, dS = P∘(dP − D)), serial with the products in FlashAttention-2-style code.
    pub fp32_ops: f64,
    /// Compulsory DRAM traffic, bytes.
    pub bytes: f64,
    /// Which formula gave these numbers (a kernel family, or "generic").
    pub formula: &'static str,
    /// The products run on `wgmma` (sm_90a): the tensor term uses the warpgroup-MMA efficiency
    /// and the loop's shared-memory bound [`NF4_WGMMA_SMEM_WAVEFRONTS_PER_MMA`].
    pub wgmma: bool,
}

/// Warp rows of an NF4 GEMM block that each decode the block's weight tile (8 warps as 2 x 4,
/// `cuda/gemm.cu`).
pub const NF4_DECODING_WARP_ROWS: f64 = 2.0;

/// Instructions per `HMMA.16816` of the NF4 GEMM's k-loop on sm_90 (ptxas 12.4): the SASS
/// main loop of `nf4_gemm_fwd_bf16` / `nf4_gemm_bwd_bf16` counted statically by `perf::sass`
/// (522 / 568 instructions per 64 HMMAs; `tests/sass.rs` keeps the counts at or under these). Per 64-wide k-tile and
/// warp: 64 HMMA, 16 LDSM, the decode of 64 codes (byte extract, table load, product, half a
/// pack; the backward adds one MOVM per pair), the stage's cp.async and absmax, the loop.
pub const NF4_FWD_LOOP_INSTRUCTIONS_PER_MMA: f64 = 8.2;
/// See [`NF4_FWD_LOOP_INSTRUCTIONS_PER_MMA`].
pub const NF4_BWD_LOOP_INSTRUCTIONS_PER_MMA: f64 = 8.9;

/// Warp instructions of the 4-bit decode GEMV's k-loop (`decode_gemv_nf4_*`) per 64-column
/// super-tile (4 patches of 16 x 16) and warp, from its sm_90 SASS counted by `perf::sass`
/// (`tests/sass.rs` checks the listings against these numbers): [`GEMV_NF4_LOOP_BASE`] whatever
/// M is (4 code-word loads for the next super-tile, the decode of 16 code bytes per lane: a
/// mask or PRMT, an LEA and one shared-memory load of the code-pair table each; the absmax
/// decode of one row per lane and two shuffles; the loop), plus [`GEMV_NF4_LOOP_PER_TILE`] per
/// column tile of 8 X rows (per patch: two B-fragment loads and one HMMA; per super-tile the 4
/// absmax FFMAs). Counted with ptxas 12.4 and nvdisasm: 102-104 instructions for the `_m8_`
/// entries (3.2 thread instructions per weight), 160 for the others.
pub const GEMV_NF4_LOOP_BASE: f64 = 85.0;
/// See [`GEMV_NF4_LOOP_BASE`].
pub const GEMV_NF4_LOOP_PER_TILE: f64 = 19.0;
/// Warp instructions each warp of a 4-bit GEMV block issues before its k-loop (the sm_90 SASS
/// before the loop, `tests/sass.rs`): parameters and indices, the first super-tile's loads, and
/// the block's code-pair table (8 packs and 16-byte stores per thread). Charged once per block
/// and warp, so a block with few super-tiles per warp (a split, or a short K) pays it more.
/// Counted: 161 instructions for the `_m8_` entries, 192 for the others; both charged this.
pub const GEMV_NF4_BLOCK_SETUP: f64 = 195.0;
/// Shared-memory wavefronts per 16 x 16 patch of the 4-bit GEMV's k-loop: 4 code-pair loads per
/// lane, each one wavefront (32 lanes in 32 banks, the table's 32 columns).
pub const GEMV_NF4_SMEM_WAVEFRONTS_PER_PATCH: f64 = 4.0;
/// Shared-memory wavefronts of one 4-bit GEMV block's code-pair table: 32 KiB of stores.
pub const GEMV_NF4_TABLE_WAVEFRONTS: f64 = 32768.0 / 128.0;

/// Warp instructions per `HMMA.16816` of one 4-bit GEMV launch with `col_tiles` column tiles of
/// 8 X rows (1 for the `_m8_` entry points, 4 for the others): its k-loop over `groups` row
/// groups of 16 and `tiles` super-tiles, plus [`GEMV_NF4_BLOCK_SETUP`] per warp of each of its
/// `groups · splits` blocks.
pub fn gemv_nf4_instructions_per_mma(col_tiles: f64, groups: f64, tiles: f64, splits: f64) -> f64 {
    let supertiles = groups * tiles;
    let hmmas = supertiles * 4.0 * col_tiles;
    let loop_instructions = supertiles * (GEMV_NF4_LOOP_BASE + GEMV_NF4_LOOP_PER_TILE * col_tiles);
    let setup = groups * splits * crate::ops::decode::GEMV_WARPS as f64 * GEMV_NF4_BLOCK_SETUP;
    (loop_instructions + setup) / hmmas.max(1.0)
}

/// Shared-memory wavefronts per `HMMA.16816` of one 4-bit GEMV launch (the arguments of
/// [`gemv_nf4_instructions_per_mma`]): the k-loop's table loads plus each block's table stores.
pub fn gemv_nf4_smem_wavefronts_per_mma(
    col_tiles: f64,
    groups: f64,
    tiles: f64,
    splits: f64,
) -> f64 {
    let patches = groups * tiles * 4.0;
    let wavefronts =
        patches * GEMV_NF4_SMEM_WAVEFRONTS_PER_PATCH + groups * splits * GEMV_NF4_TABLE_WAVEFRONTS;
    wavefronts / (patches * col_tiles).max(1.0)
}

/// `HMMA.16816`-equivalents of work one warp's `HGMMA.64x128x16` (`wgmma.m64n128k16`) carries:
/// 64 x 128 x 16 multiply-adds per warpgroup, a quarter per warp, 2048 per HMMA.
pub const WGMMA_HMMA_PER_WARP: f64 = 64.0 * 128.0 * 16.0 / 4.0 / 2048.0;

/// Instructions per HMMA-equivalent of the wgmma NF4 GEMM on sm_90a, MEASURED: the warp
/// instructions Nsight Compute counted executing in `nf4_gemm_fwd_wgmma_bf16` /
/// `nf4_gemm_bwd_wgmma_bf16` on an H200 (2026-12-04, BENCHMARKS.md), 385 / 403-415 per warp
/// and k-tile over whole launches (4 HGMMA = 64 HMMA-equivalents: 6.0 / 6.4). The static count
/// of the SASS main loop (`perf::sass`, ptxas 12.4) is 278 / 310 (4.3 / 4.8); the rest is the
/// activation copy's 4-iteration inner loop, which the static count leaves out as a cold loop
/// (~40), and the prologue, epilogue and split reduction spread over the k-tiles. Per k-tile
/// and warp: the decode of 32 codes per lane (the backward adds 16 MOVM), the stage's
/// cp.async, absmax and fences, the wgmma fence/commit/wait, the loop. `tests/sass.rs` keeps
/// the static counts at or under these.
pub const NF4_WGMMA_FWD_LOOP_INSTRUCTIONS_PER_MMA: f64 = 6.0;
/// See [`NF4_WGMMA_FWD_LOOP_INSTRUCTIONS_PER_MMA`].
pub const NF4_WGMMA_BWD_LOOP_INSTRUCTIONS_PER_MMA: f64 = 6.4;

/// Shared-memory wavefronts per HMMA-equivalent of the wgmma NF4 GEMM's k-loop, per warp and
/// k-tile (64 HMMA-equivalents): the loop's `LDS`/`STS` (47 forward, 53 backward in the SASS
/// count: 32 code-table loads, 16 distinct words in 16 banks, one wavefront each; 4 packed
/// words of 128 contiguous bytes; absmax broadcasts and the absmax store), the block's cp.async
/// writes (16 KiB activations + 4 KiB codes per k-tile over 8 warps: 20), and the tensor cores'
/// reads of the B operand (4 x 4 KiB per warpgroup and k-tile over 4 warps: 32; A comes from
/// registers): 99-105 / 64 ≈ 1.6, against 2.7 for the mma.sync kernel (no ldmatrix of the
/// activations, one decode per weight element per block instead of two).
pub const NF4_WGMMA_SMEM_WAVEFRONTS_PER_MMA: f64 = 1.6;

/// Warp rows of the wgmma NF4 GEMM block that decode its weight tile: each weight element of
/// the block's tile is decoded by exactly one warp.
pub const NF4_WGMMA_DECODING_WARP_ROWS: f64 = 1.0;

/// Bytes of element `i` of the arguments' pointers (0 for scalars).
fn elem(r: &LaunchRecord, ptr_index: usize) -> f64 {
    r.args
        .iter()
        .filter_map(|a| match a {
            ArgValue::Ptr { dtype, .. } => Some(dtype.size() as f64),
            _ => None,
        })
        .nth(ptr_index)
        .unwrap_or(0.0)
}

fn f32_arg(r: &LaunchRecord, i: usize) -> f32 {
    match r
        .args
        .iter()
        .filter(|a| !matches!(a, ArgValue::Ptr { .. }))
        .nth(i)
    {
        Some(ArgValue::F32(v)) => *v,
        _ => 0.0,
    }
}

/// Query x key tiles a flash-attention kernel computes for one (batch, head): all of them,
/// or with a causal mask the lower triangle including the diagonal tiles (which are computed
/// in full and masked).
fn attention_tiles(t: f64, tk: f64, causal: bool, tile: f64) -> f64 {
    let (nq, nk) = ((t / tile).ceil(), (tk / tile).ceil());
    if causal && t == tk {
        nq * (nq + 1.0) / 2.0
    } else {
        nq * nk
    }
}

/// The cost of one recorded launch.
pub fn cost(r: &LaunchRecord) -> Cost {
    let name = r.kernel.name;
    let i = |k: usize| r.int(k) as f64;
    let threads = r.threads() as f64;
    let generic = || {
        // Unknown kernel: every pointer touched for one element per thread.
        let per_thread: f64 = (0..r.args.len()).map(|p| elem(r, p)).sum();
        Cost {
            bytes: threads * per_thread,
            formula: "generic",
            ..Cost::default()
        }
    };
    if name.starts_with("gemm_bf16_") {
        // c[m, n] = α·a·b + β·c, args (c, a, b, m, n, k, lda, ldb, α, β).
        let (m, n, k) = (i(0), i(1), i(2));
        let beta = f32_arg(r, 6);
        let c = elem(r, 0);
        return Cost {
            tensor_flops: 2.0 * m * n * k,
            bytes: 2.0 * (m * k + n * k) + c * m * n * if beta != 0.0 { 2.0 } else { 1.0 },
            formula: "gemm",
            ..Cost::default()
        };
    }
    if name.starts_with("nf4_gemm_") {
        // (y, part, counters, x, packed, codes, nested, map, table, offset, m, n, k, α, β,
        // col0): the output tile columns col0 .. col0 + grid.x of y[m, ·] from x[m, ·] and a
        // 4-bit weight of n·k elements (½ byte each + 1 code byte per 64); grid.z reduction
        // splits.
        let (m, n, k) = (i(1), i(2), i(3));
        let beta = f32_arg(r, 5);
        let out = elem(r, 0);
        let backward = name.contains("bwd");
        let wgmma = name.contains("wgmma");
        // Forward reads x [m, k], writes y [m, n]; backward reads dy [m, n], writes dx [m, k].
        let (x_cols, y_cols) = if backward { (n, k) } else { (k, n) };
        // The launch's share of the output columns, and so of W (its rows forward, its
        // columns backward).
        let tile_n = crate::ops::gemm::TILE_N as f64;
        let col0 = i(6) * tile_n;
        let cols = (y_cols - col0).clamp(0.0, r.grid.x as f64 * tile_n);
        let w_elems = if backward { n * cols } else { cols * k };
        let m_tiles = (m / crate::ops::gemm::TILE_M as f64).ceil();
        // Split-K: every split writes its fp32 partial tiles, the last block of each tile
        // reads them all back.
        let splits = r.grid.z.max(1) as f64;
        let partials = if splits > 1.0 {
            let tiles = (r.grid.x * r.grid.y) as f64;
            4.0 * tiles * (crate::ops::gemm::TILE_M as f64 * tile_n) * (2.0 * splits - 1.0)
        } else {
            0.0
        };
        return Cost {
            tensor_flops: 2.0 * m * w_elems,
            decoded_elements: w_elems
                * m_tiles
                * if wgmma {
                    NF4_WGMMA_DECODING_WARP_ROWS
                } else {
                    NF4_DECODING_WARP_ROWS
                },
            decode_overlapped: true,
            loop_instructions_per_mma: match (wgmma, backward) {
                (true, true) => NF4_WGMMA_BWD_LOOP_INSTRUCTIONS_PER_MMA,
                (true, false) => NF4_WGMMA_FWD_LOOP_INSTRUCTIONS_PER_MMA,
                (false, true) => NF4_BWD_LOOP_INSTRUCTIONS_PER_MMA,
                (false, false) => NF4_FWD_LOOP_INSTRUCTIONS_PER_MMA,
            },
            wgmma,
            bytes: 2.0 * m * x_cols
                + w_elems * (0.5 + 1.0 / 64.0)
                + out * m * cols * if beta != 0.0 { 2.0 } else { 1.0 }
                + partials,
            formula: "nf4 gemm",
            ..Cost::default()
        };
    }
    // The tile kernels end in their head size (`_d64`, `_d128`); `attn_bwd_dkdv_reduce` is a
    // streaming kernel, costed below.
    if name.starts_with("attn_fwd_d")
        || name.starts_with("attn_bwd_dkdv_d")
        || name.starts_with("attn_bwd_dq_d")
    {
        // (.., has_mask, hq, hkv, t, tk, causal, scale); grid (q or k tiles, heads, batch).
        let (hq, hkv, t, tk, causal) = (i(1), i(2), i(3), i(4), r.int(5) != 0);
        let d = if name.ends_with("d128") { 128.0 } else { 64.0 };
        let b = r.grid.z as f64;
        let tiles = attention_tiles(t, tk, causal, 64.0);
        // Per 64x64 tile and head: S = Q·Kᵀ and O += P·V forward (2 products); backward
        // recomputes S and forms dV += Pᵀ·dO, dP = dO·Vᵀ, dK += dSᵀ·Q (dK/dV kernel, 4
        // products) and S, dP, dQ += dS·K (dQ kernel, 3 products). 2·64·64·d FLOPs each.
        let products = if name.starts_with("attn_fwd_") {
            2.0
        } else if name.starts_with("attn_bwd_dkdv_") {
            4.0
        } else {
            3.0
        };
        let q = 2.0 * b * hq * t * d;
        let kv = 2.0 * b * hkv * tk * d;
        let bytes = if name.starts_with("attn_fwd_") {
            // q, k, v in; o out (bf16) and lse (f32).
            2.0 * q + 2.0 * kv + 4.0 * b * hq * t
        } else if name.starts_with("attn_bwd_dkdv_") {
            // q, dO, lse, D in; k, v in; dK, dV out (f32), one slice per split of the query
            // heads (args (.., scale, hs): ⌈(hq/hkv) / hs⌉ splits).
            let r = (hq / hkv.max(1.0)).max(1.0);
            let splits = (r / i(7).max(1.0)).ceil();
            2.0 * q + 8.0 * b * hq * t + 2.0 * kv + 4.0 * kv * splits
        } else {
            // q, dO, lse, D, k, v in; dQ out (f32).
            2.0 * q + 8.0 * b * hq * t + 2.0 * kv + 2.0 * q
        };
        // Per score element: one exponential (forward, and each backward kernel recomputes
        // P); fp32 work: forward scale-and-subtract, row max, row sum, bf16 pack (~4);
        // backward the recomputed P, dS = P∘(dP − D), the bf16 packs and shared stores of P
        // and dS (~8, `calibration::BWD_FP32_PER_SCORE`).
        let scores = 64.0 * 64.0 * tiles * b * hq;
        return Cost {
            tensor_flops: products * 2.0 * 64.0 * 64.0 * d * tiles * b * hq,
            special_ops: scores,
            fp32_ops: scores
                * if name.starts_with("attn_fwd_") {
                    4.0
                } else {
                    super::calibration::BWD_FP32_PER_SCORE
                },
            bytes,
            formula: "flash attention",
            ..Cost::default()
        };
    }
    if name.starts_with("skinny_nt_") {
        // c[m, n] = α·a[m, k]·b[n, k]ᵀ + β·c, n ≤ 32, on CUDA cores.
        let (m, n, k) = (i(0), i(1), i(2));
        let beta = f32_arg(r, 4);
        let c = elem(r, 0);
        return Cost {
            bytes: 2.0 * m * k + 2.0 * n * k + c * m * n * if beta != 0.0 { 2.0 } else { 1.0 },
            formula: "skinny gemm",
            ..Cost::default()
        };
    }
    if name.starts_with("decode_gemv_nf4_") {
        // (y, part, counters, x, packed, codes, nested, map, table, [r1, r2,] offset, m, n, k,
        // α, β): y[m, n] = α·x[m, k]·Wᵀ + β·y (then GELU, or + r1 + r2), m ≤ 32, the weight read
        // once (½ byte + 1 absmax code byte per 64 elements), x re-read from L2 by every block
        // (counted once). On tensor cores: one block per 16 weight rows (the last padded), one
        // HMMA.16816 per 16 x 16 patch and 8 X rows; every weight decoded once in registers,
        // with no barrier between decode and products (overlapped, like the NF4 GEMM's).
        let (m, n, k, beta) = (i(1), i(2), i(3), f32_arg(r, 5));
        let groups = (n / 16.0).ceil();
        let rows = groups * 16.0;
        let tiles = k / 64.0;
        // The `_m8_` entry points (M ≤ 8) carry one column tile of 8 X rows, the others 4.
        let col_tiles = if name.contains("_m8_") { 1.0 } else { 4.0 };
        let hmmas = rows / 16.0 * (k / 16.0) * col_tiles;
        let y = elem(r, 0);
        let residuals = if name.contains("residual") {
            4.0 * m * n
        } else {
            0.0
        };
        // Split-K (grid.y blocks per row group): every split writes its fp32 plane, the last
        // block of each group reads them all back.
        let splits = r.grid.y.max(1) as f64;
        let partials = if splits > 1.0 {
            4.0 * m * n * (2.0 * splits)
        } else {
            0.0
        };
        return Cost {
            tensor_flops: hmmas * super::model::HMMA_FLOPS,
            decoded_elements: rows * k,
            decode_overlapped: true,
            loop_instructions_per_mma: gemv_nf4_instructions_per_mma(
                col_tiles, groups, tiles, splits,
            ),
            smem_wavefronts_per_mma: gemv_nf4_smem_wavefronts_per_mma(
                col_tiles, groups, tiles, splits,
            ),
            bytes: n * k * (0.5 + 1.0 / 64.0)
                + 2.0 * m * k
                + y * m * n * if beta != 0.0 { 2.0 } else { 1.0 }
                + residuals
                + partials,
            formula: "decode gemv",
            ..Cost::default()
        };
    }
    if name.starts_with("decode_gemv_") {
        // The bf16 GEMV: y[m, n] = α·x[m, k]·Wᵀ + β·y with m ≤ 32 on CUDA cores: the weight
        // read once (2 bytes), x re-read from L2 by every warp (counted once), one FMA per
        // (row, weight).
        let (m, n, k, beta) = (i(0), i(1), i(2), f32_arg(r, 4));
        let y = elem(r, 0);
        return Cost {
            fp32_ops: m * n * k,
            bytes: n * k * 2.0 + 2.0 * m * k + y * m * n * if beta != 0.0 { 2.0 } else { 1.0 },
            formula: "decode gemv",
            ..Cost::default()
        };
    }
    if name.starts_with("decode_attn_split_") {
        // (part_o, part_ml, q, k, v, mask, hq, hkv, cap, len, scale); grid (chunks, hq, b).
        // Per visible key and query head: a d-term dot product and a d-term update of o (one
        // FMA each per element), two exponentials. K/V rows are read once per KV head (the
        // group's query heads hit L2).
        let (hq, hkv, len) = (i(0), i(1), i(3));
        let d = if name.ends_with("d128") { 128.0 } else { 64.0 };
        let (b, chunks) = (r.grid.z as f64, r.grid.x as f64);
        return Cost {
            special_ops: 2.0 * b * hq * len,
            fp32_ops: 2.0 * b * hq * len * d,
            bytes: b * hkv * len * d * 4.0
                + b * len
                + 2.0 * b * hq * d
                + 4.0 * b * hq * chunks * (d + 2.0),
            formula: "decode attention",
            ..Cost::default()
        };
    }
    if name.starts_with("decode_attn_combine_") {
        let (hq, chunks) = (i(0), i(1));
        let d = if name.ends_with("d128") { 128.0 } else { 64.0 };
        let b = r.grid.y as f64;
        return Cost {
            bytes: 4.0 * b * hq * chunks * (d + 2.0) + 2.0 * b * hq * d,
            formula: "decode attention",
            ..Cost::default()
        };
    }
    if name == "decode_rope_append" {
        // (q, k cache, v cache, qkv, table, len, hq, hkv, d, cap, grouped), one block per
        // sequence: the fused bf16 row in, q and the new key and value out, the cos/sin row.
        let (hq, hkv, d) = (i(0), i(1), i(2));
        let b = r.grid.x as f64;
        return Cost {
            bytes: b * ((hq + 2.0 * hkv) * d * 4.0 + 4.0 * d),
            formula: "decode rope",
            ..Cost::default()
        };
    }
    if name == "decode_kv_write" || name == "decode_take_rows" {
        // 16-byte chunks, each read once and written once.
        let chunks = if name == "decode_kv_write" {
            i(4)
        } else {
            i(2)
        };
        return Cost {
            bytes: 32.0 * chunks,
            formula: "decode copy",
            ..Cost::default()
        };
    }
    // Streaming kernels: bytes = elements × Σ element sizes of the arrays they walk.
    let n_elems =
        |n: f64, arrays: &[usize]| -> f64 { n * arrays.iter().map(|&p| elem(r, p)).sum::<f64>() };
    let stream = |bytes: f64, formula: &'static str| Cost {
        bytes,
        formula,
        ..Cost::default()
    };
    let rows = r.grid.x as f64;
    match name {
        "layernorm_fwd_f32" | "layernorm_fwd_bf16" => {
            // One block per row of d: x in, y out, mean and rstd out.
            let d = i(0);
            stream(
                rows * d * (elem(r, 0) + elem(r, 3)) + 8.0 * rows,
                "layernorm",
            )
        }
        "layernorm_bwd_f32" | "layernorm_bwd_bf16" => {
            // (dx, part_dg, part_db, x, gamma, mean, rstd, dy, rows, d): x, dy in, dx out.
            let (rows, d) = (i(0), i(1));
            let parts = 8.0 * r.grid.x as f64 * d;
            stream(
                rows * d * (elem(r, 0) + elem(r, 3) + elem(r, 7)) + parts,
                "layernorm",
            )
        }
        "layernorm_bwd_reduce" => stream(8.0 * i(0) * i(1) + 8.0 * i(1), "layernorm"),
        "rope_qkv_fwd_f32"
        | "rope_qkv_fwd_bf16"
        | "rope_qkv_bwd_f32"
        | "rope_qkv_bwd_bf16"
        | "rope_qkv_bwd_f32_bf16" => {
            // (.., t, hq, hkv, d, grouped), one block per token: the fused qkv row in, q/k/v
            // out (or back), plus the token's cos/sin row. Backward: pointer 0 is the fused
            // row, 1..3 the head rows (f32 into bf16 for rope_qkv_bwd_f32_bf16).
            let (hq, hkv, d) = (i(1), i(2), i(3));
            let (fused, heads) = if name.starts_with("rope_qkv_bwd") {
                (elem(r, 0), elem(r, 1))
            } else {
                (elem(r, 3), elem(r, 0))
            };
            stream(
                rows * ((hq + 2.0 * hkv) * d * (fused + heads) + 4.0 * d),
                "rope",
            )
        }
        "rope_table" => stream(8.0 * i(0) * i(1), "rope"),
        "attn_bwd_dkdv_reduce" => {
            // (dk, dv, part_k, part_v, n, splits): 2·splits·n f32 in, 2·n out.
            stream(8.0 * i(0) * (i(1) + 1.0), "attention")
        }
        "attn_bwd_dot" => stream(
            i(0) * i(1) * (elem(r, 1) + elem(r, 2)) + 4.0 * i(0),
            "attention",
        ),
        "cast_f32_bf16" | "cast_bf16_f32" => stream(n_elems(i(0), &[0, 1]), "convert"),
        "swap_axes12_bf16" | "swap_axes12_f32" => {
            // (out, x, d1, d2, d3, chunks, vec): `chunks` units of 16 bytes (vec) or elements.
            let n = if r.int(4) != 0 {
                i(3) * 16.0 / elem(r, 0).max(1.0)
            } else {
                i(3)
            };
            stream(n_elems(n, &[0, 1]), "convert")
        }
        "dropout_fwd_f32" | "dropout_fwd_bf16" => stream(n_elems(i(0), &[0, 1]), "dropout"),
        "dropout_bwd_add_f32" | "dropout_bwd_add_bf16" => {
            stream(n_elems(i(0), &[0, 0, 1]), "dropout")
        }
        "gelu_fwd_f32" | "gelu_fwd_bf16" => stream(n_elems(i(0), &[0, 1]), "pointwise"),
        "gelu_bwd_f32" | "gelu_bwd_bf16" => stream(n_elems(i(0), &[0, 1, 2]), "pointwise"),
        "residual_add3_f32" | "residual_add3_bf16" => {
            stream(n_elems(i(0), &[0, 1, 2, 3]), "pointwise")
        }
        "embedding_fwd_f32" | "embedding_fwd_bf16" => {
            // One block per token: a table row in, an output row out, the id.
            stream(rows * (i(0) * 2.0 * elem(r, 0) + 4.0), "embedding")
        }
        "embedding_zero_f32" => stream(4.0 * i(0), "embedding"),
        "embedding_bwd_f32" | "embedding_bwd_bf16" => {
            stream(i(0) * (i(1) * (elem(r, 2) + 8.0) + 4.0), "embedding")
        }
        "add_f32" | "add_bf16" => stream(n_elems(i(0), &[0, 1, 2]), "elementwise"),
        "scale_f32" | "scale_bf16" => stream(n_elems(i(1), &[0, 1]), "elementwise"),
        "axpy_f32" | "axpy_bf16" => stream(n_elems(i(1), &[0, 0, 1]), "elementwise"),
        "sum_f32" | "sumsq_f32" | "sumsq_bf16" => stream(n_elems(i(0), &[1]), "reduce"),
        "sum_partials_f32" => stream(4.0 * i(0), "reduce"),
        "adamw_f32" => {
            // p, m, v read and written, g read (f32).
            stream(28.0 * i(0), "adamw")
        }
        "grad_sumsq_partials" => stream(4.0 * i(0), "adamw"),
        "grad_norm_finalize" => stream(4.0 * i(0), "adamw"),
        "lce_fwd_fold" => {
            // (.., vc, v0, first, vec), one block per row: a chunk row of logits z (f32) in.
            stream(rows * (4.0 * i(0) + 16.0), "cross entropy")
        }
        "lce_bwd_dz" => stream(rows * (6.0 * i(0) + 12.0), "cross entropy"),
        "lce_fwd_finalize" => stream(16.0 * i(0), "cross entropy"),
        _ => generic(),
    }
}
