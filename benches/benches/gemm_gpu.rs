//! GPU microbenchmarks of kernels-cu `gemm.cu` at Falcon-7B shapes (M = batch·seq = 1024):
//! the NF4-dequantizing GEMM forward `Y = X·Wᵀ` and input backward `dX = dY·W`, the plain bf16
//! GEMM `C = A·Bᵀ` at the same shapes (the dense rate the NF4 GEMM is measured against), and
//! NF4 dequantization. Throughput is reported as FLOP/s (elements = 2·M·N·K) for the GEMMs and
//! bytes/s (packed codes read + bf16 written) for dequantization. Without a CUDA device it prints
//! that it was skipped.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use engine::nf4::{DYNAMIC_MAP, NF4};
use half::bf16;
use kernels_cu::ops::gemm::{self, Layout, Nf4Parts, Nf4Weight};
use kernels_cu::{DType, Device};

const M: usize = 1024;
/// (name, out_features N, in_features K) of Falcon-7B's linear layers.
const SHAPES: [(&str, usize, usize); 4] = [
    ("qkv", 4672, 4544),
    ("dense", 4544, 4544),
    ("mlp_up", 18176, 4544),
    ("mlp_down", 4544, 18176),
];

/// Deterministic bytes (LCG), enough to make every code and absmax code occur.
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 56) as u8
        })
        .collect()
}

fn weight(dev: &Device, n: usize, k: usize) -> Nf4Weight {
    let blocks = n * k / 64;
    let nested: Vec<f32> = (0..blocks.div_ceil(256))
        .map(|i| 0.01 + (i % 7) as f32 * 1e-3)
        .collect();
    Nf4Weight::upload(
        dev,
        &Nf4Parts {
            packed: &bytes(n * k / 2, 1),
            absmax_codes: &bytes(blocks, 2),
            nested_absmax: &nested,
            code_map: &DYNAMIC_MAP,
            table: &NF4,
            offset: 0.02,
            out_features: n,
            in_features: k,
            blocksize: 64,
        },
    )
    .expect("weight upload")
}

fn activations(dev: &Device, n: usize) -> kernels_cu::Buffer {
    let v: Vec<bf16> = bytes(n, 3)
        .iter()
        .map(|&b| bf16::from_f32((f32::from(b) - 127.5) / 128.0))
        .collect();
    dev.htod(&v).expect("activation upload")
}

fn bench(c: &mut Criterion) {
    let dev = match Device::cuda(0) {
        Ok(d) => d,
        Err(e) => {
            println!("gemm_gpu: skipped, no CUDA device ({e})");
            return;
        }
    };
    let mut g = c.benchmark_group("gemm_gpu");
    g.sample_size(10);
    for (name, n, k) in SHAPES {
        let w = weight(&dev, n, k);
        let flops = (2 * M * n * k) as u64;
        g.throughput(Throughput::Elements(flops));
        let x = activations(&dev, M * k);
        let mut y = dev.alloc(DType::BF16, M * n).expect("alloc");
        g.bench_function(
            BenchmarkId::new("nf4_forward", format!("{name}_{M}x{n}x{k}")),
            |b| {
                b.iter(|| {
                    gemm::nf4_forward(&dev, &x, &w, &mut y, M, 1.0, 0.0).expect("launch");
                    dev.synchronize().expect("sync");
                })
            },
        );
        let dy = activations(&dev, M * n);
        let mut dx = dev.alloc(DType::BF16, M * k).expect("alloc");
        g.bench_function(
            BenchmarkId::new("nf4_backward_input", format!("{name}_{M}x{n}x{k}")),
            |b| {
                b.iter(|| {
                    gemm::nf4_backward_input(&dev, &dy, &w, &mut dx, M, 1.0, 0.0).expect("launch");
                    dev.synchronize().expect("sync");
                })
            },
        );
        let wd = gemm::dequantize(&dev, &w, DType::BF16).expect("dequantize");
        g.bench_function(
            BenchmarkId::new("bf16_gemm_nt", format!("{name}_{M}x{n}x{k}")),
            |b| {
                b.iter(|| {
                    gemm::gemm(&dev, Layout::Nt, &x, &wd, &mut y, M, n, k, 1.0, 0.0)
                        .expect("launch");
                    dev.synchronize().expect("sync");
                })
            },
        );
        drop(wd);
        g.throughput(Throughput::Bytes((n * k / 2 + n * k * 2) as u64));
        g.bench_function(
            BenchmarkId::new("dequantize_bf16", format!("{name}_{n}x{k}")),
            |b| {
                b.iter(|| {
                    let out = gemm::dequantize(&dev, &w, DType::BF16).expect("launch");
                    dev.synchronize().expect("sync");
                    drop(out);
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
