//! Rust element types that map to a [`DType`], and the float types ops compute in.

use crate::storage::CpuStorage;
use crate::DType;
use half::{bf16, f16};
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

/// A Rust type that can be the element of a CPU tensor.
pub trait Element: Copy + Send + Sync + std::fmt::Debug + 'static {
    const DTYPE: DType;
    fn wrap(v: Vec<Self>) -> CpuStorage;
    fn view(s: &CpuStorage) -> Option<&[Self]>;
    fn view_mut(s: &mut CpuStorage) -> Option<&mut [Self]>;
}

macro_rules! element {
    ($t:ty, $variant:ident) => {
        impl Element for $t {
            const DTYPE: DType = DType::$variant;
            fn wrap(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$variant(v)
            }
            fn view(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn view_mut(s: &mut CpuStorage) -> Option<&mut [Self]> {
                match s {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}

element!(f64, F64);
element!(f32, F32);
element!(bf16, BF16);
element!(f16, F16);
element!(i32, I32);
element!(u32, U32);
element!(u8, U8);

/// The float types the CPU backend computes in: f32 (the real backend) and f64 (the reference
/// for gradient checks). Every CPU kernel is generic over this trait so the same code runs in both.
pub trait Float:
    Element
    + Default
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INFINITY: Self;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn erf(self) -> Self;
    fn cos(self) -> Self;
    fn sin(self) -> Self;
    fn max(self, o: Self) -> Self;
    fn abs(self) -> Self;
    fn powi(self, n: i32) -> Self;
    fn powf(self, e: Self) -> Self;
    /// `xs[i] = exp(xs[i] − shift)` over a slice (softmax rows). f32 runs the vectorized kernel
    /// of [`crate::vmath`] (within 1 ulp); f64, the reference type, the standard library's.
    fn exp_shifted_slice(xs: &mut [Self], shift: Self);
    /// `xs[i] = erf(xs[i])` over a slice (GELU). f32 runs [`crate::vmath`]'s kernel (within
    /// 1.2 ulp); f64 libm's `erf`.
    fn erf_slice(xs: &mut [Self]);
}

impl Float for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INFINITY: Self = f32::NEG_INFINITY;
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn ln(self) -> Self {
        f32::ln(self)
    }
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    fn erf(self) -> Self {
        libm::erff(self)
    }
    fn cos(self) -> Self {
        f32::cos(self)
    }
    fn sin(self) -> Self {
        f32::sin(self)
    }
    fn max(self, o: Self) -> Self {
        f32::max(self, o)
    }
    fn abs(self) -> Self {
        f32::abs(self)
    }
    fn powi(self, n: i32) -> Self {
        f32::powi(self, n)
    }
    fn powf(self, e: Self) -> Self {
        f32::powf(self, e)
    }
    fn exp_shifted_slice(xs: &mut [Self], shift: Self) {
        crate::vmath::exp_shifted_in_place(xs, shift);
    }
    fn erf_slice(xs: &mut [Self]) {
        crate::vmath::erf_in_place(xs);
    }
}

impl Float for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INFINITY: Self = f64::NEG_INFINITY;
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn ln(self) -> Self {
        f64::ln(self)
    }
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    fn erf(self) -> Self {
        libm::erf(self)
    }
    fn cos(self) -> Self {
        f64::cos(self)
    }
    fn sin(self) -> Self {
        f64::sin(self)
    }
    fn max(self, o: Self) -> Self {
        f64::max(self, o)
    }
    fn abs(self) -> Self {
        f64::abs(self)
    }
    fn powi(self, n: i32) -> Self {
        f64::powi(self, n)
    }
    fn powf(self, e: Self) -> Self {
        f64::powf(self, e)
    }
    fn exp_shifted_slice(xs: &mut [Self], shift: Self) {
        xs.iter_mut().for_each(|x| *x = (*x - shift).exp());
    }
    fn erf_slice(xs: &mut [Self]) {
        xs.iter_mut().for_each(|x| *x = libm::erf(*x));
    }
}
