//! The spanned YAML tree → the typed [`Manifest`], with every rule checked on the way.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::network;

mod ctx;
mod devices;
mod extends;
mod files;
mod grants;
#[cfg(test)]
pub(super) use files::home_dir as home_dir_for_tests;
mod include;
mod mounts;
mod networks;
mod ports;
mod profiles;
mod rollout;
mod service;
use super::units;
use super::yaml::{Node, Pos, Value};
use super::*;
#[cfg(test)]
pub(super) use ctx::interpolate;
use ctx::*;
use mounts::*;
use ports::*;
use service::*;

fn valid_service_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 57
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

/// Docker's rule (`[a-zA-Z0-9][a-zA-Z0-9_.-]+`), within a host name's 63 bytes.
fn valid_container_name(s: &str) -> bool {
    s.len() <= 63 && valid_volume_name(s)
}

fn valid_volume_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

/// (service, dependency, where, required)
type DepSite = (String, String, Pos, bool);

/// Checks and converts the whole document.
/// `read` gets the other files read (`include:`, `extends: {file:}`), even on error.
pub(super) fn manifest(
    root: &Node,
    base: &Path,
    check_files: bool,
    diags: &mut Vec<Diagnostic>,
    read: &mut Vec<PathBuf>,
) -> Option<Manifest> {
    let mut files = files::Files::new(base);
    let mut cx = Ctx {
        diags,
        base,
        files: &mut files,
        dotenv: None,
        dotenv_error: None,
        check_files,
        grants: Default::default(),
    };
    if matches!(root.value, Value::Null) {
        cx.err(root.pos, "the manifest is empty: it needs services:");
        return None;
    }
    let m = document(&mut cx, root, true).map(|mut m| {
        profiles::apply(&mut cx, &mut m);
        cycles(&mut cx, &m);
        m
    });
    *read = files.paths();
    // Secret and config files: a change of one is a change of the manifest (their digest is
    // part of the definition).
    for svc in m.iter().flat_map(|m| m.services.values()) {
        for g in &svc.files {
            if let GrantSource::File { path, .. } = &g.source {
                if !read.contains(path) {
                    read.push(path.clone());
                }
            }
        }
    }
    m
}

/// One compose file (the manifest, or a file it includes: `main` is false) and what it
/// includes.
fn document(cx: &mut Ctx, root: &Node, main: bool) -> Option<Manifest> {
    let entries = cx.map(root, "the manifest")?;
    let mut m = Manifest::default();
    // Included files first: the services and volumes of this file may name theirs.
    for (key, _, v) in &entries {
        if key == "include" {
            include::all(cx, v, &mut m);
        }
    }
    let included: BTreeSet<String> = m.services.keys().cloned().collect();
    let mut services_node = None;
    let mut top_networks = networks::TopNetworks::default();
    for (key, k, v) in &entries {
        match key.as_str() {
            "services" => services_node = Some((*k, *v)),
            "include" => {}
            "networks" => top_networks = networks::top_level(cx, v, &mut m),
            "volumes" => {
                for (name, kn, vn) in cx.map(v, "volumes").unwrap_or_default() {
                    if name.starts_with("x-") {
                        continue;
                    }
                    if !valid_volume_name(&name) {
                        cx.err(kn.pos, format!("`{name}` is not a valid volume name (letters, digits, '.', '-', '_', starting with a letter or digit)"));
                        continue;
                    }
                    if let Some(d) = volume_decl(cx, &name, vn) {
                        if m.volumes.get(&name).is_some_and(|e| *e != d) {
                            cx.err(kn.pos, format!("volume `{name}` is also declared, differently, in an included file: declare it once"));
                        }
                        m.volumes.insert(name, d);
                    }
                }
            }
            "version" => {}
            "secrets" | "configs" => grants::declarations(cx, key, v),
            "x-skiff" if main => skiff_extension(cx, v, &mut m),
            "x-skiff" => cx.warn(k.pos, "x-skiff in an included file is ignored: set it in the manifest itself"),
            "name" => {
                if let Some(s) = cx.string(v, "name") {
                    if valid_service_name(&s) {
                        m.name = Some(s);
                    } else {
                        cx.err(
                            v.pos,
                            format!("name: `{s}` is not a valid project name (lowercase letters, digits, '-', '_')"),
                        );
                    }
                }
            }
            x if x.starts_with("x-") => {}
            x => match super::keys::refusal(x, true) {
                Some(h) => cx.err(k.pos, format!("{x}: {h}")),
                None => cx.unknown(x, k, "the manifest"),
            },
        }
    }
    let Some((services_key, services)) = services_node else {
        if !main || !m.services.is_empty() {
            return Some(m); // a file of volumes only, or services all included
        }
        cx.err(root.pos, "the manifest has no services:");
        return None;
    };
    let mut dep_sites: Vec<DepSite> = Vec::new();
    let mut volume_sites: Vec<(String, Pos)> = Vec::new();
    let mut port_sites: Vec<PortSite> = Vec::new();
    let mut net_sites: Vec<networks::NetSite> = Vec::new();
    let svc_entries = cx.map(services, "services").unwrap_or_default();
    let mut declared: BTreeSet<String> = svc_entries.iter().map(|(n, _, _)| n.clone()).collect();
    declared.extend(included.iter().cloned());
    if svc_entries.is_empty() && included.is_empty() && matches!(services.value, Value::Null | Value::Map(_)) {
        cx.warn(services_key.pos, "services: is empty: nothing will run");
    }
    for (name, kn, vn) in svc_entries {
        if name.starts_with("x-") {
            continue;
        }
        if !valid_service_name(&name) {
            cx.err(
                kn.pos,
                format!("`{name}` is not a valid service name (lowercase letters, digits, '-', '_', starting with a letter or digit, at most 57 characters)"),
            );
        }
        if included.contains(&name) {
            cx.err(kn.pos, format!("service `{name}` is also defined in an included file: a service is defined once (rename one, or use extends:)"));
            continue;
        }
        let vn = match files::get(vn, "extends") {
            Some(ext) => match extends::resolve(cx, &name, vn, ext, services) {
                Some(merged) => std::borrow::Cow::Owned(merged),
                None => continue,
            },
            None => std::borrow::Cow::Borrowed(vn),
        };

        let sites = Sites {
            deps: &mut dep_sites,
            volumes: &mut volume_sites,
            ports: &mut port_sites,
            networks: &mut net_sites,
        };
        if let Some(s) = service(cx, &name, kn, &vn, sites) {
            m.services.insert(name, s);
        }
    }
    // Cross-references.
    port_collisions(cx, &port_sites);
    networks::check_manifest(cx, &mut m, &top_networks, &net_sites);
    for (svc, dep, pos, required) in &dep_sites {
        if *required && !declared.contains(dep.as_str()) {
            cx.err(*pos, format!("service `{svc}` depends on `{dep}`, which is not a service of this manifest"));
        }
    }
    for (vol, pos) in &volume_sites {
        if !m.volumes.contains_key(vol) {
            cx.err(
                *pos,
                format!(
                    "volume `{vol}` is not declared: add it under the top-level volumes: (volumes: {{{vol}: {{}}}})"
                ),
            );
        }
    }
    // Named volumes by their real names, and whether they are external.
    for svc in m.services.values_mut() {
        for mount in &mut svc.mounts {
            if let MountKind::Volume { name, external, .. } = &mut mount.kind {
                if let Some(decl) = m.volumes.get(name.as_str()) {
                    *external = decl.external;
                    if let Some(real) = decl.name.as_ref().filter(|r| valid_volume_name(r)) {
                        *name = real.clone();
                    }
                }
            }
        }
    }
    grants::resolve(cx, &mut m);
    cx.files.dep_sites.extend(dep_sites);
    Some(m)
}

fn cycles(cx: &mut Ctx, m: &Manifest) {
    let sites = std::mem::take(&mut cx.files.dep_sites);
    // Depth-first search; every back edge closes a cycle. Each cycle is reported once.
    let mut state: BTreeMap<&str, u8> = BTreeMap::new(); // 1 = on stack, 2 = done
    let mut reported: BTreeSet<Vec<String>> = BTreeSet::new();
    fn visit<'a>(
        m: &'a Manifest,
        n: &'a str,
        stack: &mut Vec<&'a str>,
        state: &mut BTreeMap<&'a str, u8>,
        found: &mut Vec<Vec<String>>,
    ) {
        state.insert(n, 1);
        stack.push(n);
        for d in m.services[n].depends_on.keys() {
            if !m.services.contains_key(d) {
                continue;
            }
            match state.get(d.as_str()) {
                Some(1) => {
                    let i = stack.iter().position(|s| s == d).unwrap_or(0);
                    found.push(stack[i..].iter().map(|s| s.to_string()).collect());
                }
                Some(_) => {}
                None => visit(m, d, stack, state, found),
            }
        }
        stack.pop();
        state.insert(n, 2);
    }
    let mut found = Vec::new();
    for n in m.services.keys() {
        if !state.contains_key(n.as_str()) {
            visit(m, n, &mut Vec::new(), &mut state, &mut found);
        }
    }
    for cyc in found {
        let mut key = cyc.clone();
        key.sort();
        if !reported.insert(key) {
            continue;
        }
        let from = &cyc[cyc.len() - 1];
        let to = &cyc[0];
        let pos = sites.iter().find(|(s, d, _, _)| s == from && d == to).map(|s| s.2).unwrap_or_default();
        let mut path = cyc.clone();
        path.push(cyc[0].clone());
        cx.err(pos, format!("depends_on cycle: {}", path.join(" -> ")));
    }
}

/// Where the services refer to things declared elsewhere, for the checks made once all are read.
struct Sites<'a> {
    deps: &'a mut Vec<DepSite>,
    volumes: &'a mut Vec<(String, Pos)>,
    ports: &'a mut Vec<PortSite>,
    networks: &'a mut Vec<networks::NetSite>,
}

/// `x-skiff:` — `bridge`, `subnet`, `revision_history`, `profiles`, `image_gc`; other keys warn.
fn skiff_extension(cx: &mut Ctx, n: &Node, m: &mut Manifest) {
    let mut net = NetworkOverrides::default();
    let mut history = None;
    let mut active = Vec::new();
    for (key, k, v) in cx.map(n, "x-skiff").unwrap_or_default() {
        let f = format!("x-skiff.{key}");
        match key.as_str() {
            "bridge" => {
                if let Some(b) = cx.nonempty_string(v, &f) {
                    if network::valid_interface_name(&b) {
                        net.bridge = Some(b);
                    } else {
                        cx.err(v.pos, format!("{f}: `{b}` is not an interface name (1-15 characters of letters, digits, '_', '.', '-')"));
                    }
                }
            }
            "subnet" => {
                if let Some(s) = cx.nonempty_string(v, &f) {
                    match s.trim().parse::<crate::net::ipam::Subnet>() {
                        Ok(sub) => net.subnet = Some(sub.to_string()),
                        Err(e) => cx.err(v.pos, format!("{f}: {e:#}")),
                    }
                }
            }
            "revision_history" => {
                history = cx.int(v, &f, 1, rollout::REVISION_HISTORY_MAX).map(|n| n as u32);
            }
            "profiles" => {
                for (p, pos) in cx.strings(v, &f, false).unwrap_or_default() {
                    if profiles::valid(&p) || p == "*" {
                        active.push(p);
                    } else {
                        cx.err(pos, format!("{f}: `{p}` is not a profile name (letters, digits, '_', '.', '-')"));
                    }
                }
            }
            "image_gc" => {
                if let Some(gc) = image_gc(cx, v, &f) {
                    m.image_gc = gc;
                }
            }
            x if x.starts_with("x-") => {}
            x => cx.unknown(x, k, "x-skiff"),
        }
    }
    (m.network, m.revision_history, m.profiles) = (net, history, active);
}

/// `x-skiff: {image_gc: false}` or `{image_gc: {high: 85%, low: 80%}}` (either may be left
/// out: the default's; a bare number is percent too).
fn image_gc(cx: &mut Ctx, n: &Node, f: &str) -> Option<crate::manifest::ImageGc> {
    let mut gc = crate::manifest::ImageGc::default();
    if matches!(n.value, Value::Bool(_)) || matches!(&n.value, Value::Str(s) if s == "true" || s == "false") {
        gc.enabled = cx.bool(n, f)?;
        return Some(gc);
    }
    let mut ok = true;
    for (key, k, v) in cx.map(n, f)? {
        let what = format!("{f}.{key}");
        let slot = match key.as_str() {
            "high" => &mut gc.high,
            "low" => &mut gc.low,
            x if x.starts_with("x-") => continue,
            x => {
                cx.unknown(x, k, f);
                continue;
            }
        };
        match percent(v) {
            Some(p) if (1..=99).contains(&p) => *slot = p as u8,
            _ => {
                cx.err(v.pos, format!("{what} must be a percentage of the disk between 1% and 99% (like 85%)"));
                ok = false;
            }
        }
    }
    if ok && gc.low >= gc.high {
        cx.err(n.pos, format!("{f}: low ({}%) must be below high ({}%)", gc.low, gc.high));
        ok = false;
    }
    ok.then_some(gc)
}

/// `85`, `"85"` or `"85%"`.
fn percent(n: &Node) -> Option<i64> {
    match &n.value {
        Value::Int(i) => Some(*i),
        Value::Str(s) => s.trim().strip_suffix('%').unwrap_or(s.trim()).trim().parse().ok(),
        _ => None,
    }
}
