//! End-to-end tests of the `trainer` binary: training with checkpoints, rotation and a
//! bit-exact resume, the PEFT adapter in `ask`, `generate --json`, `eval --json`,
//! `data --dump`, `info`, `--help`, and every bad-input path (exit 1, one message naming the
//! file, no panic).

mod common;

use common::{fixture, s, trainer, trainer_in, SEED};
use data_finqa::metrics::{answer_from_generation, exact_match, numeric_match};
use data_finqa::{tokenize_records, TokenizeOptions, TruncationPolicy};
use engine::optim::AdamWConfig;
use model_falcon::peft::load_adapter;
use model_falcon::{load_lora, Backend, BaseOptions, GenerationConfig, Sampling};
use serde_json::Value;
use std::path::Path;
use trainer::session::{load_session, Session};

/// The fixture base with an adapter, loaded in-process as the subcommands should load it.
fn session_with_adapter(adapter: &Path) -> Session {
    let f = fixture();
    let mut session = load_session(&f.base, &BaseOptions::default()).expect("load base");
    let (cfg, w) = load_adapter(adapter, &session.model.config).expect("load adapter");
    load_lora(&mut session.model, &cfg, &w).expect("apply adapter");
    session
}

fn greedy(session: &Session, prompt: &[u32], max_new: usize) -> Vec<u32> {
    let cfg = GenerationConfig {
        max_new_tokens: max_new,
        stop_ids: session.stop_ids.clone(),
        pad_id: session.pad_id,
        sampling: Sampling::Greedy,
    };
    session
        .model
        .generate(&[prompt.to_vec()], &cfg)
        .expect("generate")
        .remove(0)
        .tokens
}

const TRAIN_FLAGS: &[&str] = &[
    "train",
    "--max-steps",
    "6",
    "--save-steps",
    "2",
    "--save-total-limit",
    "2",
    "--max-length",
    "128",
    "--per-device-train-batch-size",
    "2",
    "--gradient-accumulation-steps",
    "2",
    "--logging-steps",
    "2",
    "--eval-steps",
    "100",
    "--learning-rate",
    "1e-3",
    "--lora-dropout",
    "0.1",
    "--val-fraction",
    "0.05",
    "--no-progress",
];

fn train_into(out: &Path, extra: &[&str]) -> common::Run {
    let mut args: Vec<&str> = TRAIN_FLAGS.to_vec();
    args.extend(["--output-dir", s(out)]);
    args.extend(extra);
    trainer_in(out.parent().expect("parent"), &args)
}

#[test]
fn train_rotates_checkpoints_resumes_bit_exactly_and_its_adapter_loads_in_ask() {
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    let run = train_into(&full, &[]);
    run.ok();
    assert!(run.stdout.contains("adapter written to"), "{}", run.stdout);
    // Rotation: saves at 2, 4, 6 with a limit of 2 leave 4 and 6.
    assert!(!full.join("checkpoint-2").exists());
    for step in [4, 6] {
        let c = full.join(format!("checkpoint-{step}"));
        for f in [
            "adapter_config.json",
            "adapter_model.safetensors",
            "optimizer.safetensors",
            "trainer_state.json",
            "rng_state.json",
            "scheduler.json",
        ] {
            assert!(c.join(f).is_file(), "{} lacks {f}", c.display());
        }
    }
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "metrics.jsonl",
    ] {
        assert!(full.join(f).is_file(), "no final {f}");
    }
    // No temporary checkpoint directory is left behind.
    for e in std::fs::read_dir(&full).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        assert!(!name.starts_with('.'), "leftover {name}");
    }

    // Stop after 3 steps (a checkpoint is written), then resume.
    let resumed = tmp.path().join("resumed");
    let first = train_into(&resumed, &["--stop-after-steps", "3"]);
    first.ok();
    assert!(resumed.join("checkpoint-3").is_dir());
    assert!(!resumed.join("adapter_model.safetensors").exists());
    let second = train_into(&resumed, &["--resume"]);
    second.ok();
    assert!(second.stdout.contains("resuming from"), "{}", second.stdout);
    let a = std::fs::read(full.join("adapter_model.safetensors")).unwrap();
    let b = std::fs::read(resumed.join("adapter_model.safetensors")).unwrap();
    assert!(
        a == b,
        "the resumed adapter differs from the uninterrupted run"
    );
    let opt_a = std::fs::read(full.join("checkpoint-6/optimizer.safetensors")).unwrap();
    let opt_b = std::fs::read(resumed.join("checkpoint-6/optimizer.safetensors")).unwrap();
    assert!(opt_a == opt_b, "the resumed optimizer state differs");
    // The adapter moved away from its initialization (lora_B starts at zero).
    let (_, w) = load_adapter(&full, &fixture_config()).unwrap();
    assert!(w.modules.values().any(|p| p.b.iter().any(|&x| x != 0.0)));

    // The PEFT adapter written by train answers in `ask` (the built-in base of `train` without
    // --model is the fixture's base: same seed). The answer must be the greedy continuation of
    // the training pipeline's own prompt tokens for that record.
    let f = fixture();
    let record = &f.records[0];
    let ctx = tmp.path().join("record.json");
    std::fs::write(
        &ctx,
        common::finqa_json(std::slice::from_ref(record))
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']'),
    )
    .unwrap();
    let ask = trainer(&[
        "ask",
        "--model",
        s(&f.base),
        "--adapter",
        s(&full),
        "--context-file",
        s(&ctx),
    ]);
    ask.ok();
    let session = session_with_adapter(&full);
    let opts = TokenizeOptions {
        max_length: 4096,
        eos_id: session.eos_id,
        policy: TruncationPolicy::KeepAnswer,
    };
    let set = tokenize_records(&session.tokenizer, std::slice::from_ref(record), &opts).unwrap();
    let ids = greedy(&session, set.examples[0].prompt_ids(), 15);
    let text = session.tokenizer.decode(&ids, true).unwrap();
    assert_eq!(
        ask.stdout.trim_end_matches('\n'),
        answer_from_generation(&text)
    );
}

fn fixture_config() -> model_falcon::FalconConfig {
    model_falcon::FalconConfig::from_dir(&fixture().base).unwrap()
}

#[test]
fn ask_with_flags_builds_the_training_prompt() {
    let f = fixture();
    let r = &f.records[1];
    let pre = r.pre_text.join(" ");
    let table = data_finqa::prompt::table_text(&r.table);
    let post = r.post_text.join(" ");
    let run = trainer(&[
        "ask",
        "--model",
        s(&f.base),
        "--adapter",
        s(&f.adapter),
        "--question",
        &r.question,
        "--pre-text",
        &pre,
        "--table",
        &table,
        "--post-text",
        &post,
        "--max-new-tokens",
        "6",
    ]);
    run.ok();
    let session = session_with_adapter(&f.adapter);
    let prompt = data_finqa::seed_prompt(r);
    let ids = session.tokenizer.encode(prompt.as_str(), false).unwrap();
    let out = greedy(&session, ids.get_ids(), 6);
    let text = session.tokenizer.decode(&out, true).unwrap();
    assert_eq!(
        run.stdout.trim_end_matches('\n'),
        answer_from_generation(&text)
    );

    // The same record picked from the data file by id gives the same prompt, hence answer.
    let by_id = trainer(&[
        "ask",
        "--model",
        s(&f.base),
        "--adapter",
        s(&f.adapter),
        "--context-file",
        s(&f.data),
        "--record-id",
        &r.id,
        "--max-new-tokens",
        "6",
    ]);
    by_id.ok();
    assert_eq!(by_id.stdout, run.stdout);
    trainer(&[
        "ask",
        "--model",
        s(&f.base),
        "--context-file",
        s(&f.data),
        "--record-id",
        "no-such-id",
    ])
    .fails_naming("no-such-id");
}

#[test]
fn generate_json_is_one_object_matching_greedy_decoding() {
    let f = fixture();
    let prompt = "Context:\nrevenue was 120 in 2019 .";
    let run = trainer(&[
        "generate",
        "--model",
        s(&f.base),
        "--adapter",
        s(&f.adapter),
        "--prompt",
        prompt,
        "--max-new-tokens",
        "7",
        "--json",
    ]);
    run.ok();
    let v: Value = serde_json::from_str(run.stdout.trim()).expect("stdout is one JSON object");
    assert_eq!(run.stdout.trim().lines().count(), 1);
    let ids: Vec<u32> = v["token_ids"]
        .as_array()
        .expect("token_ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect();
    assert!(!ids.is_empty() && ids.len() <= 7);
    let session = session_with_adapter(&f.adapter);
    let enc = session.tokenizer.encode(prompt, false).unwrap();
    assert_eq!(ids, greedy(&session, enc.get_ids(), 7));
    assert_eq!(
        v["text"].as_str().expect("text"),
        session.tokenizer.decode(&ids, true).unwrap()
    );

    // Sampling: reproducible for a seed.
    let sample = |seed: &str| {
        let r = trainer(&[
            "generate",
            "--model",
            s(&f.base),
            "--prompt",
            prompt,
            "--max-new-tokens",
            "12",
            "--temperature",
            "1.5",
            "--top-p",
            "0.95",
            "--seed",
            seed,
            "--json",
        ]);
        r.ok();
        serde_json::from_str::<Value>(r.stdout.trim()).expect("json")["token_ids"].clone()
    };
    assert_eq!(sample("7"), sample("7"));
}

#[test]
fn eval_json_reports_loss_accuracy_and_predictions() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let run_eval = |batch: &str, preds: &Path| {
        let r = trainer(&[
            "eval",
            "--model",
            s(&f.base),
            "--adapter",
            s(&f.adapter),
            "--data",
            s(&f.data),
            "--limit",
            "5",
            "--batch-size",
            batch,
            "--max-new-tokens",
            "8",
            "--predictions",
            s(preds),
            "--json",
        ]);
        r.ok();
        assert_eq!(r.stdout.trim().lines().count(), 1, "{}", r.stdout);
        serde_json::from_str::<Value>(r.stdout.trim()).expect("one JSON object")
    };
    let p3 = tmp.path().join("p3.jsonl");
    let v = run_eval("3", &p3);
    assert_eq!(v["examples"], 5);
    let loss = v["eval_loss"].as_f64().expect("eval_loss");
    let tokens = v["target_tokens"].as_u64().expect("target_tokens") as usize;
    let acc = v["accuracy"].as_f64().expect("accuracy");
    assert!((0.0..=1.0).contains(&acc));

    // The loss is the training loop's exact token-level mean on the same examples.
    let session = session_with_adapter(&f.adapter);
    let opts = TokenizeOptions {
        max_length: 512,
        eos_id: session.eos_id,
        policy: TruncationPolicy::KeepAnswer,
    };
    let set = tokenize_records(&session.tokenizer, &f.records[..5], &opts).unwrap();
    let backend = Backend::host(&session.model, AdamWConfig::default()).unwrap();
    let (want, n) = trainer::train::evaluate(&backend, session.pad_id, &set.examples, 1).unwrap();
    assert_eq!(tokens, n);
    assert!((loss - want).abs() <= 1e-6 * want.abs(), "{loss} vs {want}");

    let rows: Vec<Value> = std::fs::read_to_string(&p3)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSONL row"))
        .collect();
    assert_eq!(rows.len(), 5);
    let mut correct = 0;
    for (row, rec) in rows.iter().zip(&f.records) {
        assert_eq!(row["id"], rec.id.as_str());
        assert_eq!(row["question"], rec.question.as_str());
        assert_eq!(row["gold"], rec.answer.as_str());
        let pred = row["prediction"].as_str().unwrap();
        let ok = numeric_match(pred, &rec.answer) || exact_match(pred, &rec.answer);
        assert_eq!(row["correct"], ok);
        correct += usize::from(ok);
    }
    assert_eq!(acc, correct as f64 / 5.0);

    // Batched (left-padded) generation gives the same answers as one prompt at a time.
    let p1 = tmp.path().join("p1.jsonl");
    run_eval("1", &p1);
    let gen = |p: &Path| -> Vec<Value> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["generated"].clone())
            .collect()
    };
    assert_eq!(gen(&p1), gen(&p3));
}

#[test]
fn data_dump_writes_every_formatted_example() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let dump = tmp.path().join("sub/dump.jsonl");
    let run = trainer(&[
        "data",
        "--data",
        s(&f.data),
        "--model",
        s(&f.base),
        "--dump",
        s(&dump),
    ]);
    run.ok();
    assert!(run.stdout.contains("examples: 12"), "{}", run.stdout);
    assert!(run.stdout.contains("p50"), "{}", run.stdout);
    let rows: Vec<Value> = std::fs::read_to_string(&dump)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSONL row"))
        .collect();
    assert_eq!(rows.len(), 12);
    let tok = tokenizers::Tokenizer::from_file(f.base.join("tokenizer.json")).unwrap();
    for (row, rec) in rows.iter().zip(&f.records) {
        assert_eq!(row["prompt"], data_finqa::seed_prompt(rec).as_str());
        assert_eq!(row["target"], format!(" {}", rec.answer).as_str());
        let n_prompt = tok
            .encode(data_finqa::seed_prompt(rec), false)
            .unwrap()
            .len();
        let n_target = tok.encode(format!(" {}", rec.answer), false).unwrap().len() + 1;
        assert_eq!(row["prompt_tokens"], n_prompt);
        assert_eq!(row["target_tokens"], n_target);
        assert_eq!(row["total_tokens"], n_prompt + n_target);
    }
    // The same through --tokenizer FILE, as JSON.
    let run = trainer(&[
        "data",
        "--data",
        s(&f.data),
        "--tokenizer",
        s(&f.base.join("tokenizer.json")),
        "--max-length",
        "64",
        "--json",
    ]);
    run.ok();
    let v: Value = serde_json::from_str(run.stdout.trim()).expect("one JSON object");
    assert_eq!(
        v["examples"].as_u64().unwrap() + v["dropped"].as_u64().unwrap(),
        12
    );
    assert!(v["tokens_max"].as_u64().unwrap() <= 64);
    assert_eq!(v["answers_truncated"], 0);
}

/// Checks a memory estimate's parts add up to its total; returns the total.
fn memory_parts_sum_to_total(mem: &Value) -> u64 {
    let parts: u64 = [
        "base",
        "lora_state",
        "stored_activations",
        "layer_working_set",
        "loss_chunk",
    ]
    .iter()
    .map(|k| mem[k].as_u64().unwrap())
    .sum();
    assert_eq!(mem["total"].as_u64().unwrap(), parts);
    parts
}

#[test]
fn info_counts_parameters_from_config_alone() {
    let f = fixture();
    // Only config.json: info must not need weights or a tokenizer.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(f.base.join("config.json"), tmp.path().join("config.json")).unwrap();
    let run = trainer(&["info", "--model", s(tmp.path()), "--json"]);
    run.ok();
    let v: Value = serde_json::from_str(run.stdout.trim()).expect("one JSON object");
    let cfg = fixture_config();
    let session = session_with_adapter(&f.adapter);
    let mut linear = 0;
    for layer in &session.model.layers {
        for lin in layer.linears() {
            let [o, i] = lin.base.shape();
            linear += o * i;
        }
    }
    assert_eq!(v["total_parameters"], cfg.num_parameters());
    assert_eq!(v["quantized_linear_parameters"], linear);
    // r = 8 on query_key_value: lora_A [8, h] + lora_B [qkv_out, 8] per layer.
    let qkv = cfg.num_hidden_layers * 8 * (cfg.hidden_size + cfg.qkv_out_features());
    assert_eq!(v["trainable_parameters"], qkv);
    // The quantized storage equals what loading the model actually allocates.
    let stored: usize = session
        .model
        .layers
        .iter()
        .flat_map(|l| l.linears().map(|x| x.base.storage_bytes()))
        .sum();
    assert_eq!(v["linear_bytes"], stored);
    let bits = v["bits_per_linear_parameter"].as_f64().unwrap();
    assert!((4.12..4.14).contains(&bits), "{bits}");
    let mem = &v["memory"];
    memory_parts_sum_to_total(mem);

    // Falcon-7B's published config: PEFT reports 2,359,296 trainable parameters for r = 8 on
    // query_key_value and transformers 6,921,720,704 parameters.
    std::fs::write(
        tmp.path().join("config.json"),
        r#"{"alibi": false, "architectures": ["FalconForCausalLM"], "bias": false,
            "bos_token_id": 11, "eos_token_id": 11, "hidden_size": 4544,
            "model_type": "falcon", "multi_query": true, "new_decoder_architecture": false,
            "num_attention_heads": 71, "num_hidden_layers": 32, "parallel_attn": true,
            "torch_dtype": "bfloat16", "vocab_size": 65024}"#,
    )
    .unwrap();
    let run = trainer(&["info", "--model", s(tmp.path()), "--json"]);
    run.ok();
    let v: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(v["trainable_parameters"], 2_359_296);
    assert_eq!(v["total_parameters"], 6_921_720_704u64);
    // The GPU plan: 4-bit linears (with the GEMM's code tables) plus the bf16 embedding and
    // norms; the peak holds the resident and saved parts and stays under the 6 GiB the
    // Falcon-7B step is meant to fit in.
    let g = &v["gpu_memory"];
    let u = |k: &str| g[k].as_u64().unwrap();
    let unquantized = v["unquantized_parameters"].as_u64().unwrap();
    let tables = 32 * 4 * (256 + 16) * 4; // code map and 4-bit table per linear, f32
    let rope = 4 * 32; // inverse frequencies of head_dim 64
    assert_eq!(
        u("base_weights"),
        v["linear_bytes"].as_u64().unwrap() - 32 * 4 * 4 + tables + 2 * unquantized + rope
    );
    assert_eq!(u("adapters") + u("optimizer"), 20 * 2_359_296);
    let resident = ["base_weights", "adapters", "optimizer", "batch_inputs"];
    let floor: u64 = resident.iter().map(|k| u(k)).sum::<u64>() + u("saved_activations");
    assert_eq!(u("peak"), floor + u("working_set"));
    assert!(u("peak") < 6 << 30, "{}", u("peak"));
    let human = trainer(&["info", "--model", s(tmp.path())]);
    human.ok();
    assert!(human.stdout.contains("4.127 bits"), "{}", human.stdout);
    assert!(
        human.stdout.contains("device memory plan"),
        "{}",
        human.stdout
    );
    // Single-quantized statistics: the CUDA step says why it cannot train them.
    let run = trainer(&[
        "info",
        "--model",
        s(tmp.path()),
        "--double-quant",
        "false",
        "--json",
    ]);
    let v: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert!(v["gpu_memory"].is_null());
    assert!(v["gpu_unsupported"].as_str().unwrap().contains("double"));
}

#[test]
fn help_documents_every_flag() {
    for sub in ["ask", "generate", "eval", "data", "info"] {
        let run = trainer(&[sub, "-h"]);
        run.ok();
        let lines: Vec<&str> = run.stdout.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim_start();
            if !t.starts_with('-') {
                continue;
            }
            // "--flag <VALUE>  description", or the description on the next, deeper-indented
            // line (clap's layout when descriptions are long).
            // A bare "[default: ...]" is not a description.
            let inline = t
                .split_once("  ")
                .is_some_and(|(_, d)| !d.trim().is_empty() && !d.trim().starts_with('['));
            let indent = line.len() - t.len();
            let below = lines.get(i + 1).is_some_and(|n| {
                let nt = n.trim_start();
                !nt.is_empty()
                    && !nt.starts_with('-')
                    && !nt.starts_with('[')
                    && n.len() - nt.len() > indent
            });
            assert!(
                inline || below,
                "`trainer {sub}`: undocumented option line `{line}`"
            );
        }
    }
}

#[test]
fn bad_inputs_exit_1_with_a_message_naming_the_file() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let base = s(&f.base);

    // Missing model directory.
    let missing = tmp.path().join("no-such-model");
    for args in [
        vec!["ask", "--model", s(&missing), "--question", "q?"],
        vec!["generate", "--model", s(&missing), "--prompt", "x"],
        vec!["eval", "--model", s(&missing), "--data", s(&f.data)],
        vec!["info", "--model", s(&missing)],
        vec!["data", "--model", s(&missing), "--data", s(&f.data)],
        vec!["train", "--model", s(&missing), "--max-steps", "1"],
    ] {
        trainer(&args).fails_naming("no-such-model");
    }

    // config.json that is not JSON.
    let bad_cfg = tmp.path().join("bad-config");
    std::fs::create_dir(&bad_cfg).unwrap();
    std::fs::write(bad_cfg.join("config.json"), "{\"hidden_size\": ").unwrap();
    std::fs::copy(
        f.base.join("tokenizer.json"),
        bad_cfg.join("tokenizer.json"),
    )
    .unwrap();
    let cfg_path = bad_cfg.join("config.json");
    trainer(&["generate", "--model", s(&bad_cfg), "--prompt", "x"]).fails_naming(s(&cfg_path));
    trainer(&["info", "--model", s(&bad_cfg)]).fails_naming(s(&cfg_path));

    // An unsupported variant (ALiBi, falcon-rw).
    let alibi = tmp.path().join("alibi");
    std::fs::create_dir(&alibi).unwrap();
    for file in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(f.base.join(file), alibi.join(file)).unwrap();
    }
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(f.base.join("config.json")).unwrap())
            .unwrap();
    cfg["alibi"] = Value::Bool(true);
    std::fs::write(alibi.join("config.json"), cfg.to_string()).unwrap();
    let alibi_cfg = alibi.join("config.json");
    for sub in [
        vec!["info", "--model", s(&alibi)],
        vec!["ask", "--model", s(&alibi), "--question", "q?"],
    ] {
        let r = trainer(&sub);
        r.fails_naming(s(&alibi_cfg));
        assert!(r.stderr.contains("alibi"), "{}", r.stderr);
    }

    // Bad data files: broken JSON, and records of the wrong kind.
    let broken = tmp.path().join("broken.json");
    std::fs::write(&broken, "[{\"id\": \"a\", ").unwrap();
    let not_records = tmp.path().join("numbers.json");
    std::fs::write(&not_records, "[1, 2, 3]").unwrap();
    for data in [&broken, &not_records] {
        trainer(&["data", "--model", base, "--data", s(data)]).fails_naming(s(data));
        trainer(&["eval", "--model", base, "--data", s(data)]).fails_naming(s(data));
    }
    trainer(&["train", "--data", s(&broken), "--max-steps", "1"]).fails_naming(s(&broken));
    let missing_data = tmp.path().join("missing.json");
    trainer(&["data", "--model", base, "--data", s(&missing_data)]).fails_naming(s(&missing_data));

    // Adapters: a directory that does not exist, one without files, a broken config.
    let no_adapter = tmp.path().join("no-such-adapter");
    trainer(&[
        "ask",
        "--model",
        base,
        "--adapter",
        s(&no_adapter),
        "--question",
        "q?",
    ])
    .fails_naming(s(&no_adapter));
    trainer(&[
        "eval",
        "--model",
        base,
        "--adapter",
        s(&no_adapter),
        "--data",
        s(&f.data),
    ])
    .fails_naming(s(&no_adapter));
    let empty = tmp.path().join("empty-adapter");
    std::fs::create_dir(&empty).unwrap();
    trainer(&[
        "generate",
        "--model",
        base,
        "--adapter",
        s(&empty),
        "--prompt",
        "x",
    ])
    .fails_naming("adapter_config.json");
    let wrong = tmp.path().join("wrong-adapter");
    std::fs::create_dir(&wrong).unwrap();
    std::fs::copy(
        f.adapter.join("adapter_model.safetensors"),
        wrong.join("adapter_model.safetensors"),
    )
    .unwrap();
    std::fs::write(
        wrong.join("adapter_config.json"),
        r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["dense"]}"#,
    )
    .unwrap();
    trainer(&[
        "ask",
        "--model",
        base,
        "--adapter",
        s(&wrong),
        "--question",
        "q?",
    ])
    .fails_naming("wrong-adapter");

    // Output paths under a regular file.
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let under = file.join("out");
    trainer(&[
        "train",
        "--output-dir",
        s(&under),
        "--max-steps",
        "1",
        "--no-progress",
    ])
    .fails_naming(s(&under));
    let dump = file.join("dump.jsonl");
    trainer(&[
        "data",
        "--model",
        base,
        "--data",
        s(&f.data),
        "--dump",
        s(&dump),
    ])
    .fails_naming(s(&dump));
    let preds = file.join("p.jsonl");
    trainer(&[
        "eval",
        "--model",
        base,
        "--data",
        s(&f.data),
        "--predictions",
        s(&preds),
    ])
    .fails_naming(s(&preds));

    // A context file that is not a record.
    let ctx = tmp.path().join("ctx.json");
    std::fs::write(&ctx, "{\"pre_text\": 5}").unwrap();
    trainer(&[
        "ask",
        "--model",
        base,
        "--context-file",
        s(&ctx),
        "--question",
        "q?",
    ])
    .fails_naming(s(&ctx));
    let _ = SEED;
}
