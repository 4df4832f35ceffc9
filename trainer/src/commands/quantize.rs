//! `trainer quantize`: write a 4-bit (NF4 or FP4, double quantization on by default)
//! checkpoint in the bitsandbytes serialization, with the `quantization_config` transformers
//! writes, so that both this tool and transformers + bitsandbytes load it pre-quantized
//! (see `model_falcon::quantize_export`).

use super::merge::{parse_size, print_summary};
use crate::args::QuantizeArgs;
use anyhow::{bail, Context, Result};
use engine::nf4::{QuantConfig, QuantType};
use model_falcon::checkpoint::TensorRole;
use model_falcon::quantize_export::quantize_checkpoint;
use model_falcon::{dequantize_like_bnb, prequantized_weight, FalconCheckpoint};
use std::time::Instant;

pub fn quantize(a: &QuantizeArgs) -> Result<()> {
    let quant_type = match a.quant.as_str() {
        "nf4" => QuantType::Nf4,
        "fp4" => QuantType::Fp4,
        o => bail!("--quant `{o}`: a 4-bit checkpoint is nf4 or fp4"),
    };
    let max_shard = a.max_shard_size.as_deref().map(parse_size).transpose()?;
    if !a.model.is_dir() {
        bail!("model directory {} does not exist", a.model.display());
    }
    let start = Instant::now();
    let ckpt = FalconCheckpoint::open(&a.model)
        .with_context(|| format!("opening the checkpoint {}", a.model.display()))?;
    let cfg = QuantConfig {
        quant_type,
        blocksize: 64,
        double_quant: a.double_quant,
    };
    let summary = quantize_checkpoint(&ckpt, &a.out, cfg, max_shard)
        .with_context(|| format!("writing the 4-bit checkpoint to {}", a.out.display()))?;
    if let Err(e) = read_back(&a.out) {
        // config.json is what makes the folder a loadable checkpoint: take it away.
        let _ = std::fs::remove_file(a.out.join("config.json"));
        return Err(e.context(format!(
            "the 4-bit checkpoint written to {} does not read back; its config.json was \
             removed so that nothing loads it",
            a.out.display()
        )));
    }
    println!(
        "quantized {} linear modules to {}{} (blocksize 64)",
        summary.modules,
        quant_type.name(),
        if a.double_quant {
            " with double quantization"
        } else {
            ""
        }
    );
    print_summary("quantize", &a.out, &summary, start.elapsed().as_secs_f64());
    Ok(())
}

/// Opens the written checkpoint as `trainer` would and dequantizes every 4-bit module,
/// requiring finite values: a quantize that cannot be loaded must fail here, not later.
fn read_back(out: &std::path::Path) -> Result<()> {
    let ckpt = FalconCheckpoint::open(out)?;
    for t in ckpt.manifest() {
        if !matches!(t.role, TensorRole::LinearWeight { .. }) {
            continue;
        }
        let module = t.name.trim_end_matches(".weight");
        let q = prequantized_weight(&ckpt, module)?
            .with_context(|| format!("{}: `{module}` is not stored as 4-bit", out.display()))?;
        let v = dequantize_like_bnb(&q);
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            bail!(
                "{}: `{module}` dequantizes to {} at element {i}",
                out.display(),
                v[i]
            );
        }
    }
    Ok(())
}
