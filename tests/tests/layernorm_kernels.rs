//! LayerNorm kernels (kernels-cu `layernorm.cu`) on the emulator (and a GPU when one is present)
//! against the engine's CPU reference evaluated in f64 on the same (rounded) inputs.
//!
//! Tolerances, with u = 2⁻²⁴ (f32 unit roundoff) and mag = the f64 sum of the absolute values
//! of the terms that make the reference value:
//! - f32 outputs: |Δ| ≤ 4·(d + 16)·u·mag. The kernel sums d terms in f32 (mean, variance,
//!   Σĝ, Σĝx̂), each sum in a different order than the reference: error ≤ d·u·Σ|terms|; the
//!   derived quantities add a few more roundings, covered by the factor 4 and the +16.
//! - bf16 outputs: the above plus one rounding to bf16, 2⁻⁸·|ref|.
//! - dγ/dβ (f32, summed over rows): |Δ| ≤ 4·(d + rows + 16)·u·mag, and bitwise identical
//!   across two runs (fixed-order reduction, no atomics).

use engine::ops::layernorm::{layer_norm_backward, layer_norm_forward};
use engine::rng;
use engine::testing::assert_err_contains;
use engine::testing::{assert_close, F32_UNIT_ROUNDOFF as U};
use half::bf16;
use integration_tests::devices;
use kernels_cu::ops::layernorm;
use kernels_cu::{DType, Device};
use proptest::prelude::*;

struct Case {
    rows: usize,
    d: usize,
    x: Vec<f64>,
    gamma: Vec<f64>,
    beta: Vec<f64>,
    dy: Vec<f64>,
}

/// Fresh random inputs, rounded to bf16 when `bf` (so both sides see the same values). The
/// rows get an offset so the mean is not ~0 (exercises the two-pass variance).
fn case(rows: usize, d: usize, seed: u64, bf: bool) -> Case {
    let r = |v: f64| {
        if bf {
            bf16::from_f64(v).to_f64()
        } else {
            v as f32 as f64
        }
    };
    let x = (0..rows * d)
        .map(|i| r(rng::normal_f64(seed, i as u64) * 1.5 + ((i / d) as f64 * 0.37 - 2.0)))
        .collect();
    let gamma = (0..d)
        .map(|i| r(1.0 + 0.5 * rng::normal_f64(seed ^ 1, i as u64)))
        .collect();
    let beta = (0..d)
        .map(|i| r(0.3 * rng::normal_f64(seed ^ 2, i as u64)))
        .collect();
    let dy = (0..rows * d)
        .map(|i| r(rng::normal_f64(seed ^ 3, i as u64)))
        .collect();
    Case {
        rows,
        d,
        x,
        gamma,
        beta,
        dy,
    }
}

fn upload(dev: &Device, v: &[f64], bf: bool) -> kernels_cu::Buffer {
    if bf {
        dev.htod(&v.iter().map(|&x| bf16::from_f64(x)).collect::<Vec<_>>())
    } else {
        dev.htod(&v.iter().map(|&x| x as f32).collect::<Vec<_>>())
    }
    .expect("upload")
}

fn download(dev: &Device, b: &kernels_cu::Buffer) -> Vec<f64> {
    match b.dtype() {
        DType::BF16 => dev
            .dtoh::<bf16>(b)
            .expect("download")
            .iter()
            .map(|x| x.to_f64())
            .collect(),
        _ => dev
            .dtoh::<f32>(b)
            .expect("download")
            .iter()
            .map(|&x| x as f64)
            .collect(),
    }
}

fn run(c: &Case, bf: bool, dev: &Device) {
    let (rows, d) = (c.rows, c.d);
    let eps = 1e-5;
    let dt = if bf { DType::BF16 } else { DType::F32 };
    let x = upload(dev, &c.x, bf);
    let g = upload(dev, &c.gamma, bf);
    let b = upload(dev, &c.beta, bf);
    let dy = upload(dev, &c.dy, bf);
    let mut y = dev.alloc(dt, rows * d).unwrap();
    let stats = layernorm::forward(dev, &mut y, &x, &g, &b, d, eps as f32).unwrap();

    // Reference in f64 on the same inputs (eps rounded to f32 as the kernel receives it).
    let eps64 = eps as f32 as f64;
    let (y_ref, mean_ref, rstd_ref) = layer_norm_forward(&c.x, &c.gamma, &c.beta, d, eps64);
    let bf_tol = |r: f64| if bf { r.abs() / 256.0 } else { 0.0 };
    let k = 4.0 * (d as f64 + 16.0) * U;
    let mut tol_y = vec![0.0; rows * d];
    for r in 0..rows {
        for i in 0..d {
            let xh = (c.x[r * d + i] - mean_ref[r]) * rstd_ref[r];
            // |x̂| carries the relative error of mean and rstd; |x|·rstd the cancellation in x−mean.
            let mag = (xh.abs() + c.x[r * d + i].abs() * rstd_ref[r] + 1.0) * c.gamma[i].abs()
                + c.beta[i].abs();
            tol_y[r * d + i] = k * mag + bf_tol(y_ref[r * d + i]);
        }
    }
    assert_close("y", &download(dev, &y), &y_ref, &tol_y);
    let tol_mean: Vec<f64> = (0..rows)
        .map(|r| k * c.x[r * d..(r + 1) * d].iter().map(|v| v.abs()).sum::<f64>() / d as f64)
        .collect();
    assert_close("mean", &download(dev, &stats.mean), &mean_ref, &tol_mean);
    let tol_rstd: Vec<f64> = rstd_ref
        .iter()
        .enumerate()
        .map(|(r, &s)| {
            // Cancellation in x − mean: relative error of the variance ≤ k·Σ|x|²/Σ(x−mean)².
            let ax: f64 = c.x[r * d..(r + 1) * d].iter().map(|v| v.abs()).sum::<f64>() / d as f64;
            k * s * (1.0 + ax * s) * (1.0 + ax * s)
        })
        .collect();
    assert_close("rstd", &download(dev, &stats.rstd), &rstd_ref, &tol_rstd);

    let mut dx = dev.alloc(dt, rows * d).unwrap();
    let (dg, db) = layernorm::backward(dev, &mut dx, &x, &g, &stats, &dy, d).unwrap();
    let (dx_ref, dg_ref, db_ref) =
        layer_norm_backward(&c.x, &c.gamma, &mean_ref, &rstd_ref, &c.dy, d);
    let mut tol_dx = vec![0.0; rows * d];
    let mut mag_dg = vec![0.0; d];
    let mut mag_db = vec![0.0; d];
    for r in 0..rows {
        let rs = rstd_ref[r];
        let (mut ag, mut agx, mut ax) = (0.0, 0.0, 0.0);
        for i in 0..d {
            let xh = (c.x[r * d + i] - mean_ref[r]) * rs;
            let gh = c.dy[r * d + i] * c.gamma[i];
            ag += gh.abs();
            agx += (gh * xh).abs();
            ax += c.x[r * d + i].abs() * rs;
            mag_dg[i] +=
                (c.dy[r * d + i] * xh).abs() + c.dy[r * d + i].abs() * c.x[r * d + i].abs() * rs;
            mag_db[i] += c.dy[r * d + i].abs();
        }
        let (ag, agx, ax) = (ag / d as f64, agx / d as f64, ax / d as f64);
        for i in 0..d {
            let xh = (c.x[r * d + i] - mean_ref[r]) * rs;
            let gh = c.dy[r * d + i] * c.gamma[i];
            // Errors of mean/rstd (relative ≲ k·(1+ax)²) enter through x̂ and the rstd factor.
            let mag = rs * (gh.abs() + ag + (xh.abs() + 1.0) * agx) * (1.0 + ax).powi(2);
            tol_dx[r * d + i] = k * mag + bf_tol(dx_ref[r * d + i]);
        }
    }
    assert_close("dx", &download(dev, &dx), &dx_ref, &tol_dx);
    let kr = 4.0 * (d as f64 + rows as f64 + 16.0) * U;
    let ax_all = 1.0 + rstd_ref.iter().cloned().fold(0.0, f64::max);
    let tol_dg: Vec<f64> = mag_dg.iter().map(|m| kr * m * ax_all * ax_all).collect();
    let tol_db: Vec<f64> = mag_db.iter().map(|m| kr * m).collect();
    let dg_got = dev.dtoh::<f32>(&dg).unwrap();
    assert_close(
        "dgamma",
        &dg_got.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        &dg_ref,
        &tol_dg,
    );
    assert_close("dbeta", &download(dev, &db), &db_ref, &tol_db);

    // Deterministic: a second backward gives the same bits.
    let mut dx2 = dev.alloc(dt, rows * d).unwrap();
    let (dg2, db2) = layernorm::backward(dev, &mut dx2, &x, &g, &stats, &dy, d).unwrap();
    assert_eq!(
        dg_got,
        dev.dtoh::<f32>(&dg2).unwrap(),
        "dgamma reproducible"
    );
    assert_eq!(
        dev.dtoh::<f32>(&db).unwrap(),
        dev.dtoh::<f32>(&db2).unwrap(),
        "dbeta reproducible"
    );
}

/// Widths on both paths of the kernels: multiples of 8 take 16-byte vectors, others scalars.
fn dims() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(1usize),
        Just(3),
        Just(8),
        Just(64),
        Just(4544),
        (1usize..40).prop_map(|k| 8 * k),
        Just(31),
        Just(255),
        Just(257),
        Just(300),
        1usize..200
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn layernorm_f32_matches_reference(rows in 1usize..24, d in dims(), seed: u64) {
        for dev in devices() {
            run(&case(rows, d, seed, false), false, &dev);
        }
    }

    #[test]
    fn layernorm_bf16_matches_reference(rows in 1usize..24, d in dims(), seed: u64) {
        for dev in devices() {
            run(&case(rows, d, seed, true), true, &dev);
        }
    }
}

/// More rows than backward blocks: blocks take several rows each (the Falcon case).
#[test]
fn layernorm_backward_many_rows_per_block() {
    let rows = layernorm::MAX_BWD_BLOCKS + 37;
    for dev in devices() {
        run(&case(rows, 40, 0x5eed, true), true, &dev);
        run(&case(rows, 36, 0x5eee, false), false, &dev);
    }
}

/// Falcon-180B's hidden size: wider than the backward's shared-memory accumulators, so columns
/// from `BWD_SMEM_COLS` on accumulate in global memory; the launch stays within the 99 KiB
/// opt-in maximum of sm_86/sm_89.
#[test]
fn layernorm_falcon_180b_width_matches_reference() {
    let d = 14848;
    assert!(d > layernorm::BWD_SMEM_COLS);
    assert!(layernorm::bwd_shared_bytes(d) <= 99 * 1024);
    for dev in devices() {
        run(&case(3, d, 0x180b, true), true, &dev);
        run(&case(2, d, 0x180c, false), false, &dev);
    }
}

#[test]
fn layernorm_rejects_bad_shapes() {
    let dev = Device::emulator().unwrap();
    let x = dev.htod(&[1.0f32; 10]).unwrap();
    let g = dev.htod(&[1.0f32; 3]).unwrap();
    let mut y = dev.alloc(DType::F32, 10).unwrap();
    assert_err_contains(
        layernorm::forward(&dev, &mut y, &x, &g, &g, 3, 1e-5),
        "x (a positive multiple of d)",
    );
    let g4 = dev.htod(&[1.0f32; 4]).unwrap();
    let g5 = dev.htod(&[1.0f32; 5]).unwrap();
    assert_err_contains(
        layernorm::forward(&dev, &mut y, &x, &g4, &g5, 5, 1e-5),
        "gamma: expected 5 elements",
    );
    let xb = dev.htod(&[bf16::ONE; 10]).unwrap();
    let g5b = dev.htod(&[bf16::ONE; 5]).unwrap();
    assert_err_contains(
        layernorm::forward(&dev, &mut y, &xb, &g5b, &g5b, 5, 1e-5),
        "y: expected dtype BF16",
    );
}
