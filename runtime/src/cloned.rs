//! Defence against CVE-2019-5736: a process of ours that enters a container (the init
//! waiting for `start`, an `exec`) must never expose the runtime's own binary through
//! /proc/<pid>/exe, or a hostile container could open it for writing and replace it.
//!
//! Before such a command does anything, the runtime re-executes itself from a sealed
//! memfd copy of its binary (what runc and crun do). Writes to the copy are refused
//! by the seals (EPERM), and the copy vanishes with the last process using it.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::{Context, Error, Result};

const SEALS: libc::c_int = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

/// True when /proc/self/exe is already a sealed memfd.
pub fn is_sealed() -> bool {
    let Ok(f) = File::open("/proc/self/exe") else { return false };
    // SAFETY: fcntl(F_GET_SEALS) on an fd we own; no memory is passed.
    let seals = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & SEALS == SEALS
}

/// Re-executes the current process from a sealed memfd copy of its binary, unless it
/// already runs from one. Returns only on failure.
pub fn reexec_sealed() -> Result<()> {
    if is_sealed() {
        return Ok(());
    }
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
            mem.as_raw_fd(),
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    Err(Error::Io { what: "re-execute from the sealed memfd".into(), source: std::io::Error::last_os_error() })
}
