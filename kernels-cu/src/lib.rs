//! CUDA C++ kernel sources, their host emulator, the compile and resource gates, and the device
//! interface (real driver or emulator) that the model's CUDA training step launches through.
//!
//! # Layout
//!
//! | path | what |
//! | --- | --- |
//! | `cuda/common.cuh` | the one header: bf16/f16 conversion and packing, vector loads, warp reductions, PTX wrappers (`mma.sync` m16n8k16 bf16, `ldmatrix` x1/x2/x4 (.trans), `cp.async` + commit/wait, fences). No toolkit includes. |
//! | `cuda/<family>.cu` | one kernel family per file; every entry point `extern "C" __global__` |
//! | `ptx/<family>.ptx` | PTX built ahead (NVRTC 12.4, `compute_80`), embedded with `include_str!` |
//! | `emu/kc_emu.h`, `emu/runtime.cpp` | the host emulator of the CUDA execution model |
//! | `ptxas-report.txt` | the resource report (registers, shared memory, stack, spills per kernel, sm_80 and sm_90) |
//! | `src/perf/` | the GPU performance model: launch recording and dry-run backends, per-kernel cost, GPU table, occupancy/waves/time bounds, launch validation, SASS loop counts, calibration (all predictions, none measured) |
//!
//! [`FAMILIES`] and [`KERNELS`] list the sources and entry points (name, family, hot flag);
//! [`kernels`] has one constant per entry point.
//!
//! # How users get PTX
//!
//! The PTX is generated ahead of time and embedded in the binary; the CUDA backend loads it with
//! `cuModuleLoadData` and the driver JIT-compiles it for the GPU. A user needs only the NVIDIA
//! driver (R550 or newer: the embedded PTX is ISA 8.4), never NVRTC or a toolkit. The compile
//! gate regenerates the PTX from the sources and fails if the embedded copy is stale.
//!
//! # Device interface
//!
//! [`Device`] is a handle over a [`Backend`]; there are two: the CUDA driver and the emulator.
//!
//! ```no_run
//! use kernels_cu::{kernels, Arg, DType, Device, Dim3, Launch};
//! # fn main() -> Result<(), kernels_cu::Error> {
//! let dev = Device::cuda(0).or_else(|_| Device::emulator())?; // never panics without a GPU
//! let a = dev.htod(&[1.0f32, 2.0, 3.0])?;
//! let b = dev.htod(&[10.0f32, 20.0, 30.0])?;
//! let mut out = dev.alloc(DType::F32, 3)?;
//! // SAFETY: out, a and b hold 3 elements; add_f32 touches indices < n only.
//! unsafe {
//!     dev.launch(&Launch {
//!         kernel: kernels::ADD_F32,
//!         grid: Dim3::x(1),
//!         block: Dim3::x(256),
//!         shared_bytes: 0,
//!         args: &[out.arg_mut(), a.arg(), b.arg(), Arg::I32(3)],
//!     })?;
//! }
//! assert_eq!(dev.dtoh::<f32>(&out)?, vec![11.0, 22.0, 33.0]);
//! # Ok(()) }
//! ```
//!
//! - Constructors: [`Device::cuda`]`(ordinal)` (an [`Error`], never a panic, when the driver
//!   library, the GPU or the context is missing), [`Device::emulator`],
//!   [`Device::emulator_with`]. [`cuda_driver_present`] tells whether libcuda loads at all.
//! - Memory: [`Device::alloc`] (uninitialised; the emulator fills it with 0xff, NaN as floats),
//!   [`Device::alloc_zeros`], [`Device::htod`], [`Device::write`], [`Device::dtoh`],
//!   [`Device::read_into`], [`Device::copy`]. A [`Buffer`] knows its dtype and length and goes
//!   back to the device's pool on drop. [`Buffer::view`] / [`Buffer::view_mut`] give a range
//!   of a buffer as a `Buffer` (no allocation; mind 16-byte alignment for vectorized kernels).
//!   The CUDA backend serves allocations from a [`pool::CachingPool`] (size classes, reuse,
//!   release-and-retry on out-of-memory), so a training step does no `cuMemAlloc` after warm-up;
//!   [`Device::memory`] reports its counters, [`Device::release_cached`] gives the cache back.
//!   All work runs on the device's one stream; copies to and from the host synchronize it,
//!   launches do not ([`Device::synchronize`]).
//! - Launch: `unsafe` [`Device::launch`] of a [`Launch`] row (kernel, grid, block, dynamic
//!   shared bytes, args). [`Arg::Ref`] / [`Arg::Mut`] pass buffers as `const T*` / `T*`,
//!   [`Arg::RefAt`] / [`Arg::MutAt`] a pointer to an element offset inside a buffer; scalars as
//!   [`Arg::I32`], [`Arg::U32`], [`Arg::I64`], [`Arg::U64`], [`Arg::F32`], [`Arg::F64`].
//!   Checked before launching: buffers belong to the device, CUDA's grid/block/shared limits;
//!   on the emulator the argument count and each argument's kind (pointer to const / mutable /
//!   value) and element type against the kernel's C++ signature, so swapped or missing
//!   arguments fail in CI; on CUDA the argument count and sizes against the PTX entry.
//!   The CUDA backend loads each family's module on first use and caches modules and functions,
//!   opting functions in to more than 48 KiB of dynamic shared memory when a launch asks.
//! - Safe launchers, one module of [`ops`] per family: they check dtypes and lengths, document
//!   the reference math, and hold the launch geometry (from [`defines`], the sources'
//!   `#define`s). The model's CUDA training step is written on these.
//!
//! # The emulator
//!
//! `emu/` plus the family sources are compiled as C++17 with the system compiler (cc crate,
//! feature `emulator`, on by default; each family in its own namespace as NVRTC compiles each
//! file alone). Execution model:
//! - one ucontext fiber per CUDA thread; a block's fibers run on one OS thread, so `__shared__`
//!   is a function-local `static thread_local`; dynamic shared memory (`KC_DYNAMIC_SHARED(T, name)`
//!   in common.cuh) is a per-block allocation of exactly the launch's size, poisoned with 0xff;
//!   blocks run in parallel on a pool of OS threads (`KERNELS_CU_EMU_THREADS`, default: cores,
//!   at most 16); fiber stacks are reused per OS thread, 64 KiB each (`KERNELS_CU_EMU_STACK_KB`)
//!   with a guard page;
//! - `__syncthreads` blocks until every thread of the block arrives; a thread that exited while
//!   others wait is a **divergent barrier**, reported as [`Error::Emulator`];
//! - warp collectives (`__shfl*_sync` with width, `__ballot/__any/__all_sync`, `__syncwarp`,
//!   `__activemask`) complete when every non-exited lane of the mask arrives, with the PTX
//!   `shfl.sync` semantics; mismatched collectives, a lane missing from its own mask, reading a
//!   non-participating lane, and deadlocks are errors;
//! - `mma.sync` m16n8k16 bf16 and `ldmatrix` follow the PTX ISA fragment layouts (all 32 lanes
//!   must execute them; ldmatrix rows must be 16-byte aligned); `cp.async` keeps a per-thread
//!   queue of groups and copies only at `cp.async.wait_group`, so a missing wait shows stale
//!   data; atomics are real atomics (blocks run concurrently).
//! - AddressSanitizer: `cargo test -p kernels-cu --release --features asan` builds the emulator
//!   with `-fsanitize=address` (fiber switches annotated) and links the ASan runtime into the
//!   test binaries; a test then checks that an out-of-bounds kernel write is reported. `.ci/run`
//!   runs this.
//!
//! # Adding a kernel family
//!
//! 1. Write `cuda/<family>.cu`: `#include "common.cuh"`, entry points `extern "C" __global__`,
//!    helpers `__device__` (each family is its own namespace in the emulator build, so helper
//!    names may repeat across families; entry point names may not). Dynamic shared memory via
//!    `KC_DYNAMIC_SHARED(T, name)`. The host build uses `-Wall -Wextra -Werror`, NVRTC must give
//!    an empty log.
//! 2. In `src/sources.rs`: a `family!` line, the family in [`FAMILIES`], one `kernels!` line per
//!    entry point with its hot flag (a test checks this table against the sources).
//! 3. `scripts/kernels-cu-regen.sh` writes `ptx/<family>.ptx` and the ptxas report; commit both.
//! 4. A safe launcher in `src/ops/` that checks dtypes/lengths and documents the reference math;
//!    tests that run it on [`Device::emulator`] (and CUDA when present) against a CPU reference.
//!
//! # Gates and their environment variables
//!
//! - Gate 1, compile (`tests/gates.rs`): every family compiles with NVRTC for sm_80, sm_86, sm_89
//!   and sm_90 with an empty log (no warnings), and the embedded PTX equals a fresh compile.
//! - Gate 2, resources: `ptxas -v` on the embedded PTX for sm_80 and sm_90; hot kernels may not
//!   spill or use a stack frame; `ptxas-report.txt` must equal the fresh report.
//! - Gate 3, emulator self-tests (`tests/emulator.rs`, `tests/device.rs`).
//! - `KERNELS_CU_NVRTC` = path of `libnvrtc.so.12`, `KERNELS_CU_PTXAS` = path of `ptxas`
//!   (`scripts/install-cuda-tools.sh` installs both from pip wheels into `.tools/` and prints
//!   them; the tests also look in `.tools/` directly). Missing tools: the gate test prints that it
//!   was skipped, except with `CI=true`, where it fails.
//! - `KERNELS_CU_UPDATE=1` makes the gate tests rewrite `ptx/*.ptx` and `ptxas-report.txt`
//!   instead of comparing (`scripts/kernels-cu-regen.sh`).
//! - `KERNELS_CU_REQUIRE_GPU=1` makes the real-device tests fail instead of skipping when no GPU
//!   can be opened (used by `scripts/gpu-check.sh`).

pub mod backend;
pub mod cubin;
pub mod defines;
mod device;
mod dtype;
mod error;
pub mod graph;
pub mod launch_align;
pub mod nvrtc;
pub mod ops;
pub mod perf;
pub mod pool;
pub mod ptx;
pub mod ptxas;
pub mod scan;
mod sources;
pub mod testing;
pub mod tools;

pub use device::{
    describe_code, Arg, ArgValue, Backend, BackendKind, Buffer, BufferView, BufferViewMut, Device,
    DeviceInfo, Dim3, EmulatorOptions, ExecOrder, Launch,
};
pub use dtype::{DType, Elem};
pub use error::{Error, Result};
pub use pool::MemoryStats;
pub use sources::{
    kernel, kernels, Family, Kernel, COMMON_HEADER, COMMON_HEADER_NAME, FAMILIES, KERNELS,
    SM90A_KERNELS,
};

/// True when the CUDA driver library (libcuda) can be loaded. No GPU may be present even then.
pub fn cuda_driver_present() -> bool {
    backend::cuda::driver_present()
}

/// True when the emulator's memory checker is built in (every emulator build except the
/// AddressSanitizer one).
pub fn emulator_checks_available() -> bool {
    #[cfg(feature = "emulator")]
    {
        backend::emu::checks_available()
    }
    #[cfg(not(feature = "emulator"))]
    {
        false
    }
}

/// Names and C++ signatures of the kernels compiled into the emulator (empty without it).
pub fn emulator_kernels() -> Vec<(String, String)> {
    #[cfg(feature = "emulator")]
    {
        backend::emu::registered_kernels()
    }
    #[cfg(not(feature = "emulator"))]
    {
        Vec::new()
    }
}
