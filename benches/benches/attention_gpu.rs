//! Fused attention kernels on a GPU: forward and backward (D pre-kernel + dK/dV + dQ), causal,
//! as TFLOP/s with the FlashAttention convention: forward 4·b·hq·t·tk·d FLOP, halved when
//! causal (t = tk); backward 2.5x the forward. Shapes: Falcon-7B (b = 2, 71 query heads on one
//! KV head, t = 512, d = 64) and the FlashAttention-2 paper's sweep points (16k tokens, 2048
//! long, hidden 2048, d = 64 and 128). Skipped without a GPU.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use half::bf16;
use kernels_cu::ops::attention::{self, AttnShape};
use kernels_cu::{DType, Device};
use std::time::Instant;

fn flops_fwd(s: &AttnShape) -> f64 {
    let f = 4.0 * (s.batch * s.q_heads * s.q_len * s.kv_len * s.head_dim) as f64;
    if s.causal {
        f / 2.0
    } else {
        f
    }
}

fn shapes() -> Vec<(&'static str, AttnShape)> {
    let mk = |batch, q_heads, kv_heads, t, d| AttnShape {
        batch,
        q_heads,
        kv_heads,
        q_len: t,
        kv_len: t,
        head_dim: d,
        causal: true,
        scale: 1.0 / (d as f32).sqrt(),
    };
    vec![
        ("falcon7b_b2_h71_t512_d64", mk(2, 71, 1, 512, 64)),
        ("fa2_b8_h32_t2048_d64", mk(8, 32, 32, 2048, 64)),
        ("fa2_b8_h16_t2048_d128", mk(8, 16, 16, 2048, 128)),
    ]
}

fn bench(c: &mut Criterion) {
    let dev = match Device::cuda(0) {
        Ok(d) => d,
        Err(e) => {
            println!("attention_gpu: skipped, no GPU ({e})");
            return;
        }
    };
    let mut grp = c.benchmark_group("attention_gpu");
    for (name, s) in shapes() {
        let nq = s.batch * s.q_heads * s.q_len * s.head_dim;
        let nk = s.batch * s.kv_heads * s.kv_len * s.head_dim;
        let data = |n: usize, salt: usize| -> Vec<bf16> {
            (0..n)
                .map(|i| bf16::from_f32((((i * 7919 + salt) % 1000) as f32 * 1e-3 - 0.5) * 2.0))
                .collect()
        };
        let q = dev.htod(&data(nq, 1)).unwrap();
        let k = dev.htod(&data(nk, 2)).unwrap();
        let v = dev.htod(&data(nk, 3)).unwrap();
        let dout = dev.htod(&data(nq, 4)).unwrap();
        let mut o = dev.alloc(DType::BF16, nq).unwrap();
        let lse = attention::forward(&dev, &s, &mut o, &q, &k, &v, None).unwrap();
        let fwd = flops_fwd(&s);

        // A direct TFLOP/s figure (mean of 20 synchronized runs after a warm-up).
        let time = |f: &mut dyn FnMut()| {
            f();
            dev.synchronize().unwrap();
            let t0 = Instant::now();
            for _ in 0..20 {
                f();
            }
            dev.synchronize().unwrap();
            t0.elapsed().as_secs_f64() / 20.0
        };
        let tf = time(&mut || {
            attention::forward(&dev, &s, &mut o, &q, &k, &v, None).unwrap();
        });
        let tb = time(&mut || {
            attention::backward(&dev, &s, &q, &k, &v, None, &o, &lse, &dout).unwrap();
        });
        println!(
            "attention_gpu {name}: forward {:.1} TFLOP/s ({:.3} ms), backward {:.1} TFLOP/s \
             ({:.3} ms), fwd+bwd {:.1} TFLOP/s",
            fwd / tf * 1e-12,
            tf * 1e3,
            2.5 * fwd / tb * 1e-12,
            tb * 1e3,
            3.5 * fwd / (tf + tb) * 1e-12
        );

        grp.throughput(Throughput::Elements(fwd as u64));
        grp.bench_function(format!("fwd_{name}"), |b| {
            b.iter(|| {
                attention::forward(&dev, &s, &mut o, &q, &k, &v, None).unwrap();
                dev.synchronize().unwrap();
            })
        });
        grp.throughput(Throughput::Elements((2.5 * fwd) as u64));
        grp.bench_function(format!("bwd_{name}"), |b| {
            b.iter(|| {
                attention::backward(&dev, &s, &q, &k, &v, None, &o, &lse, &dout).unwrap();
                dev.synchronize().unwrap();
            })
        });
    }
    grp.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
