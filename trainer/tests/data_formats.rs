//! Chat and Alpaca data through the binary, the format list of `--data-format`, and the
//! refusal of configurations that cannot fit the machine's memory.

mod common;

use common::{fixture, s, trainer_in};
use serde_json::json;
use std::path::Path;

/// A copy of the fixture's base model with a chat template in tokenizer_config.json.
fn base_with_template(dir: &Path) -> std::path::PathBuf {
    let f = fixture();
    let base = dir.join("base");
    std::fs::create_dir_all(&base).unwrap();
    for e in std::fs::read_dir(&f.base).unwrap().flatten() {
        std::fs::copy(e.path(), base.join(e.file_name())).unwrap();
    }
    let template = "{% for m in messages %}{{ '### ' + m['role'] + ':\\n' }}\
        {% if m['role'] == 'assistant' %}{{ m['content'] + eos_token }}\
        {% else %}{{ m['content'] }}{% endif %}{{ '\\n' }}{% endfor %}\
        {% if add_generation_prompt %}{{ '### assistant:\\n' }}{% endif %}";
    std::fs::write(
        base.join("tokenizer_config.json"),
        json!({"chat_template": template, "eos_token": "<|endoftext|>"}).to_string(),
    )
    .unwrap();
    base
}

fn chat_lines(n: usize) -> String {
    (0..n)
        .map(|i| {
            json!({"messages": [
                {"role": "system", "content": "answer with a number"},
                {"role": "user", "content": format!("what is {i} plus one?")},
                {"role": "assistant", "content": format!("{}", i + 1)},
            ]})
            .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn chat_data_is_rendered_with_the_models_template_and_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let base = base_with_template(tmp.path());
    let data = tmp.path().join("chat.jsonl");
    std::fs::write(&data, chat_lines(12)).unwrap();
    let dump = tmp.path().join("dump.jsonl");
    let r = trainer_in(
        tmp.path(),
        &[
            "data",
            "--model",
            s(&base),
            "--data",
            s(&data),
            "--dump",
            s(&dump),
        ],
    );
    r.ok();
    assert!(r.stdout.contains("chat format"), "{}", r.stdout);
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&dump)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let text = first.to_string();
    assert!(
        text.contains("### system:\\nanswer with a number\\n### user:\\nwhat is 0 plus one?\\n### assistant:\\n"),
        "{text}"
    );
    let out = tmp.path().join("out");
    trainer_in(
        tmp.path(),
        &[
            "train",
            "--model",
            s(&base),
            "--data",
            s(&data),
            "--max-steps",
            "2",
            "--per-device-train-batch-size",
            "2",
            "--gradient-accumulation-steps",
            "1",
            "--predict-with-generate",
            "--generation-max-new-tokens",
            "2",
            "--no-progress",
            "--output-dir",
            s(&out),
        ],
    )
    .ok();
    assert!(out.join("adapter_model.safetensors").is_file());
    // The built-in model has no template: a clear error.
    trainer_in(
        tmp.path(),
        &[
            "train",
            "--data",
            s(&data),
            "--output-dir",
            s(&tmp.path().join("no-template")),
        ],
    )
    .fails_naming("chat template");
}

#[test]
fn alpaca_data_and_the_format_list() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("alpaca.jsonl");
    std::fs::write(
        &data,
        [
            json!({"instruction": "Name the ticker.", "input": "acme corporation", "output": "ACME"}),
            json!({"instruction": "Say hi.", "output": "hi"}),
        ]
        .map(|v| v.to_string())
        .join("\n"),
    )
    .unwrap();
    let r = trainer_in(
        tmp.path(),
        &["data", "--model", s(&f.base), "--data", s(&data)],
    );
    r.ok();
    assert!(
        r.stdout.contains("alpaca format, 2 records"),
        "{}",
        r.stdout
    );
    let odd = tmp.path().join("odd.jsonl");
    std::fs::write(&odd, json!({"text": "x"}).to_string()).unwrap();
    trainer_in(
        tmp.path(),
        &["data", "--model", s(&f.base), "--data", s(&odd)],
    )
    .fails_naming("--data-format (one of auto, finqa, hf, jsonl, chat, alpaca)");
    let r = trainer_in(
        tmp.path(),
        &[
            "data",
            "--model",
            s(&f.base),
            "--data",
            s(&odd),
            "--data-format",
            "csv",
        ],
    );
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("[possible values: auto, finqa, hf, jsonl, chat, alpaca]"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_configuration_beyond_the_machines_memory_is_refused_before_loading() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big");
    std::fs::create_dir_all(&big).unwrap();
    // Falcon-180B's shape: ~100 GB as NF4, more than any test machine has. No weights: the
    // check must come before loading.
    std::fs::write(
        big.join("config.json"),
        json!({
            "model_type": "falcon", "vocab_size": 65024, "hidden_size": 14848,
            "num_hidden_layers": 80, "num_attention_heads": 232, "num_kv_heads": 8,
            "new_decoder_architecture": true, "parallel_attn": true, "bias": false,
            "alibi": false, "max_position_embeddings": 2048
        })
        .to_string(),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let base = [
        "train",
        "--model",
        s(&big),
        "--data",
        s(&f.data),
        "--output-dir",
        s(&out),
    ];
    trainer_in(tmp.path(), &base).fails_naming("--skip-memory-check");
    let mut skip = base.to_vec();
    skip.push("--skip-memory-check");
    // Past the check, loading fails on the missing weights, as it would without the check.
    let r = trainer_in(tmp.path(), &skip);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(!r.stderr.contains("--skip-memory-check"), "{}", r.stderr);
}

#[test]
fn ask_with_a_huge_context_is_bounded() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx.txt");
    std::fs::write(&ctx, "net revenue was 9853 in 2009 . ".repeat(1 << 17)).unwrap();
    let ask = |extra: &[&str]| {
        let mut a = vec![
            "ask",
            "--model",
            s(&f.base),
            "--question",
            "what was the net revenue in 2009?",
            "--context-file",
            s(&ctx),
            "--max-new-tokens",
            "3",
        ];
        a.extend_from_slice(extra);
        trainer_in(tmp.path(), &a)
    };
    // 4 MB of context without --max-length: refused before tokenizing.
    ask(&[]).fails_naming("however it is tokenized");
    // With --max-length the context is cut as training cuts it, and the model answers.
    ask(&["--max-length", "128"]).ok();
}
