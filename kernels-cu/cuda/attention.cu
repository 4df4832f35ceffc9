// Fused causal attention with grouped KV heads (MHA/GQA/MQA) and a key padding mask, flash
// style: online softmax, no t×tk matrix in global memory, bf16 in, fp32 accumulation.
// Reference: engine/src/ops/attention.rs (same shapes and semantics).
//
//   q [b, hq, t, d], k/v [b, hkv, tk, d] (bf16, row-major), key_mask [b, tk] u8 (0 = padding).
//   Query head h reads KV head h / (hq/hkv). Query row i sits at absolute position tk - t + i and,
//   when causal, sees keys j <= tk - t + i. S = scale·Q·Kᵀ (hidden entries -inf),
//   lse = logsumexp_rows(S), P = exp(S - lse), O = P·V. A row with no visible key writes O = 0,
//   lse = -inf, and receives no gradient.
//   Backward: Dᵢ = Σ_c dOᵢc·Oᵢc, dV = Pᵀ·dO, dP = dO·Vᵀ, dS = scale·P∘(dP - D),
//   dQ = dS·K, dK = dSᵀ·Q.
//
// Cost (Falcon-7B: b = 2, hq = 71, hkv = 1, t = tk = 512, d = 64, causal): forward
// 4·b·hq·t·tk·d FLOP = 9.5 GFLOP dense (about half with the causal skip); backward 2.5x that
// (five products instead of two). Bytes: q/o/dO 2·b·hq·t·d·2 B = 9.3 MB each, k/v 131 KB (L2
// resident, re-read by all 71 heads): tensor-core bound, arithmetic intensity ≈ t/2 FLOP/B.
//
// Design (4 warps per block; every warp owns 16 rows of the block's tile; smem rows padded by
// 8 bf16 (16 B) so ldmatrix row addresses spread over all banks):
//  - attn_fwd_d{64,128}: grid (⌈t/64⌉, hq, b). The Q tile (64 rows) goes through shared memory
//    into registers as mma A fragments once. KV tiles of 64 keys: K_j and V_j are fetched with
//    cp.async into one K and one V buffer, V_j overlapping S = Q·K_jᵀ and K_{j+1} overlapping
//    O += P·V_j (the FlashAttention-2 schedule). S stays in registers (mma C fragments); the
//    row max/sum use quad shuffles; P is re-packed from C fragments straight into A fragments
//    (no shared-memory round trip). exp2 with scale·log2(e) folded into one multiply. Causal
//    blocks stop at the last visible key tile. Output bf16, lse fp32 (natural log).
//  - attn_bwd_dot: Dᵢ = rowsum(dO∘O) in fp32, one warp per row.
//  - attn_bwd_dkdv_d{64,128}: grid (⌈tk/64⌉, hkv, b); the block owns 64 keys of one KV head and
//    keeps dK/dV for them in registers, looping over the group's query heads in order and over
//    query tiles (skipping tiles entirely before the first key, when causal): Sᵀ = K·Qᵀ,
//    Pᵀ = exp(Sᵀ - lse), dV += Pᵀ·dO, dPᵀ = V·dOᵀ, dSᵀ = Pᵀ∘(dPᵀ - D), dK += dSᵀ·Q. Each
//    key tile is written by exactly one block: deterministic, no atomics. The MQA/GQA sum over
//    query heads happens in registers in head order.
//  - attn_bwd_dq_d{64,128}: grid (⌈t/64⌉, hq, b); the block owns 64 query rows and loops over
//    KV tiles: S = Q·Kᵀ, P, dP = dO·Vᵀ, dS, dQ += dS·K. Deterministic (one writer per row).
//  - Both backward kernels stream their moving operand (Q/dO/lse/D tiles, resp. K/V tiles and
//    key flags) through two shared-memory stages: tile i+1 is in flight (cp.async) while tile i
//    is computed. Operands of the mma come from shared memory by ldmatrix (x4, .trans where
//    the B operand is stored [k][n]); only accumulators live in registers.
//  - d = 128 uses 32-row tiles for the streamed operand of the backward kernels so the fp32
//    accumulators (2·16·128/32 = 128 registers per lane for dK+dV) leave room without spills.
//  Shared memory per block: forward 18.7 KB (d 64) / 35.1 KB (d 128); dK/dV 56.6 / 70.4 KB;
//  dQ 55.8 / 69.9 KB (above 48 KB: the launch opts in to the device maximum).
//  Gradients are written in fp32 (dQ [b,hq,t,d], dK/dV [b,hkv,tk,d]).
#include "common.cuh"

using kc::bf16;
using kc::u32;
using kc::u8;

#define ATT_WARPS 4
#define ATT_THREADS (ATT_WARPS * 32)
#define ATT_TILE 64  // query rows per forward / dQ block, keys per KV tile and dK/dV block
#define ATT_LOG2E 1.4426950408889634f
#define ATT_LN2 0.6931471805599453f
#define kNegInf (kc::f32_from_bits(0xff800000u))  // -inf

namespace {

// Starts a cp.async copy of `rows` rows of `D` bf16 (row `r0` onwards of a [n, D] matrix) into
// shared memory with row stride D + 8. Rows at or past `n` are zero-filled (the source address
// stays inside the matrix).
template <int D>
__device__ __forceinline__ void load_rows(bf16* s, const bf16* g, int r0, int rows, int n) {
  constexpr int CH = D / 8;  // 16-byte chunks per row
  for (int c = threadIdx.x; c < rows * CH; c += ATT_THREADS) {
    const int r = c / CH, col = (c % CH) * 8;
    const bool ok = r0 + r < n;
    const bf16* src = g + (long long)(ok ? r0 + r : 0) * D + col;
    kc::cp_async_16(s + r * (D + 8) + col, src, ok ? 16u : 0u);
  }
}

// A fragment (16x16) of a row-major [rows][D+8] tile at row r0, column k0.
template <int D>
__device__ __forceinline__ void ld_a(u32 a[4], const bf16* s, int r0, int k0) {
  const int l = threadIdx.x % 32;
  kc::ldmatrix_x4(a, s + (r0 + (l % 8) + ((l / 8) & 1) * 8) * (D + 8) + k0 + (l / 16) * 8);
}

// B fragments of two n-tiles (n0, n0+8) for one k16 step at k0, where the tile is stored
// [n][k] (B = tileᵀ, e.g. K for Q·Kᵀ): b[0..1] for n0, b[2..3] for n0+8.
template <int D>
__device__ __forceinline__ void ld_b_nk(u32 b[4], const bf16* s, int n0, int k0) {
  const int l = threadIdx.x % 32;
  kc::ldmatrix_x4(b, s + (n0 + (l % 8) + (l / 16) * 8) * (D + 8) + k0 + ((l / 8) & 1) * 8);
}

// Same, where the tile is stored [k][n] (B = tile, e.g. V for P·V): transposing ldmatrix.
template <int D>
__device__ __forceinline__ void ld_b_kn(u32 b[4], const bf16* s, int k0, int n0) {
  const int l = threadIdx.x % 32;
  kc::ldmatrix_x4_trans(b, s + (k0 + (l % 8) + ((l / 8) & 1) * 8) * (D + 8) + n0 + (l / 16) * 8);
}

__device__ __forceinline__ void mma(float c[4], const u32 a[4], const u32* b) {
  kc::mma_m16n8k16_bf16(c, a, b, c);
}

// C fragments of n-tiles 2kk, 2kk+1 (16 columns) re-packed as the A fragment of k-step kk.
__device__ __forceinline__ void c_to_a(u32 a[4], const float* c0, const float* c1) {
  a[0] = kc::pack_bf16x2(c0[0], c0[1]);
  a[1] = kc::pack_bf16x2(c0[2], c0[3]);
  a[2] = kc::pack_bf16x2(c1[0], c1[1]);
  a[3] = kc::pack_bf16x2(c1[2], c1[3]);
}

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1, 32));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2, 32));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1, 32);
  return v + __shfl_xor_sync(0xffffffffu, v, 2, 32);
}

// Writes flags[j] = key k0 + j exists and is not padding, for j < n.
__device__ __forceinline__ void key_flags(int* flags, const u8* mask, int has_mask, int k0, int n,
                                          int tk) {
  for (int j = threadIdx.x; j < n; j += ATT_THREADS) {
    const int key = k0 + j;
    flags[j] = key < tk && (!has_mask || mask[key] != 0);
  }
}

// ---- forward -----------------------------------------------------------------------------

template <int D>
__device__ __forceinline__ void attn_fwd(bf16* o, float* lse, const bf16* q, const bf16* k,
                                         const bf16* v, const u8* mask, int has_mask, int hq,
                                         int hkv, int t, int tk, int causal, float scale) {
  constexpr int BQ = ATT_TILE, BK = ATT_TILE, SR = D + 8, NT = BK / 8, DT = D / 8;
  KC_DYNAMIC_SHARED(bf16, smem);
  bf16* sK = smem;  // holds the Q tile first
  bf16* sV = smem + BK * SR;
  int* sOk = reinterpret_cast<int*>(sV + BK * SR);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
  const int h = blockIdx.y, b = blockIdx.z, q0 = blockIdx.x * BQ;
  const int kvh = h / (hq / hkv), off = tk - t;
  const long long bh = (long long)b * hq + h;
  const bf16* qg = q + bh * t * D;
  const bf16* kg = k + ((long long)b * hkv + kvh) * tk * D;
  const bf16* vg = v + ((long long)b * hkv + kvh) * tk * D;
  const u8* mk = mask + (long long)b * tk;
  const int kv_end = causal ? min(tk, off + q0 + BQ) : tk;
  const int n_kt = (kv_end + BK - 1) / BK;
  const float sl2 = scale * ATT_LOG2E;

  load_rows<D>(sK, qg, q0, BQ, t);
  kc::cp_async_commit();
  kc::cp_async_wait_all();
  __syncthreads();
  u32 qf[D / 16][4];
  KC_UNROLL
  for (int kk = 0; kk < D / 16; ++kk) ld_a<D>(qf[kk], sK, warp * 16, kk * 16);
  __syncthreads();
  load_rows<D>(sK, kg, 0, BK, tk);
  kc::cp_async_commit();

  float acc[DT][4];
  KC_UNROLL
  for (int n = 0; n < DT; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
  float m[2] = {kNegInf, kNegInf}, l[2] = {0.f, 0.f};
  const int row[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};

  for (int kt = 0; kt < n_kt; ++kt) {
    const int k0 = kt * BK;
    key_flags(sOk, mk, has_mask, k0, BK, tk);
    kc::cp_async_wait_all();  // K_kt
    __syncthreads();          // K_kt and flags visible; every warp is done with V_{kt-1}
    load_rows<D>(sV, vg, k0, BK, tk);
    kc::cp_async_commit();

    float s[NT][4];
    KC_UNROLL
    for (int n = 0; n < NT; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
    KC_UNROLL
    for (int kk = 0; kk < D / 16; ++kk) {
      KC_UNROLL
      for (int n = 0; n < NT; n += 2) {
        u32 bf[4];
        ld_b_nk<D>(bf, sK, n * 8, kk * 16);
        mma(s[n], qf[kk], bf);
        mma(s[n + 1], qf[kk], bf + 2);
      }
    }
    // Mask, scale into log2 units, online softmax.
    float mx[2] = {kNegInf, kNegInf};
    KC_UNROLL
    for (int n = 0; n < NT; ++n) {
      KC_UNROLL
      for (int e = 0; e < 4; ++e) {
        const int j = n * 8 + 2 * tq + (e & 1), r = e / 2;
        const bool vis = sOk[j] && (!causal || k0 + j <= off + row[r]);
        s[n][e] = vis ? s[n][e] * sl2 : kNegInf;
        mx[r] = fmaxf(mx[r], s[n][e]);
      }
    }
    float alpha[2], mnew[2];
    KC_UNROLL
    for (int r = 0; r < 2; ++r) {
      mnew[r] = fmaxf(m[r], quad_max(mx[r]));
      // All hidden so far: keep the (zero) state; exp2(-inf - finite) = 0 otherwise.
      alpha[r] = mnew[r] == kNegInf ? 1.f : exp2f(m[r] - mnew[r]);
      m[r] = mnew[r];
      l[r] *= alpha[r];
    }
    KC_UNROLL
    for (int n = 0; n < NT; ++n) {
      KC_UNROLL
      for (int e = 0; e < 4; ++e) {
        const int r = e / 2;
        const float p = mnew[r] == kNegInf ? 0.f : exp2f(s[n][e] - mnew[r]);
        s[n][e] = p;
        l[r] += p;
      }
    }
    KC_UNROLL
    for (int n = 0; n < DT; ++n) {
      acc[n][0] *= alpha[0];
      acc[n][1] *= alpha[0];
      acc[n][2] *= alpha[1];
      acc[n][3] *= alpha[1];
    }

    kc::cp_async_wait_all();  // V_kt
    __syncthreads();          // V_kt visible; every warp is done with K_kt
    if (kt + 1 < n_kt) load_rows<D>(sK, kg, k0 + BK, BK, tk);
    kc::cp_async_commit();

    KC_UNROLL
    for (int kk = 0; kk < BK / 16; ++kk) {
      u32 pa[4];
      c_to_a(pa, s[2 * kk], s[2 * kk + 1]);
      KC_UNROLL
      for (int n = 0; n < DT; n += 2) {
        u32 bf[4];
        ld_b_kn<D>(bf, sV, kk * 16, n * 8);
        mma(acc[n], pa, bf);
        mma(acc[n + 1], pa, bf + 2);
      }
    }
  }
  kc::cp_async_wait_all();

  KC_UNROLL
  for (int r = 0; r < 2; ++r) {
    const float sum = quad_sum(l[r]);
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
    if (row[r] < t) {
      bf16* orow = o + (bh * t + row[r]) * D;
      KC_UNROLL
      for (int n = 0; n < DT; ++n)
        *reinterpret_cast<u32*>(orow + n * 8 + 2 * tq) =
            kc::pack_bf16x2(acc[n][2 * r] * inv, acc[n][2 * r + 1] * inv);
      if (tq == 0) lse[bh * t + row[r]] = sum > 0.f ? (m[r] + log2f(sum)) * ATT_LN2 : kNegInf;
    }
  }
}

// ---- backward: dK, dV ----------------------------------------------------------------------

template <int D, int BQ>
__device__ __forceinline__ void attn_bwd_dkdv(float* dk, float* dv, const bf16* q, const bf16* k,
                                              const bf16* v, const u8* mask, int has_mask,
                                              const bf16* dout, const float* lse,
                                              const float* dd, int hq, int hkv, int t, int tk,
                                              int causal, float scale) {
  constexpr int BK = ATT_TILE, SR = D + 8, NT = BQ / 8, DT = D / 8;
  KC_DYNAMIC_SHARED(bf16, smem);
  bf16* sK = smem;
  bf16* sV = sK + BK * SR;
  // Two stages of the streamed query tile: Q, dO, lse·log2(e) (-inf: no row), D.
  bf16* sQb = sV + BK * SR;                                   // [2][BQ][SR]
  bf16* sOb = sQb + 2 * BQ * SR;                              // [2][BQ][SR] (dO)
  float* sLb = reinterpret_cast<float*>(sOb + 2 * BQ * SR);  // [2][BQ]
  float* sDb = sLb + 2 * BQ;                                  // [2][BQ]
  int* sOk = reinterpret_cast<int*>(sDb + 2 * BQ);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
  const int kvh = blockIdx.y, b = blockIdx.z, k0 = blockIdx.x * BK;
  const int r = hq / hkv, off = tk - t;
  const long long gkv = (long long)b * hkv + kvh;
  const float sl2 = scale * ATT_LOG2E;

  load_rows<D>(sK, k + gkv * tk * D, k0, BK, tk);
  load_rows<D>(sV, v + gkv * tk * D, k0, BK, tk);
  kc::cp_async_commit();
  key_flags(sOk, mask + (long long)b * tk, has_mask, k0, BK, tk);

  float dka[DT][4], dva[DT][4];
  KC_UNROLL
  for (int n = 0; n < DT; ++n)
    KC_UNROLL
  for (int e = 0; e < 4; ++e) dka[n][e] = dva[n][e] = 0.f;

  const int key[2] = {k0 + warp * 16 + g, k0 + warp * 16 + g + 8};
  // First query row that can see key k0 (causal), rounded down to a tile.
  const int i_first = causal ? max(0, k0 - off) : 0;
  const int qt_first = i_first / BQ, n_qt = (t + BQ - 1) / BQ;

  // Work items: (query head j of the group, query tile qt), heads in order. Item it+1 is
  // fetched (cp.async) into the other stage while item it is computed.
  const int per_head = n_qt - qt_first, n_items = r * per_head;
  auto fetch = [&](int it) {
    const int st = it & 1, q0 = (qt_first + it % per_head) * BQ;
    const long long bh = (long long)b * hq + kvh * r + it / per_head;
    load_rows<D>(sQb + st * BQ * SR, q + bh * t * D, q0, BQ, t);
    load_rows<D>(sOb + st * BQ * SR, dout + bh * t * D, q0, BQ, t);
    kc::cp_async_commit();
    for (int i = threadIdx.x; i < BQ; i += ATT_THREADS) {
      const bool ok = q0 + i < t;
      const float lv = ok ? lse[bh * t + q0 + i] : kNegInf;
      sLb[st * BQ + i] = lv == kNegInf ? kNegInf : lv * ATT_LOG2E;
      sDb[st * BQ + i] = ok ? dd[bh * t + q0 + i] : 0.f;
    }
  };
  if (n_items > 0) fetch(0);
  for (int it = 0; it < n_items; ++it) {
    {
      const int st = it & 1, q0 = (qt_first + it % per_head) * BQ;
      const bf16* sQ = sQb + st * BQ * SR;
      const bf16* sO = sOb + st * BQ * SR;
      const float* sL = sLb + st * BQ;
      const float* sD = sDb + st * BQ;
      kc::cp_async_wait_all();  // item it (and K/V on the first pass)
      __syncthreads();          // visible to all; every warp is done with item it-1's stage
      if (it + 1 < n_items) fetch(it + 1);

      // Sᵀ = K·Qᵀ (rows: this warp's 16 keys, columns: BQ queries) and dPᵀ = V·dOᵀ.
      float s[NT][4], dp[NT][4];
      KC_UNROLL
      for (int n = 0; n < NT; ++n)
        KC_UNROLL
      for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.f;
      KC_UNROLL
      for (int kk = 0; kk < D / 16; ++kk) {
        u32 ka[4], va[4];
        ld_a<D>(ka, sK, warp * 16, kk * 16);
        ld_a<D>(va, sV, warp * 16, kk * 16);
        KC_UNROLL
        for (int n = 0; n < NT; n += 2) {
          u32 bq[4], bo[4];
          ld_b_nk<D>(bq, sQ, n * 8, kk * 16);
          ld_b_nk<D>(bo, sO, n * 8, kk * 16);
          mma(s[n], ka, bq);
          mma(s[n + 1], ka, bq + 2);
          mma(dp[n], va, bo);
          mma(dp[n + 1], va, bo + 2);
        }
      }
      // Pᵀ and dSᵀ = scale·Pᵀ∘(dPᵀ - D), in place.
      KC_UNROLL
      for (int n = 0; n < NT; ++n) {
        KC_UNROLL
        for (int e = 0; e < 4; ++e) {
          const int i = n * 8 + 2 * tq + (e & 1), kr = e / 2;
          const bool vis = sOk[warp * 16 + g + 8 * kr] && sL[i] != kNegInf &&
                           (!causal || key[kr] <= off + q0 + i);
          const float p = vis ? exp2f(s[n][e] * sl2 - sL[i]) : 0.f;
          s[n][e] = p;
          dp[n][e] = scale * p * (dp[n][e] - sD[i]);
        }
      }
      // dV += Pᵀ·dO, dK += dSᵀ·Q.
      KC_UNROLL
      for (int kk = 0; kk < BQ / 16; ++kk) {
        u32 pa[4], sa[4];
        c_to_a(pa, s[2 * kk], s[2 * kk + 1]);
        c_to_a(sa, dp[2 * kk], dp[2 * kk + 1]);
        KC_UNROLL
        for (int n = 0; n < DT; n += 2) {
          u32 bo[4], bq[4];
          ld_b_kn<D>(bo, sO, kk * 16, n * 8);
          ld_b_kn<D>(bq, sQ, kk * 16, n * 8);
          mma(dva[n], pa, bo);
          mma(dva[n + 1], pa, bo + 2);
          mma(dka[n], sa, bq);
          mma(dka[n + 1], sa, bq + 2);
        }
      }
    }
  }

  kc::cp_async_wait_all();  // nothing in flight at exit, even with no query tile
  KC_UNROLL
  for (int kr = 0; kr < 2; ++kr) {
    if (key[kr] < tk) {
      float* dkr = dk + (gkv * tk + key[kr]) * D;
      float* dvr = dv + (gkv * tk + key[kr]) * D;
      KC_UNROLL
      for (int n = 0; n < DT; ++n) {
        const int c = n * 8 + 2 * tq;
        dkr[c] = dka[n][2 * kr];
        dkr[c + 1] = dka[n][2 * kr + 1];
        dvr[c] = dva[n][2 * kr];
        dvr[c + 1] = dva[n][2 * kr + 1];
      }
    }
  }
}

// ---- backward: dQ --------------------------------------------------------------------------

template <int D, int BK>
__device__ __forceinline__ void attn_bwd_dq(float* dq, const bf16* q, const bf16* k,
                                            const bf16* v, const u8* mask, int has_mask,
                                            const bf16* dout, const float* lse, const float* dd,
                                            int hq, int hkv, int t, int tk, int causal,
                                            float scale) {
  constexpr int BQ = ATT_TILE, SR = D + 8, NT = BK / 8, DT = D / 8;
  KC_DYNAMIC_SHARED(bf16, smem);
  bf16* sQ = smem;
  bf16* sO = sQ + BQ * SR;  // dO
  // Two stages of the streamed KV tile: K, V, key flags.
  bf16* sKb = sO + BQ * SR;                            // [2][BK][SR]
  bf16* sVb = sKb + 2 * BK * SR;                       // [2][BK][SR]
  int* sOkb = reinterpret_cast<int*>(sVb + 2 * BK * SR);  // [2][BK]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
  const int h = blockIdx.y, b = blockIdx.z, q0 = blockIdx.x * BQ;
  const int kvh = h / (hq / hkv), off = tk - t;
  const long long bh = (long long)b * hq + h;
  const bf16* kg = k + ((long long)b * hkv + kvh) * tk * D;
  const bf16* vg = v + ((long long)b * hkv + kvh) * tk * D;
  const u8* mk = mask + (long long)b * tk;
  const int kv_end = causal ? min(tk, off + q0 + BQ) : tk;
  const int n_kt = (kv_end + BK - 1) / BK;
  const float sl2 = scale * ATT_LOG2E;

  load_rows<D>(sQ, q + bh * t * D, q0, BQ, t);
  load_rows<D>(sO, dout + bh * t * D, q0, BQ, t);
  kc::cp_async_commit();

  const int row[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};
  float lr[2], dr[2];
  KC_UNROLL
  for (int r = 0; r < 2; ++r) {
    const bool ok = row[r] < t;
    const float lv = ok ? lse[bh * t + row[r]] : kNegInf;
    lr[r] = lv == kNegInf ? kNegInf : lv * ATT_LOG2E;
    dr[r] = ok ? dd[bh * t + row[r]] : 0.f;
  }
  float acc[DT][4];
  KC_UNROLL
  for (int n = 0; n < DT; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;

  // KV tile kt+1 is fetched (cp.async) into the other stage while tile kt is computed.
  auto fetch = [&](int kt) {
    const int st = kt & 1, k0 = kt * BK;
    load_rows<D>(sKb + st * BK * SR, kg, k0, BK, tk);
    load_rows<D>(sVb + st * BK * SR, vg, k0, BK, tk);
    kc::cp_async_commit();
    key_flags(sOkb + st * BK, mk, has_mask, k0, BK, tk);
  };
  fetch(0);
  for (int kt = 0; kt < n_kt; ++kt) {
    const int st = kt & 1, k0 = kt * BK;
    const bf16* sK = sKb + st * BK * SR;
    const bf16* sV = sVb + st * BK * SR;
    const int* sOk = sOkb + st * BK;
    kc::cp_async_wait_all();  // tile kt (and Q/dO on the first pass)
    __syncthreads();          // visible to all; every warp is done with tile kt-1's stage
    if (kt + 1 < n_kt) fetch(kt + 1);

    float s[NT][4], dp[NT][4];
    KC_UNROLL
    for (int n = 0; n < NT; ++n)
      KC_UNROLL
    for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.f;
    KC_UNROLL
    for (int kk = 0; kk < D / 16; ++kk) {
      u32 qa[4], oa[4];
      ld_a<D>(qa, sQ, warp * 16, kk * 16);
      ld_a<D>(oa, sO, warp * 16, kk * 16);
      KC_UNROLL
      for (int n = 0; n < NT; n += 2) {
        u32 bk[4], bv[4];
        ld_b_nk<D>(bk, sK, n * 8, kk * 16);
        ld_b_nk<D>(bv, sV, n * 8, kk * 16);
        mma(s[n], qa, bk);
        mma(s[n + 1], qa, bk + 2);
        mma(dp[n], oa, bv);
        mma(dp[n + 1], oa, bv + 2);
      }
    }
    KC_UNROLL
    for (int n = 0; n < NT; ++n) {
      KC_UNROLL
      for (int e = 0; e < 4; ++e) {
        const int j = n * 8 + 2 * tq + (e & 1), r = e / 2;
        const bool vis =
            sOk[j] && lr[r] != kNegInf && (!causal || k0 + j <= off + row[r]);
        const float p = vis ? exp2f(s[n][e] * sl2 - lr[r]) : 0.f;
        dp[n][e] = scale * p * (dp[n][e] - dr[r]);
      }
    }
    KC_UNROLL
    for (int kk = 0; kk < BK / 16; ++kk) {
      u32 sa[4];
      c_to_a(sa, dp[2 * kk], dp[2 * kk + 1]);
      KC_UNROLL
      for (int n = 0; n < DT; n += 2) {
        u32 bk[4];
        ld_b_kn<D>(bk, sK, kk * 16, n * 8);
        mma(acc[n], sa, bk);
        mma(acc[n + 1], sa, bk + 2);
      }
    }
  }
  kc::cp_async_wait_all();

  KC_UNROLL
  for (int r = 0; r < 2; ++r) {
    if (row[r] < t) {
      float* dqr = dq + (bh * t + row[r]) * D;
      KC_UNROLL
      for (int n = 0; n < DT; ++n) {
        dqr[n * 8 + 2 * tq] = acc[n][2 * r];
        dqr[n * 8 + 2 * tq + 1] = acc[n][2 * r + 1];
      }
    }
  }
}

}  // namespace

// ---- entry points ----------------------------------------------------------------------------

extern "C" __global__ void __launch_bounds__(ATT_THREADS)
    attn_fwd_d64(bf16* o, float* lse, const bf16* q, const bf16* k, const bf16* v, const u8* mask,
           int has_mask, int hq, int hkv, int t, int tk, int causal, float scale) {
  attn_fwd<64>(o, lse, q, k, v, mask, has_mask, hq, hkv, t, tk, causal, scale);
}

extern "C" __global__ void __launch_bounds__(ATT_THREADS)
    attn_fwd_d128(bf16* o, float* lse, const bf16* q, const bf16* k, const bf16* v, const u8* mask,
           int has_mask, int hq, int hkv, int t, int tk, int causal, float scale) {
  attn_fwd<128>(o, lse, q, k, v, mask, has_mask, hq, hkv, t, tk, causal, scale);
}

extern "C" __global__ void __launch_bounds__(ATT_THREADS)
    attn_bwd_dkdv_d64(float* dk, float* dv, const bf16* q, const bf16* k, const bf16* v, const u8* mask,
           int has_mask, const bf16* dout, const float* lse, const float* dd, int hq, int hkv,
           int t, int tk, int causal, float scale) {
  attn_bwd_dkdv<64, ATT_TILE>(dk, dv, q, k, v, mask, has_mask, dout, lse, dd, hq, hkv, t, tk, causal,
                         scale);
}

extern "C" __global__ void __launch_bounds__(ATT_THREADS)
    attn_bwd_dkdv_d128(float* dk, float* dv, const bf16* q, const bf16* k, const bf16* v, const u8* mask,
           int has_mask, const bf16* dout, const float* lse, const float* dd, int hq, int hkv,
           int t, int tk, int causal, float scale) {
  attn_bwd_dkdv<128, 32>(dk, dv, q, k, v, mask, has_mask, dout, lse, dd, hq, hkv, t, tk, causal,
                         scale);
}

extern "C" __global__ void __launch_bounds__(ATT_THREADS)
    attn_bwd_dq_d64(float* dq, const bf16* q, const bf16* k, const bf16* v, const u8* mask, int has_mask,
           const bf16* dout, const float* lse, const float* dd, int hq, int hkv, int t, int tk,
           int causal, float scale) {
  attn_bwd_dq<64, ATT_TILE>(dq, q, k, v, mask, has_mask, dout, lse, dd, hq, hkv, t, tk, causal, scale);
}

extern "C" __global__ void __launch_bounds__(ATT_THREADS)
    attn_bwd_dq_d128(float* dq, const bf16* q, const bf16* k, const bf16* v, const u8* mask, int has_mask,
           const bf16* dout, const float* lse, const float* dd, int hq, int hkv, int t, int tk,
           int causal, float scale) {
  attn_bwd_dq<128, 32>(dq, q, k, v, mask, has_mask, dout, lse, dd, hq, hkv, t, tk, causal, scale);
}

// D[row] = Σ_c dO[row][c]·O[row][c] in fp32; one warp per row, 8 rows per block; d even.
extern "C" __global__ void __launch_bounds__(256)
    attn_bwd_dot(float* dd, const bf16* o, const bf16* dout, int rows, int d) {
  const int row = blockIdx.x * 8 + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= rows) return;
  const u32* op = reinterpret_cast<const u32*>(o + (long long)row * d);
  const u32* gp = reinterpret_cast<const u32*>(dout + (long long)row * d);
  float acc = 0.f;
  for (int c = lane; c < d / 2; c += 32) {
    const u32 a = op[c], g = gp[c];
    acc += kc::bf16x2_lo(a) * kc::bf16x2_lo(g) + kc::bf16x2_hi(a) * kc::bf16x2_hi(g);
  }
  acc = kc::warp_sum(acc);
  if (lane == 0) dd[row] = acc;
}
