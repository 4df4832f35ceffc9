//! NF4 microbenchmarks on the CPU: quantize and dequantize throughput (bytes of bf16 weight
//! per second) and the 4-bit linear op at Falcon-7B shapes scaled down by 1/4 per dimension.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use engine::nf4::{linear_backward_input, linear_forward, QuantConfig, QuantizedWeight};
use half::bf16;
use std::hint::black_box;

/// Deterministic pseudo-normal values (sum of uniforms), scaled like trained weights.
fn weights(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed;
    let mut uniform = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n)
        .map(|_| ((0..4).map(|_| uniform()).sum::<f32>() - 2.0) * scale)
        .collect()
}

// Falcon-7B query_key_value is [4672, 4544]; scaled by 1/4 per dimension.
const OUT: usize = 4672 / 4;
const IN: usize = 4544 / 4;

fn bench_quantize(c: &mut Criterion) {
    let mut g = c.benchmark_group("nf4_quantize_bf16");
    g.sample_size(10);
    let src: Vec<bf16> = weights(OUT * IN, 1, 0.02)
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    g.throughput(Throughput::Bytes((OUT * IN * 2) as u64));
    for (name, dq) in [("nf4_bs64", false), ("nf4_bs64_dq", true)] {
        let cfg = QuantConfig {
            double_quant: dq,
            ..QuantConfig::default()
        };
        g.bench_function(BenchmarkId::new(name, format!("{OUT}x{IN}")), |b| {
            b.iter(|| QuantizedWeight::quantize(black_box(&src), OUT, IN, cfg).expect("quantize"))
        });
    }
    g.finish();
}

fn bench_dequantize(c: &mut Criterion) {
    let mut g = c.benchmark_group("nf4_dequantize");
    g.sample_size(10);
    let src: Vec<bf16> = weights(OUT * IN, 2, 0.02)
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    let w = QuantizedWeight::quantize(&src, OUT, IN, QuantConfig::default()).expect("quantize");
    // Bytes of the bf16 weight the dequantization reproduces.
    g.throughput(Throughput::Bytes((OUT * IN * 2) as u64));
    let mut out_bf16 = vec![bf16::ZERO; OUT * IN];
    g.bench_function(BenchmarkId::new("to_bf16_dq", format!("{OUT}x{IN}")), |b| {
        b.iter(|| {
            w.dequantize_rows_into(0..OUT, black_box(&mut out_bf16))
                .expect("dequantize")
        })
    });
    let mut out_f32 = vec![0f32; OUT * IN];
    g.bench_function(BenchmarkId::new("to_f32_dq", format!("{OUT}x{IN}")), |b| {
        b.iter(|| {
            w.dequantize_rows_into(0..OUT, black_box(&mut out_f32))
                .expect("dequantize")
        })
    });
    g.finish();
}

fn bench_linear(c: &mut Criterion) {
    let mut g = c.benchmark_group("nf4_linear_f32");
    g.sample_size(10);
    let m = 64;
    let w = QuantizedWeight::quantize(&weights(OUT * IN, 3, 0.02), OUT, IN, QuantConfig::default())
        .expect("quantize");
    let x = weights(m * IN, 4, 1.0);
    let dy = weights(m * OUT, 5, 1.0);
    let mut y = vec![0f32; m * OUT];
    let mut dx = vec![0f32; m * IN];
    g.throughput(Throughput::Elements((2 * m * OUT * IN) as u64));
    g.bench_function(
        BenchmarkId::new("forward", format!("m{m} {IN}->{OUT}")),
        |b| b.iter(|| linear_forward(black_box(&x), m, &w, &mut y).expect("forward")),
    );
    g.bench_function(
        BenchmarkId::new("backward_input", format!("m{m} {OUT}->{IN}")),
        |b| b.iter(|| linear_backward_input(black_box(&dy), m, &w, &mut dx).expect("backward")),
    );
    g.finish();
}

criterion_group!(nf4, bench_quantize, bench_dequantize, bench_linear);
criterion_main!(nf4);
