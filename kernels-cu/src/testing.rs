//! What every test of device code shares: the devices to run it on.

use crate::Device;

/// The devices a kernel or device-step test runs on: the host emulator always, and CUDA device
/// 0 when it opens. With `KERNELS_CU_REQUIRE_GPU` set to `1` (the GPU check), a GPU that does
/// not open is a failure rather than a silent emulator-only run; otherwise its absence is
/// printed, so a log shows which devices a test covered. The CUDA device poisons its
/// allocations ([`Device::set_poison_allocations`]).
pub fn devices() -> Vec<Device> {
    let mut v = vec![Device::emulator().expect("the emulator is built into the tests")];
    match Device::cuda(0) {
        Ok(d) => {
            // Outputs start as NaN on the GPU as on the emulator: an unwritten element fails
            // the comparison instead of reading a recycled block's old (maybe right) values.
            d.set_poison_allocations(true);
            v.push(d)
        }
        Err(e) if std::env::var("KERNELS_CU_REQUIRE_GPU").is_ok_and(|x| x == "1") => {
            panic!("KERNELS_CU_REQUIRE_GPU=1 but CUDA device 0 does not open: {e}")
        }
        Err(e) => eprintln!("no GPU ({e}): checked on the emulator only"),
    }
    v
}
