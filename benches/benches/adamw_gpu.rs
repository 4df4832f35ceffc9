//! Multi-tensor AdamW and the global gradient norm on a GPU over 40M fp32 parameters (about
//! Falcon-7B's rank-16 LoRA adapters on every linear), as effective memory bandwidth
//! (AdamW: 16 bytes read + 12 written per parameter; norm: 4 bytes read). Skipped without a GPU.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kernels_cu::ops::adamw::{self, AdamWHyper, AdamWScalars};
use kernels_cu::Device;

fn bench(c: &mut Criterion) {
    let dev = match Device::cuda(0) {
        Ok(d) => d,
        Err(e) => {
            println!("adamw_gpu: skipped, no GPU ({e})");
            return;
        }
    };
    let n = 40usize << 20;
    let host: Vec<f32> = (0..n).map(|i| ((i % 997) as f32 - 498.0) * 1e-4).collect();
    let mut p = dev.htod(&host).unwrap();
    let mut m = dev.alloc_zeros(kernels_cu::DType::F32, n).unwrap();
    let mut v = dev.alloc_zeros(kernels_cu::DType::F32, n).unwrap();
    let g = dev.htod(&host).unwrap();
    let h = AdamWHyper {
        lr: 2e-4,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let s = AdamWScalars::new(&h, 10);
    let mut grp = c.benchmark_group("adamw_gpu");
    grp.throughput(Throughput::Bytes((n * 4) as u64));
    grp.bench_function("grad_norm_40M", |b| {
        b.iter(|| {
            adamw::grad_norm(&dev, &g, 1.0).unwrap();
            dev.synchronize().unwrap();
        })
    });
    let scale = adamw::grad_norm(&dev, &g, 1.0).unwrap();
    grp.throughput(Throughput::Bytes((n * 28) as u64));
    grp.bench_function("adamw_step_40M", |b| {
        b.iter(|| {
            adamw::step(&dev, &mut p, &mut m, &mut v, &g, &scale, 1, &s).unwrap();
            dev.synchronize().unwrap();
        })
    });
    grp.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
