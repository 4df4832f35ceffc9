//! Gate 1 (compile) and gate 2 (resources).
//!
//! Tools: `KERNELS_CU_NVRTC` (libnvrtc.so.12) and `KERNELS_CU_PTXAS` (ptxas), or the copies that
//! scripts/install-cuda-tools.sh puts in .tools/. Without a tool a gate prints that it was
//! skipped; under CI (`CI=true`) it fails instead. `KERNELS_CU_UPDATE=1` rewrites the embedded
//! PTX and the ptxas report instead of comparing (scripts/kernels-cu-regen.sh).

use std::path::PathBuf;

use kernels_cu::nvrtc::Nvrtc;
use kernels_cu::ptx::{sm90a_ptx, PTX_ARCH, SM90A_FAMILIES, SM90A_PTX_ARCH};
use kernels_cu::{ptxas, tools, FAMILIES, KERNELS};

/// Targets every kernel must compile for.
const TARGETS: &[&str] = &["sm_80", "sm_86", "sm_89", "sm_90"];

fn updating() -> bool {
    std::env::var("KERNELS_CU_UPDATE").is_ok_and(|v| v == "1")
}

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The tool's path, or None after printing that the gate is skipped (a failure under CI).
fn tool(name: &str, var: &str, path: Option<PathBuf>) -> Option<PathBuf> {
    match path {
        Some(p) => Some(p),
        None if tools::in_ci() => panic!(
            "{name} not found under CI: set {var} (scripts/install-cuda-tools.sh installs it; .ci/run exports it)"
        ),
        None => {
            eprintln!("SKIPPED: {name} not found (set {var} or run scripts/install-cuda-tools.sh)");
            None
        }
    }
}

fn nvrtc() -> Option<Nvrtc> {
    let path = tool("NVRTC", "KERNELS_CU_NVRTC", tools::nvrtc_path())?;
    Some(Nvrtc::load(&path).unwrap_or_else(|e| panic!("{e}")))
}

#[test]
fn gate1_every_family_compiles_for_every_target_without_warnings() {
    let Some(nvrtc) = nvrtc() else { return };
    eprintln!(
        "NVRTC {:?} from {}",
        nvrtc.version(),
        nvrtc.path().display()
    );
    for fam in FAMILIES {
        for arch in TARGETS {
            let out = nvrtc.compile(fam, arch).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                out.log.is_empty(),
                "{} for {arch}: NVRTC warnings:\n{}",
                fam.file,
                out.log
            );
            for k in KERNELS.iter().filter(|k| k.family.name == fam.name) {
                assert_eq!(
                    out.ptx.contains(&format!(".entry {}(", k.name)),
                    !k.sm90a_only(),
                    "{} for {arch}: entry {} (sm_90a-only: {})",
                    fam.file,
                    k.name,
                    k.sm90a_only()
                );
            }
            // wgmma exists only on sm_90a: no portable module may contain it.
            assert!(
                !out.ptx.contains("wgmma"),
                "{} for {arch} contains wgmma",
                fam.file
            );
        }
    }
    // The families with sm_90a code: every entry, the wgmma kernels included.
    for fam in FAMILIES.iter().filter(|f| SM90A_FAMILIES.contains(&f.name)) {
        let out = nvrtc
            .compile(fam, "sm_90a")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.log.is_empty(),
            "{} for sm_90a: NVRTC warnings:\n{}",
            fam.file,
            out.log
        );
        for k in KERNELS.iter().filter(|k| k.family.name == fam.name) {
            assert!(
                out.ptx.contains(&format!(".entry {}(", k.name)),
                "{} for sm_90a: no entry {}",
                fam.file,
                k.name
            );
        }
        assert!(
            out.ptx.contains("wgmma.mma_async"),
            "{} for sm_90a: no wgmma",
            fam.file
        );
    }
}

#[test]
fn gate1_embedded_ptx_is_current() {
    let Some(nvrtc) = nvrtc() else { return };
    let mut stale = Vec::new();
    for fam in FAMILIES {
        let out = nvrtc
            .compile(fam, PTX_ARCH)
            .unwrap_or_else(|e| panic!("{e}"));
        let path = crate_dir().join("ptx").join(format!("{}.ptx", fam.name));
        if updating() {
            std::fs::write(&path, &out.ptx)
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        } else if out.ptx != fam.ptx {
            stale.push(path.display().to_string());
        }
    }
    for fam in FAMILIES.iter().filter(|f| SM90A_FAMILIES.contains(&f.name)) {
        let out = nvrtc
            .compile(fam, SM90A_PTX_ARCH)
            .unwrap_or_else(|e| panic!("{e}"));
        let path = crate_dir()
            .join("ptx")
            .join(format!("{}.sm_90a.ptx", fam.name));
        if updating() {
            std::fs::write(&path, &out.ptx)
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        } else if Some(out.ptx.as_str()) != sm90a_ptx(fam.name) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "embedded PTX differs from the sources: {stale:?}; run scripts/kernels-cu-regen.sh"
    );
}

#[test]
fn gate2_hot_kernels_do_not_spill_and_the_report_is_current() {
    let Some(ptxas_path) = tool("ptxas", "KERNELS_CU_PTXAS", tools::ptxas_path()) else {
        return;
    };
    let version = ptxas::version(&ptxas_path).unwrap_or_else(|e| panic!("{e}"));
    let mut rows = Vec::new();
    for fam in FAMILIES {
        for arch in ptxas::REPORT_ARCHS {
            rows.extend(
                ptxas::run(&ptxas_path, fam, fam.ptx, arch).unwrap_or_else(|e| panic!("{e}")),
            );
        }
    }
    for fam in FAMILIES.iter().filter(|f| SM90A_FAMILIES.contains(&f.name)) {
        let ptx = sm90a_ptx(fam.name).expect("an sm_90a family has an sm_90a PTX");
        rows.extend(
            ptxas::run(&ptxas_path, fam, ptx, ptxas::SM90A_ARCH).unwrap_or_else(|e| panic!("{e}")),
        );
    }
    for r in &rows {
        // The wgmma pipeline must survive register allocation: a serialized wgmma waits for
        // each product before the next, which the performance model does not assume.
        assert!(
            !r.wgmma_serialized,
            "{} on {}: ptxas serialized its wgmma.mma_async",
            r.kernel, r.arch
        );
    }
    for k in KERNELS {
        let archs: &[&str] = if k.sm90a_only() {
            &[ptxas::SM90A_ARCH]
        } else {
            ptxas::REPORT_ARCHS
        };
        for arch in archs {
            let r = rows
                .iter()
                .find(|r| r.kernel == k.name && r.arch == *arch)
                .unwrap_or_else(|| panic!("ptxas reported nothing for {} on {arch}", k.name));
            if k.hot {
                assert!(
                    r.spill_stores == 0 && r.spill_loads == 0 && r.stack_bytes == 0,
                    "hot kernel {} on {arch}: {} bytes stack, {} / {} bytes spill stores / loads",
                    k.name,
                    r.stack_bytes,
                    r.spill_stores,
                    r.spill_loads
                );
            }
        }
    }
    let report = ptxas::format_report(&version, &rows);
    let path = crate_dir().join("ptxas-report.txt");
    if updating() {
        std::fs::write(&path, &report).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        return;
    }
    let kept = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        kept,
        report,
        "{} is stale; run scripts/kernels-cu-regen.sh",
        path.display()
    );
}

#[test]
fn ptxas_output_parser_reads_every_field() {
    let log = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'k1' for 'sm_90'\n\
ptxas info    : Function properties for k1\n\
    16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n\
ptxas info    : Used 255 registers, used 1 barriers, 4096 bytes smem, 400 bytes cmem[0]\n\
ptxas info    : Compiling entry function 'k2' for 'sm_90'\n\
ptxas info    : Function properties for k2\n\
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 12 registers, used 0 barriers, 356 bytes cmem[0]\n";
    let rows = ptxas::parse(log, "sm_90").unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (
            rows[0].kernel.as_str(),
            rows[0].registers,
            rows[0].shared_bytes,
            rows[0].stack_bytes,
            rows[0].spill_stores,
            rows[0].spill_loads
        ),
        ("k1", 255, 4096, 16, 8, 4)
    );
    assert_eq!(
        (
            rows[1].kernel.as_str(),
            rows[1].registers,
            rows[1].shared_bytes
        ),
        ("k2", 12, 0)
    );
    assert!(ptxas::parse("garbage", "sm_80").is_err());
}

#[test]
fn gate1_reports_errors_and_warnings() {
    let Some(nvrtc) = nvrtc() else { return };
    let broken = kernels_cu::Family {
        name: "broken",
        file: "cuda/broken.cu",
        source: "#include \"common.cuh\"\nextern \"C\" __global__ void k(float* x) { x[0] = undefined_name; }\n",
        ptx: "",
    };
    let err = nvrtc.compile(&broken, "sm_80").unwrap_err().to_string();
    assert!(
        err.contains("cuda/broken.cu") && err.contains("undefined_name"),
        "{err}"
    );
    let warns = kernels_cu::Family {
        name: "warns",
        file: "cuda/warns.cu",
        source: "#include \"common.cuh\"\nextern \"C\" __global__ void k(float* x) { int unused = 3; x[0] = 1.0f; }\n",
        ptx: "",
    };
    let out = nvrtc.compile(&warns, "sm_80").unwrap();
    assert!(
        out.log.contains("unused"),
        "expected a warning in the log, got {:?}",
        out.log
    );
}

#[test]
fn gate3_embedded_cubins_are_current() {
    let Some(ptxas_path) = tool("ptxas", "KERNELS_CU_PTXAS", tools::ptxas_path()) else {
        return;
    };
    let mut stale = Vec::new();
    for fam in FAMILIES {
        let mut images: Vec<(&str, &str)> = kernels_cu::cubin::CUBIN_ARCHS
            .iter()
            .map(|&(_, _, arch)| (arch, fam.ptx))
            .collect();
        if let Some(ptx) = sm90a_ptx(fam.name) {
            images.push((ptxas::SM90A_ARCH, ptx));
        }
        for (arch, ptx) in images {
            let built = ptxas::cubin(&ptxas_path, fam, ptx, arch).unwrap_or_else(|e| panic!("{e}"));
            let path = crate_dir()
                .join("cubin")
                .join(format!("{}.{arch}.cubin", fam.name));
            if updating() {
                std::fs::write(&path, &built)
                    .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            } else if kernels_cu::cubin::cubin(fam.name, arch) != Some(built.as_slice()) {
                stale.push(path.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "embedded cubins differ from ptxas on the embedded PTX: {stale:?}; run scripts/kernels-cu-regen.sh"
    );
}
