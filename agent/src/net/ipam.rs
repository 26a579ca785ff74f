//! Address allocation (IPAM) for containers on the bridge subnet.
//!
//! The subnet (default [`DEFAULT_SUBNET`], 10.88.0.0/16) gives: the network address (never
//! handed out), the gateway = the first host address (`.1`, on the bridge), the container
//! addresses from `.2` up to the last host address, and the broadcast address (never handed
//! out). Prefixes from /8 to /30 are accepted (a /30 holds one container).
//!
//! # On disk: one file per address
//!
//! `<root>/network/ipam/<subnet with / as _>/` (e.g. `10.88.0.0_16/`) holds one file per
//! allocated address, named by the address, holding the owner id (a replica id) and a newline.
//! A file is created with `O_CREAT|O_EXCL`, so the kernel decides who gets an address: two
//! agents, two threads or a process restarted after a crash can never hand out one address
//! twice. The file and the directory are fsynced before [`Ipam::allocate`] returns, so an
//! address a container was given survives a power cut. `.lock` (flock) serialises the
//! read-modify steps (is the owner known already? which address is next?) between `Ipam`
//! instances; `.last` (written temp + fsync + rename) remembers the last address handed out so
//! the next allocation starts after it and wraps around: a released address is not reused at
//! once (a late packet for the old container does not reach a new one).
//!
//! # Crashes
//!
//! A crash between creating an address file and finishing its content leaves a file without
//! the trailing newline (empty or torn). Such a file is "allocated by an unknown owner": never
//! handed out again by `allocate`, shown by [`Ipam::owned`] with `owner: None`, and removed
//! only by [`Ipam::retain`] (its owner cannot be alive: the allocation never returned). Since
//! every writer holds `.lock`, `retain` (which takes it too) never sees a write in progress.
//!
//! # What the agent calls when
//!
//! - at start, after adopting the replicas it finds: `retain(|owner| replica exists)`, which
//!   frees the addresses of replicas that went away while no agent ran (and torn files);
//! - before starting a bridged replica: `allocate(replica id)` — idempotent, so a replica
//!   restarted or adopted keeps its address;
//! - when a replica is removed: `release_owner(replica id)`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use skiff_images::fsutil::{self, FileLock, LockKind};

/// The bridge subnet when the manifest and the agent's flags name none.
pub const DEFAULT_SUBNET: &str = "10.88.0.0/16";

/// Longest owner id accepted (a replica id is far shorter).
const MAX_OWNER: usize = 255;

/// An IPv4 subnet: a network address (host bits zero) and a prefix length from 8 to 30.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    /// A subnet from its network address and prefix length, validated.
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<Subnet> {
        if !(8..=30).contains(&prefix) {
            bail!("subnet {network}/{prefix}: the prefix length must be between /8 and /30");
        }
        let net = u32::from(network) & mask(prefix);
        if net != u32::from(network) {
            bail!("subnet {network}/{prefix} has host bits set: did you mean {}/{prefix}?", Ipv4Addr::from(net));
        }
        Ok(Subnet { network, prefix })
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The broadcast address (never handed out).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !mask(self.prefix))
    }

    /// The gateway: the first host address, given to the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// Whether `addr` lies in the subnet (network and broadcast addresses included).
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & mask(self.prefix) == u32::from(self.network)
    }

    /// How many container addresses the subnet holds (all but network, gateway, broadcast).
    pub fn capacity(&self) -> u32 {
        (!mask(self.prefix)) - 2
    }

    /// The container addresses, in order: gateway + 1 ..= broadcast - 1.
    fn first_host(&self) -> u32 {
        u32::from(self.network) + 2
    }

    fn last_host(&self) -> u32 {
        u32::from(self.broadcast()) - 1
    }

    /// Whether `addr` may be given to a container.
    fn is_container_addr(&self, addr: Ipv4Addr) -> bool {
        let a = u32::from(addr);
        (self.first_host()..=self.last_host()).contains(&a)
    }

    /// The directory name of the subnet's allocations: `10.88.0.0_16`.
    pub fn dir_name(&self) -> String {
        format!("{}_{}", self.network, self.prefix)
    }
}

/// Whether two subnets share any address (the bridge's subnet must not overlap a route of the
/// host, or the host could not reach that network any more).
pub fn overlaps(a: Subnet, b: Subnet) -> bool {
    let m = mask(a.prefix.min(b.prefix));
    u32::from(a.network) & m == u32::from(b.network) & m
}

fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Subnet> {
        let (addr, prefix) =
            s.split_once('/').with_context(|| format!("subnet {s:?}: expected ADDRESS/PREFIX, e.g. 10.88.0.0/16"))?;
        let network: Ipv4Addr =
            addr.parse().map_err(|_| anyhow::anyhow!("subnet {s:?}: {addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .with_context(|| format!("subnet {s:?}: {prefix:?} is not a prefix length (0-32)"))?;
        Subnet::new(network, prefix)
    }
}

/// No container address of the subnet is free.
#[derive(Debug)]
pub struct Exhausted {
    pub subnet: Subnet,
}

impl fmt::Display for Exhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no free address in subnet {} (all {} container addresses are allocated): use a larger subnet",
            self.subnet,
            self.subnet.capacity()
        )
    }
}

impl std::error::Error for Exhausted {}

/// One allocated address. `owner` is `None` for a file a crash left incomplete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub addr: Ipv4Addr,
    pub owner: Option<String>,
}

/// `<root>/network/ipam`: a directory per subnet.
fn ipam_dir(root: &Path) -> PathBuf {
    root.join("network").join("ipam")
}

/// The allocations of one subnet under an agent root.
#[derive(Debug)]
pub struct Ipam {
    subnet: Subnet,
    dir: PathBuf,
}

impl Ipam {
    /// Opens (creating when needed) `<root>/network/ipam/<subnet>/`.
    pub fn open(root: &Path, subnet: Subnet) -> Result<Ipam> {
        let ipam_dir = ipam_dir(root);
        let dir = ipam_dir.join(subnet.dir_name());
        if !dir.is_dir() {
            fsutil::create_private_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
            // Make the new directories durable: an address file in a directory whose own name
            // was lost in a power cut would be lost too.
            for d in [root.join("network").as_path(), ipam_dir.as_path(), root] {
                fsutil::fsync_dir(d).with_context(|| format!("fsync of {}", d.display()))?;
            }
        }
        fsutil::remove_stale_writes(&dir);
        Ok(Ipam { subnet, dir })
    }

    /// Every subnet that has allocations under `root` (directories named by
    /// [`Subnet::dir_name`]; other names are ignored).
    pub fn open_all(root: &Path) -> Result<Vec<Ipam>> {
        let Ok(rd) = fs::read_dir(ipam_dir(root)) else { return Ok(Vec::new()) };
        let subnets: Vec<Subnet> = rd
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.replace('_', "/").parse().ok()))
            .collect();
        subnets.into_iter().map(|s| Ipam::open(root, s)).collect()
    }

    /// The subnet.
    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    /// The gateway address (the bridge's).
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.gateway()
    }

    /// The directory of the allocation files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> Result<FileLock> {
        let path = self.dir.join(".lock");
        FileLock::lock(&path, LockKind::Exclusive).with_context(|| format!("locking {}", path.display()))
    }

    /// The address of `owner`: the one it has already (after an agent restart, say), else the
    /// next free one after the last handed out, wrapping around. Durable when it returns.
    /// Fails with [`Exhausted`] (downcast to tell) when none is free.
    pub fn allocate(&self, owner: &str) -> Result<Ipv4Addr> {
        check_owner(owner)?;
        let _lock = self.lock()?;
        let current = self.scan()?;
        if let Some((addr, _)) = current.iter().find(|(_, o)| o.as_deref() == Some(owner)) {
            return Ok(*addr);
        }
        let taken: HashSet<u32> = current.keys().map(|a| u32::from(*a)).collect();
        let (first, last) = (self.subnet.first_host(), self.subnet.last_host());
        let start = match self.last_handed_out() {
            Some(a) if a < last => a + 1,
            _ => first,
        };
        let count = last - first + 1;
        for i in 0..count {
            let candidate = first + (start - first + i) % count;
            if taken.contains(&candidate) {
                continue;
            }
            let addr = Ipv4Addr::from(candidate);
            if self.claim(addr, owner)? {
                self.remember_last(addr)?;
                return Ok(addr);
            }
        }
        Err(Exhausted { subnet: self.subnet }.into())
    }

    /// Gives `owner` exactly `addr` (a service's `ipv4_address`): idempotent; another address
    /// the owner had is released; an address held by someone else is an error naming them.
    pub fn allocate_at(&self, owner: &str, addr: Ipv4Addr) -> Result<Ipv4Addr> {
        check_owner(owner)?;
        if !self.subnet.is_container_addr(addr) {
            bail!("{addr} is not a container address of subnet {}", self.subnet);
        }
        let _lock = self.lock()?;
        let current = self.scan()?;
        match current.get(&addr) {
            Some(Some(o)) if o == owner => return Ok(addr),
            Some(Some(o)) => bail!("{addr} is taken by {o}"),
            Some(None) => bail!("{addr} is taken (an allocation a crash left; it is freed at the next agent start)"),
            None => {}
        }
        for (a, o) in &current {
            if o.as_deref() == Some(owner) {
                self.remove(*a)?;
            }
        }
        if !self.claim(addr, owner)? {
            bail!("{addr} is taken");
        }
        Ok(addr)
    }

    /// Creates the address file exclusively; `false` when it exists already.
    fn claim(&self, addr: Ipv4Addr, owner: &str) -> Result<bool> {
        let path = self.dir.join(addr.to_string());
        let mut f = match OpenOptions::new().write(true).create_new(true).mode(fsutil::PRIVATE_FILE).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        };
        let res = (|| -> io::Result<()> {
            f.write_all(format!("{owner}\n").as_bytes())?;
            f.sync_all()?;
            fsutil::fsync_dir(&self.dir)
        })();
        if let Err(e) = res {
            // Nothing was handed out: give the address back (best effort; a file left behind
            // is a torn allocation that `retain` reclaims).
            drop(f);
            let _ = fs::remove_file(&path);
            return Err(e).with_context(|| format!("writing {}", path.display()));
        }
        Ok(true)
    }

    fn last_handed_out(&self) -> Option<u32> {
        let text = fs::read_to_string(self.dir.join(".last")).ok()?;
        let addr: Ipv4Addr = text.trim().parse().ok()?;
        self.subnet.is_container_addr(addr).then_some(u32::from(addr))
    }

    fn remember_last(&self, addr: Ipv4Addr) -> Result<()> {
        let path = self.dir.join(".last");
        fsutil::write_atomic(&self.dir, &path, format!("{addr}\n").as_bytes())
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Frees `addr`. `false` when it was not allocated.
    pub fn release(&self, addr: Ipv4Addr) -> Result<bool> {
        if !self.subnet.is_container_addr(addr) {
            bail!("{addr} is not a container address of subnet {}", self.subnet);
        }
        let _lock = self.lock()?;
        self.remove(addr)
    }

    /// Frees every address of `owner` (normally one); returns them.
    pub fn release_owner(&self, owner: &str) -> Result<Vec<Ipv4Addr>> {
        check_owner(owner)?;
        let _lock = self.lock()?;
        let mut freed = Vec::new();
        for (addr, o) in self.scan()? {
            if o.as_deref() == Some(owner) && self.remove(addr)? {
                freed.push(addr);
            }
        }
        Ok(freed)
    }

    fn remove(&self, addr: Ipv4Addr) -> Result<bool> {
        let path = self.dir.join(addr.to_string());
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
        fsutil::fsync_dir(&self.dir).with_context(|| format!("fsync of {}", self.dir.display()))?;
        Ok(true)
    }

    /// Every allocation, by address.
    pub fn owned(&self) -> Result<Vec<Allocation>> {
        let _lock = self.lock()?;
        Ok(self.scan()?.into_iter().map(|(addr, owner)| Allocation { addr, owner }).collect())
    }

    /// Keeps the allocations whose owner `alive` says exists and frees the others, and every
    /// incomplete file a crash left. Returns what it freed.
    pub fn retain(&self, mut alive: impl FnMut(&str) -> bool) -> Result<Vec<Allocation>> {
        let _lock = self.lock()?;
        let mut freed = Vec::new();
        for (addr, owner) in self.scan()? {
            let keep = owner.as_deref().is_some_and(&mut alive);
            if !keep && self.remove(addr)? {
                freed.push(Allocation { addr, owner });
            }
        }
        Ok(freed)
    }

    /// The address files: address → owner (`None`: incomplete). Other names (the lock, the
    /// last-address hint, temp files, stray files) are ignored.
    fn scan(&self) -> Result<BTreeMap<Ipv4Addr, Option<String>>> {
        let mut out = BTreeMap::new();
        let rd = fs::read_dir(&self.dir).with_context(|| format!("reading {}", self.dir.display()))?;
        for e in rd {
            let e = e.with_context(|| format!("reading {}", self.dir.display()))?;
            let Some(addr) = e.file_name().to_str().and_then(|n| n.parse::<Ipv4Addr>().ok()) else { continue };
            if !self.subnet.is_container_addr(addr) {
                continue;
            }
            let owner = match fs::read(e.path()) {
                Ok(bytes) => parse_owner(&bytes),
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err).with_context(|| format!("reading {}", e.path().display())),
            };
            out.insert(addr, owner);
        }
        Ok(out)
    }
}

/// The owner of a complete file (`owner\n`), else `None`.
fn parse_owner(bytes: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(bytes.strip_suffix(b"\n")?).ok()?;
    check_owner(text).ok()?;
    Some(text.to_string())
}

fn check_owner(owner: &str) -> Result<()> {
    if owner.is_empty() || owner.len() > MAX_OWNER || owner.chars().any(|c| c.is_control()) {
        bail!("invalid address owner {owner:?}: 1 to {MAX_OWNER} bytes without control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(s: &str) -> Subnet {
        s.parse().expect("valid subnet")
    }

    #[test]
    fn parses_and_validates_subnets() {
        let s = subnet(DEFAULT_SUBNET);
        assert_eq!(s.to_string(), "10.88.0.0/16");
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(s.broadcast(), Ipv4Addr::new(10, 88, 255, 255));
        assert_eq!(s.capacity(), 65533);
        assert_eq!(s.dir_name(), "10.88.0.0_16");
        assert!(s.contains(Ipv4Addr::new(10, 88, 3, 4)));
        assert!(!s.contains(Ipv4Addr::new(10, 89, 0, 1)));
        for bad in ["10.88.0.0", "10.88.0.0/", "10.88.0/16", "10.88.0.0/33", "10.88.0.0/x", "10.88.0.0/31", "0.0.0.0/0"]
        {
            assert!(bad.parse::<Subnet>().is_err(), "{bad} accepted");
        }
        let err = "10.88.0.1/16".parse::<Subnet>().expect_err("host bits").to_string();
        assert!(err.contains("did you mean 10.88.0.0/16"), "{err}");
        assert_eq!(subnet("192.168.7.0/30").capacity(), 1);
    }

    #[test]
    fn overlap() {
        assert!(overlaps(subnet("10.88.0.0/16"), subnet("10.88.4.0/24")));
        assert!(overlaps(subnet("10.88.4.0/24"), subnet("10.0.0.0/8")));
        assert!(overlaps(subnet("10.88.0.0/16"), subnet("10.88.0.0/16")));
        assert!(!overlaps(subnet("10.88.0.0/16"), subnet("10.89.0.0/16")));
        assert!(!overlaps(subnet("192.168.0.0/30"), subnet("192.168.0.4/30")));
    }

    #[test]
    fn allocates_in_order_never_network_gateway_or_broadcast_and_exhausts() {
        let root = tempfile::tempdir().expect("tempdir");
        let ipam = Ipam::open(root.path(), subnet("192.168.50.0/29")).expect("open");
        let got: Vec<Ipv4Addr> = (0..5).map(|i| ipam.allocate(&format!("r{i}")).expect("allocate")).collect();
        let want: Vec<Ipv4Addr> = (2..=6).map(|h| Ipv4Addr::new(192, 168, 50, h)).collect();
        assert_eq!(got, want);
        let err = ipam.allocate("r5").expect_err("exhausted");
        assert!(err.downcast_ref::<Exhausted>().is_some(), "{err:#}");
        assert!(err.to_string().contains("no free address in subnet 192.168.50.0/29"), "{err}");
        // The files are on disk, named by address, holding the owner.
        let text = fs::read_to_string(root.path().join("network/ipam/192.168.50.0_29/192.168.50.4")).expect("file");
        assert_eq!(text, "r2\n");
    }

    #[test]
    fn idempotent_per_owner_across_reopen() {
        let root = tempfile::tempdir().expect("tempdir");
        let a = Ipam::open(root.path(), subnet(DEFAULT_SUBNET)).expect("open");
        let web = a.allocate("web-1").expect("allocate");
        let db = a.allocate("db-1").expect("allocate");
        assert_ne!(web, db);
        assert_eq!(a.allocate("web-1").expect("again"), web);
        drop(a);
        // An agent restart: a new instance on the same root.
        let b = Ipam::open(root.path(), subnet(DEFAULT_SUBNET)).expect("reopen");
        assert_eq!(b.allocate("web-1").expect("after restart"), web);
        assert_eq!(b.allocate("db-1").expect("after restart"), db);
        let mut owned = b.owned().expect("owned");
        owned.sort_by_key(|a| a.addr);
        assert_eq!(
            owned,
            vec![
                Allocation { addr: web, owner: Some("web-1".into()) },
                Allocation { addr: db, owner: Some("db-1".into()) }
            ]
        );
    }

    #[test]
    fn release_and_no_immediate_reuse_then_wrap() {
        let root = tempfile::tempdir().expect("tempdir");
        let ipam = Ipam::open(root.path(), subnet("10.0.0.0/29")).expect("open");
        let a = ipam.allocate("a").expect("a"); // .2
        let b = ipam.allocate("b").expect("b"); // .3
        assert!(ipam.release(a).expect("release"));
        assert!(!ipam.release(a).expect("release twice"), "a second release finds nothing");
        // Not reused at once: the next is after the last handed out.
        let c = ipam.allocate("c").expect("c");
        assert_eq!(c, Ipv4Addr::new(10, 0, 0, 4));
        assert_eq!(ipam.release_owner("b").expect("release owner"), vec![b]);
        assert!(ipam.release_owner("b").expect("again").is_empty());
        // .5, .6, then wrap around to the freed .2 and .3.
        let rest: Vec<Ipv4Addr> = ["d", "e", "f", "g"].iter().map(|o| ipam.allocate(o).expect("alloc")).collect();
        assert_eq!(rest, [5, 6, 2, 3].map(|h| Ipv4Addr::new(10, 0, 0, h)));
        assert!(ipam.allocate("h").is_err());
        assert!(ipam.release(Ipv4Addr::new(10, 0, 0, 1)).is_err(), "the gateway is not a container address");
        assert!(ipam.release(Ipv4Addr::new(10, 9, 0, 2)).is_err(), "outside the subnet");
    }

    #[test]
    fn bad_owners_are_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        let ipam = Ipam::open(root.path(), subnet(DEFAULT_SUBNET)).expect("open");
        for bad in ["", "a\nb", &"x".repeat(256)] {
            assert!(ipam.allocate(bad).is_err(), "{bad:?} accepted");
        }
        assert!(ipam.owned().expect("owned").is_empty());
    }

    #[test]
    fn racing_instances_never_share_an_address() {
        let root = tempfile::tempdir().expect("tempdir");
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let root = root.path().to_path_buf();
                std::thread::spawn(move || {
                    // Each thread its own instance, as two agents would have.
                    let ipam = Ipam::open(&root, subnet("172.30.0.0/26")).expect("open");
                    let mut got = Vec::new();
                    for i in 0..20 {
                        match ipam.allocate(&format!("t{t}-{i}")) {
                            Ok(a) => got.push(a),
                            Err(e) if e.downcast_ref::<Exhausted>().is_some() => break,
                            Err(e) => panic!("allocate: {e:#}"),
                        }
                    }
                    got
                })
            })
            .collect();
        let mut all: Vec<Ipv4Addr> = threads.into_iter().flat_map(|t| t.join().expect("thread")).collect();
        // 80 asked for, 61 available: every one handed out exactly once.
        assert_eq!(all.len(), 61);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 61, "an address was handed out twice");
    }

    #[test]
    fn torn_files_count_as_allocated_until_retain() {
        let root = tempfile::tempdir().expect("tempdir");
        let ipam = Ipam::open(root.path(), subnet("10.0.0.0/29")).expect("open");
        // A crash after O_EXCL created the files of .2 (nothing written) and .3 (half the owner).
        fs::write(ipam.dir().join("10.0.0.2"), b"").expect("write");
        fs::write(ipam.dir().join("10.0.0.3"), b"web-").expect("write");
        assert!(!ipam.claim(Ipv4Addr::new(10, 0, 0, 2), "x").expect("claim"), "O_EXCL: an existing file is not taken");
        assert_eq!(fs::read(ipam.dir().join("10.0.0.2")).expect("read"), b"", "and is left as it was");
        let live = ipam.allocate("live").expect("allocate");
        assert_eq!(live, Ipv4Addr::new(10, 0, 0, 4), "torn allocations are skipped");
        let owned = ipam.owned().expect("owned");
        assert_eq!(owned.len(), 3);
        assert_eq!(owned[0], Allocation { addr: Ipv4Addr::new(10, 0, 0, 2), owner: None });
        assert_eq!(owned[1], Allocation { addr: Ipv4Addr::new(10, 0, 0, 3), owner: None });
        // Releasing an owner never touches them.
        assert!(ipam.release_owner("web-").expect("release").is_empty());
        assert_eq!(ipam.owned().expect("owned").len(), 3);
        // retain frees them and the dead owners, keeps the live ones.
        let dead = ipam.allocate("dead").expect("allocate");
        let mut asked = Vec::new();
        let freed = ipam
            .retain(|o| {
                asked.push(o.to_string());
                o == "live"
            })
            .expect("retain");
        asked.sort();
        assert_eq!(asked, ["dead", "live"], "retain asks only about known owners");
        let freed: Vec<Ipv4Addr> = freed.into_iter().map(|a| a.addr).collect();
        assert_eq!(freed, vec![Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3), dead]);
        assert_eq!(ipam.owned().expect("owned"), vec![Allocation { addr: live, owner: Some("live".into()) }]);
        // Stray names are ignored and survive.
        fs::write(ipam.dir().join("notes"), b"x").expect("write");
        fs::write(ipam.dir().join("10.0.0.7"), b"broadcast\n").expect("write");
        assert_eq!(ipam.owned().expect("owned").len(), 1);
    }
}
