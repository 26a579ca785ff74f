//! `include:` at the top level: other compose files whose services, volumes and networks join the
//! manifest's, as compose does. Each included file is its own document: relative paths in
//! it resolve against its directory (or `project_directory`), its variables come from the
//! agent's environment and the `.env` of that directory, and what it includes is included
//! too. A service or volume defined in two files (differently) is an error, as in compose.

use std::path::PathBuf;

use super::files::{Failure, MAX_DEPTH};
use super::{document, Ctx, Manifest, Node, Pos, Value};

/// Every entry of `include:` (`n`), merged into `m`.
pub(super) fn all(cx: &mut Ctx, n: &Node, m: &mut Manifest) {
    let items = match &n.value {
        Value::Seq(items) => items.iter().collect::<Vec<_>>(),
        Value::Null => Vec::new(),
        _ => {
            cx.err(n.pos, format!("include must be a list of files, not {}", n.kind()));
            return;
        }
    };
    for (i, it) in items.into_iter().enumerate() {
        let what = format!("include[{i}]");
        let (path, dir) = match &it.value {
            Value::Map(_) => {
                let mut path = None;
                let mut dir = None;
                for (key, k, v) in cx.map(it, &what).unwrap_or_default() {
                    let f = format!("{what}.{key}");
                    match key.as_str() {
                        "path" => match &v.value {
                            Value::Seq(p) if p.len() == 1 => path = cx.nonempty_string(&p[0], &f).map(|s| (s, p[0].pos)),
                            Value::Seq(_) => cx.err(
                                v.pos,
                                format!("{f}: skiff includes one file per entry (compose would merge these as overrides); list each file as its own entry, or merge them into one"),
                            ),
                            _ => path = cx.nonempty_string(v, &f).map(|s| (s, v.pos)),
                        },
                        "project_directory" => {
                            if let Some(d) = cx.nonempty_string(v, &f) {
                                dir = cx.path(&d, v.pos);
                            }
                        }
                        "env_file" => cx.err(
                            k.pos,
                            format!("{f} is not supported: put the included file's variables in the .env file next to it (or in its project_directory)"),
                        ),
                        x if x.starts_with("x-") => {}
                        x => cx.unknown(x, k, &what),
                    }
                }
                match path {
                    Some(p) => (p, dir),
                    None => {
                        cx.err(it.pos, format!("{what} needs path: (the compose file to include)"));
                        continue;
                    }
                }
            }
            _ => match cx.nonempty_string(it, &what) {
                Some(p) => ((p, it.pos), None),
                None => continue,
            },
        };
        if let Some(inc) = one(cx, &path.0, path.1, dir) {
            merge(cx, m, inc, path.1);
        }
    }
}

/// Reads and converts the file `written` at `pos`.
fn one(cx: &mut Ctx, written: &str, pos: Pos, dir: Option<PathBuf>) -> Option<Manifest> {
    let file = match cx.files.load(written, pos.file) {
        Ok(f) => f,
        Err(Failure::Here(e)) => {
            cx.err(pos, format!("include: {e}"));
            return None;
        }
        Err(Failure::At(at, e)) => {
            cx.err(at, e);
            return None;
        }
    };
    let canonical = cx.files.canonical(file).map(|p| p.to_path_buf()).unwrap_or_default();
    if cx.files.including.contains(&canonical) {
        cx.err(pos, format!("include: {written} includes itself (through the files it includes)"));
        return None;
    }
    if cx.files.including.len() >= MAX_DEPTH {
        cx.err(pos, format!("include: files included at most {MAX_DEPTH} deep"));
        return None;
    }
    if let Some(d) = dir {
        cx.files.set_dir(file, d);
    }
    let root = cx.files.root(file)?.clone();
    if matches!(root.value, Value::Null) {
        cx.err(pos, format!("include: {written} is empty"));
        return None;
    }
    let base = cx.files.dir(file).to_path_buf();
    cx.files.including.push(canonical);
    let mut child = Ctx {
        diags: &mut *cx.diags,
        base: &base,
        files: &mut *cx.files,
        dotenv: None,
        dotenv_error: None,
        check_files: cx.check_files,
        grants: Default::default(),
    };
    let inc = document(&mut child, &root, false);
    cx.files.including.pop();
    inc
}

/// The services and volumes of an included file, into `m`.
fn merge(cx: &mut Ctx, m: &mut Manifest, inc: Manifest, pos: Pos) {
    for (name, s) in inc.services {
        if m.services.contains_key(&name) {
            cx.err(
                pos,
                format!("include: service `{name}` is defined by two included files: a service is defined once"),
            );
            continue;
        }
        m.services.insert(name, s);
    }
    for (name, n) in inc.networks {
        match m.networks.get(&name) {
            Some(e) if *e != n => cx.err(
                pos,
                format!("include: network `{name}` is declared differently by two included files: declare it once"),
            ),
            _ => {
                m.networks.insert(name, n);
            }
        }
    }
    for (name, v) in inc.volumes {
        match m.volumes.get(&name) {
            Some(e) if *e != v => cx.err(
                pos,
                format!("include: volume `{name}` is declared differently by two included files: declare it once"),
            ),
            _ => {
                m.volumes.insert(name, v);
            }
        }
    }
}
