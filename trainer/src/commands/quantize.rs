//! `trainer quantize`.

use crate::args::QuantizeArgs;
use anyhow::{bail, Result};

pub fn quantize(_a: &QuantizeArgs) -> Result<()> {
    bail!("`trainer quantize` is not available in this build yet")
}
