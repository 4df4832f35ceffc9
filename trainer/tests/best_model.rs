//! Accuracy-driven training through the binary: eval_accuracy from generated answers,
//! `--metric-for-best-model`, `--greater-is-better`, `--load-best-model-at-end`,
//! `--early-stopping-patience`, the best checkpoint kept by rotation, and resume.

mod common;

use common::{fixture, s, trainer_in};
use serde_json::Value;
use std::path::Path;

fn flags(data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "train",
        "--data",
        s(data),
        "--val-fraction",
        "0.2",
        "--per-device-train-batch-size",
        "2",
        "--gradient-accumulation-steps",
        "1",
        "--max-length",
        "128",
        "--learning-rate",
        "2e-3",
        "--eval-steps",
        "2",
        "--save-steps",
        "2",
        "--predict-with-generate",
        "--generation-max-new-tokens",
        "3",
        "--no-progress",
        "--output-dir",
        s(out),
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    a.extend(extra.iter().map(|x| x.to_string()));
    a
}

fn run(cwd: &Path, args: &[String]) -> common::Run {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    trainer_in(cwd, &refs)
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// (step, eval_loss, eval_accuracy) of every evaluation after step 0.
fn evals(out: &Path) -> Vec<(u64, f64, f64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v.get("eval_loss").is_some())
        .map(|v| {
            let acc = v["eval_accuracy"]
                .as_f64()
                .expect("every evaluation logs eval_accuracy");
            assert!((0.0..=1.0).contains(&acc));
            (
                v["step"].as_u64().unwrap(),
                v["eval_loss"].as_f64().unwrap(),
                acc,
            )
        })
        .filter(|e| e.0 > 0)
        .collect()
}

fn checkpoints(out: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    v.sort();
    v
}

#[test]
fn the_best_checkpoint_survives_rotation_becomes_the_adapter_and_stops_the_run() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    // The largest eval_loss is "best": as the loss falls this picks an early checkpoint, so
    // the best is not the newest, and patience runs out.
    let r = run(
        tmp.path(),
        &flags(
            &f.data,
            &out,
            &[
                "--max-steps",
                "20",
                "--save-total-limit",
                "1",
                "--metric-for-best-model",
                "loss",
                "--greater-is-better",
                "true",
                "--load-best-model-at-end",
                "--early-stopping-patience",
                "2",
            ],
        ),
    );
    r.ok();
    // What HF's Trainer and EarlyStoppingCallback do with these evaluations.
    let ev = evals(&out);
    let (mut best, mut best_step, mut bad, mut stop_at) = (f64::NAN, 0, 0, None);
    for &(step, loss, _) in &ev {
        if best.is_nan() || loss > best {
            (best, best_step, bad) = (loss, step, 0);
        } else {
            bad += 1;
        }
        if bad >= 2 {
            stop_at = Some(step);
            break;
        }
    }
    let last = ev.last().unwrap().0;
    assert_eq!(stop_at, Some(last), "evaluations {ev:?}");
    assert!(last < 20, "early stopping ended the run: {ev:?}");
    assert!(r.stdout.contains("stopped early"), "{}", r.stdout);
    let newest = out.join(format!("checkpoint-{last}"));
    let state = json(&newest.join("trainer_state.json"));
    assert_eq!(state["global_step"].as_u64(), Some(last));
    assert_eq!(state["best_metric"].as_f64(), Some(best));
    assert_eq!(state["best_global_step"].as_u64(), Some(best_step));
    let best_dir = state["best_model_checkpoint"].as_str().unwrap().to_string();
    assert!(
        best_dir.ends_with(&format!("checkpoint-{best_step}")),
        "{best_dir}"
    );
    // save_total_limit 1 keeps the newest and, as HF does, the best too.
    let mut want = vec![
        format!("checkpoint-{best_step}"),
        format!("checkpoint-{last}"),
    ];
    want.sort();
    want.dedup();
    assert_eq!(checkpoints(&out), want);
    // The run's adapter is the best checkpoint's.
    let bytes = |d: &Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
    assert_eq!(bytes(&out), bytes(Path::new(&best_dir)));
    assert!(
        r.stdout.contains("loaded the best model from"),
        "{}",
        r.stdout
    );
}

#[test]
fn resume_keeps_the_best_model_state() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let common_flags = [
        "--max-steps",
        "8",
        "--metric-for-best-model",
        "eval_loss",
        "--greater-is-better",
        "--load-best-model-at-end",
        "--save-total-limit",
        "1",
    ];
    let whole = tmp.path().join("whole");
    run(tmp.path(), &flags(&f.data, &whole, &common_flags)).ok();
    let parts = tmp.path().join("parts");
    let mut first = common_flags.to_vec();
    first.extend(["--stop-after-steps", "4"]);
    run(tmp.path(), &flags(&f.data, &parts, &first)).ok();
    assert_eq!(
        json(&parts.join("checkpoint-4/trainer_state.json"))["global_step"].as_u64(),
        Some(4)
    );
    run(tmp.path(), &flags(&f.data, &parts, &["--resume"])).ok();
    let a = json(&whole.join("checkpoint-8/trainer_state.json"));
    let b = json(&parts.join("checkpoint-8/trainer_state.json"));
    for key in [
        "best_metric",
        "best_global_step",
        "early_stopping_patience_counter",
    ] {
        assert_eq!(a[key], b[key], "{key}");
    }
    let name = |v: &Value| {
        Path::new(v["best_model_checkpoint"].as_str().unwrap())
            .file_name()
            .unwrap()
            .to_owned()
    };
    assert_eq!(name(&a), name(&b));
    assert_eq!(checkpoints(&whole), checkpoints(&parts));
    let bytes = |d: &Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
    assert_eq!(
        bytes(&whole),
        bytes(&parts),
        "the final (best) adapters agree"
    );
}

#[test]
fn contradictory_best_model_flags_are_refused_before_training() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let mut a = flags(&f.data, &out, &["--metric-for-best-model", "accuracy"]);
    a.retain(|x| x != "--predict-with-generate");
    run(tmp.path(), &a).fails_naming("--predict-with-generate");
    let a = flags(&f.data, &out, &["--early-stopping-patience", "2"]);
    run(tmp.path(), &a).fails_naming("--load-best-model-at-end");
    let a = flags(
        &f.data,
        &out,
        &["--load-best-model-at-end", "--save-steps", "3"],
    );
    run(tmp.path(), &a).fails_naming("multiple of --eval-steps");
}
