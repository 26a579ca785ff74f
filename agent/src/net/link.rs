//! Links of the bridge network, over rtnetlink: the bridge on the host side, and a veth pair
//! per container whose peer is the container's `eth0`.
//!
//! ```text
//!  host (agent's) namespace                      container namespace (<run>/netns/<id>)
//!  skiff0  10.88.0.1/16  ◄── master ── skXXXXXXXX ═══ veth ═══ eth0 10.88.0.N/16, default via 10.88.0.1
//! ```
//!
//! Design choices:
//! - **Netlink, not `ip`**: one socket per call instead of a process per step, precise errors
//!   (errno), and nothing to find on `PATH` on a minimal system. The `rtnetlink` crate speaks it
//!   on the agent's tokio runtime.
//! - **The "host" namespace is the caller's**: every function works in the network namespace of
//!   the thread that runs it. The agent runs in the host's; tests run these functions from a
//!   thread that entered a namespace they created, so nothing touches the real host.
//! - **Sockets in another namespace**: a netlink socket stays in the namespace it was created in.
//!   To configure the container's side, a short-lived thread `setns()`s into the namespace file,
//!   creates the socket and ends (the namespace switch dies with the thread, never touching a
//!   tokio worker); the socket is then driven by the runtime like any other. The same trick as
//!   `daemon::netns::ensure`, which uses `unshare` in its own thread.
//! - **The peer is born in the container namespace as `eth0`**: the veth's peer carries
//!   `IFLA_NET_NS_FD` and its final name in the creation request (what `ip link add A type veth
//!   peer name eth0 netns NS` does), so there is no temporary name on the host, no rename step and
//!   no moment where a half-made peer sits in the host namespace.
//! - **Host-side names** are `sk` + 8 hex digits of the SHA-256 of the replica id
//!   ([`host_ifname`]): 10 characters (the kernel allows 15), stable across agent restarts so a
//!   new agent finds the link of an adopted replica, and recognisable in `ip link`. 32 bits make a
//!   collision between the few replicas of one machine negligible; one would surface as an
//!   "exists" error of `attach`, not as a shared link.
//! - **Idempotence**: [`ensure_bridge`] may be called on every agent start; [`attach`] replaces a
//!   pair left with the same host name (deleting one end of a veth deletes both), so a replica
//!   re-attached after a crash gets a fresh pair; [`detach`] and [`remove_bridge`] accept links
//!   that are already gone. A failed [`attach`] deletes the pair it created.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::stream::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use sha2::{Digest, Sha256};

/// The name of the container side of every pair.
pub const CONTAINER_IFNAME: &str = "eth0";

/// The host-side veth name of a replica: `sk` + 8 hex digits of SHA-256(replica id).
pub fn host_ifname(replica_id: &str) -> String {
    let d = Sha256::digest(replica_id.as_bytes());
    format!("sk{:02x}{:02x}{:02x}{:02x}", d[0], d[1], d[2], d[3])
}

/// Creates the bridge `name` if it is missing, gives it `gateway/prefix` if it lacks that
/// address, and sets it up. Idempotent. A link of that name that is not a bridge is an error.
pub async fn ensure_bridge(name: &str, gateway: Ipv4Addr, prefix: u8) -> Result<()> {
    check_ifname(name)?;
    check_prefix(prefix)?;
    let conn = Conn::here()?;
    let h = &conn.handle;
    let link = match find_link(h, name).await? {
        Some(link) => {
            if link_kind(&link) != Some(&InfoKind::Bridge) {
                bail!("network interface {name} exists and is not a bridge");
            }
            link
        }
        None => {
            h.link()
                .add(LinkBridge::new(name).build())
                .execute()
                .await
                .map_err(|e| missing_driver(e, "bridge", "CONFIG_BRIDGE", "bridge"))
                .with_context(|| format!("create bridge {name}"))?;
            find_link(h, name).await?.ok_or_else(|| anyhow!("bridge {name} vanished after its creation"))?
        }
    };
    let index = link.header.index;
    if !has_address(h, index, IpAddr::V4(gateway), prefix).await? {
        match h.address().add(index, IpAddr::V4(gateway), prefix).execute().await {
            Err(e) if errno(&e) == Some(libc::EEXIST) => {}
            r => r.with_context(|| format!("add address {gateway}/{prefix} to bridge {name}"))?,
        }
    }
    set_up(h, index).await.with_context(|| format!("set bridge {name} up"))
}

/// The IPv4 addresses of this namespace's interfaces other than `except` whose network
/// overlaps `network/prefix`: `(interface, address, prefix)`. A bridge subnet that overlaps one
/// would take that network's traffic away from the host (or lose its own).
pub async fn overlapping_addresses(network: Ipv4Addr, prefix: u8, except: &str) -> Result<Vec<(String, Ipv4Addr, u8)>> {
    use rtnetlink::packet_route::address::AddressAttribute;
    let conn = Conn::here()?;
    let h = &conn.handle;
    let mut names = std::collections::HashMap::new();
    let mut links = h.link().get().execute();
    while let Some(l) = links.try_next().await.context("list network interfaces")? {
        let name = l.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        });
        names.insert(l.header.index, name.unwrap_or_default());
    }
    let ours = super::ipam::Subnet::new(network, prefix)?;
    let mut found = Vec::new();
    let mut addrs = h.address().get().execute();
    while let Some(msg) = addrs.try_next().await.context("list addresses")? {
        let name = names.get(&msg.header.index).cloned().unwrap_or_default();
        if name == except || name == "lo" {
            continue;
        }
        for a in &msg.attributes {
            let AddressAttribute::Address(IpAddr::V4(addr)) = a else { continue };
            let p = msg.header.prefix_len.min(32);
            // Two networks overlap when they agree on the bits of the shorter prefix.
            let shorter = p.min(ours.prefix());
            let mask = if shorter == 0 { 0 } else { u32::MAX << (32 - u32::from(shorter)) };
            if u32::from(*addr) & mask == u32::from(ours.network()) & mask {
                found.push((name.clone(), *addr, p));
            }
        }
    }
    Ok(found)
}

/// Deletes the bridge `name` (its ports are released, not deleted). Absent is fine.
pub async fn remove_bridge(name: &str) -> Result<()> {
    delete_of_kind(name, InfoKind::Bridge, "a bridge", &format!("delete bridge {name}")).await
}

/// Connects the network namespace mounted at `netns_path` to `bridge`: a veth pair whose host
/// side `ifname_host` is a port of the bridge and up, and whose peer is `eth0` in the namespace
/// with `addr/prefix`, up, and a default route via `gateway`. A pair left with the same host
/// name is replaced. On error nothing of the new pair is left.
pub async fn attach(
    netns_path: &Path,
    bridge: &str,
    ifname_host: &str,
    addr: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
) -> Result<()> {
    attach_as(netns_path, bridge, ifname_host, CONTAINER_IFNAME, addr, prefix, Some(gateway)).await
}

/// [`attach`] with the peer named `ifname` in the namespace (`eth1` for a replica's second
/// network) and the default route via `gateway` only when given.
pub async fn attach_as(
    netns_path: &Path,
    bridge: &str,
    ifname_host: &str,
    ifname: &str,
    addr: Ipv4Addr,
    prefix: u8,
    gateway: Option<Ipv4Addr>,
) -> Result<()> {
    check_ifname(bridge)?;
    check_ifname(ifname_host)?;
    check_ifname(ifname)?;
    check_prefix(prefix)?;
    let ns = File::open(netns_path).with_context(|| format!("open network namespace {}", netns_path.display()))?;
    let host = Conn::here()?;
    let h = &host.handle;
    let br = find_link(h, bridge).await?.ok_or_else(|| anyhow!("bridge {bridge} does not exist"))?;
    if link_kind(&br) != Some(&InfoKind::Bridge) {
        bail!("network interface {bridge} is not a bridge");
    }
    if let Some(old) = find_link(h, ifname_host).await? {
        delete_index(h, old.header.index).await.with_context(|| format!("delete the old link {ifname_host}"))?;
    }

    // The peer: created directly in the container's namespace under its final name.
    let peer = LinkMessageBuilder::<LinkUnspec>::new().name(ifname.to_string()).setns_by_fd(ns.as_raw_fd()).build();
    let pair = LinkVeth::new(ifname_host, ifname).set_info_data(InfoData::Veth(InfoVeth::Peer(peer))).build();
    h.link()
        .add(pair)
        .execute()
        .await
        .map_err(|e| missing_driver(e, "veth", "CONFIG_VETH", "veth"))
        .with_context(|| format!("create veth {ifname_host} with its peer {ifname} in {}", netns_path.display()))?;

    let res = async {
        let host_index = find_link(h, ifname_host)
            .await?
            .ok_or_else(|| anyhow!("veth {ifname_host} vanished after its creation"))?
            .header
            .index;
        let msg = LinkUnspec::new_with_index(host_index).controller(br.header.index).up().build();
        h.link()
            .set(msg)
            .execute()
            .await
            .with_context(|| format!("attach {ifname_host} to bridge {bridge} and set it up"))?;
        configure_container_side(&ns, netns_path, ifname, addr, prefix, gateway).await
    }
    .await;
    if res.is_err() {
        if let Ok(Some(link)) = find_link(h, ifname_host).await {
            let _ = delete_index(h, link.header.index).await;
        }
    }
    res
}

/// Deletes the host side `host_ifname` of a pair (the kernel deletes its peer with it).
/// Absent is fine.
pub async fn detach(host_ifname: &str) -> Result<()> {
    delete_of_kind(host_ifname, InfoKind::Veth, "a veth", &format!("delete {host_ifname}")).await
}

/// Deletes every veth of this namespace (from inside a replica's: the kernel deletes the
/// peers on the bridges with them).
pub async fn detach_all() -> Result<()> {
    let conn = Conn::here()?;
    let h = &conn.handle;
    let mut veths = Vec::new();
    let mut links = h.link().get().execute();
    while let Some(link) = links.try_next().await.context("list network interfaces")? {
        if link_kind(&link) == Some(&InfoKind::Veth) {
            veths.push(link.header.index);
        }
    }
    for index in veths {
        delete_index(h, index).await.with_context(|| format!("delete veth {index}"))?;
    }
    Ok(())
}

/// Deletes the link `name` of this namespace when it is of `kind` (`what`, for the error);
/// absent is fine, another kind is an error (never delete what is not ours). `doing` is the
/// context of a failed delete.
async fn delete_of_kind(name: &str, kind: InfoKind, what: &str, doing: &str) -> Result<()> {
    check_ifname(name)?;
    let conn = Conn::here()?;
    if let Some(link) = find_link(&conn.handle, name).await? {
        if link_kind(&link) != Some(&kind) {
            bail!("network interface {name} is not {what}; not deleting it");
        }
        delete_index(&conn.handle, link.header.index).await.context(doing.to_string())?;
    }
    Ok(())
}

/// eth0 (and lo) up, the address and the default route, through a socket opened in the namespace.
async fn configure_container_side(
    ns: &File,
    netns_path: &Path,
    ifname: &str,
    addr: Ipv4Addr,
    prefix: u8,
    gateway: Option<Ipv4Addr>,
) -> Result<()> {
    let conn =
        Conn::in_netns(ns).await.with_context(|| format!("open a netlink socket in {}", netns_path.display()))?;
    let h = &conn.handle;
    let eth0 = find_link(h, ifname)
        .await?
        .ok_or_else(|| anyhow!("{ifname} is missing in {}", netns_path.display()))?
        .header
        .index;
    match h.address().add(eth0, IpAddr::V4(addr), prefix).execute().await {
        Err(e) if errno(&e) == Some(libc::EEXIST) => {}
        r => r.with_context(|| format!("add address {addr}/{prefix} to {ifname}"))?,
    }
    set_up(h, eth0).await.with_context(|| format!("set {ifname} up"))?;
    if let Some(lo) = find_link(h, "lo").await? {
        set_up(h, lo.header.index).await.context("set lo up")?;
    }
    let Some(gateway) = gateway else { return Ok(()) };
    let route = RouteMessageBuilder::<Ipv4Addr>::new().output_interface(eth0).gateway(gateway).build();
    h.route().add(route).replace().execute().await.with_context(|| format!("add the default route via {gateway}"))
}

/// A netlink connection whose driving task ends with it.
struct Conn {
    handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Conn {
    /// A socket in the calling thread's network namespace.
    fn here() -> Result<Conn> {
        let (conn, handle, _) = rtnetlink::new_connection().context("open a netlink socket")?;
        Ok(Conn { handle, task: tokio::spawn(conn) })
    }

    /// A socket in the network namespace `ns`, created by a thread that entered it and then ended.
    async fn in_netns(ns: &File) -> Result<Conn> {
        let ns = ns.try_clone().context("duplicate the namespace file descriptor")?;
        let rt = tokio::runtime::Handle::current();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("skiff-netlink".into())
            .spawn(move || {
                let res = nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| anyhow!("enter the network namespace: {e}"))
                    .and_then(|()| {
                        // The socket is registered with the caller's runtime, from this thread.
                        let _guard = rt.enter();
                        rtnetlink::new_connection().context("open a netlink socket")
                    });
                let _ = tx.send(res.map(|(conn, handle, _)| (conn, handle)));
            })
            .context("start the namespace thread")?;
        let (conn, handle) = rx.await.map_err(|_| anyhow!("the namespace thread ended without an answer"))??;
        Ok(Conn { handle, task: tokio::spawn(conn) })
    }
}

/// The link named `name`, or None.
async fn find_link(h: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    match h.link().get().match_name(name.to_string()).execute().try_next().await {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("look up network interface {name}")),
    }
}

/// Whether link `index` carries `addr/prefix`.
async fn has_address(h: &Handle, index: u32, addr: IpAddr, prefix: u8) -> Result<bool> {
    use rtnetlink::packet_route::address::AddressAttribute;
    let mut addrs = h.address().get().set_link_index_filter(index).execute();
    while let Some(msg) = addrs.try_next().await.context("list addresses")? {
        let same = msg.header.prefix_len == prefix
            && msg.attributes.iter().any(|a| matches!(a, AddressAttribute::Address(a) if *a == addr));
        if same {
            return Ok(true);
        }
    }
    Ok(false)
}

async fn set_up(h: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    h.link().set(LinkUnspec::new_with_index(index).up().build()).execute().await
}

/// Deletes link `index`; already gone is fine.
async fn delete_index(h: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    match h.link().del(index).execute().await {
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
        r => r,
    }
}

fn link_kind(link: &LinkMessage) -> Option<&InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        }),
        _ => None,
    })
}

/// A link creation error, explained when the kernel has no driver for the link kind
/// (EOPNOTSUPP: "Unknown device type", as `ip link add` says).
fn missing_driver(e: rtnetlink::Error, kind: &str, config: &str, module: &str) -> anyhow::Error {
    if errno(&e) == Some(libc::EOPNOTSUPP) {
        anyhow!(
            "the kernel has no {kind} network driver: enable {config} or load its module (modprobe {module}); \
             netlink said: {e}"
        )
    } else {
        anyhow::Error::new(e)
    }
}

/// The errno of a netlink error answer.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().raw_os_error(),
        _ => None,
    }
}

/// The kernel's rules for interface names (dev_valid_name), checked here for a clear error.
fn check_ifname(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 15 {
        bail!("invalid network interface name {name:?}: 1 to 15 bytes");
    }
    if name == "." || name == ".." || name.bytes().any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace()) {
        bail!("invalid network interface name {name:?}: no '/', ':' or white space");
    }
    Ok(())
}

fn check_prefix(prefix: u8) -> Result<()> {
    if prefix > 32 {
        bail!("invalid IPv4 prefix length /{prefix}: at most 32");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Everything runs inside a network namespace the test creates (`ip netns add`): the bridge
    //! and the host sides live there, the "containers" are namespaces made by
    //! `daemon::netns::ensure`. Nothing is created in the host's namespace.

    use super::*;
    use crate::daemon::netns;
    use serde_json::Value;
    use skiff_tests::netns::TestNetns;
    use std::path::PathBuf;
    use std::process::Command;

    /// A "container" namespace file, removed on drop.
    struct ContainerNs(#[allow(dead_code)] tempfile::TempDir, PathBuf); // the dir lives as long as the file

    impl ContainerNs {
        fn new() -> ContainerNs {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("ns");
            netns::ensure(&p).unwrap();
            ContainerNs(dir, p)
        }
    }

    impl Drop for ContainerNs {
        fn drop(&mut self) {
            let _ = netns::remove(&self.1);
        }
    }

    /// Runs `f` on a current-thread runtime in a thread that entered the namespace at `ns`.
    fn run_in<F, Fut>(ns: &Path, f: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let file = File::open(ns).unwrap();
        let res = std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(f());
        })
        .join();
        if let Err(panic) = res {
            std::panic::resume_unwind(panic);
        }
    }

    /// `ip -j ARGS` in the named namespace (`-n`) or namespace file (nsenter); None if it failed.
    fn ip_in(ns: &str, args: &[&str]) -> Option<Value> {
        let out = if ns.starts_with('/') {
            Command::new("nsenter").arg(format!("--net={ns}")).arg("ip").arg("-j").args(args).output()
        } else {
            Command::new("ip").args(["-n", ns, "-j"]).args(args).output()
        }
        .unwrap();
        if !out.status.success() {
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).unwrap())
    }

    fn one(v: Option<Value>, what: &str) -> Value {
        let v = v.unwrap_or_else(|| panic!("{what}: ip failed"));
        assert_eq!(v.as_array().map(Vec::len), Some(1), "{what}: {v}");
        v[0].clone()
    }

    fn is_up(link: &Value) -> bool {
        link["flags"].as_array().unwrap().iter().any(|f| f == "UP")
    }

    fn has_addr(link: &Value, addr: &str, prefix: u64) -> bool {
        link["addr_info"].as_array().unwrap().iter().any(|a| a["local"] == addr && a["prefixlen"] == prefix)
    }

    fn ping(ns: &Path, to: &str) -> bool {
        Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .args(["busybox", "ping", "-c", "1", "-W", "5", to])
            .output()
            .unwrap()
            .status
            .success()
    }

    fn is_root() -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        eprintln!("skipped: needs root");
        false
    }

    #[test]
    fn host_ifnames_are_short_stable_and_distinct() {
        let a = host_ifname("web-1");
        assert_eq!(a, host_ifname("web-1"));
        assert_ne!(a, host_ifname("web-2"));
        assert_eq!(a.len(), 10);
        assert!(a.starts_with("sk") && a[2..].bytes().all(|b| b.is_ascii_hexdigit()), "{a}");
        check_ifname(&a).unwrap();
    }

    #[test]
    fn bad_names_and_prefixes_are_clear_errors() {
        for bad in ["", "a-name-longer-than-15", "a/b", "a b", "a:b", ".."] {
            assert!(check_ifname(bad).unwrap_err().to_string().contains("invalid network interface name"), "{bad}");
        }
        assert!(check_prefix(33).is_err());
        check_prefix(32).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        // Refused before any netlink request, so safe to run in the test's own namespace.
        let e = rt.block_on(ensure_bridge("bad/name", Ipv4Addr::new(10, 99, 0, 1), 24)).unwrap_err();
        assert!(e.to_string().contains("invalid network interface name"), "{e:#}");
        let e = rt.block_on(ensure_bridge("skt0", Ipv4Addr::new(10, 99, 0, 1), 40)).unwrap_err();
        assert!(e.to_string().contains("prefix"), "{e:#}");
        let e = rt
            .block_on(attach(
                Path::new("/nonexistent/ns"),
                "skt0",
                "skx",
                Ipv4Addr::new(10, 99, 0, 2),
                24,
                Ipv4Addr::new(10, 99, 0, 1),
            ))
            .unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/ns"), "{e:#}");
    }

    #[test]
    fn bridge_veth_address_route_ping_detach_remove() {
        if !is_root() {
            return;
        }
        let test_ns = TestNetns::new().expect("ip netns add");
        let c1 = ContainerNs::new();
        let c2 = ContainerNs::new();
        let (p1, p2) = (c1.1.clone(), c2.1.clone());
        let ns = test_ns.name().to_string();
        run_in(Path::new(&test_ns.path()), move || async move {
            let gw = Ipv4Addr::new(10, 99, 0, 1);
            ensure_bridge("skt0", gw, 24).await.unwrap();
            ensure_bridge("skt0", gw, 24).await.unwrap(); // idempotent
            let br = one(ip_in(&ns, &["addr", "show", "dev", "skt0"]), "bridge");
            assert!(is_up(&br) && has_addr(&br, "10.99.0.1", 24), "{br}");
            assert_eq!(br["addr_info"].as_array().unwrap().iter().filter(|a| a["family"] == "inet").count(), 1);

            let (h1, h2) = (host_ifname("web-1"), host_ifname("web-2"));
            attach(&p1, "skt0", &h1, Ipv4Addr::new(10, 99, 0, 2), 24, gw).await.unwrap();
            attach(&p2, "skt0", &h2, Ipv4Addr::new(10, 99, 0, 3), 24, gw).await.unwrap();

            for h in [&h1, &h2] {
                let l = one(ip_in(&ns, &["link", "show", "dev", h]), h);
                assert_eq!(l["master"], "skt0", "{l}");
                assert!(is_up(&l), "{l}");
            }
            let p1s = p1.to_str().unwrap();
            let eth0 = one(ip_in(p1s, &["addr", "show", "dev", "eth0"]), "eth0");
            assert!(is_up(&eth0) && has_addr(&eth0, "10.99.0.2", 24), "{eth0}");
            let route = one(ip_in(p1s, &["route", "show", "default"]), "default route");
            assert_eq!(
                (&route["gateway"], &route["dev"]),
                (&Value::from("10.99.0.1"), &Value::from("eth0")),
                "{route}"
            );
            // The host side's namespace has no eth0: the peer was born in the container's.
            assert!(ip_in(&ns, &["link", "show", "dev", "eth0"]).is_none());

            assert!(ping(&p1, "10.99.0.1"), "container → gateway");
            assert!(ping(&p2, "10.99.0.2"), "container → container across the bridge");

            // Attaching again replaces the pair: still one host link, one eth0, working.
            attach(&p1, "skt0", &h1, Ipv4Addr::new(10, 99, 0, 2), 24, gw).await.unwrap();
            let links = ip_in(&ns, &["link", "show", "master", "skt0"]).unwrap();
            assert_eq!(links.as_array().unwrap().len(), 2, "{links}");
            assert!(ping(&p1, "10.99.0.1"), "after re-attach");

            detach(&h1).await.unwrap();
            assert!(ip_in(&ns, &["link", "show", "dev", &h1]).is_none(), "host side gone");
            assert!(ip_in(p1s, &["link", "show", "dev", "eth0"]).is_none(), "peer gone with it");
            detach(&h1).await.unwrap(); // absent is fine
                                        // detach refuses what is not a veth
            let e = detach("skt0").await.unwrap_err();
            assert!(e.to_string().contains("not a veth"), "{e:#}");

            remove_bridge("skt0").await.unwrap();
            assert!(ip_in(&ns, &["link", "show", "dev", "skt0"]).is_none(), "bridge gone");
            assert!(ip_in(&ns, &["link", "show", "dev", &h2]).is_some(), "a port survives its bridge");
            remove_bridge("skt0").await.unwrap(); // absent is fine
        });
    }

    #[test]
    fn failed_attaches_leave_nothing_and_say_why() {
        if !is_root() {
            return;
        }
        let test_ns = TestNetns::new().expect("ip netns add");
        let c = ContainerNs::new();
        let p = c.1.clone();
        let ns = test_ns.name().to_string();
        run_in(Path::new(&test_ns.path()), move || async move {
            let gw = Ipv4Addr::new(10, 98, 0, 1);
            let h = host_ifname("svc-1");
            let e = attach(&p, "skt1", &h, Ipv4Addr::new(10, 98, 0, 2), 24, gw).await.unwrap_err();
            assert!(e.to_string().contains("bridge skt1 does not exist"), "{e:#}");

            ensure_bridge("skt1", gw, 24).await.unwrap();
            // A gateway outside the subnet: the route fails after the pair exists; it is removed.
            let e =
                attach(&p, "skt1", &h, Ipv4Addr::new(10, 98, 0, 2), 24, Ipv4Addr::new(10, 77, 0, 1)).await.unwrap_err();
            assert!(format!("{e:#}").contains("default route via 10.77.0.1"), "{e:#}");
            assert!(ip_in(&ns, &["link", "show", "dev", &h]).is_none(), "host side removed");
            assert!(ip_in(p.to_str().unwrap(), &["link", "show", "dev", "eth0"]).is_none(), "peer removed");

            // A link of the bridge's name that is not a bridge.
            attach(&p, "skt1", &h, Ipv4Addr::new(10, 98, 0, 2), 24, gw).await.unwrap();
            let e = ensure_bridge(&h, gw, 24).await.unwrap_err();
            assert!(e.to_string().contains("not a bridge"), "{e:#}");
            let e = remove_bridge(&h).await.unwrap_err();
            assert!(e.to_string().contains("not a bridge"), "{e:#}");
            let e = attach(&p, &h, "skx", Ipv4Addr::new(10, 98, 0, 3), 24, gw).await.unwrap_err();
            assert!(e.to_string().contains("not a bridge"), "{e:#}");
        });
    }
}
