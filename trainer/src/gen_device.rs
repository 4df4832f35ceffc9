//! Where `ask` and `eval` generate: the `--device` rules of `train` (auto, cpu, cuda, cuda:N,
//! emulator) through [`Backend::open`], and `--merge` for a merged bf16 copy of the weights on a
//! CUDA device. Generation itself is [`Backend::generate_batch`], the same call on every device.

use anyhow::{Context, Result};
use clap::{ArgAction, Args};
use engine::optim::AdamWConfig;
use model_falcon::{Backend, DeviceRequest, FalconModel};

/// The device flags of the generating subcommands.
#[derive(Args, Debug, Clone)]
pub struct GenDeviceArgs {
    /// Where generation runs: auto (GPU 0 when it works and the model runs there, else the
    /// CPU), cpu, cuda, cuda:N, or emulator (the CUDA kernels on a host emulator of the GPU:
    /// slow, for testing the GPU path without one). The device path needs an adapter.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// On a CUDA device, generate with a bf16 copy of the base with the adapter merged in
    /// (more memory, fewer launches per token) instead of the 4-bit base plus the adapter.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    pub merge: bool,
}

/// Opens the backend the flags ask for, saying where generation runs (to stderr, unless
/// `quiet`).
pub fn open_generation_backend<'m>(
    a: &GenDeviceArgs,
    model: &'m FalconModel,
    quiet: bool,
) -> Result<Backend<'m>> {
    let req: DeviceRequest = a.device.parse()?;
    let (mut backend, line) = Backend::open(req, model, AdamWConfig::default())?;
    if a.merge {
        match backend
            .merge_for_generation()
            .context("merging the adapter for generation")?
        {
            Some(bytes) if !quiet => eprintln!(
                "generating with the merged bf16 weights ({:.1} MiB on the device)",
                bytes as f64 / (1 << 20) as f64
            ),
            None if !quiet => eprintln!("note: --merge applies to CUDA devices only"),
            _ => {}
        }
    }
    if !quiet {
        // Backend::open words its line for training; the device rules are the same.
        eprintln!("{}", line.replacen("training", "generating", 1));
    }
    Ok(backend)
}
