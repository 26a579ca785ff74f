//! Runs one `skiff::net::proxy::PortProxy` in the foreground, for `hack/bench-net` and manual
//! tries: `port_proxy [--udp|--both] [--threads N] LISTEN BACKEND...`, e.g.
//! `port_proxy 127.0.0.1:8080 127.0.0.1:8081`. The runtime is current-thread by default, as in
//! the agent's daemon. Ends on SIGINT or SIGTERM.

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use skiff::net::proxy::{Limits, PortProxy, Proto};
use tokio::signal::unix::{signal, SignalKind};

fn main() {
    if let Err(e) = run() {
        eprintln!("port_proxy: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut proto = Proto::Tcp;
    let mut threads = 1usize;
    let mut addrs = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--udp" => proto = Proto::Udp,
            "--both" => proto = Proto::Both,
            "--threads" => {
                let n = args.next().context("--threads needs a number")?;
                threads = n.parse().with_context(|| format!("--threads {n}: not a number"))?;
            }
            _ => addrs.push(a.parse::<SocketAddr>().with_context(|| format!("{a}: not an address:port"))?),
        }
    }
    if addrs.len() < 2 {
        bail!("usage: port_proxy [--udp|--both] [--threads N] LISTEN BACKEND...");
    }
    let listen = addrs.remove(0);
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    }
    .context("starting the async runtime")?;
    rt.block_on(async move {
        let (_tx, rx) = tokio::sync::watch::channel(addrs);
        let proxy = PortProxy::bind(listen, proto, rx, Limits::default()).await?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        eprintln!("port_proxy: listening on {listen}");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        proxy.stop().await;
        Ok(())
    })
}
