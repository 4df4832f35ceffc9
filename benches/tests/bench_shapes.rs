//! The GPU benchmarks' checks at the benchmarked shapes, run on the emulator: that the
//! references, tolerances and samples hold at full Falcon-7B size (not only at the small shapes
//! of the unit tests) before a GPU run depends on them. The emulated GEMMs of the gemm and
//! cross-entropy shapes take many minutes on a CPU, so those two run at reduced M / rows
//! (same N, K, V). About three minutes on two cores: ignored by default, run with
//! `cargo test -p benches --release --test bench_shapes -- --ignored`.

use benches::cases::{
    adamw, attention, convert, cross_entropy, gemm, layernorm, pointwise, rope, skinny,
};
use kernels_cu::ops::adamw::AdamWHyper;
use kernels_cu::ops::cross_entropy::LceShape;
use kernels_cu::ops::rope::QkvLayout;
use kernels_cu::Device;

fn emulator() -> Device {
    Device::emulator().expect("the emulator is built in")
}

#[test]
#[ignore = "full-size checks on the emulator, minutes on a CPU"]
fn memory_bound_kernels_at_falcon7b_shapes() {
    let dev = emulator();
    layernorm::LayerNormCase::new(&dev, 1024, 4544, 1).check(&dev);
    pointwise::GeluCase::new(&dev, 1024 * 18176, 1).check(&dev);
    pointwise::ResidualCase::new(&dev, 1024 * 4544, 2).check(&dev);
    pointwise::EmbeddingCase::new(&dev, 1024, 65024, 4544, 3).check(&dev);
    let c = convert::ConvertCase::new(&dev, 1024 * 4544, 1);
    c.check_casts(&dev);
    c.check_dropout(&dev, 0.05, 1234, 0);
    convert::SwapCase::new(&dev, [1, 71, 1024, 64], 2).check(&dev);
    let l = QkvLayout {
        batch: 2,
        seq: 512,
        heads: 71,
        kv_heads: 1,
        head_dim: 64,
        grouped: false,
    };
    rope::RopeCase::new(&dev, l, 10_000.0, 1).check(&dev);
    let h = AdamWHyper {
        lr: 2e-4,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    adamw::AdamWCase::new(&dev, 40 << 20, h, 10, 1.0, 1).check(&dev);
    for k in [4544, 18176] {
        let s = skinny::SkinnyCase::new(&dev, 1024, 8, k, k as u64);
        s.check(&dev, skinny::Product::Skinny);
        s.check(&dev, skinny::Product::TensorCoreGemm);
    }
}

#[test]
#[ignore = "full-size checks on the emulator, minutes on a CPU"]
fn attention_at_the_falcon7b_shape() {
    let dev = emulator();
    attention::AttnCase::new(&dev, 2, (71, 1), 512, 64, 0).check(&dev);
}

#[test]
#[ignore = "full-size checks on the emulator, minutes on a CPU"]
fn gemm_and_lm_head_at_falcon7b_widths() {
    let dev = emulator();
    let g = gemm::GemmCase::new(&dev, 128, 4672, 4544, 0);
    let w = g.check_dequantize(&dev);
    g.check_forward(&dev, None);
    g.check_forward(&dev, Some(&w));
    g.check_backward_input(&dev);
    // V = 65024 in vocab chunks; few rows (the emulated GEMM pads them to its 128-row tile).
    cross_entropy::LceCase::new(&dev, LceShape::new(4, 4544, 65024), 1).check(&dev);
}
