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
    /// The bridge of `network_mode: bridge` services, unless the manifest's `x-skiff: bridge` says
    #[arg(long, env = "SKIFF_BRIDGE", default_value = crate::manifest::network::DEFAULT_BRIDGE, value_name = "NAME",
          value_parser = parse_bridge)]
    pub bridge: String,
    /// Its IPv4 subnet (the gateway is its first address), unless `x-skiff: subnet` says
    #[arg(long, env = "SKIFF_SUBNET", default_value = crate::net::ipam::DEFAULT_SUBNET, value_name = "CIDR",
          value_parser = parse_subnet)]
    pub subnet: String,
}

fn parse_bridge(s: &str) -> Result<String, String> {
    if crate::manifest::network::valid_interface_name(s) {
        Ok(s.to_string())
    } else {
        Err(format!("`{s}` is not an interface name (1-15 characters of letters, digits, '_', '.', '-')"))
    }
}

fn parse_subnet(s: &str) -> Result<String, String> {
    s.trim().parse::<crate::net::ipam::Subnet>().map(|n| n.to_string()).map_err(|e| format!("{e:#}"))
}

pub fn agent(root: &Path, a: AgentArgs) -> Result<i32> {
    let runtime = super::run::find_runtime(a.runtime.as_deref())?;
    let root = if root.is_absolute() { root.to_path_buf() } else { std::env::current_dir()?.join(root) };
    let manifest =
        if a.manifest.is_absolute() { a.manifest.clone() } else { std::env::current_dir()?.join(&a.manifest) };
    crate::daemon::run(crate::daemon::Options {
        root,
        manifest,
        listen: a.listen,
        runtime,
        no_bridge: a.no_bridge,
        network: crate::manifest::NetworkSettings { bridge: a.bridge, subnet: a.subnet },
    })
}
