//! Data-parallel training under `mpirun` (Open MPI, CPU backend), built with `--features mpi`:
//! N ranks × per-device batch b give the adapter of 1 rank × batch N·b over the same global
//! windows; an N-rank run stopped and resumed with N ranks is bit-exact; another rank count is
//! refused; a rank killed with SIGKILL ends the job; the emulated CUDA step all-reduces through
//! host memory; the transport itself (`collective-check`).
//!
//! Tolerance of the N-rank vs 1-rank comparison (fp32, dropout off). Both runs add the same
//! per-token terms into every LoRA gradient element, in different groupings: one batched GEMM
//! on one rank; N partial GEMMs and a rank-order sum over N ranks. A sum of K fp32 terms in any
//! order is off by at most (K−1)·u·Σ|t| (u = 2⁻²⁴). Here K ≤ the window's tokens,
//! ga·N·b·T ≤ 2·4·128 = 1024, so K·u ≈ 6.1e-5; allowing a factor 16 for cancellation
//! (Σ|t| against |Σt|), the gradient, and its norm, may differ by δ = 16·K·u ≈ 1e-3 relative.
//! AdamW moves an element by lr·m̂/(√v̂+ε); a relative change δ of the gradients changes that by
//! at most 2δ relative, i.e. 2·δ·lr in absolute terms per step, so after S steps the adapters
//! may differ by 2·S·lr·δ. The check can fail: a 1-rank run with batch b (other windows) lands
//! far outside it, and a lost or doubled token count would move the gradient norm by a factor
//! N.

#![cfg(feature = "mpi")]

mod common;

use common::{fixture, s};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LR: f64 = 2e-3;
/// fp32 unit roundoff.
const U: f64 = 1.0 / (1u64 << 24) as f64;

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(&self) -> &Self {
        assert_eq!(
            self.code,
            Some(0),
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Waits for `child` at most `limit`; a run still going then is killed and fails the test
/// (the point of several checks is that nothing hangs).
fn wait_limited(mut child: Child, limit: Duration, what: &str) -> Out {
    let start = Instant::now();
    loop {
        if let Some(_status) = child.try_wait().expect("poll the child") {
            let out = child.wait_with_output().expect("collect output");
            return Out {
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            };
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "{what} still running after {limit:?} (a hang)\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `mpirun -np n` of `exe args...`, with extra environment passed to the ranks.
fn mpirun_cmd(n: usize, exe: &str, args: &[String], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new("mpirun");
    c.args([
        "--oversubscribe",
        "--allow-run-as-root",
        "-np",
        &n.to_string(),
    ]);
    for (k, v) in env {
        c.env(k, v).args(["-x", k]);
    }
    c.arg(exe).args(args);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn trainer_mpi(n: usize, args: &[String]) -> Out {
    let child = mpirun_cmd(n, env!("CARGO_BIN_EXE_trainer"), args, &[])
        .spawn()
        .expect("mpirun starts (install openmpi-bin)");
    wait_limited(child, Duration::from_secs(300), "mpirun trainer")
}

fn trainer_alone(args: &[String]) -> Out {
    let child = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the trainer runs");
    wait_limited(child, Duration::from_secs(300), "trainer")
}

/// The training flags shared by the runs of a comparison.
fn flags(out: &Path, batch: usize, extra: &[&str]) -> Vec<String> {
    let f = fixture();
    let mut v: Vec<String> = [
        "train",
        "--model",
        s(&f.base),
        "--data",
        s(&f.data),
        "--val-fraction",
        "0.2",
        "--per-device-train-batch-size",
        &batch.to_string(),
        "--gradient-accumulation-steps",
        "2",
        "--max-length",
        "128",
        "--learning-rate",
        &LR.to_string(),
        "--target-modules",
        "query_key_value,dense_4h_to_h",
        "--logging-steps",
        "1",
        "--eval-steps",
        "100",
        "--save-steps",
        "100",
        "--no-progress",
        "--output-dir",
        s(out),
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    v.extend(extra.iter().map(|x| x.to_string()));
    v
}

/// The adapter's tensors, by name.
fn adapter(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(dir.join("adapter_model.safetensors"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("adapter safetensors");
    let mut v: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, bytemuck::pod_collect_to_vec::<u8, f32>(t.data())))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn max_abs_diff(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mut m = 0f64;
    for ((na, va), (nb, vb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        assert_eq!(va.len(), vb.len(), "{na}");
        for (x, y) in va.iter().zip(vb) {
            m = m.max((f64::from(*x) - f64::from(*y)).abs());
        }
    }
    m
}

/// The training log lines of `metrics.jsonl`, without the wall-clock fields.
fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).expect("json line");
            if let Some(o) = v.as_object_mut() {
                // Timing fields: tokens/s, tokens/s per rank, eval/train runtime and rates.
                o.retain(|k, _| {
                    !k.ends_with("_per_second")
                        && !k.ends_with("_runtime")
                        && !k.starts_with("tokens_per_second")
                });
            }
            v
        })
        .collect()
}

fn grad_norms(dir: &Path) -> Vec<f64> {
    metrics(dir)
        .iter()
        .filter_map(|e| e.get("grad_norm").and_then(|g| g.as_f64()))
        .collect()
}

#[test]
fn n_ranks_give_the_adapter_of_one_rank_with_n_times_the_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let steps = 4usize;
    let common = ["--max-steps", "4", "--lora-dropout", "0"];
    // 10 train examples. 2 ranks × 2: global micro-batches 4, 4, 2 (the last one 1 + 1);
    // 3 ranks × 1: 3, 3, 3, 1 (ranks 1 and 2 without an example in the last). Four steps
    // cross an epoch boundary in both.
    for (ranks, b) in [(2usize, 2usize), (3, 1)] {
        let multi = tmp.path().join(format!("np{ranks}"));
        let single = tmp.path().join(format!("np{ranks}-reference"));
        let narrow = tmp.path().join(format!("np{ranks}-batch{b}"));
        let r = trainer_mpi(ranks, &flags(&multi, b, &common));
        r.ok();
        assert!(
            r.stdout.contains(&format!("{ranks} ranks")) && r.stdout.contains("global batch"),
            "the log names the ranks and the global batch:\n{}",
            r.stdout
        );
        trainer_alone(&flags(&single, ranks * b, &common)).ok();
        trainer_alone(&flags(&narrow, b, &common)).ok();

        let k = (2 * ranks * b * 128) as f64;
        let delta = 16.0 * k * U;
        let (gm, gs) = (grad_norms(&multi), grad_norms(&single));
        assert_eq!(gm.len(), steps);
        assert_eq!(gs.len(), steps);
        for (i, (x, y)) in gm.iter().zip(&gs).enumerate() {
            assert!(
                (x - y).abs() <= delta * y,
                "np {ranks}: step {} grad norm {x} vs {y} (1 rank × {}), beyond δ = {delta:.2e}",
                i + 1,
                ranks * b
            );
        }
        let bound = 2.0 * steps as f64 * LR * delta;
        let (am, a1) = (adapter(&multi), adapter(&single));
        let d = max_abs_diff(&am, &a1);
        assert!(
            d <= bound,
            "np {ranks}: adapters differ by {d:.3e}, bound {bound:.3e}"
        );
        // The check discriminates: other windows (1 rank × b) land far outside the bound.
        let other = max_abs_diff(&am, &adapter(&narrow));
        assert!(
            other > 10.0 * bound,
            "np {ranks}: 1 rank × {b} differs by only {other:.3e} (bound {bound:.3e})"
        );
    }
}

#[test]
fn resume_with_the_same_ranks_is_bit_exact_and_other_rank_counts_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // Dropout on: every rank's stream must come back from the checkpoint.
    let common = ["--max-steps", "5", "--lora-dropout", "0.2"];
    for ranks in [2usize, 3] {
        let full = tmp.path().join(format!("full{ranks}"));
        let cut = tmp.path().join(format!("cut{ranks}"));
        trainer_mpi(ranks, &flags(&full, 1, &common)).ok();
        let mut stop = common.to_vec();
        stop.extend(["--stop-after-steps", "2"]);
        trainer_mpi(ranks, &flags(&cut, 1, &stop)).ok();
        assert!(cut.join("checkpoint-2").is_dir());

        // Another number of ranks, and a single process: a clear refusal, no hang.
        let other = if ranks == 2 { 3 } else { 2 };
        let mut resume = common.to_vec();
        resume.push("--resume");
        let r = trainer_mpi(other, &flags(&cut, 1, &resume));
        assert_ne!(r.code, Some(0), "resumed with {other} ranks:\n{}", r.stdout);
        let want = format!("written by {ranks} rank(s)");
        assert!(
            r.stderr.contains(&want) && r.stderr.contains(&format!("mpirun -np {ranks}")),
            "the refusal names the ranks:\n{}",
            r.stderr
        );
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        let r = trainer_alone(&flags(&cut, 1, &resume));
        assert_eq!(r.code, Some(1));
        assert!(r.stderr.contains(&want), "{}", r.stderr);

        trainer_mpi(ranks, &flags(&cut, 1, &resume)).ok();
        assert!(
            std::fs::read(full.join("adapter_model.safetensors")).unwrap()
                == std::fs::read(cut.join("adapter_model.safetensors")).unwrap(),
            "{ranks} ranks: stopping after 2 steps and resuming changed the adapter"
        );
        assert_eq!(
            metrics(&full),
            metrics(&cut),
            "{ranks} ranks: the logs differ"
        );
    }
}

/// The pid of the process whose environment holds `marker` and is rank `rank` of its job.
fn rank_pid(marker: &str, rank: usize) -> Option<u32> {
    let want_rank = format!("OMPI_COMM_WORLD_RANK={rank}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let env = std::fs::read(e.path().join("environ")).ok()?;
        let vars: Vec<&[u8]> = env.split(|&b| b == 0).collect();
        let has = |s: &str| vars.contains(&s.as_bytes());
        (has(marker) && has(&want_rank)).then_some(pid)
    })
}

#[test]
fn a_killed_rank_ends_the_job_with_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("killed");
    let marker_value = format!("{}-{}", std::process::id(), out.display());
    let marker = format!("QLORA_DP_TEST={marker_value}");
    let args = flags(&out, 1, &["--max-steps", "100000", "--lora-dropout", "0"]);
    let child = mpirun_cmd(
        2,
        env!("CARGO_BIN_EXE_trainer"),
        &args,
        &[("QLORA_DP_TEST", &marker_value)],
    )
    .spawn()
    .expect("mpirun starts");
    // Wait until both ranks train (a logged step), then kill rank 1.
    let start = Instant::now();
    let pid = loop {
        let logged = std::fs::read_to_string(out.join("metrics.jsonl"))
            .map(|t| t.contains("grad_norm"))
            .unwrap_or(false);
        if let (true, Some(pid)) = (logged, rank_pid(&marker, 1)) {
            break pid;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the job did not start training"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let killed = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let r = wait_limited(child, Duration::from_secs(60), "the job after a SIGKILL");
    assert_ne!(r.code, Some(0));
    assert!(
        r.stderr.contains("rank 1") && r.stderr.contains("signal 9"),
        "the launcher names the killed rank:\n{}",
        r.stderr
    );
}

#[test]
fn the_emulated_cuda_step_all_reduces_through_host_memory() {
    let tmp = tempfile::tempdir().unwrap();
    // The emulator is slow: one step of one example per rank.
    let common = [
        "--device",
        "emulator",
        "--max-steps",
        "1",
        "--gradient-accumulation-steps",
        "1",
        "--max-length",
        "64",
        "--lora-dropout",
        "0",
        "--val-fraction",
        "0.1",
    ];
    let multi = tmp.path().join("np2");
    let single = tmp.path().join("np1");
    let r = trainer_mpi(2, &flags(&multi, 1, &common));
    r.ok();
    assert!(
        r.stdout.contains("emulator") && r.stdout.contains("host memory"),
        "{}",
        r.stdout
    );
    trainer_alone(&flags(&single, 2, &common)).ok();
    // One window of 2 examples of ≤ 64 tokens: K ≤ 128 terms per gradient element, δ as above.
    let delta = 16.0 * 128.0 * U;
    let (gm, gs) = (grad_norms(&multi), grad_norms(&single));
    assert_eq!(gm.len(), 1);
    assert!(
        (gm[0] - gs[0]).abs() <= delta * gs[0],
        "grad norm {} on 2 ranks vs {} on 1 (δ = {delta:.2e})",
        gm[0],
        gs[0]
    );
    let d = max_abs_diff(&adapter(&multi), &adapter(&single));
    assert!(d <= 2.0 * LR * delta, "adapters differ by {d:.3e}");
}

#[test]
fn the_transport_sums_in_rank_order_and_bootstraps_nccl() {
    for n in [2usize, 3] {
        let child = mpirun_cmd(n, env!("CARGO_BIN_EXE_collective-check"), &[], &[])
            .spawn()
            .expect("mpirun starts");
        let r = wait_limited(child, Duration::from_secs(120), "collective-check");
        r.ok();
        for line in [
            "ok: f32 all-reduce",
            "ok: u64 and f64 sums",
            "ok: per-rank states gathered",
            "ok: NCCL unique-id broadcast",
        ] {
            assert_eq!(
                r.stdout.matches(line).count(),
                n,
                "every rank of {n} reports `{line}`:\n{}",
                r.stdout
            );
        }
    }
}
