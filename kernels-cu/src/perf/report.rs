//! Text of the model's predictions: the per-kernel table and the step summary (markdown, so
//! BENCHMARKS.md can keep it as printed).

use super::model::StepEstimate;
use std::fmt::Write as _;

/// A step summary on one GPU.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub gpu: &'static str,
    pub step_ms: f64,
    pub tokens_per_s: f64,
    /// `model_flops / step time / dense bf16 peak`.
    pub mfu: f64,
    pub launches: usize,
    /// The kernel with the largest share of the time, and that share.
    pub top_kernel: &'static str,
    pub top_share: f64,
}

pub fn summary(est: &StepEstimate, tokens: usize, model_flops: f64) -> Summary {
    let t = est.time_us() * 1e-6;
    let rows = est.by_kernel();
    let (top_kernel, top_share) = rows
        .first()
        .map(|r| (r.kernel, r.time_us * 1e-6 / t))
        .unwrap_or(("-", 0.0));
    Summary {
        gpu: est.gpu.key,
        step_ms: t * 1e3,
        tokens_per_s: tokens as f64 / t,
        mfu: model_flops / t / (est.gpu.bf16_tflops * 1e12),
        launches: est.launches.len(),
        top_kernel,
        top_share,
    }
}

/// The per-kernel table, largest time first; `top` rows (0: all).
pub fn kernel_table(est: &StepEstimate, top: usize) -> String {
    let total = est.time_us();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| kernel | launches | time ms | share | TFLOP | GB | blocks/SM (limit) | wave eff. | bound |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---|---:|---|");
    let rows = est.by_kernel();
    let n = if top == 0 {
        rows.len()
    } else {
        top.min(rows.len())
    };
    for r in &rows[..n] {
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} | {:.1} % | {:.2} | {:.2} | {} ({}) | {:.2} | {} |",
            r.kernel,
            r.launches,
            r.time_us / 1e3,
            100.0 * r.time_us / total.max(1e-12),
            r.tensor_flops / 1e12,
            r.bytes / 1e9,
            r.blocks_per_sm,
            r.occupancy_limiter,
            r.wave_efficiency,
            r.bound
        );
    }
    if n < rows.len() {
        let rest: f64 = rows[n..].iter().map(|r| r.time_us).sum();
        let _ = writeln!(
            s,
            "| {} other kernels | {} | {:.2} | {:.1} % | | | | | |",
            rows.len() - n,
            rows[n..].iter().map(|r| r.launches).sum::<usize>(),
            rest / 1e3,
            100.0 * rest / total.max(1e-12)
        );
    }
    s
}

/// Time by bound ("tensor", "tensor+decode", "memory", "launch"), largest first, as
/// `(bound, µs)`; launch gaps are reported under "launch gaps" separately.
pub fn time_by_bound(est: &StepEstimate) -> Vec<(&'static str, f64)> {
    let mut out: Vec<(&'static str, f64)> = Vec::new();
    let mut gaps = 0.0;
    for l in &est.launches {
        let work = l.time_us - est.gpu.launch_gap_us;
        gaps += est.gpu.launch_gap_us;
        match out.iter_mut().find(|(b, _)| *b == l.bound) {
            Some(e) => e.1 += work,
            None => out.push((l.bound, work)),
        }
    }
    out.push(("launch gaps", gaps));
    out.retain(|(_, us)| *us >= 5.0);
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

/// A launch's shape for people: `m x n x k` for the GEMMs, otherwise its grid.
pub fn shape_label(r: &super::trace::LaunchRecord) -> String {
    let name = r.kernel.name;
    if name.starts_with("gemm_bf16_") || name.starts_with("skinny_nt_") {
        format!("{}x{}x{}", r.int(0), r.int(1), r.int(2))
    } else if name.starts_with("nf4_gemm_") {
        format!("{}x{}x{}", r.int(1), r.int(2), r.int(3))
    } else {
        let g = r.grid;
        format!("grid {}x{}x{}", g.x, g.y, g.z)
    }
}

/// One row per distinct launch (kernel and shape), largest total time first: the predicted
/// time of one launch, to set beside a benchmark of that kernel at that shape.
pub fn launch_table(est: &StepEstimate, trace: &[super::trace::LaunchRecord]) -> String {
    let mut rows: Vec<(&'static str, String, usize, f64, &'static str)> = Vec::new();
    for (l, r) in est.launches.iter().zip(trace) {
        let shape = shape_label(r);
        match rows.iter_mut().find(|x| x.0 == l.kernel && x.1 == shape) {
            Some(x) => {
                x.2 += 1;
                x.3 += l.time_us;
            }
            None => rows.push((l.kernel, shape, 1, l.time_us, l.bound)),
        }
    }
    rows.sort_by(|a, b| b.3.total_cmp(&a.3));
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| kernel | shape | launches | predicted µs per launch | bound |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---|");
    for (k, shape, n, t, b) in rows {
        let _ = writeln!(s, "| {k} | {shape} | {n} | {:.1} | {b} |", t / n as f64);
    }
    s
}
