//! Subcommands other than `train` and the demo.

use crate::args::*;
use anyhow::{bail, Result};

pub fn ask(_a: &AskArgs) -> Result<()> {
    bail!("`trainer ask` is not available in this build yet")
}
pub fn generate(_a: &GenerateArgs) -> Result<()> {
    bail!("`trainer generate` is not available in this build yet")
}
pub fn eval(_a: &EvalArgs) -> Result<()> {
    bail!("`trainer eval` is not available in this build yet")
}
pub fn data(_a: &DataArgs) -> Result<()> {
    bail!("`trainer data` is not available in this build yet")
}
pub fn merge(_a: &MergeArgs) -> Result<()> {
    bail!("`trainer merge` is not available in this build yet")
}
pub fn quantize(_a: &QuantizeArgs) -> Result<()> {
    bail!("`trainer quantize` is not available in this build yet")
}
pub fn info(_a: &InfoArgs) -> Result<()> {
    bail!("`trainer info` is not available in this build yet")
}
