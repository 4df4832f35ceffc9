//! The two implementations of [`crate::Backend`].

pub mod cuda;
#[cfg(feature = "emulator")]
pub mod emu;
pub mod pooled;
