//! `trainer`: QLoRA fine-tuning of Falcon models in one binary.

use anyhow::Result;
use clap::Parser;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use trainer::args::{Cli, Command, DemoArgs};
use trainer::{commands, demo, train_cmd};

fn install_ctrl_c() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // First Ctrl-C: finish the current step, save a checkpoint, exit. Second: exit at once.
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted again: exiting without saving");
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupt: saving a checkpoint after the current step (Ctrl-C again to abort)"
        );
    });
    stop
}

fn run() -> Result<()> {
    let argv = trainer::args::expand_config(std::env::args().collect())?;
    let cli = Cli::parse_from(argv);
    let stop = install_ctrl_c();
    match cli.command {
        None => demo::run_demo(
            &DemoArgs {
                output_dir: "output/demo".into(),
                seed: 42,
            },
            stop,
        ),
        Some(Command::Demo(a)) => demo::run_demo(&a, stop),
        Some(Command::Train(a)) => train_cmd::run(&a, stop),
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
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
