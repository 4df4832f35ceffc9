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

use crate::accuracy::{evaluate_accuracy, AccuracyConfig};
use crate::args::{ResumeMode, TrainArgs};
use crate::best_model::{BestModel, EvalMetrics};
use crate::device::device_request;
use crate::distributed::{self, Collective, SingleRank};
use crate::metrics::{MetricsLog, Progress};
use crate::nonfinite::{self, Guard, StepAction};
use crate::session::Session;
use crate::state::{self, LogEntry, RngFile, TrainerState};
use anyhow::{bail, Context, Result};
use data_finqa::{Batch, Sampler, SamplerConfig, TokenizedExample};
use engine::optim::{AdamWConfig, LrSchedule, SchedulerKind};
use engine::{rng, Tensor};
use model_falcon::peft::{load_adapter, LoraConfig, TargetModules};
use model_falcon::{attach_lora, load_lora, Backend, DeviceRequest};
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
    /// eval_accuracy before training and at the last evaluation (--predict-with-generate).
    pub first_eval_accuracy: Option<f64>,
    pub last_eval_accuracy: Option<f64>,
    /// The best checkpoint by --metric-for-best-model, and its metric.
    pub best_model_checkpoint: Option<String>,
    pub best_metric: Option<f64>,
    /// The final adapter is the best checkpoint's (--load-best-model-at-end).
    pub loaded_best: bool,
    /// Early stopping ended the run before max_steps.
    pub early_stopped: bool,
    pub adapter_dir: PathBuf,
    pub interrupted: bool,
    pub seconds: f64,
    pub tokens_seen: u64,
    pub peak_host_bytes: usize,
    /// Peak bytes in use on the CUDA device, when training ran there.
    pub peak_device_bytes: Option<usize>,
    /// Data-parallel ranks, and examples per optimizer step over all of them
    /// (ranks × per-device batch × gradient accumulation).
    pub ranks: usize,
    pub global_batch: usize,
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
    let dir = crate::resume_args::resume_dir(args);
    if dir.is_none() && args.resume == ResumeMode::Newest {
        bail!(
            "--resume: no checkpoint-* folder in {} (--resume auto starts a new run then)",
            args.output_dir.display()
        );
    }
    Ok(dir)
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
            let cfg = lora_config(args, &session.name_or_path)?;
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
    /// HF's `max_steps = ceil(epochs · windows/epoch)` unless `--max-steps` is given. With
    /// several ranks the sampler hands out global micro-batches of `ranks × per-device batch`
    /// examples, which [`distributed::shard`] splits.
    fn new(args: &TrainArgs, train_set: &[TokenizedExample], ranks: usize) -> Result<StepPlan> {
        let lengths: Vec<usize> = train_set.iter().map(|e| e.input_ids.len()).collect();
        let mut sampler = SamplerConfig::new(args.per_device_train_batch_size * ranks, args.seed);
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
    /// The metrics file, on the rank that logs.
    log: Option<MetricsLog>,
    progress: Progress,
    first_eval: Option<f64>,
    last_eval: Option<f64>,
    steps_this_run: u64,
    /// Examples of the steps of this process, for `train_samples_per_second`.
    samples_this_run: u64,
    tokens_since_log: u64,
    log_window_start: Instant,
    empty_windows: usize,
    last_saved: Option<PathBuf>,
    /// What a non-finite loss or gradient norm does (`--on-nonfinite`).
    guard: Guard,
    /// Data-parallel ranks; rank 0 alone logs and saves.
    ranks: usize,
    main: bool,
    /// Best-checkpoint tracking and early stopping, when a metric is chosen.
    best: Option<BestModel>,
    /// Generation-based accuracy at each evaluation (`--predict-with-generate`).
    accuracy: Option<AccuracyConfig>,
    first_accuracy: Option<f64>,
    last_accuracy: Option<f64>,
}

/// One rank's share of an accumulation window, with the window's totals over all ranks.
struct Window {
    micro: Vec<MicroBatch>,
    /// Target tokens of the whole global window: the divisor of the token-level mean loss.
    targets: usize,
    /// Real (non-pad) tokens of the whole global window.
    tokens: u64,
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
        dist: &dyn Collective,
    ) -> Result<Run> {
        let kind: SchedulerKind = args.lr_scheduler_type.parse().map_err(anyhow::Error::msg)?;
        let (st, sampler, schedule) = match resume_dir {
            Some(dir) => {
                let r = state::load_checkpoint_meta(dir)?;
                let names = backend.parameter_names().to_vec();
                backend.restore_optimizer(|opt| {
                    state::load_optimizer(&dir.join(state::OPTIMIZER_FILE), opt, &names)
                })?;
                let own = distributed::ranks::resume_state(
                    r.rng.data_parallel.as_ref(),
                    &dir.display().to_string(),
                    dist.size(),
                    dist.rank(),
                )?;
                let sampler = Sampler::resume(plan.lengths.clone(), plan.sampler, &r.rng.sampler)?;
                rng::set_state(own.unwrap_or(r.rng.dropout));
                println!(
                    "resuming from {} at step {}",
                    dir.display(),
                    r.state.global_step
                );
                (r.state, sampler, r.schedule)
            }
            None => {
                rng::manual_seed(distributed::ranks::rank_seed(args.seed, dist.rank()));
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
        let main = dist.is_main();
        let tensorboard = (args.report_to != "none").then(|| {
            args.logging_dir
                .clone()
                .unwrap_or_else(|| crate::tensorboard::default_logging_dir(&args.output_dir))
        });
        let log = match main {
            true => Some(MetricsLog::open(
                &args.output_dir,
                resume_dir.is_some(),
                tensorboard.as_deref(),
            )?),
            false => None,
        };
        if let Some(f) = log.as_ref().and_then(|l| l.tensorboard_file()) {
            println!("TensorBoard event file: {}", f.display());
        }
        let progress = Progress::new(plan.max_steps, st.global_step, args.no_progress || !main);
        Ok(Run {
            first_eval: st.log_history.iter().find_map(|e| e.eval_loss),
            last_eval: st.log_history.iter().rev().find_map(|e| e.eval_loss),
            st,
            sampler,
            schedule,
            log,
            progress,
            steps_this_run: 0,
            samples_this_run: 0,
            tokens_since_log: 0,
            log_window_start: Instant::now(),
            empty_windows: 0,
            last_saved: None,
            guard: Guard::new(&args.on_nonfinite)?,
            ranks: dist.size(),
            main,
            best: BestModel::from_args(args)?,
            accuracy: None,
            first_accuracy: None,
            last_accuracy: None,
        })
    }

    /// This rank's micro-batches of the next accumulation window (its shard of each global
    /// micro-batch), or `None` for a window without target tokens on any rank (skipped with a
    /// warning, as it would give a 0/0 loss).
    fn next_window(
        &mut self,
        plan: &StepPlan,
        train_set: &[TokenizedExample],
        pad_id: u32,
        dist: &dyn Collective,
    ) -> Result<Option<Window>> {
        let n_micro = plan.window_len(self.sampler.state().next_batch);
        let mut micro = Vec::with_capacity(n_micro);
        for _ in 0..n_micro {
            let idx =
                distributed::shard::shard(&self.sampler.next_batch(), dist.rank(), self.ranks);
            if idx.is_empty() {
                continue;
            }
            let refs: Vec<&TokenizedExample> = idx.iter().map(|&i| &train_set[i]).collect();
            micro.push(micro_batch(&refs, pad_id)?);
        }
        let mut totals = [
            micro.iter().map(|m| m.targets as u64).sum::<u64>(),
            micro.iter().map(|m| m.tokens as u64).sum::<u64>(),
        ];
        dist.all_reduce_sum_u64(&mut totals)?;
        if totals[0] == 0 {
            self.empty_windows += 1;
            eprintln!("warning: an accumulation window has no target tokens; skipped");
            if self.empty_windows > plan.batches_per_epoch {
                bail!("no micro-batch of the training data has a target token");
            }
            return Ok(None);
        }
        self.empty_windows = 0;
        Ok(Some(Window {
            micro,
            targets: totals[0] as usize,
            tokens: totals[1],
        }))
    }

    /// One optimizer step over a window: every micro-batch's loss `Σ CE / N` with N the
    /// window's target count (so the gradient is the window's token-level mean), then
    /// clipping and AdamW at the schedule's rate for this step. A non-finite loss or norm
    /// applies nothing and is skipped or stops the run, as `--on-nonfinite` says.
    ///
    /// With several ranks, each runs its shard of the window, then the gradients and the loss
    /// are summed over the ranks before clipping.
    fn step(
        &mut self,
        backend: &mut Backend,
        window: &Window,
        max_grad_norm: f64,
        dist: &dyn Collective,
    ) -> Result<StepOutcome> {
        let count = window.targets;
        let mut loss = 0.0;
        for mb in &window.micro {
            loss += backend.forward_backward(&mb.ids, Some(&mb.mask), &mb.labels, count as f64)?;
            self.samples_this_run += mb.ids.dims()[0] as u64;
        }
        if self.ranks > 1 {
            backend.reduce_gradients(|g| dist.all_reduce_sum_f32(g))?;
            let mut l = [loss];
            dist.all_reduce_sum_f64(&mut l)?;
            loss = l[0];
        }
        self.st.num_input_tokens_seen += window.tokens;
        self.tokens_since_log += window.tokens;
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
        if let Some(log) = &mut self.log {
            self.progress.log(&e);
            log.write(&e)?;
        }
        self.st.log_history.push(e);
        Ok(())
    }

    /// The logging hook: mean loss since the last log, learning rate, norm, tokens/s. The
    /// learning rate is logged as Hugging Face logs it: the scheduler's rate after this
    /// step's update, i.e. the rate the next step will use.
    fn log_train(&mut self, out: &StepOutcome) -> Result<()> {
        let secs = self.log_window_start.elapsed().as_secs_f64().max(1e-9);
        let st = &self.st;
        let e = LogEntry {
            step: st.global_step,
            epoch: (st.epoch * 1e4).round() / 1e4,
            loss: Some(((st.loss_since_log / st.steps_since_log as f64) * 1e4).round() / 1e4),
            grad_norm: Some(out.grad_norm),
            learning_rate: Some(self.schedule.lr(st.global_step)),
            tokens_per_second: Some(self.tokens_since_log as f64 / secs),
            ranks: (self.ranks > 1).then_some(self.ranks),
            tokens_per_second_per_rank: (self.ranks > 1)
                .then(|| self.tokens_since_log as f64 / secs / self.ranks as f64),
            ..LogEntry::default()
        };
        self.push_log(e)?;
        self.st.loss_since_log = 0.0;
        self.st.steps_since_log = 0;
        self.tokens_since_log = 0;
        self.log_window_start = Instant::now();
        Ok(())
    }

    /// The evaluation hook: eval loss over the validation set (and, with
    /// --predict-with-generate, the accuracy of generated answers), logged and plotted; then
    /// the best-model state. Returns true when early stopping ends the run.
    fn log_eval(
        &mut self,
        backend: &Backend,
        tokenizer: &tokenizers::Tokenizer,
        pad_id: u32,
        eval_set: &[TokenizedExample],
        batch_size: usize,
    ) -> Result<bool> {
        let mut e = timed_eval(
            backend,
            pad_id,
            eval_set,
            batch_size,
            self.st.global_step,
            self.st.epoch,
        )?;
        let l = e.eval_loss.unwrap_or(f64::NAN);
        self.last_eval = Some(l);
        if let Some(cfg) = &self.accuracy {
            let a = evaluate_accuracy(backend, tokenizer, eval_set, cfg)?;
            self.last_accuracy = Some(a.accuracy);
            e.eval_accuracy = Some(a.accuracy);
        }
        let metrics = EvalMetrics {
            eval_loss: l,
            eval_accuracy: e.eval_accuracy,
        };
        self.push_log(e)?;
        self.plot()?;
        let Some(best) = &self.best else {
            return Ok(false);
        };
        let seen = best.observe(&mut self.st, &metrics);
        if seen.stop {
            self.progress.note(&format!(
                "early stopping: {} has not improved for {} evaluations (best {:.4} at step {})",
                best.metric,
                self.st.early_stopping_patience_counter,
                self.st.best_metric.unwrap_or(f64::NAN),
                self.st.best_global_step.unwrap_or(0)
            ));
        }
        Ok(seen.stop)
    }

    /// Redraws the loss curve, on the rank that logs.
    fn plot(&self) -> Result<()> {
        match &self.log {
            Some(log) => log.plot(&self.st.log_history),
            None => Ok(()),
        }
    }

    /// The save hook: `checkpoint-{step}/` with adapter, optimizer, scheduler, RNG and data
    /// position (from the host copies the backend syncs), then rotation.
    /// Every rank sends its dropout stream to rank 0, which alone writes.
    fn save(
        &mut self,
        backend: &mut Backend,
        lora: &LoraConfig,
        args: &TrainArgs,
        dist: &dyn Collective,
    ) -> Result<()> {
        let mine = rng::state();
        let all = dist.all_gather_u64(&[mine.seed, mine.offset])?;
        if !self.main {
            return Ok(());
        }
        let data_parallel = (self.ranks > 1).then(|| distributed::ranks::DataParallelState {
            world_size: self.ranks,
            per_device_train_batch_size: args.per_device_train_batch_size,
            global_train_batch_size: global_batch(args, self.ranks),
            dropout: distributed::ranks::states_from_gather(&all),
        });
        let dir = args
            .output_dir
            .join(format!("checkpoint-{}", self.st.global_step));
        if let Some(best) = &self.best {
            best.on_save(&mut self.st, &dir);
        }
        let names = backend.parameter_names().to_vec();
        let model = backend.model();
        let opt = backend.checkpoint_state()?;
        let rngf = RngFile {
            dropout: mine,
            sampler: self.sampler.state(),
            data_parallel,
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
        let best_dir = self.st.best_model_checkpoint.as_deref().map(Path::new);
        for removed in state::rotate_keeping(&args.output_dir, args.save_total_limit, best_dir)? {
            self.progress
                .note(&format!("removed old checkpoint {}", removed.display()));
        }
        self.last_saved = Some(dir);
        Ok(())
    }
}

/// An evaluation row with Hugging Face's speed fields (`eval_runtime`, per-second rates).
fn timed_eval(
    backend: &Backend,
    pad_id: u32,
    eval_set: &[TokenizedExample],
    batch_size: usize,
    step: u64,
    epoch: f64,
) -> Result<LogEntry> {
    let t = Instant::now();
    let (l, _) = evaluate(backend, pad_id, eval_set, batch_size)?;
    let secs = t.elapsed().as_secs_f64().max(1e-9);
    let batches = eval_set.len().div_ceil(batch_size.max(1));
    let round = |x: f64| (x * 1e3).round() / 1e3;
    Ok(LogEntry {
        eval_runtime: Some(round(secs)),
        eval_samples_per_second: Some(round(eval_set.len() as f64 / secs)),
        eval_steps_per_second: Some(round(batches as f64 / secs)),
        ..LogEntry::eval(step, epoch, l)
    })
}

/// Examples per optimizer step over all ranks.
fn global_batch(args: &TrainArgs, ranks: usize) -> usize {
    ranks * args.per_device_train_batch_size * args.gradient_accumulation_steps
}

/// `trainer_state.json` at step 0.
pub(crate) fn fresh_state(args: &TrainArgs, max_steps: u64) -> TrainerState {
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
        early_stopping_patience_counter: 0,
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
    let device = device_request(args)?;
    train_with(
        session,
        args,
        train_set,
        eval_set,
        stop,
        &SingleRank,
        device,
    )
}

/// [`train`] as one rank of `dist` (every rank calls it with the same data and flags), on
/// `device`. Rank 0 evaluates alone (the other ranks wait in the next step's all-reduce).
pub fn train_with(
    session: &mut Session,
    args: &TrainArgs,
    train_set: &[TokenizedExample],
    eval_set: &[TokenizedExample],
    stop: Arc<AtomicBool>,
    dist: &dyn Collective,
    device: DeviceRequest,
) -> Result<TrainSummary> {
    check_args(args)?;
    let eval_set = if dist.is_main() { eval_set } else { &[] };
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
    let (mut backend, where_) = Backend::open(device, &session.model, adamw_config(args))?;
    println!("{where_}");
    if dist.size() > 1 {
        println!(
            "data parallel: {}; global batch {} = {} ranks x {} per device x {} accumulation",
            dist.describe(),
            global_batch(args, dist.size()),
            dist.size(),
            args.per_device_train_batch_size,
            args.gradient_accumulation_steps
        );
    }
    if backend.is_cuda() && !args.bf16 {
        eprintln!(
            "note: the CUDA step computes in bf16 with fp32 accumulation and fp32 adapters; \
             for fp32 activations train with --device cpu"
        );
    }

    let plan = StepPlan::new(args, train_set, dist.size())?;
    let mut run = Run::start(args, &plan, resume_dir.as_deref(), &mut backend, dist)?;
    if args.predict_with_generate {
        run.accuracy = Some(AccuracyConfig {
            max_new_tokens: args.generation_max_new_tokens,
            batch_size: args.per_device_eval_batch_size,
            max_samples: args.eval_accuracy_samples,
            stop_ids: session.stop_ids.clone(),
            pad_id,
        });
        run.first_accuracy = run.st.log_history.iter().find_map(|e| e.eval_accuracy);
        run.last_accuracy = run
            .st
            .log_history
            .iter()
            .rev()
            .find_map(|e| e.eval_accuracy);
    }
    println!(
        "{}\n  {}",
        backend.model().param_counts(),
        crate::commands::PARAM_COUNT_NOTE
    );
    if run.first_eval.is_none() && !eval_set.is_empty() {
        let mut e = timed_eval(
            &backend,
            pad_id,
            eval_set,
            args.per_device_eval_batch_size,
            0,
            0.0,
        )?;
        let l = e.eval_loss.unwrap_or(f64::NAN);
        let n = eval_set.len();
        if let Some(cfg) = &run.accuracy {
            let a = evaluate_accuracy(&backend, &session.tokenizer, eval_set, cfg)?;
            println!(
                "eval before training: eval_loss {l:.4} over {n} examples, eval_accuracy \
                 {:.3} ({}/{} answers right)",
                a.accuracy, a.correct, a.total
            );
            e.eval_accuracy = Some(a.accuracy);
            run.first_accuracy = Some(a.accuracy);
        } else {
            println!("eval before training: eval_loss {l:.4} over {n} examples");
        }
        run.first_eval = Some(l);
        if let Some(log) = &mut run.log {
            log.write(&e)?;
        }
        run.st.log_history.push(e);
    }

    let mut interrupted = false;
    let mut early_stopped = false;
    while run.st.global_step < plan.max_steps {
        let Some(window) = run.next_window(&plan, train_set, pad_id, dist)? else {
            continue;
        };
        let outcome = run.step(&mut backend, &window, args.max_grad_norm, dist)?;
        drop(window);
        run.record(&outcome, &plan, backend.peak_bytes());

        let step = run.st.global_step;
        let at_end = step == plan.max_steps;
        if step.is_multiple_of(args.logging_steps) || at_end {
            run.log_train(&outcome)?;
        }
        if !eval_set.is_empty() && (step.is_multiple_of(args.eval_steps) || at_end) {
            early_stopped = run.log_eval(
                &backend,
                &session.tokenizer,
                pad_id,
                eval_set,
                args.per_device_eval_batch_size,
            )? && !at_end;
        }
        // A signal may reach the ranks at different steps: they stop together if any saw it.
        // Rank 0 alone evaluates, so its early-stopping decision travels the same way.
        let mut stopping = [
            u64::from(stop.load(Ordering::SeqCst)),
            u64::from(early_stopped),
        ];
        dist.all_reduce_sum_u64(&mut stopping)?;
        early_stopped = stopping[1] > 0;
        interrupted = stopping[0] > 0
            || (args.stop_after_steps > 0
                && run.steps_this_run >= args.stop_after_steps
                && !at_end);
        if step.is_multiple_of(args.save_steps) || at_end || interrupted || early_stopped {
            run.save(&mut backend, &lora, args, dist)?;
        }
        if interrupted || early_stopped {
            break;
        }
    }
    run.progress.finish();
    if !interrupted {
        // Hugging Face's closing row: this process's runtime and throughput, the run's loss.
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        let round = |x: f64| (x * 1e4).round() / 1e4;
        let st = &run.st;
        let e = LogEntry {
            step: st.global_step,
            epoch: round(st.epoch),
            train_runtime: Some(round(secs)),
            train_samples_per_second: Some(round(run.samples_this_run as f64 / secs)),
            train_steps_per_second: Some(round(run.steps_this_run as f64 / secs)),
            train_loss: Some(st.total_loss / st.global_step.max(1) as f64),
            ..LogEntry::default()
        };
        if let Some(log) = &mut run.log {
            log.write(&e)?;
        }
        run.st.log_history.push(e);
    }
    run.plot()?;
    let best_dir =
        run.st.best_model_checkpoint.clone().filter(|_| {
            run.best.as_ref().is_some_and(|b| b.load_at_end) && !interrupted && run.main
        });
    let adapter_dir = if interrupted || !run.main {
        run.last_saved.clone().unwrap_or_else(|| out.clone())
    } else if best_dir.is_none() {
        backend.sync_adapters_to_host()?;
        model_falcon::peft::save_adapter(
            out,
            &lora,
            &model_falcon::lora_weights(backend.model())?,
        )?;
        crate::model_card::write(
            out,
            &crate::model_card::CardInputs {
                args,
                lora: &lora,
                history: &run.st.log_history,
                train_examples: train_set.len(),
                eval_examples: eval_set.len(),
                params: backend.model().param_counts(),
            },
        )?;
        out.clone()
    } else {
        out.clone()
    };
    let peak_device_bytes = backend.peak_device_bytes();
    drop(backend);
    if let Some(dir) = &best_dir {
        // The host model takes the best checkpoint's adapters, so that what the caller
        // generates with next is the model written as the run's adapter.
        let (cfg, weights) = load_adapter(Path::new(dir), &session.model.config)?;
        load_lora(&mut session.model, &cfg, &weights)?;
        model_falcon::peft::save_adapter(out, &cfg, &weights)?;
        crate::model_card::write(
            out,
            &crate::model_card::CardInputs {
                args,
                lora: &lora,
                history: &run.st.log_history,
                train_examples: train_set.len(),
                eval_examples: eval_set.len(),
                params: session.model.param_counts(),
            },
        )?;
        println!(
            "loaded the best model from {dir} ({} {:.4})",
            run.best.as_ref().map(|b| b.metric.as_str()).unwrap_or(""),
            run.st.best_metric.unwrap_or(f64::NAN)
        );
    }
    let st = &run.st;
    Ok(TrainSummary {
        global_step: st.global_step,
        max_steps: plan.max_steps,
        train_loss: st.total_loss / st.global_step.max(1) as f64,
        first_eval_loss: run.first_eval,
        last_eval_loss: run.last_eval,
        first_eval_accuracy: run.first_accuracy,
        last_eval_accuracy: run.last_accuracy,
        best_model_checkpoint: st.best_model_checkpoint.clone(),
        best_metric: st.best_metric,
        loaded_best: best_dir.is_some(),
        early_stopped,
        adapter_dir,
        interrupted,
        seconds: start.elapsed().as_secs_f64(),
        tokens_seen: st.num_input_tokens_seen,
        peak_host_bytes: engine::memory::global_counter().peak_bytes(),
        peak_device_bytes,
        ranks: dist.size(),
        global_batch: global_batch(args, dist.size()),
    })
}
