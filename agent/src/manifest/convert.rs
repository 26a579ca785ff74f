//! The spanned YAML tree → the typed [`Manifest`], with every rule checked on the way.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::network;

mod devices;
mod extends;
mod files;
mod grants;
#[cfg(test)]
pub(super) use files::home_dir as home_dir_for_tests;
mod include;
mod networks;
mod profiles;
mod rollout;
use super::units;
use super::yaml::{Node, Pos, Value};
use super::*;

/// Every name that looks like a variable in `s` (a superset of what [`interpolate`] looks up).
fn referenced_names(s: &str) -> Vec<String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    for (i, c) in b.iter().enumerate() {
        if *c == b'$' {
            let start = if b.get(i + 1) == Some(&b'{') { i + 2 } else { i + 1 };
            let len =
                b.get(start..).map_or(0, |r| r.iter().take_while(|c| c.is_ascii_alphanumeric() || **c == b'_').count());
            if len > 0 {
                out.push(s[start..start + len].to_string());
            }
        }
    }
    out
}

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

struct Ctx<'a> {
    diags: &'a mut Vec<Diagnostic>,
    /// The directory of the document being converted (its `.env`); relative paths resolve
    /// against the directory of the file each value is in (see [`Files`]).
    base: &'a Path,
    /// The files brought in by `include:` and `extends: {file:}`.
    files: &'a mut files::Files,
    /// `<base>/.env`, read on first use (the process environment wins over it, as in compose).
    dotenv: Option<std::collections::HashMap<String, String>>,
    /// Why `.env` could not be read, until reported (at the first place that needed it).
    dotenv_error: Option<String>,
    /// Read the files the manifest names (env files) and check them.
    check_files: bool,
    /// Secrets and configs: the top level's and the services' (see [`grants`]).
    grants: grants::Pending,
}

/// Compose's interpolation: `$$` is a `$`; `$VAR` and `${VAR}` are replaced by the variable
/// (empty when unset); `${VAR:-default}` / `${VAR-default}` use the default when VAR is unset
/// or empty / unset; `${VAR:?message}` / `${VAR?message}` are an error when VAR is unset or
/// empty / unset; `${VAR:+alt}` / `${VAR+alt}` give alt when VAR is set and non-empty / set.
/// Defaults are interpolated in turn. Returns the text and the names of unset variables.
pub(crate) fn interpolate(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<(String, Vec<String>), String> {
    let mut out = String::with_capacity(s.len());
    let mut unset = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    let is_name_start = |c: u8| c.is_ascii_alphabetic() || c == b'_';
    let is_name = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    while i < b.len() {
        if b[i] != b'$' {
            let next = s[i..].find('$').map_or(s.len(), |n| i + n);
            out.push_str(&s[i..next]);
            i = next;
            continue;
        }
        match b.get(i + 1) {
            Some(b'$') => {
                out.push('$');
                i += 2;
            }
            Some(b'{') => {
                // Find the matching brace (defaults may hold nested ${...}).
                let mut depth = 0;
                let mut end = None;
                for (j, c) in b.iter().enumerate().skip(i + 1) {
                    match c {
                        b'{' => depth += 1,
                        b'}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = Some(j);
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let Some(end) = end else {
                    return Err(format!("unclosed ${{ in {s:?} (write $$ for a literal $)"));
                };
                let inner = &s[i + 2..end];
                let name_len = inner.bytes().take_while(|c| is_name(*c)).count();
                let name = &inner[..name_len];
                if name.is_empty() || !is_name_start(name.as_bytes()[0]) {
                    return Err(format!("invalid variable ${{{inner}}} (write $$ for a literal $)"));
                }
                let op = &inner[name_len..];
                let val = lookup(name);
                let sub = |t: &str, unset: &mut Vec<String>| -> Result<String, String> {
                    let (v, u) = interpolate(t, lookup)?;
                    unset.extend(u);
                    Ok(v)
                };
                let text = if op.is_empty() {
                    if val.is_none() {
                        unset.push(name.to_string());
                    }
                    val.unwrap_or_default()
                } else if let Some(d) = op.strip_prefix(":-") {
                    match val.filter(|v| !v.is_empty()) {
                        Some(v) => v,
                        None => sub(d, &mut unset)?,
                    }
                } else if let Some(d) = op.strip_prefix('-') {
                    match val {
                        Some(v) => v,
                        None => sub(d, &mut unset)?,
                    }
                } else if let Some(m) = op.strip_prefix(":?") {
                    match val.filter(|v| !v.is_empty()) {
                        Some(v) => v,
                        None => return Err(format!("variable {name} is required: {}", sub(m, &mut unset)?)),
                    }
                } else if let Some(m) = op.strip_prefix('?') {
                    match val {
                        Some(v) => v,
                        None => return Err(format!("variable {name} is required: {}", sub(m, &mut unset)?)),
                    }
                } else if let Some(a) = op.strip_prefix(":+") {
                    if val.is_some_and(|v| !v.is_empty()) {
                        sub(a, &mut unset)?
                    } else {
                        String::new()
                    }
                } else if let Some(a) = op.strip_prefix('+') {
                    if val.is_some() {
                        sub(a, &mut unset)?
                    } else {
                        String::new()
                    }
                } else {
                    return Err(format!("invalid variable ${{{inner}}} (write $$ for a literal $)"));
                };
                out.push_str(&text);
                i = end + 1;
            }
            Some(c) if is_name_start(*c) => {
                let len = b[i + 1..].iter().take_while(|c| is_name(**c)).count();
                let name = &s[i + 1..i + 1 + len];
                match lookup(name) {
                    Some(v) => out.push_str(&v),
                    None => unset.push(name.to_string()),
                }
                i += 1 + len;
            }
            _ => {
                // A lone `$` (before a space, a digit, the end...) stays as written.
                out.push('$');
                i += 1;
            }
        }
    }
    Ok((out, unset))
}

/// (service, dependency, where, required)
type DepSite = (String, String, Pos, bool);

type Entries<'n> = Vec<(String, &'n Node, &'n Node)>;

impl Ctx<'_> {
    fn err(&mut self, pos: Pos, msg: impl Into<String>) {
        self.diag(Severity::Error, pos, msg.into());
    }
    fn warn(&mut self, pos: Pos, msg: impl Into<String>) {
        self.diag(Severity::Warning, pos, msg.into());
    }
    fn diag(&mut self, severity: Severity, pos: Pos, message: String) {
        let file = self.files.name(pos.file);
        self.diags.push(Diagnostic { severity, file, line: pos.line, column: pos.column, message });
    }

    /// The entries of a mapping (keys as text). `null` is an empty mapping.
    fn map<'n>(&mut self, n: &'n Node, what: &str) -> Option<Entries<'n>> {
        match &n.value {
            Value::Null => Some(Vec::new()),
            Value::Map(m) => {
                let mut out = Vec::with_capacity(m.len());
                for (k, v) in m {
                    match k.scalar_text() {
                        Some(t) => out.push((t, k, v)),
                        None => self.err(k.pos, format!("{what}: a key must be a string, not {}", k.kind())),
                    }
                }
                Some(out)
            }
            _ => {
                self.err(n.pos, format!("{what} must be a mapping, not {}", n.kind()));
                None
            }
        }
    }

    /// A mapping whose unknown keys warn and `x-*` keys are skipped.
    fn unknown(&mut self, key: &str, k: &Node, within: &str) {
        self.warn(k.pos, format!("unknown key `{key}` in {within} (ignored)"));
    }

    fn var(&mut self, name: &str) -> Option<String> {
        if let Ok(v) = std::env::var(name) {
            return Some(v);
        }
        if self.dotenv.is_none() {
            let mut m = std::collections::HashMap::new();
            let path = self.base.join(".env");
            match super::read_bounded(&path, super::ENV_FILE_MAX, true) {
                Ok(data) => {
                    let text = String::from_utf8_lossy(&data);
                    for (k, v) in text.lines().filter_map(super::env_line).filter_map(Result::ok) {
                        if let Some(v) = v {
                            m.insert(k, v);
                        }
                    }
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    self.dotenv_error = Some(format!(
                        "the .env file next to the manifest ({}) cannot be used: {e}; it must be a regular file \
                         of KEY=VALUE lines",
                        path.display()
                    ))
                }
            }
            self.dotenv = Some(m);
        }
        self.dotenv.as_ref().and_then(|m| m.get(name).cloned())
    }

    fn string(&mut self, n: &Node, what: &str) -> Option<String> {
        match n.scalar_text() {
            Some(s) if s.contains('$') => {
                let mut vars = std::collections::HashMap::new();
                for name in referenced_names(&s) {
                    if let Some(v) = self.var(&name) {
                        vars.insert(name, v);
                    }
                }
                if let Some(e) = self.dotenv_error.take() {
                    self.err(n.pos, format!("{what}: {e}"));
                }
                match interpolate(&s, &|name| vars.get(name).cloned()) {
                    Ok((v, unset)) => {
                        for u in unset {
                            self.warn(
                                n.pos,
                                format!("{what}: variable {u} is not set; it is replaced by an empty string"),
                            );
                        }
                        Some(v)
                    }
                    Err(e) => {
                        self.err(n.pos, format!("{what}: {e}"));
                        None
                    }
                }
            }
            Some(s) => Some(s),
            None => {
                self.err(n.pos, format!("{what} must be a string, not {}", n.kind()));
                None
            }
        }
    }

    fn nonempty_string(&mut self, n: &Node, what: &str) -> Option<String> {
        let s = self.string(n, what)?;
        if s.trim().is_empty() {
            self.err(n.pos, format!("{what} must not be empty"));
            return None;
        }
        Some(s)
    }

    fn bool(&mut self, n: &Node, what: &str) -> Option<bool> {
        match &n.value {
            Value::Bool(b) => Some(*b),
            Value::Str(s) if s == "true" || s == "false" => Some(s == "true"),
            _ => {
                self.err(n.pos, format!("{what} must be true or false, not {}", n.kind()));
                None
            }
        }
    }

    fn int(&mut self, n: &Node, what: &str, min: i64, max: i64) -> Option<i64> {
        let v = match &n.value {
            Value::Int(i) => Some(*i),
            Value::Str(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        match v {
            Some(i) if (min..=max).contains(&i) => Some(i),
            Some(i) => {
                self.err(n.pos, format!("{what} must be between {min} and {max}, not {i}"));
                None
            }
            None => {
                self.err(n.pos, format!("{what} must be an integer, not {}", n.kind()));
                None
            }
        }
    }

    fn u32(&mut self, n: &Node, what: &str) -> Option<u32> {
        self.int(n, what, 0, u32::MAX as i64).map(|i| i as u32)
    }

    fn duration(&mut self, n: &Node, what: &str) -> Option<Duration> {
        let s = match &n.value {
            Value::Int(i) if *i >= 0 => return Some(Duration::from_secs(*i as u64)),
            Value::Str(s) => s.clone(),
            _ => {
                self.err(n.pos, format!("{what} must be a duration (like 1m30s, 10s, 500ms), not {}", n.kind()));
                return None;
            }
        };
        match units::parse_duration(&s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(n.pos, format!("{what}: {e}"));
                None
            }
        }
    }

    fn size(&mut self, n: &Node, what: &str) -> Option<u64> {
        let s = match &n.value {
            Value::Int(i) if *i >= 0 => return Some(*i as u64),
            Value::Str(s) => s.clone(),
            _ => {
                self.err(n.pos, format!("{what} must be a size (like 64m, 1g, or bytes), not {}", n.kind()));
                return None;
            }
        };
        match units::parse_size(&s) {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(n.pos, format!("{what}: {e}"));
                None
            }
        }
    }

    fn cpus(&mut self, n: &Node, what: &str) -> Option<f64> {
        let v = match &n.value {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::Str(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        match v {
            Some(f) if f.is_finite() && f > 0.0 && f <= 1024.0 => Some(f),
            Some(f) => {
                self.err(n.pos, format!("{what} must be a number of CPUs above 0 (like 0.5 or 2), not {f}"));
                None
            }
            None => {
                self.err(n.pos, format!("{what} must be a number of CPUs (like 0.5 or 2), not {}", n.kind()));
                None
            }
        }
    }

    /// A list of strings; a single string is a one-item list when `allow_single`.
    fn strings(&mut self, n: &Node, what: &str, allow_single: bool) -> Option<Vec<(String, Pos)>> {
        match &n.value {
            Value::Seq(items) => {
                let mut out = Vec::new();
                for (i, it) in items.iter().enumerate() {
                    if let Some(s) = self.string(it, &format!("{what}[{i}]")) {
                        out.push((s, it.pos));
                    }
                }
                Some(out)
            }
            Value::Str(_) | Value::Int(_) if allow_single => self.string(n, what).map(|s| vec![(s, n.pos)]),
            _ => {
                self.err(n.pos, format!("{what} must be a list of strings, not {}", n.kind()));
                None
            }
        }
    }

    /// A command: a list of words, or a string split like a shell would.
    fn command(&mut self, n: &Node, what: &str) -> Option<Vec<String>> {
        match &n.value {
            Value::Null => None,
            Value::Str(s) => match units::split_words(s) {
                Ok(w) => Some(w),
                Err(e) => {
                    self.err(n.pos, format!("{what}: {e}"));
                    None
                }
            },
            _ => self.strings(n, what, false).map(|v| v.into_iter().map(|(s, _)| s).collect()),
        }
    }

    /// `KEY: value` mapping or `- KEY=value` list. Values may be null (→ None) when `nullable`.
    fn key_values(&mut self, n: &Node, what: &str, nullable: bool) -> BTreeMap<String, Option<String>> {
        let mut out = BTreeMap::new();
        match &n.value {
            Value::Seq(items) => {
                for it in items {
                    let Some(s) = self.string(it, what) else { continue };
                    let (k, v) = match s.split_once('=') {
                        Some((k, v)) => (k.to_string(), Some(v.to_string())),
                        None if nullable => (s.clone(), None),
                        None => {
                            self.err(it.pos, format!("{what}: `{s}` must be KEY=VALUE"));
                            continue;
                        }
                    };
                    if k.is_empty() {
                        self.err(it.pos, format!("{what}: an empty name"));
                    } else if out.insert(k.clone(), v).is_some() {
                        self.err(it.pos, format!("{what}: `{k}` is given twice"));
                    }
                }
            }
            _ => {
                for (k, kn, v) in self.map(n, what).unwrap_or_default() {
                    let val = match &v.value {
                        Value::Null if nullable => None,
                        Value::Null => Some(String::new()),
                        _ => match self.string(v, &format!("{what}.{k}")) {
                            Some(s) => Some(s),
                            None => continue,
                        },
                    };
                    if k.is_empty() {
                        self.err(kn.pos, format!("{what}: an empty name"));
                    }
                    out.insert(k, val);
                }
            }
        }
        out
    }

    fn labels(&mut self, n: &Node, what: &str) -> BTreeMap<String, String> {
        self.key_values(n, what, false).into_iter().map(|(k, v)| (k, v.unwrap_or_default())).collect()
    }

    /// `s` (written at `pos`) as an absolute path: relative to the directory of the file it
    /// is written in; `~` and `~/...` are the home of the user skiff runs as.
    fn path(&mut self, s: &str, pos: Pos) -> Option<PathBuf> {
        if s == "~" || s.starts_with("~/") {
            let Some(home) = files::home_dir() else {
                self.err(pos, format!("`{s}`: the home directory of the user skiff runs as is unknown (no HOME, no passwd entry); give an absolute path"));
                return None;
            };
            return Some(home.join(s[1..].trim_start_matches('/')));
        }
        if s.starts_with('~') {
            self.err(pos, format!("`{s}`: only `~` (the home of the user skiff runs as) is expanded, not `~user`; give an absolute path"));
            return None;
        }
        let p = Path::new(s);
        Some(if p.is_absolute() { p.to_path_buf() } else { self.files.dir(pos.file).join(p) })
    }
}

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
            "x-skiff" if main => (m.network, m.revision_history, m.profiles) = skiff_extension(cx, v),
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

fn volume_decl(cx: &mut Ctx, name: &str, n: &Node) -> Option<VolumeDecl> {
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

/// Where the services refer to things declared elsewhere, for the checks made once all are read.
struct Sites<'a> {
    deps: &'a mut Vec<DepSite>,
    volumes: &'a mut Vec<(String, Pos)>,
    ports: &'a mut Vec<PortSite>,
    networks: &'a mut Vec<networks::NetSite>,
}

fn service(cx: &mut Ctx, name: &str, key: &Node, n: &Node, sites: Sites) -> Option<Service> {
    let Sites { deps: dep_sites, volumes: volume_sites, ports: port_sites, networks: net_sites } = sites;
    let what = format!("service `{name}`");
    if matches!(n.value, Value::Null) {
        cx.err(key.pos, format!("{what} is empty: it needs at least image:"));
        return None;
    }
    let entries = cx.map(n, &what)?;
    let mut s = Service { name: name.to_string(), replicas: 1, ..Default::default() };
    let mut image = None;
    let mut build_pos: Option<Pos> = None;
    let mut restart_key: Option<Pos> = None;
    let mut deploy_restart: Option<(RestartPolicy, Pos)> = None;
    let mut limits_top = Resources::default();
    let mut limits_deploy = Resources::default();
    let mut limit_pos: BTreeMap<&str, Pos> = BTreeMap::new();
    let mut ports_key: Option<Pos> = None;
    let mut container_name_pos: Option<Pos> = None;
    let mut networks_key: Option<Pos> = None;
    // Checked once network_mode is known (keys come in any order).
    let mut sysctl_sites: Vec<(String, Pos)> = Vec::new();
    let mut cap_sites: Vec<(String, Pos)> = Vec::new();
    for (key, k, v) in &entries {
        let (k, v) = (*k, *v);
        let f = format!("{name}.{key}");
        match key.as_str() {
            "image" => {
                if let Some(i) = cx.nonempty_string(v, &f) {
                    if let Err(e) = skiff_images::Reference::parse(&i) {
                        cx.err(v.pos, format!("{f}: `{i}` is not a valid image reference: {e}"));
                    }
                    image = Some(i);
                }
            }
            "command" => s.command = cx.command(v, &f),
            "entrypoint" => s.entrypoint = cx.command(v, &f),
            "environment" => s.environment = cx.key_values(v, &f, true),
            "env_file" => s.env_file = env_files(cx, v, &f),
            "working_dir" => {
                if let Some(w) = cx.nonempty_string(v, &f) {
                    if !w.starts_with('/') {
                        cx.err(v.pos, format!("{f}: `{w}` must be an absolute path"));
                    }
                    s.working_dir = Some(w);
                }
            }
            "user" => s.user = cx.nonempty_string(v, &f),
            "restart" => {
                restart_key = Some(k.pos);
                if let Some(r) = cx.string(v, &f) {
                    match parse_restart(&r) {
                        Ok(p) => s.restart = p,
                        Err(e) => cx.err(v.pos, format!("{f}: {e}")),
                    }
                }
            }
            "deploy" => deploy(cx, name, v, &mut s, &mut deploy_restart, &mut limits_deploy, &mut limit_pos),
            "mem_limit" => {
                limits_top.memory = cx.size(v, &f);
                limit_pos.insert("mem_limit", v.pos);
            }
            "cpus" => {
                limits_top.cpus = cx.cpus(v, &f);
                limit_pos.insert("cpus", v.pos);
            }
            "pids_limit" => {
                limits_top.pids = cx.int(v, &f, -1, i64::MAX);
                limit_pos.insert("pids_limit", v.pos);
            }
            "healthcheck" => s.healthcheck = healthcheck(cx, v, &f),
            "volumes" => {
                if let Value::Seq(items) = &v.value {
                    for it in items {
                        if let Some(m) = mount(cx, it, &f, volume_sites) {
                            s.mounts.push(m);
                        }
                    }
                } else {
                    cx.err(v.pos, format!("{f} must be a list, not {}", v.kind()));
                }
            }
            "tmpfs" => {
                for (t, pos) in cx.strings(v, &f, true).unwrap_or_default() {
                    if let Some(m) = tmpfs_short(cx, &t, pos, &f) {
                        s.mounts.push(m);
                    }
                }
            }
            "read_only" => s.read_only = cx.bool(v, &f).unwrap_or(false),
            "stop_signal" => {
                if let Some(sig) = cx.string(v, &f) {
                    match units::parse_signal(&sig) {
                        Ok(x) => s.stop_signal = Some(x),
                        Err(e) => cx.err(v.pos, format!("{f}: {e}")),
                    }
                }
            }
            "stop_grace_period" => s.stop_grace_period = cx.duration(v, &f),
            "hostname" => {
                if let Some(h) = cx.nonempty_string(v, &f) {
                    let ok = h.len() <= 253
                        && h.split('.').all(|l| {
                            !l.is_empty()
                                && l.len() <= 63
                                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                                && !l.starts_with('-')
                                && !l.ends_with('-')
                        });
                    if ok {
                        s.hostname = Some(h);
                    } else {
                        cx.err(v.pos, format!("{f}: `{h}` is not a valid hostname"));
                    }
                }
            }
            "cap_add" | "cap_drop" => {
                let mut caps = Vec::new();
                for (c, pos) in cx.strings(v, &f, false).unwrap_or_default() {
                    match units::parse_capability(&c) {
                        Ok(c) => {
                            if key == "cap_add" {
                                cap_sites.push((c.clone(), pos));
                            }
                            caps.push(c)
                        }
                        Err(e) => cx.err(pos, format!("{f}: {e}")),
                    }
                }
                if key == "cap_add" {
                    s.cap_add = caps;
                } else {
                    s.cap_drop = caps;
                }
            }
            "ulimits" => s.ulimits = ulimits(cx, v, &f),
            "sysctls" => {
                s.sysctls = cx.labels(v, &f);
                sysctl_sites = key_sites(v);
            }
            "labels" => s.labels = cx.labels(v, &f),
            "depends_on" => {
                s.depends_on = depends_on(cx, name, v, &f, dep_sites);
            }
            "logging" => s.logging = logging(cx, v, &f),
            "network_mode" => {
                if let Some(m) = cx.string(v, &f) {
                    s.network_mode = match m.as_str() {
                        "host" => NetworkMode::Host,
                        "none" => NetworkMode::None,
                        "bridge" => NetworkMode::Bridge,
                        x if x.starts_with("service:") || x.starts_with("container:") => {
                            cx.err(v.pos, format!("{f}: sharing another container's network (`{x}`) is not supported; use host, none or bridge"));
                            continue;
                        }
                        x => {
                            cx.err(v.pos, format!("{f}: `{x}` is not a network mode (host, none or bridge)"));
                            continue;
                        }
                    }
                }
            }
            "ports" => {
                s.ports = ports(cx, v, &f, port_sites);
                ports_key = Some(k.pos);
            }
            "extra_hosts" => s.extra_hosts = extra_hosts(cx, v, &f),
            "networks" => {
                s.networks = networks::service_networks(cx, name, v, &f, net_sites);
                networks_key = Some(k.pos);
            }
            "dns" => s.dns = dns(cx, v, &f),
            "pull_policy" => {
                if let Some(p) = cx.string(v, &f) {
                    s.pull_policy = match p.as_str() {
                        "missing" | "if_not_present" => PullPolicy::Missing,
                        "always" => PullPolicy::Always,
                        "never" => PullPolicy::Never,
                        "daily" => PullPolicy::Every(Duration::from_secs(86400)),
                        "weekly" => PullPolicy::Every(Duration::from_secs(7 * 86400)),
                        "build" => {
                            cx.err(v.pos, format!("{f}: skiff does not build images; use missing, always, never, daily, weekly or every_<duration>"));
                            continue;
                        }
                        x if x.starts_with("every_") => match units::parse_duration(&x["every_".len()..]) {
                            Ok(d) if d >= Duration::from_secs(1) => PullPolicy::Every(d),
                            Ok(_) => {
                                cx.err(v.pos, format!("{f}: `{x}`: check at most once a second (like every_12h)"));
                                continue;
                            }
                            Err(e) => {
                                cx.err(v.pos, format!("{f}: `{x}`: {e} (like every_12h, every_30m)"));
                                continue;
                            }
                        },
                        x => {
                            cx.err(v.pos, format!("{f}: `{x}` is not supported (use missing, always, never, daily, weekly or every_<duration>)"));
                            continue;
                        }
                    }
                }
            }
            "build" => build_pos = Some(k.pos),
            "profiles" => {
                let mut list = Vec::new();
                for (p, pos) in cx.strings(v, &f, false).unwrap_or_default() {
                    if profiles::valid(&p) {
                        list.push(p);
                    } else {
                        cx.err(pos, format!("{f}: `{p}` is not a profile name (letters, digits, '_', '.', '-')"));
                    }
                }
                cx.files.profiles.insert(name.to_string(), (list, k.pos));
            }
            "container_name" => {
                if let Some(c) = cx.nonempty_string(v, &f) {
                    if valid_container_name(&c) {
                        s.container_name = Some(c);
                        container_name_pos = Some(v.pos);
                    } else {
                        cx.err(v.pos, format!("{f}: `{c}` is not a valid container name (letters, digits, '_', '.', '-', starting with a letter or digit, at most 63: it is also the host name)"));
                    }
                }
            }
            "privileged" => s.privileged = devices::privileged(cx, v, &f),
            "devices" => s.devices = devices::devices(cx, v, &f),
            "device_cgroup_rules" => s.device_cgroup_rules = devices::rules(cx, v, &f),
            "secrets" | "configs" => grants::uses(cx, name, key, v),
            // Documents ports: every port of a bridged replica is reachable from the others
            // already. Checked, not kept (a changed `expose` replaces nothing).
            "expose" => {
                let items = match &v.value {
                    Value::Seq(items) => items.iter().collect::<Vec<_>>(),
                    _ => {
                        cx.err(
                            v.pos,
                            format!("{f} must be a list of ports (like [\"80\", \"8000-8010\", \"53/udp\"])"),
                        );
                        Vec::new()
                    }
                };
                for (i, it) in items.into_iter().enumerate() {
                    let text = match &it.value {
                        Value::Int(n) => n.to_string(),
                        Value::Str(t) => t.clone(),
                        _ => {
                            cx.err(it.pos, format!("{f}[{i}] must be a port (like 80 or \"53/udp\")"));
                            continue;
                        }
                    };
                    let (port, proto) = text.split_once('/').unwrap_or((text.as_str(), "tcp"));
                    if let Err(e) = network::parse_port_range(port) {
                        cx.err(it.pos, format!("{f}[{i}]: {e}"));
                    } else if !matches!(proto, "tcp" | "udp" | "sctp") {
                        cx.err(it.pos, format!("{f}[{i}]: `{proto}` is not a protocol (tcp or udp)"));
                    }
                }
            }
            "x-skiff" => {
                for (key, k2, v2) in cx.map(v, &f).unwrap_or_default() {
                    let f2 = format!("{f}.{key}");
                    match key.as_str() {
                        "progress_deadline" => {
                            if let Some(d) = cx.duration(v2, &f2) {
                                if d.is_zero() {
                                    cx.err(v2.pos, format!("{f2} must be more than 0 (the default is 10m)"));
                                } else {
                                    s.rollout.progress_deadline = d;
                                }
                            }
                        }
                        x if x.starts_with("x-") => {}
                        x => cx.unknown(x, k2, &f),
                    }
                }
            }
            x if x.starts_with("x-") => {}
            x => match super::keys::refusal(x, false) {
                Some(h) => cx.err(k.pos, format!("{f}: {h}")),
                None => cx.unknown(x, k, &what),
            },
        }
    }
    // skiff does not build: with an image: it runs that image (a warning); without, an error.
    // Either way, the two ways to get a built image here.
    let how = |img: &str| {
        format!("build it elsewhere and push it (`docker build -t {img} . && docker push {img}`), or bring it here as an archive (`docker save -o image.tar {img}`, then `skiff load image.tar`)")
    };
    match (image, build_pos) {
        (Some(i), Some(pos)) => {
            cx.warn(
                pos,
                format!(
                    "{name}.build: skiff does not build images: it runs image {i} from its store or registry; {}",
                    how(&i)
                ),
            );
            s.image = i;
        }
        (Some(i), None) => s.image = i,
        (None, Some(pos)) => {
            cx.err(pos, format!("{name}.build: skiff does not build images; add image: NAME and {}", how("NAME")));
            return None;
        }
        (None, None) => {
            cx.err(key.pos, format!("{what} has no image:"));
            return None;
        }
    }
    if let Some(pos) = container_name_pos {
        if s.replicas > 1 {
            cx.err(pos, format!("{name}.container_name: a container name is unique, so the service can have only one replica (it has {}); remove container_name or the replicas", s.replicas));
        }
    }
    if let (Some(pos), false) = (ports_key, s.ports.is_empty()) {
        match s.network_mode {
            NetworkMode::Bridge => {}
            NetworkMode::Host => cx.warn(pos, format!("{name}.ports: not published with network_mode: host (the service listens on the host's ports itself); remove ports or use network_mode: bridge")),
            NetworkMode::None => cx.warn(pos, format!("{name}.ports: not published with network_mode: none (the service has no network); remove ports or use network_mode: bridge")),
        }
    }
    networks::check_service(cx, &s, networks_key, net_sites);
    for (key, pos) in &sysctl_sites {
        if let Some(e) = hostaccess::sysctl_error(key, s.network_mode) {
            cx.err(*pos, format!("{name}.sysctls: {e}"));
        }
    }
    for (cap, pos) in &cap_sites {
        if let Some(w) = hostaccess::capability_warning(cap, s.network_mode) {
            cx.warn(*pos, format!("{name}.cap_add: {w}"));
        }
    }
    if let Some((p, pos)) = deploy_restart {
        if let Some(rk) = restart_key {
            cx.warn(rk, format!("{name}: deploy.restart_policy (line {}) takes precedence over restart:", pos.line));
        }
        s.restart = p;
    }
    // mem_limit / cpus / pids_limit vs deploy.resources.limits: both may be given only if equal.
    macro_rules! merge {
        ($field:ident, $top:literal, $dep:literal) => {
            s.resources.$field = match (limits_top.$field, limits_deploy.$field) {
                (Some(a), Some(b)) if a != b => {
                    let pos = limit_pos.get($top).copied().unwrap_or_default();
                    cx.err(
                        pos,
                        format!("{name}: {} and deploy.resources.limits.{} disagree; give only one", $top, $dep),
                    );
                    None
                }
                (a, b) => a.or(b),
            };
        };
    }
    merge!(memory, "mem_limit", "memory");
    merge!(cpus, "cpus", "cpus");
    merge!(pids, "pids_limit", "pids");
    Some(s)
}

fn parse_restart(r: &str) -> Result<RestartPolicy, String> {
    let (cond, max) = match r {
        "no" | "\"no\"" => (RestartCondition::No, None),
        "always" => (RestartCondition::Always, None),
        "unless-stopped" => (RestartCondition::UnlessStopped, None),
        "on-failure" => (RestartCondition::OnFailure, None),
        x => match x.strip_prefix("on-failure:") {
            Some(n) => match n.parse::<u32>() {
                Ok(n) => (RestartCondition::OnFailure, Some(n)),
                Err(_) => return Err(format!("`{x}`: the number of retries must be a non-negative integer")),
            },
            None => return Err(format!("`{x}` is not a restart policy (no, always, on-failure[:N], unless-stopped)")),
        },
    };
    Ok(RestartPolicy { condition: cond, max_attempts: max, ..Default::default() })
}

fn env_files(cx: &mut Ctx, n: &Node, what: &str) -> Vec<EnvFile> {
    let items: Vec<&Node> = match &n.value {
        Value::Seq(items) => items.iter().collect(),
        _ => vec![n],
    };
    let mut out = Vec::new();
    for it in items {
        match &it.value {
            Value::Map(_) => {
                let mut path = None;
                let mut required = true;
                for (key, k, v) in cx.map(it, what).unwrap_or_default() {
                    match key.as_str() {
                        "path" => path = cx.nonempty_string(v, &format!("{what}.path")),
                        "required" => required = cx.bool(v, &format!("{what}.required")).unwrap_or(true),
                        "format" => {}
                        x if x.starts_with("x-") => {}
                        x => cx.unknown(x, k, what),
                    }
                }
                match path {
                    Some(p) => {
                        if let Some(path) = cx.path(&p, it.pos) {
                            out.push((EnvFile { path, required }, it.pos))
                        }
                    }
                    None => cx.err(it.pos, format!("{what}: an entry needs path:")),
                }
            }
            _ => {
                if let Some(p) = cx.nonempty_string(it, what) {
                    if let Some(path) = cx.path(&p, it.pos) {
                        out.push((EnvFile { path, required: true }, it.pos));
                    }
                }
            }
        }
    }
    if cx.check_files {
        for (f, pos) in &out {
            match super::read_env_file(&f.path) {
                Ok(Some(_)) => {}
                Ok(None) if !f.required => {}
                Ok(None) => cx.err(
                    *pos,
                    format!("{what}: {} does not exist: create it, or give `required: false`", f.path.display()),
                ),
                Err(e) => cx.err(*pos, format!("{what}: {e}")),
            }
        }
    }
    out.into_iter().map(|(f, _)| f).collect()
}

fn deploy(
    cx: &mut Ctx,
    name: &str,
    n: &Node,
    s: &mut Service,
    restart: &mut Option<(RestartPolicy, Pos)>,
    limits: &mut Resources,
    limit_pos: &mut BTreeMap<&'static str, Pos>,
) {
    let what = format!("{name}.deploy");
    for (key, k, v) in cx.map(n, &what).unwrap_or_default() {
        let f = format!("{what}.{key}");
        match key.as_str() {
            "replicas" => s.replicas = cx.int(v, &f, 0, 1000).map(|i| i as u32).unwrap_or(1),
            "mode" => {
                if let Some(m) = cx.string(v, &f) {
                    if m != "replicated" {
                        cx.err(
                            v.pos,
                            format!(
                                "{f}: `{m}` is not supported; skiff runs one node (use replicated, or leave mode: out)"
                            ),
                        );
                    }
                }
            }
            "labels" => {
                cx.labels(v, &f);
            }
            "restart_policy" => {
                let mut p = RestartPolicy { condition: RestartCondition::Always, ..Default::default() };
                for (key, k2, v2) in cx.map(v, &f).unwrap_or_default() {
                    let f2 = format!("{f}.{key}");
                    match key.as_str() {
                        "condition" => {
                            if let Some(c) = cx.string(v2, &f2) {
                                p.condition = match c.as_str() {
                                    "none" => RestartCondition::No,
                                    "on-failure" => RestartCondition::OnFailure,
                                    "any" => RestartCondition::Always,
                                    x => {
                                        cx.err(
                                            v2.pos,
                                            format!("{f2}: `{x}` is not a condition (none, on-failure, any)"),
                                        );
                                        continue;
                                    }
                                }
                            }
                        }
                        "delay" => p.delay = cx.duration(v2, &f2),
                        "max_attempts" => p.max_attempts = cx.u32(v2, &f2),
                        "window" => p.window = cx.duration(v2, &f2),
                        x if x.starts_with("x-") => {}
                        x => cx.unknown(x, k2, &f),
                    }
                }
                *restart = Some((p, k.pos));
            }
            "resources" => {
                for (key, k2, v2) in cx.map(v, &f).unwrap_or_default() {
                    let f2 = format!("{f}.{key}");
                    match key.as_str() {
                        "limits" => {
                            for (key, k3, v3) in cx.map(v2, &f2).unwrap_or_default() {
                                let f3 = format!("{f2}.{key}");
                                match key.as_str() {
                                    "memory" => {
                                        limits.memory = cx.size(v3, &f3);
                                        limit_pos.entry("mem_limit").or_insert(v3.pos);
                                    }
                                    "cpus" => {
                                        limits.cpus = cx.cpus(v3, &f3);
                                        limit_pos.entry("cpus").or_insert(v3.pos);
                                    }
                                    "pids" => {
                                        limits.pids = cx.int(v3, &f3, -1, i64::MAX);
                                        limit_pos.entry("pids_limit").or_insert(v3.pos);
                                    }
                                    "devices" => cx.err(k3.pos, format!("{f3}: device access is not supported yet; remove it")),
                                    x if x.starts_with("x-") => {}
                                    x => cx.unknown(x, k3, &f2),
                                }
                            }
                        }
                        "reservations" => cx.err(k2.pos, format!("{f2}: skiff enforces limits only; move these values to deploy.resources.limits or remove them")),
                        x if x.starts_with("x-") => {}
                        x => cx.unknown(x, k2, &f),
                    }
                }
            }
            "update_config" => s.rollout.update = rollout::update_config(cx, v, &f, false),
            "rollback_config" => s.rollout.rollback = rollout::update_config(cx, v, &f, true),
            "placement" | "endpoint_mode" => cx.err(k.pos, format!("{f}: skiff runs on one node; remove {key}")),
            x if x.starts_with("x-") => {}
            x => cx.unknown(x, k, &what),
        }
    }
}

fn healthcheck(cx: &mut Ctx, n: &Node, what: &str) -> Option<Healthcheck> {
    let mut h = Healthcheck::default();
    for (key, k, v) in cx.map(n, what)? {
        let f = format!("{what}.{key}");
        match key.as_str() {
            "test" => match &v.value {
                Value::Str(s) => {
                    if s.trim().is_empty() {
                        cx.err(v.pos, format!("{f} must not be empty"));
                    } else if s == "NONE" {
                        h.disabled = true;
                    } else {
                        h.test = Some(HealthTest::Shell(s.clone()));
                    }
                }
                Value::Seq(_) => {
                    let words: Vec<String> =
                        cx.strings(v, &f, false).unwrap_or_default().into_iter().map(|(s, _)| s).collect();
                    match words.first().map(String::as_str) {
                        Some("NONE") => h.disabled = true,
                        Some("CMD") if words.len() > 1 => h.test = Some(HealthTest::Cmd(words[1..].to_vec())),
                        Some("CMD-SHELL") if words.len() > 1 => h.test = Some(HealthTest::Shell(words[1..].join(" "))),
                        Some("CMD" | "CMD-SHELL") => {
                            cx.err(v.pos, format!("{f}: the command is missing after {}", words[0]))
                        }
                        Some(x) => {
                            cx.err(v.pos, format!("{f}: a list must start with CMD, CMD-SHELL or NONE, not `{x}`"))
                        }
                        None => cx.err(v.pos, format!("{f} must not be empty")),
                    }
                }
                _ => cx.err(v.pos, format!("{f} must be a string or a list, not {}", v.kind())),
            },
            "interval" => h.interval = cx.duration(v, &f).unwrap_or(h.interval),
            "timeout" => h.timeout = cx.duration(v, &f).unwrap_or(h.timeout),
            "start_period" => h.start_period = cx.duration(v, &f).unwrap_or(h.start_period),
            "start_interval" => h.start_interval = cx.duration(v, &f).or(h.start_interval),
            "retries" => h.retries = cx.u32(v, &f).unwrap_or(h.retries),
            "disable" => h.disabled = cx.bool(v, &f).unwrap_or(false),
            x if x.starts_with("x-") => {}
            x => cx.unknown(x, k, what),
        }
    }
    if h.interval.is_zero() {
        cx.err(n.pos, format!("{what}.interval must be longer than 0"));
    }
    if h.timeout.is_zero() {
        cx.err(n.pos, format!("{what}.timeout must be longer than 0"));
    }
    Some(h)
}

fn mount(cx: &mut Ctx, n: &Node, what: &str, volume_sites: &mut Vec<(String, Pos)>) -> Option<Mount> {
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
fn set_nocopy(cx: &mut Ctx, kind: &mut MountKind, nocopy: bool, pos: Pos, what: &str) {
    if !nocopy {
        return;
    }
    match kind {
        MountKind::Volume { nocopy: n, .. } => *n = true,
        _ => cx.warn(pos, format!("{what}: nocopy applies to named volumes only; ignored")),
    }
}

/// Warns (never refuses) about a bind that hands the host to the container.
fn bind_warning(cx: &mut Ctx, kind: &MountKind, read_only: bool, pos: Pos, what: &str) {
    if let MountKind::Bind { source, .. } = kind {
        if let Some(w) = hostaccess::bind_warning(source, read_only) {
            cx.warn(pos, format!("{what}: {w}"));
        }
    }
}

/// Each key of a mapping (`KEY: value`) or list (`- KEY=value`), with its position.
fn key_sites(n: &Node) -> Vec<(String, Pos)> {
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

fn source_kind(
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

fn mount_long(cx: &mut Ctx, n: &Node, what: &str, volume_sites: &mut Vec<(String, Pos)>) -> Option<Mount> {
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

fn tmpfs_short(cx: &mut Ctx, spec: &str, pos: Pos, what: &str) -> Option<Mount> {
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

fn ulimits(cx: &mut Ctx, n: &Node, what: &str) -> BTreeMap<String, Ulimit> {
    let mut out = BTreeMap::new();
    for (key, k, v) in cx.map(n, what).unwrap_or_default() {
        let f = format!("{what}.{key}");
        if !units::ULIMITS.contains(&key.as_str()) {
            cx.err(k.pos, format!("{f}: `{key}` is not a resource limit ({})", units::ULIMITS.join(", ")));
            continue;
        }
        let u = match &v.value {
            Value::Map(_) => {
                let (mut soft, mut hard) = (None, None);
                for (key2, k2, v2) in cx.map(v, &f).unwrap_or_default() {
                    match key2.as_str() {
                        "soft" => soft = cx.int(v2, &format!("{f}.soft"), -1, i64::MAX),
                        "hard" => hard = cx.int(v2, &format!("{f}.hard"), -1, i64::MAX),
                        x => cx.unknown(x, k2, &f),
                    }
                }
                match (soft, hard) {
                    (Some(s), Some(h)) => {
                        if h != -1 && (s == -1 || s > h) {
                            cx.err(v.pos, format!("{f}: soft ({s}) must not exceed hard ({h})"));
                            continue;
                        }
                        Ulimit { soft: s, hard: h }
                    }
                    _ => {
                        cx.err(v.pos, format!("{f}: give both soft: and hard:"));
                        continue;
                    }
                }
            }
            _ => match cx.int(v, &f, -1, i64::MAX) {
                Some(i) => Ulimit { soft: i, hard: i },
                None => continue,
            },
        };
        out.insert(key, u);
    }
    out
}

fn depends_on(
    cx: &mut Ctx,
    name: &str,
    n: &Node,
    what: &str,
    sites: &mut Vec<DepSite>,
) -> BTreeMap<String, Dependency> {
    let mut out = BTreeMap::new();
    let plain = Dependency { condition: DependsCondition::ServiceStarted, required: true, restart: false };
    match &n.value {
        Value::Seq(_) => {
            for (d, pos) in cx.strings(n, what, false).unwrap_or_default() {
                sites.push((name.to_string(), d.clone(), pos, true));
                if out.insert(d.clone(), plain).is_some() {
                    cx.err(pos, format!("{what}: `{d}` is listed twice"));
                }
            }
        }
        _ => {
            for (d, k, v) in cx.map(n, what).unwrap_or_default() {
                let f = format!("{what}.{d}");
                let mut dep = plain;
                for (key, k2, v2) in cx.map(v, &f).unwrap_or_default() {
                    match key.as_str() {
                        "condition" => {
                            if let Some(c) = cx.string(v2, &format!("{f}.condition")) {
                                dep.condition = match c.as_str() {
                                    "service_started" => DependsCondition::ServiceStarted,
                                    "service_healthy" => DependsCondition::ServiceHealthy,
                                    "service_completed_successfully" => DependsCondition::ServiceCompletedSuccessfully,
                                    x => {
                                        cx.err(v2.pos, format!("{f}.condition: `{x}` is not a condition (service_started, service_healthy, service_completed_successfully)"));
                                        continue;
                                    }
                                }
                            }
                        }
                        "required" => dep.required = cx.bool(v2, &format!("{f}.required")).unwrap_or(true),
                        "restart" => dep.restart = cx.bool(v2, &format!("{f}.restart")).unwrap_or(false),
                        x if x.starts_with("x-") => {}
                        x => cx.unknown(x, k2, &f),
                    }
                }
                sites.push((name.to_string(), d.clone(), k.pos, dep.required));
                out.insert(d, dep);
            }
        }
    }
    out
}

fn logging(cx: &mut Ctx, n: &Node, what: &str) -> Logging {
    let mut l = Logging::default();
    for (key, k, v) in cx.map(n, what).unwrap_or_default() {
        let f = format!("{what}.{key}");
        match key.as_str() {
            "driver" => {
                if let Some(d) = cx.string(v, &f) {
                    if !matches!(d.as_str(), "json-file" | "local") {
                        cx.err(v.pos, format!("{f}: skiff writes logs to rotated files under its root; `{d}` is not supported (use json-file or local, or leave driver: out)"));
                    }
                }
            }
            "options" => {
                for (key2, k2, v2) in cx.map(v, &f).unwrap_or_default() {
                    let f2 = format!("{f}.{key2}");
                    match key2.as_str() {
                        "max-size" => {
                            if let Some(sz) = cx.size(v2, &f2) {
                                if sz < 4096 {
                                    cx.err(v2.pos, format!("{f2}: at least 4k"));
                                } else {
                                    l.max_size = sz;
                                }
                            }
                        }
                        "max-file" => {
                            if let Some(n) = cx.int(v2, &f2, 1, 100) {
                                l.max_file = n as u32;
                            }
                        }
                        x => cx.warn(
                            k2.pos,
                            format!("{f}: the option `{x}` is ignored (skiff supports max-size and max-file)"),
                        ),
                    }
                }
            }
            x if x.starts_with("x-") => {}
            x => cx.unknown(x, k, what),
        }
    }
    l
}

/// A `ports:` entry with the place it came from, for the collision check across services.
struct PortSite {
    /// `web.ports[1]`.
    label: String,
    mapping: PortMapping,
    pos: Pos,
}

fn ports(cx: &mut Ctx, n: &Node, what: &str, sites: &mut Vec<PortSite>) -> Vec<PortMapping> {
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
fn port_long(cx: &mut Ctx, n: &Node, what: &str) -> Option<PortMapping> {
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
fn port_collisions(cx: &mut Ctx, sites: &[PortSite]) {
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
fn extra_hosts(cx: &mut Ctx, n: &Node, what: &str) -> Vec<ExtraHost> {
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
fn dns(cx: &mut Ctx, n: &Node, what: &str) -> Vec<std::net::IpAddr> {
    let mut out = Vec::new();
    for (s, pos) in cx.strings(n, what, true).unwrap_or_default() {
        match network::parse_ip(s.trim()) {
            Ok(ip) => out.push(ip),
            Err(e) => cx.err(pos, format!("{what}: {e} (dns: takes nameserver addresses)")),
        }
    }
    out
}

/// `x-skiff:` — `bridge`, `subnet`, `revision_history`; other keys warn.
fn skiff_extension(cx: &mut Ctx, n: &Node) -> (NetworkOverrides, Option<u32>, Vec<String>) {
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
            x if x.starts_with("x-") => {}
            x => cx.unknown(x, k, "x-skiff"),
        }
    }
    (net, history, active)
}
