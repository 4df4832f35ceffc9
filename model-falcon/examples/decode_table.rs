//! PREDICTED decoding speed (`ask` / `eval` on a GPU) from the performance model: one decode
//! step (one new token per sequence) planned on a dry-run device and each launch costed against
//! the GPU's datasheet peaks (see `kernels_cu::perf`); nothing is executed or measured.
//!
//! ```text
//! cargo run -p model-falcon --release --example decode_table -- \
//!     [--model falcon-7b|falcon-40b|falcon-180b|CONFIG_DIR] [--context 512] \
//!     [--targets query_key_value|all-linear] [--r 8] [--gpu h200] [--top 8]
//! ```
//! Prints tokens/s at batch 1, 8 and 32, replayed from a CUDA graph (what `generate` does after
//! its first step) and launched one by one, then the per-kernel table of the graph-replayed
//! step at batch 1 and 32. `scripts/gpu-check.sh` prints it beside the measured `decode_gpu`
//! benchmark.

use kernels_cu::perf::{gpu, gpu::gpu_keys, model::GRAPH_NODE_US, StepEstimate};
use model_falcon::cuda::plan::{self, DecodeShape};
use model_falcon::peft::TargetModules;
use model_falcon::FalconConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut model = "falcon-7b".to_string();
    let (mut context, mut r, mut top) = (512usize, 8usize, 8usize);
    let mut targets = "query_key_value".to_string();
    let mut gpu_name = "h200".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut v = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--model" => model = v()?,
            "--context" => context = v()?.parse()?,
            "--r" => r = v()?.parse()?,
            "--top" => top = v()?.parse()?,
            "--targets" => targets = v()?,
            "--gpu" => gpu_name = v()?,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    let cfg = if std::path::Path::new(&model).is_dir() {
        FalconConfig::from_dir(&model)?
    } else {
        plan::falcon_config(&model)?
    };
    let g = gpu(&gpu_name).ok_or(format!("unknown GPU `{gpu_name}` (known: {})", gpu_keys()))?;
    let shape = |batch: usize, graphs: bool| DecodeShape {
        lora_r: r,
        targets: TargetModules::from_flag(&targets),
        graphs,
        ..DecodeShape::new(batch, context)
    };
    println!(
        "PREDICTED decoding by the performance model (datasheet peaks x stated efficiencies; \
         nothing measured): {model} on {}, 4-bit base, LoRA r={r} on {targets} unmerged, context \
         {context}; a graph node costs an ASSUMED {GRAPH_NODE_US} us, a stream launch {} us",
        g.name, g.launch_gap_us
    );
    println!(
        "{:>6} {:>14} {:>12} {:>14} {:>12} {:>9} {:>10}",
        "batch", "graph tok/s", "graph ms", "launch tok/s", "launch ms", "launches", "weights GB"
    );
    for batch in [1usize, 8, 32] {
        let e = plan::decode_estimate(&cfg, &shape(batch, true), g)?;
        let l = plan::decode_estimate(&cfg, &shape(batch, false), g)?;
        println!(
            "{batch:>6} {:>14.0} {:>12.3} {:>14.0} {:>12.3} {:>9} {:>10.2}",
            e.tokens_per_s,
            e.step_us / 1e3,
            l.tokens_per_s,
            l.step_us / 1e3,
            e.launches,
            e.weight_bytes / 1e9
        );
    }
    for batch in [1usize, 32] {
        let p = plan::dry_run_decode(&cfg, &shape(batch, true), g)?;
        let est = StepEstimate::graph(g, &p.launches);
        println!();
        println!(
            "batch {batch}: {:.3} ms per step (graph); per kernel, largest first:",
            est.time_us() / 1e3
        );
        println!(
            "  {:<32} {:>8} {:>10} {:>9} {:>8}",
            "kernel", "launches", "time us", "GB", "bound"
        );
        for row in est
            .by_kernel()
            .iter()
            .take(if top == 0 { usize::MAX } else { top })
        {
            println!(
                "  {:<32} {:>8} {:>10.1} {:>9.3} {:>8}",
                row.kernel,
                row.launches,
                row.time_us,
                row.bytes / 1e9,
                row.bound
            );
        }
    }
    Ok(())
}
