//! The CUDA device: tensors in device memory, host<->device copies, and the ops that launch
//! kernels-cu kernels.
//!
//! # Devices and ids
//!
//! [`Device::Cuda`]`(id)` names an entry of a process-wide registry of opened
//! [`kernels_cu::Device`] handles (each with its own caching allocator and stream):
//!
//! - [`open`]`(ordinal)` (or [`Device::cuda`]) opens the GPU with that driver ordinal through
//!   the CUDA driver, loaded at run time, once per process, and returns `Device::Cuda(ordinal)`.
//!   Without a driver library, GPU or context it returns [`Error::DeviceUnavailable`] with the
//!   reason; it never panics. A tensor moved to `Device::Cuda(k)` opens ordinal `k` on first use.
//! - [`open_emulator`] registers a fresh instance of the kernels-cu host emulator under an id
//!   from [`Device::CUDA_EMULATOR_BASE`] up (printed `cuda:emu<j>`). The engine treats it as a
//!   GPU: same storage, same launchers, same launch shapes, argument order and buffer sizes,
//!   which is how CI runs the CUDA path without a GPU. Its allocations are exact-size host
//!   blocks, so the emulator's bounds checks (and AddressSanitizer) see every overrun.
//! - [`open_emulator_pooled`] is the emulator behind the same caching pool a GPU uses
//!   ([`PooledBackend`]), to test allocator behaviour (no driver allocation after warm-up).
//! - [`register`] registers any handle built by the caller (other emulator options, a wrapped
//!   backend) under a fresh emulator-range id.
//!
//! # Tensors
//!
//! [`crate::Tensor::to_device`] copies CPU->CUDA (upload), CUDA->CPU (download) and between
//! CUDA devices (through the host), preserving the dtype; every dtype can live on a device.
//! Host views of a CUDA tensor (`as_slice`, `to_vec`, `to_f64_vec`, `to_scalar`, ...) are
//! [`Error::NotOnHost`] naming the device: transfers are always explicit,
//! `t.to_device(Device::Cpu)?.to_vec::<f32>()`.
//!
//! # Ops
//!
//! On CUDA tensors `ops::add` (same shapes), `ops::scale` (f32, bf16) and `ops::sum_all` (f32)
//! launch the kernels-cu kernels (the table in `engine/src/cuda/ops.rs` lists them); their backward passes run on the device
//! too, so gradients of CUDA leaves are CUDA tensors. Inputs on different devices are
//! [`Error::DeviceMismatch`]. An op or dtype without a CUDA kernel is [`Error::Unsupported`]
//! naming the op and the device (ops outside `ops::elementwise` report [`Error::NotOnHost`]
//! when they try to read a CUDA tensor's elements).
//!
//! # Memory
//!
//! Tensor bytes on each device are counted in [`crate::memory::device_counter`] (live and
//! peak); the allocator's figures (reserved, cached, driver allocations) in [`pool_stats`].
//!
//! [`Error::DeviceUnavailable`]: crate::Error::DeviceUnavailable
//! [`Error::NotOnHost`]: crate::Error::NotOnHost
//! [`Error::DeviceMismatch`]: crate::Error::DeviceMismatch
//! [`Error::Unsupported`]: crate::Error::Unsupported

pub(crate) mod ops;
pub mod pooled;
pub(crate) mod registry;
pub mod storage;

pub use pooled::PooledBackend;
pub use storage::{kernel_dtype, CudaStorage};

use crate::{Device, Error, Result};

/// Opens (once per process) the GPU with driver ordinal `ordinal`; `Device::Cuda(ordinal)`.
/// An error naming the reason, never a panic, when there is no driver, GPU or context.
pub fn open(ordinal: usize) -> Result<Device> {
    registry::open_ordinal(ordinal).map(|_| Device::Cuda(ordinal))
}

/// Registers a new host emulator instance (exact-size allocations) and returns its id.
pub fn open_emulator() -> Result<Device> {
    let dev = kernels_cu::Device::emulator().map_err(|e| Error::DeviceUnavailable {
        device: Device::Cuda(Device::CUDA_EMULATOR_BASE),
        reason: e.to_string(),
    })?;
    Ok(register(dev))
}

/// Registers a new host emulator instance behind a caching pool, as a GPU's allocator is.
pub fn open_emulator_pooled() -> Result<Device> {
    let emu = kernels_cu::backend::emu::EmuBackend::new(kernels_cu::EmulatorOptions::default());
    let pooled = PooledBackend::new(Box::new(emu));
    Ok(register(kernels_cu::Device::from_backend(Box::new(pooled))))
}

/// Registers a caller-built handle under a fresh id from [`Device::CUDA_EMULATOR_BASE`] up.
pub fn register(handle: kernels_cu::Device) -> Device {
    registry::register_emulated(handle)
}

/// True when the CUDA driver library loads (a GPU may still be missing).
pub fn driver_present() -> bool {
    kernels_cu::cuda_driver_present()
}

/// The kernels-cu handle of a CUDA device (opening a driver ordinal on first use).
pub fn handle(device: Device) -> Result<kernels_cu::Device> {
    registry::entry("cuda::handle", device).map(|e| e.dev)
}

/// What the device is (name, compute capability, memory, backend kind).
pub fn info(device: Device) -> Result<kernels_cu::DeviceInfo> {
    handle(device).map(|h| h.info().clone())
}

/// The device allocator's counters: bytes in use (size-class rounded), cached, peak, and the
/// number of allocations that reached the driver (the emulator: host allocations).
pub fn pool_stats(device: Device) -> Result<kernels_cu::MemoryStats> {
    handle(device).map(|h| h.memory())
}
