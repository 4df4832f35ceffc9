//! `Tensor`: an immutable, contiguous, row-major array on a device, with shared storage.
//!
//! Tensors are values: ops return new tensors and never write into their inputs, so a tensor
//! can be shared (cheaply cloned) between the autograd graph, saved activations and the caller.
//! Reshape shares the buffer.
//!
//! A tensor's elements live on the host or on a CUDA device ([`crate::cuda`]). Moving between
//! them is explicit, [`Tensor::to_device`]; host views of a device tensor (`as_slice`, `to_vec`,
//! `to_f64_vec`, ...) are [`Error::NotOnHost`] naming the device.

use crate::cuda::CudaStorage;
use crate::element::Element;
use crate::storage::{Buffer, CpuStorage, Storage};
use crate::{DType, Device, Error, Result, Shape};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct Tensor {
    buffer: Arc<Buffer>,
    shape: Shape,
}

impl Tensor {
    /// A CPU tensor that takes ownership of `data`.
    pub fn from_vec<T: Element>(data: Vec<T>, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.elem_count() {
            return Err(Error::shape(
                "from_vec",
                format!("{} elements for shape {shape}", data.len()),
            ));
        }
        Ok(Self::from_storage(T::wrap(data), shape))
    }

    /// A CPU tensor copied from a slice.
    pub fn from_slice<T: Element>(data: &[T], shape: impl Into<Shape>) -> Result<Tensor> {
        Self::from_vec(data.to_vec(), shape)
    }

    /// Wraps a host buffer whose length already matches `shape` (checked in debug builds).
    pub fn from_storage(storage: CpuStorage, shape: impl Into<Shape>) -> Tensor {
        let shape = shape.into();
        debug_assert_eq!(storage.len(), shape.elem_count());
        Tensor {
            buffer: Arc::new(Buffer::cpu(storage)),
            shape,
        }
    }

    /// Wraps device storage whose length matches `shape` (checked in debug builds).
    pub(crate) fn from_cuda(storage: CudaStorage, shape: impl Into<Shape>) -> Tensor {
        let shape = shape.into();
        debug_assert_eq!(storage.len(), shape.elem_count());
        Tensor {
            buffer: Arc::new(Buffer::cuda(storage)),
            shape,
        }
    }

    pub fn zeros(shape: impl Into<Shape>, dtype: DType) -> Tensor {
        let shape = shape.into();
        Self::from_storage(CpuStorage::zeros(dtype, shape.elem_count()), shape)
    }

    /// A float tensor filled with `value`.
    pub fn full(value: f64, shape: impl Into<Shape>, dtype: DType) -> Tensor {
        let shape = shape.into();
        let n = shape.elem_count();
        Self::from_storage(CpuStorage::F64(vec![value; n]).to_dtype(dtype), shape)
    }

    pub fn scalar(value: f64, dtype: DType) -> Tensor {
        Self::full(value, Shape::new(vec![]), dtype)
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    pub fn rank(&self) -> usize {
        self.shape.rank()
    }

    pub fn elem_count(&self) -> usize {
        self.shape.elem_count()
    }

    pub fn dtype(&self) -> DType {
        match &self.buffer.storage {
            Storage::Cpu(s) => s.dtype(),
            Storage::Cuda(s) => s.dtype(),
        }
    }

    pub fn device(&self) -> Device {
        match &self.buffer.storage {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(s) => s.device(),
        }
    }

    /// Bytes held by the buffer.
    pub fn size_in_bytes(&self) -> usize {
        self.elem_count() * self.dtype().size_in_bytes()
    }

    /// The host buffer; [`Error::NotOnHost`] for tensors on a CUDA device.
    pub fn cpu_storage(&self) -> Result<&CpuStorage> {
        self.host("cpu_storage")
    }

    fn host(&self, op: &'static str) -> Result<&CpuStorage> {
        match &self.buffer.storage {
            Storage::Cpu(s) => Ok(s),
            Storage::Cuda(s) => Err(Error::NotOnHost {
                op,
                device: s.device(),
            }),
        }
    }

    /// The device buffer of a tensor on a CUDA device; `None` on the CPU.
    pub fn cuda_storage(&self) -> Option<&CudaStorage> {
        match &self.buffer.storage {
            Storage::Cpu(_) => None,
            Storage::Cuda(s) => Some(s),
        }
    }

    /// A typed view of a CPU tensor's elements ([`Error::NotOnHost`] on a CUDA device).
    pub fn as_slice<T: Element>(&self) -> Result<&[T]> {
        let s = self.host("as_slice")?;
        T::view(s).ok_or(Error::DType {
            op: "as_slice",
            dtype: s.dtype(),
            expected: std::any::type_name::<T>(),
        })
    }

    /// The elements of a CPU tensor as a `Vec<T>`; the dtype must be `T`'s.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        self.host("to_vec")?;
        Ok(self.as_slice::<T>()?.to_vec())
    }

    /// Every element of a CPU tensor converted to f64 (any dtype).
    pub fn to_f64_vec(&self) -> Result<Vec<f64>> {
        Ok(self.host("to_f64_vec")?.to_f64_vec())
    }

    /// Every element of a CPU tensor converted to f32 (any dtype).
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        Ok(self.host("to_f32_vec")?.to_f32_vec())
    }

    /// The single value of a one-element tensor, as f64.
    pub fn to_scalar(&self) -> Result<f64> {
        if self.elem_count() != 1 {
            return Err(Error::shape(
                "to_scalar",
                format!("expected one element, got shape {}", self.shape),
            ));
        }
        Ok(self.to_f64_vec()?[0])
    }

    /// Converts to `dtype` (a cheap clone when it already is).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let s = self.host("to_dtype")?;
        Ok(Self::from_storage(s.to_dtype(dtype), self.shape.clone()))
    }

    /// Same elements, new shape (shares the buffer).
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.elem_count() != self.elem_count() {
            return Err(Error::shapes("reshape", &self.shape, &shape));
        }
        Ok(Tensor {
            buffer: self.buffer.clone(),
            shape,
        })
    }

    /// Copies the tensor to `device`, keeping shape and dtype (a cheap clone when it is
    /// already there). Host<->device transfers go through here: CPU->CUDA uploads into the
    /// device's allocator, CUDA->CPU downloads (synchronizing the device's stream), CUDA->CUDA
    /// goes through the host. A driver ordinal that was not opened yet is opened here.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        let upload = |cpu: &CpuStorage| -> Result<Tensor> {
            let entry = crate::cuda::registry::entry("to_device", device)?;
            let s = CudaStorage::upload(cpu, &entry.dev, device)?;
            Ok(Self::from_cuda(s, self.shape.clone()))
        };
        match (&self.buffer.storage, device) {
            (Storage::Cpu(_), Device::Cpu) => Ok(self.clone()),
            (Storage::Cpu(c), Device::Cuda(_)) => upload(c),
            (Storage::Cuda(s), Device::Cpu) => {
                Ok(Self::from_storage(s.download()?, self.shape.clone()))
            }
            (Storage::Cuda(s), Device::Cuda(_)) => upload(&s.download()?),
        }
    }

    /// True when both tensors share one buffer.
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.buffer, &other.buffer)
    }
}
