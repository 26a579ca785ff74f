//! Device nodes in the container's /dev: the defaults, the spec's, and the symlinks.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{chown, Gid, Uid};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};

use super::mounts::{make_mountpoint, secure_join};
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

pub(super) fn make_device(rootfs: &Path, d: &LinuxDevice, in_userns: bool) -> Result<()> {
    let dest = secure_join(rootfs, d.path())?;
    if let Some(p) = dest.parent() {
        fs::create_dir_all(p).ctx(|| format!("create {}", p.display()))?;
    }
    if in_userns {
        // mknod is not allowed in a user namespace: bind the host's node instead.
        make_mountpoint(&dest, false)?;
        return mount(Some(d.path()), &dest, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .ctx(|| format!("bind device {}", d.path().display()));
    }
    let kind = match d.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
        LinuxDeviceType::B => SFlag::S_IFBLK,
        LinuxDeviceType::P => SFlag::S_IFIFO,
        LinuxDeviceType::A => {
            return Err(Error::msg(format!("device {}: type \"a\" cannot be created", d.path().display())))
        }
    };
    let mode = Mode::from_bits_truncate(d.file_mode().unwrap_or(0o666) as libc::mode_t);
    let _ = fs::remove_file(&dest);
    mknod(&dest, kind, mode, makedev(d.major() as u64, d.minor() as u64))
        .ctx(|| format!("create device {}", d.path().display()))?;
    chown(&dest, d.uid().map(Uid::from_raw), d.gid().map(Gid::from_raw))
        .ctx(|| format!("chown device {}", d.path().display()))?;
    Ok(())
}

pub(super) fn dev_symlinks(devdir: &Path) -> Result<()> {
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let p = devdir.join(link);
        if fs::symlink_metadata(&p).is_ok() {
            if link != "ptmx" {
                continue;
            }
            let _ = fs::remove_file(&p);
        }
        symlink(target, &p).ctx(|| format!("symlink /dev/{link}"))?;
    }
    Ok(())
}
