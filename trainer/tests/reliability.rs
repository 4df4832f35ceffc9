//! What a preempted, failed or misused run does, through the binary: signals save a
//! checkpoint and exit 128 + signal, one writer per output directory, flags checked against
//! their ranges and against the run being resumed, checkpoints verified before they are
//! trusted, and NaN weights or adapters refused with the tensor's name.

mod common;

use common::{fixture, s, trainer, trainer_in};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A run of the built-in tiny model that lasts long enough to be signalled.
const LONG_RUN: &[&str] = &[
    "train",
    "--max-steps",
    "100000",
    "--save-steps",
    "100000",
    "--logging-steps",
    "1",
    "--eval-steps",
    "100000",
    "--max-length",
    "96",
    "--per-device-train-batch-size",
    "2",
    "--gradient-accumulation-steps",
    "1",
    "--val-fraction",
    "0.05",
    "--no-progress",
];

fn wait_for(path: &Path, needle: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        if std::fs::read_to_string(path).is_ok_and(|t| t.contains(needle)) {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{} never contained {needle}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts a long run, waits until it has taken a step, sends `signals` (back to back), and
/// returns the exit code and stderr.
fn signalled_run(out: &Path, signals: &[i32]) -> (Option<i32>, String) {
    let mut args: Vec<&str> = LONG_RUN.to_vec();
    args.extend(["--output-dir", s(out)]);
    let child = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(&args)
        .current_dir(out.parent().unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start trainer");
    wait_for(
        &out.join("metrics.jsonl"),
        "grad_norm",
        Duration::from_secs(300),
    );
    for &sig in signals {
        // SAFETY: signalling our own child by pid.
        assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
    }
    let done = child.wait_with_output().expect("wait");
    (
        done.status.code(),
        String::from_utf8_lossy(&done.stderr).into_owned(),
    )
}

fn checkpoints(out: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("checkpoint-")
        })
        .collect();
    v.sort();
    v
}

fn assert_saved_and_resumable(out: &Path, stderr: &str) {
    let c = checkpoints(out);
    assert_eq!(c.len(), 1, "expected one checkpoint: {c:?}\n{stderr}");
    trainer::state::verify_checkpoint(&c[0]).expect("the checkpoint verifies");
    assert!(c[0].join("training_args.json").is_file());
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn sigterm_saves_a_checkpoint_and_exits_143() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let (code, stderr) = signalled_run(&out, &[libc::SIGTERM]);
    assert_eq!(code, Some(143), "{stderr}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    assert_saved_and_resumable(&out, &stderr);
}

#[test]
fn sighup_saves_a_checkpoint_and_exits_129() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let (code, stderr) = signalled_run(&out, &[libc::SIGHUP]);
    assert_eq!(code, Some(129), "{stderr}");
    assert_saved_and_resumable(&out, &stderr);
}

/// `timeout -s INT` and a terminal's Ctrl-C signal the process and its group: one request
/// arrives twice at once and must still save.
#[test]
fn a_doubled_sigint_saves_once_and_exits_130() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let (code, stderr) = signalled_run(&out, &[libc::SIGINT, libc::SIGINT]);
    assert_eq!(code, Some(130), "{stderr}");
    assert!(!stderr.contains("exiting without saving"), "{stderr}");
    assert_saved_and_resumable(&out, &stderr);
}

#[test]
fn a_second_writer_to_an_output_dir_is_refused_naming_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    let held = trainer::lock::lock_output_dir(&out).unwrap();
    short_run(&out, &[]).fails_naming(&format!("pid {}", std::process::id()));
    assert!(checkpoints(&out).is_empty());
    drop(held);
}

fn short_run(out: &Path, extra: &[&str]) -> common::Run {
    let mut args: Vec<&str> = vec![
        "train",
        "--max-steps",
        "4",
        "--save-steps",
        "1",
        "--save-total-limit",
        "3",
        "--max-length",
        "96",
        "--per-device-train-batch-size",
        "2",
        "--gradient-accumulation-steps",
        "1",
        "--eval-steps",
        "100",
        "--learning-rate",
        "1e-3",
        "--val-fraction",
        "0.05",
        "--no-progress",
        "--output-dir",
        s(out),
    ];
    args.extend(extra);
    trainer_in(out.parent().unwrap(), &args)
}

#[test]
fn out_of_range_and_negative_flags() {
    for (flag, value) in [
        ("--max-grad-norm", "-1"),
        ("--adam-beta1", "1"),
        ("--adam-epsilon", "0"),
        ("--warmup-ratio", "2"),
        ("--per-device-eval-batch-size", "0"),
        ("--num-train-epochs", "inf"),
        ("--learning-rate", "nan"),
    ] {
        trainer(&["train", flag, value]).fails_naming(flag);
    }
    // `--max-steps -1` (HF's "use the epochs") parses, from the command line and from TOML.
    trainer(&["train", "--max-steps", "-1", "--num-train-epochs", "0"])
        .fails_naming("--num-train-epochs > 0");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("run.toml");
    std::fs::write(&cfg, "max_steps = -1\nnum_train_epochs = 0\n").unwrap();
    trainer(&["train", "--config", s(&cfg)]).fails_naming("--num-train-epochs > 0");
}

#[test]
fn a_non_utf8_argument_is_an_error_not_a_panic() {
    use std::os::unix::ffi::OsStrExt;
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .arg("train")
        .arg("--output-dir")
        .arg(std::ffi::OsStr::from_bytes(b"out\xff"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not valid UTF-8"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn data_files_all_skipped_list_reasons_and_big_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"prompt\": \"a\"}\n{\"completion\": \"b\"}\nnot json\n",
    )
    .unwrap();
    let run = trainer(&["train", "--data", s(&bad), "--data-format", "jsonl"]);
    run.fails_naming("no usable records (3 skipped)");
    assert!(
        run.stderr.contains("record 0") && run.stderr.contains("record 2"),
        "{}",
        run.stderr
    );
    let f = fixture();
    trainer(&["train", "--data", s(&f.data), "--max-data-size", "100B"])
        .fails_naming("--max-data-size");
}

#[test]
fn a_corrupt_checkpoint_is_refused_and_the_older_valid_one_offered() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    short_run(&out, &["--stop-after-steps", "3"]).ok();
    let c3 = out.join("checkpoint-3");
    let adapter = c3.join("adapter_model.safetensors");
    let mut bytes = std::fs::read(&adapter).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x40;
    std::fs::write(&adapter, bytes).unwrap();
    let run = short_run(&out, &["--resume"]);
    run.fails_naming("adapter_model.safetensors");
    assert!(
        run.stderr
            .contains(&format!("--resume-from {}", s(&out.join("checkpoint-2")))),
        "{}",
        run.stderr
    );
    // The folder name must agree with the step inside.
    std::fs::rename(out.join("checkpoint-1"), out.join("checkpoint-7")).unwrap();
    short_run(&out, &["--resume-from", s(&out.join("checkpoint-7"))])
        .fails_naming("the folder name says 7");
    short_run(&out, &["--resume-from", s(&out.join("checkpoint-2"))]).ok();
    assert!(out.join("adapter_model.safetensors").is_file());
}

#[test]
fn resume_with_contradicting_flags_names_them_and_defaults_come_from_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    short_run(&out, &["--stop-after-steps", "2"]).ok();
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("checkpoint-2/training_args.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(saved["learning_rate"], 1e-3);
    let run = short_run(
        &out,
        &["--resume", "--learning-rate", "5e-4", "--lora-r", "4"],
    );
    run.fails_naming("contradict");
    assert!(
        run.stderr
            .contains("--learning-rate is 0.0005 here but 0.001 in the checkpoint"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("--lora-r is 4 here but 8"),
        "{}",
        run.stderr
    );
    // Only --resume: every planned flag comes from the checkpoint.
    let run = trainer_in(
        tmp.path(),
        &[
            "train",
            "--resume",
            "--no-progress",
            "--output-dir",
            s(&out),
        ],
    );
    run.ok();
    assert!(run.stdout.contains("resuming from"), "{}", run.stdout);
    assert!(out.join("checkpoint-4").is_dir());
}

#[test]
fn init_adapter_refuses_its_own_output_dir_and_contradicting_lora_flags() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("adapter");
    std::fs::create_dir_all(&copy).unwrap();
    for name in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(f.adapter.join(name), copy.join(name)).unwrap();
    }
    trainer(&[
        "train",
        "--init-adapter",
        s(&copy),
        "--output-dir",
        s(&copy),
    ])
    .fails_naming("overwrite its own input");
    let run = trainer(&[
        "train",
        "--init-adapter",
        s(&copy),
        "--output-dir",
        s(&tmp.path().join("out")),
        "--lora-r",
        "4",
    ]);
    run.fails_naming("contradict --init-adapter");
    assert!(
        run.stderr
            .contains("--lora-r is 4 here but r = 8 in the adapter"),
        "{}",
        run.stderr
    );
}

/// Writes NaN into the first element of tensor `name` of a safetensors file (f32 or bf16).
fn poison(file: &Path, name: &str) {
    let mut bytes = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let t = &header[name];
    let start = 8 + n + t["data_offsets"][0].as_u64().unwrap() as usize;
    match t["dtype"].as_str().unwrap() {
        "F32" => bytes[start..start + 4].copy_from_slice(&f32::NAN.to_le_bytes()),
        "BF16" => bytes[start..start + 2].copy_from_slice(&[0xc0, 0x7f]),
        d => panic!("unexpected dtype {d}"),
    }
    std::fs::write(file, bytes).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn single_weights_file(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

#[test]
fn nan_base_weights_and_nan_adapters_are_refused_naming_the_tensor() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("nan-base");
    copy_dir(&f.base, &base);
    let linear = "transformer.h.0.mlp.dense_4h_to_h.weight";
    poison(&single_weights_file(&base), linear);
    let out = tmp.path().join("out");
    trainer(&[
        "train",
        "--model",
        s(&base),
        "--data",
        s(&f.data),
        "--max-steps",
        "1",
        "--output-dir",
        s(&out),
    ])
    .fails_naming(linear);
    let q = tmp.path().join("q");
    trainer(&["quantize", "--model", s(&base), "--out", s(&q)]).fails_naming(linear);
    assert!(!q.join("config.json").exists());
    let merged = tmp.path().join("merged");
    trainer(&[
        "merge",
        "--model",
        s(&base),
        "--adapter",
        s(&f.adapter),
        "--out",
        s(&merged),
    ])
    .fails_naming(linear);

    let adapter = tmp.path().join("nan-adapter");
    copy_dir(&f.adapter, &adapter);
    let key = "base_model.model.transformer.h.0.self_attention.query_key_value.lora_A.weight";
    poison(&adapter.join("adapter_model.safetensors"), key);
    trainer(&[
        "generate",
        "--model",
        s(&f.base),
        "--adapter",
        s(&adapter),
        "--prompt",
        "the revenue",
    ])
    .fails_naming(key);
    trainer(&[
        "merge",
        "--model",
        s(&f.base),
        "--adapter",
        s(&adapter),
        "--out",
        s(&merged),
    ])
    .fails_naming(key);
}

#[test]
fn generate_beyond_the_models_positions_is_refused() {
    let f = fixture();
    trainer(&[
        "generate",
        "--model",
        s(&f.base),
        "--prompt",
        "the revenue",
        "--max-new-tokens",
        "1000000",
    ])
    .fails_naming("max_position_embeddings");
}
