//! User-defined networks: the top-level `networks:` and a service's `networks:` (names, or
//! `NAME: {aliases, ipv4_address}`), with the checks that need both (unknown networks, fixed
//! addresses outside their subnet, overlapping subnets).
//!
//! A service that names no network is on `default`, the agent's bridge as before; a
//! top-level `networks: {default: {ipam: ...}}` sets that bridge's subnet (like
//! `x-skiff: {subnet}`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::{Ctx, Node, Pos, Value};
use crate::manifest::network::{self, NetworkDecl, ServiceNetwork, DEFAULT_NETWORK};
use crate::manifest::{Manifest, NetworkMode, Service};
use crate::net::ipam::Subnet;

/// The top-level `networks:` as read, with positions for the checks made once the services
/// are known.
#[derive(Default)]
pub(super) struct TopNetworks {
    /// Declared networks (`default` excluded) and the position of their key.
    pos: BTreeMap<String, Pos>,
    /// `networks.default.ipam...subnet` and where.
    default_subnet: Option<(String, Pos)>,
}

/// Where a service names a network, for the cross-checks.
pub(super) struct NetSite {
    service: String,
    network: String,
    pos: Pos,
    ipv4: Option<(Ipv4Addr, Pos)>,
}

/// The top-level `networks:`: each network's settings into `m.networks` (and `default`'s
/// subnet), errors for what skiff cannot do.
pub(super) fn top_level(cx: &mut Ctx, n: &Node, m: &mut Manifest) -> TopNetworks {
    let mut top = TopNetworks::default();
    for (name, kn, vn) in cx.map(n, "networks").unwrap_or_default() {
        if name.starts_with("x-") {
            continue;
        }
        if !network::valid_network_name(&name) {
            cx.err(kn.pos, format!("`{name}` is not a valid network name (letters, digits, '.', '-', '_', starting with a letter or digit, at most 64 characters)"));
            continue;
        }
        let f = format!("networks.{name}");
        let Some((decl, subnet_pos)) = decl(cx, vn, &f) else { continue };
        if name == DEFAULT_NETWORK {
            if decl.internal {
                cx.err(vn.pos, format!("{f}.internal: the default network always has outbound access; declare a network of your own with internal: true and list it under the services' networks:"));
            }
            if decl.external {
                cx.err(
                    vn.pos,
                    format!(
                        "{f}.external: the default network is the agent's own bridge, never external; remove external:"
                    ),
                );
            }
            if decl.name.is_some() {
                cx.warn(
                    vn.pos,
                    format!("{f}.name: ignored: the default network's bridge is named by `x-skiff: {{bridge: NAME}}`"),
                );
            }
            if let (Some(s), Some(p)) = (decl.subnet, subnet_pos) {
                top.default_subnet = Some((s, p));
            }
            continue;
        }
        top.pos.insert(name.clone(), kn.pos);
        m.networks.insert(name, decl);
    }
    top
}

/// One network's settings; `None` after an error that leaves nothing to keep. Also where its
/// subnet was written.
fn decl(cx: &mut Ctx, n: &Node, f: &str) -> Option<(NetworkDecl, Option<Pos>)> {
    let mut d = NetworkDecl::default();
    let mut subnet_pos = None;
    let mut ipam_pos = None;
    let outer = f;
    for (key, k, v) in cx.map(n, f)? {
        let f = format!("{f}.{key}");
        match key.as_str() {
            "driver" => match cx.string(v, &f).as_deref() {
                Some("bridge") | None => {}
                Some(x) => cx.err(v.pos, format!("{f}: `{x}` networks are not supported: skiff's networks are bridges on this host (remove driver: or write bridge)")),
            },
            "driver_opts" => cx.warn(k.pos, format!("{f}: ignored: skiff's bridges take no driver options")),
            "internal" => d.internal = cx.bool(v, &f).unwrap_or(false),
            "external" => match &v.value {
                // compose's old form `external: {name: N}`.
                Value::Map(_) => {
                    d.external = true;
                    for (key2, k2, v2) in cx.map(v, &f).unwrap_or_default() {
                        match key2.as_str() {
                            "name" => d.name = real_name(cx, v2, &format!("{f}.name")),
                            x => cx.unknown(x, k2, &f),
                        }
                    }
                }
                _ => d.external = cx.bool(v, &f).unwrap_or(false),
            },
            "name" => d.name = real_name(cx, v, &f),
            "enable_ipv6" => {
                if cx.bool(v, &f) == Some(true) {
                    cx.err(v.pos, format!("{f}: skiff's networks are IPv4 only; remove enable_ipv6 (published ports are reachable over IPv6 on the host all the same)"));
                }
            }
            "attachable" => {
                cx.bool(v, &f);
            }
            "labels" => {
                cx.labels(v, &f);
            }
            "ipam" => {
                ipam_pos = Some(k.pos);
                if let Some((s, p)) = ipam(cx, v, &f) {
                    d.subnet = Some(s);
                    subnet_pos = Some(p);
                }
            }
            x if x.starts_with("x-") => {}
            x => cx.unknown(x, k, outer),
        }
    }
    if d.external {
        if let Some(p) = ipam_pos {
            cx.err(p, format!("{f}: an external network is not set up by this manifest: remove ipam: (or external:)"));
        }
        if d.internal {
            cx.err(
                n.pos,
                format!("{f}: an external network is not set up by this manifest: remove internal: (or external:)"),
            );
        }
    }
    Some((d, subnet_pos))
}

fn real_name(cx: &mut Ctx, n: &Node, f: &str) -> Option<String> {
    let s = cx.nonempty_string(n, f)?;
    if network::valid_network_name(&s) {
        Some(s)
    } else {
        cx.err(n.pos, format!("{f}: `{s}` is not a valid network name (letters, digits, '.', '-', '_', starting with a letter or digit)"));
        None
    }
}

/// `ipam: {driver, config: [{subnet, gateway}], options}`: the subnet, normalised.
fn ipam(cx: &mut Ctx, n: &Node, f: &str) -> Option<(String, Pos)> {
    let mut out = None;
    let outer = f;
    for (key, k, v) in cx.map(n, f).unwrap_or_default() {
        let f = format!("{f}.{key}");
        match key.as_str() {
            "driver" => match cx.string(v, &f).as_deref() {
                Some("default") | None => {}
                Some(x) => cx.err(
                    v.pos,
                    format!("{f}: `{x}`: skiff allocates the addresses itself (remove driver: or write default)"),
                ),
            },
            "options" => cx.warn(k.pos, format!("{f}: ignored")),
            "config" => {
                let Value::Seq(items) = &v.value else {
                    cx.err(v.pos, format!("{f} must be a list, not {}", v.kind()));
                    continue;
                };
                if items.len() > 1 {
                    cx.err(
                        items[1].pos,
                        format!("{f}: one subnet per network (skiff's networks are IPv4 with one subnet)"),
                    );
                }
                if let Some(item) = items.first() {
                    out = config(cx, item, &format!("{f}[0]"));
                }
            }
            x if x.starts_with("x-") => {}
            x => cx.unknown(x, k, outer),
        }
    }
    out
}

fn config(cx: &mut Ctx, n: &Node, f: &str) -> Option<(String, Pos)> {
    let mut subnet: Option<(Subnet, Pos)> = None;
    let mut gateway: Option<(String, Pos)> = None;
    let outer = f;
    for (key, k, v) in cx.map(n, f).unwrap_or_default() {
        let f = format!("{f}.{key}");
        match key.as_str() {
            "subnet" => {
                if let Some(s) = cx.nonempty_string(v, &f) {
                    match s.trim().parse::<Subnet>() {
                        Ok(sub) => subnet = Some((sub, v.pos)),
                        Err(e) => cx.err(v.pos, format!("{f}: {e:#} (skiff's networks are IPv4)")),
                    }
                }
            }
            "gateway" => gateway = cx.nonempty_string(v, &f).map(|g| (g, v.pos)),
            "ip_range" | "aux_addresses" => {
                cx.err(k.pos, format!("{f}: not supported: skiff hands out every address of the subnet; remove it"))
            }
            x if x.starts_with("x-") => {}
            x => cx.unknown(x, k, outer),
        }
    }
    let Some((sub, pos)) = subnet else {
        if let Some((_, p)) = gateway {
            cx.err(p, format!("{f}: a gateway needs a subnet"));
        }
        return None;
    };
    if let Some((g, p)) = gateway {
        if g.trim().parse::<Ipv4Addr>().ok() != Some(sub.gateway()) {
            cx.err(
                p,
                format!(
                    "{f}.gateway: skiff gives the bridge the subnet's first address, {}: remove gateway: or write {}",
                    sub.gateway(),
                    sub.gateway()
                ),
            );
        }
    }
    Some((sub.to_string(), pos))
}

/// A service's `networks:`: a list of names or a mapping `NAME: {aliases, ipv4_address}`.
/// Just `default` without settings is stored as no networks (what it means).
pub(super) fn service_networks(
    cx: &mut Ctx,
    service: &str,
    n: &Node,
    f: &str,
    sites: &mut Vec<NetSite>,
) -> Vec<ServiceNetwork> {
    let mut out: Vec<ServiceNetwork> = Vec::new();
    let mut add = |cx: &mut Ctx, sn: ServiceNetwork, pos: Pos, ipv4: Option<(Ipv4Addr, Pos)>| {
        if out.iter().any(|o| o.name == sn.name) {
            cx.err(pos, format!("{f}: `{}` is listed twice", sn.name));
            return;
        }
        sites.push(NetSite { service: service.to_string(), network: sn.name.clone(), pos, ipv4 });
        out.push(sn);
    };
    match &n.value {
        Value::Seq(_) => {
            for (name, pos) in cx.strings(n, f, false).unwrap_or_default() {
                add(cx, ServiceNetwork { name, ..Default::default() }, pos, None);
            }
        }
        Value::Map(_) => {
            for (name, k, v) in cx.map(n, f).unwrap_or_default() {
                let f = format!("{f}.{name}");
                let mut sn = ServiceNetwork { name, ..Default::default() };
                let mut ipv4 = None;
                let outer = f.clone();
                for (key, k2, v2) in cx.map(v, &f).unwrap_or_default() {
                    let f = format!("{f}.{key}");
                    match key.as_str() {
                        "aliases" => {
                            for (a, p) in cx.strings(v2, &f, false).unwrap_or_default() {
                                if network::valid_host_name(&a) {
                                    sn.aliases.push(a);
                                } else {
                                    cx.err(p, format!("{f}: `{a}` is not a valid host name"));
                                }
                            }
                        }
                        "ipv4_address" => {
                            if let Some(a) = cx.nonempty_string(v2, &f) {
                                match a.trim().parse::<Ipv4Addr>() {
                                    Ok(ip) => {
                                        sn.ipv4_address = Some(ip);
                                        ipv4 = Some((ip, v2.pos));
                                    }
                                    Err(_) => cx.err(v2.pos, format!("{f}: `{a}` is not an IPv4 address")),
                                }
                            }
                        }
                        "ipv6_address" | "link_local_ips" => {
                            cx.err(k2.pos, format!("{f}: skiff's networks are IPv4 only; remove it"))
                        }
                        "mac_address" | "driver_opts" | "priority" | "gw_priority" => {
                            cx.warn(k2.pos, format!("{f}: ignored (the first network listed has the default route)"))
                        }
                        x if x.starts_with("x-") => {}
                        x => cx.unknown(x, k2, &outer),
                    }
                }
                add(cx, sn, k.pos, ipv4);
            }
        }
        _ => cx.err(n.pos, format!("{f} must be a list of network names or a mapping, not {}", n.kind())),
    }
    if let [only] = out.as_slice() {
        if *only == (ServiceNetwork { name: DEFAULT_NETWORK.into(), ..Default::default() }) {
            out.clear();
        }
    }
    out
}

/// The checks of one service's networks once all its keys are read: bridge mode only, a fixed
/// address for one replica only.
pub(super) fn check_service(cx: &mut Ctx, s: &Service, key: Option<Pos>, sites: &[NetSite]) {
    let Some(key) = key else { return };
    if s.network_mode != NetworkMode::Bridge {
        let mode = if s.network_mode == NetworkMode::Host { "host" } else { "none" };
        cx.err(
            key,
            format!(
                "{}.networks: a service with network_mode: {mode} is on no network; remove networks: or network_mode:",
                s.name
            ),
        );
    }
    if s.replicas > 1 {
        for site in sites.iter().filter(|x| x.service == s.name) {
            if let Some((_, p)) = site.ipv4 {
                cx.err(p, format!("{}.networks.{}.ipv4_address: a fixed address is for one replica, and the service has {}; remove ipv4_address or scale to 1", s.name, site.network, s.replicas));
            }
        }
    }
}

/// The checks that need the whole manifest: networks that are declared, fixed addresses inside
/// their subnet and given once, subnets that do not overlap; and `default`'s subnet.
pub(super) fn check_manifest(cx: &mut Ctx, m: &mut Manifest, top: &TopNetworks, sites: &[NetSite]) {
    if let Some((s, pos)) = &top.default_subnet {
        match &m.network.subnet {
            Some(x) if x != s => cx.err(
                *pos,
                format!("networks.default: the subnet {s} differs from `x-skiff: subnet: {x}`; give it once"),
            ),
            _ => m.network.subnet = Some(s.clone()),
        }
    }
    let default_subnet = m.network.subnet.as_deref().and_then(|s| s.parse::<Subnet>().ok());
    let mut fixed: BTreeMap<(String, Ipv4Addr), String> = BTreeMap::new();
    for site in sites {
        let (subnet, decl) = if site.network == DEFAULT_NETWORK {
            (default_subnet, None)
        } else {
            match m.networks.get(&site.network) {
                Some(d) => (d.subnet.as_deref().and_then(|s| s.parse::<Subnet>().ok()), Some(d)),
                None => {
                    cx.err(site.pos, format!("{}.networks: network `{}` is not declared: add it under the top-level networks: (networks: {{{}: {{}}}})", site.service, site.network, site.network));
                    continue;
                }
            }
        };
        let Some((ip, pos)) = site.ipv4 else { continue };
        let what = format!("{}.networks.{}.ipv4_address", site.service, site.network);
        match subnet {
            _ if decl.is_some_and(|d| d.external) => {
                cx.err(pos, format!("{what}: a fixed address on an external network is not supported; remove it"))
            }
            None if site.network == DEFAULT_NETWORK => cx.err(pos, format!("{what}: a fixed address needs a subnet given in the manifest (`x-skiff: subnet:` or networks.default.ipam.config)")),
            None => cx.err(pos, format!("{what}: a fixed address needs the network's subnet: add networks.{}.ipam.config: [{{subnet: ...}}]", site.network)),
            Some(sub) if !sub.contains(ip) => cx.err(pos, format!("{what}: {ip} is not in the network's subnet {sub}")),
            Some(sub) if ip == sub.gateway() => cx.err(pos, format!("{what}: {ip} is the network's gateway (the bridge's address); choose another")),
            Some(sub) if ip == sub.network() || ip == sub.broadcast() => {
                cx.err(pos, format!("{what}: {ip} is the network or broadcast address of {sub}; choose another"))
            }
            Some(_) => {
                if let Some(other) = fixed.insert((site.network.clone(), ip), site.service.clone()) {
                    cx.err(pos, format!("{what}: {ip} is also the address of service `{other}`"));
                }
            }
        }
    }
    // Published ports need a network with a way in.
    for svc in m.services.values() {
        let internal = |n: &ServiceNetwork| m.networks.get(&n.name).is_some_and(|d| d.internal);
        if svc.ports.is_empty() || svc.networks.is_empty() || !svc.networks.iter().all(internal) {
            continue;
        }
        if let Some(site) = sites.iter().find(|x| x.service == svc.name) {
            cx.warn(site.pos, format!("{}.ports: not published: the service is on internal networks only (nothing reaches them from outside); add a network that is not internal", svc.name));
        }
    }
    // Declared subnets: apart from each other and from the default network's.
    let mut seen: Vec<(String, Subnet)> = Vec::new();
    if let Some(d) = default_subnet {
        seen.push((DEFAULT_NETWORK.into(), d));
    }
    for (name, d) in &m.networks {
        let Some(sub) = d.subnet.as_deref().and_then(|s| s.parse::<Subnet>().ok()) else { continue };
        if let Some((other, o)) = seen.iter().find(|(_, o)| crate::net::ipam::overlaps(*o, sub)) {
            let pos = top.pos.get(name).copied().unwrap_or_default();
            cx.err(
                pos,
                format!("networks.{name}: its subnet {sub} overlaps {o} of network `{other}`; choose apart ones"),
            );
        }
        seen.push((name.clone(), sub));
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::manifest::{parse_str, Manifest, NetworkDecl, ServiceNetwork};

    fn lines(src: &str) -> Vec<String> {
        parse_str(src, Path::new("/etc/skiff")).diagnostics.iter().map(|d| d.to_string()).collect()
    }

    #[track_caller]
    fn has(src: &str, prefix: &str, text: &str) {
        let l = lines(src);
        assert!(l.iter().any(|d| d.starts_with(prefix) && d.contains(text)), "no `{prefix}...{text}` in {l:#?}");
    }

    #[track_caller]
    fn clean(src: &str) -> Manifest {
        let r = parse_str(src, Path::new("/etc/skiff"));
        let l: Vec<String> = r.diagnostics.iter().map(|d| d.to_string()).collect();
        assert!(l.is_empty(), "{l:#?}");
        r.manifest.unwrap()
    }

    const TWO: &str = "services:
  web:
    image: a
    networks: [front]
  api:
    image: a
    networks:
      front:
      back:
        aliases: [api.internal, backend]
        ipv4_address: 10.90.0.10
  db:
    image: a
    networks:
      - back
networks:
  front: {}
  back:
    internal: true
    labels: {a: b}
    attachable: true
    ipam:
      driver: default
      config:
        - subnet: 10.90.0.0/24
          gateway: 10.90.0.1
";

    #[test]
    fn two_networks() {
        let m = clean(TWO);
        assert_eq!(m.networks["front"], NetworkDecl::default());
        assert_eq!(
            m.networks["back"],
            NetworkDecl { internal: true, subnet: Some("10.90.0.0/24".into()), ..Default::default() }
        );
        assert_eq!(m.services["web"].networks, [ServiceNetwork { name: "front".into(), ..Default::default() }]);
        assert_eq!(
            m.services["api"].networks,
            [
                ServiceNetwork { name: "front".into(), ..Default::default() },
                ServiceNetwork {
                    name: "back".into(),
                    aliases: vec!["api.internal".into(), "backend".into()],
                    ipv4_address: Some("10.90.0.10".parse().unwrap()),
                }
            ]
        );
    }

    #[test]
    fn no_networks_is_recorded_as_before() {
        let plain = clean("services:\n  a:\n    image: a\n");
        let listed = clean("services:\n  a:\n    image: a\n    networks: [default]\n");
        let mapped = clean("services:\n  a:\n    image: a\n    networks:\n      default:\nnetworks:\n  default:\n");
        assert_eq!(plain, listed);
        assert_eq!(plain, mapped);
        assert!(plain.networks.is_empty() && plain.services["a"].networks.is_empty());
        // A record written before networks existed (no `networks` key) reads as equal.
        let json = serde_json::to_value(&plain.services["a"]).unwrap();
        assert!(json.get("networks").is_none(), "{json}");
        let back: crate::manifest::Service = serde_json::from_value(json).unwrap();
        assert_eq!(back, plain.services["a"]);
        // default's subnet is the bridge's subnet.
        let m = clean(
            "services:\n  a:\n    image: a\nnetworks:\n  default:\n    ipam:\n      config: [{subnet: 10.77.0.0/16}]\n",
        );
        assert_eq!(m.network.subnet.as_deref(), Some("10.77.0.0/16"));
        assert!(m.networks.is_empty());
    }

    #[test]
    fn external_networks_are_accepted_here_and_checked_by_the_agent() {
        let m = clean("services:\n  a:\n    image: a\n    networks: [shared]\nnetworks:\n  shared:\n    external: true\n    name: skiff-shared\n");
        assert_eq!(
            m.networks["shared"],
            NetworkDecl { external: true, name: Some("skiff-shared".into()), ..Default::default() }
        );
    }

    #[test]
    fn errors() {
        let svc = |nets: &str| format!("services:\n  a:\n    image: a\n    networks: {nets}\n");
        has(&svc("[nope]"), "4:16: error: ", "network `nope` is not declared");
        has(&svc("{nope: {}}"), "4:16: error: ", "network `nope` is not declared");
        has(&svc("[a, a]\nnetworks: {a: }"), "4:19: error: ", "listed twice");
        has(&svc("7"), "4:15: error: ", "must be a list of network names or a mapping");
        has(
            "services:\n  a:\n    image: a\n    network_mode: host\n    networks: [n]\nnetworks: {n: }\n",
            "5:5: error: ",
            "network_mode: host is on no network",
        );
        has(
            "services:\n  a:\n    image: a\n    networks: [n]\n    network_mode: none\nnetworks: {n: }\n",
            "4:5: error: ",
            "network_mode: none is on no network",
        );
        let fixed = |ip: &str, extra: &str| {
            format!("services:\n  a:\n    image: a\n{extra}    networks:\n      n: {{ipv4_address: {ip}}}\nnetworks:\n  n:\n    ipam: {{config: [{{subnet: 10.90.0.0/24}}]}}\n")
        };
        clean(&fixed("10.90.0.5", ""));
        has(&fixed("10.90.1.5", ""), "5:25: error: ", "10.90.1.5 is not in the network's subnet 10.90.0.0/24");
        has(&fixed("10.90.0.1", ""), "5:25: error: ", "is the network's gateway");
        has(&fixed("10.90.0.255", ""), "5:25: error: ", "network or broadcast address");
        has(&fixed("fd00::1", ""), "5:25: error: ", "not an IPv4 address");
        has(&fixed("10.90.0.5", "    deploy: {replicas: 2}\n"), "6:25: error: ", "a fixed address is for one replica");
        has(
            "services:\n  a:\n    image: a\n    networks:\n      n: {ipv4_address: 10.90.0.5}\nnetworks: {n: }\n",
            "5:25: error: ",
            "needs the network's subnet",
        );
        has(
            "services:\n  a:\n    image: a\n    networks:\n      n: {ipv4_address: 10.90.0.5}\n  b:\n    image: a\n    networks:\n      n: {ipv4_address: 10.90.0.5}\nnetworks: {n: {ipam: {config: [{subnet: 10.90.0.0/24}]}}}\n",
            "9:25: error: ",
            "also the address of service `a`",
        );
        has(
            "services:\n  a:\n    image: a\n    networks:\n      n: {aliases: [\"no good\"]}\nnetworks: {n: }\n",
            "5:21: error: ",
            "`no good` is not a valid host name",
        );
        has(
            "services:\n  a:\n    image: a\n    networks:\n      n: {ipv6_address: \"fd00::5\"}\nnetworks: {n: }\n",
            "5:11: error: ",
            "IPv4 only",
        );
        let top = |body: &str| format!("services:\n  a:\n    image: a\nnetworks:\n  n:\n{body}");
        has(&top("    driver: overlay\n"), "6:13: error: ", "`overlay` networks are not supported");
        has(&top("    enable_ipv6: true\n"), "6:18: error: ", "IPv4 only");
        has(&top("    driver_opts: {x: y}\n"), "6:5: warning: ", "ignored");
        has(
            &top("    ipam: {config: [{subnet: 10.90.0.0/24, gateway: 10.90.0.9}]}\n"),
            "6:53: error: ",
            "write 10.90.0.1",
        );
        has(&top("    ipam: {config: [{subnet: 10.90.0.1/24}]}\n"), "6:30: error: ", "host bits set");
        has(
            &top("    ipam: {config: [{subnet: 10.90.0.0/24}, {subnet: 10.91.0.0/24}]}\n"),
            "6:45: error: ",
            "one subnet per network",
        );
        has(&top("    ipam: {config: [{subnet: \"fd00::/64\"}]}\n"), "6:30: error: ", "IPv4");
        has(&top("    ipam: {driver: dhcp}\n"), "6:20: error: ", "skiff allocates the addresses itself");
        has(&top("    external: true\n    ipam: {config: [{subnet: 10.90.0.0/24}]}\n"), "7:5: error: ", "remove ipam:");
        has(&top("    frobnicate: 1\n"), "6:5: warning: ", "unknown key `frobnicate` in networks.n");
        has(
            "services:\n  a:\n    image: a\nnetworks:\n  \"bad name\": {}\n",
            "5:3: error: ",
            "not a valid network name",
        );
        has(
            "services:\n  a:\n    image: a\nnetworks:\n  a: {ipam: {config: [{subnet: 10.90.0.0/16}]}}\n  b: {ipam: {config: [{subnet: 10.90.1.0/24}]}}\n",
            "6:3: error: ",
            "overlaps 10.90.0.0/16 of network `a`",
        );
        has(
            "services:\n  a:\n    image: a\n    ports: [\"80:80\"]\n    networks: [i]\nnetworks:\n  i: {internal: true}\n",
            "5:16: warning: ",
            "not published: the service is on internal networks only",
        );
        has(
            "services:\n  a:\n    image: a\nnetworks:\n  default: {internal: true}\n",
            "5:12: error: ",
            "declare a network of your own with internal: true",
        );
        has(
            "services:\n  a:\n    image: a\nnetworks:\n  default: {ipam: {config: [{subnet: 10.77.0.0/16}]}}\nx-skiff: {subnet: 10.78.0.0/16}\n",
            "5:38: error: ",
            "differs from `x-skiff: subnet: 10.78.0.0/16`",
        );
    }
}
