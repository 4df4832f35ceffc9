//! The skinny LoRA product on a GPU at Falcon-7B shapes, as effective memory bandwidth (bytes of
//! A read once, plus B and C), against the tensor-core GEMM on the same product:
//! `u = x·Aᵀ` with x [1024, 4544] and A [8, 4544] (the qkv/dense/h_to_4h down-projection) and
//! `du = dy·B` with dy [1024, 18176] (h_to_4h's gradient). Both kernels are checked against
//! the f64 product first (`benches::cases::skinny`). Skipped without a GPU.

use benches::cases::skinny::{Product, SkinnyCase};
use benches::{GpuBench, Work};
use criterion::{criterion_group, criterion_main, Criterion};
use kernels_cu::ops::gemm::{gemm, Layout};
use kernels_cu::ops::skinny;
use kernels_cu::DType;

fn bench(c: &mut Criterion) {
    let Some(mut b) = GpuBench::open(c, "skinny_gpu") else {
        return;
    };
    let dev = b.dev().clone();
    let (m, r) = (1024usize, 8usize);
    for k in [4544usize, 18176] {
        let case = SkinnyCase::new(&dev, m, r, k, k as u64);
        b.check(
            &format!("skinny and tensor-core products {m}x{r}x{k}"),
            |d| {
                case.check(d, Product::Skinny);
                case.check(d, Product::TensorCoreGemm);
            },
        );
        let mut out = dev.alloc(DType::BF16, m * r).expect("alloc");
        let bytes = Work::Bytes(((m * k + r * k + m * r) * 2) as f64);
        b.time(&format!("skinny_nt_{m}x{r}x{k}"), bytes, || {
            skinny::nt(&dev, &case.a_dev, &case.b_dev, &mut out, m, r, k, 1.0, 0.0).expect("skinny")
        });
        b.time(&format!("tensor_core_gemm_nt_{m}x{r}x{k}"), bytes, || {
            gemm(
                &dev,
                Layout::Nt,
                &case.a_dev,
                &case.b_dev,
                &mut out,
                m,
                r,
                k,
                1.0,
                0.0,
            )
            .expect("gemm")
        });
    }
    b.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
