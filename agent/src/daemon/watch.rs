//! Watches the manifest file: inotify on its directory (so editors' write-to-temp-and-rename
//! and `kubectl`-style symlink swaps are seen), debounced. Each change sends one
//! [`Event::Reload`]; the loop re-reads the file and compares its digest.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use super::reconcile::{log, Event};

/// Runs for the life of the agent. Falls back to polling the file's metadata every 2 s when
/// inotify is not available (or the directory does not exist yet).
pub async fn watch(manifest: PathBuf, tx: mpsc::UnboundedSender<Event>) {
    let dir = manifest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let name = manifest.file_name().map(|n| n.to_os_string());
    loop {
        match inotify_on(&dir) {
            Ok(fd) => {
                if let Err(e) = run(fd, name.as_deref(), &tx).await {
                    log(&format!("watching {}: {e}; polling instead", dir.display()));
                    poll(&manifest, &tx).await;
                }
            }
            Err(e) => {
                log(&format!("cannot watch {} ({e}); polling it every 2s", dir.display()));
                poll(&manifest, &tx).await;
            }
        }
        if tx.is_closed() {
            return;
        }
    }
}

/// An inotify instance as tokio wants it (nix's type only implements `AsFd`).
struct Ino(Inotify);

impl AsRawFd for Ino {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

fn inotify_on(dir: &Path) -> nix::Result<AsyncFd<Ino>> {
    let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
    ino.add_watch(
        dir,
        AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_ATTRIB
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF,
    )?;
    // SAFETY: the fd belongs to `ino`, which the AsyncFd owns for its whole life; it is never
    // closed or replaced while registered.
    unsafe { AsyncFd::register_with_interest(Ino(ino), tokio::io::Interest::READABLE) }
        .map_err(|e| nix::errno::Errno::from_raw(e.into_parts().1.raw_os_error().unwrap_or(libc::EIO)))
}

async fn run(
    fd: AsyncFd<Ino>,
    name: Option<&std::ffi::OsStr>,
    tx: &mpsc::UnboundedSender<Event>,
) -> std::io::Result<()> {
    loop {
        let mut relevant = false;
        let mut dir_gone = false;
        let mut guard = fd.readable().await?;
        match guard.get_inner().0.read_events() {
            Ok(events) => {
                for e in events {
                    if e.mask.intersects(
                        AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF | AddWatchFlags::IN_IGNORED,
                    ) {
                        dir_gone = true;
                    }
                    // The manifest, or the `.env` next to it (its variables).
                    if e.name.as_deref() == name || e.name.is_none() || e.name.as_deref() == Some(".env".as_ref()) {
                        relevant = true;
                    }
                }
            }
            Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
            Err(e) => return Err(e.into()),
        }
        if relevant || dir_gone {
            // Debounce: an editor's save is several events in a row.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while let Ok(more) = fd.get_ref().0.read_events() {
                if more.is_empty() {
                    break;
                }
            }
            if tx.send(Event::Reload).is_err() {
                return Ok(());
            }
        }
        if dir_gone {
            return Err(std::io::Error::other("the manifest's directory was removed or moved"));
        }
    }
}

/// Runs for the life of the agent: the other files the manifest reads (`include:`,
/// `extends: {file:}`; anywhere, so not under the directory's inotify) are looked at every
/// 2 s (their modification time, size and inode), and a change is an [`Event::Reload`].
pub async fn watch_files(mut files: tokio::sync::watch::Receiver<Vec<PathBuf>>, tx: mpsc::UnboundedSender<Event>) {
    use std::os::unix::fs::MetadataExt;
    let stamp = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.mtime(), m.mtime_nsec(), m.len(), m.ino()));
    let mut last: Vec<_> = files.borrow_and_update().iter().map(|p| stamp(p)).collect();
    loop {
        tokio::select! {
            changed = files.changed() => {
                if changed.is_err() {
                    return;
                }
                last = files.borrow_and_update().iter().map(|p| stamp(p)).collect();
            }
            _ = tokio::time::sleep(Duration::from_secs(2)) => {
                let now: Vec<_> = files.borrow().iter().map(|p| stamp(p)).collect();
                if now != last {
                    last = now;
                    if tx.send(Event::Reload).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

async fn poll(manifest: &Path, tx: &mpsc::UnboundedSender<Event>) {
    let stamp = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.modified().ok(), m.len()));
    let mut last = stamp(manifest);
    let dir = manifest.parent().map(Path::to_path_buf);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = stamp(manifest);
        if now != last {
            last = now;
            if tx.send(Event::Reload).is_err() {
                return;
            }
        }
        // Back to inotify once the directory is there.
        if dir.as_deref().is_some_and(|d| d.is_dir()) {
            return;
        }
    }
}
