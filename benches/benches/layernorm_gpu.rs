//! LayerNorm kernels on a GPU at the Falcon-7B shape (rows = 2·512, d = 4544, bf16), as
//! effective memory bandwidth (bytes that must move: forward reads x and writes y; backward
//! reads x and dy and writes dx; γ/β/statistics are negligible). Skipped without a GPU.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use half::bf16;
use kernels_cu::ops::layernorm;
use kernels_cu::{DType, Device};

fn bench(c: &mut Criterion) {
    let dev = match Device::cuda(0) {
        Ok(d) => d,
        Err(e) => {
            println!("layernorm_gpu: skipped, no GPU ({e})");
            return;
        }
    };
    let (rows, d) = (1024usize, 4544usize);
    let n = rows * d;
    let host: Vec<bf16> = (0..n)
        .map(|i| bf16::from_f32(((i * 7919) % 1000) as f32 * 1e-3 - 0.5))
        .collect();
    let x = dev.htod(&host).unwrap();
    let dy = dev.htod(&host).unwrap();
    let g = dev.htod(&vec![bf16::ONE; d]).unwrap();
    let b = dev.htod(&vec![bf16::ZERO; d]).unwrap();
    let mut y = dev.alloc(DType::BF16, n).unwrap();
    let mut dx = dev.alloc(DType::BF16, n).unwrap();
    let stats = layernorm::forward(&dev, &mut y, &x, &g, &b, d, 1e-5).unwrap();
    let mut grp = c.benchmark_group("layernorm_gpu");
    grp.throughput(Throughput::Bytes((2 * n * 2) as u64));
    grp.bench_function("fwd_bf16_1024x4544", |bch| {
        bch.iter(|| {
            layernorm::forward(&dev, &mut y, &x, &g, &b, d, 1e-5).unwrap();
            dev.synchronize().unwrap();
        })
    });
    grp.throughput(Throughput::Bytes((3 * n * 2) as u64));
    grp.bench_function("bwd_bf16_1024x4544", |bch| {
        bch.iter(|| {
            layernorm::backward(&dev, &mut dx, &x, &g, &stats, &dy, d).unwrap();
            dev.synchronize().unwrap();
        })
    });
    grp.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
