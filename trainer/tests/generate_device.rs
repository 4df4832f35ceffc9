//! `trainer ask`, `trainer eval` and `trainer generate` on the CUDA decode path (the kernels-cu emulator here),
//! against the same commands on the CPU: the same answers, the same accuracy, and reports that
//! say where generation ran. The fixture is the built-in tiny model with a trained adapter
//! (`common::fixture`).

mod common;

use common::{fixture, s, trainer};
use serde_json::Value;
use std::path::Path;

fn eval_json(device: &str, preds: &Path) -> Value {
    let f = fixture();
    let r = trainer(&[
        "eval",
        "--model",
        s(&f.base),
        "--adapter",
        s(&f.adapter),
        "--data",
        s(&f.data),
        "--limit",
        "4",
        "--batch-size",
        "4",
        "--max-new-tokens",
        "6",
        "--predictions",
        s(preds),
        "--device",
        device,
        "--json",
    ]);
    r.ok();
    serde_json::from_str::<Value>(r.stdout.trim()).expect("one JSON object")
}

fn predictions(p: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["id"].as_str().unwrap().to_string(),
                v["generated"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn eval_on_the_emulator_gives_the_cpu_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let (pc, pe) = (tmp.path().join("cpu.jsonl"), tmp.path().join("emu.jsonl"));
    let cpu = eval_json("cpu", &pc);
    let emu = eval_json("emulator", &pe);
    assert_eq!(cpu["device"], "the CPU");
    assert!(
        emu["device"].as_str().unwrap().contains("emulator"),
        "{emu}"
    );
    assert_eq!(predictions(&pc), predictions(&pe));
    assert_eq!(cpu["accuracy"], emu["accuracy"]);
    assert_eq!(cpu["generated_tokens"], emu["generated_tokens"]);
    assert!(emu["generated_tokens"].as_u64().unwrap() > 0);
    assert!(emu["tokens_per_second"].as_f64().unwrap() > 0.0);
    // The loss runs on the device too: bf16 activations, within the step's tolerance.
    let (lc, le) = (
        cpu["eval_loss"].as_f64().unwrap(),
        emu["eval_loss"].as_f64().unwrap(),
    );
    assert!((lc - le).abs() <= 2e-3 * lc.abs(), "{lc} vs {le}");
}

#[test]
fn ask_on_the_emulator_gives_the_cpu_answer() {
    let f = fixture();
    let ask = |device: &str, merge: &str| {
        let r = trainer(&[
            "ask",
            "--model",
            s(&f.base),
            "--adapter",
            s(&f.adapter),
            "--context-file",
            s(&f.data),
            "--record-id",
            &f.records[1].id,
            "--max-new-tokens",
            "8",
            "--device",
            device,
            "--merge",
            merge,
        ]);
        r.ok();
        r.stdout
    };
    let cpu = ask("cpu", "false");
    assert_eq!(ask("emulator", "false"), cpu);
    assert_eq!(ask("emulator", "true"), cpu);
}

#[test]
fn a_bad_device_is_a_clear_error() {
    let f = fixture();
    let r = trainer(&[
        "ask",
        "--model",
        s(&f.base),
        "--question",
        "q?",
        "--device",
        "gpu7",
    ]);
    r.fails_naming("--device");
}

#[test]
fn generate_on_the_emulator_gives_the_cpu_tokens() {
    let f = fixture();
    let run = |device: &str| {
        let r = trainer(&[
            "generate",
            "--model",
            s(&f.base),
            "--adapter",
            s(&f.adapter),
            "--prompt",
            "Revenue in 2019 was",
            "--max-new-tokens",
            "8",
            "--device",
            device,
            "--json",
        ]);
        r.ok();
        serde_json::from_str::<Value>(r.stdout.trim()).expect("json")["token_ids"].clone()
    };
    let cpu = run("cpu");
    assert!(!cpu.as_array().unwrap().is_empty());
    assert_eq!(run("emulator"), cpu);
}
