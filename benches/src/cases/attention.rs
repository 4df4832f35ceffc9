//! The fused attention kernels (kernels-cu `attention.cu`, bf16 in, causal, no mask) against
//! `engine::ops::attention::{attention_forward, attention_backward}` in f64 on the same bf16
//! inputs, with the tolerances of `tests/tests/attention_kernels.rs` (u = 2⁻²⁴, ε = 2⁻⁸, P
//! the exact probabilities, ε_P = 4·(d + 8)·u·(scale·Σ_x|q_ix·k_jx| + |lse_i| + 1)):
//! - O: Σ_j (ε + 2ε_P)·P_ij·|V_jc| + ε·|O_ic| + 10⁻⁶; lse: 10⁻⁵·(1 + |lse|);
//! - backward, the reference given the kernel's O, with a = 4·(tk·r + t + d)·u:
//!   dV_jc: Σ_i (ε + 2ε_P + a)·P_ij·|dO_ic|; and with
//!   e_ij = (ε + 2ε_P + a)·scale·P_ij·|dP_ij − D_i| + (1 + a)·8·(d + 2)·u·scale·P_ij·
//!   Σ_c|dO_ic|(|V_jc| + |O_ic|) (the kernel's dS before and after its bf16 rounding):
//!   dQ_ic: Σ_j e_ij·|K_jc| and dK_jc: Σ_i e_ij·|Q_ic| (over the group's query heads);
//!   each + 10⁻⁶.
//!
//! Sampled, not complete: the reference runs on one KV group (the last batch row's last KV
//! head with all its query heads: for Falcon-7B's MQA that is 71 heads of 512 x 512), which
//! takes a second; the whole batch would take minutes at the FlashAttention-2 shapes. Within
//! the group, lse is checked for every row, O and dQ for every row of [`SAMPLED_HEADS`] query
//! heads, dK and dV for [`SAMPLED_KEYS`] key rows (each summing over every query of the
//! group). Evenly spread samples include the first and last head and key.

use engine::ops::attention::{attention_backward, attention_forward, AttnDims};
use engine::rng;
use half::bf16;
use kernels_cu::ops::attention::{self, AttnShape};
use kernels_cu::{Buffer, DType, Device};
use rayon::prelude::*;

use crate::check::{
    assert_close_at, download_f64, poisoned, sample, BF16_ROUNDING as EPS, F32_UNIT_ROUNDOFF as U,
};

/// Query heads of the checked group whose O and dQ are checked.
pub const SAMPLED_HEADS: usize = 3;
/// Key rows whose dK and dV are checked.
pub const SAMPLED_KEYS: usize = 8;
const ABS: f64 = 1e-6;

/// Q, K, V and dO (bf16) of one attention shape.
pub struct AttnCase {
    pub shape: AttnShape,
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    dout: Vec<f64>,
    pub q_dev: Buffer,
    pub k_dev: Buffer,
    pub v_dev: Buffer,
    pub dout_dev: Buffer,
}

fn randn(n: usize, seed: u64, sd: f64) -> Vec<f64> {
    (0..n)
        .into_par_iter()
        .map(|i| bf16::from_f64(sd * rng::normal_f64(seed, i as u64)).to_f64())
        .collect()
}

fn upload(dev: &Device, v: &[f64]) -> Buffer {
    dev.htod(&v.par_iter().map(|&x| bf16::from_f64(x)).collect::<Vec<_>>())
        .expect("upload")
}

/// The forward's outputs, kept for the timed backward.
pub struct AttnForward {
    pub o: Buffer,
    pub lse: Buffer,
}

impl AttnCase {
    /// Causal self-attention (`kv_len = q_len`) with scale 1/√d; inputs as the kernel tests
    /// draw them (normal, sd 1.5 for Q so the softmax is not flat).
    pub fn new(
        dev: &Device,
        batch: usize,
        (q_heads, kv_heads): (usize, usize),
        t: usize,
        d: usize,
        seed: u64,
    ) -> Self {
        let shape = AttnShape {
            batch,
            q_heads,
            kv_heads,
            q_len: t,
            kv_len: t,
            head_dim: d,
            causal: true,
            scale: 1.0 / (d as f32).sqrt(),
        };
        let (nq, nk) = (batch * q_heads * t * d, batch * kv_heads * t * d);
        let (q, k, v, dout) = (
            randn(nq, seed ^ 1, 1.5),
            randn(nk, seed ^ 2, 1.0),
            randn(nk, seed ^ 3, 1.0),
            randn(nq, seed ^ 4, 1.0),
        );
        AttnCase {
            shape,
            q_dev: upload(dev, &q),
            k_dev: upload(dev, &k),
            v_dev: upload(dev, &v),
            dout_dev: upload(dev, &dout),
            q,
            k,
            v,
            dout,
        }
    }

    /// FLOPs of the forward with the FlashAttention convention: 4·b·hq·t·tk·d, halved when
    /// causal; the backward counts 2.5 times that.
    pub fn forward_flop(&self) -> f64 {
        let s = &self.shape;
        let f = 4.0 * (s.batch * s.q_heads * s.q_len * s.kv_len * s.head_dim) as f64;
        if s.causal {
            f / 2.0
        } else {
            f
        }
    }

    /// Runs forward and backward once (into a poisoned O) and checks the sampled group;
    /// returns the forward's outputs for the timed backward.
    pub fn check(&self, dev: &Device) -> AttnForward {
        let s = &self.shape;
        let (t, tk, d) = (s.q_len, s.kv_len, s.head_dim);
        let r = s.q_heads / s.kv_heads;
        let name = format!(
            "attention b{} h{}/{} t{t} d{d}",
            s.batch, s.q_heads, s.kv_heads
        );
        let mut o = poisoned(dev, DType::BF16, self.q.len());
        let lse = attention::forward(dev, s, &mut o, &self.q_dev, &self.k_dev, &self.v_dev, None)
            .expect("attention forward");
        let grads = attention::backward(
            dev,
            s,
            &self.q_dev,
            &self.k_dev,
            &self.v_dev,
            None,
            &o,
            &lse,
            &self.dout_dev,
        )
        .expect("attention backward");
        let (o_all, lse_all) = (download_f64(dev, &o), download_f64(dev, &lse));
        let (dq_all, dk_all, dv_all) = (
            download_f64(dev, &grads.dq),
            download_f64(dev, &grads.dk),
            download_f64(dev, &grads.dv),
        );

        // The checked group: the last batch row's last KV head and its r query heads, which
        // are contiguous in Q/O/dO ([b, hq, t, d] with query head h on KV head h / r).
        let (b, kvh) = (s.batch - 1, s.kv_heads - 1);
        let qspan = ((b * s.q_heads + kvh * r) * t * d)..((b * s.q_heads + (kvh + 1) * r) * t * d);
        let kspan = ((b * s.kv_heads + kvh) * tk * d)..((b * s.kv_heads + kvh + 1) * tk * d);
        let lspan = (qspan.start / d)..(qspan.end / d);
        let (q, k, v, dout) = (
            &self.q[qspan.clone()],
            &self.k[kspan.clone()],
            &self.v[kspan.clone()],
            &self.dout[qspan.clone()],
        );
        let o_got = &o_all[qspan.clone()];
        let scale = s.scale as f64;
        let dims = AttnDims {
            batch: 1,
            q_heads: r,
            kv_heads: 1,
            q_len: t,
            kv_len: tk,
            head_dim: d,
            causal: s.causal,
            scale,
        };
        let (o_ref, lse_ref) = attention_forward(&dims, q, k, v, None);
        let (dq_ref, dk_ref, dv_ref) =
            attention_backward(&dims, q, k, v, None, o_got, &lse_ref, dout);

        let lidx: Vec<usize> = lspan.clone().collect();
        let lse_tol: Vec<f64> = lse_ref.iter().map(|l| 1e-5 * (1.0 + l.abs())).collect();
        assert_close_at(&format!("{name} lse"), &lidx, &lse_all, &lse_ref, &lse_tol);

        // Per query row (h, i) of the group: P_ij, ε_P,ij, and D_i from the kernel's O.
        let qrow = |h: usize, i: usize| (h * t + i) * d;
        let visible = |i: usize, j: usize| !(s.causal && j > tk - t + i);
        let row_p = |h: usize, i: usize| -> Vec<(f64, f64)> {
            let l = lse_ref[h * t + i];
            (0..tk)
                .map(|j| {
                    if !visible(i, j) {
                        return (0.0, 0.0);
                    }
                    let (mut sc, mut sa) = (0.0, 0.0);
                    for x in 0..d {
                        let p = q[qrow(h, i) + x] * k[j * d + x];
                        sc += p;
                        sa += p.abs();
                    }
                    (
                        (sc * scale - l).exp(),
                        4.0 * (d as f64 + 8.0) * U * (scale * sa + l.abs() + 1.0),
                    )
                })
                .collect()
        };
        let acc = 1.0 + 4.0 * (tk * r + t + d) as f64 * U;
        // e_ij of the kernel's dS_ij (before and after its bf16 rounding).
        let ds_err = |h: usize, i: usize, j: usize, p: f64, ep: f64| -> f64 {
            let (mut di, mut dio, mut dp, mut dpv) = (0.0, 0.0, 0.0, 0.0);
            for x in 0..d {
                let (g, ov, vv) = (dout[qrow(h, i) + x], o_got[qrow(h, i) + x], v[j * d + x]);
                di += g * ov;
                dio += (g * ov).abs();
                dp += g * vv;
                dpv += (g * vv).abs();
            }
            let e = EPS + 2.0 * ep;
            (e + acc - 1.0) * scale * p * (dp - di).abs()
                + acc * scale * p * 8.0 * (d as f64 + 2.0) * U * (dpv + dio)
        };

        // O and dQ: every row of the sampled heads.
        let heads = sample(r, SAMPLED_HEADS);
        let rows: Vec<(usize, usize)> = heads
            .iter()
            .flat_map(|&h| (0..t).map(move |i| (h, i)))
            .collect();
        let per_row: Vec<(Vec<f64>, Vec<f64>)> = rows
            .par_iter()
            .map(|&(h, i)| {
                let p = row_p(h, i);
                let mut tol_o = vec![0.0; d];
                let mut tol_dq = vec![ABS; d];
                for (j, &(pij, ep)) in p.iter().enumerate() {
                    if pij == 0.0 {
                        continue;
                    }
                    let err = ds_err(h, i, j, pij, ep);
                    for x in 0..d {
                        tol_o[x] += (EPS + 2.0 * ep) * pij * v[j * d + x].abs();
                        tol_dq[x] += err * k[j * d + x].abs();
                    }
                }
                for x in 0..d {
                    tol_o[x] += EPS * o_ref[qrow(h, i) + x].abs() + ABS;
                }
                (tol_o, tol_dq)
            })
            .collect();
        let mut idx = Vec::new();
        let (mut want_o, mut want_dq, mut tol_o, mut tol_dq) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (&(h, i), (to, tq)) in rows.iter().zip(&per_row) {
            for x in 0..d {
                idx.push(qspan.start + qrow(h, i) + x);
                want_o.push(o_ref[qrow(h, i) + x]);
                want_dq.push(dq_ref[qrow(h, i) + x]);
            }
            tol_o.extend_from_slice(to);
            tol_dq.extend_from_slice(tq);
        }
        assert_close_at(&format!("{name} O"), &idx, &o_all, &want_o, &tol_o);
        assert_close_at(&format!("{name} dQ"), &idx, &dq_all, &want_dq, &tol_dq);

        // dK and dV: the sampled key rows, summed over every query row of the group.
        let keys = sample(tk, SAMPLED_KEYS);
        let per_key: Vec<(Vec<f64>, Vec<f64>)> = keys
            .par_iter()
            .map(|&j| {
                let mut tol_dk = vec![ABS; d];
                let mut tol_dv = vec![ABS; d];
                for h in 0..r {
                    for i in 0..t {
                        if !visible(i, j) {
                            continue;
                        }
                        let l = lse_ref[h * t + i];
                        let (mut sc, mut sa) = (0.0, 0.0);
                        for x in 0..d {
                            let p = q[qrow(h, i) + x] * k[j * d + x];
                            sc += p;
                            sa += p.abs();
                        }
                        let pij = (sc * scale - l).exp();
                        let ep = 4.0 * (d as f64 + 8.0) * U * (scale * sa + l.abs() + 1.0);
                        let err = ds_err(h, i, j, pij, ep);
                        let e = EPS + 2.0 * ep;
                        for x in 0..d {
                            tol_dv[x] += (e + acc - 1.0) * pij * dout[qrow(h, i) + x].abs();
                            tol_dk[x] += err * q[qrow(h, i) + x].abs();
                        }
                    }
                }
                (tol_dk, tol_dv)
            })
            .collect();
        let mut idx = Vec::new();
        let (mut want_dk, mut want_dv, mut tol_dk, mut tol_dv) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (&j, (tk_, tv)) in keys.iter().zip(&per_key) {
            for x in 0..d {
                idx.push(kspan.start + j * d + x);
                want_dk.push(dk_ref[j * d + x]);
                want_dv.push(dv_ref[j * d + x]);
            }
            tol_dk.extend_from_slice(tk_);
            tol_dv.extend_from_slice(tv);
        }
        assert_close_at(&format!("{name} dK"), &idx, &dk_all, &want_dk, &tol_dk);
        assert_close_at(&format!("{name} dV"), &idx, &dv_all, &want_dv, &tol_dv);
        AttnForward { o, lse }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_passes_on_the_emulator() {
        let dev = Device::emulator().expect("emulator");
        // MQA across a tile edge (t = 70), and MHA with d = 128.
        AttnCase::new(&dev, 2, (5, 1), 70, 64, 1).check(&dev);
        AttnCase::new(&dev, 1, (2, 2), 33, 128, 2).check(&dev);
    }

    #[test]
    #[should_panic(expected = "attention b1 h2/1 t20 d64 lse")]
    fn check_fails_on_a_wrong_result() {
        let dev = Device::emulator().expect("emulator");
        let mut case = AttnCase::new(&dev, 1, (2, 1), 20, 64, 3);
        case.k[5 * 64] += 3.0;
        case.check(&dev);
    }
}
