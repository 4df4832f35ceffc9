// Conversion and layout kernels: f32 <-> bf16 casts and the swap of axes 1 and 2 of a 4-d
// tensor (attention output [b, heads, t, hd] <-> [b, t, heads, hd]).
//
//   cast_f32_bf16:  out[i] = bf16_rne(x[i])   round to nearest even; NaN stays NaN with its sign
//                   and top payload bits, quiet bit set (bit-identical to half::bf16::from_f32)
//   cast_bf16_f32:  out[i] = f32(x[i])        exact (the bf16 bits are the top half of the f32)
//   swap_axes12_*:  out[a][c][b][e] = x[a][b][c][e],  x [d0, d1, d2, d3], out [d0, d2, d1, d3]
//
// Cost: pure data movement, no FLOPs. cast: 4 + 2 bytes per element (1024 x 4544 bf16 ->
// 28 MB, ~8 µs at 3.7 TB/s); swap: 2·size bytes per element (1024 x 4544 bf16: 18.6 MB).
// Design: grid-stride loops, one 16-byte vector access per thread per step when both pointers
// are 16-byte aligned (the launcher checks the addresses, so views at odd offsets still work
// through the scalar path) with a scalar tail. The swap moves rows of d3 contiguous elements:
// consecutive threads take consecutive 16-byte chunks of the OUTPUT, so stores are fully
// coalesced and loads come in contiguous runs of d3·size bytes (128 B for hd = 64 bf16, one
// full cache line). Index math is 32-bit unsigned (the launcher checks the chunk count fits);
// three integer divisions per 16 bytes moved are far below the memory time.
// The f32 -> bf16 rounding is done with integer operations rather than cvt.rn.bf16.f32, which
// returns the canonical NaN instead of keeping the payload.
#include "common.cuh"

using kc::bf16;
using kc::u32;
using kc::u32x4;

// Round-to-nearest-even f32 -> bf16 bits; NaN: keep sign and payload top bits, set quiet bit.
__device__ __forceinline__ u32 bf16_bits(float f) {
  const u32 u = kc::f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u;
  return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}
__device__ __forceinline__ u32 pack2(float lo, float hi) {
  return bf16_bits(lo) | (bf16_bits(hi) << 16);
}

// vec != 0: out and x are 16-byte aligned. 8 elements per step: two 16-byte loads, one store.
extern "C" __global__ void cast_f32_bf16(bf16* out, const float* x, long long n, int vec) {
  long long done = 0;
  if (vec) {
    const long long nv = n / 8;
    for (long long i = kc::grid_thread(); i < nv; i += kc::grid_threads()) {
      const kc::f32x4 a = kc::load4(x + 8 * i), b = kc::load4(x + 8 * i + 4);
      u32x4 v;
      v.x = pack2(a.x, a.y);
      v.y = pack2(a.z, a.w);
      v.z = pack2(b.x, b.y);
      v.w = pack2(b.z, b.w);
      kc::store_u32x4(out + 8 * i, v);
    }
    done = 8 * nv;
  }
  for (long long i = done + kc::grid_thread(); i < n; i += kc::grid_threads()) {
    out[i].bits = static_cast<kc::u16>(bf16_bits(x[i]));
  }
}

// vec != 0: out and x are 16-byte aligned. 8 elements per step: one 16-byte load, two stores.
extern "C" __global__ void cast_bf16_f32(float* out, const bf16* x, long long n, int vec) {
  long long done = 0;
  if (vec) {
    const long long nv = n / 8;
    for (long long i = kc::grid_thread(); i < nv; i += kc::grid_threads()) {
      const u32x4 v = kc::load_u32x4(x + 8 * i);
      kc::f32x4 a, b;
      a.x = kc::bf16x2_lo(v.x);
      a.y = kc::bf16x2_hi(v.x);
      a.z = kc::bf16x2_lo(v.y);
      a.w = kc::bf16x2_hi(v.y);
      b.x = kc::bf16x2_lo(v.z);
      b.y = kc::bf16x2_hi(v.z);
      b.z = kc::bf16x2_lo(v.w);
      b.w = kc::bf16x2_hi(v.w);
      kc::store4(out + 8 * i, a);
      kc::store4(out + 8 * i + 4, b);
    }
    done = 8 * nv;
  }
  for (long long i = done + kc::grid_thread(); i < n; i += kc::grid_threads())
    out[i] = kc::to_f32(x[i]);
}

// Moves `chunks` units of type U (a 16-byte vector, or one element) where each row of d3
// elements is `upr` units. Output row r_out = (a·d2 + c)·d1 + b takes input row
// r_in = (a·d1 + b)·d2 + c.
template <class U>
__device__ __forceinline__ void swap12(U* out, const U* x, u32 d1, u32 d2, u32 upr, u32 chunks) {
  for (u32 u = static_cast<u32>(kc::grid_thread()); u < chunks;
       u += static_cast<u32>(kc::grid_threads())) {
    const u32 r_out = u / upr;
    const u32 e = u - r_out * upr;
    const u32 t = r_out / d1;  // a·d2 + c
    const u32 b = r_out - t * d1;
    const u32 a = t / d2;
    const u32 c = t - a * d2;
    const u32 r_in = (a * d1 + b) * d2 + c;
    out[u] = x[static_cast<unsigned long long>(r_in) * upr + e];
  }
}

// vec != 0: both 16-byte aligned and d3·sizeof(T) a multiple of 16. d0 is implied by chunks.
template <class T>
__device__ __forceinline__ void swap12_dispatch(T* out, const T* x, u32 d1, u32 d2, u32 d3,
                                                u32 chunks, int vec) {
  if (vec) {
    constexpr u32 per = 16 / sizeof(T);
    swap12(reinterpret_cast<u32x4*>(out), reinterpret_cast<const u32x4*>(x), d1, d2, d3 / per,
           chunks);
  } else {
    swap12(out, x, d1, d2, d3, chunks);
  }
}

// chunks = d0·d1·d2·d3 / (vec ? 16 / sizeof(T) : 1) < 2^31 (checked by the launcher).
extern "C" __global__ void swap_axes12_bf16(bf16* out, const bf16* x, u32 d1, u32 d2, u32 d3,
                                            u32 chunks, int vec) {
  swap12_dispatch(out, x, d1, d2, d3, chunks, vec);
}

extern "C" __global__ void swap_axes12_f32(float* out, const float* x, u32 d1, u32 d2, u32 d3,
                                           u32 chunks, int vec) {
  swap12_dispatch(out, x, d1, d2, d3, chunks, vec);
}
