//! Exhaustive accuracy of the vectorized f32 `exp` and `erf` (`engine::vmath`) against float64:
//! every one of the 2^32 inputs through the slice kernels the ops use. Prints the worst ulp
//! error of each, its input, and whether every NaN input gave NaN.
//!
//! ```text
//! cargo run -p engine --release --example vmath_max_ulp
//! ```

use engine::vmath::{erf_in_place, exp_shifted_in_place, ulp_error};
use rayon::prelude::*;

/// Worst `(ulp, input)` and the count of NaN inputs whose result was not NaN.
fn worst(kernel: fn(&mut [f32]), exact: fn(f64) -> f64) -> (f64, f32, u64) {
    const CHUNK: u64 = 1 << 16;
    (0..(1u64 << 32) / CHUNK)
        .into_par_iter()
        .map(|c| {
            let xs: Vec<f32> = (c * CHUNK..(c + 1) * CHUNK)
                .map(|b| f32::from_bits(b as u32))
                .collect();
            let mut ys = xs.clone();
            kernel(&mut ys);
            let mut w = (0.0, 0.0f32, 0u64);
            for (&x, &y) in xs.iter().zip(&ys) {
                if x.is_nan() {
                    w.2 += u64::from(!y.is_nan());
                    continue;
                }
                let u = ulp_error(y, exact(x as f64));
                if u > w.0 {
                    (w.0, w.1) = (u, x);
                }
            }
            w
        })
        .reduce(
            || (0.0, 0.0, 0),
            |a, b| {
                let (u, x) = if b.0 > a.0 { (b.0, b.1) } else { (a.0, a.1) };
                (u, x, a.2 + b.2)
            },
        )
}

fn main() {
    for (name, kernel, exact) in [
        (
            "exp",
            (|xs: &mut [f32]| exp_shifted_in_place(xs, 0.0)) as fn(&mut [f32]),
            f64::exp as fn(f64) -> f64,
        ),
        (
            "erf",
            erf_in_place as fn(&mut [f32]),
            libm::erf as fn(f64) -> f64,
        ),
    ] {
        let (u, x, bad_nan) = worst(kernel, exact);
        println!(
            "{name}: max {u:.4} ulp at x = {x:e} ({x:?}); NaN inputs not giving NaN: {bad_nan}"
        );
    }
}
