//! The 4-bit linear op against dequantize-then-matmul in float64.

use engine::nf4::{
    linear_backward_input, linear_forward, tile_rows, QuantConfig, QuantType, QuantizedWeight,
    TILE_ROWS,
};
use engine::testing::assert_err_contains;
use engine::testing::{self, Rng};
use proptest::prelude::*;

/// `c[m, n] = a[m, k] · b`, with `b[p, q]` read at `b[p·sp + q·sq]`, in float64.
fn matmul_f64(
    a: &[f32],
    m: usize,
    k: usize,
    b: &[f64],
    n: usize,
    b_at: impl Fn(usize, usize) -> usize,
) -> Vec<f64> {
    let mut c = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k)
                .map(|p| f64::from(a[i * k + p]) * b[b_at(p, j)])
                .sum();
        }
    }
    c
}

/// Relative-to-magnitude comparison: |got - want| <= 1e-5 · (sum of |terms|) per element.
fn assert_close(got: &[f32], want: &[f64], scale: &[f64], what: &str) {
    let got: Vec<f64> = got.iter().map(|&g| f64::from(g)).collect();
    let tol: Vec<f64> = scale.iter().map(|s| 1e-5 * s + 1e-30).collect();
    testing::assert_close(what, &got, want, &tol);
}

/// `n` values uniform in `[-scale, scale)`.
fn uniform_vec(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    rng.vec_f32(n, -scale, scale)
}

fn check(m: usize, out_f: usize, in_f: usize, cfg: QuantConfig, seed: u64) {
    let mut rng = Rng::new(seed);
    let w_src = uniform_vec(&mut rng, out_f * in_f, 0.05);
    let w = QuantizedWeight::quantize(&w_src, out_f, in_f, cfg).expect("quantize");
    let wd: Vec<f64> = w.dequantize_f32().iter().map(|&v| f64::from(v)).collect();
    let wabs: Vec<f64> = wd.iter().map(|v| v.abs()).collect();

    // Forward: y = x · Wᵀ.
    let x = uniform_vec(&mut rng, m * in_f, 1.0);
    let xabs: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    let want = matmul_f64(&x, m, in_f, &wd, out_f, |p, j| j * in_f + p);
    let scale = matmul_f64(&xabs, m, in_f, &wabs, out_f, |p, j| j * in_f + p);
    let mut y = vec![f32::NAN; m * out_f];
    linear_forward(&x, m, &w, &mut y).expect("forward");
    assert_close(
        &y,
        &want,
        &scale,
        &format!("forward m={m} out={out_f} in={in_f}"),
    );

    // Backward: dx = dy · W.
    let dy = uniform_vec(&mut rng, m * out_f, 1.0);
    let dyabs: Vec<f32> = dy.iter().map(|v| v.abs()).collect();
    let want = matmul_f64(&dy, m, out_f, &wd, in_f, |p, j| p * in_f + j);
    let scale = matmul_f64(&dyabs, m, out_f, &wabs, in_f, |p, j| p * in_f + j);
    let mut dx = vec![f32::NAN; m * in_f];
    linear_backward_input(&dy, m, &w, &mut dx).expect("backward");
    assert_close(
        &dx,
        &want,
        &scale,
        &format!("backward m={m} out={out_f} in={in_f}"),
    );
}

#[test]
fn linear_matches_f64_reference_across_tiles() {
    // More output rows than one tile, with a partial last tile, and odd sizes everywhere.
    check(7, TILE_ROWS * 2 + 37, 131, QuantConfig::default(), 1);
    check(
        33,
        300,
        257,
        QuantConfig {
            quant_type: QuantType::Fp4,
            blocksize: 128,
            double_quant: false,
        },
        2,
    );
    check(
        1,
        513,
        64,
        QuantConfig {
            blocksize: 32,
            ..QuantConfig::default()
        },
        3,
    );
    // Wide input: the tile shrinks below TILE_ROWS to bound its buffer.
    assert!(tile_rows(20000) < 120);
    check(2, 120, 20000, QuantConfig::default(), 5);
    // Large enough for gemm's multithreaded path.
    check(64, 600, 300, QuantConfig::default(), 4);
}

#[test]
fn linear_is_deterministic_across_thread_counts() {
    let mut rng = Rng::new(11);
    let (m, out_f, in_f) = (64, 700, 320);
    let w = QuantizedWeight::quantize(
        &uniform_vec(&mut rng, out_f * in_f, 0.05),
        out_f,
        in_f,
        QuantConfig::default(),
    )
    .unwrap();
    let x = uniform_vec(&mut rng, m * in_f, 1.0);
    let dy = uniform_vec(&mut rng, m * out_f, 1.0);
    let run = |threads: usize| {
        engine::testing::with_threads(threads, || {
            let mut y = vec![f32::NAN; m * out_f];
            let mut dx = vec![f32::NAN; m * in_f];
            linear_forward(&x, m, &w, &mut y).unwrap();
            linear_backward_input(&dy, m, &w, &mut dx).unwrap();
            (
                y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                dx.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            )
        })
    };
    assert_eq!(run(1), run(3));
}

#[test]
fn degenerate_and_bad_shapes() {
    let w = QuantizedWeight::quantize(
        &[0.5f32, -0.25, 1.0, 0.125, -1.0, 0.75],
        2,
        3,
        QuantConfig::default(),
    )
    .unwrap();
    let mut y = vec![f32::NAN; 4];
    assert_err_contains(
        linear_forward(&[1.0; 5], 2, &w, &mut y),
        "input x: expected 6 elements",
    );
    assert_err_contains(
        linear_forward(&[1.0; 6], 2, &w, &mut y[..3]),
        "output y: expected 4 elements",
    );
    let mut dx = vec![f32::NAN; 6];
    assert_err_contains(
        linear_backward_input(&[1.0; 3], 2, &w, &mut dx),
        "gradient dy: expected 4 elements",
    );
    linear_forward(&[], 0, &w, &mut []).unwrap();
    // in_features == 0: y is an empty sum, all zeros.
    let empty_in = QuantizedWeight::quantize::<f32>(&[], 3, 0, QuantConfig::default()).unwrap();
    let mut y = vec![f32::NAN; 6];
    linear_forward(&[], 2, &empty_in, &mut y).unwrap();
    assert!(y.iter().all(|&v| v == 0.0));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn linear_matches_f64_reference(
        m in 1usize..20,
        out_f in 1usize..300,
        in_f in 1usize..200,
        blocksize in prop::sample::select(vec![32usize, 64, 256, 4096]),
        nf4 in any::<bool>(),
        dq in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let quant_type = if nf4 { QuantType::Nf4 } else { QuantType::Fp4 };
        check(m, out_f, in_f, QuantConfig { quant_type, blocksize, double_quant: dq }, seed);
    }
}
