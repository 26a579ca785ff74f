//! `profiles:`: a service with profiles runs only when one of them is active. The active
//! profiles are `SKIFF_PROFILES` (or compose's `COMPOSE_PROFILES`), comma-separated, from
//! the agent's environment or the `.env` next to the manifest; when neither is set, the
//! manifest's `x-skiff: {profiles: [...]}`. `*` activates every profile. Services left out
//! are listed in [`Manifest::inactive`]; a service that runs cannot depend on one left out.

use super::{Ctx, Manifest, Pos};

/// A profile name as compose allows it: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub(super) fn valid(p: &str) -> bool {
    p.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && p.len() <= 64
        && p.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The profiles in force, and what set them (for messages).
fn active(cx: &mut Ctx, m: &Manifest) -> (Vec<String>, String) {
    for var in ["SKIFF_PROFILES", "COMPOSE_PROFILES"] {
        if let Some(v) = cx.var(var) {
            let list = v.split(',').map(str::trim).filter(|p| !p.is_empty()).map(String::from).collect();
            return (list, var.to_string());
        }
    }
    (m.profiles.clone(), "x-skiff: {profiles}".to_string())
}

/// Leaves out the services none of whose profiles is active.
pub(super) fn apply(cx: &mut Ctx, m: &mut Manifest) {
    let (active, source) = active(cx, m);
    let all = active.iter().any(|p| p == "*");
    let declared: Vec<(String, (Vec<String>, Pos))> =
        cx.files.profiles.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for (name, (profiles, _)) in declared {
        if profiles.is_empty() || all || profiles.iter().any(|p| active.contains(p)) {
            continue;
        }
        if m.services.remove(&name).is_some() {
            m.inactive.insert(name, profiles);
        }
    }
    let sites = cx.files.dep_sites.clone();
    for (svc, dep, pos, required) in sites {
        let Some(profiles) = m.inactive.get(&dep) else { continue };
        let Some(s) = m.services.get_mut(&svc) else { continue };
        if required {
            let list = profiles.join(", ");
            cx.err(
                pos,
                format!("service `{svc}` depends on `{dep}`, which runs only with profile {list}, not active ({source}); activate it (SKIFF_PROFILES={}) or give `{svc}` the same profile", profiles[0]),
            );
        } else {
            s.depends_on.remove(&dep);
        }
    }
}
