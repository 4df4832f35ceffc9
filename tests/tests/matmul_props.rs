//! Property tests: the engine's GEMM (every transpose variant, odd shapes including 1 and
//! primes) against a naive float64 triple loop.
//!
//! Error bound: for f32 inputs of magnitude ≤ 1 summed over k terms, the float64-reference
//! error of any summation order is ≤ k·u·Σ|a||b| with u = 2⁻²⁴; we assert
//! |c − c_ref| ≤ 2·k·u·Σ_p |a_ip||b_pj| + 1e-30 element-wise (a relative bound in the sense of
//! the absolute-value product). f64 runs use u = 2⁻⁵³.

use engine::ops::matmul::gemm;
use engine::rng;
use proptest::prelude::*;

fn naive(
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    a: &[f64],
    b: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let at = |i: usize, p: usize| if ta { a[p * m + i] } else { a[i * k + p] };
    let bt = |p: usize, j: usize| if tb { b[j * k + p] } else { b[p * n + j] };
    let mut c = vec![0.0; m * n];
    let mut mag = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            for p in 0..k {
                c[i * n + j] += at(i, p) * bt(p, j);
                mag[i * n + j] += (at(i, p) * bt(p, j)).abs();
            }
        }
    }
    (c, mag)
}

fn dims() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(1usize),
        Just(2),
        Just(3),
        Just(7),
        Just(13),
        Just(31),
        Just(64),
        Just(97),
        1usize..130
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn gemm_f32_matches_f64_reference(m in dims(), n in dims(), k in dims(), ta: bool, tb: bool, acc: bool, seed: u64) {
        let a64: Vec<f64> = (0..m * k).map(|i| rng::uniform_f64(seed, i as u64) * 2.0 - 1.0).collect();
        let b64: Vec<f64> = (0..k * n).map(|i| rng::uniform_f64(seed ^ 0xB, i as u64) * 2.0 - 1.0).collect();
        let c0: Vec<f64> = (0..m * n).map(|i| rng::uniform_f64(seed ^ 0xC, i as u64)).collect();
        let a: Vec<f32> = a64.iter().map(|&x| x as f32).collect();
        let b: Vec<f32> = b64.iter().map(|&x| x as f32).collect();
        let a_exact: Vec<f64> = a.iter().map(|&x| x as f64).collect();
        let b_exact: Vec<f64> = b.iter().map(|&x| x as f64).collect();
        let mut c: Vec<f32> = if acc { c0.iter().map(|&x| x as f32).collect() } else { vec![f32::NAN; m * n] };
        gemm(ta, tb, m, n, k, &a, &b, &mut c, acc, true);
        let (r, mag) = naive(ta, tb, m, n, k, &a_exact, &b_exact);
        let u = f32::EPSILON as f64 / 2.0;
        for i in 0..m * n {
            let base = if acc { c0[i] as f32 as f64 } else { 0.0 };
            let want = base + r[i];
            let bound = 2.0 * (k as f64 + 1.0) * u * (mag[i] + base.abs()) + 1e-30;
            prop_assert!((c[i] as f64 - want).abs() <= bound,
                "element {} of {}x{}x{} (ta={}, tb={}): {} vs {} (bound {})", i, m, n, k, ta, tb, c[i], want, bound);
        }
    }

    #[test]
    fn gemm_f64_matches_reference(m in dims(), n in dims(), k in dims(), ta: bool, tb: bool, seed: u64) {
        let a: Vec<f64> = (0..m * k).map(|i| rng::normal_f64(seed, i as u64)).collect();
        let b: Vec<f64> = (0..k * n).map(|i| rng::normal_f64(seed ^ 0xB, i as u64)).collect();
        let mut c = vec![f64::NAN; m * n];
        gemm(ta, tb, m, n, k, &a, &b, &mut c, false, true);
        let (r, mag) = naive(ta, tb, m, n, k, &a, &b);
        for i in 0..m * n {
            let bound = 2.0 * k as f64 * f64::EPSILON * mag[i] + 1e-300;
            prop_assert!((c[i] - r[i]).abs() <= bound, "element {}: {} vs {}", i, c[i], r[i]);
        }
    }
}
