//! Loading the fixture checkpoints written by transformers (sharded and single file), the
//! writer's round trip, dtype conversion, and bad checkpoints that must fail with a message
//! naming the file and tensor.

mod common;

use std::collections::BTreeMap;
use std::fs;

use common::{copy_dir, err_msg, read_all, rewrite_header, write_all, Scratch};
use model_falcon::checkpoint::{
    expected_tensors, plan_shards, shard_file_name, write_sharded_checkpoint, StDType, TensorRole,
    TensorSpec, TensorStore, EMBEDDING, INDEX_FILE, LM_HEAD,
};
use model_falcon::FalconCheckpoint;
use serde_json::Value;

#[test]
fn sharded_7b_style_fixture_loads() {
    let dir = common::checkpoint_dir("falcon7b_style");
    let ck = FalconCheckpoint::open(&dir).unwrap();
    assert!(ck.index_path().is_some());
    let files = ck.files();
    assert!(files.len() >= 2, "fixture is sharded: {files:?}");
    // Every tensor listed by the index is found in the shard the index names.
    let index = common::read_json(&dir.join(INDEX_FILE));
    let map = index["weight_map"].as_object().unwrap();
    assert_eq!(map.len(), ck.tensors().count());
    for t in ck.tensors() {
        assert_eq!(
            t.file.file_name().unwrap().to_str().unwrap(),
            map[&t.name].as_str().unwrap()
        );
        assert_eq!(t.dtype, StDType::F32);
    }
    // Names and shapes are exactly the manifest (tied lm_head not stored).
    assert!(!ck.lm_head_stored());
    let manifest = expected_tensors(ck.config());
    assert_eq!(manifest.len(), ck.tensors().count());
    assert_eq!(manifest.len(), 1 + 2 * (2 + 4) + 2);
    for e in &manifest {
        let info = ck.tensor_info(&e.name).unwrap();
        assert_eq!(info.shape, e.shape, "{}", e.name);
        let (values, shape) = ck.tensor_f32(&e.name).unwrap();
        assert_eq!(shape, e.shape);
        assert_eq!(values.len(), e.shape.iter().product::<usize>());
        assert!(values.iter().all(|x| x.is_finite()));
        assert!(values.iter().any(|&x| x != 0.0), "{} is all zeros", e.name);
    }
    let qkv = ck
        .tensor_info("transformer.h.1.self_attention.query_key_value.weight")
        .unwrap();
    assert_eq!(qkv.shape, vec![96, 64]);
    // Summed element counts agree with the index's metadata and the config's count.
    let total: usize = ck.tensors().map(|t| t.numel()).sum();
    assert_eq!(
        total as u64,
        index["metadata"]["total_parameters"].as_u64().unwrap()
    );
    assert_eq!(total, ck.config().num_parameters());
    // lm_head reads the embedding.
    assert_eq!(ck.resolve(LM_HEAD), EMBEDDING);
    assert_eq!(
        ck.tensor_f32(LM_HEAD).unwrap(),
        ck.tensor_f32(EMBEDDING).unwrap()
    );
}

#[test]
fn single_file_new_arch_fixture_loads() {
    let ck = FalconCheckpoint::open(common::checkpoint_dir("new_arch")).unwrap();
    assert!(ck.index_path().is_none());
    assert_eq!(ck.files().len(), 1);
    let names: Vec<String> = ck.tensors().map(|t| t.name.clone()).collect();
    assert!(names.contains(&"transformer.h.0.ln_attn.weight".to_string()));
    assert!(names.contains(&"transformer.h.1.ln_mlp.bias".to_string()));
    assert!(!names.iter().any(|n| n.contains("input_layernorm")));
    assert_eq!(
        ck.tensor_info("transformer.h.0.self_attention.query_key_value.weight")
            .unwrap()
            .shape,
        vec![128, 64]
    );
    assert_eq!(
        ck.tensor_info("transformer.h.0.mlp.dense_4h_to_h.weight")
            .unwrap()
            .shape,
        vec![64, 96]
    );
    let linears = ck
        .manifest()
        .iter()
        .filter(|e| matches!(e.role, TensorRole::LinearWeight { .. }))
        .count();
    assert_eq!(linears, 8);
}

/// The bnb4 fixture stores the new_arch embedding and LayerNorms in bf16 (rounded by torch):
/// our bf16 decode must give exactly the f32 values rounded to nearest-even bf16.
#[test]
fn bf16_decode_matches_torch_rounding() {
    let f32_ck = FalconCheckpoint::open(common::checkpoint_dir("new_arch")).unwrap();
    let bf_ck = FalconCheckpoint::open(common::fixtures().join("bnb4")).unwrap();
    for name in [
        EMBEDDING,
        "transformer.h.1.ln_mlp.weight",
        "transformer.ln_f.bias",
    ] {
        assert_eq!(bf_ck.tensor_info(name).unwrap().dtype, StDType::BF16);
        let (full, _) = f32_ck.tensor_f32(name).unwrap();
        let (rounded, _) = bf_ck.tensor_f32(name).unwrap();
        let expect: Vec<f32> = full
            .iter()
            .map(|&x| half::bf16::from_f32(x).to_f32())
            .collect();
        assert_eq!(rounded, expect, "{name}");
        assert!(
            rounded.iter().zip(&full).any(|(a, b)| a != b),
            "bf16 must actually round"
        );
    }
}

/// Writes the new_arch checkpoint again through our writer in f16 and bf16, sharded, and
/// reads it back: names, shapes, dtypes and values (exactly the half-precision rounding).
#[test]
fn writer_round_trip_sharded_half_precision() {
    let src = FalconCheckpoint::open(common::checkpoint_dir("new_arch")).unwrap();
    for dtype in [StDType::F16, StDType::BF16] {
        let out = Scratch::new("writer");
        fs::copy(
            src.dir().join("config.json"),
            out.path().join("config.json"),
        )
        .unwrap();
        let specs: Vec<TensorSpec> = src
            .manifest()
            .iter()
            .map(|e| TensorSpec::new(e.name.clone(), dtype, e.shape.clone()))
            .collect();
        let max = 40_000;
        let plan = plan_shards(&specs, max);
        assert!(plan.len() > 2);
        let written = write_sharded_checkpoint(out.path(), &specs, max, &mut |s| {
            let (v, _) = src.tensor_f32(&s.name)?;
            Ok(match s.dtype {
                StDType::F16 => v
                    .iter()
                    .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                    .collect(),
                _ => v
                    .iter()
                    .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                    .collect(),
            })
        })
        .unwrap();
        assert_eq!(written.len(), plan.len() + 1);
        assert_eq!(
            written[0].file_name().unwrap().to_str().unwrap(),
            shard_file_name(1, plan.len())
        );
        assert_eq!(
            written[1].file_name().unwrap().to_str().unwrap(),
            format!("model-00002-of-{:05}.safetensors", plan.len())
        );
        // No temporary files left behind.
        let leftovers: Vec<_> = fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        // Shards respect the limit unless one tensor alone exceeds it.
        for f in &written[..plan.len()] {
            let st = model_falcon::checkpoint::SafetensorsFile::open(f).unwrap();
            let bytes: usize = st.tensors().map(|t| t.size_in_bytes()).sum();
            assert!(bytes <= max || st.tensors().count() == 1);
            assert_eq!(st.metadata().get("format").map(String::as_str), Some("pt"));
            // The reference parser (the one Python's safetensors wraps) accepts the file.
            let bytes = fs::read(f).unwrap();
            let parsed = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            assert_eq!(parsed.len(), st.tensors().count());
        }
        let index = common::read_json(&out.path().join(INDEX_FILE));
        let total: usize = specs.iter().map(|s| s.size_in_bytes()).sum();
        assert_eq!(
            index["metadata"]["total_size"].as_u64().unwrap() as usize,
            total
        );

        let back = FalconCheckpoint::open(out.path()).unwrap();
        for e in src.manifest() {
            let info = back.tensor_info(&e.name).unwrap();
            assert_eq!((info.dtype, &info.shape), (dtype, &e.shape));
            let (orig, _) = src.tensor_f32(&e.name).unwrap();
            let (got, _) = back.tensor_f32(&e.name).unwrap();
            let expect: Vec<f32> = match dtype {
                StDType::F16 => orig
                    .iter()
                    .map(|&x| half::f16::from_f32(x).to_f32())
                    .collect(),
                _ => orig
                    .iter()
                    .map(|&x| half::bf16::from_f32(x).to_f32())
                    .collect(),
            };
            assert_eq!(got, expect, "{}", e.name);
        }

        // Saving again as a single file removes the old shards and the index.
        let written = write_sharded_checkpoint(out.path(), &specs, usize::MAX, &mut |s| {
            Ok(vec![0x3c; s.size_in_bytes()])
        })
        .unwrap();
        assert_eq!(written, vec![out.path().join("model.safetensors")]);
        assert!(!out.path().join(INDEX_FILE).exists());
        assert!(!out.path().join(shard_file_name(1, plan.len())).exists());
        FalconCheckpoint::open(out.path()).unwrap();
    }
}

#[test]
fn shard_planning_follows_transformers() {
    let s = |n: &str, numel: usize| TensorSpec::new(n, StDType::F32, vec![numel]);
    let specs = vec![s("a", 10), s("b", 10), s("c", 30), s("d", 5), s("e", 5)];
    // 40 / 40 / 120 / 20 / 20 bytes with a limit of 80.
    assert_eq!(
        plan_shards(&specs, 80),
        vec![vec![0, 1], vec![2], vec![3, 4]]
    );
    assert_eq!(plan_shards(&specs, 1000), vec![vec![0, 1, 2, 3, 4]]);
    assert_eq!(shard_file_name(2, 15), "model-00002-of-00015.safetensors");
}

#[test]
fn writer_rejects_wrong_byte_counts_and_leaves_nothing() {
    let out = Scratch::new("badwrite");
    let specs = vec![TensorSpec::new("x", StDType::F32, vec![3])];
    let e = err_msg(write_sharded_checkpoint(
        out.path(),
        &specs,
        100,
        &mut |_| Ok(vec![0; 11]),
    ));
    assert!(e.contains("`x`") && e.contains("12"), "{e}");
    assert_eq!(
        fs::read_dir(out.path()).unwrap().count(),
        0,
        "no partial files"
    );
    let dup = vec![specs[0].clone(), specs[0].clone()];
    assert!(err_msg(write_sharded_checkpoint(
        out.path(),
        &dup,
        100,
        &mut |_| Ok(vec![0; 12])
    ))
    .contains("twice"));
}

// ---- bad checkpoints ----

/// A writable copy of the single-file new_arch checkpoint.
fn new_arch_copy(tag: &str) -> Scratch {
    copy_dir(&common::checkpoint_dir("new_arch"), tag)
}

#[test]
fn missing_tensor() {
    let d = new_arch_copy("missing");
    let file = d.path().join("model.safetensors");
    let mut all = read_all(&file);
    all.retain(|(s, _)| s.name != "transformer.h.1.ln_mlp.bias");
    write_all(&file, &all);
    let e = err_msg(FalconCheckpoint::open(d.path()));
    assert!(
        e.contains("missing tensor `transformer.h.1.ln_mlp.bias`") && e.contains("[64]"),
        "{e}"
    );
}

#[test]
fn missing_tensor_in_sharded_index() {
    let d = copy_dir(&common::checkpoint_dir("falcon7b_style"), "missing-sharded");
    let index_path = d.path().join(INDEX_FILE);
    let mut index = common::read_json(&index_path);
    let map = index["weight_map"].as_object_mut().unwrap();
    let shard = map.remove("transformer.ln_f.weight").unwrap();
    fs::write(&index_path, index.to_string()).unwrap();
    // The shard still holds the tensor, which the index no longer lists.
    let e = err_msg(FalconCheckpoint::open(d.path()));
    assert!(
        e.contains("transformer.ln_f.weight") && e.contains("not listed in the index"),
        "{e}"
    );
    // Remove it from the shard as well: now it is simply missing.
    let shard_path = d.path().join(shard.as_str().unwrap());
    let mut all = read_all(&shard_path);
    all.retain(|(s, _)| s.name != "transformer.ln_f.weight");
    write_all(&shard_path, &all);
    let e = err_msg(FalconCheckpoint::open(d.path()));
    assert!(
        e.contains("missing tensor `transformer.ln_f.weight`"),
        "{e}"
    );
}

#[test]
fn index_names_a_missing_shard_or_wrong_shard() {
    let d = copy_dir(&common::checkpoint_dir("falcon7b_style"), "index");
    let index_path = d.path().join(INDEX_FILE);
    let orig = common::read_json(&index_path);
    let mut index = orig.clone();
    index["weight_map"]["transformer.ln_f.bias"] =
        Value::String("model-00009-of-00009.safetensors".into());
    fs::write(&index_path, index.to_string()).unwrap();
    let e = err_msg(FalconCheckpoint::open(d.path()));
    assert!(
        e.contains("model-00009-of-00009.safetensors") && e.contains("does not exist"),
        "{e}"
    );
    let mut index = orig.clone();
    let ln_f_shard = orig["weight_map"]["transformer.ln_f.bias"]
        .as_str()
        .unwrap();
    let other = orig["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap())
        .find(|s| *s != ln_f_shard)
        .unwrap();
    index["weight_map"]["transformer.ln_f.bias"] = Value::String(other.into());
    fs::write(&index_path, index.to_string()).unwrap();
    let e = err_msg(FalconCheckpoint::open(d.path()));
    assert!(
        e.contains("transformer.ln_f.bias") && e.contains(other),
        "{e}"
    );
}

#[test]
fn extra_tensor() {
    let d = new_arch_copy("extra");
    let file = d.path().join("model.safetensors");
    let mut all = read_all(&file);
    all.push((
        TensorSpec::new(
            "transformer.h.0.self_attention.rotary_emb.inv_freq",
            StDType::F32,
            vec![8],
        ),
        vec![0; 32],
    ));
    write_all(&file, &all);
    let e = err_msg(FalconCheckpoint::open(d.path()));
    assert!(
        e.contains("unexpected tensor `transformer.h.0.self_attention.rotary_emb.inv_freq`")
            && e.contains("model.safetensors"),
        "{e}"
    );
}

#[test]
fn wrong_shape() {
    let d = new_arch_copy("shape");
    let file = d.path().join("model.safetensors");
    // Same byte count, transposed shape: only the manifest can catch it.
    rewrite_header(&file, |h| {
        h["transformer.h.1.mlp.dense_h_to_4h.weight"]["shape"] = serde_json::json!([64, 96]);
    });
    let e = err_msg(FalconCheckpoint::open(d.path()));
    assert!(
        e.contains("tensor `transformer.h.1.mlp.dense_h_to_4h.weight` has shape [64, 96], expected [96, 64]")
            && e.contains("model.safetensors"),
        "{e}"
    );
    // A shape that disagrees with the byte range is a header error naming the tensor.
    let d = new_arch_copy("shape2");
    let file = d.path().join("model.safetensors");
    rewrite_header(&file, |h| {
        h["transformer.ln_f.weight"]["shape"] = serde_json::json!([65]);
    });
    let e = err_msg(FalconCheckpoint::open(d.path()));
    assert!(
        e.contains("`transformer.ln_f.weight`") && e.contains("[65]"),
        "{e}"
    );
}

#[test]
fn truncated_file() {
    let d = copy_dir(&common::checkpoint_dir("falcon7b_style"), "truncated");
    let shard = d.path().join(shard_file_name(2, 3));
    let len = fs::metadata(&shard).unwrap().len();
    let f = fs::OpenOptions::new().write(true).open(&shard).unwrap();
    f.set_len(len - 100).unwrap();
    drop(f);
    let e = err_msg(FalconCheckpoint::open(d.path()));
    assert!(
        e.contains("truncated") && e.contains(&shard_file_name(2, 3)) && e.contains("tensor `"),
        "{e}"
    );
    // Cut inside the header.
    let f = fs::OpenOptions::new().write(true).open(&shard).unwrap();
    f.set_len(20).unwrap();
    drop(f);
    let e = err_msg(FalconCheckpoint::open(d.path()));
    assert!(
        e.contains("truncated") && e.contains(&shard_file_name(2, 3)),
        "{e}"
    );
    f_empty(&shard);
    let e = err_msg(FalconCheckpoint::open(d.path()));
    assert!(e.contains("truncated"), "{e}");
}

fn f_empty(path: &std::path::Path) {
    fs::write(path, b"").unwrap();
}

#[test]
fn unknown_and_wrong_dtype() {
    let d = new_arch_copy("dtype");
    let file = d.path().join("model.safetensors");
    rewrite_header(&file, |h| {
        h["transformer.h.0.ln_attn.bias"]["dtype"] = Value::String("F4X".into());
    });
    let e = err_msg(FalconCheckpoint::open(d.path()));
    assert!(
        e.contains("tensor `transformer.h.0.ln_attn.bias` has unknown dtype `F4X`")
            && e.contains("model.safetensors"),
        "{e}"
    );
    // A known but non-float dtype for a weight (same byte size: I32 for F32).
    let d = new_arch_copy("dtype2");
    let file = d.path().join("model.safetensors");
    rewrite_header(&file, |h| {
        h["transformer.h.0.self_attention.dense.weight"]["dtype"] = Value::String("I32".into());
    });
    let e = err_msg(FalconCheckpoint::open(d.path()));
    assert!(
        e.contains("`transformer.h.0.self_attention.dense.weight` has dtype I32"),
        "{e}"
    );
}

#[test]
fn unsupported_variant() {
    let d = new_arch_copy("variant");
    let cfg_path = d.path().join("config.json");
    let mut cfg = common::read_json(&cfg_path);
    cfg["alibi"] = Value::Bool(true);
    fs::write(&cfg_path, cfg.to_string()).unwrap();
    let e = err_msg(FalconCheckpoint::open(d.path()));
    assert!(e.contains("config.json") && e.contains("`alibi`"), "{e}");
    // A config of the other layout: the tensors do not match it.
    fs::copy(
        common::checkpoint_dir("falcon7b_style").join("config.json"),
        &cfg_path,
    )
    .unwrap();
    let e = err_msg(FalconCheckpoint::open(d.path()));
    assert!(e.contains("input_layernorm") || e.contains("shape"), "{e}");
}

#[test]
fn tied_lm_head_stored_or_not_and_untied() {
    let d = new_arch_copy("lmhead");
    let file = d.path().join("model.safetensors");
    let mut all = read_all(&file);
    let emb = all
        .iter()
        .find(|(s, _)| s.name == EMBEDDING)
        .unwrap()
        .clone();
    let mut head_bytes = emb.1.clone();
    head_bytes[0] ^= 1; // different values: must not be read when tied
    all.push((
        TensorSpec::new(LM_HEAD, StDType::F32, emb.0.shape.clone()),
        head_bytes,
    ));
    write_all(&file, &all);
    let ck = FalconCheckpoint::open(d.path()).unwrap();
    assert!(ck.lm_head_stored());
    assert_eq!(
        ck.tensor_f32(LM_HEAD).unwrap(),
        ck.tensor_f32(EMBEDDING).unwrap()
    );
    drop(ck);

    // Untied: lm_head is its own tensor and required.
    let cfg_path = d.path().join("config.json");
    let mut cfg = common::read_json(&cfg_path);
    cfg["tie_word_embeddings"] = Value::Bool(false);
    fs::write(&cfg_path, cfg.to_string()).unwrap();
    let ck = FalconCheckpoint::open(d.path()).unwrap();
    assert_ne!(
        ck.tensor_f32(LM_HEAD).unwrap(),
        ck.tensor_f32(EMBEDDING).unwrap()
    );
    drop(ck);
    all.retain(|(s, _)| s.name != LM_HEAD);
    write_all(&file, &all);
    let e = err_msg(FalconCheckpoint::open(d.path()));
    assert!(e.contains("missing tensor `lm_head.weight`"), "{e}");

    // A stored tied lm_head of the wrong shape.
    cfg["tie_word_embeddings"] = Value::Bool(true);
    fs::write(&cfg_path, cfg.to_string()).unwrap();
    all.push((
        TensorSpec::new(LM_HEAD, StDType::F32, vec![64]),
        vec![0; 256],
    ));
    write_all(&file, &all);
    let e = err_msg(FalconCheckpoint::open(d.path()));
    assert!(e.contains("`lm_head.weight` has shape [64]"), "{e}");
}

#[test]
fn no_checkpoint_files() {
    let d = Scratch::new("empty");
    fs::copy(
        common::checkpoint_dir("new_arch").join("config.json"),
        d.path().join("config.json"),
    )
    .unwrap();
    let e = err_msg(FalconCheckpoint::open(d.path()));
    assert!(
        e.contains("model.safetensors") && e.contains("no checkpoint"),
        "{e}"
    );
    fs::write(d.path().join("pytorch_model.bin"), b"x").unwrap();
    let e = err_msg(TensorStore::open(d.path()));
    assert!(e.contains("pytorch_model.bin"), "{e}");
    fs::write(
        d.path().join("model.safetensors"),
        b"not a safetensors file at all",
    )
    .unwrap();
    assert!(FalconCheckpoint::open(d.path()).is_err());
}

// ---- bitsandbytes pre-quantized ----

#[test]
fn bnb_prequantized_fixture_groups_components() {
    let ck = FalconCheckpoint::open(common::fixtures().join("bnb4")).unwrap();
    assert!(ck.is_prequantized());
    let q = ck.config().quantization.as_ref().unwrap();
    assert_eq!(q.quant_type, "nf4");
    assert!(q.use_double_quant);
    assert_eq!(q.compute_dtype.as_deref(), Some("bfloat16"));
    let modules = ck.bnb4bit_modules();
    assert_eq!(modules.len(), 8);
    let qkv = "transformer.h.1.self_attention.query_key_value";
    let m = ck.bnb4bit_module(qkv).unwrap().unwrap();
    assert_eq!(m.module.shape, [128, 64]);
    assert_eq!(m.module.quant_type, "nf4");
    assert!(m.module.is_double_quant());
    assert_eq!(m.weight.bytes.len(), 128 * 64 / 2);
    assert_eq!(m.weight.dtype(), StDType::U8);
    assert_eq!(m.absmax.dtype(), StDType::U8);
    assert_eq!(m.absmax.shape(), &[128 * 64 / 64]);
    assert_eq!(m.quant_map.shape(), &[16]);
    assert_eq!(m.nested_quant_map.unwrap().shape(), &[256]);
    let state: Value = serde_json::from_slice(m.quant_state.bytes).unwrap();
    assert_eq!(state["quant_type"], "nf4");
    assert_eq!(state["shape"], serde_json::json!([128, 64]));
    assert_eq!(state["blocksize"], 64);
    // Unquantized parts read as usual; a non-quantized module gives None.
    assert!(ck
        .bnb4bit_module("transformer.word_embeddings")
        .unwrap()
        .is_none());
    assert_eq!(
        ck.tensor_f32(EMBEDDING).unwrap().1,
        vec![ck.config().vocab_size, 64]
    );
    // The plain fixtures are not pre-quantized.
    assert!(!FalconCheckpoint::open(common::checkpoint_dir("new_arch"))
        .unwrap()
        .is_prequantized());
}

#[test]
fn bnb_prequantized_bad_cases() {
    let src = common::fixtures().join("bnb4");
    // quantization_config without quantized tensors.
    let d = new_arch_copy("bnb-noq");
    let mut cfg = common::read_json(&d.path().join("config.json"));
    cfg["quantization_config"] =
        common::read_json(&src.join("config.json"))["quantization_config"].clone();
    fs::write(d.path().join("config.json"), cfg.to_string()).unwrap();
    let e = err_msg(FalconCheckpoint::open(d.path()));
    assert!(e.contains("quantization_config"), "{e}");

    // A missing component.
    let d = copy_dir(&src, "bnb-missing");
    let file = d.path().join("model.safetensors");
    let mut all = read_all(&file);
    all.retain(|(s, _)| s.name != "transformer.h.0.mlp.dense_h_to_4h.weight.absmax");
    write_all(&file, &all);
    let e = err_msg(FalconCheckpoint::open(d.path()));
    assert!(
        e.contains("transformer.h.0.mlp.dense_h_to_4h.weight.absmax"),
        "{e}"
    );

    // Packed weight of the wrong size for the module.
    let d = copy_dir(&src, "bnb-size");
    let file = d.path().join("model.safetensors");
    let mut all = read_all(&file);
    for (s, b) in all.iter_mut() {
        if s.name == "transformer.h.0.self_attention.dense.weight" {
            s.shape = vec![s.numel() - 2, 1];
            b.truncate(b.len() - 2);
        }
    }
    write_all(&file, &all);
    let e = err_msg(FalconCheckpoint::open(d.path()));
    assert!(
        e.contains("`transformer.h.0.self_attention.dense.weight`")
            && e.contains("expected [2048, 1]"),
        "{e}"
    );
}

/// Listing gives name, dtype, shape and file for every tensor of every shard.
#[test]
fn listing_covers_every_file() {
    let ck = FalconCheckpoint::open(common::checkpoint_dir("falcon7b_style")).unwrap();
    let mut per_file: BTreeMap<String, usize> = BTreeMap::new();
    for t in ck.tensors() {
        *per_file
            .entry(t.file.file_name().unwrap().to_string_lossy().into_owned())
            .or_default() += 1;
    }
    assert_eq!(per_file.len(), ck.files().len());
}
