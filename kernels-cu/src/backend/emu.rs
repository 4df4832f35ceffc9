//! The emulator backend: "device" memory is host memory, launches run the kernels compiled for
//! the host (emu/runtime.cpp) to completion before returning.

use std::alloc::Layout;
use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::Mutex;

use crate::device::{
    describe_code, ArgValue, Backend, BackendKind, DeviceInfo, Dim3, EmulatorOptions,
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
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
}

/// Device memory alignment (as cudaMalloc: at least 256 bytes).
const ALIGN: usize = 256;

pub struct EmuBackend {
    info: DeviceInfo,
    live: Mutex<HashMap<u64, usize>>,
    stats: Mutex<MemoryStats>,
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
    pub fn new(opts: EmulatorOptions) -> EmuBackend {
        EmuBackend {
            info: DeviceInfo {
                kind: BackendKind::Emulator,
                name: format!("host emulator ({} threads)", threads()),
                compute_capability: (8, 0),
                total_memory: 0,
                max_shared_bytes: opts.max_shared_bytes,
                multiprocessors: 0,
                driver_version: 0,
            },
            live: Mutex::new(HashMap::new()),
            stats: Mutex::new(MemoryStats::default()),
        }
    }

    fn layout(bytes: usize) -> Result<Layout> {
        Layout::from_size_align(bytes.max(1), ALIGN).map_err(|e| Error::OutOfMemory {
            bytes,
            msg: e.to_string(),
        })
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
        let mut err = vec![0u8; 1024];
        // SAFETY: entry is live; argument slots outlive the (synchronous) call and match the
        // signature checked above; buffer sizes are the caller's contract.
        let rc = unsafe {
            kc_emu_launch(
                entry,
                g.as_ptr(),
                b.as_ptr(),
                shared_bytes,
                ptrs.as_ptr(),
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
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn memory(&self) -> MemoryStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}
