//! Merging PEFT adapters into their base (docs/hf-semantics.md §4.7) and writing bf16 HF checkpoints.
//!
//! - Every merged weight is `bf16(W + s·B·A)` with the reference computed in f64 here; f32
//!   accumulation may land on the other side of a bf16 rounding boundary, so at most one bf16
//!   ulp of difference is allowed, on a small fraction of elements. Other tensors are exactly
//!   `bf16(source)`.
//! - The merged checkpoint, reloaded in f32 (`QuantMode::None`), reproduces PEFT's logits of
//!   base + adapter (from the conformance fixtures) and our unmerged model's. The only error is
//!   the rounding of every weight to bf16 (relative 2^-9). The fixtures' weights are
//!   deliberately large (embedding N(0, 0.5²), linears N(0, 0.3²)), which amplifies it to
//!   ~0.3 on logits of up to ~17. The tolerance is therefore measured, not guessed: twice the
//!   error of the base model alone rounded to bf16 (a merge of an all-zero adapter) against
//!   transformers' f32 base logits; and the error must be at most a tenth of what the adapter
//!   changes, so the test fails if the delta is dropped or applied twice.
//! - Layout: same number of shards as the source, HF names and index, keys and shapes of the
//!   source, config.json in bf16 without quantization_config, tokenizer files copied.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{err_msg, fixtures, read_all, read_json, Scratch};
use engine::Tensor;
use model_falcon::checkpoint::{StDType, TensorRole};
use model_falcon::merge::{merge_adapter, merge_adapter_dirs, shard_limit_for_count};
use model_falcon::peft::load_adapter;
use model_falcon::{
    dequantize_like_bnb, load_lora, load_model, prequantized_weight, BaseOptions, FalconCheckpoint,
    QuantMode,
};

const NONE: BaseOptions = BaseOptions {
    quant: QuantMode::None,
    double_quant: false,
    blocksize: 64,
};

/// All tensors of a checkpoint directory (every shard), by name.
fn tensors(dir: &Path) -> BTreeMap<String, (StDType, Vec<usize>, Vec<u8>)> {
    let ckpt = FalconCheckpoint::open(dir).unwrap();
    ckpt.files()
        .iter()
        .flat_map(|f| read_all(f))
        .map(|(s, b)| (s.name.clone(), (s.dtype, s.shape, b)))
        .collect()
}

fn bf16_values(bytes: &[u8]) -> Vec<half::bf16> {
    bytes
        .chunks_exact(2)
        .map(|b| half::bf16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// Checks every merged tensor against an f64 reference built from the source.
fn check_values(source: &Path, adapter: &Path, merged: &Path, dequant: bool) {
    let ckpt = FalconCheckpoint::open(source).unwrap();
    let (lora, weights) = load_adapter(adapter, ckpt.config()).unwrap();
    let s = lora.scaling();
    let out = tensors(merged);
    let mut off_by_one = 0usize;
    let mut total = 0usize;
    let mut adapted = 0;
    for t in ckpt.manifest() {
        let (dtype, shape, bytes) = &out[&t.name];
        assert_eq!(*dtype, StDType::BF16, "{}", t.name);
        assert_eq!(shape, &t.shape, "{}", t.name);
        let module = t.name.trim_end_matches(".weight");
        let base: Vec<f32> = match prequantized_weight(&ckpt, module).unwrap() {
            Some(q) => {
                assert!(dequant);
                dequantize_like_bnb(&q)
            }
            None => ckpt.tensor_f32(&t.name).unwrap().0,
        };
        let got = bf16_values(bytes);
        let pair = match t.role {
            TensorRole::LinearWeight { .. } => weights.modules.get(module),
            _ => None,
        };
        let Some(p) = pair else {
            for (k, (g, w)) in got.iter().zip(&base).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    half::bf16::from_f32(*w).to_bits(),
                    "{} [{k}]",
                    t.name
                );
            }
            continue;
        };
        adapted += 1;
        let (o, i, r) = (p.out_features, p.in_features, p.r);
        let mut max_delta = 0f64;
        for row in 0..o {
            for col in 0..i {
                let delta: f64 = (0..r)
                    .map(|k| f64::from(p.b[row * r + k]) * f64::from(p.a[k * i + col]))
                    .sum::<f64>()
                    * s;
                max_delta = max_delta.max(delta.abs());
                let want = f64::from(base[row * i + col]) + delta;
                let g = got[row * i + col];
                let w = half::bf16::from_f64(want);
                total += 1;
                if g != w {
                    // Only a rounding-boundary case: one ulp away and within 1 ulp of `want`.
                    let ulp = (want.abs().max(1e-30)).log2().floor();
                    let ulp = 2f64.powf(ulp - 7.0);
                    assert!(
                        (f64::from(g) - want).abs() <= ulp,
                        "{} [{row}, {col}]: got {g}, want {want}",
                        t.name
                    );
                    off_by_one += 1;
                }
            }
        }
        assert!(
            max_delta > 1e-3,
            "{}: the adapter must change the weight",
            t.name
        );
    }
    assert_eq!(adapted, weights.modules.len());
    assert!(
        off_by_one * 100 <= total,
        "{off_by_one} of {total} elements off by one bf16 ulp"
    );
}

fn reference_tensor(layout: &str, name: &str) -> (Vec<usize>, Vec<u8>, StDType) {
    let all = read_all(&fixtures().join(layout).join("reference.safetensors"));
    let (s, b) = all.into_iter().find(|(s, _)| s.name == name).unwrap();
    (s.shape, b, s.dtype)
}

fn i64s(bytes: &[u8]) -> Vec<i64> {
    bytes
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn f32s(bytes: &[u8]) -> Vec<f64> {
    bytes
        .chunks_exact(4)
        .map(|b| f64::from(f32::from_le_bytes(b.try_into().unwrap())))
        .collect()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Merged logits vs PEFT's base+adapter logits and vs our unmerged model.
fn check_logits(layout: &str, merged: &Path) {
    let (shape, ids, _) = reference_tensor(layout, "input_ids");
    let (_, mask, _) = reference_tensor(layout, "attention_mask");
    let ids = Tensor::from_vec(
        i64s(&ids).iter().map(|&x| x as u32).collect::<Vec<_>>(),
        shape.clone(),
    )
    .unwrap();
    let mask = Tensor::from_vec(
        i64s(&mask).iter().map(|&x| x as u8).collect::<Vec<_>>(),
        shape,
    )
    .unwrap();
    let peft = f32s(&reference_tensor(layout, "lora.logits").1);
    let base = f32s(&reference_tensor(layout, "base.logits").1);

    let model = load_model(&FalconCheckpoint::open(merged).unwrap(), &NONE).unwrap();
    let got = model
        .logits(&ids, Some(&mask))
        .unwrap()
        .to_f64_vec()
        .unwrap();

    let src = fixtures().join(layout);
    let ckpt = FalconCheckpoint::open(src.join("checkpoint")).unwrap();
    let mut unmerged = load_model(&ckpt, &NONE).unwrap();
    let (cfg, w) = load_adapter(src.join("adapter"), ckpt.config()).unwrap();
    load_lora(&mut unmerged, &cfg, &w).unwrap();
    let ours = unmerged
        .logits(&ids, Some(&mask))
        .unwrap()
        .to_f64_vec()
        .unwrap();

    // The bf16 rounding error alone: the base without adapter, every weight rounded to bf16
    // (a merge of an all-zero adapter), against transformers' f32 base logits.
    let zero = Scratch::new("merge-zero");
    let mut zero_w = w.clone();
    for p in zero_w.modules.values_mut() {
        p.b.iter_mut().for_each(|x| *x = 0.0);
    }
    merge_adapter(&ckpt, &cfg, &zero_w, zero.path(), None).unwrap();
    let rounded = load_model(&FalconCheckpoint::open(zero.path()).unwrap(), &NONE).unwrap();
    let rounding = max_abs_diff(
        &rounded
            .logits(&ids, Some(&mask))
            .unwrap()
            .to_f64_vec()
            .unwrap(),
        &base,
    );

    let scale = peft.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let err_peft = max_abs_diff(&got, &peft);
    let err_ours = max_abs_diff(&got, &ours);
    let effect = max_abs_diff(&peft, &base);
    eprintln!(
        "{layout}: merged vs PEFT max |Δ| = {err_peft:.3e}, vs unmerged {err_ours:.3e}, bf16 rounding of the base alone {rounding:.3e}, adapter effect {effect:.3e}, max |logit| {scale:.2}"
    );
    assert!(rounding > 0.0);
    let tol = 2.0 * rounding;
    assert!(
        err_peft <= tol,
        "{layout}: merged vs PEFT {err_peft} (tolerance {tol})"
    );
    assert!(
        err_ours <= tol,
        "{layout}: merged vs unmerged {err_ours} (tolerance {tol})"
    );
    assert!(
        err_peft * 10.0 <= effect,
        "{layout}: error {err_peft} vs adapter effect {effect}"
    );
}

fn merge_fixture(layout: &str, scratch: &Scratch) -> PathBuf {
    let src = fixtures().join(layout);
    let out = scratch.path().join("merged");
    let summary =
        merge_adapter_dirs(&src.join("checkpoint"), &src.join("adapter"), &out, None).unwrap();
    assert_eq!(summary.modules, 8);
    out
}

fn check_layout_files(layout: &str, out: &Path) {
    let src = fixtures().join(layout).join("checkpoint");
    let source = FalconCheckpoint::open(&src).unwrap();
    let merged = FalconCheckpoint::open(out).unwrap();
    assert_eq!(
        merged.files().len(),
        source.files().len(),
        "{layout}: shards"
    );
    assert_eq!(merged.index_path().is_some(), source.index_path().is_some());
    let names = |c: &FalconCheckpoint| c.tensors().map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&merged), names(&source));
    if let Some(index) = merged.index_path() {
        let index = read_json(index);
        let map = index["weight_map"].as_object().unwrap();
        assert_eq!(map.len(), source.tensors().count());
        for (i, f) in merged.files().iter().enumerate() {
            assert_eq!(
                f.file_name().unwrap().to_string_lossy(),
                format!(
                    "model-{:05}-of-{:05}.safetensors",
                    i + 1,
                    source.files().len()
                )
            );
        }
        let total: u64 = merged.tensors().map(|t| t.size_in_bytes() as u64).sum();
        assert_eq!(index["metadata"]["total_size"].as_u64().unwrap(), total);
    }
    let config = read_json(&out.join("config.json"));
    assert_eq!(config["dtype"], "bfloat16");
    assert!(config.get("quantization_config").is_none());
    let src_config = read_json(&src.join("config.json"));
    for key in [
        "hidden_size",
        "num_hidden_layers",
        "new_decoder_architecture",
        "vocab_size",
    ] {
        assert_eq!(config[key], src_config[key], "{key}");
    }
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(src.join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn merge_falcon7b_style_sharded() {
    let scratch = Scratch::new("merge-7b");
    let out = merge_fixture("falcon7b_style", &scratch);
    let src = fixtures().join("falcon7b_style");
    check_layout_files("falcon7b_style", &out);
    check_values(&src.join("checkpoint"), &src.join("adapter"), &out, false);
    check_logits("falcon7b_style", &out);
}

#[test]
fn merge_new_arch_single_file() {
    let scratch = Scratch::new("merge-new");
    let out = merge_fixture("new_arch", &scratch);
    let src = fixtures().join("new_arch");
    check_layout_files("new_arch", &out);
    check_values(&src.join("checkpoint"), &src.join("adapter"), &out, false);
    check_logits("new_arch", &out);
}

#[test]
fn merge_into_a_4bit_base_dequantizes_as_bitsandbytes() {
    let scratch = Scratch::new("merge-bnb4");
    let out = scratch.path().join("merged");
    let adapter = fixtures().join("new_arch").join("adapter");
    merge_adapter_dirs(&fixtures().join("bnb4"), &adapter, &out, None).unwrap();
    check_values(&fixtures().join("bnb4"), &adapter, &out, true);
    let merged = FalconCheckpoint::open(&out).unwrap();
    assert!(!merged.is_prequantized());
    assert!(merged.config().quantization.is_none());
}

#[test]
fn max_shard_size_is_respected() {
    let scratch = Scratch::new("merge-shards");
    let src = fixtures().join("new_arch");
    let out = scratch.path().join("merged");
    let limit = 40_000;
    let summary = merge_adapter_dirs(
        &src.join("checkpoint"),
        &src.join("adapter"),
        &out,
        Some(limit),
    )
    .unwrap();
    let merged = FalconCheckpoint::open(&out).unwrap();
    assert!(merged.files().len() > 1);
    assert_eq!(summary.shards, merged.files().len());
    for f in merged.files() {
        let file = model_falcon::checkpoint::SafetensorsFile::open(&f).unwrap();
        let bytes: usize = file.tensors().map(|t| t.size_in_bytes()).sum();
        let biggest = file.tensors().map(|t| t.size_in_bytes()).max().unwrap();
        assert!(bytes <= limit || file.tensors().count() == 1 && bytes == biggest);
    }
    check_values(&src.join("checkpoint"), &src.join("adapter"), &out, false);
}

#[test]
fn shard_limit_gives_the_requested_count() {
    use model_falcon::checkpoint::{plan_shards, TensorSpec};
    let sizes = [7usize, 3, 9, 1, 4, 4, 8, 2, 6, 5];
    let specs: Vec<TensorSpec> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| TensorSpec::new(format!("t{i}"), StDType::BF16, vec![n]))
        .collect();
    for n in 1..=6 {
        let limit = shard_limit_for_count(&specs, n);
        let count = plan_shards(&specs, limit).len();
        assert!(count <= n, "{n}: {count}");
        if limit != usize::MAX && limit > 1 {
            assert!(
                plan_shards(&specs, limit - 1).len() > n,
                "{n}: limit not minimal"
            );
        }
    }
}

#[test]
fn bad_merges_are_refused_clearly() {
    let scratch = Scratch::new("merge-bad");
    let new_arch = fixtures().join("new_arch");
    let seven = fixtures().join("falcon7b_style");
    // An adapter made for another model: shapes differ.
    let msg = err_msg(merge_adapter_dirs(
        &new_arch.join("checkpoint"),
        &seven.join("adapter"),
        &scratch.path().join("x"),
        None,
    ));
    assert!(msg.contains("query_key_value"), "{msg}");
    // Writing over the source.
    let copy = common::copy_dir(&new_arch.join("checkpoint"), "merge-self");
    let msg = err_msg(merge_adapter_dirs(
        copy.path(),
        &new_arch.join("adapter"),
        copy.path(),
        None,
    ));
    assert!(msg.contains("source checkpoint"), "{msg}");
    // A missing adapter directory.
    let msg = err_msg(merge_adapter_dirs(
        &new_arch.join("checkpoint"),
        &scratch.path().join("nope"),
        &scratch.path().join("y"),
        None,
    ));
    assert!(msg.contains("adapter_config.json"), "{msg}");
}
