//! `volumes:` and `tmpfs:` of a service (short and long syntax) and the top level's named
//! volumes.

use super::*;

pub(super) fn volume_decl(cx: &mut Ctx, name: &str, n: &Node) -> Option<VolumeDecl> {
    let mut d = VolumeDecl::default();
    let what = format!("volumes.{name}");
    for (key, k, v) in cx.map(n, &what)? {
        match key.as_str() {
            "driver" => {
                if let Some(s) = cx.string(v, &format!("{what}.driver")) {
                    if s != "local" {
                        cx.err(v.pos, format!("{what}.driver: skiff keeps volumes as local directories; `{s}` is not supported (remove driver:)"));
                    }
                }
            }
            "driver_opts" => cx.err(
                k.pos,
                format!(
                    "{what}.driver_opts: volume driver options are not supported; use a bind mount for special storage"
                ),
            ),
            "external" => d.external = cx.bool(v, &format!("{what}.external")).unwrap_or(false),
            "name" => {
                if let Some(s) = cx.string(v, &format!("{what}.name")) {
                    if valid_volume_name(&s) {
                        d.name = Some(s);
                    } else {
                        cx.err(v.pos, format!("{what}.name: `{s}` is not a valid volume name"));
                    }
                }
            }
            "labels" => d.labels = cx.labels(v, &format!("{what}.labels")),
            x if x.starts_with("x-") => {}
            x => cx.unknown(x, k, &what),
        }
    }
    Some(d)
}

pub(super) fn mount(cx: &mut Ctx, n: &Node, what: &str, volume_sites: &mut Vec<(String, Pos)>) -> Option<Mount> {
    if let Value::Map(_) = n.value {
        return mount_long(cx, n, what, volume_sites);
    }
    let spec = cx.nonempty_string(n, what)?;
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [t] => (None, *t, None),
        [s, t] => (Some(*s), *t, None),
        [s, t, m] => (Some(*s), *t, Some(*m)),
        _ => {
            cx.err(n.pos, format!("{what}: `{spec}` must be [SOURCE:]TARGET[:MODE]"));
            return None;
        }
    };
    if !target.starts_with('/') {
        cx.err(n.pos, format!("{what}: the target `{target}` must be an absolute path in the container"));
        return None;
    }
    let mut read_only = false;
    let mut nocopy = false;
    if let Some(mode) = mode {
        for o in mode.split(',') {
            match o {
                "ro" => read_only = true,
                "rw" => read_only = false,
                "nocopy" => nocopy = true,
                "z" | "Z" | "shared" | "rshared" | "slave" | "rslave" | "private" | "rprivate" | "cached"
                | "delegated" | "consistent" => {
                    cx.warn(n.pos, format!("{what}: the option `{o}` is ignored"));
                }
                x => {
                    cx.err(n.pos, format!("{what}: `{x}` is not a volume mode (ro or rw)"));
                    return None;
                }
            }
        }
    }
    let mut kind = match source {
        None => MountKind::Anonymous,
        Some(s) => source_kind(cx, s, n.pos, what, volume_sites, true)?,
    };
    set_nocopy(cx, &mut kind, nocopy, n.pos, what);
    bind_warning(cx, &kind, read_only, n.pos, what);
    Some(Mount { kind, target: target.to_string(), read_only })
}

/// `nocopy` on a named volume: it is not filled from the image. Elsewhere it means nothing
/// (an anonymous volume of the manifest is never filled; a bind or tmpfs never is): a warning.
pub(super) fn set_nocopy(cx: &mut Ctx, kind: &mut MountKind, nocopy: bool, pos: Pos, what: &str) {
    if !nocopy {
        return;
    }
    match kind {
        MountKind::Volume { nocopy: n, .. } => *n = true,
        _ => cx.warn(pos, format!("{what}: nocopy applies to named volumes only; ignored")),
    }
}

/// Warns (never refuses) about a bind that hands the host to the container.
pub(super) fn bind_warning(cx: &mut Ctx, kind: &MountKind, read_only: bool, pos: Pos, what: &str) {
    if let MountKind::Bind { source, .. } = kind {
        if let Some(w) = hostaccess::bind_warning(source, read_only) {
            cx.warn(pos, format!("{what}: {w}"));
        }
    }
}

/// Each key of a mapping (`KEY: value`) or list (`- KEY=value`), with its position.
pub(super) fn key_sites(n: &Node) -> Vec<(String, Pos)> {
    match &n.value {
        Value::Seq(items) => items
            .iter()
            .filter_map(|it| {
                it.scalar_text().map(|t| (t.split_once('=').map_or(t.as_str(), |(k, _)| k).to_string(), it.pos))
            })
            .collect(),
        Value::Map(m) => m.iter().filter_map(|(k, _)| k.scalar_text().map(|t| (t, k.pos))).collect(),
        _ => Vec::new(),
    }
}

pub(super) fn source_kind(
    cx: &mut Ctx,
    s: &str,
    pos: Pos,
    what: &str,
    volume_sites: &mut Vec<(String, Pos)>,
    create_host_path: bool,
) -> Option<MountKind> {
    if s.starts_with('/') || s.starts_with('.') || s.starts_with('~') {
        Some(MountKind::Bind { source: cx.path(s, pos)?, create_host_path })
    } else if valid_volume_name(s) {
        volume_sites.push((s.to_string(), pos));
        Some(MountKind::Volume { name: s.to_string(), external: false, nocopy: false })
    } else {
        cx.err(pos, format!("{what}: `{s}` is neither a path (/..., ./...) nor a valid volume name"));
        None
    }
}

pub(super) fn mount_long(cx: &mut Ctx, n: &Node, what: &str, volume_sites: &mut Vec<(String, Pos)>) -> Option<Mount> {
    let mut typ = None;
    let mut source: Option<(String, Pos)> = None;
    let mut target = None;
    let mut read_only = false;
    let mut create_host_path = true;
    let mut size = None;
    let mut mode = None;
    let mut nocopy = (false, n.pos);
    for (key, k, v) in cx.map(n, what)? {
        let f = format!("{what}.{key}");
        match key.as_str() {
            "type" => typ = cx.string(v, &f).map(|t| (t, v.pos)),
            "source" => source = cx.nonempty_string(v, &f).map(|s| (s, v.pos)),
            "target" => target = cx.nonempty_string(v, &f).map(|t| (t, v.pos)),
            "read_only" => read_only = cx.bool(v, &f).unwrap_or(false),
            "bind" => {
                for (key, k2, v2) in cx.map(v, &f).unwrap_or_default() {
                    match key.as_str() {
                        "create_host_path" => create_host_path = cx.bool(v2, &format!("{f}.{key}")).unwrap_or(true),
                        "propagation" | "selinux" | "recursive" => {
                            cx.warn(k2.pos, format!("{f}.{key} is ignored"));
                        }
                        x if x.starts_with("x-") => {}
                        x => cx.unknown(x, k2, &f),
                    }
                }
            }
            "volume" => {
                for (key, k2, v2) in cx.map(v, &f).unwrap_or_default() {
                    match key.as_str() {
                        "nocopy" => nocopy = (cx.bool(v2, &format!("{f}.{key}")).unwrap_or(false), k2.pos),
                        "subpath" => {
                            cx.err(k2.pos, format!("{f}.subpath is not supported yet; mount the whole volume"))
                        }
                        x if x.starts_with("x-") => {}
                        x => cx.unknown(x, k2, &f),
                    }
                }
            }
            "tmpfs" => {
                for (key, k2, v2) in cx.map(v, &f).unwrap_or_default() {
                    let f2 = format!("{f}.{key}");
                    match key.as_str() {
                        "size" => size = cx.size(v2, &f2),
                        "mode" => mode = cx.int(v2, &f2, 0, 0o7777).map(|m| m as u32),
                        x if x.starts_with("x-") => {}
                        x => cx.unknown(x, k2, &f),
                    }
                }
            }
            "consistency" => {}
            x if x.starts_with("x-") => {}
            x => cx.unknown(x, k, what),
        }
    }
    let Some((target, tpos)) = target else {
        cx.err(n.pos, format!("{what}: target: is missing"));
        return None;
    };
    if !target.starts_with('/') {
        cx.err(tpos, format!("{what}.target: `{target}` must be an absolute path in the container"));
        return None;
    }
    let Some((typ, typos)) = typ else {
        cx.err(n.pos, format!("{what}: type: is missing (volume, bind or tmpfs)"));
        return None;
    };
    let kind = match typ.as_str() {
        "volume" => match source {
            None => MountKind::Anonymous,
            Some((s, pos)) => {
                if !valid_volume_name(&s) {
                    cx.err(pos, format!("{what}.source: `{s}` is not a valid volume name"));
                    return None;
                }
                volume_sites.push((s.clone(), pos));
                MountKind::Volume { name: s, external: false, nocopy: false }
            }
        },
        "bind" => match source {
            None => {
                cx.err(n.pos, format!("{what}: a bind mount needs source:"));
                return None;
            }
            Some((s, pos)) => {
                if !(s.starts_with('/') || s.starts_with('.')) {
                    cx.err(pos, format!("{what}.source: `{s}` must be a path (/... or ./...)"));
                    return None;
                }
                source_kind(cx, &s, pos, what, volume_sites, create_host_path)?
            }
        },
        "tmpfs" => MountKind::Tmpfs { size, mode },
        x => {
            cx.err(typos, format!("{what}.type: `{x}` is not supported (volume, bind or tmpfs)"));
            return None;
        }
    };
    let mut kind = kind;
    set_nocopy(cx, &mut kind, nocopy.0, nocopy.1, what);
    bind_warning(cx, &kind, read_only, n.pos, what);
    Some(Mount { kind, target, read_only })
}

pub(super) fn tmpfs_short(cx: &mut Ctx, spec: &str, pos: Pos, what: &str) -> Option<Mount> {
    let (target, opts) = match spec.split_once(':') {
        Some((t, o)) => (t, Some(o)),
        None => (spec, None),
    };
    if !target.starts_with('/') {
        cx.err(pos, format!("{what}: `{target}` must be an absolute path in the container"));
        return None;
    }
    let (mut size, mut mode, mut read_only) = (None, None, false);
    for o in opts.unwrap_or("").split(',').filter(|o| !o.is_empty()) {
        let (k, v) = o.split_once('=').unwrap_or((o, ""));
        match k {
            "size" => match units::parse_size(v) {
                Ok(s) => size = Some(s),
                Err(e) => cx.err(pos, format!("{what}: size: {e}")),
            },
            "mode" => match u32::from_str_radix(v, 8) {
                Ok(m) if m <= 0o7777 => mode = Some(m),
                _ => cx.err(pos, format!("{what}: mode `{v}` must be octal permissions like 1777")),
            },
            "ro" => read_only = true,
            "rw" => read_only = false,
            "noexec" | "nosuid" | "nodev" | "exec" | "suid" | "dev" => {}
            x => cx.warn(pos, format!("{what}: the tmpfs option `{x}` is ignored")),
        }
    }
    Some(Mount { kind: MountKind::Tmpfs { size, mode }, target: target.to_string(), read_only })
}
