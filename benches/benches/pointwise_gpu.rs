//! Pointwise kernels on a GPU at Falcon-7B shapes (bf16): GELU on the MLP activation
//! (1024 x 18176), the three-term residual add and the embedding gather (1024 x 4544), as
//! effective memory bandwidth. Skipped without a GPU.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use half::bf16;
use kernels_cu::ops::pointwise;
use kernels_cu::{DType, Device};

fn bench(c: &mut Criterion) {
    let dev = match Device::cuda(0) {
        Ok(d) => d,
        Err(e) => {
            println!("pointwise_gpu: skipped, no GPU ({e})");
            return;
        }
    };
    let mut grp = c.benchmark_group("pointwise_gpu");
    let n = 1024 * 18176;
    let host: Vec<bf16> = (0..n)
        .map(|i| bf16::from_f32(((i * 7919) % 1000) as f32 * 6e-3 - 3.0))
        .collect();
    let x = dev.htod(&host).unwrap();
    let dy = dev.htod(&host).unwrap();
    let mut y = dev.alloc(DType::BF16, n).unwrap();
    grp.throughput(Throughput::Bytes((2 * n * 2) as u64));
    grp.bench_function("gelu_fwd_bf16_1024x18176", |b| {
        b.iter(|| {
            pointwise::gelu_forward(&dev, &mut y, &x).unwrap();
            dev.synchronize().unwrap();
        })
    });
    grp.throughput(Throughput::Bytes((3 * n * 2) as u64));
    grp.bench_function("gelu_bwd_bf16_1024x18176", |b| {
        b.iter(|| {
            pointwise::gelu_backward(&dev, &mut y, &x, &dy).unwrap();
            dev.synchronize().unwrap();
        })
    });
    let (rows, d, vocab) = (1024usize, 4544usize, 65024usize);
    let m = rows * d;
    let (a, bb, cc) = (
        dev.htod(&host[..m]).unwrap(),
        dev.htod(&host[m..2 * m]).unwrap(),
        dev.htod(&host[2 * m..3 * m]).unwrap(),
    );
    let mut out = dev.alloc(DType::BF16, m).unwrap();
    grp.throughput(Throughput::Bytes((4 * m * 2) as u64));
    grp.bench_function("residual_add3_bf16_1024x4544", |b| {
        b.iter(|| {
            pointwise::residual_add3(&dev, &mut out, &a, &bb, &cc).unwrap();
            dev.synchronize().unwrap();
        })
    });
    let table = dev.alloc_zeros(DType::BF16, vocab * d).unwrap();
    let ids: Vec<u32> = (0..rows as u32)
        .map(|i| (i * 7919) % vocab as u32)
        .collect();
    let ids = dev.htod(&ids).unwrap();
    grp.throughput(Throughput::Bytes((2 * m * 2) as u64));
    grp.bench_function("embedding_fwd_bf16_1024x4544", |b| {
        b.iter(|| {
            pointwise::embedding_forward(&dev, &mut out, &ids, &table, vocab, d).unwrap();
            dev.synchronize().unwrap();
        })
    });
    grp.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
