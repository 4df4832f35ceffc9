//! LayerNorm kernels on a GPU at the Falcon-7B shape (rows = 2·512, d = 4544, bf16), as
//! effective memory bandwidth (bytes that must move: forward reads x and writes y; backward
//! reads x and dy and writes dx; γ/β/statistics are negligible). Both are checked against the
//! CPU reference first (`benches::cases::layernorm`). Skipped without a GPU.

use benches::cases::layernorm::{LayerNormCase, EPS};
use benches::{GpuBench, Work};
use criterion::{criterion_group, criterion_main, Criterion};
use kernels_cu::ops::layernorm;
use kernels_cu::DType;

fn bench(c: &mut Criterion) {
    let Some(mut b) = GpuBench::open(c, "layernorm_gpu") else {
        return;
    };
    let dev = b.dev().clone();
    let (rows, d) = (1024usize, 4544usize);
    let n = rows * d;
    let case = LayerNormCase::new(&dev, rows, d, 1);
    let mut saved = None;
    b.check("forward and backward bf16 1024x4544", |dv| {
        saved = Some(case.check(dv))
    });
    let stats = saved.expect("set by the check");
    let mut y = dev.alloc(DType::BF16, n).expect("alloc");
    let mut dx = dev.alloc(DType::BF16, n).expect("alloc");
    b.time(
        "fwd_bf16_1024x4544",
        Work::Bytes((2 * n * 2) as f64),
        || {
            layernorm::forward(
                &dev,
                &mut y,
                &case.x_dev,
                &case.gamma_dev,
                &case.beta_dev,
                d,
                EPS,
            )
            .expect("forward");
        },
    );
    b.time(
        "bwd_bf16_1024x4544",
        Work::Bytes((3 * n * 2) as f64),
        || {
            layernorm::backward(
                &dev,
                &mut dx,
                &case.x_dev,
                &case.gamma_dev,
                &stats,
                &case.dy_dev,
                d,
            )
            .expect("backward");
        },
    );
    b.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
