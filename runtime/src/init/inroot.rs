//! Paths inside the container's root, reached and mounted through fds.
//!
//! A path resolved first and used later is open to a race: another container sharing a
//! volume (or the image's own symlinks) can swap a component for a symlink in between,
//! and a mount or a mkdir by path then lands on the host (CVE-2021-30465,
//! CVE-2023-27561, CVE-2024-45310, CVE-2025-31133/52565/52881). So every step here works
//! on fds:
//!
//! - [`InRoot`] resolves and creates mount points inside the root with `openat2`
//!   `RESOLVE_IN_ROOT` (pathrs: symlinks are followed as the container would see them and
//!   `..` never climbs out; older kernels get pathrs' emulation), and hands back an
//!   `O_PATH` fd of what it found or made;
//! - mounts go onto `/proc/self/fd/N` of that fd (the kernel mounts on exactly the
//!   opened inode), from `/proc/self/fd/M` of a source opened beforehand;
//! - a step that needs the new mount afterwards (flags, propagation, submounts) gets it
//!   from [`InRoot::mounted`], which resolves the path again and checks that it is the
//!   same place, now covered by a new mount;
//! - recursive mount attributes use `mount_setattr(2)` (Linux 5.12) on that fd.

use std::fs::Permissions;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use pathrs::error::ErrorKind;
use pathrs::flags::OpenFlags;
use pathrs::Root;

use crate::error::{Error, Result};

/// The root a container's paths are resolved in (its rootfs before pivot_root, `/` after).
pub(super) struct InRoot {
    root: Root,
}

fn perr(what: impl FnOnce() -> String, e: pathrs::error::Error) -> Error {
    Error::msg(format!("{}: {e}", what()))
}

fn not_found(e: &pathrs::error::Error) -> bool {
    e.kind() == ErrorKind::OsError(Some(libc::ENOENT))
}

impl InRoot {
    pub fn open(path: &Path) -> Result<InRoot> {
        let root = Root::open(path).map_err(|e| perr(|| format!("open the container's root {}", path.display()), e))?;
        Ok(InRoot { root })
    }

    /// The directory at `dest`, created (0755, with its parents) when missing: the
    /// deepest part that exists is resolved in the root, the rest is made one name at a
    /// time beneath it, never through a symlink (one swapped in meanwhile is an error).
    pub fn dir(&self, dest: &Path) -> Result<OwnedFd> {
        let what = || format!("create the directory {} in the container", dest.display());
        let comps: Vec<&std::ffi::OsStr> = dest
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(n) => Some(n),
                std::path::Component::ParentDir => Some("..".as_ref()),
                _ => None,
            })
            .collect();
        let mut base = None;
        let mut depth = comps.len();
        loop {
            let prefix: PathBuf = std::iter::once("/".as_ref()).chain(comps[..depth].iter().copied()).collect();
            if let Some(fd) = self.find(&prefix)? {
                base = Some(fd);
                break;
            }
            if depth == 0 {
                break;
            }
            depth -= 1;
        }
        let mut cur = base.ok_or_else(|| Error::msg(format!("{}: the root is gone", what())))?;
        // What is left does not exist yet, so no symlink can be in it: clean it lexically.
        let mut rest: Vec<&std::ffi::OsStr> = Vec::new();
        for c in &comps[depth..] {
            if *c == ".." {
                if rest.pop().is_none() {
                    return Err(Error::msg(format!("{}: \"..\" above a directory that does not exist", what())));
                }
            } else {
                rest.push(c);
            }
        }
        for c in rest {
            match nix::sys::stat::mkdirat(Some(cur.as_raw_fd()), c, nix::sys::stat::Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(nix::Error::EEXIST) => {}
                Err(e) => return Err(Error::Sys { what: what(), source: e }),
            }
            cur = open_beneath(cur.as_fd(), Path::new(c), true).map_err(|e| Error::msg(format!("{}: {e}", what())))?;
        }
        let st = nix::sys::stat::fstat(cur.as_raw_fd()).map_err(|e| Error::Sys { what: what(), source: e })?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(Error::msg(format!("{}: not a directory", what())));
        }
        Ok(cur)
    }

    /// What is at `dest` (symlinks followed inside the root), or None.
    pub fn find(&self, dest: &Path) -> Result<Option<OwnedFd>> {
        match self.root.resolve(dest) {
            Ok(h) => Ok(Some(h.into())),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(perr(|| format!("resolve {} in the container", dest.display()), e)),
        }
    }

    /// What is at `dest` itself (a final symlink is not followed), or None.
    pub fn find_nofollow(&self, dest: &Path) -> Result<Option<OwnedFd>> {
        match self.root.resolve_nofollow(dest) {
            Ok(h) => Ok(Some(h.into())),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(perr(|| format!("resolve {} in the container", dest.display()), e)),
        }
    }

    /// The non-directory at `dest` (a mount point for a file), created as an empty 0644
    /// file when missing.
    pub fn file(&self, dest: &Path) -> Result<OwnedFd> {
        if let Some(fd) = self.find(dest)? {
            return Ok(fd);
        }
        if let Some(parent) = dest.parent() {
            self.dir(parent)?;
        }
        let flags = OpenFlags::O_EXCL | OpenFlags::O_CLOEXEC | OpenFlags::O_RDONLY;
        match self.root.create_file(dest, flags, &Permissions::from_mode(0o644)) {
            Ok(f) => Ok(f.into()),
            // Made by someone else meanwhile: take what is there.
            Err(e) if e.kind() == ErrorKind::OsError(Some(libc::EEXIST)) => {
                self.find(dest)?.ok_or_else(|| Error::msg(format!("{} vanished while created", dest.display())))
            }
            Err(e) => Err(perr(|| format!("create the file {} in the container", dest.display()), e)),
        }
    }

    /// After a mount onto `target` (an fd of `dest` from this root): the new mount at
    /// `dest`. Refuses when `dest` now resolves elsewhere, or to no new mount: something
    /// moved the path meanwhile.
    pub fn mounted(&self, dest: &Path, target: &OwnedFd) -> Result<OwnedFd> {
        let again = self.find(dest)?.ok_or_else(|| moved(dest))?;
        if path_of(&again)? != path_of(target)? || mnt_id(&again)? == mnt_id(target)? {
            return Err(moved(dest));
        }
        Ok(again)
    }
}

fn moved(dest: &Path) -> Error {
    Error::msg(format!(
        "{}: the mount point changed while it was being mounted (a symlink swapped in by another process?): \
         refusing to go on (possible container breakout)",
        dest.display()
    ))
}

/// `/proc/self/fd/N` for `fd`: as the target or source of mount(2), the exact inode.
pub(super) fn procfd(fd: &impl AsRawFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Where `fd` is, as this process's /proc sees it.
pub(super) fn path_of(fd: &impl AsRawFd) -> Result<PathBuf> {
    std::fs::read_link(procfd(fd)).map_err(|e| Error::Io { what: "read the path of an fd".into(), source: e })
}

/// The id of the mount `fd` is on (statx STATX_MNT_ID, Linux 5.8; else /proc fdinfo).
pub(super) fn mnt_id(fd: &impl AsRawFd) -> Result<u64> {
    const STATX_MNT_ID: u32 = 0x1000;
    // SAFETY: statx writes into a zeroed struct we own; the path is an empty C string.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // By its syscall number: musl before 1.2.5 (Debian's, which the armv7 build links) has no
    // statx wrapper.
    // SAFETY: as above; AT_EMPTY_PATH makes statx look at the fd itself.
    let r = unsafe {
        libc::syscall(
            libc::SYS_statx,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            STATX_MNT_ID,
            &mut stx as *mut libc::statx,
        )
    };
    if r == 0 && stx.stx_mask & STATX_MNT_ID != 0 {
        return Ok(stx.stx_mnt_id);
    }
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
        .map_err(|e| Error::Io { what: "read the mount id of an fd".into(), source: e })?;
    info.lines()
        .find_map(|l| l.strip_prefix("mnt_id:").and_then(|v| v.trim().parse().ok()))
        .ok_or_else(|| Error::msg("no mnt_id in /proc/self/fdinfo"))
}

/// Opens `path` (a path of the host, symlinks followed as the host sees them) as an
/// `O_PATH` fd: the source of a bind mount, pinned before anything is mounted.
pub(super) fn open_source(path: &Path) -> Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::Io { what: format!("open the mount source {}", path.display()), source: e })?;
    Ok(f.into())
}

/// Opens `name` right under the directory `dir` (no symlink, no `..`, no mount crossing
/// but into a mount on `name` itself), as an `O_PATH` fd.
pub(super) fn open_beneath(dir: BorrowedFd, name: &Path, directory: bool) -> Result<OwnedFd> {
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let c = std::ffi::CString::new(name.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::msg(format!("NUL byte in {}", name.display())))?;
    let dirflag = if directory { libc::O_DIRECTORY } else { 0 };
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW | dirflag) as u64,
        mode: 0,
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: openat2 with a C string and an open_how struct we own, of the size we pass.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd >= 0 {
        // SAFETY: openat2 returned a new fd that nothing else owns.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::ENOSYS) {
        return Err(Error::Io { what: format!("open {}", name.display()), source: e });
    }
    // Before openat2 (Linux 5.6): one component at a time, never following a symlink.
    let mut cur: Option<OwnedFd> = None;
    for comp in name.components() {
        let std::path::Component::Normal(part) = comp else {
            return Err(Error::msg(format!("{}: only plain names are allowed here", name.display())));
        };
        let c = std::ffi::CString::new(part.as_encoded_bytes()).map_err(|_| Error::msg("NUL byte in a path"))?;
        let base = cur.as_ref().map(|f| f.as_raw_fd()).unwrap_or(dir.as_raw_fd());
        // SAFETY: openat with a C string; the result is a new fd or -1.
        let fd = unsafe { libc::openat(base, c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW) };
        if fd < 0 {
            return Err(Error::Io {
                what: format!("open {}", name.display()),
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: a new fd that nothing else owns.
        cur = Some(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    cur.ok_or_else(|| Error::msg("empty path"))
}

// ------------------------------------------------------------------- mount attributes

pub(super) const ATTR_RDONLY: u64 = 0x1;
pub(super) const ATTR_NOSUID: u64 = 0x2;
pub(super) const ATTR_NODEV: u64 = 0x4;
pub(super) const ATTR_NOEXEC: u64 = 0x8;
pub(super) const ATTR_ATIME_MASK: u64 = 0x70;
pub(super) const ATTR_RELATIME: u64 = 0x0;
pub(super) const ATTR_NOATIME: u64 = 0x10;
pub(super) const ATTR_STRICTATIME: u64 = 0x20;
pub(super) const ATTR_NODIRATIME: u64 = 0x80;
pub(super) const ATTR_NOSYMFOLLOW: u64 = 0x20_0000;

/// Mount attributes to set and clear (`MOUNT_ATTR_*`); an atime mode is set by clearing
/// [`ATTR_ATIME_MASK`] and setting the mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Attrs {
    pub set: u64,
    pub clr: u64,
}

impl Attrs {
    pub fn is_empty(&self) -> bool {
        self.set == 0 && self.clr == 0
    }

    /// The same change as mount(2) flags for a `MS_REMOUNT | MS_BIND` (which replaces every
    /// per-mount flag: `keep` are the current ones to carry over).
    fn as_remount_flags(&self, keep: MsFlags) -> MsFlags {
        let pairs = [
            (ATTR_RDONLY, MsFlags::MS_RDONLY),
            (ATTR_NOSUID, MsFlags::MS_NOSUID),
            (ATTR_NODEV, MsFlags::MS_NODEV),
            (ATTR_NOEXEC, MsFlags::MS_NOEXEC),
            (ATTR_NODIRATIME, MsFlags::MS_NODIRATIME),
        ];
        let mut f = keep;
        for (a, m) in pairs {
            if self.clr & a != 0 {
                f -= m;
            }
            if self.set & a != 0 {
                f |= m;
            }
        }
        if self.clr & ATTR_ATIME_MASK != 0 {
            f -= MsFlags::MS_NOATIME | MsFlags::MS_STRICTATIME | MsFlags::MS_RELATIME;
            f |= match self.set & ATTR_ATIME_MASK {
                ATTR_NOATIME => MsFlags::MS_NOATIME,
                ATTR_STRICTATIME => MsFlags::MS_STRICTATIME,
                _ => MsFlags::MS_RELATIME,
            };
        }
        f
    }
}

/// Changes the attributes of the mount whose root is `mnt` (and, `recursive`, of every
/// mount under it). Linux 5.12+ with mount_setattr(2); before that, a bind remount of the
/// top mount, then of every mount under it found in /proc/self/mountinfo.
pub(super) fn set_attrs(mnt: &OwnedFd, attrs: Attrs, recursive: bool) -> Result<()> {
    if attrs.is_empty() {
        return Ok(());
    }
    let Err(e) = crate::mountapi::mount_setattr(mnt.as_fd(), recursive, attrs.set, attrs.clr) else { return Ok(()) };
    if e.raw_os_error() != Some(libc::ENOSYS) {
        return Err(Error::Io { what: "change mount attributes".into(), source: e });
    }
    if attrs.set & ATTR_NOSYMFOLLOW != 0 {
        return Err(Error::msg("nosymfollow needs Linux 5.14 or later"));
    }
    let remount = |target: &str| -> Result<()> {
        let keep = locked_flags(Path::new(target));
        nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | attrs.as_remount_flags(keep),
            None::<&str>,
        )
        .map_err(|e| Error::Sys { what: format!("remount {target}"), source: e })
    };
    remount(&procfd(mnt))?;
    if recursive {
        let top = path_of(mnt)?;
        let info = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| Error::Io { what: "read mountinfo".into(), source: e })?;
        let mut subs: Vec<PathBuf> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(unescape_mountinfo))
            .filter(|p| p.starts_with(&top) && *p != top)
            .collect();
        subs.sort();
        subs.dedup();
        for p in subs {
            remount(&p.display().to_string())?;
        }
    }
    Ok(())
}

/// Detaches every mount at or under `path` (deepest first): what a container without a
/// mount namespace mounted into the host's table. Best effort; for `delete` and undo.
pub fn unmount_under(path: &Path) {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(unescape_mountinfo))
        .filter(|p| p.starts_with(&path))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Mount points in /proc/self/mountinfo escape space, tab, newline and backslash as \ooo.
fn unescape_mountinfo(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// Flags of the mount at `p` that a bind remount must keep (the kernel refuses to
/// clear locked flags inside a user namespace).
pub(super) fn locked_flags(p: &Path) -> MsFlags {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(p.as_os_str().as_bytes()) else { return MsFlags::empty() };
    // Not nix's statvfs: its FsFlags has no ST_RELATIME on musl and drops that bit.
    // SAFETY: struct statvfs is plain data; all zeroes is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs writes one struct statvfs into `st`; `path` is NUL-terminated.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return MsFlags::empty();
    }
    ms_flags_of_statvfs(st.f_flag)
}

/// The MS_* flags a remount keeps from statvfs's f_flag. The ST_* values are the kernel's
/// (include/linux/statfs.h), which every libc passes through (musl's headers lack ST_RELATIME).
fn ms_flags_of_statvfs(f_flag: libc::c_ulong) -> MsFlags {
    const ST_NOSUID: libc::c_ulong = 0x2;
    const ST_NODEV: libc::c_ulong = 0x4;
    const ST_NOEXEC: libc::c_ulong = 0x8;
    const ST_NOATIME: libc::c_ulong = 0x400;
    const ST_NODIRATIME: libc::c_ulong = 0x800;
    const ST_RELATIME: libc::c_ulong = 0x1000;
    let mut m = MsFlags::empty();
    for (st, ms) in [
        (ST_NOSUID, MsFlags::MS_NOSUID),
        (ST_NODEV, MsFlags::MS_NODEV),
        (ST_NOEXEC, MsFlags::MS_NOEXEC),
        (ST_NOATIME, MsFlags::MS_NOATIME),
        (ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f_flag & st != 0 {
            m |= ms;
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remount_flags_carry_what_is_not_changed() {
        let a = Attrs { set: ATTR_RDONLY, clr: 0 };
        assert_eq!(a.as_remount_flags(MsFlags::MS_NOSUID), MsFlags::MS_NOSUID | MsFlags::MS_RDONLY);
        let a = Attrs { set: ATTR_NOATIME, clr: ATTR_ATIME_MASK | ATTR_RDONLY };
        assert_eq!(
            a.as_remount_flags(MsFlags::MS_RDONLY | MsFlags::MS_RELATIME | MsFlags::MS_NODEV),
            MsFlags::MS_NOATIME | MsFlags::MS_NODEV
        );
    }

    #[test]
    fn locked_flags_from_statvfs() {
        // What statvfs reports for a `ro,nosuid,nodev,relatime` mount (ST_RDONLY is not kept:
        // a remount sets or clears it itself), and for `noexec,noatime,nodiratime`.
        assert_eq!(
            ms_flags_of_statvfs(0x1 | 0x2 | 0x4 | 0x1000),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_RELATIME
        );
        assert_eq!(
            ms_flags_of_statvfs(0x8 | 0x400 | 0x800),
            MsFlags::MS_NOEXEC | MsFlags::MS_NOATIME | MsFlags::MS_NODIRATIME
        );
        assert_eq!(ms_flags_of_statvfs(0), MsFlags::empty());
    }

    /// The real call agrees with /proc/self/mountinfo (/proc is relatime by the kernel's
    /// default), on musl too (where nix's FsFlags dropped the relatime bit).
    #[test]
    fn locked_flags_keep_relatime() {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let proc_opts = info.lines().find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(4) == Some(&"/proc")).then(|| f[5].to_string())
        });
        let Some(opts) = proc_opts else { return };
        let f = locked_flags(Path::new("/proc"));
        for (opt, flag) in [
            ("relatime", MsFlags::MS_RELATIME),
            ("nosuid", MsFlags::MS_NOSUID),
            ("nodev", MsFlags::MS_NODEV),
            ("noexec", MsFlags::MS_NOEXEC),
            ("noatime", MsFlags::MS_NOATIME),
        ] {
            assert_eq!(f.contains(flag), opts.split(',').any(|o| o == opt), "{opt}: {opts}: {f:?}");
        }
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b\\011c\\134d"), PathBuf::from("/a b\tc\\d"));
        assert_eq!(unescape_mountinfo("/plain"), PathBuf::from("/plain"));
        assert_eq!(unescape_mountinfo("/x\\04"), PathBuf::from("/x\\04"));
    }
}
