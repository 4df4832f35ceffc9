//! The emulator backend: "device" memory is host memory, launches run the kernels compiled for
//! the host (emu/runtime.cpp) to completion before returning.

use std::alloc::Layout;
use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::Mutex;

use super::order_compare::{self, Region};
use crate::device::{
    describe_code, ArgValue, Backend, BackendKind, DeviceInfo, Dim3, EmulatorOptions, ExecOrder,
};
use crate::error::{Error, Result};
use crate::pool::MemoryStats;
use crate::Kernel;

/// Opaque `kc_emu::KernelEntry`.
#[repr(C)]
pub(crate) struct EntryC {
    _private: [u8; 0],
}

extern "C" {
    fn kc_emu_find(name: *const c_char) -> *const EntryC;
    fn kc_emu_kernel_at(i: u32) -> *const EntryC;
    fn kc_emu_entry_name(e: *const EntryC) -> *const c_char;
    fn kc_emu_entry_signature(e: *const EntryC) -> *const c_char;
    fn kc_emu_launch(
        e: *const EntryC,
        grid: *const u32,
        block: *const u32,
        smem: u32,
        args: *const *mut c_void,
        flags: u32,
        seed: u64,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn kc_emu_checks_available() -> i32;
    fn kc_emu_mem_register(p: *const c_void, n: usize);
    fn kc_emu_mem_release(p: *const c_void, n: usize);
}

/// Device memory alignment and size granule. cudaMalloc aligns to 256 bytes; the emulator
/// gives every allocation whole 4 KiB pages so that the memory checker's shadow pages hold
/// device memory only (a page is global memory or not, never both). The AddressSanitizer
/// build (no checker) keeps exact sizes so that ASan sees every overrun.
const ALIGN: usize = if cfg!(feature = "asan") { 256 } else { 4096 };

pub struct EmuBackend {
    info: DeviceInfo,
    live: Mutex<HashMap<u64, usize>>,
    stats: Mutex<MemoryStats>,
    checks: bool,
    order: ExecOrder,
    launches: std::sync::atomic::AtomicU64,
    /// Launches recorded, not run, while a graph is captured.
    capture: crate::graph::Recorder,
}

/// True when the memory checker is compiled in (every build except the AddressSanitizer one).
pub fn checks_available() -> bool {
    // SAFETY: a plain query of the runtime.
    unsafe { kc_emu_checks_available() != 0 }
}

const CHECKS_VAR: &str = "KERNELS_CU_EMU_CHECKS";
const ORDER_VAR: &str = "KERNELS_CU_EMU_ORDER";

fn env_checks() -> Result<bool> {
    match std::env::var(CHECKS_VAR) {
        Err(_) => Ok(true),
        Ok(v) => match v.as_str() {
            "" | "1" | "on" => Ok(true),
            "0" | "off" => Ok(false),
            _ => Err(Error::Env {
                var: CHECKS_VAR,
                value: v,
                expected: "1/on or 0/off",
            }),
        },
    }
}

fn env_order() -> Result<ExecOrder> {
    match std::env::var(ORDER_VAR) {
        Err(_) => Ok(ExecOrder::Ascending),
        Ok(v) => ExecOrder::parse(&v).ok_or(Error::Env {
            var: ORDER_VAR,
            value: v,
            expected: "ascending, descending, random[:SEED] or all[:SEED]",
        }),
    }
}

/// Name and C++ signature (two letters per parameter) of every kernel the emulator has.
pub fn registered_kernels() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for i in 0.. {
        // SAFETY: kc_emu_kernel_at returns null past the end, else a static entry.
        let e = unsafe { kc_emu_kernel_at(i) };
        if e.is_null() {
            break;
        }
        // SAFETY: entry accessors return static NUL-terminated strings.
        let (name, sig) = unsafe {
            (
                CStr::from_ptr(kc_emu_entry_name(e))
                    .to_string_lossy()
                    .into_owned(),
                CStr::from_ptr(kc_emu_entry_signature(e))
                    .to_string_lossy()
                    .into_owned(),
            )
        };
        out.push((name, sig));
    }
    out
}

fn threads() -> usize {
    std::env::var("KERNELS_CU_EMU_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get().min(16)))
}

impl EmuBackend {
    /// The emulator with `opts`; an environment variable with an invalid value (see
    /// [`EmulatorOptions`]) is reported on stderr and replaced by its default. Prefer
    /// [`EmuBackend::try_new`], which returns it as an error.
    pub fn new(opts: EmulatorOptions) -> EmuBackend {
        match EmuBackend::try_new(opts.clone()) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("kernels-cu emulator: {e}; using the defaults");
                let defaults = EmulatorOptions {
                    checks: Some(opts.checks.unwrap_or(true)),
                    order: Some(opts.order.unwrap_or(ExecOrder::Ascending)),
                    ..opts
                };
                match EmuBackend::try_new(defaults) {
                    Ok(b) => b,
                    Err(_) => unreachable!("no environment lookup with every option given"),
                }
            }
        }
    }

    /// The emulator with `opts`; an invalid environment variable is an [`Error::Env`].
    pub fn try_new(opts: EmulatorOptions) -> Result<EmuBackend> {
        let checks = match opts.checks {
            Some(c) => c,
            None => env_checks()?,
        };
        let order = match opts.order {
            Some(o) => o,
            None => env_order()?,
        };
        Ok(EmuBackend {
            info: DeviceInfo {
                kind: BackendKind::Emulator,
                name: format!("host emulator ({} threads)", threads()),
                compute_capability: opts.compute_capability,
                total_memory: 0,
                max_shared_bytes: opts.max_shared_bytes,
                multiprocessors: 0,
                driver_version: 0,
            },
            live: Mutex::new(HashMap::new()),
            stats: Mutex::new(MemoryStats::default()),
            checks: checks && checks_available(),
            order,
            launches: std::sync::atomic::AtomicU64::new(0),
            capture: crate::graph::Recorder::default(),
        })
    }

    fn layout(bytes: usize) -> Result<Layout> {
        let size = if cfg!(feature = "asan") {
            bytes.max(1)
        } else {
            bytes.max(1).div_ceil(ALIGN) * ALIGN
        };
        Layout::from_size_align(size, ALIGN).map_err(|e| Error::OutOfMemory {
            bytes,
            msg: e.to_string(),
        })
    }
}

impl EmuBackend {
    /// The live allocations that the pointer arguments point into, each once.
    fn reachable(&self, args: &[ArgValue]) -> Vec<Region> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<Region> = Vec::new();
        for a in args {
            if let ArgValue::Ptr { addr, .. } = *a {
                let found = live
                    .iter()
                    .find(|(&base, &len)| addr >= base && addr <= base + len as u64);
                if let Some((&base, &len)) = found {
                    let r = Region { base, len };
                    if !out.contains(&r) {
                        out.push(r);
                    }
                }
            }
        }
        out
    }
}

impl Backend for EmuBackend {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn alloc(&self, bytes: usize) -> Result<(u64, usize)> {
        // Exactly the requested size, so that AddressSanitizer sees every overrun.
        let layout = Self::layout(bytes)?;
        // SAFETY: non-zero size.
        let p = unsafe { std::alloc::alloc(layout) };
        if p.is_null() {
            return Err(Error::OutOfMemory {
                bytes,
                msg: "host allocation failed".into(),
            });
        }
        // SAFETY: p points to `layout.size()` writable bytes. Poison: CUDA memory starts
        // undefined, and 0xff bytes are NaN as f32/bf16/f16.
        unsafe { std::ptr::write_bytes(p, 0xff, layout.size()) };
        // SAFETY: a live allocation of `bytes` bytes; the checker only records its range.
        unsafe { kc_emu_mem_register(p as *const c_void, bytes) };
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(p as u64, bytes);
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        s.in_use += bytes;
        s.peak_in_use = s.peak_in_use.max(s.in_use);
        s.raw_allocs += 1;
        Ok((p as u64, bytes))
    }

    unsafe fn free(&self, addr: u64, reserved: usize) {
        let known = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&addr);
        if known == Some(reserved) {
            // SAFETY: the range registered at allocation; no launch uses it any more.
            unsafe { kc_emu_mem_release(addr as *const c_void, reserved) };
            if let Ok(layout) = Self::layout(reserved) {
                // SAFETY: allocated above with this layout, freed once (removed from `live`).
                unsafe { std::alloc::dealloc(addr as *mut u8, layout) };
            }
            self.stats.lock().unwrap_or_else(|e| e.into_inner()).in_use -= reserved;
        }
    }

    unsafe fn htod(&self, dst: u64, src: &[u8]) -> Result<()> {
        // SAFETY: the caller guarantees dst covers src.len() bytes of a live allocation.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }

    unsafe fn dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        // SAFETY: the caller guarantees src covers dst.len() bytes of a live allocation.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    unsafe fn dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        // SAFETY: the caller guarantees both ranges are live; `copy` allows overlap.
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes) };
        Ok(())
    }

    unsafe fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()> {
        // SAFETY: the caller guarantees the range is live.
        unsafe { std::ptr::write_bytes(dst as *mut u8, 0, bytes) };
        Ok(())
    }

    unsafe fn launch(
        &self,
        kernel: Kernel,
        grid: Dim3,
        block: Dim3,
        shared_bytes: u32,
        args: &[ArgValue],
    ) -> Result<()> {
        let name = CString::new(kernel.name).map_err(|_| Error::UnknownKernel {
            kernel: kernel.name,
            backend: "emulator",
        })?;
        // SAFETY: NUL-terminated name; the registry is static.
        let entry = unsafe { kc_emu_find(name.as_ptr()) };
        if entry.is_null() {
            return Err(Error::UnknownKernel {
                kernel: kernel.name,
                backend: "emulator",
            });
        }
        // SAFETY: static NUL-terminated signature of a live entry.
        let sig = unsafe { CStr::from_ptr(kc_emu_entry_signature(entry)) }
            .to_string_lossy()
            .into_owned();
        let expected: Vec<&str> = (0..sig.len() / 2).map(|i| &sig[2 * i..2 * i + 2]).collect();
        if expected.len() != args.len() {
            return Err(Error::ArgCount {
                kernel: kernel.name,
                expected: expected.len(),
                got: args.len(),
            });
        }
        for (i, (want, a)) in expected.iter().zip(args).enumerate() {
            let got = a.code();
            // 'x': a parameter type without a code (a struct); only its kind is checked.
            let ok =
                got == *want || (want.ends_with('x') && want.as_bytes()[0] == got.as_bytes()[0]);
            if !ok {
                return Err(Error::ArgType {
                    kernel: kernel.name,
                    index: i,
                    expected: describe_code(want),
                    got: describe_code(&got),
                });
            }
        }
        // Checked like a real launch, then kept for the graph's replays.
        if self.capture.record(kernel, grid, block, shared_bytes, args) {
            return Ok(());
        }
        // cuLaunchKernel convention: an array of pointers to the argument values.
        let mut storage: Vec<[u8; 8]> = args
            .iter()
            .map(|a| {
                let mut slot = [0u8; 8];
                let b = a.bytes();
                slot[..b.len()].copy_from_slice(&b);
                slot
            })
            .collect();
        let ptrs: Vec<*mut c_void> = storage
            .iter_mut()
            .map(|s| s.as_mut_ptr() as *mut c_void)
            .collect();
        let g = [grid.x, grid.y, grid.z];
        let b = [block.x, block.y, block.z];
        let run = |order: u32, seed: u64| -> Result<()> {
            let flags = u32::from(self.checks) | (order << 1);
            let mut err = vec![0u8; 1024];
            // SAFETY: entry is live; argument slots outlive the (synchronous) call and match
            // the signature checked above; buffer sizes are the caller's contract.
            let rc = unsafe {
                kc_emu_launch(
                    entry,
                    g.as_ptr(),
                    b.as_ptr(),
                    shared_bytes,
                    ptrs.as_ptr(),
                    flags,
                    seed,
                    err.as_mut_ptr() as *mut c_char,
                    err.len(),
                )
            };
            if rc != 0 {
                let end = err.iter().position(|&c| c == 0).unwrap_or(err.len());
                return Err(Error::Emulator {
                    kernel: kernel.name,
                    msg: String::from_utf8_lossy(&err[..end]).into_owned(),
                });
            }
            Ok(())
        };
        // Each launch gets its own seed, so random orders differ between launches of a run.
        let n = self
            .launches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mix = |seed: u64| seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        match self.order {
            ExecOrder::Ascending => run(0, 0),
            ExecOrder::Descending => run(1, 0),
            ExecOrder::Random(seed) => run(2, mix(seed)),
            ExecOrder::All(seed) => {
                let regions = self.reachable(args);
                // SAFETY: the regions are live allocations (the caller's launch contract keeps
                // them alive and unaliased for the launch).
                unsafe {
                    order_compare::run_in_every_order(kernel.name, &regions, args, |o| match o {
                        0 => run(0, 0),
                        1 => run(1, 0),
                        _ => run(2, mix(seed)),
                    })
                }
            }
        }
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn memory(&self) -> MemoryStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn begin_capture(&self) -> Result<()> {
        self.capture.begin()
    }

    fn end_capture(&self) -> Result<Box<dyn crate::graph::GraphExec>> {
        Ok(Box::new(self.capture.end()?))
    }
}
