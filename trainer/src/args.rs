//! Command-line flags, named like Hugging Face `TrainingArguments`, `LoraConfig` and
//! `BitsAndBytesConfig` in kebab case, with the seed tutorial's values as defaults.
//!
//! Boolean flags accept `--flag`, `--flag true` and `--flag false` (as HF's argument parser);
//! list flags take comma-separated values. `--config FILE` reads a TOML file with the same
//! names (snake_case or kebab-case keys); flags on the command line override it.

use anyhow::{bail, Context, Result};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(name = "trainer", version, args_override_self = true, about = "QLoRA fine-tuning of Falcon models on FinQA (or any prompt/completion data), in one binary.", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Fine-tune a model with QLoRA (or plain LoRA with --quant none).
    // Negative values reach the range checks (`--max-grad-norm -1` is reported as out of
    // range, `--max-steps -1` is HF's "use the epochs") instead of being taken for flags.
    #[command(allow_negative_numbers = true)]
    Train(Box<TrainArgs>),
    /// Answer a FinQA-style question with a model and adapter (greedy, as the seed's ask_model).
    Ask(AskArgs),
    /// Continue a raw prompt.
    Generate(GenerateArgs),
    /// Evaluation loss and answer accuracy on a data file.
    Eval(EvalArgs),
    /// Show what the model will see: summary of formatted and tokenized examples.
    Data(DataArgs),
    /// Merge an adapter into the base and write a bf16 Hugging Face checkpoint.
    Merge(MergeArgs),
    /// Quantize a checkpoint to NF4 in the bitsandbytes serialization.
    Quantize(QuantizeArgs),
    /// Config summary, parameter counts and a memory estimate.
    Info(InfoArgs),
    /// The built-in demonstration (the default when no subcommand is given).
    Demo(DemoArgs),
}

/// Options of every subcommand that loads a base model.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// How the frozen base is stored: nf4, fp4 or none (f32, plain LoRA).
    #[arg(long, default_value = "nf4")]
    pub quant: String,
    /// Double quantization of the 4-bit statistics.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    pub double_quant: bool,
}

#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct TrainArgs {
    /// Read flags from a TOML file (same names; command-line flags win).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Base model directory; omit to train the built-in tiny model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Training data (FinQA JSON, HF export JSON/JSONL, or prompt/completion JSONL); omit for
    /// synthetic FinQA-style data.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Validation data (default: a --val-fraction split of --data).
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Where checkpoints, metrics.jsonl, loss.png and the final adapter go.
    #[arg(long, default_value = "output")]
    pub output_dir: PathBuf,
    /// Data layout: auto (detect), finqa (original release), hf (flat export columns), jsonl (prompt/completion).
    #[arg(long, default_value = "auto", value_parser = ["auto", "finqa", "hf", "jsonl"])]
    pub data_format: String,
    /// Fraction of --data held out for evaluation when --eval-data is not given (deterministic by --seed).
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// Longest training sequence in tokens (prompt + answer + EOS).
    #[arg(long, default_value_t = 512)]
    pub max_length: usize,
    /// keep-answer (cut the context, never the answer), seed (right truncation), evidence.
    #[arg(long, default_value = "keep-answer")]
    pub truncation: String,
    /// Fail on the first bad record instead of skipping it with a warning.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    pub strict_data: bool,
    /// Examples per micro-batch.
    #[arg(long, default_value_t = 2)]
    pub per_device_train_batch_size: usize,
    /// Examples per evaluation batch.
    #[arg(long, default_value_t = 2)]
    pub per_device_eval_batch_size: usize,
    /// Micro-batches per optimizer step; the loss is the token-level mean over the whole window.
    #[arg(long, default_value_t = 8)]
    pub gradient_accumulation_steps: usize,
    /// Epochs to train (fractional values allowed); ignored when --max-steps > 0.
    #[arg(long, default_value_t = 10.0)]
    pub num_train_epochs: f64,
    /// Total optimizer steps; overrides --num-train-epochs when > 0 (-1, the default, or 0:
    /// train --num-train-epochs).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub max_steps: i64,
    /// Peak learning rate of AdamW.
    #[arg(long, default_value_t = 2e-5)]
    pub learning_rate: f64,
    /// Learning-rate schedule (HF semantics: the first step uses lr 0 when warming up).
    #[arg(long, default_value = "linear", value_parser = ["linear", "cosine", "constant", "constant_with_warmup"])]
    pub lr_scheduler_type: String,
    /// Linear warmup steps (takes precedence over --warmup-ratio).
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: u64,
    /// Warmup as a fraction of the total steps (ceil), used when --warmup-steps is 0.
    #[arg(long, default_value_t = 0.0)]
    pub warmup_ratio: f64,
    /// Decoupled AdamW weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// AdamW beta1.
    #[arg(long, default_value_t = 0.9)]
    pub adam_beta1: f64,
    /// AdamW beta2.
    #[arg(long, default_value_t = 0.999)]
    pub adam_beta2: f64,
    /// AdamW epsilon (added after the bias-corrected square root, as torch).
    #[arg(long, default_value_t = 1e-8)]
    pub adam_epsilon: f64,
    /// Global gradient-norm clipping; 0 disables it.
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Log train loss, grad norm, lr and tokens/s every N optimizer steps.
    #[arg(long, default_value_t = 10)]
    pub logging_steps: u64,
    /// Evaluate on the validation set every N optimizer steps (and at the end).
    #[arg(long, default_value_t = 10)]
    pub eval_steps: u64,
    /// Write checkpoint-N every N optimizer steps (and at the end).
    #[arg(long, default_value_t = 200)]
    pub save_steps: u64,
    /// Keep at most this many checkpoint-* folders (0 keeps all).
    #[arg(long, default_value_t = 2)]
    pub save_total_limit: usize,
    /// Seed of LoRA init, dropout, shuffling and the train/validation split.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// bf16 compute on the GPU (the CPU backend always computes in fp32).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    pub bf16: bool,
    /// Recompute each decoder layer in backward instead of storing its activations.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    pub gradient_checkpointing: bool,
    /// Batch examples of similar length together.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    pub group_by_length: bool,
    /// LoRA rank r.
    #[arg(long, default_value_t = 8)]
    pub lora_r: usize,
    /// LoRA alpha (scaling = alpha / r, or alpha / sqrt(r) with --use-rslora).
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f64,
    /// Dropout on the input of lora_A during training.
    #[arg(long, default_value_t = 0.05)]
    pub lora_dropout: f64,
    /// Comma-separated module names, or all-linear.
    #[arg(long, default_value = "query_key_value")]
    pub target_modules: String,
    /// Rank-stabilized LoRA scaling alpha / sqrt(r).
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    pub use_rslora: bool,
    /// nf4, fp4 or none.
    #[arg(long, default_value = "nf4")]
    pub quant: String,
    /// Double quantization of the 4-bit statistics (bitsandbytes bnb_4bit_use_double_quant).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    pub double_quant: bool,
    /// Start from an existing PEFT adapter directory.
    #[arg(long)]
    pub init_adapter: Option<PathBuf>,
    /// Resume from the newest checkpoint in --output-dir.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    pub resume: bool,
    /// Resume from this checkpoint directory.
    #[arg(long)]
    pub resume_from: Option<PathBuf>,
    /// Stop (with a checkpoint) after this many optimizer steps of this invocation; for tests
    /// and time-boxed runs. 0 = no limit.
    #[arg(long, default_value_t = 0, hide = true)]
    pub stop_after_steps: u64,
    /// Do not draw a progress bar (log lines only).
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    pub no_progress: bool,
    /// Train on the CPU even when a CUDA GPU works (TrainingArguments.use_cpu).
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    pub use_cpu: bool,
    /// Where the step runs: auto (GPU 0 when it works and the model runs there, else the CPU),
    /// cpu, cuda, cuda:N, or emulator (the CUDA step on a host emulator of the GPU: slow, for
    /// testing the GPU path without one).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// What to do when a step's loss or gradient norm is NaN or infinite: skip (leave the
    /// adapter and optimizer untouched, warn, and stop after 10 such steps in a row) or stop
    /// (fail at once). A non-finite update never reaches the adapter or a checkpoint.
    #[arg(long, default_value = "skip", value_parser = ["skip", "stop"])]
    pub on_nonfinite: String,
    /// Largest data file read, e.g. 1GiB, 500MB or a byte count; a bigger file is refused
    /// before it is read, so that a wrong path cannot exhaust memory.
    #[arg(long, default_value = "2GiB")]
    pub max_data_size: String,
    /// Flags given on the command line or in the config file (clap argument ids), as opposed
    /// to defaults: on resume only these may contradict the checkpoint's flags, the others are
    /// taken from the checkpoint's `training_args.json`.
    #[arg(skip)]
    #[serde(skip)]
    pub explicit: BTreeSet<String>,
}

#[derive(Args, Debug, Clone)]
pub struct AskArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// PEFT adapter directory (adapter_config.json + adapter_model.safetensors), e.g. the
    /// output of `trainer train`; omit to ask the base model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// The question; defaults to the question of the --context-file record.
    #[arg(long)]
    pub question: Option<String>,
    /// The context: a FinQA record as JSON (original release or Hugging Face flat columns;
    /// a file holding exactly one record), or a plain text file used as pre_text.
    #[arg(long, conflicts_with_all = ["pre_text", "table", "post_text"])]
    pub context_file: Option<PathBuf>,
    /// With --context-file naming a data file of many records (any format `trainer train`
    /// reads): the id of the record to use.
    #[arg(long, requires = "context_file")]
    pub record_id: Option<String>,
    /// Text before the table (pre_text).
    #[arg(long, default_value = "")]
    pub pre_text: String,
    /// Table rows separated by newlines, cells by '|'.
    #[arg(long, default_value = "")]
    pub table: String,
    /// Text after the table (post_text).
    #[arg(long, default_value = "")]
    pub post_text: String,
    /// Most tokens to generate (the seed's ask_model uses 15).
    #[arg(long, default_value_t = 15)]
    pub max_new_tokens: usize,
    /// Cut the context as training's keep-answer policy does so that prompt plus
    /// --max-new-tokens fit in this many tokens (e.g. the --max-length used in training);
    /// 0 keeps the whole context, as the seed's ask_model does.
    #[arg(long, default_value_t = 0)]
    pub max_length: usize,
    /// Also print the prompt (to stderr) and the full generated text.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    pub verbose: bool,
}

#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// PEFT adapter directory to apply on top of the base (optional).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Raw text to continue (no template, no special tokens added).
    #[arg(long)]
    pub prompt: String,
    /// Most tokens to generate; generation also stops at the end-of-sequence token.
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 = greedy (argmax).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling: sample from the smallest set of tokens whose probability reaches
    /// this mass (with --temperature > 0).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Seed of the sampling random numbers (with --temperature > 0).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Print exactly one JSON object {"token_ids": [new ids], "text": "..."} on stdout.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// PEFT adapter directory to evaluate (omit to evaluate the base model).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Evaluation data (FinQA JSON, HF export JSON/JSONL, or prompt/completion JSONL).
    #[arg(long)]
    pub data: PathBuf,
    /// Record layout of --data; auto decides from the first record.
    #[arg(long, default_value = "auto", value_parser = ["auto", "finqa", "hf", "jsonl"])]
    pub data_format: String,
    /// Longest tokenized example (prompt + answer + EOS), as in training.
    #[arg(long, default_value_t = 512)]
    pub max_length: usize,
    /// keep-answer (cut the context, never the answer), seed (right truncation), evidence.
    #[arg(long, default_value = "keep-answer")]
    pub truncation: String,
    /// Examples per forward pass (loss) and prompts per generation batch (left-padded).
    #[arg(long, default_value_t = 2)]
    pub batch_size: usize,
    /// Generate answers and score accuracy (FinQA data only).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    pub generate: bool,
    /// Most tokens generated per answer (greedy).
    #[arg(long, default_value_t = 15)]
    pub max_new_tokens: usize,
    /// Evaluate only the first N records of --data (0 = all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// Per-example predictions (JSONL); default: predictions.jsonl in the adapter directory,
    /// or in the working directory without --adapter.
    #[arg(long)]
    pub predictions: Option<PathBuf>,
    /// Print one JSON object with the results on stdout (and nothing else).
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Data file (FinQA JSON, HF export JSON/JSONL, or prompt/completion JSONL).
    #[arg(long)]
    pub data: PathBuf,
    /// Model directory whose tokenizer.json (and eos id) to use.
    #[arg(
        long,
        conflicts_with = "tokenizer",
        required_unless_present = "tokenizer"
    )]
    pub model: Option<PathBuf>,
    /// A tokenizer.json file (eos = its `<|endoftext|>` token).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Record layout of --data; auto decides from the first record.
    #[arg(long, default_value = "auto", value_parser = ["auto", "finqa", "hf", "jsonl"])]
    pub data_format: String,
    /// Longest tokenized example (prompt + answer + EOS).
    #[arg(long, default_value_t = 512)]
    pub max_length: usize,
    /// keep-answer (cut the context, never the answer), seed (right truncation), evidence.
    #[arg(long, default_value = "keep-answer")]
    pub truncation: String,
    /// Write every formatted example (prompt, target, token counts) as JSONL here.
    #[arg(long)]
    pub dump: Option<PathBuf>,
    /// Print the summary as one JSON object on stdout.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct MergeArgs {
    /// Base checkpoint directory (bf16/f16/f32, or bitsandbytes 4-bit: dequantized first).
    #[arg(long)]
    pub model: PathBuf,
    /// PEFT adapter directory (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    pub adapter: PathBuf,
    /// Output directory for the merged bf16 checkpoint (must not be the base directory).
    #[arg(long)]
    pub out: PathBuf,
    /// Largest weight shard, e.g. 5GB, 500MB, 2GiB or a byte count (default: as many shards
    /// as the base checkpoint has).
    #[arg(long)]
    pub max_shard_size: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct QuantizeArgs {
    /// Checkpoint directory to quantize (bf16/f16/f32 safetensors).
    #[arg(long)]
    pub model: PathBuf,
    /// Output directory for the 4-bit checkpoint (must not be the source directory).
    #[arg(long)]
    pub out: PathBuf,
    /// 4-bit data type: nf4 or fp4 (bnb_4bit_quant_type).
    #[arg(long, default_value = "nf4")]
    pub quant: String,
    /// Double quantization of the absmax statistics (bnb_4bit_use_double_quant).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    pub double_quant: bool,
    /// Largest weight shard, e.g. 5GB, 500MB, 2GiB or a byte count (default: as many shards
    /// as the source checkpoint has).
    #[arg(long)]
    pub max_shard_size: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct InfoArgs {
    /// Hugging Face checkpoint directory; only config.json is read (no weights are loaded).
    #[arg(long)]
    pub model: PathBuf,
    /// How the frozen base would be stored: nf4, fp4 or none (f32).
    #[arg(long, default_value = "nf4")]
    pub quant: String,
    /// Double quantization of the 4-bit statistics.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    pub double_quant: bool,
    /// Micro-batch size of the memory estimate.
    #[arg(long, default_value_t = 2)]
    pub per_device_train_batch_size: usize,
    /// Sequence length of the memory estimate.
    #[arg(long, default_value_t = 512)]
    pub max_length: usize,
    /// LoRA rank for the trainable-parameter count.
    #[arg(long, default_value_t = 8)]
    pub lora_r: usize,
    /// LoRA dropout of the memory estimate (the device step keeps a dropped-out copy of each
    /// adapted linear's input when it is above 0).
    #[arg(long, default_value_t = 0.05)]
    pub lora_dropout: f64,
    /// Comma-separated LoRA target module names, or all-linear.
    #[arg(long, default_value = "query_key_value")]
    pub target_modules: String,
    /// Print one JSON object on stdout.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    pub json: bool,
    /// Also print the performance model's PREDICTED speed of the CUDA training step on this
    /// GPU (h200, h100, a100, rtx4090, rtx3090).
    #[arg(long)]
    pub gpu: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Where the demo writes its base model, checkpoints and adapter.
    #[arg(long, default_value = "output/demo")]
    pub output_dir: PathBuf,
    /// Seed of the built-in model, data, tokenizer and training.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Turns a TOML config file into command-line tokens (`--key value`) placed before the real
/// arguments, so clap applies one set of rules and later (command-line) flags win.
pub fn config_file_tokens(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{}: invalid TOML", path.display()))?;
    let mut out = Vec::new();
    for (key, value) in table {
        let flag = format!("--{}", key.replace('_', "-"));
        let v = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|i| match i {
                    toml::Value::String(s) => Ok(s.clone()),
                    other => bail!(
                        "{}: `{key}`: list items must be strings, got {other}",
                        path.display()
                    ),
                })
                .collect::<Result<Vec<_>>>()?
                .join(","),
            other => bail!("{}: `{key}`: unsupported value {other}", path.display()),
        };
        if key == "config" {
            bail!(
                "{}: a config file cannot name another config file",
                path.display()
            );
        }
        out.push(flag);
        out.push(v);
    }
    Ok(out)
}

/// Expands `--config FILE` in `argv` (for the train subcommand) into the file's flags.
pub fn expand_config(argv: Vec<String>) -> Result<Vec<String>> {
    let Some(pos) = argv
        .iter()
        .position(|a| a == "--config" || a.starts_with("--config="))
    else {
        return Ok(argv);
    };
    let (path, consumed) = if let Some(p) = argv[pos].strip_prefix("--config=") {
        (PathBuf::from(p), 1)
    } else {
        let p = argv.get(pos + 1).context("--config needs a file path")?;
        (PathBuf::from(p), 2)
    };
    let sub = argv
        .iter()
        .position(|a| a == "train")
        .context("--config is an option of `trainer train`")?;
    let tokens = config_file_tokens(&path)?;
    let mut out: Vec<String> = argv[..=sub].to_vec();
    out.extend(tokens);
    out.extend(argv[sub + 1..pos].iter().cloned());
    out.extend(argv[pos + consumed..].iter().cloned());
    Ok(out)
}

/// Parses the command line as [`Cli::parse_from`] does (usage errors and `--help` exit the
/// process with clap's message), and records for `train` which flags were given explicitly.
pub fn parse_cli(argv: Vec<String>) -> Result<Cli> {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches_from(argv);
    let mut cli = Cli::from_arg_matches(&matches).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let (Some(Command::Train(t)), Some(("train", sub))) =
        (&mut cli.command, matches.subcommand())
    {
        t.explicit = explicit_ids(sub);
    }
    Ok(cli)
}

/// Argument ids whose value came from the command line (config-file values are expanded into
/// command-line tokens, so they count too), not from a default.
pub fn explicit_ids(m: &ArgMatches) -> BTreeSet<String> {
    m.ids()
        .filter(|id| m.value_source(id.as_str()) == Some(ValueSource::CommandLine))
        .map(|id| id.as_str().to_string())
        .collect()
}

impl TrainArgs {
    /// Every flag at its default (the seed's values).
    pub fn defaults() -> Self {
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            t: TrainArgs,
        }
        Wrap::parse_from(["trainer"]).t
    }
}
