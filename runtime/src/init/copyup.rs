//! `tmpcopyup`: the content the image has under a tmpfs mount point, copied into the new
//! tmpfs (podman's `--tmpfs`, systemd containers). Everything is done relative to
//! directory fds, never following a symlink: the image's content is untrusted.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};

use crate::error::{Error, Result};

/// How deep a tree is copied before giving up (bounded recursion on hostile input).
const MAX_DEPTH: usize = 128;

/// Copies what is in the directory `from` into the directory `to` (both readable fds):
/// directories, regular files, symlinks (as links), fifos and device nodes, with owner,
/// mode and modification time.
pub(super) fn copy_tree(from: &OwnedFd, to: &OwnedFd) -> Result<()> {
    copy_dir(from, to, 0)
}

fn io(what: String) -> Error {
    Error::Io { what, source: std::io::Error::last_os_error() }
}

fn copy_dir(from: &OwnedFd, to: &OwnedFd, depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::msg(format!("more than {MAX_DEPTH} nested directories")));
    }
    let dup = from.try_clone().map_err(|e| Error::Io { what: "dup a directory fd".into(), source: e })?;
    let mut dir = nix::dir::Dir::from_fd(dup.into_raw_fd())
        .map_err(|e| Error::Sys { what: "read a directory".into(), source: e })?;
    let mut names: Vec<CString> = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(|e| Error::Sys { what: "read a directory".into(), source: e })?;
        let name = entry.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        names.push(name.to_owned());
    }
    for name in names {
        copy_entry(from, to, &name, depth).map_err(|e| Error::msg(format!("{}: {e}", name.to_string_lossy())))?;
    }
    Ok(())
}

fn copy_entry(from: &OwnedFd, to: &OwnedFd, name: &CStr, depth: usize) -> Result<()> {
    // SAFETY: fstatat into a zeroed struct we own, with a C string name.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstatat(from.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return Err(io("stat".into()));
    }
    let mode = st.st_mode & 0o7777;
    match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => {
            // SAFETY: mkdirat with a C string; result checked.
            if unsafe { libc::mkdirat(to.as_raw_fd(), name.as_ptr(), 0o700) } != 0
                && std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST)
            {
                return Err(io("create directory".into()));
            }
            let src = open_at(from, name, libc::O_RDONLY | libc::O_DIRECTORY)?;
            let dst = open_at(to, name, libc::O_RDONLY | libc::O_DIRECTORY)?;
            copy_dir(&src, &dst, depth + 1)?;
            finish(&dst, &st, mode)
        }
        libc::S_IFREG => {
            let src = open_at(from, name, libc::O_RDONLY)?;
            // SAFETY: openat creating a new file (never through a symlink); result checked.
            let fd = unsafe {
                libc::openat(
                    to.as_raw_fd(),
                    name.as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    0o600 as libc::c_uint,
                )
            };
            if fd < 0 {
                return Err(io("create file".into()));
            }
            // SAFETY: a new fd that nothing else owns.
            let dst = unsafe { OwnedFd::from_raw_fd(fd) };
            let mut r = std::fs::File::from(src);
            let mut w = std::fs::File::from(dst);
            std::io::copy(&mut r, &mut w).map_err(|e| Error::Io { what: "copy".into(), source: e })?;
            finish(&OwnedFd::from(w), &st, mode)
        }
        libc::S_IFLNK => {
            let target = nix::fcntl::readlinkat(Some(from.as_raw_fd()), name)
                .map_err(|e| Error::Sys { what: "read link".into(), source: e })?;
            nix::unistd::symlinkat(target.as_os_str(), Some(to.as_raw_fd()), name)
                .map_err(|e| Error::Sys { what: "create link".into(), source: e })?;
            // SAFETY: fchownat with a C string, not following the link.
            unsafe { libc::fchownat(to.as_raw_fd(), name.as_ptr(), st.st_uid, st.st_gid, libc::AT_SYMLINK_NOFOLLOW) };
            Ok(())
        }
        libc::S_IFIFO | libc::S_IFCHR | libc::S_IFBLK => {
            // SAFETY: mknodat with a C string; result checked.
            if unsafe { libc::mknodat(to.as_raw_fd(), name.as_ptr(), st.st_mode, st.st_rdev) } != 0 {
                return Err(io("create node".into()));
            }
            // SAFETY: fchownat with a C string, not following links.
            if unsafe { libc::fchownat(to.as_raw_fd(), name.as_ptr(), st.st_uid, st.st_gid, libc::AT_SYMLINK_NOFOLLOW) }
                != 0
            {
                return Err(io("chown".into()));
            }
            Ok(())
        }
        // Sockets belong to a running process; there is nothing to copy.
        _ => Ok(()),
    }
}

/// Owner, then mode (a chown clears set-id bits), then times.
fn finish(fd: &OwnedFd, st: &libc::stat, mode: libc::mode_t) -> Result<()> {
    // SAFETY: fchown/fchmod/futimens on an fd we own; futimens reads two timespecs we own.
    unsafe {
        if libc::fchown(fd.as_raw_fd(), st.st_uid, st.st_gid) != 0 {
            return Err(io("chown".into()));
        }
        if libc::fchmod(fd.as_raw_fd(), mode) != 0 {
            return Err(io("chmod".into()));
        }
        let times = [
            libc::timespec { tv_sec: st.st_atime, tv_nsec: st.st_atime_nsec },
            libc::timespec { tv_sec: st.st_mtime, tv_nsec: st.st_mtime_nsec },
        ];
        libc::futimens(fd.as_raw_fd(), times.as_ptr());
    }
    Ok(())
}

fn open_at(dir: &OwnedFd, name: &CStr, flags: libc::c_int) -> Result<OwnedFd> {
    // SAFETY: openat with a C string, never following a symlink; result checked.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io("open".into()));
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
