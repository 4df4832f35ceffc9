//! Multi-tensor AdamW and the global gradient norm on a GPU over 40M fp32 parameters (about
//! Falcon-7B's rank-16 LoRA adapters on every linear), as effective memory bandwidth
//! (AdamW: 16 bytes read + 12 written per parameter; norm: 4 bytes read). Both are checked
//! against the CPU reference first (`benches::cases::adamw`). Skipped without a GPU.

use benches::cases::adamw::AdamWCase;
use benches::{GpuBench, Work};
use criterion::{criterion_group, criterion_main, Criterion};
use kernels_cu::ops::adamw::{self, AdamWHyper};

fn bench(c: &mut Criterion) {
    let Some(mut b) = GpuBench::open(c, "adamw_gpu") else {
        return;
    };
    let dev = b.dev().clone();
    let n = 40usize << 20;
    let hyper = AdamWHyper {
        lr: 2e-4,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let max_norm = 1.0;
    let mut case = AdamWCase::new(&dev, n, hyper, 10, max_norm, 1);
    let mut scale = None;
    b.check("grad_norm and step, 40M f32", |d| {
        scale = Some(case.check(d))
    });
    let scale = scale.expect("set by the check");
    b.time("grad_norm_40M", Work::Bytes((n * 4) as f64), || {
        adamw::grad_norm(&dev, &case.g_dev, max_norm).expect("grad_norm");
    });
    let s = case.scalars();
    b.time("adamw_step_40M", Work::Bytes((n * 28) as f64), || {
        adamw::step(
            &dev,
            &mut case.p_dev,
            &mut case.m_dev,
            &mut case.v_dev,
            &case.g_dev,
            &scale,
            1,
            &s,
        )
        .expect("adamw step")
    });
    b.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
