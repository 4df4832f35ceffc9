//! `trainer merge`.

use crate::args::MergeArgs;
use anyhow::{bail, Result};

pub fn merge(_a: &MergeArgs) -> Result<()> {
    bail!("`trainer merge` is not available in this build yet")
}
