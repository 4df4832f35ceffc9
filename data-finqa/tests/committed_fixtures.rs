//! Real records committed as fixtures (scripts/fixtures/finqa_fixture.py): both schemas load to
//! the prompts and targets that the seed's template gives in Python, byte for byte.

mod common;

use std::path::PathBuf;

use data_finqa::{
    load_file, seed_example, tokenize_records, AnswerSource, DataFormat, LoadOptions,
    TokenizeOptions, TruncationPolicy,
};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn expected() -> Vec<(String, String, String)> {
    std::fs::read_to_string(fixture("finqa_expected.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let s = |k: &str| v[k].as_str().unwrap().to_string();
            (s("id"), s("prompt"), s("target"))
        })
        .collect()
}

#[test]
fn both_schemas_give_the_python_seed_prompts() {
    let want = expected();
    assert_eq!(want.len(), 7);
    for (file, format) in [
        ("finqa_original.json", DataFormat::FinqaOriginal),
        ("finqa_hf.jsonl", DataFormat::HfFlat),
    ] {
        let r = load_file(fixture(file), &LoadOptions::default()).unwrap();
        assert_eq!(r.format, format);
        assert_eq!(r.records.len(), want.len());
        for (rec, (id, prompt, target)) in r.records.iter().zip(&want) {
            assert_eq!(&rec.id, id);
            let ex = seed_example(rec).unwrap();
            assert_eq!(&ex.prompt, prompt, "{file} {id}");
            assert_eq!(&ex.target, target, "{file} {id}");
        }
        let fallbacks = r
            .records
            .iter()
            .filter(|x| x.resolved_answer().unwrap().1 == AnswerSource::FinalResult)
            .count();
        assert_eq!(fallbacks, 2, "two records have an empty answer");
    }
}

#[test]
fn keep_answer_fits_real_records_into_512_tokens() {
    let r = load_file(fixture("finqa_original.json"), &LoadOptions::default()).unwrap();
    let tok = common::tokenizer();
    let opts = |policy| TokenizeOptions {
        max_length: 512,
        eos_id: common::eos(),
        policy,
    };
    let keep = tokenize_records(tok, &r.records, &opts(TruncationPolicy::KeepAnswer)).unwrap();
    assert_eq!(keep.examples.len(), 7);
    assert_eq!(keep.answers_truncated(), 0);
    for (e, (_, prompt, target)) in keep.examples.iter().zip(expected()) {
        assert!(e.input_ids.len() <= 512);
        let question_tail = &prompt[prompt.rfind("\nQuestion: ").unwrap()..];
        assert!(e.prompt_text.ends_with(question_tail));
        let learned: Vec<u32> = e.input_ids[e.prompt_len..].to_vec();
        let mut want = tok
            .encode(target.as_str(), false)
            .unwrap()
            .get_ids()
            .to_vec();
        want.push(common::eos());
        assert_eq!(learned, want);
    }
    let seed = tokenize_records(tok, &r.records, &opts(TruncationPolicy::Seed)).unwrap();
    assert!(
        seed.answers_truncated() >= 6,
        "{}",
        seed.answers_truncated()
    );
}
