//! `skiff down`: stops the agent, then every container it ran, gracefully.

use std::path::Path;

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct DownArgs {
    /// OCI runtime (as given to the agent)
    #[arg(long, env = "SKIFF_RUNTIME", value_name = "PATH")]
    pub runtime: Option<std::path::PathBuf>,
}

pub fn down(root: &Path, a: DownArgs) -> Result<i32> {
    let _ = (root, a);
    anyhow::bail!("skiff down: not built yet")
}
