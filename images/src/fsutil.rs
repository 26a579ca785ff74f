//! Durable file-system primitives: temp + fsync + rename + fsync(dir), syncfs, flock; and the
//! private modes of everything skiff keeps (see [`create_private_dir`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The mode of every directory skiff makes under its root and run directory: root's alone.
///
/// Why 0700 and not 0710 (Docker's mode for /var/lib/docker and its overlay2 directory since
/// CVE-2021-41091): a container's processes reach their root filesystem, volumes and bind mounts
/// through the mounts (overlayfs reads its lower and upper directories with the mounter's
/// credentials, i.e. root's; a bind mount's source path is resolved once, by the runtime, as
/// root), never through the path of the store, so no other uid ever needs to traverse it.
/// Docker's group execute bit is for `--userns-remap`, where the runtime's init already runs
/// as the remapped root of a user namespace when it resolves the rootfs path under
/// /var/lib/docker, and the group is that remapped gid. skiff makes no user namespaces
/// (compose's `userns_mode` is refused), so nothing needs the bit. With 0701 or 0755 any local
/// user could execute a setuid-root binary from an image layer or one a container dropped in its
/// upper directory, or open a device node a container made: root then (CVE-2021-41091).
pub const PRIVATE_DIR: u32 = 0o700;

/// The mode of every file skiff writes for itself (records, bundles, logs, locks, blobs):
/// environment, credentials and a service's output are in them.
pub const PRIVATE_FILE: u32 = 0o600;

/// Creates `path` and any missing parent with mode 0700 ([`PRIVATE_DIR`]). Directories that
/// exist keep their mode (see [`make_private`] for old ones).
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(PRIVATE_DIR).create(path)
}

/// Takes the group and other permission bits off `path` (a directory or a regular file;
/// symlinks are followed: a root or `containers/` moved to another disk is still skiff's),
/// when it has any: what an older skiff left at 0755 or 0644. Cheap: one stat, and a chmod only
/// when needed. A missing path is fine; anything else (a socket, a device) is left alone.
pub fn make_private(path: &Path) -> io::Result<()> {
    let md = match std::fs::metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !(md.is_dir() || md.is_file()) {
        return Ok(());
    }
    let mode = md.mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & !0o077))
}

/// [`make_private`] of `dir` and of each of `names` directly under it (not a walk: what is
/// below a private directory is out of other users' reach whatever its own mode).
pub fn make_private_entries(dir: &Path, names: &[&str]) -> io::Result<()> {
    make_private(dir)?;
    for n in names {
        let p = dir.join(n);
        make_private(&p).map_err(|e| io::Error::new(e.kind(), format!("chmod {}: {e}", p.display())))?;
    }
    Ok(())
}

/// Whether an I/O error means the disk (or quota) is full.
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || e.get_ref().and_then(|inner| inner.downcast_ref::<io::Error>()).is_some_and(is_no_space)
}

/// True when an error, or any error in its source chain, is ENOSPC.
pub fn caused_by_no_space(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut src = Some(e);
    while let Some(s) = src {
        if s.downcast_ref::<io::Error>().is_some_and(is_no_space) {
            return true;
        }
        src = s.source();
    }
    false
}

/// fsync of a directory, so the names created in or renamed into it are durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// syncfs(2) of the file system holding `path`: everything written there is durable after it.
pub fn syncfs(path: &Path) -> io::Result<()> {
    let f = File::open(path)?;
    // SAFETY: syncfs takes an open descriptor and has no memory effects.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// rename(2) of `from` to `to` that fails with EEXIST when `to` exists (renameat2 with
/// RENAME_NOREPLACE). By its syscall number: nix offers renameat2 only on glibc, and musl
/// before 1.2.5 (Debian's, which the armv7 builds link) has no wrapper for it.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: renameat2 reads two NUL-terminated paths, both alive across the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes `data` to `dest` atomically and durably: a temp file in `tmp_dir` (same file system),
/// fsync, rename over `dest`, fsync of `dest`'s directory. After a crash `dest` is either the
/// old content or the new one, never a torn mix. The file is 0600 ([`PRIVATE_FILE`]).
pub fn write_atomic(tmp_dir: &Path, dest: &Path, data: &[u8]) -> io::Result<()> {
    write_atomic_mode(tmp_dir, dest, data, PRIVATE_FILE)
}

/// [`write_atomic`] with a given mode (only for what a container must read through a bind
/// mount as any user: its /etc/hosts and /etc/resolv.conf, 0644).
pub fn write_atomic_mode(tmp_dir: &Path, dest: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = tmp_dir.join(format!("write-{}-{}-{name}", std::process::id(), unique()));
    let res = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        // The umask may have narrowed `mode` (never widened it): what is asked is what is on disk.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, dest)?;
        fsync_dir(dest.parent().unwrap_or(Path::new("/")))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Removes the temp files of [`write_atomic`] calls in `tmp_dir` whose process is gone (killed
/// between creating the temp file and renaming it). Files of live processes are left alone.
pub fn remove_stale_writes(tmp_dir: &Path) {
    let Ok(rd) = std::fs::read_dir(tmp_dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) =
            name.strip_prefix("write-").and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A number unique within this process (for temp names).
pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// An flock(2) held on a file until dropped.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

/// Lock kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKind {
    Shared,
    Exclusive,
}

impl FileLock {
    /// Tries to take the lock without waiting: `Ok(None)` when someone else holds it.
    pub fn try_lock(path: &Path, kind: LockKind) -> io::Result<Option<FileLock>> {
        let file = open_lock_file(path)?;
        let op = match kind {
            LockKind::Shared => libc::LOCK_SH,
            LockKind::Exclusive => libc::LOCK_EX,
        } | libc::LOCK_NB;
        loop {
            // SAFETY: flock on an fd we own.
            if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
                return Ok(Some(FileLock { _file: file }));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => return Ok(None),
                _ => return Err(e),
            }
        }
    }

    /// Takes the lock, waiting as long as it takes.
    pub fn lock(path: &Path, kind: LockKind) -> io::Result<FileLock> {
        let file = open_lock_file(path)?;
        let op = match kind {
            LockKind::Shared => libc::LOCK_SH,
            LockKind::Exclusive => libc::LOCK_EX,
        };
        loop {
            // SAFETY: flock on an fd we own.
            if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
                return Ok(FileLock { _file: file });
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
    }
}

/// Opens (creating it 0600) a lock file: flock(2) works on any fd, a read-only one too, so a
/// user who can open a lock file can hold it and stall skiff. One left wider by an older skiff
/// is narrowed (an fd opened before that stays valid: the directories around it are what keeps
/// others out).
pub fn open_lock_file(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(PRIVATE_FILE)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)?;
    let md = file.metadata()?;
    if md.mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(md.mode() & 0o7700))?;
    }
    Ok(file)
}

/// Bytes used by a file tree: apparent sizes, each hard-linked inode counted once.
pub fn tree_size(path: &Path) -> u64 {
    use std::collections::HashSet;
    use std::os::unix::fs::MetadataExt;
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(md) = std::fs::symlink_metadata(&p) else { continue };
        if md.nlink() > 1 && !md.is_dir() && !seen.insert((md.dev(), md.ino())) {
            continue;
        }
        total += md.len();
        if md.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    total
}

/// Removes a directory tree, making read-only directories writable first when needed.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(first) => {
            // A layer can hold directories without write permission (root ignores that, other
            // users do not): open them up and retry once.
            use std::os::unix::fs::PermissionsExt;
            let mut stack = vec![path.to_path_buf()];
            while let Some(p) = stack.pop() {
                if let Ok(md) = std::fs::symlink_metadata(&p) {
                    if md.is_dir() {
                        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700));
                        if let Ok(rd) = std::fs::read_dir(&p) {
                            stack.extend(rd.flatten().map(|e| e.path()));
                        }
                    }
                }
            }
            std::fs::remove_dir_all(path).map_err(|_| first)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_noreplace_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
        std::fs::write(&a, "a").unwrap();
        std::fs::write(&b, "b").unwrap();
        let e = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST), "{e}");
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "b");
        rename_noreplace(&a, &c).unwrap();
        assert!(!a.exists());
        assert_eq!(std::fs::read_to_string(&c).unwrap(), "a");
    }

    #[test]
    fn stale_atomic_writes_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let mine = std::process::id();
        for name in [format!("write-{dead}-1-a.json"), format!("write-{mine}-2-b.json"), "load-1-1.lock".into()] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        remove_stale_writes(dir.path());
        let mut left: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into()).collect();
        left.sort();
        assert_eq!(left, ["load-1-1.lock".to_string(), format!("write-{mine}-2-b.json")]);
    }
}
