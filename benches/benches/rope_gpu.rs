//! RoPE fused with the QKV split on a GPU at Falcon-7B's shape (batch 2 x 512, 71 query heads +
//! 1 kv head, head_dim 64, bf16), as effective memory bandwidth (the fused projection read once
//! and q/k/v written once, each way). Skipped without a GPU.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use half::bf16;
use kernels_cu::ops::rope::{self, QkvLayout};
use kernels_cu::{DType, Device};

fn bench(c: &mut Criterion) {
    let dev = match Device::cuda(0) {
        Ok(d) => d,
        Err(e) => {
            println!("rope_gpu: skipped, no GPU ({e})");
            return;
        }
    };
    let l = QkvLayout {
        batch: 2,
        seq: 512,
        heads: 71,
        kv_heads: 1,
        head_dim: 64,
        grouped: false,
    };
    let host: Vec<bf16> = (0..l.qkv_len())
        .map(|i| bf16::from_f32(((i * 7919) % 1000) as f32 * 1e-3 - 0.5))
        .collect();
    let qkv = dev.htod(&host).unwrap();
    let pos: Vec<u32> = (0..(l.batch * l.seq) as u32).map(|i| i % 512).collect();
    let pos = dev.htod(&pos).unwrap();
    let inv = dev.htod(&rope::inv_freq(64, 10_000.0)).unwrap();
    let tab = rope::table(&dev, &pos, &inv, 64).unwrap();
    let mut q = dev.alloc(DType::BF16, l.q_len()).unwrap();
    let mut k = dev.alloc(DType::BF16, l.kv_len()).unwrap();
    let mut v = dev.alloc(DType::BF16, l.kv_len()).unwrap();
    let mut dqkv = dev.alloc(DType::BF16, l.qkv_len()).unwrap();
    rope::forward(&dev, &mut q, &mut k, &mut v, &qkv, &tab, &l).unwrap();
    let mut grp = c.benchmark_group("rope_gpu");
    grp.throughput(Throughput::Bytes((2 * l.qkv_len() * 2) as u64));
    grp.bench_function("rope_qkv_fwd_bf16_falcon7b", |b| {
        b.iter(|| {
            rope::forward(&dev, &mut q, &mut k, &mut v, &qkv, &tab, &l).unwrap();
            dev.synchronize().unwrap();
        })
    });
    grp.bench_function("rope_qkv_bwd_bf16_falcon7b", |b| {
        b.iter(|| {
            rope::backward(&dev, &mut dqkv, &q, &k, &v, &tab, &l).unwrap();
            dev.synchronize().unwrap();
        })
    });
    grp.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
