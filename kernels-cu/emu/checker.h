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
// In global memory, accesses by different blocks of one launch are never ordered (there is no
// grid-wide barrier), so any write that another block also touches is a race.
// A cp.async destination is written asynchronously from the issue until the issuing thread's
// cp.async.wait_group: any access to it in between is reported.
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
void on_warp_collective(int warp);

// Accesses that the emulator's runtime performs for a thread (ldmatrix rows, cp.async).
void record_read(const void* p, size_t n, uint32_t tid);
void cp_async_issue(void* dst, size_t dst_n, const void* src, size_t src_n, uint32_t tid);
void cp_async_land(void* dst, size_t n, uint32_t tid);

// Device allocations (global memory): registered when allocated, forgotten when freed.
void mem_register(const void* p, size_t n);
void mem_release(const void* p, size_t n);

}  // namespace check
}  // namespace kc_emu
