//! Defence against CVE-2019-5736: a process of ours that enters a container (the init
//! waiting for `start`, an `exec`) must never expose the runtime's own binary through
//! /proc/<pid>/exe, or a hostile container could open it for writing and replace it.
//!
//! Before such a command does anything, the runtime re-executes itself from a
//! protected copy of its binary:
//!
//! 1. preferred (Linux >= 5.12): a private, detached, read-only bind mount of the
//!    binary (`open_tree(OPEN_TREE_CLONE)` + `mount_setattr(MOUNT_ATTR_RDONLY)`),
//!    executed through its fd. Nothing is copied and no mount appears in any
//!    namespace; a write through /proc/<pid>/exe fails with EROFS, and the detached
//!    mount cannot be cloned or remounted from another mount namespace.
//! 2. fallback: a sealed memfd copy (what runc and crun do). Writes to the copy are
//!    refused by the seals (EPERM).

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use crate::error::{Context, Error, Result};

const SEALS: libc::c_int = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

/// True when /proc/self/exe cannot be written: a sealed memfd, or a file on a
/// read-only mount.
pub fn is_protected() -> bool {
    let Ok(f) = File::open("/proc/self/exe") else { return false };
    // SAFETY: fcntl(F_GET_SEALS) on an fd we own; no memory is passed.
    let seals = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GET_SEALS) };
    if seals >= 0 && seals & SEALS == SEALS {
        return true;
    }
    nix::sys::statvfs::fstatvfs(&f).is_ok_and(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
}

/// Re-executes the current process from a protected copy of its binary, unless it
/// already runs from one. Returns only on failure.
pub fn reexec_protected() -> Result<()> {
    if is_protected() {
        return Ok(());
    }
    if let Some(fd) = readonly_clone() {
        let e = execveat_self(&fd);
        crate::debug!("read-only bind of the runtime binary could not be executed ({e}); copying it to a memfd");
    }
    reexec_sealed()
}

/// A detached read-only bind mount of our own binary (O_PATH fd), or None when the
/// kernel lacks open_tree/mount_setattr.
fn readonly_clone() -> Option<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const MOUNT_ATTR_RDONLY: u64 = 1;
    // SAFETY: open_tree with a NUL-terminated path; returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c"/proc/self/exe".as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is new and ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    crate::mountapi::mount_setattr(fd.as_fd(), false, MOUNT_ATTR_RDONLY, 0).ok().map(|()| fd)
}

/// Re-executes the binary behind `fd` with our argv and environment. Returns the
/// error when execveat fails.
fn execveat_self(fd: &OwnedFd) -> std::io::Error {
    let args: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(std::os::unix::ffi::OsStrExt::as_bytes(a.as_os_str())).unwrap_or_default())
        .collect();
    let env: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut b = std::os::unix::ffi::OsStrExt::as_bytes(k.as_os_str()).to_vec();
            b.push(b'=');
            b.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()));
            CString::new(b).unwrap_or_default()
        })
        .collect();
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: argv/envp are NULL-terminated arrays of valid C strings that outlive the
    // call; an empty path with AT_EMPTY_PATH executes the fd itself.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd.as_raw_fd(),
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    std::io::Error::last_os_error()
}

/// Re-executes from a sealed memfd copy of the binary. Returns only on failure.
pub fn reexec_sealed() -> Result<()> {
    let exe = File::open("/proc/self/exe").ctx(|| "open /proc/self/exe")?;
    let len = exe.metadata().ctx(|| "stat /proc/self/exe")?.len();
    let name = c"skiff-runtime";
    // SAFETY: memfd_create with a valid NUL-terminated name; the fd is owned below.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(Error::Io { what: "memfd_create".into(), source: std::io::Error::last_os_error() });
    }
    // SAFETY: fd was just returned by memfd_create and is not owned elsewhere.
    let mem = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut copied: u64 = 0;
    while copied < len {
        // SAFETY: both fds are valid; a null offset uses and advances the file offset.
        let n =
            unsafe { libc::sendfile(mem.as_raw_fd(), exe.as_raw_fd(), std::ptr::null_mut(), (len - copied) as usize) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::Io { what: "copy the runtime binary into a memfd".into(), source: e });
        }
        if n == 0 {
            break;
        }
        copied += n as u64;
    }
    // SAFETY: fcntl(F_ADD_SEALS) on our memfd with a constant flag set.
    if unsafe { libc::fcntl(mem.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } < 0 {
        return Err(Error::Io { what: "seal the runtime's memfd".into(), source: std::io::Error::last_os_error() });
    }
    let e = execveat_self(&mem);
    Err(Error::Io { what: "re-execute from the sealed memfd".into(), source: e })
}
