//! Cross-crate tests live in `tests/tests/`; this library holds what they share.

pub use kernels_cu::testing::devices;
