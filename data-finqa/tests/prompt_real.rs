//! The prompt text, byte for byte against the seed's template on real records.
//!
//! The expected strings are composed here from the raw JSON (serde_json::Value) by the template
//! in the issue: "Context:\n{pre_text joined by spaces}\n{table rows joined by newlines, cells by
//! '|'}\n{post_text}\nQuestion: {question}\nAnswer:", target " {answer}".

mod common;

use data_finqa::{load_file, seed_example, LoadOptions};
use serde_json::Value;

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

fn expected_prompt(v: &Value, question: &str) -> String {
    let pre = strings(&v["pre_text"]).join(" ");
    let post = strings(&v["post_text"]).join(" ");
    let table = v["table"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| strings(row).join("|"))
        .collect::<Vec<_>>()
        .join("\n");
    format!("Context:\n{pre}\n{table}\n{post}\nQuestion: {question}\nAnswer:")
}

#[test]
fn prompts_are_byte_exact_on_real_records() {
    let Some(dir) = common::samples_dir() else {
        return;
    };
    let mut checked = 0;
    for file in [
        "train_sample100.json",
        "dev_sample200.json",
        "test_sample100.json",
    ] {
        let path = dir.join(file);
        let raw: Vec<Value> = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let report = load_file(&path, &LoadOptions::default()).unwrap();
        assert_eq!(report.records.len(), raw.len());
        for (rec, v) in report.records.iter().zip(&raw) {
            let ex = seed_example(rec).unwrap();
            let question = v["qa"]["question"].as_str().unwrap();
            assert_eq!(ex.prompt, expected_prompt(v, question), "{file} {}", rec.id);
            let answer = v["qa"]["answer"].as_str().unwrap();
            let expected_target = if answer.is_empty() {
                // The seed's fallback: final_result (the last step's result).
                let steps = v["qa"]["steps"].as_array().unwrap();
                format!(" {}", steps.last().unwrap()["res"].as_str().unwrap())
            } else {
                format!(" {answer}")
            };
            assert_eq!(ex.target, expected_target, "{file} {}", rec.id);
            checked += 1;
        }
    }
    assert_eq!(checked, 400);

    let path = dir.join("test_first500_simplified.json");
    let raw: Vec<Value> = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let report = load_file(&path, &LoadOptions::default()).unwrap();
    for (rec, v) in report.records.iter().zip(&raw) {
        let ex = seed_example(rec).unwrap();
        assert_eq!(
            ex.prompt,
            expected_prompt(v, v["question"].as_str().unwrap())
        );
    }
}
