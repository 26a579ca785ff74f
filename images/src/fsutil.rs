//! Durable file-system primitives: temp + fsync + rename + fsync(dir), syncfs, flock.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

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

/// Writes `data` to `dest` atomically and durably: a temp file in `tmp_dir` (same file system),
/// fsync, rename over `dest`, fsync of `dest`'s directory. After a crash `dest` is either the
/// old content or the new one, never a torn mix.
pub fn write_atomic(tmp_dir: &Path, dest: &Path, data: &[u8]) -> io::Result<()> {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = tmp_dir.join(format!("write-{}-{}-{name}", std::process::id(), unique()));
    let res = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o644).open(&tmp)?;
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
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path)?;
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
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path)?;
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
