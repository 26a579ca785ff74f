//! Published ports (`ports:` of bridged services): one [`PortProxy`] per host port and
//! protocol, fed with the addresses of the service's replicas that may take traffic.
//!
//! The reconcile loop calls [`Ports::sync`] after every change. It
//! * expands the manifest's mappings into host ports (`"9000-9002:9000-9002"` is three,
//!   `"80"` is one chosen by the kernel, `"8000-8010:80"` is the first free one of the range);
//! * stops the proxies of mappings that are gone and binds the new ones; a bind that fails
//!   (the port is in use, the address is not on this host) is an error on that port, shown in
//!   the service's status, and retried with back-off (0.25 s doubling to 5 s) — the service's
//!   replicas run meanwhile, and every other port is unaffected;
//! * hands each proxy the list of backends: the replicas of the service that are running, have
//!   an address on the bridge and are healthy (or have no health check). A replica that stops
//!   or turns unhealthy leaves the list in the same pass of the loop that decides it, before
//!   its stop signal is sent; a replica added by scaling joins it when it passes its first
//!   check.
//!
//! Host ports the kernel chose are remembered in `<run>/ports.json` (temp + fsync + rename),
//! so a restarted agent binds the same ones again; after a reboot new ones are chosen.
//!
//! The proxies run on a thread of their own (a current-thread tokio runtime): the reconcile
//! loop's work never delays a connection; the backend lists cross over in watch channels.
//! Together they hold at most the fds of [`super::fds::proxy_budget`], a port at most half
//! of them (see `net/proxy.rs`): a flood of clients never takes the fds the agent needs.
//!
//! The kernel fast path: for every IPv4 port the agent has bound (never for a port it could
//! not bind: that one is someone else's) and that has backends, a DNAT rule in
//! [`nft::PORTS_TABLE`] steers new connections from other machines, and from this host to
//! any of its own addresses, 127.0.0.1 included, round-robin to the same backends, without
//! the agent. The rules are rewritten in the background when a backend list changes (newest
//! wins); a stop waits for them ([`DnatBarrier`]) before it signals its replica. The proxy
//! serves IPv6, and IPv4 until the rules are in (or when they cannot be applied).
//!
//! When the agent exits or dies, the proxies go with it (their connections are cut; the next
//! agent binds the ports again once it has adopted the replicas); the DNAT rules and the
//! connections through them stay. See ARCHITECTURE.md for why both.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::reconcile::log;
use super::status::PortStatus;
use crate::manifest::{Manifest, NetworkMode, PortMapping, PortRange, Protocol};
use crate::net::nft;
use crate::net::proxy::{Limits, PortProxy, Proto};

/// One host port (or range to choose from) of one service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortKey {
    pub service: String,
    pub host_ip: Option<IpAddr>,
    /// The host port, or the range to pick one from; `None`: the kernel chooses.
    pub published: Option<PortRange>,
    pub target: u16,
    pub protocol: Protocol,
}

impl fmt::Display for PortKey {
    /// Compose's short syntax of this one port, protocol always shown: `127.0.0.1:8080:80/tcp`,
    /// `80/udp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = PortMapping {
            target: PortRange::single(self.target),
            published: self.published,
            host_ip: self.host_ip,
            protocol: self.protocol,
        };
        write!(f, "{m}")?;
        if self.protocol == Protocol::Tcp {
            f.write_str("/tcp")?; // the mapping leaves the default out
        }
        Ok(())
    }
}

impl PortKey {
    /// Whether the kernel's rules serve this port, and for which address: `Some(None)`
    /// every local IPv4 address (no address, or `[::]`/0.0.0.0, which take IPv4 too),
    /// `Some(Some(ip))` that IPv4 address (127.0.0.1 included); `None` for an IPv6 address,
    /// which only the proxy serves.
    fn kernel_host_ip(&self) -> Option<Option<Ipv4Addr>> {
        match self.host_ip {
            None => Some(None),
            Some(ip) if ip.is_unspecified() => Some(None),
            Some(IpAddr::V4(ip)) => Some(Some(ip)),
            Some(IpAddr::V6(_)) => None,
        }
    }

    /// The key `<run>/ports.json` remembers a chosen port under.
    fn memo_key(&self) -> String {
        format!("{}/{}", self.service, self)
    }
}

/// The host ports of `m`'s mapping `p` of service `service`.
pub fn expand(service: &str, p: &PortMapping) -> Vec<PortKey> {
    let key = |published: Option<PortRange>, target: u16| PortKey {
        service: service.to_string(),
        host_ip: p.host_ip,
        published,
        target,
        protocol: p.protocol,
    };
    match p.published {
        Some(pubr) if pubr.len() == p.target.len() => {
            (0..pubr.len() as u16).map(|i| key(Some(PortRange::single(pubr.start + i)), p.target.start + i)).collect()
        }
        // A single container port from a host range (validated: the target is one port).
        Some(pubr) => vec![key(Some(pubr), p.target.start)],
        None => (p.target.start..=p.target.end).map(|t| key(None, t)).collect(),
    }
}

struct Entry {
    proxy: Option<PortProxy>,
    backends: watch::Sender<Vec<SocketAddr>>,
    error: Option<String>,
    failures: u32,
    retry_at: Instant,
}

impl Entry {
    /// The address its proxy listens on (the real port when the kernel chose it).
    fn bound(&self) -> Option<SocketAddr> {
        self.proxy.as_ref().and_then(|p| p.tcp_addr().or(p.udp_addr()))
    }
}

/// The published ports of the agent.
pub struct Ports {
    entries: BTreeMap<PortKey, Entry>,
    memo_path: PathBuf,
    memo: BTreeMap<String, u16>,
    limits: Limits,
    /// The runtime the proxies run on: a thread of their own, so that nothing the reconcile
    /// loop does (an fsync of a record under heavy disk load, a burst of events) ever holds
    /// up a connection. `None` (the thread could not be started): the caller's runtime.
    rt: Option<tokio::runtime::Handle>,
    /// The kernel fast path ([`nft::PORTS_TABLE`]).
    dnat: Dnat,
}

/// The DNAT rules of the published ports, applied in the background (an `nft` run each time
/// the set changes), newest wins.
struct Dnat {
    /// The rules last asked for; `None`: nothing asked yet (and a stale table may exist only
    /// when `stale` says so).
    wanted: Option<Vec<nft::PortDnat>>,
    stale: bool,
    /// Generation of the rules last asked for, and of those applied (or given up on).
    asked: Arc<AtomicU64>,
    applied: watch::Sender<u64>,
    /// One apply at a time.
    lock: Arc<Mutex<()>>,
    /// Why the last apply failed, and when to try again; `None` after a success.
    failure: Arc<Mutex<Option<DnatFailure>>>,
}

/// A failed apply of the DNAT rules: its message (shown on every port it concerns, logged
/// once) and when the same rules are to be tried again.
#[derive(Clone, Debug)]
struct DnatFailure {
    error: String,
    retry_at: Instant,
}

/// How long after a failed apply the rules are tried again.
const DNAT_RETRY: Duration = Duration::from_secs(5);

/// What a stop waits for before it signals the replica: the rules without it applied.
#[derive(Clone)]
pub struct DnatBarrier {
    asked: Arc<AtomicU64>,
    applied: watch::Receiver<u64>,
}

impl DnatBarrier {
    /// Waits (at most `limit`) until the rules asked for by now are in the kernel, so that no
    /// new connection is steered to a replica about to be stopped.
    pub async fn wait(mut self, limit: Duration) {
        let want = self.asked.load(Ordering::SeqCst);
        let _ = tokio::time::timeout(limit, self.applied.wait_for(|a| *a >= want)).await;
    }
}

/// Why a mapping of a service is not published at all (not retried).
pub enum Unpublished {
    /// `--no-bridge`.
    BridgeDisabled,
}

impl Ports {
    /// `run` is the agent's run directory (`<run>/ports.json`); `stale_rules`: an earlier agent
    /// may have left DNAT rules (it had a bridge), to be replaced or removed at the first sync.
    pub fn new(run: &Path, stale_rules: bool) -> Ports {
        let memo_path = run.join("ports.json");
        let memo = std::fs::read(&memo_path).ok().and_then(|d| serde_json::from_slice(&d).ok()).unwrap_or_default();
        let rt = match super::runtime_thread("skiff-proxy") {
            Ok(h) => Some(h),
            Err(e) => {
                log(&format!("starting the proxy thread: {e}; proxies run on the agent's thread"));
                None
            }
        };
        let dnat = Dnat {
            wanted: None,
            stale: stale_rules,
            asked: Arc::new(AtomicU64::new(0)),
            applied: watch::channel(0).0,
            lock: Arc::new(Mutex::new(())),
            failure: Arc::new(Mutex::new(None)),
        };
        // The proxies' share of the agent's fds (see daemon::fds), shared by every port.
        let limits = Limits::with_fd_budget(super::fds::proxy_budget(super::fds::nofile()) as usize);
        Ports { entries: BTreeMap::new(), memo_path, memo, limits, rt, dnat }
    }

    /// Brings the proxies in line with `m` and the backends with `backends(service)`, which
    /// gives the addresses (no port) of the replicas that may take traffic now.
    pub fn sync(&mut self, m: &Manifest, bridge_disabled: bool, mut backends: impl FnMut(&str) -> Vec<Ipv4Addr>) {
        let mut wanted: Vec<PortKey> = Vec::new();
        for svc in m.services.values() {
            if svc.network_mode != NetworkMode::Bridge {
                continue; // the manifest warns: host and none publish nothing
            }
            for p in &svc.ports {
                wanted.extend(expand(&svc.name, p));
            }
        }
        // Stop what is no longer wanted.
        let gone: Vec<PortKey> = self.entries.keys().filter(|k| !wanted.contains(k)).cloned().collect();
        for k in gone {
            if let Some(e) = self.entries.remove(&k) {
                if let Some(addr) = e.bound() {
                    log(&format!("{}: stopped publishing {k} (was {addr})", k.service));
                }
            }
        }
        let now = Instant::now();
        let mut memo_changed = false;
        let mut by_service: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
        for k in wanted {
            let e = self.entries.entry(k.clone()).or_insert_with(|| Entry {
                proxy: None,
                backends: watch::channel(Vec::new()).0,
                error: None,
                failures: 0,
                retry_at: now,
            });
            if bridge_disabled {
                e.error = Some("not published: the agent runs with --no-bridge".into());
                continue;
            }
            let addrs = by_service.entry(k.service.clone()).or_insert_with(|| backends(&k.service));
            let list: Vec<SocketAddr> = addrs.iter().map(|a| SocketAddr::new((*a).into(), k.target)).collect();
            e.backends.send_if_modified(|cur| {
                if *cur == list {
                    return false;
                }
                *cur = list;
                true
            });
            if e.proxy.is_some() || e.retry_at > now {
                continue;
            }
            // The proxy's sockets and tasks go to the proxy runtime.
            let _rt = self.rt.as_ref().map(|h| h.enter());
            match bind(&k, self.memo.get(&k.memo_key()).copied(), e.backends.subscribe(), &self.limits) {
                Ok(proxy) => {
                    let addr = proxy.tcp_addr().or(proxy.udp_addr());
                    if let Some(addr) = addr {
                        log(&format!("{}: publishing {k} on {addr}", k.service));
                        if k.published.is_none_or(|r| r.len() > 1) && self.memo.get(&k.memo_key()) != Some(&addr.port())
                        {
                            self.memo.insert(k.memo_key(), addr.port());
                            memo_changed = true;
                        }
                    }
                    e.proxy = Some(proxy);
                    e.error = None;
                    e.failures = 0;
                }
                Err(err) => {
                    let msg = format!("{err}");
                    if e.error.as_deref() != Some(msg.as_str()) {
                        log(&format!("{}: cannot publish {k}: {msg} (retrying)", k.service));
                    }
                    e.error = Some(msg);
                    e.failures = e.failures.saturating_add(1);
                    let delay = Duration::from_millis(250u64.saturating_mul(1 << e.failures.min(5)) / 2);
                    e.retry_at = now + delay.min(Duration::from_secs(5));
                }
            }
        }
        self.sync_dnat(bridge_disabled);
        // Forget chosen ports of mappings that are gone for good (their service was removed).
        let before = self.memo.len();
        // (Keys are `SERVICE/...`; a service name has no '/'.)
        self.memo.retain(|key, _| key.split_once('/').is_some_and(|(svc, _)| m.services.contains_key(svc)));
        if memo_changed || self.memo.len() != before {
            self.save_memo();
        }
    }

    /// The kernel fast path: a DNAT rule per published IPv4 port that this agent has bound (a
    /// port it could not bind belongs to someone else: no rule may steal its traffic) and that
    /// has backends; applied in the background when the set changes.
    fn sync_dnat(&mut self, bridge_disabled: bool) {
        if bridge_disabled {
            return;
        }
        let mut rules = Vec::new();
        for (k, e) in &self.entries {
            let Some(bound) = e.bound() else { continue };
            let Some(host_ip) = k.kernel_host_ip() else { continue };
            let backends: Vec<Ipv4Addr> = e
                .backends
                .borrow()
                .iter()
                .filter_map(|a| match a.ip() {
                    IpAddr::V4(ip) => Some(ip),
                    IpAddr::V6(_) => None,
                })
                .collect();
            if backends.is_empty() {
                continue;
            }
            let protocol = match k.protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
            };
            rules.push(nft::PortDnat { protocol, host_ip, port: bound.port(), target: k.target, backends });
        }
        let d = &mut self.dnat;
        let unchanged = match &d.wanted {
            Some(w) => *w == rules,
            None => rules.is_empty() && !d.stale,
        };
        // The same rules again only when an apply failed and its retry is due (pushed back
        // now, so that one run is under way at a time).
        let retry = {
            let mut failure = d.failure.lock().unwrap_or_else(|e| e.into_inner());
            match failure.as_mut() {
                Some(f) if f.retry_at <= Instant::now() => {
                    f.retry_at = Instant::now() + DNAT_RETRY;
                    true
                }
                _ => false,
            }
        };
        if unchanged && !retry {
            return;
        }
        d.wanted = Some(rules.clone());
        let gen = d.asked.fetch_add(1, Ordering::SeqCst) + 1;
        let (asked, applied, lock, failure) = (d.asked.clone(), d.applied.clone(), d.lock.clone(), d.failure.clone());
        let work = move || {
            let _one = lock.lock().unwrap_or_else(|e| e.into_inner());
            if asked.load(Ordering::SeqCst) == gen {
                let result = nft::apply_ports(&rules, None);
                let mut failure = failure.lock().unwrap_or_else(|e| e.into_inner());
                match result {
                    Ok(()) => {
                        if failure.take().is_some() {
                            log("published ports: the DNAT rules are applied now");
                        }
                    }
                    Err(e) => {
                        let error = format!("{e:#}");
                        if failure.as_ref().is_none_or(|f| f.error != error) {
                            log(&format!(
                                "published ports: {error}; IPv4 is served by the agent's proxy alone (retrying every {}s)",
                                DNAT_RETRY.as_secs()
                            ));
                        }
                        *failure = Some(DnatFailure { error, retry_at: Instant::now() + DNAT_RETRY });
                    }
                }
            } // else a newer set follows and applies
            applied.send_if_modified(|a| {
                let newer = *a < gen;
                if newer {
                    *a = gen;
                }
                newer
            });
        };
        match &self.rt {
            Some(h) => drop(h.spawn_blocking(work)),
            None => drop(tokio::task::spawn_blocking(work)),
        }
    }

    /// The DNAT table was deleted by someone else: the next sync applies the rules again.
    /// Whether there were rules to lose (the agent's own removal of an empty table is none).
    pub fn rules_lost(&mut self) -> bool {
        let d = &mut self.dnat;
        if d.wanted.as_ref().is_none_or(|w| w.is_empty()) {
            return false;
        }
        d.wanted = None;
        d.stale = true;
        true
    }

    /// What a stop waits for before it signals a replica (see [`DnatBarrier::wait`]).
    pub fn dnat_barrier(&self) -> DnatBarrier {
        DnatBarrier { asked: self.dnat.asked.clone(), applied: self.dnat.applied.subscribe() }
    }

    /// When a failed bind, or a failed apply of the DNAT rules, is to be tried again, if any.
    pub fn next_retry(&self) -> Option<Instant> {
        let dnat = self.dnat.failure.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|f| f.retry_at);
        self.entries.values().filter(|e| e.proxy.is_none() && e.failures > 0).map(|e| e.retry_at).chain(dnat).min()
    }

    /// The status of `service`'s published ports.
    pub fn status(&self, service: &str) -> Vec<PortStatus> {
        let dnat_error = self.dnat.failure.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|f| f.error.clone());
        self.entries
            .iter()
            .filter(|(k, _)| k.service == service)
            .map(|(k, e)| PortStatus {
                warning: dnat_error
                    .as_ref()
                    .filter(|_| e.bound().is_some() && k.kernel_host_ip().is_some())
                    .map(|err| format!("IPv4 served by the agent's proxy alone (retried): {err}")),
                mapping: k.to_string(),
                protocol: k.protocol.to_string(),
                host_ip: e.bound().map(|a| a.ip().to_string()).or(k.host_ip.map(|ip| ip.to_string())),
                host_port: e.bound().map(|a| a.port()),
                target: k.target,
                backends: e.backends.borrow().len() as u32,
                error: e.error.clone(),
            })
            .collect()
    }

    fn save_memo(&self) {
        let Some(dir) = self.memo_path.parent() else { return };
        let res = serde_json::to_vec_pretty(&self.memo)
            .map_err(io::Error::other)
            .and_then(|data| skiff_images::fsutil::write_atomic(dir, &self.memo_path, &data));
        if let Err(e) = res {
            log(&format!("writing {}: {e}", self.memo_path.display()));
        }
    }
}

/// Binds the proxy of `k`: the remembered port first (for a chosen one), then the range in
/// order, or port 0. Without a host address, `[::]` (both families on Linux) and 0.0.0.0 where
/// the host has no IPv6.
fn bind(
    k: &PortKey,
    remembered: Option<u16>,
    backends: watch::Receiver<Vec<SocketAddr>>,
    limits: &Limits,
) -> anyhow::Result<PortProxy> {
    let proto = match k.protocol {
        Protocol::Tcp => Proto::Tcp,
        Protocol::Udp => Proto::Udp,
    };
    let mut candidates: Vec<u16> = Vec::new();
    match k.published {
        Some(r) if r.len() == 1 => candidates.push(r.start),
        Some(r) => {
            candidates.extend(remembered.filter(|p| (r.start..=r.end).contains(p)));
            candidates.extend(r.start..=r.end);
        }
        None => {
            candidates.extend(remembered);
            candidates.push(0);
        }
    }
    let mut first_err = None;
    for port in candidates {
        let res = match k.host_ip {
            Some(ip) => PortProxy::bind(SocketAddr::new(ip, port), proto, backends.clone(), limits.clone()),
            None => match PortProxy::bind(
                SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port),
                proto,
                backends.clone(),
                limits.clone(),
            ) {
                Err(e) if no_ipv6(&e) => PortProxy::bind(
                    SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port),
                    proto,
                    backends.clone(),
                    limits.clone(),
                ),
                r => r,
            },
        };
        match res {
            Ok(p) => return Ok(p),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or_else(|| anyhow::anyhow!("no host port to try")))
}

/// Whether a bind failed because the host has no IPv6 (then 0.0.0.0 is tried).
fn no_ipv6(e: &anyhow::Error) -> bool {
    e.chain().filter_map(|c| c.downcast_ref::<io::Error>()).any(|io| {
        matches!(io.raw_os_error(), Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL) | Some(libc::EPROTONOSUPPORT))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(s: &str) -> PortMapping {
        crate::manifest::network::parse_port(s).unwrap()
    }

    #[test]
    fn mappings_expand_to_host_ports() {
        let keys = expand("web", &mapping("9000-9002:8000-8002"));
        let shown: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        assert_eq!(shown, ["9000:8000/tcp", "9001:8001/tcp", "9002:8002/tcp"]);
        let keys = expand("web", &mapping("127.0.0.1::80/udp"));
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].to_string(), "127.0.0.1::80/udp");
        assert_eq!(keys[0].published, None);
        let keys = expand("web", &mapping("8000-8010:80"));
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].published, Some(PortRange { start: 8000, end: 8010 }));
        assert_eq!(expand("web", &mapping("80-81")).len(), 2);
    }

    #[test]
    fn the_kernel_serves_every_ipv4_address_and_the_proxy_ipv6() {
        let kernel = |s: &str| expand("web", &mapping(s))[0].kernel_host_ip();
        assert_eq!(kernel("8080:80"), Some(None));
        assert_eq!(kernel("0.0.0.0:8080:80"), Some(None));
        assert_eq!(kernel("[::]:8080:80"), Some(None), "[::] takes IPv4 too");
        assert_eq!(kernel("127.0.0.1:8080:80"), Some(Some(Ipv4Addr::LOCALHOST)));
        assert_eq!(kernel("192.0.2.1:8080:80/udp"), Some(Some(Ipv4Addr::new(192, 0, 2, 1))));
        assert_eq!(kernel("[::1]:8080:80"), None);
    }
}
