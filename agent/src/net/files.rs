//! The name files of a bridged container: `/etc/hosts` and `/etc/resolv.conf`, as text.
//!
//! Pure functions: the caller reads the host's files, writes the results under the agent's
//! root (temp + fsync + rename) and bind-mounts them read-only over the container's.
//!
//! Design choices:
//! - **Service names through /etc/hosts**, not an embedded DNS server: every replica's file
//!   lists each service name once per replica address (one line each), which is how a resolver
//!   gives all addresses of a name; `getaddrinfo` returns them all and most clients try them in
//!   order. Nothing runs in the agent for it, and it works with busybox and musl alike. The
//!   price: the files are rewritten when replicas come and go.
//! - **Names are checked** (letters, digits, `-`, `_`, `.`; at most 253 bytes), so no manifest
//!   value can add lines or fields to the file; a bad one is an error naming it.
//! - **resolv.conf**: with `dns:` configured, its servers replace the host's `nameserver` lines
//!   and the host's `search`/`options` stay (as Docker does). Without it, the host's file is
//!   kept except nameservers on loopback (127.0.0.0/8, ::1: the host's, unreachable from the
//!   container's namespace, e.g. systemd-resolved's 127.0.0.53). When that leaves no nameserver,
//!   a comment says why and what to do, and none is added: skiff never invents a public resolver.
//!   On systemd-resolved hosts the caller should pass `/run/systemd/resolve/resolv.conf` (the
//!   real upstream servers) when it exists. `dns: []` means the same as no `dns:`.
//! - **resolv.conf with the bridge's name server** ([`resolv_conf_gateway`], when the agent
//!   serves DNS on the bridge, see [`super::dns`]): the gateway is the only nameserver (it
//!   forwards to `dns:` or the host's servers, loopback ones included), the host's `search`
//!   and `options` stay, and `options ndots:0` is added unless an `ndots` is set, as Docker
//!   writes for its 127.0.0.11.

use std::fmt::Write as _;
use std::net::IpAddr;

use anyhow::{bail, Result};

/// The fixed head of every hosts file.
const LOCALHOST: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n";

/// `/etc/hosts` of a container named `own_name` at `own_ip`: the localhost lines, its own name,
/// one line per (name, address) of `entries` (a service with three replicas gives three lines
/// of its name), then the user's `extra_hosts`.
pub fn hosts_file(
    own_name: &str,
    own_ip: IpAddr,
    entries: &[(&str, IpAddr)],
    extra_hosts: &[(&str, IpAddr)],
) -> Result<String> {
    check_hostname(own_name)?;
    let mut out = String::from(LOCALHOST);
    let _ = writeln!(out, "{own_ip}\t{own_name}");
    if !entries.is_empty() {
        out.push_str("# services\n");
    }
    for (name, ip) in entries {
        check_hostname(name)?;
        let _ = writeln!(out, "{ip}\t{name}");
    }
    if !extra_hosts.is_empty() {
        out.push_str("# extra_hosts\n");
    }
    for (name, ip) in extra_hosts {
        check_hostname(name)?;
        let _ = writeln!(out, "{ip}\t{name}");
    }
    Ok(out)
}

/// `/etc/resolv.conf` of a container from the host's `host_resolv` and the service's `dns`.
pub fn resolv_conf(host_resolv: &str, dns: Option<&[IpAddr]>) -> String {
    let dns = dns.filter(|d| !d.is_empty());
    let mut out = String::new();
    let mut dropped = Vec::new();
    let mut kept = 0;
    for line in host_resolv.lines() {
        match nameserver(line) {
            None => {
                out.push_str(line);
                out.push('\n');
            }
            Some(_) if dns.is_some() => {}
            Some(Some(ip)) if ip.is_loopback() => dropped.push(ip),
            Some(_) => {
                kept += 1;
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    if let Some(servers) = dns {
        for ip in servers {
            let _ = writeln!(out, "nameserver {ip}");
        }
    } else if kept == 0 && !dropped.is_empty() {
        let list: Vec<String> = dropped.iter().map(|ip| ip.to_string()).collect();
        let _ = writeln!(
            out,
            "# skiff: the host's nameservers ({}) are on its loopback, which a container cannot reach;\n\
             # no nameserver is set. Give the service `dns:` in the manifest.",
            list.join(", ")
        );
    }
    out
}

/// `/etc/resolv.conf` of a container whose nameserver is the bridge's `gateway`: the host's
/// lines but its nameservers, then the gateway, then `options ndots:0` unless an `ndots` is set.
pub fn resolv_conf_gateway(host_resolv: &str, gateway: IpAddr) -> String {
    let mut out = String::new();
    for line in host_resolv.lines().filter(|l| nameserver(l).is_none()) {
        out.push_str(line);
        out.push('\n');
    }
    let _ = writeln!(out, "nameserver {gateway}");
    let ndots = host_resolv.lines().any(|l| {
        let mut w = l.split_whitespace();
        w.next() == Some("options") && w.any(|o| o.starts_with("ndots:"))
    });
    if !ndots {
        out.push_str("options ndots:0\n");
    }
    out
}

/// `Some(address)` for a `nameserver` line (`Some(None)` when the address does not parse).
fn nameserver(line: &str) -> Option<Option<IpAddr>> {
    let mut words = line.split_whitespace();
    if words.next() != Some("nameserver") {
        return None;
    }
    let addr = words.next().unwrap_or("");
    // An IPv6 zone (fe80::1%eth0) does not change whether it is loopback.
    let addr = addr.split('%').next().unwrap_or(addr);
    Some(addr.parse().ok())
}

/// A name fit for a hosts file: RFC 1123 labels, plus `_` as compose service names allow.
fn check_hostname(name: &str) -> Result<()> {
    let ok_byte = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.';
    if name.is_empty() || name.len() > 253 || !name.bytes().all(ok_byte) || name.starts_with(['-', '.']) {
        bail!("{name:?} cannot be a host name (letters, digits, '-', '_', '.'; at most 253 bytes)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn hosts_lists_localhost_own_name_every_replica_and_extra_hosts() {
        let entries = [("web", ip("10.88.0.2")), ("web", ip("10.88.0.3")), ("db", ip("10.88.0.4"))];
        let extra = [("printer", ip("192.168.1.9")), ("v6host", ip("fd00::1"))];
        let text = hosts_file("worker-1", ip("10.88.0.5"), &entries, &extra).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "127.0.0.1\tlocalhost");
        assert!(lines.contains(&"::1\tlocalhost ip6-localhost ip6-loopback"), "{text}");
        let pos = |l: &str| lines.iter().position(|x| *x == l).unwrap_or_else(|| panic!("{l:?} missing in\n{text}"));
        let own = pos("10.88.0.5\tworker-1");
        let w2 = pos("10.88.0.2\tweb");
        let w3 = pos("10.88.0.3\tweb");
        let db = pos("10.88.0.4\tdb");
        let pr = pos("192.168.1.9\tprinter");
        let v6 = pos("fd00::1\tv6host");
        assert!(own < w2 && w2 < w3 && w3 < db && db < pr && pr < v6, "{text}");
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn hosts_without_entries_has_no_section_headers() {
        let text = hosts_file("solo", ip("10.88.0.9"), &[], &[]).unwrap();
        assert!(!text.contains('#'), "{text}");
        assert!(text.ends_with("10.88.0.9\tsolo\n"), "{text}");
    }

    #[test]
    fn hosts_refuses_names_that_would_inject_lines_or_fields() {
        for bad in ["", "a b", "evil\n1.2.3.4 bank", "x\ty", "-lead", "a/b", &"a".repeat(254)] {
            let err = hosts_file(bad, ip("10.0.0.1"), &[], &[]).unwrap_err().to_string();
            assert!(err.contains("cannot be a host name"), "{bad:?}: {err}");
            assert!(hosts_file("ok", ip("10.0.0.1"), &[(bad, ip("10.0.0.2"))], &[]).is_err(), "{bad:?}");
            assert!(hosts_file("ok", ip("10.0.0.1"), &[], &[(bad, ip("10.0.0.2"))]).is_err(), "{bad:?}");
        }
        assert!(hosts_file("my_service.local", ip("10.0.0.1"), &[], &[]).is_ok());
    }

    const RESOLVED: &str = "# managed by systemd-resolved\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n";

    #[test]
    fn loopback_nameservers_are_replaced_by_a_comment() {
        let out = resolv_conf(RESOLVED, None);
        assert!(!out.lines().any(|l| l.starts_with("nameserver")), "{out}");
        assert!(out.contains("127.0.0.53") && out.contains("dns:"), "{out}");
        assert!(out.contains("options edns0 trust-ad\n") && out.contains("search lan\n"), "{out}");
        // every comment line is a comment
        for l in out.lines().filter(|l| l.contains("skiff")) {
            assert!(l.starts_with('#'), "{l}");
        }
    }

    #[test]
    fn reachable_host_nameservers_stay_and_loopback_ones_go() {
        let host = "nameserver 127.0.0.1\nnameserver 192.168.1.1\nnameserver ::1\nnameserver fd00::53\n";
        let out = resolv_conf(host, None);
        assert_eq!(out, "nameserver 192.168.1.1\nnameserver fd00::53\n");
    }

    #[test]
    fn configured_dns_replaces_every_host_nameserver_and_keeps_search() {
        let dns = [ip("9.9.9.9"), ip("2620:fe::fe")];
        let out = resolv_conf("nameserver 192.168.1.1\nsearch lan\nnameserver 127.0.0.53\n", Some(&dns));
        assert_eq!(out, "search lan\nnameserver 9.9.9.9\nnameserver 2620:fe::fe\n");
        let out = resolv_conf(RESOLVED, Some(&dns));
        assert!(!out.contains("127.0.0.53") && !out.contains("# skiff"), "{out}");
        assert!(out.contains("nameserver 9.9.9.9\n"), "{out}");
    }

    #[test]
    fn with_the_bridges_name_server_the_gateway_is_the_only_nameserver() {
        let out = resolv_conf_gateway(RESOLVED, ip("10.88.0.1"));
        assert_eq!(
            out,
            "# managed by systemd-resolved\noptions edns0 trust-ad\nsearch lan\nnameserver 10.88.0.1\noptions ndots:0\n"
        );
        let out = resolv_conf_gateway("nameserver 1.1.1.1\noptions ndots:2 timeout:1\n", ip("10.88.0.1"));
        assert_eq!(out, "options ndots:2 timeout:1\nnameserver 10.88.0.1\n");
        assert_eq!(resolv_conf_gateway("", ip("10.9.0.1")), "nameserver 10.9.0.1\noptions ndots:0\n");
    }

    #[test]
    fn empty_dns_list_means_the_hosts_and_odd_lines_are_kept() {
        let host = "nameserver 10.0.0.1\nnameserver bogus\nnameserver fe80::1%eth0\n";
        assert_eq!(resolv_conf(host, Some(&[])), host);
        assert_eq!(resolv_conf("", None), "");
        assert_eq!(resolv_conf("nameserver 127.1.2.3", None).lines().filter(|l| !l.starts_with('#')).count(), 0);
    }
}
