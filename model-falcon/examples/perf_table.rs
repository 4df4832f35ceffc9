//! PREDICTED speed of the QLoRA training step from the performance model (no GPU is used:
//! the step is planned on a dry-run device and each launch is costed against each GPU's
//! datasheet peaks; see `kernels_cu::perf`).
//!
//! ```text
//! cargo run -p model-falcon --release --example perf_table -- \
//!     [--model falcon-7b|falcon-40b|falcon-180b|CONFIG_DIR] [--batch 2] [--seq 512] \
//!     [--targets query_key_value|all-linear] [--r 8] [--gpu h200] [--top 0] [--launches]
//! ```
//! Prints the per-kernel table on `--gpu` and a one-line summary on every GPU of the table;
//! `--launches` adds the predicted time of each distinct launch (kernel and shape), which
//! `scripts/gpu-check.sh` prints beside the measured benchmarks. `--gpu` also takes a name
//! as `nvidia-smi` prints it (e.g. "NVIDIA H200").

use kernels_cu::perf::{gpu, gpu::gpu_keys, report, StepEstimate, GPUS};
use model_falcon::cuda::plan::{self, StepShape};
use model_falcon::peft::TargetModules;
use model_falcon::FalconConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut model = "falcon-7b".to_string();
    let (mut batch, mut seq, mut r, mut top) = (2usize, 512usize, 8usize, 0usize);
    let mut targets = "query_key_value".to_string();
    let mut gpu_name = "h200".to_string();
    let mut launches = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut v = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--model" => model = v()?,
            "--batch" => batch = v()?.parse()?,
            "--seq" => seq = v()?.parse()?,
            "--r" => r = v()?.parse()?,
            "--top" => top = v()?.parse()?,
            "--targets" => targets = v()?,
            "--gpu" => gpu_name = v()?,
            "--launches" => launches = true,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    let cfg = if std::path::Path::new(&model).is_dir() {
        FalconConfig::from_dir(&model)?
    } else {
        plan::falcon_config(&model)?
    };
    let shape = StepShape {
        lora_r: r,
        lora_alpha: 2.0 * r as f64,
        targets: TargetModules::from_flag(&targets),
        ..StepShape::new(batch, seq)
    };
    let g = gpu(&gpu_name).ok_or(format!("unknown GPU `{gpu_name}` (known: {})", gpu_keys()))?;
    let p = plan::dry_run(&cfg, &shape, g)?;
    println!(
        "PREDICTED by the performance model (datasheet peaks x stated efficiencies, the wgmma \
         NF4 GEMM's measured on an H200; this table itself measures nothing): {model}, batch {batch} x {seq}, LoRA r={r} on {targets}, 4-bit base, \
         recompute, AdamW; {} launches, {:.1} TFLOP counted for MFU, peak allocations {:.2} GiB",
        p.launches.len(),
        p.model_flops / 1e12,
        p.peak_bytes as f64 / (1u64 << 30) as f64
    );
    let est = StepEstimate::new(g, &p.launches);
    println!("\nper kernel on {}:\n", g.name);
    print!("{}", report::kernel_table(&est, top));
    if launches {
        println!("\nper distinct launch on {}:\n", g.name);
        print!("{}", report::launch_table(&est, &p.launches));
    }
    println!("\ntime by bound on {}:", g.key);
    for (b, us) in report::time_by_bound(&est) {
        println!("  {b:<14} {:>8.2} ms", us / 1e3);
    }
    println!("\n| GPU | step ms | tokens/s | MFU | top kernel (share) |");
    println!("|---|---:|---:|---:|---|");
    // Each GPU's own plan: the launchers choose by compute capability (the wgmma NF4 GEMM on
    // 9.0) and SM count (split-K), so one GPU's launches would misstate another's step.
    for g in GPUS {
        let own = plan::dry_run(&cfg, &shape, g)?;
        let s = report::summary(
            &StepEstimate::new(g, &own.launches),
            own.tokens,
            own.model_flops,
        );
        println!(
            "| {} | {:.1} | {:.0} | {:.1} % | {} ({:.0} %) |",
            g.key,
            s.step_ms,
            s.tokens_per_s,
            100.0 * s.mfu,
            s.top_kernel,
            100.0 * s.top_share
        );
    }
    Ok(())
}
