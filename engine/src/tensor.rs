//! `Tensor`: an immutable, contiguous, row-major array in host memory, with shared storage.
//!
//! Tensors are values: ops return new tensors and never write into their inputs, so a tensor
//! can be shared (cheaply cloned) between the autograd graph, saved activations and the caller.
//! Reshape shares the buffer.
//!
//! Tensors are the CPU backend's: the CUDA training step works on kernels-cu device buffers
//! directly (model-falcon's `cuda` module), with these tensors as its host-side inputs and
//! reference.

use crate::element::Element;
use crate::storage::{Buffer, CpuStorage};
use crate::{DType, Error, Result, Shape};
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
        self.buffer.storage.dtype()
    }

    /// Bytes held by the buffer.
    pub fn size_in_bytes(&self) -> usize {
        self.elem_count() * self.dtype().size_in_bytes()
    }

    /// The buffer.
    pub fn cpu_storage(&self) -> &CpuStorage {
        &self.buffer.storage
    }

    fn storage(&self) -> &CpuStorage {
        &self.buffer.storage
    }

    /// A typed view of the elements; an error when the dtype is not `T`'s.
    pub fn as_slice<T: Element>(&self) -> Result<&[T]> {
        let s = self.storage();
        T::view(s).ok_or(Error::DType {
            op: "as_slice",
            dtype: s.dtype(),
            expected: std::any::type_name::<T>(),
        })
    }

    /// The elements for writing in place, when this handle is the only one sharing its buffer
    /// (no clone or reshape of it is alive, so nobody else can observe the write); `None`
    /// otherwise, or when the dtype is not `T`'s. Tensors stay values: only an op that owns
    /// the sole handle (a gradient it is accumulating) may use this.
    pub(crate) fn unique_slice_mut<T: Element>(&mut self) -> Option<&mut [T]> {
        let buffer = Arc::get_mut(&mut self.buffer)?;
        T::view_mut(&mut buffer.storage)
    }

    /// The elements as a `Vec<T>`; the dtype must be `T`'s.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        Ok(self.as_slice::<T>()?.to_vec())
    }

    /// Every element converted to f64 (any dtype).
    pub fn to_f64_vec(&self) -> Result<Vec<f64>> {
        Ok(self.storage().to_f64_vec())
    }

    /// Every element converted to f32 (any dtype).
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        Ok(self.storage().to_f32_vec())
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
        Ok(Self::from_storage(
            self.storage().to_dtype(dtype),
            self.shape.clone(),
        ))
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

    /// True when both tensors share one buffer.
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.buffer, &other.buffer)
    }
}
