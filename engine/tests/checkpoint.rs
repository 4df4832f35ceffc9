//! Activation checkpointing: identical gradients, identical dropout masks, lower peak memory.

use engine::memory::MemoryScope;
use engine::ops;
use engine::testing::randn;
use engine::{checkpoint, no_grad, rng, DType, GradStore, Var};

struct Layer {
    w1: Var,
    w2: Var,
}

fn layer_forward(x: &Var, l: &Layer) -> engine::Result<Var> {
    let h = ops::dropout(x, 0.1, true)?;
    let h = ops::gelu(&ops::linear(&h, &l.w1)?)?;
    let h = ops::linear(&h, &l.w2)?;
    ops::add(x, &h)
}

fn run(layers: &[Layer], x: &Var, use_checkpoint: bool) -> (f64, GradStore, usize) {
    let scope = MemoryScope::enter();
    rng::manual_seed(1234);
    let mut h = x.clone();
    for l in layers {
        h = if use_checkpoint {
            let (w1, w2) = (l.w1.clone(), l.w2.clone());
            checkpoint(&[&h], move |inp| {
                layer_forward(
                    &inp[0],
                    &Layer {
                        w1: w1.clone(),
                        w2: w2.clone(),
                    },
                )
            })
            .unwrap()
        } else {
            layer_forward(&h, l).unwrap()
        };
    }
    let loss = ops::sum_all(&ops::mul(&h, &h).unwrap()).unwrap();
    let grads = loss.backward().unwrap();
    let value = loss.value().to_scalar().unwrap();
    drop((h, loss));
    let peak = scope.counter().peak_bytes();
    (value, grads, peak)
}

#[test]
fn checkpoint_gives_identical_gradients_and_lower_peak() {
    let (rows, d, hidden, n_layers) = (512, 128, 256, 6);
    let layers: Vec<Layer> = (0..n_layers)
        .map(|i| Layer {
            w1: Var::parameter(randn([hidden, d], DType::F32, 10 + i, 0.05)),
            w2: Var::parameter(randn([d, hidden], DType::F32, 100 + i, 0.05)),
        })
        .collect();
    let x = Var::parameter(randn([rows, d], DType::F32, 7, 1.0));
    let (l0, g0, peak_plain) = run(&layers, &x, false);
    let (l1, g1, peak_ckpt) = run(&layers, &x, true);
    assert_eq!(l0.to_bits(), l1.to_bits(), "loss differs: {l0} vs {l1}");
    let mut all = vec![&x];
    for l in &layers {
        all.push(&l.w1);
        all.push(&l.w2);
    }
    for v in all {
        let (a, b) = (
            g0.get(v).unwrap().to_vec::<f32>().unwrap(),
            g1.get(v).unwrap().to_vec::<f32>().unwrap(),
        );
        assert!(
            a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()),
            "gradient of {v:?} differs"
        );
        assert!(a.iter().any(|&p| p != 0.0));
    }
    // Plain keeps ~5 activations of [rows, hidden|d] per layer; checkpointed keeps one input
    // per layer plus one layer's recompute.
    assert!(
        (peak_ckpt as f64) < 0.6 * peak_plain as f64,
        "checkpointed peak {peak_ckpt} B is not well below plain peak {peak_plain} B"
    );
}

#[test]
fn checkpoint_trains_parameters_even_when_input_is_frozen() {
    let w = Var::parameter(randn([4, 4], DType::F64, 1, 1.0));
    let x = Var::constant(randn([2, 4], DType::F64, 2, 1.0));
    let wc = w.clone();
    let y = checkpoint(&[&x], move |i| ops::linear(&i[0], &wc)).unwrap();
    let g = ops::sum_all(&y).unwrap().backward().unwrap();
    let direct = ops::sum_all(&ops::linear(&x, &w).unwrap())
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(
        g.get(&w).unwrap().to_f64_vec().unwrap(),
        direct.get(&w).unwrap().to_f64_vec().unwrap()
    );
}

#[test]
fn capturing_a_non_leaf_is_reported() {
    let w = Var::parameter(randn([4, 4], DType::F64, 1, 1.0));
    let x = Var::parameter(randn([2, 4], DType::F64, 2, 1.0));
    let inner = ops::scale(&x, 2.0).unwrap(); // a non-leaf captured by the segment
    let y = checkpoint(&[&x], move |i| ops::add(&ops::linear(&i[0], &w)?, &inner)).unwrap();
    let err = ops::sum_all(&y)
        .unwrap()
        .backward()
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("non-leaf"), "{err}");
}

#[test]
fn no_grad_records_nothing() {
    let w = Var::parameter(randn([3, 3], DType::F32, 1, 1.0));
    let x = Var::constant(randn([2, 3], DType::F32, 2, 1.0));
    let y = no_grad(|| ops::linear(&x, &w).unwrap());
    assert!(!y.requires_grad());
    assert!(y.is_leaf());
    assert!(engine::grad_enabled());
}

#[test]
fn memory_accounting_counts_tensor_bytes() {
    let scope = MemoryScope::enter();
    let c = scope.counter().clone();
    let a = engine::Tensor::zeros([1000], DType::F32);
    let b = a.reshape([10, 100]).unwrap(); // shares the buffer: no new bytes
    assert_eq!(c.live_bytes(), 4000);
    let d = engine::Tensor::zeros([10], DType::F64);
    assert_eq!(c.live_bytes(), 4080);
    drop((a, b));
    assert_eq!(c.live_bytes(), 80);
    drop(d);
    assert_eq!(c.live_bytes(), 0);
    assert_eq!(c.peak_bytes(), 4080);
}
