//! A NaN or infinity in an op's input must show in its output (and gradient), never be
//! dropped by a max or min reduction: the trainer's non-finite guard and every "refuse NaN"
//! check rely on NaN reaching the loss and the gradient norm.

use engine::ops::{cross_entropy, gelu, layer_norm, linear_cross_entropy};
use engine::{Tensor, Var};

/// Fresh values in [-2, 2) from a simple LCG (deterministic, no zeros in practice).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

fn param(v: Vec<f32>, dims: [usize; 2]) -> Var {
    Var::parameter(Tensor::from_vec(v, dims).unwrap())
}

#[test]
fn cross_entropy_propagates_nan_and_infinite_logits() {
    let (rows, vocab) = (3, 11);
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        for at in [0, 5, vocab - 1] {
            let mut z = values(rows * vocab, 3 + at as u64);
            z[vocab + at] = bad; // row 1
            let logits = param(z, [rows, vocab]);
            let loss = cross_entropy(&logits, &[2, 7, 4], 3.0).unwrap();
            let l = loss.value().to_scalar().unwrap();
            let g = loss.backward().unwrap();
            let dz = g.get(&logits).unwrap().to_f32_vec().unwrap();
            if bad == f32::NEG_INFINITY {
                // -inf is a legal logit (probability 0) unless it is the label's.
                assert!(l.is_finite() || at == 7, "loss {l} for -inf at {at}");
            } else {
                assert!(!l.is_finite(), "{bad} at {at}: the loss is {l}");
                assert!(
                    dz[vocab..2 * vocab].iter().any(|x| !x.is_finite()),
                    "{bad} at {at}: the row's gradient is finite"
                );
            }
        }
    }
}

#[test]
fn chunked_linear_cross_entropy_propagates_nan() {
    let (rows, hidden, vocab) = (4, 6, 9);
    let mut h = values(rows * hidden, 11);
    h[2 * hidden + 1] = f32::NAN;
    let hv = param(h, [rows, hidden]);
    let w = param(values(vocab * hidden, 12), [vocab, hidden]);
    let loss = linear_cross_entropy(&hv, &w, &[1, 2, 3, 4], 4.0, 2).unwrap();
    assert!(loss.value().to_scalar().unwrap().is_nan());
    let g = loss.backward().unwrap();
    assert!(g
        .get(&w)
        .unwrap()
        .to_f32_vec()
        .unwrap()
        .iter()
        .any(|x| x.is_nan()));
}

#[test]
fn layer_norm_and_gelu_propagate_nan_into_their_row() {
    let (rows, d) = (3, 8);
    let mut x = values(rows * d, 21);
    x[d + 3] = f32::NAN;
    let xv = param(x, [rows, d]);
    let gamma = Var::parameter(Tensor::from_vec(values(d, 22), [d]).unwrap());
    let beta = Var::parameter(Tensor::from_vec(values(d, 23), [d]).unwrap());
    let y = layer_norm(&xv, &gamma, &beta, 1e-5)
        .unwrap()
        .value()
        .to_f32_vec()
        .unwrap();
    assert!(y[d..2 * d].iter().all(|v| v.is_nan()), "{y:?}");
    assert!(y[..d].iter().chain(&y[2 * d..]).all(|v| v.is_finite()));
    let g = gelu(&xv).unwrap().value().to_f32_vec().unwrap();
    assert!(g[d + 3].is_nan());
}
