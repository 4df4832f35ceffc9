//! Machine code built ahead: one cubin per kernel family for each target architecture
//! (`kernels-cu/cubin/<family>.<arch>.cubin`, ptxas 12.4 from the embedded PTX, kept current by
//! the compile gate and `scripts/kernels-cu-regen.sh`), and the choice of what a device loads.
//!
//! Why both: a cubin for the GPU's own architecture needs no JIT, so it loads on every driver
//! of the CUDA 12 family (R525 and newer, through CUDA's minor-version compatibility). The PTX
//! (ISA 8.4, from NVRTC 12.4) is the fallback for GPUs without a cubin here (newer
//! architectures); the driver JIT-compiles it, and a driver can only JIT a PTX ISA it knows:
//! 8.4 needs R550 or newer.

/// Architectures with an embedded cubin: (major, minor, ptxas name).
pub const CUBIN_ARCHS: &[(i32, i32, &str)] = &[
    (8, 0, "sm_80"),
    (8, 6, "sm_86"),
    (8, 9, "sm_89"),
    (9, 0, "sm_90"),
];

/// `cuDriverGetVersion` of the oldest driver that loads the cubins (CUDA 12.0: R525).
pub const MIN_DRIVER_CUBIN: i32 = 12000;
/// `cuDriverGetVersion` of the oldest driver that JIT-compiles the embedded PTX (ISA 8.4,
/// CUDA 12.4: R550).
pub const MIN_DRIVER_PTX: i32 = 12040;

/// The image a device of compute capability `cc` loads for `family` where it differs from the
/// common choice: on 9.0 exactly, the family's sm_90a cubin (with the wgmma kernels), if it has
/// one. sm_90a code runs on compute capability 9.0 only.
pub fn family_image(family: &str, cc: (i32, i32), common: ModuleImage) -> ModuleImage {
    if cc == (9, 0) && matches!(common, ModuleImage::Cubin(_)) && cubin(family, "sm_90a").is_some()
    {
        ModuleImage::Cubin("sm_90a")
    } else {
        common
    }
}

/// What a device loads for every kernel family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleImage {
    /// The cubin built for this architecture (ptxas name, e.g. `"sm_86"`).
    Cubin(&'static str),
    /// The PTX, JIT-compiled by the driver.
    Ptx,
}

/// Chooses the image for a GPU of compute capability `cc` under a driver reporting
/// `driver_version` (`cuDriverGetVersion`, e.g. 12020 for CUDA 12.2). SASS runs on GPUs of the
/// same major architecture with an equal or higher minor version, so sm_87 uses the sm_86
/// cubin; a newer major architecture takes the PTX. The error says what is needed.
pub fn select_image(cc: (i32, i32), driver_version: i32) -> Result<ModuleImage, String> {
    let (major, minor) = cc;
    if (major, minor) < (8, 0) {
        return Err(format!(
            "compute capability {major}.{minor} is not supported: the kernels use bf16 mma.sync, \
             ldmatrix and cp.async, which need sm_80 (Ampere) or newer"
        ));
    }
    if driver_version < MIN_DRIVER_CUBIN {
        return Err(format!(
            "the NVIDIA driver supports CUDA {} only; these kernels need a CUDA 12 driver \
             (R525 or newer; R550 or newer for GPUs without a prebuilt cubin)",
            cuda_version(driver_version)
        ));
    }
    let cubin = CUBIN_ARCHS
        .iter()
        .filter(|&&(ma, mi, _)| ma == major && mi <= minor)
        .max_by_key(|&&(_, mi, _)| mi);
    if let Some(&(_, _, arch)) = cubin {
        return Ok(ModuleImage::Cubin(arch));
    }
    if driver_version < MIN_DRIVER_PTX {
        return Err(format!(
            "no prebuilt cubin for compute capability {major}.{minor} (built: sm_80, sm_86, \
             sm_89, sm_90), and the driver (CUDA {}) cannot JIT-compile the embedded PTX \
             (ISA 8.4): update to R550 or newer",
            cuda_version(driver_version)
        ));
    }
    Ok(ModuleImage::Ptx)
}

fn cuda_version(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

macro_rules! cubin_table {
    ($($fam:literal),*) => {
        /// The embedded cubin of `family` for `arch` (a ptxas name from [`CUBIN_ARCHS`]).
        pub fn cubin(family: &str, arch: &str) -> Option<&'static [u8]> {
            match (family, arch) {
                $(
                    ($fam, "sm_80") => Some(include_bytes!(concat!("../cubin/", $fam, ".sm_80.cubin"))),
                    ($fam, "sm_86") => Some(include_bytes!(concat!("../cubin/", $fam, ".sm_86.cubin"))),
                    ($fam, "sm_89") => Some(include_bytes!(concat!("../cubin/", $fam, ".sm_89.cubin"))),
                    ($fam, "sm_90") => Some(include_bytes!(concat!("../cubin/", $fam, ".sm_90.cubin"))),
                )*
                // The families of crate::ptx::SM90A_FAMILIES, built from their sm_90a PTX.
                ("gemm", "sm_90a") => Some(include_bytes!("../cubin/gemm.sm_90a.cubin")),
                _ => None,
            }
        }
    };
}

cubin_table!(
    "adamw",
    "attention",
    "convert",
    "cross_entropy",
    "decode",
    "dropout",
    "elementwise",
    "gemm",
    "layernorm",
    "pointwise",
    "reduce",
    "rope",
    "selftest",
    "skinny"
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FAMILIES;

    #[test]
    fn each_target_architecture_loads_its_own_cubin() {
        for &(ma, mi, arch) in CUBIN_ARCHS {
            assert_eq!(select_image((ma, mi), 12020), Ok(ModuleImage::Cubin(arch)));
        }
    }

    #[test]
    fn minor_revisions_use_the_closest_lower_cubin_of_their_major() {
        assert_eq!(select_image((8, 7), 12000), Ok(ModuleImage::Cubin("sm_86")));
        assert_eq!(select_image((8, 8), 12000), Ok(ModuleImage::Cubin("sm_86")));
        assert_eq!(select_image((9, 2), 12000), Ok(ModuleImage::Cubin("sm_90")));
    }

    #[test]
    fn newer_architectures_take_the_ptx_on_a_driver_that_can_jit_it() {
        assert_eq!(select_image((10, 0), 12040), Ok(ModuleImage::Ptx));
        assert_eq!(select_image((12, 0), 12080), Ok(ModuleImage::Ptx));
        let err = select_image((10, 0), 12020).unwrap_err();
        assert!(err.contains("R550") && err.contains("CUDA 12.2"), "{err}");
    }

    #[test]
    fn old_drivers_and_old_gpus_are_refused_with_what_is_needed() {
        let err = select_image((8, 0), 11080).unwrap_err();
        assert!(err.contains("CUDA 11.8") && err.contains("R525"), "{err}");
        let err = select_image((7, 5), 12040).unwrap_err();
        assert!(err.contains("7.5") && err.contains("sm_80"), "{err}");
        // R535 (CUDA 12.2) loads the cubins, which is the point of embedding them.
        assert_eq!(select_image((8, 0), 12020), Ok(ModuleImage::Cubin("sm_80")));
    }

    #[test]
    fn families_with_wgmma_load_their_sm_90a_cubin_on_9_0_only() {
        for &fam in crate::ptx::SM90A_FAMILIES {
            let c = cubin(fam, "sm_90a").expect("an sm_90a cubin");
            assert_eq!(&c[..4], b"\x7fELF", "{fam}");
            assert_eq!(
                family_image(fam, (9, 0), ModuleImage::Cubin("sm_90")),
                ModuleImage::Cubin("sm_90a")
            );
            assert_eq!(
                family_image(fam, (9, 2), ModuleImage::Cubin("sm_90")),
                ModuleImage::Cubin("sm_90")
            );
            assert_eq!(
                family_image(fam, (8, 0), ModuleImage::Cubin("sm_80")),
                ModuleImage::Cubin("sm_80")
            );
        }
        assert_eq!(
            family_image("elementwise", (9, 0), ModuleImage::Cubin("sm_90")),
            ModuleImage::Cubin("sm_90")
        );
    }

    #[test]
    fn every_family_has_a_cubin_for_every_target() {
        for fam in FAMILIES {
            for &(_, _, arch) in CUBIN_ARCHS {
                let c = cubin(fam.name, arch)
                    .unwrap_or_else(|| panic!("no cubin for {} on {arch}", fam.name));
                // An ELF image (what cuModuleLoadData takes for SASS).
                assert_eq!(&c[..4], b"\x7fELF", "{} {arch}", fam.name);
            }
        }
    }
}
