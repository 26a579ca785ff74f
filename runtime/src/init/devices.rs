//! Device nodes in the container's /dev: the defaults, the spec's, and the symlinks.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::AtFlags;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, mknodat, Mode, SFlag};
use nix::unistd::{fchownat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};

use super::inroot::{open_source, procfd, InRoot};
use crate::error::{Context, Error, Result};

pub(super) struct DefDev {
    path: &'static str,
    major: i64,
    minor: i64,
}

pub(super) const DEFAULT_DEVICES: &[DefDev] = &[
    DefDev { path: "/dev/null", major: 1, minor: 3 },
    DefDev { path: "/dev/zero", major: 1, minor: 5 },
    DefDev { path: "/dev/full", major: 1, minor: 7 },
    DefDev { path: "/dev/random", major: 1, minor: 8 },
    DefDev { path: "/dev/urandom", major: 1, minor: 9 },
    DefDev { path: "/dev/tty", major: 5, minor: 0 },
];

impl DefDev {
    pub(super) fn to_device(&self) -> LinuxDevice {
        let mut d = LinuxDevice::default();
        d.set_path(PathBuf::from(self.path));
        d.set_typ(LinuxDeviceType::C);
        d.set_major(self.major);
        d.set_minor(self.minor);
        d.set_file_mode(Some(0o666));
        d.set_uid(Some(0));
        d.set_gid(Some(0));
        d
    }
}

pub(super) fn make_device(root: &InRoot, d: &LinuxDevice, in_userns: bool) -> Result<()> {
    let path = d.path();
    let what = || format!("device {}", path.display());
    if in_userns {
        // mknod is not allowed in a user namespace: bind the host's node instead.
        let target = root.file(path)?;
        let src = open_source(path)?;
        return mount(
            Some(procfd(&src).as_str()),
            procfd(&target).as_str(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .ctx(|| format!("bind {}", what()));
    }
    let kind = match d.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
        LinuxDeviceType::B => SFlag::S_IFBLK,
        LinuxDeviceType::P => SFlag::S_IFIFO,
        LinuxDeviceType::A => return Err(Error::msg(format!("{}: type \"a\" cannot be created", what()))),
    };
    let (dir, name) = parent_and_name(root, path)?;
    let mode = Mode::from_bits_truncate(d.file_mode().unwrap_or(0o666) as libc::mode_t);
    match unlinkat(Some(dir.as_raw_fd()), name.as_str(), UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(Error::Sys { what: format!("replace {}", what()), source: e }),
    }
    mknodat(Some(dir.as_raw_fd()), name.as_str(), kind, mode, makedev(d.major() as u64, d.minor() as u64))
        .ctx(|| format!("create {}", what()))?;
    fchownat(
        Some(dir.as_raw_fd()),
        name.as_str(),
        d.uid().map(Uid::from_raw),
        d.gid().map(Gid::from_raw),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .ctx(|| format!("chown {}", what()))?;
    Ok(())
}

/// The directory holding `path` in the root (created if missing) and the last name.
fn parent_and_name(root: &InRoot, path: &Path) -> Result<(OwnedFd, String)> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| *n != "." && *n != "..")
        .ok_or_else(|| Error::msg(format!("{}: not a file name", path.display())))?;
    let dir = root.dir(path.parent().unwrap_or(Path::new("/")))?;
    Ok((dir, name.to_string()))
}

/// /dev/fd, /dev/std{in,out,err} and /dev/ptmx in the container's /dev (an fd of it).
pub(super) fn dev_symlinks(dev: &OwnedFd) -> Result<()> {
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let exists = nix::sys::stat::fstatat(Some(dev.as_raw_fd()), link, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok();
        if exists {
            if link != "ptmx" {
                continue;
            }
            let _ = unlinkat(Some(dev.as_raw_fd()), link, UnlinkatFlags::NoRemoveDir);
        }
        symlinkat(target, Some(dev.as_raw_fd()), link).ctx(|| format!("symlink /dev/{link}"))?;
    }
    Ok(())
}
