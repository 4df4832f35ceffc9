//! Launch traces: a [`Backend`] wrapper that records every launch (kernel, grid, block, dynamic
//! shared memory, scalar arguments, and how far each pointer argument's allocation reaches),
//! and a dry-run backend that records launches without executing them and without memory.
//!
//! The dry run is how the performance model and the launch validation see a training step at
//! real sizes: the step's own code runs against it, so its launch list cannot drift from what
//! the step does. On the emulator, the recording wrapper gives the trace of a real run to
//! compare with (a test in model-falcon requires both to be equal at small sizes).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::Result;
use crate::pool::MemoryStats;
use crate::{ArgValue, Backend, BackendKind, Device, DeviceInfo, Dim3, Kernel};

/// One recorded launch.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchRecord {
    pub kernel: Kernel,
    pub grid: Dim3,
    pub block: Dim3,
    pub shared_bytes: u32,
    /// The arguments, pointers with their address set to 0 (addresses differ between runs).
    pub args: Vec<ArgValue>,
    /// Per argument: for a pointer, the elements from it to the end of its allocation (`None`
    /// when the allocation is unknown); `None` for scalars.
    pub reach: Vec<Option<u64>>,
}

impl PartialEq for Kernel {
    fn eq(&self, other: &Kernel) -> bool {
        self.name == other.name
    }
}

impl LaunchRecord {
    /// The `i`-th scalar argument (pointers skipped) as an integer, for cost formulas.
    pub fn int(&self, i: usize) -> u64 {
        let v = self
            .args
            .iter()
            .filter(|a| !matches!(a, ArgValue::Ptr { .. }))
            .nth(i);
        match v {
            Some(ArgValue::I32(x)) => (*x).max(0) as u64,
            Some(ArgValue::U32(x)) => *x as u64,
            Some(ArgValue::I64(x)) => (*x).max(0) as u64,
            Some(ArgValue::U64(x)) => *x,
            _ => 0,
        }
    }

    /// Threads launched.
    pub fn threads(&self) -> u64 {
        self.grid.count() * self.block.count()
    }
}

impl std::fmt::Display for LaunchRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (g, b) = (self.grid, self.block);
        write!(
            f,
            "{} grid ({}, {}, {}) block ({}, {}, {}) smem {} args {:?} reach {:?}",
            self.kernel.name,
            g.x,
            g.y,
            g.z,
            b.x,
            b.y,
            b.z,
            self.shared_bytes,
            self.args,
            self.reach
        )
    }
}

/// A shared, append-only list of launches.
#[derive(Clone, Default, Debug)]
pub struct Trace(Arc<Mutex<Vec<LaunchRecord>>>);

impl Trace {
    /// The launches recorded so far, in order.
    pub fn launches(&self) -> Vec<LaunchRecord> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
    /// Removes and returns the launches recorded so far.
    pub fn take(&self) -> Vec<LaunchRecord> {
        self.0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
    fn push(&self, r: LaunchRecord) {
        if let Ok(mut v) = self.0.lock() {
            v.push(r);
        }
    }
}

/// Live allocations by start address, to find how far a pointer argument may reach.
#[derive(Default)]
struct Allocations(Mutex<BTreeMap<u64, usize>>);

impl Allocations {
    fn insert(&self, addr: u64, bytes: usize) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(addr, bytes);
        }
    }
    fn remove(&self, addr: u64) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(&addr);
        }
    }
    /// Bytes from `addr` to the end of the allocation holding it.
    fn bytes_to_end(&self, addr: u64) -> Option<u64> {
        let m = self.0.lock().ok()?;
        let (&start, &bytes) = m.range(..=addr).next_back()?;
        let end = start + bytes as u64;
        (addr <= end).then(|| end - addr)
    }

    fn record(
        &self,
        kernel: Kernel,
        grid: Dim3,
        block: Dim3,
        shared_bytes: u32,
        args: &[ArgValue],
    ) -> LaunchRecord {
        let mut reach = Vec::with_capacity(args.len());
        let args = args
            .iter()
            .map(|a| match *a {
                ArgValue::Ptr {
                    addr,
                    dtype,
                    mutable,
                } => {
                    reach.push(self.bytes_to_end(addr).map(|b| b / dtype.size() as u64));
                    ArgValue::Ptr {
                        addr: 0,
                        dtype,
                        mutable,
                    }
                }
                v => {
                    reach.push(None);
                    v
                }
            })
            .collect();
        LaunchRecord {
            kernel,
            grid,
            block,
            shared_bytes,
            args,
            reach,
        }
    }
}

/// A backend that records every launch, then forwards everything to `inner`.
pub struct Recording {
    inner: Box<dyn Backend>,
    trace: Trace,
    allocs: Allocations,
}

impl Recording {
    /// A device over `inner` that records its launches into the returned trace.
    pub fn device(inner: Box<dyn Backend>) -> (Device, Trace) {
        let trace = Trace::default();
        let rec = Recording {
            inner,
            trace: trace.clone(),
            allocs: Allocations::default(),
        };
        (Device::from_backend(Box::new(rec)), trace)
    }

    /// The emulator, recording.
    #[cfg(feature = "emulator")]
    pub fn emulator() -> (Device, Trace) {
        Recording::device(Box::new(crate::backend::emu::EmuBackend::new(
            crate::EmulatorOptions::default(),
        )))
    }
}

impl Backend for Recording {
    fn info(&self) -> &DeviceInfo {
        self.inner.info()
    }
    fn alloc(&self, bytes: usize) -> Result<(u64, usize)> {
        let (addr, reserved) = self.inner.alloc(bytes)?;
        self.allocs.insert(addr, bytes);
        Ok((addr, reserved))
    }
    unsafe fn free(&self, addr: u64, reserved: usize) {
        self.allocs.remove(addr);
        // SAFETY: forwarded contract.
        unsafe { self.inner.free(addr, reserved) }
    }
    unsafe fn htod(&self, dst: u64, src: &[u8]) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.inner.htod(dst, src) }
    }
    unsafe fn dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.inner.dtoh(dst, src) }
    }
    unsafe fn dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.inner.dtod(dst, src, bytes) }
    }
    unsafe fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.inner.memset_zero(dst, bytes) }
    }
    unsafe fn memset_byte(&self, dst: u64, value: u8, bytes: usize) -> Result<()> {
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
    ) -> Result<()> {
        self.trace
            .push(self.allocs.record(kernel, grid, block, shared_bytes, args));
        // SAFETY: forwarded contract.
        unsafe { self.inner.launch(kernel, grid, block, shared_bytes, args) }
    }
    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }
    fn memory(&self) -> MemoryStats {
        self.inner.memory()
    }
    fn release_cached(&self) {
        self.inner.release_cached()
    }
    fn begin_capture(&self) -> Result<()> {
        self.inner.begin_capture()
    }
    fn end_capture(&self) -> Result<Box<dyn crate::graph::GraphExec>> {
        self.inner.end_capture()
    }
}

/// A backend that executes nothing: allocations are address ranges without memory (so a
/// 180B-parameter model "fits"), copies to the host give zeros, launches are recorded after
/// [`Device::launch`] has checked them against the limits in `info` (grid, block, dynamic
/// shared memory). The allocator counters count exact bytes (no size classes).
pub struct DryRun {
    info: DeviceInfo,
    next: AtomicU64,
    trace: Trace,
    allocs: Allocations,
    stats: Mutex<MemoryStats>,
    capture: crate::graph::Recorder,
}

impl DryRun {
    /// A dry-run device named `name` whose blocks may ask for up to `max_shared_bytes` of
    /// dynamic shared memory (a target's opt-in maximum), with its trace.
    pub fn device(
        name: &str,
        compute_capability: (i32, i32),
        max_shared_bytes: u32,
    ) -> (Device, Trace) {
        DryRun::device_with_sms(name, compute_capability, max_shared_bytes, 0)
    }

    /// [`DryRun::device`] reporting `multiprocessors` SMs, so that launchers that size their
    /// grids by the SM count (split-K) choose as they would on that GPU.
    pub fn device_with_sms(
        name: &str,
        compute_capability: (i32, i32),
        max_shared_bytes: u32,
        multiprocessors: u32,
    ) -> (Device, Trace) {
        let trace = Trace::default();
        let b = DryRun {
            info: DeviceInfo {
                kind: BackendKind::DryRun,
                name: format!("dry run ({name})"),
                compute_capability,
                total_memory: usize::MAX / 2,
                max_shared_bytes,
                multiprocessors,
                driver_version: 0,
            },
            // Far from 0 so that a stray host dereference would fault rather than read.
            next: AtomicU64::new(1 << 44),
            trace: trace.clone(),
            allocs: Allocations::default(),
            stats: Mutex::new(MemoryStats::default()),
            capture: crate::graph::Recorder::default(),
        };
        (Device::from_backend(Box::new(b)), trace)
    }
}

impl Backend for DryRun {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }
    fn alloc(&self, bytes: usize) -> Result<(u64, usize)> {
        let reserved = bytes.max(1).div_ceil(256) * 256;
        let addr = self.next.fetch_add(reserved as u64, Ordering::Relaxed);
        self.allocs.insert(addr, bytes);
        if let Ok(mut s) = self.stats.lock() {
            s.in_use += bytes;
            s.peak_in_use = s.peak_in_use.max(s.in_use);
            s.raw_allocs += 1;
        }
        Ok((addr, reserved))
    }
    unsafe fn free(&self, addr: u64, _reserved: usize) {
        let bytes = self
            .allocs
            .0
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&addr))
            .unwrap_or(0);
        if let Ok(mut s) = self.stats.lock() {
            s.in_use = s.in_use.saturating_sub(bytes);
        }
    }
    unsafe fn htod(&self, _dst: u64, _src: &[u8]) -> Result<()> {
        Ok(())
    }
    unsafe fn dtoh(&self, dst: &mut [u8], _src: u64) -> Result<()> {
        dst.fill(0);
        Ok(())
    }
    unsafe fn dtod(&self, _dst: u64, _src: u64, _bytes: usize) -> Result<()> {
        Ok(())
    }
    unsafe fn memset_zero(&self, _dst: u64, _bytes: usize) -> Result<()> {
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
        // Recording is what a dry run executes: a captured launch is traced once when
        // captured and again at each replay.
        self.trace
            .push(self.allocs.record(kernel, grid, block, shared_bytes, args));
        self.capture.record(kernel, grid, block, shared_bytes, args);
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    fn begin_capture(&self) -> Result<()> {
        self.capture.begin()
    }
    fn end_capture(&self) -> Result<Box<dyn crate::graph::GraphExec>> {
        Ok(Box::new(self.capture.end()?))
    }
    fn memory(&self) -> MemoryStats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }
}
