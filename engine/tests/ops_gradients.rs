//! Every op's backward against central finite differences, in float64.
//!
//! The objective is `Σ w∘f(x)` with a fixed random projection `w`, so every output element
//! contributes. With f64 and eps = 1e-5 the truncation error of central differences is
//! O(eps²·f''') ≈ 1e-10 and the rounding error ≈ 1e-16/eps ≈ 1e-11, hence the 1e-6 tolerances.

use engine::ops::{self, IGNORE_INDEX};
use engine::testing::assert_err_contains;
use engine::testing::{check_gradients, rand_uniform, randn};
use engine::{rng, DType, Tensor, Var};

const EPS: f64 = 1e-5;
const ATOL: f64 = 1e-6;
const RTOL: f64 = 1e-6;

fn f64n(shape: &[usize], seed: u64) -> Tensor {
    randn(shape.to_vec(), DType::F64, seed, 1.0)
}

fn check(f: impl Fn(&[Var]) -> engine::Result<Var>, inputs: &[Tensor]) {
    let all = vec![true; inputs.len()];
    check_gradients(f, inputs, &all, EPS, ATOL, RTOL).unwrap();
}

#[test]
fn matmul_all_transpose_variants() {
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let (m, k, n) = (3, 5, 4);
        let a = if ta {
            f64n(&[2, k, m], 1)
        } else {
            f64n(&[2, m, k], 1)
        };
        let b = if tb {
            f64n(&[2, n, k], 2)
        } else {
            f64n(&[2, k, n], 2)
        };
        check(|v| ops::matmul_t(&v[0], &v[1], ta, tb), &[a, b]);
    }
}

#[test]
fn matmul_with_shared_rank2_rhs() {
    for tb in [false, true] {
        let b = if tb {
            f64n(&[4, 5], 4)
        } else {
            f64n(&[5, 4], 4)
        };
        check(
            |v| ops::matmul_t(&v[0], &v[1], false, tb),
            &[f64n(&[2, 3, 5], 3), b],
        );
    }
}

#[test]
fn linear_layer() {
    check(
        |v| ops::linear(&v[0], &v[1]),
        &[f64n(&[2, 3, 6], 5), f64n(&[7, 6], 6)],
    );
}

#[test]
fn linear_frozen_weight_gets_no_gradient() {
    let x = Var::parameter(f64n(&[3, 6], 7));
    let w = Var::constant(f64n(&[7, 6], 8));
    let y = ops::sum_all(&ops::linear(&x, &w).unwrap()).unwrap();
    let g = y.backward().unwrap();
    assert!(g.get(&w).is_none());
    assert!(g.get(&x).is_some());
    assert_eq!(g.len(), 1);
}

#[test]
fn add_mul_scale() {
    check(
        |v| ops::add(&v[0], &v[1]),
        &[f64n(&[3, 4], 9), f64n(&[3, 4], 10)],
    );
    check(
        |v| ops::add(&v[0], &v[1]),
        &[f64n(&[2, 3, 4], 11), f64n(&[4], 12)],
    );
    check(
        |v| ops::mul(&v[0], &v[1]),
        &[f64n(&[3, 4], 13), f64n(&[3, 4], 14)],
    );
    check(|v| ops::scale(&v[0], -1.7), &[f64n(&[5], 15)]);
}

#[test]
fn embedding_lookup() {
    let ids = Tensor::from_vec(vec![3u32, 0, 3, 5, 1], [5]).unwrap();
    check(|v| ops::embedding(&ids, &v[0]), &[f64n(&[6, 4], 16)]);
    let bad = Tensor::from_vec(vec![6u32], [1]).unwrap();
    let err = ops::embedding(&bad, &Var::constant(f64n(&[6, 4], 16))).unwrap_err();
    assert!(err.to_string().contains("token id 6"), "{err}");
}

#[test]
fn layer_norm_with_affine() {
    check(
        |v| ops::layer_norm(&v[0], &v[1], &v[2], 1e-5),
        &[f64n(&[2, 3, 8], 17), f64n(&[8], 18), f64n(&[8], 19)],
    );
}

#[test]
fn exact_gelu() {
    check(|v| ops::gelu(&v[0]), &[randn([4, 5], DType::F64, 20, 2.0)]);
}

#[test]
fn rope_neox() {
    let pos = Tensor::from_vec(vec![0u32, 1, 2, 7, 3, 4, 5, 6], [2, 4]).unwrap();
    check(
        |v| ops::rope(&v[0], &pos, 10_000.0),
        &[f64n(&[2, 3, 4, 6], 21)],
    );
}

#[test]
fn rope_neox_token_major() {
    let pos = Tensor::from_vec(vec![0u32, 1, 2, 7, 3, 4, 5, 6], [2, 4]).unwrap();
    check(
        |v| ops::rope_tokens(&v[0], &pos, 10_000.0),
        &[f64n(&[2, 4, 3, 6], 21)],
    );
}

#[test]
fn rope_token_major_is_head_major_rope_permuted() {
    let pos = Tensor::from_vec(vec![3u32, 1, 4, 1, 5, 9, 2, 6, 5, 3], [2, 5]).unwrap();
    let x = Var::constant(f64n(&[2, 3, 5, 8], 40));
    let heads = ops::rope(&x, &pos, 500.0).unwrap();
    let xt = ops::permute(&x, &[0, 2, 1, 3]).unwrap();
    let tokens = ops::rope_tokens(&xt, &pos, 500.0).unwrap();
    let back = ops::permute(&tokens, &[0, 2, 1, 3]).unwrap().value();
    assert_eq!(
        back.as_slice::<f64>().unwrap(),
        heads.value().as_slice::<f64>().unwrap()
    );
}

#[test]
fn attention_token_major_mqa_gqa_mha_with_padding() {
    let mask = Tensor::from_vec(vec![1u8, 1, 1, 1, 1, 1, 1, 1, 0, 0], [2, 5]).unwrap();
    for (hq, hkv) in [(4, 1), (6, 2), (2, 2)] {
        for causal in [true, false] {
            let q = f64n(&[2, 5, hq, 3], 32);
            let k = f64n(&[2, 5, hkv, 3], 33);
            let v = f64n(&[2, 5, hkv, 3], 34);
            check(
                |x| ops::attention_tokens(&x[0], &x[1], &x[2], Some(&mask), causal, 0.5),
                &[q, k, v],
            );
        }
    }
}

#[test]
fn attention_token_major_is_head_major_attention_permuted() {
    // Continuing a KV cache (3 queries over 7 keys), GQA, padding.
    let mask = Tensor::from_vec(vec![1u8, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1], [2, 7]).unwrap();
    let q = Var::constant(f64n(&[2, 4, 3, 5], 35));
    let k = Var::constant(f64n(&[2, 2, 7, 5], 36));
    let v = Var::constant(f64n(&[2, 2, 7, 5], 37));
    let heads = ops::attention(&q, &k, &v, Some(&mask), true, 0.4).unwrap();
    let t = |x: &Var| ops::permute(x, &[0, 2, 1, 3]).unwrap();
    let tokens = ops::attention_tokens(&t(&q), &t(&k), &t(&v), Some(&mask), true, 0.4).unwrap();
    let (want, got) = (heads.value(), t(&tokens).value());
    for (a, b) in want
        .as_slice::<f64>()
        .unwrap()
        .iter()
        .zip(got.as_slice::<f64>().unwrap())
    {
        assert!((a - b).abs() <= 1e-13 * (1.0 + a.abs()), "{a} vs {b}");
    }
}

#[test]
fn attention_mqa_gqa_mha_with_padding() {
    let mask = Tensor::from_vec(vec![1u8, 1, 1, 1, 1, 1, 1, 1, 0, 0], [2, 5]).unwrap();
    for (hq, hkv) in [(4, 1), (4, 2), (2, 2)] {
        for causal in [true, false] {
            let q = f64n(&[2, hq, 5, 3], 22);
            let k = f64n(&[2, hkv, 5, 3], 23);
            let v = f64n(&[2, hkv, 5, 3], 24);
            check(
                |x| ops::attention(&x[0], &x[1], &x[2], Some(&mask), causal, 0.5),
                &[q, k, v],
            );
        }
    }
}

#[test]
fn attention_continuing_a_kv_cache() {
    // Two new queries attend to six keys (four cached).
    let q = f64n(&[1, 2, 2, 4], 25);
    let k = f64n(&[1, 1, 6, 4], 26);
    let v = f64n(&[1, 1, 6, 4], 27);
    check(
        |x| ops::attention(&x[0], &x[1], &x[2], None, true, 0.5),
        &[q, k, v],
    );
}

#[test]
fn dropout_same_mask_in_backward() {
    let x = f64n(&[4, 16], 28);
    check(
        |v| {
            rng::set_state(rng::RngState {
                seed: 99,
                offset: 0,
            });
            ops::dropout(&v[0], 0.3, true)
        },
        &[x],
    );
}

#[test]
fn layout_ops() {
    check(|v| ops::permute(&v[0], &[2, 0, 1]), &[f64n(&[2, 3, 4], 29)]);
    check(|v| ops::narrow(&v[0], 1, 1, 2), &[f64n(&[2, 4, 3], 30)]);
    check(
        |v| ops::concat(&[&v[0], &v[1]], 1),
        &[f64n(&[2, 1, 3], 31), f64n(&[2, 2, 3], 32)],
    );
    check(|v| ops::reshape(&v[0], [6, 2]), &[f64n(&[3, 4], 33)]);
}

#[test]
fn cross_entropy_ignores_minus_100_and_divides_by_count() {
    let labels = [2, IGNORE_INDEX, 0, 4, IGNORE_INDEX];
    check(
        |v| ops::cross_entropy(&v[0], &labels, 7.0),
        &[f64n(&[5, 6], 34)],
    );
}

#[test]
fn fused_linear_cross_entropy_matches_unfused_and_has_right_gradients() {
    let labels = [2, IGNORE_INDEX, 0, 4, IGNORE_INDEX, 5, 1];
    let h = f64n(&[7, 5], 35);
    let w = f64n(&[6, 5], 36);
    for chunk in [1, 2, 7] {
        check(
            |v| ops::linear_cross_entropy(&v[0], &v[1], &labels, 4.0, chunk),
            &[h.clone(), w.clone()],
        );
        let fused = ops::linear_cross_entropy(
            &Var::constant(h.clone()),
            &Var::constant(w.clone()),
            &labels,
            4.0,
            chunk,
        )
        .unwrap();
        let logits = ops::linear(&Var::constant(h.clone()), &Var::constant(w.clone())).unwrap();
        let plain = ops::cross_entropy(&logits, &labels, 4.0).unwrap();
        let (a, b) = (
            fused.value().to_scalar().unwrap(),
            plain.value().to_scalar().unwrap(),
        );
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
}

#[test]
fn linear_cross_entropy_with_frozen_weight_computes_the_input_gradient_in_forward() {
    // Only `hidden` needs a gradient: forward computes dh for an output gradient of 1.
    let labels = [2, IGNORE_INDEX, 0, 4, IGNORE_INDEX, 5, 1];
    let h = f64n(&[7, 5], 45);
    let w = Var::constant(f64n(&[6, 5], 46));
    // The unfused graph's gradient is the reference.
    let hp = Var::parameter(h.clone());
    let plain = ops::cross_entropy(&ops::linear(&hp, &w).unwrap(), &labels, 4.0).unwrap();
    let want = plain
        .backward()
        .unwrap()
        .get(&hp)
        .unwrap()
        .to_f64_vec()
        .unwrap();
    for chunk in [1, 3, 7] {
        let hp = Var::parameter(h.clone());
        let loss = ops::linear_cross_entropy(&hp, &w, &labels, 4.0, chunk).unwrap();
        let got = loss
            .backward()
            .unwrap()
            .get(&hp)
            .unwrap()
            .to_f64_vec()
            .unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-12 * (1.0 + w.abs()),
                "chunk {chunk}: {g} vs {w}"
            );
        }
        // An output gradient other than 1 takes the recomputing path: 3·dh.
        let loss = ops::linear_cross_entropy(&hp, &w, &labels, 4.0, chunk).unwrap();
        let scaled = ops::scale(&loss, 3.0).unwrap();
        let got3 = scaled
            .backward()
            .unwrap()
            .get(&hp)
            .unwrap()
            .to_f64_vec()
            .unwrap();
        for (g, w) in got3.iter().zip(&want) {
            assert!(
                (g - 3.0 * w).abs() <= 1e-12 * (1.0 + w.abs()),
                "chunk {chunk}: {g} vs 3·{w}"
            );
        }
    }
    // Finite differences with the weight frozen.
    check_gradients(
        |v| ops::linear_cross_entropy(&v[0], &v[1], &labels, 4.0, 3),
        &[h, f64n(&[6, 5], 46)],
        &[true, false],
        EPS,
        ATOL,
        RTOL,
    )
    .unwrap();
}

#[test]
fn cross_entropy_rejects_bad_labels_and_count() {
    let z = Var::constant(f64n(&[2, 3], 37));
    assert_err_contains(
        ops::cross_entropy(&z, &[0, 3], 1.0),
        "label 3 at row 1 is outside",
    );
    assert_err_contains(ops::cross_entropy(&z, &[0, -5], 1.0), "label -5 at row 1");
    assert_err_contains(
        ops::cross_entropy(&z, &[0, 1], 0.0),
        "token count must be positive",
    );
}

#[test]
fn composite_chain_through_many_ops() {
    // A miniature decoder block: LN -> linear -> gelu -> linear, plus residual.
    let x = f64n(&[2, 3, 4], 38);
    let g = rand_uniform([4], DType::F64, 39, 0.5, 1.5);
    let b = f64n(&[4], 40);
    let w1 = f64n(&[8, 4], 41);
    let w2 = f64n(&[4, 8], 42);
    check(
        |v| {
            let h = ops::layer_norm(&v[0], &v[1], &v[2], 1e-5)?;
            let h = ops::gelu(&ops::linear(&h, &v[3])?)?;
            let h = ops::linear(&h, &v[4])?;
            ops::add(&h, &v[0])
        },
        &[x, g, b, w1, w2],
    );
}

#[test]
fn quant_linear_input_gradient_and_f32_path() {
    use engine::nf4::{QuantConfig, QuantizedWeight};
    use std::sync::Arc;
    let (out_f, in_f) = (9, 128);
    let w = randn([out_f, in_f], DType::F32, 50, 0.1)
        .to_vec::<f32>()
        .unwrap();
    let q = Arc::new(QuantizedWeight::quantize(&w, out_f, in_f, QuantConfig::default()).unwrap());
    let x = f64n(&[2, 3, in_f], 51);
    check(|v| ops::quant_linear(&v[0], &q), std::slice::from_ref(&x));
    // The f32 tile-by-tile path equals the f64 dequantize-then-matmul path to f32 precision.
    let y64 = ops::quant_linear(&Var::constant(x.clone()), &q)
        .unwrap()
        .value()
        .to_f64_vec()
        .unwrap();
    let y32 = ops::quant_linear(&Var::constant(x.to_dtype(DType::F32).unwrap()), &q)
        .unwrap()
        .value()
        .to_f64_vec()
        .unwrap();
    for (a, b) in y64.iter().zip(&y32) {
        assert!((a - b).abs() < 1e-4 * (1.0 + a.abs()), "{a} vs {b}");
    }
    // No gradient can flow to the quantized weight: it is not a Var at all.
    let xv = Var::parameter(x.to_dtype(DType::F32).unwrap());
    let g = ops::sum_all(&ops::quant_linear(&xv, &q).unwrap())
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(g.len(), 1);
}

#[test]
fn quant_linear_uses_weights_rounded_to_the_stored_dtype() {
    use engine::nf4::{QuantConfig, QuantizedWeight};
    use std::sync::Arc;
    let (out_f, in_f, m) = (5, 192, 3);
    let w: Vec<half::bf16> = randn([out_f, in_f], DType::F32, 60, 0.3)
        .to_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(half::bf16::from_f32)
        .collect();
    let q = Arc::new(QuantizedWeight::quantize(&w, out_f, in_f, QuantConfig::default()).unwrap());
    let stored = q.dequantize_stored_f32();
    let raw = q.dequantize_f32();
    assert!(
        stored.iter().zip(&raw).any(|(a, b)| a != b),
        "bf16 rounding must change some values"
    );
    assert!(stored
        .iter()
        .all(|v| half::bf16::from_f32(*v).to_f32() == *v));
    let x = randn([m, in_f], DType::F32, 61, 1.0);
    let y = ops::quant_linear(&Var::constant(x.clone()), &q)
        .unwrap()
        .value()
        .to_f64_vec()
        .unwrap();
    let xs = x.to_f64_vec().unwrap();
    for i in 0..m {
        for o in 0..out_f {
            let want: f64 = (0..in_f)
                .map(|k| xs[i * in_f + k] * stored[o * in_f + k] as f64)
                .sum();
            let mag: f64 = (0..in_f)
                .map(|k| (xs[i * in_f + k] * stored[o * in_f + k] as f64).abs())
                .sum();
            let got = y[i * out_f + o];
            assert!(
                (got - want).abs() <= 1e-6 * mag,
                "[{i},{o}] {got} vs {want}"
            );
        }
    }
}

#[test]
fn unread_linears_have_the_same_backward_and_a_nan_value() {
    use engine::nf4::{QuantConfig, QuantizedWeight};
    use std::sync::Arc;
    let x = f64n(&[2, 3, 6], 60);
    let w = f64n(&[5, 6], 61);
    let dy = Var::constant(f64n(&[2, 3, 5], 62));
    // W trainable and frozen: both gradients equal those of `linear`, bit for bit.
    for w_trainable in [true, false] {
        let grads = |unread: bool| {
            let (xv, wv) = (Var::parameter(x.clone()), Var::leaf(w.clone(), w_trainable));
            let y = if unread {
                ops::linear_unread(&xv, &wv).unwrap()
            } else {
                ops::linear(&xv, &wv).unwrap()
            };
            let nan = y.value().to_f64_vec().unwrap().iter().all(|v| v.is_nan());
            assert_eq!(nan, unread, "value of linear (unread {unread})");
            let g = ops::sum_all(&ops::mul(&y, &dy).unwrap())
                .unwrap()
                .backward()
                .unwrap();
            let gx = g.get(&xv).unwrap().to_f64_vec().unwrap();
            let gw = g.get(&wv).map(|t| t.to_f64_vec().unwrap());
            assert_eq!(gw.is_some(), w_trainable);
            (gx, gw)
        };
        assert_eq!(grads(true), grads(false));
    }
    let wq: Vec<f32> = w.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap();
    let wq: Vec<f32> = (0..64 / 6 + 1)
        .flat_map(|_| wq.iter().copied())
        .take(5 * 64)
        .collect();
    let q = Arc::new(QuantizedWeight::quantize(&wq, 5, 64, QuantConfig::default()).unwrap());
    let xq = randn([2, 3, 64], DType::F32, 63, 1.0);
    let dyq = Var::constant(randn([2, 3, 5], DType::F32, 64, 1.0));
    let grad = |unread: bool| {
        let xv = Var::parameter(xq.clone());
        let y = if unread {
            ops::quant_linear_unread(&xv, &q).unwrap()
        } else {
            ops::quant_linear(&xv, &q).unwrap()
        };
        let nan = y.value().to_f64_vec().unwrap().iter().all(|v| v.is_nan());
        assert_eq!(nan, unread, "value of quant_linear (unread {unread})");
        let g = ops::sum_all(&ops::mul(&y, &dyq).unwrap())
            .unwrap()
            .backward()
            .unwrap();
        g.get(&xv).unwrap().to_f64_vec().unwrap()
    };
    assert_eq!(grad(true), grad(false));
}

#[test]
fn unread_attention_has_the_same_backward_and_a_nan_value() {
    // Token-major, multi-query and grouped, with padding: the kept-probability kernels.
    let mask = Tensor::from_vec(vec![1u8, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0], [2, 6]).unwrap();
    for hkv in [1, 2] {
        let (q, k, v) = (
            f64n(&[2, 6, 4, 3], 70),
            f64n(&[2, 6, hkv, 3], 71),
            f64n(&[2, 6, hkv, 3], 72),
        );
        let dy = Var::constant(f64n(&[2, 6, 4, 3], 73));
        let grads = |unread: bool| {
            let vars = [&q, &k, &v].map(|t| Var::parameter(t.clone()));
            let op = if unread {
                ops::attention_tokens_unread
            } else {
                ops::attention_tokens
            };
            let y = op(&vars[0], &vars[1], &vars[2], Some(&mask), true, 0.6).unwrap();
            let nan = y.value().to_f64_vec().unwrap().iter().all(|x| x.is_nan());
            assert_eq!(nan, unread, "value of attention (unread {unread})");
            let g = ops::sum_all(&ops::mul(&y, &dy).unwrap())
                .unwrap()
                .backward()
                .unwrap();
            vars.map(|x| g.get(&x).unwrap().to_f64_vec().unwrap())
        };
        let (read, unread) = (grads(false), grads(true));
        for (a, b) in read.iter().zip(&unread) {
            assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
            assert!(a.iter().any(|&x| x != 0.0));
        }
    }
}
