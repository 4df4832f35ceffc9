//! Loading bitsandbytes pre-quantized 4-bit checkpoints (tests/fixtures/falcon/bnb4: the
//! new_arch model's linears quantized by bitsandbytes itself, NF4 + double quantization).
//!
//! - Dequantizing the parsed components equals bitsandbytes' `dequantize_4bit` bit for bit.
//! - The loaded weights keep the stored codes (no re-quantization).
//! - The 4-bit model's logits equal those of a model whose linears are the dequantized
//!   weights stored densely in f32: both sides run the same math on the same values, only
//!   the matmul order differs (tile-wise dequantizing kernel vs dense GEMM), so 1e-5 of the
//!   logits' scale is asserted.
//! - Missing or mis-shaped components give errors that name the module.

mod common;

use std::collections::BTreeMap;

use common::{err_msg, fixtures, read_all, rewrite_header, write_all, Scratch};
use engine::Tensor;
use model_falcon::checkpoint::{write_sharded_checkpoint, StDType, TensorSpec};
use model_falcon::layers::BaseWeight;
use model_falcon::{
    dequantize_like_bnb, load_model, prequantized_weight, BaseOptions, FalconCheckpoint, QuantMode,
};

fn bnb4_dir() -> std::path::PathBuf {
    fixtures().join("bnb4")
}

fn f32_from(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn dequantization_equals_bitsandbytes_exactly() {
    let ckpt = FalconCheckpoint::open(bnb4_dir()).unwrap();
    assert!(ckpt.is_prequantized());
    let q = prequantized_weight(&ckpt, "transformer.h.0.self_attention.dense")
        .unwrap()
        .expect("dense is stored 4-bit");
    assert_eq!(q.shape(), [64, 64]);
    let ours = dequantize_like_bnb(&q);
    let reference = read_all(&bnb4_dir().join("dequantized.safetensors"));
    let (spec, bytes) = &reference[0];
    assert_eq!(spec.name, "transformer.h.0.self_attention.dense.weight");
    let bnb = f32_from(bytes);
    assert_eq!(ours.len(), bnb.len());
    assert!(bnb.iter().any(|&x| x != 0.0));
    for (k, (a, b)) in ours.iter().zip(&bnb).enumerate() {
        assert_eq!(a.to_bits(), b.to_bits(), "element {k}: ours {a} vs bnb {b}");
    }
}

#[test]
fn loaded_model_keeps_the_stored_codes() {
    let ckpt = FalconCheckpoint::open(bnb4_dir()).unwrap();
    // Ask for FP4 without double quantization: the stored NF4+DQ weights must win.
    let opts = BaseOptions {
        quant: QuantMode::Fp4,
        double_quant: false,
        blocksize: 128,
    };
    let model = load_model(&ckpt, &opts).unwrap();
    let mut checked = 0;
    for layer in &model.layers {
        for lin in layer.linears() {
            let BaseWeight::Quantized(q) = &lin.base else {
                panic!("{} was not kept 4-bit", lin.name)
            };
            let raw = ckpt.tensor_raw(&format!("{}.weight", lin.name)).unwrap();
            assert_eq!(q.packed(), raw.bytes, "{}: codes changed", lin.name);
            assert_eq!(q.blocksize(), 64);
            assert_eq!(q.quant_type().name(), "nf4");
            checked += 1;
        }
    }
    assert_eq!(checked, 8);
}

/// Writes the bnb4 checkpoint with every 4-bit linear replaced by its dequantized f32 weight.
/// `exact`: bitsandbytes' values (rounded to the state's bf16); otherwise the unrounded fp32
/// products `table[code] · absmax` that the 4-bit matmul kernel uses.
fn dense_copy(ckpt: &FalconCheckpoint, scratch: &Scratch, exact: bool) -> std::path::PathBuf {
    let dir = scratch.path().join(if exact { "bnb" } else { "fp32" });
    let specs: Vec<TensorSpec> = ckpt
        .manifest()
        .iter()
        .map(|t| {
            let dtype = if ckpt
                .bnb4bit_modules()
                .contains_key(t.name.trim_end_matches(".weight"))
            {
                StDType::F32
            } else {
                ckpt.tensor_info(&t.name).unwrap().dtype
            };
            TensorSpec::new(t.name.clone(), dtype, t.shape.clone())
        })
        .collect();
    write_sharded_checkpoint(&dir, &specs, usize::MAX, &mut |s| {
        let module = s.name.trim_end_matches(".weight");
        Ok(match prequantized_weight(ckpt, module)? {
            Some(q) => if exact {
                dequantize_like_bnb(&q)
            } else {
                q.dequantize_f32()
            }
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
            None => ckpt.tensor_raw(&s.name)?.bytes.to_vec(),
        })
    })
    .unwrap();
    let mut config = common::read_json(&bnb4_dir().join("config.json"));
    config
        .as_object_mut()
        .unwrap()
        .remove("quantization_config");
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    dir
}

fn logits(model: &model_falcon::FalconModel, ids: &[u32], t: usize) -> Vec<f64> {
    let b = ids.len() / t;
    let ids = Tensor::from_vec(ids.to_vec(), [b, t]).unwrap();
    model.logits(&ids, None).unwrap().to_f64_vec().unwrap()
}

#[test]
fn logits_equal_a_model_with_the_dequantized_weights() {
    let ckpt = FalconCheckpoint::open(bnb4_dir()).unwrap();
    let scratch = Scratch::new("bnb4-dense");
    let none = BaseOptions {
        quant: QuantMode::None,
        ..BaseOptions::default()
    };
    let load_dense = |exact: bool| {
        let dir = dense_copy(&ckpt, &scratch, exact);
        load_model(&FalconCheckpoint::open(&dir).unwrap(), &none).unwrap()
    };
    let quantized = load_model(&ckpt, &BaseOptions::default()).unwrap();
    let dense_fp32 = load_dense(false);
    let dense_bnb = load_dense(true);
    // QuantMode::None on the 4-bit checkpoint dequantizes to bitsandbytes' values.
    let dequantized = load_model(&ckpt, &none).unwrap();

    let t = 9;
    let ids: Vec<u32> = common::random_f32(2 * t, 17)
        .iter()
        .map(|x| ((x + 1.0) * 139.0) as u32 % 280)
        .collect();
    let q = logits(&quantized, &ids, t);
    let f = logits(&dense_fp32, &ids, t);
    let b = logits(&dense_bnb, &ids, t);
    let d = logits(&dequantized, &ids, t);
    let scale = f.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    assert!(
        scale > 1.0,
        "logits should be spread out, max |logit| = {scale}"
    );
    let worst = |x: &[f64], y: &[f64]| {
        x.iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f64::max)
    };
    // The 4-bit path computes with the weights bitsandbytes hands to its matmul (dequantized
    // in the stored dtype, bf16 here): same values as the bnb-dequantized dense model, only
    // the matmul order differs.
    assert!(
        worst(&q, &b) <= 1e-5 * scale,
        "4-bit vs bnb-dequantized dense: max |Δ| = {} (scale {scale})",
        worst(&q, &b)
    );
    // The unrounded fp32 dequantization differs by the bf16 rounding of the weights
    // (2^-9 relative), which must be visible but small.
    let gap = worst(&q, &f);
    assert!(
        gap > 1e-5 * scale && gap <= 2e-2 * scale,
        "4-bit vs fp32-dequantized dense: max |Δ| = {gap}"
    );
    assert_eq!(
        b, d,
        "QuantMode::None must load bitsandbytes' dequantized weights"
    );
}

const MODULE: &str = "transformer.h.1.mlp.dense_h_to_4h";

fn corrupt(tag: &str, edit: impl FnOnce(&mut BTreeMap<String, (TensorSpec, Vec<u8>)>)) -> String {
    let scratch = common::copy_dir(&bnb4_dir(), tag);
    let path = scratch.path().join("model.safetensors");
    let mut tensors: BTreeMap<String, (TensorSpec, Vec<u8>)> = read_all(&path)
        .into_iter()
        .map(|(s, b)| (s.name.clone(), (s, b)))
        .collect();
    edit(&mut tensors);
    write_all(&path, &tensors.into_values().collect::<Vec<_>>());
    let r = FalconCheckpoint::open(scratch.path())
        .and_then(|c| load_model(&c, &BaseOptions::default()));
    err_msg(r)
}

#[test]
fn missing_components_name_the_module() {
    for suffix in ["absmax", "quant_map", "nested_quant_map"] {
        let msg = corrupt("missing", |t| {
            t.remove(&format!("{MODULE}.weight.{suffix}")).unwrap();
        });
        assert!(msg.contains(MODULE), "{suffix}: {msg}");
    }
    // The packed codes themselves: the module has a quant state but no weight.
    let msg = corrupt("missing-weight", |t| {
        t.remove(&format!("{MODULE}.weight")).unwrap();
    });
    assert!(msg.contains(MODULE) && msg.contains("missing"), "{msg}");
}

#[test]
fn mis_shaped_components_name_the_module() {
    // absmax one block short.
    let msg = corrupt("short-absmax", |t| {
        let (spec, bytes) = t.get_mut(&format!("{MODULE}.weight.absmax")).unwrap();
        bytes.pop();
        spec.shape = vec![bytes.len()];
    });
    assert!(msg.contains(MODULE) && msg.contains("absmax"), "{msg}");

    // A quant-state JSON whose shape is transposed ([in, out] instead of [out, in]).
    let msg = corrupt("transposed", |t| {
        let (spec, bytes) = t
            .get_mut(&format!("{MODULE}.weight.quant_state.bitsandbytes__nf4"))
            .unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("\"shape\": [96, 64]"), "{text}");
        *bytes = text
            .replace("\"shape\": [96, 64]", "\"shape\": [64, 96]")
            .into_bytes();
        spec.shape = vec![bytes.len()];
    });
    assert!(msg.contains(MODULE) && msg.contains("[96, 64]"), "{msg}");

    // Unparsable JSON.
    let msg = corrupt("bad-json", |t| {
        let (_, bytes) = t
            .get_mut(&format!("{MODULE}.weight.quant_state.bitsandbytes__nf4"))
            .unwrap();
        bytes[0] = b'[';
    });
    assert!(msg.contains(MODULE), "{msg}");

    // The nested absmax stored as f16 instead of f32.
    let scratch = common::copy_dir(&bnb4_dir(), "nested-dtype");
    rewrite_header(&scratch.path().join("model.safetensors"), |h| {
        let t = h
            .get_mut(&format!("{MODULE}.weight.nested_quant_map"))
            .unwrap();
        t["dtype"] = "F16".into();
        t["shape"] = serde_json::json!([512]);
    });
    let msg = err_msg(
        FalconCheckpoint::open(scratch.path())
            .and_then(|c| load_model(&c, &BaseOptions::default())),
    );
    assert!(
        msg.contains(MODULE) && msg.contains("nested_quant_map"),
        "{msg}"
    );
}

// ---- Writing 4-bit checkpoints (`quantize_export`) ----

use engine::nf4::{QuantConfig, QuantType, QuantizedWeight};
use model_falcon::merge::merge_adapter;
use model_falcon::peft::load_adapter;
use model_falcon::quantize_export::{quantize_checkpoint, quantize_checkpoint_dir};

/// All tensors of a checkpoint directory (every shard) by name: (dtype, shape, bytes).
fn all_tensors(dir: &std::path::Path) -> BTreeMap<String, (StDType, Vec<usize>, Vec<u8>)> {
    let ckpt = FalconCheckpoint::open(dir).unwrap();
    ckpt.files()
        .iter()
        .flat_map(|f| read_all(f))
        .map(|(s, b)| (s.name.clone(), (s.dtype, s.shape, b)))
        .collect()
}

/// Our export of the new_arch model in bf16 must be byte-identical to what bitsandbytes
/// wrote for it (the bnb4 fixture): codes, absmax codes, nested absmax, maps, the JSON
/// string, and the unquantized bf16 tensors.
#[test]
fn quantized_export_equals_bitsandbytes_serialization() {
    let scratch = Scratch::new("export-vs-bnb");
    // A bf16 copy of new_arch: merging an all-zero adapter rounds every tensor to bf16.
    let src = fixtures().join("new_arch");
    let ckpt = FalconCheckpoint::open(src.join("checkpoint")).unwrap();
    let (lora, mut weights) = load_adapter(src.join("adapter"), ckpt.config()).unwrap();
    for p in weights.modules.values_mut() {
        p.b.iter_mut().for_each(|x| *x = 0.0);
    }
    let bf16_dir = scratch.path().join("bf16");
    merge_adapter(&ckpt, &lora, &weights, &bf16_dir, None).unwrap();

    let out = scratch.path().join("nf4");
    let summary = quantize_checkpoint_dir(&bf16_dir, &out, QuantType::Nf4, true, None).unwrap();
    assert_eq!(summary.modules, 8);
    let ours = all_tensors(&out);
    let bnb = all_tensors(&bnb4_dir());
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        bnb.keys().collect::<Vec<_>>()
    );
    for (name, (dtype, shape, bytes)) in &bnb {
        let (d, s, b) = &ours[name];
        assert_eq!((d, s), (dtype, shape), "{name}");
        if name.contains("quant_state") {
            assert_eq!(
                String::from_utf8_lossy(b),
                String::from_utf8_lossy(bytes),
                "{name}"
            );
        }
        let differing = b.iter().zip(bytes).filter(|(x, y)| x != y).count();
        assert_eq!(differing, 0, "{name}: {differing} bytes differ");
    }
    let config = common::read_json(&out.join("config.json"));
    let want = common::read_json(&bnb4_dir().join("config.json"));
    assert_eq!(config["quantization_config"], want["quantization_config"]);
}

/// Quantize → load: the loader takes the written weights as pre-quantized, with codes and
/// statistics bit-identical to quantizing the source directly.
#[test]
fn quantized_export_round_trips_through_the_loader() {
    for (layout, qt, dq) in [
        ("falcon7b_style", QuantType::Nf4, true),
        ("new_arch", QuantType::Fp4, false),
    ] {
        let scratch = Scratch::new("export-roundtrip");
        let src_dir = fixtures().join(layout).join("checkpoint");
        let src = FalconCheckpoint::open(&src_dir).unwrap();
        let cfg = QuantConfig {
            quant_type: qt,
            blocksize: 64,
            double_quant: dq,
        };
        let out = scratch.path().join("q");
        let summary = quantize_checkpoint(&src, &out, cfg, None).unwrap();
        let loaded = FalconCheckpoint::open(&out).unwrap();
        assert!(loaded.is_prequantized());
        // At most the source's shard count: a greedy split of very unequal tensors (the
        // embedding dwarfs the 4-bit linears here) cannot always hit it exactly.
        assert!(
            loaded.files().len() <= src.files().len(),
            "{layout}: shards"
        );
        assert_eq!(summary.shards, loaded.files().len());
        let q = loaded.config().quantization.as_ref().unwrap();
        assert_eq!(q.quant_type, qt.name());
        assert_eq!(q.use_double_quant, dq);
        assert_eq!(loaded.bnb4bit_modules().len(), 8);
        for module in loaded.bnb4bit_modules().keys() {
            let name = format!("{module}.weight");
            let (w, shape) = src.tensor_f32(&name).unwrap();
            let direct = QuantizedWeight::quantize(&w, shape[0], shape[1], cfg).unwrap();
            let read = prequantized_weight(&loaded, module).unwrap().unwrap();
            assert_eq!(read, direct, "{layout} {module}");
        }
        // Unquantized tensors are kept in their stored dtype, bit for bit.
        for t in src.manifest() {
            if !loaded
                .bnb4bit_modules()
                .contains_key(t.name.trim_end_matches(".weight"))
            {
                assert_eq!(
                    loaded.tensor_raw(&t.name).unwrap().bytes,
                    src.tensor_raw(&t.name).unwrap().bytes,
                    "{}",
                    t.name
                );
            }
        }
        // The model loads from it without re-quantizing.
        let model = load_model(&loaded, &BaseOptions::default()).unwrap();
        for layer in &model.layers {
            for lin in layer.linears() {
                let BaseWeight::Quantized(w) = &lin.base else {
                    panic!("{} not 4-bit", lin.name)
                };
                assert_eq!(w.quant_type(), qt);
            }
        }
    }
}

#[test]
fn quantizing_a_4bit_checkpoint_is_refused() {
    let scratch = Scratch::new("export-twice");
    let msg = err_msg(quantize_checkpoint_dir(
        &bnb4_dir(),
        &scratch.path().join("q"),
        QuantType::Nf4,
        true,
        None,
    ));
    assert!(msg.contains("already"), "{msg}");
}

/// Loading with NF4/FP4 quantizes each linear straight from the stored bytes (f32 here, bf16
/// for a merged checkpoint); the result must equal quantizing the f32 values.
#[test]
fn load_time_quantization_from_bytes_equals_quantizing_f32() {
    let scratch = Scratch::new("load-bytes");
    let src = fixtures().join("new_arch");
    let bf16_dir = scratch.path().join("bf16");
    model_falcon::merge::merge_adapter_dirs(
        &src.join("checkpoint"),
        &src.join("adapter"),
        &bf16_dir,
        None,
    )
    .unwrap();
    for dir in [src.join("checkpoint"), bf16_dir] {
        let ckpt = FalconCheckpoint::open(&dir).unwrap();
        for (quant, quant_type, double_quant) in [
            (QuantMode::Nf4, QuantType::Nf4, true),
            (QuantMode::Fp4, QuantType::Fp4, false),
        ] {
            let opts = BaseOptions {
                quant,
                double_quant,
                blocksize: 64,
            };
            let model = load_model(&ckpt, &opts).unwrap();
            for layer in &model.layers {
                for lin in layer.linears() {
                    let BaseWeight::Quantized(q) = &lin.base else {
                        panic!("{} not quantized", lin.name)
                    };
                    let (w, shape) = ckpt.tensor_f32(&format!("{}.weight", lin.name)).unwrap();
                    let cfg = QuantConfig {
                        quant_type,
                        blocksize: 64,
                        double_quant,
                    };
                    let mut want = QuantizedWeight::quantize(&w, shape[0], shape[1], cfg).unwrap();
                    if q.dtype() != want.dtype() {
                        // Same codes and statistics; only the recorded source dtype differs.
                        want = QuantizedWeight::from_parts(
                            want.packed().to_vec(),
                            shape[0],
                            shape[1],
                            quant_type,
                            64,
                            want.absmax().clone(),
                            q.dtype(),
                        )
                        .unwrap();
                    }
                    assert_eq!(**q, want, "{} in {}", lin.name, dir.display());
                }
            }
        }
    }
}
