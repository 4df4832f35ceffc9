//! Fused lm_head + cross-entropy on a GPU at Falcon-7B's shape (rows = 2·512, d = 4544,
//! V = 65024, bf16), as TFLOP/s of the logit products (forward 2·rows·d·V; backward without dW
//! 2 x that: dlogits recompute + dhidden), all three on the tensor-core GEMM in vocab chunks;
//! compare with the bf16 GEMM rate of gemm_gpu. Checked against the CPU reference first
//! (`benches::cases::cross_entropy`: the loss on every row, lse and dhidden on sampled rows).
//! Skipped without a GPU.

use benches::cases::cross_entropy::LceCase;
use benches::{GpuBench, Work};
use criterion::{criterion_group, criterion_main, Criterion};
use kernels_cu::ops::cross_entropy::{self, LceShape};

fn bench(c: &mut Criterion) {
    let Some(mut b) = GpuBench::open(c, "cross_entropy_gpu") else {
        return;
    };
    let dev = b.dev().clone();
    let case = LceCase::new(&dev, LceShape::new(1024, 4544, 65024), 1);
    let mut saved = None;
    b.check("forward and dhidden, Falcon-7B lm_head", |d| {
        saved = Some(case.check(d))
    });
    let fwd = saved.expect("set by the check");
    let (s, count, flop) = (case.shape, case.count, case.logit_flop());
    b.group().sample_size(10);
    b.time("lce_fwd_falcon7b", Work::Flop(flop), || {
        cross_entropy::forward(&dev, &case.h_dev, &case.w_dev, &case.labels_dev, &s, count)
            .expect("forward");
    });
    b.time("lce_bwd_dhidden_falcon7b", Work::Flop(2.0 * flop), || {
        cross_entropy::backward(
            &dev,
            &case.h_dev,
            &case.w_dev,
            &case.labels_dev,
            &fwd.lse,
            &s,
            count,
            1.0,
            false,
        )
        .expect("backward");
    });
    b.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
