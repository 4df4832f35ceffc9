// Shadow memory of the emulator's checker (see checker.h for the model it checks).
//
// Every byte that a kernel touches, outside the fibers' own stacks, has a shadow cell of three
// 64-bit records: the last write and up to two reads that may still race with a later write.
// A record packs (block serial, barrier interval, thread, warp epoch, cp.async pending) into one
// word, so that blocks running in parallel on other OS threads never see a torn record: a race
// between blocks that touch a byte at the very same moment may be missed, but every report names
// two accesses that really happened. Shadow pages (one per 4 KiB of memory) are created on first
// access and dropped when the device allocation they cover is freed.
#include "checker.h"

#include <algorithm>
#include <atomic>
#include <bitset>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>
#include <vector>

namespace kc_emu {
namespace check {
namespace {

constexpr unsigned kPageBits = 12;
constexpr uintptr_t kPageSize = uintptr_t{1} << kPageBits;

// Record: serial (28 bits, 0 = no record) | interval (12) | thread (10) | warp epoch (12) |
// atomic | cp.async pending.
// Serials, intervals and warp epochs wrap; a wrapped value can only make an old record look
// current, which needs 2^12 barriers (or 2^28 blocks) between two accesses to one byte.
constexpr uint64_t kSerialMod = (uint64_t{1} << 28) - 1;  // serials are 1..kSerialMod
constexpr uint64_t kSerialMask = (uint64_t{1} << 28) - 1;
constexpr unsigned kIntervalShift = 28, kTidShift = 40, kEpochShift = 50;
constexpr uint64_t kIntervalMask = 0xfff, kTidMask = 0x3ff, kEpochMask = 0xfff;
constexpr uint64_t kAtomic = uint64_t{1} << 62;  // an atomic operation (never races another)
constexpr uint64_t kPending = uint64_t{1} << 63;

struct Cell {
  uint64_t w, r1, r2;
};

struct Page {
  bool global;         // inside a device allocation
  uint32_t valid_end;  // global pages: bytes of the page that belong to the allocation
  uintptr_t buf_base;
  size_t buf_len;
  Cell cells[kPageSize];
  // Per 16-byte chunk, up to two wgmma reads that may still be in flight or unordered with later
  // writes: serial (28 bits) | warpgroup (4) | the warpgroup's wgmma number (32); 0 = none.
  uint64_t async_rd[kPageSize / 16][2];
};

struct Shadow {
  std::shared_mutex mu;
  std::unordered_map<uintptr_t, Page*> pages;  // by page number
  std::map<uintptr_t, size_t> buffers;         // live device allocations: base -> bytes
  std::atomic<uint64_t> generation{1};         // bumped whenever a page is dropped
};

Shadow& shadow() {
  static Shadow* s = new Shadow();  // never destroyed: pool threads may use it until exit
  return *s;
}

std::atomic<uint64_t> g_serial{0};

constexpr int kCacheSize = 64;

// ---- release/acquire through atomics (the model: checker.h) ----------------------------------

constexpr uint32_t kMaxThreads = 1024;  // threads per block
constexpr uint32_t kNoFence = UINT32_MAX;

// What one block's fenced atomic on an address releases: its accesses in barrier intervals
// before `interval`, and those in `interval` of the threads in `at_interval`.
struct Release {
  uint64_t serial;
  uint32_t interval;
  std::bitset<kMaxThreads> at_interval;
};

// A release that an atomic of this block read, and the fence that made it an acquire.
struct Acquired {
  Release rel;
  uint32_t atomic_interval, atomic_tid;
  uint32_t fence_interval;           // kNoFence until an acquiring fence
  std::bitset<kMaxThreads> fenced;  // threads that fenced in fence_interval after the atomic
};

// The fence bookkeeping of the block that runs on this OS thread.
struct BlockSync {
  uint32_t nthreads = 0;
  uint32_t fence_interval[kMaxThreads];  // each thread's last __threadfence, or kNoFence
  bool clean[kMaxThreads];               // no access by the thread since that fence, within its interval
  std::vector<Acquired> acquired;
};

// Releases recorded per global address, in stripes: an atomic holds its stripe's lock around
// the operation and the bookkeeping, so the releases it reads are exactly those before it in the
// address's modification order.
struct SyncStripe {
  std::mutex mu;
  std::unordered_map<uintptr_t, std::vector<Release>> releases;
};
constexpr unsigned kStripes = 64;

SyncStripe& stripe_of(uintptr_t a) {
  static SyncStripe* s = new SyncStripe[kStripes];  // never destroyed, as the shadow
  return s[(a >> 2) % kStripes];
}

// The wgmma and proxy-fence bookkeeping of the block that runs on this OS thread.
constexpr uint32_t kMaxWarpgroups = kMaxThreads / 128;
struct AsyncState {
  uint32_t nthreads = 0;
  uint32_t pf_interval[kMaxThreads];  // each thread's last fence.proxy.async, or kNoFence
  bool pf_clean[kMaxThreads];         // no write by the thread since then, within its interval
  struct Retire {
    uint32_t seq_upto, interval;
  };
  std::vector<Retire> retired[kMaxWarpgroups];  // each wgmma.wait_group that retired something
};

struct Ctx {
  bool enabled;  // the current block is checked
  bool active;   // a checked kernel fiber runs on this OS thread now
  uintptr_t stack_lo;
  size_t stack_size;
  uint32_t tid;
  uint64_t serial;
  uint32_t interval;
  uint32_t warp_epoch[32];
  bool fenced;      // a thread of the block has executed __threadfence
  BlockSync* sync;  // allocated on the first fence or acquire of a block on this OS thread
  bool proxy_fenced;  // a thread of the block has executed fence.proxy.async
  bool async_reads;   // a wgmma of the block has read shared memory
  AsyncState* as;     // allocated on the first of those two on this OS thread
  const LaunchInfo* launch;
  const unsigned char* dyn_smem;
  uint64_t generation;
  struct {
    uintptr_t pn;
    Page* page;
  } cache[kCacheSize];
};

// initial-exec: the hooks run on every kernel load and store, so no __tls_get_addr call.
__attribute__((tls_model("initial-exec"))) thread_local Ctx tls_ctx;

uint64_t serial_of(uint64_t base, long lin) { return (base + static_cast<uint64_t>(lin)) % kSerialMod + 1; }

// Linear block index of `serial` within the current launch, or -1 if it belongs to another.
long block_in_launch(const Ctx& c, uint64_t serial) {
  uint64_t first = c.launch->serial_base % kSerialMod;
  uint64_t d = (serial - 1 + kSerialMod - first) % kSerialMod;
  return d < static_cast<uint64_t>(c.launch->nblocks) ? static_cast<long>(d) : -1;
}

void classify(Shadow& s, Page* p, uintptr_t pn) {
  uintptr_t lo = pn << kPageBits;
  p->global = false;
  p->valid_end = 0;
  auto it = s.buffers.upper_bound(lo);
  if (it == s.buffers.begin()) return;
  --it;
  if (it->first + it->second <= lo) return;
  p->global = true;
  p->buf_base = it->first;
  p->buf_len = it->second;
  p->valid_end = static_cast<uint32_t>(std::min<uintptr_t>(kPageSize, it->first + it->second - lo));
}

Page* page_for(Ctx& c, uintptr_t pn) {
  auto& e = c.cache[pn % kCacheSize];
  if (e.page && e.pn == pn) return e.page;
  Shadow& s = shadow();
  Page* p = nullptr;
  {
    std::shared_lock<std::shared_mutex> lk(s.mu);
    auto it = s.pages.find(pn);
    if (it != s.pages.end()) p = it->second;
  }
  if (!p) {
    std::unique_lock<std::shared_mutex> lk(s.mu);
    Page*& slot = s.pages[pn];
    if (!slot) {
      slot = static_cast<Page*>(calloc(1, sizeof(Page)));
      if (!slot) {
        fprintf(stderr, "kernels-cu emulator: out of memory for the checker's shadow memory\n");
        abort();
      }
      classify(s, slot, pn);
    }
    p = slot;
  }
  e.pn = pn;
  e.page = p;
  return p;
}

uint64_t load(const uint64_t* p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
void store(uint64_t* p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }

uint64_t record_of(const Ctx& c, uint32_t tid) {
  return c.serial | (uint64_t{c.interval & kIntervalMask} << kIntervalShift) |
         (uint64_t{tid} << kTidShift) | (uint64_t{c.warp_epoch[tid >> 5] & kEpochMask} << kEpochShift);
}

uint64_t rec_serial(uint64_t r) { return r & kSerialMask; }
uint32_t rec_tid(uint64_t r) { return static_cast<uint32_t>((r >> kTidShift) & kTidMask); }
uint32_t rec_interval(uint64_t r) { return static_cast<uint32_t>((r >> kIntervalShift) & kIntervalMask); }

// True when `rec` (of block rel.serial) lies in what `rel` released. Intervals are compared
// modulo the record's 12 bits, as everywhere else.
bool released(const Release& rel, uint64_t rec) {
  uint32_t d = (rel.interval - rec_interval(rec)) & kIntervalMask;
  if (d == 0) return rel.at_interval.test(rec_tid(rec));
  return d < (kIntervalMask + 1) / 2;
}

// True when another block's access `rec` is ordered before an access by `tid` now through a
// release that this block has acquired.
bool acquired_before(const Ctx& c, uint64_t rec, uint32_t tid) {
  if (!c.sync) return false;
  uint64_t rs = rec_serial(rec);
  for (const Acquired& e : c.sync->acquired) {
    if (e.rel.serial != rs || e.fence_interval == kNoFence) continue;
    if (c.interval == e.fence_interval && !e.fenced.test(tid)) continue;
    if (released(e.rel, rec)) return true;
  }
  return false;
}

// True when the access `rec` and an access by `tid` now are not ordered.
bool concurrent(const Ctx& c, const Page* pg, uint64_t rec, uint32_t tid) {
  if (!rec) return false;
  uint64_t rs = rec_serial(rec);
  if (rs == c.serial) {
    if (rec_interval(rec) != (c.interval & kIntervalMask)) return false;
    uint32_t rt = rec_tid(rec);
    if (rt == tid) return false;
    if ((rt >> 5) == (tid >> 5) && ((rec >> kEpochShift) & kEpochMask) != (c.warp_epoch[tid >> 5] & kEpochMask))
      return false;
    return true;
  }
  // Other blocks: only global memory is shared between blocks, only blocks of this launch run
  // unordered with this one, and an acquired release orders what it released.
  return pg->global && block_in_launch(c, rs) >= 0 && !acquired_before(c, rec, tid);
}

// A read record worth keeping: one that a later write in this launch could race with.
bool live(const Ctx& c, const Page* pg, uint64_t rec) {
  if (!rec) return false;
  uint64_t rs = rec_serial(rec);
  if (rs == c.serial) return rec_interval(rec) == (c.interval & kIntervalMask);
  return pg->global && block_in_launch(c, rs) >= 0;
}

// ---- reports ------------------------------------------------------------------------------

std::string thread_str(const dim3& bd, uint32_t tid) {
  char buf[64];
  snprintf(buf, sizeof buf, "thread (%u,%u,%u)", tid % bd.x, (tid / bd.x) % bd.y, tid / (bd.x * bd.y));
  return buf;
}

std::string block_str(const dim3& g, long lin) {
  char buf[64];
  snprintf(buf, sizeof buf, "block (%ld,%ld,%ld)", lin % g.x, (lin / g.x) % g.y,
           lin / (static_cast<long>(g.x) * g.y));
  return buf;
}

std::string who(const Ctx& c, uint64_t serial, uint32_t tid) {
  long lin = serial == c.serial ? -2 : block_in_launch(c, serial);
  std::string b = lin == -2 ? "this block" : lin >= 0 ? block_str(c.launch->grid, lin) : "another launch";
  return thread_str(c.launch->block, tid) + " of " + b;
}

// Names the memory at `a`: the kernel argument that points into its device buffer, or the
// kind of shared memory.
std::string where(const Ctx& c, const Page* pg, uintptr_t a) {
  char buf[256];
  if (pg->global) {
    std::string s;
    snprintf(buf, sizeof buf, "global memory, byte %zu of a %zu-byte device buffer",
             static_cast<size_t>(a - pg->buf_base), pg->buf_len);
    s = buf;
    const LaunchInfo* L = c.launch;
    size_t nargs = strlen(L->signature) / 2;
    for (size_t i = 0; i < nargs; i++) {
      char kind = L->signature[2 * i];
      if (kind != 'p' && kind != 'P') continue;
      uintptr_t v;
      memcpy(&v, L->args[i], sizeof v);
      if (v >= pg->buf_base && v < pg->buf_base + pg->buf_len) {
        snprintf(buf, sizeof buf, " (kernel argument %zu %+lld bytes)", i,
                 static_cast<long long>(a) - static_cast<long long>(v));
        s += buf;
        break;
      }
    }
    return s;
  }
  if (c.dyn_smem && a >= reinterpret_cast<uintptr_t>(c.dyn_smem) &&
      a < reinterpret_cast<uintptr_t>(c.dyn_smem) + c.launch->smem_bytes) {
    snprintf(buf, sizeof buf, "dynamic shared memory, byte %zu",
             static_cast<size_t>(a - reinterpret_cast<uintptr_t>(c.dyn_smem)));
    return buf;
  }
  snprintf(buf, sizeof buf, "static __shared__ memory at %p", reinterpret_cast<void*>(a));
  return buf;
}

[[noreturn]] void report_race(const Ctx& c, const Page* pg, uintptr_t a, unsigned n, const char* verb, uint32_t tid,
                              uint64_t other, bool other_write) {
  char buf[1000];
  uint64_t os = rec_serial(other);
  std::string why = os == c.serial
                        ? "in the same barrier interval (after " + std::to_string(c.interval) +
                              " __syncthreads of the block), with no __syncthreads, or warp collective "
                              "of their warp, between them"
                        : "in the same launch; blocks are not ordered (use atomics, a release/acquire through an "
                          "atomic: __threadfence before it in the writer, after it in the reader, or a second launch)";
  const char* other_verb = (other & kAtomic) ? "updated atomically" : other_write ? "wrote" : "read";
  snprintf(buf, sizeof buf, "data race in kernel %s: %s %s %u bytes at %s, which %s %s %s", c.launch->kernel,
           who(c, c.serial, tid).c_str(), verb, n, where(c, pg, a).c_str(), who(c, os, rec_tid(other)).c_str(),
           other_verb, why.c_str());
  trap(buf);
}

[[noreturn]] void report_pending(const Ctx& c, const Page* pg, uintptr_t a, bool write, uint32_t tid,
                                 uint64_t w) {
  char buf[700];
  snprintf(buf, sizeof buf,
           "kernel %s: %s %s %s, the destination of a cp.async that %s issued and has not yet waited for "
           "(cp.async.wait_group / wait_all must come first, then a __syncthreads for other threads)",
           c.launch->kernel, who(c, c.serial, tid).c_str(), write ? "writes" : "reads", where(c, pg, a).c_str(),
           rec_tid(w) == tid ? "it" : who(c, c.serial, rec_tid(w)).c_str());
  trap(buf);
}

// ---- the wgmma operand and the async proxy (the model: checker.h) ---------------------------

AsyncState& async_of(Ctx& c) {
  if (!c.as) c.as = new AsyncState();  // one per OS thread, reused by its blocks
  return *c.as;
}

uint64_t async_mark(const Ctx& c, uint32_t wg, uint32_t seq) {
  return c.serial | (uint64_t{wg & 0xf} << 28) | (uint64_t{seq} << 32);
}
uint32_t mark_wg(uint64_t m) { return static_cast<uint32_t>((m >> 28) & 0xf); }
uint32_t mark_seq(uint64_t m) { return static_cast<uint32_t>(m >> 32); }

enum AsyncReadState { READ_DONE, READ_RETIRED_NOW, READ_IN_FLIGHT };

// Where this block's wgmma read `m` stands: not yet retired, retired by a wgmma.wait_group in
// the current barrier interval, or retired before it.
AsyncReadState async_state(const Ctx& c, uint64_t m) {
  const std::vector<AsyncState::Retire>& list = c.as->retired[mark_wg(m)];
  uint32_t seq = mark_seq(m);
  if (list.empty() || list.back().seq_upto < seq) return READ_IN_FLIGHT;
  for (size_t i = list.size(); i-- > 0;) {
    if (list[i].interval != c.interval) return READ_DONE;  // intervals only grow along the list
    if (i == 0 || list[i - 1].seq_upto < seq) return READ_RETIRED_NOW;
  }
  return READ_RETIRED_NOW;
}

[[noreturn]] void report_async_write(const Ctx& c, const Page* pg, uintptr_t a, uint32_t tid, uint64_t m,
                                     bool in_flight) {
  char buf[900];
  if (in_flight)
    snprintf(buf, sizeof buf,
             "kernel %s: %s writes %s, which wgmma.mma_async number %u of warpgroup %u reads and no "
             "wgmma.wait_group has retired yet (the shared-memory operand must not change from the "
             "wgmma until the wait that retires it)",
             c.launch->kernel, who(c, c.serial, tid).c_str(), where(c, pg, a).c_str(), mark_seq(m), mark_wg(m));
  else
    snprintf(buf, sizeof buf,
             "data race in kernel %s: %s writes %s in the barrier interval in which warpgroup %u's "
             "wgmma.wait_group retired the wgmma.mma_async that read it; threads of other warpgroups "
             "need a __syncthreads after that wait",
             c.launch->kernel, who(c, c.serial, tid).c_str(), where(c, pg, a).c_str(), mark_wg(m));
  trap(buf);
}

// A write of `n` bytes at `a` (within one page of shared memory) by `tid`, checked against the
// wgmma reads of its chunks.
void check_async_write(const Ctx& c, const Page* pg, uintptr_t a, unsigned n, uint32_t tid) {
  uintptr_t page_lo = a & ~(kPageSize - 1);
  unsigned off = static_cast<unsigned>(a - page_lo);
  for (unsigned ch = off / 16; ch <= (off + n - 1) / 16; ch++)
    for (int s = 0; s < 2; s++) {
      uint64_t m = load(&pg->async_rd[ch][s]);
      if (!m || rec_serial(m) != c.serial) continue;
      AsyncReadState st = async_state(c, m);
      if (st == READ_IN_FLIGHT) report_async_write(c, pg, page_lo + 16 * ch, tid, m, true);
      if (st == READ_RETIRED_NOW && tid / 128 != mark_wg(m)) report_async_write(c, pg, page_lo + 16 * ch, tid, m, false);
    }
}

// True when the write `w` of this block was followed by a fence.proxy.async of its writer.
bool proxy_fenced_after(const Ctx& c, uint64_t w) {
  if (!c.proxy_fenced) return false;
  uint32_t t = rec_tid(w);
  uint32_t pf = c.as->pf_interval[t];
  if (pf == kNoFence) return false;
  uint32_t d = (pf - rec_interval(w)) & kIntervalMask;
  if (d == 0) return c.as->pf_clean[t];
  return d < (kIntervalMask + 1) / 2;
}

[[noreturn]] void report_unfenced(const Ctx& c, const Page* pg, uintptr_t a, uint32_t wg, uint64_t w) {
  char buf[900];
  snprintf(buf, sizeof buf,
           "kernel %s: wgmma.mma_async of warpgroup %u reads %s, which %s wrote through the generic proxy "
           "(a store or cp.async) with no fence.proxy.async.shared::cta after the write; the async proxy may "
           "read the old bytes (the writer must fence after writing, then __syncthreads, then wgmma)",
           c.launch->kernel, wg, where(c, pg, a).c_str(), who(c, c.serial, rec_tid(w)).c_str());
  trap(buf);
}

// ---- the access check ---------------------------------------------------------------------

void read_cell(const Ctx& c, Page* pg, uintptr_t a, unsigned n, uint32_t tid, uint64_t me) {
  Cell& x = pg->cells[a & (kPageSize - 1)];
  uint64_t w = load(&x.w);
  if (w & kPending) {
    if (rec_serial(w) == c.serial) report_pending(c, pg, a, false, tid, w);
  } else if (concurrent(c, pg, w, tid)) {
    report_race(c, pg, a, n, "reads", tid, w, true);
  }
  uint64_t r1 = load(&x.r1);
  if (r1 == me) return;
  if (!live(c, pg, r1) || (rec_serial(r1) == c.serial && rec_tid(r1) == tid)) {
    store(&x.r1, me);
    return;
  }
  uint64_t r2 = load(&x.r2);
  if (r2 == me) return;
  if (!live(c, pg, r2) || (rec_serial(r2) == c.serial && rec_tid(r2) == tid)) store(&x.r2, me);
}

void write_cell(const Ctx& c, Page* pg, uintptr_t a, unsigned n, uint32_t tid, uint64_t me) {
  Cell& x = pg->cells[a & (kPageSize - 1)];
  uint64_t w = load(&x.w);
  if (w == me) return;  // readers since then were checked against this write
  if (w & kPending) {
    if (rec_serial(w) == c.serial) report_pending(c, pg, a, true, tid, w);
  } else if (concurrent(c, pg, w, tid)) {
    report_race(c, pg, a, n, "writes", tid, w, true);
  }
  uint64_t r1 = load(&x.r1);
  if (concurrent(c, pg, r1, tid)) report_race(c, pg, a, n, "writes", tid, r1, false);
  uint64_t r2 = load(&x.r2);
  if (concurrent(c, pg, r2, tid)) report_race(c, pg, a, n, "writes", tid, r2, false);
  store(&x.w, me);
}

// An atomic operation: it never races another atomic, but a plain access of the same bytes by
// another thread, unordered with it, is a race (e.g. a flag cleared by one thread while the
// others set it atomically, with no barrier in between).
void atomic_cell(const Ctx& c, Page* pg, uintptr_t a, unsigned n, uint32_t tid, uint64_t me) {
  Cell& x = pg->cells[a & (kPageSize - 1)];
  uint64_t w = load(&x.w);
  if ((w & kPending) && rec_serial(w) == c.serial) report_pending(c, pg, a, true, tid, w);
  if (!(w & (kAtomic | kPending)) && concurrent(c, pg, w, tid))
    report_race(c, pg, a, n, "updates atomically", tid, w, true);
  uint64_t r1 = load(&x.r1);
  if (concurrent(c, pg, r1, tid)) report_race(c, pg, a, n, "updates atomically", tid, r1, false);
  uint64_t r2 = load(&x.r2);
  if (concurrent(c, pg, r2, tid)) report_race(c, pg, a, n, "updates atomically", tid, r2, false);
  store(&x.w, me | kAtomic);
}

[[noreturn]] void report_misaligned(const Ctx& c, Page* pg, uintptr_t a, unsigned n, bool write) {
  char buf[600];
  snprintf(buf, sizeof buf,
           "kernel %s: misaligned %u-byte %s at %p (address mod %u = %u) in %s; the GPU requires "
           "vector and scalar accesses to be aligned to their size (\"misaligned address\")",
           c.launch->kernel, n, write ? "store" : "load", reinterpret_cast<void*>(a), n,
           static_cast<unsigned>(a % n), where(c, pg, a).c_str());
  trap(buf);
}

[[noreturn]] void report_out_of_bounds(const Ctx& c, Page* pg, uintptr_t a, unsigned n, bool write) {
  char buf[600];
  snprintf(buf, sizeof buf, "kernel %s: %u-byte %s at %p is out of bounds: %s", c.launch->kernel, n,
           write ? "store" : "load", reinterpret_cast<void*>(a), where(c, pg, a).c_str());
  trap(buf);
}

// `n` bytes at `a` (not crossing a page) by thread `tid`; `me` is its record.
void access_in_page(Ctx& c, uintptr_t a, unsigned n, bool write, uint32_t tid, uint64_t me, uint64_t flag) {
  Page* pg = page_for(c, a >> kPageBits);
  unsigned off = static_cast<unsigned>(a & (kPageSize - 1));
  if (pg->global && off + n > pg->valid_end) report_out_of_bounds(c, pg, a, n, write);
  if (write && c.async_reads && !pg->global) check_async_write(c, pg, a, n, tid);
  for (unsigned i = 0; i < n; i++) {
    if (write) {
      write_cell(c, pg, a + i, n, tid, me);
      if (flag) store(&pg->cells[off + i].w, me | flag);
    } else {
      read_cell(c, pg, a + i, n, tid, me);
    }
  }
}

void access(Ctx& c, uintptr_t a, size_t n, bool write, unsigned align, uint32_t tid, uint64_t flag = 0) {
  if (align > 1 && (a & (align - 1))) report_misaligned(c, page_for(c, a >> kPageBits), a, align, write);
  // An access after the thread's fence, in the fence's interval: the fence does not release it.
  if (c.fenced && c.sync->fence_interval[tid] == c.interval) c.sync->clean[tid] = false;
  // A write after the thread's proxy fence, in the fence's interval: not fenced.
  if (write && c.proxy_fenced && c.as->pf_interval[tid] == c.interval) c.as->pf_clean[tid] = false;
  uint64_t me = record_of(c, tid);
  while (n > 0) {
    size_t room = kPageSize - (a & (kPageSize - 1));
    unsigned part = static_cast<unsigned>(n < room ? n : room);
    access_in_page(c, a, part, write, tid, me, flag);
    a += part;
    n -= part;
  }
}

void atomic_access(Ctx& c, uintptr_t a, unsigned n) {
  if (a & (n - 1)) report_misaligned(c, page_for(c, a >> kPageBits), a, n, true);
  uint64_t me = record_of(c, c.tid);
  Page* pg = page_for(c, a >> kPageBits);  // aligned: never crosses a page
  for (unsigned i = 0; i < n; i++) atomic_cell(c, pg, a + i, n, c.tid, me);
}

BlockSync& sync_of(Ctx& c) {
  if (!c.sync) c.sync = new BlockSync();  // one per OS thread, reused by its blocks
  return *c.sync;
}

// Records on `list` (the releases on one address) what this block's atomic by c.tid releases.
void publish_release(const Ctx& c, std::vector<Release>& list) {
  const BlockSync& s = *c.sync;
  // The latest fence before the atomic: the thread's own, or one in an earlier interval.
  uint32_t f = s.fence_interval[c.tid];
  for (uint32_t u = 0; u < s.nthreads; u++) {
    uint32_t fu = s.fence_interval[u];
    if (fu != kNoFence && fu < c.interval && (f == kNoFence || fu > f)) f = fu;
  }
  if (f == kNoFence) return;
  Release rel{c.serial, f, {}};
  for (uint32_t u = 0; u < s.nthreads; u++) {
    if (s.fence_interval[u] == f && s.clean[u] && (f < c.interval || u == c.tid)) rel.at_interval.set(u);
  }
  // Releases of earlier launches order nothing any more.
  list.erase(std::remove_if(list.begin(), list.end(),
                            [&](const Release& r) { return r.serial != c.serial && block_in_launch(c, r.serial) < 0; }),
             list.end());
  for (Release& r : list) {
    if (r.serial != c.serial) continue;
    if (f > r.interval) r = rel;
    else if (f == r.interval) r.at_interval |= rel.at_interval;
    return;
  }
  list.push_back(rel);
}

// Notes the releases of other blocks of this launch that this block's atomic by c.tid read.
void read_releases(Ctx& c, const std::vector<Release>& list) {
  for (const Release& r : list) {
    if (r.serial == c.serial || block_in_launch(c, r.serial) < 0) continue;
    sync_of(c).acquired.push_back(Acquired{r, c.interval, c.tid, kNoFence, {}});
  }
}

// The checker's side of an atomic operation: checked against plain accesses before it, and for
// global memory the release/acquire bookkeeping, under the address's stripe lock, which is held
// until the scope ends (after the operation).
class AtomicScope {
 public:
  AtomicScope(const volatile void* p, unsigned n) {
    Ctx& c = tls_ctx;
    if (!c.active) return;
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    if (a - c.stack_lo < c.stack_size) return;
    atomic_access(c, a, n);
    if (!page_for(c, a >> kPageBits)->global) return;
    a_ = a;
    stripe_ = &stripe_of(a);
    stripe_->mu.lock();
    if (c.fenced) publish_release(c, stripe_->releases[a]);
  }
  ~AtomicScope() {
    if (!stripe_) return;
    auto it = stripe_->releases.find(a_);
    if (it != stripe_->releases.end()) read_releases(tls_ctx, it->second);
    stripe_->mu.unlock();
  }
  AtomicScope(const AtomicScope&) = delete;
  AtomicScope& operator=(const AtomicScope&) = delete;

 private:
  SyncStripe* stripe_ = nullptr;
  uintptr_t a_ = 0;
};

inline __attribute__((always_inline)) void hook(void* p, unsigned n, bool write, unsigned align) {
  Ctx& c = tls_ctx;
  if (!c.active) return;
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (a - c.stack_lo < c.stack_size) return;  // the thread's own stack: local variables
  access(c, a, n, write, align, c.tid);
}

}  // namespace

bool available() {
#ifdef KC_EMU_CHECKED
  return true;
#else
  return false;
#endif
}

uint64_t reserve_serials(long nblocks) { return g_serial.fetch_add(static_cast<uint64_t>(nblocks)); }

void begin_block(const LaunchInfo* launch, long block_lin, const unsigned char* dyn_smem, bool enabled) {
  Ctx& c = tls_ctx;
  c.enabled = enabled && available();
  c.active = false;
  c.launch = launch;
  c.dyn_smem = dyn_smem;
  c.serial = serial_of(launch->serial_base, block_lin);
  c.interval = 0;
  memset(c.warp_epoch, 0, sizeof c.warp_epoch);
  c.fenced = false;
  c.proxy_fenced = false;
  c.async_reads = false;
  if (c.sync) c.sync->acquired.clear();
  uint64_t g = shadow().generation.load(std::memory_order_acquire);
  if (g != c.generation) {
    for (auto& e : c.cache) e.page = nullptr;
    c.generation = g;
  }
}

void end_block() {
  tls_ctx.active = false;
  tls_ctx.enabled = false;
}

void enter_fiber(uint32_t tid, const void* stack_lo, size_t stack_size) {
  Ctx& c = tls_ctx;
  c.tid = tid;
  c.stack_lo = reinterpret_cast<uintptr_t>(stack_lo);
  c.stack_size = stack_size;
  c.active = c.enabled;
}

void leave_fiber() { tls_ctx.active = false; }

void on_barrier() { tls_ctx.interval++; }

void on_fence() {
  Ctx& c = tls_ctx;
  if (!c.active) return;
  BlockSync& s = sync_of(c);
  if (!c.fenced) {
    const dim3& b = c.launch->block;
    s.nthreads = std::min<uint32_t>(b.x * b.y * b.z, kMaxThreads);
    std::fill(s.fence_interval, s.fence_interval + s.nthreads, kNoFence);
    c.fenced = true;
  }
  s.fence_interval[c.tid] = c.interval;
  s.clean[c.tid] = true;
  // Atomics that read a release become acquires at a fence that follows them.
  for (Acquired& e : s.acquired) {
    if (e.atomic_interval >= c.interval && e.atomic_tid != c.tid) continue;
    if (e.fence_interval == kNoFence) e.fence_interval = c.interval;
    if (e.fence_interval == c.interval) e.fenced.set(c.tid);
  }
}

void on_warp_collective(int warp) { tls_ctx.warp_epoch[warp]++; }

void record_read(const void* p, size_t n, uint32_t tid) {
  Ctx& c = tls_ctx;
  if (c.enabled) access(c, reinterpret_cast<uintptr_t>(p), n, false, 1, tid);
}

void cp_async_issue(void* dst, size_t dst_n, const void* src, size_t src_n, uint32_t tid) {
  Ctx& c = tls_ctx;
  if (!c.enabled) return;
  access(c, reinterpret_cast<uintptr_t>(src), src_n, false, 1, tid);
  access(c, reinterpret_cast<uintptr_t>(dst), dst_n, true, 1, tid, kPending);
}

void cp_async_land(void* dst, size_t n, uint32_t tid) {
  Ctx& c = tls_ctx;
  if (!c.enabled) return;
  uint64_t me = record_of(c, tid);
  uintptr_t a = reinterpret_cast<uintptr_t>(dst);
  if (c.proxy_fenced && c.as->pf_interval[tid] == c.interval) c.as->pf_clean[tid] = false;
  for (size_t i = 0; i < n; i++) {
    Page* pg = page_for(c, (a + i) >> kPageBits);
    if (c.async_reads && !pg->global) check_async_write(c, pg, a + i, 1, tid);
    store(&pg->cells[(a + i) & (kPageSize - 1)].w, me);
  }
}

void wgmma_read(const void* p, size_t n, uint32_t wg, uint32_t seq, uint32_t tid) {
  Ctx& c = tls_ctx;
  if (!c.enabled) return;
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  access(c, a, n, false, 16, tid);
  AsyncState& as = async_of(c);
  if (!c.async_reads) {
    for (auto& r : as.retired) r.clear();
    c.async_reads = true;
  }
  Page* pg = page_for(c, a >> kPageBits);  // 16-byte aligned: never crosses a page
  unsigned off = static_cast<unsigned>(a & (kPageSize - 1));
  for (unsigned i = 0; i < n; i++) {
    uint64_t w = load(&pg->cells[off + i].w);
    if (!w || rec_serial(w) != c.serial || (w & kPending)) continue;
    if (!proxy_fenced_after(c, w)) report_unfenced(c, pg, a + i, wg, w);
  }
  uint64_t* slots = pg->async_rd[off / 16];
  int pick = -1;
  for (int s = 0; s < 2 && pick < 0; s++) {
    uint64_t m = load(&slots[s]);
    if (m && rec_serial(m) == c.serial && mark_wg(m) == wg) pick = s;  // a newer read of the same warpgroup
  }
  for (int s = 0; s < 2 && pick < 0; s++) {
    uint64_t m = load(&slots[s]);
    if (!m || rec_serial(m) != c.serial || async_state(c, m) == READ_DONE) pick = s;
  }
  if (pick >= 0) store(&slots[pick], async_mark(c, wg, seq));
}

void wgmma_retire(uint32_t wg, uint32_t seq_upto) {
  Ctx& c = tls_ctx;
  if (!c.enabled || !c.async_reads) return;
  c.as->retired[wg].push_back(AsyncState::Retire{seq_upto, c.interval});
}

void on_proxy_fence() {
  Ctx& c = tls_ctx;
  if (!c.active) return;
  AsyncState& as = async_of(c);
  if (!c.proxy_fenced) {
    const dim3& b = c.launch->block;
    as.nthreads = std::min<uint32_t>(b.x * b.y * b.z, kMaxThreads);
    std::fill(as.pf_interval, as.pf_interval + as.nthreads, kNoFence);
    c.proxy_fenced = true;
  }
  as.pf_interval[c.tid] = c.interval;
  as.pf_clean[c.tid] = true;
}

void mem_register(const void* p, size_t n) {
  if (!available() || n == 0) return;
  Shadow& s = shadow();
  std::unique_lock<std::shared_mutex> lk(s.mu);
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  s.buffers[a] = n;
  // Pages left from earlier use of these addresses (freed heap memory) start over.
  for (uintptr_t pn = a >> kPageBits; pn <= (a + n - 1) >> kPageBits; pn++) {
    auto it = s.pages.find(pn);
    if (it == s.pages.end()) continue;
    memset(it->second->cells, 0, sizeof it->second->cells);
    classify(s, it->second, pn);
  }
}

void mem_release(const void* p, size_t n) {
  if (!available() || n == 0) return;
  Shadow& s = shadow();
  std::unique_lock<std::shared_mutex> lk(s.mu);
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  s.buffers.erase(a);
  for (uintptr_t pn = a >> kPageBits; pn <= (a + n - 1) >> kPageBits; pn++) {
    auto it = s.pages.find(pn);
    if (it == s.pages.end()) continue;
    free(it->second);
    s.pages.erase(it);
  }
  s.generation.fetch_add(1, std::memory_order_release);
}

}  // namespace check

void misaligned(const void* p, unsigned n, bool write) {
  check::Ctx& c = check::tls_ctx;
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  check::report_misaligned(c, check::page_for(c, a >> check::kPageBits), a, n, write);
}

}  // namespace kc_emu

// ---- the entry points that GCC's -fsanitize=thread instrumentation calls -----------------

using kc_emu::check::AtomicScope;
using kc_emu::check::hook;

#define KC_RW(N)                                                                                   \
  extern "C" void __tsan_read##N(void* p) { hook(p, N, false, N); }                                \
  extern "C" void __tsan_write##N(void* p) { hook(p, N, true, N); }                                \
  extern "C" void __tsan_unaligned_read##N(void* p) { hook(p, N, false, 1); }                      \
  extern "C" void __tsan_unaligned_write##N(void* p) { hook(p, N, true, 1); }
KC_RW(1)
KC_RW(2)
KC_RW(4)
KC_RW(8)
KC_RW(16)
#undef KC_RW

extern "C" void __tsan_read_range(void* p, unsigned long n) {
  kc_emu::check::Ctx& c = kc_emu::check::tls_ctx;
  if (c.active && reinterpret_cast<uintptr_t>(p) - c.stack_lo >= c.stack_size)
    kc_emu::check::access(c, reinterpret_cast<uintptr_t>(p), n, false, 1, c.tid);
}
extern "C" void __tsan_write_range(void* p, unsigned long n) {
  kc_emu::check::Ctx& c = kc_emu::check::tls_ctx;
  if (c.active && reinterpret_cast<uintptr_t>(p) - c.stack_lo >= c.stack_size)
    kc_emu::check::access(c, reinterpret_cast<uintptr_t>(p), n, true, 1, c.tid);
}
extern "C" void __tsan_init() {}
extern "C" void __tsan_func_entry(void*) {}
extern "C" void __tsan_func_exit() {}
extern "C" void __tsan_vptr_update(void*, void*) {}
extern "C" void __tsan_vptr_read(void*) {}

// Atomics are real atomic operations; the checker records them (they race plain accesses, not
// each other) and keeps the release/acquire bookkeeping around them.
#define KC_ATOMICS(BITS, T)                                                                        \
  extern "C" T __tsan_atomic##BITS##_load(const volatile T* a, int) {                              \
    AtomicScope scope(a, sizeof(T));                                                               \
    return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                                   \
  }                                                                                                \
  extern "C" void __tsan_atomic##BITS##_store(volatile T* a, T v, int) {                           \
    AtomicScope scope(a, sizeof(T));                                                               \
    __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                                      \
  }                                                                                                \
  extern "C" T __tsan_atomic##BITS##_exchange(volatile T* a, T v, int) {                           \
    AtomicScope scope(a, sizeof(T));                                                               \
    return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                            \
  }                                                                                                \
  extern "C" T __tsan_atomic##BITS##_fetch_add(volatile T* a, T v, int) {                          \
    AtomicScope scope(a, sizeof(T));                                                               \
    return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);                                             \
  }                                                                                                \
  extern "C" T __tsan_atomic##BITS##_fetch_sub(volatile T* a, T v, int) {                          \
    AtomicScope scope(a, sizeof(T));                                                               \
    return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST);                                             \
  }                                                                                                \
  extern "C" T __tsan_atomic##BITS##_fetch_and(volatile T* a, T v, int) {                          \
    AtomicScope scope(a, sizeof(T));                                                               \
    return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST);                                             \
  }                                                                                                \
  extern "C" T __tsan_atomic##BITS##_fetch_or(volatile T* a, T v, int) {                           \
    AtomicScope scope(a, sizeof(T));                                                               \
    return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST);                                              \
  }                                                                                                \
  extern "C" T __tsan_atomic##BITS##_fetch_xor(volatile T* a, T v, int) {                          \
    AtomicScope scope(a, sizeof(T));                                                               \
    return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST);                                             \
  }                                                                                                \
  extern "C" T __tsan_atomic##BITS##_fetch_nand(volatile T* a, T v, int) {                         \
    AtomicScope scope(a, sizeof(T));                                                               \
    return __atomic_fetch_nand(a, v, __ATOMIC_SEQ_CST);                                            \
  }                                                                                                \
  extern "C" int __tsan_atomic##BITS##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) { \
    AtomicScope scope(a, sizeof(T));                                                               \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);        \
  }                                                                                                \
  extern "C" int __tsan_atomic##BITS##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) { \
    AtomicScope scope(a, sizeof(T));                                                               \
    return __atomic_compare_exchange_n(a, c, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);         \
  }                                                                                                \
  extern "C" T __tsan_atomic##BITS##_compare_exchange_val(volatile T* a, T c, T v, int, int) {     \
    AtomicScope scope(a, sizeof(T));                                                               \
    __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);              \
    return c;                                                                                      \
  }
KC_ATOMICS(8, unsigned char)
KC_ATOMICS(16, unsigned short)
KC_ATOMICS(32, unsigned)
KC_ATOMICS(64, unsigned long long)
#undef KC_ATOMICS
extern "C" void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
extern "C" void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
