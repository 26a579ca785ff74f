//! Bridge networking of the agent's replicas (`network_mode: bridge`, compose's default): the
//! glue between the reconcile loop and [`crate::net`].
//!
//! One [`BridgeNet`] per bridge/subnet of the manifest (`x-skiff: {bridge, subnet}`, default
//! `skiff0` on 10.88.0.0/16). Before its first replica starts it sets the bridge up (with the
//! gateway address), turns `ip_forward` on and applies the NAT table — once per agent
//! ([`BridgeNet::ensure_ready`]; a failure is retried by the next start).
//!
//! A replica's start task calls [`BridgeNet::connect`] *before* `replica::prepare`: allocate its
//! address (idempotent: a restarted or adopted replica keeps it), make its network namespace,
//! attach a veth pair to the bridge, and write `<root>/containers/<id>/hosts` and
//! `resolv.conf`, which `prepare` bind-mounts read-only at /etc/hosts and /etc/resolv.conf.
//!
//! Service names resolve over DNS on the bridge's gateway (port 53, [`net::dns`]; the
//! containers' resolv.conf names it) and through /etc/hosts. The name server starts with the
//! bridge's setup, or at agent start for adopted replicas ([`BridgeNet::start_dns`]); its table
//! is rebuilt from the address allocations whenever a hosts file is written ([`BridgeNet::publish_names`]).
//! When it cannot listen (port 53 of the gateway taken), containers get the host's nameservers
//! as before. Every hosts file lists each service name once per
//! address allocated to one of its replicas (owner = replica id `SERVICE-N`). When replicas
//! come and go the agent rewrites the files of the others ([`BridgeNet::refresh_hosts`]) *in
//! place*: the bind mount pins the inode, so a rename would not be seen by the container. The
//! file is opened with `O_TRUNC` and written in one `write`: a reader in the container may see
//! an empty or short file in that small window (a lookup then fails once, like a resolver
//! timeout); there is no atomic way to replace a bind-mounted file's content.
//!
//! On removal ([`disconnect`], from `replica::remove`) the veth is deleted and the address
//! released. When the last bridged service goes (and at `skiff down`) [`teardown`] deletes the
//! NAT table and the bridge. Which bridge and subnet the agent set up is recorded in
//! `<root>/network/bridge.json` (written once the setup succeeded, temp + fsync + rename), so
//! a restarted agent or `skiff down` knows what to remove even when the manifest changed.
//! Setup and teardown take one lock ([`SetupLock`]): a bridged service added while the
//! teardown runs waits for it, then sets everything up again.
//!
//! Before the bridge is made, the host's addresses are checked: a subnet that overlaps a
//! network of another interface is a clear error on each bridged service (`x-skiff: subnet`
//! says where to change it), and nothing is created.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};

use super::paths::Paths;
use crate::manifest::{NetworkSettings, Service};
use crate::net::ipam::{Ipam, Subnet};
use crate::net::{self, dns, files, link, nft};

/// The bridge network of the agent's bridged replicas.
#[derive(Debug)]
pub struct BridgeNet {
    pub bridge: String,
    pub subnet: Subnet,
    ipam: Ipam,
    ready: tokio::sync::OnceCell<()>,
    /// Torn down (or about to be): its NAT table is not to be put back.
    retired: std::sync::atomic::AtomicBool,
    /// Another firewall drops forwarded traffic (for the bridged services' status); one check
    /// at a time, and one more when asked meanwhile.
    firewall: Mutex<Option<String>>,
    /// Held by the check under way; when the last one started.
    firewall_check: tokio::sync::Mutex<Option<std::time::Instant>>,
    firewall_again: std::sync::atomic::AtomicBool,
    /// Serialises the writes of hosts files (a start's and the refreshes).
    hosts_lock: Mutex<()>,
    /// The bridge's name server (once started), its names and its counters.
    dns: Mutex<Option<dns::Server>>,
    names: Arc<dns::Table>,
    pub dns_counters: Arc<dns::Counters>,
    /// What the name table needs of each replica's service: hostname and `dns:` servers.
    name_info: Mutex<BTreeMap<String, NameInfo>>,
    setup: SetupLock,
    record: PathBuf,
}

/// Held while the bridge and its NAT rules are set up or torn down.
pub type SetupLock = Arc<tokio::sync::Mutex<()>>;

/// `<root>/network/bridge.json`: the bridge and subnet the agent set up.
pub fn record_path(paths: &Paths) -> PathBuf {
    paths.root.join("network").join("bridge.json")
}

/// What `<root>/network/bridge.json` holds.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct BridgeRecord {
    bridge: String,
    subnet: String,
    /// The network namespace it lives in: device and inode of the agent's `/proc/self/ns/net`.
    netns: (u64, u64),
}

/// Device and inode of a network namespace file (`/proc/self/ns/net`).
fn netns_id(path: &Path) -> Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    Ok((m.dev(), m.ino()))
}

impl BridgeNet {
    /// The network of `settings`, with its allocations under the root. Blocking (fsyncs).
    pub fn open(paths: &Paths, settings: &NetworkSettings, setup: SetupLock) -> Result<BridgeNet> {
        let subnet: Subnet =
            settings.subnet.parse().with_context(|| format!("the bridge subnet {:?}", settings.subnet))?;
        let ipam = Ipam::open(&paths.root, subnet)?;
        Ok(BridgeNet {
            bridge: settings.bridge.clone(),
            subnet,
            ipam,
            ready: tokio::sync::OnceCell::new(),
            retired: std::sync::atomic::AtomicBool::new(false),
            firewall: Mutex::new(None),
            firewall_check: tokio::sync::Mutex::new(None),
            firewall_again: std::sync::atomic::AtomicBool::new(false),
            hosts_lock: Mutex::new(()),
            dns: Mutex::new(None),
            names: Arc::default(),
            dns_counters: Arc::default(),
            name_info: Mutex::default(),
            setup,
            record: record_path(paths),
        })
    }

    /// Whether this is the network of `settings`.
    pub fn is(&self, settings: &NetworkSettings) -> bool {
        self.bridge == settings.bridge && settings.subnet.parse::<Subnet>().is_ok_and(|s| s == self.subnet)
    }

    /// The bridge with its gateway address, `ip_forward` on and the NAT table, once.
    pub async fn ensure_ready(&self) -> Result<()> {
        self.ready
            .get_or_try_init(|| async {
                let _setup = self.setup.lock().await;
                let clash = link::overlapping_addresses(self.subnet.network(), self.subnet.prefix(), &self.bridge)
                    .await
                    .context("checking the host's addresses")?;
                if let Some((ifname, addr, prefix)) = clash.first() {
                    bail!(
                        "the bridge subnet {} overlaps {addr}/{prefix} on {ifname}: choose another under `x-skiff: subnet:` in the manifest",
                        self.subnet
                    );
                }
                link::ensure_bridge(&self.bridge, self.subnet.gateway(), self.subnet.prefix())
                    .await
                    .with_context(|| format!("setting up the bridge {}", self.bridge))?;
                let nat = nft::Nat::new(&self.bridge, self.subnet)?;
                let (bridge, record) = (self.bridge.clone(), self.record.clone());
                let settings = BridgeRecord {
                    bridge: self.bridge.clone(),
                    subnet: self.subnet.to_string(),
                    netns: netns_id(Path::new("/proc/self/ns/net"))?,
                };
                let warning = tokio::task::spawn_blocking(move || -> Result<Option<String>> {
                    if !bring_up_nat(&nat, &bridge)? {
                        super::reconcile::log("net.ipv4.ip_forward was 0; set it to 1 for the bridge network");
                    }
                    let dir = record.parent().unwrap_or(Path::new("/"));
                    skiff_images::fsutil::create_private_dir(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                    write_atomic(dir, &record, &serde_json::to_vec_pretty(&settings)?)?;
                    Ok(firewall_warning(&bridge))
                })
                .await
                .map_err(|e| anyhow!("{e}"))??;
                if let Some(w) = &warning {
                    super::reconcile::log(&format!("warning: {w}"));
                }
                *self.firewall.lock().unwrap_or_else(|e| e.into_inner()) = warning;
                self.start_dns();
                Ok::<_, anyhow::Error>(())
            })
            .await
            .map(|_| ())
    }

    /// Why replicas on this bridge cannot reach other networks, if another firewall drops
    /// forwarded traffic (as of the last check).
    pub fn firewall_warning(&self) -> Option<String> {
        self.firewall.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Checks the ruleset for [`nft::ForwardBlocker`]s (once the bridge is set up); whether
    /// the warning changed. Asked while a check runs, that check runs once more, at least
    /// [`FIREWALL_CHECK_GAP`] after the last: a host whose ruleset churns (kube-proxy on
    /// iptables-nft rewrites it every few seconds, and lists run to megabytes) costs one
    /// listing per gap at most.
    pub async fn check_firewall(&self) -> bool {
        use std::sync::atomic::Ordering;
        if self.ready.get().is_none() || self.retired.load(Ordering::SeqCst) {
            return false;
        }
        self.firewall_again.store(true, Ordering::SeqCst);
        let Ok(mut last) = self.firewall_check.try_lock() else { return false };
        let mut changed = false;
        while self.firewall_again.swap(false, Ordering::SeqCst) {
            if let Some(t) = *last {
                tokio::time::sleep_until((t + FIREWALL_CHECK_GAP).into()).await;
            }
            *last = Some(std::time::Instant::now());
            let bridge = self.bridge.clone();
            let found = tokio::task::spawn_blocking(move || firewall_warning(&bridge)).await;
            let Ok(found) = found else { break };
            let mut cur = self.firewall.lock().unwrap_or_else(|e| e.into_inner());
            if *cur != found {
                match &found {
                    Some(w) => super::reconcile::log(&format!("warning: {w}")),
                    None if cur.is_some() => {
                        super::reconcile::log("forwarded traffic is no longer dropped by another firewall")
                    }
                    None => {}
                }
                *cur = found;
                changed = true;
            }
        }
        changed
    }

    /// Marks this network torn down: [`BridgeNet::repair`] leaves it alone from now on.
    pub fn retire(&self) {
        self.retired.store(true, std::sync::atomic::Ordering::SeqCst);
        self.dns.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Starts the bridge's name server on `GATEWAY:53` unless it runs (the bridge must be up).
    /// A failure is logged; the containers then get the host's nameservers.
    pub fn start_dns(&self) {
        let mut cur = self.dns.lock().unwrap_or_else(|e| e.into_inner());
        if cur.is_some() || self.retired.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let Some(rt) = dns_runtime() else { return };
        let addr = std::net::SocketAddrV4::new(self.subnet.gateway(), 53);
        match dns::start(&rt, &self.bridge, addr, self.names.clone(), "/etc/resolv.conf", self.dns_counters.clone()) {
            Ok(server) => *cur = Some(server),
            Err(e) => super::reconcile::log(&format!(
                "warning: cannot serve DNS on {addr} ({}): {e}; containers get the host's nameservers and \
                 find services through /etc/hosts only",
                self.bridge
            )),
        }
    }

    /// The address containers use as their nameserver, when the name server runs.
    fn dns_address(&self) -> Option<Ipv4Addr> {
        self.dns.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|s| *s.addr.ip())
    }

    /// Rebuilds the name table from the allocations `owned`: each owner `SERVICE-N` (or
    /// `SERVICE-N.b`) is known as `SERVICE-N`, `SERVICE` and its hostname.
    fn publish_names(&self, owned: &[net::ipam::Allocation]) {
        let info = self.name_info.lock().unwrap_or_else(|e| e.into_inner());
        let entries: Vec<dns::Entry> = owned
            .iter()
            .filter_map(|a| {
                let id = a.owner.as_deref()?;
                let service = service_of(id)?;
                let replica = id.strip_suffix(".b").unwrap_or(id);
                let mut names = vec![replica.to_string(), service.to_string()];
                let (extra, upstreams) = info.get(id).cloned().unwrap_or_default();
                names.extend(extra);
                Some(dns::Entry { addr: a.addr, names, upstreams })
            })
            .collect();
        self.names.set(&entries);
    }

    /// Applies the NAT table again (then `ip_forward` and `route_localnet`, which a reload of
    /// sysctls may have reset too) if it is missing while this network is set up and in use;
    /// whether it was missing.
    pub async fn repair(&self) -> Result<bool> {
        if self.ready.get().is_none() {
            return Ok(false); // not set up yet: its setup applies everything
        }
        let _setup = self.setup.lock().await;
        if self.retired.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(false);
        }
        let nat = nft::Nat::new(&self.bridge, self.subnet)?;
        let bridge = self.bridge.clone();
        tokio::task::spawn_blocking(move || -> Result<bool> {
            if nat.exists()? {
                return Ok(false);
            }
            bring_up_nat(&nat, &bridge)?;
            Ok(true)
        })
        .await
        .map_err(|e| anyhow!("{e}"))?
    }

    /// Connects replica `id` of `svc`: address, network namespace, veth on the bridge, and its
    /// hosts and resolv.conf files. Returns its address.
    pub async fn connect(self: &Arc<Self>, paths: &Paths, svc: &Service, id: &str) -> Result<Ipv4Addr> {
        self.ensure_ready().await?;
        let ns = paths.netns(id);
        let (me, i, n) = (self.clone(), id.to_string(), ns.clone());
        let addr = tokio::task::spawn_blocking(move || -> Result<Ipv4Addr> {
            let addr = me.ipam.allocate(&i).with_context(|| format!("allocating an address for {i}"))?;
            super::netns::ensure(&n).with_context(|| format!("making the network namespace {}", n.display()))?;
            Ok(addr)
        })
        .await
        .map_err(|e| anyhow!("{e}"))??;
        link::attach(&ns, &self.bridge, &link::host_ifname(id), addr, self.subnet.prefix(), self.subnet.gateway())
            .await
            .with_context(|| format!("connecting {id} to the bridge {}", self.bridge))?;
        let (me, p, s, i) = (self.clone(), paths.clone(), svc.clone(), id.to_string());
        tokio::task::spawn_blocking(move || me.write_files(&p, &s, &i, addr)).await.map_err(|e| anyhow!("{e}"))??;
        Ok(addr)
    }

    /// Writes (temp + fsync + rename: the container is not running) the replica's name files.
    fn write_files(&self, paths: &Paths, svc: &Service, id: &str, addr: Ipv4Addr) -> Result<()> {
        let dir = paths.container(id);
        skiff_images::fsutil::create_private_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let host_resolv = ["/run/systemd/resolve/resolv.conf", "/etc/resolv.conf"]
            .iter()
            .find_map(|p| fs::read_to_string(p).ok())
            .unwrap_or_default();
        let resolv = match self.dns_address() {
            Some(gw) => files::resolv_conf_gateway(&host_resolv, IpAddr::V4(gw)),
            None => files::resolv_conf(&host_resolv, Some(&svc.dns)),
        };
        write_name_file(&dir, &dir.join(RESOLV_FILE), resolv.as_bytes())?;
        let _guard = self.hosts_lock.lock().map_err(|_| anyhow!("hosts lock poisoned"))?;
        self.name_info.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_string(), name_info(svc));
        self.publish_names(&self.ipam.owned()?);
        let text = self.hosts_text(svc, id, addr)?;
        write_name_file(&dir, &dir.join(HOSTS_FILE), text.as_bytes())
    }

    /// The /etc/hosts of replica `id` (at `addr`) of `svc`, from the allocations now.
    fn hosts_text(&self, svc: &Service, id: &str, addr: Ipv4Addr) -> Result<String> {
        let mut by_service: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
        for a in self.ipam.owned()? {
            if let Some(service) = a.owner.as_deref().and_then(service_of) {
                by_service.entry(service.to_string()).or_default().push(a.addr);
            }
        }
        let mut entries: Vec<(&str, IpAddr)> = by_service
            .iter()
            .flat_map(|(name, addrs)| addrs.iter().map(move |a| (name.as_str(), IpAddr::V4(*a))))
            .collect();
        // Each replica's other names (container_name, hostname), as the DNS answers them.
        let info = self.name_info.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut extra_names: Vec<(String, IpAddr)> = Vec::new();
        for a in self.ipam.owned()? {
            if let Some((names, _)) = a.owner.as_deref().and_then(|o| info.get(o)) {
                extra_names.extend(names.iter().map(|n| (n.clone(), IpAddr::V4(a.addr))));
            }
        }
        entries.extend(extra_names.iter().map(|(n, a)| (n.as_str(), *a)));
        let extra: Vec<(&str, IpAddr)> = svc.extra_hosts.iter().map(|h| (h.name.as_str(), h.ip)).collect();
        files::hosts_file(&hostname(svc, id), IpAddr::V4(addr), &entries, &extra)
    }

    /// Rewrites, in place, the hosts file of each of `replicas` (id and service) that has an
    /// address and a hosts file. Errors are logged; one replica's does not stop the others.
    pub fn refresh_hosts(&self, paths: &Paths, replicas: &[(String, Service)]) {
        let Ok(_guard) = self.hosts_lock.lock() else { return };
        let owned = match self.ipam.owned() {
            Ok(o) => o,
            Err(e) => {
                super::reconcile::log(&format!("reading the address allocations: {e:#}"));
                return;
            }
        };
        *self.name_info.lock().unwrap_or_else(|e| e.into_inner()) =
            replicas.iter().map(|(id, svc)| (id.clone(), name_info(svc))).collect();
        self.publish_names(&owned);
        for (id, svc) in replicas {
            let Some(addr) = owned.iter().find(|a| a.owner.as_deref() == Some(id.as_str())).map(|a| a.addr) else {
                continue;
            };
            let path = paths.container(id).join(HOSTS_FILE);
            let res = self.hosts_text(svc, id, addr).and_then(|text| {
                // The same inode (the container's bind mount pins it): truncate and write.
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                f.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
                f.sync_data().with_context(|| format!("fsync of {}", path.display()))
            });
            match res {
                Ok(()) => {}
                Err(e) if path.exists() => super::reconcile::log(&format!("{id}: rewriting its hosts file: {e:#}")),
                Err(_) => {} // not connected yet (its start writes it)
            }
        }
    }
}

/// What the name table keeps of a replica's service: its names beyond the service's and the
/// replica's (`container_name`, `hostname`) and its `dns:` servers.
type NameInfo = (Vec<String>, Vec<IpAddr>);

/// [`NameInfo`] of `svc`.
fn name_info(svc: &Service) -> NameInfo {
    let mut names: Vec<String> = svc.container_name.iter().chain(svc.hostname.iter()).cloned().collect();
    names.dedup();
    (names, svc.dns.clone())
}

/// The thread the bridges' name servers run on (started on first use; `None`, logged, when it
/// cannot be).
fn dns_runtime() -> Option<tokio::runtime::Handle> {
    static RT: std::sync::OnceLock<Option<tokio::runtime::Handle>> = std::sync::OnceLock::new();
    RT.get_or_init(|| match super::runtime_thread("skiff-dns") {
        Ok(h) => Some(h),
        Err(e) => {
            super::reconcile::log(&format!("starting the DNS thread: {e}; no DNS on the bridge"));
            None
        }
    })
    .clone()
}

/// The file names under `<root>/containers/<id>/`.
pub const HOSTS_FILE: &str = "hosts";
pub const RESOLV_FILE: &str = "resolv.conf";

/// The container's hostname (as `replica::prepare` sets it): the service's `hostname`, else
/// the host's name with host networking (as Docker gives; its own UTS namespace still), else
/// the replica id.
pub fn hostname(svc: &Service, id: &str) -> String {
    let own = || id.chars().take(63).collect();
    match (svc.hostname.as_ref().or(svc.container_name.as_ref()), &svc.network_mode) {
        (Some(h), _) => h.clone(),
        (None, crate::manifest::NetworkMode::Host) => host_name().unwrap_or_else(own),
        (None, _) => own(),
    }
}

/// The host's name (`None` when it has none that is text).
fn host_name() -> Option<String> {
    nix::unistd::gethostname().ok()?.into_string().ok().filter(|h| !h.is_empty())
}

/// The service of replica id `SERVICE-N` (or `SERVICE-N.b`, the second container of a slot
/// during a start-first update).
fn service_of(id: &str) -> Option<&str> {
    let id = id.strip_suffix(".b").unwrap_or(id);
    let (service, n) = id.rsplit_once('-')?;
    n.parse::<u32>().ok().filter(|_| !service.is_empty()).map(|_| service)
}

fn write_atomic(dir: &Path, dest: &Path, data: &[u8]) -> Result<()> {
    skiff_images::fsutil::write_atomic(dir, dest, data).with_context(|| format!("writing {}", dest.display()))
}

/// The container's /etc/hosts and /etc/resolv.conf: 0644, as every process of the container,
/// whatever its user, must read them through the bind mount (names and addresses only; the
/// 0700 container directory keeps host users out).
fn write_name_file(dir: &Path, dest: &Path, data: &[u8]) -> Result<()> {
    skiff_images::fsutil::write_atomic_mode(dir, dest, data, 0o644)
        .with_context(|| format!("writing {}", dest.display()))
}

/// Undoes [`BridgeNet::connect`] for a removed replica: deletes its veth pair and releases its
/// address in every subnet under the root. The pair is deleted from inside the replica's own
/// network namespace (its `eth0`; the kernel deletes both ends), never looked up by name in the
/// caller's namespace, so `skiff down` run anywhere cannot touch another agent's links. A
/// namespace already gone took its pair with it. Blocking: the netlink call runs on a thread of
/// its own (which joins the namespace and ends) with a small runtime, so this works from any
/// context (the agent's blocking pool, `skiff down`'s async tasks).
pub fn disconnect(paths: &Paths, id: &str) -> Result<()> {
    let ns_path = paths.netns(id);
    // Not mounted (after a reboot, or already removed): the namespace and its pair are gone.
    let mounted = super::netns::is_nsfs(&ns_path);
    match fs::File::open(&ns_path).and_then(|f| if mounted { Ok(f) } else { Err(std::io::ErrorKind::NotFound.into()) })
    {
        Ok(ns) => net::on_thread_in(Some(&ns), || net::block_on_netlink(link::detach(link::CONTAINER_IFNAME))?)
            .with_context(|| format!("deleting the veth pair of {id} (in {})", ns_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("opening {}", ns_path.display())),
    }
    for ipam in Ipam::open_all(&paths.root)? {
        ipam.release_owner(id).with_context(|| format!("releasing the address of {id}"))?;
    }
    Ok(())
}

/// Deletes the NAT table, the published ports' DNAT table and the bridge recorded in
/// `<root>/network/bridge.json`, then the
/// record; nothing recorded is nothing to do. Returns the bridge removed. `ip_forward` is left
/// as it is (other software may rely on it). The caller makes sure no bridged replica is left.
///
/// The work happens in the network namespace the bridge was made in: `netns` (an open
/// `/proc/<agent>/ns/net`: `skiff down` opens the agent's before stopping it), else the
/// caller's own, which must then be the recorded one — a `skiff down` run in another namespace
/// than the agent's refuses rather than delete another bridge or NAT table of that name.
/// Blocking (netlink and `nft` run on a thread of their own).
pub fn teardown(paths: &Paths, netns: Option<&fs::File>) -> Result<Option<String>> {
    let record = record_path(paths);
    let data = match fs::read(&record) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", record.display())),
    };
    let rec: BridgeRecord =
        serde_json::from_slice(&data).with_context(|| format!("{} is not a bridge record", record.display()))?;
    let subnet: Subnet = rec.subnet.parse().with_context(|| format!("the subnet in {}", record.display()))?;
    let here = match netns {
        Some(f) => {
            use std::os::unix::fs::MetadataExt;
            let m = f.metadata().context("stat of the agent's network namespace")?;
            (m.dev(), m.ino())
        }
        None => netns_id(Path::new("/proc/self/ns/net"))?,
    };
    if here != rec.netns {
        bail!(
            "the bridge {} was set up in another network namespace than this one: run `skiff down` in the agent's \
             network namespace (or while the agent runs) to remove it",
            rec.bridge
        );
    }
    let nat = nft::Nat::new(&rec.bridge, subnet)?;
    let bridge = rec.bridge.clone();
    net::on_thread_in(netns, || {
        // `nft` runs as a child of this thread: it inherits the namespace. The bridge goes
        // before the NAT table: its route_localnet is never on without the table's drop rule.
        nft::apply_ports(&[], None)?; // the published ports' DNAT table, if any
        net::block_on_netlink(link::remove_bridge(&bridge))?
            .with_context(|| format!("removing the bridge {bridge}"))?;
        nat.remove()
    })
    .context("in the agent's network namespace")?;
    fs::remove_file(&record).with_context(|| format!("removing {}", record.display()))?;
    if let Some(dir) = record.parent() {
        let _ = fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(Some(rec.bridge))
}

/// `ip_forward` on, the NAT table applied, then `route_localnet` on the bridge (only once the
/// table's drop rule is in); whether `ip_forward` was on already.
fn bring_up_nat(nat: &nft::Nat, bridge: &str) -> Result<bool> {
    let was_on = nft::set_ip_forward(None, true)?;
    nat.apply().with_context(|| format!("applying the NAT rules of {bridge}"))?;
    nft::set_route_localnet(None, bridge)?;
    Ok(was_on)
}

/// The least time between two checks for firewalls that drop forwarded traffic.
const FIREWALL_CHECK_GAP: std::time::Duration = std::time::Duration::from_secs(5);

/// The warning for the bridged services when another firewall drops forwarded traffic (see
/// [`nft::ForwardBlocker`]), with the rules that let the bridge's traffic through; `None` when
/// none does, or when the ruleset cannot be read (the bridge works or fails on its own then).
fn firewall_warning(bridge: &str) -> Option<String> {
    let blockers = nft::forward_blockers(bridge).ok()?;
    let b = blockers.first()?;
    let rule = |r: &str| format!("nft insert rule {} {} {} {r}", b.family, b.table, b.chain);
    Some(format!(
        "forwarded traffic is dropped by another firewall (table {} {}, chain {}: policy drop, no rule for {bridge}; \
         Docker sets this up): replicas cannot reach other networks, and other machines cannot reach them \
         through published ports; let the bridge through with: {}; {}; {}",
        b.family,
        b.table,
        b.chain,
        rule(&format!("iifname \"{bridge}\" accept")),
        rule(&format!("oifname \"{bridge}\" ct state established,related accept")),
        rule(&format!("oifname \"{bridge}\" ct status dnat accept")),
    ))
}

/// Releases the addresses whose owner `alive` does not know (a replica whose record is gone:
/// an agent killed between allocating and recording). Returns how many.
pub fn release_orphans(paths: &Paths, mut alive: impl FnMut(&str) -> bool) -> Result<usize> {
    let mut n = 0;
    for ipam in Ipam::open_all(&paths.root)? {
        n += ipam.retain(&mut alive)?.len();
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ExtraHost;

    #[test]
    fn service_names_from_replica_ids() {
        assert_eq!(service_of("web-1"), Some("web"));
        assert_eq!(service_of("web-1.b"), Some("web"), "a start-first update's container");
        assert_eq!(service_of("web-1.c"), None);
        assert_eq!(service_of("my-app-12"), Some("my-app"));
        assert_eq!(service_of("web"), None);
        assert_eq!(service_of("-1"), None);
        assert_eq!(service_of("web-x"), None);
    }

    #[test]
    fn hosts_files_list_every_service_and_are_rewritten_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path());
        let net = BridgeNet::open(&paths, &NetworkSettings::default(), SetupLock::default()).unwrap();
        let web = Service { name: "web".into(), ..Default::default() };
        let client = Service {
            name: "client".into(),
            extra_hosts: vec![ExtraHost { name: "db.example".into(), ip: "192.0.2.7".parse().unwrap() }],
            ..Default::default()
        };
        let w1 = net.ipam.allocate("web-1").unwrap();
        let c1 = net.ipam.allocate("client-1").unwrap();
        net.write_files(&paths, &client, "client-1", c1).unwrap();
        let path = paths.container("client-1").join(HOSTS_FILE);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains(&format!("{c1}\tclient-1\n")), "{text}");
        assert!(text.contains(&format!("{w1}\tweb\n")), "{text}");
        assert!(text.contains("192.0.2.7\tdb.example\n"), "{text}");
        assert!(paths.container("client-1").join(RESOLV_FILE).is_file());

        // A second web replica: the refresh keeps the inode and adds it.
        use std::os::unix::fs::MetadataExt;
        let ino = fs::metadata(&path).unwrap().ino();
        let w2 = net.ipam.allocate("web-2").unwrap();
        let all = [("client-1".to_string(), client.clone()), ("web-1".to_string(), web.clone())];
        net.refresh_hosts(&paths, &all);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains(&format!("{w1}\tweb\n")) && text.contains(&format!("{w2}\tweb\n")), "{text}");
        assert_eq!(fs::metadata(&path).unwrap().ino(), ino, "rewritten in place");
        assert!(!paths.container("web-1").join(HOSTS_FILE).exists(), "no file is created by a refresh");

        // web-2 goes: released, and gone from the file after a refresh.
        net.ipam.release_owner("web-2").unwrap();
        net.refresh_hosts(&paths, &all);
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&w2.to_string()), "{text}");
    }
}
