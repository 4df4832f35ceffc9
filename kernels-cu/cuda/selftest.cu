// Kernels that exercise the execution model and the PTX wrappers, for the self-tests of the
// emulator (and, on a GPU, of the wrappers themselves). Not used by the engine.
#include "common.cuh"

using kc::u32;

// out[t] = shuffle of in[t] with mode 0 idx, 1 up, 2 down, 3 xor; b = srcLane/delta/laneMask.
// For mode 0 the source lane is per thread: b + lane_step * lane.
extern "C" __global__ void selftest_shfl(u32* out, const u32* in, int mode, int b, int lane_step, int width) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  const int lane = threadIdx.x % 32;
  const u32 v = in[t];
  u32 r = 0;
  if (mode == 0) r = __shfl_sync(0xffffffffu, v, b + lane_step * lane, width);
  else if (mode == 1) r = __shfl_up_sync(0xffffffffu, v, static_cast<unsigned>(b), width);
  else if (mode == 2) r = __shfl_down_sync(0xffffffffu, v, static_cast<unsigned>(b), width);
  else r = __shfl_xor_sync(0xffffffffu, v, b, width);
  out[t] = r;
}

// 64-bit payloads move as one value per lane (two 32-bit shuffles on the hardware).
extern "C" __global__ void selftest_shfl_f64(double* out, const double* in, int lane_mask) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  out[t] = __shfl_xor_sync(0xffffffffu, in[t], lane_mask, 32);
}

// Votes over the full warp: ballot[t], any[t], all[t] for predicate pred[t].
extern "C" __global__ void selftest_vote(u32* ballot, int* any, int* all, const int* pred) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  const int p = pred[t];
  ballot[t] = __ballot_sync(0xffffffffu, p);
  any[t] = __any_sync(0xffffffffu, p) != 0;
  all[t] = __all_sync(0xffffffffu, p) != 0;
}

// One warp per block. Shared memory holds four 8x8 b16 matrices with a row stride of 24
// elements (rows are not contiguous); element (j, r, c) = j*64 + r*8 + c + 1 + 256*blockIdx.x.
// Lane 8j+r supplies row r of matrix j; the other lanes pass an unrelated (aligned) address.
// out[(block*32 + lane)*4 + j] = destination register j (unused registers stay as poisoned).
extern "C" __global__ void selftest_ldmatrix(u32* out, int num, int trans) {
  __shared__ __align__(16) kc::u16 tile[4 * 8 * 24];
  const int lane = threadIdx.x;
  for (int e = lane; e < 4 * 64; e += 32) {
    const int j = e / 64, r = (e / 8) % 8, c = e % 8;
    tile[(j * 8 + r) * 24 + c] = static_cast<kc::u16>(j * 64 + r * 8 + c + 1 + 256 * blockIdx.x);
  }
  __syncthreads();
  const int j = lane / 8, r = lane % 8;
  const void* row = lane < 8 * num ? &tile[(j * 8 + r) * 24] : &tile[0];
  u32 regs[4] = {0, 0, 0, 0};
  if (num == 1) {
    if (trans) kc::ldmatrix_x1_trans(regs, row); else kc::ldmatrix_x1(regs, row);
  } else if (num == 2) {
    if (trans) kc::ldmatrix_x2_trans(regs, row); else kc::ldmatrix_x2(regs, row);
  } else {
    if (trans) kc::ldmatrix_x4_trans(regs, row); else kc::ldmatrix_x4(regs, row);
  }
  for (int k = 0; k < num; k++) out[(blockIdx.x * 32 + lane) * 4 + k] = regs[k];
}

// One mma.sync per warp on fragments given per lane: a[(w*32+l)*4+i], b[(w*32+l)*2+i],
// c[(w*32+l)*4+i] -> d[(w*32+l)*4+i]. Checks the emulator's fragment layout against the tables.
extern "C" __global__ void selftest_mma_fragments(float* d, const u32* a, const u32* b, const float* c) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  u32 ar[4], br[2];
  float cr[4], dr[4];
  for (int i = 0; i < 4; i++) ar[i] = a[t * 4 + i];
  for (int i = 0; i < 2; i++) br[i] = b[t * 2 + i];
  for (int i = 0; i < 4; i++) cr[i] = c[t * 4 + i];
  kc::mma_m16n8k16_bf16(dr, ar, br, cr);
  for (int i = 0; i < 4; i++) d[t * 4 + i] = dr[i];
}

// D = A*B + C for one 16x16x8 tile per block (one warp): A 16x16 and B 16x8 row-major bf16,
// C and D 16x8 row-major f32, tile b at offset b*256 / b*128 / b*128. A and B go to shared memory
// with cp.async (rows padded to 24 elements), the fragments come from the ldmatrix recipes
// (A: x4 at &As[l%16][8*(l/16)]; B: x2.trans at &Bs[l%16][0]).
extern "C" __global__ void selftest_mma_tile(float* d, const kc::bf16* a, const kc::bf16* b, const float* c) {
  __shared__ __align__(16) kc::bf16 As[16 * 24];
  __shared__ __align__(16) kc::bf16 Bs[16 * 24];
  const int l = threadIdx.x;
  const kc::bf16* at = a + blockIdx.x * 256;
  const kc::bf16* bt = b + blockIdx.x * 128;
  // A: 16 rows x 32 bytes = 32 chunks of 16 bytes, one per lane. B: 16 rows x 16 bytes.
  kc::cp_async_16(&As[(l / 2) * 24 + (l % 2) * 8], at + (l / 2) * 16 + (l % 2) * 8);
  kc::cp_async_commit();
  if (l < 16) kc::cp_async_16(&Bs[l * 24], bt + l * 8);
  kc::cp_async_commit();
  kc::cp_async_wait<0>();
  __syncthreads();
  u32 af[4], bf[2];
  kc::ldmatrix_x4(af, &As[(l % 16) * 24 + 8 * (l / 16)]);
  kc::ldmatrix_x2_trans(bf, &Bs[(l % 16) * 24]);
  const int g = l / 4, q = l % 4;
  const float* ct = c + blockIdx.x * 128;
  float cf[4] = {ct[g * 8 + 2 * q], ct[g * 8 + 2 * q + 1], ct[(g + 8) * 8 + 2 * q], ct[(g + 8) * 8 + 2 * q + 1]};
  float df[4];
  kc::mma_m16n8k16_bf16(df, af, bf, cf);
  float* dt = d + blockIdx.x * 128;
  dt[g * 8 + 2 * q] = df[0];
  dt[g * 8 + 2 * q + 1] = df[1];
  dt[(g + 8) * 8 + 2 * q] = df[2];
  dt[(g + 8) * 8 + 2 * q + 1] = df[3];
}

// cp.async groups and zero fill. Thread t copies in[4t..4t+4) (16 bytes, only src_bytes of them
// read, the rest zero) in group 0 and in[4(n+t)..) in group 1; after wait_group 1 the first
// copy is complete and, after a barrier, visible to the neighbour thread. Then wait_group 0.
// out[4t..] = first chunk of thread (t+1)%n, out[4(n+t)..] = second chunk of thread (t+1)%n.
extern "C" __global__ void selftest_cp_async(float* out, const float* in, int src_bytes) {
  KC_DYNAMIC_SHARED(float, sm);
  const int n = blockDim.x, t = threadIdx.x;
  kc::cp_async_16(&sm[4 * t], &in[4 * t], static_cast<u32>(src_bytes));
  kc::cp_async_commit();
  kc::cp_async_16(&sm[4 * (n + t)], &in[4 * (n + t)], static_cast<u32>(src_bytes));
  kc::cp_async_commit();
  kc::cp_async_wait<1>();
  __syncthreads();
  const int u = (t + 1) % n;
  kc::store4(&out[4 * t], kc::load4(&sm[4 * u]));
  kc::cp_async_wait_all();
  __syncthreads();
  kc::store4(&out[4 * (n + t)], kc::load4(&sm[4 * (n + u)]));
}

// Misuse, for the emulator's error detection: half of each block returns before __syncthreads.
extern "C" __global__ void selftest_divergent_barrier(float* out) {
  if (threadIdx.x < blockDim.x / 2) return;
  __syncthreads();
  out[threadIdx.x] = 1.0f;
}

// Misuse: lanes 0..15 shuffle, lanes 16..31 __syncwarp, both over the full warp.
extern "C" __global__ void selftest_mismatched_warp(float* out) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x % 32 < 16) v = __shfl_xor_sync(0xffffffffu, v, 1, 32);
  else __syncwarp(0xffffffffu);
  out[threadIdx.x] = v;
}

// Misuse: writes one element past the end of out (n elements); for the AddressSanitizer test.
extern "C" __global__ void selftest_out_of_bounds(float* out, int n) {
  if (threadIdx.x == 0 && blockIdx.x == 0) out[n] = 1.0f;
}

// Conversions of common.cuh: h[i] = to_f16(x[i]), h_back[i] = to_f32(h[i]), b[i] = to_bf16(x[i]),
// packed[i/2] = pack_bf16x2(x[i], x[i+1]) for even i (n even).
extern "C" __global__ void selftest_convert(kc::f16* h, float* h_back, kc::bf16* b, u32* packed, const float* x, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    h[i] = kc::to_f16(x[i]);
    h_back[i] = kc::to_f32(h[i]);
    b[i] = kc::to_bf16(x[i]);
    if (i % 2 == 0) packed[i / 2] = kc::pack_bf16x2(x[i], x[i + 1]);
  }
}

// For the emulator's cp.async model only (on hardware reading before the wait is undefined):
// each thread stores -1 to its shared slot, issues a cp.async into it, and reads the slot
// before waiting (out[t]) and after waiting (out[n + t]).
extern "C" __global__ void selftest_cp_async_read_before_wait(float* out, const float* in) {
  __shared__ __align__(16) float slot[4 * 128];
  const int t = threadIdx.x, n = blockDim.x;
  for (int e = 0; e < 4; e++) slot[4 * t + e] = -1.0f;
  kc::cp_async_16(&slot[4 * t], &in[4 * t]);
  kc::cp_async_commit();
  out[t] = slot[4 * t];
  kc::cp_async_wait<0>();
  out[n + t] = slot[4 * t];
}

// Divergent half-warps with disjoint masks: lanes 0..15 butterfly with mask 0x0000ffff, lanes
// 16..31 synchronise and shift down by 2 with mask 0xffff0000 (both width 16).
extern "C" __global__ void selftest_half_warps(u32* out, const u32* in) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  const int lane = threadIdx.x % 32;
  u32 v = in[t];
  if (lane < 16) {
    v = __shfl_xor_sync(0x0000ffffu, v, 1, 16);
  } else {
    __syncwarp(0xffff0000u);
    v = __shfl_down_sync(0xffff0000u, v, 2, 16);
  }
  out[t] = v;
}
