//! The decoding kernels on a GPU at Falcon-7B shapes, as effective memory bandwidth:
//! - the 4-bit GEMV `Y = X·dequant(W)ᵀ` for M = 1, 8 and 32 rows (sequences) on the qkv
//!   [4672, 4544], h_to_4h [18176, 4544] and 4h_to_h [4544, 18176] weights: bytes = the packed
//!   weight with its absmax codes, plus X and Y (the target is ≥ 70 % of HBM bandwidth at M = 1);
//! - flash-decoding attention of one query per sequence (71 query heads, 1 KV head, d = 64)
//!   over 512 and 2048 cached tokens, batch 1 and 32: bytes = K and V once, q and o.
//!
//! Each kernel is checked against the f64 reference first (`benches::cases::decode`).
//! Skipped without a GPU.

use benches::cases::decode::{AttnCase, GemvCase};
use benches::{GpuBench, Work};
use criterion::{criterion_group, criterion_main, Criterion};
use kernels_cu::ops::decode;
use kernels_cu::DType;

fn bench(c: &mut Criterion) {
    let Some(mut b) = GpuBench::open(c, "decode_gpu") else {
        return;
    };
    let dev = b.dev().clone();
    for (name, n, k) in [
        ("qkv", 4672usize, 4544usize),
        ("h_to_4h", 18176, 4544),
        ("4h_to_h", 4544, 18176),
    ] {
        for m in [1usize, 8, 32] {
            let case = GemvCase::new(&dev, m, n, k, (n + m) as u64);
            b.check(&format!("decode gemv nf4 {name} m={m}"), |d| case.check(d));
            let mut y = dev.alloc(DType::BF16, m * n).expect("alloc");
            b.time(
                &format!("decode_gemv_nf4_{name}_{m}x{n}x{k}"),
                Work::Bytes(case.bytes()),
                || {
                    decode::gemv_nf4(&dev, &case.x_dev, &case.w_dev, &mut y, m, 1.0, 0.0)
                        .expect("gemv")
                },
            );
        }
    }
    for batch in [1usize, 32] {
        for len in [512usize, 2048] {
            let case = AttnCase::new(&dev, batch, 71, 1, len);
            b.check(&format!("decode attention b={batch} len={len}"), |d| {
                case.check(d)
            });
            b.time(
                &format!("decode_attention_b{batch}_len{len}"),
                Work::Bytes(case.bytes()),
                || {
                    case.run(&dev);
                },
            );
        }
    }
    b.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
