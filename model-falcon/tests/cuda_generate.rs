//! Generation on the CUDA device ([`CudaFalcon::generate`], through [`Backend::generate_batch`])
//! against the host model's [`FalconModel::generate`], on the kernels-cu emulator (and on a GPU
//! when one is present).
//!
//! The models are those of `cuda_step.rs`: bf16-exact weights (so both sides hold the same
//! numbers), 4-bit base, random adapters with B ≠ 0 on all four linears, multi-query and
//! grouped layouts. The device keeps activations in bf16, the host in f32, so logits differ by
//! rounding: observed ≤ 0.07 on these models (unmerged and merged, cached and recomputed), bound
//! [`LOGIT_TOL`]. Token equality is meaningful only where the host's top-2 margin exceeds twice
//! that bound; every test checks that all of its steps have such a margin (the model's
//! embedding is scaled so that they do), so no comparison passes by luck.
//!
//! - greedy tokens and logits equal the host's (unmerged adapters, and the merged bf16 copy);
//! - the KV-cache path equals a full recompute (each step's logits against a prefill of the
//!   prompt plus the tokens so far);
//! - a left-padded batch equals its prompts one at a time, and each stops at its own EOS;
//! - sampling with a seed draws the same tokens as the host;
//! - the decode step replayed from a captured graph equals its plain launches bit for bit.

use engine::optim::AdamWConfig;
use engine::rng;
use kernels_cu::testing::devices;
use kernels_cu::Device;
use model_falcon::cuda::DecodeWeights;
use model_falcon::{Backend, CudaFalcon, Generated, GenerationConfig, Sampling};

mod common;
use common::bf16_model::*;

/// Largest |device − host| logit difference accepted (see the module comment).
const LOGIT_TOL: f32 = 0.25;

fn prompts(lens: &[usize], seed: u64) -> Vec<Vec<u32>> {
    lens.iter()
        .enumerate()
        .map(|(r, &n)| {
            (0..n)
                .map(|j| 3 + (rng::bits(seed, (r * 1000 + j) as u64) % 149) as u32)
                .collect()
        })
        .collect()
}

fn greedy(max_new_tokens: usize, stop_ids: Vec<u32>) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens,
        stop_ids,
        pad_id: 0,
        sampling: Sampling::Greedy,
    }
}

/// The top-2 margin of a logit row.
fn margin(row: &[f32]) -> f32 {
    let mut v: Vec<f32> = row.to_vec();
    v.sort_by(|a, b| b.total_cmp(a));
    v[0] - v[1]
}

/// Asserts the device continuation equals the host's: same tokens, same stop, logits within
/// [`LOGIT_TOL`], and every host step decided by a margin above twice the tolerance.
fn assert_same(dev: &str, got: &[Generated], want: &[Generated]) {
    assert_eq!(got.len(), want.len());
    for (r, (g, w)) in got.iter().zip(want).enumerate() {
        for (s, row) in w.step_logits.iter().enumerate() {
            let m = margin(row);
            assert!(
                m > 2.0 * LOGIT_TOL,
                "prompt {r} step {s}: the host's top-2 margin {m} is too small for a bf16 \
                 comparison; the test model needs larger margins"
            );
        }
        assert_eq!(g.tokens, w.tokens, "{dev}: prompt {r} tokens");
        assert_eq!(g.stopped_on_eos, w.stopped_on_eos, "{dev}: prompt {r} stop");
        let mut worst = 0.0f32;
        for (gs, ws) in g.step_logits.iter().zip(&w.step_logits) {
            for (a, b) in gs.iter().zip(ws) {
                worst = worst.max((a - b).abs());
            }
        }
        eprintln!("{dev}: prompt {r}: largest logit difference {worst:.4}");
        assert!(
            worst <= LOGIT_TOL,
            "{dev}: prompt {r}: logits differ by {worst}"
        );
    }
}

fn check_greedy_matches_host(grouped: bool, seed: u64) {
    let m = model(grouped, 8, 0.0, seed);
    let ps = prompts(&[9, 4, 13], seed);
    let cfg = greedy(8, vec![]);
    let want = m.generate(&ps, &cfg).unwrap();
    for dev in devices() {
        let c = CudaFalcon::new(&m, dev.clone()).unwrap();
        let got = c.generate(&ps, &cfg, DecodeWeights::Adapters).unwrap();
        assert_same(&format!("{dev}"), &got, &want);
        let merged = c.merged_weights(&m).unwrap();
        let got = c
            .generate(&ps, &cfg, DecodeWeights::Merged(&merged))
            .unwrap();
        assert_same(&format!("{dev} merged"), &got, &want);
    }
}

#[test]
fn multi_query_greedy_generation_matches_the_host() {
    check_greedy_matches_host(false, 21);
}

#[test]
fn grouped_greedy_generation_matches_the_host() {
    check_greedy_matches_host(true, 22);
}

#[test]
fn the_kv_cache_equals_a_full_recompute() {
    let m = model(true, 8, 0.0, 23);
    let ps = prompts(&[7], 23);
    let steps = 6;
    for dev in devices() {
        let c = CudaFalcon::new(&m, dev.clone()).unwrap();
        let cached = c
            .generate(&ps, &greedy(steps, vec![]), DecodeWeights::Adapters)
            .unwrap()
            .remove(0);
        assert_eq!(cached.tokens.len(), steps);
        for s in 0..steps {
            // The prompt plus the tokens chosen so far, through the prefill alone.
            let mut p = ps[0].clone();
            p.extend_from_slice(&cached.tokens[..s]);
            let full = c
                .generate(&[p], &greedy(1, vec![]), DecodeWeights::Adapters)
                .unwrap()
                .remove(0);
            assert_eq!(full.tokens[0], cached.tokens[s], "{dev}: step {s} token");
            let worst = full.step_logits[0]
                .iter()
                .zip(&cached.step_logits[s])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            eprintln!("{dev}: step {s}: cached vs recomputed logits differ by {worst:.4}");
            assert!(
                worst <= LOGIT_TOL,
                "{dev}: step {s}: cached and recomputed logits differ by {worst}"
            );
        }
    }
}

#[test]
fn a_batch_equals_its_prompts_one_at_a_time_and_each_stops_at_its_own_eos() {
    let m = model(false, 8, 0.0, 24);
    let ps = prompts(&[5, 11, 8], 24);
    // Stop on the token prompt 1 produces at its third step, so that it stops early while
    // the others (unless they produce it too) run on.
    let probe = m.generate(&ps[1..2], &greedy(6, vec![])).unwrap();
    let stop = probe[0].tokens[2];
    let cfg = greedy(6, vec![stop]);
    let want = m.generate(&ps, &cfg).unwrap();
    assert!(want[1].stopped_on_eos && want[1].tokens.len() <= 3);
    for dev in devices() {
        let c = CudaFalcon::new(&m, dev.clone()).unwrap();
        let batched = c.generate(&ps, &cfg, DecodeWeights::Adapters).unwrap();
        assert_same(&format!("{dev}"), &batched, &want);
        for (r, p) in ps.iter().enumerate() {
            let alone = c
                .generate(std::slice::from_ref(p), &cfg, DecodeWeights::Adapters)
                .unwrap()
                .remove(0);
            assert_eq!(alone.tokens, batched[r].tokens, "{dev}: prompt {r}");
            assert_eq!(alone.stopped_on_eos, batched[r].stopped_on_eos);
        }
    }
}

#[test]
fn seeded_sampling_draws_the_host_tokens() {
    let m = model(false, 8, 0.0, 25);
    let ps = prompts(&[6, 9], 25);
    let cfg = GenerationConfig {
        max_new_tokens: 6,
        stop_ids: vec![],
        pad_id: 0,
        sampling: Sampling::TopP {
            temperature: 0.7,
            top_p: 0.9,
            seed: 5,
        },
    };
    let want = m.generate(&ps, &cfg).unwrap();
    for dev in devices() {
        let c = CudaFalcon::new(&m, dev.clone()).unwrap();
        let got = c.generate(&ps, &cfg, DecodeWeights::Adapters).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.tokens, w.tokens, "{dev}");
        }
    }
}

#[test]
fn the_backend_generates_the_same_tokens_on_the_host_and_the_device() {
    let m = model(true, 8, 0.0, 26);
    let ps = prompts(&[4, 10], 26);
    let cfg = greedy(5, vec![]);
    let host = Backend::host(&m, AdamWConfig::default()).unwrap();
    let want = host.generate_batch(&ps, &cfg).unwrap();
    let dev = Device::emulator().unwrap();
    let mut cuda = Backend::cuda(&m, dev, "the emulator".into(), AdamWConfig::default()).unwrap();
    let got = cuda.generate_batch(&ps, &cfg).unwrap();
    assert_same("emulator backend", &got, &want);
    assert!(cuda.merge_for_generation().unwrap().is_some());
    let got = cuda.generate_batch(&ps, &cfg).unwrap();
    assert_same("emulator backend merged", &got, &want);
    // Bad prompts are errors naming them.
    let e = cuda
        .generate_batch(&[vec![1, 2], vec![]], &cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("prompt 1") && e.contains("empty"), "{e}");
    let e = cuda
        .generate_batch(&[vec![1, 9999]], &cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("9999") && e.contains("vocabulary"), "{e}");
}

/// The decode step captured once and replayed per token (the default) produces bit for bit the
/// logits, and so the tokens, of the same steps launched one by one, and the host's tokens.
#[test]
fn graph_replayed_decode_steps_equal_plain_launches_and_the_host() {
    for grouped in [false, true] {
        let m = model(grouped, 8, 0.0, 31);
        let ps = prompts(&[5, 11, 3], 31);
        let cfg = greedy(7, vec![]);
        let want = m.generate(&ps, &cfg).unwrap();
        for dev in devices() {
            let mut c = CudaFalcon::new(&m, dev.clone()).unwrap();
            assert!(c.decode_graphs, "graphs are the default");
            let graphed = c.generate(&ps, &cfg, DecodeWeights::Adapters).unwrap();
            c.decode_graphs = false;
            let plain = c.generate(&ps, &cfg, DecodeWeights::Adapters).unwrap();
            assert_same(&format!("{dev} graph"), &graphed, &want);
            for (r, (g, p)) in graphed.iter().zip(&plain).enumerate() {
                assert_eq!(g.tokens, p.tokens, "{dev}: prompt {r}");
                assert_eq!(g.step_logits.len(), p.step_logits.len());
                for (s, (a, b)) in g.step_logits.iter().zip(&p.step_logits).enumerate() {
                    let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(
                        same,
                        "{dev}: prompt {r} step {s}: graph and plain logits differ"
                    );
                }
            }
        }
    }
}

/// With the adapter on query_key_value only (the default), the decode step fuses GELU into the
/// h_to_4h GEMV and the residual into the 4h_to_h GEMV: the tokens still equal the host's, and
/// graph replay still equals the plain launches bit for bit.
#[test]
fn fused_epilogues_with_the_default_adapter_match_the_host() {
    let m = model_with_targets(true, 8, 0.0, 41, "query_key_value");
    let ps = prompts(&[6, 10], 41);
    let cfg = greedy(6, vec![]);
    let want = m.generate(&ps, &cfg).unwrap();
    for dev in devices() {
        let mut c = CudaFalcon::new(&m, dev.clone()).unwrap();
        let graphed = c.generate(&ps, &cfg, DecodeWeights::Adapters).unwrap();
        assert_same(&format!("{dev} fused"), &graphed, &want);
        c.decode_graphs = false;
        let plain = c.generate(&ps, &cfg, DecodeWeights::Adapters).unwrap();
        for (g, p) in graphed.iter().zip(&plain) {
            assert_eq!(g.tokens, p.tokens, "{dev}");
            let bits = |v: &Vec<Vec<f32>>| -> Vec<u32> {
                v.iter().flatten().map(|x| x.to_bits()).collect()
            };
            assert_eq!(bits(&g.step_logits), bits(&p.step_logits), "{dev}");
        }
    }
}
