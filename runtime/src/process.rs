//! The user and capabilities of the container's process (and of `exec`ed ones).

use std::collections::HashSet;

use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{LinuxCapabilities, Process};

use crate::error::{Context, Error, Result};

fn to_caps(set: &Option<oci_spec::runtime::Capabilities>) -> CapsHashSet {
    let mut out = HashSet::new();
    for c in set.iter().flatten() {
        // oci-spec serialises capabilities as "CAP_XXX", the names caps parses.
        let name = serde_json::to_value(c).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        match name.parse::<Capability>() {
            Ok(cap) => {
                out.insert(cap);
            }
            Err(_) => crate::warn!("capability {name} is unknown to this runtime; ignored"),
        }
    }
    out
}

/// Drops the bounding set, switches to the spec's uid/gid/additional gids and sets
/// the permitted, inheritable, effective and ambient sets, in the order that keeps
/// the capabilities needed to do each step (as runc does).
pub fn set_user_and_caps(process: &Process, in_userns: bool) -> Result<()> {
    let supported = caps::runtime::thread_all_supported();
    let c: LinuxCapabilities = process.capabilities().clone().unwrap_or_default();
    let keep = |s: CapsHashSet| -> CapsHashSet { s.intersection(&supported).copied().collect() };
    let bounding = keep(to_caps(c.bounding()));
    let effective = keep(to_caps(c.effective()));
    let permitted = keep(to_caps(c.permitted()));
    let inheritable = keep(to_caps(c.inheritable()));
    let ambient = keep(to_caps(c.ambient()));

    for cap in &supported {
        if !bounding.contains(cap) {
            caps::drop(None, CapSet::Bounding, *cap)
                .map_err(|e| Error::msg(format!("drop {cap} from the bounding set: {e}")))?;
        }
    }

    let user = process.user();
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    let gids: Vec<Gid> = user.additional_gids().iter().flatten().map(|g| Gid::from_raw(*g)).collect();
    let setgroups_allowed =
        !in_userns || std::fs::read_to_string("/proc/self/setgroups").map(|s| s.trim() == "allow").unwrap_or(true);
    if setgroups_allowed {
        nix::unistd::setgroups(&gids).ctx(|| format!("set additional gids {:?}", user.additional_gids()))?;
    } else if !gids.is_empty() {
        return Err(Error::msg("additionalGids cannot be set: setgroups is denied in this user namespace"));
    }
    let (uid, gid) = (Uid::from_raw(user.uid()), Gid::from_raw(user.gid()));
    nix::unistd::setresgid(gid, gid, gid).ctx(|| format!("setgid {gid} (is it mapped?)"))?;
    nix::unistd::setresuid(uid, uid, uid).ctx(|| format!("setuid {uid} (is it mapped?)"))?;
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };

    let eff: CapsHashSet = effective.intersection(&permitted).copied().collect();
    capset(&eff, &permitted, &inheritable)?;
    caps::clear(None, CapSet::Ambient).map_err(|e| Error::msg(format!("clear ambient capabilities: {e}")))?;
    for cap in &ambient {
        if permitted.contains(cap) && inheritable.contains(cap) {
            caps::raise(None, CapSet::Ambient, *cap)
                .map_err(|e| Error::msg(format!("raise ambient capability {cap}: {e}")))?;
        } else {
            crate::warn!("ambient capability {cap} is not permitted and inheritable; ignored");
        }
    }
    Ok(())
}

/// Sets the effective, permitted and inheritable sets in one capset(2) call, so no
/// intermediate state (effective not a subset of permitted) is ever asked for.
fn capset(eff: &CapsHashSet, perm: &CapsHashSet, inh: &CapsHashSet) -> Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let bits = |s: &CapsHashSet| s.iter().fold(0u64, |acc, c| acc | c.bitmask());
    let (e, p, i) = (bits(eff), bits(perm), bits(inh));
    let hdr = Header { version: 0x2008_0522, pid: 0 }; // _LINUX_CAPABILITY_VERSION_3
    let data = [
        Data { effective: e as u32, permitted: p as u32, inheritable: i as u32 },
        Data { effective: (e >> 32) as u32, permitted: (p >> 32) as u32, inheritable: (i >> 32) as u32 },
    ];
    // SAFETY: capset reads a v3 header and two data structs that live across the call.
    let r = unsafe { libc::syscall(libc::SYS_capset, &hdr as *const Header, data.as_ptr()) };
    if r != 0 {
        return Err(Error::Io { what: "set capabilities".into(), source: std::io::Error::last_os_error() });
    }
    Ok(())
}
