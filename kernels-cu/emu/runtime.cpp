// Host emulator runtime: fibers, block scheduler, barriers, warp collectives, the emulated PTX
// instructions, and the worker pool that runs blocks in parallel.
//
// One fiber (ucontext) per CUDA thread. A worker OS thread runs one block at a time: it resumes
// each runnable fiber until that fiber blocks (at __syncthreads or a warp collective) or exits.
// - __syncthreads releases when every fiber of the block waits there; if some fibers exited
//   while the others wait, the launch fails with a divergent-barrier error.
// - A warp collective (shuffle, vote, __syncwarp, mma.sync, ldmatrix) completes when every
//   non-exited lane of its mask has arrived at it; the last lane to arrive computes every lane's
//   result. Mismatched collectives, a lane missing from its own mask, reading a lane that does
//   not take part, and an mma/ldmatrix with an exited lane are errors.
// - A warpgroup instruction (wgmma.fence / mma_async / commit_group / wait_group) is the same
//   kind of collective over the 128 threads of a warpgroup (threads 128w..128w+127); every one
//   of them must execute it (PTX ISA, "Asynchronous Warpgroup Level Matrix Multiply-Accumulate
//   Instructions": .sync.aligned across the warpgroup).
// - Nothing runnable and not everything exited: a deadlock, reported as an error.
// Errors never crash the process: the block is abandoned and the message returned to Rust.
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "checker.h"
#include "kc_emu.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define KC_ASAN 1
// Rust's runtime keeps some allocations alive until exit on purpose; leak reports would only
// be noise in the emulator's AddressSanitizer build.
// The runtime is linked after other libraries by the Rust link; that order is fine here.
extern "C" __attribute__((used, visibility("default"))) const char* __asan_default_options() {
  return "detect_leaks=0:verify_asan_link_order=0";
}
#endif

// Context switch. On x86-64 a hand-written switch (callee-saved registers, MXCSR and the x87
// control word; no signal-mask syscall as in swapcontext), elsewhere ucontext.
#if defined(__x86_64__) && !defined(KC_EMU_UCONTEXT)
#define KC_FAST_SWITCH 1
// kc_emu_switch(save, next): saves the current stack pointer to *save and resumes `next`.
extern "C" void kc_emu_switch(void** save, void* next);
asm(R"(
  .text
  .globl kc_emu_switch
  .hidden kc_emu_switch
  .type kc_emu_switch,@function
kc_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size kc_emu_switch, .-kc_emu_switch
)");
#endif

namespace kc_emu {

thread_local ThreadState* tls_current = nullptr;

namespace {

enum FiberState { RUNNABLE, AT_BARRIER, AT_WARP, EXITED };
enum CollKind { C_SYNCWARP = 1, C_VOTE, C_SHFL, C_MMA, C_LDMATRIX, C_WG_FENCE, C_WG_MMA, C_WG_COMMIT, C_WG_WAIT };

const char* kind_name(int k) {
  switch (k) {
    case C_SYNCWARP: return "__syncwarp";
    case C_VOTE: return "vote (__ballot/__any/__all_sync)";
    case C_SHFL: return "shuffle";
    case C_MMA: return "mma.sync";
    case C_LDMATRIX: return "ldmatrix";
    case C_WG_FENCE: return "wgmma.fence";
    case C_WG_MMA: return "wgmma.mma_async";
    case C_WG_COMMIT: return "wgmma.commit_group";
    case C_WG_WAIT: return "wgmma.wait_group";
    default: return "?";
  }
}

struct CpAsyncOp {
  unsigned char* dst;
  const unsigned char* src;
  unsigned size;
  unsigned src_size;
  long group;  // -1: not yet committed
};

// One wgmma.mma_async of a warpgroup, from its issue to the wgmma.wait_group that retires it.
// The product is computed at issue (the checker reports any write to the shared-memory operand
// until the retirement, so reading it early gives the same values) and lands in the
// accumulator registers only at the retirement; until then they hold a NaN poison, so a kernel
// that reads them early computes NaN, and one that writes them is reported.
struct WgmmaOp {
  uint32_t seq = 0;  // per warpgroup, from 1, in issue order
  long group = -1;   // commit group; -1: not yet committed
  int n = 0;         // N of m64nNk16
  float* d[128] = {};
  std::vector<float> result;  // thread l's n/2 accumulators at l * n/2
};

struct Warpgroup {
  bool fenced = false;  // a wgmma.fence since the start or the last wgmma.wait_group
  uint32_t next_seq = 1;
  long committed = 0;
  std::deque<WgmmaOp> ops;  // issued and not retired, in issue order
};

struct Fiber {
  ThreadState ts;
#ifdef KC_FAST_SWITCH
  void* sp = nullptr;
#else
  ucontext_t ctx;
#endif
  unsigned char* stack = nullptr;  // usable stack (above the guard page)
  size_t stack_size = 0;
  FiberState state = EXITED;
  int lin = 0;
  // The warp collective this fiber waits at.
  int kind = 0;
  int variant = 0;  // shuffle mode, or ldmatrix num*2+trans
  unsigned mask = 0;
  int b = 0, width = 32;
  unsigned long long vin = 0, vout = 0;
  const void* ptr = nullptr;
  unsigned ain[6] = {};
  unsigned aout[4] = {};
  float fin[4] = {};
  float fout[4] = {};
  std::vector<CpAsyncOp> cp_ops;
  long cp_committed = 0;
#ifdef KC_ASAN
  void* fake_stack = nullptr;
#endif
};

struct Job;

struct Worker {
  std::vector<Fiber> fibers;
#ifdef KC_FAST_SWITCH
  void* sched_sp = nullptr;
#else
  ucontext_t sched_ctx;
#endif
  Fiber* current = nullptr;
  Job* job = nullptr;
  std::vector<int> order;  // fiber indices in the order the scheduler visits them
  int nthreads = 0;
  unsigned char* dyn_smem = nullptr;
  std::vector<Warpgroup> warpgroups;  // of the running block
  bool failed = false;
  std::string error;
  size_t stack_bytes = 0;
  size_t guard_bytes = 0;
  bool stacks_dirty = false;  // fibers were abandoned mid-run (ASan stack poisoning may remain)
#ifdef KC_ASAN
  const void* sched_bottom = nullptr;
  size_t sched_size = 0;
#endif
  ~Worker() {
    for (Fiber& f : fibers)
      if (f.stack) munmap(f.stack - guard_bytes, f.stack_size + guard_bytes);
  }
};

thread_local Worker* tls_worker = nullptr;

// Order in which the scheduler runs blocks and, within a block, runnable fibers. A correct
// kernel gives bitwise identical results in every order.
enum Order { ORDER_ASCENDING = 0, ORDER_DESCENDING = 1, ORDER_RANDOM = 2 };

struct Job {
  const KernelEntry* kernel = nullptr;
  check::LaunchInfo info;
  bool checks = false;
  int order = ORDER_ASCENDING;
  unsigned long long seed = 0;
  long block_mul = 1, block_add = 0;  // random block order: lin = (b * block_mul + block_add) % nblocks
  dim3 grid{1, 1, 1}, block{1, 1, 1};
  unsigned smem = 0;
  void* const* args = nullptr;
  long nblocks = 0;
  std::atomic<long> next{0};
  std::atomic<bool> failed{false};
  std::mutex m;
  std::condition_variable cv;
  int tickets_left = 0;
  long error_block = LONG_MAX;
  std::string error;
};

std::string vformat(const char* fmt, va_list ap) {
  char buf[1024];
  vsnprintf(buf, sizeof buf, fmt, ap);
  return buf;
}

std::string thread_desc(const Fiber& f) {
  char buf[160];
  snprintf(buf, sizeof buf, "block (%u,%u,%u) thread (%u,%u,%u)", f.ts.block_idx.x, f.ts.block_idx.y,
           f.ts.block_idx.z, f.ts.thread_idx.x, f.ts.thread_idx.y, f.ts.thread_idx.z);
  return buf;
}

// ---- fiber switching ----------------------------------------------------------------------

void switch_to_scheduler(Fiber* f, bool exiting) {
  Worker* w = tls_worker;
#ifdef KC_ASAN
  __sanitizer_start_switch_fiber(exiting ? nullptr : &f->fake_stack, w->sched_bottom, w->sched_size);
#else
  (void)exiting;
#endif
#ifdef KC_FAST_SWITCH
  kc_emu_switch(&f->sp, w->sched_sp);
#else
  swapcontext(&f->ctx, &w->sched_ctx);
#endif
#ifdef KC_ASAN
  __sanitizer_finish_switch_fiber(f->fake_stack, &w->sched_bottom, &w->sched_size);
#endif
  tls_current = &f->ts;
}

void resume(Worker* w, Fiber* f) {
  w->current = f;
  tls_current = &f->ts;
  check::enter_fiber(static_cast<uint32_t>(f->lin), f->stack, f->stack_size);
#ifdef KC_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f->stack, f->stack_size);
#endif
#ifdef KC_FAST_SWITCH
  kc_emu_switch(&w->sched_sp, f->sp);
#else
  swapcontext(&w->sched_ctx, &f->ctx);
#endif
#ifdef KC_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  check::leave_fiber();
  w->current = nullptr;
  tls_current = nullptr;
}

Fiber* self_fiber() {
  Worker* w = tls_worker;
  if (!w || !w->current) {
    fprintf(stderr, "kernels-cu emulator: CUDA built-in called outside a kernel launch\n");
    abort();
  }
  return w->current;
}

// Records the first error of this block and leaves the fiber for good.
[[noreturn]] void fail(const char* fmt, ...) {
  Worker* w = tls_worker;
  Fiber* f = self_fiber();
  if (!w->failed) {
    va_list ap;
    va_start(ap, fmt);
    w->error = vformat(fmt, ap) + " (at " + thread_desc(*f) + ")";
    va_end(ap);
    w->failed = true;
  }
  f->state = EXITED;
  switch_to_scheduler(f, true);
  abort();  // never resumed
}

void on_exit_fiber(Worker* w, Fiber* f);

void fiber_main() {
  Worker* w = tls_worker;
  Fiber* f = w->current;
#ifdef KC_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &w->sched_bottom, &w->sched_size);
#endif
  tls_current = &f->ts;
  w->job->kernel->run(w->job->args);
  f = w->current;
  f->state = EXITED;
  on_exit_fiber(w, f);
  switch_to_scheduler(f, true);
  abort();
}

// ---- warp collectives ---------------------------------------------------------------------

bool needs_whole_warp(int kind) { return kind == C_MMA || kind == C_LDMATRIX; }
bool warpgroup_kind(int kind) { return kind >= C_WG_FENCE; }

float bf16_to_f32(unsigned bits16) {
  unsigned u = bits16 << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

void compute_collective(Worker* w, Fiber* f, int base, unsigned present) {
  Fiber* lanes = &w->fibers[base];
  switch (f->kind) {
    case C_SYNCWARP: break;
    case C_VOTE: {
      unsigned ballot = 0;
      for (int l = 0; l < 32; l++)
        if ((present >> l & 1) && lanes[l].vin) ballot |= 1u << l;
      for (int l = 0; l < 32; l++)
        if (present >> l & 1) lanes[l].vout = ballot | (static_cast<unsigned long long>(present) << 32);
      break;
    }
    case C_SHFL: {
      for (int l = 0; l < 32; l++) {
        if (!(present >> l & 1)) continue;
        Fiber& o = lanes[l];
        int width = o.width;
        if (width < 1 || width > 32 || (width & (width - 1)))
          fail("shuffle width %d is not a power of two in 1..32", width);
        // The PTX shfl.sync pseudo-code, with the c operand the CUDA headers build from width.
        unsigned c = (static_cast<unsigned>(32 - width) << 8) | (o.variant == SHFL_UP ? 0u : 0x1fu);
        int bval = o.b & 31, cval = c & 31, segmask = (c >> 8) & 31;
        int max_lane = (l & segmask) | (cval & ~segmask);
        int min_lane = l & segmask;
        int j = l;
        bool ok = false;
        switch (o.variant) {
          case SHFL_IDX: j = min_lane | (bval & ~segmask); ok = j <= max_lane; break;
          case SHFL_UP: j = l - bval; ok = j >= max_lane; break;
          case SHFL_DOWN: j = l + bval; ok = j <= max_lane; break;
          case SHFL_XOR: j = l ^ bval; ok = j <= max_lane; break;
        }
        if (ok) {
          if (!(present >> j & 1))
            fail("shuffle: lane %d reads lane %d, which does not take part (mask 0x%08x)", l, j, o.mask);
          o.vout = lanes[j].vin;
        } else {
          o.vout = o.vin;
        }
      }
      break;
    }
    case C_MMA: {
      // Gather the 16x16 A, 16x8 B and 16x8 C tiles from the fragments (PTX ISA layouts).
      float A[16][16], B[16][8], C[16][8];
      for (int l = 0; l < 32; l++) {
        int g = l >> 2, t = l & 3;
        const Fiber& o = lanes[l];
        for (int i = 0; i < 8; i++) {
          int m = g + 8 * ((i >> 1) & 1), k = 2 * t + (i & 1) + 8 * (i >> 2);
          A[m][k] = bf16_to_f32((o.ain[i >> 1] >> (16 * (i & 1))) & 0xffffu);
        }
        for (int i = 0; i < 4; i++) {
          int k = 2 * t + (i & 1) + 8 * (i >> 1);
          B[k][g] = bf16_to_f32((o.ain[4 + (i >> 1)] >> (16 * (i & 1))) & 0xffffu);
        }
        for (int i = 0; i < 4; i++) C[g + 8 * (i >> 1)][2 * t + (i & 1)] = o.fin[i];
      }
      for (int l = 0; l < 32; l++) {
        int g = l >> 2, t = l & 3;
        for (int i = 0; i < 4; i++) {
          int m = g + 8 * (i >> 1), n = 2 * t + (i & 1);
          // Products of bf16 values are exact; the hardware's summation order is unspecified,
          // so accumulate in double and round once.
          double acc = C[m][n];
          for (int k = 0; k < 16; k++) acc += static_cast<double>(A[m][k]) * B[k][n];
          lanes[l].fout[i] = static_cast<float>(acc);
        }
      }
      break;
    }
    case C_LDMATRIX: {
      int num = f->variant >> 1;
      bool trans = f->variant & 1;
      const unsigned char* rows[4][8];
      for (int j = 0; j < num; j++)
        for (int r = 0; r < 8; r++) {
          const void* p = lanes[8 * j + r].ptr;
          if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
            fail("ldmatrix: row address %p from lane %d is not 16-byte aligned", p, 8 * j + r);
          check::record_read(p, 16, static_cast<uint32_t>(base + 8 * j + r));
          rows[j][r] = static_cast<const unsigned char*>(p);
        }
      auto elem = [&](int j, int r, int c) {
        unsigned short v;
        memcpy(&v, rows[j][r] + 2 * c, 2);
        return static_cast<unsigned>(v);
      };
      for (int l = 0; l < 32; l++) {
        int g = l >> 2, t = l & 3;
        for (int j = 0; j < num; j++) {
          unsigned lo = trans ? elem(j, 2 * t, g) : elem(j, g, 2 * t);
          unsigned hi = trans ? elem(j, 2 * t + 1, g) : elem(j, g, 2 * t + 1);
          lanes[l].aout[j] = lo | (hi << 16);
        }
      }
      break;
    }
  }
}


// ---- warpgroup MMA (wgmma, sm_90a) ---------------------------------------------------------
//
// What the emulator implements, and where each fact comes from (PTX ISA, "Asynchronous
// Warpgroup Level Matrix Multiply-Accumulate Instructions" and its subsections; nothing here has
// been checked on hardware):
// - "Matrix Descriptor Format": a 64-bit descriptor; bits 13:0 start address, 29:16 leading
//   dimension byte offset (LBO), 45:32 stride dimension byte offset (SBO), each the byte value
//   >> 4 of an 18-bit shared-memory address or offset; bits 51:49 matrix base offset; bits 63:62
//   swizzle mode (0 none, 1 128-byte, 2 64-byte, 3 32-byte).
// - "Shared Memory Matrix Layout": the operand is made of core matrices of 8 rows x 16 bytes.
//   For a K-major operand (B with imm-trans-b = 0: B[k][n] with k contiguous for each n), row n
//   of the 16 x N tile holds k = 0..15 (32 bytes). Without swizzling, core matrix (n/8, k/8)
//   starts at start + (n/8)·SBO + (k/8)·LBO and its rows are 16 bytes apart. With a swizzle
//   of W = 32/64/128 bytes, rows are W bytes apart, 8-row groups SBO apart, k at byte 2k of the
//   row (LBO unused: K = 16 fits in every swizzle width), and the 16-byte chunk index (address
//   bits 4..) is XORed with the row phase (address bits 7..): 1, 2 or 3 bits for 32, 64 and
//   128 bytes. The XOR acts on the shared-memory address itself, which is why the descriptor
//   start may be advanced by 32 bytes per k16 step inside a swizzled row.
// - "Register Fragments and Shared Memory Matrix Layouts" (m64nNk16): A from registers: warp w
//   of the warpgroup holds rows 16w..16w+15 in the m16n8k16 A-fragment layout; the f32
//   accumulator D: warp w, lane (g, t) holds d[4j + i] = D[16w + g + 8·(i/2)][8j + 2t + i%2].
// - scale-d: D = A·B + D when set, D = A·B when clear. imm-scale-a/b are 1 and imm-trans-b 0
//   in the wrappers (kc::wgmma_m64k16_bf16_rs); the transposed B is not emulated.
// Not emulated (a clear error instead): a nonzero base offset, a swizzled start address that is
// not at the start of the swizzle pattern (address bits 7.. nonzero), operands outside dynamic
// shared memory.

// Dynamic shared memory as the emulator's shared state space: the address kc::smem_u32 returns
// and a matrix descriptor holds. 16-byte aligned and nothing more, as on the GPU, so a kernel
// that needs a swizzled tile at a 1024-byte boundary must align it itself.
constexpr unsigned kDynSharedBase = 0x410;
constexpr uint32_t kAccPoison = 0x7fe5a5a5u;  // a quiet NaN

// The host address of `n` bytes at shared address `saddr` of this block's dynamic shared memory.
unsigned char* shared_host(Worker* w, unsigned saddr, unsigned n, const char* what) {
  unsigned size = w->job->smem;
  if (saddr < kDynSharedBase || saddr - kDynSharedBase + n > size)
    fail("%s: shared address 0x%x (%u bytes) is outside the launch's %u bytes of dynamic shared memory "
         "(shared addresses 0x%x..0x%x in the emulator)",
         what, saddr, n, size, kDynSharedBase, kDynSharedBase + size);
  return w->dyn_smem + (saddr - kDynSharedBase);
}

// The shared address of element (k, n) of a K-major bf16 B operand (PTX ISA layouts above).
unsigned wgmma_b_address(unsigned long long desc, int k, int n) {
  unsigned start = static_cast<unsigned>(desc & 0x3fff) << 4;
  unsigned lbo = static_cast<unsigned>((desc >> 16) & 0x3fff) << 4;
  unsigned sbo = static_cast<unsigned>((desc >> 32) & 0x3fff) << 4;
  int mode = static_cast<int>(desc >> 62);
  if (mode == 0) return start + (n / 8) * sbo + (k / 8) * lbo + 16 * (n % 8) + 2 * (k % 8);
  unsigned width = mode == 1 ? 128 : mode == 2 ? 64 : 32;
  unsigned phase_mask = width / 16 - 1;  // 7, 3, 1
  unsigned a = start + (n / 8) * sbo + (n % 8) * width + 2 * k;
  return a ^ (((a >> 7) & phase_mask) << 4);
}

void check_descriptor(unsigned long long desc) {
  unsigned base_offset = static_cast<unsigned>((desc >> 49) & 7);
  int mode = static_cast<int>(desc >> 62);
  unsigned start = static_cast<unsigned>(desc & 0x3fff) << 4;
  if (base_offset != 0)
    fail("wgmma.mma_async: matrix descriptor 0x%016llx has base offset %u; only 0 (the canonical layouts, "
         "with the swizzle pattern aligned) is emulated",
         desc, base_offset);
  if (desc & 0x3ff1c000c000c000ull)  // bits 15:14, 31:30, 48:46, 61:52
    fail("wgmma.mma_async: matrix descriptor 0x%016llx sets reserved bits", desc);
  if (mode != 0) {
    unsigned phase_mask = (mode == 1 ? 128u : mode == 2 ? 64u : 32u) / 16 - 1;
    if ((start >> 7) & phase_mask)
      fail("wgmma.mma_async: swizzled operand starts at shared address 0x%x, not at the start of its "
           "%u-byte swizzle pattern (align the tile to %u bytes; a base offset is not emulated)",
           start, (phase_mask + 1) * 128, (phase_mask + 1) * 128);
  }
}

Warpgroup& warpgroup_of(Worker* w, int base) { return w->warpgroups[static_cast<size_t>(base / 128)]; }

void compute_wgmma(Worker* w, Fiber* f, int base) {
  Fiber* th = &w->fibers[base];
  Warpgroup& wg = warpgroup_of(w, base);
  const int wgi = base / 128;
  if (!wg.fenced)
    fail("wgmma.mma_async without a wgmma.fence before it (required before the first wgmma.mma_async and "
         "after the registers it uses were accessed; the emulator asks for one after every wgmma.wait_group)");
  const int n = f->variant;
  const unsigned long long desc = th[0].vin;
  const int scale_d = th[0].b;
  for (int l = 1; l < 128; l++)
    if (th[l].vin != desc || th[l].b != scale_d)
      fail("wgmma.mma_async: thread %d of the warpgroup passes descriptor 0x%016llx / scale-d %d, thread 0 "
           "0x%016llx / %d (they must be the same in the warpgroup)",
           l, th[l].vin, th[l].b, desc, scale_d);
  check_descriptor(desc);
  // A: 64 x 16, warp w's rows 16w..16w+15 in the m16n8k16 A-fragment layout.
  float A[64][16];
  for (int l = 0; l < 128; l++) {
    int wr = l >> 5, g = (l & 31) >> 2, t = l & 3;
    for (int i = 0; i < 8; i++) {
      int m = 16 * wr + g + 8 * ((i >> 1) & 1), k = 2 * t + (i & 1) + 8 * (i >> 2);
      A[m][k] = bf16_to_f32((th[l].ain[i >> 1] >> (16 * (i & 1))) & 0xffffu);
    }
  }
  WgmmaOp op;
  op.seq = wg.next_seq++;
  op.n = n;
  // B: 16 x n through the descriptor; each 16-byte chunk is one read for the checker.
  std::vector<float> B(static_cast<size_t>(16 * n));
  for (int nn = 0; nn < n; nn++)
    for (int kc = 0; kc < 2; kc++) {
      unsigned sa = wgmma_b_address(desc, 8 * kc, nn);
      if (sa % 16) fail("wgmma.mma_async: B chunk at shared address 0x%x is not 16-byte aligned", sa);
      const unsigned char* p = shared_host(w, sa, 16, "wgmma.mma_async B operand");
      check::wgmma_read(p, 16, static_cast<uint32_t>(wgi), op.seq, static_cast<uint32_t>(base));
      for (int kk = 0; kk < 8; kk++) {
        unsigned e = wgmma_b_address(desc, 8 * kc + kk, nn);
        unsigned short v;
        memcpy(&v, shared_host(w, e, 2, "wgmma.mma_async B operand"), 2);
        B[static_cast<size_t>((8 * kc + kk) * n + nn)] = bf16_to_f32(v);
      }
    }
  const int per = n / 2;
  op.result.assign(static_cast<size_t>(128 * per), 0.0f);
  for (int l = 0; l < 128; l++) {
    float* d = static_cast<float*>(const_cast<void*>(th[l].ptr));
    op.d[l] = d;
    // A wgmma that accumulates into registers still owned by an in-flight wgmma of the same
    // warpgroup continues its chain (the hardware orders them): C is that one's result.
    const float* c = d;
    for (auto it = wg.ops.rbegin(); it != wg.ops.rend(); ++it)
      if (it->d[l] == d) {
        if (it->n != n) fail("wgmma.mma_async: accumulators in flight for N = %d reused with N = %d", it->n, n);
        c = &it->result[static_cast<size_t>(l * per)];
        break;
      }
    int wr = l >> 5, g = (l & 31) >> 2, t = l & 3;
    for (int i = 0; i < per; i++) {
      int m = 16 * wr + g + 8 * ((i >> 1) & 1), col = 8 * (i >> 2) + 2 * t + (i & 1);
      // bf16 products are exact; the summation order is unspecified, so sum in double and
      // round once (as the mma.sync emulation does).
      double acc = scale_d ? static_cast<double>(c[i]) : 0.0;
      for (int k = 0; k < 16; k++) acc += static_cast<double>(A[m][k]) * B[static_cast<size_t>(k * n + col)];
      op.result[static_cast<size_t>(l * per + i)] = static_cast<float>(acc);
    }
  }
  for (int l = 0; l < 128; l++)
    for (int i = 0; i < per; i++) memcpy(op.d[l] + i, &kAccPoison, 4);
  wg.ops.push_back(std::move(op));
}

// Retires the committed groups of warpgroup `base` except the newest `keep`.
void compute_wgmma_wait(Worker* w, int base, int keep) {
  Warpgroup& wg = warpgroup_of(w, base);
  long limit = wg.committed - keep;
  uint32_t last = 0;
  while (!wg.ops.empty() && wg.ops.front().group >= 0 && wg.ops.front().group < limit) {
    WgmmaOp& op = wg.ops.front();
    const int per = op.n / 2;
    for (int l = 0; l < 128; l++) {
      bool chained = false;
      for (size_t j = 1; j < wg.ops.size(); j++) chained = chained || wg.ops[j].d[l] == op.d[l];
      if (chained) continue;  // a later wgmma of the chain still owns the registers
      for (int i = 0; i < per; i++) {
        uint32_t bits;
        memcpy(&bits, op.d[l] + i, 4);
        if (bits != kAccPoison)
          fail("thread %d of warpgroup %d wrote accumulator register %d of a wgmma.mma_async in flight "
               "(between the wgmma and the wgmma.wait_group that retires it)",
               l, base / 128, i);
      }
      memcpy(op.d[l], &op.result[static_cast<size_t>(l * per)], static_cast<size_t>(per) * 4);
    }
    last = op.seq;
    wg.ops.pop_front();
  }
  if (last) check::wgmma_retire(static_cast<uint32_t>(base / 128), last);
  wg.fenced = false;
}

void compute_warpgroup(Worker* w, Fiber* f, int base) {
  Warpgroup& wg = warpgroup_of(w, base);
  switch (f->kind) {
    case C_WG_FENCE: wg.fenced = true; break;
    case C_WG_MMA: compute_wgmma(w, f, base); break;
    case C_WG_COMMIT:
      for (WgmmaOp& op : wg.ops)
        if (op.group < 0) op.group = wg.committed;
      wg.committed++;
      break;
    case C_WG_WAIT: compute_wgmma_wait(w, base, f->variant); break;
  }
}

// Completes the warpgroup instruction `f` waits at if all 128 threads of its warpgroup have
// arrived at it.
void try_complete_warpgroup(Worker* w, Fiber* f) {
  int base = f->lin & ~127;
  for (int l = 0; l < 128; l++) {
    int t = base + l;
    if (t >= w->nthreads)
      fail("%s in a warpgroup with only %d threads (all 128 threads of a warpgroup must execute it)",
           kind_name(f->kind), w->nthreads - base);
    Fiber& o = w->fibers[t];
    if (o.state == EXITED)
      fail("%s executed while thread %d of the warpgroup has exited", kind_name(f->kind), l);
    if (o.state != AT_WARP) return;
    if (o.kind != f->kind || o.variant != f->variant) {
      // Another warp may be at a warp collective of its own on its way here; within one warp,
      // different instructions are a mismatch.
      if ((t >> 5) != (f->lin >> 5) && !warpgroup_kind(o.kind)) return;
      fail("mismatched warpgroup instructions: thread %d of the warpgroup is at %s (%d), thread %d at %s (%d)",
           f->lin & 127, kind_name(f->kind), f->variant, l, kind_name(o.kind), o.variant);
    }
  }
  compute_warpgroup(w, f, base);
  for (int k = 0; k < 4; k++) check::on_warp_collective((base >> 5) + k);
  for (int l = 0; l < 128; l++) w->fibers[base + l].state = RUNNABLE;
}

// Completes the collective `f` waits at if every non-exited lane of its mask has arrived.
void try_complete(Worker* w, Fiber* f) {
  if (warpgroup_kind(f->kind)) {
    try_complete_warpgroup(w, f);
    return;
  }
  int base = f->lin & ~31;
  unsigned present = 0;
  for (int l = 0; l < 32; l++) {
    if (!(f->mask >> l & 1)) continue;
    int t = base + l;
    if (t >= w->nthreads) {
      if (needs_whole_warp(f->kind))
        fail("%s in a warp with only %d threads (all 32 lanes must execute it)", kind_name(f->kind),
             w->nthreads - base);
      continue;
    }
    Fiber& o = w->fibers[t];
    if (o.state == EXITED) {
      if (needs_whole_warp(f->kind))
        fail("%s executed while lane %d of the warp has exited", kind_name(f->kind), l);
      continue;
    }
    if (o.state != AT_WARP) return;
    if (o.kind != f->kind || o.variant != f->variant || o.mask != f->mask)
      fail("mismatched warp collectives: lane %d is at %s (mask 0x%08x), lane %d at %s (mask 0x%08x)",
           f->lin & 31, kind_name(f->kind), f->mask, l, kind_name(o.kind), o.mask);
    present |= 1u << l;
  }
  compute_collective(w, f, base, present);
  check::on_warp_collective(base >> 5);
  for (int l = 0; l < 32; l++)
    if (present >> l & 1) w->fibers[base + l].state = RUNNABLE;
}

void warp_collective(Fiber* f) {
  Worker* w = tls_worker;
  int lane = f->lin & 31;
  if (!(f->mask >> lane & 1))
    fail("lane %d calls %s with mask 0x%08x, which does not include the lane itself", lane,
         kind_name(f->kind), f->mask);
  f->state = AT_WARP;
  try_complete(w, f);
  if (f->state == AT_WARP) switch_to_scheduler(f, false);
  f->kind = 0;
}

void on_exit_fiber(Worker* w, Fiber* f) {
  // An exiting lane may be the last one a pending collective of its warp waited for.
  int base = f->lin & ~31;
  int lane = f->lin & 31;
  for (int l = 0; l < 32 && base + l < w->nthreads; l++) {
    Fiber& o = w->fibers[base + l];
    if (o.state == AT_WARP && !warpgroup_kind(o.kind) && (o.mask >> lane & 1)) try_complete(w, &o);
  }
  // ... or a warpgroup instruction of its warpgroup.
  int wbase = f->lin & ~127;
  for (int l = 0; l < 128 && wbase + l < w->nthreads; l++) {
    Fiber& o = w->fibers[wbase + l];
    if (o.state == AT_WARP && warpgroup_kind(o.kind)) {
      try_complete(w, &o);
      break;
    }
  }
  const Warpgroup& wg = warpgroup_of(w, wbase);
  if (!wg.ops.empty())
    fail("thread exits with %zu wgmma.mma_async of its warpgroup not retired by a wgmma.wait_group",
         wg.ops.size());
}

}  // namespace

// ---- the built-ins ------------------------------------------------------------------------

void* dynamic_smem() {
  self_fiber();
  return tls_worker->dyn_smem;
}

void syncthreads() {
  Fiber* f = self_fiber();
  f->state = AT_BARRIER;
  switch_to_scheduler(f, false);
}

namespace {
struct SkippedBarrier {
  std::string file;  // a suffix of the __FILE__ of the barrier
  int line = -1;
};

SkippedBarrier skipped_barrier() {
  SkippedBarrier s;
  const char* v = getenv("KERNELS_CU_EMU_SKIP_BARRIER");
  if (!v) return s;
  std::string spec(v);
  size_t colon = spec.rfind(':');
  if (colon == std::string::npos) return s;
  s.file = spec.substr(0, colon);
  s.line = atoi(spec.c_str() + colon + 1);
  return s;
}
}  // namespace

void syncthreads_at(const char* file, int line) {
  static const SkippedBarrier skip = skipped_barrier();
  if (line == skip.line) {
    size_t n = strlen(file), m = skip.file.size();
    if (n >= m && skip.file.compare(0, m, file + n - m) == 0) return;
  }
  syncthreads();
}

void syncwarp(unsigned mask) {
  Fiber* f = self_fiber();
  f->kind = C_SYNCWARP;
  f->variant = 0;
  f->mask = mask;
  warp_collective(f);
}

unsigned long long shfl(int mode, unsigned mask, unsigned long long v, int b, int width) {
  Fiber* f = self_fiber();
  f->kind = C_SHFL;
  f->variant = mode;
  f->mask = mask;
  f->vin = v;
  f->b = b;
  f->width = width;
  warp_collective(f);
  return f->vout;
}

unsigned vote_ballot(unsigned mask, int pred) {
  Fiber* f = self_fiber();
  f->kind = C_VOTE;
  f->variant = 0;
  f->mask = mask;
  f->vin = pred != 0;
  warp_collective(f);
  return static_cast<unsigned>(f->vout);
}

int vote_all(unsigned mask, int pred) {
  Fiber* f = self_fiber();
  f->kind = C_VOTE;
  f->variant = 0;
  f->mask = mask;
  f->vin = pred != 0;
  warp_collective(f);
  unsigned ballot = static_cast<unsigned>(f->vout);
  unsigned present = static_cast<unsigned>(f->vout >> 32);
  return ballot == present;
}

unsigned activemask() {
  Fiber* f = self_fiber();
  Worker* w = tls_worker;
  int base = f->lin & ~31;
  unsigned m = 0;
  for (int l = 0; l < 32 && base + l < w->nthreads; l++)
    if (w->fibers[base + l].state != EXITED) m |= 1u << l;
  return m;
}

void mma_m16n8k16_bf16(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
  Fiber* f = self_fiber();
  f->kind = C_MMA;
  f->variant = 0;
  f->mask = 0xffffffffu;
  for (int i = 0; i < 4; i++) f->ain[i] = a[i];
  f->ain[4] = b[0];
  f->ain[5] = b[1];
  for (int i = 0; i < 4; i++) f->fin[i] = c[i];
  warp_collective(f);
  for (int i = 0; i < 4; i++) d[i] = f->fout[i];
}

void ldmatrix(unsigned* r, const void* row_ptr, int num, bool trans) {
  Fiber* f = self_fiber();
  f->kind = C_LDMATRIX;
  f->variant = num * 2 + (trans ? 1 : 0);
  f->mask = 0xffffffffu;
  f->ptr = row_ptr;
  warp_collective(f);
  for (int j = 0; j < num; j++) r[j] = f->aout[j];
}

unsigned smem_u32(const void* p) {
  Worker* w = tls_worker;
  const unsigned char* c = static_cast<const unsigned char*>(p);
  if (w && w->job && w->dyn_smem && c >= w->dyn_smem && c <= w->dyn_smem + w->job->smem)
    return kDynSharedBase + static_cast<unsigned>(c - w->dyn_smem);
  // Static __shared__ variables: no place in the emulated shared window (wgmma operands must be
  // in dynamic shared memory); the low bits keep the alignment of the address.
  return static_cast<unsigned>(reinterpret_cast<uintptr_t>(p));
}

namespace {
void warpgroup_instruction(int kind, int variant) {
  Fiber* f = self_fiber();
  f->kind = kind;
  f->variant = variant;
  f->mask = 0xffffffffu;
  f->state = AT_WARP;
  try_complete(tls_worker, f);
  if (f->state == AT_WARP) switch_to_scheduler(f, false);
  f->kind = 0;
}
}  // namespace

void wgmma_fence() { warpgroup_instruction(C_WG_FENCE, 0); }
void wgmma_commit() { warpgroup_instruction(C_WG_COMMIT, 0); }
void wgmma_wait(int n) {
  if (n < 0 || n > 7) fail("wgmma.wait_group %d: N must be an integer constant in 0..7", n);
  warpgroup_instruction(C_WG_WAIT, n);
}

void wgmma_m64k16_bf16_rs(float* d, int n, const unsigned a[4], unsigned long long desc_b, int scale_d) {
  Fiber* f = self_fiber();
  if (n < 8 || n > 256 || n % 8) fail("wgmma.mma_async.m64n%dk16: N must be a multiple of 8 in 8..256", n);
  for (int i = 0; i < 4; i++) f->ain[i] = a[i];
  f->vin = desc_b;
  f->b = scale_d != 0;
  f->ptr = d;
  warpgroup_instruction(C_WG_MMA, n);
}

void fence_proxy_async_shared() {
  self_fiber();
  check::on_proxy_fence();
}

void cp_async(void* dst, const void* src, unsigned cp_size, unsigned src_size) {
  Fiber* f = self_fiber();
  if (src_size > cp_size) fail("cp.async: src-size %u exceeds cp-size %u", src_size, cp_size);
  if (reinterpret_cast<uintptr_t>(dst) % cp_size || reinterpret_cast<uintptr_t>(src) % cp_size)
    fail("cp.async: addresses %p <- %p are not aligned to %u bytes", dst, src, cp_size);
  check::cp_async_issue(dst, cp_size, src, src_size, static_cast<uint32_t>(f->lin));
  f->cp_ops.push_back(CpAsyncOp{static_cast<unsigned char*>(dst),
                                static_cast<const unsigned char*>(src), cp_size, src_size, -1});
}

void cp_async_commit() {
  Fiber* f = self_fiber();
  for (CpAsyncOp& op : f->cp_ops)
    if (op.group < 0) op.group = f->cp_committed;
  f->cp_committed++;  // an empty group counts too, and is complete at once
}

// Performs (in commit order) every group except the newest n; the copies are deferred until
// here so that a missing wait shows up as stale shared memory.
void cp_async_wait(int n) {
  Fiber* f = self_fiber();
  long limit = f->cp_committed - n;
  size_t keep = 0;
  for (size_t i = 0; i < f->cp_ops.size(); i++) {
    CpAsyncOp op = f->cp_ops[i];
    if (op.group >= 0 && op.group < limit) {
      memcpy(op.dst, op.src, op.src_size);
      memset(op.dst + op.src_size, 0, op.size - op.src_size);
      check::cp_async_land(op.dst, op.size, static_cast<uint32_t>(f->lin));
    } else {
      f->cp_ops[keep++] = op;
    }
  }
  f->cp_ops.resize(keep);
}

void trap(const char* what) { fail("%s", what); }

void threadfence() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  check::on_fence();
}

void threadfence_block() { std::atomic_signal_fence(std::memory_order_seq_cst); }

namespace {

// ---- running one block --------------------------------------------------------------------

size_t env_size(const char* name, size_t dflt) {
  const char* v = getenv(name);
  if (!v || !*v) return dflt;
  long long x = atoll(v);
  return x > 0 ? static_cast<size_t>(x) : dflt;
}

bool ensure_fibers(Worker* w, int n, std::string* err) {
  if (w->stack_bytes == 0) {
#ifdef KC_ASAN
    size_t dflt_kb = 256;
#else
    size_t dflt_kb = 64;
#endif
    w->stack_bytes = env_size("KERNELS_CU_EMU_STACK_KB", dflt_kb) * 1024;
    w->guard_bytes = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  }
  size_t old = w->fibers.size();
  if (old >= static_cast<size_t>(n)) return true;
  w->fibers.resize(n);
  for (size_t i = old; i < static_cast<size_t>(n); i++) {
    size_t total = w->stack_bytes + w->guard_bytes;
    void* mem = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                     -1, 0);
    if (mem == MAP_FAILED) {
      *err = "emulator: could not map a fiber stack";
      w->fibers.resize(i);
      return false;
    }
    // A guard page below each stack turns an overflow into a fault instead of silent corruption.
    mprotect(mem, w->guard_bytes, PROT_NONE);
    w->fibers[i].stack = static_cast<unsigned char*>(mem) + w->guard_bytes;
    w->fibers[i].stack_size = w->stack_bytes;
  }
  return true;
}

// Prepares a fiber to start in fiber_main on its own stack.
void start_context(Fiber* f) {
#ifdef KC_FAST_SWITCH
  // The frame kc_emu_switch pops, from the top of the stack down: a zero return address for
  // fiber_main (it never returns), the address `ret` jumps to, six callee-saved registers, and
  // MXCSR + x87 control word.
  uintptr_t top = (reinterpret_cast<uintptr_t>(f->stack) + f->stack_size) & ~static_cast<uintptr_t>(15);
  uint64_t* p = reinterpret_cast<uint64_t*>(top);
  *--p = 0;  // at top-8: fiber_main's return slot, so its entry rsp is 8 mod 16 as after a call
  *--p = reinterpret_cast<uint64_t>(&fiber_main);
  for (int i = 0; i < 6; i++) *--p = 0;
  --p;
  uint32_t csr[2] = {0x1f80u, 0x037fu};  // default MXCSR; x87 control word (in the low half)
  memcpy(p, csr, 8);
  f->sp = p;
#else
  getcontext(&f->ctx);
  f->ctx.uc_stack.ss_sp = f->stack;
  f->ctx.uc_stack.ss_size = f->stack_size;
  f->ctx.uc_link = nullptr;
  makecontext(&f->ctx, fiber_main, 0);
#endif
}

unsigned long long splitmix64(unsigned long long* s) {
  unsigned long long z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void set_order(Worker* w, int n, int order, unsigned long long* rng) {
  w->order.resize(n);
  for (int i = 0; i < n; i++) w->order[i] = order == ORDER_DESCENDING ? n - 1 - i : i;
  if (order == ORDER_RANDOM)
    for (int i = n - 1; i > 0; i--) std::swap(w->order[i], w->order[splitmix64(rng) % (i + 1)]);
}

// Runs block `lin` of the job; returns false (with w->error set) on an emulation error.
bool run_block(Worker* w, Job* job, long lin) {
  const dim3 g = job->grid, bd = job->block;
  uint3 bidx{static_cast<unsigned>(lin % g.x), static_cast<unsigned>((lin / g.x) % g.y),
             static_cast<unsigned>(lin / (static_cast<long>(g.x) * g.y))};
  int n = static_cast<int>(bd.x * bd.y * bd.z);
  if (!ensure_fibers(w, n, &w->error)) return false;
#ifdef KC_ASAN
  if (w->stacks_dirty) {
    for (Fiber& f : w->fibers) __asan_unpoison_memory_region(f.stack, f.stack_size);
    w->stacks_dirty = false;
  }
#endif
  // Dynamic shared memory: its exact size (so AddressSanitizer sees overruns), poisoned with
  // 0xff bytes (NaN as f32/bf16) because CUDA leaves it uninitialized.
  std::unique_ptr<unsigned char[]> smem(new unsigned char[job->smem ? job->smem : 1]);
  memset(smem.get(), 0xff, job->smem);
  w->dyn_smem = smem.get();
  w->warpgroups.assign(static_cast<size_t>((n + 127) / 128), Warpgroup());
  w->nthreads = n;
  w->job = job;
  w->failed = false;
  check::begin_block(&job->info, lin, smem.get(), job->checks);
  struct EndBlock {
    ~EndBlock() { check::end_block(); }
  } end_block;
  unsigned long long rng = job->seed ^ (0x9e3779b97f4a7c15ull * static_cast<unsigned long long>(lin + 1));
  set_order(w, n, job->order, &rng);
  for (int i = 0; i < n; i++) {
    Fiber& f = w->fibers[i];
    f.ts.thread_idx = uint3{static_cast<unsigned>(i % bd.x), static_cast<unsigned>((i / bd.x) % bd.y),
                            static_cast<unsigned>(i / (bd.x * bd.y))};
    f.ts.block_idx = bidx;
    f.ts.block_dim = bd;
    f.ts.grid_dim = g;
    f.lin = i;
    f.state = RUNNABLE;
    f.kind = 0;
    f.cp_ops.clear();
    f.cp_committed = 0;
    start_context(&f);
  }
  for (;;) {
    bool ran = true;
    while (ran) {
      ran = false;
      for (int k = 0; k < n; k++) {
        int i = w->order[k];
        if (w->fibers[i].state != RUNNABLE) continue;
        resume(w, &w->fibers[i]);
        ran = true;
        if (w->failed) {
          w->stacks_dirty = true;
          return false;
        }
      }
    }
    int exited = 0, at_barrier = 0, at_warp = 0;
    const Fiber *first_exit = nullptr, *first_barrier = nullptr, *first_warp = nullptr;
    for (int i = 0; i < n; i++) {
      const Fiber& f = w->fibers[i];
      if (f.state == EXITED) {
        exited++;
        if (!first_exit) first_exit = &f;
      } else if (f.state == AT_BARRIER) {
        at_barrier++;
        if (!first_barrier) first_barrier = &f;
      } else if (f.state == AT_WARP) {
        at_warp++;
        if (!first_warp) first_warp = &f;
      }
    }
    if (exited == n) return true;
    w->stacks_dirty = true;
    if (at_warp > 0) {
      char buf[512];
      snprintf(buf, sizeof buf,
               "deadlock: %d threads wait at warp collectives (first: %s waits at %s with mask 0x%08x), "
               "%d at __syncthreads, %d exited",
               at_warp, thread_desc(*first_warp).c_str(), kind_name(first_warp->kind), first_warp->mask,
               at_barrier, exited);
      w->error = buf;
      return false;
    }
    if (exited > 0) {
      char buf[512];
      snprintf(buf, sizeof buf,
               "divergent __syncthreads: %d of %d threads wait at the barrier (first: %s) while %d "
               "threads have exited (first: %s)",
               at_barrier, n, thread_desc(*first_barrier).c_str(), exited, thread_desc(*first_exit).c_str());
      w->error = buf;
      return false;
    }
    w->stacks_dirty = false;
    for (int i = 0; i < n; i++) w->fibers[i].state = RUNNABLE;  // every thread reached the barrier
    check::on_barrier();
    if (job->order == ORDER_RANDOM) set_order(w, n, job->order, &rng);
  }
}

// ---- worker pool --------------------------------------------------------------------------

struct Pool {
  std::mutex m;
  std::condition_variable cv;
  std::deque<std::shared_ptr<Job>> tickets;
  int nthreads = 0;
};

void run_ticket(Job* job) {
  if (!tls_worker) tls_worker = new Worker();  // lives as long as the pool thread
  Worker* w = tls_worker;
  for (;;) {
    if (job->failed.load(std::memory_order_relaxed)) break;
    long i = job->next.fetch_add(1);
    if (i >= job->nblocks) break;
    long b = job->order == ORDER_DESCENDING ? job->nblocks - 1 - i
             : job->order == ORDER_RANDOM   ? static_cast<long>((static_cast<unsigned long long>(i) * job->block_mul +
                                                              job->block_add) % job->nblocks)
                                            : i;
    if (!run_block(w, job, b)) {
      std::lock_guard<std::mutex> lk(job->m);
      if (b < job->error_block) {
        job->error_block = b;
        job->error = w->error;
      }
      job->failed.store(true);
    }
  }
  w->job = nullptr;
  std::lock_guard<std::mutex> lk(job->m);
  job->tickets_left--;
  job->cv.notify_all();
}

void pool_thread(Pool* p) {
  for (;;) {
    std::shared_ptr<Job> job;
    {
      std::unique_lock<std::mutex> lk(p->m);
      p->cv.wait(lk, [&] { return !p->tickets.empty(); });
      job = p->tickets.front();
      p->tickets.pop_front();
    }
    run_ticket(job.get());
  }
}

Pool* pool() {
  // Never destroyed: its threads park on the condition variable until the process exits.
  static Pool* p = [] {
    Pool* q = new Pool();
    unsigned hw = std::thread::hardware_concurrency();
    size_t n = env_size("KERNELS_CU_EMU_THREADS", hw ? (hw > 16 ? 16 : hw) : 2);
    q->nthreads = static_cast<int>(n);
    for (size_t i = 0; i < n; i++) std::thread(pool_thread, q).detach();
    return q;
  }();
  return p;
}

}  // namespace
}  // namespace kc_emu

extern "C" {

// Runs a launch to completion. `flags`: bit 0 runs the memory checker (checker.h); bits 1-2
// the order (0 ascending, 1 descending, 2 random with `seed`). Returns 0, or 1 with a message
// in err.
int kc_emu_launch(const kc_emu::KernelEntry* kernel, const unsigned grid[3], const unsigned block[3],
                  unsigned smem_bytes, void* const* args, unsigned flags, unsigned long long seed, char* err,
                  size_t err_len) {
  using namespace kc_emu;
  auto job = std::make_shared<Job>();
  job->kernel = kernel;
  job->grid = dim3{grid[0], grid[1], grid[2]};
  job->block = dim3{block[0], block[1], block[2]};
  job->smem = smem_bytes;
  job->args = args;
  job->nblocks = static_cast<long>(grid[0]) * grid[1] * grid[2];
  job->checks = (flags & 1) != 0;
  job->order = static_cast<int>((flags >> 1) & 3);
  job->seed = seed;
  if (job->order == ORDER_RANDOM) {
    // A multiplier coprime to nblocks makes b -> (b * mul + add) % nblocks a permutation.
    unsigned long long s = seed;
    long n = job->nblocks;
    long mul = n > 1 ? static_cast<long>(splitmix64(&s) % static_cast<unsigned long long>(n)) : 1;
    auto gcd = [](long a, long b) {
      while (b) {
        long t = a % b;
        a = b;
        b = t;
      }
      return a;
    };
    while (n > 1 && (mul == 0 || gcd(mul, n) != 1)) mul = (mul + 1) % n;
    job->block_mul = n > 1 ? mul : 1;
    job->block_add = n > 1 ? static_cast<long>(splitmix64(&s) % static_cast<unsigned long long>(n)) : 0;
  }
  job->info.kernel = kernel->name;
  job->info.signature = kernel->signature();
  job->info.args = args;
  job->info.grid = job->grid;
  job->info.block = job->block;
  job->info.nblocks = job->nblocks;
  job->info.smem_bytes = smem_bytes;
  job->info.serial_base = check::reserve_serials(job->nblocks);
  Pool* p = pool();
  int tickets = static_cast<int>(job->nblocks < p->nthreads ? job->nblocks : p->nthreads);
  job->tickets_left = tickets;
  {
    std::lock_guard<std::mutex> lk(p->m);
    for (int i = 0; i < tickets; i++) p->tickets.push_back(job);
  }
  p->cv.notify_all();
  std::unique_lock<std::mutex> lk(job->m);
  job->cv.wait(lk, [&] { return job->tickets_left == 0; });
  if (job->failed.load()) {
    snprintf(err, err_len, "%s", job->error.c_str());
    return 1;
  }
  return 0;
}

int kc_emu_checks_available() { return kc_emu::check::available() ? 1 : 0; }
void kc_emu_mem_register(const void* p, size_t n) { kc_emu::check::mem_register(p, n); }
void kc_emu_mem_release(const void* p, size_t n) { kc_emu::check::mem_release(p, n); }

const char* kc_emu_entry_name(const kc_emu::KernelEntry* k) { return k->name; }
const char* kc_emu_entry_signature(const kc_emu::KernelEntry* k) { return k->signature(); }
unsigned kc_emu_entry_nargs(const kc_emu::KernelEntry* k) { return k->nargs; }

}  // extern "C"
