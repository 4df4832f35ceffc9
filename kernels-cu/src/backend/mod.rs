//! The two implementations of [`crate::Backend`].

pub mod cuda;
#[cfg(feature = "emulator")]
pub mod emu;
#[cfg(feature = "emulator")]
mod order_compare;
pub mod pooled;
