// LayerNorm over the last dimension (Falcon: d = 4544, rows = batch*seq = 1024), fp32 math,
// x/y/γ/β in f32 or bf16, per-row statistics saved in f32 for the backward.
//
//   forward   mean = Σx/d, var = Σ(x-mean)²/d (biased), rstd = 1/sqrt(var+eps),
//             y = (x-mean)·rstd·γ + β
//   backward  x̂ = (x-mean)·rstd, ĝ = dy·γ,
//             dx = rstd·(ĝ - mean(ĝ) - x̂·mean(ĝ·x̂)), dγ = Σ_rows dy·x̂, dβ = Σ_rows dy
//
// Cost (bf16, Falcon row): forward reads x (2d B) + γ,β (L2-resident) and writes y (2d B):
// ~4 B/element, 8 FLOP/element: purely bandwidth-bound (1024x4544 bf16 = 18.6 MB, ~5 µs at
// 4 TB/s). Backward reads x, dy (4 B/el) and writes dx (2 B/el).
//
// Design:
//  - layernorm_fwd_*: one block of LN_BLOCK threads per row. The row is staged once in dynamic
//    shared memory as f32 (d·4 bytes; 18 KB for d = 4544), so the two-pass mean/variance (exact
//    like the CPU reference, no E[x²]-E[x]² cancellation) reads global memory once. Each thread
//    reads back only the shared slots it wrote, so only the reductions need barriers.
//  - layernorm_bwd_*: a grid of G blocks (G a pure function of rows, see the launcher); block b
//    takes rows b, b+G, ... For each row: one pass for Σĝ, Σĝx̂ (block reduction), one pass for
//    dx. dγ/dβ: each thread owns a fixed set of columns and accumulates them in row order, then
//    writes the block's partial row. No float atomics. The accumulators of the first
//    LN_BWD_SMEM_COLS columns live in shared memory (2·min(d, LN_BWD_SMEM_COLS) f32: 96 KiB at
//    most, under the 99 KiB opt-in maximum of sm_86/sm_89); wider rows (Falcon-180B, d = 14848)
//    accumulate the rest in place in the block's own partial row in global memory (L2-resident,
//    owned by one thread per column, so no barrier). Where a column is kept does not change
//    its sum order, so the results are the same bits either way.
//  - layernorm_bwd_reduce: dγ[j] = Σ_b partial[b][j] in block order (one thread per column,
//    coalesced), so dγ/dβ are bitwise reproducible for a given G.
//  - Widths that are a multiple of 8 (every Falcon's) with 16-byte-aligned arrays move eight
//    elements per access (one 16-byte vector of bf16, two of f32; shared memory likewise, four
//    wavefronts per warp), others one at a time: a thread owns the same elements in every pass,
//    so the scalar and vector paths differ only in the order of the per-thread partial sums.
#include "common.cuh"

using kc::bf16;
using kc::ld;
using kc::st;

#define LN_BLOCK 256
// Columns whose dγ/dβ partials the backward keeps in shared memory (see the design above).
#define LN_BWD_SMEM_COLS 12288

// Sum over the block, returned in every thread. Every warp reduces the per-warp sums in the same
// order, so all threads get the same bits. Ends with a barrier so `ws` can be reused at once.
__device__ __forceinline__ float block_sum_all(float v) {
  __shared__ float ws[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
  v = kc::warp_sum(v);
  if (lane == 0) ws[warp] = v;
  __syncthreads();
  float t = lane < nw ? ws[lane] : 0.0f;
  t = kc::warp_sum(t);
  __syncthreads();
  return t;
}

// W elements per access: 8 (16-byte vectors, see `vec8`) or 1. Thread j owns elements
// [W·j, W·j + W) + k·W·blockDim.x of a row, in every pass.
using kc::ldw;
using kc::stw;

// The vector path applies when rows are a multiple of 8 elements and the arrays 16-byte
// aligned (every row start then is too); the same for every block, so the branch is uniform.
__device__ __forceinline__ bool vec8(int d, const void* a, const void* b, const void* c,
                                     const void* e, const void* f = nullptr,
                                     const void* g = nullptr) {
  return d % 8 == 0 && kc::aligned16(a) && kc::aligned16(b) && kc::aligned16(c) &&
         kc::aligned16(e) && kc::aligned16(f) && kc::aligned16(g);
}

template <int W, class T>
__device__ __forceinline__ void ln_fwd(T* y, float* mean, float* rstd, const T* x, const T* gamma,
                                       const T* beta, int d, float eps) {
  KC_DYNAMIC_SHARED(float, xs);
  const long long row = blockIdx.x;
  const T* xr = x + row * d;
  T* yr = y + row * d;
  const int first = W * threadIdx.x, stride = W * blockDim.x;
  float s = 0.0f;
  for (int i = first; i < d; i += stride) {
    float v[W];
    ldw<W>(xr + i, v);
    stw<W>(xs + i, v);
KC_UNROLL
    for (int k = 0; k < W; ++k) s += v[k];
  }
  const float inv_d = 1.0f / static_cast<float>(d);
  const float mu = block_sum_all(s) * inv_d;
  float s2 = 0.0f;
  for (int i = first; i < d; i += stride) {
    float v[W];
    ldw<W>(xs + i, v);
KC_UNROLL
    for (int k = 0; k < W; ++k) s2 += (v[k] - mu) * (v[k] - mu);
  }
  const float rs = 1.0f / sqrtf(block_sum_all(s2) * inv_d + eps);
  for (int i = first; i < d; i += stride) {
    float v[W], g[W], b[W];
    ldw<W>(xs + i, v);
    ldw<W>(gamma + i, g);
    ldw<W>(beta + i, b);
KC_UNROLL
    for (int k = 0; k < W; ++k) v[k] = (v[k] - mu) * rs * g[k] + b[k];
    stw<W>(yr + i, v);
  }
  if (threadIdx.x == 0) {
    mean[row] = mu;
    rstd[row] = rs;
  }
}

template <class T>
__device__ __forceinline__ void ln_fwd(T* y, float* mean, float* rstd, const T* x, const T* gamma,
                                       const T* beta, int d, float eps) {
  if (vec8(d, y, x, gamma, beta))
    ln_fwd<8>(y, mean, rstd, x, gamma, beta, d, eps);
  else
    ln_fwd<1>(y, mean, rstd, x, gamma, beta, d, eps);
}

// grid = rows, block = LN_BLOCK, dynamic shared = d·4 bytes.
extern "C" __global__ void __launch_bounds__(LN_BLOCK)
    layernorm_fwd_f32(float* y, float* mean, float* rstd, const float* x, const float* gamma,
                      const float* beta, int d, float eps) {
  ln_fwd(y, mean, rstd, x, gamma, beta, d, eps);
}

extern "C" __global__ void __launch_bounds__(LN_BLOCK)
    layernorm_fwd_bf16(bf16* y, float* mean, float* rstd, const bf16* x, const bf16* gamma,
                       const bf16* beta, int d, float eps) {
  ln_fwd(y, mean, rstd, x, gamma, beta, d, eps);
}

template <int W, class T>
__device__ __forceinline__ void ln_bwd(T* dx, float* part_dg, float* part_db, const T* x,
                                       const T* gamma, const float* mean, const float* rstd,
                                       const T* dy, int rows, int d) {
  KC_DYNAMIC_SHARED(float, acc);
  const int sc = d < LN_BWD_SMEM_COLS ? d : LN_BWD_SMEM_COLS;
  const long long poff = static_cast<long long>(blockIdx.x) * d;
  // Column i's accumulators: shared memory below sc, the block's partial row from sc on (sc
  // is a multiple of 8, so a vector of W columns lies on one side).
  float* glob_g = part_dg + poff;
  float* glob_b = part_db + poff;
  const int first = W * threadIdx.x, stride = W * blockDim.x;
  // Each thread reads and writes only its own columns' accumulators (no barrier), W at a time.
  auto acc_g = [&](int i) { return i < sc ? acc + i : glob_g + i; };
  auto acc_b = [&](int i) { return i < sc ? acc + sc + i : glob_b + i; };
  const float zero[W] = {};
  for (int i = first; i < d; i += stride) {
    stw<W>(acc_g(i), zero);
    stw<W>(acc_b(i), zero);
  }
  const float inv_d = 1.0f / static_cast<float>(d);
  for (int r = blockIdx.x; r < rows; r += gridDim.x) {
    const long long off = static_cast<long long>(r) * d;
    const float mu = mean[r], rs = rstd[r];
    float sg = 0.0f, sgx = 0.0f;
    for (int i = first; i < d; i += stride) {
      float xv[W], g[W], ga[W], ag[W], ab[W];
      ldw<W>(x + off + i, xv);
      ldw<W>(dy + off + i, g);
      ldw<W>(gamma + i, ga);
      ldw<W>(acc_g(i), ag);
      ldw<W>(acc_b(i), ab);
KC_UNROLL
      for (int k = 0; k < W; ++k) {
        const float xh = (xv[k] - mu) * rs;
        const float gh = g[k] * ga[k];
        sg += gh;
        sgx += gh * xh;
        ag[k] += g[k] * xh;
        ab[k] += g[k];
      }
      stw<W>(acc_g(i), ag);
      stw<W>(acc_b(i), ab);
    }
    const float mg = block_sum_all(sg) * inv_d;
    const float mgx = block_sum_all(sgx) * inv_d;
    for (int i = first; i < d; i += stride) {
      float xv[W], g[W], ga[W];
      ldw<W>(x + off + i, xv);
      ldw<W>(dy + off + i, g);
      ldw<W>(gamma + i, ga);
KC_UNROLL
      for (int k = 0; k < W; ++k) {
        const float xh = (xv[k] - mu) * rs;
        g[k] = rs * (g[k] * ga[k] - mg - xh * mgx);
      }
      stw<W>(dx + off + i, g);
    }
  }
  for (int i = first; i < sc; i += stride) {
    float v[W];
    ldw<W>(acc + i, v);
    stw<W>(glob_g + i, v);
    ldw<W>(acc + sc + i, v);
    stw<W>(glob_b + i, v);
  }
}

template <class T>
__device__ __forceinline__ void ln_bwd(T* dx, float* part_dg, float* part_db, const T* x,
                                       const T* gamma, const float* mean, const float* rstd,
                                       const T* dy, int rows, int d) {
  if (vec8(d, dx, x, gamma, dy, part_dg, part_db))
    ln_bwd<8>(dx, part_dg, part_db, x, gamma, mean, rstd, dy, rows, d);
  else
    ln_bwd<1>(dx, part_dg, part_db, x, gamma, mean, rstd, dy, rows, d);
}

// grid = G (≤ rows), block = LN_BLOCK, dynamic shared = 2·min(d, LN_BWD_SMEM_COLS)·4 bytes;
// part_* are [G, d].
extern "C" __global__ void __launch_bounds__(LN_BLOCK)
    layernorm_bwd_f32(float* dx, float* part_dg, float* part_db, const float* x,
                      const float* gamma, const float* mean, const float* rstd, const float* dy,
                      int rows, int d) {
  ln_bwd(dx, part_dg, part_db, x, gamma, mean, rstd, dy, rows, d);
}

extern "C" __global__ void __launch_bounds__(LN_BLOCK)
    layernorm_bwd_bf16(bf16* dx, float* part_dg, float* part_db, const bf16* x, const bf16* gamma,
                       const float* mean, const float* rstd, const bf16* dy, int rows, int d) {
  ln_bwd(dx, part_dg, part_db, x, gamma, mean, rstd, dy, rows, d);
}

// dγ[j] = Σ_{b<G} part_dg[b][j], dβ likewise, in block order. grid = ceil(d/LN_BLOCK).
extern "C" __global__ void __launch_bounds__(LN_BLOCK)
    layernorm_bwd_reduce(float* dgamma, float* dbeta, const float* part_dg, const float* part_db,
                         int g, int d) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= d) return;
  float sg = 0.0f, sb = 0.0f;
  for (int b = 0; b < g; ++b) {
    sg += part_dg[static_cast<long long>(b) * d + j];
    sb += part_db[static_cast<long long>(b) * d + j];
  }
  dgamma[j] = sg;
  dbeta[j] = sb;
}
