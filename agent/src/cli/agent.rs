//! `skiff agent`: the daemon in the foreground (see [`crate::daemon`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// The manifest (a compose file)
    #[arg(long, env = "SKIFF_MANIFEST", default_value = crate::manifest::DEFAULT_MANIFEST, value_name = "PATH")]
    pub manifest: PathBuf,
    /// Address of the read-only HTTP status endpoint
    #[arg(long, env = "SKIFF_LISTEN", default_value = "127.0.0.1:7780", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// OCI runtime (default: skiff-runtime next to skiff, else on PATH; crun and runc work too)
    #[arg(long, env = "SKIFF_RUNTIME", value_name = "PATH")]
    pub runtime: Option<PathBuf>,
    /// Leave the host's networking alone: no bridge, NAT or ip_forward; `network_mode: bridge`
    /// services get a network namespace with loopback only, like `none` (dockerd's --bridge=none)
    #[arg(long, env = "SKIFF_NO_BRIDGE", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_bridge: bool,
}

pub fn agent(root: &Path, a: AgentArgs) -> Result<i32> {
    let runtime = super::run::find_runtime(a.runtime.as_deref())?;
    let root = if root.is_absolute() { root.to_path_buf() } else { std::env::current_dir()?.join(root) };
    let manifest =
        if a.manifest.is_absolute() { a.manifest.clone() } else { std::env::current_dir()?.join(&a.manifest) };
    crate::daemon::run(crate::daemon::Options { root, manifest, listen: a.listen, runtime, no_bridge: a.no_bridge })
}
