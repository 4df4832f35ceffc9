//! `trainer merge` and `trainer quantize` end to end, through the binary: outputs the
//! library writes (checked in detail by model-falcon's merge and prequantized tests), loadable
//! again, and one clear message with a non-zero exit for each bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use model_falcon::checkpoint::StDType;
use model_falcon::merge::merge_adapter_dirs;
use model_falcon::{load_model, BaseOptions, FalconCheckpoint, QuantMode};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/falcon")
}

fn trainer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .output()
        .expect("the trainer binary runs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Fails, without a panic, with a message containing every `needle`.
fn fails_with(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected a failure; stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "`{n}` not in: {stderr}");
    }
}

/// Every file of a directory with its bytes, sorted by name.
fn dir_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn merge_writes_the_library_merge_and_reloads() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures().join("falcon7b_style");
    let out = tmp.path().join("merged");
    let stdout = ok(&trainer(&[
        "merge",
        "--model",
        s(&src.join("checkpoint")),
        "--adapter",
        s(&src.join("adapter")),
        "--out",
        s(&out),
    ]));
    assert!(stdout.contains("merged 8 adapted modules"), "{stdout}");
    assert!(stdout.contains("3 shards"), "{stdout}");

    let lib = tmp.path().join("lib");
    merge_adapter_dirs(&src.join("checkpoint"), &src.join("adapter"), &lib, None).unwrap();
    assert_eq!(dir_bytes(&out), dir_bytes(&lib));

    let merged = FalconCheckpoint::open(&out).unwrap();
    assert_eq!(merged.files().len(), 3);
    assert!(merged.tensors().all(|t| t.dtype == StDType::BF16));
    let opts = BaseOptions {
        quant: QuantMode::None,
        ..BaseOptions::default()
    };
    load_model(&merged, &opts).unwrap();
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
}

#[test]
fn merge_with_max_shard_size() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures().join("new_arch");
    let out = tmp.path().join("merged");
    ok(&trainer(&[
        "merge",
        "--model",
        s(&src.join("checkpoint")),
        "--adapter",
        s(&src.join("adapter")),
        "--out",
        s(&out),
        "--max-shard-size",
        "40KB",
    ]));
    let merged = FalconCheckpoint::open(&out).unwrap();
    assert!(merged.files().len() > 1);
    assert!(merged.index_path().is_some());
}

#[test]
fn quantize_then_load_and_merge() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures().join("new_arch");
    let q = tmp.path().join("nf4");
    let stdout = ok(&trainer(&[
        "quantize",
        "--model",
        s(&src.join("checkpoint")),
        "--out",
        s(&q),
    ]));
    assert!(
        stdout.contains("8 linear modules to nf4 with double quantization"),
        "{stdout}"
    );
    let ckpt = FalconCheckpoint::open(&q).unwrap();
    assert!(ckpt.is_prequantized());
    let cfg = ckpt.config().quantization.clone().unwrap();
    assert_eq!(
        (cfg.quant_type.as_str(), cfg.use_double_quant),
        ("nf4", true)
    );
    assert!(ckpt
        .bnb4bit_modules()
        .values()
        .all(|m| m.is_double_quant() && m.quant_type == "nf4"));
    load_model(&ckpt, &BaseOptions::default()).unwrap();

    // The 4-bit checkpoint is a valid merge base.
    let merged = tmp.path().join("merged");
    ok(&trainer(&[
        "merge",
        "--model",
        s(&q),
        "--adapter",
        s(&src.join("adapter")),
        "--out",
        s(&merged),
    ]));
    assert!(!FalconCheckpoint::open(&merged).unwrap().is_prequantized());

    // FP4 without double quantization.
    let fp4 = tmp.path().join("fp4");
    ok(&trainer(&[
        "quantize",
        "--model",
        s(&src.join("checkpoint")),
        "--out",
        s(&fp4),
        "--quant",
        "fp4",
        "--double-quant",
        "false",
    ]));
    let ckpt = FalconCheckpoint::open(&fp4).unwrap();
    assert!(ckpt
        .bnb4bit_modules()
        .values()
        .all(|m| !m.is_double_quant() && m.quant_type == "fp4"));
}

#[test]
fn bad_inputs_fail_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let na = fixtures().join("new_arch");
    let seven = fixtures().join("falcon7b_style");
    let out = tmp.path().join("o");
    let missing = tmp.path().join("missing");
    let (ck, ad) = (na.join("checkpoint"), na.join("adapter"));

    let merge = |m: &Path, a: &Path, o: &Path| {
        trainer(&["merge", "--model", s(m), "--adapter", s(a), "--out", s(o)])
    };
    fails_with(
        &merge(&missing, &ad, &out),
        &["model directory", "does not exist"],
    );
    fails_with(
        &merge(&ck, &missing, &out),
        &["adapter directory", "does not exist"],
    );
    // An adapter trained on another model.
    fails_with(
        &merge(&ck, &seven.join("adapter"), &out),
        &["adapter", "query_key_value"],
    );
    fails_with(
        &trainer(&[
            "merge",
            "--model",
            s(&ck),
            "--adapter",
            s(&ad),
            "--out",
            s(&out),
            "--max-shard-size",
            "5TB",
        ]),
        &["--max-shard-size", "unit"],
    );

    let quantize = |m: &Path, o: &Path, extra: &[&str]| {
        let mut args = vec!["quantize", "--model", s(m), "--out", s(o)];
        args.extend_from_slice(extra);
        trainer(&args)
    };
    fails_with(
        &quantize(&ck, &out, &["--quant", "int8"]),
        &["--quant", "int8"],
    );
    fails_with(&quantize(&missing, &out, &[]), &["does not exist"]);
    fails_with(&quantize(&fixtures().join("bnb4"), &out, &[]), &["already"]);

    // Writing over the source directory is refused, and the source is left intact.
    let copy = tmp.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    for (name, bytes) in dir_bytes(&ck) {
        std::fs::write(copy.join(name), bytes).unwrap();
    }
    let before = dir_bytes(&copy);
    fails_with(&quantize(&copy, &copy, &[]), &["source checkpoint"]);
    fails_with(&merge(&copy, &ad, &copy), &["source checkpoint"]);
    assert_eq!(dir_bytes(&copy), before);
}
