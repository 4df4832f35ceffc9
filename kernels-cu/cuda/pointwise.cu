// Pointwise kernels of the Falcon block: exact GELU forward/backward, the three-term residual
// add of the parallel attention/MLP block, and the embedding gather and its deterministic
// scatter-add backward. All math in f32; bf16 outputs are rounded once (nearest even).
//
//   gelu_fwd:   y = ½x(1 + erf(x/√2))
//   gelu_bwd:   dx = dy·(Φ(x) + x·φ(x)),  Φ(x) = ½(1 + erf(x/√2)),  φ(x) = e^{-x²/2}/√(2π)
//   residual_add3: out = x + a + b    (added left to right in f32)
//   embedding_fwd: out[r, :] = table[ids[r], :]
//   embedding_bwd: dtable[v, :] = Σ_{r: ids[r] = v} dy[r, :]   (in token order; other rows 0)
//
// Cost: all are bandwidth-bound. GELU at the Falcon MLP (1024 x 18176 bf16): fwd 2 B in + 2 B
// out per element (74 MB, ~20 µs at 3.7 TB/s), ~20 FLOP/element (erf, exp) which the SFUs hide.
// Elementwise kernels move 16 bytes per thread per access (8 bf16 or 4 f32 as one vector load;
// buffers must be 16-byte aligned, which device allocations are) with a scalar tail, in
// grid-stride loops so any grid covers any n.
// embedding_fwd: one block per token row, threads stride the row (coalesced; bit-exact copy).
// embedding_bwd: one block per token r; the block that holds the FIRST occurrence of an id sums
// the dy rows of every occurrence in token order and writes that table row once, so there are
// no atomics and the result is bitwise reproducible (the same order as the CPU reference).
// Finding first occurrences is O(n²) id compares over an L1/L2-resident id list (1M for
// n = 1024 tokens: negligible next to the n·d row traffic). embedding_zero clears the table
// first (rows of unused ids stay 0).
#include "common.cuh"

using kc::bf16;
using kc::ld;
using kc::u32;
using kc::u32x4;

__device__ __forceinline__ float gelu_f(float x) {
  return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

__device__ __forceinline__ float gelu_grad_f(float x) {
  const float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
  const float pdf = expf(-0.5f * x * x) * 0.39894228040143268f;
  return cdf + x * pdf;
}


extern "C" __global__ void gelu_fwd_f32(float* y, const float* x, long long n) {
  const long long nv = n / 4;
  for (long long i = kc::grid_thread(); i < nv; i += kc::grid_threads()) {
    kc::f32x4 v = kc::load4(x + 4 * i);
    v.x = gelu_f(v.x);
    v.y = gelu_f(v.y);
    v.z = gelu_f(v.z);
    v.w = gelu_f(v.w);
    kc::store4(y + 4 * i, v);
  }
  for (long long i = 4 * nv + kc::grid_thread(); i < n; i += kc::grid_threads())
    y[i] = gelu_f(x[i]);
}

extern "C" __global__ void gelu_fwd_bf16(bf16* y, const bf16* x, long long n) {
  const long long nv = n / 8;
  for (long long i = kc::grid_thread(); i < nv; i += kc::grid_threads()) {
    float f[8];
    kc::unpack_bf16x8(kc::load_u32x4(x + 8 * i), f);
KC_UNROLL
    for (int k = 0; k < 8; ++k) f[k] = gelu_f(f[k]);
    kc::store_u32x4(y + 8 * i, kc::pack_bf16x8(f));
  }
  for (long long i = 8 * nv + kc::grid_thread(); i < n; i += kc::grid_threads())
    y[i] = kc::to_bf16(gelu_f(kc::to_f32(x[i])));
}

extern "C" __global__ void gelu_bwd_f32(float* dx, const float* x, const float* dy, long long n) {
  const long long nv = n / 4;
  for (long long i = kc::grid_thread(); i < nv; i += kc::grid_threads()) {
    const kc::f32x4 v = kc::load4(x + 4 * i);
    kc::f32x4 g = kc::load4(dy + 4 * i);
    g.x *= gelu_grad_f(v.x);
    g.y *= gelu_grad_f(v.y);
    g.z *= gelu_grad_f(v.z);
    g.w *= gelu_grad_f(v.w);
    kc::store4(dx + 4 * i, g);
  }
  for (long long i = 4 * nv + kc::grid_thread(); i < n; i += kc::grid_threads())
    dx[i] = dy[i] * gelu_grad_f(x[i]);
}

extern "C" __global__ void gelu_bwd_bf16(bf16* dx, const bf16* x, const bf16* dy, long long n) {
  const long long nv = n / 8;
  for (long long i = kc::grid_thread(); i < nv; i += kc::grid_threads()) {
    float f[8], g[8];
    kc::unpack_bf16x8(kc::load_u32x4(x + 8 * i), f);
    kc::unpack_bf16x8(kc::load_u32x4(dy + 8 * i), g);
KC_UNROLL
    for (int k = 0; k < 8; ++k) g[k] *= gelu_grad_f(f[k]);
    kc::store_u32x4(dx + 8 * i, kc::pack_bf16x8(g));
  }
  for (long long i = 8 * nv + kc::grid_thread(); i < n; i += kc::grid_threads())
    dx[i] = kc::to_bf16(kc::to_f32(dy[i]) * gelu_grad_f(kc::to_f32(x[i])));
}

extern "C" __global__ void residual_add3_f32(float* out, const float* x, const float* a,
                                             const float* b, long long n) {
  const long long nv = n / 4;
  for (long long i = kc::grid_thread(); i < nv; i += kc::grid_threads()) {
    kc::f32x4 v = kc::load4(x + 4 * i);
    const kc::f32x4 u = kc::load4(a + 4 * i), w = kc::load4(b + 4 * i);
    v.x = v.x + u.x + w.x;
    v.y = v.y + u.y + w.y;
    v.z = v.z + u.z + w.z;
    v.w = v.w + u.w + w.w;
    kc::store4(out + 4 * i, v);
  }
  for (long long i = 4 * nv + kc::grid_thread(); i < n; i += kc::grid_threads())
    out[i] = x[i] + a[i] + b[i];
}

extern "C" __global__ void residual_add3_bf16(bf16* out, const bf16* x, const bf16* a,
                                              const bf16* b, long long n) {
  const long long nv = n / 8;
  for (long long i = kc::grid_thread(); i < nv; i += kc::grid_threads()) {
    float f[8], u[8], w[8];
    kc::unpack_bf16x8(kc::load_u32x4(x + 8 * i), f);
    kc::unpack_bf16x8(kc::load_u32x4(a + 8 * i), u);
    kc::unpack_bf16x8(kc::load_u32x4(b + 8 * i), w);
KC_UNROLL
    for (int k = 0; k < 8; ++k) f[k] = f[k] + u[k] + w[k];
    kc::store_u32x4(out + 8 * i, kc::pack_bf16x8(f));
  }
  for (long long i = 8 * nv + kc::grid_thread(); i < n; i += kc::grid_threads())
    out[i] = kc::to_bf16(kc::to_f32(x[i]) + kc::to_f32(a[i]) + kc::to_f32(b[i]));
}

// grid = tokens, block = 128..1024. An id outside [0, vocab) yields a row of NaN and records the
// smallest such token position in *bad (initialised by the caller to INT_MAX).
template <class T>
__device__ __forceinline__ void emb_fwd(T* out, int* bad, const u32* ids, const T* table, int d,
                                        u32 vocab) {
  const long long r = blockIdx.x;
  const u32 id = ids[r];
  T* o = out + r * d;
  if (id >= vocab) {
    T nan_v;
    if constexpr (sizeof(T) == 2) {
      nan_v.bits = 0x7fc0u;
    } else {
      nan_v = kc::f32_from_bits(0x7fc00000u);
    }
    for (int j = threadIdx.x; j < d; j += blockDim.x) o[j] = nan_v;
    if (threadIdx.x == 0) atomicMin(bad, static_cast<int>(r));
    return;
  }
  const T* src = table + static_cast<long long>(id) * d;
  for (int j = threadIdx.x; j < d; j += blockDim.x) o[j] = src[j];
}

extern "C" __global__ void embedding_fwd_f32(float* out, int* bad, const u32* ids,
                                             const float* table, int d, u32 vocab) {
  emb_fwd(out, bad, ids, table, d, vocab);
}

extern "C" __global__ void embedding_fwd_bf16(bf16* out, int* bad, const u32* ids,
                                              const bf16* table, int d, u32 vocab) {
  emb_fwd(out, bad, ids, table, d, vocab);
}

// Grid-stride zero fill of the f32 gradient table (n elements).
extern "C" __global__ void embedding_zero_f32(float* dtable, long long n) {
  for (long long i = kc::grid_thread(); i < n; i += kc::grid_threads()) dtable[i] = 0.0f;
}

// grid = tokens n, block = 128..1024. dtable is [vocab, d] f32, zeroed before.
template <class T>
__device__ __forceinline__ void emb_bwd(float* dtable, const u32* ids, const T* dy, int n, int d,
                                        u32 vocab) {
  __shared__ int seen_before;
  const int r = blockIdx.x;
  const u32 id = ids[r];
  if (threadIdx.x == 0) seen_before = 0;
  __syncthreads();
  for (int q = threadIdx.x; q < r; q += blockDim.x)
    if (ids[q] == id) atomicOr(&seen_before, 1);  // atomic: several threads may find one
  __syncthreads();
  if (seen_before || id >= vocab) return;
  float* dst = dtable + static_cast<long long>(id) * d;
  for (int j = threadIdx.x; j < d; j += blockDim.x) {
    float acc = 0.0f;
    for (int q = r; q < n; ++q)
      if (ids[q] == id) acc += ld(dy, static_cast<long long>(q) * d + j);
    dst[j] = acc;
  }
}

extern "C" __global__ void embedding_bwd_f32(float* dtable, const u32* ids, const float* dy, int n,
                                             int d, u32 vocab) {
  emb_bwd(dtable, ids, dy, n, d, vocab);
}

extern "C" __global__ void embedding_bwd_bf16(float* dtable, const u32* ids, const bf16* dy, int n,
                                              int d, u32 vocab) {
  emb_bwd(dtable, ids, dy, n, d, vocab);
}
