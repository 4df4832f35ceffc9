//! Conversion and dropout kernels on a GPU at Falcon-7B shapes, as effective memory bandwidth:
//! f32 → bf16 and bf16 → f32 casts of a 1024 x 4544 activation, the attention-output axis swap
//! [1, 71, 1024, 64] → [1, 1024, 71, 64] (bf16), and dropout forward / backward-add on
//! 1024 x 4544 bf16. Skipped without a GPU.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use half::bf16;
use kernels_cu::ops::{convert, dropout};
use kernels_cu::{DType, Device};

fn bench(c: &mut Criterion) {
    let dev = match Device::cuda(0) {
        Ok(d) => d,
        Err(e) => {
            println!("convert_gpu: skipped, no GPU ({e})");
            return;
        }
    };
    let mut grp = c.benchmark_group("convert_gpu");
    let n = 1024 * 4544;
    let host: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 * 6e-3 - 3.0)
        .collect();
    let xf = dev.htod(&host).unwrap();
    let mut xb = dev.alloc(DType::BF16, n).unwrap();
    let mut yf = dev.alloc(DType::F32, n).unwrap();
    grp.throughput(Throughput::Bytes((n * 6) as u64));
    grp.bench_function("cast_f32_bf16_1024x4544", |b| {
        b.iter(|| {
            convert::cast(&dev, &mut xb, &xf).unwrap();
            dev.synchronize().unwrap();
        })
    });
    grp.bench_function("cast_bf16_f32_1024x4544", |b| {
        b.iter(|| {
            convert::cast(&dev, &mut yf, &xb).unwrap();
            dev.synchronize().unwrap();
        })
    });

    let dims = [1usize, 71, 1024, 64];
    let m: usize = dims.iter().product();
    let hb: Vec<bf16> = (0..m).map(|i| bf16::from_f32((i % 251) as f32)).collect();
    let att = dev.htod(&hb).unwrap();
    let mut swapped = dev.alloc(DType::BF16, m).unwrap();
    grp.throughput(Throughput::Bytes((m * 4) as u64));
    grp.bench_function("swap_axes12_bf16_1x71x1024x64", |b| {
        b.iter(|| {
            convert::swap_axes12(&dev, &mut swapped, &att, dims).unwrap();
            dev.synchronize().unwrap();
        })
    });

    let mut yb = dev.alloc(DType::BF16, n).unwrap();
    let mut seed_offset = 0u64;
    grp.throughput(Throughput::Bytes((n * 4) as u64));
    grp.bench_function("dropout_fwd_bf16_1024x4544", |b| {
        b.iter(|| {
            dropout::forward(&dev, &mut yb, &xb, 0.05, 1234, seed_offset).unwrap();
            seed_offset += n as u64;
            dev.synchronize().unwrap();
        })
    });
    grp.throughput(Throughput::Bytes((n * 6) as u64));
    grp.bench_function("dropout_bwd_add_bf16_1024x4544", |b| {
        b.iter(|| {
            dropout::backward_add(&dev, &mut yb, &xb, 0.05, 1234, 0).unwrap();
            dev.synchronize().unwrap();
        })
    });
    grp.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
