//! Microbenchmark of the elementwise and reduce kernel families on one device: elementwise add (f32, bf16) and
//! the two-pass sum, as effective memory bandwidth. Prints one line per case.
//!
//! `cargo run -p kernels-cu --release --example kc_bench [-- emulator]`; on a GPU machine it is
//! run by scripts/gpu-check.sh. Without a GPU (or with `emulator`) it runs on the emulator with
//! small sizes, which measures nothing about GPUs but checks that the benchmark works.

use std::time::Instant;

use half::bf16;
use kernels_cu::ops::{elementwise, reduce};
use kernels_cu::{BackendKind, DType, Device};

fn main() -> Result<(), kernels_cu::Error> {
    let force_emu = std::env::args().any(|a| a == "emulator");
    let dev = if force_emu {
        Device::emulator()?
    } else {
        Device::cuda(0).or_else(|e| {
            eprintln!("no CUDA device ({e}); using the emulator");
            Device::emulator()
        })?
    };
    let info = dev.info().clone();
    println!(
        "device: {} (cc {}.{}, driver {}, {} MiB)",
        info.name,
        info.compute_capability.0,
        info.compute_capability.1,
        info.driver_version,
        info.total_memory >> 20
    );
    let n: usize = if info.kind == BackendKind::Cuda {
        64 << 20
    } else {
        1 << 18
    };
    let iters = if info.kind == BackendKind::Cuda {
        50
    } else {
        3
    };
    let x: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 * 1e-3).collect();
    let a = dev.htod(&x)?;
    let b = dev.htod(&x)?;
    let mut out = dev.alloc(DType::F32, n)?;
    let time =
        |f: &mut dyn FnMut() -> Result<(), kernels_cu::Error>| -> Result<f64, kernels_cu::Error> {
            f()?; // warm-up: module load, allocations
            dev.synchronize()?;
            let t = Instant::now();
            for _ in 0..iters {
                f()?;
            }
            dev.synchronize()?;
            Ok(t.elapsed().as_secs_f64() / iters as f64)
        };
    let s = time(&mut || elementwise::add(&dev, &mut out, &a, &b))?;
    println!(
        "add_f32      n={n:>10}  {:>9.1} us  {:>8.1} GB/s",
        s * 1e6,
        (3 * 4 * n) as f64 / s / 1e9
    );
    let xh: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
    let (ah, bh) = (dev.htod(&xh)?, dev.htod(&xh)?);
    let mut oh = dev.alloc(DType::BF16, n)?;
    let s = time(&mut || elementwise::add(&dev, &mut oh, &ah, &bh))?;
    println!(
        "add_bf16     n={n:>10}  {:>9.1} us  {:>8.1} GB/s",
        s * 1e6,
        (3 * 2 * n) as f64 / s / 1e9
    );
    let s = time(&mut || reduce::sum(&dev, &a).map(drop))?;
    println!(
        "sum_f32      n={n:>10}  {:>9.1} us  {:>8.1} GB/s",
        s * 1e6,
        (4 * n) as f64 / s / 1e9
    );
    let m = dev.memory();
    println!(
        "memory: in use {} MiB, cached {} MiB, peak {} MiB, driver allocations {}",
        m.in_use >> 20,
        m.cached >> 20,
        m.peak_in_use >> 20,
        m.raw_allocs
    );
    Ok(())
}
