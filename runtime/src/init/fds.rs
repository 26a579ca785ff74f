//! What a process forked into a container holds of the host, and where it stands.
//!
//! The init (and an exec child) is a fork of the runtime: it starts with every fd the
//! runtime had open, including ones its caller leaked to it and the container's cgroup
//! directory. A directory fd of the host is a way out of the container (CVE-2024-21626:
//! `cwd: /proc/self/fd/N`, then `..` up to the host's `/`), so right after the clone:
//!
//! - [`close_all_but`] closes every fd except stdio, `--preserve-fds` and the few the
//!   child needs (sync channel, start socket, console socket, namespaces to join), before
//!   any path is resolved;
//! - [`set_non_dumpable`] keeps the processes of the container (an `exec` next to a
//!   `created` init) out of the child's `/proc/PID/{fd,cwd,root,environ}` until it execs
//!   the container's process (execve makes it dumpable again);
//! - after the chdir to `process.cwd`, [`verify_cwd`] refuses a working directory that is
//!   not under the container's root.

use std::fs;
use std::os::fd::RawFd;
use std::path::Path;

use crate::error::{Error, Result};

/// Closes every fd of this process but 0-2 and `keep` (in any order, duplicates allowed).
pub fn close_all_but(keep: &[RawFd]) -> Result<()> {
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|&fd| fd > 2).collect();
    keep.sort_unstable();
    keep.dedup();
    let mut from: RawFd = 3;
    let mut gaps: Vec<(RawFd, RawFd)> = Vec::new();
    for &k in &keep {
        if k > from {
            gaps.push((from, k - 1));
        }
        from = k + 1;
    }
    gaps.push((from, RawFd::MAX));
    for (lo, hi) in &gaps {
        // SAFETY: close_range on fd numbers of this single-threaded forked process; the
        // objects owning them in memory are never used or dropped again (see callers).
        let r = unsafe { libc::syscall(libc::SYS_close_range, *lo as libc::c_uint, *hi as libc::c_uint, 0u32) };
        if r != 0 {
            return close_listed(&keep);
        }
    }
    Ok(())
}

/// Kernels before 5.9 (no close_range): close what /proc/self/fd lists.
fn close_listed(keep: &[RawFd]) -> Result<()> {
    let rd = fs::read_dir("/proc/self/fd")
        .map_err(|e| Error::Io { what: "list /proc/self/fd to close inherited fds".into(), source: e })?;
    let fds: Vec<RawFd> = rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    for fd in fds.into_iter().filter(|fd| *fd > 2 && !keep.contains(fd)) {
        // SAFETY: closing an fd number of this process; the directory iterator that
        // listed it is already closed, and nothing in memory uses these numbers again.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// Marks every fd from `from` up close-on-exec, so only stdio and --preserve-fds
/// reach the container's process.
pub fn close_range_cloexec(from: i32) {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on our own fds.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            from as libc::c_uint,
            libc::c_uint::MAX,
            4u32, /* CLOSE_RANGE_CLOEXEC */
        )
    };
    if r != 0 {
        // Older kernels: walk /proc/self/fd.
        if let Ok(rd) = fs::read_dir("/proc/self/fd") {
            let fds: Vec<RawFd> = rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
            for fd in fds.into_iter().filter(|&f| f >= from) {
                // SAFETY: setting FD_CLOEXEC on an fd number; harmless if it was closed.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
        }
    }
}

/// No core dumps, and `/proc/PID/*` of this process reachable only with CAP_SYS_PTRACE,
/// until execve (which makes the container's process dumpable again, as usual).
pub fn set_non_dumpable() -> Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(Error::Io { what: "make the init non-dumpable".into(), source: std::io::Error::last_os_error() });
    }
    Ok(())
}

/// After `chdir(cwd)`: the working directory must be under this process's root. The
/// kernel's getcwd(2) fails with ENOENT, or returns a path that does not start with `/`
/// ("(unreachable)/..."), when it is not (a directory of the host reached through a magic
/// link such as /proc/self/fd/N).
pub fn verify_cwd(cwd: &Path) -> Result<()> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: getcwd writes at most buf.len() bytes into buf, which we own.
    let r = unsafe { libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) };
    // Any failure (also ERANGE: a path longer than PATH_MAX) is a refusal: we cannot tell.
    let reachable = r > 0 && buf.first() == Some(&b'/');
    if !reachable {
        return Err(Error::msg(format!(
            "cwd {}: the working directory is outside the container's root (possible container breakout through a \
             leaked fd or a /proc magic link): refusing to run",
            cwd.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    /// In a forked child: open a few fds, keep some, check which survive.
    #[test]
    fn close_all_but_keeps_exactly_what_it_is_told() {
        // SAFETY: fork of the test thread; the child only makes syscalls and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let fds: Vec<RawFd> =
                (0..6).map(|_| fs::File::open("/dev/null").map(|f| f.into_raw_fd()).unwrap_or(-1)).collect();
            let keep = [fds[1], fds[4], fds[4]];
            let ok = close_all_but(&keep).is_ok();
            // SAFETY: fcntl F_GETFD on fd numbers: -1/EBADF tells a closed fd.
            let open = |fd: RawFd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
            let good = ok
                && open(0)
                && open(1)
                && open(2)
                && open(fds[1])
                && open(fds[4])
                && !open(fds[0])
                && !open(fds[2])
                && !open(fds[3])
                && !open(fds[5]);
            // SAFETY: leave the forked test process without running anything else.
            unsafe { libc::_exit(if good { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status:#x}");
    }

    #[test]
    fn a_cwd_under_the_root_is_accepted_and_one_through_a_magic_link_elsewhere_is_not() {
        // SAFETY: fork of the test thread; the child only makes syscalls and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok_here = std::env::set_current_dir("/tmp").is_ok() && verify_cwd(Path::new("/tmp")).is_ok();
            // chroot into a scratch dir while holding a directory fd outside it, then
            // chdir through the magic link: the cwd is outside the new root.
            let dir = std::env::temp_dir().join(format!("skiff-cwd-test-{}", std::process::id()));
            // (removed by the parent)
            let _ = fs::create_dir_all(&dir);
            let outside = fs::File::open("/").map(|f| f.into_raw_fd()).unwrap_or(-1);
            let escaped = if nix::unistd::chroot(&dir).is_ok() {
                let _ = std::env::set_current_dir("/");
                // SAFETY: fchdir on an fd we opened.
                unsafe { libc::fchdir(outside) };
                verify_cwd(Path::new("/proc/self/fd/N")).is_err()
            } else {
                true // not root: nothing to check here
            };
            // SAFETY: leave the forked test process.
            unsafe { libc::_exit(if ok_here && escaped { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let _ = fs::remove_dir(std::env::temp_dir().join(format!("skiff-cwd-test-{pid}")));
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status:#x}");
    }
}
