//! GPU microbenchmarks of kernels-cu `gemm.cu` at Falcon-7B shapes (M = batch·seq = 1024):
//! the NF4-dequantizing GEMM forward `Y = X·Wᵀ` and input backward `dX = dY·W`, the plain bf16
//! GEMM `C = A·Bᵀ` at the same shapes (the dense rate the NF4 GEMM is measured against), and
//! NF4 dequantization. The NF4 GEMMs run with the launcher's schedule (`gemm::nf4_schedule`
//! for the device: the last partial wave's tiles split along the reduction) and, for
//! comparison, in one launch unsplit (`_splits1`) and with every tile split in four
//! (`_splits4`). Throughput is reported as TFLOP/s (2·M·N·K) for the GEMMs and GB/s
//! (packed codes read + bf16 written) for dequantization. Every kernel is checked against the
//! CPU first (`benches::cases::gemm`: dequantization bit for bit, the GEMMs on sampled rows
//! and columns). Without a CUDA device it prints that it was skipped.

use benches::cases::gemm::GemmCase;
use benches::{GpuBench, Work};
use criterion::{criterion_group, criterion_main, Criterion};
use kernels_cu::ops::gemm::{self, Layout};
use kernels_cu::DType;

const M: usize = 1024;
/// (name, out_features N, in_features K) of Falcon-7B's linear layers.
const SHAPES: [(&str, usize, usize); 4] = [
    ("qkv", 4672, 4544),
    ("dense", 4544, 4544),
    ("mlp_up", 18176, 4544),
    ("mlp_down", 4544, 18176),
];

fn bench(c: &mut Criterion) {
    let Some(mut b) = GpuBench::open(c, "gemm_gpu") else {
        return;
    };
    let dev = b.dev().clone();
    b.group().sample_size(10);
    for (seed, (name, n, k)) in SHAPES.into_iter().enumerate() {
        let case = GemmCase::new(&dev, M, n, k, seed as u64);
        let mut wd = None;
        b.check(&format!("dequantize and GEMMs {name} {M}x{n}x{k}"), |d| {
            let w = case.check_dequantize(d);
            case.check_forward(d, None);
            case.check_forward(d, Some(&w));
            case.check_backward_input(d);
            wd = Some(w);
        });
        let wd = wd.expect("set by the check");
        let flop = Work::Flop((2 * M * n * k) as f64);
        let mut y = dev.alloc(DType::BF16, M * n).expect("alloc");
        b.time(&format!("nf4_forward/{name}_{M}x{n}x{k}"), flop, || {
            gemm::nf4_forward(&dev, &case.x_dev, &case.w_dev, &mut y, M, 1.0, 0.0).expect("launch")
        });
        let mut dx = dev.alloc(DType::BF16, M * k).expect("alloc");
        b.time(
            &format!("nf4_backward_input/{name}_{M}x{n}x{k}"),
            flop,
            || {
                gemm::nf4_backward_input(&dev, &case.dy_dev, &case.w_dev, &mut dx, M, 1.0, 0.0)
                    .expect("launch")
            },
        );
        // The same products in one launch with a fixed reduction split: unsplit (what the
        // last, partial wave costs without the schedule's split tail) and every tile in four
        // (the launcher's rule before `gemm::nf4_schedule`).
        for splits in [1usize, 4] {
            for (tag, product, a, out) in [
                (
                    "nf4_forward",
                    gemm::Nf4Product::Forward,
                    &case.x_dev,
                    &mut y,
                ),
                (
                    "nf4_backward_input",
                    gemm::Nf4Product::BackwardInput,
                    &case.dy_dev,
                    &mut dx,
                ),
            ] {
                b.time(
                    &format!("{tag}_splits{splits}/{name}_{M}x{n}x{k}"),
                    flop,
                    || {
                        gemm::nf4_gemm(
                            &dev,
                            product,
                            a,
                            &case.w_dev,
                            out,
                            M,
                            1.0,
                            0.0,
                            Some(gemm::Nf4Schedule::split(splits)),
                        )
                        .expect("launch")
                    },
                );
            }
        }
        b.time(&format!("bf16_gemm_nt/{name}_{M}x{n}x{k}"), flop, || {
            gemm::gemm(
                &dev,
                Layout::Nt,
                &case.x_dev,
                &wd,
                &mut y,
                M,
                n,
                k,
                1.0,
                0.0,
            )
            .expect("launch")
        });
        drop(wd);
        b.time(
            &format!("dequantize_bf16/{name}_{n}x{k}"),
            Work::Bytes((n * k / 2 + n * k * 2) as f64),
            || {
                let out = gemm::dequantize(&dev, &case.w_dev, DType::BF16).expect("launch");
                dev.synchronize().expect("sync");
                drop(out);
            },
        );
    }
    b.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
