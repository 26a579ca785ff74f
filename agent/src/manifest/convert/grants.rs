//! `secrets:` and `configs:`: the top-level declarations (where the content comes from) and
//! the services' uses of them (where, with which owner and mode), resolved into
//! [`FileGrant`]s once every service is read.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::{Ctx, Node, Pos, Value};
use crate::manifest::{FileGrant, GrantKind, GrantSource, Manifest, ReadError, GRANT_MAX};

/// What the top level declares and the services use, until [`resolve`].
#[derive(Default)]
pub(super) struct Pending {
    decls: BTreeMap<(GrantKind, String), GrantSource>,
    uses: Vec<Use>,
}

struct Use {
    service: String,
    kind: GrantKind,
    name: String,
    target: String,
    uid: u32,
    gid: u32,
    mode: u32,
    pos: Pos,
}

fn key(kind: GrantKind) -> &'static str {
    match kind {
        GrantKind::Secret => "secrets",
        GrantKind::Config => "configs",
    }
}

pub(super) fn kind_of(key: &str) -> GrantKind {
    if key == "secrets" {
        GrantKind::Secret
    } else {
        GrantKind::Config
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

/// The sha256 of a grant's content, as `sha256:<hex>`.
pub(crate) fn digest(data: &[u8]) -> String {
    let h = Sha256::digest(data);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in h {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The top-level `secrets:` or `configs:` (`key`).
pub(super) fn declarations(cx: &mut Ctx, key: &str, n: &Node) {
    let kind = kind_of(key);
    for (name, kn, vn) in cx.map(n, key).unwrap_or_default() {
        if name.starts_with("x-") {
            continue;
        }
        let what = format!("{key}.{name}");
        if !valid_name(&name) {
            cx.err(
                kn.pos,
                format!(
                    "`{name}` is not a valid name (letters, digits, '.', '-', '_', starting with a letter or digit)"
                ),
            );
            continue;
        }
        if let Some(src) = declaration(cx, kind, &what, kn.pos, vn) {
            cx.grants.decls.insert((kind, name), src);
        }
    }
}

fn declaration(cx: &mut Ctx, kind: GrantKind, what: &str, at: Pos, n: &Node) -> Option<GrantSource> {
    let mut sources: Vec<(GrantSource, Pos)> = Vec::new();
    let mut external = None;
    for (key, k, v) in cx.map(n, what)? {
        let f = format!("{what}.{key}");
        match key.as_str() {
            "file" => {
                let Some(p) = cx.nonempty_string(v, &f) else { continue };
                let Some(path) = cx.path(&p, v.pos) else { continue };
                let mut digest_of = None;
                if cx.check_files {
                    match crate::manifest::read_bounded(&path, GRANT_MAX, true) {
                        Ok(data) => digest_of = Some(digest(&data)),
                        Err(e) if e.is_not_found() => {
                            cx.err(v.pos, format!("{f}: {} does not exist", path.display()));
                            continue;
                        }
                        Err(e @ ReadError::TooLarge(_)) => {
                            cx.err(v.pos, format!("{f}: {}: {e} for a {}", path.display(), &key_singular(kind)));
                            continue;
                        }
                        Err(e) => {
                            cx.err(v.pos, format!("{f}: {}: {e}", path.display()));
                            continue;
                        }
                    }
                    if kind == GrantKind::Secret {
                        use std::os::unix::fs::PermissionsExt;
                        if std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0) {
                            cx.warn(
                                v.pos,
                                format!(
                                    "{f}: {} is readable by every user of this host; make it root's alone (chmod 600)",
                                    path.display()
                                ),
                            );
                        }
                    }
                }
                sources.push((GrantSource::File { path, digest: digest_of }, v.pos));
            }
            "environment" => {
                let Some(var) = cx.nonempty_string(v, &f) else { continue };
                match cx.var(&var) {
                    Some(value) => sources.push((GrantSource::Environment { var, value }, v.pos)),
                    None => cx.err(
                        v.pos,
                        format!("{f}: variable {var} is not set (in the agent's environment or the .env file next to the manifest)"),
                    ),
                }
            }
            "content" => {
                if let Some(c) = cx.string(v, &f) {
                    if c.len() as u64 > GRANT_MAX {
                        cx.err(v.pos, format!("{f}: larger than 1 MiB, the limit"));
                        continue;
                    }
                    sources.push((GrantSource::Content(c), v.pos));
                }
            }
            "external" => external = cx.bool(v, &f).filter(|e| *e).map(|_| k.pos),
            "name" => {
                let _ = cx.string(v, &f);
            }
            "labels" => {
                let _ = cx.labels(v, &f);
            }
            "driver" | "driver_opts" | "template_driver" => cx.err(
                k.pos,
                format!(
                    "{f}: skiff has no {} drivers; give the content with file:, environment: or content:",
                    key_singular(kind)
                ),
            ),
            x if x.starts_with("x-") => {}
            x => cx.unknown(x, k, what),
        }
    }
    if let Some(pos) = external {
        cx.err(
            pos,
            format!("{what}.external: skiff has no {} store to take it from; give its content with file: (a root-only file), environment: or content:", key_singular(kind)),
        );
        return None;
    }
    match sources.len() {
        0 => {
            cx.err(at, format!("{what} needs one of file:, environment: or content:"));
            None
        }
        1 => sources.pop().map(|(s, _)| s),
        _ => {
            cx.err(sources[1].1, format!("{what}: give only one of file:, environment: or content:"));
            None
        }
    }
}

fn key_singular(kind: GrantKind) -> &'static str {
    match kind {
        GrantKind::Secret => "secret",
        GrantKind::Config => "config",
    }
}

/// A numeric id (compose writes `uid: "103"`).
fn id(cx: &mut Ctx, n: &Node, what: &str) -> Option<u32> {
    cx.int(n, what, 0, u32::MAX as i64 - 1).map(|i| i as u32)
}

/// A file mode, octal as compose means it: `0440` (which this YAML reader gives as the
/// number 440.0, where compose's reads it as octal), `0o440`, or a string of octal digits; a
/// plain integer is taken as it is (`288`).
fn mode(cx: &mut Ctx, n: &Node, what: &str) -> Option<u32> {
    let m = match &n.value {
        Value::Int(i) => u32::try_from(*i).ok(),
        Value::Float(f) if f.fract() == 0.0 && *f >= 0.0 && *f < 1e6 => {
            u32::from_str_radix(&(*f as u32).to_string(), 8).ok()
        }
        Value::Str(s) => {
            let t = s.trim();
            let t = t.strip_prefix("0o").unwrap_or(t);
            u32::from_str_radix(t, 8).ok()
        }
        _ => None,
    };
    match m {
        Some(m) if m <= 0o777 => Some(m),
        _ => {
            cx.err(n.pos, format!("{what} must be a file mode from 0000 to 0777 (like 0440)"));
            None
        }
    }
}

/// A clean path: absolute, or relative to `base`; no `..`, not `base` itself.
fn target_path(base: &str, t: &str) -> Option<String> {
    if t.contains('\0') {
        return None;
    }
    let joined = if t.starts_with('/') { t.to_string() } else { format!("{}/{t}", base.trim_end_matches('/')) };
    let parts: Vec<&str> = joined.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    if parts.is_empty() || parts.contains(&"..") {
        return None;
    }
    Some(format!("/{}", parts.join("/")))
}

/// A service's `secrets:` or `configs:` (`key`): `- NAME` or `- {source, target, uid, gid, mode}`.
pub(super) fn uses(cx: &mut Ctx, service: &str, key: &str, n: &Node) {
    let kind = kind_of(key);
    let what = format!("{service}.{key}");
    let Value::Seq(items) = &n.value else {
        cx.err(n.pos, format!("{what} must be a list, not {}", n.kind()));
        return;
    };
    let base = if kind == GrantKind::Secret { "/run/secrets" } else { "/" };
    for (i, it) in items.iter().enumerate() {
        let f = format!("{what}[{i}]");
        let mut u = Use {
            service: service.to_string(),
            kind,
            name: String::new(),
            target: String::new(),
            uid: 0,
            gid: 0,
            mode: 0o444,
            pos: it.pos,
        };
        let mut target = None;
        match &it.value {
            Value::Map(_) => {
                for (k2, kn, v) in cx.map(it, &f).unwrap_or_default() {
                    let f2 = format!("{f}.{k2}");
                    match k2.as_str() {
                        "source" => u.name = cx.nonempty_string(v, &f2).unwrap_or_default(),
                        "target" => target = cx.nonempty_string(v, &f2).map(|t| (t, v.pos)),
                        "uid" => u.uid = id(cx, v, &f2).unwrap_or(0),
                        "gid" => u.gid = id(cx, v, &f2).unwrap_or(0),
                        "mode" => u.mode = mode(cx, v, &f2).unwrap_or(0o444),
                        x if x.starts_with("x-") => {}
                        x => cx.unknown(x, kn, &f),
                    }
                }
                if u.name.is_empty() {
                    cx.err(it.pos, format!("{f} needs source: (a name under the top-level {key}:)"));
                    continue;
                }
            }
            _ => match cx.nonempty_string(it, &f) {
                Some(s) => u.name = s,
                None => continue,
            },
        }
        let (t, tpos) = target.unwrap_or_else(|| (u.name.clone(), it.pos));
        match target_path(base, &t) {
            Some(p) => u.target = p,
            None => {
                cx.err(tpos, format!("{f}: `{t}` is not a file path in the container"));
                continue;
            }
        }
        cx.grants.uses.push(u);
    }
}

/// Resolves every service's uses against the declarations (an unknown name is an error where
/// it is used; two files at one path too).
pub(super) fn resolve(cx: &mut Ctx, m: &mut Manifest) {
    let uses = std::mem::take(&mut cx.grants.uses);
    for u in uses {
        let Some(svc) = m.services.get_mut(&u.service) else { continue };
        let Some(source) = cx.grants.decls.get(&(u.kind, u.name.clone())).cloned() else {
            let k = key(u.kind);
            cx.err(
                u.pos,
                format!(
                    "{}.{k}: {} `{}` is not declared: add it under the top-level {k}: ({k}: {{{}: {{file: ./{}}}}})",
                    u.service,
                    key_singular(u.kind),
                    u.name,
                    u.name,
                    u.name
                ),
            );
            continue;
        };
        if svc.files.iter().any(|g| g.target == u.target) {
            cx.err(u.pos, format!("{}.{}: {} is given twice", u.service, key(u.kind), u.target));
            continue;
        }
        svc.files.push(FileGrant {
            kind: u.kind,
            name: u.name,
            source,
            target: u.target,
            uid: u.uid,
            gid: u.gid,
            mode: u.mode,
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::manifest::{GrantKind, GrantSource};

    use crate::manifest::tests::{has, lines, report};

    #[test]
    fn secrets_and_configs_resolve_with_compose_defaults() {
        std::env::set_var("SKIFF_TEST_FILES_TOKEN", "t0ken");
        let r = report(
            "services:\n  a:\n    image: a\n    secrets:\n      - db\n      - source: token\n        target: tok\n        uid: \"1000\"\n        gid: 1000\n        mode: 0400\n      - source: db\n        target: /etc/db.pw\n    configs:\n      - app\n      - source: app\n        target: /etc/app.conf\n        mode: \"0640\"\n      - source: app\n        target: sub/app.conf\n        mode: 0o600\nsecrets:\n  db:\n    file: ./db.txt\n  token:\n    environment: SKIFF_TEST_FILES_TOKEN\nconfigs:\n  app:\n    content: |\n      x=1\n",
        );
        assert!(r.diagnostics.is_empty(), "{:?}", lines(&r));
        let files = &r.manifest.unwrap().services["a"].files;
        let got: Vec<(GrantKind, &str, &str, u32, u32, u32)> =
            files.iter().map(|g| (g.kind, g.name.as_str(), g.target.as_str(), g.uid, g.gid, g.mode)).collect();
        assert_eq!(
            got,
            [
                (GrantKind::Secret, "db", "/run/secrets/db", 0, 0, 0o444),
                (GrantKind::Secret, "token", "/run/secrets/tok", 1000, 1000, 0o400),
                (GrantKind::Secret, "db", "/etc/db.pw", 0, 0, 0o444),
                (GrantKind::Config, "app", "/app", 0, 0, 0o444),
                (GrantKind::Config, "app", "/etc/app.conf", 0, 0, 0o640),
                (GrantKind::Config, "app", "/sub/app.conf", 0, 0, 0o600),
            ]
        );
        assert_eq!(files[0].source, GrantSource::File { path: "/etc/skiff/./db.txt".into(), digest: None });
        assert_eq!(
            files[1].source,
            GrantSource::Environment { var: "SKIFF_TEST_FILES_TOKEN".into(), value: "t0ken".into() }
        );
        assert_eq!(files[3].source, GrantSource::Content("x=1\n".into()));
    }

    #[test]
    fn manifest_errors_at_their_line() {
        let svc = "services:\n  a:\n    image: a\n    secrets: [db]\n";
        has(svc, "4:15: error: ", "secret `db` is not declared");
        has(&format!("{svc}secrets:\n  db:\n    external: true\n"), "7:5: error: ", "no secret store");
        has(&format!("{svc}secrets:\n  db: {{}}\n"), "6:3: error: ", "needs one of file:, environment: or content:");
        has(&format!("{svc}secrets:\n  db:\n    file: a\n    content: b\n"), "8:14: error: ", "only one of");
        has(
            &format!("{svc}secrets:\n  db:\n    environment: SKIFF_TEST_FILES_UNSET_VAR\n"),
            "7:18: error: ",
            "is not set",
        );
        has(&format!("{svc}secrets:\n  db:\n    driver: vault\n"), "7:5: error: ", "no secret drivers");
        has(&format!("{svc}secrets:\n  -db:\n    file: a\n"), "6:3: error: ", "not a valid name");
        // A config of that name is no secret.
        has(&format!("{svc}configs:\n  db:\n    file: a\n"), "4:15: error: ", "secret `db` is not declared");
        let decl = "secrets:\n  db:\n    file: a\n";
        has(
            &format!("services:\n  a:\n    image: a\n    secrets:\n      - source: db\n        mode: 01777\n{decl}"),
            "6:15: error: ",
            "file mode",
        );
        has(
            &format!("services:\n  a:\n    image: a\n    secrets:\n      - source: db\n        uid: root\n{decl}"),
            "6:14: error: ",
            "integer",
        );
        has(
            &format!(
                "services:\n  a:\n    image: a\n    secrets:\n      - source: db\n        target: ../../etc/x\n{decl}"
            ),
            "6:17: error: ",
            "not a file path",
        );
        has(
            &format!("services:\n  a:\n    image: a\n    secrets:\n      - target: x\n{decl}"),
            "5:9: error: ",
            "needs source",
        );
        has(
            &format!("services:\n  a:\n    image: a\n    secrets: [db, db]\n{decl}"),
            "4:19: error: ",
            "/run/secrets/db is given twice",
        );
        has(&format!("services:\n  a:\n    image: a\n    secrets: db\n{decl}"), "4:14: error: ", "must be a list");
    }

    #[test]
    fn files_are_read_at_load_bounded_and_digested() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("compose.yaml");
        let ok = dir.path().join("ok.txt");
        std::fs::write(&ok, "pw").unwrap();
        std::fs::set_permissions(&ok, std::fs::Permissions::from_mode(0o600)).unwrap();
        let big = dir.path().join("big.txt");
        std::fs::write(&big, vec![b'x'; (1 << 20) + 1]).unwrap();
        let open = dir.path().join("open.txt");
        std::fs::write(&open, "pw").unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        let base = "services:\n  a:\n    image: a\n    secrets: [s]\nsecrets:\n  s:\n    file: ";
        let load = |file: &str| {
            std::fs::write(&m, format!("{base}{file}\n")).unwrap();
            crate::manifest::load(&m).unwrap()
        };
        let r = load("./ok.txt");
        assert!(r.diagnostics.is_empty(), "{:?}", lines(&r));
        let digest = super::digest(b"pw");
        assert_eq!(
            r.manifest.unwrap().services["a"].files[0].source,
            GrantSource::File { path: dir.path().join("./ok.txt"), digest: Some(digest) }
        );
        let l = lines(&load("./missing.txt"));
        assert!(l.iter().any(|d| d.starts_with("7:11: error: ") && d.contains("does not exist")), "{l:?}");
        let l = lines(&load("./big.txt"));
        assert!(l.iter().any(|d| d.starts_with("7:11: error: ") && d.contains("larger than 1 MiB")), "{l:?}");
        let l = lines(&load("/dev/zero"));
        assert!(l.iter().any(|d| d.starts_with("7:11: error: ") && d.contains("not a regular file")), "{l:?}");
        let l = lines(&load("./open.txt"));
        assert!(l.iter().any(|d| d.starts_with("7:11: warning: ") && d.contains("readable by every user")), "{l:?}");
    }
}
