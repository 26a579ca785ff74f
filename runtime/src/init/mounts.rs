//! The container's filesystems: the rootfs bind, each spec mount (bind, cgroup, the
//! rest), pivot_root, masked and read-only paths.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::chdir;
use oci_spec::runtime::Mount;

use crate::error::{Context, Error, Result};

/// Resolves `unsafe_path` inside `root` the way the container will see it: symlinks
/// are followed relative to `root` and `..` never climbs above it.
pub fn secure_join(root: &Path, unsafe_path: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    let mut todo: Vec<std::ffi::OsString> = unsafe_path.components().rev().filter_map(|c| comp(c)).collect();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            out.pop();
            continue;
        }
        let cand = out.join(&c);
        let full = root.join(&cand);
        match fs::symlink_metadata(&full) {
            Ok(md) if md.file_type().is_symlink() => {
                links += 1;
                if links > 255 {
                    return Err(Error::msg(format!("too many symlinks resolving {}", unsafe_path.display())));
                }
                let target = fs::read_link(&full).ctx(|| format!("readlink {}", full.display()))?;
                if target.is_absolute() {
                    out = PathBuf::new();
                }
                for t in target.components().rev().filter_map(|c| comp(c)) {
                    todo.push(t);
                }
            }
            _ => out = cand,
        }
    }
    Ok(root.join(out))
}

pub(super) fn comp(c: Component) -> Option<std::ffi::OsString> {
    match c {
        Component::Normal(s) => Some(s.to_os_string()),
        Component::ParentDir => Some("..".into()),
        _ => None,
    }
}

pub(super) struct MountOpts {
    flags: MsFlags,
    clear: MsFlags,
    propagation: Vec<MsFlags>,
    data: Vec<String>,
    bind: bool,
    rec: bool,
}

pub(super) fn parse_options(opts: &[String]) -> MountOpts {
    let mut o = MountOpts {
        flags: MsFlags::empty(),
        clear: MsFlags::empty(),
        propagation: Vec::new(),
        data: Vec::new(),
        bind: false,
        rec: false,
    };
    for s in opts {
        let (set, clr) = match s.as_str() {
            "ro" | "rdonly" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => {
                o.bind = true;
                continue;
            }
            "rbind" => {
                o.bind = true;
                o.rec = true;
                continue;
            }
            "tmpcopyup" | "idmap" | "ridmap" => continue,
            p => {
                if let Some(f) = propagation_flag(p) {
                    o.propagation.push(f);
                } else {
                    o.data.push(p.to_string());
                }
                continue;
            }
        };
        o.flags |= set;
        o.flags -= clr;
        o.clear |= clr;
    }
    o
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

/// Flags of the mount at `p` that a bind remount must keep (the kernel refuses to
/// clear locked flags inside a user namespace).
pub(super) fn locked_flags(p: &Path) -> MsFlags {
    let Ok(st) = nix::sys::statvfs::statvfs(p) else { return MsFlags::empty() };
    use nix::sys::statvfs::FsFlags as F;
    let f = st.flags();
    let mut m = MsFlags::empty();
    for (a, b) in [
        (F::ST_NOSUID, MsFlags::MS_NOSUID),
        (F::ST_NODEV, MsFlags::MS_NODEV),
        (F::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (F::ST_NOATIME, MsFlags::MS_NOATIME),
        (F::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (F::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(a) {
            m |= b;
        }
    }
    m
}

pub(super) fn mount_entry(rootfs: &Path, bundle: &Path, m: &Mount, in_userns: bool, new_netns: bool) -> Result<()> {
    let typ = m.typ().as_deref().unwrap_or("");
    let o = parse_options(m.options().as_deref().unwrap_or_default());
    let dest = secure_join(rootfs, m.destination())?;
    let what = || format!("mount {} on {}", typ_or_bind(typ, o.bind), m.destination().display());
    let bind = o.bind || typ == "bind";
    if typ == "cgroup" || typ == "cgroup2" {
        return mount_cgroup(&dest, &o, typ == "cgroup2");
    }
    if bind {
        let src = match m.source() {
            Some(s) if s.is_absolute() => s.clone(),
            Some(s) => bundle.join(s),
            None => return Err(Error::msg(format!("{}: a bind mount needs a source", what()))),
        };
        let md = fs::metadata(&src).ctx(|| format!("{}: source {}", what(), src.display()))?;
        make_mountpoint(&dest, md.is_dir())?;
        bind_mount(&src, &dest, &o).ctx(what)?;
    } else {
        make_mountpoint(&dest, true)?;
        let data = o.data.join(",");
        let src = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
        let r = mount(Some(&src), &dest, Some(typ), o.flags, (!data.is_empty()).then_some(data.as_str()));
        match r {
            Ok(()) => {}
            // Without its own network namespace a container may not mount sysfs (and
            // in a user namespace neither mqueue without its own ipc ns): bind the
            // host's instead, as runc does.
            Err(nix::Error::EPERM | nix::Error::EBUSY)
                if typ == "sysfs" && (in_userns || !new_netns) || typ == "mqueue" =>
            {
                let src = if typ == "sysfs" { "/sys" } else { "/dev/mqueue" };
                let mut bo = parse_options(m.options().as_deref().unwrap_or_default());
                bo.rec = true;
                bind_mount(Path::new(src), &dest, &bo).ctx(what)?;
            }
            Err(e) => return Err(Error::Sys { what: what(), source: e }),
        }
    }
    for p in &o.propagation {
        mount(None::<&str>, &dest, None::<&str>, *p, None::<&str>).ctx(|| format!("{}: propagation", what()))?;
    }
    Ok(())
}

pub(super) fn typ_or_bind(typ: &str, bind: bool) -> &str {
    if bind {
        "bind"
    } else if typ.is_empty() {
        "none"
    } else {
        typ
    }
}

pub(super) fn bind_mount(src: &Path, dest: &Path, o: &MountOpts) -> nix::Result<()> {
    let rec = if o.rec { MsFlags::MS_REC } else { MsFlags::empty() };
    mount(Some(src), dest, None::<&str>, MsFlags::MS_BIND | rec, None::<&str>)?;
    let wanted = o.flags - MsFlags::MS_REMOUNT;
    if !wanted.is_empty() || !o.clear.is_empty() {
        let keep = locked_flags(dest) - o.clear;
        mount(
            None::<&str>,
            dest,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | rec | wanted | keep,
            None::<&str>,
        )?;
    }
    Ok(())
}

pub(super) fn make_mountpoint(dest: &Path, dir: bool) -> Result<()> {
    if dir {
        if !dest.is_dir() {
            fs::create_dir_all(dest).ctx(|| format!("create mount point {}", dest.display()))?;
        }
    } else if fs::symlink_metadata(dest).is_err() {
        if let Some(p) = dest.parent() {
            fs::create_dir_all(p).ctx(|| format!("create {}", p.display()))?;
        }
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(dest)
            .ctx(|| format!("create mount point {}", dest.display()))?;
    }
    Ok(())
}

/// `type: cgroup` in the spec: on cgroup v2 the cgroup2 filesystem; on v1 and hybrid
/// hosts a tmpfs with one mount per hierarchy, as runc does. Each shows the container's
/// own cgroup as its root: by itself inside a cgroup namespace, else by a bind mount of
/// that directory over the hierarchy (podman on v1 and containerd use the host's namespace).
pub(super) fn mount_cgroup(dest: &Path, o: &MountOpts, want_v2: bool) -> Result<()> {
    make_mountpoint(dest, true)?;
    let base = o.flags & (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RELATIME);
    let ro = o.flags & MsFlags::MS_RDONLY;
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
    let narrow = |sub: &Path, path: Option<String>| -> Result<()> {
        let Some(path) = path else { return Ok(()) };
        let src = sub.join(path.trim_start_matches('/'));
        mount(Some(&src), sub, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .ctx(|| format!("bind the container's cgroup {path} on {}", sub.display()))?;
        mount(None::<&str>, sub, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | base | ro, None::<&str>)
            .ctx(|| format!("remount {}", sub.display()))
    };
    if unified || want_v2 {
        mount(Some("cgroup2"), dest, Some("cgroup2"), base | ro, None::<&str>)
            .ctx(|| format!("mount cgroup2 on {}", dest.display()))?;
        return narrow(dest, own_path(&[]));
    }
    mount(Some("tmpfs"), dest, Some("tmpfs"), base, Some("mode=755"))
        .ctx(|| format!("mount tmpfs on {}", dest.display()))?;
    let info = fs::read_to_string("/proc/self/mountinfo").ctx(|| "read /proc/self/mountinfo")?;
    for line in info.lines() {
        let Some((pre, post)) = line.split_once(" - ") else { continue };
        let mut post = post.split(' ');
        let fstype = post.next().unwrap_or("");
        let _src = post.next();
        let superopts = post.next().unwrap_or("");
        let mountpoint = pre.split(' ').nth(4).unwrap_or("");
        let Some(name) = mountpoint.strip_prefix("/sys/fs/cgroup/") else { continue };
        if name.contains('/') {
            continue;
        }
        let sub = dest.join(name);
        fs::create_dir_all(&sub).ctx(|| format!("create {}", sub.display()))?;
        let data: Vec<&str> = superopts.split(',').filter(|s| *s != "rw" && *s != "ro").collect();
        let (r, path) = match fstype {
            "cgroup" => {
                (mount(Some("cgroup"), &sub, Some("cgroup"), base | ro, Some(data.join(",").as_str())), own_path(&data))
            }
            "cgroup2" => (mount(Some("cgroup2"), &sub, Some("cgroup2"), base | ro, None::<&str>), own_path(&[])),
            _ => continue,
        };
        r.ctx(|| format!("mount cgroup {name} on {}", sub.display()))?;
        narrow(&sub, path)?;
    }
    if !ro.is_empty() {
        mount(None::<&str>, dest, None::<&str>, MsFlags::MS_REMOUNT | base | ro, Some("mode=755"))
            .ctx(|| format!("remount {} read-only", dest.display()))?;
    }
    Ok(())
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

pub(super) fn mask_path(p: &Path) -> Result<()> {
    let md = match fs::metadata(p) {
        Ok(md) => md,
        Err(_) => return Ok(()),
    };
    let r = if md.is_dir() {
        mount(Some("tmpfs"), p, Some("tmpfs"), MsFlags::MS_RDONLY, Some("size=0"))
    } else {
        mount(Some("/dev/null"), p, None::<&str>, MsFlags::MS_BIND, None::<&str>)
    };
    match r {
        Ok(()) | Err(nix::Error::ENOENT) => Ok(()),
        Err(e) => Err(Error::Sys { what: format!("mask {}", p.display()), source: e }),
    }
}

pub(super) fn readonly_path(p: &Path) -> Result<()> {
    match mount(Some(p), p, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>) {
        Ok(()) => {}
        Err(nix::Error::ENOENT) => return Ok(()),
        Err(e) => return Err(Error::Sys { what: format!("make {} read-only", p.display()), source: e }),
    }
    let keep = locked_flags(p);
    mount(
        None::<&str>,
        p,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC | keep,
        None::<&str>,
    )
    .ctx(|| format!("make {} read-only", p.display()))
}
