// Inverted dropout with the engine's counter-based masks (engine/src/rng.rs, ops/dropout.rs):
// element i is kept iff uniform(seed, offset + i) >= p, where
//   splitmix64(z): z += 0x9E3779B97F4A7C15; z = (z ^ z>>30)·0xBF58476D1CE4E5B9;
//                  z = (z ^ z>>27)·0x94D049BB133111EB; z ^= z>>31        (wrapping u64)
//   bits(seed, idx) = splitmix64(seed ^ splitmix64(idx))
//   uniform(seed, idx) = f32(bits >> 40) · 2^-24    (exact: 24 bits, so CPU and GPU compare the
//                                                  same value against the same f32 p)
// Kept values are scaled by s = f32(1/(1-p)) (computed in f64 on the host), dropped ones are 0.
//
//   dropout_fwd:      out[i] = kept_i ? x[i]·s : 0
//   dropout_bwd_add:  dx[i]  = dx[i] + (kept_i ? g[i]·s : 0)    (accumulates into dx)
// bf16: loads widen to f32, the f32 result is rounded once to nearest even. Products and sums
// are rounded separately (never contracted into an FMA), so results are bit-identical to the
// CPU's f32 arithmetic. The mask is never stored: backward recomputes it from (seed, offset).
//
// Cost: forward moves 8 (f32) or 4 (bf16) bytes per element, backward-add 12 or 6. The hash is
// two splitmix64 per element (~40 integer instructions with the 64-bit multiplies), which at
// bf16 is about as long as the memory time on an H100/H200; it is not worth trading the CPU
// bit-compatibility for a cheaper hash. Grid-stride loops, 16-byte vector accesses (4 f32 or
// 8 bf16 per step) when the launcher found both buffers 16-byte aligned, scalar otherwise.
#include "common.cuh"

using kc::bf16;
using kc::u32;
using kc::u32x4;
using kc::u64;

#ifdef KC_DEVICE
#define FMUL(a, b) __fmul_rn(a, b)
#define FADD(a, b) __fadd_rn(a, b)
#else
#define FMUL(a, b) ((a) * (b))
#define FADD(a, b) ((a) + (b))
#endif

__device__ __forceinline__ u64 splitmix64(u64 z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Keep element `idx` of the stream (seed)?
__device__ __forceinline__ bool kept(u64 seed, u64 idx, float p) {
  const u64 h = splitmix64(seed ^ splitmix64(idx));
  const float u = static_cast<float>(static_cast<u32>(h >> 40)) * 5.9604644775390625e-8f;
  return u >= p;
}

// The f32 value of element `idx` after dropout.
__device__ __forceinline__ float drop(float v, u64 seed, u64 idx, float p, float s) {
  return kept(seed, idx, p) ? FMUL(v, s) : 0.0f;
}

// vec != 0: out and x are 16-byte aligned. Element i uses stream index offset + i (wrapping).
extern "C" __global__ void dropout_fwd_f32(float* out, const float* x, long long n, float p,
                                           float s, u64 seed, u64 offset, int vec) {
  long long done = 0;
  if (vec) {
    const long long nv = n / 4;
    for (long long i = kc::grid_thread(); i < nv; i += kc::grid_threads()) {
      const u64 base = offset + static_cast<u64>(4 * i);
      kc::f32x4 v = kc::load4(x + 4 * i);
      v.x = drop(v.x, seed, base, p, s);
      v.y = drop(v.y, seed, base + 1, p, s);
      v.z = drop(v.z, seed, base + 2, p, s);
      v.w = drop(v.w, seed, base + 3, p, s);
      kc::store4(out + 4 * i, v);
    }
    done = 4 * nv;
  }
  for (long long i = done + kc::grid_thread(); i < n; i += kc::grid_threads())
    out[i] = drop(x[i], seed, offset + static_cast<u64>(i), p, s);
}

extern "C" __global__ void dropout_fwd_bf16(bf16* out, const bf16* x, long long n, float p,
                                            float s, u64 seed, u64 offset, int vec) {
  long long done = 0;
  if (vec) {
    const long long nv = n / 8;
    for (long long i = kc::grid_thread(); i < nv; i += kc::grid_threads()) {
      const u64 base = offset + static_cast<u64>(8 * i);
      float f[8];
      kc::unpack_bf16x8(kc::load_u32x4(x + 8 * i), f);
KC_UNROLL
      for (int k = 0; k < 8; ++k) f[k] = drop(f[k], seed, base + k, p, s);
      kc::store_u32x4(out + 8 * i, kc::pack_bf16x8(f));
    }
    done = 8 * nv;
  }
  for (long long i = done + kc::grid_thread(); i < n; i += kc::grid_threads())
    out[i] = kc::to_bf16(drop(kc::to_f32(x[i]), seed, offset + static_cast<u64>(i), p, s));
}

extern "C" __global__ void dropout_bwd_add_f32(float* dx, const float* g, long long n, float p,
                                               float s, u64 seed, u64 offset, int vec) {
  long long done = 0;
  if (vec) {
    const long long nv = n / 4;
    for (long long i = kc::grid_thread(); i < nv; i += kc::grid_threads()) {
      const u64 base = offset + static_cast<u64>(4 * i);
      const kc::f32x4 v = kc::load4(g + 4 * i);
      kc::f32x4 d = kc::load4(dx + 4 * i);
      d.x = FADD(d.x, drop(v.x, seed, base, p, s));
      d.y = FADD(d.y, drop(v.y, seed, base + 1, p, s));
      d.z = FADD(d.z, drop(v.z, seed, base + 2, p, s));
      d.w = FADD(d.w, drop(v.w, seed, base + 3, p, s));
      kc::store4(dx + 4 * i, d);
    }
    done = 4 * nv;
  }
  for (long long i = done + kc::grid_thread(); i < n; i += kc::grid_threads())
    dx[i] = FADD(dx[i], drop(g[i], seed, offset + static_cast<u64>(i), p, s));
}

extern "C" __global__ void dropout_bwd_add_bf16(bf16* dx, const bf16* g, long long n, float p,
                                                float s, u64 seed, u64 offset, int vec) {
  long long done = 0;
  if (vec) {
    const long long nv = n / 8;
    for (long long i = kc::grid_thread(); i < nv; i += kc::grid_threads()) {
      const u64 base = offset + static_cast<u64>(8 * i);
      float f[8], d[8];
      kc::unpack_bf16x8(kc::load_u32x4(g + 8 * i), f);
      kc::unpack_bf16x8(kc::load_u32x4(dx + 8 * i), d);
KC_UNROLL
      for (int k = 0; k < 8; ++k) d[k] = FADD(d[k], drop(f[k], seed, base + k, p, s));
      kc::store_u32x4(dx + 8 * i, kc::pack_bf16x8(d));
    }
    done = 8 * nv;
  }
  for (long long i = done + kc::grid_thread(); i < n; i += kc::grid_threads()) {
    const float d = kc::to_f32(dx[i]);
    dx[i] = kc::to_bf16(FADD(d, drop(kc::to_f32(g[i]), seed, offset + static_cast<u64>(i), p, s)));
  }
}
