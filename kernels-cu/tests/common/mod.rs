//! Test helpers: the shared PRNG and device list, the emulator, its error messages.
#![allow(dead_code)]

use kernels_cu::{Device, Error};

pub use engine::testing::Rng;
pub use kernels_cu::testing::devices;

pub fn emulator() -> Device {
    Device::emulator().expect("the emulator is built into the tests")
}

pub fn emulator_error(r: Result<(), Error>) -> String {
    match r {
        Err(Error::Emulator { msg, .. }) => msg,
        other => panic!("expected an emulator error, got {other:?}"),
    }
}
