//! Measures loading a checkpoint with NF4 quantization on the CPU (the loader of
//! `trainer train`): wall time and memory. Memory is read from /proc/self/status:
//! `VmHWM` (the kernel's peak resident set, which counts resident pages of the memory-mapped
//! safetensors files as well as allocations), and the peaks of `RssAnon` (heap: what the
//! model really holds) and `RssFile` (mapped file pages, which the kernel may drop at will)
//! sampled every 10 ms by a background thread.
//!
//! Usage: `cargo run -p model-falcon --release --example load_quantize -- DIR [nf4|fp4|none]`

use model_falcon::{load_model, BaseOptions, FalconCheckpoint, QuantMode};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A field of /proc/self/status in kB.
fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn gb(kb: u64) -> f64 {
    kb as f64 * 1024.0 / 1e9
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: load_quantize DIR [nf4|fp4|none]")?;
    let quant: QuantMode = args.next().as_deref().unwrap_or("nf4").parse()?;
    let stop = Arc::new(AtomicBool::new(false));
    let peak_anon = Arc::new(AtomicU64::new(0));
    let peak_file = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, anon, file) = (stop.clone(), peak_anon.clone(), peak_file.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                anon.fetch_max(status_kb("RssAnon:"), Ordering::Relaxed);
                file.fetch_max(status_kb("RssFile:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let start = Instant::now();
    let ckpt = FalconCheckpoint::open(&dir)?;
    let opened = start.elapsed().as_secs_f64();
    let opts = BaseOptions {
        quant,
        ..BaseOptions::default()
    };
    let model = load_model(&ckpt, &opts)?;
    let total = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    sampler.join().map_err(|_| "sampler thread panicked")?;
    let counts = model.param_counts();
    println!(
        "checkpoint: {dir} ({} layers)",
        model.config.num_hidden_layers
    );
    println!("threads: {}", rayon::current_num_threads());
    println!("open (headers, validation): {opened:.2} s");
    println!("load + quantize ({quant:?}): {total:.2} s");
    println!("parameters: {counts:?}");
    println!(
        "model base bytes: {:.3} GB",
        model.base_bytes() as f64 / 1e9
    );
    println!(
        "VmHWM (peak RSS, file pages included): {:.3} GB",
        gb(status_kb("VmHWM:"))
    );
    println!(
        "peak RssAnon (sampled): {:.3} GB",
        gb(peak_anon.load(Ordering::Relaxed))
    );
    println!(
        "peak RssFile (sampled): {:.3} GB",
        gb(peak_file.load(Ordering::Relaxed))
    );
    println!("RssAnon at the end: {:.3} GB", gb(status_kb("RssAnon:")));
    Ok(())
}
