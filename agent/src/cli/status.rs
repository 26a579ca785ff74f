//! `skiff status [--json]`: what the agent runs, read from its status endpoint.

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The agent's status endpoint
    #[arg(long, env = "SKIFF_LISTEN", default_value = "127.0.0.1:7780", value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// Print the raw /v1/status JSON
    #[arg(long)]
    pub json: bool,
}

pub fn status(a: StatusArgs) -> Result<i32> {
    let _ = a;
    anyhow::bail!("skiff status: not built yet")
}
