//! Shared helpers of the CLI tests: running the built binary, and a base model, an adapter
//! and a FinQA data file built once per test binary in a temporary directory.

#![allow(dead_code)]

use data_finqa::{synthetic, tokenize_records, ExeAns, Record, TokenizeOptions, TruncationPolicy};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use trainer::args::TrainArgs;
use trainer::session::{builtin_session, save_base};

/// Output of one run of the binary.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> &Self {
        assert_eq!(
            self.code,
            Some(0),
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Exit code 1, one `error:` message on stderr naming `needle`, and no panic.
    pub fn fails_naming(&self, needle: &str) -> &Self {
        assert_eq!(
            self.code,
            Some(1),
            "expected exit code 1\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "panic:\n{}", self.stderr);
        let errors: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        assert_eq!(errors.len(), 1, "expected one error line:\n{}", self.stderr);
        assert!(
            errors[0].contains(needle),
            "the error does not name `{needle}`:\n{}",
            self.stderr
        );
        self
    }
}

fn finish(out: Output) -> Run {
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The trainer binary: `TRAINER_BIN` when set (the GPU check runs these tests on a machine
/// that has the bundled binary but not the build tree), else the one cargo built.
fn trainer_exe() -> std::ffi::OsString {
    std::env::var_os("TRAINER_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_trainer").into())
}

/// The `--device` values the device tests run: those of [`kernels_cu::testing::devices`]
/// (the emulator always, CUDA device 0 when it opens; with `KERNELS_CU_REQUIRE_GPU=1` a GPU
/// that does not open fails the test).
pub fn devices_under_test() -> Vec<&'static str> {
    kernels_cu::testing::devices()
        .iter()
        .map(|d| match d.info().kind {
            kernels_cu::BackendKind::Cuda => "cuda",
            kernels_cu::BackendKind::Emulator => "emulator",
            kernels_cu::BackendKind::DryRun => unreachable!("testing::devices() runs kernels"),
        })
        .collect()
}

/// Runs `trainer args...` in `cwd`.
pub fn trainer_in(cwd: &Path, args: &[&str]) -> Run {
    let out = Command::new(trainer_exe())
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("the trainer binary runs");
    finish(out)
}

/// Runs `trainer args...` in a fresh temporary working directory.
pub fn trainer(args: &[&str]) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    trainer_in(dir.path(), args)
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// A base model (the built-in tiny model saved as an HF checkpoint), an adapter trained on it
/// for a few steps, and a FinQA file (original layout) of synthetic records.
pub struct Fixture {
    pub root: PathBuf,
    pub base: PathBuf,
    pub adapter: PathBuf,
    pub data: PathBuf,
    pub records: Vec<Record>,
}

pub const SEED: u64 = 42;

/// FinQA original-release JSON for records.
pub fn finqa_json(records: &[Record]) -> String {
    let items: Vec<serde_json::Value> = records
        .iter()
        .map(|r| {
            let exe = match &r.exe_ans {
                Some(ExeAns::Number(v)) => serde_json::json!(v),
                Some(ExeAns::Text(t)) => serde_json::json!(t),
                None => serde_json::Value::Null,
            };
            serde_json::json!({
                "id": r.id,
                "pre_text": r.pre_text,
                "post_text": r.post_text,
                "table": r.table,
                "qa": { "question": r.question, "answer": r.answer, "exe_ans": exe },
            })
        })
        .collect();
    serde_json::to_string_pretty(&items).expect("json")
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let root = tempfile::tempdir().expect("temp dir").keep();
        let mut session =
            builtin_session(SEED, &model_falcon::BaseOptions::default()).expect("built-in model");
        let base = save_base(&session, &root.join("base")).expect("save base");
        let records = synthetic::generate(40, SEED + 1);
        let data = root.join("finqa.json");
        std::fs::write(&data, finqa_json(&records[..12])).expect("write data");
        let opts = TokenizeOptions {
            max_length: 128,
            eos_id: session.eos_id,
            policy: TruncationPolicy::KeepAnswer,
        };
        let set = tokenize_records(&session.tokenizer, &records[12..], &opts).expect("tokenize");
        let mut args = TrainArgs::defaults();
        args.output_dir = root.join("adapter");
        args.max_steps = 3;
        args.per_device_train_batch_size = 4;
        args.gradient_accumulation_steps = 1;
        args.learning_rate = 3e-3;
        args.save_steps = 100;
        args.no_progress = true;
        let summary = trainer::train::train(
            &mut session,
            &args,
            &set.examples,
            &[],
            Arc::new(AtomicBool::new(false)),
        )
        .expect("train the fixture adapter");
        Fixture {
            root,
            base,
            adapter: summary.adapter_dir,
            data,
            records: records[..12].to_vec(),
        }
    })
}
