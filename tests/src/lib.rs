//! Cross-crate tests live in `tests/tests/`; this library holds what they share.

use kernels_cu::Device;

/// The devices a kernel test runs on: the host emulator always, and GPU 0 when it opens. With
/// `KERNELS_CU_REQUIRE_GPU` set (the GPU check), a GPU that does not open is a failure rather
/// than a silent emulator-only run.
pub fn devices() -> Vec<Device> {
    let mut v = vec![Device::emulator().expect("the emulator is built into the tests")];
    match Device::cuda(0) {
        Ok(d) => v.push(d),
        Err(e) if std::env::var_os("KERNELS_CU_REQUIRE_GPU").is_some() => {
            panic!("KERNELS_CU_REQUIRE_GPU is set but no GPU: {e}")
        }
        Err(_) => {}
    }
    v
}
