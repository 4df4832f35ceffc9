//! The device interface the engine's CUDA device uses: buffers, copies and kernel launches, with
//! two implementations behind one [`Backend`] trait: the CUDA driver (cudarc, loaded at run
//! time) and the host emulator.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::pool::MemoryStats;
use crate::{DType, Elem, Kernel};

/// Grid or block dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dim3 {
    pub x: u32,
    pub y: u32,
    pub z: u32,
}

impl Dim3 {
    pub const fn x(x: u32) -> Dim3 {
        Dim3 { x, y: 1, z: 1 }
    }
    pub const fn xy(x: u32, y: u32) -> Dim3 {
        Dim3 { x, y, z: 1 }
    }
    pub const fn xyz(x: u32, y: u32, z: u32) -> Dim3 {
        Dim3 { x, y, z }
    }
    pub fn count(self) -> u64 {
        self.x as u64 * self.y as u64 * self.z as u64
    }
}

/// One kernel argument. Buffers pass their device address; `Mut` marks a parameter the kernel
/// writes (`T*`), `Ref` one it only reads (`const T*`). The emulator checks both, and the dtype,
/// against the kernel's C++ signature.
#[derive(Debug)]
pub enum Arg<'a> {
    Ref(&'a Buffer),
    Mut(&'a mut Buffer),
    /// `const T*` to element `offset` of the buffer (`offset <= len`).
    RefAt(&'a Buffer, usize),
    /// `T*` to element `offset` of the buffer (`offset <= len`).
    MutAt(&'a mut Buffer, usize),
    I32(i32),
    U32(u32),
    I64(i64),
    U64(u64),
    F32(f32),
    F64(f64),
}

/// A kernel argument reduced to what a backend needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ArgValue {
    Ptr {
        addr: u64,
        dtype: DType,
        mutable: bool,
    },
    I32(i32),
    U32(u32),
    I64(i64),
    U64(u64),
    F32(f32),
    F64(f64),
}

impl ArgValue {
    /// The bytes the kernel receives for this parameter (little-endian).
    pub fn bytes(&self) -> Vec<u8> {
        match *self {
            ArgValue::Ptr { addr, .. } => addr.to_le_bytes().to_vec(),
            ArgValue::I32(v) => v.to_le_bytes().to_vec(),
            ArgValue::U32(v) => v.to_le_bytes().to_vec(),
            ArgValue::I64(v) => v.to_le_bytes().to_vec(),
            ArgValue::U64(v) => v.to_le_bytes().to_vec(),
            ArgValue::F32(v) => v.to_le_bytes().to_vec(),
            ArgValue::F64(v) => v.to_le_bytes().to_vec(),
        }
    }

    /// The emulator's two-letter parameter code (see `emu/kc_emu.h`).
    pub fn code(&self) -> String {
        match *self {
            ArgValue::Ptr { dtype, mutable, .. } => {
                format!("{}{}", if mutable { 'P' } else { 'p' }, dtype.code())
            }
            ArgValue::I32(_) => "vi".into(),
            ArgValue::U32(_) => "vu".into(),
            ArgValue::I64(_) => "vl".into(),
            ArgValue::U64(_) => "vL".into(),
            ArgValue::F32(_) => "vf".into(),
            ArgValue::F64(_) => "vd".into(),
        }
    }
}

/// Describes a two-letter parameter code in C++ terms, for error messages.
pub fn describe_code(code: &str) -> String {
    let mut c = code.chars();
    let (kind, ty) = (c.next().unwrap_or('?'), c.next().unwrap_or('?'));
    let ty = match ty {
        'f' => "float",
        'd' => "double",
        'b' => "kc::bf16",
        'h' => "kc::f16",
        'i' => "int",
        'u' => "unsigned",
        'l' => "long long",
        'L' => "unsigned long long",
        'c' => "unsigned char",
        's' => "signed char",
        'w' => "unsigned short",
        _ => "(other type)",
    };
    match kind {
        'P' => format!("{ty}* (written)"),
        'p' => format!("const {ty}* (read)"),
        _ => ty.to_string(),
    }
}

/// One launch, written like a row of a table.
#[derive(Debug)]
pub struct Launch<'a> {
    pub kernel: Kernel,
    pub grid: Dim3,
    pub block: Dim3,
    /// Dynamic shared memory per block, in bytes.
    pub shared_bytes: u32,
    pub args: &'a [Arg<'a>],
}

/// Which implementation a [`Device`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Cuda,
    Emulator,
    /// Records launches without executing them ([`crate::perf::trace::DryRun`]).
    DryRun,
}

/// What a device is.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub kind: BackendKind,
    /// e.g. "NVIDIA H200" or "host emulator (4 threads)".
    pub name: String,
    /// (major, minor); the emulator reports (8, 0), the ISA its PTX wrappers follow.
    pub compute_capability: (i32, i32),
    pub total_memory: usize,
    /// Most dynamic shared memory one block may use.
    pub max_shared_bytes: u32,
    /// Streaming multiprocessors (0 where unknown: the emulator). Launchers size split-K
    /// grids by it.
    pub multiprocessors: u32,
    /// Driver version as reported by the driver (e.g. 13000), 0 for the emulator.
    pub driver_version: i32,
}

/// The operations a backend implements. Addresses are device addresses (host addresses for the
/// emulator); [`Device`] keeps them inside [`Buffer`]s.
pub trait Backend: Send + Sync {
    fn info(&self) -> &DeviceInfo;
    /// Returns (address, bytes reserved).
    fn alloc(&self, bytes: usize) -> Result<(u64, usize)>;
    /// # Safety
    /// `addr`/`reserved` come from `alloc` of this backend and the block is not used afterwards
    /// (stream order makes pending kernels safe).
    unsafe fn free(&self, addr: u64, reserved: usize);
    /// # Safety
    /// `dst..dst+src.len()` lies inside one live allocation.
    unsafe fn htod(&self, dst: u64, src: &[u8]) -> Result<()>;
    /// # Safety
    /// `src..src+dst.len()` lies inside one live allocation.
    unsafe fn dtoh(&self, dst: &mut [u8], src: u64) -> Result<()>;
    /// # Safety
    /// Both ranges lie inside live allocations.
    unsafe fn dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()>;
    /// # Safety
    /// The range lies inside one live allocation.
    unsafe fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()>;
    /// Sets every byte of the range to `value` (stream ordered where the backend has a stream).
    /// The default uploads a host buffer; backends with a device memset override it.
    ///
    /// # Safety
    /// The range lies inside one live allocation.
    unsafe fn memset_byte(&self, dst: u64, value: u8, bytes: usize) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.htod(dst, &vec![value; bytes]) }
    }
    /// # Safety
    /// The arguments satisfy the kernel's contract (buffer sizes cover every access the grid makes).
    unsafe fn launch(
        &self,
        kernel: Kernel,
        grid: Dim3,
        block: Dim3,
        shared_bytes: u32,
        args: &[ArgValue],
    ) -> Result<()>;
    fn synchronize(&self) -> Result<()>;
    fn memory(&self) -> MemoryStats;
    /// Starts capturing launches into a graph ([`crate::graph`]): until
    /// [`Backend::end_capture`], launches are recorded, not run.
    fn begin_capture(&self) -> Result<()> {
        Err(Error::Capture(format!(
            "{} cannot capture launch graphs",
            self.info().name
        )))
    }
    /// Ends the capture and returns the graph of the launches made since
    /// [`Backend::begin_capture`].
    fn end_capture(&self) -> Result<Box<dyn crate::graph::GraphExec>> {
        Err(Error::Capture("no capture in progress".into()))
    }
    /// Gives cached (free) device memory back to the driver; a no-op where nothing is cached.
    fn release_cached(&self) {}
}

static NEXT_DEVICE_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) struct Inner {
    id: u64,
    backend: Box<dyn Backend>,
    /// While a capture runs: the blocks freed meanwhile (kept for the graph) and the launches.
    capture: std::sync::Mutex<Option<CaptureState>>,
    /// Fill each new allocation with 0xff bytes ([`Device::set_poison_allocations`]).
    poison_allocations: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct CaptureState {
    kept: Vec<(u64, usize)>,
    launches: usize,
}

/// The shared part of a [`Device`] (what buffers and graphs hold).
pub(crate) type DeviceCore = Inner;

impl Inner {
    pub(crate) fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    fn frees(&self) -> std::sync::MutexGuard<'_, Option<CaptureState>> {
        self.capture.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn capturing(&self) -> bool {
        self.frees().is_some()
    }

    /// Frees a block, or keeps it for the graph being captured.
    pub(crate) fn free_block(&self, addr: u64, reserved: usize) {
        if let Some(c) = self.frees().as_mut() {
            c.kept.push((addr, reserved));
            return;
        }
        // SAFETY: the block came from this backend's alloc and is freed once (its owner's
        // contract); stream order makes pending kernels safe.
        unsafe { self.backend.free(addr, reserved) };
    }
}

/// A handle to one device (cheap to clone).
#[derive(Clone)]
pub struct Device {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").field("info", self.info()).finish()
    }
}

/// The device's name ("NVIDIA H200", "host emulator (4 threads)"), for messages.
impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.info().name)
    }
}

/// Device memory holding `len` elements of `dtype`. Freed (back to the device's pool) when the
/// buffer and every view of it are dropped.
///
/// A `Buffer` is either an allocation of its own ([`Device::alloc`]) or a view of a range of
/// another buffer ([`Buffer::view`], [`Buffer::view_mut`]); both hold the allocation's
/// block (shared, reference-counted), which frees the memory when its last holder goes.
pub struct Buffer {
    /// Address of element 0 (inside `block`).
    addr: u64,
    len: usize,
    dtype: DType,
    device: Arc<Inner>,
    block: Arc<Block>,
}

/// One allocation from a backend; freed exactly once, when the last buffer or view holding it
/// drops. Views share it, so memory stays valid while any of them exists, even one moved out
/// of its view with `std::mem::swap` (a view never frees, and never dangles).
struct Block {
    addr: u64,
    reserved: usize,
    device: Arc<Inner>,
}

impl Drop for Block {
    fn drop(&mut self) {
        // The block came from this backend's alloc; this is its only owner and it is dropped
        // once (the last Arc reference).
        self.device.free_block(self.addr, self.reserved);
    }
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Buffer({:?} x {}, device {})",
            self.dtype, self.len, self.device.id
        )
    }
}

impl Buffer {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn bytes(&self) -> usize {
        self.len * self.dtype.size()
    }
    /// The device address (host address on the emulator); for logs and FFI.
    pub fn addr(&self) -> u64 {
        self.addr
    }
    /// This buffer as a read-only kernel argument.
    pub fn arg(&self) -> Arg<'_> {
        Arg::Ref(self)
    }
    /// This buffer as a kernel argument the kernel writes.
    pub fn arg_mut(&mut self) -> Arg<'_> {
        Arg::Mut(self)
    }
}

/// Views: a range of a buffer as a [`Buffer`] of its own, for launchers that take whole buffers
/// (e.g. one LoRA parameter inside the packed parameter buffer). A view does not allocate or
/// free device memory and leaves the allocator's counters ([`Device::memory`]) unchanged.
///
/// Alignment: a view starts `offset * dtype.size()` bytes into its parent, while device
/// allocations are 256-byte aligned. Kernels that use 16-byte vector loads (e.g. the pointwise
/// family) need views whose byte offset is a multiple of 16; callers that pack tensors into one
/// buffer should align each tensor's offset (64 elements is enough for every dtype here).
impl Buffer {
    /// Read-only view of elements `offset..offset + len` (a [`Buffer`] through `Deref`).
    /// A range past the end is an [`Error::Length`] naming it.
    pub fn view(&self, offset: usize, len: usize) -> Result<BufferView<'_>> {
        Ok(BufferView {
            buf: self.range(offset, len)?,
            _parent: PhantomData,
        })
    }

    /// Mutable view of elements `offset..offset + len` (a [`Buffer`] through `DerefMut`); the
    /// parent is borrowed mutably while the view lives. A range past the end is an
    /// [`Error::Length`] naming it.
    pub fn view_mut(&mut self, offset: usize, len: usize) -> Result<BufferViewMut<'_>> {
        Ok(BufferViewMut {
            buf: self.range(offset, len)?,
            _parent: PhantomData,
        })
    }

    /// True when element 0 starts at a multiple of `bytes` (a power of two), e.g. 16 for
    /// kernels that use 16-byte vector loads. Always true for `bytes <= 256` on a whole
    /// allocation; views may start anywhere.
    pub fn is_aligned(&self, bytes: usize) -> bool {
        bytes != 0 && self.addr.is_multiple_of(bytes as u64)
    }

    /// A buffer over `offset..offset + len` of this one, sharing its allocation.
    fn range(&self, offset: usize, len: usize) -> Result<Buffer> {
        let end = offset.checked_add(len);
        match end {
            Some(end) if end <= self.len => {}
            _ => {
                return Err(Error::Length {
                    what: "buffer view: range end (offset + len) past the buffer length",
                    expected: self.len,
                    got: end.unwrap_or(usize::MAX),
                })
            }
        }
        Ok(Buffer {
            addr: self.addr + (offset * self.dtype.size()) as u64,
            len,
            dtype: self.dtype,
            device: self.device.clone(),
            block: self.block.clone(),
        })
    }
}

/// A read-only view of a range of a [`Buffer`] (see [`Buffer::view`]); derefs to a `Buffer`.
pub struct BufferView<'a> {
    buf: Buffer,
    _parent: PhantomData<&'a Buffer>,
}

/// A mutable view of a range of a [`Buffer`] (see [`Buffer::view_mut`]); derefs to a `Buffer`.
pub struct BufferViewMut<'a> {
    buf: Buffer,
    _parent: PhantomData<&'a mut Buffer>,
}

impl Deref for BufferView<'_> {
    type Target = Buffer;
    fn deref(&self) -> &Buffer {
        &self.buf
    }
}

impl Deref for BufferViewMut<'_> {
    type Target = Buffer;
    fn deref(&self) -> &Buffer {
        &self.buf
    }
}

impl DerefMut for BufferViewMut<'_> {
    fn deref_mut(&mut self) -> &mut Buffer {
        &mut self.buf
    }
}

impl std::fmt::Debug for BufferView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "view of {:?}", self.buf)
    }
}

impl std::fmt::Debug for BufferViewMut<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "mutable view of {:?}", self.buf)
    }
}

impl Device {
    /// Wraps a backend.
    pub fn from_backend(backend: Box<dyn Backend>) -> Device {
        Device {
            inner: Arc::new(Inner {
                id: NEXT_DEVICE_ID.fetch_add(1, Ordering::Relaxed),
                backend,
                capture: std::sync::Mutex::new(None),
                poison_allocations: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// CUDA device `ordinal` through the driver. An error (never a panic) when there is no
    /// driver library, no such device, or the driver fails to initialise.
    pub fn cuda(ordinal: usize) -> Result<Device> {
        Ok(Device::from_backend(Box::new(
            crate::backend::cuda::CudaBackend::open(ordinal)?,
        )))
    }

    /// The host emulator with default options.
    pub fn emulator() -> Result<Device> {
        Device::emulator_with(EmulatorOptions::default())
    }

    /// The host emulator with the given options.
    pub fn emulator_with(opts: EmulatorOptions) -> Result<Device> {
        #[cfg(feature = "emulator")]
        {
            Ok(Device::from_backend(Box::new(
                crate::backend::emu::EmuBackend::try_new(opts)?,
            )))
        }
        #[cfg(not(feature = "emulator"))]
        {
            let _ = opts;
            Err(Error::NoEmulator)
        }
    }

    /// The host emulator (default options) behind the same caching pool a GPU's memory goes
    /// through, to test allocator behaviour; its size-class rounding hides overruns inside a
    /// class, so bounds checks want [`Device::emulator`].
    pub fn emulator_pooled() -> Result<Device> {
        #[cfg(feature = "emulator")]
        {
            let emu = crate::backend::emu::EmuBackend::new(EmulatorOptions::default());
            Ok(Device::from_backend(Box::new(
                crate::backend::pooled::PooledBackend::new(Box::new(emu)),
            )))
        }
        #[cfg(not(feature = "emulator"))]
        {
            Err(Error::NoEmulator)
        }
    }

    pub fn info(&self) -> &DeviceInfo {
        self.inner.backend.info()
    }

    pub fn kind(&self) -> BackendKind {
        self.info().kind
    }

    pub fn memory(&self) -> MemoryStats {
        self.inner.backend.memory()
    }

    /// Gives the allocator's cached free blocks back to the driver (e.g. before a phase that
    /// needs a different mix of sizes).
    pub fn release_cached(&self) {
        self.inner.backend.release_cached()
    }

    pub fn synchronize(&self) -> Result<()> {
        self.inner.backend.synchronize()
    }

    /// An uninitialised buffer (the emulator fills it with 0xff bytes: NaN for floats; so does
    /// a CUDA device after [`Device::set_poison_allocations`]).
    pub fn alloc(&self, dtype: DType, len: usize) -> Result<Buffer> {
        let bytes = len.checked_mul(dtype.size()).ok_or(Error::OutOfMemory {
            bytes: usize::MAX,
            msg: format!("{len} elements of {dtype:?} overflow the address space"),
        })?;
        let (addr, reserved) = self.inner.backend.alloc(bytes)?;
        // Not while capturing: a memset would become part of the graph; the replay's kernels
        // write what the capture allocates.
        if self.inner.poison_allocations.load(Ordering::Relaxed) && !self.inner.capturing() {
            // SAFETY: the range is exactly the new allocation. On failure the block goes back
            // to the pool below.
            if let Err(e) = unsafe { self.inner.backend.memset_byte(addr, 0xff, bytes) } {
                // SAFETY: just allocated, never handed out.
                unsafe { self.inner.backend.free(addr, reserved) };
                return Err(e);
            }
        }
        Ok(Buffer {
            addr,
            len,
            dtype,
            device: self.inner.clone(),
            block: Arc::new(Block {
                addr,
                reserved,
                device: self.inner.clone(),
            }),
        })
    }

    /// From now on, fills every new allocation of this device with 0xff bytes (NaN for f32 and
    /// bf16), as the emulator always does, so that an element a kernel fails to write reads
    /// back as NaN instead of whatever the caching allocator's block held before (possibly the
    /// right answer from an earlier run). For tests and debugging: it costs a memset per
    /// allocation. [`crate::testing::devices`] turns it on for the CUDA device.
    pub fn set_poison_allocations(&self, on: bool) {
        self.inner.poison_allocations.store(on, Ordering::Relaxed);
    }

    /// A zero-filled buffer.
    pub fn alloc_zeros(&self, dtype: DType, len: usize) -> Result<Buffer> {
        self.refuse_in_capture("alloc_zeros (a memset)")?;
        let b = self.alloc(dtype, len)?;
        // SAFETY: the range is exactly the new allocation.
        unsafe { self.inner.backend.memset_zero(b.addr, b.bytes())? };
        Ok(b)
    }

    /// A new buffer holding a copy of `data`.
    pub fn htod<T: Elem>(&self, data: &[T]) -> Result<Buffer> {
        let mut b = self.alloc(T::DTYPE, data.len())?;
        self.write(&mut b, data)?;
        Ok(b)
    }

    /// Copies `src` into `dst` (same dtype and length).
    pub fn write<T: Elem>(&self, dst: &mut Buffer, src: &[T]) -> Result<()> {
        self.refuse_in_capture("a host-to-device copy")?;
        self.check(dst, "write: destination", T::DTYPE, src.len())?;
        // SAFETY: checked: dst is a live buffer of this device with exactly these bytes.
        unsafe { self.inner.backend.htod(dst.addr, bytemuck::cast_slice(src)) }
    }

    /// Copies a buffer to a new host vector.
    pub fn dtoh<T: Elem>(&self, src: &Buffer) -> Result<Vec<T>> {
        let mut out = vec![T::zeroed(); src.len];
        self.read_into(src, &mut out)?;
        Ok(out)
    }

    /// Copies a buffer into `dst` (same dtype and length).
    pub fn read_into<T: Elem>(&self, src: &Buffer, dst: &mut [T]) -> Result<()> {
        self.refuse_in_capture("a device-to-host copy")?;
        self.check(src, "read: source", T::DTYPE, dst.len())?;
        // SAFETY: checked: src is a live buffer of this device with exactly these bytes.
        unsafe {
            self.inner
                .backend
                .dtoh(bytemuck::cast_slice_mut(dst), src.addr)
        }
    }

    /// Device-to-device copy (same dtype and length).
    pub fn copy(&self, dst: &mut Buffer, src: &Buffer) -> Result<()> {
        self.refuse_in_capture("a device-to-device copy")?;
        self.check(src, "copy: source", dst.dtype, dst.len)?;
        self.check(dst, "copy: destination", src.dtype, src.len)?;
        // SAFETY: checked: both are live buffers of this device with these bytes.
        unsafe { self.inner.backend.dtod(dst.addr, src.addr, src.bytes()) }
    }

    fn check(&self, b: &Buffer, what: &'static str, dtype: DType, len: usize) -> Result<()> {
        if !Arc::ptr_eq(&b.device, &self.inner) {
            return Err(Error::WrongDevice { what });
        }
        if b.dtype != dtype {
            return Err(Error::DType {
                what,
                expected: b.dtype,
                got: dtype,
            });
        }
        if b.len != len {
            return Err(Error::Length {
                what,
                expected: b.len,
                got: len,
            });
        }
        Ok(())
    }

    /// Launches a kernel on the device's stream (the emulator runs it to completion).
    ///
    /// Checked here: buffers belong to this device, grid/block/shared-memory limits; on the
    /// emulator also the argument count and every argument's kind and dtype against the
    /// kernel's C++ signature; on CUDA the argument count and sizes against the PTX entry.
    ///
    /// # Safety
    /// The kernel reads and writes device memory where its code says; the caller guarantees
    /// that the buffers are large enough for every index the grid reaches, as documented on
    /// the kernel.
    pub unsafe fn launch(&self, l: &Launch<'_>) -> Result<()> {
        validate_dims(l, self.info().max_shared_bytes)?;
        let mut values = Vec::with_capacity(l.args.len());
        for a in l.args {
            values.push(match a {
                Arg::Ref(b) => self.ptr_arg(l.kernel, b, 0, false)?,
                Arg::Mut(b) => self.ptr_arg(l.kernel, b, 0, true)?,
                Arg::RefAt(b, off) => self.ptr_arg(l.kernel, b, *off, false)?,
                Arg::MutAt(b, off) => self.ptr_arg(l.kernel, b, *off, true)?,
                Arg::I32(v) => ArgValue::I32(*v),
                Arg::U32(v) => ArgValue::U32(*v),
                Arg::I64(v) => ArgValue::I64(*v),
                Arg::U64(v) => ArgValue::U64(*v),
                Arg::F32(v) => ArgValue::F32(*v),
                Arg::F64(v) => ArgValue::F64(*v),
            });
        }
        check_vector_alignment(l.kernel, &values)?;
        if let Some(c) = self.inner.frees().as_mut() {
            c.launches += 1;
        }
        // SAFETY: forwarded contract of this function.
        unsafe {
            self.inner
                .backend
                .launch(l.kernel, l.grid, l.block, l.shared_bytes, &values)
        }
    }
}

/// Graphs ([`crate::graph`]).
impl Device {
    /// Runs `f` with this device's launches captured instead of executed, and returns its
    /// result with the [`crate::graph::Graph`] that replays them. Inside `f` only allocations,
    /// frees and launches are allowed (copies and memsets are refused with [`Error::Capture`]);
    /// buffers freed inside `f` stay allocated for the graph. The capture ends whatever `f` returns.
    /// `wrap` turns the device's own capture errors into `f`'s error type.
    pub fn capture<T, E>(
        &self,
        wrap: impl FnOnce(Error) -> E,
        f: impl FnOnce() -> std::result::Result<T, E>,
    ) -> std::result::Result<(T, crate::graph::Graph), E> {
        {
            let mut frees = self.inner.frees();
            if frees.is_some() {
                return Err(wrap(Error::Capture(
                    "a capture is already in progress".into(),
                )));
            }
            if let Err(e) = self.inner.backend.begin_capture() {
                return Err(wrap(e));
            }
            *frees = Some(CaptureState::default());
        }
        let out = f();
        let state = self.inner.frees().take().unwrap_or_default();
        let exec = self.inner.backend.end_capture();
        let graph = |exec| crate::graph::Graph {
            exec,
            device: self.inner.clone(),
            kept: state.kept,
            launches: state.launches,
        };
        match (out, exec) {
            (Ok(v), Ok(exec)) => Ok((v, graph(exec))),
            (Err(e), exec) => {
                // Dropping the partial graph releases what it kept.
                drop(exec.map(graph));
                Err(e)
            }
            (Ok(_), Err(e)) => Err(wrap(e)),
        }
    }

    /// True while [`Device::capture`] runs.
    pub fn is_capturing(&self) -> bool {
        self.inner.capturing()
    }

    fn refuse_in_capture(&self, op: &str) -> Result<()> {
        if self.inner.capturing() {
            return Err(Error::Capture(format!(
                "{op} while capturing a launch graph (only launches and allocations can be \
                 captured; do it before the capture)"
            )));
        }
        Ok(())
    }
}

impl Device {
    fn ptr_arg(
        &self,
        kernel: Kernel,
        b: &Buffer,
        offset: usize,
        mutable: bool,
    ) -> Result<ArgValue> {
        if !Arc::ptr_eq(&b.device, &self.inner) {
            return Err(Error::WrongDevice { what: kernel.name });
        }
        if offset > b.len {
            return Err(Error::InvalidLaunch {
                kernel: kernel.name,
                reason: format!(
                    "argument offset {offset} is past the end of a buffer of {} elements",
                    b.len
                ),
            });
        }
        Ok(ArgValue::Ptr {
            addr: b.addr + (offset * b.dtype.size()) as u64,
            dtype: b.dtype,
            mutable,
        })
    }
}

/// Refuses a launch that passes a kernel's 16-byte-vector parameter a misaligned address (see
/// [`crate::launch_align`]): on a GPU the first such access kills the context.
fn check_vector_alignment(kernel: Kernel, values: &[ArgValue]) -> Result<()> {
    use crate::launch_align::{vector_params, VECTOR_ALIGN};
    for &i in vector_params(kernel.name) {
        if let Some(ArgValue::Ptr { addr, dtype, .. }) = values.get(i) {
            if addr % VECTOR_ALIGN != 0 {
                return Err(Error::InvalidLaunch {
                    kernel: kernel.name,
                    reason: format!(
                        "argument {i} ({dtype:?}) starts {} bytes past a {VECTOR_ALIGN}-byte \
                         boundary, but the kernel reads it with {VECTOR_ALIGN}-byte vector \
                         accesses (a GPU faults with \"misaligned address\"); start the buffer \
                         view at a multiple of {} elements",
                        addr % VECTOR_ALIGN,
                        VECTOR_ALIGN as usize / dtype.size(),
                    ),
                });
            }
        }
    }
    Ok(())
}

/// CUDA's launch limits (the same on sm_80..sm_90).
fn validate_dims(l: &Launch<'_>, max_shared: u32) -> Result<()> {
    let bad = |reason: String| Error::InvalidLaunch {
        kernel: l.kernel.name,
        reason,
    };
    let (g, b) = (l.grid, l.block);
    if g.x == 0 || g.y == 0 || g.z == 0 || b.x == 0 || b.y == 0 || b.z == 0 {
        return Err(bad(format!("zero dimension in grid {g:?} or block {b:?}")));
    }
    if g.x > i32::MAX as u32 || g.y > 65535 || g.z > 65535 {
        return Err(bad(format!("grid {g:?} exceeds (2^31-1, 65535, 65535)")));
    }
    if b.x > 1024 || b.y > 1024 || b.z > 64 || b.count() > 1024 {
        return Err(bad(format!(
            "block {b:?} exceeds 1024 threads (x, y <= 1024, z <= 64)"
        )));
    }
    if l.shared_bytes > max_shared {
        return Err(bad(format!(
            "{} bytes of dynamic shared memory exceed the device limit of {max_shared}",
            l.shared_bytes
        )));
    }
    Ok(())
}

/// Options of the host emulator.
#[derive(Debug, Clone)]
pub struct EmulatorOptions {
    /// Largest dynamic shared memory per block a launch may ask for. Default 101376 bytes
    /// (99 KiB, the opt-in limit of sm_86/sm_89, the smallest among our targets).
    pub max_shared_bytes: u32,
    /// Run the memory checker (data races, misaligned and out-of-bounds accesses, cp.async
    /// reads before their wait; see `emu/checker.h`). `None`: on, unless the environment sets
    /// `KERNELS_CU_EMU_CHECKS=0`.
    pub checks: Option<bool>,
    /// The order of blocks and threads. `None`: from `KERNELS_CU_EMU_ORDER` (`ascending`,
    /// `descending`, `random[:SEED]` or `all[:SEED]`), else ascending.
    pub order: Option<ExecOrder>,
    /// The compute capability the emulator reports (default 8.0). (9, 0) makes the launchers
    /// take their sm_90a paths (the wgmma NF4 GEMM), which the emulator executes.
    pub compute_capability: (i32, i32),
}

/// The order in which the emulator runs the blocks of a launch and, within a block, the threads
/// between two barriers or warp collectives. Results of a correct kernel do not depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecOrder {
    Ascending,
    Descending,
    /// A permutation drawn from the seed (and the launch's position in the run).
    Random(u64),
    /// Every launch three times (ascending, descending, random), from the same inputs; any
    /// difference in the buffers the kernel can reach is an error naming the first byte.
    All(u64),
}

impl ExecOrder {
    /// Parses `ascending`, `descending`, `random[:SEED]` or `all[:SEED]` (seed 1 by default).
    pub fn parse(v: &str) -> Option<ExecOrder> {
        let (name, seed) = match v.split_once(':') {
            Some((n, s)) => (n, s.parse::<u64>().ok()?),
            None => (v, 1),
        };
        match name {
            "" | "ascending" => Some(ExecOrder::Ascending),
            "descending" => Some(ExecOrder::Descending),
            "random" => Some(ExecOrder::Random(seed)),
            "all" => Some(ExecOrder::All(seed)),
            _ => None,
        }
    }
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        EmulatorOptions {
            max_shared_bytes: 101_376,
            checks: None,
            order: None,
            compute_capability: (8, 0),
        }
    }
}
