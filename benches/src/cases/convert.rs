//! The conversion and dropout kernels (kernels-cu `convert.cu`, `dropout.cu`), all checked bit
//! for bit as in `tests/tests/convert_kernels.rs` and `tests/tests/dropout_kernels.rs`:
//! - f32 → bf16 equals `half::bf16::from_f32` (round to nearest even), bf16 → f32 the exact
//!   widening;
//! - the axis-1/2 swap equals the host permutation `out[a][c][b][e] = x[a][b][c][e]`;
//! - dropout forward equals `engine::ops::dropout` on the same `(seed, offset)` stream
//!   (computed in f32 on the widened bf16 inputs, then rounded once to bf16);
//! - dropout backward-add equals `dx + (kept ? g·keep_scale : 0)` in f32, rounded once to bf16,
//!   with the mask from `engine::rng::uniform_f32`.
//!
//! Every element is checked.

use engine::rng::{self, RngState};
use engine::{ops, Tensor, Var};
use half::bf16;
use kernels_cu::ops::{convert, dropout};
use kernels_cu::{Buffer, DType, Device};
use rayon::prelude::*;

use crate::check::{assert_bits_eq, poisoned, uniform_f32};

fn bits_bf16(v: &[bf16]) -> Vec<u16> {
    v.par_iter().map(|x| x.to_bits()).collect()
}

/// `n` f32 values (and their bf16 roundings) for the casts and dropout.
pub struct ConvertCase {
    x: Vec<f32>,
    xb: Vec<bf16>,
    pub x_f32: Buffer,
    pub x_bf16: Buffer,
}

impl ConvertCase {
    /// Values in [-3, 3) with all 24 mantissa bits random, so both rounding directions and
    /// ties-to-even cases occur.
    pub fn new(dev: &Device, n: usize, seed: u64) -> Self {
        let x = uniform_f32(n, seed, -3.0, 3.0);
        let xb: Vec<bf16> = x.par_iter().map(|&v| bf16::from_f32(v)).collect();
        ConvertCase {
            x_f32: dev.htod(&x).expect("upload"),
            x_bf16: dev.htod(&xb).expect("upload"),
            x,
            xb,
        }
    }

    pub fn n(&self) -> usize {
        self.x.len()
    }

    /// Both casts.
    pub fn check_casts(&self, dev: &Device) {
        let n = self.n();
        let mut to_bf = poisoned(dev, DType::BF16, n);
        convert::cast(dev, &mut to_bf, &self.x_f32).expect("cast f32 -> bf16");
        let got = dev.dtoh::<bf16>(&to_bf).expect("download");
        assert_bits_eq(
            &format!("cast f32->bf16 n{n}"),
            &bits_bf16(&got),
            &bits_bf16(&self.xb),
        );
        let mut to_f = poisoned(dev, DType::F32, n);
        convert::cast(dev, &mut to_f, &self.x_bf16).expect("cast bf16 -> f32");
        let got: Vec<u32> = dev
            .dtoh::<f32>(&to_f)
            .expect("download")
            .iter()
            .map(|v| v.to_bits())
            .collect();
        let want: Vec<u32> = self.xb.iter().map(|v| v.to_f32().to_bits()).collect();
        assert_bits_eq(&format!("cast bf16->f32 n{n}"), &got, &want);
    }

    /// Dropout forward with probability `p` on the stream `(seed, offset)` and backward-add
    /// (into a fresh `dx`) on the same stream.
    pub fn check_dropout(&self, dev: &Device, p: f32, seed: u64, offset: u64) {
        let n = self.n();
        let xs: Vec<f32> = self.xb.iter().map(|v| v.to_f32()).collect();
        rng::set_state(RngState { seed, offset });
        let t = Tensor::from_vec(xs.clone(), [n]).expect("shape");
        let y = ops::dropout(&Var::constant(t), p, true).expect("cpu dropout");
        let want: Vec<u16> = y
            .value()
            .to_vec::<f32>()
            .expect("f32")
            .par_iter()
            .map(|&v| bf16::from_f32(v).to_bits())
            .collect();
        let kept = |i: usize| rng::uniform_f32(seed, offset.wrapping_add(i as u64)) >= p;
        let n_kept = (0..n).filter(|&i| kept(i)).count();
        assert!(
            n_kept > 0 && n_kept < n,
            "dropout check: the mask keeps {n_kept} of {n}; choose p so that both occur"
        );
        let mut out = poisoned(dev, DType::BF16, n);
        dropout::forward(dev, &mut out, &self.x_bf16, p, seed, offset).expect("dropout forward");
        let got = dev.dtoh::<bf16>(&out).expect("download");
        assert_bits_eq(
            &format!("dropout forward bf16 n{n} p{p}"),
            &bits_bf16(&got),
            &want,
        );

        // backward_add: dx (fresh values) += kept ? g·s : 0, with g the same inputs.
        let dx0 = uniform_f32(n, seed ^ 0x5a, -1.0, 1.0);
        let dx0: Vec<bf16> = dx0.iter().map(|&v| bf16::from_f32(v)).collect();
        let s = dropout::keep_scale(p);
        let want: Vec<u16> = (0..n)
            .into_par_iter()
            .map(|i| {
                let add = if kept(i) { xs[i] * s } else { 0.0 };
                bf16::from_f32(dx0[i].to_f32() + add).to_bits()
            })
            .collect();
        let mut dx = dev.htod(&dx0).expect("upload");
        dropout::backward_add(dev, &mut dx, &self.x_bf16, p, seed, offset)
            .expect("dropout backward_add");
        let got = dev.dtoh::<bf16>(&dx).expect("download");
        assert_bits_eq(
            &format!("dropout backward_add bf16 n{n} p{p}"),
            &bits_bf16(&got),
            &want,
        );
    }
}

/// The attention-output axis swap `[d0, d1, d2, d3] → [d0, d2, d1, d3]` on bf16.
pub struct SwapCase {
    pub dims: [usize; 4],
    x: Vec<bf16>,
    pub x_dev: Buffer,
}

impl SwapCase {
    pub fn new(dev: &Device, dims: [usize; 4], seed: u64) -> Self {
        let n: usize = dims.iter().product();
        let x: Vec<bf16> = uniform_f32(n, seed, -4.0, 4.0)
            .iter()
            .map(|&v| bf16::from_f32(v))
            .collect();
        SwapCase {
            dims,
            x_dev: dev.htod(&x).expect("upload"),
            x,
        }
    }

    pub fn check(&self, dev: &Device) {
        let [d0, d1, d2, d3] = self.dims;
        let mut want = Vec::with_capacity(self.x.len());
        for a in 0..d0 {
            for c in 0..d2 {
                for b in 0..d1 {
                    let row = ((a * d1 + b) * d2 + c) * d3;
                    want.extend(self.x[row..row + d3].iter().map(|v| v.to_bits()));
                }
            }
        }
        let mut out = poisoned(dev, DType::BF16, self.x.len());
        convert::swap_axes12(dev, &mut out, &self.x_dev, self.dims).expect("swap_axes12");
        let got = dev.dtoh::<bf16>(&out).expect("download");
        assert_bits_eq(
            &format!("swap_axes12 bf16 {:?}", self.dims),
            &bits_bf16(&got),
            &want,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_pass_on_the_emulator() {
        let dev = Device::emulator().expect("emulator");
        let c = ConvertCase::new(&dev, 4099, 1);
        c.check_casts(&dev);
        c.check_dropout(&dev, 0.05, 1234, 0);
        c.check_dropout(&dev, 0.5, 99, (1 << 40) - 17);
        SwapCase::new(&dev, [2, 5, 9, 64], 2).check(&dev);
    }

    #[test]
    #[should_panic(expected = "dropout forward bf16")]
    fn dropout_check_fails_on_a_wrong_result() {
        // The host copy negated: every kept nonzero element disagrees.
        let dev = Device::emulator().expect("emulator");
        let mut c = ConvertCase::new(&dev, 512, 3);
        c.xb.iter_mut().for_each(|v| *v = -*v);
        c.check_dropout(&dev, 0.5, 7, 0);
    }

    #[test]
    #[should_panic(expected = "swap_axes12 bf16")]
    fn swap_check_fails_on_a_wrong_result() {
        let dev = Device::emulator().expect("emulator");
        let mut c = SwapCase::new(&dev, [1, 6, 4, 8], 4);
        c.x[9] = -c.x[9];
        c.check(&dev);
    }
}
