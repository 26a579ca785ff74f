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
//! Service names resolve over DNS on each bridge's gateway (port 53, [`net::dns`]; the
//! containers' resolv.conf names it) and through /etc/hosts. The name server starts with the
//! bridge's setup, or at agent start for adopted replicas ([`BridgeNet::start_dns`]); its table
//! is rebuilt from the address allocations whenever a hosts file is written ([`BridgeNet::publish_names`]).
//! When it cannot listen (port 53 of the gateway taken), containers get the host's nameservers
//! as before. Every hosts file lists each service name once per
//! address allocated to one of its replicas (owner = replica id `SERVICE-N`). When replicas
//! come and go the agent rewrites the files of the others ([`refresh_hosts`]) *in
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
//! User-defined networks (the manifest's top-level `networks:`) are [`BridgeNet`]s too, one
//! per network, opened by [`BridgeNet::open_network`]: a bridge of their own
//! ([`network_bridge`]: `sk-NAME`), a subnet (declared, else a /24 of `NETWORK_POOL` that
//! overlaps nothing, recorded at once in `<root>/network/networks/<bridge>.json` so it stays
//! the network's), and a NAT table of their own ([`nft::network_table`]) that isolates them:
//! nothing new crosses from one network to another, an internal network forwards nothing in or
//! out. A replica on several networks gets a veth per network (`eth0`, `eth1`, ... in the
//! order listed; the default route via the first that is not internal), and its hosts file
//! lists the names of the networks it is on ([`BridgeNet::names`]: services and their aliases,
//! at their addresses on that network). A network goes (bridge, table, record) when no service
//! and no replica is on it any more, and at `skiff down` ([`teardown`] removes every record).
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

/// One bridge network: the default one (`network_mode: bridge` services that name no network)
/// or a user-defined one (the top-level `networks:`).
#[derive(Debug)]
pub struct BridgeNet {
    /// The network's key in the manifest (`default` for the default one).
    pub key: String,
    pub bridge: String,
    pub subnet: Subnet,
    /// A user-defined network's own rules (`None`: the default bridge).
    rules: Option<nft::NetworkRules>,
    /// Each service's aliases on this network (from the manifest in force).
    aliases: Mutex<BTreeMap<String, Vec<String>>>,
    /// The bridge's name server (once started), its names and its counters.
    dns: Mutex<Option<dns::Server>>,
    names: Arc<dns::Table>,
    pub dns_counters: Arc<dns::Counters>,
    /// What the name table needs of each replica's service ([`NameInfo`]).
    name_info: Mutex<BTreeMap<String, NameInfo>>,
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
    setup: SetupLock,
    record: PathBuf,
}

/// Held while the bridge and its NAT rules are set up or torn down.
pub type SetupLock = Arc<tokio::sync::Mutex<()>>;

/// `<root>/network/bridge.json`: the bridge and subnet the agent set up.
pub fn record_path(paths: &Paths) -> PathBuf {
    paths.root.join("network").join("bridge.json")
}

/// `<root>/network/networks/`: a record per user-defined network, named by its bridge.
fn networks_dir(paths: &Paths) -> PathBuf {
    paths.root.join("network").join("networks")
}

/// The record of the user-defined network on `bridge`.
fn network_record_path(paths: &Paths, bridge: &str) -> PathBuf {
    networks_dir(paths).join(format!("{bridge}.json"))
}

/// Whether any bridge network is recorded (the default one or a user-defined one).
pub fn any_recorded(paths: &Paths) -> bool {
    record_path(paths).exists()
        || fs::read_dir(networks_dir(paths)).is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| is_record(&e.path()))))
}

fn is_record(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "json")
}

/// What `<root>/network/bridge.json` (and each `networks/<bridge>.json`) holds.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct BridgeRecord {
    bridge: String,
    subnet: String,
    /// The network namespace it lives in: device and inode of the agent's `/proc/self/ns/net`.
    netns: (u64, u64),
    /// A user-defined network's key (its NAT table is [`nft::network_table`]); `None`: the
    /// default bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    network: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    internal: bool,
}

/// The bridge of a user-defined network: `sk-` + its name when that is short and plain
/// (letters and digits, at most 12), else `sk-` + 12 hex digits of SHA-256(name).
pub fn network_bridge(name: &str) -> String {
    if name.len() <= 12 && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return format!("sk-{name}");
    }
    use sha2::Digest;
    let d = sha2::Sha256::digest(name.as_bytes());
    format!("sk-{}", d.iter().take(6).map(|b| format!("{b:02x}")).collect::<String>())
}

/// Where the subnets of user-defined networks that name none come from: the /24s of
/// 10.89.0.0/16, the first one that overlaps nothing.
const NETWORK_POOL: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 89, 0, 0), 16);

/// The serialisation of the hosts files' writes (a start's and the refreshes).
static HOSTS_LOCK: Mutex<()> = Mutex::new(());

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
        let key = crate::manifest::DEFAULT_NETWORK.to_string();
        Ok(BridgeNet::new(key, settings.bridge.clone(), subnet, None, ipam, setup, record_path(paths)))
    }

    /// A network not set up yet (nothing touched on the host).
    fn new(
        key: String,
        bridge: String,
        subnet: Subnet,
        rules: Option<nft::NetworkRules>,
        ipam: Ipam,
        setup: SetupLock,
        record: PathBuf,
    ) -> BridgeNet {
        BridgeNet {
            key,
            bridge,
            subnet,
            rules,
            aliases: Mutex::default(),
            dns: Mutex::new(None),
            names: Arc::default(),
            dns_counters: Arc::default(),
            name_info: Mutex::default(),
            ipam,
            ready: tokio::sync::OnceCell::new(),
            retired: std::sync::atomic::AtomicBool::new(false),
            firewall: Mutex::new(None),
            firewall_check: tokio::sync::Mutex::new(None),
            firewall_again: std::sync::atomic::AtomicBool::new(false),
            setup,
            record,
        }
    }

    /// The user-defined network `key` (`decl`), next to the default bridge `default`: its
    /// bridge ([`network_bridge`] of its name), and its subnet — the declared one, else the
    /// one recorded for it, else the first /24 of `NETWORK_POOL` that overlaps no address of
    /// the host, no other recorded network, the default bridge's subnet and `avoid` (the
    /// subnets other networks of the manifest declare). A picked subnet is recorded at once, so
    /// it stays the network's across agent restarts. Blocking.
    pub fn open_network(
        paths: &Paths,
        key: &str,
        decl: &crate::manifest::NetworkDecl,
        default: &NetworkSettings,
        avoid: &[Subnet],
        setup: SetupLock,
    ) -> Result<BridgeNet> {
        let bridge = network_bridge(decl.real_name(key));
        let record = network_record_path(paths, &bridge);
        let recorded: Option<BridgeRecord> = fs::read(&record).ok().and_then(|d| serde_json::from_slice(&d).ok());
        if decl.external && recorded.is_none() {
            bail!(
                "network `{key}` is external, and skiff has no network `{}`: skiff has no networks made outside a manifest; \
                 remove `external: true` so that this manifest sets the network up",
                decl.real_name(key)
            );
        }
        let declared: Option<Subnet> = match &decl.subnet {
            Some(s) => Some(s.parse().with_context(|| format!("the subnet of network `{key}`"))?),
            None => None,
        };
        let from_record = recorded.as_ref().and_then(|r| r.subnet.parse::<Subnet>().ok());
        let subnet = match (declared, from_record) {
            (Some(d), _) => d,
            (None, Some(r)) => r,
            (None, None) => {
                let mut taken: Vec<Subnet> = avoid.to_vec();
                taken.extend(default.subnet.parse::<Subnet>().ok());
                for r in all_records(paths) {
                    taken.extend(r.1.subnet.parse::<Subnet>().ok());
                }
                pick_subnet(&taken, &bridge)?
            }
        };
        let ipam = Ipam::open(&paths.root, subnet)?;
        let rules = nft::NetworkRules { internal: decl.internal, default_bridge: default.bridge.clone() };
        let net = BridgeNet::new(key.to_string(), bridge, subnet, Some(rules), ipam, setup, record);
        if from_record != Some(subnet) {
            net.write_record()?;
        }
        Ok(net)
    }

    /// Whether this network's replicas have no outbound access.
    pub fn internal(&self) -> bool {
        self.rules.as_ref().is_some_and(|r| r.internal)
    }

    /// Whether this is (still) the user-defined network `decl` would open.
    pub fn is_network(&self, key: &str, decl: &crate::manifest::NetworkDecl, default: &NetworkSettings) -> bool {
        self.key == key
            && self.bridge == network_bridge(decl.real_name(key))
            && self.internal() == decl.internal
            && self.rules.as_ref().is_some_and(|r| r.default_bridge == default.bridge)
            && decl.subnet.as_deref().is_none_or(|s| s.parse::<Subnet>().is_ok_and(|s| s == self.subnet))
    }

    /// Sets each service's aliases on this network.
    pub fn set_aliases(&self, aliases: BTreeMap<String, Vec<String>>) {
        *self.aliases.lock().unwrap_or_else(|e| e.into_inner()) = aliases;
    }

    /// The names on this network and their addresses: each service that has a replica on it,
    /// once per replica address, and the service's aliases on this network at the same
    /// addresses. What the hosts files list (and what a resolver on the bridge answers).
    pub fn names(&self) -> Result<Vec<(String, Ipv4Addr)>> {
        let mut by_service: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
        for a in self.ipam.owned()? {
            if let Some(service) = a.owner.as_deref().and_then(service_of) {
                by_service.entry(service.to_string()).or_default().push(a.addr);
            }
        }
        let aliases = self.aliases.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (service, addrs) in &by_service {
            let extra = aliases.get(service).map(Vec::as_slice).unwrap_or_default();
            for name in std::iter::once(service).chain(extra) {
                out.extend(addrs.iter().map(|a| (name.clone(), *a)));
            }
        }
        // Each replica's container_name and hostname, as the name server answers them.
        let info = self.name_info.lock().unwrap_or_else(|e| e.into_inner());
        for a in self.ipam.owned()? {
            if let Some(i) = a.owner.as_deref().and_then(|o| info.get(o)) {
                out.extend(i.names.iter().map(|n| (n.clone(), a.addr)));
            }
        }
        Ok(out)
    }

    /// The NAT table of this network.
    fn nat(&self) -> Result<nft::Nat> {
        match &self.rules {
            None => nft::Nat::new(&self.bridge, self.subnet),
            Some(r) => nft::Nat::network(&self.bridge, self.subnet, r.clone()),
        }
    }

    fn record(&self) -> Result<BridgeRecord> {
        Ok(BridgeRecord {
            bridge: self.bridge.clone(),
            subnet: self.subnet.to_string(),
            netns: netns_id(Path::new("/proc/self/ns/net"))?,
            network: self.rules.as_ref().map(|_| self.key.clone()),
            internal: self.internal(),
        })
    }

    /// Writes this network's record (temp + fsync + rename). Blocking.
    fn write_record(&self) -> Result<()> {
        let rec = self.record()?;
        let dir = self.record.parent().unwrap_or(Path::new("/"));
        skiff_images::fsutil::create_private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_atomic(dir, &self.record, &serde_json::to_vec_pretty(&rec)?)
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
                    if self.rules.is_some() {
                        bail!(
                            "the subnet {} of network `{}` overlaps {addr}/{prefix} on {ifname}: choose another under networks.{}.ipam.config in the manifest",
                            self.subnet, self.key, self.key
                        );
                    }
                    bail!(
                        "the bridge subnet {} overlaps {addr}/{prefix} on {ifname}: choose another under `x-skiff: subnet:` in the manifest",
                        self.subnet
                    );
                }
                link::ensure_bridge(&self.bridge, self.subnet.gateway(), self.subnet.prefix())
                    .await
                    .with_context(|| format!("setting up the bridge {}", self.bridge))?;
                let nat = self.nat()?;
                let (bridge, record) = (self.bridge.clone(), self.record.clone());
                let settings = self.record()?;
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
    /// A failure is logged; the containers then get the host's nameservers. An internal
    /// network's answers its own names only: nothing is forwarded out of it.
    pub fn start_dns(&self) {
        let mut cur = self.dns.lock().unwrap_or_else(|e| e.into_inner());
        if cur.is_some() || self.retired.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let Some(rt) = dns_runtime() else { return };
        let addr = std::net::SocketAddrV4::new(self.subnet.gateway(), 53);
        let upstreams = if self.internal() { "" } else { "/etc/resolv.conf" };
        match dns::start(&rt, &self.bridge, addr, self.names.clone(), upstreams, self.dns_counters.clone()) {
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

    /// Rebuilds the name table from the allocations: each owner `SERVICE-N` (or `SERVICE-N.b`)
    /// is known as `SERVICE-N`, `SERVICE`, the service's aliases on this network, and its
    /// container_name and hostname; its `dns:` servers are where its other queries go.
    fn publish_names(&self) -> Result<()> {
        let owned = self.ipam.owned()?;
        let info = self.name_info.lock().unwrap_or_else(|e| e.into_inner());
        let aliases = self.aliases.lock().unwrap_or_else(|e| e.into_inner());
        let entries: Vec<dns::Entry> = owned
            .iter()
            .filter_map(|a| {
                let id = a.owner.as_deref()?;
                let service = service_of(id)?;
                let replica = id.strip_suffix(".b").unwrap_or(id);
                let mut names = vec![replica.to_string(), service.to_string()];
                names.extend(aliases.get(service).into_iter().flatten().cloned());
                let NameInfo { names: extra, mut upstreams, also } = info.get(id).cloned().unwrap_or_default();
                names.extend(extra);
                if self.internal() {
                    upstreams.clear(); // nothing leaves an internal network, queries neither
                }
                Some(dns::Entry { addr: a.addr, names, upstreams, also })
            })
            .collect();
        self.names.set(&entries);
        Ok(())
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
        let nat = self.nat()?;
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

    /// Connects replica `id` to this network as its `index`th interface (`eth{index}`):
    /// address (`fixed`, else one from the pool; idempotent), network namespace, veth on the
    /// bridge, and the default route via the gateway when `default_route`. Returns the
    /// address. The name files are written by [`write_files`] once every network is connected.
    pub async fn connect(
        self: &Arc<Self>,
        paths: &Paths,
        id: &str,
        index: usize,
        fixed: Option<Ipv4Addr>,
        default_route: bool,
    ) -> Result<Ipv4Addr> {
        self.ensure_ready().await?;
        let ns = paths.netns(id);
        let (me, i, n) = (self.clone(), id.to_string(), ns.clone());
        let addr = tokio::task::spawn_blocking(move || -> Result<Ipv4Addr> {
            let addr = match fixed {
                Some(a) => me.ipam.allocate_at(&i, a),
                None => me.ipam.allocate(&i),
            }
            .with_context(|| format!("allocating an address for {i} on network `{}`", me.key))?;
            super::netns::ensure(&n).with_context(|| format!("making the network namespace {}", n.display()))?;
            Ok(addr)
        })
        .await
        .map_err(|e| anyhow!("{e}"))??;
        // The first network's pair keeps the name it always had.
        let host = if index == 0 { link::host_ifname(id) } else { link::host_ifname(&format!("{id}@{}", self.key)) };
        let gateway = default_route.then(|| self.subnet.gateway());
        link::attach_as(&ns, &self.bridge, &host, &format!("eth{index}"), addr, self.subnet.prefix(), gateway)
            .await
            .with_context(|| format!("connecting {id} to the bridge {}", self.bridge))?;
        Ok(addr)
    }
}

/// Writes (temp + fsync + rename: the container is not running) the name files of replica
/// `id` of `svc`, connected to `nets` (in order) at the addresses given.
pub fn write_files(paths: &Paths, svc: &Service, id: &str, nets: &[(Arc<BridgeNet>, Ipv4Addr)]) -> Result<()> {
    let dir = paths.container(id);
    skiff_images::fsutil::create_private_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let host_resolv = ["/run/systemd/resolve/resolv.conf", "/etc/resolv.conf"]
        .iter()
        .find_map(|p| fs::read_to_string(p).ok())
        .unwrap_or_default();
    // The name server of the first network (the replica's default route's, if any).
    let resolv = match nets.first().and_then(|(n, _)| n.dns_address()) {
        Some(gw) => files::resolv_conf_gateway(&host_resolv, IpAddr::V4(gw)),
        None => files::resolv_conf(&host_resolv, Some(&svc.dns)),
    };
    write_name_file(&dir, &dir.join(RESOLV_FILE), resolv.as_bytes())?;
    let _guard = HOSTS_LOCK.lock().map_err(|_| anyhow!("hosts lock poisoned"))?;
    for (net, _) in nets {
        let info = name_info(svc, net, nets.iter().map(|(n, _)| n));
        net.name_info.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_string(), info);
        net.publish_names()?;
    }
    let text = hosts_text(svc, id, nets)?;
    write_name_file(&dir, &dir.join(HOSTS_FILE), text.as_bytes())
}

/// The /etc/hosts of replica `id` of `svc` on `nets` (with its address on each): its own name
/// at its first address, then the names of every network it is on ([`BridgeNet::names`]), each
/// name and address once.
fn hosts_text(svc: &Service, id: &str, nets: &[(Arc<BridgeNet>, Ipv4Addr)]) -> Result<String> {
    let Some((_, own)) = nets.first() else { bail!("{id} is on no network") };
    let mut seen = std::collections::BTreeSet::new();
    let mut names: Vec<(String, IpAddr)> = Vec::new();
    for (net, _) in nets {
        for (name, addr) in net.names()? {
            if seen.insert((name.clone(), addr)) {
                names.push((name, IpAddr::V4(addr)));
            }
        }
    }
    let entries: Vec<(&str, IpAddr)> = names.iter().map(|(n, a)| (n.as_str(), *a)).collect();
    let extra: Vec<(&str, IpAddr)> = svc.extra_hosts.iter().map(|h| (h.name.as_str(), h.ip)).collect();
    files::hosts_file(&hostname(svc, id), IpAddr::V4(*own), &entries, &extra)
}

/// Rewrites, in place, the hosts file of each of `replicas` (id, service, the networks it is
/// on in order) that has an address on each and a hosts file. Errors are logged; one
/// replica's does not stop the others.
pub fn refresh_hosts(paths: &Paths, replicas: &[(String, Service, Vec<Arc<BridgeNet>>)]) {
    let Ok(_guard) = HOSTS_LOCK.lock() else { return };
    // Each network's name table: the replicas on it.
    let mut per_net: BTreeMap<String, (Arc<BridgeNet>, BTreeMap<String, NameInfo>)> = BTreeMap::new();
    for (id, svc, nets) in replicas {
        for net in nets {
            per_net
                .entry(net.key.clone())
                .or_insert_with(|| (net.clone(), BTreeMap::new()))
                .1
                .insert(id.clone(), name_info(svc, net, nets));
        }
    }
    for (net, info) in per_net.into_values() {
        *net.name_info.lock().unwrap_or_else(|e| e.into_inner()) = info;
        if let Err(e) = net.publish_names() {
            super::reconcile::log(&format!("{}: its name table: {e:#}", net.bridge));
        }
    }
    let mut owned: BTreeMap<String, Vec<crate::net::ipam::Allocation>> = BTreeMap::new();
    for (id, svc, nets) in replicas {
        let mut with_addr = Vec::new();
        for net in nets {
            if !owned.contains_key(&net.key) {
                match net.ipam.owned() {
                    Ok(o) => owned.insert(net.key.clone(), o),
                    Err(e) => {
                        super::reconcile::log(&format!("reading the address allocations: {e:#}"));
                        return;
                    }
                };
            }
            let allocs = owned.get(&net.key).map(Vec::as_slice).unwrap_or_default();
            if let Some(a) = allocs.iter().find(|a| a.owner.as_deref() == Some(id.as_str())) {
                with_addr.push((net.clone(), a.addr));
            }
        }
        if with_addr.len() != nets.len() {
            continue; // not connected yet (its start writes the file)
        }
        let path = paths.container(id).join(HOSTS_FILE);
        let res = hosts_text(svc, id, &with_addr).and_then(|text| {
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

/// What a network's name table keeps of a replica: its names beyond the service's and the
/// replica's (`container_name`, `hostname`), its `dns:` servers, and the tables of the other
/// networks it is on (whose names it finds too, through this network's server).
#[derive(Clone, Debug, Default)]
struct NameInfo {
    names: Vec<String>,
    upstreams: Vec<IpAddr>,
    also: Vec<std::sync::Weak<dns::Table>>,
}

/// [`NameInfo`] of a replica of `svc` on `net`, one of `nets`.
fn name_info<'a>(svc: &Service, net: &BridgeNet, nets: impl IntoIterator<Item = &'a Arc<BridgeNet>>) -> NameInfo {
    let mut names: Vec<String> = svc.container_name.iter().chain(svc.hostname.iter()).cloned().collect();
    names.dedup();
    let also = nets.into_iter().filter(|n| n.key != net.key).map(|n| Arc::downgrade(&n.names)).collect();
    NameInfo { names, upstreams: svc.dns.clone(), also }
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
        Ok(ns) => net::on_thread_in(Some(&ns), || net::block_on_netlink(link::detach_all())?)
            .with_context(|| format!("deleting the veth pairs of {id} (in {})", ns_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("opening {}", ns_path.display())),
    }
    for ipam in Ipam::open_all(&paths.root)? {
        ipam.release_owner(id).with_context(|| format!("releasing the address of {id}"))?;
    }
    Ok(())
}

/// Every user-defined network's record: (its path, what it holds). Unreadable ones are skipped.
fn all_records(paths: &Paths) -> Vec<(PathBuf, BridgeRecord)> {
    let Ok(rd) = fs::read_dir(networks_dir(paths)) else { return Vec::new() };
    rd.flatten()
        .map(|e| e.path())
        .filter(|p| is_record(p))
        .filter_map(|p| Some((p.clone(), serde_json::from_slice(&fs::read(&p).ok()?).ok()?)))
        .collect()
}

/// The user-defined networks recorded: (key, bridge).
pub fn recorded_networks(paths: &Paths) -> Vec<(String, String)> {
    all_records(paths).into_iter().filter_map(|(_, r)| Some((r.network?, r.bridge))).collect()
}

/// The first /24 of `NETWORK_POOL` that overlaps none of `taken` nor an address of the
/// host's interfaces (but `bridge`, the network's own, if left over).
fn pick_subnet(taken: &[Subnet], bridge: &str) -> Result<Subnet> {
    let (pool, prefix) = NETWORK_POOL;
    let bridge = bridge.to_string();
    let host = net::on_thread_in(None, || net::block_on_netlink(link::overlapping_addresses(pool, prefix, &bridge))?)
        .context("checking the host's addresses")?;
    for i in 0..=255u32 {
        let candidate = Subnet::new(Ipv4Addr::from(u32::from(pool) + (i << 8)), 24)?;
        let on_host = host.iter().any(|(_, a, p)| {
            Subnet::new(Ipv4Addr::from(u32::from(*a) & mask(*p)), (*p).clamp(8, 30))
                .is_ok_and(|h| crate::net::ipam::overlaps(h, candidate))
                || candidate.contains(*a)
        });
        if !on_host && !taken.iter().any(|t| crate::net::ipam::overlaps(*t, candidate)) {
            return Ok(candidate);
        }
    }
    bail!("no free /24 left in {pool}/{prefix} for another network: give it a subnet under networks.NAME.ipam.config")
}

fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

/// Deletes every bridge network recorded (see `teardown_record`): the default bridge's and
/// each user-defined network's, and the published ports' DNAT table. Returns the bridges
/// removed. For `skiff down`.
pub fn teardown(paths: &Paths, netns: Option<&fs::File>) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    if let Some(b) = teardown_record(&record_path(paths), netns)? {
        removed.push(b);
    }
    for (path, _) in all_records(paths) {
        if let Some(b) = teardown_record(&path, netns)? {
            removed.push(b);
        }
    }
    Ok(removed)
}

/// Removes the default bridge network (see `teardown_record`).
pub fn teardown_default(paths: &Paths, netns: Option<&fs::File>) -> Result<Option<String>> {
    teardown_record(&record_path(paths), netns)
}

/// Removes the user-defined network on `bridge` (see `teardown_record`).
pub fn teardown_network(paths: &Paths, bridge: &str, netns: Option<&fs::File>) -> Result<Option<String>> {
    teardown_record(&network_record_path(paths, bridge), netns)
}

/// Deletes the NAT table and the bridge recorded at `record` (the default bridge's also the
/// published ports' DNAT table), then the record; nothing recorded is nothing to do. Returns
/// the bridge removed. `ip_forward` is left as it is (other software may rely on it). The
/// caller makes sure no replica is left on it.
///
/// The work happens in the network namespace the bridge was made in: `netns` (an open
/// `/proc/<agent>/ns/net`: `skiff down` opens the agent's before stopping it), else the
/// caller's own, which must then be the recorded one — a `skiff down` run in another namespace
/// than the agent's refuses rather than delete another bridge or NAT table of that name.
/// Blocking (netlink and `nft` run on a thread of their own).
fn teardown_record(record: &Path, netns: Option<&fs::File>) -> Result<Option<String>> {
    let data = match fs::read(record) {
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
    let default = rec.network.is_none();
    let nat = match &rec.network {
        None => nft::Nat::new(&rec.bridge, subnet)?,
        Some(_) => nft::Nat::network(
            &rec.bridge,
            subnet,
            nft::NetworkRules {
                internal: rec.internal,
                default_bridge: crate::manifest::network::DEFAULT_BRIDGE.into(),
            },
        )?,
    };
    let bridge = rec.bridge.clone();
    net::on_thread_in(netns, || {
        // `nft` runs as a child of this thread: it inherits the namespace. The bridge goes
        // before the NAT table: its route_localnet is never on without the table's drop rule.
        if default {
            nft::apply_ports(&[], None)?; // the published ports' DNAT table, if any
        }
        net::block_on_netlink(link::remove_bridge(&bridge))?
            .with_context(|| format!("removing the bridge {bridge}"))?;
        nat.remove()
    })
    .context("in the agent's network namespace")?;
    fs::remove_file(record).with_context(|| format!("removing {}", record.display()))?;
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
    let (forward, input) = nft::blockers(bridge).ok()?;
    let input_warning = input.first().map(|b| {
        let rule = |r: &str| format!("nft insert rule {} {} {} {r}", b.family, b.table, b.chain);
        format!(
            "what the host receives from the bridge is dropped by another firewall (table {} {}, chain {}: policy drop, \
             no rule for {bridge}): replicas cannot ask the bridge's name server for service names; let it through with: {}; {}",
            b.family,
            b.table,
            b.chain,
            rule(&format!("iifname \"{bridge}\" udp dport 53 accept")),
            rule(&format!("iifname \"{bridge}\" tcp dport 53 accept")),
        )
    });
    let Some(b) = forward.first() else { return input_warning };
    let rule = |r: &str| format!("nft insert rule {} {} {} {r}", b.family, b.table, b.chain);
    let forward_warning = format!(
        "forwarded traffic is dropped by another firewall (table {} {}, chain {}: policy drop, no rule for {bridge}; \
         Docker sets this up): replicas cannot reach other networks, and other machines cannot reach them \
         through published ports; let the bridge through with: {}; {}; {}",
        b.family,
        b.table,
        b.chain,
        rule(&format!("iifname \"{bridge}\" accept")),
        rule(&format!("oifname \"{bridge}\" ct state established,related accept")),
        rule(&format!("oifname \"{bridge}\" ct status dnat accept")),
    );
    Some(match input_warning {
        Some(i) => format!("{forward_warning}; and {i}"),
        None => forward_warning,
    })
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
        let net = Arc::new(BridgeNet::open(&paths, &NetworkSettings::default(), SetupLock::default()).unwrap());
        let web = Service { name: "web".into(), ..Default::default() };
        let client = Service {
            name: "client".into(),
            extra_hosts: vec![ExtraHost { name: "db.example".into(), ip: "192.0.2.7".parse().unwrap() }],
            ..Default::default()
        };
        let w1 = net.ipam.allocate("web-1").unwrap();
        let c1 = net.ipam.allocate("client-1").unwrap();
        write_files(&paths, &client, "client-1", &[(net.clone(), c1)]).unwrap();
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
        let all = [
            ("client-1".to_string(), client.clone(), vec![net.clone()]),
            ("web-1".to_string(), web.clone(), vec![net.clone()]),
        ];
        refresh_hosts(&paths, &all);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains(&format!("{w1}\tweb\n")) && text.contains(&format!("{w2}\tweb\n")), "{text}");
        assert_eq!(fs::metadata(&path).unwrap().ino(), ino, "rewritten in place");
        assert!(!paths.container("web-1").join(HOSTS_FILE).exists(), "no file is created by a refresh");

        // web-2 goes: released, and gone from the file after a refresh.
        net.ipam.release_owner("web-2").unwrap();
        refresh_hosts(&paths, &all);
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&w2.to_string()), "{text}");
    }

    #[test]
    fn hosts_files_list_the_names_of_the_networks_shared() {
        use crate::manifest::NetworkDecl;
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path());
        let default = NetworkSettings::default();
        let open = |key: &str, subnet: &str| {
            let decl = NetworkDecl { subnet: Some(subnet.into()), ..Default::default() };
            Arc::new(BridgeNet::open_network(&paths, key, &decl, &default, &[], SetupLock::default()).unwrap())
        };
        let front = open("front", "10.90.1.0/24");
        let back = open("back", "10.90.2.0/24");
        assert_eq!((front.bridge.as_str(), back.bridge.as_str()), ("sk-front", "sk-back"));
        back.set_aliases(BTreeMap::from([("api".to_string(), vec!["backend".to_string()])]));
        let web = front.ipam.allocate("web-1").unwrap();
        let api_front = front.ipam.allocate("api-1").unwrap();
        let api_back = back.ipam.allocate("api-1").unwrap();
        let db = back.ipam.allocate("db-1").unwrap();
        let svc = |name: &str| Service { name: name.into(), ..Default::default() };
        write_files(&paths, &svc("web"), "web-1", &[(front.clone(), web)]).unwrap();
        write_files(&paths, &svc("db"), "db-1", &[(back.clone(), db)]).unwrap();
        write_files(&paths, &svc("api"), "api-1", &[(front.clone(), api_front), (back.clone(), api_back)]).unwrap();
        let read = |id: &str| fs::read_to_string(paths.container(id).join(HOSTS_FILE)).unwrap();
        let (w, d, a) = (read("web-1"), read("db-1"), read("api-1"));
        assert!(w.contains(&format!("{api_front}\tapi\n")) && !w.contains("db") && !w.contains("backend"), "{w}");
        assert!(!w.contains(&api_back.to_string()), "{w}");
        assert!(d.contains(&format!("{api_back}\tapi\n")) && d.contains(&format!("{api_back}\tbackend\n")), "{d}");
        assert!(!d.contains("web") && !d.contains(&api_front.to_string()), "{d}");
        assert!(
            a.starts_with("127.0.0.1") && a.contains(&format!("{api_front}\tapi-1\n")),
            "own name, first address: {a}"
        );
        assert!(a.contains(&format!("{web}\tweb\n")) && a.contains(&format!("{db}\tdb\n")), "{a}");
        // What a resolver on back's gateway would answer.
        let names = back.names().unwrap();
        assert!(
            names.contains(&("backend".to_string(), api_back)) && names.contains(&("db".to_string(), db)),
            "{names:?}"
        );
        // Recorded, with the subnet: a restarted agent finds the same one.
        assert_eq!(recorded_networks(&paths).len(), 2);
        let again =
            BridgeNet::open_network(&paths, "front", &NetworkDecl::default(), &default, &[], SetupLock::default())
                .unwrap();
        assert_eq!(again.subnet, front.subnet);
    }

    #[test]
    fn an_external_network_is_one_this_agent_made() {
        use crate::manifest::NetworkDecl;
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path());
        let default = NetworkSettings::default();
        let external = NetworkDecl { external: true, ..Default::default() };
        let e = BridgeNet::open_network(&paths, "shared", &external, &default, &[], SetupLock::default()).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("skiff has no network `shared`") && msg.contains("remove `external: true`"), "{msg}");
        let decl = NetworkDecl { subnet: Some("10.90.3.0/24".into()), ..Default::default() };
        let made = BridgeNet::open_network(&paths, "shared", &decl, &default, &[], SetupLock::default()).unwrap();
        let joined = BridgeNet::open_network(&paths, "shared", &external, &default, &[], SetupLock::default()).unwrap();
        assert_eq!((joined.bridge.as_str(), joined.subnet), (made.bridge.as_str(), made.subnet));
    }

    #[test]
    fn network_bridge_names() {
        assert_eq!(network_bridge("front"), "sk-front");
        assert_eq!(network_bridge("backend12345"), "sk-backend12345");
        let long = network_bridge("my_project_backend");
        assert!(long.starts_with("sk-") && long.len() == 15, "{long}");
        assert_ne!(network_bridge("Front"), "sk-Front");
    }
}
