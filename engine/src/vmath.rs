//! Vectorized f32 `exp` and `erf` for the element-wise hot loops (softmax in attention and
//! cross-entropy, GELU forward and backward).
//!
//! libm's `expf` and `erff` are scalar calls; in the CPU training step they were about a tenth
//! of the step's time. Here both are branch-free polynomial kernels written once per lane
//! ([`exp`], [`erf`]) and run over slices by loops that LLVM vectorizes. On x86-64 CPUs with
//! AVX2 and FMA (detected at run time; the build sets no target CPU) the loops are compiled
//! with those features, eight lanes per instruction; elsewhere the same source runs without
//! them. Every step is an IEEE operation or a fused multiply-add (`mul_add`, correctly rounded
//! on every CPU), so both paths give the same bits.
//!
//! Accuracy against float64, exhaustive over all 2^32 inputs (`cargo run -p engine --release
//! --example vmath_max_ulp`): `exp` at most 0.91 ulp, `erf` at most 1.18 ulp (worst at
//! |x| = 1.06, just above the switch to `1 − erfc`), subnormal results included; NaN gives NaN,
//! `exp(+inf) = inf`, `exp(-inf) = 0`, `erf(±inf) = ±1`. The tests check a strided sample of
//! all bit patterns and dense spans at the branch points against float64 with bounds of 1 and
//! 1.2 ulp. libm's `expf`/`erff`, which these replace, are within 1 ulp too, so results move
//! by rounding only.
//!
//! - `exp(x)`: `x = n·ln2 + r`, `|r| ≤ ln2/2` (Cody–Waite, two FMAs), `exp(r)` by a degree-6
//!   polynomial fitted for relative error (3·10⁻⁹ before rounding), times `2^n` applied as two
//!   halves so that subnormal results are rounded once and `n = 128` does not overflow early.
//!   Inputs are clamped to `[-104, 89]`, beyond which the result is 0 or +inf anyway.
//! - `erf(x)`: `|x| < 1`: `x + x·R(x²)`, degree 6 in `x²` (relative error 1.2·10⁻⁹);
//!   `1 ≤ |x| < 3.919206`: `1 − exp(S(|x|) − x²)` with `S ≈ ln erfc(x) + x²`, a degree-8
//!   polynomial in `|x| − 2.4596028` (absolute error 8·10⁻⁹, i.e. relative in `erfc`);
//!   beyond, `erfc(x) < 2⁻²⁵` and the result rounds to ±1.

/// `xs[i] = exp(xs[i] − shift)`.
pub fn exp_shifted_in_place(xs: &mut [f32], shift: f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time just above).
        unsafe { exp_shifted_avx2(xs, shift) };
        return;
    }
    exp_shifted_lanes(xs, shift);
}

/// `xs[i] = erf(xs[i])`.
pub fn erf_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time just above).
        unsafe { erf_avx2(xs) };
        return;
    }
    erf_lanes(xs);
}

/// Whether the AVX2 + FMA loops may run (cached by the standard library after the first call).
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp_shifted_avx2(xs: &mut [f32], shift: f32) {
    exp_shifted_lanes(xs, shift);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn erf_avx2(xs: &mut [f32]) {
    erf_lanes(xs);
}

#[inline(always)]
fn exp_shifted_lanes(xs: &mut [f32], shift: f32) {
    for x in xs.iter_mut() {
        *x = exp(*x - shift);
    }
}

/// Elements per test for [`erf_lanes`]' small-argument path.
const ERF_BLOCK: usize = 16;

/// `erf` over a slice. A block whose arguments all lie in `|x| < ERF_SMALL` (GELU's usual
/// inputs `x/√2` of pre-activations within ±1.41) takes [`erf_small`] alone, which is the value
/// [`erf`] selects for those lanes, bit for bit, without the `1 − erfc` branch and its `exp`;
/// any other block, NaN included, runs the full kernel.
#[inline(always)]
fn erf_lanes(xs: &mut [f32]) {
    let mut blocks = xs.chunks_exact_mut(ERF_BLOCK);
    for b in &mut blocks {
        // `&` rather than `all` so the test is one vector compare, not a loop with exits.
        if b.iter().fold(true, |all, x| all & (x.abs() < ERF_SMALL)) {
            for x in b.iter_mut() {
                *x = erf_small(*x);
            }
        } else {
            for x in b.iter_mut() {
                *x = erf(*x);
            }
        }
    }
    for x in blocks.into_remainder() {
        *x = erf(*x);
    }
}

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split so that `n·LN2_HI` is exact for the `|n| ≤ 150` used here (9 significant bits).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Adding 1.5·2²³ rounds a float below 2²² to the nearest integer (ties to even) in its low
/// mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;
const ROUND_MAGIC_BITS: i32 = 0x4B40_0000;
/// `exp(r) ≈ 1 + r + r²·(E2 + E3·r + E4·r² + E5·r³ + E6·r⁴)` on `|r| ≤ ln2/2`.
const E2: f32 = 0.499_999_94;
const E3: f32 = 0.166_665_21;
const E4: f32 = 0.041_668_39;
const E5: f32 = 0.008_368_714;
const E6: f32 = 0.001_381_461_6;

/// `exp(x)` of one lane; see the module comment for the method and its accuracy.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // Comparisons rather than min/max so that NaN passes through unchanged.
    let x = if x > 89.0 { 89.0 } else { x };
    let x = if x < -104.0 { -104.0 } else { x };
    let t = x.mul_add(LOG2E, ROUND_MAGIC);
    let n = t - ROUND_MAGIC;
    let r = n.mul_add(-LN2_HI, x);
    let r = n.mul_add(-LN2_LO, r);
    let q = r.mul_add(E6, E5);
    let q = r.mul_add(q, E4);
    let q = r.mul_add(q, E3);
    let q = r.mul_add(q, E2);
    let q = r.mul_add(q, 1.0);
    let p = r.mul_add(q, 1.0);
    // n in [-150, 129]: 2^n as 2^n1 · 2^n2 with both halves normal numbers.
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND_MAGIC_BITS);
    let n1 = ni >> 1;
    let n2 = ni - n1;
    let s1 = f32::from_bits(((n1 + 127) << 23) as u32);
    let s2 = f32::from_bits(((n2 + 127) << 23) as u32);
    p * s1 * s2
}

/// Below this `|x|`, `erf(x) = x + x·R(x²)`.
const ERF_SMALL: f32 = 1.0;
/// From this `|x|` on, `erf(x)` rounds to ±1 in f32 (`erfc(x) < 2⁻²⁵`).
const ERF_ONE: f32 = 3.919_206;
/// `erf(x)/x − 1 ≈ R(x²)` on `|x| < ERF_SMALL`, lowest degree first: the leading 1 is added
/// last (`x + x·R`), so the rounding of the polynomial costs a fraction of an ulp.
const ERF_R: [f32; 7] = [
    0.128_379_17,
    -0.376_126_26,
    0.112_835_854,
    -0.026_853_811,
    0.005_188_325_4,
    -0.000_801_017_33,
    0.000_078_537_88,
];
/// Centre of the `S` polynomial's interval `[ERF_SMALL, ERF_ONE]`.
const ERF_MID: f32 = 2.459_602_8;
/// `ln erfc(x) + x² ≈ S(x − ERF_MID)`, lowest degree first.
const ERF_S: [f32; 9] = [
    -1.542_475_7,
    -0.357_267_5,
    0.057_443_768,
    -0.011_215_26,
    0.002_252_034,
    -0.000_439_452_44,
    0.000_081_160_84,
    -0.000_013_805_566,
    0.000_001_632_262_6,
];

/// `c[0] + x·(c[1] + x·(c[2] + …))` with one FMA per coefficient.
#[inline(always)]
fn horner<const N: usize>(x: f32, c: &[f32; N]) -> f32 {
    let mut acc = c[N - 1];
    for &ci in c[..N - 1].iter().rev() {
        acc = x.mul_add(acc, ci);
    }
    acc
}

/// `erf(x)` for `|x| < ERF_SMALL`: `x + x·R(x²)`.
#[inline(always)]
fn erf_small(x: f32) -> f32 {
    x.mul_add(horner(x * x, &ERF_R), x)
}

/// `erf(x)` of one lane; see the module comment for the method and its accuracy.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let ax = x.abs();
    let small = erf_small(x);
    // The large branch on |x| clamped into its interval, so every lane computes finite values.
    let a = if ax < ERF_ONE { ax } else { ERF_ONE };
    let a = if a > ERF_SMALL { a } else { ERF_SMALL };
    let s = horner(a - ERF_MID, &ERF_S);
    // a² = hi + lo exactly; exp(s − a²) = exp(s − hi)·(1 − lo) to well below an ulp.
    let hi = a * a;
    let lo = a.mul_add(a, -hi);
    let e = exp(s - hi);
    let large = e.mul_add(lo, 1.0 - e);
    let large = if ax < ERF_ONE { large } else { 1.0 };
    let y = if ax < ERF_SMALL {
        small
    } else {
        large.copysign(x)
    };
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// Error of `y` against the exact value `r` in units in the last place of f32 at `r` (subnormal
/// spacing below the normal range; the spacing of f32::MAX above it).
pub fn ulp_error(y: f32, r: f64) -> f64 {
    if y.is_nan() || r.is_nan() {
        return if y.is_nan() && r.is_nan() {
            0.0
        } else {
            f64::INFINITY
        };
    }
    if y.is_infinite() || r.is_infinite() || r.abs() > f32::MAX as f64 {
        let ry = r as f32;
        return if ry == y { 0.0 } else { f64::INFINITY };
    }
    let e = (r.abs().max(f32::MIN_POSITIVE as f64)).log2().floor();
    let ulp = 2f64.powf(e - 23.0);
    (y as f64 - r).abs() / ulp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bound of the module comment (1.1714 measured over all inputs).
    const ERF_MAX_ULP: f64 = 1.2;

    /// Every `stride`-th bit pattern, so the sample covers every binade of both signs.
    fn sample(stride: u32) -> impl Iterator<Item = f32> {
        (0..=u32::MAX / stride).map(move |i| f32::from_bits(i * stride))
    }

    /// Worst ulp error of a slice kernel over a strided sample of all bit patterns.
    fn worst_over_sample(kernel: fn(&mut [f32]), exact: fn(f64) -> f64) -> (f64, f32) {
        let xs: Vec<f32> = sample(1999).collect();
        let mut ys = xs.clone();
        kernel(&mut ys);
        let mut worst = (0.0, 0.0f32);
        for (&x, &y) in xs.iter().zip(&ys) {
            let u = ulp_error(y, exact(x as f64));
            if u > worst.0 {
                worst = (u, x);
            }
        }
        worst
    }

    #[test]
    fn exp_is_within_one_ulp_of_float64_over_the_whole_range() {
        let (u, x) = worst_over_sample(|xs| exp_shifted_in_place(xs, 0.0), f64::exp);
        assert!(u <= 1.0, "exp({x}) is {u} ulp off");
    }

    #[test]
    fn erf_is_within_1_2_ulp_of_float64_over_the_whole_range() {
        let (u, x) = worst_over_sample(erf_in_place, libm::erf);
        assert!(u <= ERF_MAX_ULP, "erf({x}) is {u} ulp off");
    }

    #[test]
    fn exp_and_erf_dense_near_the_branch_points_and_subnormal_results() {
        // The reduction's rounding ties, the erf interval ends and the subnormal exp range.
        let spans: [(f32, f32); 7] = [
            (-104.5, -86.0),
            (87.0, 89.5),
            (0.3, 0.36),
            (-0.36, -0.3),
            (0.95, 1.05),
            (3.85, 4.0),
            (-4.0, -3.85),
        ];
        for (lo, hi) in spans {
            let mut x = lo;
            while x < hi {
                let ue = ulp_error(exp(x), (x as f64).exp());
                assert!(ue <= 1.0, "exp({x}) is {ue} ulp off");
                let uf = ulp_error(erf(x), libm::erf(x as f64));
                assert!(uf <= ERF_MAX_ULP, "erf({x}) is {uf} ulp off");
                x = f32::from_bits(if x >= 0.0 {
                    x.to_bits() + 37
                } else if x.to_bits() - 37 < 0x8000_0000 {
                    0
                } else {
                    x.to_bits() - 37
                });
            }
        }
    }

    #[test]
    fn special_values() {
        assert!(exp(f32::NAN).is_nan());
        assert!(erf(f32::NAN).is_nan());
        assert!(erf(-f32::NAN).is_nan());
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(88.8), f32::INFINITY);
        assert_eq!(exp(-104.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-0.0), 1.0);
        assert_eq!(exp(-103.0), (-103f64).exp() as f32);
        assert!(exp(-100.0) > 0.0 && exp(-100.0) < f32::MIN_POSITIVE);
        assert_eq!(erf(f32::INFINITY), 1.0);
        assert_eq!(erf(f32::NEG_INFINITY), -1.0);
        assert_eq!(erf(0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(erf(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(erf(1e30), 1.0);
        let tiny = f32::from_bits(3); // subnormal: erf(x) ≈ 2x/√π
        assert_eq!(erf(tiny), (libm::erf(tiny as f64)) as f32);
    }

    #[test]
    fn slice_kernels_give_the_same_bits_as_the_lane_functions() {
        // Odd lengths exercise the vector loop's remainder; fresh, non-round inputs.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32
        };
        for len in [1usize, 7, 8, 9, 63, 1000] {
            let xs: Vec<f32> = (0..len).map(|_| (next() - 0.5) * 40.0).collect();
            let shift = next() * 3.0;
            let mut got = vec![f32::NAN; len];
            got.copy_from_slice(&xs);
            exp_shifted_in_place(&mut got, shift);
            for (g, &x) in got.iter().zip(&xs) {
                assert_eq!(g.to_bits(), exp(x - shift).to_bits(), "exp({x} - {shift})");
            }
            got.copy_from_slice(&xs);
            erf_in_place(&mut got);
            for (g, &x) in got.iter().zip(&xs) {
                assert_eq!(g.to_bits(), erf(x).to_bits(), "erf({x})");
            }
        }
        let mut specials = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            1e-40,
            100.0,
        ];
        erf_in_place(&mut specials);
        assert!(specials[0].is_nan());
        assert_eq!(specials[1..], [1.0, -1.0, -0.0, erf(1e-40), 1.0]);
    }

    #[test]
    fn erf_slice_small_argument_blocks_give_the_same_bits() {
        // Blocks entirely below ERF_SMALL, blocks with one lane just at or above it, a NaN or
        // an infinity among small lanes, and lengths that leave a remainder.
        for len in [ERF_BLOCK - 1, ERF_BLOCK, 5 * ERF_BLOCK + 3] {
            for odd in [
                None,
                Some(ERF_SMALL),
                Some(1.5),
                Some(f32::NAN),
                Some(f32::INFINITY),
            ] {
                let mut xs: Vec<f32> = (0..len)
                    .map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 1.999)
                    .collect();
                if let Some(v) = odd {
                    xs[len / 2] = v;
                    xs[len - 1] = -v;
                }
                let mut got = xs.clone();
                erf_in_place(&mut got);
                for (g, &x) in got.iter().zip(&xs) {
                    assert_eq!(g.to_bits(), erf(x).to_bits(), "erf({x}), len {len}");
                }
            }
        }
    }
}
