//! Tensor storage in CUDA device memory, and the host<->device copies.

use crate::storage::CpuStorage;
use crate::{DType, Device, Error, Result};

/// The elements of a tensor in device memory: a [`kernels_cu::Buffer`] from the device's
/// allocator (its caching pool on a GPU), the handle that launches on it, and the engine
/// device id it is registered under. The buffer goes back to the pool when the last tensor
/// sharing this storage is dropped.
pub struct CudaStorage {
    buffer: kernels_cu::Buffer,
    handle: kernels_cu::Device,
    device: Device,
    dtype: DType,
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CudaStorage({} x {} on {})",
            self.dtype,
            self.len(),
            self.device
        )
    }
}

/// The kernels-cu element type of an engine dtype (every engine dtype has one).
pub fn kernel_dtype(d: DType) -> kernels_cu::DType {
    match d {
        DType::F64 => kernels_cu::DType::F64,
        DType::F32 => kernels_cu::DType::F32,
        DType::BF16 => kernels_cu::DType::BF16,
        DType::F16 => kernels_cu::DType::F16,
        DType::I32 => kernels_cu::DType::I32,
        DType::U32 => kernels_cu::DType::U32,
        DType::U8 => kernels_cu::DType::U8,
    }
}

impl CudaStorage {
    /// Wraps a buffer of `handle` (registered as `device`). The buffer's element type must be
    /// `dtype`'s (checked).
    pub(crate) fn new(
        op: &'static str,
        buffer: kernels_cu::Buffer,
        handle: kernels_cu::Device,
        device: Device,
        dtype: DType,
    ) -> Result<CudaStorage> {
        if buffer.dtype() != kernel_dtype(dtype) {
            return Err(Error::invalid(
                op,
                format!(
                    "device buffer holds {:?} elements, the tensor is {dtype}",
                    buffer.dtype()
                ),
            ));
        }
        Ok(CudaStorage {
            buffer,
            handle,
            device,
            dtype,
        })
    }

    /// Copies a host buffer into new device memory of `handle`.
    pub(crate) fn upload(
        s: &CpuStorage,
        handle: &kernels_cu::Device,
        device: Device,
    ) -> Result<CudaStorage> {
        let cuda_err = |source| Error::Cuda {
            op: "to_device (upload)",
            device,
            source,
        };
        let buffer = match s {
            CpuStorage::F64(v) => handle.htod(v),
            CpuStorage::F32(v) => handle.htod(v),
            CpuStorage::BF16(v) => handle.htod(v),
            CpuStorage::F16(v) => handle.htod(v),
            CpuStorage::I32(v) => handle.htod(v),
            CpuStorage::U32(v) => handle.htod(v),
            CpuStorage::U8(v) => handle.htod(v),
        }
        .map_err(cuda_err)?;
        Ok(CudaStorage {
            buffer,
            handle: handle.clone(),
            device,
            dtype: s.dtype(),
        })
    }

    /// Copies the elements back to a new host buffer (synchronizes the device's stream).
    pub fn download(&self) -> Result<CpuStorage> {
        let h = &self.handle;
        let b = &self.buffer;
        let out = match self.dtype {
            DType::F64 => h.dtoh(b).map(CpuStorage::F64),
            DType::F32 => h.dtoh(b).map(CpuStorage::F32),
            DType::BF16 => h.dtoh(b).map(CpuStorage::BF16),
            DType::F16 => h.dtoh(b).map(CpuStorage::F16),
            DType::I32 => h.dtoh(b).map(CpuStorage::I32),
            DType::U32 => h.dtoh(b).map(CpuStorage::U32),
            DType::U8 => h.dtoh(b).map(CpuStorage::U8),
        };
        out.map_err(|source| Error::Cuda {
            op: "to_device (download)",
            device: self.device,
            source,
        })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The engine device this storage lives on.
    pub fn device(&self) -> Device {
        self.device
    }

    pub fn len(&self) -> usize {
        self.buffer.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }

    /// The device buffer, to pass to a kernel launcher as an input.
    pub fn buffer(&self) -> &kernels_cu::Buffer {
        &self.buffer
    }

    /// The handle that owns the buffer (launches, copies, memory counters).
    pub fn handle(&self) -> &kernels_cu::Device {
        &self.handle
    }
}
