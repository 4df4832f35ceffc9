//! CPU backend microbenchmarks: GEMM (Falcon-7B projection shapes scaled down), attention
//! forward+backward, LayerNorm, the vectorized f32 exp/erf against the scalar libm calls they
//! replaced. Throughput is reported in FLOP, bytes or elements per second.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use engine::ops::{self, matmul::gemm};
use engine::testing::randn;
use engine::{DType, Tensor, Var};
use std::hint::black_box;

fn bench_gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu_gemm_f32");
    g.sample_size(10);
    // Falcon-7B at M = 1024 tokens is 1024 x 4544 x {4672, 4544, 18176}; scaled by 1/4 per dim.
    for &(m, k, n, name) in &[
        (256, 1136, 1168, "qkv/4"),
        (256, 1136, 4544, "h_to_4h/4"),
        (256, 4544, 1136, "4h_to_h/4"),
    ] {
        let a = randn([m, k], DType::F32, 1, 1.0).to_vec::<f32>().unwrap();
        let b = randn([n, k], DType::F32, 2, 1.0).to_vec::<f32>().unwrap();
        let mut out = vec![0f32; m * n];
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_function(
            BenchmarkId::new("x_wt", format!("{name} {m}x{k}x{n}")),
            |bch| {
                bch.iter(|| {
                    gemm(
                        false,
                        true,
                        m,
                        n,
                        k,
                        black_box(&a),
                        black_box(&b),
                        &mut out,
                        false,
                        true,
                    )
                })
            },
        );
    }
    g.finish();
}

fn bench_attention(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu_attention_f32");
    g.sample_size(10);
    let (b, hq, hkv, t, d) = (1, 8, 1, 256, 64);
    let q = randn([b, hq, t, d], DType::F32, 3, 1.0);
    let k = randn([b, hkv, t, d], DType::F32, 4, 1.0);
    let v = randn([b, hkv, t, d], DType::F32, 5, 1.0);
    // Causal: about half of the 4·t²·d multiply-adds of forward, 2.5x that for backward.
    let fwd_flops = 2 * b * hq * t * t * d;
    g.throughput(Throughput::Elements((fwd_flops * 7 / 2) as u64));
    g.bench_function(format!("mqa fwd+bwd b{b} h{hq} t{t} d{d}"), |bch| {
        bch.iter(|| {
            let (qv, kv, vv) = (
                Var::parameter(q.clone()),
                Var::parameter(k.clone()),
                Var::parameter(v.clone()),
            );
            let o = ops::attention(&qv, &kv, &vv, None, true, 0.125).unwrap();
            let l = ops::sum_all(&o).unwrap();
            black_box(l.backward().unwrap());
        })
    });
    // The token-major op the model runs: P fits, so forward keeps it and backward reads it.
    let q = randn([b, t, hq, d], DType::F32, 6, 1.0);
    let k = randn([b, t, hkv, d], DType::F32, 7, 1.0);
    let v = randn([b, t, hkv, d], DType::F32, 8, 1.0);
    g.bench_function(
        format!("mqa tokens kept-P fwd+bwd b{b} h{hq} t{t} d{d}"),
        |bch| {
            bch.iter(|| {
                let (qv, kv, vv) = (
                    Var::parameter(q.clone()),
                    Var::parameter(k.clone()),
                    Var::parameter(v.clone()),
                );
                let o = ops::attention_tokens(&qv, &kv, &vv, None, true, 0.125).unwrap();
                let l = ops::sum_all(&o).unwrap();
                black_box(l.backward().unwrap());
            })
        },
    );
    g.finish();
}

fn bench_layernorm(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu_layernorm_f32");
    g.sample_size(10);
    let (rows, d) = (256, 4544);
    let x = randn([rows, d], DType::F32, 6, 1.0);
    let w = Tensor::full(1.0, [d], DType::F32);
    let bias = Tensor::zeros([d], DType::F32);
    // Forward reads x and writes y.
    g.throughput(Throughput::Bytes((2 * rows * d * 4) as u64));
    g.bench_function(format!("fwd {rows}x{d}"), |bch| {
        bch.iter(|| {
            black_box(
                ops::layer_norm(
                    &Var::constant(x.clone()),
                    &Var::constant(w.clone()),
                    &Var::constant(bias.clone()),
                    1e-5,
                )
                .unwrap(),
            )
        })
    });
    // The LoRA case: x needs a gradient, the affine parameters are frozen (no dγ, dβ).
    let (rows, d) = (512, 512);
    let x = randn([rows, d], DType::F32, 9, 1.0);
    let w = randn([d], DType::F32, 10, 1.0);
    let bias = randn([d], DType::F32, 11, 1.0);
    g.throughput(Throughput::Bytes((4 * rows * d * 4) as u64));
    g.bench_function(format!("fwd+bwd frozen affine {rows}x{d}"), |bch| {
        bch.iter(|| {
            let xv = Var::parameter(x.clone());
            let y = ops::layer_norm(
                &xv,
                &Var::constant(w.clone()),
                &Var::constant(bias.clone()),
                1e-5,
            )
            .unwrap();
            black_box(ops::sum_all(&y).unwrap().backward().unwrap())
        })
    });
    g.finish();
}

/// `engine::vmath` over one softmax-sized slice against the scalar calls it replaced.
fn bench_vmath(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu_vmath_f32");
    g.sample_size(20);
    let n = 1 << 16;
    let x = randn([n], DType::F32, 8, 3.0).to_f32_vec().unwrap();
    let mut y = vec![0f32; n];
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(format!("exp vectorized {n}"), |bch| {
        bch.iter(|| {
            y.copy_from_slice(&x);
            engine::vmath::exp_shifted_in_place(black_box(&mut y), 0.5);
        })
    });
    g.bench_function(format!("exp libm {n}"), |bch| {
        bch.iter(|| {
            for (o, &v) in y.iter_mut().zip(black_box(&x)) {
                *o = (v - 0.5).exp();
            }
        })
    });
    g.bench_function(format!("erf vectorized {n}"), |bch| {
        bch.iter(|| {
            y.copy_from_slice(&x);
            engine::vmath::erf_in_place(black_box(&mut y));
        })
    });
    g.bench_function(format!("erf libm {n}"), |bch| {
        bch.iter(|| {
            for (o, &v) in y.iter_mut().zip(black_box(&x)) {
                *o = engine::Float::erf(v);
            }
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_gemm,
    bench_attention,
    bench_layernorm,
    bench_vmath
);
criterion_main!(benches);
