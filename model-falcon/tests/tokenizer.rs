//! The fixture tokenizer against the ids the Python tokenizer produced, and eos resolution
//! including Falcon's bad eos in old generation configs.

mod common;

use std::fs;

use common::{copy_dir, err_msg, Scratch};
use model_falcon::tokenizer::{EosSource, FalconTokenizer};

#[test]
fn encodes_and_decodes_like_the_python_tokenizer() {
    let samples = common::read_json(&common::fixtures().join("tokenizer_samples.json"));
    for layout in ["falcon7b_style", "new_arch"] {
        let tok = FalconTokenizer::from_dir(common::checkpoint_dir(layout)).unwrap();
        assert_eq!(
            tok.vocab_size() as u64,
            samples["vocab_size"].as_u64().unwrap()
        );
        assert_eq!(
            tok.eos_id() as u64,
            samples["eos_token_id"].as_u64().unwrap()
        );
        assert_eq!(tok.eos_id(), 11);
        assert_eq!(tok.pad_id(), 11);
        assert_eq!(tok.eos_token(), Some("<|endoftext|>"));
        assert_eq!(tok.eos_source(), EosSource::GenerationConfig);
        assert!(tok.notes().is_empty());
        for s in samples["samples"].as_array().unwrap() {
            let text = s["text"].as_str().unwrap();
            let want: Vec<u32> = s["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(tok.encode(text, true).unwrap(), want, "{text:?}");
            assert_eq!(
                tok.decode(&want, false).unwrap(),
                s["decoded"].as_str().unwrap()
            );
        }
        // Special tokens are skipped on request.
        let ids = tok.encode("Answer: 12.5%<|endoftext|>", true).unwrap();
        assert_eq!(*ids.last().unwrap(), 11);
        assert_eq!(tok.decode(&ids, true).unwrap(), "Answer: 12.5%");
    }
}

/// Old falcon-7b revisions: generation_config.json with bos 1 / eos 2 (`>>INTRODUCTION<<`).
#[test]
fn bad_generation_config_eos_is_ignored() {
    let d = copy_dir(&common::checkpoint_dir("falcon7b_style"), "bad-eos");
    fs::write(
        d.path().join("generation_config.json"),
        r#"{"bos_token_id": 1, "eos_token_id": 2, "_from_model_config": true}"#,
    )
    .unwrap();
    let tok = FalconTokenizer::from_dir(d.path()).unwrap();
    assert_eq!(tok.eos_id(), 11);
    assert_eq!(tok.eos_source(), EosSource::Config);
    assert_eq!(tok.notes().len(), 1);
    assert!(
        tok.notes()[0].contains("2 (`>>INTRODUCTION<<`)"),
        "{}",
        tok.notes()[0]
    );

    // config.json wrong too: fall back to the tokenizer's eos token.
    let cfg_path = d.path().join("config.json");
    let mut cfg = common::read_json(&cfg_path);
    cfg["eos_token_id"] = serde_json::json!(2);
    fs::write(&cfg_path, cfg.to_string()).unwrap();
    let tok = FalconTokenizer::from_dir(d.path()).unwrap();
    assert_eq!((tok.eos_id(), tok.eos_source()), (11, EosSource::Tokenizer));
    assert_eq!(tok.notes().len(), 2);

    // A list containing the right id is accepted.
    fs::write(
        d.path().join("generation_config.json"),
        r#"{"eos_token_id": [2, 11]}"#,
    )
    .unwrap();
    let tok = FalconTokenizer::from_dir(d.path()).unwrap();
    assert_eq!(
        (tok.eos_id(), tok.eos_source()),
        (11, EosSource::GenerationConfig)
    );
}

#[test]
fn without_configs_the_tokenizer_decides() {
    let d = Scratch::new("tok-only");
    fs::copy(
        common::checkpoint_dir("new_arch").join("tokenizer.json"),
        d.path().join("tokenizer.json"),
    )
    .unwrap();
    let tok = FalconTokenizer::from_dir(d.path()).unwrap();
    assert_eq!((tok.eos_id(), tok.eos_source()), (11, EosSource::Tokenizer));
}

#[test]
fn missing_or_broken_tokenizer() {
    let d = Scratch::new("tok-missing");
    let e = err_msg(FalconTokenizer::from_dir(d.path()));
    assert!(e.contains("tokenizer.json"), "{e}");
    fs::write(d.path().join("tokenizer.json"), "{\"model\": 3}").unwrap();
    let e = err_msg(FalconTokenizer::from_dir(d.path()));
    assert!(
        e.contains("tokenizer.json") && e.contains("cannot load"),
        "{e}"
    );
    // An eos token that the vocabulary does not have.
    let d = copy_dir(&common::checkpoint_dir("new_arch"), "tok-eos");
    fs::write(
        d.path().join("tokenizer_config.json"),
        r#"{"eos_token": "</s>"}"#,
    )
    .unwrap();
    let e = err_msg(FalconTokenizer::from_dir(d.path()));
    assert!(e.contains("`</s>`"), "{e}");
}

/// The tokenizers crate panics on a decoder section it cannot deserialize; loading must
/// report the file instead.
#[test]
fn a_malformed_decoder_section_is_an_error_not_a_panic() {
    let d = copy_dir(&common::checkpoint_dir("new_arch"), "tok-decoder");
    let path = d.path().join("tokenizer.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    v["decoder"] = serde_json::json!(5);
    fs::write(&path, v.to_string()).unwrap();
    let e = err_msg(FalconTokenizer::from_dir(d.path()));
    assert!(
        e.contains("tokenizer.json") && e.contains("cannot load"),
        "{e}"
    );
}
