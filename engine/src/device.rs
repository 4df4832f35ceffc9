//! Where a tensor lives.

use std::fmt;

/// A compute device. `Cpu` is the reference backend; `Cuda(id)` is a CUDA device of the
/// process-wide registry in [`crate::cuda`]:
///
/// - `Cuda(k)` with `k <` [`Device::CUDA_EMULATOR_BASE`] is the GPU with driver ordinal `k`
///   (opened by [`crate::cuda::open`], or on first use);
/// - `Cuda(Device::CUDA_EMULATOR_BASE + j)` is the `j`-th host emulator instance registered by
///   [`crate::cuda::open_emulator`]; the engine treats it exactly like a GPU (same storage,
///   same launchers), which is how CI tests the CUDA path. It prints as `cuda:emu<j>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(usize),
}

impl Device {
    /// First registry id of emulated CUDA devices; smaller ids are driver ordinals.
    pub const CUDA_EMULATOR_BASE: usize = 1 << 16;

    /// The GPU with driver ordinal `ordinal`, opened (once per process) through the CUDA driver.
    /// An error, never a panic, when there is no driver library, no such GPU or no context.
    pub fn cuda(ordinal: usize) -> crate::Result<Device> {
        crate::cuda::open(ordinal)
    }

    pub fn is_cpu(self) -> bool {
        matches!(self, Device::Cpu)
    }

    pub fn is_cuda(self) -> bool {
        matches!(self, Device::Cuda(_))
    }

    /// True for a registry id of the host emulator (see the type's docs).
    pub fn is_cuda_emulator(self) -> bool {
        matches!(self, Device::Cuda(i) if i >= Self::CUDA_EMULATOR_BASE)
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) if *i >= Self::CUDA_EMULATOR_BASE => {
                write!(f, "cuda:emu{}", i - Self::CUDA_EMULATOR_BASE)
            }
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}
