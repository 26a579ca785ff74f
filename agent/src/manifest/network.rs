//! The networking part of the manifest model: published ports, `extra_hosts`, `dns` and the
//! `x-skiff:` bridge settings, with the pure parsers of their text forms (compose's short port
//! syntax, `host:ip`, names and addresses). The located checks live in `convert.rs`.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize};

/// The bridge when the manifest names none.
pub const DEFAULT_BRIDGE: &str = "skiff0";

/// `x-skiff:` at the top level of the manifest: where bridged containers live.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSettings {
    /// The bridge interface (at most 15 bytes of `[a-zA-Z0-9_.-]`), default `skiff0`.
    pub bridge: String,
    /// The bridge's IPv4 subnet, normalised (`10.88.0.0/16`, host bits zero, /8 to /30).
    pub subnet: String,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        NetworkSettings { bridge: DEFAULT_BRIDGE.into(), subnet: crate::net::ipam::DEFAULT_SUBNET.into() }
    }
}

/// `x-skiff:` as written: what the manifest sets, over the agent's defaults (its `--bridge`
/// and `--subnet`, else [`NetworkSettings::default`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// Normalised (`10.88.0.0/16`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
}

impl NetworkOverrides {
    /// The settings in force: these over `defaults`.
    pub fn resolve(&self, defaults: &NetworkSettings) -> NetworkSettings {
        NetworkSettings {
            bridge: self.bridge.clone().unwrap_or_else(|| defaults.bridge.clone()),
            subnet: self.subnet.clone().unwrap_or_else(|| defaults.subnet.clone()),
        }
    }
}

/// TCP or UDP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// An inclusive range of ports, each 1-65535 (`start == end` for a single port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub fn single(port: u16) -> PortRange {
        PortRange { start: port, end: port }
    }
    /// How many ports.
    pub fn len(&self) -> u32 {
        u32::from(self.end) - u32::from(self.start) + 1
    }
    /// Never empty (`start <= end`); here for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }
    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// One entry of `ports:` (short or long syntax).
///
/// - `target` and `published` of the same length: port `published.start + i` of the host goes
///   to port `target.start + i` of the container (`"9000-9002:9000-9002"`).
/// - a single `target` and a `published` range (`"8000-8010:80"`): one free host port of the
///   range is chosen.
/// - no `published` (`"80"`, `"127.0.0.1::80"`): a free host port is chosen per container port
///   (and shown in status).
///
/// The long syntax's `mode` (`host` or `ingress`) is accepted and not kept: on one node both
/// mean "published on this host".
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortMapping {
    /// The container port(s).
    pub target: PortRange,
    /// The host port(s); `None`: chosen by the agent.
    pub published: Option<PortRange>,
    /// The host address to listen on; `None`: every address (0.0.0.0 and ::).
    pub host_ip: Option<IpAddr>,
    pub protocol: Protocol,
}

impl PortMapping {
    /// Whether this and `other` would claim the same host port: same protocol, overlapping host
    /// addresses (`None` and an unspecified address cover their whole family) and overlapping
    /// published ranges. Mappings whose host port is chosen never collide.
    pub fn collides_with(&self, other: &PortMapping) -> bool {
        let (Some(a), Some(b)) = (self.published, other.published) else { return false };
        let ips = match (self.host_ip, other.host_ip) {
            (None, _) | (_, None) => true,
            (Some(x), Some(y)) => x == y || ((x.is_unspecified() || y.is_unspecified()) && x.is_ipv4() == y.is_ipv4()),
        };
        self.protocol == other.protocol && ips && a.overlaps(&b)
    }
}

impl fmt::Display for PortMapping {
    /// Compose's short syntax: `[::1]:8080:80/udp`, `127.0.0.1::80`, `80`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(ip) => write!(f, "{ip}:")?,
            None => {}
        }
        match self.published {
            Some(p) => write!(f, "{p}:")?,
            None if self.host_ip.is_some() => f.write_str(":")?,
            None => {}
        }
        write!(f, "{}", self.target)?;
        if self.protocol != Protocol::Tcp {
            write!(f, "/{}", self.protocol)?;
        }
        Ok(())
    }
}

/// Replica records written before ports were typed hold them as strings: read both forms.
impl<'de> Deserialize<'de> for PortMapping {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Typed {
            target: PortRange,
            published: Option<PortRange>,
            host_ip: Option<IpAddr>,
            #[serde(default)]
            protocol: Protocol,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Typed(Typed),
            Short(String),
        }
        match Either::deserialize(d)? {
            Either::Typed(t) => {
                Ok(PortMapping { target: t.target, published: t.published, host_ip: t.host_ip, protocol: t.protocol })
            }
            Either::Short(s) => parse_port(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// An `extra_hosts` entry: a line `IP NAME` of the container's /etc/hosts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtraHost {
    pub name: String,
    pub ip: IpAddr,
}

/// A port (1-65535) or a range `START-END` of them.
pub fn parse_port_range(s: &str) -> Result<PortRange, String> {
    let one = |p: &str| -> Result<u16, String> {
        match p.trim().parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
            Ok(n) => Err(format!("port {n} is out of range (1-65535)")),
            Err(_) => Err(format!("`{p}` is not a port number")),
        }
    };
    let r = match s.split_once('-') {
        Some((a, b)) => PortRange { start: one(a)?, end: one(b)? },
        None => PortRange::single(one(s)?),
    };
    if r.start > r.end {
        return Err(format!("port range `{s}` ends before it starts"));
    }
    Ok(r)
}

/// An IP address, with or without `[...]` around an IPv6 one.
pub fn parse_ip(s: &str) -> Result<IpAddr, String> {
    let t = s.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(s);
    t.parse().map_err(|_| format!("`{s}` is not an IP address"))
}

/// A mapping from its parts; checks that equal-length ranges pair up.
pub fn port_mapping(
    host_ip: Option<IpAddr>,
    published: Option<PortRange>,
    target: PortRange,
    protocol: Protocol,
) -> Result<PortMapping, String> {
    if let Some(p) = published {
        if p.len() != target.len() && target.len() != 1 {
            return Err(format!(
                "the published range {p} ({} ports) and the target range {target} ({} ports) must have the same length",
                p.len(),
                target.len()
            ));
        }
    }
    Ok(PortMapping { target, published, host_ip, protocol })
}

/// `tcp` or `udp`.
pub fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        _ => Err(format!("`{s}` is not a protocol skiff publishes (tcp or udp)")),
    }
}

/// Compose's short port syntax: `[HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL]`, where HOST_IP may be
/// `[IPv6]`, PUBLISHED may be empty after a HOST_IP (`127.0.0.1::80`) and ports may be ranges.
pub fn parse_port(s: &str) -> Result<PortMapping, String> {
    let s = s.trim();
    let (spec, protocol) = match s.rsplit_once('/') {
        Some((spec, p)) => (spec, parse_protocol(p)?),
        None => (s, Protocol::Tcp),
    };
    let (host_ip, rest) = if let Some(r) = spec.strip_prefix('[') {
        let (ip, rest) = r.split_once(']').ok_or_else(|| format!("`{s}`: `[` without a closing `]`"))?;
        let rest =
            rest.strip_prefix(':').ok_or_else(|| format!("`{s}`: expected `:` after the host address [{ip}]"))?;
        let ip = ip.parse::<IpAddr>().map_err(|_| format!("`{s}`: `{ip}` is not an IP address"))?;
        (Some(ip), rest)
    } else {
        (None, spec)
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (host_ip, published, target) = match (host_ip, parts.as_slice()) {
        (None, [t]) => (None, None, *t),
        (None, [p, t]) => (None, Some(*p), *t),
        (None, [ip, p, t]) => (Some(parse_ip(ip).map_err(|e| format!("`{s}`: {e}"))?), Some(*p), *t),
        (Some(ip), [p, t]) => (Some(ip), Some(*p), *t),
        (Some(ip), [t]) => (Some(ip), None, *t),
        (None, _) => {
            return Err(format!(
                "`{s}` is not HOST_IP:PUBLISHED:TARGET (write an IPv6 host address in brackets: [::1]:8080:80)"
            ))
        }
        (Some(_), _) => return Err(format!("`{s}` is not [HOST_IP]:PUBLISHED:TARGET")),
    };
    let published = match published {
        Some("") if host_ip.is_some() => None,
        Some("") => return Err(format!("`{s}`: the published port is empty")),
        Some(p) => Some(parse_port_range(p).map_err(|e| format!("`{s}`: {e}"))?),
        None => None,
    };
    let target = parse_port_range(target).map_err(|e| format!("`{s}`: {e}"))?;
    port_mapping(host_ip, published, target, protocol).map_err(|e| format!("`{s}`: {e}"))
}

/// A host name for /etc/hosts: dot-separated labels of letters, digits, `-` and `_` (not
/// starting or ending with `-`), each at most 63 bytes, at most 253 in all.
pub fn valid_host_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// `NAME:IP` or `NAME=IP` (the IP may be an IPv6 address, bracketed or not).
pub fn parse_extra_host(s: &str) -> Result<ExtraHost, String> {
    let (name, ip) = match (s.split_once('='), s.split_once(':')) {
        (Some((n, i)), _) => (n, i),
        (None, Some((n, i))) => (n, i),
        (None, None) => return Err(format!("`{s}` must be NAME:IP or NAME=IP")),
    };
    extra_host(name.trim(), ip.trim())
}

/// A validated (name, ip) pair.
pub fn extra_host(name: &str, ip: &str) -> Result<ExtraHost, String> {
    if !valid_host_name(name) {
        return Err(format!("`{name}` is not a valid host name"));
    }
    Ok(ExtraHost { name: name.to_string(), ip: parse_ip(ip)? })
}

/// A network interface name the kernel takes: 1-15 bytes of `[a-zA-Z0-9_.-]`, not `.` or `..`.
pub fn valid_interface_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

/// The network a service is on when it names none (compose's `default`): the agent's bridge
/// (`x-skiff: {bridge, subnet}`), exactly as before user-defined networks.
pub const DEFAULT_NETWORK: &str = "default";

/// A user-defined network: an entry of the top-level `networks:` (other than `default`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkDecl {
    /// `name:`, the network's own name when it differs from its key (for `external`: the skiff
    /// network to join).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `internal: true`: no outbound NAT and no forwarding out of (or into) the bridge.
    #[serde(default)]
    pub internal: bool,
    /// `external: true`: a network this agent made earlier, joined and never removed.
    #[serde(default)]
    pub external: bool,
    /// `ipam.config[0].subnet`, normalised (`10.90.0.0/24`); `None`: picked from a pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
}

impl NetworkDecl {
    /// The network's name (`name:`, else its key).
    pub fn real_name<'a>(&'a self, key: &'a str) -> &'a str {
        self.name.as_deref().unwrap_or(key)
    }
}

/// One network of a service (`services.NAME.networks`), in the order written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceNetwork {
    /// The key of the network under the top-level `networks:` (or `default`).
    pub name: String,
    /// Extra names of the service on this network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// A fixed address (one replica only; inside the network's declared subnet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<std::net::Ipv4Addr>,
}

/// A network name compose takes: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 64 bytes.
pub fn valid_network_name(s: &str) -> bool {
    s.len() <= 64
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}
