//! `trainer info --gpu NAME`: the performance model's PREDICTED speed of the CUDA training
//! step (model_falcon::cuda::plan, kernels_cu::perf) for the model, batch, length and LoRA
//! flags of `info`. Nothing is measured: the step is planned on a dry-run device and each
//! launch is costed against the GPU's datasheet peaks with the model's stated efficiencies.

use crate::args::InfoArgs;
use anyhow::{anyhow, Result};
use model_falcon::cuda::plan::perf::{self, report, StepEstimate};
use model_falcon::cuda::plan::{self, StepShape};
use model_falcon::cuda::MemoryPlan;
use model_falcon::peft::TargetModules;
use model_falcon::FalconConfig;

/// Kernels listed in the per-kernel breakdown.
const TOP_KERNELS: usize = 6;

/// The prediction `info --gpu` prints.
pub struct GpuPrediction {
    pub summary: report::Summary,
    pub table: String,
    pub by_bound: Vec<(&'static str, f64)>,
    pub planned_peak_bytes: usize,
    pub launches: usize,
}

pub fn predict(cfg: &FalconConfig, a: &InfoArgs, gpu: &str) -> Result<GpuPrediction> {
    let g = perf::gpu(gpu)
        .ok_or_else(|| anyhow!("unknown --gpu `{gpu}` (known: {})", perf::gpu::gpu_keys()))?;
    let shape = StepShape {
        lora_r: a.lora_r,
        lora_alpha: 2.0 * a.lora_r as f64,
        targets: TargetModules::from_flag(&a.target_modules),
        four_bit: a.quant != "none",
        ..StepShape::new(a.per_device_train_batch_size, a.max_length)
    };
    let p = plan::dry_run(cfg, &shape, g)?;
    let est = StepEstimate::new(g, &p.launches);
    Ok(GpuPrediction {
        summary: report::summary(&est, p.tokens, p.model_flops),
        table: report::kernel_table(&est, TOP_KERNELS),
        by_bound: report::time_by_bound(&est),
        planned_peak_bytes: p.peak_bytes,
        launches: p.launches.len(),
    })
}

pub fn print(
    cfg: &FalconConfig,
    a: &InfoArgs,
    memory: Option<&MemoryPlan>,
    gpu: &str,
) -> Result<()> {
    let p = predict(cfg, a, gpu)?;
    let s = &p.summary;
    let name = perf::gpu(gpu).map(|g| g.name).unwrap_or(gpu);
    println!(
        "PREDICTED CUDA step on {name} (performance model: datasheet peaks x stated \
         efficiencies; not measured), batch {} x length {}, LoRA r={} on {}:",
        a.per_device_train_batch_size, a.max_length, a.lora_r, a.target_modules
    );
    println!(
        "  step time            {:>10.1} ms ({} launches)",
        s.step_ms, p.launches
    );
    println!("  tokens/s             {:>10.0}", s.tokens_per_s);
    if a.ranks > 1 {
        // Data parallelism replicates the step; the all-reduce, once per window, is left out
        // (BENCHMARKS.md puts it below 2 % of a window at the seed's accumulation).
        println!(
            "  {:<20} {:>10.0} in total ({:.0} per rank; all-reduce not included)",
            format!("tokens/s, {} ranks", a.ranks),
            s.tokens_per_s * a.ranks as f64,
            s.tokens_per_s
        );
    }
    println!("  MFU                  {:>10.1} %", 100.0 * s.mfu);
    let plan_peak = memory.map(|m| m.peak).unwrap_or(p.planned_peak_bytes);
    println!(
        "  peak memory          {:>10.2} GiB (the device memory plan; the CUDA context and the \
         caching allocator's rounding come on top)",
        plan_peak as f64 / (1u64 << 30) as f64,
    );
    // The first check against a GPU, so that nobody takes the prediction for a measurement.
    println!(
        "  calibration          the model's one check so far: Falcon-7B at batch 2 x 512, r=8 on \
         query_key_value MEASURED 6,202 tokens/s in 4.45 GiB on an H200 (2026-12-04), 1.35x \
         slower than the model, with its NF4 GEMM calibrated on that GPU, predicted for the \
         same code (which still recomputed the dense and 4h_to_h products; BENCHMARKS.md)"
    );
    let limits: Vec<String> = p
        .by_bound
        .iter()
        .map(|(b, us)| format!("{b} {:.1} ms", us / 1e3))
        .collect();
    println!("  time by bound        {}", limits.join(", "));
    println!("  top kernels:");
    for line in p.table.lines() {
        println!("    {line}");
    }
    print_decode(cfg, a, gpu)
}

/// The PREDICTED decoding speed (`ask`/`eval` on the GPU): one token per sequence at a
/// context of --max-length, batches of 1 and 32, the adapter of the flags unmerged.
fn print_decode(cfg: &FalconConfig, a: &InfoArgs, gpu: &str) -> Result<()> {
    use model_falcon::cuda::plan::{decode_estimate, DecodeShape};
    let g = perf::gpu(gpu).ok_or_else(|| anyhow!("unknown --gpu `{gpu}`"))?;
    println!(
        "PREDICTED decoding on {} (performance model, not measured), context {} tokens:",
        g.name, a.max_length
    );
    for batch in [1, 32] {
        let shape = DecodeShape {
            lora_r: a.lora_r,
            targets: TargetModules::from_flag(&a.target_modules),
            four_bit: a.quant != "none",
            ..DecodeShape::new(batch, a.max_length.max(1))
        };
        let e = decode_estimate(cfg, &shape, g)?;
        println!(
            "  batch {batch:>2}             {:>10.0} tokens/s ({:.2} ms per step, {} launches, \
             {:.2} GB of weights read per step)",
            e.tokens_per_s,
            e.step_us / 1e3,
            e.launches,
            e.weight_bytes / 1e9
        );
    }
    Ok(())
}
