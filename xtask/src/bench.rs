//! `cargo xtask bench`: the filter's cost measured against bare Envoy in the same run.
//! (Being written.)

use anyhow::{Result, bail};

/// Run the benchmark.
pub fn run(_args: &[String]) -> Result<()> {
    bail!("cargo xtask bench is not implemented yet")
}
