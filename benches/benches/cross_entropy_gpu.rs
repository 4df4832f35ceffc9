//! Fused lm_head + cross-entropy on a GPU at Falcon-7B's shape (rows = 2·512, d = 4544,
//! V = 65024, bf16), as TFLOP/s of the logit products (forward 2·rows·d·V; backward without dW
//! 2 x that: dlogits recompute + dhidden), all three on the tensor-core GEMM in vocab chunks;
//! compare with the bf16 GEMM rate of gemm_gpu. Skipped without a GPU.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use half::bf16;
use kernels_cu::ops::cross_entropy::{self, LceShape};
use kernels_cu::{DType, Device};

fn bench(c: &mut Criterion) {
    let dev = match Device::cuda(0) {
        Ok(d) => d,
        Err(e) => {
            println!("cross_entropy_gpu: skipped, no GPU ({e})");
            return;
        }
    };
    let s = LceShape::new(1024, 4544, 65024);
    let hh: Vec<bf16> = (0..s.rows * s.d)
        .map(|i| bf16::from_f32(((i * 7919) % 1000) as f32 * 1e-3 - 0.5))
        .collect();
    let h = dev.htod(&hh).unwrap();
    let w = dev.alloc_zeros(DType::BF16, s.vocab * s.d).unwrap();
    let labels: Vec<i32> = (0..s.rows as i32).map(|i| (i * 31) % 65024).collect();
    let l = dev.htod(&labels).unwrap();
    let flop = 2 * s.rows * s.d * s.vocab;
    let fwd = cross_entropy::forward(&dev, &h, &w, &l, &s, s.rows as f64).unwrap();
    let mut grp = c.benchmark_group("cross_entropy_gpu");
    grp.sample_size(10);
    // Elements = FLOPs: criterion's elements/s reads as FLOP/s.
    grp.throughput(Throughput::Elements(flop as u64));
    grp.bench_function("lce_fwd_falcon7b", |b| {
        b.iter(|| {
            cross_entropy::forward(&dev, &h, &w, &l, &s, s.rows as f64).unwrap();
            dev.synchronize().unwrap();
        })
    });
    grp.throughput(Throughput::Elements(2 * flop as u64));
    grp.bench_function("lce_bwd_dhidden_falcon7b", |b| {
        b.iter(|| {
            cross_entropy::backward(&dev, &h, &w, &l, &fwd.lse, &s, s.rows as f64, 1.0, false)
                .unwrap();
            dev.synchronize().unwrap();
        })
    });
    grp.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
