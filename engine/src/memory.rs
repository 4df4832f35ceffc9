//! Accounting of live tensor bytes, so tests and the trainer can report peak memory.
//!
//! Every storage buffer is charged, when it is allocated, to the accounting scope active on the
//! allocating thread (the process-wide scope unless a [`MemoryScope`] is entered) and credited
//! back to that same scope when it is freed, on whatever thread that happens. Scopes therefore
//! isolate measurements from other work running in the same process (e.g. parallel tests).
//!
//! Device memory is not counted here: the CUDA device's allocator keeps its own counters
//! (`kernels_cu::Device::memory`).

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// Live and peak byte counters.
#[derive(Debug, Default)]
pub struct MemoryCounter {
    live: AtomicUsize,
    peak: AtomicUsize,
}

impl MemoryCounter {
    pub fn live_bytes(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    pub fn peak_bytes(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Restart peak tracking from the current live size.
    pub fn reset_peak(&self) {
        self.peak.store(self.live_bytes(), Ordering::Relaxed);
    }

    pub(crate) fn alloc(&self, bytes: usize) {
        let now = self.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    pub(crate) fn free(&self, bytes: usize) {
        self.live.fetch_sub(bytes, Ordering::Relaxed);
    }
}

fn global() -> &'static Arc<MemoryCounter> {
    static GLOBAL: OnceLock<Arc<MemoryCounter>> = OnceLock::new();
    GLOBAL.get_or_init(|| Arc::new(MemoryCounter::default()))
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<MemoryCounter>>> = const { RefCell::new(None) };
}

/// The counter new allocations on this thread are charged to.
pub(crate) fn current() -> Arc<MemoryCounter> {
    CURRENT.with(|c| c.borrow().clone().unwrap_or_else(|| global().clone()))
}

/// Process-wide counter of host tensor bytes (allocations outside any scope).
pub fn global_counter() -> Arc<MemoryCounter> {
    global().clone()
}

/// While alive, allocations made on this thread are charged to a private counter.
pub struct MemoryScope {
    counter: Arc<MemoryCounter>,
    previous: Option<Arc<MemoryCounter>>,
}

impl MemoryScope {
    pub fn enter() -> Self {
        let counter = Arc::new(MemoryCounter::default());
        let previous = CURRENT.with(|c| c.replace(Some(counter.clone())));
        MemoryScope { counter, previous }
    }

    pub fn counter(&self) -> &Arc<MemoryCounter> {
        &self.counter
    }
}

impl Drop for MemoryScope {
    fn drop(&mut self) {
        let prev = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = prev);
    }
}

/// A byte charge held by a buffer; credits its counter when dropped.
#[derive(Debug)]
pub(crate) struct Charge {
    counter: Arc<MemoryCounter>,
    bytes: usize,
}

impl Charge {
    pub(crate) fn new(bytes: usize) -> Self {
        let counter = current();
        counter.alloc(bytes);
        Charge { counter, bytes }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.counter.free(self.bytes);
    }
}
