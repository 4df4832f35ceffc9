// Cross-entropy fused with the lm_head, in vocab chunks: the rows x V logits (or
// probabilities) never exist in global memory beyond one rows x chunk scratch.
//
//   z = hidden·Wᵀ (hidden [rows, d] bf16, W [V, d] bf16, f32 accumulation)
//   lse_r = logsumexp(z_r),  loss = Σ_{r: label_r ≠ −100} (lse_r − z_r[label_r]) · inv_count
//   dz_r = scale·(exp(z_r − lse_r) − onehot(label_r)) (0 for ignored rows), scale = g/count
//   dhidden = dz·W,  dW = dzᵀ·hidden
//
// Division of work: the three lm_head products run on the tensor-core bf16 GEMM
// (gemm.cu gemm_bf16_{nt,nn,tn}_f32, launched by ops::cross_entropy per vocab chunk of C
// columns); this family holds only the per-chunk row reductions and pointwise maps between them.
//
//   forward, per chunk [v0, v0 + vc):  Z = hidden·W_chunkᵀ (GEMM, f32 [rows, vc])
//                                      lce_fwd_fold: Z -> running (max, Σexp) per row
//            then once:                lce_fwd_finalize: lse, loss
//   backward, per chunk:               Z = hidden·W_chunkᵀ (GEMM recompute)
//                                      lce_bwd_dz: dZ = bf16(exp(Z − lse) − onehot) [rows, vc]
//                                      dh (+)= scale·dZ·W_chunk  (GEMM, f32, β = 0 then 1)
//                                      dW[chunk] = scale·dZᵀ·hidden  (GEMM, f32, when wanted)
//
// Kernels:
//  - lce_fwd_fold: grid rows, block 256 (one block per row). Each thread folds its columns
//    (16-byte loads when the row is 16-byte aligned) into an online (max, Σexp) pair; pairs are
//    merged by a warp butterfly and then in warp order, and merged after the running pair of the
//    previous chunks (chunks in order): deterministic, no atomics. Thread 0 also copies the
//    label's logit when the label falls in the chunk (exactly one chunk owns it; the first chunk
//    writes NaN otherwise, so an out-of-range label gives a NaN loss).
//  - lce_fwd_finalize: one block; lse_r = m_r + ln s_r, and sums the kept rows' losses in a
//    fixed order (no atomics): deterministic.
//  - lce_bwd_dz: grid rows, block 256. dZ rounded once to bf16 (8 columns per 16-byte store
//    when aligned); ignored rows are written as zeros. The scale g/count is applied as the
//    GEMMs' α, so dZ stays O(1) and never reaches the bf16 subnormal range through the scale.
//
// Cost (Falcon-7B, rows = 1024, d = 4544, V = 65024, C = 8192 -> 8 chunks): the products are
// 2·rows·d·V = 605 GFLOP each: forward 1, backward 2 (recompute + dhidden) or 3 with dW, i.e.
// 1.8 TFLOP per training step without dW; at ~600 TFLOP/s of bf16 mma.sync that is ~3 ms. The
// GEMMs stream W once per product (590 MB bf16) and write/read the Z scratch (32 MiB f32 per
// chunk) in L2-sized pieces. This family's kernels are memory bound and small beside them:
// fold reads Z once (4 B/logit: 266 MB per pass over V), dz reads Z and writes dZ (6 B/logit:
// 400 MB), ~0.1 ms each at ~3.5 TB/s. Where the time goes: the GEMMs (~95%); the dhidden GEMM
// per chunk has only ⌈rows/128⌉·⌈d/128⌉ = 288 output tiles (K = C), a partial second wave on a
// 132-SM part, which larger chunks do not change (it would take split-K).
#include "common.cuh"

using kc::bf16;
using kc::u32;

#define CE_THREADS 256
#define CE_WARPS (CE_THREADS / 32)
#define CE_IGNORE (-100)

__device__ __forceinline__ float neg_inf() { return kc::f32_from_bits(0xff800000u); }

// A partial logsumexp: s = Σ exp(z − m) over the folded values, m their max (−inf, 0: none).
struct MaxSum {
  float m, s;
};

// Folds one value in. z = −inf cannot occur for finite inputs; a NaN makes s NaN (the loss is
// then NaN, as it should be).
__device__ __forceinline__ void fold(MaxSum& a, float z) {
  if (z > a.m) {
    a.s = a.s * expf(a.m - z) + 1.0f;  // m = −inf: s = 0 and exp(−inf) = 0
    a.m = z;
  } else {
    a.s += expf(z - a.m);
  }
}

// Merges two partials; symmetric in its arguments (bit-identical either way round), and an empty
// side contributes nothing (avoids exp(−inf − (−inf)) = NaN).
__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  MaxSum r;
  r.m = fmaxf(a.m, b.m);
  const float ea = a.m == neg_inf() ? 0.0f : a.s * expf(a.m - r.m);
  const float eb = b.m == neg_inf() ? 0.0f : b.s * expf(b.m - r.m);
  r.s = ea + eb;
  return r;
}

// z: [rows, vc] f32 logits of vocab columns [v0, v0 + vc); run_m/run_s: [rows] running partials
// (read unless first); zlab: [rows] the label's logit. vec != 0: z is 16-byte aligned and
// vc % 4 == 0. grid rows, block CE_THREADS.
extern "C" __global__ void __launch_bounds__(CE_THREADS)
    lce_fwd_fold(float* run_m, float* run_s, float* zlab, const float* z, const int* labels, int vc,
                 int v0, int first, int vec) {
  __shared__ MaxSum ws[CE_WARPS];
  const int row = blockIdx.x, tid = threadIdx.x;
  const float* zr = z + static_cast<long long>(row) * vc;
  MaxSum a;
  a.m = neg_inf();
  a.s = 0.0f;
  if (vec) {
    for (int i = tid; i < vc / 4; i += CE_THREADS) {
      const kc::f32x4 v = kc::load4(zr + 4 * i);
      fold(a, v.x);
      fold(a, v.y);
      fold(a, v.z);
      fold(a, v.w);
    }
  } else {
    for (int i = tid; i < vc; i += CE_THREADS) fold(a, zr[i]);
  }
KC_UNROLL
  for (int o = 16; o > 0; o >>= 1) {
    MaxSum b;
    b.m = __shfl_xor_sync(0xffffffffu, a.m, o, 32);
    b.s = __shfl_xor_sync(0xffffffffu, a.s, o, 32);
    a = merge(a, b);
  }
  const int lane = tid % 32, warp = tid / 32;
  if (lane == 0) ws[warp] = a;
  __syncthreads();
  if (tid == 0) {
    MaxSum t;
    if (first) {
      t = ws[0];
    } else {
      t.m = run_m[row];
      t.s = run_s[row];
      t = merge(t, ws[0]);
    }
    for (int w = 1; w < CE_WARPS; ++w) t = merge(t, ws[w]);
    run_m[row] = t.m;
    run_s[row] = t.s;
    // The first chunk writes NaN, so a label outside [0, V) yields a NaN loss, not garbage.
    const int j = labels[row] - v0;
    if (j >= 0 && j < vc) {
      zlab[row] = zr[j];
    } else if (first) {
      zlab[row] = kc::f32_from_bits(0x7fc00000u);
    }
  }
}

// One block of CE_THREADS. loss[0] = Σ kept (lse − z_label) · inv_count; lse [rows].
extern "C" __global__ void __launch_bounds__(CE_THREADS)
    lce_fwd_finalize(float* loss, float* lse, const float* run_m, const float* run_s,
                     const float* zlab, const int* labels, int rows, float inv_count) {
  __shared__ float ws[CE_WARPS];
  float acc = 0.0f;
  for (int r = threadIdx.x; r < rows; r += CE_THREADS) {
    const float l = run_m[r] + logf(run_s[r]);
    lse[r] = l;
    if (labels[r] != CE_IGNORE) acc += l - zlab[r];
  }
  acc = kc::warp_sum(acc);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) ws[warp] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = 0.0f;
    for (int i = 0; i < CE_WARPS; ++i) t += ws[i];
    loss[0] = t * inv_count;
  }
}

// dz[r][j] = bf16(exp(z[r][j] − lse[r]) − [v0 + j == label_r]), 0 for ignored rows; z, dz
// [rows, vc]. vec != 0: z and dz are 16-byte aligned and vc % 8 == 0. grid rows, block CE_THREADS.
extern "C" __global__ void __launch_bounds__(CE_THREADS)
    lce_bwd_dz(bf16* dz, const float* z, const int* labels, const float* lse, int vc, int v0,
               int vec) {
  const int row = blockIdx.x, tid = threadIdx.x;
  const long long base = static_cast<long long>(row) * vc;
  const int label = labels[row];
  const bool keep = label != CE_IGNORE;
  const float l = lse[row];
  // The label column, relative to the chunk (outside [0, vc) when another chunk owns it).
  const int jl = keep ? label - v0 : -1;
  if (vec) {
    for (int i = tid; i < vc / 8; i += CE_THREADS) {
      const int j = 8 * i;
      kc::u32x4 o;
      if (keep) {
        const kc::f32x4 a = kc::load4(z + base + j), b = kc::load4(z + base + j + 4);
        float p[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
KC_UNROLL
        for (int e = 0; e < 8; ++e) p[e] = expf(p[e] - l) - (j + e == jl ? 1.0f : 0.0f);
        o.x = kc::pack_bf16x2(p[0], p[1]);
        o.y = kc::pack_bf16x2(p[2], p[3]);
        o.z = kc::pack_bf16x2(p[4], p[5]);
        o.w = kc::pack_bf16x2(p[6], p[7]);
      } else {
        o.x = o.y = o.z = o.w = 0u;
      }
      kc::store_u32x4(dz + base + j, o);
    }
  } else {
    for (int j = tid; j < vc; j += CE_THREADS) {
      const float g = keep ? expf(z[base + j] - l) - (j == jl ? 1.0f : 0.0f) : 0.0f;
      dz[base + j] = kc::to_bf16(g);
    }
  }
}
