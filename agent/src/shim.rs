//! `skiff shim`: one per replica; see the module's full doc once built.

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct ShimArgs {}

pub fn shim(a: ShimArgs) -> Result<i32> {
    let _ = a;
    anyhow::bail!("skiff shim: not built yet")
}
