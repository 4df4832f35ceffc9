//! The process-wide registry that maps `Device::Cuda(id)` to an opened [`kernels_cu::Device`]
//! and that device's memory counter.
//!
//! Ids below [`Device::CUDA_EMULATOR_BASE`] are driver ordinals, opened once and kept for the
//! life of the process; ids from it up are emulator instances, each registered by
//! [`super::open_emulator`] (or [`super::register`]) under a fresh id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use crate::memory::MemoryCounter;
use crate::{Device, Error, Result};

/// One opened device.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) dev: kernels_cu::Device,
    pub(crate) counter: Arc<MemoryCounter>,
}

fn table() -> &'static RwLock<HashMap<usize, Entry>> {
    static TABLE: OnceLock<RwLock<HashMap<usize, Entry>>> = OnceLock::new();
    TABLE.get_or_init(|| RwLock::new(HashMap::new()))
}

static NEXT_EMULATOR: AtomicUsize = AtomicUsize::new(0);

fn lookup(id: usize) -> Option<Entry> {
    table()
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&id)
        .cloned()
}

/// The GPU with driver ordinal `ordinal`: the registered handle, or a newly opened one.
pub(crate) fn open_ordinal(ordinal: usize) -> Result<Entry> {
    let device = Device::Cuda(ordinal);
    if ordinal >= Device::CUDA_EMULATOR_BASE {
        return Err(Error::DeviceUnavailable {
            device,
            reason: format!(
                "{ordinal} is not a driver ordinal (ids from {} up name emulator instances)",
                Device::CUDA_EMULATOR_BASE
            ),
        });
    }
    if let Some(e) = lookup(ordinal) {
        return Ok(e);
    }
    // Opening loads libcuda at run time; a missing library or GPU is an Err, but a panic in
    // the loader must not take the process down either (the trainer then falls back to the CPU).
    let opened = std::panic::catch_unwind(|| kernels_cu::Device::cuda(ordinal));
    let dev = match opened {
        Ok(Ok(dev)) => dev,
        Ok(Err(e)) => {
            return Err(Error::DeviceUnavailable {
                device,
                reason: e.to_string(),
            })
        }
        Err(_) => {
            return Err(Error::DeviceUnavailable {
                device,
                reason: "the CUDA driver library failed while loading".into(),
            })
        }
    };
    let mut t = table().write().unwrap_or_else(|e| e.into_inner());
    // Another thread may have opened it meanwhile: keep the first handle (one pool per GPU).
    let entry = t.entry(ordinal).or_insert_with(|| Entry {
        dev,
        counter: Arc::new(MemoryCounter::default()),
    });
    Ok(entry.clone())
}

/// Registers an emulator (or any other) device handle under a fresh emulator id.
pub(crate) fn register_emulated(dev: kernels_cu::Device) -> Device {
    let id = Device::CUDA_EMULATOR_BASE + NEXT_EMULATOR.fetch_add(1, Ordering::Relaxed);
    table().write().unwrap_or_else(|e| e.into_inner()).insert(
        id,
        Entry {
            dev,
            counter: Arc::new(MemoryCounter::default()),
        },
    );
    Device::Cuda(id)
}

/// The entry of a CUDA device; a driver ordinal is opened on first use.
pub(crate) fn entry(op: &'static str, device: Device) -> Result<Entry> {
    match device {
        Device::Cpu => Err(Error::invalid(op, "the CPU has no CUDA device handle")),
        Device::Cuda(id) if id >= Device::CUDA_EMULATOR_BASE => {
            lookup(id).ok_or_else(|| Error::DeviceUnavailable {
                device,
                reason: "no emulator is registered under this id \
                         (engine::cuda::open_emulator returns the ids it registers)"
                    .into(),
            })
        }
        Device::Cuda(ordinal) => open_ordinal(ordinal),
    }
}

/// The memory counter of an opened device (never opens one).
pub(crate) fn counter(device: Device) -> Option<Arc<MemoryCounter>> {
    match device {
        Device::Cpu => None,
        Device::Cuda(id) => lookup(id).map(|e| e.counter),
    }
}
