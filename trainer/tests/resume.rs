//! Resume must reproduce an uninterrupted run bit for bit: across epoch boundaries (short
//! final accumulation windows, reshuffled epochs, length-grouped batches) and after Ctrl-C.

mod common;

use common::{fixture, s, trainer_in};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

fn adapter_bytes(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("adapter_model.safetensors"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

#[test]
fn resume_across_epochs_is_bit_exact() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    // 12 records, 2 held out: 10 train examples, 5 micro-batches of 2 per epoch, windows of
    // 2 + 2 + 1 micro-batches: 3 steps per epoch, so 8 steps cover parts of three epochs.
    let flags = |out: &Path| -> Vec<String> {
        [
            "train",
            "--data",
            s(&f.data),
            "--val-fraction",
            "0.2",
            "--max-steps",
            "8",
            "--per-device-train-batch-size",
            "2",
            "--gradient-accumulation-steps",
            "2",
            "--group-by-length",
            "--max-length",
            "128",
            "--learning-rate",
            "2e-3",
            "--lora-dropout",
            "0.2",
            "--target-modules",
            "query_key_value,dense_4h_to_h",
            "--save-steps",
            "100",
            "--eval-steps",
            "3",
            "--no-progress",
            "--output-dir",
            s(out),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let run = |out: &Path, extra: &[&str]| {
        let mut a = flags(out);
        a.extend(extra.iter().map(|x| x.to_string()));
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        trainer_in(tmp.path(), &refs)
    };
    let full = tmp.path().join("full");
    run(&full, &[]).ok();
    for stop in ["3", "4"] {
        let out = tmp.path().join(format!("stop{stop}"));
        run(&out, &["--stop-after-steps", stop]).ok();
        assert!(out.join(format!("checkpoint-{stop}")).is_dir());
        let r = run(&out, &["--resume"]);
        r.ok();
        assert!(
            adapter_bytes(&full) == adapter_bytes(&out),
            "stopping after {stop} steps and resuming changed the adapter"
        );
        // The logged losses of the resumed run equal the uninterrupted run's.
        let metrics = |d: &Path| {
            std::fs::read_to_string(d.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .map(|l| {
                    let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                    if let Some(o) = v.as_object_mut() {
                        o.remove("tokens_per_second");
                    }
                    v
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(metrics(&full), metrics(&out));
    }
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_resume_matches_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let flags = |out: &Path| -> Vec<String> {
        [
            "train",
            "--max-steps",
            "120",
            "--per-device-train-batch-size",
            "1",
            "--gradient-accumulation-steps",
            "1",
            "--max-length",
            "64",
            "--val-fraction",
            "0.01",
            "--eval-steps",
            "1000",
            "--save-steps",
            "1000",
            "--logging-steps",
            "5",
            "--learning-rate",
            "1e-3",
            "--no-progress",
            "--output-dir",
            s(out),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let interrupted = tmp.path().join("interrupted");
    let mut child = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(flags(&interrupted))
        .current_dir(tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn trainer");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    // Interrupt once the loop has logged its first steps (the handler is installed by then).
    for line in lines.by_ref() {
        let line = line.expect("utf-8");
        let started = line.trim_start().starts_with("step");
        seen.push(line);
        if started {
            break;
        }
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    seen.extend(lines.map_while(Result::ok));
    let exit = child.wait().expect("wait");
    let out = seen.join("\n");
    // Saved, and the status says the run was interrupted (128 + SIGINT).
    assert_eq!(exit.code(), Some(130), "exit {exit:?}\n{out}");
    assert!(out.contains("stopped early"), "{out}");
    let ckpts: Vec<u64> = std::fs::read_dir(&interrupted)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_prefix("checkpoint-")
                .and_then(|n| n.parse().ok())
        })
        .collect();
    assert_eq!(ckpts.len(), 1, "{ckpts:?}");
    assert!(ckpts[0] >= 5 && ckpts[0] < 120, "{ckpts:?}");
    assert!(interrupted
        .join(format!("checkpoint-{}/trainer_state.json", ckpts[0]))
        .is_file());

    let run = |out: &Path, extra: &[&str]| {
        let mut a = flags(out);
        a.extend(extra.iter().map(|x| x.to_string()));
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        trainer_in(tmp.path(), &refs)
    };
    run(&interrupted, &["--resume"]).ok();
    let full = tmp.path().join("full");
    run(&full, &[]).ok();
    assert!(
        adapter_bytes(&full) == adapter_bytes(&interrupted),
        "resuming after Ctrl-C at step {} changed the adapter",
        ckpts[0]
    );
}
