//! Network namespaces the agent owns: one per replica (unless `network_mode: host`), kept
//! alive by a bind mount at `<run>/netns/<id>` and joined by the runtime by path. The agent
//! makes them (not the runtime) so it can configure them before the container starts:
//! loopback up now, the bridge's veth and address with networking.

use std::fs;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// Makes the namespace at `path` unless one is mounted there already; loopback is up.
pub fn ensure(path: &Path) -> io::Result<()> {
    if is_nsfs(path) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        skiff_images::fsutil::create_private_dir(dir)?;
    }
    // A bind-mount target: an empty file.
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(skiff_images::fsutil::PRIVATE_FILE)
        .open(path)?;
    let target = path.to_path_buf();
    // unshare(CLONE_NEWNET) changes the calling thread only: do it in a thread of its own,
    // which ends right after (the bind mount keeps the namespace).
    let res = std::thread::Builder::new()
        .name("skiff-netns".into())
        .spawn(move || -> io::Result<()> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            loopback_up()?;
            mount(Some("/proc/thread-self/ns/net"), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(io::Error::from)
        })?
        .join()
        .map_err(|_| io::Error::other("the namespace thread panicked"))?;
    if res.is_err() {
        let _ = fs::remove_file(path);
    }
    res
}

/// Unmounts and removes the namespace at `path` (gone once its last process exits).
pub fn remove(path: &Path) -> io::Result<()> {
    if is_nsfs(path) {
        umount2(path, MntFlags::MNT_DETACH).map_err(io::Error::from)?;
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Whether a network namespace is mounted at `path`.
pub fn is_nsfs(path: &Path) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    #[allow(clippy::unnecessary_cast)] // f_type is 32 bits on armv7
    match nix::sys::statfs::statfs(path) {
        Ok(s) => s.filesystem_type().0 as i64 == NSFS_MAGIC,
        Err(_) => false,
    }
}

/// `ip link set lo up` in the calling thread's network namespace.
fn loopback_up() -> io::Result<()> {
    // SAFETY: socket(2) with constant arguments; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&sock);
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // (The request is a c_ulong in glibc's prototype and a c_int in musl's: libc::Ioctl.)
    // SAFETY: SIOCGIFFLAGS reads the flags of the interface named in req into req.
    if unsafe { libc::ioctl(raw, libc::SIOCGIFFLAGS as libc::Ioctl, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the flags member of the union was just filled in by SIOCGIFFLAGS.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS sets the flags of the interface named in req.
    if unsafe { libc::ioctl(raw, libc::SIOCSIFFLAGS as libc::Ioctl, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_with_loopback_up() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ns");
        ensure(&p).unwrap();
        assert!(is_nsfs(&p));
        ensure(&p).unwrap(); // idempotent
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}", p.display()))
            .args(["ip", "-o", "link", "show", "lo"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("UP"), "{text}");
        remove(&p).unwrap();
        assert!(!p.exists());
        remove(&p).unwrap();
    }
}
