// Host emulator of the CUDA execution model: the CUDA built-ins that kernel sources use, for the
// host C++ compiler. Included by cuda/common.cuh when not compiling with NVRTC.
//
// Model: one fiber per CUDA thread; the fibers of one block run on one OS thread, so a
// `__shared__` variable is a function-local `static thread_local`. Blocks run in parallel on a
// small pool of OS threads. Barriers, warp collectives (shuffles, votes, __syncwarp), mma.sync,
// ldmatrix, cp.async and the warpgroup MMA (wgmma) are implemented in runtime.cpp.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
};

namespace kc_emu {

struct ThreadState {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};

// The CUDA thread whose fiber is running on this OS thread.
extern thread_local ThreadState* tls_current;
inline ThreadState& cur() { return *tls_current; }

void* dynamic_smem();
void syncthreads();
void syncthreads_at(const char* file, int line);
void syncwarp(unsigned mask);
// __threadfence: a real sequentially consistent fence (blocks run on several OS threads), and an
// event for the checker's release/acquire model (checker.h). Out of line because the kernel
// families are compiled with -fsanitize=thread, under which GCC refuses __atomic_thread_fence.
void threadfence();
// __threadfence_block: a block's threads run on one OS thread, so only the compiler must not
// move memory accesses across it, which an out-of-line call already ensures.
void threadfence_block();
unsigned long long shfl(int mode, unsigned mask, unsigned long long v, int b, int width);
unsigned vote_ballot(unsigned mask, int pred);
int vote_all(unsigned mask, int pred);
unsigned activemask();
void mma_m16n8k16_bf16(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]);
void ldmatrix(unsigned* r, const void* row_ptr, int num, bool trans);
unsigned smem_u32(const void* p);
void cp_async(void* dst, const void* src, unsigned cp_size, unsigned src_size);
void cp_async_commit();
void cp_async_wait(int n);
// Warpgroup MMA (sm_90a), runtime.cpp: wgmma.fence / commit_group / wait_group and
// wgmma.mma_async.m64nNk16.f32.bf16.bf16 with A in registers and B through a shared-memory matrix
// descriptor; each is a collective of the 128 threads of a warpgroup. fence.proxy.async.shared::cta
// is a per-thread event for the checker (generic-proxy writes before async-proxy reads).
void wgmma_fence();
void wgmma_commit();
void wgmma_wait(int n);
void wgmma_m64k16_bf16_rs(float* d, int n, const unsigned a[4], unsigned long long desc_b, int scale_d);
void fence_proxy_async_shared();
[[noreturn]] void trap(const char* what);
// A misaligned `n`-byte access at p: the launch fails with a message naming the memory.
[[noreturn]] void misaligned(const void* p, unsigned n, bool write);
inline void check_aligned(const void* p, unsigned n, bool write) {
  if (reinterpret_cast<uintptr_t>(p) & (n - 1)) misaligned(p, n, write);
}

enum ShflMode { SHFL_IDX = 0, SHFL_UP = 1, SHFL_DOWN = 2, SHFL_XOR = 3 };

template <class T>
inline T shfl_t(int mode, unsigned mask, T v, int b, int width) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "shuffles move 32- or 64-bit values");
  unsigned long long raw = 0;
  std::memcpy(&raw, &v, sizeof(T));
  raw = shfl(mode, mask, raw, b, width);
  T out;
  std::memcpy(&out, &raw, sizeof(T));
  return out;
}

// ---- launch registry: how Rust calls a kernel with a cuLaunchKernel-style argument array -----

// Two characters per parameter: 'P' (pointer to mutable) / 'p' (pointer to const) / 'v' (by
// value), then the element type: f f32, d f64, i i32, u u32, l i64, L u64, b bf16, h f16, c u8,
// s i8, w u16, x other.
template <class T>
struct TypeCode {
  static constexpr char c = 'x';
};
#define KC_EMU_CODE(T, C)            \
  template <>                        \
  struct TypeCode<T> {               \
    static constexpr char c = C;     \
  };
KC_EMU_CODE(float, 'f')
KC_EMU_CODE(double, 'd')
KC_EMU_CODE(int, 'i')
KC_EMU_CODE(unsigned, 'u')
KC_EMU_CODE(long long, 'l')
KC_EMU_CODE(long, 'l')
KC_EMU_CODE(unsigned long long, 'L')
KC_EMU_CODE(unsigned long, 'L')
KC_EMU_CODE(unsigned char, 'c')
KC_EMU_CODE(signed char, 's')
KC_EMU_CODE(unsigned short, 'w')
#undef KC_EMU_CODE

template <class T>
inline std::string param_code() {
  if constexpr (std::is_pointer_v<T>) {
    using E = std::remove_pointer_t<T>;
    std::string s(1, std::is_const_v<E> ? 'p' : 'P');
    s += TypeCode<std::remove_cv_t<E>>::c;
    return s;
  } else {
    return std::string("v") + TypeCode<std::remove_cv_t<T>>::c;
  }
}

struct KernelEntry {
  const char* name;
  void (*run)(void* const* args);
  const char* (*signature)();
  unsigned nargs;
};

template <auto F>
struct Trampoline;
template <class... A, void (*F)(A...)>
struct Trampoline<F> {
  template <std::size_t... I>
  static void call(void* const* args, std::index_sequence<I...>) {
    F(*static_cast<std::remove_cv_t<A>*>(args[I])...);
  }
  static void run(void* const* args) { call(args, std::index_sequence_for<A...>{}); }
  static const char* signature() {
    static const std::string s = (std::string() + ... + param_code<A>());
    return s.c_str();
  }
  static constexpr unsigned nargs = sizeof...(A);
};

}  // namespace kc_emu

#define KC_EMU_ENTRY(NS, NAME)                                                                     \
  kc_emu::KernelEntry {                                                                            \
    #NAME, &kc_emu::Trampoline<&NS::NAME>::run, &kc_emu::Trampoline<&NS::NAME>::signature,         \
        kc_emu::Trampoline<&NS::NAME>::nargs                                                       \
  }

// ---- CUDA C++ spellings -------------------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __shared__ static thread_local

#define threadIdx (kc_emu::cur().thread_idx)
#define blockIdx (kc_emu::cur().block_idx)
#define blockDim (kc_emu::cur().block_dim)
#define gridDim (kc_emu::cur().grid_dim)
#define warpSize 32

// A macro, so that the barrier knows its source line: KERNELS_CU_EMU_SKIP_BARRIER=FILE:LINE
// turns that one __syncthreads into a no-op (barrier mutation testing,
// scripts/barrier-mutations.sh).
#define __syncthreads() kc_emu::syncthreads_at(__FILE__, __LINE__)
inline void __syncwarp(unsigned mask = 0xffffffffu) { kc_emu::syncwarp(mask); }
inline void __threadfence() { kc_emu::threadfence(); }
inline void __threadfence_block() { kc_emu::threadfence_block(); }
[[noreturn]] inline void __trap() { kc_emu::trap("__trap() called"); }

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  return kc_emu::shfl_t(kc_emu::SHFL_IDX, mask, v, src, width);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return kc_emu::shfl_t(kc_emu::SHFL_UP, mask, v, static_cast<int>(delta), width);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return kc_emu::shfl_t(kc_emu::SHFL_DOWN, mask, v, static_cast<int>(delta), width);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return kc_emu::shfl_t(kc_emu::SHFL_XOR, mask, v, lane_mask, width);
}
inline unsigned __ballot_sync(unsigned mask, int pred) { return kc_emu::vote_ballot(mask, pred); }
inline int __any_sync(unsigned mask, int pred) { return kc_emu::vote_ballot(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) { return kc_emu::vote_all(mask, pred); }
inline unsigned __activemask() { return kc_emu::activemask(); }

// Atomics: blocks run on different OS threads, so these are real atomic operations.
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
inline float atomicAdd(float* p, float v) {
  float old;
  __atomic_load(p, &old, __ATOMIC_RELAXED);
  float next = old + v;
  while (!__atomic_compare_exchange(p, &old, &next, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    next = old + v;
  }
  return old;
}
template <class T, class F>
inline T atomic_update(T* p, F f) {
  T old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (!__atomic_compare_exchange_n(p, &old, f(old), true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
inline int atomicMax(int* p, int v) { return atomic_update(p, [v](int o) { return o > v ? o : v; }); }
inline int atomicMin(int* p, int v) { return atomic_update(p, [v](int o) { return o < v ? o : v; }); }
inline unsigned atomicMax(unsigned* p, unsigned v) {
  return atomic_update(p, [v](unsigned o) { return o > v ? o : v; });
}
inline unsigned atomicMin(unsigned* p, unsigned v) {
  return atomic_update(p, [v](unsigned o) { return o < v ? o : v; });
}
inline int atomicOr(int* p, int v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicOr(unsigned* p, unsigned v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicExch(unsigned* p, unsigned v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
inline int atomicExch(int* p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicCAS(unsigned* p, unsigned expected, unsigned desired) {
  __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return expected;
}
inline int atomicCAS(int* p, int expected, int desired) {
  __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return expected;
}

// Device math functions that the host library lacks or spells differently.
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float __int_as_float(int i) {
  float f;
  std::memcpy(&f, &i, 4);
  return f;
}
inline int __float_as_int(float f) {
  int i;
  std::memcpy(&i, &f, 4);
  return i;
}
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
