// NF4 dequantization and tensor-core GEMMs (plain bf16 and NF4-dequantizing).
//
// Weight format (engine::nf4::QuantizedWeight, bitsandbytes' 4-bit layout): W[N][K] row-major,
// flat index i = n*K + k; code(i) = high nibble of packed[i/2] when i is even, low nibble when
// odd; absmax of block b = i/blocksize with double quantization:
//   absmax[b] = fp32(fp32(code_map[am_codes[b]] * nested_absmax[b/256]) + offset)
// (two separately rounded operations, never an FMA: mul.rn / add.rn below), and
//   w(i) = fp32(table[code(i)] * absmax[b]), rounded once to the output type.
//
// Kernels
//   nf4_dequant_{bf16,f32}: one thread per packed byte (two elements). Memory bound:
//     0.5 B read + 2 B (bf16) or 4 B (f32) written per element; absmax/code map are cached.
//   nf4_quantize_{f32,bf16}: one warp per absmax block (max|a|, scale, 15-threshold bucketing,
//     packing); fp32 absmax out, double-quantized on the host (it is 1/64 of the elements).
//   gemm_bf16_{nt,nn,tn}_{bf16,f32}: C[M][N] = alpha*op(A)·op(B) + beta*C, bf16 in, fp32 accumulate.
//     nt: A[M][K], B[N][K] (C = A·Bᵀ, the forward of x·Wᵀ);
//     nn: A[M][K], B[K][N] (C = A·B, the input gradient dY·W);
//     tn: A[K][M], B[K][N] (C = Aᵀ·B, the weight gradient dYᵀ·X).
//   nf4_gemm_fwd_{bf16,f32}: Y[M][N] = alpha*X[M][K]·dequant(W[N][K])ᵀ + beta*Y.
//   nf4_gemm_bwd_{bf16,f32}: dX[M][K] = alpha*dY[M][N]·dequant(W[N][K]) + beta*dX.
//
// Cost at Falcon-7B shapes (M = 1024, e.g. N = 18176, K = 4544): 2·M·N·K = 169 GFLOP per GEMM;
// bytes: W 0.5·N·K (+ 1/64 B absmax code per element) = 41 MB, X 2·M·K = 9 MB, Y 2·M·N = 37 MB.
// Arithmetic intensity ~2000 FLOP/B: compute bound on tensor cores, so the design keeps the mma
// pipe fed and the NF4 decode off the critical path:
//   - block tile 128x128 (M x N), 256 threads = 8 warps as 2 (M) x 4 (N), warp tile 64x32:
//     4 m16 x 4 n8 mma.sync m16n8k16 tiles = 64 fp32 accumulators per thread;
//   - operands in shared memory, rows padded by 8 bf16 (16 B) so the 8 row addresses of every
//     ldmatrix fall in distinct bank quads (conflict free); fragments via ldmatrix.x4 (.trans for
//     the operands stored with the reduction dimension as rows);
//   - cp.async 16-byte copies, multi-stage ring (4 stages of BK = 32 for bf16 x bf16, 3 stages of
//     BK = 64 for NF4), zero-filled past the matrix edges (ragged M/N/K);
//   - NF4: the packed codes (0.5 B/element) travel by cp.async into the ring; once a stage lands,
//     each thread decodes 32 codes (16 bytes) of one row segment of one absmax block to bf16 in
//     a shared tile (table and code map in shared memory, the block's absmax prefetched into a
//     register one k-tile ahead); no dequantized weight ever reaches global memory.
//   - shared memory: bf16 GEMM 4·(10240 + 10240) = 80 KiB worst case; NF4 3·(18432 + 4096) +
//     18432 + 1088 = 85 KiB (under the 99 KiB per block of sm_86/sm_89).
// Requirements (checked by the launchers): for the fast cp.async path a leading dimension must be a
// multiple of 8 elements, otherwise the tile loader falls back to element loads (correct, slower);
// NF4 GEMMs need blocksize 64, double quantization and K % 64 == 0. M, N (and K for bf16) arbitrary.
#include "common.cuh"

using kc::bf16;
using kc::u32;
using kc::u8;

#define GEMM_THREADS 256
#define GEMM_BM 128
#define GEMM_BN 128
#define PAD 8

// fp32 multiply and add, each rounded to nearest even, never contracted into an FMA.
__device__ __forceinline__ float mul_rn(float a, float b) {
#ifdef KC_DEVICE
  float r;
  asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#else
  volatile float r = a * b;
  return r;
#endif
}
__device__ __forceinline__ float add_rn(float a, float b) {
#ifdef KC_DEVICE
  float r;
  asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#else
  volatile float r = a + b;
  return r;
#endif
}

__device__ __forceinline__ float nf4_absmax(const u8* am_codes, const float* nested, const float* code_map,
                                            float offset, long long b) {
  return add_rn(mul_rn(code_map[am_codes[b]], nested[b >> 8]), offset);
}

__device__ __forceinline__ void store_out(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_out(bf16* p, float v) { *p = kc::to_bf16(v); }
__device__ __forceinline__ float load_out(const float* p) { return *p; }
__device__ __forceinline__ float load_out(const bf16* p) { return kc::to_f32(*p); }
// Two adjacent outputs; p is aligned to the pair.
__device__ __forceinline__ void store_pair(float* p, float a, float b) {
  kc::store_u32x2(p, kc::u32x2{kc::f32_bits(a), kc::f32_bits(b)});
}
__device__ __forceinline__ void store_pair(bf16* p, float a, float b) {
  *reinterpret_cast<u32*>(p) = kc::pack_bf16x2(a, b);
}

// ---- NF4 dequantize ------------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ void nf4_dequant(T* out, const u8* packed, const u8* am_codes, const float* nested,
                                            const float* code_map, const float* table, float offset, long long n,
                                            int blocksize) {
  const long long byte = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const long long i = 2 * byte;
  if (i >= n) return;
  // blocksize is even, so both elements of a byte share one absmax block.
  const float am = nf4_absmax(am_codes, nested, code_map, offset, i / blocksize);
  const u32 q = packed[byte];
  store_out(out + i, mul_rn(table[q >> 4], am));
  if (i + 1 < n) store_out(out + i + 1, mul_rn(table[q & 15u], am));
}

extern "C" __global__ void __launch_bounds__(256)
    nf4_dequant_bf16(bf16* out, const u8* packed, const u8* am_codes, const float* nested,
                     const float* code_map, const float* table, float offset, long long n, int blocksize) {
  nf4_dequant(out, packed, am_codes, nested, code_map, table, offset, n, blocksize);
}

extern "C" __global__ void __launch_bounds__(256)
    nf4_dequant_f32(float* out, const u8* packed, const u8* am_codes, const float* nested,
                    const float* code_map, const float* table, float offset, long long n, int blocksize) {
  nf4_dequant(out, packed, am_codes, nested, code_map, table, offset, n, blocksize);
}

// ---- NF4 quantize (blockwise absmax + 4-bit codes; double quantization stays on the host) ----
//
// One warp per absmax block, as bitsandbytes' reference path (engine::nf4 blockwise.rs):
// full block: absmax = max|a|, x = clamp(a * fp32(1 / max(absmax, 1e-38)), -1, 1);
// partial last block: absmax = max(max|a|, 1e-38), x = clamp(a / absmax, -1, 1);
// code = number of thresholds t with !(t >= x) (NaN -> 15); a NaN input makes absmax NaN.
// An odd tail is padded with the code of 0.0.

__device__ __forceinline__ float src_f32(float v) { return v; }
__device__ __forceinline__ float src_f32(bf16 v) { return kc::to_f32(v); }

__device__ __forceinline__ u32 nf4_code(float x, const float* thr) {
  u32 c = 0;
KC_UNROLL
  for (int j = 0; j < 15; ++j) c += (thr[j] < x || x != x) ? 1u : 0u;
  return c;
}

template <typename T>
__device__ __forceinline__ void nf4_quantize(u8* packed, float* absmax, const T* src, const float* thr,
                                             long long n, int blocksize) {
  const long long blk = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  const long long nblocks = (n + blocksize - 1) / blocksize;
  if (blk >= nblocks) return;  // whole warps exit together (blk is uniform per warp)
  const long long base = blk * blocksize;
  const long long len = n - base < blocksize ? n - base : blocksize;
  float m = 0.0f;
  bool nan = false;
  for (long long i = lane; i < len; i += 32) {
    const float a = kc::f32_from_bits(kc::f32_bits(src_f32(src[base + i])) & 0x7fffffffu);
    nan = nan || a != a;
    m = a > m ? a : m;
  }
  m = kc::warp_max(m);
  const bool any_nan = __any_sync(0xffffffffu, nan);
  const float maxabs = any_nan ? kc::f32_from_bits(0x7fc00000u) : m;
  const bool partial = len < blocksize;
  // clamp_min(x, 1e-38): NaN passes through.
  const float clamped = maxabs < 1e-38f ? 1e-38f : maxabs;
  const float inv = 1.0f / clamped;
  if (lane == 0) absmax[blk] = partial ? clamped : maxabs;
  const u32 pad = nf4_code(0.0f, thr);
  for (long long p = lane; 2 * p < len; p += 32) {
    u32 q[2];
KC_UNROLL
    for (int h = 0; h < 2; ++h) {
      const long long i = 2 * p + h;
      if (i < len) {
        const float a = src_f32(src[base + i]);
        float x = partial ? a / clamped : mul_rn(a, inv);
        x = x < -1.0f ? -1.0f : (x > 1.0f ? 1.0f : x);
        q[h] = nf4_code(x, thr);
      } else {
        q[h] = pad;
      }
    }
    packed[base / 2 + p] = static_cast<u8>((q[0] << 4) | q[1]);
  }
}

extern "C" __global__ void __launch_bounds__(256)
    nf4_quantize_f32(u8* packed, float* absmax, const float* src, const float* thresholds, long long n,
                     int blocksize) {
  nf4_quantize(packed, absmax, src, thresholds, n, blocksize);
}

extern "C" __global__ void __launch_bounds__(256)
    nf4_quantize_bf16(u8* packed, float* absmax, const bf16* src, const float* thresholds, long long n,
                      int blocksize) {
  nf4_quantize(packed, absmax, src, thresholds, n, blocksize);
}

// ---- GEMM building blocks ------------------------------------------------------------------

// Copies a ROWS x COLS bf16 tile whose top-left element is (r0, c0) of a row-major matrix with
// leading dimension ld, bounds rows x cols, into shared memory with row stride COLS + PAD.
// Elements outside the matrix become 0 (they may feed the reduction). Fast path: 16-byte
// cp.async when ld % 8 == 0 (every row starts 16-byte aligned); otherwise element loads.
template <int ROWS, int COLS>
__device__ __forceinline__ void load_tile(bf16* s, const bf16* g, int ld, int r0, int c0, int rows, int cols,
                                          bool vec) {
  constexpr int CHUNKS = ROWS * COLS / 8;
  static_assert(CHUNKS % GEMM_THREADS == 0, "tile chunks must divide among the threads");
  if (vec) {
KC_UNROLL
    for (int c = threadIdx.x; c < CHUNKS; c += GEMM_THREADS) {
      const int r = c / (COLS / 8), col = (c % (COLS / 8)) * 8;
      const int gr = r0 + r, gc = c0 + col;
      int valid = 0;
      if (gr < rows && gc < cols) valid = cols - gc < 8 ? cols - gc : 8;
      // Off-the-edge chunks read nothing (src_bytes 0) but still need a valid address.
      const bf16* src = valid > 0 ? g + static_cast<long long>(gr) * ld + gc : g;
      kc::cp_async_16(s + r * (COLS + PAD) + col, src, static_cast<u32>(valid) * 2u);
    }
  } else {
    for (int e = threadIdx.x; e < ROWS * COLS; e += GEMM_THREADS) {
      const int r = e / COLS, col = e % COLS;
      const int gr = r0 + r, gc = c0 + col;
      bf16 v;
      v.bits = 0;
      if (gr < rows && gc < cols) v = g[static_cast<long long>(gr) * ld + gc];
      s[r * (COLS + PAD) + col] = v;
    }
  }
}

// Warp-level product of one BK slice: acc[i][j] += A(64 rows of the warp) · B(32 cols of the warp).
// A_T: the A tile is stored [BK][BM] (reduction as rows) instead of [BM][BK];
// B_KN: the B tile is stored [BK][BN] instead of [BN][BK].
template <int BK, bool A_T, bool B_KN>
__device__ __forceinline__ void warp_mma(float acc[4][4][4], const bf16* sa, const bf16* sb, int wm, int wn,
                                         int lane) {
KC_UNROLL
  for (int kk = 0; kk < BK; kk += 16) {
    u32 a[4][4], b[4][2];
KC_UNROLL
    for (int i = 0; i < 4; ++i) {
      const int m0 = wm * 64 + i * 16;
      if (!A_T) {
        kc::ldmatrix_x4(a[i], sa + (m0 + lane % 16) * (BK + PAD) + kk + 8 * (lane / 16));
      } else {
        const int j = lane / 8;
        kc::ldmatrix_x4_trans(a[i], sa + (kk + lane % 8 + 8 * (j / 2)) * (GEMM_BM + PAD) + m0 + 8 * (j % 2));
      }
    }
KC_UNROLL
    for (int jj = 0; jj < 2; ++jj) {
      const int n0 = wn * 32 + jj * 16;
      u32 r[4];
      if (!B_KN) {
        kc::ldmatrix_x4(r, sb + (n0 + lane % 8 + 8 * (lane / 16)) * (BK + PAD) + kk + 8 * ((lane / 8) % 2));
      } else {
        kc::ldmatrix_x4_trans(r, sb + (kk + lane % 8 + 8 * ((lane / 8) % 2)) * (GEMM_BN + PAD) + n0 + 8 * (lane / 16));
      }
      b[2 * jj][0] = r[0];
      b[2 * jj][1] = r[1];
      b[2 * jj + 1][0] = r[2];
      b[2 * jj + 1][1] = r[3];
    }
KC_UNROLL
    for (int i = 0; i < 4; ++i)
KC_UNROLL
      for (int j = 0; j < 4; ++j) kc::mma_m16n8k16_bf16(acc[i][j], a[i], b[j], acc[i][j]);
  }
}

// out[m][n] = alpha*acc + beta*out for the in-range elements of the warp's 64x32 tile. A lane
// holds column pairs (2t, 2t+1): stored as one 4-byte (bf16) or 8-byte (f32) store when the row
// length is even (then the pair is aligned) and both columns are inside.
template <typename T>
__device__ __forceinline__ void epilogue(T* out, const float acc[4][4][4], int bm, int bn, int wm, int wn,
                                         int lane, int m_rows, int n_cols, float alpha, float beta) {
  const int g = lane / 4, t = lane % 4;
  const bool pairs = n_cols % 2 == 0;
KC_UNROLL
  for (int i = 0; i < 4; ++i)
KC_UNROLL
    for (int j = 0; j < 4; ++j)
KC_UNROLL
      for (int h = 0; h < 2; ++h) {
        const int m = bm + wm * 64 + i * 16 + g + 8 * h;
        const int n = bn + wn * 32 + j * 8 + 2 * t;
        if (m >= m_rows || n >= n_cols) continue;
        T* p = out + static_cast<long long>(m) * n_cols + n;
        float v0 = alpha * acc[i][j][2 * h], v1 = alpha * acc[i][j][2 * h + 1];
        // beta == 0 never reads the output (it may hold garbage).
        if (pairs) {
          if (beta != 0.0f) {
            v0 += beta * load_out(p);
            v1 += beta * load_out(p + 1);
          }
          store_pair(p, v0, v1);
        } else {
          if (beta != 0.0f) v0 += beta * load_out(p);
          store_out(p, v0);
          if (n + 1 < n_cols) {
            if (beta != 0.0f) v1 += beta * load_out(p + 1);
            store_out(p + 1, v1);
          }
        }
      }
}

template <int BK, bool A_T, bool B_KN>
struct Tiles {
  // Enumerators, not static members: no storage is emitted for them.
  enum : int {
    A_ELEMS = A_T ? BK * (GEMM_BM + PAD) : GEMM_BM * (BK + PAD),
    B_ELEMS = B_KN ? BK * (GEMM_BN + PAD) : GEMM_BN * (BK + PAD)
  };
};

// Loads the A operand's k-tile kt: A logical [M][R]; stored [M][R] (lda) or, A_T, [R][M].
template <int BK, bool A_T>
__device__ __forceinline__ void load_a(bf16* s, const bf16* a, int lda, int bm, int kt, int m, int r, bool vec) {
  if (!A_T) {
    load_tile<GEMM_BM, BK>(s, a, lda, bm, kt * BK, m, r, vec);
  } else {
    load_tile<BK, GEMM_BM>(s, a, lda, kt * BK, bm, r, m, vec);
  }
}

// ---- plain bf16 GEMM -----------------------------------------------------------------------

#define BF_BK 32
#define BF_STAGES 4

// C[M][N] = alpha * Σ_r A[m][r]·B[r][n] + beta*C; layouts by A_T / B_KN (see warp_mma).
template <typename T, bool A_T, bool B_KN>
__device__ __forceinline__ void gemm_bf16(T* c, const bf16* a, const bf16* b, int m, int n, int r, int lda,
                                          int ldb, float alpha, float beta) {
  typedef Tiles<BF_BK, A_T, B_KN> TL;
  KC_DYNAMIC_SHARED(bf16, smem);
  bf16* sa = smem;
  bf16* sb = smem + BF_STAGES * TL::A_ELEMS;
  const int bm = blockIdx.y * GEMM_BM, bn = blockIdx.x * GEMM_BN;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, wm = warp / 4, wn = warp % 4;
  const bool va = lda % 8 == 0, vb = ldb % 8 == 0;
  const int kts = (r + BF_BK - 1) / BF_BK;

  float acc[4][4][4];
KC_UNROLL
  for (int i = 0; i < 4; ++i)
KC_UNROLL
    for (int j = 0; j < 4; ++j)
KC_UNROLL
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

  auto load_stage = [&](int kt) {
    const int s = kt % BF_STAGES;
    load_a<BF_BK, A_T>(sa + s * TL::A_ELEMS, a, lda, bm, kt, m, r, va);
    if (!B_KN) {
      load_tile<GEMM_BN, BF_BK>(sb + s * TL::B_ELEMS, b, ldb, bn, kt * BF_BK, n, r, vb);
    } else {
      load_tile<BF_BK, GEMM_BN>(sb + s * TL::B_ELEMS, b, ldb, kt * BF_BK, bn, r, n, vb);
    }
  };

  for (int kt = 0; kt < BF_STAGES - 1; ++kt) {
    if (kt < kts) load_stage(kt);
    kc::cp_async_commit();
  }
  for (int kt = 0; kt < kts; ++kt) {
    kc::cp_async_wait<BF_STAGES - 2>();
    // Tile kt is visible to every thread, and every warp is done with tile kt-1, whose stage
    // the next load overwrites.
    __syncthreads();
    if (kt + BF_STAGES - 1 < kts) load_stage(kt + BF_STAGES - 1);
    kc::cp_async_commit();  // possibly empty: keeps the group count per iteration fixed
    const int s = kt % BF_STAGES;
    warp_mma<BF_BK, A_T, B_KN>(acc, sa + s * TL::A_ELEMS, sb + s * TL::B_ELEMS, wm, wn, lane);
  }
  kc::cp_async_wait_all();
  epilogue(c, acc, bm, bn, wm, wn, lane, m, n, alpha, beta);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    gemm_bf16_nt_bf16(bf16* c, const bf16* a, const bf16* b, int m, int n, int k, int lda, int ldb,
                      float alpha, float beta) {
  gemm_bf16<bf16, false, false>(c, a, b, m, n, k, lda, ldb, alpha, beta);
}
extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    gemm_bf16_nt_f32(float* c, const bf16* a, const bf16* b, int m, int n, int k, int lda, int ldb,
                     float alpha, float beta) {
  gemm_bf16<float, false, false>(c, a, b, m, n, k, lda, ldb, alpha, beta);
}
extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    gemm_bf16_nn_bf16(bf16* c, const bf16* a, const bf16* b, int m, int n, int k, int lda, int ldb,
                      float alpha, float beta) {
  gemm_bf16<bf16, false, true>(c, a, b, m, n, k, lda, ldb, alpha, beta);
}
extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    gemm_bf16_nn_f32(float* c, const bf16* a, const bf16* b, int m, int n, int k, int lda, int ldb,
                     float alpha, float beta) {
  gemm_bf16<float, false, true>(c, a, b, m, n, k, lda, ldb, alpha, beta);
}
extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    gemm_bf16_tn_bf16(bf16* c, const bf16* a, const bf16* b, int m, int n, int k, int lda, int ldb,
                      float alpha, float beta) {
  gemm_bf16<bf16, true, true>(c, a, b, m, n, k, lda, ldb, alpha, beta);
}
extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    gemm_bf16_tn_f32(float* c, const bf16* a, const bf16* b, int m, int n, int k, int lda, int ldb,
                     float alpha, float beta) {
  gemm_bf16<float, true, true>(c, a, b, m, n, k, lda, ldb, alpha, beta);
}

// ---- NF4-dequantizing GEMM ------------------------------------------------------------------

#define NF_BK 64
#define NF_STAGES 3

// Forward (B_KN false): output C[M][N], reduction over K; the W tile is rows n (BN = 128) x
// cols k (BK = 64): one absmax block per row. Backward (B_KN true): output dX[M][K], reduction
// over N; the W tile is rows n (BK = 64) x cols k (BN = 128): two absmax blocks per row.
// The packed tile is [WR][WC/2] bytes; 256 threads each decode one 32-code row segment.
template <typename T, bool B_KN>
__device__ __forceinline__ void gemm_nf4(T* c, const bf16* a, const u8* packed, const u8* am_codes,
                                         const float* nested, const float* code_map, const float* table,
                                         float offset, int m, int n_w, int k_w, float alpha, float beta) {
  typedef Tiles<NF_BK, false, B_KN> TL;
  constexpr int WR = B_KN ? NF_BK : GEMM_BN;  // rows of W in a tile
  constexpr int WC = B_KN ? GEMM_BN : NF_BK;  // cols of W in a tile
  constexpr int PBYTES = WR * WC / 2;         // packed bytes per stage
  constexpr int SEGS = WC / 32;               // 32-code segments per tile row
  static_assert(WR * SEGS == GEMM_THREADS, "one segment per thread");
  KC_DYNAMIC_SHARED(bf16, smem);
  bf16* sa = smem;                                                        // NF_STAGES x A tile
  bf16* sw = sa + NF_STAGES * TL::A_ELEMS;                                // decoded W tile
  u8* sq = reinterpret_cast<u8*>(sw + TL::B_ELEMS);                       // NF_STAGES x packed
  float* s_table = reinterpret_cast<float*>(sq + NF_STAGES * PBYTES);     // 16
  float* s_map = s_table + 16;                                            // 256

  // Output dims and reduction length in GEMM terms.
  const int n_out = B_KN ? k_w : n_w;
  const int red = B_KN ? n_w : k_w;
  const int lda = red;
  const int bm = blockIdx.y * GEMM_BM, bn = blockIdx.x * GEMM_BN;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, wm = warp / 4, wn = warp % 4;
  const bool va = lda % 8 == 0;
  const int kts = (red + NF_BK - 1) / NF_BK;

  for (int i = threadIdx.x; i < 256; i += GEMM_THREADS) s_map[i] = code_map[i];
  if (threadIdx.x < 16) s_table[threadIdx.x] = table[threadIdx.x];

  // This thread's decode segment: tile row seg_r, tile cols seg_c .. seg_c + 31.
  const int seg_r = threadIdx.x / SEGS, seg_c = (threadIdx.x % SEGS) * 32;
  // W coordinates of the segment in k-tile kt, and whether it lies inside W.
  auto seg_row = [&](int kt) { return B_KN ? kt * NF_BK + seg_r : bn + seg_r; };
  auto seg_col = [&](int kt) { return B_KN ? bn + seg_c : kt * NF_BK + seg_c; };
  auto seg_in = [&](int kt) { return seg_row(kt) < n_w && seg_col(kt) < k_w; };
  // Raw double-quant inputs of the segment's block (the map lookup happens in shared memory).
  u32 am_code = 0;
  float am_nested = 0.0f;
  auto fetch_absmax = [&](int kt) {
    if (kt < kts && seg_in(kt)) {
      const long long blk = (static_cast<long long>(seg_row(kt)) * k_w + seg_col(kt)) / 64;
      am_code = am_codes[blk];
      am_nested = nested[blk >> 8];
    }
  };

  auto load_stage = [&](int kt) {
    const int s = kt % NF_STAGES;
    load_a<NF_BK, false>(sa + s * TL::A_ELEMS, a, lda, bm, kt, m, red, va);
    // Packed codes: WR rows x WC/2 bytes, 16-byte chunks (k_w % 64 == 0 keeps them aligned).
    constexpr int CH = PBYTES / 16;
KC_UNROLL
    for (int ch = threadIdx.x; ch < CH; ch += GEMM_THREADS) {
      const int r = ch / (WC / 32), cb = (ch % (WC / 32)) * 16;
      const int gr = B_KN ? kt * NF_BK + r : bn + r;
      const int gc = (B_KN ? bn : kt * NF_BK) + 2 * cb;
      const bool in = gr < n_w && gc < k_w;
      const u8* src = in ? packed + (static_cast<long long>(gr) * k_w + gc) / 2 : packed;
      kc::cp_async_16(sq + s * PBYTES + r * (WC / 2) + cb, src, in ? 16u : 0u);
    }
  };

  float acc[4][4][4];
KC_UNROLL
  for (int i = 0; i < 4; ++i)
KC_UNROLL
    for (int j = 0; j < 4; ++j)
KC_UNROLL
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

  for (int kt = 0; kt < NF_STAGES - 1; ++kt) {
    if (kt < kts) load_stage(kt);
    kc::cp_async_commit();
  }
  fetch_absmax(0);
  for (int kt = 0; kt < kts; ++kt) {
    kc::cp_async_wait<NF_STAGES - 2>();
    // Stage kt has landed for every thread; every warp is done reading the decoded tile and
    // the stage of kt-1.
    __syncthreads();
    const int s = kt % NF_STAGES;
    {
      // Decode 32 codes of one absmax block to bf16: bf16(fp32(table[q] * absmax)).
      bf16* dst = sw + seg_r * (WC + PAD) + seg_c;
      if (seg_in(kt)) {
        const float am = add_rn(mul_rn(s_map[am_code], am_nested), offset);
        const kc::u32x4 q = kc::load_u32x4(sq + s * PBYTES + seg_r * (WC / 2) + seg_c / 2);
        const u32 words[4] = {q.x, q.y, q.z, q.w};
KC_UNROLL
        for (int w = 0; w < 4; ++w) {
          u32 o[4];
KC_UNROLL
          for (int bI = 0; bI < 4; ++bI) {
            const u32 byte = (words[w] >> (8 * bI)) & 0xffu;
            o[bI] = kc::pack_bf16x2(mul_rn(s_table[byte >> 4], am), mul_rn(s_table[byte & 15u], am));
          }
          kc::store_u32x4(dst + 8 * w, kc::u32x4{o[0], o[1], o[2], o[3]});
        }
      } else {
        // Outside W: zeros (the code of 0.0 is not 0, and the other operand is zero here).
KC_UNROLL
        for (int w = 0; w < 4; ++w) kc::store_u32x4(dst + 8 * w, kc::u32x4{0u, 0u, 0u, 0u});
      }
    }
    if (kt + NF_STAGES - 1 < kts) load_stage(kt + NF_STAGES - 1);
    kc::cp_async_commit();
    fetch_absmax(kt + 1);  // in flight during the mma of this tile
    __syncthreads();       // the decoded tile is complete
    warp_mma<NF_BK, false, B_KN>(acc, sa + s * TL::A_ELEMS, sw, wm, wn, lane);
  }
  kc::cp_async_wait_all();
  epilogue(c, acc, bm, bn, wm, wn, lane, m, n_out, alpha, beta);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    nf4_gemm_fwd_bf16(bf16* y, const bf16* x, const u8* packed, const u8* am_codes, const float* nested,
                      const float* code_map, const float* table, float offset, int m, int n, int k,
                      float alpha, float beta) {
  gemm_nf4<bf16, false>(y, x, packed, am_codes, nested, code_map, table, offset, m, n, k, alpha, beta);
}
extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    nf4_gemm_fwd_f32(float* y, const bf16* x, const u8* packed, const u8* am_codes, const float* nested,
                     const float* code_map, const float* table, float offset, int m, int n, int k,
                     float alpha, float beta) {
  gemm_nf4<float, false>(y, x, packed, am_codes, nested, code_map, table, offset, m, n, k, alpha, beta);
}
extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    nf4_gemm_bwd_bf16(bf16* dx, const bf16* dy, const u8* packed, const u8* am_codes, const float* nested,
                      const float* code_map, const float* table, float offset, int m, int n, int k,
                      float alpha, float beta) {
  gemm_nf4<bf16, true>(dx, dy, packed, am_codes, nested, code_map, table, offset, m, n, k, alpha, beta);
}
extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    nf4_gemm_bwd_f32(float* dx, const bf16* dy, const u8* packed, const u8* am_codes, const float* nested,
                     const float* code_map, const float* table, float offset, int m, int n, int k,
                     float alpha, float beta) {
  gemm_nf4<float, true>(dx, dy, packed, am_codes, nested, code_map, table, offset, m, n, k, alpha, beta);
}
