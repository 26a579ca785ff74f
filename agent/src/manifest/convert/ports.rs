//! `ports:` (short and long syntax, collisions across services), `extra_hosts:` and `dns:`.

use super::*;

/// A `ports:` entry with the place it came from, for the collision check across services.
pub(super) struct PortSite {
    /// `web.ports[1]`.
    pub(super) label: String,
    pub(super) mapping: PortMapping,
    pub(super) pos: Pos,
}

pub(super) fn ports(cx: &mut Ctx, n: &Node, what: &str, sites: &mut Vec<PortSite>) -> Vec<PortMapping> {
    let Value::Seq(items) = &n.value else {
        cx.err(n.pos, format!("{what} must be a list, not {}", n.kind()));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let label = format!("{what}[{i}]");
        let mapping = match &it.value {
            Value::Map(_) => port_long(cx, it, &label),
            Value::Str(_) | Value::Int(_) => {
                let Some(s) = cx.nonempty_string(it, &label) else { continue };
                match network::parse_port(&s) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        cx.err(it.pos, format!("{label}: {e}"));
                        None
                    }
                }
            }
            _ => {
                cx.err(it.pos, format!("{label} must be a port (\"8080:80\", 80) or a mapping, not {}", it.kind()));
                None
            }
        };
        if let Some(m) = mapping {
            sites.push(PortSite { label, mapping: m.clone(), pos: it.pos });
            out.push(m);
        }
    }
    out
}

/// The long syntax: `{target, published, host_ip, protocol, mode, name, app_protocol}`.
pub(super) fn port_long(cx: &mut Ctx, n: &Node, what: &str) -> Option<PortMapping> {
    let mut target = None;
    let mut published = None;
    let mut protocol = Protocol::Tcp;
    let mut host_ip = None;
    let mut bad = false;
    for (key, k, v) in cx.map(n, what)? {
        let f = format!("{what}.{key}");
        match key.as_str() {
            "target" | "published" => {
                let Some(s) = cx.nonempty_string(v, &f) else {
                    bad = true;
                    continue;
                };
                match network::parse_port_range(&s) {
                    Ok(r) if key == "target" => target = Some(r),
                    Ok(r) => published = Some(r),
                    Err(e) => {
                        cx.err(v.pos, format!("{f}: {e}"));
                        bad = true;
                    }
                }
            }
            "host_ip" => match cx.nonempty_string(v, &f).map(|s| network::parse_ip(&s)) {
                Some(Ok(ip)) => host_ip = Some(ip),
                Some(Err(e)) => {
                    cx.err(v.pos, format!("{f}: {e}"));
                    bad = true;
                }
                None => bad = true,
            },
            "protocol" => match cx.string(v, &f).map(|s| network::parse_protocol(&s)) {
                Some(Ok(p)) => protocol = p,
                Some(Err(e)) => {
                    cx.err(v.pos, format!("{f}: {e}"));
                    bad = true;
                }
                None => bad = true,
            },
            // One node: `host` and `ingress` both publish on this host.
            "mode" => {
                if let Some(m) = cx.string(v, &f) {
                    if !matches!(m.as_str(), "host" | "ingress") {
                        cx.err(v.pos, format!("{f}: `{m}` is not a port mode (host or ingress)"));
                        bad = true;
                    }
                }
            }
            "name" | "app_protocol" => {}
            x if x.starts_with("x-") => {}
            x => cx.unknown(x, k, what),
        }
    }
    let Some(target) = target else {
        if !bad {
            cx.err(n.pos, format!("{what}: a port needs target:"));
        }
        return None;
    };
    if bad {
        return None;
    }
    match network::port_mapping(host_ip, published, target, protocol) {
        Ok(m) => Some(m),
        Err(e) => {
            cx.err(n.pos, format!("{what}: {e}"));
            None
        }
    }
}

/// Two `ports:` entries (of one service or of two) that claim the same host port.
pub(super) fn port_collisions(cx: &mut Ctx, sites: &[PortSite]) {
    for (j, b) in sites.iter().enumerate() {
        if let Some(a) = sites[..j].iter().find(|a| a.mapping.collides_with(&b.mapping)) {
            let (m, p) = (&b.mapping, b.mapping.published.unwrap_or(b.mapping.target));
            let on = m.host_ip.map_or("every address".to_string(), |ip| ip.to_string());
            cx.err(
                b.pos,
                format!(
                    "{}: host port {p}/{} on {on} is already published by {} (at {}: `{}`)",
                    b.label, m.protocol, a.label, a.pos, a.mapping
                ),
            );
        }
    }
}

/// `extra_hosts:` as a list (`NAME:IP`, `NAME=IP`) or a mapping (`NAME: IP` or a list of IPs).
pub(super) fn extra_hosts(cx: &mut Ctx, n: &Node, what: &str) -> Vec<ExtraHost> {
    let mut out = Vec::new();
    match &n.value {
        Value::Seq(items) => {
            for (i, it) in items.iter().enumerate() {
                let f = format!("{what}[{i}]");
                if let Some(s) = cx.nonempty_string(it, &f) {
                    match network::parse_extra_host(&s) {
                        Ok(h) => out.push(h),
                        Err(e) => cx.err(it.pos, format!("{f}: {e}")),
                    }
                }
            }
        }
        _ => {
            for (name, k, v) in cx.map(n, what).unwrap_or_default() {
                let f = format!("{what}.{name}");
                if !network::valid_host_name(&name) {
                    cx.err(k.pos, format!("{f}: `{name}` is not a valid host name"));
                    continue;
                }
                for (ip, pos) in cx.strings(v, &f, true).unwrap_or_default() {
                    match network::extra_host(&name, ip.trim()) {
                        Ok(h) => out.push(h),
                        Err(e) => cx.err(pos, format!("{f}: {e}")),
                    }
                }
            }
        }
    }
    out
}

/// `dns:` one address or a list of them.
pub(super) fn dns(cx: &mut Ctx, n: &Node, what: &str) -> Vec<std::net::IpAddr> {
    let mut out = Vec::new();
    for (s, pos) in cx.strings(n, what, true).unwrap_or_default() {
        match network::parse_ip(s.trim()) {
            Ok(ip) => out.push(ip),
            Err(e) => cx.err(pos, format!("{what}: {e} (dns: takes nameserver addresses)")),
        }
    }
    out
}
