//! Conformance with Hugging Face transformers + PEFT on tiny random Falcon checkpoints of both
//! layouts (fixtures made by scripts/fixtures/falcon_fixtures.py, fp32, eager attention).
//!
//! Tolerances: both sides compute in fp32 with different summation orders; over two layers of
//! width 64 the logits agree to ~1e-6 absolute, so 2e-5 absolute is asserted on logits,
//! 1e-5 relative on losses and 1e-4 relative (of the gradient's max magnitude) on LoRA grads.

use engine::Tensor;
use model_falcon::layers::BaseWeight;
use model_falcon::model::FalconModel;
use model_falcon::peft::load_adapter;
use model_falcon::{
    load_lora, load_model, lora_weights, BaseOptions, FalconCheckpoint, GenerationConfig,
    QuantMode, Sampling,
};
use safetensors::SafeTensors;
use std::path::PathBuf;

fn fixture(layout: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/falcon")
        .join(layout)
}

fn read_st(path: &PathBuf) -> Vec<(String, Vec<usize>, Vec<f64>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let data: Vec<f64> = match view.dtype() {
            safetensors::Dtype::F32 => bytemuck::pod_collect_to_vec::<u8, f32>(view.data())
                .into_iter()
                .map(f64::from)
                .collect(),
            safetensors::Dtype::I64 => bytemuck::pod_collect_to_vec::<u8, i64>(view.data())
                .into_iter()
                .map(|x| x as f64)
                .collect(),
            d => panic!("unexpected dtype {d:?} in {}", path.display()),
        };
        out.push((name.to_string(), view.shape().to_vec(), data));
    }
    out
}

fn get<'a>(
    ts: &'a [(String, Vec<usize>, Vec<f64>)],
    name: &str,
) -> &'a (String, Vec<usize>, Vec<f64>) {
    ts.iter()
        .find(|t| t.0 == name)
        .unwrap_or_else(|| panic!("fixture tensor {name} missing"))
}

struct Fixture {
    model: FalconModel,
    reference: serde_json::Value,
    tensors: Vec<(String, Vec<usize>, Vec<f64>)>,
    ids: Tensor,
    mask: Tensor,
    labels: Vec<i32>,
    dir: PathBuf,
}

fn load(layout: &str) -> Fixture {
    let dir = fixture(layout);
    let ckpt = FalconCheckpoint::open(dir.join("checkpoint")).unwrap();
    let opts = BaseOptions {
        quant: QuantMode::None,
        ..BaseOptions::default()
    };
    let model = load_model(&ckpt, &opts).unwrap();
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let tensors = read_st(&dir.join("reference.safetensors"));
    let (_, shape, ids) = get(&tensors, "input_ids").clone();
    let (_, _, mask) = get(&tensors, "attention_mask").clone();
    let (_, _, labels) = get(&tensors, "labels").clone();
    Fixture {
        model,
        reference,
        ids: Tensor::from_vec(
            ids.iter().map(|&x| x as u32).collect::<Vec<_>>(),
            shape.clone(),
        )
        .unwrap(),
        mask: Tensor::from_vec(mask.iter().map(|&x| x as u8).collect::<Vec<_>>(), shape).unwrap(),
        labels: labels.iter().map(|&x| x as i32).collect(),
        tensors,
        dir,
    }
}

/// Loads PEFT's own adapter files from the fixture through our adapter reader.
fn attach_fixture_adapter(f: &mut Fixture) {
    let (config, weights) = load_adapter(f.dir.join("adapter"), &f.model.config).unwrap();
    assert_eq!(config.r as u64, f.reference["lora"]["r"].as_u64().unwrap());
    load_lora(&mut f.model, &config, &weights).unwrap();
    // Our export has PEFT's keys and values back.
    let back = lora_weights(&f.model).unwrap();
    assert_eq!(back, weights);
}

fn assert_logits(got: &Tensor, want: &[f64], what: &str) {
    let g = got.to_f64_vec().unwrap();
    assert_eq!(g.len(), want.len(), "{what}: size");
    let worst = g
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(worst < 2e-5, "{what}: max |Δlogit| = {worst}");
}

fn check_layout(layout: &str) {
    let mut f = load(layout);
    let count = f.reference["num_target_tokens"].as_f64().unwrap();
    // Base model.
    let logits = f.model.logits(&f.ids, Some(&f.mask)).unwrap();
    assert_logits(
        &logits,
        &get(&f.tensors, "base.logits").2,
        &format!("{layout} base logits"),
    );
    let loss = f
        .model
        .loss(&f.ids, Some(&f.mask), &f.labels, count, false)
        .unwrap()
        .value()
        .to_scalar()
        .unwrap();
    let want = f.reference["base"]["loss"].as_f64().unwrap();
    assert!(
        (loss - want).abs() < 1e-5 * want,
        "{layout} base loss {loss} vs {want}"
    );

    // With PEFT's adapter.
    attach_fixture_adapter(&mut f);
    let counts = f.model.param_counts();
    assert_eq!(
        counts.trainable as u64,
        f.reference["lora"]["trainable_params"].as_u64().unwrap()
    );
    assert_eq!(
        counts.all as u64,
        f.reference["lora"]["all_params"].as_u64().unwrap()
    );
    let logits = f.model.logits(&f.ids, Some(&f.mask)).unwrap();
    assert_logits(
        &logits,
        &get(&f.tensors, "lora.logits").2,
        &format!("{layout} lora logits"),
    );
    let grads_want = read_st(&f.dir.join("lora_grads.safetensors"));
    let mut per_mode = Vec::new();
    for recompute in [true, false] {
        f.model.recompute = recompute;
        let loss_var = f
            .model
            .loss(&f.ids, Some(&f.mask), &f.labels, count, true)
            .unwrap();
        let loss = loss_var.value().to_scalar().unwrap();
        let want = f.reference["lora"]["loss"].as_f64().unwrap();
        assert!(
            (loss - want).abs() < 1e-5 * want,
            "{layout} lora loss {loss} vs {want}"
        );
        let grads = loss_var.backward().unwrap();
        let params = f.model.lora_parameters();
        assert_eq!(params.len(), grads_want.len());
        let mut all = Vec::new();
        for (name, var) in &params {
            let g = grads
                .get(var)
                .unwrap_or_else(|| panic!("no gradient for {name}"))
                .to_f64_vec()
                .unwrap();
            let (_, _, w) = get(&grads_want, name);
            let scale = w.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            assert!(scale > 0.0, "{name}: reference gradient is zero");
            let err = g
                .iter()
                .zip(w)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(
                err <= 1e-4 * scale,
                "{layout} {name}: max |Δgrad| {err} (scale {scale})"
            );
            all.push(g);
        }
        per_mode.push(all);
    }
    assert_eq!(
        per_mode[0], per_mode[1],
        "{layout}: recompute on/off gradients differ"
    );
}

#[test]
fn falcon7b_layout_matches_transformers_and_peft() {
    check_layout("falcon7b_style");
}

#[test]
fn new_decoder_architecture_matches_transformers_and_peft() {
    check_layout("new_arch");
}

#[test]
fn greedy_generation_matches_transformers() {
    for layout in ["falcon7b_style", "new_arch"] {
        let f = load(layout);
        let gen = &f.reference["generation"];
        let prompt: Vec<u32> = get(&f.tensors, "gen.prompt_ids")
            .2
            .iter()
            .map(|&x| x as u32)
            .collect();
        let want: Vec<u32> = gen["new_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let cfg = GenerationConfig {
            max_new_tokens: gen["max_new_tokens"].as_u64().unwrap() as usize,
            stop_ids: vec![gen["eos_token_id"].as_u64().unwrap() as u32],
            pad_id: 11,
            sampling: Sampling::Greedy,
        };
        let out = f
            .model
            .generate(std::slice::from_ref(&prompt), &cfg)
            .unwrap();
        assert_eq!(out[0].tokens, want, "{layout}: greedy tokens");
        let step_logits = get(&f.tensors, "gen.step_logits").2.clone();
        let flat: Vec<f64> = out[0]
            .step_logits
            .iter()
            .flatten()
            .map(|&x| x as f64)
            .collect();
        let worst = flat
            .iter()
            .zip(&step_logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 2e-5, "{layout}: step logits differ by {worst}");
        // Batched with a shorter second prompt (left padding) gives the same first row.
        let short = prompt[..prompt.len() - 3].to_vec();
        let both = f
            .model
            .generate(&[prompt.clone(), short.clone()], &cfg)
            .unwrap();
        assert_eq!(both[0].tokens, want, "{layout}: batched greedy tokens");
        let alone = f.model.generate(&[short], &cfg).unwrap();
        assert_eq!(
            both[1].tokens, alone[0].tokens,
            "{layout}: left padding changed the result"
        );
    }
}

#[test]
fn quantized_base_equals_dense_model_on_dequantized_weights() {
    // The NF4 path must compute exactly what a dense model with the dequantized weights does.
    let f = load("falcon7b_style");
    let ckpt = FalconCheckpoint::open(f.dir.join("checkpoint")).unwrap();
    let q = load_model(&ckpt, &BaseOptions::default()).unwrap();
    let mut dense = load_model(
        &ckpt,
        &BaseOptions {
            quant: QuantMode::None,
            ..BaseOptions::default()
        },
    )
    .unwrap();
    for (dl, ql) in dense.layers.iter_mut().zip(&q.layers) {
        let dl = std::rc::Rc::get_mut(dl).unwrap();
        for (d, qq) in dl.linears_mut().into_iter().zip(ql.linears()) {
            let BaseWeight::Quantized(w) = &qq.base else {
                panic!("{} is not quantized", qq.name)
            };
            let t = Tensor::from_vec(w.dequantize_stored_f32(), w.shape().to_vec()).unwrap();
            d.base = BaseWeight::Dense(engine::Var::constant(t));
        }
    }
    let a = dense
        .logits(&f.ids, Some(&f.mask))
        .unwrap()
        .to_f64_vec()
        .unwrap();
    let b = q
        .logits(&f.ids, Some(&f.mask))
        .unwrap()
        .to_f64_vec()
        .unwrap();
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(
        worst < 1e-5,
        "quantized vs dequantized-dense logits differ by {worst}"
    );
    // And quantization did change the model.
    let orig = f
        .model
        .logits(&f.ids, Some(&f.mask))
        .unwrap()
        .to_f64_vec()
        .unwrap();
    assert!(orig.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-3));
}
