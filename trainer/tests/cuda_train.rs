//! Training with the CUDA step, on the kernels-cu host emulator (`--device emulator`, which
//! executes the same kernels and host code as a GPU) and on CUDA device 0 when it opens: the run
//! must follow the CPU run's losses (within the bf16 tolerance of the device step), resume bit
//! for bit, and write an adapter that loads. Device-selection errors are clear.

mod common;

use common::{devices_under_test, fixture, s, trainer, trainer_in};
use std::path::Path;

fn adapter_bytes(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("adapter_model.safetensors"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// `(step, loss or eval_loss)` records of a run's metrics.jsonl.
fn losses(dir: &Path) -> Vec<(u64, String, f64)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let step = v["step"].as_u64()?;
            ["loss", "eval_loss"]
                .iter()
                .find_map(|k| v[*k].as_f64().map(|x| (step, k.to_string(), x)))
        })
        .collect()
}

#[test]
fn device_training_follows_the_cpu_and_resumes_bit_exactly() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let run = |out: &Path, extra: &[&str]| {
        let mut a: Vec<&str> = vec![
            "train",
            "--data",
            s(&f.data),
            "--val-fraction",
            "0.2",
            "--max-steps",
            "4",
            "--per-device-train-batch-size",
            "2",
            "--gradient-accumulation-steps",
            "2",
            "--max-length",
            "96",
            "--learning-rate",
            "2e-3",
            "--lora-dropout",
            "0.1",
            "--target-modules",
            "query_key_value,dense_4h_to_h",
            "--logging-steps",
            "1",
            "--eval-steps",
            "2",
            "--save-steps",
            "100",
            "--no-progress",
            "--output-dir",
            s(out),
        ];
        a.extend_from_slice(extra);
        trainer_in(tmp.path(), &a)
    };
    let cpu = tmp.path().join("cpu");
    run(&cpu, &["--device", "cpu"]).ok();
    for device in devices_under_test() {
        let emu = tmp.path().join(device);
        let r = run(&emu, &["--device", device]);
        r.ok();
        let says = if device == "emulator" {
            "training with the CUDA step on the host emulator"
        } else {
            "(bf16 activations)"
        };
        assert!(r.stdout.contains(says), "{device}: {}", r.stdout);

        // Same records, same steps; losses within the device step's bf16 tolerance (2e-2
        // relative: activations rounded to bf16, four optimizer updates apart at most).
        let (want, got) = (losses(&cpu), losses(&emu));
        assert_eq!(want.len(), got.len());
        assert!(want.len() >= 6, "{want:?}");
        for ((ws, wk, w), (gs, gk, g)) in want.iter().zip(&got) {
            assert_eq!((ws, wk), (gs, gk));
            assert!(
                (w - g).abs() <= 2e-2 * w.abs(),
                "step {ws} {wk}: {device} {g} vs CPU {w}"
            );
        }
        assert_ne!(adapter_bytes(&cpu), adapter_bytes(&emu));

        // Stop after 2 steps, resume: the same adapter as the uninterrupted run.
        let out = tmp.path().join(format!("{device}-resumed"));
        run(&out, &["--device", device, "--stop-after-steps", "2"]).ok();
        assert!(out.join("checkpoint-2").is_dir());
        run(&out, &["--device", device, "--resume"]).ok();
        assert!(
            adapter_bytes(&emu) == adapter_bytes(&out),
            "stopping and resuming on {device} changed the adapter"
        );

        // The adapter trained there loads and answers on the CPU.
        trainer(&[
            "ask",
            "--model",
            s(&f.base),
            "--adapter",
            s(&emu),
            "--question",
            "what was the change in revenue?",
            "--pre-text",
            "revenue rose from 10 to 12",
        ])
        .ok();
    }
}

#[test]
fn device_selection_errors_are_clear() {
    let f = fixture();
    let data = s(&f.data);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let base = ["train", "--data", data, "--max-steps", "1", "--no-progress"];
    let with = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(&["--output-dir", s(&out)]);
        a.extend_from_slice(extra);
        trainer(&a)
    };
    with(&["--device", "tpu"]).fails_naming("--device");
    with(&["--use-cpu", "--device", "emulator"]).fails_naming("--use-cpu");
    if kernels_cu::Device::cuda(7).is_err() {
        with(&["--device", "cuda:7"]).fails_naming("cuda:7");
    }
    // The CUDA step needs double-quantized 4-bit statistics.
    with(&["--device", "emulator", "--double-quant", "false"]).fails_naming("double");
}
