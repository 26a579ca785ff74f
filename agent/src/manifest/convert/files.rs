//! The other files a manifest brings in: `include:` (whole compose files, merged in) and
//! `extends: {file:}` (a service of another file as the base of one of ours), and how a
//! service is merged onto the one it extends.
//!
//! Every file gets an index; the positions of its tree carry it ([`Pos::file`]), so a
//! diagnostic names the file it is in and a relative path resolves against the directory of
//! the file it is written in, as compose does. Reading is bounded: at most [`MAX_FILES`]
//! files of at most 1 MiB each (the manifest's own limit), includes nested at most
//! [`MAX_DEPTH`] deep, and a file that includes itself (directly or not) is an error.

use std::path::{Path, PathBuf};

use super::super::yaml::{self, Limits, Node, Pos, Value};

/// The most files a manifest may bring in.
pub(super) const MAX_FILES: usize = 32;
/// The deepest chain of `include:` (or of `extends:`).
pub(super) const MAX_DEPTH: usize = 8;

struct Entry {
    /// As shown in diagnostics: the path as resolved.
    name: String,
    /// What relative paths in it resolve against.
    dir: PathBuf,
    /// Identity, for cycles and for reading a file once.
    canonical: PathBuf,
    root: Node,
}

/// The files of a manifest; file 0 is the manifest itself.
pub(in crate::manifest) struct Files {
    main_dir: PathBuf,
    entries: Vec<Entry>,
    /// The files being included, outermost first (cycles).
    pub(super) including: Vec<PathBuf>,
    /// Every service's `profiles:`, from every file.
    pub(super) profiles: std::collections::BTreeMap<String, (Vec<String>, Pos)>,
    /// Every `depends_on` entry, from every file (cycles are looked for once all are in).
    pub(super) dep_sites: Vec<super::DepSite>,
}

impl Files {
    pub(in crate::manifest) fn new(main_dir: &Path) -> Files {
        Files {
            main_dir: main_dir.to_path_buf(),
            entries: Vec::new(),
            including: Vec::new(),
            profiles: Default::default(),
            dep_sites: Vec::new(),
        }
    }

    /// How diagnostics name file `file` (`None`: the manifest itself).
    pub(super) fn name(&self, file: u16) -> Option<String> {
        let i = usize::from(file).checked_sub(1)?;
        self.entries.get(i).map(|e| e.name.clone())
    }

    /// The directory relative paths written in file `file` resolve against.
    pub(super) fn dir(&self, file: u16) -> &Path {
        match usize::from(file).checked_sub(1).and_then(|i| self.entries.get(i)) {
            Some(e) => &e.dir,
            None => &self.main_dir,
        }
    }

    /// Every file brought in (their real paths), for the agent to watch.
    pub(in crate::manifest) fn paths(&self) -> Vec<PathBuf> {
        self.entries.iter().map(|e| e.canonical.clone()).collect()
    }

    pub(super) fn set_dir(&mut self, file: u16, dir: PathBuf) {
        if let Some(e) = usize::from(file).checked_sub(1).and_then(|i| self.entries.get_mut(i)) {
            e.dir = dir;
        }
    }

    pub(super) fn canonical(&self, file: u16) -> Option<&Path> {
        usize::from(file).checked_sub(1).and_then(|i| self.entries.get(i)).map(|e| e.canonical.as_path())
    }

    /// The tree of file `file` (a null node for the manifest itself: its caller has it).
    pub(super) fn root(&self, file: u16) -> Option<&Node> {
        usize::from(file).checked_sub(1).and_then(|i| self.entries.get(i)).map(|e| &e.root)
    }

    /// Reads and parses `written` (a path written in file `from`, relative to that file's
    /// directory), once: the same file named twice is the same index. A YAML error is
    /// returned at its place in that file; any other failure is a message for the place
    /// that named the file.
    pub(super) fn load(&mut self, written: &str, from: u16) -> Result<u16, Failure> {
        let path = if Path::new(written).is_absolute() { PathBuf::from(written) } else { self.dir(from).join(written) };
        let canonical = std::fs::canonicalize(&path).map_err(|e| {
            Failure::Here(if e.kind() == std::io::ErrorKind::NotFound {
                format!("{} does not exist", path.display())
            } else {
                format!("{}: {e}", path.display())
            })
        })?;
        if let Some(i) = self.entries.iter().position(|e| e.canonical == canonical) {
            return Ok(i as u16 + 1);
        }
        if self.entries.len() >= MAX_FILES {
            return Err(Failure::Here(format!(
                "a manifest may bring in at most {MAX_FILES} files (include: and extends: file:)"
            )));
        }
        let limits = Limits::default();
        let data = super::super::read_bounded(&canonical, limits.max_bytes as u64, true)
            .map_err(|e| Failure::Here(format!("{}: {e}", path.display())))?;
        let text =
            String::from_utf8(data).map_err(|_| Failure::Here(format!("{} is not UTF-8 text", path.display())))?;
        let index = self.entries.len() as u16 + 1;
        let dir = canonical.parent().map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
        let (root, failure) = match yaml::parse(&text, &limits) {
            Ok(mut root) => {
                root.set_file(index);
                (root, None)
            }
            Err(e) => {
                let pos = Pos { file: index, ..e.pos };
                (
                    Node { value: Value::Null, pos: Pos { file: index, line: 1, column: 1 } },
                    Some(Failure::At(pos, e.message)),
                )
            }
        };
        self.entries.push(Entry { name: path.display().to_string(), dir, canonical, root });
        match failure {
            Some(f) => Err(f),
            None => Ok(index),
        }
    }
}

/// Why a file could not be brought in.
pub(super) enum Failure {
    /// Said at the place that named the file.
    Here(String),
    /// At a place in the file itself (its YAML is broken).
    At(Pos, String),
}

/// The home directory of the user skiff runs as: `$HOME` when it is an absolute path, else
/// the passwd entry's.
pub(in crate::manifest) fn home_dir() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("HOME").map(PathBuf::from).filter(|h| h.is_absolute()) {
        return Some(h);
    }
    nix::unistd::User::from_uid(nix::unistd::getuid()).ok().flatten().map(|u| u.dir).filter(|d| d.is_absolute())
}

/// The value of `key` in a mapping node.
pub(super) fn get<'n>(n: &'n Node, key: &str) -> Option<&'n Node> {
    match &n.value {
        Value::Map(m) => m.iter().find(|(k, _)| k.scalar_text().as_deref() == Some(key)).map(|(_, v)| v),
        _ => None,
    }
}

/// `over` (a service) merged onto `base` (the service it extends), by compose's rules:
/// mappings merge key by key (recursively) and `over` wins for the rest, except these
/// service keys:
/// - `environment`, `labels`, `sysctls`, `annotations`, `extra_hosts`: merged by key (each in
///   either form: a mapping or a list of `KEY=VALUE`);
/// - `volumes`, `devices`, `tmpfs`, `secrets`, `configs`: merged by their target in the
///   container (`over`'s entry replaces `base`'s for the same target);
/// - `ports`, `expose`, `dns`, `dns_search`, `cap_add`, `cap_drop`, `env_file`,
///   `external_links`, `group_add`, `profiles` and `networks` given as lists: `base`'s, then
///   `over`'s that are not already there;
/// - `command`, `entrypoint` and `healthcheck: {test}`: replaced, not merged.
pub(super) fn merge_service(base: &Node, over: &Node) -> Node {
    let empty = Vec::new();
    let b = match &base.value {
        Value::Map(b) => b,
        _ => &empty,
    };
    let Value::Map(o) = &over.value else {
        return over.clone();
    };
    let mut out: Vec<(Node, Node)> = b.iter().filter(|(k, _)| !is_key(k, "extends")).cloned().collect();
    for (ok, ov) in o {
        let Some(key) = ok.scalar_text().filter(|k| k != "extends") else { continue };
        match out.iter_mut().find(|(k, _)| k.scalar_text().as_deref() == Some(key.as_str())) {
            Some((_, bv)) => *bv = merge_key(&key, bv, ov),
            None => out.push((ok.clone(), ov.clone())),
        }
    }
    Node { value: Value::Map(out), pos: over.pos }
}

fn is_key(k: &Node, key: &str) -> bool {
    k.scalar_text().as_deref() == Some(key)
}

fn merge_key(key: &str, b: &Node, o: &Node) -> Node {
    match key {
        "environment" | "labels" | "sysctls" | "annotations" | "extra_hosts" => {
            let sep = if key == "extra_hosts" { [':', '='] } else { ['=', '='] };
            match (as_map(b, sep), as_map(o, sep)) {
                (Some(bm), Some(om)) => merge_maps(&bm, &om, false),
                _ => o.clone(),
            }
        }
        "volumes" | "devices" | "tmpfs" | "secrets" | "configs" => match (&b.value, &o.value) {
            (Value::Seq(bs), Value::Seq(os)) => {
                let targets: Vec<Option<String>> = os.iter().map(|n| target(key, n)).collect();
                let mut items: Vec<Node> = bs
                    .iter()
                    .filter(|n| !matches!(target(key, n), Some(t) if targets.contains(&Some(t.clone()))))
                    .cloned()
                    .collect();
                items.extend(os.iter().cloned());
                Node { value: Value::Seq(items), pos: o.pos }
            }
            _ => o.clone(),
        },
        "ports" | "expose" | "dns" | "dns_search" | "cap_add" | "cap_drop" | "env_file" | "external_links"
        | "group_add" | "profiles" | "networks" => match (&b.value, &o.value) {
            (Value::Seq(bs), Value::Seq(os)) => {
                let mut items = bs.clone();
                for n in os {
                    if !items.iter().any(|i| same(i, n)) {
                        items.push(n.clone());
                    }
                }
                Node { value: Value::Seq(items), pos: o.pos }
            }
            (Value::Map(_), Value::Map(_)) => merge_maps(b, o, true),
            _ => o.clone(),
        },
        "command" | "entrypoint" => o.clone(),
        _ => match (&b.value, &o.value) {
            (Value::Map(_), Value::Map(_)) => merge_maps(b, o, true),
            _ => o.clone(),
        },
    }
}

/// Two mappings merged key by key, `o` winning (recursively when `deep`, except
/// `healthcheck`'s `test`, which is replaced like every non-mapping value).
fn merge_maps(b: &Node, o: &Node, deep: bool) -> Node {
    let (Value::Map(bm), Value::Map(om)) = (&b.value, &o.value) else {
        return o.clone();
    };
    let mut out = bm.clone();
    for (ok, ov) in om {
        let key = ok.scalar_text();
        match out.iter_mut().find(|(k, _)| k.scalar_text() == key) {
            Some((_, bv)) => {
                *bv = if deep && matches!((&bv.value, &ov.value), (Value::Map(_), Value::Map(_))) {
                    merge_maps(bv, ov, true)
                } else {
                    ov.clone()
                }
            }
            None => out.push((ok.clone(), ov.clone())),
        }
    }
    Node { value: Value::Map(out), pos: o.pos }
}

/// A key-value node in mapping form (a list of `KEY=VALUE`, or `KEY` alone, becomes one).
fn as_map(n: &Node, sep: [char; 2]) -> Option<Node> {
    match &n.value {
        Value::Map(_) | Value::Null => Some(Node {
            value: if let Value::Null = n.value { Value::Map(Vec::new()) } else { n.value.clone() },
            pos: n.pos,
        }),
        Value::Seq(items) => {
            let mut out = Vec::new();
            for it in items {
                let t = it.scalar_text()?;
                let (k, v) = match t.split_once(sep) {
                    Some((k, v)) => (k.to_string(), Value::Str(v.to_string())),
                    None => (t.clone(), Value::Null),
                };
                out.push((Node { value: Value::Str(k), pos: it.pos }, Node { value: v, pos: it.pos }));
            }
            Some(Node { value: Value::Map(out), pos: n.pos })
        }
        _ => None,
    }
}

/// The container-side target of a `volumes`/`devices`/`tmpfs`/`secrets`/`configs` entry.
fn target(key: &str, n: &Node) -> Option<String> {
    if let Some(t) = get(n, "target") {
        return t.scalar_text();
    }
    if let Value::Map(_) = n.value {
        // secrets/configs long form without target: their source names the target.
        return get(n, "source").and_then(Node::scalar_text);
    }
    let t = n.scalar_text()?;
    let parts: Vec<&str> = t.split(':').collect();
    Some(
        match (key, parts.as_slice()) {
            ("tmpfs" | "secrets" | "configs", [t, ..]) => t,
            (_, [t]) => t,
            (_, [_, t, ..]) => t,
            _ => return None,
        }
        .to_string(),
    )
}

/// Equal values, wherever they are written.
fn same(a: &Node, b: &Node) -> bool {
    match (&a.value, &b.value) {
        (Value::Seq(x), Value::Seq(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b)),
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|((ak, av), (bk, bv))| same(ak, bk) && same(av, bv))
        }
        (x, y) => x == y,
    }
}
