// RoPE (NeoX rotate-half) fused with Falcon's QKV split, forward and backward.
//
// Input of the forward: the fused projection qkv [b, t, S·d] with S = hq + 2·hkv head slots of
// d = head_dim elements, in one of Falcon's two layouts:
//   multi-query (grouped = 0, hkv = 1):  slots [q_0 .. q_{hq-1} | k | v]
//   grouped     (grouped = 1):           hkv groups of (r = hq/hkv query heads, k, v)
// Outputs q [b, hq, t, d] and k [b, hkv, t, d] rotated, v [b, hkv, t, d] copied. For position p
// (positions [b, t] u32) and i < h = d/2, θ_i = f32(p)·inv_freq[i] (inv_freq computed on the host
// in f32 as the CPU reference does: 1/base^(2i/d); cos/sin tabulated by rope_table):
//   y[i] = x[i]·cos θ_i − x[i+h]·sin θ_i,   y[i+h] = x[i+h]·cos θ_i + x[i]·sin θ_i
// (an odd last element passes through). The backward maps (dq, dk, dv) to dqkv in the fused
// layout with the inverse rotation (−θ); every dqkv element is written exactly once.
//
// Cost (Falcon-7B, b·t = 1024, S = 73, d = 64, bf16): reads and writes 1024·73·64·2 B = 9.6 MB
// each way, 6 FLOP per pair: bandwidth-bound (~5 µs at 4 TB/s). Design:
//  - rope_table (once per step, shared by every layer and by forward, recompute and backward,
//    since all layers use the same positions): cs[tok][0..h) = cos θ, cs[tok][h..2h) = sin θ.
//    Full-range cosf/sinf need a local-memory (stack) argument reduction for large θ, which is
//    why this is a separate, not-hot kernel.
//  - rope_qkv_*: one block per token (b, t): the block stages its 2h cos/sin values in shared
//    memory and reuses them for all S slots; threads walk the (slot, i) pairs with i fastest, so
//    reads of the fused row and writes of each output head row are coalesced.
#include "common.cuh"

using kc::bf16;
using kc::u32;

#define ROPE_BLOCK 128
#define ROPE_MAX_HALF 128  // head_dim ≤ 256

__device__ __forceinline__ float ld(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16* p, long long i) { return kc::to_f32(p[i]); }
__device__ __forceinline__ void st(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void st(bf16* p, long long i, float v) { p[i] = kc::to_bf16(v); }

// Where head slot s of the fused row goes: kind 0 = q, 1 = k, 2 = v, and the head index.
__device__ __forceinline__ void slot_of(int s, int hq, int hkv, int grouped, int& kind, int& head) {
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

// BWD = false: fused -> (q, k, v) rotating by +θ. BWD = true: (dq, dk, dv) -> fused, by −θ.
// TF is the element type of the fused row, TH that of the head rows (they differ only in
// rope_qkv_bwd_f32_bf16). The source side (fused, or q/k/v) is only read; the entry points
// cast its const away to share this one body.
template <class TF, class TH, bool BWD>
__device__ __forceinline__ void rope_qkv(TF* fused, TH* q, TH* k, TH* v, const float* table,
                                         int t, int hq, int hkv, int d, int grouped) {
  __shared__ float cs[2][ROPE_MAX_HALF];
  const int tok = blockIdx.x;  // b·t + s
  const int bi = tok / t, si = tok % t;
  const int h = d / 2;
  const float* trow = table + static_cast<long long>(tok) * 2 * h;
  for (int i = threadIdx.x; i < h; i += blockDim.x) {
    cs[0][i] = trow[i];
    cs[1][i] = BWD ? -trow[h + i] : trow[h + i];
  }
  __syncthreads();
  const int slots = hq + 2 * hkv;
  const int per = h + (d & 1);  // work items per slot: h pairs (+1 pass-through for odd d)
  TF* row = fused + static_cast<long long>(tok) * slots * d;
  for (int w = threadIdx.x; w < slots * per; w += blockDim.x) {
    const int s = w / per, i = w % per;
    int kind, head;
    slot_of(s, hq, hkv, grouped, kind, head);
    const int nh = kind == 0 ? hq : hkv;
    TH* dst = kind == 0 ? q : (kind == 1 ? k : v);
    TH* hrow = dst + ((static_cast<long long>(bi) * nh + head) * t + si) * d;
    TF* frow = row + static_cast<long long>(s) * d;
    // Element e of the source row, and its store to the output row.
    auto in = [&](int e) { return BWD ? ld(hrow, e) : ld(frow, e); };
    auto out = [&](int e, float x) {
      if (BWD)
        st(frow, e, x);
      else
        st(hrow, e, x);
    };
    if (i == h) {  // odd d: the last element is not rotated
      out(d - 1, in(d - 1));
    } else if (kind == 2) {
      out(i, in(i));
      out(i + h, in(i + h));
    } else {
      const float c = cs[0][i], sn = cs[1][i];
      const float x0 = in(i), x1 = in(i + h);
      out(i, x0 * c - x1 * sn);
      out(i + h, x1 * c + x0 * sn);
    }
  }
}

// cs [tokens, 2h]: cos θ then sin θ, θ = f32(pos[tok])·inv_freq[i]. Grid-stride over tokens·h.
extern "C" __global__ void rope_table(float* cs, const u32* pos, const float* inv_freq, int tokens,
                                      int h) {
  const long long n = static_cast<long long>(tokens) * h;
  for (long long w = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; w < n;
       w += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long tok = w / h;
    const int i = static_cast<int>(w % h);
    const float th = static_cast<float>(pos[tok]) * inv_freq[i];
    cs[tok * 2 * h + i] = cosf(th);
    cs[tok * 2 * h + h + i] = sinf(th);
  }
}

// grid = b·t, block = ROPE_BLOCK, table from rope_table.
extern "C" __global__ void __launch_bounds__(ROPE_BLOCK)
    rope_qkv_fwd_f32(float* q, float* k, float* v, const float* qkv, const float* table, int t,
                     int hq, int hkv, int d, int grouped) {
  rope_qkv<float, float, false>(const_cast<float*>(qkv), q, k, v, table, t, hq, hkv, d, grouped);
}

extern "C" __global__ void __launch_bounds__(ROPE_BLOCK)
    rope_qkv_fwd_bf16(bf16* q, bf16* k, bf16* v, const bf16* qkv, const float* table, int t,
                      int hq, int hkv, int d, int grouped) {
  rope_qkv<bf16, bf16, false>(const_cast<bf16*>(qkv), q, k, v, table, t, hq, hkv, d, grouped);
}

extern "C" __global__ void __launch_bounds__(ROPE_BLOCK)
    rope_qkv_bwd_f32(float* dqkv, const float* dq, const float* dk, const float* dv,
                     const float* table, int t, int hq, int hkv, int d, int grouped) {
  rope_qkv<float, float, true>(dqkv, const_cast<float*>(dq), const_cast<float*>(dk),
                        const_cast<float*>(dv), table, t, hq, hkv, d, grouped);
}

extern "C" __global__ void __launch_bounds__(ROPE_BLOCK)
    rope_qkv_bwd_bf16(bf16* dqkv, const bf16* dq, const bf16* dk, const bf16* dv,
                      const float* table, int t, int hq, int hkv, int d, int grouped) {
  rope_qkv<bf16, bf16, true>(dqkv, const_cast<bf16*>(dq), const_cast<bf16*>(dk), const_cast<bf16*>(dv),
                       table, t, hq, hkv, d, grouped);
}

// The backward from the attention's f32 gradients straight to the bf16 fused gradient that the
// qkv GEMM consumes: one pass instead of an f32 dqkv and a cast (half the written bytes, one
// launch and one f32 [tokens, S·d] buffer fewer). Rounds once, as the cast did.
extern "C" __global__ void __launch_bounds__(ROPE_BLOCK)
    rope_qkv_bwd_f32_bf16(bf16* dqkv, const float* dq, const float* dk, const float* dv,
                          const float* table, int t, int hq, int hkv, int d, int grouped) {
  rope_qkv<bf16, float, true>(dqkv, const_cast<float*>(dq), const_cast<float*>(dk),
                              const_cast<float*>(dv), table, t, hq, hkv, d, grouped);
}
