//! Memory of a command under test: its peak RSS, and a memory cgroup of the test's own that
//! caps it, so that a memory bomb that works (on old code, or a regression) is OOM-killed at
//! the cap instead of taking the machine's memory.
//!
//! * [`MemCap::new`]`(limit)` makes `<memory hierarchy>/skiff-test-memcap-<pid>-<n>` (v1
//!   `memory.limit_in_bytes`, or cgroup2 `memory.max` on a pure v2 host) and
//!   [`MemCap::wrap`] gives a command prefix that moves the command into it before it
//!   execs (so its pid stays the command's). `Drop` kills whatever is left in it (by pid)
//!   and removes it. `None` when no memory controller is mounted: then nothing caps it.
//! * [`run_peak`] runs a command to its end (or a timeout, then kills it) and returns its
//!   output and its own peak RSS (`/usr/bin/time -f %M`, see there why).

use std::fs;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::{cgroup_mounts, read};

static N: AtomicUsize = AtomicUsize::new(0);

/// A memory cgroup with a hard limit (see the module docs).
pub struct MemCap {
    dir: PathBuf,
    v2: bool,
}

impl MemCap {
    /// A new memory cgroup limited to `limit` bytes; `None` without a memory controller.
    pub fn new(limit: u64) -> Option<MemCap> {
        let mounts = cgroup_mounts();
        let (base, v2) = match mounts.iter().find(|m| !m.v2 && m.controllers.iter().any(|c| c == "memory")) {
            Some(m) => (m.mount_point.clone(), false),
            None => {
                let m = mounts.iter().find(|m| m.v2 && m.mount_point == std::path::Path::new("/sys/fs/cgroup"))?;
                if !read(m.mount_point.join("cgroup.subtree_control")).split_whitespace().any(|c| c == "memory") {
                    return None;
                }
                (m.mount_point.clone(), true)
            }
        };
        let dir = base.join(format!("skiff-test-memcap-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
        fs::create_dir(&dir).ok()?;
        let cap = MemCap { dir, v2 };
        let file = if v2 { "memory.max" } else { "memory.limit_in_bytes" };
        fs::write(cap.dir.join(file), limit.to_string()).ok()?;
        if v2 {
            let _ = fs::write(cap.dir.join("memory.swap.max"), "0");
        }
        Some(cap)
    }

    /// A command prefix that runs the command in this cgroup (`sh -c 'echo $$ > ... && exec
    /// "$@"' sh`): put the command and its arguments after it.
    pub fn wrap(&self) -> Vec<String> {
        let procs = self.dir.join("cgroup.procs");
        vec!["sh".into(), "-c".into(), format!("echo $$ > '{}' && exec \"$@\"", procs.display()), "sh".into()]
    }

    /// A [`Command`] for `program args...` in this cgroup.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let w = self.wrap();
        let mut c = Command::new(&w[0]);
        c.args(&w[1..]).arg(program);
        c
    }

    /// How many processes the kernel OOM-killed in it.
    pub fn oom_kills(&self) -> u64 {
        let (file, key) = if self.v2 { ("memory.events", "oom_kill") } else { ("memory.oom_control", "oom_kill") };
        read(self.dir.join(file)).lines().find_map(|l| l.strip_prefix(key)?.trim().parse().ok()).unwrap_or(0)
    }
}

impl Drop for MemCap {
    fn drop(&mut self) {
        for _ in 0..50 {
            let pids: Vec<i32> =
                read(self.dir.join("cgroup.procs")).lines().filter_map(|l| l.trim().parse().ok()).collect();
            if pids.is_empty() {
                break;
            }
            for p in pids {
                // SAFETY: kill(2) with a pid read from this cgroup's own process list.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

/// What [`run_peak`] saw.
#[derive(Debug)]
pub struct Measured {
    pub output: Output,
    /// The command's own peak RSS, in KiB (`u64::MAX` when `time` could not tell).
    pub peak_rss_kib: u64,
    /// Killed at the timeout.
    pub timed_out: bool,
}

impl Measured {
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    /// The signal that killed it, if one did.
    pub fn signal(&self) -> Option<i32> {
        self.output.status.signal()
    }
}

/// Runs `cmd` (stdin from /dev/null, stdout and stderr into files of a scratch directory)
/// under `/usr/bin/time -f %M` until it exits or `timeout` passes (then its process group is
/// killed), and returns its output and peak RSS.
///
/// Why `time` and not `wait4` here: a child's `ru_maxrss` starts from its parent's RSS at
/// `fork` (and from the parent's *peak* when spawned with `vfork`/`posix_spawn`, as std
/// does), so a child of a big test process would report the test's memory; `time` is small.
pub fn run_peak(cmd: Command, timeout: Duration) -> Measured {
    let dir = tempfile::tempdir().expect("a scratch directory for the output");
    let (out_p, err_p, rss_p) = (dir.path().join("out"), dir.path().join("err"), dir.path().join("rss"));
    let out = fs::File::create(&out_p).expect("create the stdout file");
    let err = fs::File::create(&err_p).expect("create the stderr file");
    let mut timed = Command::new("/usr/bin/time");
    timed.arg("-q").arg("-f").arg("%M").arg("-o").arg(&rss_p).arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        timed.current_dir(d);
    }
    timed.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
    let mut child = timed.spawn().unwrap_or_else(|e| panic!("spawn {timed:?}: {e}"));
    let pid = child.id() as libc::pid_t;
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for the command") {
            break st;
        }
        if !timed_out && start.elapsed() > timeout {
            timed_out = true;
            // SAFETY: kill(2) of the process group of our own child (its own group).
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let slurp = |p: &PathBuf| {
        let mut v = Vec::new();
        if let Ok(mut f) = fs::File::open(p) {
            let _ = f.read_to_end(&mut v);
        }
        v
    };
    let rss = String::from_utf8_lossy(&slurp(&rss_p)).lines().filter_map(|l| l.trim().parse().ok()).next_back();
    Measured {
        output: Output { status, stdout: slurp(&out_p), stderr: slurp(&err_p) },
        peak_rss_kib: rss.unwrap_or(u64::MAX),
        timed_out,
    }
}
