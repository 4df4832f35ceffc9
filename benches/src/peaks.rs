//! Published peak rates of the GPUs the benchmarks report against: dense bf16 tensor-core
//! throughput with fp32 accumulation (our GEMMs and attention accumulate in fp32) and DRAM
//! bandwidth. A benchmark prints its achieved rate as a fraction of these.
//!
//! Datasheet numbers, not measurements; the sources (read 2026-12):
//! - A100-SXM4-80GB: 312 TFLOP/s bf16 dense, 2039 GB/s (NVIDIA A100 datasheet, as tabulated at
//!   glennklockwood.com/garden/processors/A100: bf16 312 matrix / 624 sparse; 80 GB HBM2e
//!   2.039 TB/s).
//! - H100 SXM5 80 GB: 989.4 TFLOP/s bf16 dense (1978.9 with 2:4 sparsity), 3350 GB/s
//!   (glennklockwood.com/garden/processors/h100, from the Hopper whitepaper).
//! - H200 SXM: the H100's GH100 compute, so 989 TFLOP/s bf16 dense, with 4800 GB/s HBM3e
//!   (itkb.uw.cz "NVIDIA H200 vs B300", dense figures; several spec sheets quote 1979 for bf16,
//!   which is the sparse number).
//! - GeForce RTX 4090: 165.2 TFLOP/s bf16 with fp32 accumulation (330.3 with fp16
//!   accumulation or with sparsity), 1008 GB/s GDDR6X (Ada whitepaper figures, tabulated at
//!   gigagpu.com and waredb.com).
//! - GeForce RTX 3090: 71 TFLOP/s bf16 with fp32 accumulation, 936 GB/s (GA102 whitepaper,
//!   appendix A; GeForce parts run fp32-accumulate tensor math at half the 142 TFLOP/s
//!   fp16-accumulate rate). The 71 is the one figure here not confirmed by a second source.

use kernels_cu::{BackendKind, DeviceInfo};

/// Peak rates of one GPU model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Peaks {
    /// Dense bf16 tensor-core TFLOP/s with fp32 accumulation.
    pub bf16_tflops: f64,
    /// DRAM bandwidth in GB/s (10⁹ bytes per second).
    pub hbm_gbps: f64,
}

/// One known model: the CUDA device name with the vendor and brand prefixes removed, and the
/// compute capability that name must come with.
struct Model {
    name: &'static str,
    compute_capability: (i32, i32),
    peaks: Peaks,
}

const MODELS: [Model; 5] = [
    Model {
        name: "A100-SXM4-80GB",
        compute_capability: (8, 0),
        peaks: Peaks {
            bf16_tflops: 312.0,
            hbm_gbps: 2039.0,
        },
    },
    Model {
        // The SXM5 part reports itself as "NVIDIA H100 80GB HBM3"; the PCIe and NVL parts have
        // lower clocks and bandwidth and are not in this table.
        name: "H100 80GB HBM3",
        compute_capability: (9, 0),
        peaks: Peaks {
            bf16_tflops: 989.4,
            hbm_gbps: 3350.0,
        },
    },
    Model {
        name: "H200",
        compute_capability: (9, 0),
        peaks: Peaks {
            bf16_tflops: 989.4,
            hbm_gbps: 4800.0,
        },
    },
    Model {
        name: "RTX 4090",
        compute_capability: (8, 9),
        peaks: Peaks {
            bf16_tflops: 165.2,
            hbm_gbps: 1008.0,
        },
    },
    Model {
        name: "RTX 3090",
        compute_capability: (8, 6),
        peaks: Peaks {
            bf16_tflops: 71.0,
            hbm_gbps: 936.0,
        },
    },
];

/// The model part of a CUDA device name: "NVIDIA GeForce RTX 4090" → "RTX 4090".
fn model_name(device_name: &str) -> &str {
    let n = device_name.trim();
    let n = n.strip_prefix("NVIDIA ").unwrap_or(n);
    n.strip_prefix("GeForce ").unwrap_or(n).trim()
}

/// The published peaks of the device, or `None` for a model not in the table (and for the
/// emulator). The name must match exactly, so variants with other clocks or memory (an
/// "H200 NVL", an "RTX 3090 Ti", a 40 GB A100) get no peak rather than a wrong one.
pub fn peak_for(info: &DeviceInfo) -> Option<Peaks> {
    if info.kind != BackendKind::Cuda {
        return None;
    }
    let name = model_name(&info.name);
    MODELS
        .iter()
        .find(|m| m.name == name && m.compute_capability == info.compute_capability)
        .map(|m| m.peaks)
}

#[cfg(test)]
mod tests {
    use super::*;

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
