// Kernels with one deliberate bug each, and their corrected twins, for the tests that prove the
// emulator's checkers (kernels-cu/tests/checkers.rs). Emulator-only: never compiled to PTX.
// Every kernel runs one block of blockDim.x <= 256 threads unless its comment says otherwise.
#include "common.cuh"

using kc::u32;
using kc::u32x4;

// out[t] = in[t - 1] through (dynamic, 4 * blockDim.x bytes) shared memory; the reader has the
// HIGHER thread index, so in the ascending order the value is already there and the bug gives
// the right answer.
extern "C" __global__ void seeded_missing_barrier(float* out, const float* in, int with_barrier) {
  KC_DYNAMIC_SHARED(float, s);
  const int t = threadIdx.x;
  s[t] = in[t];
  if (with_barrier) __syncthreads();
  out[t] = t > 0 ? s[t - 1] : 0.0f;
}

// Two rounds through one shared buffer: round two overwrites s[t] while thread t - 1 may still be
// reading it from round one, unless a second barrier separates them.
extern "C" __global__ void seeded_reused_buffer(float* out, const float* in, int with_barrier) {
  __shared__ float s[256];
  const int t = threadIdx.x, n = blockDim.x;
  s[t] = in[t];
  __syncthreads();
  const float a = s[(t + 1) % n];
  if (with_barrier) __syncthreads();
  s[t] = 2.0f * a;
  __syncthreads();
  out[t] = s[(t + 1) % n];
}

// A 16-byte vector load `byte_offset` bytes into `in` (a 16-byte aligned buffer).
extern "C" __global__ void seeded_vector_load(u32* out, const u32* in, int byte_offset) {
  const int t = threadIdx.x;
  const u32x4 v = kc::load_u32x4(reinterpret_cast<const unsigned char*>(in) + byte_offset + 16 * t);
  out[t] = v.x ^ v.y ^ v.z ^ v.w;
}

// Thread t copies in[4t..4t+4) into shared memory by cp.async and thread t reads thread
// (t + 1)'s slot. Correct: wait, then barrier, then read. Bug: barrier, then read, then wait
// (a barrier does not complete another thread's cp.async).
extern "C" __global__ void seeded_cp_async_before_wait(float* out, const float* in, int correct) {
  __shared__ __align__(16) float s[4 * 256];
  const int t = threadIdx.x, n = blockDim.x;
  kc::cp_async_16(&s[4 * t], &in[4 * t]);
  kc::cp_async_commit();
  if (correct) kc::cp_async_wait<0>();
  __syncthreads();
  out[t] = s[4 * ((t + 1) % n)];
  if (!correct) kc::cp_async_wait<0>();
}

// Every block writes out[0] (bug), or adds to it atomically (correct). Several blocks.
extern "C" __global__ void seeded_blocks_share_an_address(int* out, int atomic) {
  if (threadIdx.x != 0) return;
  if (atomic) atomicAdd(out, static_cast<int>(blockIdx.x) + 1);
  else out[0] = static_cast<int>(blockIdx.x) + 1;
}

// Lanes of one warp exchange values through shared memory; __syncwarp orders them (a warp
// collective), its absence is a race even inside one warp. One warp.
extern "C" __global__ void seeded_warp_exchange(u32* out, const u32* in, int with_syncwarp) {
  __shared__ u32 s[32];
  const int lane = threadIdx.x;
  s[lane] = in[lane];
  if (with_syncwarp) __syncwarp();
  out[lane] = s[lane ^ 1];
}

// Reads one element past the end of `in` (n elements) when `past_end` is set.
extern "C" __global__ void seeded_read_past_end(float* out, const float* in, int n, int past_end) {
  const int t = threadIdx.x;
  if (t < n) out[t] = in[t + (past_end && t == n - 1 ? 1 : 0)];
}

// Thread 0 clears a shared flag that the threads holding a match then set atomically; without
// the barrier between the clear and the atomics the plain store races them.
extern "C" __global__ void seeded_flag_cleared_without_barrier(int* out, const u32* in, u32 key,
                                                               int with_barrier) {
  __shared__ int found;
  const int t = threadIdx.x;
  if (t == 0) found = 0;
  if (with_barrier) __syncthreads();
  if (in[t] == key) atomicOr(&found, 1);
  __syncthreads();
  out[t] = found;
}

// The block reduction of cuda/reduce.cu (no barrier after the read of warp_sums) called twice:
// the second call's per-warp writes race warp 0's reads of the first unless a barrier separates
// the calls. out[0] = Σ in, out[1] = Σ in². A multiple of 32 threads, at least 64.
__device__ float seeded_block_sum(float v) {
  __shared__ float warp_sums[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = kc::warp_sum(v);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  float s = 0.0f;
  if (warp == 0) s = kc::warp_sum(lane < static_cast<int>(blockDim.x / 32) ? warp_sums[lane] : 0.0f);
  return s;
}

extern "C" __global__ void seeded_block_sum_twice(float* out, const float* in, int with_barrier) {
  const float x = in[threadIdx.x];
  const float a = seeded_block_sum(x);
  if (with_barrier) __syncthreads();
  const float b = seeded_block_sum(x * x);
  if (threadIdx.x == 0) {
    out[0] = a;
    out[1] = b;
  }
}

// Deterministic split-K in small: block z (of gridDim.x) stores its partial part[z][t] =
// (z + 1) * in[z * blockDim.x + t], takes a ticket on *ctr, and the last block to take one sums
// the partials in the order z = 0, 1, ... into out and resets the counter. `mode`:
//   0 correct: __threadfence before the ticket (release) and after it (acquire);
//   1 no release fence; 2 no acquire fence;
//   3 no ticket: the last block by index sums after its own fence, assuming the others are done.
// Several blocks.
extern "C" __global__ void seeded_split_ticket(float* out, float* part, u32* ctr, const float* in, int mode) {
  __shared__ u32 s_last;
  const int t = threadIdx.x, n = blockDim.x, z = blockIdx.x, splits = gridDim.x;
  part[z * n + t] = static_cast<float>(z + 1) * in[z * n + t];
  if (mode != 1) __threadfence();
  __syncthreads();
  if (t == 0) {
    u32 last = z == splits - 1 ? 1u : 0u;
    if (mode != 3) {
      last = atomicAdd(ctr, 1u) == static_cast<u32>(splits - 1) ? 1u : 0u;
      if (last) atomicExch(ctr, 0u);
    }
    s_last = last;
  }
  __syncthreads();
  if (s_last == 0u) return;
  if (mode != 2) __threadfence();
  float sum = 0.0f;
  for (int zz = 0; zz < splits; ++zz) sum += part[zz * n + t];
  out[t] = sum;
}
