//! Conversion and dropout kernels on a GPU at Falcon-7B shapes, as effective memory bandwidth:
//! f32 → bf16 and bf16 → f32 casts of a 1024 x 4544 activation, the attention-output axis swap
//! [1, 71, 1024, 64] → [1, 1024, 71, 64] (bf16), and dropout forward / backward-add on
//! 1024 x 4544 bf16. All are checked bit for bit against the CPU first
//! (`benches::cases::convert`). Skipped without a GPU.

use benches::cases::convert::{ConvertCase, SwapCase};
use benches::{GpuBench, Work};
use criterion::{criterion_group, criterion_main, Criterion};
use kernels_cu::ops::{convert, dropout};
use kernels_cu::DType;

const P: f32 = 0.05;
const SEED: u64 = 1234;

fn bench(c: &mut Criterion) {
    let Some(mut b) = GpuBench::open(c, "convert_gpu") else {
        return;
    };
    let dev = b.dev().clone();
    let n = 1024 * 4544;
    let case = ConvertCase::new(&dev, n, 1);
    b.check("casts 1024x4544", |d| case.check_casts(d));
    let mut xb = dev.alloc(DType::BF16, n).expect("alloc");
    let mut yf = dev.alloc(DType::F32, n).expect("alloc");
    b.time(
        "cast_f32_bf16_1024x4544",
        Work::Bytes((n * 6) as f64),
        || convert::cast(&dev, &mut xb, &case.x_f32).expect("cast"),
    );
    b.time(
        "cast_bf16_f32_1024x4544",
        Work::Bytes((n * 6) as f64),
        || convert::cast(&dev, &mut yf, &case.x_bf16).expect("cast"),
    );

    let swap = SwapCase::new(&dev, [1, 71, 1024, 64], 2);
    b.check("swap_axes12 1x71x1024x64", |d| swap.check(d));
    let m: usize = swap.dims.iter().product();
    let mut swapped = dev.alloc(DType::BF16, m).expect("alloc");
    b.time(
        "swap_axes12_bf16_1x71x1024x64",
        Work::Bytes((m * 4) as f64),
        || convert::swap_axes12(&dev, &mut swapped, &swap.x_dev, swap.dims).expect("swap"),
    );

    b.check("dropout forward and backward_add 1024x4544", |d| {
        case.check_dropout(d, P, SEED, 0)
    });
    let mut yb = dev.alloc(DType::BF16, n).expect("alloc");
    let mut seed_offset = 0u64;
    b.time(
        "dropout_fwd_bf16_1024x4544",
        Work::Bytes((n * 4) as f64),
        || {
            dropout::forward(&dev, &mut yb, &case.x_bf16, P, SEED, seed_offset).expect("dropout");
            seed_offset += n as u64;
        },
    );
    b.time(
        "dropout_bwd_add_bf16_1024x4544",
        Work::Bytes((n * 6) as f64),
        || dropout::backward_add(&dev, &mut yb, &case.x_bf16, P, SEED, 0).expect("dropout"),
    );
    b.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
