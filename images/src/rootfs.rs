//! A container's root filesystem, made from an image's unpacked layers
//! (`<store>/layers/sha256/<diff_id hex>/`, whiteouts stored overlay-style by [`crate::unpack`]).
//!
//! # The container directory
//!
//! ```text
//! <container dir>/            created 0700 when missing (the caller may create it first)
//!   rootfs/                   the overlay mount point, or the copied tree
//!   upper/  work/             overlay's upper and work directories: upper/ holds the container's
//!                             writes and survives reboots and power cuts (no `volatile`)
//!   l/0 l/1 ...               short symlinks to the layers, only for long layer lists on kernels
//!                             without `lowerdir+` (see below)
//!   empty/                    the one lowerdir of an image without layers
//!   rootfs.copied             marker: the copy fallback finished (written durably, last)
//! ```
//!
//! # Overlay
//!
//! `lowerdir=` lists the layers topmost first, `upperdir=upper`, `workdir=work`, and
//! `index=off`: with the inodes index on, overlayfs records the lower layers' file handles
//! in upper/ and then refuses to mount that upper again over a re-unpacked layer (after a
//! prune and a new pull); docker and containerd pass `index=off` for the same reason.
//! Everything else keeps the kernel's defaults: no `volatile` (the upper must survive
//! power cuts), no `userxattr` (we run as root and the unpacker writes `trusted.overlay.*`),
//! no `metacopy`/`redirect_dir` changes.
//!
//! The data of mount(2) is one page, and the kernel silently truncates beyond it: a
//! list that would not fit in 4095 bytes is never passed that way. [`OverlayStrategy`] tells
//! which way was used:
//! 1. [`OverlayStrategy::MountData`]: mount(2) with absolute paths, when they fit and hold
//!    none of the characters overlayfs treats specially (`,` `:` `\`). /proc/mounts then
//!    shows the real paths.
//! 2. [`OverlayStrategy::LowerdirPlus`]: the new mount API (`fsopen`/`fsconfig`/`fsmount`/
//!    `move_mount`) with one `lowerdir+` per layer (Linux 6.8+): no length limit, paths taken
//!    literally, and the kernel's own error messages.
//! 3. [`OverlayStrategy::ShortLinks`]: symlinks `l/0`, `l/1`, ... to the layers and mount(2)
//!    with paths relative to the container directory, from a helper thread that unshared its
//!    working directory (`unshare(CLONE_FS)` + `chdir`, so the process's cwd never changes):
//!    about 6 bytes per layer, hundreds of layers on any kernel.
//!
//! # Copy fallback
//!
//! Where overlayfs is missing (ENODEV) or the mount fails, and the container has no writes
//! in upper/ yet, the layers are applied one by one into `rootfs/`: a 0/0 character device
//! deletes the path below it (and is not copied), `trusted.overlay.opaque=y` on a directory
//! clears what lower layers put in it, and everything else is copied with modes, ownership,
//! symlinks, hardlinks (within a layer), xattrs (except `*.overlay.*`), device nodes,
//! fifos and times. Every operation is relative to directory fds opened with `O_NOFOLLOW`:
//! a symlink in a lower layer is replaced, never followed. Then a syncfs and the marker.
//!
//! # Idempotence and crash safety
//!
//! [`mount_rootfs`] on a container directory whose rootfs is already mounted, or whose copy
//! finished, returns at once (`reused`). After a reboot it mounts again over the same upper/.
//! A copy interrupted by a crash has no marker and is redone from scratch. If upper/ holds
//! writes and overlay cannot be mounted, it fails rather than fall back to a copy that would
//! hide those writes. [`unmount_rootfs`] is idempotent (lazy `MNT_DETACH` when busy);
//! [`remove_container_dir`] unmounts and refuses to delete while anything is still mounted
//! below the directory.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{self, AtFlags, OFlag};
use nix::mount::{self as nixmount, MntFlags, MsFlags};
use nix::sys::stat::{self, FileStat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{self, Gid, Uid, UnlinkatFlags};

use crate::fsutil;
use crate::store::{ImageRecord, Store};

/// Names inside a container directory.
pub const ROOTFS_DIR: &str = "rootfs";
pub const UPPER_DIR: &str = "upper";
pub const WORK_DIR: &str = "work";
pub const LINKS_DIR: &str = "l";
pub const EMPTY_DIR: &str = "empty";
pub const COPIED_MARKER: &str = "rootfs.copied";

/// The deepest directory the copier enters (a layer in the copy fallback, a volume's seed):
/// each level holds two directory fds and a stack frame, and nothing real nests this deep.
pub const COPY_MAX_DEPTH: usize = 128;

/// Longest mount(2) data: one page (4 KiB at least) with its NUL.
const MOUNT_DATA_MAX: usize = 4095;
/// Longest string value fsconfig(2) takes.
const FSCONFIG_VALUE_MAX: usize = 255;

/// What a container's rootfs is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootfsKind {
    /// An overlay mount at `rootfs/` (writes go to `upper/`).
    Overlay,
    /// A copy of the layers in `rootfs/` (writes go there).
    Copy,
}

/// How the lowerdirs were handed to the kernel (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlayStrategy {
    MountData,
    LowerdirPlus,
    ShortLinks,
}

/// Options of [`mount_rootfs_with`].
#[derive(Debug, Clone, Default)]
pub struct RootfsOptions {
    /// Copy the layers even where overlayfs works.
    pub copy: bool,
    /// Pass the lowerdirs this way only (no fallback to another way); `None`: the best
    /// available. For tests and diagnostics.
    pub overlay_strategy: Option<OverlayStrategy>,
}

/// What [`mount_rootfs_with`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mounted {
    pub kind: RootfsKind,
    /// `<container dir>/rootfs`.
    pub rootfs: PathBuf,
    /// For an overlay mounted by this call: how the lowerdirs were passed.
    pub strategy: Option<OverlayStrategy>,
    /// Why overlay was not used, when the copy is a fallback (for the caller's log).
    pub fallback: Option<String>,
    /// The rootfs was already in place (mounted, or copied before): nothing was done.
    pub reused: bool,
}

/// Errors of this module, one line each.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("{what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: io::Error },

    #[error("layer {}: {detail}", path.display())]
    Layer { path: PathBuf, detail: String },

    #[error("overlay rootfs at {}: {detail}", path.display())]
    Mount { path: PathBuf, detail: String },

    /// `layer`: what is copied (a layer, or the image's directory of a volume); `rootfs`:
    /// where to.
    #[error("copying {} into {}: {path}: {what}: {source}", layer.display(), rootfs.display())]
    Copy { layer: PathBuf, rootfs: PathBuf, path: String, what: &'static str, source: io::Error },

    #[error("unmounting {}: {source}", path.display())]
    Unmount { path: PathBuf, source: io::Error },

    #[error("{} still has mounts at or below it ({mounts}): not touching it", path.display())]
    StillMounted { path: PathBuf, mounts: String },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RootfsError {
    let path = path.to_path_buf();
    move |source| RootfsError::Io { what, path, source }
}

/// The unpacked layer directories of an image, bottom first (what [`mount_rootfs`] takes).
pub fn image_layers(store: &Store, image: &ImageRecord) -> Vec<PathBuf> {
    image.layers.iter().map(|l| store.layer_path(&l.diff_id)).collect()
}

/// Whether /proc/filesystems lists overlayfs (for diagnostics: an overlay
/// module not loaded yet is not listed, but a mount loads it, so [`mount_rootfs`] just tries).
pub fn overlay_listed() -> bool {
    fs::read_to_string("/proc/filesystems")
        .is_ok_and(|f| f.lines().any(|l| l.split_whitespace().last() == Some("overlay")))
}

/// `<container dir>/rootfs`.
pub fn rootfs_path(container_dir: &Path) -> PathBuf {
    container_dir.join(ROOTFS_DIR)
}

/// Makes `<container_dir>/rootfs` from `layers` (absolute paths, bottom first): an overlay
/// mount, else a copy. See [`mount_rootfs_with`].
pub fn mount_rootfs(layers: &[PathBuf], container_dir: &Path) -> Result<RootfsKind, RootfsError> {
    mount_rootfs_with(layers, container_dir, &RootfsOptions::default()).map(|m| m.kind)
}

/// [`mount_rootfs`] with options, telling how it went.
pub fn mount_rootfs_with(layers: &[PathBuf], dir: &Path, opts: &RootfsOptions) -> Result<Mounted, RootfsError> {
    for l in layers {
        if !l.is_absolute() {
            return Err(RootfsError::Layer { path: l.clone(), detail: "not an absolute path".into() });
        }
        match fs::metadata(l) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(RootfsError::Layer { path: l.clone(), detail: "not a directory".into() }),
            Err(e) => {
                return Err(RootfsError::Layer {
                    path: l.clone(),
                    detail: format!("{e} (was it pruned? pull the image again)"),
                })
            }
        }
    }
    if !dir.is_dir() {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err("creating", dir))?;
    }
    let rootfs = rootfs_path(dir);
    mkdir_if_missing(&rootfs, 0o755)?;
    let done = |kind, strategy, fallback, reused| Mounted { kind, rootfs: rootfs.clone(), strategy, fallback, reused };

    if dir.join(COPIED_MARKER).exists() {
        return Ok(done(RootfsKind::Copy, None, None, true));
    }
    if is_mount_point(&rootfs).map_err(io_err("reading the mounts of", &rootfs))? {
        return Ok(done(RootfsKind::Overlay, None, None, true));
    }

    let mut fallback = None;
    let upper = dir.join(UPPER_DIR);
    if opts.copy && !dir_is_empty(&upper).map_err(io_err("reading", &upper))? {
        return Err(RootfsError::Mount {
            path: rootfs.clone(),
            detail: concat!(
                "a copy was asked for, but upper/ holds the container's writes from an overlay mount ",
                "(remove the container to start over)"
            )
            .into(),
        });
    }
    if !opts.copy {
        let lowers: Vec<PathBuf> = if layers.is_empty() {
            let empty = dir.join(EMPTY_DIR);
            mkdir_if_missing(&empty, 0o755)?;
            vec![empty]
        } else {
            layers.iter().rev().cloned().collect()
        };
        prepare_upper(dir, &lowers[0])?;
        match mount_overlay(&lowers, dir, opts.overlay_strategy) {
            Ok(s) => return Ok(done(RootfsKind::Overlay, Some(s), None, false)),
            Err(e) => {
                if !dir_is_empty(&upper).map_err(io_err("reading", &upper))? {
                    return Err(RootfsError::Mount {
                        path: rootfs.clone(),
                        detail: format!(
                            "{e}; upper/ holds the container's earlier writes, so no copy fallback (remove the container to start over)"
                        ),
                    });
                }
                for d in [UPPER_DIR, WORK_DIR, LINKS_DIR, EMPTY_DIR] {
                    let _ = fsutil::remove_tree(&dir.join(d));
                }
                fallback = Some(e);
            }
        }
    }
    copy_layers(layers, dir)?;
    Ok(done(RootfsKind::Copy, None, fallback, false))
}

fn mkdir_if_missing(p: &Path, mode: u32) -> Result<(), RootfsError> {
    match fs::DirBuilder::new().mode(mode).create(p) {
        Ok(()) => fs::set_permissions(p, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", p)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && p.is_dir() => Ok(()),
        Err(e) => Err(RootfsError::Io { what: "creating", path: p.to_path_buf(), source: e }),
    }
}

/// Creates upper/ (owned and moded like the top layer's root: the merged root takes its
/// attributes from upper/) and work/, unless they exist (upper/ keeps the container's state).
fn prepare_upper(dir: &Path, top: &Path) -> Result<(), RootfsError> {
    let upper = dir.join(UPPER_DIR);
    if !upper.is_dir() {
        let md = fs::metadata(top).map_err(io_err("reading", top))?;
        let tmp = dir.join(format!("{UPPER_DIR}.tmp"));
        let _ = fsutil::remove_tree(&tmp);
        fs::DirBuilder::new().mode(0o700).create(&tmp).map_err(io_err("creating", &tmp))?;
        std::os::unix::fs::chown(&tmp, Some(md.uid()), Some(md.gid())).map_err(io_err("chown", &tmp))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(md.mode() & 0o7777)).map_err(io_err("chmod", &tmp))?;
        fs::rename(&tmp, &upper).map_err(io_err("creating", &upper))?;
    }
    mkdir_if_missing(&dir.join(WORK_DIR), 0o700)
}

fn dir_is_empty(p: &Path) -> io::Result<bool> {
    match fs::read_dir(p) {
        Ok(mut rd) => Ok(rd.next().is_none()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

// ----------------------------------------------------------------------------- overlay

/// Why the new mount API path could not be used.
enum NewApi {
    /// No new mount API or no `lowerdir+` (or a value too long for fsconfig): try another way.
    Unsupported,
    Failed(String),
}

/// Mounts the overlay at `<dir>/rootfs`; the error is the reason, as one line.
fn mount_overlay(lowers: &[PathBuf], dir: &Path, forced: Option<OverlayStrategy>) -> Result<OverlayStrategy, String> {
    let upper = dir.join(UPPER_DIR);
    let work = dir.join(WORK_DIR);
    let target = dir.join(ROOTFS_DIR);
    let absolute = (|| {
        let lower: Vec<&str> = lowers.iter().map(|p| plain(p)).collect::<Option<_>>()?;
        let data =
            format!("lowerdir={},upperdir={},workdir={},index=off", lower.join(":"), plain(&upper)?, plain(&work)?);
        (data.len() <= MOUNT_DATA_MAX).then_some(data)
    })();
    let s = match forced {
        Some(OverlayStrategy::MountData) => {
            let data = absolute.ok_or_else(|| {
                format!("{} layers: the lowerdir list does not fit in one mount(2) data page", lowers.len())
            })?;
            mount_data(&target, &data, Path::new("/"))?;
            OverlayStrategy::MountData
        }
        Some(OverlayStrategy::LowerdirPlus) => match lowerdir_plus(lowers, &upper, &work, &target) {
            Ok(()) => OverlayStrategy::LowerdirPlus,
            Err(NewApi::Unsupported) => {
                return Err("this kernel has no new mount API with overlayfs lowerdir+ (Linux 6.8+)".into())
            }
            Err(NewApi::Failed(e)) => return Err(e),
        },
        Some(OverlayStrategy::ShortLinks) => {
            short_links(lowers, dir)?;
            OverlayStrategy::ShortLinks
        }
        None => {
            if let Some(data) = absolute {
                mount_data(&target, &data, Path::new("/"))?;
                OverlayStrategy::MountData
            } else {
                match lowerdir_plus(lowers, &upper, &work, &target) {
                    Ok(()) => OverlayStrategy::LowerdirPlus,
                    Err(NewApi::Unsupported) => {
                        short_links(lowers, dir)?;
                        OverlayStrategy::ShortLinks
                    }
                    Err(NewApi::Failed(e)) => return Err(e),
                }
            }
        }
    };
    Ok(s)
}

/// The path as a mount option value, if it has none of overlayfs' separators and escapes.
fn plain(p: &Path) -> Option<&str> {
    p.to_str().filter(|s| !s.contains([',', ':', '\\']) && !s.chars().any(char::is_control))
}

/// mount(2) of an overlay at `target` (relative to the cwd of the calling thread, `cwd` is
/// only for messages).
fn mount_data(target: &Path, data: &str, cwd: &Path) -> Result<(), String> {
    nixmount::mount(Some("overlay"), target, Some("overlay"), MsFlags::empty(), Some(data)).map_err(|e| match e {
        Errno::ENODEV => "overlayfs is not available in this kernel (ENODEV)".to_string(),
        e => format!(
            "mount(2) of {} failed: {} (the kernel log, dmesg, says why)",
            cwd.join(target).display(),
            io::Error::from(e)
        ),
    })
}

/// Symlinks `l/<i>` to each lowerdir and a mount with paths relative to `dir`, made from a
/// thread with its own working directory.
fn short_links(lowers: &[PathBuf], dir: &Path) -> Result<(), String> {
    let links = dir.join(LINKS_DIR);
    let _ = fsutil::remove_tree(&links);
    let e = |what: &str, p: &Path, err: io::Error| format!("{what} {}: {err}", p.display());
    fs::DirBuilder::new().mode(0o700).create(&links).map_err(|err| e("creating", &links, err))?;
    let mut lower = String::new();
    for (i, l) in lowers.iter().enumerate() {
        let link = links.join(i.to_string());
        std::os::unix::fs::symlink(l, &link).map_err(|err| e("creating", &link, err))?;
        if i > 0 {
            lower.push(':');
        }
        lower.push_str(&format!("{LINKS_DIR}/{i}"));
    }
    let data = format!("lowerdir={lower},upperdir={UPPER_DIR},workdir={WORK_DIR},index=off");
    if data.len() > MOUNT_DATA_MAX {
        return Err(format!("{} layers are too many for one overlay mount", lowers.len()));
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            // Only this thread's working directory changes: CLONE_FS gives it its own.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)
                .map_err(|err| format!("unshare(CLONE_FS): {}", io::Error::from(err)))?;
            unistd::chdir(dir).map_err(|err| e("chdir to", dir, err.into()))?;
            mount_data(Path::new(ROOTFS_DIR), &data, dir)
        })
        .join()
        .unwrap_or_else(|_| Err("the mount thread panicked".into()))
    })
}

mod newapi {
    //! The new mount API (Linux 5.2+; overlayfs takes `lowerdir+` from 6.8).

    use std::ffi::CStr;
    use std::os::fd::{AsRawFd, OwnedFd};

    use nix::errno::Errno;

    const FSOPEN_CLOEXEC: libc::c_uint = 1;
    const FSCONFIG_SET_STRING: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 1;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

    pub fn fsopen(fstype: &CStr) -> Result<OwnedFd, Errno> {
        // SAFETY: fsopen reads a NUL-terminated string and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) };
        Errno::result(fd).map(|fd| super::own(fd as i32))
    }

    pub fn set_string(fs: &OwnedFd, key: &CStr, value: &CStr) -> Result<(), Errno> {
        // SAFETY: both strings are NUL-terminated and only read during the call.
        let r = unsafe {
            libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), FSCONFIG_SET_STRING, key.as_ptr(), value.as_ptr(), 0)
        };
        Errno::result(r).map(drop)
    }

    pub fn create(fs: &OwnedFd) -> Result<(), Errno> {
        // SAFETY: FSCONFIG_CMD_CREATE takes no pointers.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_CMD_CREATE,
                std::ptr::null::<libc::c_char>(),
                std::ptr::null::<libc::c_void>(),
                0,
            )
        };
        Errno::result(r).map(drop)
    }

    pub fn fsmount(fs: &OwnedFd) -> Result<OwnedFd, Errno> {
        // SAFETY: fsmount takes an fd and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, 0) };
        Errno::result(fd).map(|fd| super::own(fd as i32))
    }

    pub fn move_mount(mnt: &OwnedFd, target: &CStr) -> Result<(), Errno> {
        // SAFETY: both paths are NUL-terminated and only read during the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                mnt.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        Errno::result(r).map(drop)
    }

    /// The messages the filesystem left in the fs context (`e overlayfs: ...`), as one line.
    pub fn messages(fs: &OwnedFd) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        while let Ok(n) = nix::unistd::read(fs.as_raw_fd(), &mut buf) {
            if n == 0 {
                break;
            }
            // "e overlayfs: ..." (e: error, w: warning, i: info).
            let m = String::from_utf8_lossy(&buf[..n]);
            let m = m.trim();
            out.push(match m.as_bytes().get(1) {
                Some(b' ') => m[2..].to_string(),
                _ => m.to_string(),
            });
        }
        out.join("; ")
    }
}

fn lowerdir_plus(lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<(), NewApi> {
    let cstr = |p: &Path| CString::new(p.as_os_str().as_bytes()).ok();
    let (Some(upper_c), Some(work_c), Some(target_c)) = (cstr(upper), cstr(work), cstr(target)) else {
        return Err(NewApi::Unsupported);
    };
    // upperdir/workdir values are unescaped by overlayfs, lowerdir+ ones are not.
    if plain(upper).is_none() || plain(work).is_none() {
        return Err(NewApi::Unsupported);
    }
    let mut lower_c = Vec::with_capacity(lowers.len());
    for l in lowers {
        lower_c.push(cstr(l).ok_or(NewApi::Unsupported)?);
    }
    if lower_c.iter().chain([&upper_c, &work_c]).any(|c| c.as_bytes().len() > FSCONFIG_VALUE_MAX) {
        return Err(NewApi::Unsupported);
    }
    let fs = match newapi::fsopen(c"overlay") {
        Ok(fd) => fd,
        Err(Errno::ENODEV) => return Err(NewApi::Failed("overlayfs is not available in this kernel (ENODEV)".into())),
        Err(_) => return Err(NewApi::Unsupported),
    };
    let failed = |what: &str, e: Errno| {
        let msg = newapi::messages(&fs);
        let msg = if msg.is_empty() { String::new() } else { format!(" ({msg})") };
        NewApi::Failed(format!("{what}: {}{msg}", io::Error::from(e)))
    };
    for (i, l) in lower_c.iter().enumerate() {
        match newapi::set_string(&fs, c"lowerdir+", l) {
            Ok(()) => {}
            Err(Errno::EINVAL) if i == 0 => return Err(NewApi::Unsupported),
            Err(e) => return Err(failed(&format!("lowerdir+ {}", l.to_string_lossy()), e)),
        }
    }
    newapi::set_string(&fs, c"upperdir", &upper_c).map_err(|e| failed("upperdir", e))?;
    newapi::set_string(&fs, c"workdir", &work_c).map_err(|e| failed("workdir", e))?;
    newapi::set_string(&fs, c"index", c"off").map_err(|e| failed("index=off", e))?;
    newapi::create(&fs).map_err(|e| failed("creating the overlay", e))?;
    let mnt = newapi::fsmount(&fs).map_err(|e| failed("fsmount", e))?;
    newapi::move_mount(&mnt, &target_c)
        .map_err(|e| NewApi::Failed(format!("move_mount to {}: {}", target.display(), io::Error::from(e))))
}

// ----------------------------------------------------------------------------- mounts

/// Mount points at or below `path` (from /proc/self/mountinfo), deepest first.
pub fn mounts_under(path: &Path) -> io::Result<Vec<PathBuf>> {
    let base = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let info = fs::read("/proc/self/mountinfo")?;
    let mut out: Vec<PathBuf> = info
        .split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .map(|mp| PathBuf::from(OsStr::from_bytes(&unescape_mountinfo(mp))))
        .filter(|mp| mp.starts_with(&base))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    Ok(out)
}

/// Whether `path` itself is a mount point.
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    let base = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    Ok(mounts_under(path)?.contains(&base))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' && i + 3 < s.len() {
            let oct = &s[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                out.push((oct[0] - b'0') * 64 + (oct[1] - b'0') * 8 + (oct[2] - b'0'));
                i += 4;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// Unmounts `<container dir>/rootfs` (every mount stacked there). Nothing mounted, or no
/// such directory, is fine; a busy mount is detached lazily.
pub fn unmount_rootfs(container_dir: &Path) -> Result<(), RootfsError> {
    let target = rootfs_path(container_dir);
    for _ in 0..64 {
        match nixmount::umount2(&target, MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => continue,
            Err(Errno::EINVAL) | Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => return Ok(()),
            Err(Errno::EBUSY) => nixmount::umount2(&target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW)
                .map_err(|e| RootfsError::Unmount { path: target.clone(), source: e.into() })?,
            Err(e) => return Err(RootfsError::Unmount { path: target, source: e.into() }),
        }
    }
    Err(RootfsError::StillMounted { path: target, mounts: "64 stacked mounts".into() })
}

/// Unmounts the rootfs and removes the container directory (its upper/ included). Anything
/// else mounted below it is detached first; if something stays mounted, nothing is removed.
pub fn remove_container_dir(container_dir: &Path) -> Result<(), RootfsError> {
    match fs::symlink_metadata(container_dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(RootfsError::Io { what: "reading", path: container_dir.to_path_buf(), source: e }),
        Ok(m) if !m.is_dir() => {
            return Err(RootfsError::Io {
                what: "removing",
                path: container_dir.to_path_buf(),
                source: io::Error::from(io::ErrorKind::NotADirectory),
            })
        }
        Ok(_) => {}
    }
    unmount_rootfs(container_dir)?;
    let mounts = |dir| mounts_under(dir).map_err(io_err("reading the mounts of", dir));
    for m in mounts(container_dir)? {
        let _ = nixmount::umount2(&m, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW);
    }
    let left = mounts(container_dir)?;
    if !left.is_empty() {
        let mounts = left.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        return Err(RootfsError::StillMounted { path: container_dir.to_path_buf(), mounts });
    }
    fsutil::remove_tree(container_dir).map_err(io_err("removing", container_dir))
}

// ----------------------------------------------------------------------------- copy

/// The copy fallback: clears `rootfs/` (a copy a crash interrupted), applies each layer,
/// syncs, and writes the marker.
fn copy_layers(layers: &[PathBuf], dir: &Path) -> Result<(), RootfsError> {
    let rootfs = rootfs_path(dir);
    let mounted = mounts_under(&rootfs).map_err(io_err("reading the mounts of", &rootfs))?;
    if !mounted.is_empty() {
        let mounts = mounted.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        return Err(RootfsError::StillMounted { path: rootfs, mounts });
    }
    let root = open_dir(&rootfs).map_err(io_err("opening", &rootfs))?;
    let names = list_dir(root.as_raw_fd()).map_err(|e| io_err("reading", &rootfs)(e.into()))?;
    for n in names {
        remove_all_at(root.as_raw_fd(), &n).map_err(|e| io_err("clearing", &rootfs)(e.into()))?;
    }
    on_copy_stack(|| {
        for layer in layers {
            let src = open_dir(layer).map_err(io_err("opening", layer))?;
            let mut c = Copier { layer, rootfs: &rootfs, root: root.as_raw_fd(), links: HashMap::new(), depth: 0 };
            c.apply(src.as_raw_fd())?;
        }
        Ok(())
    })?;
    fsutil::syncfs(&rootfs).map_err(io_err("syncing", &rootfs))?;
    let mut note = String::from("layers copied into rootfs/, bottom first:\n");
    for l in layers {
        note.push_str(&format!("{}\n", l.display()));
    }
    let marker = dir.join(COPIED_MARKER);
    fsutil::write_atomic(dir, &marker, note.as_bytes()).map_err(io_err("writing", &marker))
}

/// Copies the directory `src` onto the directory `dst` with the copier of the copy fallback:
/// its entries (symlinks as symlinks, never followed; hardlinks within it kept; ownership,
/// modes, xattrs except `*.overlay.*`, device nodes, fifos, times), then its own metadata. At
/// most [`COPY_MAX_DEPTH`] directories deep. `from` and `into` only name the two in errors.
pub(crate) fn copy_dir(src: &OwnedFd, from: &Path, dst: &OwnedFd, into: &Path) -> Result<(), RootfsError> {
    on_copy_stack(|| {
        let mut c = Copier { layer: from, rootfs: into, root: dst.as_raw_fd(), links: HashMap::new(), depth: 0 };
        c.apply(src.as_raw_fd())
    })
}

/// Stack for [`COPY_MAX_DEPTH`] levels of the copier in any build (a debug build takes about
/// 16 KiB a level), with room to spare.
const COPY_STACK: usize = COPY_MAX_DEPTH * (32 << 10) + (256 << 10);

/// Runs `f` (the copier, which recurses once per directory level) on a thread of its own with
/// [`COPY_STACK`] of stack: its callers run on small stacks (the agent's blocking threads have
/// 512 KiB). The stack is address space; only what the copy touches is ever backed.
fn on_copy_stack(f: impl FnOnce() -> Result<(), RootfsError> + Send) -> Result<(), RootfsError> {
    std::thread::scope(|s| {
        let h = std::thread::Builder::new()
            .name("skiff-copy".into())
            .stack_size(COPY_STACK)
            .spawn_scoped(s, f)
            .map_err(|e| RootfsError::Io { what: "starting the copy thread", path: PathBuf::new(), source: e })?;
        h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

pub(crate) fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open-like syscall; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn open_dir(p: &Path) -> io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    fcntl::open(p, flags, Mode::empty()).map(own).map_err(io::Error::from)
}

fn open_dir_at(dir: RawFd, name: &[u8]) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    fcntl::openat(Some(dir), name, flags, Mode::empty()).map(own)
}

fn lstat_at(dir: RawFd, name: &[u8]) -> nix::Result<FileStat> {
    stat::fstatat(Some(dir), name, AtFlags::AT_SYMLINK_NOFOLLOW)
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

fn list_dir(dir: RawFd) -> nix::Result<Vec<Vec<u8>>> {
    let mut d = Dir::openat(Some(dir), ".", OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
    let mut names = Vec::new();
    for e in d.iter() {
        let n = e?.file_name().to_bytes().to_vec();
        if n != b"." && n != b".." {
            names.push(n);
        }
    }
    names.sort();
    Ok(names)
}

/// Removes `name` in `dir`, recursively, never following a symlink. Missing is fine.
fn remove_all_at(dir: RawFd, name: &[u8]) -> nix::Result<()> {
    match unistd::unlinkat(Some(dir), name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::EISDIR) | Err(Errno::EPERM) => {}
        Err(e) => return Err(e),
    }
    let st = lstat_at(dir, name)?;
    if file_type(&st) != SFlag::S_IFDIR {
        return unistd::unlinkat(Some(dir), name, UnlinkatFlags::NoRemoveDir);
    }
    let sub = open_dir_at(dir, name)?;
    for child in list_dir(sub.as_raw_fd())? {
        remove_all_at(sub.as_raw_fd(), &child)?;
    }
    drop(sub);
    unistd::unlinkat(Some(dir), name, UnlinkatFlags::RemoveDir)
}

/// `/proc/self/fd/<dir>/<name>`: a path to `name` in an open directory, for the l*xattr calls
/// (which do not follow the last component, and have no *at form).
fn proc_path(dir: RawFd, name: &[u8]) -> CString {
    let mut p = format!("/proc/self/fd/{dir}/").into_bytes();
    p.extend_from_slice(name);
    // Names from readdir hold no NUL.
    CString::new(p).unwrap_or_default()
}

fn list_xattrs(path: &CStr) -> io::Result<Vec<CString>> {
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: `path` is NUL-terminated; the kernel writes at most buf.len() bytes into buf.
        let n = unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            buf.truncate(n as usize);
            break;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) if buf.len() < (1 << 20) => buf.resize(buf.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(e),
        }
    }
    Ok(buf.split(|&b| b == 0).filter(|n| !n.is_empty()).filter_map(|n| CString::new(n).ok()).collect())
}

fn get_xattr(path: &CStr, name: &CStr) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: both strings are NUL-terminated; the kernel writes at most buf.len() bytes.
        let n = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(Some(buf));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) if buf.len() < (1 << 20) => buf.resize(buf.len() * 4, 0),
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => return Ok(None),
            _ => return Err(e),
        }
    }
}

fn set_xattr(path: &CStr, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated, `value` is a live slice of the given length;
    // lsetxattr only reads them and does not follow the last component.
    let r = unsafe { libc::lsetxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A 0/0 character device: an overlay whiteout.
fn is_whiteout(st: &FileStat) -> bool {
    file_type(st) == SFlag::S_IFCHR && st.st_rdev == 0
}

/// Applies one layer directory onto the rootfs.
struct Copier<'a> {
    layer: &'a Path,
    rootfs: &'a Path,
    root: RawFd,
    /// Hardlinked source inodes already copied in this layer → their path in the rootfs.
    links: HashMap<(u64, u64), Vec<u8>>,
    /// How many directories deep the copy is.
    depth: usize,
}

impl Copier<'_> {
    fn err(&self, rel: &[u8], what: &'static str) -> impl FnOnce(io::Error) -> RootfsError + '_ {
        let path = format!("/{}", String::from_utf8_lossy(rel));
        move |source| RootfsError::Copy {
            layer: self.layer.to_path_buf(),
            rootfs: self.rootfs.to_path_buf(),
            path,
            what,
            source,
        }
    }

    fn apply(&mut self, src: RawFd) -> Result<(), RootfsError> {
        let st = stat::fstat(src).map_err(|e| self.err(b"", "stat")(e.into()))?;
        if is_opaque(&proc_path(src, b".")).map_err(self.err(b"", "reading xattrs"))? {
            for n in list_dir(self.root).map_err(|e| self.err(b"", "reading")(e.into()))? {
                remove_all_at(self.root, &n).map_err(|e| self.err(&n, "removing")(e.into()))?;
            }
        }
        self.dir_contents(src, self.root, &mut Vec::new())?;
        self.metadata(src, b".", self.root, b".", &st, b"")
    }

    /// Copies the entries of `src` into `dst` (`rel`: their directory, relative to the root).
    fn dir_contents(&mut self, src: RawFd, dst: RawFd, rel: &mut Vec<u8>) -> Result<(), RootfsError> {
        let names = list_dir(src).map_err(|e| self.err(rel, "reading the directory")(e.into()))?;
        for name in names {
            let len = rel.len();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(&name);
            self.entry(src, dst, &name, rel)?;
            rel.truncate(len);
        }
        Ok(())
    }

    fn entry(&mut self, src: RawFd, dst: RawFd, name: &[u8], rel: &mut Vec<u8>) -> Result<(), RootfsError> {
        let st = lstat_at(src, name).map_err(|e| self.err(rel, "stat")(e.into()))?;
        let ty = file_type(&st);
        if is_whiteout(&st) {
            return remove_all_at(dst, name).map_err(|e| self.err(rel, "removing the whited-out path")(e.into()));
        }
        let existing = match lstat_at(dst, name) {
            Ok(d) => Some(file_type(&d)),
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(self.err(rel, "stat in the rootfs")(e.into())),
        };
        if ty == SFlag::S_IFDIR {
            match existing {
                Some(SFlag::S_IFDIR) => {
                    if is_opaque(&proc_path(src, name)).map_err(self.err(rel, "reading xattrs"))? {
                        let sub = open_dir_at(dst, name).map_err(|e| self.err(rel, "opening")(e.into()))?;
                        for n in list_dir(sub.as_raw_fd()).map_err(|e| self.err(rel, "reading")(e.into()))? {
                            remove_all_at(sub.as_raw_fd(), &n)
                                .map_err(|e| self.err(rel, "clearing the opaque directory")(e.into()))?;
                        }
                    }
                }
                Some(_) => {
                    remove_all_at(dst, name).map_err(|e| self.err(rel, "replacing")(e.into()))?;
                    stat::mkdirat(Some(dst), name, Mode::from_bits_truncate(0o700))
                        .map_err(|e| self.err(rel, "mkdir")(e.into()))?;
                }
                None => stat::mkdirat(Some(dst), name, Mode::from_bits_truncate(0o700))
                    .map_err(|e| self.err(rel, "mkdir")(e.into()))?,
            }
            if self.depth >= COPY_MAX_DEPTH {
                let e = io::Error::other(format!("more than {COPY_MAX_DEPTH} nested directories"));
                return Err(self.err(rel, "entering the directory")(e));
            }
            let s = open_dir_at(src, name).map_err(|e| self.err(rel, "opening")(e.into()))?;
            let d = open_dir_at(dst, name).map_err(|e| self.err(rel, "opening in the rootfs")(e.into()))?;
            self.depth += 1;
            let r = self.dir_contents(s.as_raw_fd(), d.as_raw_fd(), rel);
            self.depth -= 1;
            r?;
            // After the contents, so their creation does not change the directory's times.
            return self.metadata(s.as_raw_fd(), b".", d.as_raw_fd(), b".", &st, rel);
        }
        if existing.is_some() {
            remove_all_at(dst, name).map_err(|e| self.err(rel, "replacing")(e.into()))?;
        }
        match ty {
            SFlag::S_IFREG => {
                #[allow(clippy::useless_conversion)] // u32 on some 32-bit targets
                let key = (u64::from(st.st_dev), u64::from(st.st_ino));
                if st.st_nlink > 1 {
                    if let Some(first) = self.links.get(&key) {
                        // A hardlink to a file this layer already put in the rootfs. The first
                        // path's directories were all made (or checked) as real directories
                        // while copying this layer, so resolving it follows no symlink.
                        if unistd::linkat(Some(self.root), first.as_slice(), Some(dst), name, AtFlags::empty()).is_ok()
                        {
                            return Ok(());
                        }
                    }
                }
                self.file(src, dst, name, &st, rel)?;
                if st.st_nlink > 1 {
                    self.links.insert(key, rel.clone());
                }
                Ok(())
            }
            SFlag::S_IFLNK => {
                let target = fcntl::readlinkat(Some(src), name).map_err(|e| self.err(rel, "readlink")(e.into()))?;
                unistd::symlinkat(target.as_os_str(), Some(dst), name)
                    .map_err(|e| self.err(rel, "creating the symlink")(e.into()))?;
                self.metadata(src, name, dst, name, &st, rel)
            }
            SFlag::S_IFCHR | SFlag::S_IFBLK | SFlag::S_IFIFO => {
                stat::mknodat(Some(dst), name, ty, Mode::from_bits_truncate(0o600), st.st_rdev)
                    .map_err(|e| self.err(rel, "mknod")(e.into()))?;
                self.metadata(src, name, dst, name, &st, rel)
            }
            // Sockets are not in layers (tar has no socket entries): nothing to copy.
            _ => Ok(()),
        }
    }

    fn file(&mut self, src: RawFd, dst: RawFd, name: &[u8], st: &FileStat, rel: &[u8]) -> Result<(), RootfsError> {
        let from =
            fcntl::openat(Some(src), name, OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
                .map(own)
                .map_err(|e| self.err(rel, "opening")(e.into()))?;
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let to = fcntl::openat(Some(dst), name, flags, Mode::from_bits_truncate(0o600))
            .map(own)
            .map_err(|e| self.err(rel, "creating")(e.into()))?;
        let (mut from, mut to) = (fs::File::from(from), fs::File::from(to));
        // File to file: copy_file_range (reflinks where the filesystem can), else read/write.
        let n = io::copy(&mut from, &mut to).map_err(self.err(rel, "copying"))?;
        if n != st.st_size as u64 {
            return Err(self.err(rel, "copying")(io::Error::other("the file changed size while copied")));
        }
        drop((from, to));
        self.metadata(src, name, dst, name, st, rel)
    }

    /// Ownership, xattrs, mode, then times, from the source entry `sname` in `src` to `dname`
    /// in `dst` (`.` for the directories themselves). Symlinks are never followed.
    fn metadata(
        &self,
        src: RawFd,
        sname: &[u8],
        dst: RawFd,
        dname: &[u8],
        st: &FileStat,
        rel: &[u8],
    ) -> Result<(), RootfsError> {
        let is_link = file_type(st) == SFlag::S_IFLNK;
        let follow = if dname == b"." { AtFlags::empty() } else { AtFlags::AT_SYMLINK_NOFOLLOW };
        match unistd::fchownat(Some(dst), dname, Some(Uid::from_raw(st.st_uid)), Some(Gid::from_raw(st.st_gid)), follow)
        {
            Ok(()) => {}
            // Not root: the files stay ours.
            Err(Errno::EPERM) if !unistd::geteuid().is_root() => {}
            Err(e) => return Err(self.err(rel, "chown")(e.into())),
        }
        // After chown, which clears security.capability.
        let (spath, dpath) = (proc_path(src, sname), proc_path(dst, dname));
        for name in list_xattrs(&spath).map_err(self.err(rel, "listing xattrs"))? {
            let n = name.as_bytes();
            if n.starts_with(b"trusted.overlay.") || n.starts_with(b"user.overlay.") {
                continue;
            }
            let Some(value) = get_xattr(&spath, &name).map_err(self.err(rel, "reading xattrs"))? else { continue };
            if let Err(e) = set_xattr(&dpath, &name, &value) {
                // What a file grants or who may read it must not be lost silently; other
                // xattrs (user.*, security labels) are best effort, as in the unpacker.
                if n == b"security.capability" || n.starts_with(b"system.posix_acl_") {
                    return Err(self.err(rel, "setting xattrs")(e));
                }
            }
        }
        if !is_link {
            let mode = Mode::from_bits_truncate(st.st_mode & 0o7777);
            // Not a symlink (checked above, and `dname` was just created or opened by us).
            stat::fchmodat(Some(dst), dname, mode, stat::FchmodatFlags::FollowSymlink)
                .map_err(|e| self.err(rel, "chmod")(e.into()))?;
        }
        let atime = TimeSpec::new(st.st_atime, st.st_atime_nsec);
        let mtime = TimeSpec::new(st.st_mtime, st.st_mtime_nsec);
        let flag =
            if dname == b"." { stat::UtimensatFlags::FollowSymlink } else { stat::UtimensatFlags::NoFollowSymlink };
        stat::utimensat(Some(dst), dname, &atime, &mtime, flag).map_err(|e| self.err(rel, "setting times")(e.into()))
    }
}

fn is_opaque(path: &CStr) -> io::Result<bool> {
    Ok(get_xattr(path, c"trusted.overlay.opaque")?.is_some_and(|v| v == b"y"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(br"/a\040b\011c\134d"), b"/a b\tc\\d".to_vec());
        assert_eq!(unescape_mountinfo(br"/x\04"), br"/x\04".to_vec());
        assert_eq!(unescape_mountinfo(br"/plain"), b"/plain".to_vec());
    }

    #[test]
    fn overlay_is_listed_here() {
        // The project's machines have overlayfs (see DESIGN.md); a mount test would fail anyway.
        if Path::new("/sys/module/overlay").exists() {
            assert!(overlay_listed());
        }
    }

    #[test]
    fn plain_paths() {
        assert_eq!(plain(Path::new("/var/lib/skiff/layers/sha256/ab")), Some("/var/lib/skiff/layers/sha256/ab"));
        assert_eq!(plain(Path::new("/a:b")), None);
        assert_eq!(plain(Path::new("/a,b")), None);
        assert_eq!(plain(Path::new("/a\\b")), None);
        assert_eq!(plain(Path::new("/a\nb")), None);
    }

    #[test]
    fn unmount_and_remove_are_idempotent() {
        let t = tempfile::tempdir().expect("tempdir");
        let missing = t.path().join("missing");
        unmount_rootfs(&missing).expect("unmount of a missing dir");
        remove_container_dir(&missing).expect("remove of a missing dir");
        let c = t.path().join("c");
        fs::create_dir_all(c.join("rootfs/x")).expect("mkdir");
        unmount_rootfs(&c).expect("unmount of an unmounted rootfs");
        remove_container_dir(&c).expect("remove");
        assert!(!c.exists());
    }

    #[test]
    fn layers_must_be_absolute_dirs() {
        let t = tempfile::tempdir().expect("tempdir");
        let e = mount_rootfs(&[PathBuf::from("rel/layer")], &t.path().join("c")).unwrap_err().to_string();
        assert!(e.contains("not an absolute path"), "{e}");
        let e = mount_rootfs(&[t.path().join("gone")], &t.path().join("c")).unwrap_err().to_string();
        assert!(e.contains("gone") && e.contains("pruned"), "{e}");
    }
}
