//! The default run (`trainer` with no arguments) end to end: it must finish, show the eval
//! loss falling, and leave the base model and the PEFT adapter where it says.

mod common;

#[test]
fn default_run_trains_and_writes_the_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let run = common::trainer_in(tmp.path(), &[]);
    run.ok();
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("eval loss:"))
        .unwrap_or_else(|| panic!("no eval loss line:\n{}", run.stdout));
    // "eval loss: A before training -> B after"
    let nums: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(nums.len(), 2, "{line}");
    assert!(nums[1] < nums[0], "{line}");
    assert!(nums.iter().all(|x| x.is_finite()), "{line}");
    // Learning, not just a falling loss: held-out questions go from wrong to mostly right.
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("held-out accuracy:"))
        .unwrap_or_else(|| panic!("no accuracy line:\n{}", run.stdout));
    // "held-out accuracy: A before training -> B after (...)"
    let nums: Vec<f64> = line
        .split_whitespace()
        .take(8)
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(nums.len(), 2, "{line}");
    assert!(nums[0] <= 0.2 && nums[1] >= 0.8, "{line}");
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            tmp.path()
                .join("output/demo/run")
                .join(
                    run.stdout
                        .lines()
                        .find_map(|l| l.strip_prefix("loaded the best model from "))
                        .and_then(|l| l.split(" (").next())
                        .and_then(|d| std::path::Path::new(d).file_name())
                        .unwrap_or_else(|| panic!("no best model line:\n{}", run.stdout)),
                )
                .join("trainer_state.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let best = state["best_metric"].as_f64().unwrap_or(f64::NAN);
    assert!((best - nums[1]).abs() < 1e-3, "{line}: best_metric {best}");
    let out = tmp.path().join("output/demo");
    for f in [
        "run/adapter_config.json",
        "run/adapter_model.safetensors",
        "run/metrics.jsonl",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(
            out.join("base-model").join(f).is_file(),
            "missing base-model/{f}"
        );
    }
    // The adapter it wrote answers through `ask` on the base it wrote.
    let ask = common::trainer_in(
        tmp.path(),
        &[
            "ask",
            "--model",
            "output/demo/base-model",
            "--adapter",
            "output/demo/run",
            "--question",
            "what was the net revenue in 2009?",
            "--pre-text",
            "net revenue was 9853 in 2009 .",
        ],
    );
    ask.ok();
}
