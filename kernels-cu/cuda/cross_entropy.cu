// Cross-entropy fused with the lm_head, in vocab chunks: the rows x vocab logits (or
// probabilities) never exist in global memory beyond one rows x chunk scratch in the backward.
//
//   z = hidden·Wᵀ (hidden [rows, d] bf16, W [V, d] bf16, f32 accumulation)
//   lse_r = logsumexp(z_r),  loss = Σ_{r: label_r ≠ −100} (lse_r − z_r[label_r]) · inv_count
//   dz_r = scale·(exp(z_r − lse_r) − onehot(label_r)) (0 for ignored rows), scale = g/count
//   dhidden = dz·W,  dW = dzᵀ·hidden
//
// Kernels:
//  - lce_fwd_partial: grid (⌈rows/16⌉, n_chunks), block 16x16. Each block walks its vocab chunk
//    in 16-column tiles, computes the 16x16 logit tile (shared-memory tiled dot products over d)
//    and folds it into a running (max, Σexp) per row: online logsumexp. Writes one (m, s) pair per
//    (row, chunk) and the label's logit (exactly one thread in the grid owns it).
//  - lce_fwd_finalize: one block; per row combines the chunks in chunk order
//    (M = max m_c, S = Σ s_c·e^{m_c−M}, lse = M + ln S), and sums the kept rows' losses in a fixed
//    order (no atomics): deterministic.
//  - lce_bwd_dlogits: dz for one vocab chunk [rows, vc] (f32 scratch), recomputing its logits.
//  - lce_bwd_dhidden: dh (+)= dz_chunk·W_chunk, chunks applied in order (deterministic).
//  - lce_bwd_dw: dW rows of the chunk = dz_chunkᵀ·hidden (each row written by one chunk only).
//
// Cost (Falcon-7B, rows = 1024, d = 4544, V = 65024): the three products are 3 x 2·rows·d·V =
// 1.8 TFLOP per step plus one recompute (2.4 TFLOP with the forward). They are GEMM-shaped and
// belong on tensor cores; these kernels compute them with a plain f32 shared-memory tiled dot
// product (16x16 tiles) so the family stands alone. The fused structure (online logsumexp per
// chunk, chunked dz scratch, ordered accumulation) is what the tensor-core GEMM would feed: its
// logits chunk replaces the tile loop of lce_fwd_partial / lce_bwd_dlogits.
#include "common.cuh"

using kc::bf16;

#define CE_T 16
#define CE_IGNORE (-100)

__device__ __forceinline__ float neg_inf() { return kc::f32_from_bits(0xff800000u); }

// z[i0+ty][j0+tx] = Σ_k h[i0+ty][k]·w[j0+tx][k] (both K-contiguous, loads coalesced along k).
// Out-of-range rows/columns contribute zeros. All threads of the 16x16 block must call it.
__device__ __forceinline__ float dot_tile_nt(const bf16* a, int na, const bf16* b, int nb, int k,
                                             int i0, int j0) {
  __shared__ float sa[CE_T][CE_T + 1];
  __shared__ float sb[CE_T][CE_T + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  float acc = 0.0f;
  for (int k0 = 0; k0 < k; k0 += CE_T) {
    const int kk = k0 + tx;
    sa[ty][tx] = (i0 + ty < na && kk < k) ? kc::to_f32(a[static_cast<long long>(i0 + ty) * k + kk]) : 0.0f;
    sb[ty][tx] = (j0 + ty < nb && kk < k) ? kc::to_f32(b[static_cast<long long>(j0 + ty) * k + kk]) : 0.0f;
    __syncthreads();
KC_UNROLL
    for (int q = 0; q < CE_T; ++q) acc += sa[ty][q] * sb[tx][q];
    __syncthreads();
  }
  return acc;
}

// grid (⌈rows/16⌉, n_chunks), block (16, 16). part_m/part_s: [rows, n_chunks].
extern "C" __global__ void __launch_bounds__(256)
    lce_fwd_partial(float* part_m, float* part_s, float* zlab, const bf16* hidden, const bf16* w,
                    const int* labels, int rows, int d, int vocab, int vchunk) {
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int r0 = blockIdx.x * CE_T, c = blockIdx.y, nchunks = gridDim.y;
  const int v_begin = c * vchunk;
  const int v_end = min(vocab, v_begin + vchunk);
  const int row = r0 + ty;
  const int label = row < rows ? labels[row] : CE_IGNORE;
  float m = neg_inf(), s = 0.0f;
  for (int v0 = v_begin; v0 < v_end; v0 += CE_T) {
    float z = dot_tile_nt(hidden, rows, w, v_end, d, r0, v0);
    const int col = v0 + tx;
    if (col == label && col < v_end) zlab[row] = z;
    if (col >= v_end) z = neg_inf();
    // Row reductions over the 16 lanes of this row (a half-warp: xor offsets < 16 stay inside).
    float tm = z;
KC_UNROLL
    for (int o = 8; o > 0; o >>= 1) tm = fmaxf(tm, __shfl_xor_sync(0xffffffffu, tm, o, 32));
    const float mn = fmaxf(m, tm);
    float e = expf(z - mn);
KC_UNROLL
    for (int o = 8; o > 0; o >>= 1) e += __shfl_xor_sync(0xffffffffu, e, o, 32);
    s = s * expf(m - mn) + e;
    m = mn;
  }
  if (tx == 0 && row < rows) {
    part_m[static_cast<long long>(row) * nchunks + c] = m;
    part_s[static_cast<long long>(row) * nchunks + c] = s;
  }
}

// One block of 256 threads. loss[0] = Σ kept (lse − z_label) · inv_count; lse [rows].
extern "C" __global__ void __launch_bounds__(256)
    lce_fwd_finalize(float* loss, float* lse, const float* part_m, const float* part_s,
                     const float* zlab, const int* labels, int rows, int nchunks, float inv_count) {
  __shared__ float ws[32];
  float acc = 0.0f;
  for (int r = threadIdx.x; r < rows; r += blockDim.x) {
    const float* pm = part_m + static_cast<long long>(r) * nchunks;
    const float* ps = part_s + static_cast<long long>(r) * nchunks;
    float mx = neg_inf();
    for (int c = 0; c < nchunks; ++c) mx = fmaxf(mx, pm[c]);
    float sum = 0.0f;
    for (int c = 0; c < nchunks; ++c) sum += ps[c] * expf(pm[c] - mx);
    const float l = mx + logf(sum);
    lse[r] = l;
    if (labels[r] != CE_IGNORE) acc += l - zlab[r];
  }
  acc = kc::warp_sum(acc);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) ws[warp] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = 0.0f;
    for (int i = 0; i < static_cast<int>(blockDim.x / 32); ++i) t += ws[i];
    loss[0] = t * inv_count;
  }
}

// dz [rows, vc] for vocab columns [v0, v0 + vc). grid (⌈rows/16⌉, ⌈vc/16⌉), block (16, 16).
extern "C" __global__ void __launch_bounds__(256)
    lce_bwd_dlogits(float* dz, const bf16* hidden, const bf16* w, const int* labels,
                    const float* lse, int rows, int d, int v0, int vc, float scale) {
  const int r0 = blockIdx.x * CE_T, j0 = blockIdx.y * CE_T;
  const float z = dot_tile_nt(hidden, rows, w + static_cast<long long>(v0) * d, vc, d, r0, j0);
  const int row = r0 + threadIdx.y, j = j0 + threadIdx.x;
  if (row >= rows || j >= vc) return;
  const int label = labels[row];
  float g = 0.0f;
  if (label != CE_IGNORE) g = scale * (expf(z - lse[row]) - (v0 + j == label ? 1.0f : 0.0f));
  dz[static_cast<long long>(row) * vc + j] = g;
}

// dh[r][j] (+)= Σ_{v<vc} dz[r][v]·W[v0+v][j]. grid (⌈rows/16⌉, ⌈d/16⌉), block (16, 16).
extern "C" __global__ void __launch_bounds__(256)
    lce_bwd_dhidden(float* dh, const float* dz, const bf16* w, int rows, int d, int v0, int vc,
                    int accumulate) {
  __shared__ float sa[CE_T][CE_T + 1];
  __shared__ float sb[CE_T][CE_T + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int r0 = blockIdx.x * CE_T, j0 = blockIdx.y * CE_T;
  float acc = 0.0f;
  for (int k0 = 0; k0 < vc; k0 += CE_T) {
    sa[ty][tx] = (r0 + ty < rows && k0 + tx < vc) ? dz[static_cast<long long>(r0 + ty) * vc + k0 + tx] : 0.0f;
    sb[ty][tx] = (k0 + ty < vc && j0 + tx < d)
                     ? kc::to_f32(w[static_cast<long long>(v0 + k0 + ty) * d + j0 + tx])
                     : 0.0f;
    __syncthreads();
KC_UNROLL
    for (int q = 0; q < CE_T; ++q) acc += sa[ty][q] * sb[q][tx];
    __syncthreads();
  }
  const int row = r0 + ty, j = j0 + tx;
  if (row >= rows || j >= d) return;
  const long long o = static_cast<long long>(row) * d + j;
  dh[o] = accumulate ? dh[o] + acc : acc;
}

// dW[v0+v][j] = Σ_r dz[r][v]·hidden[r][j]. grid (⌈vc/16⌉, ⌈d/16⌉), block (16, 16).
extern "C" __global__ void __launch_bounds__(256)
    lce_bwd_dw(float* dw, const float* dz, const bf16* hidden, int rows, int d, int v0, int vc) {
  __shared__ float sa[CE_T][CE_T + 1];
  __shared__ float sb[CE_T][CE_T + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int i0 = blockIdx.x * CE_T, j0 = blockIdx.y * CE_T;
  float acc = 0.0f;
  for (int k0 = 0; k0 < rows; k0 += CE_T) {
    // sa[r][v] = dz[k0+r][i0+v] (coalesced along v); used transposed below.
    sa[ty][tx] = (k0 + ty < rows && i0 + tx < vc) ? dz[static_cast<long long>(k0 + ty) * vc + i0 + tx] : 0.0f;
    sb[ty][tx] = (k0 + ty < rows && j0 + tx < d)
                     ? kc::to_f32(hidden[static_cast<long long>(k0 + ty) * d + j0 + tx])
                     : 0.0f;
    __syncthreads();
KC_UNROLL
    for (int q = 0; q < CE_T; ++q) acc += sa[q][ty] * sb[q][tx];
    __syncthreads();
  }
  const int v = i0 + ty, j = j0 + tx;
  if (v >= vc || j >= d) return;
  dw[static_cast<long long>(v0 + v) * d + j] = acc;
}
