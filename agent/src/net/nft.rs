//! Outbound NAT and forwarding for the bridge, with nftables, and `ip_forward`.
//!
//! # The `nft` tool rather than raw netlink
//!
//! nftables is programmed over netlink (`NETLINK_NETFILTER`) with batched, nested messages
//! whose expressions (payload offsets, registers, ct keys, masquerade) change between kernel
//! versions. Speaking it ourselves means either a crate (the Rust ones are young and large, or
//! wrap libnftnl in C) or a few hundred lines of hand-encoded messages we would own forever.
//! The `nft` tool (Debian `nftables`, a few hundred KiB, present on every distribution that
//! has nftables) compiles a readable ruleset into exactly those messages, applies it as one
//! atomic transaction (`nft -f -`: all of it or nothing), and reports errors in words. We call
//! it when the bridge is set up or torn down and when a published port's backends change,
//! never per packet or per connection, so a process start costs nothing that matters. The price: one more package (`hack/setup` and
//! the error when it is missing name it) and text to parse for errors.
//!
//! # The ruleset: one table of our own
//!
//! Everything lives in `table ip skiff`, so we never touch anyone else's rules and removing
//! ours is one `delete table`. [`Nat::apply`] sends, in a single transaction:
//! `table ip skiff` (create if absent) + `delete table ip skiff` + the full table: a
//! `postrouting` nat chain masquerading `ip saddr SUBNET oifname != BRIDGE` (outbound) and
//! `ip saddr 127.0.0.0/8 oifname BRIDGE` (the host's connections to 127.0.0.1 that a published
//! port's rule sends to a replica), a `prerouting` filter chain at raw priority dropping
//! `iifname BRIDGE ip daddr 127.0.0.0/8` (the bridge has `route_localnet` for those
//! connections' answers; nothing from a container may reach the host's loopback through it),
//! and a `forward` filter chain accepting `iifname BRIDGE` and `oifname BRIDGE ct state
//! established,related`.
//! Deleting and re-creating in one transaction (rather than only flushing the rules) also
//! drops chains a different version of the agent may have left, so the table is exactly
//! [`Nat::ruleset`] afterwards.
//!
//! Idempotent: applying twice leaves the same ruleset (only the kernel's rule handles
//! differ), and conntrack entries of established connections are not part of the ruleset, so
//! re-applying after an agent restart does not break NATed connections. [`Nat::remove`]
//! deletes the table and is fine when it is absent.
//!
//! Our forward chain's policy is accept; its accept rules do not override another table's
//! drop at the same hook (e.g. an iptables-nft `FORWARD` policy DROP left by Docker): such a
//! host needs its own rule for the bridge (the agent does not detect that yet).
//!
//! # What the agent calls when
//!
//! - when the first bridged replica is about to start (and at agent start when one exists):
//!   [`set_ip_forward`]`(None, true)` — it returns the previous value; the agent logs when it
//!   changed it — then [`Nat::apply`], then [`set_route_localnet`] on the bridge (after the
//!   drop rule is in);
//! - when the last bridged service goes (and on `skiff down`): [`Nat::remove`]; `ip_forward`
//!   is left as it is (other software may rely on it).
//!
//! Each call runs a short blocking process: from tokio, use `spawn_blocking`.
//!
//! # Network namespaces
//!
//! [`Nat::in_netns`] and the `netns` argument of [`set_ip_forward`] run everything in the
//! network namespace at a path (e.g. `/run/netns/NAME`): a thread of our own joins it with
//! `setns` and runs `nft` from there (a child inherits the thread's namespaces) or writes the
//! sysctl there (`/proc/sys/net` is resolved in the opener's namespace). The tests use this to
//! stay away from the host's rules and sysctls.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::ipam::Subnet;

/// Our table's name (family `ip`).
pub const TABLE: &str = "skiff";

/// Outbound NAT and forwarding for one bridge and its subnet.
#[derive(Clone, Debug)]
pub struct Nat {
    bridge: String,
    subnet: Subnet,
    /// [`TABLE`] for the default bridge, [`network_table`] for a user-defined network's.
    table: String,
    /// A user-defined network's rules (`None`: the default bridge's, as they always were).
    network: Option<NetworkRules>,
    nft: PathBuf,
    netns: Option<PathBuf>,
}

impl Nat {
    /// Rules for `bridge` (an interface name) and its `subnet`, applied with `nft` from PATH.
    pub fn new(bridge: &str, subnet: Subnet) -> Result<Nat> {
        check_ifname(bridge)?;
        Ok(Nat {
            bridge: bridge.to_string(),
            subnet,
            table: TABLE.to_string(),
            network: None,
            nft: PathBuf::from("nft"),
            netns: None,
        })
    }

    /// Rules for a user-defined network's `bridge`, in a table of its own
    /// ([`network_table`]): what the default bridge's table holds (masquerade only when not
    /// `internal`), and its isolation (see [`NetworkRules`]).
    pub fn network(bridge: &str, subnet: Subnet, rules: NetworkRules) -> Result<Nat> {
        check_ifname(&rules.default_bridge)?;
        let mut nat = Nat::new(bridge, subnet)?;
        nat.table = network_table(bridge);
        nat.network = Some(rules);
        Ok(nat)
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Runs `nft` from this path instead of PATH's.
    pub fn with_nft(mut self, nft: impl Into<PathBuf>) -> Nat {
        self.nft = nft.into();
        self
    }

    /// Works in the network namespace at `path` instead of the agent's own.
    pub fn in_netns(mut self, path: impl Into<PathBuf>) -> Nat {
        self.netns = Some(path.into());
        self
    }

    /// The whole transaction [`Nat::apply`] sends.
    pub fn ruleset(&self) -> String {
        let (b, s) = (&self.bridge, self.subnet);
        if let Some(n) = &self.network {
            return self.network_ruleset(n);
        }
        table_script(
            TABLE,
            b,
            &format!("\t\tip saddr {s} oifname != \"{b}\" masquerade\n"),
            &format!("\t\tiifname \"{b}\" accept\n\t\toifname \"{b}\" ct state established,related accept\n"),
        )
    }

    /// A user-defined network's table. Nothing new enters the bridge from another interface
    /// but a published port's connections (`ct status dnat`), and nothing new leaves it for
    /// the default bridge (whose own table accepts all): two networks' members cannot reach
    /// each other, each table dropping what enters its bridge. An internal network forwards
    /// nothing in or out at all and has no masquerade.
    fn network_ruleset(&self, n: &NetworkRules) -> String {
        let (b, s, t, d) = (&self.bridge, self.subnet, &self.table, &n.default_bridge);
        let (nat, forward) = if n.internal {
            (
                String::new(),
                format!("\t\tiifname \"{b}\" oifname != \"{b}\" counter drop\n\t\toifname \"{b}\" iifname != \"{b}\" counter drop\n"),
            )
        } else {
            (
                format!("\t\tip saddr {s} oifname != \"{b}\" masquerade\n"),
                format!(
                    "\t\toifname \"{b}\" ct status dnat accept\n\
                     \t\toifname \"{b}\" iifname != \"{b}\" ct state new counter drop\n\
                     \t\tiifname \"{b}\" oifname \"{d}\" ct state new counter drop\n\
                     \t\tiifname \"{b}\" accept\n\
                     \t\toifname \"{b}\" ct state established,related accept\n"
                ),
            )
        };
        table_script(t, b, &nat, &forward)
    }

    /// Creates or replaces our table, atomically. Idempotent.
    pub fn apply(&self) -> Result<()> {
        self.nft(&["-f", "-"], Some(self.ruleset())).map(drop).context("setting up outbound NAT for the bridge")
    }

    /// Deletes our table; fine when it does not exist.
    pub fn remove(&self) -> Result<()> {
        // Declaring the table first makes the delete succeed when it is absent, in one transaction.
        let t = &self.table;
        let script = format!("table ip {t}\ndelete table ip {t}\n");
        self.nft(&["-f", "-"], Some(script)).map(drop).context("removing the NAT rules of the bridge")
    }

    /// Whether our table exists (asked with `nft list tables ip`, which fails only when nft
    /// cannot talk to the kernel at all).
    pub fn exists(&self) -> Result<bool> {
        let out = self.nft(&["list", "tables", "ip"], None)?;
        let want = format!("table ip {}", self.table);
        Ok(out.lines().any(|l| l.trim() == want))
    }

    /// Our table as `nft -j` JSON, or `None` when it does not exist.
    pub fn list_json(&self) -> Result<Option<serde_json::Value>> {
        if !self.exists()? {
            return Ok(None);
        }
        let out = self.nft(&["-j", "list", "table", "ip", &self.table], None)?;
        Ok(Some(serde_json::from_str(&out).context("parsing nft -j output")?))
    }

    /// Runs nft with `args` (and `stdin`), in our namespace; its stdout.
    fn nft(&self, args: &[&str], stdin: Option<String>) -> Result<String> {
        let nft = self.nft.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        in_netns(self.netns.as_deref(), move || run_nft(&nft, &args, stdin))?
    }
}

fn run_nft(nft: &Path, args: &[String], stdin: Option<String>) -> Result<String> {
    let mut child = match Command::new(nft)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "the nft command ({}) was not found: install nftables (Debian: apt-get install nftables)",
            nft.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("running {}", nft.display())),
    };
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error (nft exited early) shows up as its exit status and stderr below.
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().with_context(|| format!("waiting for {}", nft.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!("{}", explain_failure(&format!("{} {}", nft.display(), args.join(" ")), stderr.trim()));
    }
    String::from_utf8(out.stdout).context("nft printed something that is not UTF-8")
}

/// One message for a failed nft call: what the user must do, then what nft said.
fn explain_failure(cmd: &str, stderr: &str) -> String {
    let lower = stderr.to_ascii_lowercase();
    if lower.contains("not supported") || lower.contains("protocol not available") {
        format!(
            "{cmd} failed: the kernel lacks nftables support: enable CONFIG_NF_TABLES, CONFIG_NFT_NAT, \
             CONFIG_NFT_MASQ and CONFIG_NFT_CT, or load the modules (modprobe nf_tables nft_chain_nat \
             nft_masq nft_ct); nft said: {stderr}"
        )
    } else if lower.contains("operation not permitted") {
        format!("{cmd} failed: changing nftables needs root (CAP_NET_ADMIN); nft said: {stderr}")
    } else {
        format!("{cmd} failed: {stderr}")
    }
}

/// The prefix of a user-defined network's table: `skiff_net_` + its bridge, `-` and `.` as `_`.
pub const NETWORK_TABLE_PREFIX: &str = "skiff_net_";

/// The table of a user-defined network's bridge.
pub fn network_table(bridge: &str) -> String {
    let b: String = bridge.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("{NETWORK_TABLE_PREFIX}{b}")
}

/// What sets a user-defined network's table apart from the default bridge's.
#[derive(Clone, Debug)]
pub struct NetworkRules {
    /// `internal: true`: no masquerade, nothing forwarded in or out.
    pub internal: bool,
    /// The default bridge (its table accepts whatever leaves it; this one drops what comes
    /// from it, and what would go to it).
    pub default_bridge: String,
}

/// The table of the published ports' kernel fast path (family `ip`), apart from [`TABLE`]: it
/// changes whenever a replica joins or leaves a port's backends, the NAT table only at setup.
pub const PORTS_TABLE: &str = "skiff_ports";

/// One published IPv4 port steered by the kernel: new connections (or UDP flows) to it are
/// DNATed round-robin (`numgen inc`) to `backends`:`target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortDnat {
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    /// The host address (127.0.0.1 included); `None`: every local address.
    pub host_ip: Option<std::net::Ipv4Addr>,
    pub port: u16,
    pub target: u16,
    /// Never empty (a port without backends has no rule: its connections reach the proxy).
    pub backends: Vec<std::net::Ipv4Addr>,
}

/// The whole transaction that makes [`PORTS_TABLE`] hold exactly `rules` (or removes it when
/// there are none):
/// - `prerouting` (dstnat): connections from other machines to a local address (never to
///   127.0.0.0/8: such packets from outside are martians, not clients);
/// - `output` (-100): connections from this host to one of its own addresses, 127.0.0.1
///   included. Those leave through the bridge with a loopback source, masqueraded there to the
///   gateway's address by [`TABLE`], which needs `route_localnet` on the bridge
///   ([`set_route_localnet`]); [`TABLE`] also drops what that would let in (a container's packet
///   to the host's loopback);
/// - `forward`: DNATed connections are accepted even where another table's forward policy is
///   drop (`ct status dnat`).
pub fn ports_ruleset(rules: &[PortDnat]) -> String {
    let mut out = format!("table ip {PORTS_TABLE}\ndelete table ip {PORTS_TABLE}\n");
    if rules.is_empty() {
        return out;
    }
    let mut pre = String::new();
    let mut local = String::new();
    for r in rules {
        let map: Vec<String> = r.backends.iter().enumerate().map(|(i, a)| format!("{i} : {a}")).collect();
        let dnat = format!(
            "{} dport {} dnat to numgen inc mod {} map {{ {} }} : {}",
            r.protocol,
            r.port,
            r.backends.len(),
            map.join(", "),
            r.target
        );
        match r.host_ip {
            Some(ip) if ip.is_loopback() => local.push_str(&format!("\t\tip daddr {ip} {dnat}\n")),
            Some(ip) => {
                pre.push_str(&format!("\t\tip daddr {ip} {dnat}\n"));
                local.push_str(&format!("\t\tip daddr {ip} {dnat}\n"));
            }
            None => {
                pre.push_str(&format!("\t\tip daddr != 127.0.0.0/8 fib daddr type local {dnat}\n"));
                local.push_str(&format!("\t\tfib daddr type local {dnat}\n"));
            }
        }
    }
    out.push_str(&format!(
        "table ip {PORTS_TABLE} {{\n\
         \tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n{pre}\t}}\n\
         \tchain output {{\n\t\ttype nat hook output priority -100; policy accept;\n{local}\t}}\n\
         \tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tct status dnat accept\n\t}}\n\
         }}\n"
    ));
    out
}

/// Applies [`ports_ruleset`] with `nft` from PATH (in the namespace at `netns`, else ours),
/// atomically.
pub fn apply_ports(rules: &[PortDnat], netns: Option<&Path>) -> Result<()> {
    run_script(netns, ports_ruleset(rules)).map(drop).context("applying the published ports' DNAT rules")
}

/// Runs `script` with `nft -f -` from PATH (in the namespace at `netns`, else ours), as one
/// transaction; what nft printed.
pub(crate) fn run_script(netns: Option<&Path>, script: String) -> Result<String> {
    let nft = PathBuf::from("nft");
    let args = vec!["-f".to_string(), "-".to_string()];
    in_netns(netns, move || run_nft(&nft, &args, Some(script)))?
}

/// The transaction that makes table `t` for bridge `b` anew (create, delete, create: it is
/// idempotent and drops whatever an older agent left): the loopback guard at raw prerouting (a
/// packet from the bridge to 127.0.0.0/8, which `route_localnet` would let in, is dropped),
/// `nat` and the loopback masquerade at postrouting, `forward` at forward.
fn table_script(t: &str, b: &str, nat: &str, forward: &str) -> String {
    format!(
        "table ip {t}\n\
         delete table ip {t}\n\
         table ip {t} {{\n\
         \tchain prerouting {{\n\
         \t\ttype filter hook prerouting priority raw; policy accept;\n\
         \t\tiifname \"{b}\" ip daddr 127.0.0.0/8 counter drop\n\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         {nat}\
         \t\tip saddr 127.0.0.0/8 oifname \"{b}\" masquerade\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         {forward}\
         \t}}\n\
         }}\n"
    )
}

/// A base chain of another table that drops forwarded traffic by policy and has no rule that
/// names our bridge (as Docker's `FORWARD` chain does): our own forward accepts cannot
/// override it, since every base chain at the hook must accept a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardBlocker {
    pub family: String,
    pub table: String,
    pub chain: String,
}

/// The [`ForwardBlocker`]s of this namespace's ruleset for `bridge` (`nft -j list ruleset`).
pub fn forward_blockers(bridge: &str) -> Result<Vec<ForwardBlocker>> {
    Ok(blockers(bridge)?.0)
}

/// The chains that drop, for `bridge`: forwarded traffic ([`ForwardBlocker`]s) and, the same
/// way at the `input` hook, what the host receives from it (the bridge's name server on the
/// gateway), from one listing of the ruleset.
pub fn blockers(bridge: &str) -> Result<(Vec<ForwardBlocker>, Vec<ForwardBlocker>)> {
    check_ifname(bridge)?;
    let out = run_nft(Path::new("nft"), &["-j".into(), "list".into(), "ruleset".into()], None)?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing nft -j list ruleset")?;
    Ok((blockers_in(&v, bridge, "forward"), blockers_in(&v, bridge, "input")))
}

fn blockers_in(ruleset: &serde_json::Value, bridge: &str, hook: &str) -> Vec<ForwardBlocker> {
    let items = ruleset["nftables"].as_array().map(Vec::as_slice).unwrap_or_default();
    let str_of = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
    let named = format!("\"{bridge}\"");
    let mut out = Vec::new();
    for chain in items.iter().filter_map(|i| i.get("chain")) {
        let b = ForwardBlocker {
            family: str_of(chain, "family"),
            table: str_of(chain, "table"),
            chain: str_of(chain, "name"),
        };
        let ours = b.family == "ip"
            && (b.table == TABLE || b.table == PORTS_TABLE || b.table.starts_with(NETWORK_TABLE_PREFIX));
        let ipv4 = matches!(b.family.as_str(), "ip" | "inet");
        if ours || !ipv4 || chain["hook"] != hook || chain["policy"] != "drop" {
            continue;
        }
        let allowed = items.iter().filter_map(|i| i.get("rule")).any(|r| {
            str_of(r, "family") == b.family
                && str_of(r, "table") == b.table
                && str_of(r, "chain") == b.chain
                && r["expr"].to_string().contains(&named)
        });
        if !allowed {
            out.push(b);
        }
    }
    out
}

/// Sets `net.ipv4.ip_forward` (in the namespace at `netns`, else ours) to `on`; returns the
/// value it had before.
pub fn set_ip_forward(netns: Option<&Path>, on: bool) -> Result<bool> {
    set_switch(netns, "/proc/sys/net/ipv4/ip_forward".into(), on)
}

/// Sets `net.ipv4.conf.BRIDGE.route_localnet` (in the namespace at `netns`, else ours) to 1,
/// so that a connection to the host's 127.0.0.1 that the published ports' rules DNAT to a
/// replica may leave through the bridge, and its answers come back. Only after [`Nat::apply`]:
/// its `prerouting` rule drops what route_localnet would otherwise let in, a packet from a
/// container addressed to the host's loopback.
pub fn set_route_localnet(netns: Option<&Path>, bridge: &str) -> Result<()> {
    check_ifname(bridge)?;
    set_switch(netns, format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet"), true).map(drop)
}

/// Sets the 0/1 sysctl at `path` (in the namespace at `netns`, else ours) to `on`; the value it
/// had before.
fn set_switch(netns: Option<&Path>, path: String, on: bool) -> Result<bool> {
    in_netns(netns, move || -> Result<bool> {
        let old = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let old = match old.trim() {
            "0" => false,
            "1" => true,
            other => bail!("{path} holds {other:?}, not 0 or 1"),
        };
        if old != on {
            std::fs::write(&path, if on { "1\n" } else { "0\n" }).with_context(|| format!("writing {path}"))?;
        }
        Ok(old)
    })?
}

/// Runs `f` in a thread of its own that first joins the network namespace at `netns` (when
/// given); the calling thread's namespaces never change.
fn in_netns<T: Send + 'static>(netns: Option<&Path>, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let Some(path) = netns else { return Ok(f()) };
    let ns = std::fs::File::open(path).with_context(|| format!("opening network namespace {}", path.display()))?;
    let shown = path.display().to_string();
    std::thread::Builder::new()
        .name("skiff-nft".into())
        .spawn(move || -> Result<T> {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("joining network namespace {shown}"))?;
            Ok(f())
        })
        .context("starting a thread")?
        .join()
        .map_err(|_| anyhow::anyhow!("the network namespace thread panicked"))?
}

/// An interface name the kernel accepts and that needs no quoting in a ruleset.
fn check_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !ok {
        bail!("invalid bridge name {name:?}: 1 to 15 characters from A-Z a-z 0-9 _ . -");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_tests::netns::TestNetns;

    /// A network namespace of the test's own (`ip netns add`, deleted on drop).
    fn netns() -> TestNetns {
        TestNetns::new().expect("ip netns add")
    }

    /// A command run inside `ns`.
    fn exec(ns: &TestNetns, args: &[&str]) -> std::process::Output {
        ns.output(args).expect("nsenter")
    }

    fn ip(args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("running ip");
        assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn subnet() -> Subnet {
        "10.88.0.0/16".parse().expect("subnet")
    }

    /// The JSON listing without what the kernel numbers anew on every apply.
    fn normalized(v: serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match v {
            Value::Object(m) => Value::Object(
                m.into_iter()
                    .filter(|(k, _)| k != "handle" && k != "metainfo")
                    .map(|(k, v)| (k, normalized(v)))
                    .collect(),
            ),
            Value::Array(a) => Value::Array(
                a.into_iter()
                    .filter(|e| e.as_object().is_none_or(|o| !o.contains_key("metainfo")))
                    .map(normalized)
                    .collect(),
            ),
            other => other,
        }
    }

    #[test]
    fn bad_bridge_names_are_refused() {
        for bad in ["", "a\"b", "br0; flush ruleset", "0123456789abcdef", "..", "a b"] {
            assert!(Nat::new(bad, subnet()).is_err(), "{bad:?} accepted");
        }
        assert!(Nat::new("skiff0", subnet()).is_ok());
    }

    #[test]
    fn missing_nft_is_one_clear_error() {
        let ns = netns();
        let nat = Nat::new("skiff0", subnet()).expect("nat").with_nft("/nonexistent/nft").in_netns(ns.path());
        let err = format!("{:#}", nat.apply().expect_err("no nft"));
        assert!(err.contains("install nftables"), "{err}");
    }

    #[test]
    fn kernel_errors_name_what_to_enable() {
        let msg = explain_failure("nft -f -", "Error: Could not process rule: Operation not supported");
        assert!(msg.contains("CONFIG_NF_TABLES") && msg.contains("modprobe"), "{msg}");
        let msg = explain_failure("nft -f -", "Error: socket(): Protocol not supported");
        assert!(msg.contains("CONFIG_NF_TABLES"), "{msg}");
        let msg = explain_failure("nft -f -", "Error: Operation not permitted");
        assert!(msg.contains("CAP_NET_ADMIN"), "{msg}");
    }

    #[test]
    fn apply_is_idempotent_and_remove_deletes_the_table() {
        let ns = netns();
        let nat = Nat::new("skiff0", subnet()).expect("nat").in_netns(ns.path());
        assert_eq!(nat.list_json().expect("list"), None, "a fresh namespace has no table");
        assert!(!nat.exists().expect("exists"));
        // A table of another name that starts like ours is not ours.
        assert!(exec(&ns, &["nft", "add", "table", "ip", "skiff_ports"]).status.success());
        assert!(!nat.exists().expect("exists"), "skiff_ports is not skiff");
        nat.remove().expect("removing an absent table is fine");

        nat.apply().expect("apply");
        assert!(nat.exists().expect("exists"));
        let first = nat.list_json().expect("list").expect("table exists");
        // What nft shows is what we asked for.
        let text = String::from_utf8_lossy(&exec(&ns, &["nft", "list", "table", "ip", TABLE]).stdout).into_owned();
        assert!(text.contains("type nat hook postrouting priority srcnat; policy accept;"), "{text}");
        assert!(text.contains("ip saddr 10.88.0.0/16 oifname != \"skiff0\" masquerade"), "{text}");
        assert!(text.contains("ip saddr 127.0.0.0/8 oifname \"skiff0\" masquerade"), "{text}");
        assert!(text.contains("type filter hook prerouting priority raw; policy accept;"), "{text}");
        assert!(text.contains("iifname \"skiff0\" ip daddr 127.0.0.0/8 counter packets 0 bytes 0 drop"), "{text}");
        assert!(text.contains("type filter hook forward priority filter; policy accept;"), "{text}");
        assert!(text.contains("iifname \"skiff0\" accept"), "{text}");
        assert!(text.contains("oifname \"skiff0\" ct state established,related accept"), "{text}");

        // A rule and a chain someone added to our table do not survive a re-apply.
        let out = exec(&ns, &["nft", "add", "rule", "ip", TABLE, "forward", "tcp", "dport", "22", "drop"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let out = exec(&ns, &["nft", "add", "chain", "ip", TABLE, "stale"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_ne!(normalized(nat.list_json().expect("list").expect("table")), normalized(first.clone()));

        nat.apply().expect("apply again");
        nat.apply().expect("and again");
        let again = nat.list_json().expect("list").expect("table exists");
        assert_eq!(normalized(again), normalized(first));

        nat.remove().expect("remove");
        assert_eq!(nat.list_json().expect("list"), None);
        nat.remove().expect("remove again");
    }

    #[test]
    fn published_ports_table_is_replaced_whole_and_removed_when_empty() {
        let ns = netns();
        let rule = |port: u16, backends: &[&str]| PortDnat {
            protocol: "tcp",
            host_ip: None,
            port,
            target: 80,
            backends: backends.iter().map(|a| a.parse().unwrap()).collect(),
        };
        let list =
            || String::from_utf8_lossy(&exec(&ns, &["nft", "list", "table", "ip", PORTS_TABLE]).stdout).into_owned();
        apply_ports(&[rule(8080, &["10.88.0.2", "10.88.0.3"])], Some(Path::new(&ns.path()))).expect("apply");
        let text = list();
        assert!(
            text.contains("tcp dport 8080 dnat to numgen inc mod 2 map { 0 : 10.88.0.2, 1 : 10.88.0.3 }"),
            "{text}"
        );
        // Every local address: from other machines (never 127.0.0.0/8 from there), and from
        // this host, loopback included.
        let (pre, out) = text.split_once("chain output").expect("an output chain");
        assert!(pre.contains("ip daddr != 127.0.0.0/8 fib daddr type local tcp dport 8080"), "{text}");
        assert!(out.contains("\t\tfib daddr type local tcp dport 8080"), "{text}");
        assert!(text.contains("ct status dnat accept"), "{text}");
        // Replaced whole: the old port's rule is gone, a host address and UDP are honoured.
        let udp =
            PortDnat { protocol: "udp", host_ip: Some("192.0.2.1".parse().unwrap()), ..rule(5353, &["10.88.0.4"]) };
        apply_ports(&[rule(9090, &["10.88.0.2"]), udp], Some(Path::new(&ns.path()))).expect("apply again");
        let text = list();
        assert!(!text.contains("8080") && text.contains("tcp dport 9090"), "{text}");
        assert!(
            text.contains("ip daddr 192.0.2.1 udp dport 5353 dnat to numgen inc mod 1 map { 0 : 10.88.0.4 }"),
            "{text}"
        );
        // A loopback host address: this host's connections only (the output chain).
        let local = PortDnat { host_ip: Some("127.0.0.1".parse().unwrap()), ..rule(8081, &["10.88.0.5"]) };
        apply_ports(&[local], Some(Path::new(&ns.path()))).expect("apply loopback");
        let text = list();
        let (pre, out) = text.split_once("chain output").expect("an output chain");
        assert!(!pre.contains("8081"), "{text}");
        assert!(out.contains("ip daddr 127.0.0.1 tcp dport 8081 dnat to numgen inc mod 1"), "{text}");
        // Nothing to steer: no table at all; and that twice is fine.
        apply_ports(&[], Some(Path::new(&ns.path()))).expect("remove");
        apply_ports(&[], Some(Path::new(&ns.path()))).expect("remove again");
        assert!(!exec(&ns, &["nft", "list", "table", "ip", PORTS_TABLE]).status.success());
    }

    /// The default bridge's table, as agents before user-defined networks applied it (a table
    /// an older agent left is replaced by the same text).
    #[test]
    fn the_default_table_is_five_rules_in_three_chains() {
        let s = subnet();
        let want = format!(
            "table ip skiff\ndelete table ip skiff\ntable ip skiff {{\n\tchain prerouting {{\n\t\ttype filter hook prerouting priority raw; policy accept;\n\t\tiifname \"skiff0\" ip daddr 127.0.0.0/8 counter drop\n\t}}\n\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tip saddr {s} oifname != \"skiff0\" masquerade\n\t\tip saddr 127.0.0.0/8 oifname \"skiff0\" masquerade\n\t}}\n\tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tiifname \"skiff0\" accept\n\t\toifname \"skiff0\" ct state established,related accept\n\t}}\n}}\n"
        );
        assert_eq!(Nat::new("skiff0", s).expect("nat").ruleset(), want);
    }

    #[test]
    fn forward_blockers_are_drop_policies_of_other_tables_that_do_not_name_the_bridge() {
        let ns = netns();
        let script = "table ip filter {\n\tchain FORWARD {\n\t\ttype filter hook forward priority 0; policy drop;\n\t\toifname \"docker0\" accept\n\t}\n}\n\
                      table inet fw {\n\tchain forwarding {\n\t\ttype filter hook forward priority 0; policy drop;\n\t\tiifname \"skiff0\" accept\n\t}\n}\n\
                      table ip6 v6 {\n\tchain forwarding {\n\t\ttype filter hook forward priority 0; policy drop;\n\t}\n}\n\
                      table ip open {\n\tchain forwarding {\n\t\ttype filter hook forward priority 0; policy accept;\n\t}\n}\n";
        run_script(Some(Path::new(&ns.path())), script.into()).expect("the other tables");
        Nat::new("skiff0", subnet()).expect("nat").in_netns(ns.path()).apply().expect("our own table");
        let found = in_netns(Some(Path::new(&ns.path())), || forward_blockers("skiff0")).expect("netns").expect("list");
        // Only Docker-like `ip filter FORWARD`: `inet fw` names the bridge, ip6 is not IPv4,
        // `ip open` accepts, and our own table is ours.
        assert_eq!(found, [ForwardBlocker { family: "ip".into(), table: "filter".into(), chain: "FORWARD".into() }]);
        let found =
            in_netns(Some(Path::new(&ns.path())), || forward_blockers("docker0")).expect("netns").expect("list");
        assert_eq!(found.len(), 1, "for docker0 it is `inet fw` that blocks: {found:?}");
        assert_eq!(found[0].table, "fw");
        // At the input hook (the name server on the gateway): a host firewall that drops what
        // it receives and says nothing of the bridge.
        let script = "table inet host {\n\tchain input {\n\t\ttype filter hook input priority 0; policy drop;\n\t\tiifname \"lo\" accept\n\t}\n}\n";
        run_script(Some(Path::new(&ns.path())), script.into()).expect("a host firewall");
        let (_, input) = in_netns(Some(Path::new(&ns.path())), || blockers("skiff0")).expect("netns").expect("list");
        assert_eq!(input, [ForwardBlocker { family: "inet".into(), table: "host".into(), chain: "input".into() }]);
    }

    #[test]
    fn route_localnet_on_a_bridge_in_a_namespace() {
        let ns = netns();
        ip(&["-n", ns.name(), "link", "add", "skiff0", "type", "bridge"]);
        let path = "/proc/sys/net/ipv4/conf/skiff0/route_localnet";
        let read = || String::from_utf8_lossy(&exec(&ns, &["cat", path]).stdout).into_owned();
        assert_eq!(read().trim(), "0");
        set_route_localnet(Some(Path::new(&ns.path())), "skiff0").expect("on");
        set_route_localnet(Some(Path::new(&ns.path())), "skiff0").expect("on again");
        assert_eq!(read().trim(), "1");
        // Only on the bridge, never for every interface.
        let all = String::from_utf8_lossy(&exec(&ns, &["cat", "/proc/sys/net/ipv4/conf/all/route_localnet"]).stdout)
            .into_owned();
        assert_eq!(all.trim(), "0");
        let err =
            format!("{:#}", set_route_localnet(Some(Path::new(&ns.path())), "nosuch0").expect_err("no such link"));
        assert!(err.contains("nosuch0/route_localnet"), "{err}");
        assert!(set_route_localnet(Some(Path::new(&ns.path())), "../../all").is_err(), "a path, not a name");
    }

    #[test]
    fn ip_forward_in_a_namespace() {
        let ns = netns();
        let read =
            || String::from_utf8_lossy(&exec(&ns, &["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout).into_owned();
        set_ip_forward(Some(Path::new(&ns.path())), false).expect("off");
        assert_eq!(read().trim(), "0");
        assert!(!set_ip_forward(Some(Path::new(&ns.path())), true).expect("on"), "reports the old value: off");
        assert_eq!(read().trim(), "1");
        assert!(set_ip_forward(Some(Path::new(&ns.path())), true).expect("on again"), "reports the old value: on");
        assert!(set_ip_forward(Some(Path::new("/nonexistent/netns")), true).is_err());
    }

    /// Three namespaces: a "host" with the bridge and an uplink, a "container" on the bridge,
    /// and an "outside" peer that has no route back to the container subnet. The container
    /// reaches the outside only when the host forwards and masquerades.
    #[test]
    fn a_container_reaches_the_outside_only_through_the_nat() {
        let host = netns();
        let ctr = netns();
        let out = netns();
        let (h, c, o) = (host.name(), ctr.name(), out.name());
        ip(&["-n", h, "link", "add", "skiff0", "type", "bridge"]);
        ip(&["-n", h, "addr", "add", "10.88.0.1/16", "dev", "skiff0"]);
        ip(&["-n", h, "link", "set", "skiff0", "up"]);
        ip(&["-n", h, "link", "add", "vc", "type", "veth", "peer", "name", "eth0", "netns", c]);
        ip(&["-n", h, "link", "set", "vc", "master", "skiff0", "up"]);
        ip(&["-n", c, "addr", "add", "10.88.0.2/16", "dev", "eth0"]);
        ip(&["-n", c, "link", "set", "eth0", "up"]);
        ip(&["-n", c, "route", "add", "default", "via", "10.88.0.1"]);
        ip(&["-n", h, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", o]);
        ip(&["-n", h, "addr", "add", "192.0.2.1/24", "dev", "up0"]);
        ip(&["-n", h, "link", "set", "up0", "up"]);
        ip(&["-n", o, "addr", "add", "192.0.2.2/24", "dev", "eth0"]);
        ip(&["-n", o, "link", "set", "eth0", "up"]);
        let ping = || exec(&ctr, &["busybox", "ping", "-c", "1", "-W", "2", "192.0.2.2"]).status.success();
        // The path itself works: the container reaches its gateway.
        assert!(exec(&ctr, &["busybox", "ping", "-c", "1", "-W", "2", "10.88.0.1"]).status.success());

        let nat = Nat::new("skiff0", subnet()).expect("nat").in_netns(host.path());
        set_ip_forward(Some(Path::new(&host.path())), true).expect("ip_forward");
        assert!(!ping(), "forwarding without NAT: the outside cannot answer 10.88.0.2");
        nat.apply().expect("apply");
        assert!(ping(), "with the NAT the container reaches the outside");
        nat.apply().expect("apply again");
        assert!(ping(), "and still after a re-apply");
        set_ip_forward(Some(Path::new(&host.path())), false).expect("ip_forward off");
        assert!(!ping(), "no forwarding, no route out");
    }
}
