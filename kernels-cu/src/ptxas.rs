//! The resource gate: `ptxas -v` per kernel and target, parsed into a report.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use crate::sources::{Family, KERNELS};

/// Targets of the resource report.
pub const REPORT_ARCHS: &[&str] = &["sm_80", "sm_90"];
/// The arch-specific target of the families in [`crate::ptx::SM90A_FAMILIES`], reported (and
/// embedded as a cubin) from their sm_90a PTX.
pub const SM90A_ARCH: &str = "sm_90a";

/// What ptxas says about one kernel on one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelResources {
    pub arch: String,
    pub kernel: String,
    pub registers: u32,
    pub shared_bytes: u32,
    pub stack_bytes: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
    /// ptxas serialized the kernel's wgmma.mma_async (its "Potential Performance Loss" note:
    /// the asynchronous pipeline could not be kept, e.g. for lack of registers).
    pub wgmma_serialized: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PtxasError {
    #[error("cannot run ptxas at {path}: {msg}")]
    Run { path: String, msg: String },
    #[error("ptxas failed on {family} for {arch}:\n{log}")]
    Failed {
        family: String,
        arch: String,
        log: String,
    },
    #[error("cannot read ptxas output for {family} ({arch}): {msg}\n{log}")]
    Parse {
        family: String,
        arch: String,
        msg: String,
        log: String,
    },
}

/// Runs `ptxas -v` on the family's PTX for `arch` and parses every kernel's line.
pub fn run(
    ptxas: &Path,
    family: &Family,
    ptx: &str,
    arch: &str,
) -> Result<Vec<KernelResources>, PtxasError> {
    let dir = std::env::temp_dir().join(format!(
        "kernels-cu-ptxas-{}-{}",
        std::process::id(),
        family.name
    ));
    let run_err = |msg: String| PtxasError::Run {
        path: ptxas.display().to_string(),
        msg,
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| run_err(format!("temp dir {}: {e}", dir.display())))?;
    let input = dir.join(format!("{}-{arch}.ptx", family.name));
    std::fs::write(&input, ptx).map_err(|e| run_err(format!("write {}: {e}", input.display())))?;
    let out = Command::new(ptxas)
        .arg("-v")
        .arg(format!("--gpu-name={arch}"))
        .arg(&input)
        .arg("-o")
        .arg(dir.join(format!("{}-{arch}.cubin", family.name)))
        .output()
        .map_err(|e| run_err(e.to_string()))?;
    let _ = std::fs::remove_dir_all(&dir);
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(PtxasError::Failed {
            family: family.name.into(),
            arch: arch.into(),
            log,
        });
    }
    parse(&log, arch).map_err(|msg| PtxasError::Parse {
        family: family.name.into(),
        arch: arch.into(),
        msg,
        log: log.clone(),
    })
}

/// Compiles the family's PTX to a cubin (SASS) for `arch` with ptxas's default optimisation,
/// exactly as the embedded cubins are built (`kernels-cu/cubin/`, see [`crate::cubin`]).
pub fn cubin(ptxas: &Path, family: &Family, ptx: &str, arch: &str) -> Result<Vec<u8>, PtxasError> {
    let dir = std::env::temp_dir().join(format!(
        "kernels-cu-cubin-{}-{}-{arch}",
        std::process::id(),
        family.name
    ));
    let run_err = |msg: String| PtxasError::Run {
        path: ptxas.display().to_string(),
        msg,
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| run_err(format!("temp dir {}: {e}", dir.display())))?;
    let input = dir.join(format!("{}.ptx", family.name));
    let output = dir.join(format!("{}.{arch}.cubin", family.name));
    std::fs::write(&input, ptx).map_err(|e| run_err(format!("write {}: {e}", input.display())))?;
    let out = Command::new(ptxas)
        .arg(format!("--gpu-name={arch}"))
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .output()
        .map_err(|e| run_err(e.to_string()))?;
    let bytes = std::fs::read(&output);
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        return Err(PtxasError::Failed {
            family: family.name.into(),
            arch: arch.into(),
            log: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    bytes.map_err(|e| run_err(format!("read {}: {e}", output.display())))
}

/// Parses `ptxas -v` output: per entry a "Compiling entry function 'k'" line, then
/// "N bytes stack frame, N bytes spill stores, N bytes spill loads" and
/// "Used N registers[, ...][, N bytes smem]".
pub fn parse(log: &str, arch: &str) -> Result<Vec<KernelResources>, String> {
    let mut out: Vec<KernelResources> = Vec::new();
    // Kernels named by a wgmma serialization note (None: the note named no function).
    let mut serialized: Vec<Option<String>> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default();
            out.push(KernelResources {
                arch: arch.into(),
                kernel: name.into(),
                registers: 0,
                shared_bytes: 0,
                stack_bytes: 0,
                spill_stores: 0,
                spill_loads: 0,
                wgmma_serialized: false,
            });
            continue;
        }
        if line.contains("wgmma.mma_async instructions are serialized") {
            serialized.push(
                line.split("function '")
                    .nth(1)
                    .and_then(|r| r.split('\'').next())
                    .map(str::to_string),
            );
            continue;
        }
        let Some(cur) = out.last_mut() else { continue };
        if line.contains("bytes stack frame") {
            cur.stack_bytes = number_before(line, "bytes stack frame")?;
            cur.spill_stores = number_before(line, "bytes spill stores")?;
            cur.spill_loads = number_before(line, "bytes spill loads")?;
        } else if line.contains("Used ") && line.contains("registers") {
            cur.registers = number_before(line, "registers")?;
            if line.contains("bytes smem") {
                cur.shared_bytes = number_before(line, "bytes smem")?;
            }
        }
    }
    if out.is_empty() {
        return Err("no 'Compiling entry function' lines".into());
    }
    for name in serialized {
        for r in out.iter_mut() {
            if name.as_deref().is_none_or(|n| n == r.kernel) {
                r.wgmma_serialized = true;
            }
        }
    }
    Ok(out)
}

fn number_before(line: &str, what: &str) -> Result<u32, String> {
    let idx = line
        .find(what)
        .ok_or_else(|| format!("no '{what}' in: {line}"))?;
    line[..idx]
        .split(|c: char| c == ',' || c == ':' || c.is_whitespace())
        .rfind(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no number before '{what}' in: {line}"))
}

/// The report kept in the repository (`kernels-cu/ptxas-report.txt`): one line per target and
/// kernel, sorted, with the hot flag.
pub fn format_report(ptxas_version: &str, rows: &[KernelResources]) -> String {
    let mut rows = rows.to_vec();
    rows.sort_by(|a, b| (&a.arch, &a.kernel).cmp(&(&b.arch, &b.kernel)));
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# ptxas -v resource report of the embedded PTX (kernels-cu/ptx), {ptxas_version}."
    );
    let _ = writeln!(s, "# Regenerate: scripts/kernels-cu-regen.sh. Hot kernels must not spill or use a stack frame.");
    let _ = writeln!(
        s,
        "{:<6} {:<28} {:>4} {:>10} {:>6} {:>12} {:>11}  hot",
        "arch", "kernel", "regs", "smem_bytes", "stack", "spill_stores", "spill_loads"
    );
    let _ = writeln!(
        s,
        "# (sm_90a rows: the wgmma kernels, from the sm_90a PTX of their family)"
    );
    for r in &rows {
        let hot = KERNELS.iter().any(|k| k.name == r.kernel && k.hot);
        let _ = writeln!(
            s,
            "{:<6} {:<28} {:>4} {:>10} {:>6} {:>12} {:>11}  {}",
            r.arch,
            r.kernel,
            r.registers,
            r.shared_bytes,
            r.stack_bytes,
            r.spill_stores,
            r.spill_loads,
            if hot { "hot" } else { "-" }
        );
    }
    s
}

/// The version line of `ptxas --version` (e.g. "Cuda compilation tools, release 12.4, V12.4.131").
pub fn version(ptxas: &Path) -> Result<String, PtxasError> {
    let out = Command::new(ptxas)
        .arg("--version")
        .output()
        .map_err(|e| PtxasError::Run {
            path: ptxas.display().to_string(),
            msg: e.to_string(),
        })?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains("release"))
        .unwrap_or("ptxas (unknown version)")
        .trim()
        .to_string())
}
