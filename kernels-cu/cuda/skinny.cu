// Skinny products C[M][N] = α·A[M][K]·B[N][K]ᵀ + β·C with N ≤ 32 (the launcher's limit; the
// tensor-core GEMM is used beyond): the LoRA down-projections
// u = x·Aᵀ (N = r) and du = dy·B (N = r, with B stored transposed as [r][out]).
//
// Why not the tensor-core GEMM: its 128 x 128 tiles give a grid of ⌈M/128⌉ x 1 blocks for
// N = r = 8, e.g. 8 blocks for M = 1024 tokens on a 132-SM GPU, each walking all of K (4544 or
// 18176) with 15/16 of every mma wasted on padding: ~100+ µs for 75 MFLOP. The product is
// memory-bound: it reads A once (M·K·2 bytes: 9.3 MB for x [1024, 4544]) and B from L2
// (r·K·2 bytes, ≤ 0.6 MB), i.e. ~3 µs of HBM traffic on an H100/H200.
//
// Design: one warp per row m of A. Lane l covers k ≡ 8l (mod 256) with one 16-byte load of A
// and one per row of B (when K % 8 == 0 and A, B are 16-byte aligned; otherwise k ≡ l (mod 32)
// scalar), accumulates 8 partial dot products at a time in registers (f32), then each is
// summed across the warp with a fixed butterfly (deterministic) and lane j writes C[m][g + j]. A rows stream
// through once, coalesced; B (shared by all rows) stays in L1/L2. No shared memory.
// β = 0 never reads C (so C may hold anything, e.g. NaN poison).
//
// skinny_nt_rows_*: the same product for a few rows (a decode step's batch): one block of
// SKINNY_ROW_WARPS warps per row of A, the warps splitting K (thread i of the block covers
// k ≡ 8i mod 8·threads), each warp's sums meeting in shared memory and added in warp order.
// One warp walking a whole row would wait for memory once per 256 columns (18 times for
// K = 4544) with nothing else in flight; the block has all its loads of the row in flight at once.
#include "common.cuh"

using kc::bf16;
using kc::u32;
using kc::u32x4;

#define SKINNY_GROUP 8

KC_FN void store_c(float* c, float v) { *c = v; }
KC_FN void store_c(bf16* c, float v) { *c = kc::to_bf16(v); }
KC_FN float load_c(const float* c) { return *c; }
KC_FN float load_c(const bf16* c) { return kc::to_f32(*c); }

// acc[j] = this thread's share of Σ_k a[k]·b_j[k] for j < ng (0 for the others): with vec, the
// 8-column groups starting at 8·first, 8·(first + step), ... (16-byte loads); else the single
// columns first, first + step, ...
KC_FN void row_dots(float acc[SKINNY_GROUP], const bf16* arow, const bf16* bg, int ng, int k, int first, int step,
                    int vec) {
  KC_UNROLL
  for (int j = 0; j < SKINNY_GROUP; ++j) acc[j] = 0.0f;
  if (vec) {
    for (int k0 = first * 8; k0 < k; k0 += step * 8) {
      float av[8];
      kc::unpack_bf16x8(kc::load_u32x4(arow + k0), av);
      KC_UNROLL
      for (int j = 0; j < SKINNY_GROUP; ++j) {
        if (j < ng) {
          float bv[8];
          kc::unpack_bf16x8(kc::load_u32x4(bg + static_cast<long long>(j) * k + k0), bv);
          float s = acc[j];
          KC_UNROLL
          for (int e = 0; e < 8; ++e) s += av[e] * bv[e];
          acc[j] = s;
        }
      }
    }
  } else {
    for (int kk = first; kk < k; kk += step) {
      const float av = kc::to_f32(arow[kk]);
      KC_UNROLL
      for (int j = 0; j < SKINNY_GROUP; ++j) {
        if (j < ng) acc[j] += av * kc::to_f32(bg[static_cast<long long>(j) * k + kk]);
      }
    }
  }
}

template <typename TC>
KC_FN void skinny_nt(TC* c, const bf16* a, const bf16* b, int m, int n, int k, float alpha,
                     float beta, int vec) {
  const long long row = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  // The row is the same for the 32 lanes of a warp: the exit is warp-uniform.
  if (row >= m) return;
  const bf16* arow = a + row * k;
  // Columns in groups of SKINNY_GROUP (one pass for the usual r = 8; the A row is re-read
  // from L1/L2 for the next group), which keeps the accumulators and B vectors in registers.
  for (int g = 0; g < n; g += SKINNY_GROUP) {
    const int ng = min(SKINNY_GROUP, n - g);
    const bf16* bg = b + static_cast<long long>(g) * k;
    float acc[SKINNY_GROUP];
    row_dots(acc, arow, bg, ng, k, lane, 32, vec);
    KC_UNROLL
    for (int j = 0; j < SKINNY_GROUP; ++j) {
      if (j < ng) {
        const float s = kc::warp_sum(acc[j]);
        if (lane == j) {
          TC* out = c + row * n + g + j;
          float v = alpha * s;
          if (beta != 0.0f) v += beta * load_c(out);
          store_c(out, v);
        }
      }
    }
  }
}

#define SKINNY_ROW_WARPS 8
#define SKINNY_ROW_THREADS (SKINNY_ROW_WARPS * 32)

// One block per row of A (see skinny_nt_rows_* above).
template <typename TC>
KC_FN void skinny_nt_rows(TC* c, const bf16* a, const bf16* b, int m, int n, int k, float alpha,
                          float beta, int vec) {
  __shared__ float s_acc[SKINNY_ROW_WARPS][SKINNY_GROUP];
  const long long row = blockIdx.x;
  const int warp = static_cast<int>(threadIdx.x >> 5), lane = static_cast<int>(threadIdx.x & 31);
  if (row >= m) return;  // block-uniform, before any barrier
  const bf16* arow = a + row * k;
  for (int g = 0; g < n; g += SKINNY_GROUP) {
    const int ng = min(SKINNY_GROUP, n - g);
    const bf16* bg = b + static_cast<long long>(g) * k;
    float acc[SKINNY_GROUP];
    row_dots(acc, arow, bg, ng, k, static_cast<int>(threadIdx.x), SKINNY_ROW_THREADS, vec);
    KC_UNROLL
    for (int j = 0; j < SKINNY_GROUP; ++j) {
      const float s = kc::warp_sum(acc[j]);
      if (lane == 0) s_acc[warp][j] = s;
    }
    __syncthreads();
    const int j = static_cast<int>(threadIdx.x);
    if (j < ng) {
      float s = 0.0f;
      KC_UNROLL
      for (int w = 0; w < SKINNY_ROW_WARPS; ++w) s += s_acc[w][j];
      TC* out = c + row * n + g + j;
      float v = alpha * s;
      if (beta != 0.0f) v += beta * load_c(out);
      store_c(out, v);
    }
    __syncthreads();  // s_acc is rewritten by the next group
  }
}

extern "C" __global__ void __launch_bounds__(SKINNY_ROW_THREADS)
    skinny_nt_rows_f32(float* c, const bf16* a, const bf16* b, int m, int n, int k, float alpha, float beta,
                       int vec) {
  skinny_nt_rows(c, a, b, m, n, k, alpha, beta, vec);
}

extern "C" __global__ void __launch_bounds__(SKINNY_ROW_THREADS)
    skinny_nt_rows_bf16(bf16* c, const bf16* a, const bf16* b, int m, int n, int k, float alpha, float beta,
                        int vec) {
  skinny_nt_rows(c, a, b, m, n, k, alpha, beta, vec);
}

extern "C" __global__ void skinny_nt_f32(float* c, const bf16* a, const bf16* b, int m, int n,
                                         int k, float alpha, float beta, int vec) {
  skinny_nt(c, a, b, m, n, k, alpha, beta, vec);
}

extern "C" __global__ void skinny_nt_bf16(bf16* c, const bf16* a, const bf16* b, int m, int n,
                                          int k, float alpha, float beta, int vec) {
  skinny_nt(c, a, b, m, n, k, alpha, beta, vec);
}
