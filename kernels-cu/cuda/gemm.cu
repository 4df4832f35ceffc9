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
//   nf4_dequant_{bf16,f32}: one thread per two elements (bitsandbytes' or the fragment layout). Memory bound:
//     0.5 B read + 2 B (bf16) or 4 B (f32) written per element; absmax/code map are cached.
//   nf4_quantize_{f32,bf16}: one warp per absmax block (max|a|, scale, 15-threshold bucketing,
//     packing); fp32 absmax out, double-quantized on the host (it is 1/64 of the elements).
//   gemm_bf16_{nt,nn,tn}_{bf16,f32}: C[M][N] = alpha*op(A)·op(B) + beta*C, bf16 in, fp32 accumulate.
//     nt: A[M][K], B[N][K] (C = A·Bᵀ, the forward of x·Wᵀ);
//     nn: A[M][K], B[K][N] (C = A·B, the input gradient dY·W);
//     tn: A[K][M], B[K][N] (C = Aᵀ·B, the weight gradient dYᵀ·X).
//   nf4_gemm_fwd_{bf16,f32}: Y[M][N] = alpha*X[M][K]·dequant(W[N][K])ᵀ + beta*Y.
//   nf4_gemm_bwd_{bf16,f32}: dX[M][K] = alpha*dY[M][N]·dequant(W[N][K]) + beta*dX.
//     (W's codes in the fragment layout; optional split-K with a fixed-order reduction.)
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
//   - NF4: the codes arrive in the fragment layout (repacked once at upload) by cp.async into the
//     ring and are decoded straight into the warps' B fragments (see the NF4 GEMM section); no
//     dequantized weight reaches shared or global memory. __launch_bounds__(256, 2): two blocks
//     per SM. Split-K over gridDim.z for grids that would leave the last wave mostly empty.
//   - shared memory: bf16 GEMM 4·(10240 + 10240) = 80 KiB worst case; NF4 3·(18432 + 4096 + 512)
//     + 1040 dynamic + 64 static = 69 KiB (two blocks per SM on sm_80 and sm_90, one on
//     sm_86/sm_89).
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
// Bytes of one 64 x 64 super-tile of a weight in the fragment layout (NF4 GEMM section).
#define NF_ST_BYTES 2048

__device__ __forceinline__ float nf4_absmax(const u8* am_codes, const float* nested, const float* code_map,
                                            float offset, long long b) {
  return kc::add_rn(kc::mul_rn(code_map[am_codes[b]], nested[b >> 8]), offset);
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

// Code of element (n, k) of a weight in the fragment layout (see the NF4 GEMM below) with
// kb_n = K/64 super-tiles per 64 rows.
__device__ __forceinline__ u32 fragment_code(const u8* packed, long long n, long long k, long long kb_n) {
  const long long st = (n / 64) * kb_n + k / 64;
  const int r = static_cast<int>(n % 64), cc = static_cast<int>(k % 64);
  const int lane = 4 * (r % 8) + (cc % 8) / 2;
  const int nib = 4 * ((r % 16) / 8) + 2 * ((cc % 16) / 8) + cc % 2;
  const u32 byte = packed[st * NF_ST_BYTES + (((r / 16) * 4 + cc / 16) * 32 + lane) * 4 + nib / 2];
  return nib % 2 != 0 ? byte >> 4 : byte & 15u;
}

// One thread per two consecutive elements. `k_frag` > 0: the codes are in the fragment layout
// of a [n / k_frag][k_frag] weight (k_frag % 64 == 0, blocksize 64); 0: bitsandbytes' layout.
template <typename T>
__device__ __forceinline__ void nf4_dequant(T* out, const u8* packed, const u8* am_codes, const float* nested,
                                            const float* code_map, const float* table, float offset, long long n,
                                            int blocksize, int k_frag) {
  const long long byte = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const long long i = 2 * byte;
  if (i >= n) return;
  // blocksize is even, so both elements of a pair share one absmax block.
  const float am = nf4_absmax(am_codes, nested, code_map, offset, i / blocksize);
  u32 q0, q1;
  if (k_frag > 0) {
    const long long row = i / k_frag, col = i % k_frag, kb_n = k_frag / 64;
    q0 = fragment_code(packed, row, col, kb_n);
    q1 = fragment_code(packed, row, col + 1, kb_n);  // k_frag is even: same row
  } else {
    const u32 q = packed[byte];
    q0 = q >> 4;
    q1 = q & 15u;
  }
  store_out(out + i, kc::mul_rn(table[q0], am));
  if (i + 1 < n) store_out(out + i + 1, kc::mul_rn(table[q1], am));
}

extern "C" __global__ void __launch_bounds__(256)
    nf4_dequant_bf16(bf16* out, const u8* packed, const u8* am_codes, const float* nested,
                     const float* code_map, const float* table, float offset, long long n, int blocksize,
                     int k_frag) {
  nf4_dequant(out, packed, am_codes, nested, code_map, table, offset, n, blocksize, k_frag);
}

extern "C" __global__ void __launch_bounds__(256)
    nf4_dequant_f32(float* out, const u8* packed, const u8* am_codes, const float* nested,
                    const float* code_map, const float* table, float offset, long long n, int blocksize,
                    int k_frag) {
  nf4_dequant(out, packed, am_codes, nested, code_map, table, offset, n, blocksize, k_frag);
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
        float x = partial ? a / clamped : kc::mul_rn(a, inv);
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
//
// The weight arrives repacked (kernels-cu ops::nf4_layout, done once at upload) into the order the
// mma fragments consume: W is cut into 64 x 64 super-tiles (rows n, cols k; super-tile (sn, sk) at
// byte (sn * K/64 + sk) * 2048, rows padded to a multiple of 64), each into 4 x 4 patches of 16 x 16.
// Lane l = 4g + t owns one u32 per patch: its 8 nibbles (bits 4i..4i+3) are
//   i = 0..3: W[g][2t], W[g][2t+1], W[g][2t+8], W[g][2t+9];  i = 4..7: the same columns of row g+8
// (patch coordinates), i.e. exactly the bf16 values of an m16n8k16 B fragment of the forward
// product (B[k][n] = W[n][k]) for two n8 tiles. Inside a super-tile the u32 of (patch row j,
// patch column p, lane) is at ((j * 4 + p) * 32 + lane) * 4: a warp's load of one patch is 128
// consecutive bytes (conflict free).
//
// Decode in registers (no shared-memory copy of the decoded tile): nibble -> table value (16
// fp32 in shared memory: 16 banks, conflict free) -> fp32 product with the row's absmax ->
// bf16 pair, the value dequantize_bf16 gives. The backward product needs the fragments of Wᵀ:
// the same registers transposed 8 x 8 by movmatrix.trans (four per patch), no second layout.
//
// Pipeline: NF_STAGES cp.async stages of the activation tile (128 x 64 bf16) and the packed
// codes (two super-tiles, 4 KiB); the absmax of a stage's 128 (row, block) pairs is decoded once
// per block into shared memory by threads 0..127, one stage ahead, from codes fetched two stages
// ahead. One barrier per k-tile (stage landed, previous stage free); decode and mma of a warp
// interleave freely, and __launch_bounds__(256, 2) keeps two blocks (16 warps) per SM so one
// warp's decode issues while another's mma runs.
//
// Split-K (gridDim.z = S > 1): block z reduces k-tiles [kts·z/S, kts·(z+1)/S), stores its fp32
// partial tile in part[z][tile of the launch][128][128], and the last of the S blocks of a tile to
// finish (counted by an atomic per tile, reset by that block for the next launch) sums the S
// partials in the fixed order z = 0..S-1 and applies α/β: the result does not depend on which
// block finishes last. A launch covers output-tile columns col0 .. col0 + gridDim.x, so that
// the columns of a grid's last, partial wave can run as a launch of their own, split along
// the reduction to fill the GPU (gemm::nf4_schedule), while the full waves run unsplit.

#ifdef KC_DEVICE
#define NF_NO_UNROLL _Pragma("unroll 1")
#define NF_UNROLL4 _Pragma("unroll 4")
#else
#define NF_NO_UNROLL
#define NF_UNROLL4
#endif

#define NF_BK 64
#define NF_STAGES 3
#define NF_MIN_BLOCKS 2
#define NF_MAX_SPLITS 16

// movmatrix.sync.aligned.m8n8.trans.b16: lane 4g + t holds row g, columns 2t, 2t+1 of an 8 x 8
// b16 matrix and receives row g, columns 2t, 2t+1 of its transpose. All 32 lanes must execute it.
__device__ __forceinline__ u32 movmatrix_trans(u32 x) {
#ifdef KC_DEVICE
  u32 r;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(r) : "r"(x));
  return r;
#else
  // Element (r, c) sits in lane 4r + c/2, half c%2; lane (g, t) wants (2t, g) and (2t+1, g).
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const u32 lo = __shfl_sync(0xffffffffu, x, 8 * t + g / 2);
  const u32 hi = __shfl_sync(0xffffffffu, x, 8 * t + 4 + g / 2);
  const int sh = 16 * (g % 2);
  return ((lo >> sh) & 0xffffu) | (((hi >> sh) & 0xffffu) << 16);
#endif
}

// ldmatrix.x4 of the A operand at `p`, whose shared-state-space address is `saddr` (computed by
// the caller from one base per k-tile, so that the offsets fold into the instruction instead of
// a generic-to-shared conversion per load). The emulator takes the pointer.
__device__ __forceinline__ void ldsm_x4(u32 r[4], const bf16* p, u32 saddr) {
#ifdef KC_DEVICE
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(saddr));
  (void)p;
#else
  kc::ldmatrix_x4(r, p);
  (void)saddr;
#endif
}

// Byte q of x, zero-extended (one PRMT on the device).
__device__ __forceinline__ u32 byte_of(u32 x, int q) {
#ifdef KC_DEVICE
  return __byte_perm(x, 0u, 0x4440u | static_cast<u32>(q));
#else
  return (x >> (8 * q)) & 0xffu;
#endif
}

// The four bf16 pairs of one packed patch word: o[0] = row g cols 2t.., o[1] = row g cols 2t+8..,
// o[2], o[3] the same for row g+8 (am_lo, am_hi: the rows' absmax). The nibbles become byte
// offsets into the 16-float table four at a time ((w << 2) & 0x3c3c3c3c holds 4·code of nibbles
// 0, 2, 4, 6 in its bytes; (w >> 2) & .. those of 1, 3, 5, 7), so an element costs a byte
// extract, the table load, the product and half a pack.
__device__ __forceinline__ void nf4_decode_word(u32 o[4], u32 w, float am_lo, float am_hi, const float* s_table) {
  const u32 even = (w << 2) & 0x3c3c3c3cu, odd = (w >> 2) & 0x3c3c3c3cu;
  const char* tab = reinterpret_cast<const char*>(s_table);
KC_UNROLL
  for (int q = 0; q < 4; ++q) {
    const float am = q < 2 ? am_lo : am_hi;
    const float v0 = kc::mul_rn(*reinterpret_cast<const float*>(tab + byte_of(even, q)), am);
    const float v1 = kc::mul_rn(*reinterpret_cast<const float*>(tab + byte_of(odd, q)), am);
    o[q] = kc::pack_bf16x2(v0, v1);
  }
}

// The launch's grid covers output-tile columns col0 .. col0 + gridDim.x (all rows of tiles):
// a launcher may run the columns of the last, partial wave as a second launch of their own
// with a reduction split. This block's tile within the launch, row-major over the grid.
__device__ __forceinline__ int nf4_launch_tile() { return blockIdx.y * gridDim.x + blockIdx.x; }

// Offset of split zz's fp32 partial of this block's tile: the launch's partials are dense
// 128 x 128 tiles, split-major (part[zz][launch tile][row in tile][column in tile]), so a
// launch's scratch is its own tiles' and not whole M x n_out planes.
__device__ __forceinline__ long long nf4_partial_tile(int zz) {
  return (static_cast<long long>(zz) * gridDim.x * gridDim.y + nf4_launch_tile()) * (GEMM_BM * GEMM_BN);
}

// Split-K, after this block stored its partial tile: the last of the `splits` blocks of the
// tile (counted by an atomic per tile, reset by that block for the next launch) sums the
// partials in the fixed order z = 0..S-1 and applies α/β, so the result does not depend on
// which block finishes last.
template <typename T>
__device__ __forceinline__ void nf4_split_reduce(T* c, const float* part, u32* counters, u32* s_last, int splits,
                                                 int m, int n_out, int bm, int bn, float alpha, float beta) {
  __threadfence();  // the partial is visible device-wide before the count says so
  __syncthreads();
  if (threadIdx.x == 0) {
    u32* ctr = counters + nf4_launch_tile();
    const u32 prev = atomicAdd(ctr, 1u);
    const u32 last = prev == static_cast<u32>(splits - 1) ? 1u : 0u;
    if (last) atomicExch(ctr, 0u);  // ready for the next launch
    *s_last = last;
  }
  __syncthreads();
  if (*s_last == 0u) return;
  __threadfence();  // acquire side: the other blocks' partials are read after their counts
  // Four consecutive elements of the tile per thread in turn (16-byte loads through L2), each
  // the sum of the S partials in the order z = 0..S-1 (this block's own read back too), then
  // α/β as in the epilogue. Every partial tile is written whole (elements outside the output
  // hold zeros), so every load reads stored data.
  for (int i4 = threadIdx.x; i4 < GEMM_BM * GEMM_BN / 4; i4 += GEMM_THREADS) {
    const int idx = 4 * i4;
    const int row = bm + idx / GEMM_BN, col = bn + idx % GEMM_BN;
    if (row >= m || col >= n_out) continue;
    float sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    // Unrolled so that several splits' loads are in flight before their sums.
NF_UNROLL4
    for (int zz = 0; zz < splits; ++zz) {
      const kc::f32x4 v = kc::load4_cg(part + nf4_partial_tile(zz) + idx);
      sum[0] += v.x;
      sum[1] += v.y;
      sum[2] += v.z;
      sum[3] += v.w;
    }
    const long long o = static_cast<long long>(row) * n_out + col;
KC_UNROLL
    for (int e = 0; e < 4; ++e) {
      if (col + e >= n_out) break;
      float v = alpha * sum[e];
      // beta == 0 never reads the output (it may hold garbage).
      if (beta != 0.0f) v += beta * load_out(c + o + e);
      store_out(c + o + e, v);
    }
  }
}

// Forward (BWD false): output C[M][N], reduction over K, the block's W rows are its output
// columns. Backward (BWD true): output dX[M][K], reduction over N, the block's W columns are its
// output columns. part/counters are used only when gridDim.z > 1.
template <typename T, bool BWD>
__device__ __forceinline__ void gemm_nf4(T* c, float* part, u32* counters, const bf16* a, const u8* packed,
                                         const u8* am_codes, const float* nested, const float* code_map,
                                         const float* table, float offset, int m, int n_w, int k_w, float alpha,
                                         float beta, int col0) {
  constexpr int A_ELEMS = GEMM_BM * (NF_BK + PAD);
  constexpr int Q_BYTES = 2 * NF_ST_BYTES;  // packed codes per stage
  KC_DYNAMIC_SHARED(bf16, smem);
  bf16* sa = smem;                                                          // NF_STAGES x A tile
  u8* sq = reinterpret_cast<u8*>(sa + NF_STAGES * A_ELEMS);                 // NF_STAGES x codes
  float* s_am = reinterpret_cast<float*>(sq + NF_STAGES * Q_BYTES);         // NF_STAGES x 128
  float* s_map = s_am + NF_STAGES * 128;                                    // 256
  u32* s_last = reinterpret_cast<u32*>(s_map + 256);                        // 1
  // Static, so that its address is a constant of the code: a table load is [offset + imm].
  __shared__ __align__(16) float s_table[16];

  const int n_out = BWD ? k_w : n_w;
  const int red = BWD ? n_w : k_w;
  const int kb_n = k_w / NF_BK;           // absmax blocks per W row = k super-tiles
  const int sn_n = (n_w + NF_BK - 1) / NF_BK;  // n super-tiles
  const int bm = blockIdx.y * GEMM_BM, bn = (col0 + blockIdx.x) * GEMM_BN;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, wm = warp / 4, wn = warp % 4, g = lane / 4;
  const bool va = red % 8 == 0;
  const int splits = gridDim.z, z = blockIdx.z;
  const int kts_all = (red + NF_BK - 1) / NF_BK;
  const int kt0 = static_cast<int>(static_cast<long long>(kts_all) * z / splits);
  const int kt1 = static_cast<int>(static_cast<long long>(kts_all) * (z + 1) / splits);
  const int kts = kt1 - kt0;

  for (int i = threadIdx.x; i < 256; i += GEMM_THREADS) s_map[i] = code_map[i];
  if (threadIdx.x < 16) s_table[threadIdx.x] = table[threadIdx.x];

  // Absmax entry e = threadIdx.x < 128 of a stage: forward, row bn + e of block kt; backward,
  // row 64·kt + e%64 of block bn/64 + e/64. Rows or blocks outside W get 0 (their codes are
  // padding; the activation columns they meet are zero-filled).
  const u32 sa_saddr = kc::smem_u32(sa);
  const int e = threadIdx.x;
  u32 am_code = 0;
  float am_nested = 0.0f;
  bool am_in = false;
  auto fetch_am = [&](int kt) {
    am_in = false;
    if (e < 128 && kt < kt1) {
      const int row = BWD ? kt * NF_BK + e % 64 : bn + e;
      const int kb = BWD ? bn / NF_BK + e / 64 : kt;
      if (row < n_w && kb < kb_n) {
        const long long blk = static_cast<long long>(row) * kb_n + kb;
        am_code = am_codes[blk];
        am_nested = nested[blk >> 8];
        am_in = true;
      }
    }
  };
  auto store_am = [&](int i) {
    if (e < 128) s_am[(i % NF_STAGES) * 128 + e] = am_in ? kc::add_rn(kc::mul_rn(s_map[am_code], am_nested), offset) : 0.0f;
  };

  // The activation tile: thread t copies column chunk t%8 of rows t/8 + 32·r (r = 0..3), so its
  // column, row validity and row pointer are fixed and only the k offset moves.
  const int a_row = threadIdx.x / 8, a_col = (threadIdx.x % 8) * 8;
  // Element offsets fit in 32 bits (the launcher checks M·K < 2³¹); a 32-bit base costs one
  // register where a pointer costs two.
  const int a_off = (bm + a_row) * red + a_col;
  auto load_a_tile = [&](bf16* dst, int kt) {
    if (!va) {
      load_a<NF_BK, false>(dst, a, red, bm, kt, m, red, false);
      return;
    }
    const int left = red - (kt * NF_BK + a_col);  // valid elements from the chunk start
    const u32 bytes = left >= 8 ? 16u : (left > 0 ? 2u * static_cast<u32>(left) : 0u);
    // Not unrolled: unrolled, ptxas keeps the four rows' addresses live across the k-loop and
    // spills at the 128-register cap.
NF_NO_UNROLL
    for (int r = 0; r < 4; ++r) {
      const bool in = bm + a_row + 32 * r < m && bytes > 0;
      // Off-the-edge chunks read nothing (src_bytes 0) but still need a valid address.
      const bf16* src = in ? a + (a_off + 32 * r * red + kt * NF_BK) : a;
      kc::cp_async_16(dst + (a_row + 32 * r) * (NF_BK + PAD) + a_col, src, in ? bytes : 0u);
    }
  };
  auto load_stage = [&](int i) {
    const int kt = kt0 + i, s = i % NF_STAGES;
    load_a_tile(sa + s * A_ELEMS, kt);
    // Two super-tiles, 128 16-byte chunks each: one chunk per thread.
    const int s2 = threadIdx.x / 128, off = (threadIdx.x % 128) * 16;
    const int sn = BWD ? kt : bn / NF_BK + s2;
    const int sk = BWD ? bn / NF_BK + s2 : kt;
    const bool in = BWD ? sk < kb_n : sn < sn_n;
    const u8* src = in ? packed + (static_cast<long long>(sn) * kb_n + sk) * NF_ST_BYTES + off : packed;
    kc::cp_async_16(sq + s * Q_BYTES + s2 * NF_ST_BYTES + off, src, in ? 16u : 0u);
  };

  float acc[4][4][4];
KC_UNROLL
  for (int i = 0; i < 4; ++i)
KC_UNROLL
    for (int j = 0; j < 4; ++j)
KC_UNROLL
      for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.0f;

  for (int i = 0; i < NF_STAGES - 1; ++i) {
    if (i < kts) load_stage(i);
    kc::cp_async_commit();
  }
  fetch_am(kt0);
  __syncthreads();  // s_map is complete
  store_am(0);
  fetch_am(kt0 + 1);
  for (int i = 0; i < kts; ++i) {
    kc::cp_async_wait<NF_STAGES - 2>();
    // Stage i (codes, activations, absmax) is visible to every thread; every warp is done with
    // stage i-1, which the next load and absmax store overwrite.
    __syncthreads();
    if (i + NF_STAGES - 1 < kts) load_stage(i + NF_STAGES - 1);
    kc::cp_async_commit();  // possibly empty: keeps the group count per iteration fixed
    store_am(i + 1);
    const int s = i % NF_STAGES;
    const bf16* sa_s = sa + s * A_ELEMS;
    // This lane's ldmatrix row of the warp's A tile: row wm·64 + lane%16, column 8·(lane/16).
    const int a_lane = (wm * 64 + lane % 16) * (NF_BK + PAD) + 8 * (lane / 16);
    const u32 a_saddr = sa_saddr + static_cast<u32>((s * A_ELEMS + a_lane) * 2);
    const u8* sq_s = sq + s * Q_BYTES + (wn / 2) * NF_ST_BYTES;
    const float* am_s = s_am + s * 128;
    if (!BWD) {
      // The warp's 32 W rows are patch rows j = 2·(wn%2) + jj of super-tile wn/2; the k16 step
      // p is patch column p.
KC_UNROLL
      for (int p = 0; p < 4; ++p) {
        u32 b[4][2];
KC_UNROLL
        for (int jj = 0; jj < 2; ++jj) {
          const int j = 2 * (wn % 2) + jj;
          u32 o[4];
          // The word and the rows' absmax are loaded where they are used (registers: two
          // blocks per SM allow 128); the absmax loads are broadcasts.
          nf4_decode_word(o, *reinterpret_cast<const u32*>(sq_s + ((j * 4 + p) * 32 + lane) * 4),
                          am_s[wn * 32 + jj * 16 + g], am_s[wn * 32 + jj * 16 + g + 8], s_table);
          b[2 * jj][0] = o[0];
          b[2 * jj][1] = o[1];
          b[2 * jj + 1][0] = o[2];
          b[2 * jj + 1][1] = o[3];
        }
KC_UNROLL
        for (int mi = 0; mi < 4; ++mi) {
          u32 af[4];
          const int off = mi * 16 * (NF_BK + PAD) + 16 * p;
          ldsm_x4(af, sa_s + a_lane + off, a_saddr + static_cast<u32>(off * 2));
KC_UNROLL
          for (int nj = 0; nj < 4; ++nj) kc::mma_m16n8k16_bf16(acc[mi][nj], af, b[nj], acc[mi][nj]);
        }
      }
    } else {
      // The warp's 32 output columns are patch columns 2·(wn%2), +1 of super-tile wn/2; the
      // k16 step j is patch row j (W rows 16j..16j+15 of the k-tile).
KC_UNROLL
      for (int j = 0; j < 4; ++j) {
        const float am_lo = am_s[(wn / 2) * 64 + j * 16 + g];
        const float am_hi = am_s[(wn / 2) * 64 + j * 16 + g + 8];
        u32 b[4][2];
KC_UNROLL
        for (int pp = 0; pp < 2; ++pp) {
          u32 o[4];
          const int p = 2 * (wn % 2) + pp;
          nf4_decode_word(o, *reinterpret_cast<const u32*>(sq_s + ((j * 4 + p) * 32 + lane) * 4), am_lo, am_hi,
                          s_table);
          b[2 * pp][0] = movmatrix_trans(o[0]);
          b[2 * pp][1] = movmatrix_trans(o[2]);
          b[2 * pp + 1][0] = movmatrix_trans(o[1]);
          b[2 * pp + 1][1] = movmatrix_trans(o[3]);
        }
        // One A fragment live at a time (registers: two blocks per SM allow 128).
KC_UNROLL
        for (int mi = 0; mi < 4; ++mi) {
          u32 af[4];
          const int off = mi * 16 * (NF_BK + PAD) + 16 * j;
          ldsm_x4(af, sa_s + a_lane + off, a_saddr + static_cast<u32>(off * 2));
KC_UNROLL
          for (int nj = 0; nj < 4; ++nj) kc::mma_m16n8k16_bf16(acc[mi][nj], af, b[nj], acc[mi][nj]);
        }
      }
    }
    // Fetched after the products so that the raw codes hold no registers during them; they
    // are consumed after the next barrier.
    fetch_am(kt0 + i + 2);
  }
  kc::cp_async_wait_all();
  if (splits == 1) {
    epilogue(c, acc, bm, bn, wm, wn, lane, m, n_out, alpha, beta);
    return;
  }

  // Split-K: publish this block's partial tile, then let the last block of the tile reduce.
  float* part_tile = part + nf4_partial_tile(z);
  const int t = lane % 4;
KC_UNROLL
  for (int i = 0; i < 4; ++i)
KC_UNROLL
    for (int j = 0; j < 4; ++j)
KC_UNROLL
      for (int h = 0; h < 2; ++h) {
        // The whole tile, also outside the output (zeros there: zero-filled activation rows,
        // zero absmax), so that the reduction reads only stored data.
        const int r = wm * 64 + i * 16 + g + 8 * h, cc = wn * 32 + j * 8 + 2 * t;
        kc::store_u32x2(part_tile + r * GEMM_BN + cc,
                        kc::u32x2{__float_as_uint(acc[i][j][2 * h]), __float_as_uint(acc[i][j][2 * h + 1])});
      }
  nf4_split_reduce(c, part, counters, s_last, splits, m, n_out, bm, bn, alpha, beta);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, NF_MIN_BLOCKS)
    nf4_gemm_fwd_bf16(bf16* out, float* part, u32* counters, const bf16* a, const u8* packed, const u8* am_codes,
           const float* nested, const float* code_map, const float* table, float offset, int m, int n, int k,
           float alpha, float beta, int col0) {
  gemm_nf4<bf16, false>(out, part, counters, a, packed, am_codes, nested, code_map, table, offset, m, n, k, alpha,
                    beta, col0);
}
extern "C" __global__ void __launch_bounds__(GEMM_THREADS, NF_MIN_BLOCKS)
    nf4_gemm_fwd_f32(float* out, float* part, u32* counters, const bf16* a, const u8* packed, const u8* am_codes,
           const float* nested, const float* code_map, const float* table, float offset, int m, int n, int k,
           float alpha, float beta, int col0) {
  gemm_nf4<float, false>(out, part, counters, a, packed, am_codes, nested, code_map, table, offset, m, n, k, alpha,
                    beta, col0);
}
extern "C" __global__ void __launch_bounds__(GEMM_THREADS, NF_MIN_BLOCKS)
    nf4_gemm_bwd_bf16(bf16* out, float* part, u32* counters, const bf16* a, const u8* packed, const u8* am_codes,
           const float* nested, const float* code_map, const float* table, float offset, int m, int n, int k,
           float alpha, float beta, int col0) {
  gemm_nf4<bf16, true>(out, part, counters, a, packed, am_codes, nested, code_map, table, offset, m, n, k, alpha,
                    beta, col0);
}
extern "C" __global__ void __launch_bounds__(GEMM_THREADS, NF_MIN_BLOCKS)
    nf4_gemm_bwd_f32(float* out, float* part, u32* counters, const bf16* a, const u8* packed, const u8* am_codes,
           const float* nested, const float* code_map, const float* table, float offset, int m, int n, int k,
           float alpha, float beta, int col0) {
  gemm_nf4<float, true>(out, part, counters, a, packed, am_codes, nested, code_map, table, offset, m, n, k, alpha,
                    beta, col0);
}

// ---- NF4-dequantizing GEMM on the warpgroup MMA (sm_90a) ----------------------------------
//
// The transposed products per 128 x 128 tile (the same grid, split-K and epilogue contract as
// nf4_gemm_{fwd,bwd}_*): forward Yᵀ = W·Xᵀ (out-features are the MMA's M, tokens its N),
// backward dXᵀ = Wᵀ·dYᵀ (in-features are M). Warpgroup q of the block's two (256 threads) owns
// 64 of the block's 128 output columns. Forward: W super-tile q of the block's rows; warp w
// decodes patch row j = w, and the patch word of (j, k16 step p) is the A fragment of the
// m16n8k16 layout that wgmma.m64nNk16 takes from registers (o[0], o[2], o[1], o[3] of
// nf4_decode_word, since o holds row g, row g + 8 pairs by column half). Backward: super-tile
// column q of the block's columns; warp w decodes patch column p = w, and the A fragment of
// Wᵀ for k16 step j (patch row j) is the four quadrants transposed by movmatrix.trans (o[0],
// o[1], o[2], o[3] become Wᵀ's quadrants 0, 1, 2, 3). The activation tile (X or dY) is B, read by the tensor cores from shared memory through a descriptor: 128
// token rows of 64 k (128 bytes) in the 128-byte swizzle layout (16-byte chunk c of row r at
// chunk c ^ (r % 8); 8-row groups 1024 bytes apart; the tile at a 1024-byte boundary), one
// k16 step 32 bytes further along the row. No ldmatrix, and the B operand never passes
// through registers: per k-tile a warpgroup issues 4 wgmma.m64n128k16.
//
// Pipeline as in the mma.sync kernel (NF_STAGES cp.async stages, one barrier per k-tile), plus
// the async-proxy rules: each thread fences its landed activation chunks
// (fence.proxy.async.shared::cta) before the barrier that precedes the wgmma, and every
// warpgroup retires its wgmma of a stage (wgmma.wait_group 0) before the next barrier, after
// which that stage is refilled.
#if KC_HAS_WGMMA
#define NFW_X_BYTES (GEMM_BM * NF_BK * 2)

template <typename T, bool BWD>
__device__ __forceinline__ void gemm_nf4_wgmma(T* c, float* part, u32* counters, const bf16* a, const u8* packed,
                                                   const u8* am_codes, const float* nested, const float* code_map,
                                                   const float* table, float offset, int m, int n_w, int k_w,
                                                   float alpha, float beta, int col0) {
  constexpr int Q_BYTES = 2 * NF_ST_BYTES;
  KC_DYNAMIC_SHARED(u8, smem_raw);
  // The swizzle acts on shared-memory address bits 4..9: the tiles start at a 1024-byte boundary.
  const u32 pad = (1024u - (kc::smem_u32(smem_raw) & 1023u)) & 1023u;
  u8* sx = smem_raw + pad;                                          // NF_STAGES x activation tile
  u8* sq = sx + NF_STAGES * NFW_X_BYTES;                            // NF_STAGES x codes
  float* s_am = reinterpret_cast<float*>(sq + NF_STAGES * Q_BYTES);  // NF_STAGES x 128
  float* s_map = s_am + NF_STAGES * 128;                            // 256
  u32* s_last = reinterpret_cast<u32*>(s_map + 256);                // 1
  __shared__ __align__(16) float s_table[16];

  const int n_out = BWD ? k_w : n_w;
  const int red = BWD ? n_w : k_w;
  const int kb_n = k_w / NF_BK;
  const int sn_n = (n_w + NF_BK - 1) / NF_BK;
  const int bm = blockIdx.y * GEMM_BM, bn = (col0 + blockIdx.x) * GEMM_BN;
  const int lane = threadIdx.x % 32, q = threadIdx.x / 128, w = (threadIdx.x % 128) / 32, g = lane / 4, t = lane % 4;
  const int splits = gridDim.z, z = blockIdx.z;
  const int kts_all = (red + NF_BK - 1) / NF_BK;
  const int kt0 = static_cast<int>(static_cast<long long>(kts_all) * z / splits);
  const int kt1 = static_cast<int>(static_cast<long long>(kts_all) * (z + 1) / splits);
  const int kts = kt1 - kt0;

  for (int i = threadIdx.x; i < 256; i += GEMM_THREADS) s_map[i] = code_map[i];
  if (threadIdx.x < 16) s_table[threadIdx.x] = table[threadIdx.x];

  // Absmax entry e = threadIdx.x < 128 of a stage: forward, row bn + e of block kt; backward,
  // row 64·kt + e%64 of block bn/64 + e/64 (0 outside W).
  const int e = threadIdx.x;
  u32 am_code = 0;
  float am_nested = 0.0f;
  bool am_in = false;
  auto fetch_am = [&](int kt) {
    am_in = false;
    const int row = BWD ? kt * NF_BK + e % 64 : bn + e;
    const int kb = BWD ? bn / NF_BK + e / 64 : kt;
    if (e < 128 && kt < kt1 && row < n_w && kb < kb_n) {
      const long long blk = static_cast<long long>(row) * kb_n + kb;
      am_code = am_codes[blk];
      am_nested = nested[blk >> 8];
      am_in = true;
    }
  };
  auto store_am = [&](int i) {
    if (e < 128) s_am[(i % NF_STAGES) * 128 + e] = am_in ? kc::add_rn(kc::mul_rn(s_map[am_code], am_nested), offset) : 0.0f;
  };

  // Activations: thread t copies reduction chunk t%8 of token rows t/8 + 32·r (r = 0..3); the
  // rows share r % 8, so the swizzled chunk position is fixed per thread. The reduction length
  // is a multiple of 8 (the launcher checks it): a chunk is whole, partly past the end
  // (zero-filled beyond), or wholly past it; rows past M are zero-filled.
  const int a_row = threadIdx.x / 8, a_chunk = threadIdx.x % 8;
  const int x_dst = a_row * 128 + 16 * (a_chunk ^ (a_row % 8));
  const int a_off = (bm + a_row) * red + 8 * a_chunk;
  auto load_stage = [&](int i) {
    const int kt = kt0 + i, s = i % NF_STAGES;
    const int left = red - (kt * NF_BK + 8 * a_chunk);
    const u32 bytes = left >= 8 ? 16u : (left > 0 ? 2u * static_cast<u32>(left) : 0u);
NF_NO_UNROLL
    for (int r = 0; r < 4; ++r) {
      const bool in = bm + a_row + 32 * r < m && bytes > 0;
      const bf16* src = in ? a + (a_off + 32 * r * red + kt * NF_BK) : a;
      kc::cp_async_16(sx + s * NFW_X_BYTES + x_dst + 32 * r * 128, src, in ? bytes : 0u);
    }
    const int s2 = threadIdx.x / 128, off = (threadIdx.x % 128) * 16;
    const int sn = BWD ? kt : bn / NF_BK + s2;
    const int sk = BWD ? bn / NF_BK + s2 : kt;
    const bool in = BWD ? sk < kb_n : sn < sn_n;
    const u8* src = in ? packed + (static_cast<long long>(sn) * kb_n + sk) * NF_ST_BYTES + off : packed;
    kc::cp_async_16(sq + s * Q_BYTES + s2 * NF_ST_BYTES + off, src, in ? 16u : 0u);
  };

  // d[4j + i]: output column bn + 64q + 16w + g + 8·(i/2), token bm + 8j + 2t + i%2 (wgmma D
  // layout).
  float acc[64];
KC_UNROLL
  for (int i = 0; i < 64; ++i) acc[i] = 0.0f;

  for (int i = 0; i < NF_STAGES - 1; ++i) {
    if (i < kts) load_stage(i);
    kc::cp_async_commit();
  }
  fetch_am(kt0);
  __syncthreads();  // s_map is complete
  store_am(0);
  fetch_am(kt0 + 1);
  const u32 sx_saddr = kc::smem_u32(sx);
  for (int i = 0; i < kts; ++i) {
    kc::cp_async_wait<NF_STAGES - 2>();
    // This thread's chunks of stage i, written through the generic proxy, are ordered before
    // the tensor cores' (async proxy) reads; the barrier then makes every thread's visible, and
    // every warpgroup has retired its wgmma of stage i-1, which the next load overwrites.
    kc::fence_proxy_async();
    __syncthreads();
    if (i + NF_STAGES - 1 < kts) load_stage(i + NF_STAGES - 1);
    kc::cp_async_commit();
    store_am(i + 1);
    const int s = i % NF_STAGES;
    const u8* sq_s = sq + s * Q_BYTES + q * NF_ST_BYTES;
    const float* am_s = s_am + s * 128 + 64 * q;
    // Each k16 step's A fragment is decoded and its product issued at once, so that the
    // tensor cores work on step p while the warps decode step p + 1 (wgmma.fence orders the
    // fresh fragment registers before the product that reads them; it does not wait for the
    // products in flight). The four fragments stay distinct registers until the wait below.
    u32 af[4][4];
KC_UNROLL
    for (int j = 0; j < 64; ++j) kc::wgmma_fence_operand(acc[j]);
KC_UNROLL
    for (int p = 0; p < 4; ++p) {
      u32 o[4];
      if (!BWD) {
        // k16 step p: patch (w, p), rows 16w + g, 16w + g + 8.
        nf4_decode_word(o, *reinterpret_cast<const u32*>(sq_s + ((w * 4 + p) * 32 + lane) * 4), am_s[16 * w + g],
                        am_s[16 * w + g + 8], s_table);
        af[p][0] = o[0];
        af[p][1] = o[2];
        af[p][2] = o[1];
        af[p][3] = o[3];
      } else {
        // k16 step p: patch (p, w), W rows 16p + g, 16p + g + 8 of the k-tile.
        nf4_decode_word(o, *reinterpret_cast<const u32*>(sq_s + ((p * 4 + w) * 32 + lane) * 4), am_s[16 * p + g],
                        am_s[16 * p + g + 8], s_table);
KC_UNROLL
        for (int r = 0; r < 4; ++r) af[p][r] = movmatrix_trans(o[r]);
      }
      kc::wgmma_fence();
      const kc::u64 desc = kc::wgmma_desc(sx_saddr + static_cast<u32>(s * NFW_X_BYTES + 32 * p), 16u, 1024u,
                                          kc::WGMMA_SWIZZLE_128B);
      kc::wgmma_m64k16_bf16_rs<128>(acc, af[p], desc, 1);
    }
    kc::wgmma_commit();
    kc::wgmma_wait<0>();
KC_UNROLL
    for (int j = 0; j < 64; ++j) kc::wgmma_fence_operand(acc[j]);
    fetch_am(kt0 + i + 2);
  }
  kc::cp_async_wait_all();

  const int feat0 = bn + 64 * q + 16 * w + g;
  if (splits == 1) {
KC_UNROLL
    for (int i = 0; i < 64; ++i) {
      const int feat = feat0 + 8 * ((i >> 1) & 1), tok = bm + 8 * (i >> 2) + 2 * t + (i & 1);
      if (tok >= m || feat >= n_out) continue;
      T* p = c + static_cast<long long>(tok) * n_out + feat;
      float v = alpha * acc[i];
      // beta == 0 never reads the output (it may hold garbage).
      if (beta != 0.0f) v += beta * load_out(p);
      store_out(p, v);
    }
    return;
  }
  // The whole tile, also outside the output (zeros there), so that the reduction reads only
  // stored data.
  float* part_tile = part + nf4_partial_tile(z);
KC_UNROLL
  for (int i = 0; i < 64; ++i) {
    const int feat = feat0 + 8 * ((i >> 1) & 1), tok = bm + 8 * (i >> 2) + 2 * t + (i & 1);
    part_tile[(tok - bm) * GEMM_BN + (feat - bn)] = acc[i];
  }
  nf4_split_reduce(c, part, counters, s_last, splits, m, n_out, bm, bn, alpha, beta);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, NF_MIN_BLOCKS)
    nf4_gemm_fwd_wgmma_bf16(bf16* out, float* part, u32* counters, const bf16* a, const u8* packed,
                            const u8* am_codes, const float* nested, const float* code_map, const float* table,
                            float offset, int m, int n, int k, float alpha, float beta, int col0) {
  gemm_nf4_wgmma<bf16, false>(out, part, counters, a, packed, am_codes, nested, code_map, table, offset, m, n, k, alpha,
                           beta, col0);
}
extern "C" __global__ void __launch_bounds__(GEMM_THREADS, NF_MIN_BLOCKS)
    nf4_gemm_fwd_wgmma_f32(float* out, float* part, u32* counters, const bf16* a, const u8* packed,
                           const u8* am_codes, const float* nested, const float* code_map, const float* table,
                           float offset, int m, int n, int k, float alpha, float beta, int col0) {
  gemm_nf4_wgmma<float, false>(out, part, counters, a, packed, am_codes, nested, code_map, table, offset, m, n, k, alpha,
                            beta, col0);
}
extern "C" __global__ void __launch_bounds__(GEMM_THREADS, NF_MIN_BLOCKS)
    nf4_gemm_bwd_wgmma_bf16(bf16* out, float* part, u32* counters, const bf16* a, const u8* packed,
                            const u8* am_codes, const float* nested, const float* code_map, const float* table,
                            float offset, int m, int n, int k, float alpha, float beta, int col0) {
  gemm_nf4_wgmma<bf16, true>(out, part, counters, a, packed, am_codes, nested, code_map, table, offset, m, n, k, alpha,
                             beta, col0);
}
extern "C" __global__ void __launch_bounds__(GEMM_THREADS, NF_MIN_BLOCKS)
    nf4_gemm_bwd_wgmma_f32(float* out, float* part, u32* counters, const bf16* a, const u8* packed,
                           const u8* am_codes, const float* nested, const float* code_map, const float* table,
                           float offset, int m, int n, int k, float alpha, float beta, int col0) {
  gemm_nf4_wgmma<float, true>(out, part, counters, a, packed, am_codes, nested, code_map, table, offset, m, n, k,
                              alpha, beta, col0);
}
#endif  // KC_HAS_WGMMA
