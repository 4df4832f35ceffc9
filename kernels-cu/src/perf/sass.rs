//! SASS instruction mix of a kernel's main loop: the embedded PTX compiled to a cubin by
//! `ptxas`, disassembled by `nvdisasm`, the loop with the most tensor-core instructions found
//! from its backward branch, and its instructions counted by class.
//!
//! The issue-slot bound: an SM issues one warp instruction per clock per scheduler (4 per
//! SM); its tensor cores finish one `HMMA.16816` (8192 FLOPs) every `8192 / (bf16 peak / SMs /
//! clock)` clocks, which leaves `4 ·` that many issue slots per HMMA (8 on Hopper, 16 on
//! Ampere). A loop that issues more instructions than that per HMMA cannot keep the tensor
//! cores busy: the fraction is `min(1, slots per HMMA / (instructions / HMMA))`.
//!
//! The count is static: every instruction of the loop body once, except nested loops without
//! products (the tile loaders' element-wise fallbacks); forward branches not taken in the
//! common case still count, so it is an upper bound on what one iteration issues.
//!
//! Tools: `KERNELS_CU_PTXAS` and `KERNELS_CU_NVDISASM`, or their places under `.tools/cuda`
//! where `scripts/install-cuda-tools.sh` unpacks them (nvdisasm from the pip wheel
//! `nvidia-cuda-nvdisasm`).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::gpu::Gpu;

/// One disassembled instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instr {
    /// Opcode with modifiers, e.g. `HMMA.16816.F32.BF16`.
    pub opcode: String,
    /// The label a branch goes to.
    pub target: Option<String>,
}

/// A function's instructions and where its labels point (label, index of the next
/// instruction).
#[derive(Debug, Clone, Default)]
pub struct Function {
    pub name: String,
    pub instrs: Vec<Instr>,
    pub labels: Vec<(String, usize)>,
}

/// Parses `nvdisasm -c` output into functions.
pub fn parse(sass: &str) -> Vec<Function> {
    let mut out: Vec<Function> = Vec::new();
    for line in sass.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix(".text.") {
            if let Some(name) = rest.strip_suffix(':') {
                out.push(Function {
                    name: name.to_string(),
                    ..Function::default()
                });
                continue;
            }
        }
        let Some(f) = out.last_mut() else { continue };
        if t.starts_with(".L") && t.ends_with(':') {
            f.labels
                .push((t.trim_end_matches(':').to_string(), f.instrs.len()));
            continue;
        }
        // `/*0c40*/   @!P0 HMMA.16816.F32.BF16 R24, R64, R96, R24 ;`
        let Some(rest) = t.strip_prefix("/*") else {
            continue;
        };
        let Some((_, body)) = rest.split_once("*/") else {
            continue;
        };
        let mut words = body.split_whitespace().peekable();
        if words.peek().is_some_and(|w| w.starts_with('@')) {
            words.next();
        }
        let Some(opcode) = words.next() else { continue };
        let opcode = opcode.trim_end_matches(';').to_string();
        let target = body
            .split_once("`(")
            .and_then(|(_, r)| r.split_once(')'))
            .map(|(l, _)| l.to_string());
        out.push_instr(opcode, target);
    }
    out
}

trait PushInstr {
    fn push_instr(&mut self, opcode: String, target: Option<String>);
}

impl PushInstr for Vec<Function> {
    fn push_instr(&mut self, opcode: String, target: Option<String>) {
        if let Some(f) = self.last_mut() {
            f.instrs.push(Instr { opcode, target });
        }
    }
}

/// Instruction classes of a loop body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mix {
    pub instructions: usize,
    /// Tensor-core products (`HMMA`, `HGMMA`).
    pub mma: usize,
    /// `LDSM` (ldmatrix).
    pub ldmatrix: usize,
    /// Other shared-memory loads and stores (`LDS`, `STS`).
    pub shared: usize,
    /// Global loads, stores and asynchronous copies (`LDG`, `STG`, `LDGSTS`).
    pub global: usize,
    /// Barriers and async-copy waits (`BAR`, `LDGDEPBAR`, `DEPBAR`).
    pub sync: usize,
    /// Floating-point arithmetic and conversions (`F*`, `HADD2`, `HMUL2`, `HFMA2`, `F2F`, ...).
    pub float: usize,
    /// Integer, address and bit arithmetic (`IMAD`, `IADD3`, `LEA`, `SHF`, `LOP3`, `PRMT`, ...).
    pub integer: usize,
    /// Everything else (branches, moves, predicates).
    pub other: usize,
}

impl Mix {
    fn add(&mut self, op: &str) {
        self.instructions += 1;
        let head = op.split('.').next().unwrap_or(op);
        match head {
            // `HFMA2.MMA Rd, -RZ, RZ, ...` is ptxas's idiom for moving a constant.
            _ if op.starts_with("HFMA2.MMA") => self.other += 1,
            "HMMA" | "HGMMA" => self.mma += 1,
            "LDSM" => self.ldmatrix += 1,
            "LDS" | "STS" => self.shared += 1,
            "LDG" | "STG" | "LDGSTS" => self.global += 1,
            "BAR" | "LDGDEPBAR" | "DEPBAR" => self.sync += 1,
            h if h.starts_with('F')
                || h.starts_with("HADD")
                || h.starts_with("HMUL")
                || h.starts_with("HFMA")
                || h == "MUFU" =>
            {
                self.float += 1
            }
            "IMAD" | "IADD3" | "LEA" | "SHF" | "LOP3" | "PRMT" | "ISETP" | "IABS" | "IMNMX"
            | "SEL" | "I2F" | "F2I" | "POPC" | "FLO" | "BMSK" | "SGXT" | "LEA.HI" => {
                self.integer += 1
            }
            _ => self.other += 1,
        }
    }

    /// Instructions issued per tensor-core product (∞ without products).
    pub fn per_mma(&self) -> f64 {
        if self.mma == 0 {
            f64::INFINITY
        } else {
            self.instructions as f64 / self.mma as f64
        }
    }

    /// Fraction of `gpu`'s tensor peak the loop's issue rate allows (see the module docs).
    pub fn issue_bound(&self, gpu: &Gpu) -> f64 {
        let flops_per_clock_sm =
            gpu.bf16_tflops * 1e12 / (gpu.sms as f64 * gpu.boost_mhz as f64 * 1e6);
        let slots_per_mma = 4.0 * 8192.0 / flops_per_clock_sm;
        (slots_per_mma / self.per_mma()).min(1.0)
    }
}

/// Every loop of `f` as the instruction range `start..=end` of a backward branch.
fn loops(f: &Function) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (j, ins) in f.instrs.iter().enumerate() {
        let Some(target) = &ins.target else { continue };
        if let Some(&(_, start)) = f.labels.iter().find(|(l, _)| l == target) {
            if start <= j {
                out.push((start, j));
            }
        }
    }
    out
}

fn mix_of(f: &Function, range: std::ops::RangeInclusive<usize>, skip: &[(usize, usize)]) -> Mix {
    let mut mix = Mix::default();
    for i in range {
        if !skip.iter().any(|&(a, b)| a <= i && i <= b) {
            mix.add(&f.instrs[i].opcode);
        }
    }
    mix
}

/// The instruction mix of `f`'s loop with the most tensor-core products (the innermost such
/// loop when several tie; without products, its largest loop), leaving out the loops nested
/// in it that issue no products: those are the element-wise fallbacks of the tile loaders,
/// taken only for unaligned leading dimensions. `None` without loops.
pub fn main_loop(f: &Function) -> Option<Mix> {
    let ((a, b), cold) = main_loop_range(f)?;
    Some(mix_of(f, a..=b, &cold))
}

/// Instructions before `f`'s main loop ([`main_loop`]) in program order: what a warp issues
/// once before its k-loop, at most (code that a branch skips is counted as if run).
pub fn setup_before_main_loop(f: &Function) -> Option<usize> {
    Some(main_loop_range(f)?.0 .0)
}

/// The main loop's instruction range and the product-free loops nested in it.
#[allow(clippy::type_complexity)]
fn main_loop_range(f: &Function) -> Option<((usize, usize), Vec<(usize, usize)>)> {
    let all = loops(f);
    let mut best: Option<(usize, usize, (usize, usize))> = None; // (products, length, range)
    for &(a, b) in &all {
        let mma = mix_of(f, a..=b, &[]).mma;
        let len = b + 1 - a;
        let better = match best {
            None => true,
            Some((m, l, _)) => mma > m || (mma == m && if m > 0 { len < l } else { len > l }),
        };
        if better {
            best = Some((mma, len, (a, b)));
        }
    }
    let (_, _, (a, b)) = best?;
    let cold: Vec<(usize, usize)> = all
        .iter()
        .copied()
        .filter(|&(x, y)| a <= x && y <= b && (x, y) != (a, b))
        .filter(|&(x, y)| mix_of(f, x..=y, &[]).mma == 0)
        .collect();
    Some(((a, b), cold))
}

fn tool(env: &str, rel: &str) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(env) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    root.is_file().then_some(root)
}

/// `ptxas` (KERNELS_CU_PTXAS or `.tools/cuda`).
pub fn ptxas() -> Option<PathBuf> {
    tool(
        "KERNELS_CU_PTXAS",
        ".tools/cuda/nvcc/nvidia/cuda_nvcc/bin/ptxas",
    )
}

/// `nvdisasm` (KERNELS_CU_NVDISASM or `.tools/cuda`).
pub fn nvdisasm() -> Option<PathBuf> {
    tool(
        "KERNELS_CU_NVDISASM",
        ".tools/cuda/nvdisasm/nvidia/cu13/bin/nvdisasm",
    )
}

/// Compiles `ptx` for `arch` and disassembles it (`nvdisasm -c`).
pub fn disassemble(ptxas: &Path, nvdisasm: &Path, ptx: &str, arch: &str) -> Result<String, String> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("kernels-cu-sass-{}-{n}-{arch}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (src, cubin) = (dir.join("k.ptx"), dir.join("k.cubin"));
    std::fs::write(&src, ptx).map_err(|e| format!("{}: {e}", src.display()))?;
    let run = |c: &mut Command, what: &str| -> Result<Vec<u8>, String> {
        let o = c.output().map_err(|e| format!("cannot run {what}: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "{what} failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        Ok(o.stdout)
    };
    run(
        Command::new(ptxas)
            .arg(format!("-arch={arch}"))
            .arg("-o")
            .arg(&cubin)
            .arg(&src),
        "ptxas",
    )?;
    let out = run(Command::new(nvdisasm).arg("-c").arg(&cubin), "nvdisasm")?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(String::from_utf8_lossy(&out).into_owned())
}
