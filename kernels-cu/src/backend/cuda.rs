//! The CUDA backend: cudarc 0.19 with the driver library loaded at run time, one stream, each
//! kernel family loaded lazily and cached (the embedded cubin for the device's architecture, or
//! the embedded PTX for the driver to JIT; see [`crate::cubin`]), and a [`CachingPool`] for
//! memory.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{
    CUdevice_attribute, CUfunction_attribute, CUgraphInstantiate_flags, CUstreamCaptureMode,
};
use cudarc::driver::{
    result, CudaContext, CudaFunction, CudaGraph, CudaModule, CudaStream, DriverError,
};

use crate::cubin::{cubin, family_image, select_image, ModuleImage};
use crate::device::{ArgValue, Backend, BackendKind, DeviceInfo, Dim3};
use crate::error::{Error, Result};
use crate::graph::GraphExec;
use crate::pool::{CachingPool, MemoryStats, RawAlloc};
use crate::{ptx, Kernel};

fn driver(call: &'static str) -> impl Fn(DriverError) -> Error {
    move |e| Error::Driver {
        call,
        msg: format!("{e:?}"),
    }
}

/// True when the driver library can be loaded (it says nothing about GPUs being present).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library; no driver call is made.
    std::panic::catch_unwind(|| unsafe { cudarc::driver::sys::is_culib_present() }).unwrap_or(false)
}

struct Function {
    func: CudaFunction,
    /// Parameter byte sizes read from the PTX entry, to check launches.
    params: Option<Vec<usize>>,
    /// Dynamic shared memory this function has been opted in to (beyond the default 48 KiB).
    shared_opt_in: u32,
}

struct State {
    pool: CachingPool,
    modules: HashMap<&'static str, Arc<CudaModule>>,
    functions: HashMap<&'static str, Function>,
}

pub struct CudaBackend {
    info: DeviceInfo,
    /// What every kernel family is loaded from on this device (cubin or PTX).
    image: ModuleImage,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    state: Mutex<State>,
}

/// Raw driver allocations for the pool. Before it frees, it waits for this backend's stream
/// only: every use of its memory is ordered on that stream, and a context-wide
/// `cuCtxSynchronize` would break a graph capture in progress on another backend's stream
/// (another thread, or another device handle of the same process).
struct DriverAlloc<'a>(&'a CudaContext, &'a CudaStream);

impl RawAlloc for DriverAlloc<'_> {
    fn raw_alloc(&mut self, bytes: usize) -> Result<u64> {
        self.0.bind_to_thread().map_err(driver("cuCtxSetCurrent"))?;
        // SAFETY: a plain device allocation; the pool owns the result.
        match unsafe { result::malloc_sync(bytes) } {
            Ok(p) => Ok(p),
            Err(e) if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
                Err(Error::OutOfMemory {
                    bytes,
                    msg: format!("{e:?}"),
                })
            }
            Err(e) => Err(driver("cuMemAlloc")(e)),
        }
    }
    fn before_release(&mut self) {
        let _ = self.1.synchronize();
    }
    unsafe fn raw_free(&mut self, ptr: u64, _bytes: usize) {
        let _ = self.0.bind_to_thread();
        // SAFETY: ptr came from malloc_sync and is no longer used (caller's contract). The
        // synchronous free waits for pending work that may still use it.
        let _ = unsafe { result::free_sync(ptr) };
    }
}

impl CudaBackend {
    /// Opens device `ordinal`. Any failure, including a missing driver library or a panic
    /// inside the bindings, becomes an error.
    pub fn open(ordinal: usize) -> Result<CudaBackend> {
        if !driver_present() {
            return Err(Error::NoDriver);
        }
        match std::panic::catch_unwind(|| Self::open_inner(ordinal)) {
            Ok(r) => r,
            Err(_) => Err(Error::NoDevice {
                ordinal,
                msg: "the CUDA driver bindings panicked while opening the device".into(),
            }),
        }
    }

    fn open_inner(ordinal: usize) -> Result<CudaBackend> {
        let ctx = CudaContext::new(ordinal).map_err(|e| Error::NoDevice {
            ordinal,
            msg: format!("{e:?}"),
        })?;
        // No cudarc event tracking: this backend orders all its work on its one stream and
        // uses raw device pointers, never cudarc's tracked slices. With tracking on, the first
        // `new_stream` of each context handle calls `cuCtxSynchronize`, which invalidates a
        // graph capture running on another handle's stream (seen on an H200: the capture test
        // failed when other tests opened the device concurrently).
        // SAFETY: no CudaSlice is created on this context by this backend.
        unsafe { ctx.disable_event_tracking() };
        // A stream of our own, not the legacy default stream, which cannot be captured into
        // a graph.
        let stream = ctx.new_stream().map_err(driver("cuStreamCreate"))?;
        let cc = ctx
            .compute_capability()
            .map_err(driver("cuDeviceGetAttribute"))?;
        let name = ctx.name().map_err(driver("cuDeviceGetName"))?;
        let total_memory = ctx.total_mem().map_err(driver("cuDeviceTotalMem"))?;
        let max_shared = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(driver("cuDeviceGetAttribute"))?;
        let sms = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver("cuDeviceGetAttribute"))?;
        let mut driver_version = 0;
        // SAFETY: a plain query of the loaded driver with a valid out-pointer.
        let _ = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver_version) };
        let image = select_image(cc, driver_version).map_err(|msg| Error::NoDevice {
            ordinal,
            msg: format!("{name}: {msg}"),
        })?;
        Ok(CudaBackend {
            image,
            info: DeviceInfo {
                kind: BackendKind::Cuda,
                name,
                compute_capability: cc,
                total_memory,
                max_shared_bytes: max_shared.max(0) as u32,
                multiprocessors: sms.max(0) as u32,
                driver_version,
            },
            ctx,
            stream,
            state: Mutex::new(State {
                pool: CachingPool::new(),
                modules: HashMap::new(),
                functions: HashMap::new(),
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Backend for CudaBackend {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn alloc(&self, bytes: usize) -> Result<(u64, usize)> {
        let mut st = self.state();
        st.pool
            .alloc(&mut DriverAlloc(&self.ctx, &self.stream), bytes)
    }

    unsafe fn free(&self, addr: u64, reserved: usize) {
        self.state().pool.free(addr, reserved);
    }

    unsafe fn htod(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(driver("cuCtxSetCurrent"))?;
        // SAFETY: dst covers src (caller's contract). Pageable source: the copy has finished
        // reading `src` when the call returns.
        unsafe { result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
            .map_err(driver("cuMemcpyHtoDAsync"))?;
        self.stream
            .synchronize()
            .map_err(driver("cuStreamSynchronize"))
    }

    unsafe fn dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(driver("cuCtxSetCurrent"))?;
        // SAFETY: src covers dst (caller's contract); synchronized before dst is used.
        unsafe { result::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }
            .map_err(driver("cuMemcpyDtoHAsync"))?;
        self.stream
            .synchronize()
            .map_err(driver("cuStreamSynchronize"))
    }

    unsafe fn dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(driver("cuCtxSetCurrent"))?;
        // SAFETY: both ranges are live (caller's contract); stream ordered.
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream()) }
            .map_err(driver("cuMemcpyDtoDAsync"))
    }

    unsafe fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.memset_byte(dst, 0, bytes) }
    }

    unsafe fn memset_byte(&self, dst: u64, value: u8, bytes: usize) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(driver("cuCtxSetCurrent"))?;
        // SAFETY: the range is live (caller's contract); stream ordered.
        unsafe { result::memset_d8_async(dst, value, bytes, self.stream.cu_stream()) }
            .map_err(driver("cuMemsetD8Async"))
    }

    unsafe fn launch(
        &self,
        kernel: Kernel,
        grid: Dim3,
        block: Dim3,
        shared_bytes: u32,
        args: &[ArgValue],
    ) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(driver("cuCtxSetCurrent"))?;
        let mut st = self.state();
        let family = kernel.family;
        if !st.modules.contains_key(family.name) {
            let image = match family_image(family.name, self.info.compute_capability, self.image) {
                ModuleImage::Cubin(arch) => {
                    let bytes = cubin(family.name, arch).ok_or(Error::UnknownKernel {
                        kernel: kernel.name,
                        backend: "CUDA (no cubin for this family)",
                    })?;
                    cudarc::nvrtc::Ptx::from_binary(bytes.to_vec())
                }
                ModuleImage::Ptx => cudarc::nvrtc::Ptx::from_src(family.ptx),
            };
            let m = self
                .ctx
                .load_module(image)
                .map_err(driver("cuModuleLoadData"))?;
            st.modules.insert(family.name, m);
        }
        if !st.functions.contains_key(kernel.name) {
            let module = st.modules[family.name].clone();
            let func = module
                .load_function(kernel.name)
                .map_err(|_| Error::UnknownKernel {
                    kernel: kernel.name,
                    backend: "CUDA",
                })?;
            let params = ptx::entry_param_sizes(kernel.ptx(), kernel.name);
            st.functions.insert(
                kernel.name,
                Function {
                    func,
                    params,
                    shared_opt_in: 48 * 1024,
                },
            );
        }
        let f = st
            .functions
            .get_mut(kernel.name)
            .ok_or(Error::UnknownKernel {
                kernel: kernel.name,
                backend: "CUDA",
            })?;
        if let Some(params) = &f.params {
            if params.len() != args.len() {
                return Err(Error::ArgCount {
                    kernel: kernel.name,
                    expected: params.len(),
                    got: args.len(),
                });
            }
            for (i, (want, a)) in params.iter().zip(args).enumerate() {
                let got = a.bytes().len();
                if *want != got {
                    return Err(Error::ArgType {
                        kernel: kernel.name,
                        index: i,
                        expected: format!("a {want}-byte value"),
                        got: format!("a {got}-byte value ({a:?})"),
                    });
                }
            }
        }
        if shared_bytes > f.shared_opt_in {
            f.func
                .set_attribute(
                    CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    shared_bytes as i32,
                )
                .map_err(driver("cuFuncSetAttribute"))?;
            f.shared_opt_in = shared_bytes;
        }
        let mut storage: Vec<[u8; 8]> = args
            .iter()
            .map(|a| {
                let mut slot = [0u8; 8];
                let b = a.bytes();
                slot[..b.len()].copy_from_slice(&b);
                slot
            })
            .collect();
        let mut params: Vec<*mut c_void> = storage
            .iter_mut()
            .map(|s| s.as_mut_ptr() as *mut c_void)
            .collect();
        // SAFETY: the function is loaded in this context; each parameter points to a value of
        // the size the PTX entry declares (checked above); buffer bounds are the caller's
        // contract. cuLaunchKernel copies the values before returning.
        unsafe {
            result::launch_kernel(
                f.func.cu_function(),
                (grid.x, grid.y, grid.z),
                (block.x, block.y, block.z),
                shared_bytes,
                self.stream.cu_stream(),
                &mut params,
            )
        }
        .map_err(driver("cuLaunchKernel"))
    }

    fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(driver("cuStreamSynchronize"))
    }

    fn memory(&self) -> MemoryStats {
        self.state().pool.stats()
    }

    fn release_cached(&self) {
        let mut st = self.state();
        st.pool
            .release_cached(&mut DriverAlloc(&self.ctx, &self.stream));
    }

    fn begin_capture(&self) -> Result<()> {
        // Relaxed: the caching pool may call cuMemAlloc while the step is captured (memory the
        // graph then keeps; see crate::graph).
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(driver("cuStreamBeginCapture"))
    }

    fn end_capture(&self) -> Result<Box<dyn GraphExec>> {
        let graph = self
            .stream
            .end_capture(CUgraphInstantiate_flags(0))
            .map_err(driver("cuStreamEndCapture / cuGraphInstantiate"))?
            .ok_or_else(|| Error::Capture("the driver returned an empty graph".into()))?;
        Ok(Box::new(CudaGraphExec { graph }))
    }
}

/// A CUDA graph instantiated from a stream capture.
struct CudaGraphExec {
    graph: CudaGraph,
}

impl GraphExec for CudaGraphExec {
    unsafe fn replay(&self, _backend: &dyn Backend) -> Result<()> {
        self.graph.launch().map_err(driver("cuGraphLaunch"))
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        let _ = self.stream.synchronize();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.pool
            .release_cached(&mut DriverAlloc(&self.ctx, &self.stream));
    }
}
