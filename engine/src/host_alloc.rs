//! Keeping freed host memory in the process for the next training step.
//!
//! Every op returns a new buffer, and a training step frees most of what it allocated before
//! the next one allocates the same sizes again. With glibc's default settings, buffers of a
//! few MiB (a `[512, 2048]` MLP activation, a chunk of logits) are either mapped fresh for
//! each allocation or returned to the kernel when the heap's top is trimmed, so every step
//! pays page faults and the kernel's page clearing on first touch: about 4 % of the CPU step's
//! time at one thread (`perf`, BENCHMARKS.md). [`retain_freed_memory`] makes the allocator
//! serve such buffers from its heap and keep freed pages: the process stays at its peak
//! resident size instead of shrinking between steps.

/// Asks the C allocator to serve allocations below 32 MiB from its heap and never to give
/// the heap's freed top back to the kernel. Process-wide; meant for a binary's `main` (the
/// trainer, the step benchmarks). Returns whether the allocator took both settings (only
/// glibc on Linux does; elsewhere this does nothing and returns false).
pub fn retain_freed_memory() -> bool {
    imp::retain_freed_memory()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    use std::ffi::c_int;

    // glibc's <malloc.h>.
    const M_TRIM_THRESHOLD: c_int = -1;
    const M_MMAP_THRESHOLD: c_int = -3;

    extern "C" {
        fn mallopt(param: c_int, value: c_int) -> c_int;
    }

    pub(super) fn retain_freed_memory() -> bool {
        // 32 MiB is the largest mapping threshold glibc accepts on 64-bit targets; setting it
        // also stops glibc from moving the threshold by itself.
        // SAFETY: mallopt only changes allocator parameters; both values are in range.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, c_int::MAX) == 1
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub(super) fn retain_freed_memory() -> bool {
        false
    }
}
