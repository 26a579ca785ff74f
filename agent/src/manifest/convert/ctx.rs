//! The conversion's context: where diagnostics go, the files and the variables, and the
//! typed readers of YAML values every key uses (strings, sizes, durations, lists...), with
//! compose's interpolation.

use super::*;

/// Every name that looks like a variable in `s` (a superset of what [`interpolate`] looks up).
pub(super) fn referenced_names(s: &str) -> Vec<String> {
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

pub(super) struct Ctx<'a> {
    pub(super) diags: &'a mut Vec<Diagnostic>,
    /// The directory of the document being converted (its `.env`); relative paths resolve
    /// against the directory of the file each value is in (see [`Files`]).
    pub(super) base: &'a Path,
    /// The files brought in by `include:` and `extends: {file:}`.
    pub(super) files: &'a mut files::Files,
    /// `<base>/.env`, read on first use (the process environment wins over it, as in compose).
    pub(super) dotenv: Option<std::collections::HashMap<String, String>>,
    /// Why `.env` could not be read, until reported (at the first place that needed it).
    pub(super) dotenv_error: Option<String>,
    /// Read the files the manifest names (env files) and check them.
    pub(super) check_files: bool,
    /// Secrets and configs: the top level's and the services' (see [`grants`]).
    pub(super) grants: grants::Pending,
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

pub(super) type Entries<'n> = Vec<(String, &'n Node, &'n Node)>;

impl Ctx<'_> {
    pub(super) fn err(&mut self, pos: Pos, msg: impl Into<String>) {
        self.diag(Severity::Error, pos, msg.into());
    }
    pub(super) fn warn(&mut self, pos: Pos, msg: impl Into<String>) {
        self.diag(Severity::Warning, pos, msg.into());
    }
    pub(super) fn diag(&mut self, severity: Severity, pos: Pos, message: String) {
        let file = self.files.name(pos.file);
        self.diags.push(Diagnostic { severity, file, line: pos.line, column: pos.column, message });
    }

    /// The entries of a mapping (keys as text). `null` is an empty mapping.
    pub(super) fn map<'n>(&mut self, n: &'n Node, what: &str) -> Option<Entries<'n>> {
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
    pub(super) fn unknown(&mut self, key: &str, k: &Node, within: &str) {
        self.warn(k.pos, format!("unknown key `{key}` in {within} (ignored)"));
    }

    pub(super) fn var(&mut self, name: &str) -> Option<String> {
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

    pub(super) fn string(&mut self, n: &Node, what: &str) -> Option<String> {
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

    pub(super) fn nonempty_string(&mut self, n: &Node, what: &str) -> Option<String> {
        let s = self.string(n, what)?;
        if s.trim().is_empty() {
            self.err(n.pos, format!("{what} must not be empty"));
            return None;
        }
        Some(s)
    }

    pub(super) fn bool(&mut self, n: &Node, what: &str) -> Option<bool> {
        match &n.value {
            Value::Bool(b) => Some(*b),
            Value::Str(s) if s == "true" || s == "false" => Some(s == "true"),
            _ => {
                self.err(n.pos, format!("{what} must be true or false, not {}", n.kind()));
                None
            }
        }
    }

    pub(super) fn int(&mut self, n: &Node, what: &str, min: i64, max: i64) -> Option<i64> {
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

    pub(super) fn u32(&mut self, n: &Node, what: &str) -> Option<u32> {
        self.int(n, what, 0, u32::MAX as i64).map(|i| i as u32)
    }

    pub(super) fn duration(&mut self, n: &Node, what: &str) -> Option<Duration> {
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

    pub(super) fn size(&mut self, n: &Node, what: &str) -> Option<u64> {
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

    pub(super) fn cpus(&mut self, n: &Node, what: &str) -> Option<f64> {
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
    pub(super) fn strings(&mut self, n: &Node, what: &str, allow_single: bool) -> Option<Vec<(String, Pos)>> {
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
    pub(super) fn command(&mut self, n: &Node, what: &str) -> Option<Vec<String>> {
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
    pub(super) fn key_values(&mut self, n: &Node, what: &str, nullable: bool) -> BTreeMap<String, Option<String>> {
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

    pub(super) fn labels(&mut self, n: &Node, what: &str) -> BTreeMap<String, String> {
        self.key_values(n, what, false).into_iter().map(|(k, v)| (k, v.unwrap_or_default())).collect()
    }

    /// `s` (written at `pos`) as an absolute path: relative to the directory of the file it
    /// is written in; `~` and `~/...` are the home of the user skiff runs as.
    pub(super) fn path(&mut self, s: &str, pos: Pos) -> Option<PathBuf> {
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
