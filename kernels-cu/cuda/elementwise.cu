// Elementwise kernels, f32 and bf16. Grid-stride loops: any grid covers any n; every element is
// computed independently (no ordering question). bf16 kernels compute in f32 and round once.
//
//   add:   out[i] = a[i] + b[i]
//   scale: out[i] = s * x[i]
//   axpy:  y[i]   = alpha * x[i] + y[i]      (in place)
#include "common.cuh"

using kc::bf16;

extern "C" __global__ void add_f32(float* out, const float* a, const float* b, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    out[i] = a[i] + b[i];
}

extern "C" __global__ void scale_f32(float* out, const float* x, float s, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    out[i] = s * x[i];
}

extern "C" __global__ void axpy_f32(float* y, const float* x, float alpha, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    y[i] = alpha * x[i] + y[i];
}

extern "C" __global__ void add_bf16(bf16* out, const bf16* a, const bf16* b, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    out[i] = kc::to_bf16(kc::to_f32(a[i]) + kc::to_f32(b[i]));
}

extern "C" __global__ void scale_bf16(bf16* out, const bf16* x, float s, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    out[i] = kc::to_bf16(s * kc::to_f32(x[i]));
}

extern "C" __global__ void axpy_bf16(bf16* y, const bf16* x, float alpha, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    y[i] = kc::to_bf16(alpha * kc::to_f32(x[i]) + kc::to_f32(y[i]));
}
