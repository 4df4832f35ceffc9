//! A caching pool in front of another backend: the emulator behind the same allocator as a
//! GPU, so the "no driver allocation after warm-up" property is testable without one.

use std::sync::Mutex;

use crate::pool::{CachingPool, MemoryStats, RawAlloc};
use crate::{ArgValue, Backend, DeviceInfo, Dim3, Kernel};

/// A [`Backend`] that serves allocations from a [`CachingPool`] over `inner`'s allocations and
/// forwards everything else. Blocks are rounded up to the pool's size classes, so overruns
/// inside a class go unnoticed by the emulator's exact-size checks: use the plain emulator
/// for bounds checking, this one for allocator behaviour.
pub struct PooledBackend {
    inner: Box<dyn Backend>,
    pool: Mutex<CachingPool>,
}

impl PooledBackend {
    pub fn new(inner: Box<dyn Backend>) -> PooledBackend {
        PooledBackend {
            inner,
            pool: Mutex::new(CachingPool::new()),
        }
    }
}

/// The inner backend seen as the pool's raw allocator.
struct Raw<'a>(&'a dyn Backend);

impl RawAlloc for Raw<'_> {
    fn raw_alloc(&mut self, bytes: usize) -> crate::Result<u64> {
        // The inner backend may reserve more than asked; the pool only knows the class size,
        // which is what it hands back to raw_free, so ask for exactly that.
        self.0.alloc(bytes).map(|(addr, _)| addr)
    }

    unsafe fn raw_free(&mut self, ptr: u64, bytes: usize) {
        // SAFETY: forwarded contract: ptr came from raw_alloc(bytes), i.e. the inner alloc.
        unsafe { self.0.free(ptr, bytes) }
    }

    fn before_release(&mut self) {
        // Pending work may still read a cached block; there is nothing to report on failure
        // here (a broken stream fails the next call anyway).
        let _ = self.0.synchronize();
    }
}

impl Backend for PooledBackend {
    fn info(&self) -> &DeviceInfo {
        self.inner.info()
    }

    fn alloc(&self, bytes: usize) -> crate::Result<(u64, usize)> {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.alloc(&mut Raw(&*self.inner), bytes)
    }

    unsafe fn free(&self, addr: u64, reserved: usize) {
        // `reserved` is the class size that alloc returned.
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.free(addr, reserved);
    }

    unsafe fn htod(&self, dst: u64, src: &[u8]) -> crate::Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.inner.htod(dst, src) }
    }

    unsafe fn dtoh(&self, dst: &mut [u8], src: u64) -> crate::Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.inner.dtoh(dst, src) }
    }

    unsafe fn dtod(&self, dst: u64, src: u64, bytes: usize) -> crate::Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.inner.dtod(dst, src, bytes) }
    }

    unsafe fn memset_zero(&self, dst: u64, bytes: usize) -> crate::Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.inner.memset_zero(dst, bytes) }
    }
    unsafe fn memset_byte(&self, dst: u64, value: u8, bytes: usize) -> crate::Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.inner.memset_byte(dst, value, bytes) }
    }

    unsafe fn launch(
        &self,
        kernel: Kernel,
        grid: Dim3,
        block: Dim3,
        shared_bytes: u32,
        args: &[ArgValue],
    ) -> crate::Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.inner.launch(kernel, grid, block, shared_bytes, args) }
    }

    fn synchronize(&self) -> crate::Result<()> {
        self.inner.synchronize()
    }

    fn memory(&self) -> MemoryStats {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).stats()
    }

    fn begin_capture(&self) -> crate::Result<()> {
        self.inner.begin_capture()
    }

    fn end_capture(&self) -> crate::Result<Box<dyn crate::graph::GraphExec>> {
        self.inner.end_capture()
    }

    fn release_cached(&self) {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.release_cached(&mut Raw(&*self.inner));
    }
}

impl Drop for PooledBackend {
    fn drop(&mut self) {
        // Every buffer holds the device alive, so nothing is in use here: give the cache back.
        self.release_cached();
    }
}
