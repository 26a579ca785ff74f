//! Container networking: address allocation on the bridge subnet ([`ipam`]), outbound NAT,
//! forwarding and the published ports' DNAT through nftables ([`nft`]; [`nftwatch`] notices
//! when someone else deletes those tables), the bridge and each
//! container's veth via netlink ([`link`]), the container's /etc/hosts and /etc/resolv.conf
//! ([`files`]), the bridge's name server ([`dns`]), and the L4 proxy of published ports
//! ([`proxy`]). `daemon::network` and
//! `daemon::ports` drive them.

pub mod dns;
pub mod files;
pub mod ipam;
pub mod link;
pub mod nft;
pub mod nftwatch;
pub mod proxy;

use std::fs::File;

use anyhow::{anyhow, Context, Result};

/// Runs `f` on a thread of its own, which first joins the network namespace `ns` when one is
/// given: the caller's threads never change namespace, and a child process `f` starts (`nft`)
/// inherits the thread's. On a fresh thread `f` may also build and block on a runtime of its
/// own, whatever context the caller runs in. Blocks until `f` returns. (`nft`'s calls have a
/// variant of their own, which names the namespace's path and runs here when none is given.)
pub fn on_thread_in<T: Send>(ns: Option<&File>, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("skiff-netns".into())
            .spawn_scoped(s, || {
                if let Some(ns) = ns {
                    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                        .context("joining the network namespace")?;
                }
                f()
            })
            .context("starting a thread")?
            .join()
            .map_err(|_| anyhow!("the network namespace thread panicked"))?
    })
}

/// Blocks on the netlink future `f` with a current-thread runtime of its own (netlink sockets
/// are opened in the calling thread's network namespace: see [`on_thread_in`]).
pub fn block_on_netlink<F: std::future::Future>(f: F) -> Result<F::Output> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime for netlink")?
        .block_on(f))
}
