// Deterministic reductions in two passes (no float atomics):
//   pass 1 (sum_f32 / sumsq_f32 / sumsq_bf16): block b reduces the elements i = b*blockDim + t
//     + k*gridDim*blockDim (grid-stride), writes partial[b];
//   pass 2 (sum_partials_f32, one block): out[0] = sum of partial[0..m).
// With a fixed grid and block size every addition happens in a fixed order, so the result is
// bitwise reproducible. Block size: a multiple of 32, at most 1024.
#include "common.cuh"

// Sum over the block; the result is valid in thread 0. Two levels: a warp butterfly, then the
// first warp reduces the per-warp sums kept in shared memory. Each kernel below reduces once and
// touches no shared memory afterwards, so no barrier follows the read of warp_sums. A caller
// that reduced twice would need one before the second call's writes (the emulator's checker
// reports that write-after-read race: checkers.rs, reused buffer without a barrier).
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float warp_sums[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int nwarps = blockDim.x / 32;
  v = kc::warp_sum(v);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  float s = 0.0f;
  if (warp == 0) {
    s = lane < nwarps ? warp_sums[lane] : 0.0f;
    s = kc::warp_sum(s);
  }
  return s;
}

extern "C" __global__ void __launch_bounds__(1024) sum_f32(float* partial, const float* x, int n) {
  float acc = 0.0f;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) acc += x[i];
  float s = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

extern "C" __global__ void __launch_bounds__(1024) sumsq_f32(float* partial, const float* x, int n) {
  float acc = 0.0f;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    acc += x[i] * x[i];
  float s = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

extern "C" __global__ void __launch_bounds__(1024) sumsq_bf16(float* partial, const kc::bf16* x, int n) {
  float acc = 0.0f;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    float v = kc::to_f32(x[i]);
    acc += v * v;
  }
  float s = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// Launch with exactly one block.
extern "C" __global__ void __launch_bounds__(1024) sum_partials_f32(float* out, const float* partial, int m) {
  float acc = 0.0f;
  for (int i = threadIdx.x; i < m; i += blockDim.x) acc += partial[i];
  float s = block_sum(acc);
  if (threadIdx.x == 0) out[0] = s;
}
