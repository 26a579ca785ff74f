//! The options of a spec mount, as runc reads them: mount(2) flags for a new filesystem,
//! per-mount attributes for a bind (what is not asked stays as the source has it), the
//! recursive `r*` attributes (`rro`, `rnosuid`, ...), propagation, and filesystem data.
//!
//! An option that means nothing for a bind mount is an error there, never silently
//! dropped (a typo must not leave a bind read-write). On an `rbind`, the per-mount flags
//! (`ro`, `nosuid`, ...) apply to every mount of the tree, not to the top one only.

use nix::mount::MsFlags;

use super::inroot::{
    Attrs, ATTR_ATIME_MASK, ATTR_NOATIME, ATTR_NODEV, ATTR_NODIRATIME, ATTR_NOEXEC, ATTR_NOSUID, ATTR_NOSYMFOLLOW,
    ATTR_RDONLY, ATTR_RELATIME, ATTR_STRICTATIME,
};
use crate::error::{Error, Result};

#[derive(Debug)]
pub(super) struct MountOpts {
    /// mount(2) flags for a new filesystem.
    pub flags: MsFlags,
    /// The same request as per-mount attributes (for binds, and for what mount(2)
    /// flags cannot say).
    pub attrs: Attrs,
    /// Attributes asked for the whole tree (`rro`, `rnosuid`, ...).
    pub rec_attrs: Attrs,
    pub propagation: Vec<MsFlags>,
    /// Filesystem options (`size=`, `mode=`, ...): for new filesystems only.
    pub data: Vec<String>,
    pub bind: bool,
    pub rec: bool,
    pub tmpcopyup: bool,
    /// Superblock flags (sync, dirsync, mand): meaningless on a bind.
    pub superblock: Vec<String>,
}

impl Default for MountOpts {
    fn default() -> Self {
        MountOpts {
            flags: MsFlags::empty(),
            attrs: Attrs::default(),
            rec_attrs: Attrs::default(),
            propagation: Vec::new(),
            data: Vec::new(),
            bind: false,
            rec: false,
            tmpcopyup: false,
            superblock: Vec::new(),
        }
    }
}

impl MountOpts {
    /// What a bind mount applies after it is made: the plain flags (to the whole tree on
    /// an rbind) and the recursive ones.
    pub fn bind_attrs(&self) -> (Attrs, Attrs) {
        if self.rec {
            (Attrs::default(), merge(self.attrs, self.rec_attrs))
        } else {
            (self.attrs, self.rec_attrs)
        }
    }
}

/// `b` applied after `a`.
fn merge(a: Attrs, b: Attrs) -> Attrs {
    let mut set = (a.set & !b.clr) | b.set;
    let mut clr = (a.clr & !b.set) | b.clr;
    if b.clr & ATTR_ATIME_MASK != 0 {
        set = (set & !ATTR_ATIME_MASK) | (b.set & ATTR_ATIME_MASK);
        clr |= ATTR_ATIME_MASK;
    }
    Attrs { set, clr }
}

/// (set, clear) of one per-mount flag option: mount(2) flags and the attribute.
fn flag_option(s: &str) -> Option<(MsFlags, MsFlags, Attrs)> {
    let none = MsFlags::empty();
    let set = |a: u64| Attrs { set: a, clr: 0 };
    let clr = |a: u64| Attrs { set: 0, clr: a };
    let atime = |mode: u64| Attrs { set: mode, clr: ATTR_ATIME_MASK };
    Some(match s {
        "ro" | "rdonly" => (MsFlags::MS_RDONLY, none, set(ATTR_RDONLY)),
        "rw" => (none, MsFlags::MS_RDONLY, clr(ATTR_RDONLY)),
        "nosuid" => (MsFlags::MS_NOSUID, none, set(ATTR_NOSUID)),
        "suid" => (none, MsFlags::MS_NOSUID, clr(ATTR_NOSUID)),
        "nodev" => (MsFlags::MS_NODEV, none, set(ATTR_NODEV)),
        "dev" => (none, MsFlags::MS_NODEV, clr(ATTR_NODEV)),
        "noexec" => (MsFlags::MS_NOEXEC, none, set(ATTR_NOEXEC)),
        "exec" => (none, MsFlags::MS_NOEXEC, clr(ATTR_NOEXEC)),
        "noatime" => (MsFlags::MS_NOATIME, none, atime(ATTR_NOATIME)),
        "atime" | "norelatime" | "nostrictatime" => (none, MsFlags::MS_NOATIME, atime(ATTR_RELATIME)),
        "relatime" => (MsFlags::MS_RELATIME, none, atime(ATTR_RELATIME)),
        "strictatime" => (MsFlags::MS_STRICTATIME, none, atime(ATTR_STRICTATIME)),
        "nodiratime" => (MsFlags::MS_NODIRATIME, none, set(ATTR_NODIRATIME)),
        "diratime" => (none, MsFlags::MS_NODIRATIME, clr(ATTR_NODIRATIME)),
        "nosymfollow" => (none, none, set(ATTR_NOSYMFOLLOW)),
        "symfollow" => (none, none, clr(ATTR_NOSYMFOLLOW)),
        _ => return None,
    })
}

pub(super) fn propagation_flag(p: &str) -> Option<MsFlags> {
    Some(match p {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// Parses a spec mount's options; `bind` when the mount's type says bind.
pub(super) fn parse(opts: &[String], typ_bind: bool) -> Result<MountOpts> {
    let mut o = MountOpts { bind: typ_bind, ..MountOpts::default() };
    let mut unknown = Vec::new();
    for s in opts {
        let s = s.as_str();
        if let Some((fset, fclr, a)) = flag_option(s) {
            o.flags = (o.flags - fclr) | fset;
            o.attrs = merge(o.attrs, a);
            continue;
        }
        if let Some(a) = s.strip_prefix('r').and_then(flag_option) {
            o.rec_attrs = merge(o.rec_attrs, a.2);
            continue;
        }
        if let Some(p) = propagation_flag(s) {
            o.propagation.push(p);
            continue;
        }
        match s {
            "bind" => o.bind = true,
            "rbind" => {
                o.bind = true;
                o.rec = true;
            }
            "tmpcopyup" => o.tmpcopyup = true,
            "remount" => o.flags |= MsFlags::MS_REMOUNT,
            "sync" => {
                o.flags |= MsFlags::MS_SYNCHRONOUS;
                o.superblock.push(s.into());
            }
            "dirsync" => {
                o.flags |= MsFlags::MS_DIRSYNC;
                o.superblock.push(s.into());
            }
            "mand" => {
                o.flags |= MsFlags::MS_MANDLOCK;
                o.superblock.push(s.into());
            }
            // The defaults: nothing to do.
            "async" | "nomand" => {}
            "idmap" | "ridmap" => {
                return Err(Error::msg(format!(
                    "mount option {s:?}: id-mapped mounts are not supported by skiff-runtime"
                )))
            }
            _ => unknown.push(s.to_string()),
        }
    }
    if o.bind {
        if let Some(u) = unknown.first() {
            return Err(Error::msg(format!(
                "unknown option {u:?} for a bind mount (filesystem options do not apply to a bind; check the spelling)"
            )));
        }
        if let Some(sb) = o.superblock.first() {
            return Err(Error::msg(format!("option {sb:?} cannot be applied to a bind mount")));
        }
    }
    o.data = unknown;
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(opts: &[&str], bind: bool) -> Result<MountOpts> {
        parse(&opts.iter().map(|s| s.to_string()).collect::<Vec<_>>(), bind)
    }

    #[test]
    fn rbind_ro_is_read_only_all_the_way_down() {
        let o = p(&["rbind", "ro"], false).unwrap();
        assert!(o.bind && o.rec);
        let (top, tree) = o.bind_attrs();
        assert!(top.is_empty());
        assert_eq!(tree, Attrs { set: ATTR_RDONLY, clr: 0 });
        let o = p(&["bind", "ro", "rnosuid"], false).unwrap();
        let (top, tree) = o.bind_attrs();
        assert_eq!(top, Attrs { set: ATTR_RDONLY, clr: 0 });
        assert_eq!(tree, Attrs { set: ATTR_NOSUID, clr: 0 });
    }

    #[test]
    fn recursive_options() {
        let o = p(&["rbind", "rro", "rnoexec", "rnoatime"], false).unwrap();
        let (_, tree) = o.bind_attrs();
        assert_eq!(tree.set, ATTR_RDONLY | ATTR_NOEXEC | ATTR_NOATIME);
        assert_eq!(tree.clr, ATTR_ATIME_MASK);
        let o = p(&["bind", "rro", "rrw"], false).unwrap();
        assert_eq!(o.rec_attrs, Attrs { set: 0, clr: ATTR_RDONLY });
        // "rw" is not recursive "w".
        let o = p(&["rw"], false).unwrap();
        assert_eq!(o.attrs, Attrs { set: 0, clr: ATTR_RDONLY });
        assert!(o.data.is_empty());
    }

    #[test]
    fn a_bind_refuses_what_it_cannot_do() {
        for bad in
            [vec!["bind", "ro", "nosiud"], vec!["rbind", "size=10m"], vec!["bind", "sync"], vec!["bind", "idmap"]]
        {
            let e = p(&bad, false).err().unwrap_or_else(|| panic!("{bad:?} must fail")).to_string();
            assert!(e.contains(bad.last().unwrap()), "{e}");
        }
        assert!(p(&["ro"], true).is_ok());
        assert!(p(&["foo=bar"], true).is_err(), "type bind without the bind option");
        assert!(p(&["bind", "async", "nomand"], false).is_ok());
    }

    #[test]
    fn filesystem_options_go_to_the_filesystem() {
        let o = p(&["nosuid", "size=65536k", "mode=755", "tmpcopyup", "rshared"], false).unwrap();
        assert_eq!(o.data, vec!["size=65536k", "mode=755"]);
        assert!(o.tmpcopyup && o.flags.contains(MsFlags::MS_NOSUID));
        assert_eq!(o.propagation, vec![MsFlags::MS_SHARED | MsFlags::MS_REC]);
    }

    #[test]
    fn later_options_win() {
        let o = p(&["ro", "rw", "noatime", "strictatime"], false).unwrap();
        assert!(!o.flags.contains(MsFlags::MS_RDONLY));
        assert_eq!(o.attrs, Attrs { set: ATTR_STRICTATIME, clr: ATTR_RDONLY | ATTR_ATIME_MASK });
    }
}
