//! Calibration: the model's predictions for published measurements of code like ours, and
//! the error. The references (all from the sources named per row; none measured by this
//! project):
//!
//! - bf16 GEMM 8192³ on an H200 through PyTorch (cuBLAS): 788 TFLOP/s on random data (an
//!   observed run, mean of ten products after three warm-ups, 2026-10-28; not measured by this
//!   project's code). cuBLAS
//!   uses Hopper's `wgmma`, our kernels `mma.sync`: the model (which is for `mma.sync` code)
//!   predicts less, by the gap between the two paths.
//! - FlashAttention-2 on A100-80GB: forward up to ~230 TFLOP/s at head dim 128, long
//!   sequences, non-causal (FA2 paper, arXiv 2307.08691: 73 % of peak).
//! - FlashAttention-2 on H100 SXM5, from the FA3 paper's figures (arXiv 2407.08608; batch x
//!   sequence = 16k tokens, hidden 2048, bf16; the non-causal panels): forward head dim 64
//!   282 (512) and 324 (16k), head dim 128 309 and 370; backward head dim 64 198 and 291,
//!   head dim 128 214 and 322 TFLOP/s. FA2 is `mma.sync` code with the softmax between the
//!   products, as ours is.
//!
//! The model's attention rows cost FA2's own work (forward: 2 products per score tile;
//! backward: 5, the FA2 count; one exponential per score in each), not our kernels' (whose
//! backward recomputes the scores in two kernels), so that the error measures the model.
//! TFLOP/s use the FA convention: 4·s²·d per (batch, head) forward, 2.5x that backward.

use super::cost::Cost;
use super::gpu::{gpu, Gpu};
use super::model::times;

/// One published measurement and the model's prediction for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    pub what: String,
    pub gpu: &'static str,
    pub published_tflops: f64,
    pub predicted_tflops: f64,
    pub source: &'static str,
}

impl Reference {
    /// (predicted − published) / published.
    pub fn error(&self) -> f64 {
        self.predicted_tflops / self.published_tflops - 1.0
    }
}

const CUBLAS_H200: &str = "observed cuBLAS run on an H200 via PyTorch (2026-10-28)";
const FA2_PAPER: &str = "FA2 paper (arXiv 2307.08691)";
const FA3_PAPER: &str = "FA3 paper figures, FA2 curve (arXiv 2407.08608)";

/// fp32 work per score in an attention backward: recompute P (scale-subtract, exp argument),
/// dP − D, ×P, ×scale, two bf16 packs for the P and dS operands, their shared-memory stores.
pub const BWD_FP32_PER_SCORE: f64 = 8.0;

/// Predicted TFLOP/s of a square bf16 GEMM with our tile shape (128 x 128 blocks).
fn gemm_tflops(g: &Gpu, n: f64) -> f64 {
    let blocks = (n / 128.0).ceil() * (n / 128.0).ceil();
    let flops = 2.0 * n * n * n;
    let c = Cost {
        tensor_flops: flops,
        bytes: 6.0 * n * n,
        formula: "gemm",
        ..Cost::default()
    };
    let t = times(g, &c, blocks as u64).bound() + g.launch_gap_us * 1e-6;
    flops / t / 1e12
}

/// Predicted TFLOP/s (FA convention) of FlashAttention-2 forward or backward at 16k tokens
/// (batch = 16384 / seq), hidden 2048 (heads = 2048 / d), non-causal.
fn fa2_tflops(g: &Gpu, seq: f64, d: f64, backward: bool) -> f64 {
    let (batch, heads) = (16384.0 / seq, 2048.0 / d);
    let scores = batch * heads * seq * seq;
    let fwd_flops = 4.0 * d * scores;
    let (flops, fp32) = if backward {
        (2.5 * fwd_flops, BWD_FP32_PER_SCORE * scores)
    } else {
        (fwd_flops, 4.0 * scores)
    };
    let tokens = batch * seq;
    let c = Cost {
        tensor_flops: flops,
        special_ops: scores,
        fp32_ops: fp32,
        // q, k, v, o (and dO, dq, dk, dv backward) bf16.
        bytes: 2.0 * tokens * 2048.0 * if backward { 8.0 } else { 4.0 },
        formula: "flash attention",
        ..Cost::default()
    };
    // FA2 forward: one block per 128 query rows and (batch, head); backward per 128 keys.
    let blocks = (seq / 128.0).ceil() * batch * heads;
    let t = times(g, &c, blocks as u64).bound() + g.launch_gap_us * 1e-6;
    flops / t / 1e12
}

/// Every reference with the model's prediction.
pub fn references() -> Vec<Reference> {
    let (h200, h100, a100) = (gpu("h200"), gpu("h100"), gpu("a100"));
    let (Some(h200), Some(h100), Some(a100)) = (h200, h100, a100) else {
        return Vec::new();
    };
    let mut out = vec![Reference {
        what: "bf16 GEMM 8192^3".into(),
        gpu: h200.key,
        published_tflops: 788.0,
        predicted_tflops: gemm_tflops(h200, 8192.0),
        source: CUBLAS_H200,
    }];
    out.push(Reference {
        what: "FA2 forward, d=128, seq 16k".into(),
        gpu: a100.key,
        published_tflops: 230.0,
        predicted_tflops: fa2_tflops(a100, 16384.0, 128.0, false),
        source: FA2_PAPER,
    });
    for (backward, d, seq, published) in [
        (false, 64.0, 512.0, 282.0),
        (false, 64.0, 16384.0, 324.0),
        (false, 128.0, 512.0, 309.0),
        (false, 128.0, 16384.0, 370.0),
        (true, 64.0, 512.0, 198.0),
        (true, 64.0, 16384.0, 291.0),
        (true, 128.0, 512.0, 214.0),
        (true, 128.0, 16384.0, 322.0),
    ] {
        out.push(Reference {
            what: format!(
                "FA2 {}, d={d}, seq {}",
                if backward { "backward" } else { "forward" },
                if seq >= 16384.0 {
                    "16k".to_string()
                } else {
                    format!("{seq}")
                }
            ),
            gpu: h100.key,
            published_tflops: published,
            predicted_tflops: fa2_tflops(h100, seq, d, backward),
            source: FA3_PAPER,
        });
    }
    out
}

/// The stated error bounds: the model's |error| against each kind of reference stays below
/// these (BENCHMARKS.md states them; `tests/perf_model.rs` checks them).
pub fn stated_bound(r: &Reference) -> f64 {
    if r.what.starts_with("bf16 GEMM") {
        0.30
    } else if r.what.contains("backward") {
        // Optimistic by up to 2.2x: the model has no term for FA2 backward's shared-memory
        // round trips of P and dS or its dQ atomics.
        1.50
    } else {
        0.40
    }
}
