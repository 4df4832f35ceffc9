// Elementwise kernels, f32 and bf16. Grid-stride loops: any grid covers any n; every element is
// computed independently (no ordering question). bf16 kernels compute in f32 and round once.
//
//   add:   out[i] = a[i] + b[i]
//   scale: out[i] = s * x[i]
//   axpy:  y[i]   = alpha * x[i] + y[i]      (in place)
//
// Bandwidth-bound (the step's axpy adds residual gradients of [tokens, hidden] bf16): each
// thread moves eight elements per access as 16-byte vectors (one for bf16, two for f32), then
// a scalar tail. Buffer views can start at any element, so the vector loop runs only when
// every pointer is 16-byte aligned (whole allocations are); otherwise all of it is scalar.
#include "common.cuh"

using kc::bf16;

// out[i] = f(a[i], b[i]) over n elements, eight at a time.
template <class T, class F>
__device__ __forceinline__ void map2(T* out, const T* a, const T* b, int n, F f) {
  // Views may start anywhere: vectors only when all three are 16-byte aligned (the same for
  // every thread), scalars otherwise.
  const bool vec = kc::aligned16(out) && kc::aligned16(a) && kc::aligned16(b);
  const long long nv = vec ? n / 8 : 0;
  for (long long i = kc::grid_thread(); i < nv; i += kc::grid_threads()) {
    float x[8], y[8];
    kc::load8(a + 8 * i, x);
    kc::load8(b + 8 * i, y);
KC_UNROLL
    for (int k = 0; k < 8; ++k) x[k] = f(x[k], y[k]);
    kc::store8(out + 8 * i, x);
  }
  for (long long i = 8 * nv + kc::grid_thread(); i < n; i += kc::grid_threads())
    kc::st(out, i, f(kc::ld(a, i), kc::ld(b, i)));
}

struct Add {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};
struct Scale {
  float s;
  __device__ __forceinline__ float operator()(float x, float) const { return s * x; }
};
struct Axpy {
  float alpha;
  __device__ __forceinline__ float operator()(float y, float x) const { return alpha * x + y; }
};

extern "C" __global__ void add_f32(float* out, const float* a, const float* b, int n) {
  map2(out, a, b, n, Add{});
}

extern "C" __global__ void scale_f32(float* out, const float* x, float s, int n) {
  map2(out, x, x, n, Scale{s});
}

extern "C" __global__ void axpy_f32(float* y, const float* x, float alpha, int n) {
  map2(y, static_cast<const float*>(y), x, n, Axpy{alpha});
}

extern "C" __global__ void add_bf16(bf16* out, const bf16* a, const bf16* b, int n) {
  map2(out, a, b, n, Add{});
}

extern "C" __global__ void scale_bf16(bf16* out, const bf16* x, float s, int n) {
  map2(out, x, x, n, Scale{s});
}

extern "C" __global__ void axpy_bf16(bf16* y, const bf16* x, float alpha, int n) {
  map2(y, static_cast<const bf16*>(y), x, n, Axpy{alpha});
}
