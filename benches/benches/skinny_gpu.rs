//! The skinny LoRA product on a GPU at Falcon-7B shapes, as effective memory bandwidth (bytes of
//! A read once, plus B and C), against the tensor-core GEMM on the same product:
//! `u = x·Aᵀ` with x [1024, 4544] and A [8, 4544] (the qkv/dense/h_to_4h down-projection) and
//! `du = dy·B` with dy [1024, 18176] (h_to_4h's gradient). Skipped without a GPU.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use half::bf16;
use kernels_cu::ops::gemm::{gemm, Layout};
use kernels_cu::ops::skinny;
use kernels_cu::{DType, Device};

fn bench(c: &mut Criterion) {
    let dev = match Device::cuda(0) {
        Ok(d) => d,
        Err(e) => {
            println!("skinny_gpu: skipped, no GPU ({e})");
            return;
        }
    };
    let mut grp = c.benchmark_group("skinny_gpu");
    let (m, r) = (1024usize, 8usize);
    for k in [4544usize, 18176] {
        let a: Vec<bf16> = (0..m * k)
            .map(|i| bf16::from_f32(((i * 7919) % 1000) as f32 * 1e-3 - 0.5))
            .collect();
        let b: Vec<bf16> = (0..r * k)
            .map(|i| bf16::from_f32(((i * 104729) % 1000) as f32 * 1e-3 - 0.5))
            .collect();
        let (a, b) = (dev.htod(&a).unwrap(), dev.htod(&b).unwrap());
        let mut out = dev.alloc(DType::BF16, m * r).unwrap();
        grp.throughput(Throughput::Bytes(((m * k + r * k + m * r) * 2) as u64));
        grp.bench_function(format!("skinny_nt_{m}x{r}x{k}"), |bn| {
            bn.iter(|| {
                skinny::nt(&dev, &a, &b, &mut out, m, r, k, 1.0, 0.0).unwrap();
                dev.synchronize().unwrap();
            })
        });
        grp.bench_function(format!("tensor_core_gemm_nt_{m}x{r}x{k}"), |bn| {
            bn.iter(|| {
                gemm(&dev, Layout::Nt, &a, &b, &mut out, m, r, k, 1.0, 0.0).unwrap();
                dev.synchronize().unwrap();
            })
        });
    }
    grp.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
