//! Dropout kernels (kernels-cu `dropout.cu`) on the emulator (and a GPU when one is present)
//! against the engine's CPU dropout (`engine::ops::dropout` with `engine::rng`), bit for bit:
//! - forward f32: identical bits to the CPU op on the same `(seed, offset)` for fresh random
//!   inputs, odd lengths, offsets near 2⁴⁰ and across the u64 wrap, p from 10⁻⁷ to the largest
//!   f32 below 1; bf16: `bf16::from_f32` of the CPU f32 result on the widened inputs;
//! - backward_add: `dx + (kept ? g·s : 0)` computed on the host in f32 (bf16: rounded once), the
//!   mask from `engine::rng::uniform_f32`;
//! - aligned buffers (16-byte vector path) and unaligned views (scalar path);
//! - p outside [0, 1) and mismatched dtypes/lengths are errors.
//!
//! Outputs are poisoned before every launch; each case also checks that the mask drops and
//! keeps some elements (when p makes both likely), so a constant mask cannot pass.

use engine::rng::{self, RngState};
use engine::{ops, Tensor, Var};
use half::bf16;
use integration_tests::devices;
use kernels_cu::ops::dropout;
use kernels_cu::{Buffer, DType, Device, Error};
use proptest::prelude::*;

/// SplitMix64 input generator (independent of the dropout stream under test).
struct Gen(u64);
impl Gen {
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let u = (rng::splitmix64(self.0) >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform(-4.0, 4.0)).collect()
    }
}

/// The engine's CPU dropout of `x` (f32) with the stream at `(seed, offset)`.
fn cpu_dropout(x: &[f32], p: f32, seed: u64, offset: u64) -> Vec<f32> {
    rng::set_state(RngState { seed, offset });
    let t = Tensor::from_vec(x.to_vec(), [x.len()]).unwrap();
    let y = ops::dropout(&Var::constant(t), p, true).unwrap();
    // The op reserved exactly x.len() indices of the stream (none for p = 0, the identity).
    let used = if p == 0.0 { 0 } else { x.len() as u64 };
    assert_eq!(rng::state().offset, offset.wrapping_add(used));
    y.value().to_vec::<f32>().unwrap()
}

fn kept(p: f32, seed: u64, offset: u64, i: usize) -> bool {
    rng::uniform_f32(seed, offset.wrapping_add(i as u64)) >= p
}

/// Counts kept elements and checks the mask is not constant when p makes that unlikely.
fn check_mask_varies(p: f32, seed: u64, offset: u64, n: usize) {
    let k = (0..n).filter(|&i| kept(p, seed, offset, i)).count();
    let expect_keep = (1.0 - p as f64) * n as f64;
    if expect_keep > 8.0 {
        assert!(k > 0, "nothing kept (n {n}, p {p})");
    }
    if p as f64 * n as f64 > 8.0 {
        assert!(k < n, "nothing dropped (n {n}, p {p})");
    }
}

/// Uploads `x` at element `pad` of a larger buffer and returns it with its length.
fn upload_padded(dev: &Device, x: &[f32], pad: usize, bf: bool) -> Buffer {
    let mut host = vec![0.75f32; pad];
    host.extend_from_slice(x);
    if bf {
        dev.htod(&host.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>())
    } else {
        dev.htod(&host)
    }
    .unwrap()
}

fn download_bits(dev: &Device, b: &Buffer) -> Vec<u32> {
    match b.dtype() {
        DType::BF16 => dev
            .dtoh::<bf16>(b)
            .unwrap()
            .iter()
            .map(|v| v.to_bits() as u32)
            .collect(),
        _ => dev
            .dtoh::<f32>(b)
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect(),
    }
}

fn poison_bits(bf: bool) -> u32 {
    if bf {
        0x7fa5
    } else {
        0x7fa5_a5a5
    }
}

/// Forward on one device against the CPU op; `pad` > 0 puts input and output in views at
/// offsets that are not 16-byte aligned.
fn check_forward(dev: &Device, x: &[f32], p: f32, seed: u64, offset: u64, bf: bool, pad: usize) {
    let n = x.len();
    // bf16 inputs are widened exactly, so the CPU runs on the same values.
    let xs: Vec<f32> = if bf {
        x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect()
    } else {
        x.to_vec()
    };
    let cpu = cpu_dropout(&xs, p, seed, offset);
    let want: Vec<u32> = cpu
        .iter()
        .map(|&v| {
            if bf {
                bf16::from_f32(v).to_bits() as u32
            } else {
                v.to_bits()
            }
        })
        .collect();
    let xb = upload_padded(dev, &xs, pad, bf);
    let dtype = if bf { DType::BF16 } else { DType::F32 };
    let mut out = if bf {
        dev.htod(&vec![bf16::from_bits(0x7fa5); pad + n + 1])
    } else {
        dev.htod(&vec![f32::from_bits(0x7fa5_a5a5); pad + n + 1])
    }
    .unwrap();
    {
        let xv = xb.view(pad, n).unwrap();
        let mut ov = out.view_mut(pad, n).unwrap();
        assert_eq!(ov.dtype(), dtype);
        dropout::forward(dev, &mut ov, &xv, p, seed, offset).unwrap();
    }
    let got = download_bits(dev, &out);
    for (i, &v) in got[..pad].iter().enumerate() {
        assert_eq!(v, poison_bits(bf), "written before the view at {i}");
    }
    assert_eq!(got[pad + n], poison_bits(bf), "written after the view");
    for i in 0..n {
        assert_eq!(
            got[pad + i],
            want[i],
            "forward bf16={bf} n={n} p={p} seed={seed} offset={offset} pad={pad}: element {i} \
             (x {}, kept {})",
            xs[i],
            kept(p, seed, offset, i)
        );
    }
}

/// backward_add on one device against the host computation.
#[allow(clippy::too_many_arguments)]
fn check_backward(
    dev: &Device,
    g: &[f32],
    dx0: &[f32],
    p: f32,
    seed: u64,
    offset: u64,
    bf: bool,
    pad: usize,
) {
    let n = g.len();
    let widen = |v: &[f32]| -> Vec<f32> {
        if bf {
            v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect()
        } else {
            v.to_vec()
        }
    };
    let (gs, ds) = (widen(g), widen(dx0));
    let s = dropout::keep_scale(p);
    let want: Vec<u32> = (0..n)
        .map(|i| {
            let add = if kept(p, seed, offset, i) {
                gs[i] * s
            } else {
                0.0
            };
            let v = ds[i] + add;
            if bf {
                bf16::from_f32(v).to_bits() as u32
            } else {
                v.to_bits()
            }
        })
        .collect();
    let gb = upload_padded(dev, &gs, pad, bf);
    let mut dx = upload_padded(dev, &ds, pad, bf);
    {
        let gv = gb.view(pad, n).unwrap();
        let mut dv = dx.view_mut(pad, n).unwrap();
        dropout::backward_add(dev, &mut dv, &gv, p, seed, offset).unwrap();
    }
    let got = download_bits(dev, &dx);
    for i in 0..n {
        assert_eq!(
            got[pad + i],
            want[i],
            "backward_add bf16={bf} n={n} p={p} seed={seed} offset={offset}: element {i}"
        );
    }
}

const PS: [f32; 6] = [0.05, 0.5, 0.1, 1e-7, 0.9, 0.999_999_94];

#[test]
fn forward_matches_the_cpu_mask_bit_for_bit() {
    let mut gen = Gen(1);
    for dev in devices() {
        let cases: [(usize, u64, u64); 5] = [
            (4099, 17, 0),
            (1001, 0xdead_beef, (1 << 40) - 333),
            (9, 3, 1 << 40),
            (2048, u64::MAX, u64::MAX - 1000), // the stream index wraps past u64::MAX
            (1, 42, 12_345_678_901),
        ];
        for (k, &(n, seed, offset)) in cases.iter().enumerate() {
            let p = PS[k % PS.len()];
            check_mask_varies(p, seed, offset, n);
            let x = gen.vec(n);
            for bf in [false, true] {
                check_forward(&dev, &x, p, seed, offset, bf, 0);
                check_forward(&dev, &x, p, seed, offset, bf, 3);
            }
        }
        // Every p on one shape, and p = 0 (the identity: x·1 for every element).
        let x = gen.vec(777);
        for p in PS.iter().copied().chain([0.0]) {
            check_forward(&dev, &x, p, 99, 1 << 40, false, 0);
            check_forward(&dev, &x, p, 99, 1 << 40, true, 0);
        }
    }
}

#[test]
fn backward_add_matches_the_host_computation() {
    let mut gen = Gen(2);
    for dev in devices() {
        for (k, &(n, seed, offset)) in [
            (3001usize, 5u64, 0u64),
            (1000, 0x1234_5678, (1 << 40) + 7),
            (13, 9, u64::MAX - 4),
        ]
        .iter()
        .enumerate()
        {
            let p = PS[k];
            check_mask_varies(p, seed, offset, n);
            let (g, dx0) = (gen.vec(n), gen.vec(n));
            for bf in [false, true] {
                check_backward(&dev, &g, &dx0, p, seed, offset, bf, 0);
                check_backward(&dev, &g, &dx0, p, seed, offset, bf, 5);
            }
        }
    }
}

#[test]
fn backward_add_uses_the_forward_mask() {
    // Forward then backward with the same (seed, offset) on the same device: the gradient of
    // dropped elements adds nothing, kept ones add g·s, exactly as y = x·s where kept.
    let dev = Device::emulator().unwrap();
    let mut gen = Gen(3);
    let n = 1234;
    let (p, seed, offset) = (0.3f32, 77u64, 999u64);
    let x = gen.vec(n);
    let xb = dev.htod(&x).unwrap();
    let mut y = dev.htod(&vec![f32::NAN; n]).unwrap();
    dropout::forward(&dev, &mut y, &xb, p, seed, offset).unwrap();
    let mut dx = dev.htod(&vec![0.0f32; n]).unwrap();
    dropout::backward_add(&dev, &mut dx, &xb, p, seed, offset).unwrap();
    let (y, dx) = (dev.dtoh::<f32>(&y).unwrap(), dev.dtoh::<f32>(&dx).unwrap());
    for i in 0..n {
        // 0 + y is y (no -0 can occur: dropped elements are +0).
        assert_eq!(dx[i].to_bits(), y[i].to_bits(), "element {i}");
    }
}

#[test]
fn probability_outside_zero_one_and_bad_buffers_are_errors() {
    let dev = Device::emulator().unwrap();
    let x = dev.htod(&[1.0f32; 10]).unwrap();
    let mut out = dev.htod(&[0.0f32; 10]).unwrap();
    for p in [1.0f32, 1.5, -0.1, f32::NAN, f32::INFINITY] {
        let r = dropout::forward(&dev, &mut out, &x, p, 1, 0);
        assert!(
            matches!(r, Err(Error::InvalidLaunch { .. })),
            "p {p}: {r:?}"
        );
        let r = dropout::backward_add(&dev, &mut out, &x, p, 1, 0);
        assert!(
            matches!(r, Err(Error::InvalidLaunch { .. })),
            "p {p}: {r:?}"
        );
    }
    // Nothing was written by the rejected calls.
    assert_eq!(dev.dtoh::<f32>(&out).unwrap(), vec![0.0; 10]);
    let mut short = dev.htod(&[0.0f32; 9]).unwrap();
    let r = dropout::forward(&dev, &mut short, &x, 0.5, 1, 0);
    assert!(matches!(r, Err(Error::Length { .. })), "{r:?}");
    let mut out_bf = dev.alloc(DType::BF16, 10).unwrap();
    let r = dropout::backward_add(&dev, &mut out_bf, &x, 0.5, 1, 0);
    assert!(matches!(r, Err(Error::DType { .. })), "{r:?}");
    let xi = dev.htod(&[1i32; 10]).unwrap();
    let mut oi = dev.htod(&[1i32; 10]).unwrap();
    let r = dropout::forward(&dev, &mut oi, &xi, 0.5, 1, 0);
    assert!(matches!(r, Err(Error::DType { .. })), "{r:?}");
}

#[test]
fn keep_scale_is_the_f64_reciprocal_rounded_once() {
    for p in PS.iter().copied().chain([0.0, 0.25, 0.3]) {
        assert_eq!(dropout::keep_scale(p), (1.0 / (1.0 - p as f64)) as f32);
    }
    assert_eq!(dropout::keep_scale(0.0), 1.0);
    assert_eq!(dropout::keep_scale(0.5), 2.0);
}

fn offsets() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..1 << 20,
        ((1u64 << 40) - 4096)..((1u64 << 40) + 4096),
        any::<u64>(),
        (u64::MAX - 4096)..=u64::MAX,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn forward_and_backward_match_for_random_streams(
        n in 1usize..2500, seed in any::<u64>(), offset in offsets(),
        p in prop::sample::select(PS.to_vec()), bf in any::<bool>(),
        pad in prop::sample::select(vec![0usize, 1, 8]), input_seed in any::<u64>(),
    ) {
        let dev = Device::emulator().unwrap();
        let mut gen = Gen(input_seed);
        let x = gen.vec(n);
        check_forward(&dev, &x, p, seed, offset, bf, pad);
        let dx0 = gen.vec(n);
        check_backward(&dev, &x, &dx0, p, seed, offset, bf, pad);
    }
}
