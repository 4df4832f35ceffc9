//! A caching allocator: device memory is obtained from the driver once per size class and
//! reused, so the training step makes no driver allocation after warm-up.
//!
//! Size classes: powers of two from 512 bytes to 1 MiB, then multiples of 2 MiB. A freed block
//! goes back to its class's free list. Stream order keeps reuse safe: all work runs on one
//! stream, so a kernel that still reads a freed block runs before any later user of it.
//! When the driver is out of memory, the cached blocks are released and the allocation retried.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// The raw allocator under the pool (the CUDA driver, or a fake in tests).
pub trait RawAlloc {
    fn raw_alloc(&mut self, bytes: usize) -> Result<u64>;
    /// # Safety
    /// `ptr` came from `raw_alloc(bytes)` and is not in use.
    unsafe fn raw_free(&mut self, ptr: u64, bytes: usize);
    /// Called before cached blocks are given back: waits for pending work that may still use
    /// them (a freed block can still be read by a kernel queued before it was freed).
    fn before_release(&mut self) {}
}

/// Counters of a [`CachingPool`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes handed out (size-class rounded) and not yet freed.
    pub in_use: usize,
    /// Bytes held in free lists for reuse.
    pub cached: usize,
    /// Largest `in_use` seen.
    pub peak_in_use: usize,
    /// Number of allocations that reached the raw allocator.
    pub raw_allocs: usize,
}

#[derive(Debug, Default)]
pub struct CachingPool {
    free: BTreeMap<usize, Vec<u64>>,
    stats: MemoryStats,
}

const SMALL_LIMIT: usize = 1 << 20;
const LARGE_GRANULE: usize = 2 << 20;

/// The size class that serves a request of `bytes`.
pub fn size_class(bytes: usize) -> usize {
    if bytes <= SMALL_LIMIT {
        bytes.max(512).next_power_of_two()
    } else {
        bytes.div_ceil(LARGE_GRANULE) * LARGE_GRANULE
    }
}

impl CachingPool {
    pub fn new() -> CachingPool {
        CachingPool::default()
    }

    /// A block of at least `bytes` bytes; returns (pointer, class size).
    pub fn alloc(&mut self, raw: &mut dyn RawAlloc, bytes: usize) -> Result<(u64, usize)> {
        let class = size_class(bytes);
        let ptr = match self.free.get_mut(&class).and_then(Vec::pop) {
            Some(p) => {
                self.stats.cached -= class;
                p
            }
            None => {
                let p = match raw.raw_alloc(class) {
                    Ok(p) => p,
                    Err(Error::OutOfMemory { .. }) => {
                        self.release_cached(raw);
                        raw.raw_alloc(class)?
                    }
                    Err(e) => return Err(e),
                };
                self.stats.raw_allocs += 1;
                p
            }
        };
        self.stats.in_use += class;
        self.stats.peak_in_use = self.stats.peak_in_use.max(self.stats.in_use);
        Ok((ptr, class))
    }

    /// Returns a block to its free list.
    pub fn free(&mut self, ptr: u64, class: usize) {
        self.stats.in_use -= class;
        self.stats.cached += class;
        self.free.entry(class).or_default().push(ptr);
    }

    /// Gives every cached block back to the raw allocator.
    pub fn release_cached(&mut self, raw: &mut dyn RawAlloc) {
        if self.free.is_empty() {
            return;
        }
        raw.before_release();
        for (class, ptrs) in std::mem::take(&mut self.free) {
            for p in ptrs {
                // SAFETY: cached blocks came from raw_alloc(class) and are not in use.
                unsafe { raw.raw_free(p, class) };
            }
        }
        self.stats.cached = 0;
    }

    pub fn stats(&self) -> MemoryStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out increasing fake addresses and can be told how many bytes it has left.
    struct Fake {
        next: u64,
        left: usize,
        live: BTreeMap<u64, usize>,
    }
    impl RawAlloc for Fake {
        fn raw_alloc(&mut self, bytes: usize) -> Result<u64> {
            if bytes > self.left {
                return Err(Error::OutOfMemory {
                    bytes,
                    msg: "fake".into(),
                });
            }
            self.left -= bytes;
            let p = self.next;
            self.next += bytes as u64;
            self.live.insert(p, bytes);
            Ok(p)
        }
        unsafe fn raw_free(&mut self, ptr: u64, bytes: usize) {
            assert_eq!(
                self.live.remove(&ptr),
                Some(bytes),
                "freed block was not live"
            );
            self.left += bytes;
        }
    }

    #[test]
    fn size_classes_cover_the_request() {
        for bytes in [
            0usize,
            1,
            511,
            512,
            513,
            4096,
            1 << 20,
            (1 << 20) + 1,
            5 << 20,
            123_456_789,
        ] {
            let c = size_class(bytes);
            assert!(c >= bytes && c >= 512, "{bytes} -> {c}");
            assert!(
                c < bytes.max(512) * 2 + LARGE_GRANULE,
                "{bytes} -> {c} wastes too much"
            );
        }
        assert_eq!(size_class(1000), 1024);
        assert_eq!(size_class(3 << 20), 4 << 20);
    }

    #[test]
    fn freed_blocks_are_reused_without_raw_allocations() {
        let mut raw = Fake {
            next: 0x1000,
            left: 1 << 30,
            live: BTreeMap::new(),
        };
        let mut pool = CachingPool::new();
        let (a, ca) = pool.alloc(&mut raw, 3000).unwrap();
        let (b, cb) = pool.alloc(&mut raw, 3 << 20).unwrap();
        assert_ne!(a, b);
        pool.free(a, ca);
        pool.free(b, cb);
        for _ in 0..10 {
            let (a2, c2) = pool.alloc(&mut raw, 4000).unwrap(); // same 4 KiB class as 3000
            let (b2, d2) = pool.alloc(&mut raw, (3 << 20) + 5).unwrap();
            assert_eq!((a2, b2), (a, b));
            pool.free(a2, c2);
            pool.free(b2, d2);
        }
        let s = pool.stats();
        assert_eq!(s.raw_allocs, 2);
        assert_eq!(s.in_use, 0);
        assert_eq!(s.cached, 4096 + (4 << 20));
        assert_eq!(s.peak_in_use, 4096 + (4 << 20));
    }

    #[test]
    fn out_of_memory_releases_the_cache_and_retries() {
        let mut raw = Fake {
            next: 0x1000,
            left: 8 << 20,
            live: BTreeMap::new(),
        };
        let mut pool = CachingPool::new();
        let (a, ca) = pool.alloc(&mut raw, 6 << 20).unwrap();
        pool.free(a, ca);
        // 6 MiB are cached; 4 MiB more only fit once the cache is released.
        let (b, cb) = pool.alloc(&mut raw, 4 << 20).unwrap();
        assert_eq!(pool.stats().cached, 0);
        assert_eq!(raw.live.len(), 1);
        pool.free(b, cb);
        // Larger than the device: a clear error.
        let err = pool.alloc(&mut raw, 64 << 20).unwrap_err();
        assert!(
            matches!(err, Error::OutOfMemory { bytes, .. } if bytes == 64 << 20),
            "{err}"
        );
    }
}
