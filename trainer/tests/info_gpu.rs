//! `trainer info --gpu`: the performance model's PREDICTED step speed for a Falcon-7B-shaped
//! config (only config.json is read), and a clear error for an unknown GPU.

mod common;

use common::{s, trainer};

const FALCON_7B: &str = r#"{"model_type": "falcon", "hidden_size": 4544,
    "num_attention_heads": 71, "num_hidden_layers": 32, "multi_query": true,
    "new_decoder_architecture": false, "parallel_attn": true, "bias": false, "alibi": false,
    "vocab_size": 65024, "layer_norm_epsilon": 1e-5, "bos_token_id": 11, "eos_token_id": 11}"#;

fn number_after(text: &str, key: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(key))
        .unwrap_or_else(|| panic!("no `{key}` line in:\n{text}"));
    line.trim_start()[key.len()..]
        .split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no number after `{key}`: {line}"))
}

#[test]
fn info_gpu_prints_predicted_tokens_per_second_mfu_and_top_kernels() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), FALCON_7B).unwrap();
    let run = |gpu: &str, targets: &str| {
        let r = trainer(&[
            "info",
            "--model",
            s(dir.path()),
            "--gpu",
            gpu,
            "--target-modules",
            targets,
        ]);
        r.ok();
        r.stdout
    };
    let h200 = run("h200", "query_key_value");
    assert!(
        h200.contains("PREDICTED CUDA step on NVIDIA H200"),
        "{h200}"
    );
    let tps = number_after(&h200, "tokens/s");
    let mfu = number_after(&h200, "MFU");
    let step_ms = number_after(&h200, "step time");
    // tokens/s and MFU are two views of one step time: 1024 tokens, 42.5 TFLOP at 989.4.
    assert!(
        (tps - 1024.0 / (step_ms / 1e3)).abs() / tps < 1e-2,
        "{tps} vs {step_ms} ms"
    );
    let mfu_from_time = 100.0 * 42.53e12 / (step_ms / 1e3) / 989.4e12;
    assert!(
        (mfu - mfu_from_time).abs() < 0.2,
        "{mfu} vs {mfu_from_time}"
    );
    // Compute capability 9.0 runs the NF4 products on wgmma (sm_90a).
    assert!(h200.contains("nf4_gemm_fwd_wgmma_bf16"), "{h200}");
    // A slower GPU and more adapters both predict fewer tokens/s.
    assert!(number_after(&run("a100", "query_key_value"), "tokens/s") < tps);
    assert!(number_after(&run("h200", "all-linear"), "tokens/s") < tps);

    let r = trainer(&["info", "--model", s(dir.path()), "--gpu", "v100"]);
    assert_ne!(r.code, Some(0), "{}", r.stdout);
    assert!(
        r.stderr.contains("unknown --gpu `v100`") && r.stderr.contains("h200"),
        "{}",
        r.stderr
    );
}
