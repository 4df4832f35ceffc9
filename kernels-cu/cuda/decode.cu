// Decoding kernels: what one generated token per sequence costs, for a batch of 1-32 sequences.
//
//   decode_gemv_nf4_*:  Y[m][n] = α·Σ_b absmax(n, b)·Σ_{k in block b} X[m][k]·bf16(table[code(n·K + k)])
//                       + β·Y[m][n],  m < M ≤ DECODE_MAX_ROWS, b the 64-column absmax blocks of
//                       row n, absmax double-quantized:
//                       absmax[b] = fp32(fp32(code_map[am_codes[b]] · nested[b / 256]) + offset).
//                       Each weight is the table value rounded to bf16 times the fp32 absmax (no
//                       second rounding): within one bf16 rounding of dequantize_bf16's value.
//   decode_gemv_bf16_*: the same with a bf16 weight W[N][K] (the tied lm_head, merged weights).
//   decode_attn_split_d{64,128} + decode_attn_combine_d{64,128}: flash-decoding. One query row per
//                       (sequence, head) against a KV cache [b, hkv, cap, d] whose first `len`
//                       columns are filled; key j is visible when key_mask[b][j] != 0.
//                       Query head h reads KV head h / (hq / hkv) (MQA: hkv = 1; GQA).
//                       o = Σ_j softmax_j(scale·q·k_j) v_j; a row with no visible key gives o = 0.
//                       len is read from device memory (see "Graphs" below).
//   decode_rope_append: a decode step's RoPE fused with its cache writes: the new token's fused
//                       qkv row split and rotated as rope_qkv_fwd does, q to its own buffer, the
//                       key and value straight into cache column len − 1.
//   decode_kv_write:    cache[b][h][pos + i][:] = src[b][h][i][:] for i < s (the prefill: s = t,
//                       pos = 0).
//   decode_take_rows:   out[r][:] = x[r·t + t - 1][:] (the last position of each sequence).
//
// Why a separate GEMV: at M ≤ 32 the tensor-core GEMM's 128 x 128 tiles waste ≥ 3/4 of every
// mma and, worse, launch ⌈N/128⌉ blocks (36 for Falcon-7B's qkv) that cannot pull HBM bandwidth.
// Decoding is bound by reading the weights once per token: Falcon-7B's 4-bit linears are
// ~3.6 GB, so an H200 (4.8 TB/s) cannot exceed ~1,300 tokens/s per sequence batch.
//
// 4-bit GEMV design (tensor cores): the codes are in the NF4 GEMM's fragment layout
// (ops/nf4_layout.rs, made at upload), whose u32 of lane l = 4g + t in a 16 x 16 patch holds
// exactly that lane's mma.m16n8k16 A fragment of the weight: rows g and g + 8 of the patch,
// columns 2t, 2t+1, 2t+8, 2t+9, one byte (two codes) per A register. So a warp reads a whole
// 128-byte patch with one coalesced 4-byte load per lane and uses every code it loads (both rows
// of the pair (g, g + 8)). Each byte becomes its bf16x2 A register with ONE shared-memory load
// from a 256-entry code-pair table (bf16(table[lo]), bf16(table[hi])), replicated in 32 columns
// so that the warp's 32 lookups never share a bank; the absmax is left out of the products and
// applied once per 64-column block to the block's fp32 sum (a 64-column super-tile is one absmax
// block per row). Why not the exact bf16(table[c]·absmax) of dequantize_bf16: that costs a
// product and half a pack per weight and a table lookup per code (~6 thread instructions per
// weight in all), which makes the GEMV issue-bound well above the time to stream the weights;
// the pair table leaves ~3. The weight then differs from dequantize_bf16's by the rounding of
// the table value instead of the rounding of the product, the same size (2⁻⁹ relative).
// The X rows are the B operand (8 X rows per mma; a lane whose X row is past M reads row 0,
// whose products land only in output columns that are never stored). A block owns 16 weight
// rows; its 8 warps take interleaved 64-column super-tile columns, so each weight is read exactly
// once whatever M is, and add their partial sums in warp order through shared memory
// (deterministic; the table's memory, after a barrier). Each warp loads the next super-tile's
// codes and absmax one iteration ahead (the first before the table is built). Split-K: with
// gridDim.y = S > 1 blocks per 16-row group (the launcher picks S so that a grid of a few
// hundred groups fills the SMs), each writes an fp32 plane and the last to arrive adds the S
// planes in order z = 0..S-1. Products of bf16 values are exact; only the order of the fp32 sums
// differs from a sequential dot product. Absmax codes and the nested absmax come through the
// cache (1/64 and 1/16384 byte per weight).
//
// bf16 GEMV design: one warp per output column n (weight row), DECODE_GEMV_WARPS warps per
// block; lane l reads 8 weights at k = 8·l, 8·l + 256, ... (DEC_BF16_LOADS of these 16-byte
// loads in flight at once, so that a warp is not bound by the latency of each) and multiplies
// them with the matching 8 columns of every X row (one 16-byte load per row, from L1/L2: X is
// at most 32 x 18176 bf16 = 1.1 MB and read by every warp). Accumulators acc[m] (f32, one per X
// row; 8 of them in the M ≤ 8 entry points) stay in registers for all M rows at once, so the
// weights are read exactly once whatever M is. The warp sums each accumulator with the fixed
// butterfly (deterministic) and lane m writes Y[m][n].
//
// Attention design (flash-decoding): the cache is split into chunks of DECODE_ATTN_CHUNK keys;
// block (chunk c, head h, sequence b) walks its chunk with DECODE_ATTN_WARPS warps, each taking
// batches of DECODE_ATTN_KEYS consecutive keys (two batches per warp for a full chunk). A warp
// holds q in registers (d/32 values per lane), loads its batch's keys and values together,
// computes their scores with interleaved butterfly sums (so a batch waits for memory once, not
// once per key: a warp walking keys one by one would be bound by the latency of each key's
// load and reduction), and keeps an online softmax (max m, sum l, unnormalized o in d/32
// registers per lane, rescaled once per batch); masked keys are skipped, never multiplied (a
// cache column of a padded prompt may hold anything). The block then merges its warps in warp
// order through shared memory and writes (m, l, o) of the chunk. The combine kernel merges the
// chunks of one (sequence, head) in chunk order: M = max m_c, L = Σ l_c·e^(m_c − M),
// o = Σ o_c·e^(m_c − M) / L.
// Fixed orders everywhere: the result does not depend on scheduling.
//
// Graphs: a decode step is captured once and replayed per token (crate::graph), so what changes
// per token (the filled cache length, hence the new column) is read from a u32 in device memory
// that the host updates before each replay, never passed as a scalar. The attention launch is
// sized for a bound (max_len, at most the capacity) and its splits past the current length
// write an empty partial (max −inf, sum 0) that the combine skips: the same result as a grid
// sized to the length.
#include "common.cuh"

using kc::bf16;
using kc::u32;
using kc::u32x4;
using kc::u8;

#define DECODE_MAX_ROWS 32
#define DECODE_GEMV_WARPS 8
#define DECODE_GEMV_THREADS (DECODE_GEMV_WARPS * 32)
#define DEC_BF16_LOADS 4  // 16-byte weight loads per lane in flight in the bf16 GEMV
#define DECODE_ATTN_WARPS 8
#define DECODE_ATTN_THREADS (DECODE_ATTN_WARPS * 32)
#define DECODE_ATTN_KEYS 8  // keys a warp scores at once
// Two batches per warp: a chunk of 64 keys would double the partial (m, l, o) planes that the
// combine reads back, which at batch 32 and long contexts outweighs the second latency.
#define DECODE_ATTN_CHUNK 128  // two batches of DECODE_ATTN_KEYS per warp
#define DECODE_COPY_THREADS 256
#define DECODE_ROPE_THREADS 128
#define DECODE_ROPE_MAX_HALF 128  // head_dim ≤ 256
#define kDecNegInf (kc::f32_from_bits(0xff800000u))
#ifdef KC_DEVICE
#define DEC_NO_UNROLL _Pragma("unroll 1")
#else
#define DEC_NO_UNROLL
#endif

namespace {

__device__ __forceinline__ void dec_store(float* p, float v) { *p = v; }
__device__ __forceinline__ void dec_store(bf16* p, float v) { *p = kc::to_bf16(v); }
__device__ __forceinline__ float dec_load(const float* p) { return *p; }
__device__ __forceinline__ float dec_load(const bf16* p) { return kc::to_f32(*p); }

// The filled cache length of this step (from device memory), clamped to the launcher's bound.
__device__ __forceinline__ int dec_len(const u32* len, int max_len) {
  return min(static_cast<int>(min(*len, 0x7fffffffu)), max_len);
}

// acc[r] += Σ_e w[e]·x[r][k0 + e] for the rows r < m ≤ MR (8 columns from k0).
template <int MR>
__device__ __forceinline__ void dec_rows_fma(float acc[MR], const float w[8], const bf16* x, int m, int k, int k0) {
  KC_UNROLL
  for (int r = 0; r < MR; ++r) {
    if (r < m) {
      float xv[8];
      kc::unpack_bf16x8(kc::load_u32x4(x + static_cast<long long>(r) * k + k0), xv);
      float s = acc[r];
      KC_UNROLL
      for (int e = 0; e < 8; ++e) s += w[e] * xv[e];
      acc[r] = s;
    }
  }
}

// Warp-sums every row's accumulator; lane r writes row r of column n.
template <typename TY, int MR>
__device__ __forceinline__ void dec_write(TY* y, float acc[MR], int m, int n_out, int n, int lane, float alpha,
                                          float beta) {
  KC_UNROLL
  for (int r = 0; r < MR; ++r) {
    if (r < m) {
      const float s = kc::warp_sum(acc[r]);
      if (lane == r) {
        TY* out = y + static_cast<long long>(r) * n_out + n;
        float v = alpha * s;
        if (beta != 0.0f) v += beta * dec_load(out);
        dec_store(out, v);
      }
    }
  }
}

// Epilogues the 4-bit GEMV can apply to its bf16 output, to save a launch per layer of a decode
// step; each rounds the product to bf16 first and then computes exactly what the unfused
// kernel (pointwise.cu) computes from that bf16 value.
#define DEC_EPI_NONE 0
#define DEC_EPI_GELU 1      // y = bf16(gelu(bf16(v))): gelu_fwd_bf16 after the product
#define DEC_EPI_RESIDUAL 2  // y = bf16(r1 + r2 + bf16(v)), left to right: residual_add3_bf16

// gelu_fwd's exact GELU (pointwise.cu), the same expression.
__device__ __forceinline__ float dec_gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

// The code-pair table of the 4-bit GEMV: entry e (a byte of two codes, the lower column in the
// low nibble) is bf16x2(table[e & 15], table[e >> 4]), stored 32 times side by side, one column
// per lane, so that a warp's 32 lookups fall in 32 different banks whatever the codes are.
#define DEC_PAIR_TABLE_WORDS (256 * 32)

// Byte offset of code byte i of `wd` in the pair table: byte · 128 (an entry's 32 columns), each
// written as a mask (a PRMT for byte 0) and a shift that ptxas merges with the add of the
// lane's column into one LEA.
template <int I>
__device__ __forceinline__ u32 dec_pair_offset(u32 wd) {
#ifdef KC_DEVICE
  if (I == 0) return __byte_perm(wd, 0u, 0x4440u) << 7;  // a PRMT: the compiler keeps the LEA
#else
  if (I == 0) return (wd & 0xffu) << 7;
#endif
  if (I == 1) return (wd & 0xff00u) >> 1;
  if (I == 2) return (wd & 0xff0000u) >> 9;
  return (wd & 0xff000000u) >> 17;
}

// The table entry at byte offset `off` for this lane: `lane_at` is the lane's column (a 32-bit
// shared address on the GPU, so that no generic-to-shared conversion sits in the k-loop;
// `lane_col` is the same column as a pointer, for the emulator).
__device__ __forceinline__ u32 dec_pair(const u32* lane_col, u32 lane_at, u32 off) {
#ifdef KC_DEVICE
  (void)lane_col;
  u32 v;
  asm("ld.shared.u32 %0, [%1];" : "=r"(v) : "r"(lane_at + off));
  return v;
#else
  (void)lane_at;
  return lane_col[off / 4];
#endif
}

// The 4-bit GEMV on tensor cores (see "4-bit GEMV design" above). Block = 16 weight rows (one
// patch row of the fragment layout), warp w = the 64-column super-tile columns w, w + 8, ...;
// JT = column tiles of 8 X rows (1: M ≤ 8, 4: M ≤ 32), a template parameter so that the common
// small batch issues no instructions for the tiles it does not have.
template <typename TY, int EPI, int JT>
__device__ __forceinline__ void gemv_nf4(TY* y, float* part, u32* counters, const bf16* x, const u8* packed,
                                         const u8* am_codes, const float* nested, const float* code_map,
                                         const float* table, const bf16* r1, const bf16* r2, float offset, int m,
                                         int n_out, int k, float alpha, float beta) {
  // The code-pair table during the k-loop, then (after a barrier) the warps' partial sums.
  __shared__ __align__(16) u32 s_mem[DEC_PAIR_TABLE_WORDS];
  __shared__ u32 s_last;
  typedef float PartSums[JT][4][32];
  static_assert(sizeof(PartSums) * DECODE_GEMV_WARPS <= sizeof(u32) * DEC_PAIR_TABLE_WORDS,
                "the partial sums fit where the table was");
  // Split-K: gridDim.y blocks share a 16-row group, block z taking the super-tile columns of its
  // warps w: z·8 + w, then every 8·gridDim.y (see the launcher for how many).
  const int splits = gridDim.y, z = blockIdx.y;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int n0 = blockIdx.x * 16;
  const int tiles = k / 64;  // super-tile columns
  const int stride = DECODE_GEMV_WARPS * splits;
  int st = z * DECODE_GEMV_WARPS + warp;
  // Patch row (n0 % 64) / 16 of super-tile row n0 / 64; this lane's word in each patch of the
  // warp's first super-tile; the loop advances it by `stride` super-tiles.
  const u8* src = packed + static_cast<long long>(n0 / 64) * tiles * 2048 + ((n0 % 64) / 16) * 4 * 128 + lane * 4 +
                  static_cast<long long>(st) * 2048;
  const long long src_step = static_cast<long long>(stride) * 2048;
  // The absmax of the rows g (even t) and g + 8 (odd t) is decoded by lanes 4g and 4g + 1 and
  // shuffled to the four lanes of the row pair; padded rows (≥ n_out, code 0) get absmax 0.
  // 32-bit block index row·(k/64) + st: the launcher checks that the element count fits an int.
  const int am_row = n0 + g + 8 * (t & 1);
  const bool am_ok = am_row < n_out;
  u32 blk = static_cast<u32>(am_row) * static_cast<u32>(tiles) + static_cast<u32>(st);
  // Software pipeline: the next super-tile's code words, absmax code and nested absmax are
  // loaded one iteration ahead (the first ones before the table is built), so that a warp
  // always has a super-tile's loads in flight while it decodes the previous one.
  u32 w_next[4] = {0u, 0u, 0u, 0u}, am_next = 0u;
  float nested_next = 0.0f;
  if (st < tiles) {
    KC_UNROLL
    for (int p = 0; p < 4; ++p) w_next[p] = *reinterpret_cast<const u32*>(src + p * 128);
    if (am_ok) {
      am_next = am_codes[blk];
      nested_next = nested[blk >> 8];
    }
  }
  // The table: thread i writes the 16-byte pieces q = i + 256·r (r < 8), piece q being columns
  // 4·(q % 8) .. 4·(q % 8) + 3 of entry e = q / 8, so each warp store covers 512 contiguous bytes
  // (no bank conflicts). Its low code e % 16 = (i / 8) % 16 is the same for every r, its high
  // code e / 16 = i / 128 + 2·r.
  static_assert(DECODE_GEMV_THREADS == 256, "the table fill assumes 256 threads");
  {
    const float lo = table[(threadIdx.x >> 3) & 15];
    KC_UNROLL
    for (int r = 0; r < 8; ++r) {
      const u32 v = kc::pack_bf16x2(lo, table[(threadIdx.x >> 7) + 2 * r]);
      kc::store_u32x4(s_mem + 4 * (threadIdx.x + 256 * r), u32x4{v, v, v, v});
    }
  }
  __syncthreads();
  const u32* lane_col = s_mem + lane;
  const u32 lane_at = kc::smem_u32(lane_col);
  // B fragments: X row 8j + g (columns 2t, 2t+1 and 2t+8, 2t+9 of each patch). A lane whose row
  // is past m reads row 0 instead: B column g only feeds output column g, which is not stored.
  const bf16* xp[JT];
  float acc[JT][4];
  KC_UNROLL
  for (int j = 0; j < JT; ++j) {
    xp[j] = x + static_cast<long long>(8 * j + g < m ? 8 * j + g : 0) * k + 2 * t + st * 64;
    KC_UNROLL
    for (int i = 0; i < 4; ++i) acc[j][i] = 0.0f;
  }
  const float zero[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  DEC_NO_UNROLL
  for (; st < tiles; st += stride) {
    u32 wd[4];
    KC_UNROLL
    for (int p = 0; p < 4; ++p) wd[p] = w_next[p];
    const u32 am_code = am_next;
    const float am_nested = nested_next;
    // The last iteration loads its own super-tile again (cached) instead of branching.
    if (st + stride < tiles) {
      src += src_step;
      blk += stride;
    }
    KC_UNROLL
    for (int p = 0; p < 4; ++p) w_next[p] = *reinterpret_cast<const u32*>(src + p * 128);
    if (am_ok) {
      am_next = am_codes[blk];
      nested_next = nested[blk >> 8];
    }
    // The super-tile's 64 columns are one absmax block per row: the products of the table
    // values are summed over the block first (sub[j]), then scaled by the row's absmax.
    float sub[JT][4];
    KC_UNROLL
    for (int p = 0; p < 4; ++p) {
      // Byte i of wd[p]: row g + 8·(i / 2), columns 2t + 8·(i % 2) and the next
      // (ops/nf4_layout.rs), i.e. A-fragment registers 0, 2, 1, 3.
      u32 a[4];
      a[0] = dec_pair(lane_col, lane_at, dec_pair_offset<0>(wd[p]));
      a[2] = dec_pair(lane_col, lane_at, dec_pair_offset<1>(wd[p]));
      a[1] = dec_pair(lane_col, lane_at, dec_pair_offset<2>(wd[p]));
      a[3] = dec_pair(lane_col, lane_at, dec_pair_offset<3>(wd[p]));
      KC_UNROLL
      for (int j = 0; j < JT; ++j) {
        u32 b[2];
        b[0] = *reinterpret_cast<const u32*>(xp[j] + p * 16);
        b[1] = *reinterpret_cast<const u32*>(xp[j] + p * 16 + 8);
        kc::mma_m16n8k16_bf16(sub[j], a, b, p == 0 ? zero : sub[j]);
      }
    }
    const float am = am_ok ? kc::add_rn(kc::mul_rn(code_map[am_code], am_nested), offset) : 0.0f;
    const float am_a = __shfl_sync(0xffffffffu, am, lane & ~3), am_b = __shfl_sync(0xffffffffu, am, lane | 1);
    // sub[j][i]: weight row n0 + g + 8·(i / 2).
    KC_UNROLL
    for (int j = 0; j < JT; ++j) {
      acc[j][0] = fmaf(am_a, sub[j][0], acc[j][0]);
      acc[j][1] = fmaf(am_a, sub[j][1], acc[j][1]);
      acc[j][2] = fmaf(am_b, sub[j][2], acc[j][2]);
      acc[j][3] = fmaf(am_b, sub[j][3], acc[j][3]);
      xp[j] += stride * 64;
    }
  }
  // acc[j][i]: weight row n0 + g + 8·(i / 2), X row 8j + 2t + i % 2. The warps' partial sums
  // meet in shared memory (where the table was, once every warp is done with it) and are added
  // in warp order (deterministic).
  __syncthreads();
  PartSums* s_part = reinterpret_cast<PartSums*>(s_mem);
  KC_UNROLL
  for (int j = 0; j < JT; ++j)
    KC_UNROLL
    for (int i = 0; i < 4; ++i) s_part[warp][j][i][lane] = acc[j][i];
  __syncthreads();
  const long long plane = static_cast<long long>(m) * n_out;
  if (splits > 1) {
    // Each split writes its block sums as an fp32 plane part[z][m][n]; the last block of the
    // row group to arrive (an atomic per group, reset by that block for the next launch) adds
    // the planes in the order z = 0..splits-1 and stores (deterministic).
    for (int e = threadIdx.x; e < 16 * m; e += DECODE_GEMV_THREADS) {
      const int r = e % 16, xm = e / 16;
      if (n0 + r >= n_out) continue;
      const int j = xm / 8, i = (r / 8) * 2 + xm % 2, l = 4 * (r % 8) + (xm % 8) / 2;
      float s = 0.0f;
      KC_UNROLL
      for (int w = 0; w < DECODE_GEMV_WARPS; ++w) s += s_part[w][j][i][l];
      part[z * plane + static_cast<long long>(xm) * n_out + n0 + r] = s;
    }
    __threadfence();  // the plane is visible device-wide before the count says so
    __syncthreads();
    if (threadIdx.x == 0) {
      const u32 prev = atomicAdd(counters + blockIdx.x, 1u);
      const u32 last = prev == static_cast<u32>(splits - 1) ? 1u : 0u;
      if (last) atomicExch(counters + blockIdx.x, 0u);  // ready for the next launch
      s_last = last;
    }
    __syncthreads();
    if (s_last == 0u) return;
    __threadfence();  // acquire side: the other splits' planes are read after their counts
  }
  const volatile float* vp = part;
  for (int e = threadIdx.x; e < 16 * m; e += DECODE_GEMV_THREADS) {
    const int r = e % 16, xm = e / 16;  // weight row n0 + r, X row xm
    const int n = n0 + r;
    if (n >= n_out) continue;
    const long long o = static_cast<long long>(xm) * n_out + n;
    float s = 0.0f;
    if (splits > 1) {
      for (int zz = 0; zz < splits; ++zz) s += vp[zz * plane + o];
    } else {
      const int j = xm / 8, i = (r / 8) * 2 + xm % 2, l = 4 * (r % 8) + (xm % 8) / 2;
      KC_UNROLL
      for (int w = 0; w < DECODE_GEMV_WARPS; ++w) s += s_part[w][j][i][l];
    }
    float v = alpha * s;
    if (beta != 0.0f) v += beta * dec_load(y + o);
    if (EPI == DEC_EPI_GELU) v = dec_gelu(kc::to_f32(kc::to_bf16(v)));
    if (EPI == DEC_EPI_RESIDUAL) v = kc::to_f32(r1[o]) + kc::to_f32(r2[o]) + kc::to_f32(kc::to_bf16(v));
    dec_store(y + o, v);
  }
}

// The bf16 GEMV for at most MR rows of X (8 or 32: a template parameter, so that the common
// small batch keeps 8 accumulators and its blocks fit the SM several times over).
template <typename TY, int MR>
__device__ __forceinline__ void gemv_bf16(TY* y, const bf16* x, const bf16* wt, int m, int n_out, int k,
                                          float alpha, float beta) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n = blockIdx.x * DECODE_GEMV_WARPS + warp;
  if (n >= n_out) return;
  float acc[MR];
  KC_UNROLL
  for (int r = 0; r < MR; ++r) acc[r] = 0.0f;
  const bf16* wrow = wt + static_cast<long long>(n) * k;
  // DEC_BF16_LOADS 16-byte weight loads per lane are issued before any is used: a warp that
  // waited for each load in turn would be bound by memory latency, not bandwidth. Not unrolled
  // further, and the 32-row entry points ask for 1 block per SM: otherwise ptxas caps the loop
  // at 64 registers and spills the 32 accumulators.
  constexpr int U = DEC_BF16_LOADS;
  DEC_NO_UNROLL
  for (int k0 = lane * 8; k0 < k; k0 += 256 * U) {
    u32x4 wv[U];
    KC_UNROLL
    for (int u = 0; u < U; ++u) wv[u] = k0 + 256 * u < k ? kc::load_u32x4(wrow + k0 + 256 * u) : u32x4{0u, 0u, 0u, 0u};
    KC_UNROLL
    for (int u = 0; u < U; ++u) {
      if (k0 + 256 * u < k) {
        float w[8];
        kc::unpack_bf16x8(wv[u], w);
        dec_rows_fma<MR>(acc, w, x, m, k, k0 + 256 * u);
      }
    }
  }
  dec_write<TY, MR>(y, acc, m, n_out, n, lane, alpha, beta);
}

// A lane's PER (2 or 4) consecutive bf16 of a cache row, as f32: one 4- or 8-byte load (the
// row's byte offset lane·2·PER is a multiple of 2·PER; the caches are 16-byte aligned).
template <int PER>
__device__ __forceinline__ void dec_load_row_part(const bf16* p, float out[PER]) {
  static_assert(PER == 2 || PER == 4, "head_dim 64 or 128");
  u32 w[PER / 2];
  if constexpr (PER == 4) {
    const kc::u32x2 v = kc::load_u32x2(p);
    w[0] = v.x;
    w[1] = v.y;
  } else {
    w[0] = *reinterpret_cast<const u32*>(p);
  }
  KC_UNROLL
  for (int i = 0; i < PER / 2; ++i) {
    out[2 * i] = kc::bf16x2_lo(w[i]);
    out[2 * i + 1] = kc::bf16x2_hi(w[i]);
  }
}

// One chunk of keys for one (sequence, head): the block's (max, sum, unnormalized o).
template <int D>
__device__ __forceinline__ void attn_split(float* part_o, float* part_ml, const bf16* q, const bf16* kc_,
                                           const bf16* vc, const u8* key_mask, const u32* len_d, int hq,
                                           int hkv, int cap, int max_len, float scale) {
  constexpr int PER = D / 32;  // q, k, v, o elements per lane
  __shared__ float s_ml[DECODE_ATTN_WARPS][2];
  __shared__ float s_o[DECODE_ATTN_WARPS][D];
  const int chunk = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int chunks = gridDim.x;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int kvh = h / (hq / hkv);
  const bf16* qrow = q + (static_cast<long long>(b) * hq + h) * D + lane * PER;
  float qv[PER];
  KC_UNROLL
  for (int e = 0; e < PER; ++e) qv[e] = kc::to_f32(qrow[e]) * scale;
  const long long head = (static_cast<long long>(b) * hkv + kvh) * cap;
  const u8* mk = key_mask + static_cast<long long>(b) * cap;
  float mx = kDecNegInf, l = 0.0f, o[PER];
  KC_UNROLL
  for (int e = 0; e < PER; ++e) o[e] = 0.0f;
  const int len = dec_len(len_d, max_len);
  const int j0 = chunk * DECODE_ATTN_CHUNK;
  const int j1 = min(len, j0 + DECODE_ATTN_CHUNK);
  constexpr int KB = DECODE_ATTN_KEYS;
  static_assert(DECODE_ATTN_CHUNK % (DECODE_ATTN_KEYS * DECODE_ATTN_WARPS) == 0, "whole batches");
  // Warp w takes the batches of KB consecutive keys starting at j0 + KB·w, then every
  // KB·DECODE_ATTN_WARPS keys (two batches per warp for a full chunk). A batch's key and value
  // loads are all issued before any is used, and its KB score sums run their butterflies side
  // by side: one memory latency per batch, not per key.
  for (int jb = j0 + KB * warp; jb < j1; jb += KB * DECODE_ATTN_WARPS) {
    // Visible keys (the same for the whole warp): in range and not padding. The others are
    // skipped, never multiplied (a cache column of a padded prompt may hold anything).
    bool vis[KB];
    bool any = false;
    KC_UNROLL
    for (int e = 0; e < KB; ++e) {
      vis[e] = jb + e < j1 && mk[jb + e] != 0;
      any = any || vis[e];
    }
    if (!any) continue;
    float kv[KB][PER], vv[KB][PER];
    KC_UNROLL
    for (int e = 0; e < KB; ++e) {
      const long long at = (head + jb + e) * D + lane * PER;
      if (vis[e]) {
        dec_load_row_part<PER>(kc_ + at, kv[e]);
        dec_load_row_part<PER>(vc + at, vv[e]);
      } else {
        KC_UNROLL
        for (int i = 0; i < PER; ++i) kv[e][i] = vv[e][i] = 0.0f;
      }
    }
    float sc[KB];
    KC_UNROLL
    for (int e = 0; e < KB; ++e) {
      float d = 0.0f;
      KC_UNROLL
      for (int i = 0; i < PER; ++i) d += qv[i] * kv[e][i];
      sc[e] = d;
    }
    // kc::warp_sum of each score (the same butterfly), the KB of them interleaved.
    KC_UNROLL
    for (int o2 = 16; o2 > 0; o2 >>= 1)
      KC_UNROLL
      for (int e = 0; e < KB; ++e) sc[e] += __shfl_xor_sync(0xffffffffu, sc[e], o2, 32);
    float mn = mx;
    KC_UNROLL
    for (int e = 0; e < KB; ++e)
      if (vis[e]) mn = fmaxf(mn, sc[e]);
    const float corr = expf(mx - mn);  // exp(-inf) = 0 before the first visible key
    l *= corr;
    KC_UNROLL
    for (int i = 0; i < PER; ++i) o[i] *= corr;
    KC_UNROLL
    for (int e = 0; e < KB; ++e) {
      if (vis[e]) {
        const float p = expf(sc[e] - mn);
        l += p;
        KC_UNROLL
        for (int i = 0; i < PER; ++i) o[i] += p * vv[e][i];
      }
    }
    mx = mn;
  }
  if (lane == 0) {
    s_ml[warp][0] = mx;
    s_ml[warp][1] = l;
  }
  KC_UNROLL
  for (int e = 0; e < PER; ++e) s_o[warp][lane * PER + e] = o[e];
  __syncthreads();
  // Merge the warps in order; thread c < D owns element c.
  const long long slot = (static_cast<long long>(b) * hq + h) * chunks + chunk;
  for (int c = threadIdx.x; c < D; c += DECODE_ATTN_THREADS) {
    float m_all = kDecNegInf;
    KC_UNROLL
    for (int w = 0; w < DECODE_ATTN_WARPS; ++w) m_all = fmaxf(m_all, s_ml[w][0]);
    float l_all = 0.0f, o_all = 0.0f;
    if (m_all != kDecNegInf) {
      KC_UNROLL
      for (int w = 0; w < DECODE_ATTN_WARPS; ++w) {
        if (s_ml[w][0] != kDecNegInf) {
          const float f = expf(s_ml[w][0] - m_all);
          l_all += s_ml[w][1] * f;
          o_all += s_o[w][c] * f;
        }
      }
    }
    part_o[slot * D + c] = o_all;
    if (c == 0) {
      part_ml[2 * slot] = m_all;
      part_ml[2 * slot + 1] = l_all;
    }
  }
}

// Merges the chunks of one (sequence, head) in chunk order; thread c owns element c.
template <int D>
__device__ __forceinline__ void attn_combine(bf16* out, const float* part_o, const float* part_ml, int hq,
                                             int chunks) {
  const int h = blockIdx.x, b = blockIdx.y;
  const long long base = (static_cast<long long>(b) * hq + h) * chunks;
  float m_all = kDecNegInf;
  for (int c = 0; c < chunks; ++c) m_all = fmaxf(m_all, part_ml[2 * (base + c)]);
  for (int e = threadIdx.x; e < D; e += blockDim.x) {
    float l_all = 0.0f, o_all = 0.0f;
    if (m_all != kDecNegInf) {
      for (int c = 0; c < chunks; ++c) {
        const float mc = part_ml[2 * (base + c)];
        if (mc == kDecNegInf) continue;
        const float f = expf(mc - m_all);
        l_all += part_ml[2 * (base + c) + 1] * f;
        o_all += part_o[(base + c) * D + e] * f;
      }
    }
    out[(static_cast<long long>(b) * hq + h) * D + e] = kc::to_bf16(l_all > 0.0f ? o_all / l_all : 0.0f);
  }
}

}  // namespace

// 4-bit GEMV entry points for M ≤ 32: plain (bf16 or f32 output), then GELU, then the residual
// (y = bf16(r1 + r2 + bf16(α·X·Wᵀ + β·y)), r1 and r2 [m, n] bf16: the residual and the attention
// branch of a parallel-attention block).
extern "C" __global__ void __launch_bounds__(DECODE_GEMV_THREADS, 2)
    decode_gemv_nf4_bf16(bf16* y, float* part, u32* counters, const bf16* x, const u8* packed, const u8* am_codes, const float* nested,
                         const float* code_map, const float* table, float offset, int m, int n, int k,
                         float alpha, float beta) {
  gemv_nf4<bf16, DEC_EPI_NONE, 4>(y, part, counters, x, packed, am_codes, nested, code_map, table, nullptr, nullptr, offset, m,
                                 n, k, alpha, beta);
}

extern "C" __global__ void __launch_bounds__(DECODE_GEMV_THREADS, 2)
    decode_gemv_nf4_f32(float* y, float* part, u32* counters, const bf16* x, const u8* packed, const u8* am_codes, const float* nested,
                        const float* code_map, const float* table, float offset, int m, int n, int k,
                        float alpha, float beta) {
  gemv_nf4<float, DEC_EPI_NONE, 4>(y, part, counters, x, packed, am_codes, nested, code_map, table, nullptr, nullptr, offset,
                                  m, n, k, alpha, beta);
}

extern "C" __global__ void __launch_bounds__(DECODE_GEMV_THREADS, 2)
    decode_gemv_nf4_gelu_bf16(bf16* y, float* part, u32* counters, const bf16* x, const u8* packed, const u8* am_codes,
                              const float* nested, const float* code_map, const float* table, float offset,
                              int m, int n, int k, float alpha, float beta) {
  gemv_nf4<bf16, DEC_EPI_GELU, 4>(y, part, counters, x, packed, am_codes, nested, code_map, table, nullptr, nullptr, offset, m,
                                 n, k, alpha, beta);
}

extern "C" __global__ void __launch_bounds__(DECODE_GEMV_THREADS, 2)
    decode_gemv_nf4_residual_bf16(bf16* y, float* part, u32* counters, const bf16* x, const u8* packed, const u8* am_codes,
                                  const float* nested, const float* code_map, const float* table,
                                  const bf16* r1, const bf16* r2, float offset, int m, int n, int k, float alpha,
                                  float beta) {
  gemv_nf4<bf16, DEC_EPI_RESIDUAL, 4>(y, part, counters, x, packed, am_codes, nested, code_map, table, r1, r2, offset, m, n,
                                     k, alpha, beta);
}

// 4-bit GEMV entry points for M ≤ 8: plain (bf16 or f32 output), then GELU, then the residual
// (y = bf16(r1 + r2 + bf16(α·X·Wᵀ + β·y)), r1 and r2 [m, n] bf16: the residual and the attention
// branch of a parallel-attention block).
extern "C" __global__ void __launch_bounds__(DECODE_GEMV_THREADS)
    decode_gemv_nf4_m8_bf16(bf16* y, float* part, u32* counters, const bf16* x, const u8* packed, const u8* am_codes, const float* nested,
                         const float* code_map, const float* table, float offset, int m, int n, int k,
                         float alpha, float beta) {
  gemv_nf4<bf16, DEC_EPI_NONE, 1>(y, part, counters, x, packed, am_codes, nested, code_map, table, nullptr, nullptr, offset, m,
                                 n, k, alpha, beta);
}

extern "C" __global__ void __launch_bounds__(DECODE_GEMV_THREADS)
    decode_gemv_nf4_m8_f32(float* y, float* part, u32* counters, const bf16* x, const u8* packed, const u8* am_codes, const float* nested,
                        const float* code_map, const float* table, float offset, int m, int n, int k,
                        float alpha, float beta) {
  gemv_nf4<float, DEC_EPI_NONE, 1>(y, part, counters, x, packed, am_codes, nested, code_map, table, nullptr, nullptr, offset,
                                  m, n, k, alpha, beta);
}

extern "C" __global__ void __launch_bounds__(DECODE_GEMV_THREADS)
    decode_gemv_nf4_m8_gelu_bf16(bf16* y, float* part, u32* counters, const bf16* x, const u8* packed, const u8* am_codes,
                              const float* nested, const float* code_map, const float* table, float offset,
                              int m, int n, int k, float alpha, float beta) {
  gemv_nf4<bf16, DEC_EPI_GELU, 1>(y, part, counters, x, packed, am_codes, nested, code_map, table, nullptr, nullptr, offset, m,
                                 n, k, alpha, beta);
}

extern "C" __global__ void __launch_bounds__(DECODE_GEMV_THREADS)
    decode_gemv_nf4_m8_residual_bf16(bf16* y, float* part, u32* counters, const bf16* x, const u8* packed, const u8* am_codes,
                                  const float* nested, const float* code_map, const float* table,
                                  const bf16* r1, const bf16* r2, float offset, int m, int n, int k, float alpha,
                                  float beta) {
  gemv_nf4<bf16, DEC_EPI_RESIDUAL, 1>(y, part, counters, x, packed, am_codes, nested, code_map, table, r1, r2, offset, m, n,
                                     k, alpha, beta);
}

extern "C" __global__ void __launch_bounds__(DECODE_GEMV_THREADS, 1)
    decode_gemv_bf16_bf16(bf16* y, const bf16* x, const bf16* w, int m, int n, int k, float alpha, float beta) {
  gemv_bf16<bf16, DECODE_MAX_ROWS>(y, x, w, m, n, k, alpha, beta);
}

extern "C" __global__ void __launch_bounds__(DECODE_GEMV_THREADS, 1)
    decode_gemv_bf16_f32(float* y, const bf16* x, const bf16* w, int m, int n, int k, float alpha, float beta) {
  gemv_bf16<float, DECODE_MAX_ROWS>(y, x, w, m, n, k, alpha, beta);
}

// The bf16 GEMV for M ≤ 8.
extern "C" __global__ void __launch_bounds__(DECODE_GEMV_THREADS)
    decode_gemv_bf16_m8_bf16(bf16* y, const bf16* x, const bf16* w, int m, int n, int k, float alpha, float beta) {
  gemv_bf16<bf16, 8>(y, x, w, m, n, k, alpha, beta);
}

extern "C" __global__ void __launch_bounds__(DECODE_GEMV_THREADS)
    decode_gemv_bf16_m8_f32(float* y, const bf16* x, const bf16* w, int m, int n, int k, float alpha, float beta) {
  gemv_bf16<float, 8>(y, x, w, m, n, k, alpha, beta);
}

extern "C" __global__ void __launch_bounds__(DECODE_ATTN_THREADS)
    decode_attn_split_d64(float* part_o, float* part_ml, const bf16* q, const bf16* k, const bf16* v,
                          const u8* key_mask, const u32* len, int hq, int hkv, int cap, int max_len,
                          float scale) {
  attn_split<64>(part_o, part_ml, q, k, v, key_mask, len, hq, hkv, cap, max_len, scale);
}

extern "C" __global__ void __launch_bounds__(DECODE_ATTN_THREADS)
    decode_attn_split_d128(float* part_o, float* part_ml, const bf16* q, const bf16* k, const bf16* v,
                           const u8* key_mask, const u32* len, int hq, int hkv, int cap, int max_len,
                           float scale) {
  attn_split<128>(part_o, part_ml, q, k, v, key_mask, len, hq, hkv, cap, max_len, scale);
}

extern "C" __global__ void decode_attn_combine_d64(bf16* out, const float* part_o, const float* part_ml, int hq,
                                                   int chunks) {
  attn_combine<64>(out, part_o, part_ml, hq, chunks);
}

extern "C" __global__ void decode_attn_combine_d128(bf16* out, const float* part_o, const float* part_ml, int hq,
                                                    int chunks) {
  attn_combine<128>(out, part_o, part_ml, hq, chunks);
}

// grid = b (one block per sequence), block = DECODE_ROPE_THREADS. qkv [b, S·d] (S = hq + 2·hkv
// slots in Falcon's fused layout), table [b, 2h] from rope_table; q [b, hq, d]; caches
// [b, hkv, cap, d], written at column len − 1 (nothing when len = 0). The expressions are those
// of rope.cu's rope_qkv (forward), so q, the key and the value equal rope_qkv_fwd_bf16's.
extern "C" __global__ void __launch_bounds__(DECODE_ROPE_THREADS)
    decode_rope_append(bf16* q, bf16* k_cache, bf16* v_cache, const bf16* qkv, const float* table,
                       const u32* len, int hq, int hkv, int d, int cap, int grouped) {
  __shared__ float cs[2][DECODE_ROPE_MAX_HALF];
  const int bi = blockIdx.x;
  const int h = d / 2;
  const float* trow = table + static_cast<long long>(bi) * 2 * h;
  for (int i = threadIdx.x; i < h; i += blockDim.x) {
    cs[0][i] = trow[i];
    cs[1][i] = trow[h + i];
  }
  __syncthreads();
  const int col = dec_len(len, cap) - 1;
  // Block-uniform exit, after the only barrier.
  if (col < 0) return;
  const int slots = hq + 2 * hkv;
  const int per = h + (d & 1);  // work items per slot: h pairs (+1 pass-through for odd d)
  const bf16* row = qkv + static_cast<long long>(bi) * slots * d;
  for (int w = threadIdx.x; w < slots * per; w += blockDim.x) {
    const int s = w / per, i = w % per;
    int kind, head;
    kc::qkv_slot_of(s, hq, hkv, grouped, kind, head);
    bf16* dst = kind == 0 ? q + (static_cast<long long>(bi) * hq + head) * d
                          : (kind == 1 ? k_cache : v_cache) +
                                ((static_cast<long long>(bi) * hkv + head) * cap + col) * d;
    const bf16* src = row + static_cast<long long>(s) * d;
    if (i == h) {  // odd d: the last element is not rotated
      dst[d - 1] = kc::to_bf16(kc::to_f32(src[d - 1]));
    } else if (kind == 2) {
      dst[i] = kc::to_bf16(kc::to_f32(src[i]));
      dst[i + h] = kc::to_bf16(kc::to_f32(src[i + h]));
    } else {
      const float c = cs[0][i], sn = cs[1][i];
      const float x0 = kc::to_f32(src[i]), x1 = kc::to_f32(src[i + h]);
      dst[i] = kc::to_bf16(x0 * c - x1 * sn);
      dst[i + h] = kc::to_bf16(x1 * c + x0 * sn);
    }
  }
}

// src [b, h, s, d] into cache [b, h, cap, d] at column pos; 8 bf16 (16 bytes) per thread step
// (d % 8 == 0 and 16-byte aligned buffers, checked by the launcher).
extern "C" __global__ void decode_kv_write(bf16* cache, const bf16* src, int s, int d, int cap, int pos,
                                           long long chunks) {
  const int per_row = d / 8;
  for (long long c = kc::grid_thread(); c < chunks; c += kc::grid_threads()) {
    const long long row = c / per_row;  // over [b, h, s]
    const int col = static_cast<int>(c % per_row) * 8;
    const int i = static_cast<int>(row % s);
    const long long bh = row / s;
    const long long dst = (bh * cap + pos + i) * d + col;
    kc::store_u32x4(cache + dst, kc::load_u32x4(src + row * d + col));
  }
}

// out [b, w] = the rows r·t + t - 1 of x [b·t, w]; 8 bf16 per thread step (w % 8 == 0).
extern "C" __global__ void decode_take_rows(bf16* out, const bf16* x, int t, int w, long long chunks) {
  const int per_row = w / 8;
  for (long long c = kc::grid_thread(); c < chunks; c += kc::grid_threads()) {
    const long long r = c / per_row;
    const int col = static_cast<int>(c % per_row) * 8;
    kc::store_u32x4(out + r * w + col, kc::load_u32x4(x + (r * t + t - 1) * w + col));
  }
}
