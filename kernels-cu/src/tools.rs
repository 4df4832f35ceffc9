//! Where the gates find NVRTC and ptxas.
//!
//! - `KERNELS_CU_NVRTC`: path of `libnvrtc.so.12` (from the pip wheel nvidia-cuda-nvrtc-cu12).
//! - `KERNELS_CU_PTXAS`: path of `ptxas` (from the pip wheel nvidia-cuda-nvcc-cu12).
//!
//! Without them, the copies that `scripts/install-cuda-tools.sh` unpacks into `<workspace>/.tools`
//! are used when present. `.ci/run` runs that script and exports both variables.

use std::path::PathBuf;

const NVRTC_IN_TOOLS: &str = ".tools/cuda/nvrtc/nvidia/cuda_nvrtc/lib/libnvrtc.so.12";
const PTXAS_IN_TOOLS: &str = ".tools/cuda/nvcc/nvidia/cuda_nvcc/bin/ptxas";

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn find(var: &str, fallback: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let p = workspace_root().join(fallback);
    p.exists().then_some(p)
}

/// Path of libnvrtc, if configured or installed.
pub fn nvrtc_path() -> Option<PathBuf> {
    find("KERNELS_CU_NVRTC", NVRTC_IN_TOOLS)
}

/// Path of ptxas, if configured or installed.
pub fn ptxas_path() -> Option<PathBuf> {
    find("KERNELS_CU_PTXAS", PTXAS_IN_TOOLS)
}

/// True under CI (`CI=true`), where a gate whose tool is missing must fail rather than skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}
