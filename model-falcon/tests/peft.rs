//! PEFT adapter io against the adapters PEFT 0.21 saved in the fixtures: loading them, saving
//! ours with the same keys, shapes and config fields, target matching, and bad adapters.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use common::{copy_dir, err_msg, read_all, write_all};
use model_falcon::checkpoint::{SafetensorsFile, StDType, TensorSpec};
use model_falcon::peft::{
    load_adapter, lora_a_key, lora_b_key, save_adapter, LoraConfig, LoraPair, LoraWeights,
    TargetModules, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE,
};
use model_falcon::FalconConfig;
use serde_json::Value;

const LAYOUTS: [&str; 2] = ["falcon7b_style", "new_arch"];
const TARGETS: [&str; 4] = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"];

fn model_config(layout: &str) -> FalconConfig {
    FalconConfig::from_dir(common::checkpoint_dir(layout)).unwrap()
}

fn adapter_dir(layout: &str) -> std::path::PathBuf {
    common::fixtures().join(layout).join("adapter")
}

#[test]
fn loads_peft_saved_adapters() {
    for layout in LAYOUTS {
        let model = model_config(layout);
        let (cfg, weights) = load_adapter(adapter_dir(layout), &model).unwrap();
        assert_eq!(cfg.r, 4);
        assert_eq!(cfg.lora_alpha, 8.0);
        assert_eq!(cfg.lora_dropout, 0.0);
        assert_eq!(cfg.scaling(), 2.0);
        assert!(!cfg.use_rslora);
        assert_eq!(cfg.task_type.as_deref(), Some("CAUSAL_LM"));
        assert_eq!(
            cfg.base_model_name_or_path.as_deref(),
            Some("../checkpoint")
        );
        match &cfg.target_modules {
            TargetModules::Names(n) => {
                assert_eq!(
                    n.iter().map(String::as_str).collect::<BTreeSet<_>>(),
                    TARGETS.into_iter().collect()
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(weights.modules.len(), 2 * 4);
        let reference = common::read_json(&common::fixtures().join(layout).join("reference.json"));
        assert_eq!(
            weights.num_parameters() as u64,
            reference["lora"]["trainable_params"].as_u64().unwrap()
        );
        let qkv = &weights.modules["transformer.h.0.self_attention.query_key_value"];
        assert_eq!(
            (qkv.r, qkv.in_features, qkv.out_features),
            (4, 64, model.qkv_out_features())
        );
        let down = &weights.modules["transformer.h.1.mlp.dense_4h_to_h"];
        assert_eq!((down.in_features, down.out_features), (96, 64));
        for (m, p) in &weights.modules {
            assert!(p.b.iter().any(|&x| x != 0.0), "{m}: fixture B is non-zero");
            // kaiming-uniform(a=√5): |A| <= 1/√in.
            let bound = 1.0 / (p.in_features as f32).sqrt();
            assert!(p.a.iter().all(|x| x.abs() <= bound), "{m}");
        }
        // The recorded gradients use the adapter's key names, one per LoRA tensor.
        let grads = SafetensorsFile::open(
            common::fixtures()
                .join(layout)
                .join("lora_grads.safetensors"),
        )
        .unwrap();
        let file = SafetensorsFile::open(adapter_dir(layout).join(ADAPTER_WEIGHTS_FILE)).unwrap();
        let g: Vec<(String, Vec<usize>)> = grads
            .tensors()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect();
        let a: Vec<(String, Vec<usize>)> = file
            .tensors()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect();
        assert_eq!(g, a);
    }
}

/// Our saved adapter has PEFT's keys, shapes, dtypes, metadata and config fields, and its
/// values round-trip bit for bit.
#[test]
fn saved_adapter_matches_peft_files() {
    for layout in LAYOUTS {
        let model = model_config(layout);
        let (cfg, weights) = load_adapter(adapter_dir(layout), &model).unwrap();
        let out = common::Scratch::new("save-adapter");
        save_adapter(out.path(), &cfg, &weights).unwrap();

        let peft_file =
            SafetensorsFile::open(adapter_dir(layout).join(ADAPTER_WEIGHTS_FILE)).unwrap();
        let ours = SafetensorsFile::open(out.path().join(ADAPTER_WEIGHTS_FILE)).unwrap();
        assert_eq!(ours.metadata(), peft_file.metadata());
        let desc = |f: &SafetensorsFile| -> Vec<(String, StDType, Vec<usize>)> {
            f.tensors()
                .map(|t| (t.name.clone(), t.dtype, t.shape.clone()))
                .collect()
        };
        assert_eq!(desc(&ours), desc(&peft_file));
        // The reference parser (the one Python's safetensors wraps) accepts our file.
        let bytes = fs::read(out.path().join(ADAPTER_WEIGHTS_FILE)).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(
            meta.metadata()
                .as_ref()
                .and_then(|m| m.get("format"))
                .map(String::as_str),
            Some("pt")
        );
        assert_eq!(
            safetensors::SafeTensors::deserialize(&bytes).unwrap().len(),
            16
        );
        for t in peft_file.tensors() {
            assert_eq!(
                ours.bytes(ours.get(&t.name).unwrap()),
                peft_file.bytes(t),
                "{}",
                t.name
            );
        }
        let (cfg2, weights2) = load_adapter(out.path(), &model).unwrap();
        assert_eq!(cfg2, cfg);
        assert_eq!(weights2, weights);

        // A config built from scratch writes exactly PEFT's fields and values.
        let mut fresh = LoraConfig::new(
            4,
            8.0,
            0.0,
            TargetModules::Names(TARGETS.map(String::from).to_vec()),
        );
        fresh.base_model_name_or_path = Some("../checkpoint".into());
        let ours = fresh.to_json();
        let peft = common::read_json(&adapter_dir(layout).join(ADAPTER_CONFIG_FILE));
        let keys = |v: &Value| {
            v.as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(keys(&ours), keys(&peft));
        for k in keys(&peft) {
            if k == "target_modules" {
                // PEFT stores a set: the order in the file is arbitrary.
                let set = |v: &Value| {
                    v.as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_str().unwrap().to_string())
                        .collect::<BTreeSet<_>>()
                };
                assert_eq!(set(&ours[&k]), set(&peft[&k]));
            } else {
                assert_eq!(ours[&k], peft[&k], "field {k}");
            }
        }
        // The file is pretty-printed JSON with sorted keys, as PEFT writes it.
        let text = fs::read_to_string(out.path().join(ADAPTER_CONFIG_FILE)).unwrap();
        assert!(
            text.starts_with("{\n  \"alora_invocation_tokens\": null,\n  \"alpha_pattern\": {},"),
            "{text}"
        );
    }
}

#[test]
fn unknown_config_fields_are_kept() {
    let text = r#"{"r": 8, "lora_alpha": 16, "target_modules": ["query_key_value"], "peft_type": "LORA",
                   "task_type": "CAUSAL_LM", "some_future_field": {"x": 1}, "lora_dropout": 0.05}"#;
    let cfg = LoraConfig::from_json_str(text, "adapter_config.json").unwrap();
    assert_eq!(cfg.scaling(), 2.0);
    let v = cfg.to_json();
    assert_eq!(v["some_future_field"]["x"], 1);
    assert_eq!(v["lora_alpha"], 16);
    assert_eq!(v["lora_dropout"], 0.05);
}

#[test]
fn scaling_with_and_without_rslora() {
    let mut cfg = LoraConfig::new(16, 32.0, 0.05, TargetModules::AllLinear);
    assert_eq!(cfg.scaling(), 2.0);
    cfg.use_rslora = true;
    assert_eq!(cfg.scaling(), 8.0);
    let text = r#"{"r": 9, "lora_alpha": 6, "use_rslora": true, "target_modules": "all-linear"}"#;
    assert_eq!(
        LoraConfig::from_json_str(text, "a.json").unwrap().scaling(),
        2.0
    );
}

#[test]
fn target_matching_like_peft() {
    let model = model_config("falcon7b_style");
    let p = std::path::Path::new("adapter_config.json");
    let names = |cfg: &LoraConfig| -> Vec<String> {
        cfg.targets(&model, p)
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect()
    };
    let list = |v: &[&str]| TargetModules::Names(v.iter().map(|s| s.to_string()).collect());

    let all = LoraConfig::new(4, 8.0, 0.0, TargetModules::AllLinear);
    assert_eq!(names(&all).len(), 8);
    // "dense" is a suffix match on module paths: it does not catch dense_h_to_4h.
    let dense = LoraConfig::new(4, 8.0, 0.0, list(&["dense"]));
    assert_eq!(
        names(&dense),
        vec![
            "transformer.h.0.self_attention.dense",
            "transformer.h.1.self_attention.dense"
        ]
    );
    let mut qkv = LoraConfig::new(4, 8.0, 0.0, list(&["query_key_value"]));
    qkv.layers_to_transform = Some(vec![1]);
    assert_eq!(
        names(&qkv),
        vec!["transformer.h.1.self_attention.query_key_value"]
    );
    let full = LoraConfig::new(
        4,
        8.0,
        0.0,
        list(&["transformer.h.0.mlp.dense_4h_to_h", "mlp.dense_h_to_4h"]),
    );
    assert_eq!(
        names(&full),
        vec![
            "transformer.h.0.mlp.dense_h_to_4h",
            "transformer.h.0.mlp.dense_4h_to_h",
            "transformer.h.1.mlp.dense_h_to_4h"
        ]
    );
    let mut excl = LoraConfig::new(4, 8.0, 0.0, TargetModules::AllLinear);
    excl.exclude_modules = vec![
        "dense_4h_to_h".into(),
        "transformer.h.0.self_attention.dense".into(),
    ];
    assert_eq!(names(&excl).len(), 8 - 2 - 1);
    // Partial names do not match ("key_value" is not a path component).
    let partial = LoraConfig::new(4, 8.0, 0.0, list(&["key_value"]));
    assert!(err_msg(partial.targets(&model, p)).contains("match no module"));
    let head = LoraConfig::new(4, 8.0, 0.0, list(&["query_key_value", "lm_head"]));
    assert!(err_msg(head.targets(&model, p)).contains("lm_head"));
}

#[test]
fn refuses_unsupported_adapter_configs() {
    let base = common::read_json(&adapter_dir("new_arch").join(ADAPTER_CONFIG_FILE));
    let cases: &[(&str, Value)] = &[
        ("use_dora", Value::Bool(true)),
        ("bias", Value::String("all".into())),
        ("lora_bias", Value::Bool(true)),
        ("fan_in_fan_out", Value::Bool(true)),
        ("target_modules", Value::String(".*query_key_value".into())),
        ("rank_pattern", serde_json::json!({"dense": 8})),
        ("modules_to_save", serde_json::json!(["lm_head"])),
        ("peft_type", Value::String("LOHA".into())),
        ("r", Value::from(0)),
        ("lora_dropout", Value::from(1.0)),
        ("task_type", Value::String("SEQ_CLS".into())),
    ];
    for (field, value) in cases {
        let mut v = base.clone();
        v[*field] = value.clone();
        let e = err_msg(LoraConfig::from_value(
            &v,
            std::path::Path::new("x/adapter_config.json"),
        ));
        assert!(
            e.contains(&format!("`{field}`")) && e.contains("x/adapter_config.json"),
            "{field}: {e}"
        );
    }
}

#[test]
fn bad_adapter_files() {
    let model = model_config("new_arch");
    let weights_name = ADAPTER_WEIGHTS_FILE;

    // r in the config disagrees with the tensors.
    let d = copy_dir(&adapter_dir("new_arch"), "adapter-r");
    let cfg_path = d.path().join(ADAPTER_CONFIG_FILE);
    let mut cfg = common::read_json(&cfg_path);
    cfg["r"] = Value::from(8);
    fs::write(&cfg_path, cfg.to_string()).unwrap();
    let e = err_msg(load_adapter(d.path(), &model));
    assert!(
        e.contains("lora_A.weight` has shape [4, ") && e.contains("expected [8, "),
        "{e}"
    );

    // A missing tensor.
    let d = copy_dir(&adapter_dir("new_arch"), "adapter-missing");
    let file = d.path().join(weights_name);
    let key = lora_b_key("transformer.h.1.self_attention.dense");
    let mut all = read_all(&file);
    all.retain(|(s, _)| s.name != key);
    write_all(&file, &all);
    let e = err_msg(load_adapter(d.path(), &model));
    assert!(
        e.contains(&format!("missing tensor `{key}`")) && e.contains("[64, 4]"),
        "{e}"
    );

    // A key with the adapter name left in.
    let d = copy_dir(&adapter_dir("new_arch"), "adapter-default");
    let file = d.path().join(weights_name);
    let mut all = read_all(&file);
    all.push((
        TensorSpec::new(
            "base_model.model.transformer.h.0.self_attention.dense.lora_A.default.weight",
            StDType::F32,
            vec![4, 64],
        ),
        vec![0; 4 * 64 * 4],
    ));
    write_all(&file, &all);
    let e = err_msg(load_adapter(d.path(), &model));
    assert!(
        e.contains("unexpected tensor") && e.contains("`default`"),
        "{e}"
    );

    // Targets in the config that the file does not have (all-linear vs. a qkv-only file).
    let d = copy_dir(&adapter_dir("new_arch"), "adapter-targets");
    let file = d.path().join(weights_name);
    let mut all = read_all(&file);
    all.retain(|(s, _)| s.name.contains("query_key_value"));
    write_all(&file, &all);
    let e = err_msg(load_adapter(d.path(), &model));
    assert!(
        e.contains(
            "missing tensor `base_model.model.transformer.h.0.self_attention.dense.lora_A.weight`"
        ),
        "{e}"
    );

    // An adapter for the other layout: query_key_value B has the wrong number of rows.
    let e = err_msg(load_adapter(adapter_dir("falcon7b_style"), &model));
    assert!(
        e.contains("query_key_value.lora_B.weight` has shape [96, 4], expected [128, 4]"),
        "{e}"
    );

    // No weights file; a pickle one.
    let d = copy_dir(&adapter_dir("new_arch"), "adapter-bin");
    fs::remove_file(d.path().join(weights_name)).unwrap();
    fs::write(d.path().join("adapter_model.bin"), b"x").unwrap();
    let e = err_msg(load_adapter(d.path(), &model));
    assert!(
        e.contains("adapter_model.bin") && e.contains("adapter_model.safetensors"),
        "{e}"
    );
}

#[test]
fn save_checks_ranks_and_sizes() {
    let out = common::Scratch::new("save-bad");
    let cfg = LoraConfig::new(2, 4.0, 0.0, TargetModules::Names(vec!["dense".into()]));
    let pair = LoraPair {
        r: 2,
        in_features: 3,
        out_features: 5,
        a: common::random_f32(6, 1),
        b: common::random_f32(10, 2),
    };
    let mut w = LoraWeights {
        modules: BTreeMap::from([(
            "transformer.h.0.self_attention.dense".to_string(),
            pair.clone(),
        )]),
    };
    save_adapter(out.path(), &cfg, &w).unwrap();
    let st = SafetensorsFile::open(out.path().join(ADAPTER_WEIGHTS_FILE)).unwrap();
    let a = st
        .get(&lora_a_key("transformer.h.0.self_attention.dense"))
        .unwrap();
    assert_eq!((a.dtype, a.shape.clone()), (StDType::F32, vec![2, 3]));
    w.modules.values_mut().next().unwrap().b.pop();
    assert!(err_msg(save_adapter(out.path(), &cfg, &w)).contains("B has 9 (expected out·r = 5·2)"));
    let cfg3 = LoraConfig::new(3, 4.0, 0.0, TargetModules::AllLinear);
    let w = LoraWeights {
        modules: BTreeMap::from([("m".to_string(), pair)]),
    };
    assert!(err_msg(save_adapter(out.path(), &cfg3, &w)).contains("rank 2"));
}
