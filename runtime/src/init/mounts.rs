//! The container's filesystems: the rootfs bind, each spec mount (bind, cgroup, the
//! rest), pivot_root, masked and read-only paths. Every mount point is reached through
//! an fd from [`InRoot`] (see `inroot.rs` for why).

use std::fs;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::chdir;
use oci_spec::runtime::Mount;

use super::inroot::{mnt_id, open_beneath, open_source, procfd, set_attrs, Attrs, InRoot, ATTR_RDONLY};
use super::mountopts::{self, MountOpts};
use crate::error::{Context, Error, Result};

/// What the mounts of one container need to know.
pub(super) struct MountCtx<'a> {
    pub root: &'a InRoot,
    pub bundle: &'a Path,
    pub in_userns: bool,
    pub new_netns: bool,
}

pub(super) fn mount_entry(c: &MountCtx, m: &Mount) -> Result<()> {
    let typ = m.typ().as_deref().unwrap_or("");
    let dest = m.destination();
    let opts = m.options().as_deref().unwrap_or_default();
    let o =
        mountopts::parse(opts, typ == "bind").map_err(|e| Error::msg(format!("mount on {}: {e}", dest.display())))?;
    let what = || format!("mount {} on {}", typ_or_bind(typ, o.bind), dest.display());
    if typ == "cgroup" || typ == "cgroup2" {
        return mount_cgroup(c, dest, &o, typ == "cgroup2").map_err(|e| Error::msg(format!("{}: {e}", what())));
    }
    let top = if o.bind {
        let src = match m.source() {
            Some(s) if s.is_absolute() => s.clone(),
            Some(s) => c.bundle.join(s),
            None => return Err(Error::msg(format!("{}: a bind mount needs a source", what()))),
        };
        bind(c.root, &src, dest, &o, !o.propagation.is_empty()).map_err(|e| Error::msg(format!("{}: {e}", what())))?
    } else {
        match new_fs(c, m, typ, dest, &o) {
            Ok(top) => top,
            // Without its own network namespace a container may not mount sysfs (and in a
            // user namespace neither mqueue without its own ipc namespace): bind the host's
            // instead, as runc does.
            Err(NewFsError::Refused(_)) if typ == "sysfs" && (c.in_userns || !c.new_netns) || typ == "mqueue" => {
                let host = if typ == "sysfs" { "/sys" } else { "/dev/mqueue" };
                let mut with_rec: Vec<String> = opts.to_vec();
                with_rec.push("rbind".into());
                let bo = mountopts::parse(&with_rec, false).map_err(|e| Error::msg(format!("{}: {e}", what())))?;
                bind(c.root, Path::new(host), dest, &bo, !o.propagation.is_empty())
                    .map_err(|e| Error::msg(format!("{}: {e}", what())))?
            }
            Err(NewFsError::Refused(e)) => return Err(Error::Sys { what: what(), source: e }),
            Err(NewFsError::Other(e)) => return Err(Error::msg(format!("{}: {e}", what()))),
        }
    };
    if let Some(top) = top {
        for p in &o.propagation {
            mount(None::<&str>, procfd(&top).as_str(), None::<&str>, *p, None::<&str>)
                .ctx(|| format!("{}: propagation", what()))?;
        }
    }
    Ok(())
}

fn typ_or_bind(typ: &str, bind: bool) -> &str {
    if bind {
        "bind"
    } else if typ.is_empty() {
        "none"
    } else {
        typ
    }
}

/// Binds the host path `src` on `dest` (created in the root: a directory for a directory,
/// an empty file otherwise) and applies the options. Returns the new mount when later
/// steps need it (`want_top`, or attributes to set).
fn bind(root: &InRoot, src: &Path, dest: &Path, o: &MountOpts, want_top: bool) -> Result<Option<OwnedFd>> {
    let s = open_source(src)?;
    let is_dir = nix::sys::stat::fstat(s.as_raw_fd())
        .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
        .ctx(|| format!("stat {}", src.display()))?;
    let target = if is_dir { root.dir(dest)? } else { root.file(dest)? };
    let rec = if o.rec { MsFlags::MS_REC } else { MsFlags::empty() };
    mount(Some(procfd(&s).as_str()), procfd(&target).as_str(), None::<&str>, MsFlags::MS_BIND | rec, None::<&str>)
        .ctx(|| format!("bind {}", src.display()))?;
    drop(s);
    let (top_attrs, tree_attrs) = o.bind_attrs();
    if top_attrs.is_empty() && tree_attrs.is_empty() && !want_top {
        return Ok(None);
    }
    let top = root.mounted(dest, &target)?;
    set_attrs(&top, top_attrs, false)?;
    set_attrs(&top, tree_attrs, true)?;
    Ok(Some(top))
}

enum NewFsError {
    /// mount(2) refused (the bind fallback may apply).
    Refused(nix::Error),
    Other(Error),
}

impl From<Error> for NewFsError {
    fn from(e: Error) -> Self {
        NewFsError::Other(e)
    }
}

/// A new filesystem (proc, tmpfs, sysfs, devpts, mqueue, ...) on `dest`.
fn new_fs(
    c: &MountCtx,
    m: &Mount,
    typ: &str,
    dest: &Path,
    o: &MountOpts,
) -> std::result::Result<Option<OwnedFd>, NewFsError> {
    let target = c.root.dir(dest)?;
    // tmpcopyup: what the image has at `dest` is copied into the new tmpfs (the directory
    // stays reachable through this fd once the tmpfs covers it).
    let copy_from = if o.tmpcopyup { Some(open_dir(&target, Path::new("."))?) } else { None };
    let data = o.data.join(",");
    let src = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
    mount(Some(&src), procfd(&target).as_str(), Some(typ), o.flags, (!data.is_empty()).then_some(data.as_str()))
        .map_err(NewFsError::Refused)?;
    let needs_top = copy_from.is_some()
        || !o.rec_attrs.is_empty()
        || o.attrs.set & super::inroot::ATTR_NOSYMFOLLOW != 0
        || !o.propagation.is_empty();
    if !needs_top {
        return Ok(None);
    }
    let top = c.root.mounted(dest, &target)?;
    if let Some(from) = copy_from {
        let to = open_dir(&top, Path::new("."))?;
        super::copyup::copy_tree(&from, &to)
            .map_err(|e| Error::msg(format!("tmpcopyup of {}: {e}", dest.display())))?;
    }
    set_attrs(&top, Attrs { set: o.attrs.set & super::inroot::ATTR_NOSYMFOLLOW, clr: 0 }, false)?;
    set_attrs(&top, o.rec_attrs, true)?;
    Ok(Some(top))
}

/// A readable directory fd of `name` under the (O_PATH) directory `dir`, no symlink.
fn open_dir(dir: &OwnedFd, name: &Path) -> Result<OwnedFd> {
    let c =
        std::ffi::CString::new(name.as_os_str().as_encoded_bytes()).map_err(|_| Error::msg("NUL byte in a path"))?;
    // SAFETY: openat with a C string we own; returns a new fd or -1.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(Error::Io { what: format!("open {}", name.display()), source: std::io::Error::last_os_error() });
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `type: cgroup` in the spec: on cgroup v2 the cgroup2 filesystem; on v1 and hybrid
/// hosts a tmpfs with one mount per hierarchy, as runc does. Each shows the container's
/// own cgroup as its root: by itself inside a cgroup namespace, else by a bind mount of
/// that directory over the hierarchy (podman on v1 and containerd use the host's
/// namespace). Where the kernel refuses a cgroup filesystem (a user namespace without
/// its own cgroup namespace), the host's directory of the container's cgroup is bound
/// instead, as runc does.
fn mount_cgroup(c: &MountCtx, dest: &Path, o: &MountOpts, want_v2: bool) -> Result<()> {
    let target = c.root.dir(dest)?;
    let base = o.flags & (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RELATIME);
    let ro = o.flags & MsFlags::MS_RDONLY;
    let ro_attrs = Attrs { set: if ro.is_empty() { 0 } else { ATTR_RDONLY }, clr: 0 };
    let unified = nix::sys::statfs::statfs("/sys/fs/cgroup")
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false);
    // Our own cgroup in each hierarchy: "/" inside a cgroup namespace, the full path
    // without one (then we bind that directory, as runc does, so that the container sees
    // its own limits, not the host's root).
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let own_path = |controllers: &[&str]| -> Option<String> {
        own.lines().find_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, ctrls, path) = (it.next()?, it.next()?, it.next()?);
            let matches = if controllers.is_empty() {
                ctrls.is_empty()
            } else {
                !ctrls.is_empty() && ctrls.split(',').all(|c| controllers.contains(&c))
            };
            (matches && path != "/").then(|| path.to_string())
        })
    };
    // Mounts one hierarchy on `at` (an fd of its mount point), narrowed to our cgroup.
    // `host` is where that hierarchy is mounted on the host (for the bind fallback).
    let one = |at: &OwnedFd, fstype: &str, data: &str, host: &Path, path: Option<String>| -> Result<()> {
        let data = (!data.is_empty()).then_some(data);
        match mount(Some(fstype), procfd(at).as_str(), Some(fstype), base | ro, data) {
            Ok(()) => {}
            Err(nix::Error::EPERM) if c.in_userns => {
                let src = host.join(path.as_deref().unwrap_or("/").trim_start_matches('/'));
                let s = open_source(&src)?;
                mount(Some(procfd(&s).as_str()), procfd(at).as_str(), None::<&str>, MsFlags::MS_BIND, None::<&str>)
                    .ctx(|| format!("bind {}", src.display()))?;
                let top = reopen_covered(at)?;
                return set_attrs(&top, Attrs { set: ro_attrs.set | flags_attrs(base), clr: 0 }, false);
            }
            Err(e) => return Err(Error::Sys { what: format!("mount {fstype}"), source: e }),
        }
        let Some(path) = path else { return Ok(()) };
        let fs_root = reopen_covered(at)?;
        let sub = open_beneath(fs_root.as_fd(), Path::new(path.trim_start_matches('/')), true)?;
        mount(Some(procfd(&sub).as_str()), procfd(&fs_root).as_str(), None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .ctx(|| format!("bind the container's cgroup {path}"))?;
        Ok(())
    };
    if unified || want_v2 {
        return one(
            &target,
            "cgroup2",
            "",
            Path::new("/sys/fs/cgroup").join(if unified { "" } else { "unified" }).as_path(),
            own_path(&[]),
        );
    }
    mount(Some("tmpfs"), procfd(&target).as_str(), Some("tmpfs"), base, Some("mode=755")).ctx(|| "mount tmpfs")?;
    let tmpfs = c.root.mounted(dest, &target)?;
    let info = fs::read_to_string("/proc/self/mountinfo").ctx(|| "read /proc/self/mountinfo")?;
    for line in info.lines() {
        let Some((pre, post)) = line.split_once(" - ") else { continue };
        let mut post = post.split(' ');
        let fstype = post.next().unwrap_or("");
        let _src = post.next();
        let superopts = post.next().unwrap_or("");
        let mountpoint = pre.split(' ').nth(4).unwrap_or("");
        let Some(name) = mountpoint.strip_prefix("/sys/fs/cgroup/") else { continue };
        if name.contains('/') || name.is_empty() || name.starts_with('.') {
            continue;
        }
        let data: Vec<&str> = superopts.split(',').filter(|s| *s != "rw" && *s != "ro").collect();
        let path = match fstype {
            "cgroup" => own_path(&data),
            "cgroup2" => own_path(&[]),
            _ => continue,
        };
        let sub = mkdir_beneath(&tmpfs, name)?;
        let data = if fstype == "cgroup" { data.join(",") } else { String::new() };
        one(&sub, fstype, &data, Path::new(mountpoint), path).map_err(|e| Error::msg(format!("{name}: {e}")))?;
    }
    set_attrs(&tmpfs, ro_attrs, false)
}

fn flags_attrs(f: MsFlags) -> u64 {
    use super::inroot::{ATTR_NODEV, ATTR_NOEXEC, ATTR_NOSUID};
    let mut a = 0;
    for (m, at) in
        [(MsFlags::MS_NOSUID, ATTR_NOSUID), (MsFlags::MS_NODEV, ATTR_NODEV), (MsFlags::MS_NOEXEC, ATTR_NOEXEC)]
    {
        if f.contains(m) {
            a |= at;
        }
    }
    a
}

/// The directory `name` right under `dir` (created 0755 if missing), as an O_PATH fd.
fn mkdir_beneath(dir: &OwnedFd, name: &str) -> Result<OwnedFd> {
    match nix::sys::stat::mkdirat(Some(dir.as_raw_fd()), name, nix::sys::stat::Mode::from_bits_truncate(0o755)) {
        Ok(()) | Err(nix::Error::EEXIST) => {}
        Err(e) => return Err(Error::Sys { what: format!("create {name}"), source: e }),
    }
    open_beneath(dir.as_fd(), Path::new(name), true)
}

/// After a mount onto the mount point `at` (which is in a tmpfs only we can reach): the
/// new mount's root, checked to be on another mount than `at`.
fn reopen_covered(at: &OwnedFd) -> Result<OwnedFd> {
    // Reopening the magic link would give `at` itself (no mount crossing at its end), so
    // look the mount point up again from its parent.
    let path = super::inroot::path_of(at)?;
    let name = path.file_name().ok_or_else(|| Error::msg(format!("{}: no name", path.display())))?;
    let up = open_parent(at)?;
    let top = open_beneath(up.as_fd(), Path::new(name), true)?;
    if super::inroot::path_of(&top)? != path || mnt_id(&top)? == mnt_id(at)? {
        return Err(Error::msg(format!(
            "{}: the mount did not appear where it was made (moved meanwhile?)",
            path.display()
        )));
    }
    Ok(top)
}

/// The parent directory of the O_PATH directory `at`.
fn open_parent(at: &OwnedFd) -> Result<OwnedFd> {
    // SAFETY: openat of ".." relative to a directory fd we own; a new fd or -1.
    let fd =
        unsafe { libc::openat(at.as_raw_fd(), c"..".as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(Error::Io {
            what: "open the parent of a mount point".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes the mount that holds `rootfs` (the rootfs itself when it is a mount point, else
/// the nearest mount above it) private in the container's mount namespace.
pub(super) fn make_parent_mount_private(rootfs: &Path) -> Result<()> {
    for p in rootfs.ancestors() {
        match mount(None::<&str>, p, None::<&str>, MsFlags::MS_PRIVATE, None::<&str>) {
            Ok(()) => return Ok(()),
            // Not a mount point: try the directory above.
            Err(nix::Error::EINVAL) => continue,
            Err(e) => {
                return Err(Error::Sys { what: format!("make the mount holding {} private", p.display()), source: e })
            }
        }
    }
    Err(Error::msg(format!("no mount point holds {}", rootfs.display())))
}

pub(super) fn pivot(rootfs: &Path) -> Result<()> {
    // The old root, to stand in it after pivot_root: "." then names the old root's mount
    // (stacked on the new root) rather than the new root's, so that the slave marking
    // below stays off the container's own tree (which would cut a shared bind off from
    // the host's side). The fd is closed when this returns.
    let old_root = fs::File::open("/").ctx(|| "open the old root")?;
    chdir(rootfs).ctx(|| "chdir into rootfs")?;
    nix::unistd::pivot_root(".", ".").ctx(|| "pivot_root (use --no-pivot on a ramdisk root)")?;
    nix::unistd::fchdir(old_root.as_raw_fd()).ctx(|| "chdir to the old root")?;
    drop(old_root);
    // Detach the old root without propagating the unmount to the host.
    mount(None::<&str>, ".", None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>)
        .ctx(|| "make the old root a slave")?;
    umount2(".", MntFlags::MNT_DETACH).ctx(|| "detach the old root")?;
    chdir("/").ctx(|| "chdir /")
}

/// The container's /dev/null, checked to be the null device (1:3) and not a symlink or
/// anything the image or a neighbour put there (CVE-2025-31133): what masked paths are
/// covered with.
pub(super) fn dev_null(root: &InRoot) -> Result<OwnedFd> {
    let fd = root
        .find_nofollow(Path::new("/dev/null"))?
        .ok_or_else(|| Error::msg("the container has no /dev/null to mask paths with"))?;
    let st = nix::sys::stat::fstat(fd.as_raw_fd()).ctx(|| "stat /dev/null")?;
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR || st.st_rdev != libc::makedev(1, 3) {
        return Err(Error::msg(
            "the container's /dev/null is not the null device (1:3): refusing to mask paths with it (possible container breakout)",
        ));
    }
    Ok(fd)
}

/// Covers `p` (when it exists): a directory with an empty read-only tmpfs, anything else
/// with /dev/null (`null`, from [`dev_null`]).
pub(super) fn mask_path(root: &InRoot, p: &Path, null: &mut Option<OwnedFd>) -> Result<()> {
    let Some(h) = root.find(p)? else { return Ok(()) };
    let st = nix::sys::stat::fstat(h.as_raw_fd()).ctx(|| format!("stat {}", p.display()))?;
    let r = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        mount(Some("tmpfs"), procfd(&h).as_str(), Some("tmpfs"), MsFlags::MS_RDONLY, Some("size=0"))
    } else {
        if null.is_none() {
            *null = Some(dev_null(root)?);
        }
        let n = null.as_ref().map(procfd).unwrap_or_default();
        mount(Some(n.as_str()), procfd(&h).as_str(), None::<&str>, MsFlags::MS_BIND, None::<&str>)
    };
    r.ctx(|| format!("mask {}", p.display()))
}

/// Makes `p` (when it exists) and every mount under it read-only.
pub(super) fn readonly_path(root: &InRoot, p: &Path) -> Result<()> {
    let Some(h) = root.find(p)? else { return Ok(()) };
    mount(
        Some(procfd(&h).as_str()),
        procfd(&h).as_str(),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .ctx(|| format!("make {} read-only", p.display()))?;
    let top = root.mounted(p, &h)?;
    set_attrs(&top, Attrs { set: ATTR_RDONLY, clr: 0 }, true)
        .map_err(|e| Error::msg(format!("make {} read-only: {e}", p.display())))
}
