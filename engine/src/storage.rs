//! Owned element buffers: host buffers (one variant per dtype) and device buffers.

use crate::memory::Charge;
use crate::DType;
use half::{bf16, f16};

/// A host buffer of one dtype.
#[derive(Clone, Debug)]
pub enum CpuStorage {
    F64(Vec<f64>),
    F32(Vec<f32>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    I32(Vec<i32>),
    U32(Vec<u32>),
    U8(Vec<u8>),
}

impl CpuStorage {
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F64(_) => DType::F64,
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::I32(_) => DType::I32,
            CpuStorage::U32(_) => DType::U32,
            CpuStorage::U8(_) => DType::U8,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            CpuStorage::F64(v) => v.len(),
            CpuStorage::F32(v) => v.len(),
            CpuStorage::BF16(v) => v.len(),
            CpuStorage::F16(v) => v.len(),
            CpuStorage::I32(v) => v.len(),
            CpuStorage::U32(v) => v.len(),
            CpuStorage::U8(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn zeros(dtype: DType, n: usize) -> Self {
        match dtype {
            DType::F64 => CpuStorage::F64(vec![0.0; n]),
            DType::F32 => CpuStorage::F32(vec![0.0; n]),
            DType::BF16 => CpuStorage::BF16(vec![bf16::ZERO; n]),
            DType::F16 => CpuStorage::F16(vec![f16::ZERO; n]),
            DType::I32 => CpuStorage::I32(vec![0; n]),
            DType::U32 => CpuStorage::U32(vec![0; n]),
            DType::U8 => CpuStorage::U8(vec![0; n]),
        }
    }

    /// Every element widened to f64 (integers included), for references and conversions.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match self {
            CpuStorage::F64(v) => v.clone(),
            CpuStorage::F32(v) => v.iter().map(|&x| x as f64).collect(),
            CpuStorage::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
            CpuStorage::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
            CpuStorage::I32(v) => v.iter().map(|&x| x as f64).collect(),
            CpuStorage::U32(v) => v.iter().map(|&x| x as f64).collect(),
            CpuStorage::U8(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }

    /// Every element as f32 (bf16/f16 widen exactly).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match self {
            CpuStorage::F32(v) => v.clone(),
            CpuStorage::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
            CpuStorage::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            other => other.to_f64_vec().into_iter().map(|x| x as f32).collect(),
        }
    }

    /// Converts to another dtype: round-to-nearest-even for narrower floats, saturating
    /// truncation toward zero for integers (as `as` casts do).
    pub fn to_dtype(&self, dtype: DType) -> CpuStorage {
        if dtype == self.dtype() {
            return self.clone();
        }
        match dtype {
            DType::F32 => CpuStorage::F32(self.to_f32_vec()),
            DType::BF16 => match self {
                CpuStorage::F64(v) => {
                    CpuStorage::BF16(v.iter().map(|&x| bf16::from_f64(x)).collect())
                }
                other => {
                    CpuStorage::BF16(other.to_f32_vec().into_iter().map(bf16::from_f32).collect())
                }
            },
            DType::F16 => match self {
                CpuStorage::F64(v) => {
                    CpuStorage::F16(v.iter().map(|&x| f16::from_f64(x)).collect())
                }
                other => {
                    CpuStorage::F16(other.to_f32_vec().into_iter().map(f16::from_f32).collect())
                }
            },
            DType::F64 => CpuStorage::F64(self.to_f64_vec()),
            DType::I32 => {
                CpuStorage::I32(self.to_f64_vec().into_iter().map(|x| x as i32).collect())
            }
            DType::U32 => {
                CpuStorage::U32(self.to_f64_vec().into_iter().map(|x| x as u32).collect())
            }
            DType::U8 => CpuStorage::U8(self.to_f64_vec().into_iter().map(|x| x as u8).collect()),
        }
    }

    /// The raw little-endian bytes of the buffer.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            CpuStorage::F64(v) => bytemuck::cast_slice(v),
            CpuStorage::F32(v) => bytemuck::cast_slice(v),
            CpuStorage::BF16(v) => bytemuck::cast_slice(v),
            CpuStorage::F16(v) => bytemuck::cast_slice(v),
            CpuStorage::I32(v) => bytemuck::cast_slice(v),
            CpuStorage::U32(v) => bytemuck::cast_slice(v),
            CpuStorage::U8(v) => v,
        }
    }

    /// Builds a buffer from little-endian bytes; `None` if the length is not a whole number
    /// of elements.
    pub fn from_bytes(dtype: DType, bytes: &[u8]) -> Option<Self> {
        if !bytes.len().is_multiple_of(dtype.size_in_bytes()) {
            return None;
        }
        // pod_collect_to_vec copies, so unaligned sources (e.g. a memory map) are fine.
        Some(match dtype {
            DType::F64 => CpuStorage::F64(bytemuck::pod_collect_to_vec(bytes)),
            DType::F32 => CpuStorage::F32(bytemuck::pod_collect_to_vec(bytes)),
            DType::BF16 => CpuStorage::BF16(bytemuck::pod_collect_to_vec(bytes)),
            DType::F16 => CpuStorage::F16(bytemuck::pod_collect_to_vec(bytes)),
            DType::I32 => CpuStorage::I32(bytemuck::pod_collect_to_vec(bytes)),
            DType::U32 => CpuStorage::U32(bytemuck::pod_collect_to_vec(bytes)),
            DType::U8 => CpuStorage::U8(bytes.to_vec()),
        })
    }
}

/// A buffer plus the memory charge that accounts for it.
#[derive(Debug)]
pub(crate) struct Buffer {
    pub(crate) storage: CpuStorage,
    _charge: Charge,
}

impl Buffer {
    pub(crate) fn cpu(s: CpuStorage) -> Self {
        let bytes = s.len() * s.dtype().size_in_bytes();
        Buffer {
            storage: s,
            _charge: Charge::new(bytes),
        }
    }
}
