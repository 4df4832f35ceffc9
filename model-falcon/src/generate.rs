//! Text generation with a KV cache: greedy or temperature/top-p sampling, stopping on EOS.
//!
//! A batch of prompts is left-padded to a common length; padded keys are masked and positions
//! are `cumsum(mask) − 1`, as HF `generate` does, so every prompt sees exactly its own tokens.

use crate::model::{FalconModel, LayerCache};
use engine::{rng, Tensor};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    Greedy,
    /// Softmax at `temperature`, then sampling from the smallest set of tokens whose
    /// probability mass reaches `top_p`; draws come from the counter RNG at `seed`.
    TopP {
        temperature: f64,
        top_p: f64,
        seed: u64,
    },
}

#[derive(Clone, Debug)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    /// Generation stops for a prompt when it produces one of these ids (included in the output).
    pub stop_ids: Vec<u32>,
    /// Id written for left padding (never attended to).
    pub pad_id: u32,
    pub sampling: Sampling,
}

/// One generated continuation.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    /// New token ids (ending with the stop id when one was produced).
    pub tokens: Vec<u32>,
    pub stopped_on_eos: bool,
    /// Logits of each step's distribution `[steps][vocab]`, for inspection and tests.
    pub step_logits: Vec<Vec<f32>>,
}

/// A NaN logit would silently lose every comparison of argmax (token 0 wins) and poison
/// top-p's normalization: report it instead of generating garbage.
fn check_logits(row: &[f32], step: usize, r: usize) -> engine::Result<()> {
    match row.iter().position(|x| x.is_nan()) {
        None => Ok(()),
        Some(i) => Err(engine::Error::Invalid {
            op: "generate",
            detail: format!(
                "generation step {step}, prompt {r}: the logit of token {i} is NaN; the model or \
             adapter produces non-finite values"
            ),
        }),
    }
}

fn argmax(row: &[f32]) -> u32 {
    // First maximum, as torch.argmax.
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

fn sample_top_p(row: &[f32], temperature: f64, top_p: f64, u: f64) -> u32 {
    let t = temperature.max(1e-6);
    let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(usize, f64)> = row
        .iter()
        .enumerate()
        .map(|(i, &z)| (i, ((z as f64 - m) / t).exp()))
        .collect();
    let z: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= z);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0;
    let mut mass = 0.0;
    for p in &probs {
        kept += 1;
        mass += p.1;
        if mass >= top_p {
            break;
        }
    }
    let mut target = u * mass;
    for p in &probs[..kept] {
        target -= p.1;
        if target <= 0.0 {
            return p.0 as u32;
        }
    }
    probs[kept - 1].0 as u32
}

impl FalconModel {
    /// Generates up to `max_new_tokens` for each prompt.
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        cfg: &GenerationConfig,
    ) -> engine::Result<Vec<Generated>> {
        let b = prompts.len();
        if b == 0 {
            return Ok(Vec::new());
        }
        if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
            return Err(engine::Error::Invalid {
                op: "generate",
                detail: format!("prompt {i} is empty"),
            });
        }
        let len = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(b * len);
        let mut mask: Vec<u8> = Vec::with_capacity(b * len);
        let mut pos = Vec::with_capacity(b * len);
        let mut next_pos = vec![0u32; b];
        for (r, p) in prompts.iter().enumerate() {
            let pad = len - p.len();
            for i in 0..len {
                let real = i >= pad;
                ids.push(if real { p[i - pad] } else { cfg.pad_id });
                mask.push(real as u8);
                pos.push(if real { (i - pad) as u32 } else { 1 });
            }
            next_pos[r] = p.len() as u32;
        }
        let mut caches = vec![LayerCache::default(); self.layers.len()];
        let mut out: Vec<Generated> = (0..b)
            .map(|_| Generated {
                tokens: Vec::new(),
                stopped_on_eos: false,
                step_logits: Vec::new(),
            })
            .collect();
        let mut logits = self.forward_cached(
            &Tensor::from_vec(ids, [b, len])?,
            &Tensor::from_vec(pos, [b, len])?,
            &Tensor::from_vec(mask.clone(), [b, len])?,
            &mut caches,
        )?;
        let vocab = self.config.vocab_size;
        let mut total = len;
        for step in 0..cfg.max_new_tokens {
            let z = logits.to_vec::<f32>()?;
            let mut step_ids = Vec::with_capacity(b);
            for (r, g) in out.iter_mut().enumerate() {
                let row = &z[r * vocab..(r + 1) * vocab];
                if g.stopped_on_eos {
                    step_ids.push(cfg.pad_id);
                    continue;
                }
                check_logits(row, step, r)?;
                let tok = match cfg.sampling {
                    Sampling::Greedy => argmax(row),
                    Sampling::TopP {
                        temperature,
                        top_p,
                        seed,
                    } => sample_top_p(
                        row,
                        temperature,
                        top_p,
                        rng::uniform_f64(seed, (step * b + r) as u64),
                    ),
                };
                g.step_logits.push(row.to_vec());
                g.tokens.push(tok);
                if cfg.stop_ids.contains(&tok) {
                    g.stopped_on_eos = true;
                }
                step_ids.push(tok);
            }
            if out.iter().all(|g| g.stopped_on_eos) || step + 1 == cfg.max_new_tokens {
                break;
            }
            // Append the new column to the mask (finished rows keep running on padding; their
            // outputs are discarded, so what they attend to does not matter).
            let mut new_mask = Vec::with_capacity(b * (total + 1));
            for r in 0..b {
                new_mask.extend_from_slice(&mask[r * total..(r + 1) * total]);
                new_mask.push(1);
            }
            mask = new_mask;
            total += 1;
            let positions: Vec<u32> = next_pos.clone();
            next_pos.iter_mut().for_each(|p| *p += 1);
            logits = self.forward_cached(
                &Tensor::from_vec(step_ids, [b, 1])?,
                &Tensor::from_vec(positions, [b, 1])?,
                &Tensor::from_vec(mask.clone(), [b, total])?,
                &mut caches,
            )?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_p_keeps_the_nucleus() {
        // p = [0.5, 0.3, 0.2]: top_p 0.6 keeps tokens 0 and 1 only.
        let row = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        for i in 0..200 {
            let t = sample_top_p(&row, 1.0, 0.6, rng::uniform_f64(1, i));
            assert!(t < 2);
        }
        assert_eq!(sample_top_p(&row, 1.0, 0.0, 0.99), 0);
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
        assert!(check_logits(&[1.0, 3.0], 0, 0).is_ok());
        let e = check_logits(&[1.0, f32::NAN, 3.0], 4, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("step 4") && e.contains("token 1"), "{e}");
    }
}
