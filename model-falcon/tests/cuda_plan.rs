//! The launch plan of a training step (`model_falcon::cuda::plan`): equal, launch for launch,
//! to the trace of a real step on the emulator; and at Falcon-7B/40B/180B sizes, every launch
//! within every target GPU's limits (grid, block, shared memory, 32-bit indices).

use engine::optim::AdamWConfig;
use engine::rng::{self, RngState};
use engine::Tensor;
use kernels_cu::perf::{validate, DryRun, LaunchRecord, Recording, GPUS};
use model_falcon::cuda::plan::{self, OptimizerShape, StepShape};
use model_falcon::peft::{LoraConfig, TargetModules};
use model_falcon::{attach_lora, random_model, BaseOptions, CudaFalcon, FalconConfig};

fn tiny_config(grouped: bool) -> FalconConfig {
    let text = if grouped {
        r#"{"model_type": "falcon", "hidden_size": 256, "num_attention_heads": 4,
        "num_kv_heads": 2, "num_hidden_layers": 2, "new_decoder_architecture": true,
        "parallel_attn": true, "bias": false, "alibi": false, "vocab_size": 152,
        "layer_norm_epsilon": 1e-5, "bos_token_id": 1, "eos_token_id": 2}"#
    } else {
        r#"{"model_type": "falcon", "hidden_size": 128, "num_attention_heads": 2,
        "num_hidden_layers": 2, "multi_query": true, "new_decoder_architecture": false,
        "parallel_attn": true, "bias": false, "alibi": false, "vocab_size": 152,
        "layer_norm_epsilon": 1e-5, "bos_token_id": 1, "eos_token_id": 2}"#
    };
    FalconConfig::from_json_str(text, "config.json").expect("valid tiny config")
}

/// Sets what is weight data rather than launch shape to 0: the NF4 GEMMs' double-quantization
/// offset (argument 7), which the plan's unset weights do not have.
fn without_weight_data(mut t: Vec<LaunchRecord>) -> Vec<LaunchRecord> {
    for r in &mut t {
        if r.kernel.name.starts_with("nf4_gemm_") {
            // The weight's absmax offset: the first scalar argument, after the pointers.
            if let Some(a) = r
                .args
                .iter_mut()
                .find(|a| !matches!(a, kernels_cu::ArgValue::Ptr { .. }))
            {
                *a = kernels_cu::ArgValue::F32(0.0);
            }
        }
    }
    t
}

/// First differing launch of two traces, for the failure message.
fn first_difference(a: &[LaunchRecord], b: &[LaunchRecord]) -> String {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x != y {
            return format!("launch {i}:\n  real {x}\n  plan {y}");
        }
    }
    format!("lengths {} (real) and {} (plan)", a.len(), b.len())
}

fn check_plan_equals_real_step(grouped: bool, targets: &str, rank: usize, recompute: bool) {
    let cfg = tiny_config(grouped);
    let mut m = random_model(cfg.clone(), 7, &BaseOptions::default()).unwrap();
    let lora = LoraConfig::new(
        rank,
        2.0 * rank as f64,
        0.1,
        TargetModules::from_flag(targets),
    );
    attach_lora(&mut m, &lora, 7).unwrap();
    m.recompute = recompute;
    let (b, t) = (2, 40);
    let ids: Vec<u32> = (0..b * t).map(|i| 3 + (i as u32 * 37) % 140).collect();
    let mut mask = vec![1u8; b * t];
    mask[t..t + 5].fill(0);
    let labels: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
    let count = 70.0;
    let opt = OptimizerShape {
        lr: 1e-3,
        config: AdamWConfig::default(),
        max_grad_norm: 1.0,
    };

    let (kdev, trace) = Recording::emulator();
    let mut c = CudaFalcon::new(&m, kdev).unwrap();
    trace.take(); // the upload's launches are not part of a step
    rng::set_state(RngState::default());
    let ids_t = Tensor::from_vec(ids, [b, t]).unwrap();
    let mask_t = Tensor::from_vec(mask, [b, t]).unwrap();
    let loss = c
        .forward_backward(&ids_t, Some(&mask_t), &labels, count)
        .unwrap();
    assert!(loss.is_finite() && loss > 0.0, "loss {loss}");
    c.optimizer_step(opt.lr, &opt.config, opt.max_grad_norm)
        .unwrap();
    let real = without_weight_data(trace.take());

    let shape = StepShape {
        lora_r: rank,
        lora_alpha: 2.0 * rank as f64,
        lora_dropout: 0.1,
        targets: TargetModules::from_flag(targets),
        recompute,
        count,
        optimizer: Some(opt),
        ..StepShape::new(b, t)
    };
    let (pdev, ptrace) = DryRun::device("test", (8, 0), 101_376);
    plan::record_step(&pdev, &cfg, &shape).unwrap();
    let planned = without_weight_data(ptrace.take());
    assert!(
        real.len() > 50,
        "a step makes many launches: {}",
        real.len()
    );
    assert!(
        real == planned,
        "grouped {grouped}, targets {targets}, recompute {recompute}: the plan differs from \
         the real step: {}",
        first_difference(&real, &planned)
    );
}

#[test]
fn plan_equals_the_real_step_multi_query_qkv_only() {
    check_plan_equals_real_step(false, "query_key_value", 8, true);
}

#[test]
fn plan_equals_the_real_step_grouped_all_linears_no_recompute() {
    check_plan_equals_real_step(true, "all-linear", 40, false);
}

/// Issue-sized shapes: every launch of the step, on every target, within the limits.
#[test]
fn falcon_7b_40b_180b_launches_are_valid_on_every_target() {
    let mut checked = 0;
    for model in ["falcon-7b", "falcon-40b", "falcon-180b"] {
        let cfg = plan::falcon_config(model).unwrap();
        for (batch, seq) in [(1, 512), (2, 512), (1, 4096), (8, 512), (8, 4096)] {
            for targets in ["query_key_value", "all-linear"] {
                let shape = StepShape {
                    targets: TargetModules::from_flag(targets),
                    ..StepShape::new(batch, seq)
                };
                // Each target's own plan: the launchers choose by compute capability (the
                // wgmma NF4 GEMM on 9.0 only) and by SM count (split-K).
                for gpu in GPUS {
                    let p = plan::dry_run(&cfg, &shape, gpu).unwrap_or_else(|e| {
                        panic!("{model} {batch}x{seq} {targets} on {}: {e}", gpu.key)
                    });
                    let bad = validate::check_all(std::slice::from_ref(gpu), &p.launches);
                    assert!(
                        bad.is_empty(),
                        "{model} {batch}x{seq} {targets}: {} violations, first: {}",
                        bad.len(),
                        bad.iter()
                            .take(5)
                            .map(|x| x.to_string())
                            .collect::<Vec<_>>()
                            .join("; ")
                    );
                    checked += p.launches.len();
                }
            }
        }
    }
    eprintln!("{checked} launches checked on {} targets", GPUS.len());
    assert!(checked > 10_000);
}

#[test]
fn model_flops_of_falcon_7b_at_2x512_are_42_5_tflop() {
    let cfg = plan::falcon_config("falcon-7b").unwrap();
    let f = plan::model_flops(&cfg, 1024);
    // 6 · (32 · (4672·4544 + 4544² + 2 · 18176·4544) + 65024·4544) · 1024
    let per_layer = 4672.0 * 4544.0 + 4544.0 * 4544.0 + 2.0 * 18176.0 * 4544.0;
    let want = 6.0 * (32.0 * per_layer + 65024.0 * 4544.0) * 1024.0;
    assert_eq!(f, want);
    assert!((f / 1e12 - 42.5).abs() < 0.1, "{f}");
}

/// The planned step's NF4 GEMM work: three passes (forward, recomputed forward, input
/// gradient) of 2 FLOPs per weight per token over query_key_value and dense_h_to_4h, two over
/// dense and dense_4h_to_h, whose recomputed outputs no backward reads.
#[test]
fn planned_nf4_gemm_flops_skip_the_unread_recomputed_products() {
    let cfg = plan::falcon_config("falcon-7b").unwrap();
    let p = plan::dry_run(&cfg, &StepShape::new(2, 512), &GPUS[0]).unwrap();
    let nf4: f64 = p
        .launches
        .iter()
        .filter(|r| r.kernel.name.starts_with("nf4_gemm_"))
        .map(|r| kernels_cu::perf::cost(r).tensor_flops)
        .sum();
    let three = 4672.0 * 4544.0 + 18176.0 * 4544.0;
    let two = 4544.0 * 4544.0 + 4544.0 * 18176.0;
    assert_eq!(nf4, 2.0 * 32.0 * (3.0 * three + 2.0 * two) * 1024.0);
    // 32 layers x (4 forward + 2 recomputed + 4 input gradient) products, each a launch from
    // tile column 0 (argument 6: the first column), plus for the shapes whose grid ends in a
    // partial wave a second launch of the remaining columns, split along the reduction.
    let (heads, tails): (Vec<_>, Vec<_>) = p
        .launches
        .iter()
        .filter(|r| r.kernel.name.starts_with("nf4_gemm_"))
        .partition(|r| r.int(6) == 0);
    assert_eq!(heads.len(), 32 * (4 + 2 + 4));
    assert!(
        tails.iter().all(|r| r.grid.z > 1),
        "a tail launch without a split"
    );
    assert!(tails.len() <= heads.len());
    // The dry run's allocator peak is the step's device memory: base, adapters, activations.
    assert!(
        p.peak_bytes > 4 << 30 && p.peak_bytes < 6 << 30,
        "{}",
        p.peak_bytes
    );
}

/// The decode-step plan of Falcon-7B reads every decoder weight once in 4 bits and the tied
/// lm_head once in bf16, and a batch of 32 sequences reads the same weights as one.
#[test]
fn the_decode_plan_reads_each_weight_once_per_step() {
    use model_falcon::checkpoint::linear_modules;
    use model_falcon::cuda::plan::{decode_estimate, falcon_config, DecodeShape};
    let cfg = falcon_config("falcon-7b").unwrap();
    let gpu = model_falcon::cuda::plan::perf::gpu("H200").unwrap();
    let linear: usize = linear_modules(&cfg)
        .iter()
        .map(|m| m.in_features * m.out_features)
        .sum();
    let want = linear as f64 * (0.5 + 1.0 / 64.0) + 2.0 * (cfg.vocab_size * cfg.hidden_size) as f64;
    let one = decode_estimate(&cfg, &DecodeShape::new(1, 512), gpu).unwrap();
    let many = decode_estimate(&cfg, &DecodeShape::new(32, 512), gpu).unwrap();
    assert_eq!(one.weight_bytes, want);
    assert_eq!(many.weight_bytes, want);
    assert!(one.step_us > 0.0 && many.tokens_per_s > one.tokens_per_s);
    // A graph-replayed step differs from the same launches on a stream by the launch costs
    // alone: launches x (stream gap − graph node).
    let plain = decode_estimate(
        &cfg,
        &DecodeShape {
            graphs: false,
            ..DecodeShape::new(1, 512)
        },
        gpu,
    )
    .unwrap();
    assert_eq!(plain.launches, one.launches);
    let saved = plain.launches as f64
        * (gpu.launch_gap_us - model_falcon::cuda::plan::perf::model::GRAPH_NODE_US);
    assert!(
        ((plain.step_us - one.step_us) - saved).abs() < 1e-6 * plain.step_us,
        "{} vs {} us: {saved} us of launch costs expected",
        plain.step_us,
        one.step_us
    );
    eprintln!(
        "PREDICTED Falcon-7B decode on {}: batch 1 {:.0} tokens/s, batch 32 {:.0} tokens/s",
        gpu.name, one.tokens_per_s, many.tokens_per_s
    );
}
