//! The training loop with Hugging Face Trainer semantics (docs/hf-semantics.md §2):
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
use crate::device::device_request;
use crate::metrics::{MetricsLog, Progress};
use crate::nonfinite::{self, Guard, StepAction};
use crate::session::Session;
use crate::state::{self, LogEntry, RngFile, TrainerState};
use anyhow::{bail, Context, Result};
use data_finqa::{Batch, Sampler, SamplerConfig, TokenizedExample};
use engine::optim::{AdamWConfig, LrSchedule, SchedulerKind};
use engine::{rng, Tensor};
use model_falcon::peft::{load_adapter, LoraConfig, TargetModules};
use model_falcon::{attach_lora, load_lora, Backend};
use std::path::{Path, PathBuf};
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

/// Token-level mean eval loss over `examples` (no gradients, no dropout), on the backend's
/// device.
pub fn evaluate(
    backend: &Backend,
    pad_id: u32,
    examples: &[TokenizedExample],
    batch_size: usize,
) -> Result<(f64, usize)> {
    let mut sum = 0.0;
    let mut count = 0usize;
    for chunk in examples.chunks(batch_size.max(1)) {
        let refs: Vec<&TokenizedExample> = chunk.iter().collect();
        let mb = micro_batch(&refs, pad_id)?;
        if mb.targets == 0 {
            continue;
        }
        // The summed CE per batch; the mean is taken over all tokens at the end.
        sum += backend.eval_loss_sum(&mb.ids, Some(&mb.mask), &mb.labels)?;
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

fn adamw_config(a: &TrainArgs) -> AdamWConfig {
    AdamWConfig {
        beta1: a.adam_beta1,
        beta2: a.adam_beta2,
        eps: a.adam_epsilon,
        weight_decay: a.weight_decay,
    }
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

/// The checkpoint to resume from: `--resume-from DIR`, or the newest `checkpoint-*` of the
/// output dir with `--resume`.
fn resume_point(args: &TrainArgs) -> Result<Option<PathBuf>> {
    Ok(match (&args.resume_from, args.resume) {
        (Some(d), _) => Some(d.clone()),
        (None, true) => match state::list_checkpoints(&args.output_dir).last() {
            Some((_, d)) => Some(d.clone()),
            None => bail!(
                "--resume: no checkpoint-* folder in {}",
                args.output_dir.display()
            ),
        },
        (None, false) => None,
    })
}

/// Attaches the run's adapters to the model: those of the checkpoint or `--init-adapter`,
/// or fresh ones as the flags describe.
fn attach_adapters(
    session: &mut Session,
    args: &TrainArgs,
    resume_dir: Option<&Path>,
) -> Result<LoraConfig> {
    Ok(match resume_dir.or(args.init_adapter.as_deref()) {
        Some(d) => {
            let (cfg, weights) = load_adapter(d, &session.model.config)?;
            load_lora(&mut session.model, &cfg, &weights)?;
            cfg
        }
        None => {
            let cfg = lora_config(args, &session.source)?;
            attach_lora(&mut session.model, &cfg, args.seed)?;
            cfg
        }
    })
}

/// How the data becomes optimizer steps: batches per epoch, accumulation windows, the number
/// of steps.
struct StepPlan {
    lengths: Vec<usize>,
    sampler: SamplerConfig,
    batches_per_epoch: usize,
    grad_accum: usize,
    max_steps: u64,
}

impl StepPlan {
    /// HF's `max_steps = ceil(epochs · windows/epoch)` unless `--max-steps` is given.
    fn new(args: &TrainArgs, train_set: &[TokenizedExample]) -> Result<StepPlan> {
        let lengths: Vec<usize> = train_set.iter().map(|e| e.input_ids.len()).collect();
        let mut sampler = SamplerConfig::new(args.per_device_train_batch_size, args.seed);
        sampler.group_by_length = args.group_by_length;
        let bpe = Sampler::new(lengths.clone(), sampler)?.batches_per_epoch();
        let ga = args.gradient_accumulation_steps;
        let windows_per_epoch = bpe.div_ceil(ga) as u64;
        let max_steps = if args.max_steps > 0 {
            args.max_steps as u64
        } else {
            (args.num_train_epochs * windows_per_epoch as f64).ceil() as u64
        };
        Ok(StepPlan {
            lengths,
            sampler,
            batches_per_epoch: bpe,
            grad_accum: ga,
            max_steps,
        })
    }

    /// Micro-batches in the window that starts at `next_batch`: up to the accumulation count,
    /// not crossing the end of the epoch.
    fn window_len(&self, next_batch: usize) -> usize {
        let remaining = if next_batch >= self.batches_per_epoch {
            self.batches_per_epoch
        } else {
            self.batches_per_epoch - next_batch
        };
        self.grad_accum.min(remaining)
    }
}

/// The progress of a run: what a checkpoint saves, plus the counters of this process.
struct Run {
    st: TrainerState,
    sampler: Sampler,
    schedule: LrSchedule,
    log: MetricsLog,
    progress: Progress,
    first_eval: Option<f64>,
    last_eval: Option<f64>,
    steps_this_run: u64,
    tokens_since_log: u64,
    log_window_start: Instant,
    empty_windows: usize,
    last_saved: Option<PathBuf>,
    /// What a non-finite loss or gradient norm does (`--on-nonfinite`).
    guard: Guard,
}

/// What one optimizer step did.
struct StepOutcome {
    loss: f64,
    lr: f64,
    grad_norm: f64,
}

impl Run {
    /// A fresh run, or the state of the checkpoint in `resume_dir` (optimizer state restored
    /// into the backend, dropout RNG and data position set).
    fn start(
        args: &TrainArgs,
        plan: &StepPlan,
        resume_dir: Option<&Path>,
        backend: &mut Backend,
    ) -> Result<Run> {
        let kind: SchedulerKind = args.lr_scheduler_type.parse().map_err(anyhow::Error::msg)?;
        let (st, sampler, schedule) = match resume_dir {
            Some(dir) => {
                let r = state::load_checkpoint_meta(dir)?;
                let names = backend.parameter_names().to_vec();
                backend.restore_optimizer(|opt| {
                    state::load_optimizer(&dir.join(state::OPTIMIZER_FILE), opt, &names)
                })?;
                let sampler = Sampler::resume(plan.lengths.clone(), plan.sampler, &r.rng.sampler)?;
                rng::set_state(r.rng.dropout);
                println!(
                    "resuming from {} at step {}",
                    dir.display(),
                    r.state.global_step
                );
                (r.state, sampler, r.schedule)
            }
            None => {
                rng::manual_seed(args.seed);
                let schedule = LrSchedule::new(
                    kind,
                    args.learning_rate,
                    args.warmup_steps,
                    args.warmup_ratio,
                    plan.max_steps,
                );
                let sampler = Sampler::new(plan.lengths.clone(), plan.sampler)?;
                (fresh_state(args, plan.max_steps), sampler, schedule)
            }
        };
        if st.max_steps != plan.max_steps {
            bail!(
                "the resumed run was planned for {} steps, these flags give {}; resume with the same flags",
                st.max_steps,
                plan.max_steps
            );
        }
        let log = MetricsLog::open(&args.output_dir, resume_dir.is_some())?;
        let progress = Progress::new(plan.max_steps, st.global_step, args.no_progress);
        Ok(Run {
            first_eval: st.log_history.iter().find_map(|e| e.eval_loss),
            last_eval: st.log_history.iter().rev().find_map(|e| e.eval_loss),
            st,
            sampler,
            schedule,
            log,
            progress,
            steps_this_run: 0,
            tokens_since_log: 0,
            log_window_start: Instant::now(),
            empty_windows: 0,
            last_saved: None,
            guard: Guard::new(&args.on_nonfinite)?,
        })
    }

    /// The next accumulation window's micro-batches, or `None` for a window without target
    /// tokens (skipped with a warning, as it would give a 0/0 loss).
    fn next_window(
        &mut self,
        plan: &StepPlan,
        train_set: &[TokenizedExample],
        pad_id: u32,
    ) -> Result<Option<Vec<MicroBatch>>> {
        let n_micro = plan.window_len(self.sampler.state().next_batch);
        let mut micro = Vec::with_capacity(n_micro);
        for _ in 0..n_micro {
            let idx = self.sampler.next_batch();
            let refs: Vec<&TokenizedExample> = idx.iter().map(|&i| &train_set[i]).collect();
            micro.push(micro_batch(&refs, pad_id)?);
        }
        if micro.iter().all(|m| m.targets == 0) {
            self.empty_windows += 1;
            eprintln!("warning: an accumulation window has no target tokens; skipped");
            if self.empty_windows > plan.batches_per_epoch {
                bail!("no micro-batch of the training data has a target token");
            }
            return Ok(None);
        }
        self.empty_windows = 0;
        Ok(Some(micro))
    }

    /// One optimizer step over a window: every micro-batch's loss `Σ CE / N` with N the
    /// window's target count (so the gradient is the window's token-level mean), then
    /// clipping and AdamW at the schedule's rate for this step. A non-finite loss or norm
    /// applies nothing and is skipped or stops the run, as `--on-nonfinite` says.
    fn step(
        &mut self,
        backend: &mut Backend,
        window: &[MicroBatch],
        max_grad_norm: f64,
    ) -> Result<StepOutcome> {
        let count: usize = window.iter().map(|m| m.targets).sum();
        let mut loss = 0.0;
        for mb in window {
            loss += backend.forward_backward(&mb.ids, Some(&mb.mask), &mb.labels, count as f64)?;
            self.st.num_input_tokens_seen += mb.tokens as u64;
            self.tokens_since_log += mb.tokens as u64;
        }
        let lr = self.schedule.lr(self.st.global_step);
        let update = backend.optimizer_step(lr, max_grad_norm, loss.is_finite())?;
        let step = self.st.global_step + 1;
        let action = self
            .guard
            .check_update(step, loss, update.grad_norm, || update.first_nonfinite_grad)?;
        self.st.skipped_updates += u64::from(action == StepAction::Skip);
        Ok(StepOutcome {
            loss: nonfinite::loss_for_logging(
                loss,
                self.st.loss_since_log,
                self.st.steps_since_log,
            ),
            lr,
            grad_norm: update.grad_norm,
        })
    }

    /// Counts a finished step and moves the progress bar.
    fn record(&mut self, out: &StepOutcome, plan: &StepPlan, peak_bytes: usize) {
        let st = &mut self.st;
        st.global_step += 1;
        self.steps_this_run += 1;
        let sp = self.sampler.state();
        st.epoch = sp.epoch as f64 + sp.next_batch as f64 / plan.batches_per_epoch as f64;
        st.loss_since_log += out.loss;
        st.steps_since_log += 1;
        st.total_loss += out.loss;
        self.progress
            .step(st.global_step, out.loss, out.lr, out.grad_norm, peak_bytes);
    }

    /// Appends a history entry to the log, the metrics file and the console.
    fn push_log(&mut self, e: LogEntry) -> Result<()> {
        self.progress.log(&e);
        self.log.write(&e)?;
        self.st.log_history.push(e);
        Ok(())
    }

    /// The logging hook: mean loss since the last log, learning rate, norm, tokens/s.
    fn log_train(&mut self, out: &StepOutcome) -> Result<()> {
        let secs = self.log_window_start.elapsed().as_secs_f64().max(1e-9);
        let st = &self.st;
        let e = LogEntry {
            step: st.global_step,
            epoch: (st.epoch * 1e4).round() / 1e4,
            loss: Some(((st.loss_since_log / st.steps_since_log as f64) * 1e4).round() / 1e4),
            grad_norm: Some(out.grad_norm),
            learning_rate: Some(out.lr),
            eval_loss: None,
            tokens_per_second: Some(self.tokens_since_log as f64 / secs),
        };
        self.push_log(e)?;
        self.st.loss_since_log = 0.0;
        self.st.steps_since_log = 0;
        self.tokens_since_log = 0;
        self.log_window_start = Instant::now();
        Ok(())
    }

    /// The evaluation hook: eval loss over the validation set, logged and plotted.
    fn log_eval(
        &mut self,
        backend: &Backend,
        pad_id: u32,
        eval_set: &[TokenizedExample],
        batch_size: usize,
    ) -> Result<()> {
        let (l, _) = evaluate(backend, pad_id, eval_set, batch_size)?;
        self.last_eval = Some(l);
        self.push_log(LogEntry::eval(self.st.global_step, self.st.epoch, l))?;
        self.log.plot(&self.st.log_history)
    }

    /// The save hook: `checkpoint-{step}/` with adapter, optimizer, scheduler, RNG and data
    /// position (from the host copies the backend syncs), then rotation.
    fn save(&mut self, backend: &mut Backend, lora: &LoraConfig, args: &TrainArgs) -> Result<()> {
        let dir = args
            .output_dir
            .join(format!("checkpoint-{}", self.st.global_step));
        let names = backend.parameter_names().to_vec();
        let model = backend.model();
        let opt = backend.checkpoint_state()?;
        let rngf = RngFile {
            dropout: rng::state(),
            sampler: self.sampler.state(),
        };
        state::save_checkpoint(
            &dir,
            model,
            lora,
            opt,
            &names,
            &self.schedule,
            &self.st,
            &rngf,
        )?;
        for removed in state::rotate(&args.output_dir, args.save_total_limit)? {
            self.progress
                .note(&format!("removed old checkpoint {}", removed.display()));
        }
        self.last_saved = Some(dir);
        Ok(())
    }
}

/// `trainer_state.json` at step 0.
fn fresh_state(args: &TrainArgs, max_steps: u64) -> TrainerState {
    TrainerState {
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
    }
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

    let resume_dir = resume_point(args)?;
    let lora = attach_adapters(session, args, resume_dir.as_deref())?;
    session.model.recompute = args.gradient_checkpointing;
    let pad_id = session.pad_id;
    let (mut backend, where_) =
        Backend::open(device_request(args)?, &session.model, adamw_config(args))?;
    println!("{where_}");
    if backend.is_cuda() && !args.bf16 {
        eprintln!(
            "note: the CUDA step computes in bf16 with fp32 accumulation and fp32 adapters; \
             for fp32 activations train with --device cpu"
        );
    }

    let plan = StepPlan::new(args, train_set)?;
    let mut run = Run::start(args, &plan, resume_dir.as_deref(), &mut backend)?;
    println!("{}", backend.model().param_counts());
    if run.first_eval.is_none() && !eval_set.is_empty() {
        let (l, n) = evaluate(&backend, pad_id, eval_set, args.per_device_eval_batch_size)?;
        println!("eval before training: eval_loss {l:.4} over {n} target tokens");
        run.first_eval = Some(l);
        let e = LogEntry::eval(0, 0.0, l);
        run.log.write(&e)?;
        run.st.log_history.push(e);
    }

    let mut interrupted = false;
    while run.st.global_step < plan.max_steps {
        let Some(window) = run.next_window(&plan, train_set, pad_id)? else {
            continue;
        };
        let outcome = run.step(&mut backend, &window, args.max_grad_norm)?;
        drop(window);
        run.record(&outcome, &plan, backend.peak_bytes());

        let step = run.st.global_step;
        let at_end = step == plan.max_steps;
        if step.is_multiple_of(args.logging_steps) || at_end {
            run.log_train(&outcome)?;
        }
        if !eval_set.is_empty() && (step.is_multiple_of(args.eval_steps) || at_end) {
            run.log_eval(&backend, pad_id, eval_set, args.per_device_eval_batch_size)?;
        }
        interrupted = stop.load(Ordering::SeqCst)
            || (args.stop_after_steps > 0
                && run.steps_this_run >= args.stop_after_steps
                && !at_end);
        if step.is_multiple_of(args.save_steps) || at_end || interrupted {
            run.save(&mut backend, &lora, args)?;
        }
        if interrupted {
            break;
        }
    }
    run.progress.finish();
    run.log.plot(&run.st.log_history)?;
    let adapter_dir = if interrupted {
        run.last_saved.clone().unwrap_or_else(|| out.clone())
    } else {
        backend.sync_adapters_to_host()?;
        model_falcon::peft::save_adapter(
            out,
            &lora,
            &model_falcon::lora_weights(backend.model())?,
        )?;
        out.clone()
    };
    let st = &run.st;
    Ok(TrainSummary {
        global_step: st.global_step,
        max_steps: plan.max_steps,
        train_loss: st.total_loss / st.global_step.max(1) as f64,
        first_eval_loss: run.first_eval,
        last_eval_loss: run.last_eval,
        adapter_dir,
        interrupted,
        seconds: start.elapsed().as_secs_f64(),
        tokens_seen: st.num_input_tokens_seen,
        peak_host_bytes: engine::memory::global_counter().peak_bytes(),
        peak_device_bytes: backend.peak_device_bytes(),
    })
}
