//! `trainer ask`, `trainer eval` and `trainer generate` on the CUDA decode path (the kernels-cu
//! emulator, and CUDA device 0 when it opens), against the same commands on the CPU: the same
//! answers, the same accuracy, and reports that say where generation ran. The fixture is the
//! built-in tiny model with a trained adapter (`common::fixture`).

mod common;

use common::{devices_under_test, fixture, s, trainer};
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
fn eval_on_the_device_gives_the_cpu_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let pc = tmp.path().join("cpu.jsonl");
    let cpu = eval_json("cpu", &pc);
    assert_eq!(cpu["device"], "the CPU");
    for device in devices_under_test() {
        let pe = tmp.path().join(format!("{device}.jsonl"));
        let emu = eval_json(device, &pe);
        let label = emu["device"].as_str().unwrap();
        assert_ne!(label, "the CPU", "{device}: {emu}");
        if device == "emulator" {
            assert!(label.contains("emulator"), "{emu}");
        }
        assert_eq!(predictions(&pc), predictions(&pe), "{device}");
        assert_eq!(cpu["accuracy"], emu["accuracy"], "{device}");
        assert_eq!(cpu["generated_tokens"], emu["generated_tokens"], "{device}");
        assert!(emu["generated_tokens"].as_u64().unwrap() > 0);
        assert!(emu["tokens_per_second"].as_f64().unwrap() > 0.0);
        // The loss runs on the device too: bf16 activations, within the step's tolerance.
        let (lc, le) = (
            cpu["eval_loss"].as_f64().unwrap(),
            emu["eval_loss"].as_f64().unwrap(),
        );
        assert!((lc - le).abs() <= 2e-3 * lc.abs(), "{device}: {lc} vs {le}");
    }
}

#[test]
fn ask_on_the_device_gives_the_cpu_answer() {
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
    for device in devices_under_test() {
        assert_eq!(ask(device, "false"), cpu, "{device}");
        assert_eq!(ask(device, "true"), cpu, "{device}, merged");
    }
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
fn generate_on_the_device_gives_the_cpu_tokens() {
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
    for device in devices_under_test() {
        assert_eq!(run(device), cpu, "{device}");
    }
}
