//! Round-trip properties of NF4/FP4 quantization on random weights (proptest), row-range
//! dequantization, thread-count independence and memory accounting.

use engine::nf4::{Absmax, QuantConfig, QuantElement, QuantType, QuantizedWeight, BLOCKSIZES};
use engine::testing::assert_err_contains;
use engine::testing::Rng;
use half::{bf16, f16};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug)]
enum Dist {
    Normal,
    /// Normal divided by sqrt(uniform): a few weights far beyond the rest of their block.
    Heavy,
}

fn weights(seed: u64, n: usize, dist: Dist, scale: f64) -> Vec<f32> {
    let mut rng = Rng::from_state(seed);
    (0..n)
        .map(|_| {
            let z = rng.normal();
            let v = match dist {
                Dist::Normal => z,
                Dist::Heavy => z / rng.open_unit_f64().max(1e-4).sqrt(),
            };
            (v * scale) as f32
        })
        .collect()
}

/// Half the largest gap between neighbouring code values.
fn max_half_gap(qt: QuantType) -> f64 {
    let mut v: Vec<f64> = qt.table().iter().map(|&x| f64::from(x)).collect();
    v.sort_by(f64::total_cmp);
    v.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max) / 2.0
}

/// Checks dequant(quant(src)) against src for one source element type.
fn check_round_trip<T: QuantElement>(
    src: &[T],
    out_f: usize,
    in_f: usize,
    cfg: QuantConfig,
) -> Result<(), TestCaseError> {
    let w = QuantizedWeight::quantize(src, out_f, in_f, cfg)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let n = out_f * in_f;
    prop_assert_eq!(w.packed().len(), n.div_ceil(2));
    prop_assert_eq!(w.num_blocks(), n.div_ceil(cfg.blocksize));
    let x: Vec<f64> = src.iter().map(|v| f64::from(v.to_f32())).collect();
    let deq = w.dequantize_f32();
    let half_gap = max_half_gap(cfg.quant_type);
    let table = cfg.quant_type.table();
    for (b, block) in x.chunks(cfg.blocksize).enumerate() {
        let true_absmax = block.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let rec = f64::from(w.absmax().get(b));
        // Double quantization error of the scale: half the widest dynamic-map gap (0.0070)
        // times the nested absmax.
        let scale_err = match w.absmax() {
            Absmax::Plain(v) => {
                prop_assert_eq!(
                    f64::from(v[b]),
                    if true_absmax == 0.0 && block.len() < cfg.blocksize {
                        f64::from(1e-38f32)
                    } else {
                        true_absmax
                    }
                );
                0.0
            }
            Absmax::Double(dq) => {
                0.00704 * f64::from(dq.nested_absmax[b / 256]) * (1.0 + 1e-6) + 1e-6 * rec.abs()
            }
        };
        prop_assert!(
            (rec - true_absmax).abs() <= scale_err + f64::from(1e-38f32),
            "block {} absmax {} vs {}",
            b,
            rec,
            true_absmax
        );
        for (j, &xi) in block.iter().enumerate() {
            let i = b * cfg.blocksize + j;
            let err = (f64::from(deq[i]) - xi).abs();
            let bound = half_gap * true_absmax + scale_err + 1e-6 * true_absmax;
            prop_assert!(
                err <= bound,
                "element {}: x {} deq {} err {} bound {}",
                i,
                xi,
                deq[i],
                err,
                bound
            );
            // The chosen code is the nearest one to x / absmax (up to fp32 scaling error).
            if true_absmax > 0.0 {
                let byte = w.packed()[i / 2];
                let code = if i.is_multiple_of(2) {
                    byte >> 4
                } else {
                    byte & 15
                };
                let s = xi / true_absmax;
                let d = (s - f64::from(table[code as usize])).abs();
                let best = table
                    .iter()
                    .map(|&t| (s - f64::from(t)).abs())
                    .fold(f64::INFINITY, f64::min);
                prop_assert!(
                    d <= best + 1e-6,
                    "element {}: code {} is not nearest to {}",
                    i,
                    code,
                    s
                );
            }
        }
    }
    // The odd tail is padded with the code of 0.
    if n % 2 == 1 {
        let pad = w.packed()[n / 2] & 15;
        prop_assert_eq!(table[pad as usize], 0.0);
    }
    // bf16 output is the fp32 output rounded once.
    let deq_bf16 = w.dequantize_bf16();
    for (a, b) in deq_bf16.iter().zip(&deq) {
        prop_assert_eq!(a.to_bits(), bf16::from_f32(*b).to_bits());
    }
    Ok(())
}

fn config() -> impl Strategy<Value = QuantConfig> {
    (
        prop::sample::select(BLOCKSIZES.to_vec()),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(blocksize, nf4, dq)| QuantConfig {
            quant_type: if nf4 { QuantType::Nf4 } else { QuantType::Fp4 },
            blocksize,
            double_quant: dq,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn round_trip_error_is_bounded(
        seed in any::<u64>(),
        out_f in 1usize..48,
        in_f in 1usize..300,
        heavy in any::<bool>(),
        log_scale in -6i32..4,
        src_type in 0u8..3,
        cfg in config(),
    ) {
        let dist = if heavy { Dist::Heavy } else { Dist::Normal };
        let x = weights(seed, out_f * in_f, dist, 10f64.powi(log_scale));
        match src_type {
            0 => check_round_trip(&x, out_f, in_f, cfg)?,
            1 => check_round_trip(&x.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>(), out_f, in_f, cfg)?,
            _ => check_round_trip(&x.iter().map(|&v| f16::from_f32(v.clamp(-65504.0, 65504.0))).collect::<Vec<_>>(), out_f, in_f, cfg)?,
        }
    }

    #[test]
    fn row_ranges_equal_the_whole(
        seed in any::<u64>(),
        out_f in 1usize..40,
        in_f in 1usize..200,
        cfg in config(),
        a in 0usize..40,
        b in 0usize..40,
    ) {
        let x = weights(seed, out_f * in_f, Dist::Normal, 0.02);
        let w = QuantizedWeight::quantize(&x, out_f, in_f, cfg).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let full = w.dequantize_f32();
        let (r0, r1) = (a.min(b) % (out_f + 1), a.max(b).min(out_f));
        let (r0, r1) = (r0.min(r1), r1);
        let mut part = vec![f32::NAN; (r1 - r0) * in_f];
        w.dequantize_rows_into(r0..r1, &mut part).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&part[..], &full[r0 * in_f..r1 * in_f]);
        let mut part16 = vec![bf16::NAN; (r1 - r0) * in_f];
        w.dequantize_rows_into(r0..r1, &mut part16).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(part16.iter().zip(&part).all(|(h, f)| h.to_bits() == bf16::from_f32(*f).to_bits()));
    }
}

#[test]
fn block_edge_cases() {
    // All-zero full block: absmax 0, codes of 0 (0x77 for NF4, bnb's CPU reference).
    // All-zero partial last block: absmax stored as the 1e-38 floor, as bitsandbytes does.
    let mut x = vec![0.0f32; 64 + 10];
    let w = QuantizedWeight::quantize(
        &x,
        1,
        74,
        QuantConfig {
            double_quant: false,
            ..QuantConfig::default()
        },
    )
    .unwrap();
    assert!(w.packed().iter().all(|&b| b == 0x77));
    assert_eq!(w.absmax_f32(), vec![0.0, 1e-38]);
    assert!(w.dequantize_f32().iter().all(|&v| v == 0.0));
    // A NaN poisons its block's absmax (torch's max) and gets the top code.
    x[3] = f32::NAN;
    x[70] = 1.0;
    let w = QuantizedWeight::quantize(
        &x,
        1,
        74,
        QuantConfig {
            double_quant: false,
            ..QuantConfig::default()
        },
    )
    .unwrap();
    assert!(w.absmax_f32()[0].is_nan());
    assert_eq!(w.packed()[1] & 15, 15);
    assert_eq!(w.absmax_f32()[1], 1.0);
}

#[test]
fn results_do_not_depend_on_thread_count() {
    let x = weights(7, 333 * 257, Dist::Heavy, 0.05);
    let run = |threads: usize| {
        engine::testing::with_threads(threads, || {
            let w = QuantizedWeight::quantize(&x, 333, 257, QuantConfig::default()).unwrap();
            let d = w.dequantize_f32();
            (w, d)
        })
    };
    let (w1, d1) = run(1);
    let (w4, d4) = run(4);
    assert_eq!(w1, w4);
    assert_eq!(
        d1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        d4.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
}

#[test]
fn memory_accounting() {
    let (out_f, in_f) = (1024usize, 4096usize);
    let n = out_f * in_f;
    let x = weights(3, n, Dist::Normal, 0.02);
    let dq = QuantizedWeight::quantize(&x, out_f, in_f, QuantConfig::default()).unwrap();
    let nb = n / 64;
    assert_eq!(dq.storage_bytes(), n / 2 + nb + 4 * nb.div_ceil(256) + 4);
    let expected = 4.0 + 8.0 / 64.0 + 32.0 / (64.0 * 256.0);
    assert!(
        (dq.bits_per_parameter() - expected).abs() < 1e-4,
        "{}",
        dq.bits_per_parameter()
    );
    assert!((dq.bits_per_parameter() - 4.127).abs() < 1e-3);
    let plain = QuantizedWeight::quantize(
        &x,
        out_f,
        in_f,
        QuantConfig {
            double_quant: false,
            ..QuantConfig::default()
        },
    )
    .unwrap();
    assert_eq!(plain.storage_bytes(), n / 2 + 4 * nb);
    assert_eq!(plain.bits_per_parameter(), 4.5);
}

#[test]
fn bad_arguments_are_errors() {
    let x = vec![0.5f32; 12];
    let cfg = QuantConfig::default();
    assert_err_contains(QuantizedWeight::quantize(&x, 3, 5, cfg), "needs 15");
    assert_err_contains(
        QuantizedWeight::quantize(
            &x,
            3,
            4,
            QuantConfig {
                blocksize: 48,
                ..cfg
            },
        ),
        "blocksize 48 is not one bitsandbytes accepts",
    );
    assert_err_contains(
        QuantizedWeight::quantize(
            &x,
            3,
            4,
            QuantConfig {
                blocksize: 16,
                ..cfg
            },
        ),
        "blocksize 16 is not one",
    );
    let w = QuantizedWeight::quantize(&x, 3, 4, cfg).unwrap();
    let mut out = vec![0.0f32; 8];
    assert_err_contains(
        w.dequantize_rows_into(2..4, &mut out),
        "row range 2..4 is outside",
    );
    assert_err_contains(
        w.dequantize_rows_into(0..1, &mut out),
        "dequantize output: expected 4",
    );
    assert!(w.dequantize_rows_into(1..3, &mut out).is_ok());
}

#[test]
fn quantize_from_unaligned_le_bytes_equals_typed() {
    let x = weights(5, 37 * 41, Dist::Heavy, 0.1);
    let cfg = QuantConfig::default();
    // One leading byte so the element bytes are misaligned for their dtype.
    let mut raw = vec![0u8];
    raw.extend(x.iter().flat_map(|v| v.to_le_bytes()));
    let typed = QuantizedWeight::quantize(&x, 37, 41, cfg).unwrap();
    let from_bytes =
        QuantizedWeight::quantize_le_bytes(&raw[1..], engine::DType::F32, 37, 41, cfg).unwrap();
    assert_eq!(typed, from_bytes);
    let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
    let mut raw = vec![0u8];
    raw.extend(xb.iter().flat_map(|v| v.to_le_bytes()));
    let typed = QuantizedWeight::quantize(&xb, 37, 41, cfg).unwrap();
    let from_bytes =
        QuantizedWeight::quantize_le_bytes(&raw[1..], engine::DType::BF16, 37, 41, cfg).unwrap();
    assert_eq!(typed, from_bytes);
    let xh: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
    let raw: Vec<u8> = xh.iter().flat_map(|v| v.to_le_bytes()).collect();
    let typed = QuantizedWeight::quantize(&xh, 37, 41, cfg).unwrap();
    assert_eq!(
        typed,
        QuantizedWeight::quantize_le_bytes(&raw, engine::DType::F16, 37, 41, cfg).unwrap()
    );
    assert_eq!(typed.dtype(), engine::DType::F16);
    assert_err_contains(
        QuantizedWeight::quantize_le_bytes(&raw[1..], engine::DType::F16, 37, 41, cfg),
        "expected 3034 elements",
    );
    assert_err_contains(
        QuantizedWeight::quantize_le_bytes(&raw, engine::DType::U8, 37, 82, cfg),
        "dtype u8 cannot be",
    );
}
