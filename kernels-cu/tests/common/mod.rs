//! Test helpers: a small deterministic PRNG, bf16 helpers, and the devices to run on.
#![allow(dead_code)]

use kernels_cu::{Device, Error};

/// SplitMix64: fresh, reproducible random inputs per test (seeded by the test).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
    pub fn vec_f32(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
    pub fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % n as u64) as u32
    }
}

/// The devices every semantic test runs on: the emulator, plus CUDA device 0 when it opens.
/// With `KERNELS_CU_REQUIRE_GPU=1` a GPU that does not open is a failure.
pub fn devices() -> Vec<Device> {
    let mut v = vec![Device::emulator().expect("the emulator is built into the tests")];
    match Device::cuda(0) {
        Ok(d) => v.push(d),
        Err(e) => {
            if std::env::var("KERNELS_CU_REQUIRE_GPU").is_ok_and(|x| x == "1") {
                panic!("KERNELS_CU_REQUIRE_GPU=1 but CUDA device 0 does not open: {e}");
            }
        }
    }
    v
}

pub fn emulator() -> Device {
    Device::emulator().expect("the emulator is built into the tests")
}

pub fn emulator_error(r: Result<(), Error>) -> String {
    match r {
        Err(Error::Emulator { msg, .. }) => msg,
        other => panic!("expected an emulator error, got {other:?}"),
    }
}
