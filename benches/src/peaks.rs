//! Published peak rates of the GPUs the benchmarks report against: dense bf16 tensor-core
//! throughput with fp32 accumulation (our GEMMs and attention accumulate in fp32) and DRAM
//! bandwidth, from the performance model's GPU table (`kernels_cu::perf::gpu`, where the
//! datasheet sources are cited). A benchmark prints its achieved rate as a fraction of these.

use kernels_cu::perf::gpu_for_device;
use kernels_cu::DeviceInfo;

/// Peak rates of one GPU model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Peaks {
    /// Dense bf16 tensor-core TFLOP/s with fp32 accumulation.
    pub bf16_tflops: f64,
    /// DRAM bandwidth in GB/s (10⁹ bytes per second).
    pub hbm_gbps: f64,
}

/// The published peaks of the device, or `None` for a model not in the table (and for the
/// emulator); see [`gpu_for_device`] for how exactly a name must match.
pub fn peak_for(info: &DeviceInfo) -> Option<Peaks> {
    gpu_for_device(info).map(|g| Peaks {
        bf16_tflops: g.bf16_tflops,
        hbm_gbps: g.dram_gbs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernels_cu::BackendKind;

    fn cuda(name: &str, cc: (i32, i32)) -> DeviceInfo {
        DeviceInfo {
            kind: BackendKind::Cuda,
            name: name.to_string(),
            compute_capability: cc,
            total_memory: 80 << 30,
            max_shared_bytes: 227 << 10,
            driver_version: 12080,
        }
    }

    #[test]
    fn known_gpus_by_their_driver_names() {
        let h200 = peak_for(&cuda("NVIDIA H200", (9, 0))).expect("H200 is in the table");
        assert_eq!((h200.bf16_tflops, h200.hbm_gbps), (989.4, 4800.0));
        let h100 = peak_for(&cuda("NVIDIA H100 80GB HBM3", (9, 0))).expect("H100 SXM");
        assert_eq!(h100.hbm_gbps, 3350.0);
        let a100 = peak_for(&cuda("NVIDIA A100-SXM4-80GB", (8, 0))).expect("A100 80GB");
        assert_eq!((a100.bf16_tflops, a100.hbm_gbps), (312.0, 2039.0));
        let ada = peak_for(&cuda("NVIDIA GeForce RTX 4090", (8, 9))).expect("RTX 4090");
        assert_eq!((ada.bf16_tflops, ada.hbm_gbps), (165.2, 1008.0));
        let ampere = peak_for(&cuda("NVIDIA GeForce RTX 3090", (8, 6))).expect("RTX 3090");
        assert_eq!((ampere.bf16_tflops, ampere.hbm_gbps), (71.0, 936.0));
    }

    #[test]
    fn variants_and_unknown_devices_have_no_peak() {
        for (name, cc) in [
            ("NVIDIA H200 NVL", (9, 0)),
            ("NVIDIA H100 PCIe", (9, 0)),
            ("NVIDIA GeForce RTX 3090 Ti", (8, 6)),
            ("NVIDIA A100-SXM4-40GB", (8, 0)),
            ("NVIDIA L4", (8, 9)),
            // A name that does not fit its compute capability is not trusted either.
            ("NVIDIA H200", (8, 0)),
        ] {
            assert_eq!(peak_for(&cuda(name, cc)), None, "{name}");
        }
        let mut emu = cuda("H200", (9, 0));
        emu.kind = BackendKind::Emulator;
        assert_eq!(peak_for(&emu), None, "the emulator has no peak");
    }
}
