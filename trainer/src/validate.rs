//! Range checks of every numeric `train` flag, done before anything is loaded, so that a typo
//! fails in a second with the flag's name and allowed range instead of as a NaN loss (or a
//! silent no-op) an hour later. Also: the command line must be UTF-8.

use crate::args::TrainArgs;
use anyhow::{bail, Context, Result};
use std::ffi::OsString;

/// The process arguments as UTF-8 strings; a non-UTF-8 argument is an error naming it (with
/// its undecodable bytes shown as U+FFFD), not a panic.
pub fn utf8_args(args: impl IntoIterator<Item = OsString>) -> Result<Vec<String>> {
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            a.into_string().map_err(|bad| {
                anyhow::anyhow!(
                    "argument {i} is not valid UTF-8: `{}` (paths and values must be UTF-8)",
                    bad.to_string_lossy()
                )
            })
        })
        .collect()
}

/// A size such as `2GiB`, `500MB` or a byte count (KB/MB/GB powers of 1000, KiB/MiB/GiB
/// powers of 1024, case-insensitive), for the flag `flag`.
pub fn parse_size_flag(flag: &str, text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v > 0.0)
        .with_context(|| {
            format!("{flag} `{text}`: expected e.g. 5GB, 500MB, 2GiB or a byte count")
        })?;
    let mult: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KIB" => 1024.0,
        "MIB" => 1024.0 * 1024.0,
        "GIB" => 1024.0 * 1024.0 * 1024.0,
        u => bail!("{flag} `{text}`: unknown unit `{u}` (use KB, MB, GB, KiB, MiB or GiB)"),
    };
    let bytes = (value * mult).floor();
    if bytes < 1.0 {
        bail!("{flag} `{text}` is less than one byte");
    }
    if bytes >= u64::MAX as f64 {
        bail!("{flag} `{text}` is too large");
    }
    Ok(bytes as u64)
}

fn in_range(flag: &str, v: f64, ok: bool, range: &str) -> Result<()> {
    if !ok {
        bail!("{flag} must be {range}, got {v}");
    }
    Ok(())
}

fn at_least_one(flag: &str, v: u64) -> Result<()> {
    if v == 0 {
        bail!("{flag} must be at least 1, got 0");
    }
    Ok(())
}

/// Checks every numeric `train` flag against its allowed range; the error names the flag,
/// the range and the value given.
pub fn train_args(a: &TrainArgs) -> Result<()> {
    let f = |v: f64| v.is_finite();
    in_range(
        "--learning-rate",
        a.learning_rate,
        f(a.learning_rate) && a.learning_rate > 0.0,
        "a finite number > 0",
    )?;
    in_range(
        "--max-grad-norm",
        a.max_grad_norm,
        f(a.max_grad_norm) && a.max_grad_norm >= 0.0,
        "a finite number >= 0 (0 disables clipping)",
    )?;
    for (flag, v) in [
        ("--adam-beta1", a.adam_beta1),
        ("--adam-beta2", a.adam_beta2),
    ] {
        in_range(flag, v, (0.0..1.0).contains(&v), "in [0, 1)")?;
    }
    in_range(
        "--adam-epsilon",
        a.adam_epsilon,
        f(a.adam_epsilon) && a.adam_epsilon > 0.0,
        "a finite number > 0",
    )?;
    in_range(
        "--weight-decay",
        a.weight_decay,
        f(a.weight_decay) && a.weight_decay >= 0.0,
        "a finite number >= 0",
    )?;
    in_range(
        "--warmup-ratio",
        a.warmup_ratio,
        (0.0..=1.0).contains(&a.warmup_ratio),
        "in [0, 1]",
    )?;
    in_range(
        "--num-train-epochs",
        a.num_train_epochs,
        f(a.num_train_epochs) && a.num_train_epochs >= 0.0,
        "a finite number >= 0",
    )?;
    if a.max_steps <= 0 && a.num_train_epochs <= 0.0 {
        bail!("give --max-steps > 0 or --num-train-epochs > 0");
    }
    in_range(
        "--val-fraction",
        a.val_fraction,
        (0.0..1.0).contains(&a.val_fraction),
        "in [0, 1)",
    )?;
    in_range(
        "--lora-dropout",
        a.lora_dropout,
        (0.0..1.0).contains(&a.lora_dropout),
        "in [0, 1)",
    )?;
    in_range(
        "--lora-alpha",
        a.lora_alpha,
        f(a.lora_alpha) && a.lora_alpha > 0.0,
        "a finite number > 0",
    )?;
    at_least_one("--lora-r", a.lora_r as u64)?;
    at_least_one(
        "--per-device-train-batch-size",
        a.per_device_train_batch_size as u64,
    )?;
    at_least_one(
        "--per-device-eval-batch-size",
        a.per_device_eval_batch_size as u64,
    )?;
    at_least_one(
        "--gradient-accumulation-steps",
        a.gradient_accumulation_steps as u64,
    )?;
    at_least_one("--max-length", a.max_length as u64)?;
    at_least_one("--logging-steps", a.logging_steps)?;
    at_least_one("--eval-steps", a.eval_steps)?;
    at_least_one("--save-steps", a.save_steps)?;
    parse_size_flag("--max-data-size", &a.max_data_size)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    #[test]
    fn every_out_of_range_flag_is_named() {
        type Set = fn(&mut TrainArgs);
        let cases: [(&str, Set); 14] = [
            ("--learning-rate", |a| a.learning_rate = f64::NAN),
            ("--learning-rate", |a| a.learning_rate = 0.0),
            ("--max-grad-norm", |a| a.max_grad_norm = f64::INFINITY),
            ("--max-grad-norm", |a| a.max_grad_norm = -1.0),
            ("--adam-beta1", |a| a.adam_beta1 = 1.0),
            ("--adam-beta2", |a| a.adam_beta2 = -0.1),
            ("--adam-epsilon", |a| a.adam_epsilon = 0.0),
            ("--warmup-ratio", |a| a.warmup_ratio = 1.5),
            ("--num-train-epochs", |a| a.num_train_epochs = f64::NAN),
            ("--per-device-eval-batch-size", |a| {
                a.per_device_eval_batch_size = 0
            }),
            ("--weight-decay", |a| a.weight_decay = f64::NAN),
            ("--val-fraction", |a| a.val_fraction = 1.0),
            ("--lora-alpha", |a| a.lora_alpha = f64::INFINITY),
            ("--max-data-size", |a| a.max_data_size = "12 parsecs".into()),
        ];
        train_args(&TrainArgs::defaults()).expect("the defaults are valid");
        for (flag, set) in cases {
            let mut a = TrainArgs::defaults();
            set(&mut a);
            let e = train_args(&a).expect_err(flag).to_string();
            assert!(e.contains(flag), "`{e}` does not name {flag}");
        }
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size_flag("--x", "2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size_flag("--x", "500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size_flag("--x", "17").unwrap(), 17);
        assert!(parse_size_flag("--x", "-3").is_err());
        assert!(parse_size_flag("--x", "1e400").is_err());
    }

    #[test]
    fn non_utf8_arguments_are_an_error_naming_them() {
        let args = vec![
            OsString::from("trainer"),
            OsString::from_vec(vec![b'-', b'-', 0xff, b'x']),
        ];
        let e = utf8_args(args).unwrap_err().to_string();
        assert!(e.contains("argument 1") && e.contains("UTF-8"), "{e}");
    }
}
