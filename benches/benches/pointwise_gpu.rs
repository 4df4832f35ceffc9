//! Pointwise kernels on a GPU at Falcon-7B shapes (bf16): GELU on the MLP activation
//! (1024 x 18176), the three-term residual add and the embedding gather (1024 x 4544), as
//! effective memory bandwidth. Each is checked against the CPU reference first
//! (`benches::cases::pointwise`). Skipped without a GPU.

use benches::cases::pointwise::{EmbeddingCase, GeluCase, ResidualCase};
use benches::{GpuBench, Work};
use criterion::{criterion_group, criterion_main, Criterion};
use kernels_cu::ops::pointwise;
use kernels_cu::DType;

fn bench(c: &mut Criterion) {
    let Some(mut b) = GpuBench::open(c, "pointwise_gpu") else {
        return;
    };
    let dev = b.dev().clone();
    let n = 1024 * 18176;
    let gelu = GeluCase::new(&dev, n, 1);
    b.check("gelu forward and backward 1024x18176", |d| gelu.check(d));
    let mut y = dev.alloc(DType::BF16, n).expect("alloc");
    b.time(
        "gelu_fwd_bf16_1024x18176",
        Work::Bytes((2 * n * 2) as f64),
        || pointwise::gelu_forward(&dev, &mut y, &gelu.x_dev).expect("gelu"),
    );
    b.time(
        "gelu_bwd_bf16_1024x18176",
        Work::Bytes((3 * n * 2) as f64),
        || pointwise::gelu_backward(&dev, &mut y, &gelu.x_dev, &gelu.dy_dev).expect("gelu"),
    );

    let (rows, d, vocab) = (1024usize, 4544usize, 65024usize);
    let m = rows * d;
    let add = ResidualCase::new(&dev, m, 2);
    b.check("residual_add3 1024x4544", |dv| add.check(dv));
    let mut out = dev.alloc(DType::BF16, m).expect("alloc");
    b.time(
        "residual_add3_bf16_1024x4544",
        Work::Bytes((4 * m * 2) as f64),
        || {
            pointwise::residual_add3(&dev, &mut out, &add.x_dev, &add.a_dev, &add.b_dev)
                .expect("residual_add3")
        },
    );

    let emb = EmbeddingCase::new(&dev, rows, vocab, d, 3);
    b.check("embedding forward 1024x4544 of 65024", |dv| emb.check(dv));
    b.time(
        "embedding_fwd_bf16_1024x4544",
        Work::Bytes((2 * m * 2) as f64),
        || {
            pointwise::embedding_forward(&dev, &mut out, &emb.ids_dev, &emb.table_dev, vocab, d)
                .expect("embedding");
        },
    );
    b.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
