//! `trainer merge`: merge a PEFT adapter into its base and write a bf16 Hugging Face
//! checkpoint (config.json, tokenizer files, sharded safetensors + index) that transformers
//! loads. `W ← W + (alpha/r)·B·A` in fp32 per adapted linear, then bf16; a 4-bit base is
//! dequantized as bitsandbytes does first (see `model_falcon::merge`).

use crate::args::MergeArgs;
use anyhow::{bail, Context, Result};
use model_falcon::merge::{merge_adapter, ExportSummary};
use model_falcon::peft::load_adapter;
use model_falcon::FalconCheckpoint;
use std::path::Path;
use std::time::Instant;

/// Parses a shard size as transformers' `max_shard_size` does: a byte count, or a number
/// with a unit: KB/MB/GB (powers of 1000) or KiB/MiB/GiB (powers of 1024), case-insensitive.
pub(crate) fn parse_size(text: &str) -> Result<usize> {
    let bytes = crate::validate::parse_size_flag("--max-shard-size", text)?;
    usize::try_from(bytes).context("--max-shard-size is too large for this machine")
}

/// Prints what an export wrote.
pub(crate) fn print_summary(what: &str, out: &Path, s: &ExportSummary, seconds: f64) {
    println!(
        "{what}: {} tensors ({:.1} MB) in {} shard{} written to {} in {seconds:.1} s",
        s.tensors,
        s.tensor_bytes as f64 / 1e6,
        s.shards,
        if s.shards == 1 { "" } else { "s" },
        out.display()
    );
    for f in &s.files {
        println!("  {}", f.display());
    }
}

pub fn merge(a: &MergeArgs) -> Result<()> {
    let max_shard = a.max_shard_size.as_deref().map(parse_size).transpose()?;
    if !a.model.is_dir() {
        bail!("model directory {} does not exist", a.model.display());
    }
    if !a.adapter.is_dir() {
        bail!("adapter directory {} does not exist", a.adapter.display());
    }
    let start = Instant::now();
    let ckpt = FalconCheckpoint::open(&a.model)
        .with_context(|| format!("opening the base checkpoint {}", a.model.display()))?;
    let (lora, weights) = load_adapter(&a.adapter, ckpt.config())
        .with_context(|| format!("loading the adapter in {}", a.adapter.display()))?;
    let summary = merge_adapter(&ckpt, &lora, &weights, &a.out, max_shard)
        .with_context(|| format!("writing the merged checkpoint to {}", a.out.display()))?;
    println!(
        "merged {} adapted modules (r={}, scaling {}){}",
        summary.modules,
        lora.r,
        lora.scaling(),
        if ckpt.is_prequantized() {
            " into the dequantized 4-bit base"
        } else {
            ""
        }
    );
    print_summary("merge", &a.out, &summary, start.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_like_transformers() {
        assert_eq!(parse_size("5GB").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("500mb").unwrap(), 500_000_000);
        assert_eq!(parse_size("1.5KiB").unwrap(), 1536);
        assert_eq!(parse_size("40000").unwrap(), 40_000);
        for bad in ["", "GB", "5TB", "-1GB", "0", "abc"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
