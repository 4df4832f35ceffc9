//! The training loop with Hugging Face Trainer semantics (hf-semantics §2):
//! - one step = one optimizer update over `gradient_accumulation_steps` micro-batches; the last
//!   window of an epoch may be shorter (HF ≥ 4.57); `max_steps = ceil(epochs · windows/epoch)`;
//! - the loss backpropagated per micro-batch is `Σ token CE / N` where N counts the target
//!   tokens of the whole window, so the window's gradient is the exact token-level mean;
//!   a window with no target tokens is skipped with a warning (no NaN step);
//! - global-norm clipping, AdamW, LR schedule evaluated at the step index before the update;
//! - log / eval / save every N steps, and a final save;
//! - resume restores adapter, optimizer, scheduler, dropout RNG and data position, so the final
//!   adapter is bit-identical to an uninterrupted run.

use crate::args::TrainArgs;
use crate::device::{self, DeviceRequest};
use crate::metrics::{MetricsLog, Progress};
use crate::nonfinite;
use crate::session::Session;
use crate::state::{self, LogEntry, RngFile, TrainerState};
use anyhow::{bail, Context, Result};
use data_finqa::{Batch, Sampler, SamplerConfig, TokenizedExample};
use engine::optim::{AdamW, AdamWConfig, LrSchedule, SchedulerKind};
use engine::{rng, GradStore, Tensor, Var};
use model_falcon::peft::{load_adapter, LoraConfig, TargetModules};
use model_falcon::{attach_lora, load_lora, CudaFalcon};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// What a finished (or interrupted) run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub global_step: u64,
    pub max_steps: u64,
    pub train_loss: f64,
    pub first_eval_loss: Option<f64>,
    pub last_eval_loss: Option<f64>,
    pub adapter_dir: PathBuf,
    pub interrupted: bool,
    pub seconds: f64,
    pub tokens_seen: u64,
    pub peak_host_bytes: usize,
    /// Peak bytes in use on the CUDA device, when training ran there.
    pub peak_device_bytes: Option<usize>,
}

/// Tensors of one collated micro-batch.
pub struct MicroBatch {
    pub ids: Tensor,
    pub mask: Tensor,
    pub labels: Vec<i32>,
    pub targets: usize,
    pub tokens: usize,
}

pub fn micro_batch(examples: &[&TokenizedExample], pad_id: u32) -> Result<MicroBatch> {
    let b = Batch::collate(examples, pad_id, None)?;
    let shape = [b.batch_size, b.seq_len];
    Ok(MicroBatch {
        targets: b.target_token_count(),
        tokens: b.real_token_count(),
        ids: Tensor::from_vec(b.input_ids, shape)?,
        mask: Tensor::from_vec(b.attention_mask, shape)?,
        labels: b.labels,
    })
}

/// Token-level mean eval loss over `examples` (no gradients, no dropout), on the CUDA device
/// when `cuda` is given.
pub fn evaluate(
    session: &Session,
    cuda: Option<&CudaFalcon>,
    examples: &[TokenizedExample],
    batch_size: usize,
) -> Result<(f64, usize)> {
    let mut sum = 0.0;
    let mut count = 0usize;
    for chunk in examples.chunks(batch_size.max(1)) {
        let refs: Vec<&TokenizedExample> = chunk.iter().collect();
        let mb = micro_batch(&refs, session.pad_id)?;
        if mb.targets == 0 {
            continue;
        }
        // Dividing by 1 gives the summed CE; the mean is taken over all tokens at the end.
        sum += match cuda {
            Some(c) => c.loss(&mb.ids, Some(&mb.mask), &mb.labels, 1.0)?,
            None => engine::no_grad(|| {
                session
                    .model
                    .loss(&mb.ids, Some(&mb.mask), &mb.labels, 1.0, false)
            })?
            .value()
            .to_scalar()?,
        };
        count += mb.targets;
    }
    if count == 0 {
        bail!("the evaluation set has no target tokens");
    }
    Ok((sum / count as f64, count))
}

/// The LoRA config the flags describe.
pub fn lora_config(args: &TrainArgs, base_name: &str) -> Result<LoraConfig> {
    let targets = TargetModules::from_flag(&args.target_modules);
    if !(0.0..1.0).contains(&args.lora_dropout) {
        bail!(
            "--lora-dropout must be in [0, 1), got {}",
            args.lora_dropout
        );
    }
    let mut c = LoraConfig::new(args.lora_r, args.lora_alpha, args.lora_dropout, targets);
    c.use_rslora = args.use_rslora;
    c.base_model_name_or_path = Some(base_name.to_string());
    Ok(c)
}

fn check_args(a: &TrainArgs) -> Result<()> {
    if a.per_device_train_batch_size == 0 || a.gradient_accumulation_steps == 0 {
        bail!("--per-device-train-batch-size and --gradient-accumulation-steps must be at least 1");
    }
    if a.lora_r == 0 {
        bail!("--lora-r must be at least 1");
    }
    if !(a.learning_rate.is_finite() && a.learning_rate >= 0.0) {
        bail!("--learning-rate must be a non-negative number");
    }
    if a.max_steps <= 0 && a.num_train_epochs.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
    {
        bail!("give --max-steps > 0 or --num-train-epochs > 0");
    }
    if a.logging_steps == 0 || a.eval_steps == 0 || a.save_steps == 0 {
        bail!("--logging-steps, --eval-steps and --save-steps must be at least 1");
    }
    Ok(())
}

/// Runs training on already tokenized data. `stop` is polled after every step (Ctrl-C).
pub fn train(
    session: &mut Session,
    args: &TrainArgs,
    train_set: &[TokenizedExample],
    eval_set: &[TokenizedExample],
    stop: Arc<AtomicBool>,
) -> Result<TrainSummary> {
    check_args(args)?;
    if train_set.is_empty() {
        bail!("no training examples");
    }
    let out = &args.output_dir;
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create output directory {}", out.display()))?;
    let start = Instant::now();

    // Resume point, if any.
    let resume_dir: Option<PathBuf> = match (&args.resume_from, args.resume) {
        (Some(d), _) => Some(d.clone()),
        (None, true) => match state::list_checkpoints(out).last() {
            Some((_, d)) => Some(d.clone()),
            None => bail!("--resume: no checkpoint-* folder in {}", out.display()),
        },
        (None, false) => None,
    };

    // Adapters.
    let lora = match (&resume_dir, &args.init_adapter) {
        (Some(d), _) | (None, Some(d)) => {
            let (cfg, weights) = load_adapter(d, &session.model.config)?;
            load_lora(&mut session.model, &cfg, &weights)?;
            cfg
        }
        (None, None) => {
            let cfg = lora_config(args, &session.source)?;
            attach_lora(&mut session.model, &cfg, args.seed)?;
            cfg
        }
    };
    session.model.recompute = args.gradient_checkpointing;
    let named = session.model.lora_parameters();
    let names: Vec<String> = named.iter().map(|(n, _)| n.clone()).collect();
    let params: Vec<Var> = named.iter().map(|(_, v)| v.clone()).collect();
    let mut opt = AdamW::new(
        params.clone(),
        AdamWConfig {
            beta1: args.adam_beta1,
            beta2: args.adam_beta2,
            eps: args.adam_epsilon,
            weight_decay: args.weight_decay,
        },
    )?;
    let (mut cuda, where_) = device::select(DeviceRequest::from_args(args)?, &session.model)?;
    println!("{where_}");
    if cuda.is_some() && !args.bf16 {
        eprintln!(
            "note: the CUDA step computes in bf16 with fp32 accumulation and fp32 adapters; \
             for fp32 activations train with --device cpu"
        );
    }

    // Data order and step count.
    let lengths: Vec<usize> = train_set.iter().map(|e| e.input_ids.len()).collect();
    let mut sampler_cfg = SamplerConfig::new(args.per_device_train_batch_size, args.seed);
    sampler_cfg.group_by_length = args.group_by_length;
    let bpe = Sampler::new(lengths.clone(), sampler_cfg)?.batches_per_epoch();
    let ga = args.gradient_accumulation_steps;
    let windows_per_epoch = bpe.div_ceil(ga) as u64;
    let max_steps = if args.max_steps > 0 {
        args.max_steps as u64
    } else {
        (args.num_train_epochs * windows_per_epoch as f64).ceil() as u64
    };
    let kind: SchedulerKind = args.lr_scheduler_type.parse().map_err(anyhow::Error::msg)?;

    let (mut st, mut sampler, schedule) = if let Some(dir) = &resume_dir {
        let r = state::load_checkpoint_meta(dir)?;
        state::load_optimizer(&dir.join(state::OPTIMIZER_FILE), &mut opt, &names)?;
        if let Some(c) = cuda.as_mut() {
            c.set_optimizer_state(opt.state())?;
        }
        let sampler = Sampler::resume(lengths, sampler_cfg, &r.rng.sampler)?;
        rng::set_state(r.rng.dropout);
        println!(
            "resuming from {} at step {}",
            dir.display(),
            r.state.global_step
        );
        (r.state, sampler, r.schedule)
    } else {
        rng::manual_seed(args.seed);
        let st = TrainerState {
            global_step: 0,
            epoch: 0.0,
            max_steps,
            logging_steps: args.logging_steps,
            eval_steps: args.eval_steps,
            save_steps: args.save_steps,
            train_batch_size: args.per_device_train_batch_size,
            num_train_epochs: args.num_train_epochs,
            num_input_tokens_seen: 0,
            total_flos: 0.0,
            log_history: Vec::new(),
            best_metric: None,
            best_global_step: None,
            best_model_checkpoint: None,
            is_local_process_zero: true,
            is_world_process_zero: true,
            loss_since_log: 0.0,
            steps_since_log: 0,
            total_loss: 0.0,
            skipped_updates: 0,
        };
        let schedule = LrSchedule::new(
            kind,
            args.learning_rate,
            args.warmup_steps,
            args.warmup_ratio,
            max_steps,
        );
        (st, Sampler::new(lengths, sampler_cfg)?, schedule)
    };
    if st.max_steps != max_steps {
        bail!("the resumed run was planned for {} steps, these flags give {max_steps}; resume with the same flags", st.max_steps);
    }

    let mut log = MetricsLog::open(out, resume_dir.is_some())?;
    let mut progress = Progress::new(max_steps, st.global_step, args.no_progress);
    println!("{}", session.model.param_counts());
    let mut first_eval = st.log_history.iter().find_map(|e| e.eval_loss);
    let mut last_eval = st.log_history.iter().rev().find_map(|e| e.eval_loss);
    if first_eval.is_none() && !eval_set.is_empty() {
        let (l, n) = evaluate(
            session,
            cuda.as_ref(),
            eval_set,
            args.per_device_eval_batch_size,
        )?;
        println!("eval before training: eval_loss {l:.4} over {n} target tokens");
        first_eval = Some(l);
        let e = LogEntry::eval(0, 0.0, l);
        log.write(&e)?;
        st.log_history.push(e);
    }
    let mut steps_this_run = 0u64;
    let mut tokens_window_start = Instant::now();
    let mut tokens_since_log = 0u64;
    let mut empty_windows = 0usize;
    let mut interrupted = false;
    let mut last_saved = None;
    let mut guard = crate::nonfinite::Guard::new(&args.on_nonfinite)?;

    while st.global_step < max_steps {
        // The window: up to GA micro-batches, not crossing the epoch end.
        let pos = sampler.state();
        let remaining = if pos.next_batch >= bpe {
            bpe
        } else {
            bpe - pos.next_batch
        };
        let n_micro = ga.min(remaining);
        let mut micro = Vec::with_capacity(n_micro);
        for _ in 0..n_micro {
            let idx = sampler.next_batch();
            let refs: Vec<&TokenizedExample> = idx.iter().map(|&i| &train_set[i]).collect();
            micro.push(micro_batch(&refs, session.pad_id)?);
        }
        let count: usize = micro.iter().map(|m| m.targets).sum();
        if count == 0 {
            empty_windows += 1;
            eprintln!("warning: an accumulation window has no target tokens; skipped");
            if empty_windows > bpe {
                bail!("no micro-batch of the training data has a target token");
            }
            continue;
        }
        empty_windows = 0;
        let mut grads = GradStore::default();
        let mut step_loss = 0.0;
        for mb in &micro {
            step_loss += match cuda.as_mut() {
                Some(c) => c.forward_backward(&mb.ids, Some(&mb.mask), &mb.labels, count as f64)?,
                None => {
                    let loss = session.model.loss(
                        &mb.ids,
                        Some(&mb.mask),
                        &mb.labels,
                        count as f64,
                        true,
                    )?;
                    grads.merge(loss.backward()?)?;
                    loss.value().to_scalar()?
                }
            };
            st.num_input_tokens_seen += mb.tokens as u64;
            tokens_since_log += mb.tokens as u64;
        }
        let lr = schedule.lr(st.global_step);
        let (step, mgn) = (st.global_step + 1, args.max_grad_norm);
        let (grad_norm, action) = match cuda.as_mut() {
            Some(c) => {
                nonfinite::cuda_update(&mut guard, step, step_loss, c, lr, opt.config(), mgn)?
            }
            None => nonfinite::cpu_update(
                &mut guard, step, step_loss, &mut grads, &params, &names, &mut opt, lr, mgn,
            )?,
        };
        st.skipped_updates += u64::from(action == nonfinite::StepAction::Skip);
        let step_loss =
            nonfinite::loss_for_logging(step_loss, st.loss_since_log, st.steps_since_log);
        drop(grads);
        st.global_step += 1;
        steps_this_run += 1;
        let sp = sampler.state();
        st.epoch = sp.epoch as f64 + sp.next_batch as f64 / bpe as f64;
        st.loss_since_log += step_loss;
        st.steps_since_log += 1;
        st.total_loss += step_loss;
        progress.step(
            st.global_step,
            step_loss,
            lr,
            grad_norm,
            device::peak_bytes(cuda.as_ref()),
        );

        let at_end = st.global_step == max_steps;
        if st.global_step.is_multiple_of(args.logging_steps) || at_end {
            let secs = tokens_window_start.elapsed().as_secs_f64().max(1e-9);
            let e = LogEntry {
                step: st.global_step,
                epoch: (st.epoch * 1e4).round() / 1e4,
                loss: Some(((st.loss_since_log / st.steps_since_log as f64) * 1e4).round() / 1e4),
                grad_norm: Some(grad_norm),
                learning_rate: Some(lr),
                eval_loss: None,
                tokens_per_second: Some(tokens_since_log as f64 / secs),
            };
            progress.log(&e);
            log.write(&e)?;
            st.log_history.push(e);
            st.loss_since_log = 0.0;
            st.steps_since_log = 0;
            tokens_since_log = 0;
            tokens_window_start = Instant::now();
        }
        if !eval_set.is_empty() && (st.global_step.is_multiple_of(args.eval_steps) || at_end) {
            let (l, _) = evaluate(
                session,
                cuda.as_ref(),
                eval_set,
                args.per_device_eval_batch_size,
            )?;
            last_eval = Some(l);
            let e = LogEntry::eval(st.global_step, st.epoch, l);
            progress.log(&e);
            log.write(&e)?;
            st.log_history.push(e);
            log.plot(&st.log_history)?;
        }
        interrupted = stop.load(Ordering::SeqCst)
            || (args.stop_after_steps > 0 && steps_this_run >= args.stop_after_steps && !at_end);
        if st.global_step.is_multiple_of(args.save_steps) || at_end || interrupted {
            let dir = out.join(format!("checkpoint-{}", st.global_step));
            if let Some(c) = &cuda {
                // The checkpoint is written from the host model and optimizer.
                c.store_adapters_to_host()?;
                opt.set_state(c.optimizer_state()?)?;
            }
            let rngf = RngFile {
                dropout: rng::state(),
                sampler: sampler.state(),
            };
            state::save_checkpoint(
                &dir,
                &session.model,
                &lora,
                &opt,
                &names,
                &schedule,
                &st,
                &rngf,
            )?;
            for removed in state::rotate(out, args.save_total_limit)? {
                progress.note(&format!("removed old checkpoint {}", removed.display()));
            }
            last_saved = Some(dir);
        }
        if interrupted {
            break;
        }
    }
    progress.finish();
    log.plot(&st.log_history)?;
    let adapter_dir = if interrupted {
        last_saved.clone().unwrap_or_else(|| out.clone())
    } else {
        if let Some(c) = &cuda {
            c.store_adapters_to_host()?;
        }
        model_falcon::peft::save_adapter(out, &lora, &model_falcon::lora_weights(&session.model)?)?;
        out.clone()
    };
    Ok(TrainSummary {
        global_step: st.global_step,
        max_steps,
        train_loss: st.total_loss / st.global_step.max(1) as f64,
        first_eval_loss: first_eval,
        last_eval_loss: last_eval,
        adapter_dir,
        interrupted,
        seconds: start.elapsed().as_secs_f64(),
        tokens_seen: st.num_input_tokens_seen,
        peak_host_bytes: engine::memory::global_counter().peak_bytes(),
        peak_device_bytes: cuda.as_ref().map(|c| c.memory().peak_in_use),
    })
}
