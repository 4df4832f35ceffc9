//! Element types of device buffers and kernel parameters.

/// The element type of a [`crate::Buffer`] (and of a kernel's pointer parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    BF16,
    F16,
    I32,
    U32,
    I64,
    U64,
    U8,
    I8,
}

impl DType {
    /// Size of one element in bytes.
    pub const fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 | DType::U64 => 8,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::BF16 | DType::F16 => 2,
            DType::U8 | DType::I8 => 1,
        }
    }

    /// The emulator's one-letter code of this type (see `emu/kc_emu.h`, `TypeCode`).
    pub const fn code(self) -> char {
        match self {
            DType::F32 => 'f',
            DType::F64 => 'd',
            DType::BF16 => 'b',
            DType::F16 => 'h',
            DType::I32 => 'i',
            DType::U32 => 'u',
            DType::I64 => 'l',
            DType::U64 => 'L',
            DType::U8 => 'c',
            DType::I8 => 's',
        }
    }

    /// The CUDA C++ spelling, for messages.
    pub const fn cuda_name(self) -> &'static str {
        match self {
            DType::F32 => "float",
            DType::F64 => "double",
            DType::BF16 => "kc::bf16",
            DType::F16 => "kc::f16",
            DType::I32 => "int",
            DType::U32 => "unsigned",
            DType::I64 => "long long",
            DType::U64 => "unsigned long long",
            DType::U8 => "unsigned char",
            DType::I8 => "signed char",
        }
    }
}

/// A host element type that can be copied to and from device buffers bit for bit.
pub trait Elem: bytemuck::Pod {
    const DTYPE: DType;
}

macro_rules! elem {
    ($($t:ty => $d:ident),* $(,)?) => { $(impl Elem for $t { const DTYPE: DType = DType::$d; })* };
}
elem!(f32 => F32, f64 => F64, half::bf16 => BF16, half::f16 => F16, i32 => I32, u32 => U32,
      i64 => I64, u64 => U64, u8 => U8, i8 => I8);
