//! NF4 dequantization and the tensor-core GEMMs (kernels-cu `gemm.cu`) on the emulator (and a
//! GPU when one is present) against the engine's NF4 implementation and float64 references.
//!
//! - Dequantize: bit-identical to `QuantizedWeight::dequantize_bf16` / `dequantize_f32`.
//! - GEMMs: the reference is the float64 product of the same bf16 inputs (for the NF4 GEMMs, the
//!   weight `dequantize_bf16` produces). With u = 2⁻²⁴ and mag = Σ_k |a_k·b_k| (f64), products of
//!   bf16 values are exact in fp32 and the K-term fp32 accumulation (in an unspecified order inside
//!   mma, then across k-steps) errs by at most K·u·mag; the tolerance is (K + 16)·u·mag (+ the
//!   α/β epilogue roundings, covered by the +16 and a u·|β·C| term), plus 2⁻⁸·|ref| for one
//!   rounding to a bf16 output.
//! - The NF4 GEMMs also run on an emulator that reports compute capability 9.0, where the
//!   launcher takes the wgmma kernels (sm_90a; the backward where out_features % 8 == 0, else
//!   the mma.sync one): the output must be bit-identical to the mma.sync kernel's on the
//!   emulator (both round to fp32 once per k16 step, in the same k order), besides meeting the
//!   reference's tolerance.
//! - Outputs start poisoned (the emulator fills fresh buffers with NaN bytes; β = 0 must not
//!   read them), shapes are ragged in M and N (and K for the bf16 GEMM), inputs fresh per case.

use engine::nf4::{Absmax, QuantConfig, QuantizedWeight, NF4_THRESHOLDS};
use engine::testing::{assert_close, Rng, F32_UNIT_ROUNDOFF as U};
use half::bf16;
use integration_tests::devices;
use kernels_cu::ops::gemm::{self, CodeLayout, Layout, Nf4Product, Nf4Schedule, Nf4Weight};
use kernels_cu::ops::nf4_layout;
use kernels_cu::{BackendKind, DType, Device, EmulatorOptions, Error};
use model_falcon::cuda::nf4_parts;
use proptest::prelude::*;

/// The draws these tests need beyond the shared generator's.
trait Draws {
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f64;
    /// bf16 values with varied magnitudes (a per-row scale) and both signs.
    fn bf16s(&mut self, n: usize) -> Vec<bf16>;
}

impl Draws for Rng {
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
    fn bf16s(&mut self, n: usize) -> Vec<bf16> {
        (0..n)
            .map(|i| bf16::from_f64(self.unit() * (1.0 + (i % 7) as f64 * 0.5)))
            .collect()
    }
}

fn quantize(
    rng: &mut Rng,
    n: usize,
    k: usize,
    blocksize: usize,
    bf16_src: bool,
) -> QuantizedWeight {
    let cfg = QuantConfig {
        blocksize,
        ..QuantConfig::default()
    };
    // Rows with different scales so absmax (and its double quantization) varies.
    let vals: Vec<f32> = (0..n * k)
        .map(|i| (rng.unit() * 0.05 * (1.0 + (i / k.max(1)) as f64 % 5.0)) as f32)
        .collect();
    if bf16_src {
        let v: Vec<bf16> = vals.iter().map(|&x| bf16::from_f32(x)).collect();
        QuantizedWeight::quantize(&v, n, k, cfg).expect("valid quantization")
    } else {
        QuantizedWeight::quantize(&vals, n, k, cfg).expect("valid quantization")
    }
}

fn upload(dev: &Device, q: &QuantizedWeight) -> Nf4Weight {
    let parts = nf4_parts("test weight", q).expect("the default config double-quantizes");
    Nf4Weight::upload(dev, &parts).expect("consistent weight parts")
}

fn check_dequant(n: usize, k: usize, blocksize: usize, seed: u64) {
    let mut rng = Rng::from_state(seed);
    let q = quantize(&mut rng, n, k, blocksize, seed.is_multiple_of(2));
    let want_bf: Vec<u16> = q.dequantize_bf16().iter().map(|v| v.to_bits()).collect();
    let want_f: Vec<u32> = q.dequantize_f32().iter().map(|v| v.to_bits()).collect();
    for dev in devices() {
        let w = upload(&dev, &q);
        let got_bf = gemm::dequantize(&dev, &w, DType::BF16).unwrap();
        let got_bf: Vec<u16> = dev
            .dtoh::<bf16>(&got_bf)
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect();
        assert_eq!(got_bf, want_bf, "bf16 dequantize {n}x{k} bs {blocksize}");
        let got_f = gemm::dequantize(&dev, &w, DType::F32).unwrap();
        let got_f: Vec<u32> = dev
            .dtoh::<f32>(&got_f)
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect();
        assert_eq!(got_f, want_f, "f32 dequantize {n}x{k} bs {blocksize}");
    }
}

/// Reference `C[m][n] = α·Σ_r a(m, r)·b(r, n) + β·c0[m][n]` in f64 with the tolerance above.
#[allow(clippy::too_many_arguments)]
fn reference(
    m: usize,
    n: usize,
    r: usize,
    a: impl Fn(usize, usize) -> f64,
    b: impl Fn(usize, usize) -> f64,
    alpha: f64,
    beta: f64,
    c0: &[f64],
    bf16_out: bool,
) -> (Vec<f64>, Vec<f64>) {
    let mut want = vec![0.0; m * n];
    let mut tol = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let (mut s, mut mag) = (0.0, 0.0);
            for t in 0..r {
                let p = a(i, t) * b(t, j);
                s += p;
                mag += p.abs();
            }
            let old = if beta != 0.0 {
                beta * c0[i * n + j]
            } else {
                0.0
            };
            let v = alpha * s + old;
            want[i * n + j] = v;
            let mut e = (r as f64 + 16.0) * U * alpha.abs() * mag + 4.0 * U * old.abs();
            if bf16_out {
                e += v.abs() / 256.0;
            }
            tol[i * n + j] = e;
        }
    }
    (want, tol)
}

fn read_out(dev: &Device, c: &kernels_cu::Buffer) -> Vec<f64> {
    match c.dtype() {
        DType::F32 => dev
            .dtoh::<f32>(c)
            .unwrap()
            .iter()
            .map(|&v| f64::from(v))
            .collect(),
        _ => dev
            .dtoh::<bf16>(c)
            .unwrap()
            .iter()
            .map(|v| v.to_f64())
            .collect(),
    }
}

/// A poisoned output (β = 0) or one holding fresh values (β ≠ 0), with those values in f64.
fn output(
    dev: &Device,
    rng: &mut Rng,
    dtype: DType,
    len: usize,
    beta: f32,
) -> (kernels_cu::Buffer, Vec<f64>) {
    if beta == 0.0 {
        return (dev.alloc(dtype, len).unwrap(), vec![f64::NAN; len]);
    }
    let v = rng.bf16s(len);
    let c0: Vec<f64> = v.iter().map(|x| x.to_f64()).collect();
    let buf = match dtype {
        DType::F32 => dev
            .htod(&v.iter().map(|x| x.to_f32()).collect::<Vec<_>>())
            .unwrap(),
        _ => dev.htod(&v).unwrap(),
    };
    (buf, c0)
}

#[allow(clippy::too_many_arguments)]
fn check_nf4_gemm(
    m: usize,
    n: usize,
    k: usize,
    backward: bool,
    dtype: DType,
    alpha: f32,
    beta: f32,
    seed: u64,
) {
    check_nf4_gemm_split(m, n, k, backward, dtype, alpha, beta, seed, None);
}

/// [`check_nf4_gemm`] launched by `schedule` (None: the launcher's choice); with a split, the
/// product is computed twice and must be bit-identical (fixed reduction order).
#[allow(clippy::too_many_arguments)]
fn check_nf4_gemm_split(
    m: usize,
    n: usize,
    k: usize,
    backward: bool,
    dtype: DType,
    alpha: f32,
    beta: f32,
    seed: u64,
    schedule: Option<Nf4Schedule>,
) {
    let mut rng = Rng::from_state(seed);
    let q = quantize(&mut rng, n, k, 64, true);
    let wv: Vec<f64> = q.dequantize_bf16().iter().map(|v| v.to_f64()).collect();
    let (red, n_out) = if backward { (n, k) } else { (k, n) };
    let a = rng.bf16s(m * red);
    let af: Vec<f64> = a.iter().map(|v| v.to_f64()).collect();
    let mut devs = devices();
    devs.push(hopper_emulator());
    let mut mma_sync_bits: Option<Vec<u64>> = None;
    // Every device starts from the same C (β ≠ 0), so that the emulators' outputs compare bitwise.
    let out_state = rng.next_u64();
    for dev in devs {
        let w = upload(&dev, &q);
        let ab = dev.htod(&a).unwrap();
        let (mut c, c0) = output(
            &dev,
            &mut Rng::from_state(out_state),
            dtype,
            m * n_out,
            beta,
        );
        let product = if backward {
            Nf4Product::BackwardInput
        } else {
            Nf4Product::Forward
        };
        let initial = read_out(&dev, &c);
        gemm::nf4_gemm(&dev, product, &ab, &w, &mut c, m, alpha, beta, schedule).unwrap();
        if schedule.is_some_and(|s| s.tail_splits > 1) {
            // Same inputs (the initial C again when β reads it): the same bits.
            let mut again = dev.alloc(dtype, m * n_out).unwrap();
            if beta != 0.0 {
                again = match dtype {
                    DType::F32 => dev
                        .htod(&initial.iter().map(|&v| v as f32).collect::<Vec<_>>())
                        .unwrap(),
                    _ => dev
                        .htod(
                            &initial
                                .iter()
                                .map(|&v| bf16::from_f64(v))
                                .collect::<Vec<_>>(),
                        )
                        .unwrap(),
                };
            }
            gemm::nf4_gemm(&dev, product, &ab, &w, &mut again, m, alpha, beta, schedule).unwrap();
            let (x, y) = (read_out(&dev, &c), read_out(&dev, &again));
            let bits = |v: &[f64]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&x), bits(&y), "split-K {schedule:?} not deterministic");
        }
        let (want, tol) = if backward {
            // dX[i][j] = Σ_r dY[i][r]·W[r][j]
            reference(
                m,
                n_out,
                red,
                |i, r| af[i * red + r],
                |r, j| wv[r * k + j],
                alpha.into(),
                beta.into(),
                &c0,
                dtype == DType::BF16,
            )
        } else {
            // Y[i][j] = Σ_r X[i][r]·W[j][r]
            reference(
                m,
                n_out,
                red,
                |i, r| af[i * red + r],
                |r, j| wv[j * k + r],
                alpha.into(),
                beta.into(),
                &c0,
                dtype == DType::BF16,
            )
        };
        let what = format!(
            "nf4 {} {dtype:?} m{m} n{n} k{k} α{alpha} β{beta} schedule {schedule:?} on {:?}",
            if backward { "backward" } else { "forward" },
            dev.kind()
        );
        let got = read_out(&dev, &c);
        assert_close(&what, &got, &want, &tol);
        if dev.kind() == BackendKind::Emulator {
            let bits: Vec<u64> = got.iter().map(|f| f.to_bits()).collect();
            match &mma_sync_bits {
                None => mma_sync_bits = Some(bits),
                Some(first) => assert!(
                    *first == bits,
                    "{what}: the wgmma kernel (emulated 9.0) differs from the mma.sync kernel"
                ),
            }
        }
    }
}

/// The emulator as a compute capability 9.0 device (the launchers' sm_90a paths); checks and
/// order from the environment, as for [`devices`].
fn hopper_emulator() -> Device {
    let dev = Device::emulator_with(EmulatorOptions {
        compute_capability: (9, 0),
        ..EmulatorOptions::default()
    })
    .unwrap();
    assert!(gemm::nf4_uses_wgmma(&dev));
    dev
}

#[allow(clippy::too_many_arguments)]
fn check_gemm(
    layout: Layout,
    m: usize,
    n: usize,
    k: usize,
    dtype: DType,
    alpha: f32,
    beta: f32,
    seed: u64,
) {
    let mut rng = Rng::from_state(seed);
    let a = rng.bf16s(m * k);
    let b = rng.bf16s(n * k);
    let af: Vec<f64> = a.iter().map(|v| v.to_f64()).collect();
    let bf: Vec<f64> = b.iter().map(|v| v.to_f64()).collect();
    for dev in devices() {
        let ab = dev.htod(&a).unwrap();
        let bb = dev.htod(&b).unwrap();
        let (mut c, c0) = output(&dev, &mut rng, dtype, m * n, beta);
        gemm::gemm(&dev, layout, &ab, &bb, &mut c, m, n, k, alpha, beta).unwrap();
        let bfo = dtype == DType::BF16;
        let (want, tol) = match layout {
            Layout::Nt => reference(
                m,
                n,
                k,
                |i, r| af[i * k + r],
                |r, j| bf[j * k + r],
                alpha.into(),
                beta.into(),
                &c0,
                bfo,
            ),
            Layout::Nn => reference(
                m,
                n,
                k,
                |i, r| af[i * k + r],
                |r, j| bf[r * n + j],
                alpha.into(),
                beta.into(),
                &c0,
                bfo,
            ),
            Layout::Tn => reference(
                m,
                n,
                k,
                |i, r| af[r * m + i],
                |r, j| bf[r * n + j],
                alpha.into(),
                beta.into(),
                &c0,
                bfo,
            ),
        };
        let what = format!(
            "gemm {layout:?} {dtype:?} m{m} n{n} k{k} α{alpha} β{beta} on {:?}",
            dev.kind()
        );
        assert_close(&what, &read_out(&dev, &c), &want, &tol);
    }
}

/// GPU quantize (packed codes + fp32 absmax) against the CPU without double quantization.
fn check_quantize(n: usize, blocksize: usize, seed: u64, bf16_src: bool) {
    let mut rng = Rng::from_state(seed);
    let mut vals: Vec<f32> = (0..n)
        .map(|i| (rng.unit() * 0.05 * (1.0 + (i / 61) as f64 % 5.0)) as f32)
        .collect();
    // Exact zeros, threshold-sized values, an all-zero block and a NaN block.
    for (i, v) in vals.iter_mut().enumerate() {
        match i % 97 {
            3 => *v = 0.0,
            5 => *v = -0.0,
            _ => {}
        }
    }
    if n > 3 * blocksize {
        vals[blocksize..2 * blocksize].fill(0.0);
        vals[2 * blocksize + 1] = f32::NAN;
    }
    let cfg = QuantConfig {
        blocksize,
        double_quant: false,
        ..QuantConfig::default()
    };
    for dev in devices() {
        let (q, src) = if bf16_src {
            let v: Vec<bf16> = vals.iter().map(|&x| bf16::from_f32(x)).collect();
            (
                QuantizedWeight::quantize(&v, 1, n, cfg).unwrap(),
                dev.htod(&v).unwrap(),
            )
        } else {
            (
                QuantizedWeight::quantize(&vals, 1, n, cfg).unwrap(),
                dev.htod(&vals).unwrap(),
            )
        };
        let Absmax::Plain(want_am) = q.absmax() else {
            panic!("no double quantization requested")
        };
        let (packed, absmax) = gemm::quantize(&dev, &src, blocksize, &NF4_THRESHOLDS).unwrap();
        let got_p = dev.dtoh::<u8>(&packed).unwrap();
        assert_eq!(
            got_p,
            q.packed(),
            "packed codes n{n} bs{blocksize} bf16 {bf16_src}"
        );
        let got_am: Vec<u32> = dev
            .dtoh::<f32>(&absmax)
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect();
        let want: Vec<u32> = want_am.iter().map(|v| v.to_bits()).collect();
        assert_eq!(got_am, want, "absmax n{n} bs{blocksize} bf16 {bf16_src}");
    }
}

#[test]
fn quantize_is_bit_identical() {
    check_quantize(64 * 5, 64, 51, false);
    check_quantize(64 * 5 + 37, 64, 52, true);
    check_quantize(1001, 128, 53, false);
    check_quantize(7, 64, 54, true);
    check_quantize(4096 + 64 * 3 + 1, 4096, 55, false);
}

#[test]
fn dequantize_is_bit_identical() {
    // Odd element counts (a half byte), partial last blocks, several blocksizes, f32/bf16 sources.
    check_dequant(3, 67, 64, 1);
    check_dequant(17, 64, 64, 2);
    check_dequant(5, 301, 128, 3);
    check_dequant(40, 96, 32, 4);
    // More than 256 absmax blocks: several nested blocks.
    check_dequant(33, 640, 64, 5);
}

#[test]
fn nf4_gemm_multi_block_and_deep_k() {
    // 2x2 blocks of 128x128 and more k-tiles than pipeline stages (320 / 64 = 5 > 3).
    check_nf4_gemm(130, 200, 320, false, DType::F32, 1.0, 0.0, 11);
    check_nf4_gemm(129, 72, 320, true, DType::F32, 1.0, 0.0, 12);
    // Backward with K = 192: the last 128-column tile hangs over K.
    check_nf4_gemm(40, 136, 192, true, DType::BF16, 0.5, 0.0, 13);
}

#[test]
fn nf4_gemm_split_k_matches_and_is_deterministic() {
    // 2x2 tiles, 6 k-tiles in 2, 3 and 4 splits (uneven: 1 or 2 tiles per split), both
    // products, β reading C, bf16 and f32 outputs.
    let split = |s| Some(Nf4Schedule::split(s));
    check_nf4_gemm_split(130, 136, 384, false, DType::F32, 1.0, 0.0, 61, split(2));
    check_nf4_gemm_split(129, 72, 384, false, DType::BF16, 0.5, 1.0, 62, split(3));
    check_nf4_gemm_split(70, 390, 256, true, DType::F32, 1.0, -0.5, 63, split(4));
    check_nf4_gemm_split(40, 136, 192, true, DType::BF16, 1.0, 0.0, 64, split(3));
    // More splits than k-tiles: clamped.
    check_nf4_gemm_split(17, 20, 64, false, DType::F32, 1.0, 0.0, 65, split(16));
}

/// A head launch of whole tile columns unsplit, then the remaining columns split along the
/// reduction (the launcher's schedule for a grid's last partial wave): every column, the last
/// one hanging over the output, written once, with β reading C and both output types.
#[test]
fn nf4_gemm_head_and_split_tail_cover_every_column() {
    let sched = |head_cols, tail_splits| {
        Some(Nf4Schedule {
            head_cols,
            tail_splits,
        })
    };
    // Forward, 390 outputs = 4 tile columns (the last 6 wide), 6 k-tiles.
    check_nf4_gemm_split(130, 390, 384, false, DType::F32, 1.0, 0.0, 81, sched(1, 3));
    check_nf4_gemm_split(129, 390, 384, false, DType::BF16, 0.5, 1.0, 82, sched(3, 2));
    // A single row, a head of one column and an unsplit tail: two plain launches.
    check_nf4_gemm_split(1, 257, 64, false, DType::F32, 1.0, 0.0, 85, sched(1, 1));
    // Input gradient, 384 outputs = 3 columns, reduction 200 (4 k-tiles, the last ragged).
    check_nf4_gemm_split(70, 200, 384, true, DType::F32, 1.0, -0.5, 83, sched(2, 4));
    check_nf4_gemm_split(40, 136, 384, true, DType::BF16, 1.0, 0.0, 84, sched(1, 2));
}

/// The weight on the device is in the fragment layout and holds exactly bitsandbytes' codes.
#[test]
fn uploaded_codes_are_the_bitsandbytes_codes_in_fragment_order() {
    let mut rng = Rng::from_state(71);
    for (n, k) in [(70, 128), (64, 64), (5, 192)] {
        let q = quantize(&mut rng, n, k, 64, false);
        for dev in devices() {
            let w = upload(&dev, &q);
            assert_eq!(w.layout, CodeLayout::Fragment);
            let frag = dev.dtoh::<u8>(&w.packed).unwrap();
            assert_eq!(frag.len(), nf4_layout::fragment_bytes(n, k));
            assert_eq!(
                nf4_layout::from_fragment(&frag, n, k),
                q.packed(),
                "{n}x{k}"
            );
        }
    }
    // A blocksize the GEMM does not take keeps bitsandbytes' layout.
    let q = quantize(&mut rng, 8, 96, 32, true);
    for dev in devices() {
        assert_eq!(upload(&dev, &q).layout, CodeLayout::Bnb);
    }
}

#[test]
fn nf4_gemm_accumulates_with_beta() {
    check_nf4_gemm(33, 50, 128, false, DType::F32, 0.75, 1.0, 21);
    check_nf4_gemm(20, 64, 128, true, DType::BF16, 1.0, -0.5, 22);
}

#[test]
fn bf16_gemm_deep_k_and_multi_block() {
    // K = 200: 7 k-tiles of 32 (> 4 stages), ragged last tile; 2 block rows/cols.
    check_gemm(Layout::Nt, 131, 136, 200, DType::F32, 1.0, 0.0, 31);
    check_gemm(Layout::Nn, 64, 129, 200, DType::BF16, 1.0, 0.0, 32);
    check_gemm(Layout::Tn, 136, 40, 200, DType::F32, 1.0, 0.5, 33);
    // Odd N: unpaired stores in the epilogue, with β reading the old values.
    check_gemm(Layout::Nt, 37, 51, 45, DType::BF16, 1.0, 0.25, 34);
    check_gemm(Layout::Nn, 20, 9, 70, DType::F32, -1.0, 2.0, 35);
}

#[test]
fn launchers_reject_unsupported_weights() {
    let dev = Device::emulator().unwrap();
    let mut rng = Rng::from_state(41);
    // K not a multiple of 64.
    let q = quantize(&mut rng, 8, 96, 32, true);
    let w = upload(&dev, &q);
    let x = dev.htod(&rng.bf16s(2 * 96)).unwrap();
    let mut y = dev.alloc(DType::F32, 2 * 8).unwrap();
    let e = gemm::nf4_forward(&dev, &x, &w, &mut y, 2, 1.0, 0.0).unwrap_err();
    assert!(matches!(e, Error::InvalidLaunch { .. }), "{e}");
    assert!(e.to_string().contains("blocksize 64"), "{e}");
    let q = quantize(&mut rng, 8, 96, 64, true);
    let w = upload(&dev, &q);
    let e = gemm::nf4_forward(&dev, &x, &w, &mut y, 2, 1.0, 0.0).unwrap_err();
    assert!(e.to_string().contains("multiple of 64"), "{e}");
    // Wrong activation length and dtype.
    let q = quantize(&mut rng, 8, 64, 64, true);
    let w = upload(&dev, &q);
    let e = gemm::nf4_forward(&dev, &x, &w, &mut y, 2, 1.0, 0.0).unwrap_err();
    assert!(matches!(e, Error::Length { .. }), "{e}");
    let xf = dev.htod(&vec![0.5f32; 2 * 64]).unwrap();
    let e = gemm::nf4_forward(&dev, &xf, &w, &mut y, 2, 1.0, 0.0).unwrap_err();
    assert!(matches!(e, Error::DType { .. }), "{e}");
    // A split count outside 1 ..= NF4_MAX_SPLITS, and a head that leaves no tail (1 tile
    // column).
    let x = dev.htod(&rng.bf16s(2 * 64)).unwrap();
    for (schedule, says) in [
        (Nf4Schedule::split(gemm::NF4_MAX_SPLITS + 1), "splits"),
        (
            Nf4Schedule {
                head_cols: 1,
                tail_splits: 2,
            },
            "no tail",
        ),
    ] {
        let e = gemm::nf4_gemm(
            &dev,
            Nf4Product::Forward,
            &x,
            &w,
            &mut y,
            2,
            1.0,
            0.0,
            Some(schedule),
        )
        .unwrap_err();
        assert!(e.to_string().contains(says), "{e}");
    }
    // Inconsistent parts.
    let mut parts = nf4_parts("test weight", &q).unwrap();
    parts.packed = &q.packed()[1..];
    let e = Nf4Weight::upload(&dev, &parts).unwrap_err();
    assert!(e.to_string().contains("packed"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn nf4_gemm_matches_f64_reference(
        m in 1usize..70,
        n in 1usize..100,
        kb in 1usize..4,
        backward in any::<bool>(),
        bf16_out in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let dtype = if bf16_out { DType::BF16 } else { DType::F32 };
        check_nf4_gemm(m, n, 64 * kb, backward, dtype, 1.0, 0.0, seed);
    }

    /// Any schedule: a head of whole tile columns unsplit (none to all but one), the rest
    /// split along the reduction (more splits than k-tiles too), over ragged last columns.
    #[test]
    fn nf4_gemm_any_schedule_matches_f64_reference(
        m in 1usize..200,
        cols in 2usize..4,
        ragged in 0usize..128,
        kb in 1usize..5,
        backward in any::<bool>(),
        head_frac in 0.0f64..1.0,
        splits in 1usize..=gemm::NF4_MAX_SPLITS,
        bf16_out in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let dtype = if bf16_out { DType::BF16 } else { DType::F32 };
        // `cols` output tile columns: forward over W's rows (the last ragged), backward over
        // its columns (a multiple of 64: the last tile column whole or half).
        let (n, k) = if backward {
            (64 * kb, 64 * (2 * (cols - 1) + 1 + ragged % 2))
        } else {
            (128 * (cols - 1) + 1 + ragged, 64 * kb)
        };
        let head_cols = ((head_frac * cols as f64) as usize).min(cols - 1);
        let schedule = Nf4Schedule { head_cols, tail_splits: splits };
        check_nf4_gemm_split(m, n, k, backward, dtype, 1.0, 0.0, seed, Some(schedule));
    }

    #[test]
    fn bf16_gemm_matches_f64_reference(
        layout in prop_oneof![Just(Layout::Nt), Just(Layout::Nn), Just(Layout::Tn)],
        m in 1usize..70,
        n in 1usize..100,
        k in 1usize..80,
        bf16_out in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let dtype = if bf16_out { DType::BF16 } else { DType::F32 };
        check_gemm(layout, m, n, k, dtype, 1.0, 0.0, seed);
    }

    #[test]
    fn dequantize_matches_cpu(n in 1usize..40, k in 1usize..200, bs in prop_oneof![Just(64usize), Just(128), Just(256)], seed in any::<u64>()) {
        check_dequant(n, k, bs, seed);
    }

    #[test]
    fn quantize_matches_cpu(n in 1usize..700, bs in prop_oneof![Just(64usize), Just(128), Just(256)], bf in any::<bool>(), seed in any::<u64>()) {
        check_quantize(n, bs, seed, bf);
    }
}
