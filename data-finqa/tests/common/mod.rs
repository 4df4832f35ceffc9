//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use tokenizers::Tokenizer;

/// The real FinQA samples beside the repository checkout, when present.
pub fn samples_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/finqa/samples");
    if dir.join("train_sample100.json").is_file() {
        Some(dir)
    } else {
        println!(
            "skipped: real FinQA samples not found at {} (expected ../../shared/data/finqa/samples \
             relative to the crate)",
            dir.display()
        );
        None
    }
}

/// The synthetic tokenizer (vocab 1024, seed 7), built once per test binary.
pub fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| data_finqa::synthetic::build_tokenizer(1024, 7).expect("tokenizer builds"))
}

pub fn eos() -> u32 {
    data_finqa::synthetic::eos_id(tokenizer()).expect("eos present")
}
