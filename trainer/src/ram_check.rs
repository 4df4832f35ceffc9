//! Refuses, before any weight is read, a training configuration whose memory estimate
//! (`trainer info`'s, from config.json alone) exceeds the machine's RAM: the alternative is
//! minutes of loading followed by an allocation failure or the OOM killer.
//!
//! On the CPU the whole estimate counts (quantized base, adapters with their optimizer
//! state, activations); when the step may run on a GPU, the host still holds the quantized
//! base and the adapters, so that part counts. `--skip-memory-check` trains anyway (swap,
//! an estimate that is pessimistic for an unusual setup).

use crate::args::{InfoArgs, TrainArgs};
use crate::commands::info::model_info;
use crate::device::device_request;
use anyhow::{bail, Context, Result};
use model_falcon::{DeviceRequest, FalconConfig};
use std::path::Path;

/// `MemTotal` of `/proc/meminfo` in bytes (None where there is no such file).
pub fn machine_ram_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_total(&text)
}

/// The `MemTotal:  N kB` line of a meminfo text, in bytes.
pub fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => n.checked_mul(1024),
        Some(_) => None,
    }
}

/// The host bytes training with `args` needs: `(bytes, what they cover)`.
pub fn host_estimate(
    cfg: &FalconConfig,
    model_dir: &Path,
    args: &TrainArgs,
) -> Result<(u64, &'static str)> {
    let info_args = InfoArgs {
        model: model_dir.to_path_buf(),
        quant: args.quant.clone(),
        double_quant: args.double_quant,
        per_device_train_batch_size: args.per_device_train_batch_size,
        max_length: args.max_length,
        lora_r: args.lora_r,
        lora_dropout: args.lora_dropout,
        target_modules: args.target_modules.clone(),
        json: false,
        gpu: None,
        // The host RAM of this process: one rank's share, whatever the accumulation.
        ranks: 1,
        gradient_accumulation_steps: args.gradient_accumulation_steps,
    };
    let m = model_info(cfg, &info_args)?.memory;
    Ok(match device_request(args)? {
        DeviceRequest::Cpu => (m.total as u64, "training on the CPU"),
        _ => (
            (m.base + m.lora_state) as u64,
            "the host copy of the quantized base and the adapters",
        ),
    })
}

/// The error when `need` bytes exceed `ram` (None: fits).
pub fn refuse_if_too_big(need: u64, what: &str, ram: u64) -> Result<()> {
    if need > ram {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        bail!(
            "this configuration needs about {:.1} GiB of memory ({what}; `trainer info` shows \
             the estimate), more than this machine's {:.1} GiB of RAM: lower \
             --per-device-train-batch-size or --max-length, quantize the base (--quant nf4), or \
             pass --skip-memory-check to train anyway",
            gib(need),
            gib(ram)
        );
    }
    Ok(())
}

/// Checks `args` against the machine, from the model's config.json (no weights read).
pub fn check(model_dir: &Path, args: &TrainArgs) -> Result<()> {
    if args.skip_memory_check {
        return Ok(());
    }
    let Some(ram) = machine_ram_bytes() else {
        return Ok(());
    };
    let path = model_dir.join("config.json");
    let cfg =
        FalconConfig::from_file(&path).with_context(|| format!("reading {}", path.display()))?;
    let (need, what) = host_estimate(&cfg, model_dir, args)?;
    refuse_if_too_big(need, what, ram)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_read_in_bytes() {
        let text = "MemTotal:       24567890 kB\nMemFree:  100 kB\n";
        assert_eq!(parse_mem_total(text), Some(24_567_890 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: x kB\n"), None);
    }

    #[test]
    fn a_config_over_the_ram_is_refused_with_the_way_out() {
        assert!(refuse_if_too_big(10, "x", 10).is_ok());
        let e = refuse_if_too_big(30 << 30, "training on the CPU", 24 << 30)
            .unwrap_err()
            .to_string();
        assert!(e.contains("30.0 GiB") && e.contains("24.0 GiB"), "{e}");
        assert!(e.contains("--skip-memory-check"), "{e}");
    }
}
