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

// ---- warpgroup MMA ----------------------------------------------------------------------------
//
// One launch of `ksteps` chained wgmma.mma_async.m64nNk16 per warpgroup (blockDim.x = 128 per
// warpgroup): D = A·B + (scale_d ? C : 0). A is (64·warpgroups) x (16·ksteps) bf16 row-major in
// global memory; warpgroup q uses rows 64q.. and loads them into the register A fragments. B's
// shared-memory image (`img_bytes`, a multiple of 16, prepared by the host for the descriptor
// below) is copied by cp.async to a 1024-byte aligned tile of dynamic shared memory (launch with
// img_bytes + 1024 bytes). k-step s reads B through wgmma_desc(tile + desc_off + s·kstep_bytes,
// lbo, sbo, swizzle). C and out are (64·warpgroups) x n f32 row-major. After the wait a thread
// of the last warpgroup overwrites the first byte of the B tile, after a barrier.
// `bug` seeds one error: 0 none; 1 a write to the B tile while the wgmma is in flight; 2 no
// fence.proxy.async after the cp.async data landed; 3 an accumulator register written while in
// flight; 4 the overwrite after the wait without the barrier (two or more warpgroups); 5 no
// wgmma.fence; 6 no barrier between the copy and the wgmma.
template <int N>
__device__ void seeded_wgmma_run(float* out, const kc::bf16* a_g, const float* c_g, unsigned char* tile, int desc_off,
                                 int lbo, int sbo, int swizzle, int ksteps, int kstep_bytes, int scale_d, int bug) {
  const int tid = threadIdx.x, q = tid / 128, w = (tid % 128) / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int kdim = 16 * ksteps;
  float d[N / 2];
  for (int i = 0; i < N / 2; ++i) {
    const int m = 64 * q + 16 * w + g + 8 * ((i >> 1) & 1), n = 8 * (i >> 2) + 2 * t + (i & 1);
    d[i] = c_g[m * N + n];
  }
  if (bug != 5) kc::wgmma_fence();
  const u32 tile_saddr = kc::smem_u32(tile);
  for (int s = 0; s < ksteps; ++s) {
    u32 a[4];
    for (int r = 0; r < 4; ++r) {
      const int m = 64 * q + 16 * w + g + 8 * (r & 1), k = 16 * s + 2 * t + 8 * (r >> 1);
      a[r] = static_cast<u32>(a_g[m * kdim + k].bits) | (static_cast<u32>(a_g[m * kdim + k + 1].bits) << 16);
    }
    const kc::u64 desc = kc::wgmma_desc(tile_saddr + static_cast<u32>(desc_off + s * kstep_bytes),
                                        static_cast<u32>(lbo), static_cast<u32>(sbo),
                                        static_cast<kc::WgmmaSwizzle>(swizzle));
    kc::wgmma_m64k16_bf16_rs<N>(d, a, desc, s == 0 ? scale_d : 1);
  }
  kc::wgmma_commit();
  if (bug == 1 && tid == 0) tile[desc_off] = 0;
  if (bug == 3 && tid == 5) d[0] = 1.0f;
  kc::wgmma_wait<0>();
  if (bug != 4) __syncthreads();
  if (tid == static_cast<int>(blockDim.x) - 1) tile[desc_off] = 0;
  for (int i = 0; i < N / 2; ++i) {
    const int m = 64 * q + 16 * w + g + 8 * ((i >> 1) & 1), n = 8 * (i >> 2) + 2 * t + (i & 1);
    out[m * N + n] = d[i];
  }
}

extern "C" __global__ void seeded_wgmma(float* out, const kc::bf16* a_g, const unsigned char* img, const float* c_g,
                                        int n, int img_bytes, int desc_off, int lbo, int sbo, int swizzle, int ksteps,
                                        int kstep_bytes, int scale_d, int bug) {
  KC_DYNAMIC_SHARED(unsigned char, smem);
  const u32 pad = (1024u - (kc::smem_u32(smem) & 1023u)) & 1023u;
  unsigned char* tile = smem + pad;
  for (int i = threadIdx.x; i < img_bytes / 16; i += blockDim.x) kc::cp_async_16(tile + 16 * i, img + 16 * i);
  kc::cp_async_commit();
  kc::cp_async_wait<0>();
  if (bug != 2) kc::fence_proxy_async();
  if (bug != 6) __syncthreads();
  switch (n) {
    case 8: seeded_wgmma_run<8>(out, a_g, c_g, tile, desc_off, lbo, sbo, swizzle, ksteps, kstep_bytes, scale_d, bug); break;
    case 64: seeded_wgmma_run<64>(out, a_g, c_g, tile, desc_off, lbo, sbo, swizzle, ksteps, kstep_bytes, scale_d, bug); break;
    case 128: seeded_wgmma_run<128>(out, a_g, c_g, tile, desc_off, lbo, sbo, swizzle, ksteps, kstep_bytes, scale_d, bug); break;
    case 256: seeded_wgmma_run<256>(out, a_g, c_g, tile, desc_off, lbo, sbo, swizzle, ksteps, kstep_bytes, scale_d, bug); break;
    default: __trap();
  }
}
