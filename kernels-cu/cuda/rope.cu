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
//    reads of the fused row and writes of each output head row are coalesced. Where d is a
//    multiple of 16 a thread takes eight pairs at once as 16-byte vectors (bit-identical results:
//    every pair is computed the same way).
#include "common.cuh"

using kc::bf16;
using kc::ldw;
using kc::stw;
using kc::u32;

#define ROPE_BLOCK 128
#define ROPE_MAX_HALF 128  // head_dim ≤ 256


// BWD = false: fused -> (q, k, v) rotating by +θ. BWD = true: (dq, dk, dv) -> fused, by −θ.
// TF is the element type of the fused row, TH that of the head rows (they differ only in
// rope_qkv_bwd_f32_bf16). The source side (fused, or q/k/v) is only read; the entry points
// cast its const away to share this one body. W pairs per work item: 8 (16-byte vectors of the
// elements i..i+7 and i+h..i+h+7) or 1.
template <int W, class TF, class TH, bool BWD>
__device__ __forceinline__ void rope_pairs(TF* row, TH* q, TH* k, TH* v, const float (*cs)[ROPE_MAX_HALF],
                                           int bi, int si, int t, int hq, int hkv, int d,
                                           int grouped) {
  const int h = d / 2;
  const int slots = hq + 2 * hkv;
  // Work items per slot: h/8 vectors (d % 16 == 0), or h pairs (+1 pass-through for odd d).
  const int per = W == 8 ? h / 8 : h + (d & 1);
  for (int w = threadIdx.x; w < slots * per; w += blockDim.x) {
    const int s = w / per, i = W * (w % per);
    int kind, head;
    kc::qkv_slot_of(s, hq, hkv, grouped, kind, head);
    const int nh = kind == 0 ? hq : hkv;
    TH* dst = kind == 0 ? q : (kind == 1 ? k : v);
    TH* hrow = dst + ((static_cast<long long>(bi) * nh + head) * t + si) * d;
    TF* frow = row + static_cast<long long>(s) * d;
    if (W == 1 && i == h) {  // odd d: the last element is not rotated
      float x[1];
      BWD ? ldw<1>(hrow + d - 1, x) : ldw<1>(frow + d - 1, x);
      BWD ? stw<1>(frow + d - 1, x) : stw<1>(hrow + d - 1, x);
      continue;
    }
    float x0[W], x1[W];
    if (BWD) {
      ldw<W>(hrow + i, x0);
      ldw<W>(hrow + i + h, x1);
    } else {
      ldw<W>(frow + i, x0);
      ldw<W>(frow + i + h, x1);
    }
    if (kind != 2) {
KC_UNROLL
      for (int e = 0; e < W; ++e) {
        const float c = cs[0][i + e], sn = cs[1][i + e];
        const float a = x0[e], b = x1[e];
        x0[e] = a * c - b * sn;
        x1[e] = b * c + a * sn;
      }
    }
    if (BWD) {
      stw<W>(frow + i, x0);
      stw<W>(frow + i + h, x1);
    } else {
      stw<W>(hrow + i, x0);
      stw<W>(hrow + i + h, x1);
    }
  }
}

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
  TF* row = fused + static_cast<long long>(tok) * (hq + 2 * hkv) * d;
  // Head sizes that are multiples of 16 (64, 128: every Falcon's; h a multiple of 8) with
  // aligned arrays keep every row and half-row start 16-byte aligned; the choice is the same
  // for every block.
  if (d % 16 == 0 && kc::aligned16(fused) && kc::aligned16(q) && kc::aligned16(k) &&
      kc::aligned16(v))
    rope_pairs<8, TF, TH, BWD>(row, q, k, v, cs, bi, si, t, hq, hkv, d, grouped);
  else
    rope_pairs<1, TF, TH, BWD>(row, q, k, v, cs, bi, si, t, hq, hkv, d, grouped);
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
