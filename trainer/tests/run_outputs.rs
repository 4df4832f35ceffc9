//! What a run leaves for people and tools, through the binary: TensorBoard event files read
//! back by a decoder written here from the TFRecord and protobuf specs, metrics.jsonl with
//! Hugging Face's fields, loss.png, training_args.json with digests in every checkpoint,
//! the model card, --resume auto and --overwrite-output-dir, ask/eval taking the run's
//! settings, truncation statistics and the consistency of messages.

mod common;

use common::{fixture, s, trainer, trainer_in, Run};
use data_finqa::{tokenize_records, TokenizeOptions, TruncationPolicy};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// A short run on the fixture's base and data (the data is also the eval set, so the train
/// set is every record, unsplit).
fn train_run(out: &Path, extra: &[&str]) -> Run {
    let f = fixture();
    let mut args: Vec<&str> = vec![
        "train",
        "--model",
        s(&f.base),
        "--data",
        s(&f.data),
        "--eval-data",
        s(&f.data),
        "--max-steps",
        "4",
        "--per-device-train-batch-size",
        "4",
        "--gradient-accumulation-steps",
        "1",
        "--logging-steps",
        "1",
        "--eval-steps",
        "2",
        "--save-steps",
        "2",
        "--learning-rate",
        "1e-3",
        "--warmup-steps",
        "2",
        "--max-length",
        "128",
        "--no-progress",
        "--output-dir",
        s(out),
    ];
    args.extend(extra);
    trainer_in(out.parent().expect("parent"), &args)
}

fn metrics_rows(out: &Path) -> Vec<serde_json::Map<String, Value>> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|l| match serde_json::from_str(l).expect("a JSON row") {
            Value::Object(m) => m,
            o => panic!("not an object: {o}"),
        })
        .collect()
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

// ---- an independent TFRecord / protobuf reader --------------------------------------------

/// CRC-32C bit by bit (no table), as the iSCSI spec defines it.
fn crc32c_bitwise(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn unmask(m: u32) -> u32 {
    m.wrapping_sub(0xa282_ead8).rotate_left(15)
}

fn tfrecords(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len_bytes = &bytes[at..at + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        let len_crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
        assert_eq!(
            unmask(len_crc),
            crc32c_bitwise(len_bytes),
            "length CRC at {at}"
        );
        let data = &bytes[at + 12..at + 12 + len];
        let data_crc = u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
        assert_eq!(unmask(data_crc), crc32c_bitwise(data), "data CRC at {at}");
        out.push(data);
        at += 16 + len;
    }
    assert_eq!(at, bytes.len(), "trailing bytes");
    out
}

#[derive(Debug)]
enum Field<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Bytes(&'a [u8]),
    Fixed32([u8; 4]),
}

fn read_varint(buf: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let b = buf[*at];
        *at += 1;
        v |= ((b & 0x7f) as u64) << shift;
        if b & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

fn proto_fields(buf: &[u8]) -> Vec<(u64, Field<'_>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let key = read_varint(buf, &mut at);
        let field = match key & 7 {
            0 => Field::Varint(read_varint(buf, &mut at)),
            1 => {
                at += 8;
                Field::Fixed64(buf[at - 8..at].try_into().unwrap())
            }
            2 => {
                let n = read_varint(buf, &mut at) as usize;
                at += n;
                Field::Bytes(&buf[at - n..at])
            }
            5 => {
                at += 4;
                Field::Fixed32(buf[at - 4..at].try_into().unwrap())
            }
            w => panic!("unexpected wire type {w}"),
        };
        out.push((key >> 3, field));
    }
    out
}

/// One decoded `Event`.
#[derive(Debug, Default)]
struct Event {
    wall_time: f64,
    step: i64,
    file_version: Option<String>,
    values: Vec<(String, f32)>,
}

fn decode_event(data: &[u8]) -> Event {
    let mut e = Event::default();
    for (n, f) in proto_fields(data) {
        match (n, f) {
            (1, Field::Fixed64(b)) => e.wall_time = f64::from_le_bytes(b),
            (2, Field::Varint(v)) => e.step = v as i64,
            (3, Field::Bytes(b)) => e.file_version = Some(String::from_utf8(b.to_vec()).unwrap()),
            (5, Field::Bytes(summary)) => {
                for (n, f) in proto_fields(summary) {
                    let (1, Field::Bytes(value)) = (n, f) else {
                        panic!("Summary field {n}");
                    };
                    let mut tag = String::new();
                    let mut simple = None;
                    for (n, f) in proto_fields(value) {
                        match (n, f) {
                            (1, Field::Bytes(t)) => tag = String::from_utf8(t.to_vec()).unwrap(),
                            (2, Field::Fixed32(b)) => simple = Some(f32::from_le_bytes(b)),
                            (n, f) => panic!("Summary.Value field {n}: {f:?}"),
                        }
                    }
                    e.values.push((tag, simple.expect("simple_value")));
                }
            }
            (n, f) => panic!("Event field {n}: {f:?}"),
        }
    }
    e
}

fn hf_tag(key: &str) -> String {
    match key.strip_prefix("eval_") {
        Some(rest) => format!("eval/{rest}"),
        None => format!("train/{key}"),
    }
}

#[test]
fn tensorboard_events_metrics_jsonl_and_loss_png_agree_with_hugging_face_conventions() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tb");
    let run = train_run(&out, &["--report-to", "tensorboard"]);
    run.ok();

    // metrics.jsonl: HF's names and fields.
    let rows = metrics_rows(&out);
    let evals: Vec<_> = rows
        .iter()
        .filter(|r| r.contains_key("eval_loss"))
        .collect();
    assert_eq!(evals.len(), 3, "evaluations at steps 0, 2, 4");
    for r in &evals {
        for k in [
            "eval_runtime",
            "eval_samples_per_second",
            "eval_steps_per_second",
        ] {
            assert!(r[k].as_f64().unwrap() > 0.0, "{k} in {r:?}");
        }
    }
    let last = rows.last().unwrap();
    for k in [
        "train_runtime",
        "train_samples_per_second",
        "train_steps_per_second",
        "train_loss",
    ] {
        assert!(
            last[k].as_f64().unwrap() > 0.0,
            "{k} in the final row {last:?}"
        );
    }
    // 4 steps of 4 examples in train_runtime seconds.
    let sps = last["train_samples_per_second"].as_f64().unwrap();
    let secs = last["train_runtime"].as_f64().unwrap();
    assert!((sps * secs - 16.0).abs() < 0.05, "{sps} * {secs}");
    // The learning rate as HF logs it after step k: the scheduler's rate for step k + 1,
    // linear warmup over 2 steps to 1e-3 then linear decay to 0 at step 4.
    let lrs: Vec<(u64, f64)> = rows
        .iter()
        .filter_map(|r| Some((r["step"].as_u64()?, r.get("learning_rate")?.as_f64()?)))
        .collect();
    let want = [(1, 5e-4), (2, 1e-3), (3, 5e-4), (4, 0.0)];
    assert_eq!(lrs.len(), want.len(), "{lrs:?}");
    for ((s, lr), (ws, wlr)) in lrs.iter().zip(want) {
        assert_eq!(*s, ws);
        assert!((lr - wlr).abs() < 1e-12, "step {s}: lr {lr}, HF logs {wlr}");
    }

    // The event file, read back with the reader above.
    let runs: Vec<_> = std::fs::read_dir(out.join("runs"))
        .expect("runs/")
        .flatten()
        .collect();
    assert_eq!(runs.len(), 1);
    let dir_name = runs[0].file_name().to_string_lossy().to_string();
    // HF's default logging dir: <Mon><DD>_<HH>-<MM>-<SS>_<hostname>.
    assert!(
        dir_name.len() > 16 && dir_name.as_bytes()[5] == b'_',
        "{dir_name}"
    );
    let files: Vec<_> = std::fs::read_dir(runs[0].path())
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(files.len(), 1);
    let name = files[0].file_name().to_string_lossy().to_string();
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    let bytes = std::fs::read(files[0].path()).unwrap();
    let events: Vec<Event> = tfrecords(&bytes).into_iter().map(decode_event).collect();
    assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
    assert!(events[0].wall_time > 1.6e9, "{}", events[0].wall_time);
    assert_eq!(events.len(), rows.len() + 1, "one event per metrics row");
    for (row, ev) in rows.iter().zip(&events[1..]) {
        assert_eq!(ev.step, row["step"].as_i64().unwrap());
        let got: BTreeMap<&str, f32> = ev.values.iter().map(|(t, v)| (t.as_str(), *v)).collect();
        for (k, v) in row.iter().filter(|(k, _)| k.as_str() != "step") {
            let want = v.as_f64().unwrap() as f32;
            assert_eq!(
                got.get(hf_tag(k).as_str()),
                Some(&want),
                "{k} at step {}",
                ev.step
            );
        }
        assert_eq!(got.len(), row.len() - 1, "{got:?} vs {row:?}");
    }
    for tag in [
        "train/loss",
        "train/learning_rate",
        "train/grad_norm",
        "train/tokens_per_second",
        "eval/loss",
    ] {
        assert!(
            events
                .iter()
                .any(|e| e.values.iter().any(|(t, _)| t == tag)),
            "no {tag}"
        );
    }

    // loss.png: a PNG of the documented size (title, loss panel, learning-rate panel).
    let png = std::fs::read(out.join("loss.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((w, h), (1000, 690));
}

fn sha256sum(p: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(p)
        .output()
        .expect("sha256sum runs");
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

#[test]
fn training_args_record_digests_in_every_checkpoint_and_the_model_card_describes_the_run() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    // A base whose config names the Hub model it came from.
    let base = tmp.path().join("base");
    std::fs::create_dir(&base).unwrap();
    for e in std::fs::read_dir(&f.base).unwrap().flatten() {
        std::fs::copy(e.path(), base.join(e.file_name())).unwrap();
    }
    let mut cfg = read_json(&base.join("config.json"));
    cfg["_name_or_path"] = Value::from("tiiuae/falcon-7b-instruct");
    std::fs::write(base.join("config.json"), cfg.to_string()).unwrap();

    let out = tmp.path().join("run");
    train_run(&out, &["--model", s(&base), "--save-total-limit", "0"]).ok();
    let args = read_json(&out.join("training_args.json"));
    assert_eq!(args["data_sha256"], Value::from(sha256sum(&f.data)));
    assert_eq!(args["eval_data_sha256"], Value::from(sha256sum(&f.data)));
    assert_eq!(
        args["tokenizer_sha256"],
        Value::from(sha256sum(&base.join("tokenizer.json")))
    );
    assert_eq!(
        args["base_config_sha256"],
        Value::from(sha256sum(&base.join("config.json")))
    );
    assert_eq!(
        args["versions"]["trainer"],
        Value::from(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(args["learning_rate"], Value::from(1e-3));
    let cmd = args["command"].as_str().unwrap();
    assert!(
        cmd.starts_with("trainer train ") && cmd.contains("--save-total-limit 0"),
        "{cmd}"
    );
    for step in [2, 4] {
        let c = out.join(format!("checkpoint-{step}/training_args.json"));
        assert_eq!(read_json(&c), args, "{}", c.display());
    }

    // PEFT records the base by its config's _name_or_path.
    let adapter = read_json(&out.join("adapter_config.json"));
    assert_eq!(
        adapter["base_model_name_or_path"],
        "tiiuae/falcon-7b-instruct"
    );

    let card = std::fs::read_to_string(out.join("README.md")).expect("model card");
    assert!(
        card.starts_with("---\nbase_model: \"tiiuae/falcon-7b-instruct\"\nlibrary_name: peft\n"),
        "{card}"
    );
    assert!(card.contains(&sha256sum(&f.data)), "{card}");
    assert!(card.contains("| learning_rate | 0.001 |"), "{card}");
    assert!(card.contains(cmd), "the command:\n{card}");
    // One results row per evaluation, with the logged loss.
    let rows = metrics_rows(&out);
    for r in rows.iter().filter(|r| r.contains_key("eval_loss")) {
        let l = r["eval_loss"].as_f64().unwrap();
        let line = format!("| {} |", r["step"]);
        assert!(
            card.lines().any(|c| c.starts_with(&line)
                && c.contains(&format!("{l:.4}").trim_end_matches('0').to_string())),
            "no row for step {} (eval_loss {l}):\n{card}",
            r["step"]
        );
    }
}

#[test]
fn a_directory_of_another_run_needs_resume_or_overwrite_output_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    // --resume auto with nothing to resume: a new run.
    let first = train_run(&out, &["--resume", "auto", "--stop-after-steps", "2"]);
    first.ok();
    assert!(
        first.stdout.contains("--resume auto: no checkpoint"),
        "{}",
        first.stdout
    );
    assert!(out.join("checkpoint-2").is_dir());

    // A new run into it is refused, naming both ways out.
    let refused = train_run(&out, &[]);
    refused.fails_naming("--overwrite-output-dir");
    assert!(refused.stderr.contains("checkpoint-2") && refused.stderr.contains("--resume"));

    // --resume auto continues it.
    let resumed = train_run(&out, &["--resume", "auto"]);
    resumed.ok();
    assert!(
        resumed.stdout.contains("resuming from"),
        "{}",
        resumed.stdout
    );
    assert!(out.join("checkpoint-4").is_dir() && out.join("adapter_model.safetensors").is_file());

    // --overwrite-output-dir starts over: the old checkpoints go.
    let over = train_run(
        &out,
        &[
            "--overwrite-output-dir",
            "--stop-after-steps",
            "1",
            "--save-steps",
            "100",
        ],
    );
    over.ok();
    assert!(!out.join("checkpoint-2").exists() && !out.join("checkpoint-4").exists());
    assert!(out.join("checkpoint-1").is_dir());
    assert!(
        !out.join("adapter_model.safetensors").exists(),
        "the old run's adapter is gone"
    );
}

#[test]
fn ask_and_eval_take_the_runs_max_length_and_truncation_unless_given() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    train_run(
        &out,
        &[
            "--max-length",
            "80",
            "--truncation",
            "evidence",
            "--max-steps",
            "2",
        ],
    )
    .ok();
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--model",
            s(&f.base),
            "--adapter",
            s(&out),
            "--data",
            s(&f.data),
            "--generate",
            "false",
            "--json",
        ];
        args.extend(extra);
        let r = trainer(&args);
        r.ok();
        let v: Value = serde_json::from_str(r.stdout.trim()).expect("one JSON object");
        (v["eval_loss"].as_f64().unwrap(), r.stderr)
    };
    let (adopted, note) = eval(&[]);
    assert!(
        note.contains("--max-length 80 as the adapter's run trained"),
        "{note}"
    );
    assert!(
        note.contains("--truncation evidence as the adapter's run trained"),
        "{note}"
    );
    let (explicit, quiet) = eval(&["--max-length", "80", "--truncation", "evidence"]);
    assert!(!quiet.contains("as the adapter's run trained"), "{quiet}");
    assert_eq!(adopted, explicit);
    let (other, _) = eval(&["--max-length", "512"]);
    assert_ne!(
        adopted, other,
        "--max-length given on the command line wins"
    );

    let ask = |extra: &[&str]| {
        let mut args = vec![
            "ask",
            "--model",
            s(&f.base),
            "--adapter",
            s(&out),
            "--question",
            "what was the change in revenue?",
            "--pre-text",
            LONG_CONTEXT.as_str(),
        ];
        args.extend(extra);
        let r = trainer(&args);
        r.ok();
        (r.stdout, r.stderr)
    };
    let (a1, n1) = ask(&[]);
    assert!(
        n1.contains("--max-length 80 as the adapter's run trained"),
        "{n1}"
    );
    let (a2, _) = ask(&["--max-length", "80"]);
    assert_eq!(a1, a2);
}

static LONG_CONTEXT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    "revenue grew from 1200 in 2008 to 1350 in 2009 while costs were flat . ".repeat(12)
});

#[test]
fn train_reports_truncation_and_data_prints_a_formatted_example() {
    let f = fixture();
    let session = trainer::session::load_session(&f.base, &model_falcon::BaseOptions::default())
        .expect("fixture base");
    let opts = |max_length| TokenizeOptions {
        max_length,
        eos_id: session.eos_id,
        policy: TruncationPolicy::KeepAnswer,
    };
    let full = tokenize_records(&session.tokenizer, &f.records, &opts(100_000)).unwrap();
    let mut lens: Vec<usize> = full.examples.iter().map(|e| e.input_ids.len()).collect();
    lens.sort_unstable();
    let limit = lens[lens.len() / 2];
    let cut = tokenize_records(&session.tokenizer, &f.records, &opts(limit)).unwrap();
    assert!(cut.dropped.is_empty());
    let removed: Vec<usize> = cut
        .examples
        .iter()
        .zip(&full.examples)
        .map(|(c, u)| u.input_ids.len() - c.input_ids.len())
        .filter(|&d| d > 0)
        .collect();
    assert!(!removed.is_empty());
    let mean = removed.iter().sum::<usize>() as f64 / removed.len() as f64;

    let tmp = tempfile::tempdir().unwrap();
    let limit_s = limit.to_string();
    let run = train_run(
        &tmp.path().join("run"),
        &["--max-length", &limit_s, "--max-steps", "1"],
    );
    run.ok();
    let want = format!(
        "truncation: {} of {} training examples",
        removed.len(),
        f.records.len()
    );
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("truncation:"))
        .unwrap_or_else(|| panic!("no truncation line:\n{}", run.stdout));
    assert!(line.starts_with(&want), "{line}\nwant {want}");
    assert!(
        line.contains(&format!("by {mean:.1} tokens on average")),
        "{line}"
    );

    let data = trainer(&[
        "data",
        "--model",
        s(&f.base),
        "--data",
        s(&f.data),
        "--max-length",
        &limit_s,
    ]);
    data.ok();
    let first = &cut.examples[0];
    assert!(
        data.stdout.contains(&format!(
            "----- prompt -----\n{}\n----- target -----\n{}<EOS>\n",
            first.prompt_text, first.target_text
        )),
        "{}",
        data.stdout
    );
    assert!(data.stdout.contains(&format!(
        "first example (`{}`): {} tokens",
        first.id,
        first.input_ids.len()
    )));
}

#[test]
fn messages_are_consistent_across_subcommands() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    // A bad record: one warning line, prefixed once.
    let mut records: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&f.data).unwrap()).unwrap();
    records.push(serde_json::json!({"id": "broken", "qa": 5}));
    let data = tmp.path().join("with_bad.json");
    std::fs::write(&data, Value::from(records).to_string()).unwrap();
    let out = tmp.path().join("run");
    let run = train_run(&out, &["--data", s(&data), "--max-steps", "1"]);
    run.ok();
    assert!(
        run.stderr.contains("warning: skipped 1 bad record"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("warning: warning"), "{}", run.stderr);
    // With the progress bar on, a log file (not a terminal) gets lines, never a redrawn bar.
    let bar = train_run(
        &tmp.path().join("bar"),
        &["--no-progress", "false", "--max-steps", "2"],
    );
    bar.ok();
    assert!(
        !bar.stdout.contains('\r') && !bar.stderr.contains('\r'),
        "{:?}",
        bar.stderr
    );
    // Two train log lines (logging every step), printed as lines.
    assert!(
        bar.stdout.lines().filter(|l| l.contains("  loss ")).count() >= 2,
        "{}",
        bar.stdout
    );

    // The same parameter count in train and info, said how it is counted.
    let counts = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("trainable params:"))
            .unwrap_or_else(|| panic!("no count in:\n{text}"))
            .to_string()
    };
    let info = trainer(&[
        "info",
        "--model",
        s(&f.base),
        "--lora-r",
        "8",
        "--target-modules",
        "query_key_value",
    ]);
    info.ok();
    assert_eq!(counts(&run.stdout), counts(&info.stdout));
    for text in [&run.stdout, &info.stdout] {
        assert_eq!(
            text.matches("print_trainable_parameters").count(),
            1,
            "{text}"
        );
    }

    // eval's progress counter is not redrawn with carriage returns into a log file, and
    // --output-dir chooses where predictions go.
    let preds = tmp.path().join("eval-out");
    let ev = trainer(&[
        "eval",
        "--model",
        s(&f.base),
        "--adapter",
        s(&out),
        "--data",
        s(&f.data),
        "--limit",
        "2",
        "--max-new-tokens",
        "3",
        "--output-dir",
        s(&preds),
    ]);
    ev.ok();
    assert!(
        !ev.stderr.contains('\r') && !ev.stdout.contains('\r'),
        "{:?}",
        ev.stderr
    );
    assert!(ev.stderr.contains("2/2 answers"), "{}", ev.stderr);
    assert!(preds.join("predictions.jsonl").is_file());

    // merge writes with --output-dir (and still takes --out).
    let merged = tmp.path().join("merged");
    trainer(&[
        "merge",
        "--model",
        s(&f.base),
        "--adapter",
        s(&out),
        "--output-dir",
        s(&merged),
    ])
    .ok();
    assert!(merged.join("config.json").is_file());
}
