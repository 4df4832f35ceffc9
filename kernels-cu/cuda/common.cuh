// Common header of every kernel family. It includes no CUDA toolkit header, so the same text
// compiles under NVRTC (device code, real inline PTX) and under the host C++ compiler for the
// emulator (kernels-cu/emu/kc_emu.h supplies the CUDA built-ins and emulated PTX wrappers).
//
// Everything lives in namespace kc:
//   types       u8/u16/u32/u64/i32/i64, bf16, f16 (16-bit storage types), f32x4/u32x2/u32x4
//   arithmetic  mul_rn / add_rn (fp32, rounded to nearest, never fused into an FMA)
//   conversion  to_f32(bf16|f16), to_bf16(float), to_f16(float), pack_bf16x2(lo, hi)  (lo = bits 15:0),
//               unpack_bf16x8 / pack_bf16x8 (8 bf16 in a u32x4 <-> 8 f32)
//   indexing    grid_thread / grid_threads (1-D grid-stride loops)
//   vectors     load4/store4 (16-byte aligned), load_u32x2/u32x4, load8/store8 (8 elements as
//               f32) and aligned16; ld/st (element i of f32|bf16 as f32, stored rounded);
//               ldw/stw<W> (W = 8 or 1 of them)
//   layouts     qkv_slot_of (Falcon's fused qkv head slots)
//   warp        warp_sum / warp_max (xor butterfly, result in every lane, fixed order)
//   PTX         mma_m16n8k16_bf16, ldmatrix_x{1,2,4}[_trans], cp_async_{4,8,16}, cp_async_commit,
//               cp_async_wait<N>, cp_async_wait_all, fence_block, fence_gpu, smem_u32
//   wgmma       (sm_90a, KC_HAS_WGMMA) wgmma_desc, wgmma_m64k16_bf16_rs<N>, wgmma_fence,
//               wgmma_commit, wgmma_wait<N>, fence_proxy_async, wgmma_fence_operand
// Fragment layouts follow the PTX ISA (see the lane tables in the kernels-cu crate docs).
#pragma once

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
#define KC_DEVICE 1
#else
#include "kc_emu.h"
#endif

#define KC_FN __device__ __forceinline__

// Loop unrolling hint (the host compiler does not know the CUDA pragma).
#ifdef KC_DEVICE
#define KC_UNROLL _Pragma("unroll")
#else
#define KC_UNROLL
#endif

// Dynamic shared memory of the launch, viewed as T[]. One extern array name for every kernel
// (CUDA requires all `extern __shared__` arrays of a module to agree), 16-byte aligned.
#ifdef KC_DEVICE
#define KC_DYNAMIC_SHARED(T, name)                                                                 \
  extern __shared__ __align__(16) unsigned char kc_dynamic_smem[];                                 \
  T* name = reinterpret_cast<T*>(kc_dynamic_smem)
#else
#define KC_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(kc_emu::dynamic_smem())
#endif

namespace kc {

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef int i32;
typedef long long i64;

// 16-bit floating-point storage types: raw bits, converted explicitly (no implicit arithmetic).
struct __align__(2) bf16 {
  u16 bits;
};
struct __align__(2) f16 {
  u16 bits;
};

struct __align__(16) f32x4 {
  float x, y, z, w;
};
struct __align__(8) u32x2 {
  u32 x, y;
};
struct __align__(16) u32x4 {
  u32 x, y, z, w;
};

KC_FN u32 f32_bits(float f) {
#ifdef KC_DEVICE
  return __float_as_uint(f);
#else
  u32 u;
  __builtin_memcpy(&u, &f, 4);
  return u;
#endif
}

KC_FN float f32_from_bits(u32 u) {
#ifdef KC_DEVICE
  return __uint_as_float(u);
#else
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
#endif
}

// fp32 multiply and add, each rounded to nearest even and never contracted into an FMA: the
// NF4 dequantization (absmax, weight values) must be bit-identical to the CPU's.
KC_FN float mul_rn(float a, float b) {
#ifdef KC_DEVICE
  float r;
  asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#else
  volatile float r = a * b;
  return r;
#endif
}
KC_FN float add_rn(float a, float b) {
#ifdef KC_DEVICE
  float r;
  asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#else
  volatile float r = a + b;
  return r;
#endif
}

// bf16 -> f32 is exact: the bf16 bits are the top half of the f32 bits.
KC_FN float to_f32(bf16 h) { return f32_from_bits(static_cast<u32>(h.bits) << 16); }

// f32 -> bf16, round to nearest even; NaN stays NaN (quiet bit set).
KC_FN bf16 to_bf16(float f) {
  bf16 r;
#ifdef KC_DEVICE
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r.bits) : "f"(f));
#else
  u32 u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    r.bits = static_cast<u16>((u >> 16) | 0x40u);
  } else {
    u += 0x7fffu + ((u >> 16) & 1u);
    r.bits = static_cast<u16>(u >> 16);
  }
#endif
  return r;
}

// f16 -> f32 (exact, including subnormals, infinities and NaN).
KC_FN float to_f32(f16 h) {
#ifdef KC_DEVICE
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h.bits));
  return f;
#else
  u32 sign = static_cast<u32>(h.bits & 0x8000u) << 16;
  u32 exp = (h.bits >> 10) & 0x1fu;
  u32 man = h.bits & 0x3ffu;
  if (exp == 0x1fu) return f32_from_bits(sign | 0x7f800000u | (man << 13));
  if (exp == 0) {
    if (man == 0) return f32_from_bits(sign);
    // Subnormal: value = man * 2^-24, exact in f32.
    float v = static_cast<float>(man) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return f32_from_bits(sign | ((exp + 112u) << 23) | (man << 13));
#endif
}

// f32 -> f16, round to nearest even, overflow to infinity, NaN stays NaN.
KC_FN f16 to_f16(float f) {
  f16 r;
#ifdef KC_DEVICE
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(f));
#else
  u32 u = f32_bits(f);
  u32 sign = (u >> 16) & 0x8000u;
  u32 a = u & 0x7fffffffu;
  if (a > 0x7f800000u) {
    r.bits = static_cast<u16>(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    return r;
  }
  if (a >= 0x477ff000u) {  // rounds to >= 65520: infinity
    r.bits = static_cast<u16>(sign | 0x7c00u);
    return r;
  }
  if (a < 0x38800000u) {  // below the smallest normal f16 (2^-14): subnormal or zero
    // Scale so that one f16 subnormal ulp (2^-24) is 1.0, then round to nearest even.
    float v = f32_from_bits(a) * 16777216.0f;  // exact (power-of-two scale)
    u32 q = static_cast<u32>(v);
    float rem = v - static_cast<float>(q);
    if (rem > 0.5f || (rem == 0.5f && (q & 1u))) q += 1;
    r.bits = static_cast<u16>(sign | q);
    return r;
  }
  u32 rounded = a + 0xfffu + ((a >> 13) & 1u);
  r.bits = static_cast<u16>(sign | ((rounded - 0x38000000u) >> 13));
#endif
  return r;
}

// Two bf16 in one 32-bit register: lo in bits 15:0, hi in bits 31:16 (the mma fragment order;
// the same as loading a u32 from two consecutive bf16 in memory).
KC_FN u32 pack_bf16x2(float lo, float hi) {
#ifdef KC_DEVICE
  u32 r;
  // cvt...bf16x2 takes the HIGH element first.
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
#else
  return static_cast<u32>(to_bf16(lo).bits) | (static_cast<u32>(to_bf16(hi).bits) << 16);
#endif
}
KC_FN float bf16x2_lo(u32 v) { return f32_from_bits(v << 16); }
KC_FN float bf16x2_hi(u32 v) { return f32_from_bits(v & 0xffff0000u); }

// Eight bf16 <-> eight f32 through one 16-byte vector (element 0 in bits 15:0 of .x).
KC_FN void unpack_bf16x8(u32x4 v, float f[8]) {
  const u32 w[4] = {v.x, v.y, v.z, v.w};
  KC_UNROLL
  for (int k = 0; k < 4; ++k) {
    f[2 * k] = bf16x2_lo(w[k]);
    f[2 * k + 1] = bf16x2_hi(w[k]);
  }
}
KC_FN u32x4 pack_bf16x8(const float f[8]) {
  u32x4 v;
  v.x = pack_bf16x2(f[0], f[1]);
  v.y = pack_bf16x2(f[2], f[3]);
  v.z = pack_bf16x2(f[4], f[5]);
  v.w = pack_bf16x2(f[6], f[7]);
  return v;
}

// Grid-stride loops over 1-D launches: this thread's global index and the grid's thread count.
KC_FN long long grid_thread() {
  return static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
}
KC_FN long long grid_threads() { return static_cast<long long>(gridDim.x) * blockDim.x; }

// Vector memory access. The address must be aligned to the vector size: the GPU faults
// ("misaligned address") otherwise, and the emulator checks it (the host compiler may split
// the access into scalar ones, which its memory checker alone would not flag).
#ifdef KC_DEVICE
#define KC_CHECK_ALIGNED(p, n, write)
#else
#define KC_CHECK_ALIGNED(p, n, write) kc_emu::check_aligned(p, n, write)
#endif
KC_FN f32x4 load4(const float* p) {
  KC_CHECK_ALIGNED(p, 16, false);
  return *reinterpret_cast<const f32x4*>(p);
}
// A 16-byte load through L2 only (ld.global.cg), for data that other blocks stored before a
// __threadfence and an atomic this block has observed (L1 is not coherent across SMs).
KC_FN f32x4 load4_cg(const float* p) {
  KC_CHECK_ALIGNED(p, 16, false);
#ifdef KC_DEVICE
  f32x4 r;
  asm volatile("ld.global.cg.v4.f32 {%0, %1, %2, %3}, [%4];\n"
               : "=f"(r.x), "=f"(r.y), "=f"(r.z), "=f"(r.w)
               : "l"(p)
               : "memory");
  return r;
#else
  const volatile float* v = p;
  return f32x4{v[0], v[1], v[2], v[3]};
#endif
}
KC_FN void store4(float* p, f32x4 v) {
  KC_CHECK_ALIGNED(p, 16, true);
  *reinterpret_cast<f32x4*>(p) = v;
}
KC_FN u32x4 load_u32x4(const void* p) {
  KC_CHECK_ALIGNED(p, 16, false);
  return *reinterpret_cast<const u32x4*>(p);
}
KC_FN void store_u32x4(void* p, u32x4 v) {
  KC_CHECK_ALIGNED(p, 16, true);
  *reinterpret_cast<u32x4*>(p) = v;
}
KC_FN u32x2 load_u32x2(const void* p) {
  KC_CHECK_ALIGNED(p, 8, false);
  return *reinterpret_cast<const u32x2*>(p);
}
KC_FN void store_u32x2(void* p, u32x2 v) {
  KC_CHECK_ALIGNED(p, 8, true);
  *reinterpret_cast<u32x2*>(p) = v;
}
#undef KC_CHECK_ALIGNED

// Element i of an f32 or bf16 array as f32, and its store rounded once (nearest even).
KC_FN float ld(const float* p, long long i) { return p[i]; }
KC_FN float ld(const bf16* p, long long i) { return to_f32(p[i]); }
KC_FN void st(float* p, long long i, float v) { p[i] = v; }
KC_FN void st(bf16* p, long long i, float v) { p[i] = to_bf16(v); }

// Where head slot s of Falcon's fused qkv row goes (hq query heads, hkv kv heads of the
// multi-query or grouped layout): kind 0 = q, 1 = k, 2 = v, and the head index.
//   multi-query (grouped = 0, hkv = 1):  slots [q_0 .. q_{hq-1} | k | v]
//   grouped     (grouped = 1):           hkv groups of (r = hq/hkv query heads, k, v)
KC_FN void qkv_slot_of(int s, int hq, int hkv, int grouped, int& kind, int& head) {
  if (grouped) {
    const int r = hq / hkv;
    const int g = s / (r + 2), j = s % (r + 2);
    kind = j < r ? 0 : (j == r ? 1 : 2);
    head = j < r ? g * r + j : g;
  } else {
    kind = s < hq ? 0 : (s == hq ? 1 : 2);
    head = s < hq ? s : 0;
  }
}

// Eight consecutive elements as f32 through 16-byte accesses (one for bf16, two for f32); the
// pointer must be 16-byte aligned. For kernels that take the vector path only after checking
// `aligned16` on their pointers and a multiple-of-8 length, with a scalar path otherwise.
KC_FN bool aligned16(const void* p) { return (reinterpret_cast<u64>(p) & 15u) == 0; }
KC_FN void load8(const float* p, float f[8]) {
  const f32x4 a = load4(p), b = load4(p + 4);
  f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w;
  f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}
KC_FN void load8(const bf16* p, float f[8]) { unpack_bf16x8(load_u32x4(p), f); }
KC_FN void store8(float* p, const float f[8]) {
  store4(p, f32x4{f[0], f[1], f[2], f[3]});
  store4(p + 4, f32x4{f[4], f[5], f[6], f[7]});
}
KC_FN void store8(bf16* p, const float f[8]) { store_u32x4(p, pack_bf16x8(f)); }
// W = 8 or 1 elements: load8/store8, or one ld/st (kernels templated on their access width).
template <int W, class T>
KC_FN void ldw(const T* p, float f[W]) {
  if constexpr (W == 8)
    load8(p, f);
  else
    f[0] = ld(p, 0);
}
template <int W, class T>
KC_FN void stw(T* p, const float f[W]) {
  if constexpr (W == 8)
    store8(p, f);
  else
    st(p, 0, f[0]);
}

// Warp reductions over all 32 lanes (every lane must call). Butterfly with offsets 16..1: the
// order of additions is fixed, so the result is the same in every lane and on every run.
KC_FN float warp_sum(float v) {
KC_UNROLL
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o, 32);
  return v;
}
KC_FN float warp_max(float v) {
KC_UNROLL
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o, 32));
  return v;
}

// ---- PTX wrappers (sm_80+) ----------------------------------------------------------------

// 32-bit shared-state-space address of a generic pointer into shared memory.
KC_FN u32 smem_u32(const void* p) {
#ifdef KC_DEVICE
  u32 r;
  asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
  return r;
#else
  return kc_emu::smem_u32(p);
#endif
}

// D = A*B + C for one warp: A 16x16 bf16 (row), B 16x8 bf16 (col), C/D 16x8 f32.
// Lane l (g = l/4, t = l%4) holds a[0]={A[g][2t],A[g][2t+1]}, a[1]={A[g+8][2t],..},
// a[2]={A[g][2t+8],..}, a[3]={A[g+8][2t+8],..}; b[0]={B[2t][g],B[2t+1][g]}, b[1]={B[2t+8][g],..};
// c/d[0..3] = C[g][2t], C[g][2t+1], C[g+8][2t], C[g+8][2t+1]. All 32 lanes must execute it.
KC_FN void mma_m16n8k16_bf16(float d[4], const u32 a[4], const u32 b[2], const float c[4]) {
#ifdef KC_DEVICE
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
#else
  kc_emu::mma_m16n8k16_bf16(d, a, b, c);
#endif
}

// ldmatrix m8n8 b16: lane 8j+r supplies the 16-byte-aligned shared address of row r of matrix j.
// Without .trans lane l receives r[j] = {M_j[g][2t], M_j[g][2t+1]}; with .trans
// r[j] = {M_j[2t][g], M_j[2t+1][g]}. All 32 lanes must execute it.
#ifdef KC_DEVICE
#define KC_LDMATRIX(NAME, NUM, TRANS, OUTS, ...)                                                   \
  KC_FN void NAME(u32 r[NUM], const void* row_ptr) {                                               \
    asm volatile("ldmatrix.sync.aligned.m8n8.x" #NUM TRANS ".shared.b16 " OUTS ", [%" #NUM "];\n"  \
                 : __VA_ARGS__                                                                     \
                 : "r"(smem_u32(row_ptr))                                                          \
                 : "memory");                                                                      \
  }
KC_LDMATRIX(ldmatrix_x1, 1, "", "{%0}", "=r"(r[0]))
KC_LDMATRIX(ldmatrix_x2, 2, "", "{%0,%1}", "=r"(r[0]), "=r"(r[1]))
KC_LDMATRIX(ldmatrix_x4, 4, "", "{%0,%1,%2,%3}", "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]))
KC_LDMATRIX(ldmatrix_x1_trans, 1, ".trans", "{%0}", "=r"(r[0]))
KC_LDMATRIX(ldmatrix_x2_trans, 2, ".trans", "{%0,%1}", "=r"(r[0]), "=r"(r[1]))
KC_LDMATRIX(ldmatrix_x4_trans, 4, ".trans", "{%0,%1,%2,%3}", "=r"(r[0]), "=r"(r[1]), "=r"(r[2]),
            "=r"(r[3]))
#undef KC_LDMATRIX
#else
KC_FN void ldmatrix_x1(u32 r[1], const void* p) { kc_emu::ldmatrix(r, p, 1, false); }
KC_FN void ldmatrix_x2(u32 r[2], const void* p) { kc_emu::ldmatrix(r, p, 2, false); }
KC_FN void ldmatrix_x4(u32 r[4], const void* p) { kc_emu::ldmatrix(r, p, 4, false); }
KC_FN void ldmatrix_x1_trans(u32 r[1], const void* p) { kc_emu::ldmatrix(r, p, 1, true); }
KC_FN void ldmatrix_x2_trans(u32 r[2], const void* p) { kc_emu::ldmatrix(r, p, 2, true); }
KC_FN void ldmatrix_x4_trans(u32 r[4], const void* p) { kc_emu::ldmatrix(r, p, 4, true); }
#endif

// cp.async global -> shared of `cp` bytes (4, 8 or 16; both addresses aligned to it). Only
// `src_bytes` bytes are read; the rest of the destination is zero-filled (0 = all zeros, the way
// to predicate off-the-edge tiles). Completes only at cp_async_wait*; __syncthreads does not.
#ifdef KC_DEVICE
KC_FN void cp_async_16(void* smem_dst, const void* gmem_src, u32 src_bytes = 16) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem_dst)),
               "l"(gmem_src), "r"(src_bytes)
               : "memory");
}
KC_FN void cp_async_8(void* smem_dst, const void* gmem_src, u32 src_bytes = 8) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(smem_u32(smem_dst)),
               "l"(gmem_src), "r"(src_bytes)
               : "memory");
}
KC_FN void cp_async_4(void* smem_dst, const void* gmem_src, u32 src_bytes = 4) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(smem_dst)),
               "l"(gmem_src), "r"(src_bytes)
               : "memory");
}
KC_FN void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
KC_FN void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
KC_FN void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }
KC_FN void fence_block() { __threadfence_block(); }
KC_FN void fence_gpu() { __threadfence(); }
#else
KC_FN void cp_async_16(void* d, const void* s, u32 n = 16) { kc_emu::cp_async(d, s, 16, n); }
KC_FN void cp_async_8(void* d, const void* s, u32 n = 8) { kc_emu::cp_async(d, s, 8, n); }
KC_FN void cp_async_4(void* d, const void* s, u32 n = 4) { kc_emu::cp_async(d, s, 4, n); }
KC_FN void cp_async_commit() { kc_emu::cp_async_commit(); }
template <int N>
KC_FN void cp_async_wait() {
  kc_emu::cp_async_wait(N);
}
KC_FN void cp_async_wait_all() {
  kc_emu::cp_async_commit();
  kc_emu::cp_async_wait(0);
}
KC_FN void fence_block() { __threadfence_block(); }
KC_FN void fence_gpu() { __threadfence(); }
#endif

// ---- warpgroup MMA (wgmma), sm_90a only -----------------------------------------------------
//
// KC_HAS_WGMMA is 1 where the wgmma instructions exist: under NVRTC only for the arch-specific
// target sm_90a (compute_90a defines __CUDA_ARCH_FEAT_SM90_ALL; plain sm_90 rejects wgmma), and
// always in the emulator. Kernels that use them are compiled only where it is 1.
#if !defined(KC_DEVICE) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define KC_HAS_WGMMA 1
#else
#define KC_HAS_WGMMA 0
#endif

// Shared-memory matrix descriptor of a wgmma operand (PTX ISA, "Matrix Descriptor Format"):
// `saddr` (shared state space, kc::smem_u32), the leading and stride dimension byte offsets, and
// the swizzle mode: WGMMA_SWIZZLE_NONE (core matrices of 8 rows x 16 bytes, LBO between them
// along K, SBO along M/N), _128B, _64B or _32B (rows of that many bytes, 8-row groups SBO apart,
// the tile aligned to 8 rows x the swizzle width). Base offset 0.
enum WgmmaSwizzle { WGMMA_SWIZZLE_NONE = 0, WGMMA_SWIZZLE_128B = 1, WGMMA_SWIZZLE_64B = 2, WGMMA_SWIZZLE_32B = 3 };
KC_FN u64 wgmma_desc(u32 saddr, u32 lbo_bytes, u32 sbo_bytes, WgmmaSwizzle swizzle) {
  return static_cast<u64>((saddr & 0x3ffffu) >> 4) | (static_cast<u64>((lbo_bytes & 0x3ffffu) >> 4) << 16) |
         (static_cast<u64>((sbo_bytes & 0x3ffffu) >> 4) << 32) | (static_cast<u64>(swizzle) << 62);
}

#if KC_HAS_WGMMA
// D (64 x N, f32) = A (64 x 16 bf16, registers) · B (16 x N bf16, K-major, descriptor) + (scale_d ? D : 0)
// for the 128 threads of a warpgroup (all must execute it): wgmma.mma_async.m64nNk16 with A in
// registers. Warp w of the warpgroup holds A rows 16w..16w+15 in the mma.sync m16n8k16 A layout
// (see mma_m16n8k16_bf16); lane (g, t) of warp w holds d[4j + i] = D[16w + g + 8·(i/2)][8j + 2t + i%2].
// Asynchronous: d and the B tile stay untouched until a wgmma_wait retires it; wgmma_fence
// before the first wgmma and after other instructions touched d or a; shared memory written by
// stores or cp.async needs fence_proxy_async (by the writer) and a barrier before the wgmma.
template <int N>
KC_FN void wgmma_m64k16_bf16_rs(float (&d)[N / 2], const u32 a[4], u64 desc_b, int scale_d);
#ifdef KC_DEVICE
KC_FN void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
KC_FN void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
KC_FN void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
KC_FN void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Keeps the compiler from moving accesses of an accumulator register across a wgmma boundary.
KC_FN void wgmma_fence_operand(float& r) { asm volatile("" : "+f"(r)::"memory"); }
template <>
KC_FN void wgmma_m64k16_bf16_rs<64>(float (&d)[32], const u32 a[4], u64 desc_b, int scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
      "}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d)
      : "memory");
}
template <>
KC_FN void wgmma_m64k16_bf16_rs<128>(float (&d)[64], const u32 a[4], u64 desc_b, int scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
      "}, {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d)
      : "memory");
}
#else
template <int N>
KC_FN void wgmma_m64k16_bf16_rs(float (&d)[N / 2], const u32 a[4], u64 desc_b, int scale_d) {
  kc_emu::wgmma_m64k16_bf16_rs(d, N, a, desc_b, scale_d);
}
KC_FN void wgmma_fence() { kc_emu::wgmma_fence(); }
KC_FN void wgmma_commit() { kc_emu::wgmma_commit(); }
template <int N>
KC_FN void wgmma_wait() {
  kc_emu::wgmma_wait(N);
}
KC_FN void fence_proxy_async() { kc_emu::fence_proxy_async_shared(); }
KC_FN void wgmma_fence_operand(float&) {}
#endif
#endif  // KC_HAS_WGMMA

}  // namespace kc
