//! `trainer`: QLoRA fine-tuning of Falcon models in one binary.

use anyhow::Result;
use trainer::args::{Command, DemoArgs};
use trainer::{commands, demo, signals, train_cmd};

fn run() -> Result<()> {
    let argv = trainer::args::expand_config(trainer::validate::utf8_args(std::env::args_os())?)?;
    let cli = trainer::args::parse_cli(argv)?;
    match cli.command {
        None => demo::run_demo(
            &DemoArgs {
                output_dir: "output/demo".into(),
                seed: 42,
            },
            signals::install(),
        ),
        Some(Command::Demo(a)) => demo::run_demo(&a, signals::install()),
        Some(Command::Train(a)) => train_cmd::run(&a, signals::install()),
        Some(Command::Ask(a)) => commands::ask(&a),
        Some(Command::Generate(a)) => commands::generate(&a),
        Some(Command::Eval(a)) => commands::eval(&a),
        Some(Command::Data(a)) => commands::data(&a),
        Some(Command::Merge(a)) => commands::merge(&a),
        Some(Command::Quantize(a)) => commands::quantize(&a),
        Some(Command::Info(a)) => commands::info(&a),
    }
}

fn main() {
    // CPU training speed: freed activation buffers stay in the process for the next step, and
    // the main thread works as the rayon pool's first worker instead of waking another thread
    // for every parallel op (BENCHMARKS.md, "CPU training step").
    engine::host_alloc::retain_freed_memory();
    let _ = engine::threads::use_calling_thread_in_pool();
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    // A run stopped by a signal saved its checkpoint; its status still says it was stopped.
    if let Some(s) = signals::received() {
        std::process::exit(signals::exit_code(s));
    }
}
