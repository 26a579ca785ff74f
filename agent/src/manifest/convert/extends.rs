//! `extends:` in a service: another service (of this file, or of `file:`) as its base,
//! merged under it by compose's rules ([`files::merge_service`]). A base may extend in turn
//! (at most [`MAX_DEPTH`] deep; a chain that comes back to itself is an error). Relative
//! paths keep resolving against the directory of the file each value is written in.

use super::files::{self, Failure, MAX_DEPTH};
use super::{Ctx, Node, Value};

/// `svc` (service `name`, whose `extends:` is `ext`, in a file whose `services:` is
/// `services`) merged onto what it extends.
pub(super) fn resolve(cx: &mut Ctx, name: &str, svc: &Node, ext: &Node, services: &Node) -> Option<Node> {
    resolve_in(cx, name, svc, ext, services, &mut Vec::new())
}

fn resolve_in(
    cx: &mut Ctx,
    name: &str,
    svc: &Node,
    ext: &Node,
    services: &Node,
    chain: &mut Vec<(u16, String)>,
) -> Option<Node> {
    let what = format!("{name}.extends");
    let (base_name, file) = match &ext.value {
        Value::Map(_) => {
            let mut service = None;
            let mut file = None;
            for (key, k, v) in cx.map(ext, &what).unwrap_or_default() {
                let f = format!("{what}.{key}");
                match key.as_str() {
                    "service" => service = cx.nonempty_string(v, &f),
                    "file" => file = cx.nonempty_string(v, &f).map(|s| (s, v.pos)),
                    x if x.starts_with("x-") => {}
                    x => cx.unknown(x, k, &what),
                }
            }
            match service {
                Some(s) => (s, file),
                None => {
                    cx.err(ext.pos, format!("{what} needs service: (the service to extend)"));
                    return None;
                }
            }
        }
        _ => (cx.nonempty_string(ext, &what)?, None),
    };
    let (base_services, where_) = match &file {
        Some((written, pos)) => {
            let idx = match cx.files.load(written, pos.file) {
                Ok(i) => i,
                Err(Failure::Here(e)) => {
                    cx.err(*pos, format!("{what}.file: {e}"));
                    return None;
                }
                Err(Failure::At(at, e)) => {
                    cx.err(at, e);
                    return None;
                }
            };
            let root = cx.files.root(idx).cloned()?;
            let shown = cx.files.name(idx).unwrap_or_else(|| written.clone());
            match files::get(&root, "services") {
                Some(s) => (s.clone(), shown),
                None => {
                    cx.err(*pos, format!("{what}: {shown} has no services:"));
                    return None;
                }
            }
        }
        None => (services.clone(), "this file".to_string()),
    };
    let Some(base) = files::get(&base_services, &base_name) else {
        cx.err(ext.pos, format!("{what}: there is no service `{base_name}` in {where_}"));
        return None;
    };
    let id = (base_services.pos.file, base_name.clone());
    if chain.contains(&id) || (file.is_none() && base_name == name && chain.is_empty()) {
        cx.err(ext.pos, format!("{what}: `{base_name}` extends itself (through the services it extends)"));
        return None;
    }
    if chain.len() >= MAX_DEPTH {
        cx.err(ext.pos, format!("{what}: services extended at most {MAX_DEPTH} deep"));
        return None;
    }
    if !matches!(base.value, Value::Map(_) | Value::Null) {
        cx.err(base.pos, format!("service `{base_name}` must be a mapping, not {}", base.kind()));
        return None;
    }
    chain.push(id);
    let base = match files::get(base, "extends") {
        Some(bext) => resolve_in(cx, &base_name, base, bext, &base_services, chain)?,
        None => base.clone(),
    };
    Some(files::merge_service(&base, svc))
}
