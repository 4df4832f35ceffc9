// The emulator's memory checker: a shadow memory that finds data races, misaligned accesses and
// cp.async reads before their wait (checker.cpp). The kernel families are compiled with GCC's
// -fsanitize=thread instrumentation, which calls __tsan_readN / __tsan_writeN before every load
// and store; checker.cpp implements those entry points itself (the ThreadSanitizer runtime is
// not linked), so every kernel memory access reaches the shadow memory below.
//
// The happens-before model is the CUDA block's: two accesses to one byte by different threads,
// at least one a write, race unless
//   - a __syncthreads separates them (they lie in different barrier intervals of the block), or
//   - both threads are lanes of one warp and a warp collective completed in between, or
//   - both accesses are atomics (an atomic and a plain access of the same bytes do race).
// In global memory, accesses by different blocks of one launch are unordered (there is no
// grid-wide barrier), so any write that another block also touches is a race, unless a
// release/acquire pair through an atomic orders them, as the CUDA memory model gives it to
// `__threadfence(); atomicX(ctr)` in one block and `atomicX(ctr)` followed by `__threadfence()`
// in another (a fence before a relaxed atomic makes it a release; a fence after an atomic that
// read the released value makes it an acquire):
//   - Release. When a thread T of block B performs an atomic on global address X, let F be the
//     barrier interval of the latest __threadfence that precedes the atomic: T's own last fence,
//     or any thread's fence in an earlier interval (a __syncthreads orders it before T). B's
//     accesses in intervals before F are released, and so are the accesses in interval F of
//     each thread that fenced in F (and, if F is T's current interval, only T), provided the
//     thread made no memory access between its fence and the end of F (or T's atomic): those
//     were made before its fence. The release (B, F, those threads) is recorded on X.
//   - Acquire. An atomic on X by a thread of block A, performed after block B's release on X in
//     X's modification order (the checker holds a lock on X around the atomic operation and the
//     bookkeeping, so that order is exact), reads B's release. It becomes an acquire at the
//     first __threadfence that follows the atomic in the same thread, or in any thread of A in a
//     later barrier interval; from then on it orders B's released accesses before the fencing
//     thread's later accesses and before every access of A in later intervals.
// A release without its fence, an atomic without its acquiring fence, or a read of another
// block's data without an atomic that saw its release, stays a race. Atomics on shared memory
// order nothing (within a block, __syncthreads does). Chains (B released to A, A to C) are not
// followed: C sees only releases recorded on the address of its own atomic, so the model may
// report a race that a longer chain of releases orders on the GPU; it never orders accesses
// that the GPU leaves unordered.
// A cp.async destination is written asynchronously from the issue until the issuing thread's
// cp.async.wait_group: any access to it in between is reported.
// The warpgroup MMA (wgmma.mma_async) reads its shared-memory operand asynchronously, through
// the async proxy:
//   - The read is a read by the warpgroup's first thread at the issue, so the operand must have
//     been written before a __syncthreads that precedes the wgmma (or by that thread).
//   - Every byte it reads that a thread wrote through the generic proxy (stores, cp.async) must
//     have been followed by a fence.proxy.async.shared::cta of the writer: a fence in a later
//     barrier interval than the write, or in the same interval with no write of the writer after
//     the fence (a write after its fence makes the model treat the thread's earlier writes of that
//     interval as unfenced: conservative).
//   - From the issue until the wgmma.wait_group that retires it, any write to the operand (store,
//     cp.async issue or landing) is reported; after the wait, a write by a thread of another
//     warpgroup in the same barrier interval is a race (a __syncthreads must follow the wait).
//     Each 16-byte chunk remembers two warpgroups' reads; a third warpgroup's read of the same
//     chunk in flight at the same time is not tracked.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "kc_emu.h"

namespace kc_emu {
namespace check {

// One launch, as the checker needs it for its reports.
struct LaunchInfo {
  const char* kernel = "";
  const char* signature = "";  // two letters per parameter (kc_emu.h)
  void* const* args = nullptr;
  dim3 grid{1, 1, 1}, block{1, 1, 1};
  uint64_t serial_base = 0;  // serial of block 0; blocks are numbered serial_base + linear index
  long nblocks = 0;
  unsigned smem_bytes = 0;
};

// True when the kernel families were compiled with the access instrumentation (not in the
// AddressSanitizer build, which cannot be combined with it).
bool available();
// Reserves serial numbers for `nblocks` blocks; returns the first.
uint64_t reserve_serials(long nblocks);

// Per worker OS thread: the block it runs and the fiber that runs.
void begin_block(const LaunchInfo* launch, long block_lin, const unsigned char* dyn_smem, bool enabled);
void end_block();
void enter_fiber(uint32_t tid, const void* stack_lo, size_t stack_size);
void leave_fiber();
void on_barrier();
// A __threadfence by the current thread.
void on_fence();
void on_warp_collective(int warp);

// Accesses that the emulator's runtime performs for a thread (ldmatrix rows, cp.async).
void record_read(const void* p, size_t n, uint32_t tid);
void cp_async_issue(void* dst, size_t dst_n, const void* src, size_t src_n, uint32_t tid);
void cp_async_land(void* dst, size_t n, uint32_t tid);
// wgmma.mma_async number `seq` of warpgroup `wg` reads `n` bytes (a 16-byte aligned chunk) at p;
// `tid` is the warpgroup's first thread.
void wgmma_read(const void* p, size_t n, uint32_t wg, uint32_t seq, uint32_t tid);
// wgmma.wait_group retired warpgroup `wg`'s wgmma up to number `seq_upto`.
void wgmma_retire(uint32_t wg, uint32_t seq_upto);
// fence.proxy.async.shared::cta by the current thread.
void on_proxy_fence();

// Device allocations (global memory): registered when allocated, forgotten when freed.
void mem_register(const void* p, size_t n);
void mem_release(const void* p, size_t n);

}  // namespace check
}  // namespace kc_emu
