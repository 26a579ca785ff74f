//! Processes the agent did not start (containers, shims of an earlier agent): liveness with a
//! guard against recycled pids, and waiting for an exit through a pidfd.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use tokio::io::unix::AsyncFd;

/// The start time of `pid` (field 22 of /proc/PID/stat, clock ticks since boot): with the pid,
/// it names one process for good.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 22 is index 19.
    if fields.first() == Some(&"Z") {
        return None; // a zombie has exited
    }
    fields.get(19)?.parse().ok()
}

/// Whether `pid` is alive (not a zombie) and, when `started` is given, the same process.
pub fn alive(pid: i32, started: Option<u64>) -> bool {
    match (start_time(pid), started) {
        (Some(t), Some(want)) => t == want,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// A pid written in a file (decimal, optional newline).
pub fn read_pid_file(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok().filter(|p| *p > 0)
}

/// Resolves once `pid` has exited (or does not exist). Uses a pidfd (Linux 5.3+), else polls.
pub async fn wait_exit(pid: i32) {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd >= 0 {
        // SAFETY: fd was just returned by pidfd_open and is owned by nobody else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: the AsyncFd owns the pidfd for its whole life; nothing else closes it.
        if let Ok(afd) = unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) } {
            // A pidfd becomes readable when the process exits; it never becomes unreadable.
            let _ = afd.readable().await;
            return;
        }
    } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return;
    }
    while start_time(pid).is_some() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn waits_for_an_exit() {
        let mut child = std::process::Command::new("sleep").arg("0.2").spawn().unwrap();
        let pid = child.id() as i32;
        let t = start_time(pid);
        assert!(t.is_some());
        assert!(alive(pid, t));
        assert!(!alive(pid, t.map(|t| t + 1)), "another start time is another process");
        let waiter = tokio::spawn(wait_exit(pid));
        // The child is ours: reap it from a blocking thread so the pidfd sees the exit.
        tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
        tokio::time::timeout(Duration::from_secs(10), waiter).await.expect("wait_exit returns").unwrap();
        assert!(!alive(pid, t));
    }
}
