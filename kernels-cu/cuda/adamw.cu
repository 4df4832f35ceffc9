// Multi-tensor AdamW for the fp32 adapter parameters, and the global gradient norm with the
// clipping coefficient, in as few launches as possible and without a host round trip.
//
// Multi-tensor layout: every trainable tensor lives in ONE packed flat f32 buffer (the trainer
// allocates the adapter parameters as views into an arena, and their gradients, exp_avg and
// exp_avg_sq in arenas with the same offsets), so one launch updates all of them: one thread per
// 4 elements, grid-stride. Tensors are contiguous ranges of the flat buffers; all share lr, betas,
// eps and weight decay (the LoRA adapters' case).
//
// adamw_f32 (torch.optim.AdamW, amsgrad = maximize = False), per element, with the gradient
// first scaled by the clipping coefficient c = *gscale (1 when not clipping):
//   g  ← g·c
//   p  ← p·decay                                   decay     = f32(1 − lr·λ)
//   m  ← b1·m + ob1·g                              b1 = f32(β1), ob1 = f32(1 − β1)
//   v  ← b2·v + (ob2·g)·g                          b2 = f32(β2), ob2 = f32(1 − β2)
//   p  ← p − step_size·(m / (√v / bc2_sqrt + eps)) step_size = f32(lr / (1 − β1ᵗ)),
//                                                  bc2_sqrt  = f32(√(1 − β2ᵗ)), eps = f32(ε)
// The scalars are computed by the host in f64 and rounded once to f32 (exactly as
// engine::optim::adamw::adamw_update does for f32 parameters), and every operation uses the
// IEEE round-to-nearest intrinsics (no FMA contraction, IEEE sqrt and division), so the GPU
// and the CPU reference agree bit for bit.
//
// Global gradient norm (torch.nn.utils.clip_grad_norm_, norm_type 2), deterministic:
//   grad_sumsq_partials: block b sums g[i]² over its grid-stride elements in f32 (fixed order)
//     and writes partial[b];
//   grad_norm_finalize (one block): s = Σ_b partial[b] in f64 (fixed order), norm = √s,
//     out[0] = f32(norm), out[1] = f32(max_norm/(norm + 1e-6)) if max_norm > 0 and that is < 1,
//     else 1. adamw_f32 reads out[1] as its gscale: clipping costs no extra pass over g.
//
// Cost: AdamW reads p, m, v, g (16 B) and writes p, m, v (12 B) per parameter; ~15 FLOP. For
// Falcon-7B rank-16 LoRA on qkv/dense/MLP (~39M params) that is 1.1 GB: ~0.3 ms at 3.7 TB/s.
#include "common.cuh"

#ifdef KC_DEVICE
#define FMUL(a, b) __fmul_rn(a, b)
#define FADD(a, b) __fadd_rn(a, b)
#define FSUB(a, b) __fsub_rn(a, b)
#define FDIV(a, b) __fdiv_rn(a, b)
#define FSQRT(a) __fsqrt_rn(a)
#else
#define FMUL(a, b) ((a) * (b))
#define FADD(a, b) ((a) + (b))
#define FSUB(a, b) ((a) - (b))
#define FDIV(a, b) ((a) / (b))
#define FSQRT(a) sqrtf(a)
#endif

#define ADAMW_BLOCK 256

struct AdamScalars {
  float step_size, bc2_sqrt, decay, b1, b2, ob1, ob2, eps;
};

__device__ __forceinline__ void adam_one(float& p, float& m, float& v, float g, float c,
                                         const AdamScalars& s) {
  g = FMUL(g, c);
  p = FMUL(p, s.decay);
  m = FADD(FMUL(s.b1, m), FMUL(s.ob1, g));
  v = FADD(FMUL(s.b2, v), FMUL(FMUL(s.ob2, g), g));
  const float denom = FADD(FDIV(FSQRT(v), s.bc2_sqrt), s.eps);
  p = FSUB(p, FMUL(s.step_size, FDIV(m, denom)));
}

extern "C" __global__ void __launch_bounds__(ADAMW_BLOCK)
    adamw_f32(float* p, float* m, float* v, const float* g, const float* gscale, long long n,
              float step_size, float bc2_sqrt, float decay, float b1, float b2, float ob1,
              float ob2, float eps) {
  const AdamScalars s = {step_size, bc2_sqrt, decay, b1, b2, ob1, ob2, eps};
  const float c = *gscale;
  const long long tid = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  const long long nv = n / 4;
  for (long long i = tid; i < nv; i += stride) {
    kc::f32x4 pp = kc::load4(p + 4 * i), mm = kc::load4(m + 4 * i), vv = kc::load4(v + 4 * i);
    const kc::f32x4 gg = kc::load4(g + 4 * i);
    adam_one(pp.x, mm.x, vv.x, gg.x, c, s);
    adam_one(pp.y, mm.y, vv.y, gg.y, c, s);
    adam_one(pp.z, mm.z, vv.z, gg.z, c, s);
    adam_one(pp.w, mm.w, vv.w, gg.w, c, s);
    kc::store4(p + 4 * i, pp);
    kc::store4(m + 4 * i, mm);
    kc::store4(v + 4 * i, vv);
  }
  for (long long i = 4 * nv + tid; i < n; i += stride) {
    float pp = p[i], mm = m[i], vv = v[i];
    adam_one(pp, mm, vv, g[i], c, s);
    p[i] = pp;
    m[i] = mm;
    v[i] = vv;
  }
}

// grid = G blocks (a function of n only), block = ADAMW_BLOCK.
extern "C" __global__ void __launch_bounds__(ADAMW_BLOCK)
    grad_sumsq_partials(float* partial, const float* g, long long n) {
  __shared__ float ws[32];
  float acc = 0.0f;
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * blockDim.x)
    acc += g[i] * g[i];
  acc = kc::warp_sum(acc);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) ws[warp] = acc;
  __syncthreads();
  if (warp == 0) {
    float t = lane < static_cast<int>(blockDim.x / 32) ? ws[lane] : 0.0f;
    t = kc::warp_sum(t);
    if (lane == 0) partial[blockIdx.x] = t;
  }
}

// One block of ADAMW_BLOCK threads. out[0] = norm, out[1] = clipping coefficient.
extern "C" __global__ void __launch_bounds__(ADAMW_BLOCK)
    grad_norm_finalize(float* out, const float* partial, int m, float max_norm) {
  __shared__ double ws[32];
  double acc = 0.0;
  for (int i = threadIdx.x; i < m; i += blockDim.x) acc += static_cast<double>(partial[i]);
KC_UNROLL
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o, 32);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) ws[warp] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double s = 0.0;
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) s += ws[w];
    const double norm = sqrt(s);
    double coef = 1.0;
    if (max_norm > 0.0f) {
      const double c = static_cast<double>(max_norm) / (norm + 1e-6);
      if (c < 1.0) coef = c;
    }
    out[0] = static_cast<float>(norm);
    out[1] = static_cast<float>(coef);
  }
}
