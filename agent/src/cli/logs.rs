//! `skiff logs SERVICE[/N] [-f] [--tail N] [--timestamps]`.

use std::path::Path;

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// SERVICE (every replica, interleaved by time) or SERVICE/N (one replica)
    pub target: String,
    /// Keep printing new lines as they come
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines (per replica)
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
    /// Prefix each line with its time (RFC 3339)
    #[arg(short, long)]
    pub timestamps: bool,
}

pub fn logs(root: &Path, a: LogsArgs) -> Result<i32> {
    let _ = (root, a);
    anyhow::bail!("skiff logs: not built yet")
}
