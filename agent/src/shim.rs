//! `skiff shim`: the small process that owns one replica's container for its whole life, like
//! podman's conmon.
//!
//! # Why
//!
//! The agent (`skiff agent`) must be able to die (SIGKILL, crash, upgrade) without taking its
//! containers down, without their output blocking on a pipe nobody reads, and without losing
//! their exit status. So the agent never holds a container's stdio or is its parent: each replica
//! gets a `skiff shim`, which starts the container through the OCI runtime, copies its stdout and
//! stderr into the replica's log files ([`crate::logs`]), reaps it, and leaves its exit status in
//! a file. A restarted agent finds the shim by `shim.pid`, the container through the runtime's
//! `state`, and the result in `exit.json`.
//!
//! # Contract (the agent relies on exactly this)
//!
//! ```text
//! skiff shim --runtime PATH --runtime-root DIR --bundle DIR --id ID --run-dir DIR
//!            --log-dir DIR [--log-max-size BYTES (10485760)] [--log-max-file N (3)]
//! ```
//!
//! The agent spawns it with stdin = /dev/null, stdout = a pipe it reads (the *report*), stderr =
//! /dev/null. The shim needs nothing from the agent afterwards. Relative paths are made absolute
//! against the working directory at start; the shim then moves to `/` so it never pins a mount.
//!
//! 1. `setsid()` (an `EPERM` because it already leads a process group is fine),
//!    `prctl(PR_SET_CHILD_SUBREAPER)` (the container's init becomes the shim's child once the
//!    runtime's `create` process exits), and SIGPIPE, SIGHUP, SIGINT, SIGTERM have no effect: the
//!    agent's death or a terminal must not take it down. They are *blocked* and read (and
//!    discarded) from a signalfd rather than set to `SIG_IGN`, because an ignored disposition
//!    survives `execve` into the runtime and from there into the container, whose processes would
//!    then ignore SIGTERM; the blocked mask is reset for every child (Rust's `Command` does).
//!    SIGCHLD is blocked and read from the same signalfd. For the same reason every signal the
//!    spawner may have left ignored is reset to its default first, and descriptors inherited
//!    above 2 are closed (a long-lived shim must not hold someone else's pipe open, nor hand it to
//!    the container). The id must be a name (`[A-Za-z0-9][A-Za-z0-9_.-]*`, never an option).
//!    `--run-dir` is created if missing;
//!    `<run-dir>/shim.pid` (decimal) is written atomically, and a stale `exit.json`/`init.pid`/
//!    `started` of an earlier container of the same run dir are removed.
//! 2. Two pipes (container stdout and stderr; read ends close-on-exec and non-blocking) are made.
//!    `RUNTIME --root RUNTIME_ROOT state ID` must fail first (a container of that id exists
//!    already: the shim fails without touching it). Then
//!    `RUNTIME --root RUNTIME_ROOT create --bundle BUNDLE --pid-file <run-dir>/init.pid ID` runs
//!    with stdin = /dev/null and stdout/stderr = the write ends: with `process.terminal` false an
//!    OCI runtime hands its stdio to the container's process (runc, crun and skiff-runtime do).
//!    The shim's copies of the write ends are closed as soon as `create` is spawned, so the read
//!    ends see EOF when the container (and whatever inherited its stdio) is gone. Then
//!    `RUNTIME --root RUNTIME_ROOT start ID` (stdout /dev/null, stderr a pipe of its own). Each
//!    runtime call gets 60 s, after which it is killed by its pid. Once `start` succeeded,
//!    `<run-dir>/started` is made (an agent that adopts the container before it read the
//!    report below learns from it that the container runs). What a failing runtime printed
//!    on stderr (for `create`, that is the container's stderr pipe) is collected with
//!    non-blocking reads for the report (at most 4 KiB); whatever comes through the container's
//!    pipes meanwhile goes to the log as usual, a failing `create`'s message included.
//! 3. The report is exactly one line on stdout, then stdout is closed (/dev/null is put on fd 1):
//!    `{"ok":true,"pid":<pid from init.pid>}` or
//!    `{"ok":false,"error":"<one line: what failed and the runtime's message>"}`. On failure
//!    after `create` was tried, `RUNTIME --root RUNTIME_ROOT delete --force ID` runs first (its
//!    errors ignored; *before* the report, so that an agent retrying at once does not find the
//!    id taken), and the shim exits with status 1.
//! 4. Then one loop, asleep in poll(2) on both pipes and the signalfd while the container runs
//!    (never a busy loop): every chunk read (one 64 KiB buffer) goes to the
//!    [`LogWriter`](crate::logs::LogWriter) of `--log-dir` (rotated at `--log-max-size`, keeping
//!    `--log-max-file` files) as `out` or `err` records; every child is reaped with
//!    `waitpid(-1, WNOHANG)` (orphans of a container without its own pid namespace are
//!    reparented to the shim too). Once the init pid is reaped, the pipes are drained until both
//!    reach EOF or 2 s pass (something outside the container's pid namespace may hold them), the
//!    log is flushed, and `<run-dir>/exit.json` is written durably (temp + fsync + rename + fsync
//!    of the directory): `{"pid":1234,"exit_code":0|null,"signal":9|null,"finished_at":"<RFC
//!    3339 UTC>"}` (`exit_code` for a normal exit, `signal` for a death by signal). Exit status 0
//!    (1 if `exit.json` could not be written).
//! 5. Small on purpose, since one runs per replica on a 1 GB Raspberry Pi: no async runtime, no
//!    threads, one fixed 64 KiB buffer, nothing kept per chunk.
//! 6. A log that cannot be written (disk full, directory gone) never stops the copying: the pipes
//!    are still read, the data is dropped and counted, the writer is reopened at most once a
//!    second when output arrives, and the first record written after a gap says how many bytes
//!    were lost and why (on the `err` stream).
//!
//! A usage error (clap) exits 2 without a report line; the agent takes a missing line as failure.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use clap::Args;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde_json::json;

use crate::logs::{LogWriter, Stream, DEFAULT_MAX_FILES, DEFAULT_MAX_SIZE};

#[derive(Args, Debug)]
pub struct ShimArgs {
    /// The OCI runtime binary
    #[arg(long, value_name = "PATH")]
    pub runtime: PathBuf,
    /// The runtime's state directory (its --root)
    #[arg(long, value_name = "DIR")]
    pub runtime_root: PathBuf,
    /// The container's bundle (holds config.json)
    #[arg(long, value_name = "DIR")]
    pub bundle: PathBuf,
    /// The container id
    #[arg(long)]
    pub id: String,
    /// Where shim.pid, init.pid and exit.json go
    #[arg(long, value_name = "DIR")]
    pub run_dir: PathBuf,
    /// Where the container's stdout/stderr records go
    #[arg(long, value_name = "DIR")]
    pub log_dir: PathBuf,
    /// Rotate the log at this size (0: never)
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_SIZE)]
    pub log_max_size: u64,
    /// Log files kept, the current one included
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_FILES)]
    pub log_max_file: u32,
}

/// How long one runtime call may take before it is killed.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the pipes are drained after the init exited.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// The one read buffer.
const BUF_SIZE: usize = 64 * 1024;
/// Most runtime error text kept for the report.
const MAX_ERROR_TEXT: usize = 4096;
/// `<run-dir>/started`: made once `start` succeeded.
pub const STARTED: &str = "started";

/// Children reaped before the init pid is known (kept to match it later).
const MAX_EARLY_REAPED: usize = 64;

pub fn shim(a: ShimArgs) -> Result<i32> {
    close_inherited_fds();
    reset_signal_dispositions();
    let mut shim = match Shim::new(a) {
        Ok(s) => s,
        Err(e) => {
            report(&json!({"ok": false, "error": one_line(&format!("{e:#}"))}));
            return Ok(1);
        }
    };
    match shim.launch() {
        Ok(pid) => report(&json!({"ok": true, "pid": pid.as_raw()})),
        Err(Failure { message, created }) => {
            if created {
                shim.delete_force();
            }
            report(&json!({"ok": false, "error": one_line(&message)}));
            return Ok(1);
        }
    }
    Ok(shim.supervise())
}

/// Closes every descriptor above 2 the spawner let us inherit (nothing of ours is open yet): a
/// long-lived shim must not keep someone else's pipe open, nor pass it to the container.
fn close_inherited_fds() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return };
    let fds: Vec<i32> =
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).filter(|fd: &i32| *fd > 2).collect();
    // One of them was the directory's own descriptor, closed by now (EBADF, ignored).
    for fd in fds {
        let _ = nix::unistd::close(fd);
    }
}

/// Puts every signal back to its default action (except SIGSEGV/SIGBUS, whose handlers the Rust
/// runtime installed). A signal the spawner ignored (a `nohup`, a shell's background job) would
/// otherwise stay ignored through `execve` into the runtime and the container.
fn reset_signal_dispositions() {
    let keep = [libc::SIGKILL, libc::SIGSTOP, libc::SIGSEGV, libc::SIGBUS];
    for sig in (1..=libc::SIGRTMAX()).filter(|s| !keep.contains(s)) {
        // SAFETY: SIG_DFL installs no handler code; signals the C library reserves fail with EINVAL
        // and are left alone. The process has no other thread yet.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
}

/// Writes the report line on stdout, then puts /dev/null on fd 1 so the agent's pipe sees EOF.
fn report(v: &serde_json::Value) {
    let mut out = io::stdout().lock();
    // The agent may be gone already (EPIPE): nothing else to do about it.
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
    }
}

/// Newlines and control characters become "; " / spaces; runs of separators collapse.
fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for line in s.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !out.is_empty() {
            out.push_str("; ");
        }
        out.extend(line.chars().map(|c| if c.is_control() { ' ' } else { c }));
    }
    out
}

/// A container id as the runtime takes it: never an option, never a path.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 1024
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Why launching failed; `created`: `create` was run, so runtime state may exist.
struct Failure {
    message: String,
    created: bool,
}

impl Failure {
    fn before(message: String) -> Failure {
        Failure { message, created: false }
    }
    fn after(message: String) -> Failure {
        Failure { message, created: true }
    }
}

/// Where a runtime call's stderr goes.
enum StepErr {
    /// The container's stderr pipe (its write end, for `create`): read through `Shim::pipes`.
    Container(OwnedFd),
    /// A pipe of its own, collected.
    Capture,
    Null,
}

/// The container's log, written as well as the disk allows.
struct Log {
    dir: PathBuf,
    max_size: u64,
    max_files: u32,
    writer: Option<LogWriter>,
    /// When opening may be tried again after a failure.
    retry_at: Option<Instant>,
    /// Bytes lost since the last successful write, and why.
    dropped: u64,
    error: String,
}

impl Log {
    fn new(dir: PathBuf, max_size: u64, max_files: u32) -> Log {
        let mut log = Log { dir, max_size, max_files, writer: None, retry_at: None, dropped: 0, error: String::new() };
        log.open();
        log
    }

    fn open(&mut self) {
        match LogWriter::open(&self.dir, self.max_size, self.max_files) {
            Ok(w) => {
                self.writer = Some(w);
                self.retry_at = None;
            }
            Err(e) => self.failed(0, &e),
        }
    }

    fn failed(&mut self, lost: usize, e: &io::Error) {
        self.dropped += lost as u64;
        self.error = e.to_string();
        self.retry_at = Some(Instant::now() + Duration::from_secs(1));
        // Dropping flushes what it can; a torn record is terminated when it is reopened.
        self.writer = None;
    }

    fn write(&mut self, stream: Stream, data: &[u8]) {
        if self.writer.is_none() && self.retry_at.is_none_or(|t| Instant::now() >= t) {
            self.open();
        }
        let Some(w) = self.writer.as_mut() else {
            self.dropped += data.len() as u64;
            return;
        };
        if self.dropped > 0 {
            let note =
                format!("skiff shim: {} bytes of the container's output were lost: {}\n", self.dropped, self.error);
            if let Err(e) = w.write(Stream::Err, note.as_bytes()) {
                self.failed(data.len(), &e);
                return;
            }
            self.dropped = 0;
        }
        if let Err(e) = w.write(stream, data) {
            self.failed(data.len(), &e);
        }
    }

    fn close(&mut self) {
        if let Some(mut w) = self.writer.take() {
            let _ = w.flush();
        }
    }
}

/// A pipe from the container, `None` once it reached EOF.
struct Pipe {
    file: Option<File>,
    stream: Stream,
}

struct Shim {
    runtime: PathBuf,
    runtime_root: PathBuf,
    bundle: PathBuf,
    id: String,
    run_dir: PathBuf,
    sigfd: SignalFd,
    /// Container stdout, stderr.
    pipes: [Pipe; 2],
    log: Log,
    buf: Box<[u8]>,
    /// The container's init, once known, and how it ended.
    init: Option<Pid>,
    init_exit: Option<(WaitStatus, SystemTime)>,
    /// Children reaped before the init pid was known.
    early: Vec<(WaitStatus, SystemTime)>,
    /// The runtime call in progress and its status once reaped.
    step: Option<Pid>,
    step_exit: Option<WaitStatus>,
    /// What the runtime said on stderr during the current call.
    error_text: Vec<u8>,
    collect_errors: bool,
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))
}

fn set_nonblocking(fd: &impl AsRawFd) -> io::Result<()> {
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map(|_| ()).map_err(io::Error::from)
}

impl Shim {
    /// Step 1 and the pipes: everything before the runtime is called.
    fn new(a: ShimArgs) -> Result<Shim> {
        // Already a process group leader (EPERM) is as good: out of the agent's group either way.
        let _ = nix::unistd::setsid();
        nix::sys::prctl::set_child_subreaper(true).context("prctl(PR_SET_CHILD_SUBREAPER)")?;
        let mut mask = SigSet::empty();
        for s in [Signal::SIGCHLD, Signal::SIGPIPE, Signal::SIGHUP, Signal::SIGINT, Signal::SIGTERM] {
            mask.add(s);
        }
        mask.thread_block().context("blocking signals")?;
        let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .context("creating a signalfd")?;
        let runtime = if a.runtime.components().count() == 1 { a.runtime.clone() } else { absolute(&a.runtime)? };
        let runtime_root = absolute(&a.runtime_root)?;
        let bundle = absolute(&a.bundle)?;
        let run_dir = absolute(&a.run_dir)?;
        let log_dir = absolute(&a.log_dir)?;

        nix::unistd::chdir("/").context("chdir /")?;
        if !valid_id(&a.id) {
            bail!("invalid container id {:?}: use letters, digits, '_', '.', '-' (not first)", a.id);
        }

        skiff_images::fsutil::create_private_dir(&run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        for stale in ["exit.json", "init.pid", STARTED] {
            match std::fs::remove_file(run_dir.join(stale)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", run_dir.join(stale).display()))
                }
                _ => {}
            }
        }
        let pid_file = run_dir.join("shim.pid");
        skiff_images::fsutil::write_atomic(&run_dir, &pid_file, std::process::id().to_string().as_bytes())
            .with_context(|| format!("writing {}", pid_file.display()))?;

        let log = Log::new(log_dir, a.log_max_size, a.log_max_file);
        Ok(Shim {
            runtime,
            runtime_root,
            bundle,
            id: a.id,
            run_dir,
            sigfd,
            pipes: [Pipe { file: None, stream: Stream::Out }, Pipe { file: None, stream: Stream::Err }],
            log,
            buf: vec![0u8; BUF_SIZE].into_boxed_slice(),
            init: None,
            init_exit: None,
            early: Vec::new(),
            step: None,
            step_exit: None,
            error_text: Vec::new(),
            collect_errors: false,
        })
    }

    /// Steps 2 and 3: create and start the container; returns its init pid.
    fn launch(&mut self) -> Result<Pid, Failure> {
        let id = self.id.clone();
        let state = self.step(os(&["state", &id]), Stdio::null(), StepErr::Null);
        if state.is_ok() {
            return Err(Failure::before(format!(
                "a container {} exists already in {}: delete it first",
                self.id,
                self.runtime_root.display()
            )));
        }
        let (out_r, out_w) = pipe().map_err(|e| Failure::before(format!("creating a pipe: {e}")))?;
        let (err_r, err_w) = pipe().map_err(|e| Failure::before(format!("creating a pipe: {e}")))?;
        self.pipes[0].file = Some(out_r);
        self.pipes[1].file = Some(err_r);

        let pid_file = self.run_dir.join("init.pid");
        let mut args = os(&["create", "--bundle"]);
        args.extend([self.bundle.clone().into_os_string(), "--pid-file".into(), pid_file.clone().into_os_string()]);
        args.push(id.clone().into());
        self.step(args, Stdio::from(out_w), StepErr::Container(err_w))
            .map_err(|e| Failure::after(format!("creating container {}: {e}", self.id)))?;
        let pid = read_pid(&pid_file).map_err(Failure::after)?;
        self.init = Some(pid);
        // The init may already have been reaped (killed between create and now).
        if let Some(i) = self.early.iter().position(|(st, _)| st.pid() == Some(pid)) {
            self.init_exit = Some(self.early.swap_remove(i));
        }
        self.early = Vec::new();
        self.step(os(&["start", &id]), Stdio::null(), StepErr::Capture)
            .map_err(|e| Failure::after(format!("starting container {}: {e}", self.id)))?;
        // For an agent that adopts the container before it heard this report: it started.
        let _ = std::fs::File::create(self.run_dir.join(STARTED));
        Ok(pid)
    }

    /// `RUNTIME --root R delete --force ID`, errors ignored.
    fn delete_force(&mut self) {
        let id = self.id.clone();
        let _ = self.step(os(&["delete", "--force", &id]), Stdio::null(), StepErr::Null);
    }

    /// Runs one runtime call to its end (killing it after [`STEP_TIMEOUT`]), copying the container
    /// pipes to the log meanwhile. Err: the runtime's failure, with what it printed on stderr.
    fn step(&mut self, args: Vec<OsString>, stdout: Stdio, stderr: StepErr) -> Result<(), String> {
        let mut cmd = Command::new(&self.runtime);
        cmd.arg("--root").arg(&self.runtime_root).args(&args).stdin(Stdio::null()).stdout(stdout);
        let via_container = matches!(stderr, StepErr::Container(_));
        match stderr {
            StepErr::Container(fd) => cmd.stderr(Stdio::from(fd)),
            StepErr::Capture => cmd.stderr(Stdio::piped()),
            StepErr::Null => cmd.stderr(Stdio::null()),
        };
        let what = format!("`{} {}`", self.runtime.display(), args.first().map_or("".into(), |a| a.to_string_lossy()));
        // Spawning drops `cmd`'s copies of the write ends once it returns.
        let spawned = cmd.spawn();
        drop(cmd);
        let mut child = spawned.map_err(|e| format!("running {}: {e}", self.runtime.display()))?;
        let own_err: Option<File> = child.stderr.take().map(|e| File::from(OwnedFd::from(e)));
        if let Some(f) = &own_err {
            let _ = set_nonblocking(f);
        }
        let mut own_err = own_err;
        let pid = Pid::from_raw(child.id() as i32);
        // `child` is reaped by our own waitpid(-1) below, never by `Child::wait`.
        drop(child);
        self.step = Some(pid);
        self.step_exit = None;
        self.error_text.clear();
        self.collect_errors = via_container;
        let deadline = Instant::now() + STEP_TIMEOUT;
        let mut timed_out = false;
        loop {
            self.reap();
            if self.step_exit.is_some() {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                // Still our unreaped child: the pid cannot have been reused.
                let _ = kill(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None).map(|st| self.step_exit = Some(st));
                timed_out = true;
                break;
            }
            let wait = PollTimeout::try_from(deadline - now).unwrap_or(PollTimeout::MAX);
            let ready = self.wait(wait, own_err.as_ref());
            if ready.extra {
                if let Some(f) = own_err.as_mut() {
                    if !collect(f, &mut self.buf, &mut self.error_text) {
                        own_err = None;
                    }
                }
            }
        }
        // What the runtime printed just before it exited.
        for i in 0..2 {
            self.drain(i);
        }
        if let Some(f) = own_err.as_mut() {
            while collect(f, &mut self.buf, &mut self.error_text) {}
        }
        self.collect_errors = false;
        self.step = None;
        let status = self.step_exit.take();
        let message = one_line(&String::from_utf8_lossy(&self.error_text));
        self.error_text = Vec::new();
        let failure = match status {
            _ if timed_out => format!("{what} did not finish within {} s (killed)", STEP_TIMEOUT.as_secs()),
            Some(WaitStatus::Exited(_, 0)) => return Ok(()),
            Some(WaitStatus::Exited(_, code)) => format!("{what} exited with status {code}"),
            Some(WaitStatus::Signaled(_, sig, _)) => format!("{what} was killed by {sig}"),
            _ => format!("{what} ended in an unknown way"),
        };
        Err(if message.is_empty() { failure } else { format!("{failure}: {message}") })
    }

    /// Step 4: copy the output until the init exited and the pipes are done; write exit.json.
    fn supervise(&mut self) -> i32 {
        let mut drain_until: Option<Instant> = None;
        loop {
            self.reap();
            if self.init_exit.is_some() {
                let until = *drain_until.get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
                let now = Instant::now();
                if self.pipes.iter().all(|p| p.file.is_none()) || now >= until {
                    break;
                }
                self.wait(PollTimeout::try_from(until - now).unwrap_or(PollTimeout::MAX), None);
            } else {
                self.wait(PollTimeout::NONE, None);
            }
        }
        self.log.close();
        let Some((status, at)) = self.init_exit else { return 1 };
        let (code, signal) = match status {
            WaitStatus::Exited(_, c) => (Some(c), None),
            WaitStatus::Signaled(_, s, _) => (None, Some(s as i32)),
            _ => (None, None),
        };
        let record = json!({
            "pid": self.init.map(Pid::as_raw),
            "exit_code": code,
            "signal": signal,
            "finished_at": humantime::format_rfc3339_nanos(at).to_string(),
        });
        let path = self.run_dir.join("exit.json");
        match skiff_images::fsutil::write_atomic(&self.run_dir, &path, format!("{record}\n").as_bytes()) {
            Ok(()) => 0,
            Err(_) => 1,
        }
    }

    /// Sleeps in poll(2) until a pipe, the signalfd or `extra` is ready (or `timeout`); copies one
    /// chunk of each ready pipe to the log and empties the signalfd.
    fn wait(&mut self, timeout: PollTimeout, extra: Option<&File>) -> Ready {
        let mut fds: Vec<PollFd> = Vec::with_capacity(4);
        let mut which: [Option<usize>; 4] = [None; 4];
        fds.push(PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN));
        for (i, p) in self.pipes.iter().enumerate() {
            if let Some(f) = &p.file {
                which[fds.len()] = Some(i);
                fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
            }
        }
        let extra_at = extra.map(|f| {
            fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        let mut ready = Ready { extra: false };
        match poll(&mut fds, timeout) {
            Ok(0) | Err(Errno::EINTR) => return ready,
            Ok(_) => {}
            Err(_) => {
                // Cannot happen with valid descriptors; avoid spinning if it ever does.
                std::thread::sleep(Duration::from_millis(100));
                return ready;
            }
        }
        let hit = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
        let sig = hit(&fds[0]);
        let mut pipes = [false; 2];
        for (n, fd) in fds.iter().enumerate() {
            if let (Some(i), true) = (which[n], hit(fd)) {
                pipes[i] = true;
            }
        }
        ready.extra = extra_at.is_some_and(|n| hit(&fds[n]));
        drop(fds);
        if sig {
            // SIGCHLD is handled by reaping; the others are meant to have no effect.
            while let Ok(Some(_)) = self.sigfd.read_signal() {}
        }
        for (i, p) in pipes.iter().enumerate() {
            if *p {
                self.read_once(i);
            }
        }
        ready
    }

    /// One read from pipe `i` into the log; false once it is at EOF (or broken) or empty.
    fn read_once(&mut self, i: usize) -> bool {
        let Some(f) = self.pipes[i].file.as_mut() else { return false };
        let n = loop {
            match f.read(&mut self.buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => break 0,
            }
        };
        if n == 0 {
            self.pipes[i].file = None;
            return false;
        }
        let stream = self.pipes[i].stream;
        self.log.write(stream, &self.buf[..n]);
        if self.collect_errors && stream == Stream::Err {
            keep(&mut self.error_text, &self.buf[..n]);
        }
        true
    }

    /// Reads pipe `i` until it would block.
    fn drain(&mut self, i: usize) {
        while self.read_once(i) {}
    }

    /// Reaps every child that exited.
    fn reap(&mut self) {
        loop {
            let st = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(st) => st,
            };
            let Some(pid) = st.pid() else { continue };
            if !matches!(st, WaitStatus::Exited(..) | WaitStatus::Signaled(..)) {
                continue;
            }
            let now = SystemTime::now();
            if Some(pid) == self.step {
                self.step_exit = Some(st);
            } else if Some(pid) == self.init {
                self.init_exit = Some((st, now));
            } else if self.init.is_none() && self.early.len() < MAX_EARLY_REAPED {
                self.early.push((st, now));
            }
        }
    }
}

/// What [`Shim::wait`] found ready besides the pipes and the signalfd.
struct Ready {
    extra: bool,
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// A pipe: the read end close-on-exec and non-blocking, the write end close-on-exec (the
/// runtime's `dup2` onto its stdout/stderr clears that flag on the copy the container gets).
fn pipe() -> io::Result<(File, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    set_nonblocking(&r)?;
    Ok((File::from(r), w))
}

/// One non-blocking read of `f` kept into `text`; false at EOF, error or nothing to read.
fn collect(f: &mut File, buf: &mut [u8], text: &mut Vec<u8>) -> bool {
    loop {
        match f.read(buf) {
            Ok(0) => return false,
            Ok(n) => {
                keep(text, &buf[..n]);
                return true;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

fn keep(text: &mut Vec<u8>, data: &[u8]) {
    let room = MAX_ERROR_TEXT.saturating_sub(text.len());
    text.extend_from_slice(&data[..data.len().min(room)]);
}

/// The init pid the runtime wrote.
fn read_pid(path: &Path) -> Result<Pid, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    match text.trim().parse::<i32>() {
        Ok(p) if p > 0 => Ok(Pid::from_raw(p)),
        _ => Err(format!("{}: {:?} is not a pid", path.display(), text.trim())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_becomes_one_line() {
        assert_eq!(one_line("a\n\n  b  \r\nc\td"), "a; b; c d");
        assert_eq!(one_line(""), "");
        assert_eq!(one_line("\n\n"), "");
    }

    #[test]
    fn ids() {
        assert!(valid_id("web-1"));
        assert!(valid_id("a.b_c"));
        assert!(!valid_id("--force"));
        assert!(!valid_id("../x"));
        assert!(!valid_id(""));
        assert!(!valid_id("a/b"));
    }

    #[test]
    fn pid_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("init.pid");
        std::fs::write(&p, "1234").unwrap();
        assert_eq!(read_pid(&p).unwrap(), Pid::from_raw(1234));
        std::fs::write(&p, "0").unwrap();
        assert!(read_pid(&p).unwrap_err().contains("not a pid"));
        std::fs::write(&p, "x").unwrap();
        assert!(read_pid(&p).is_err());
        assert!(read_pid(&dir.path().join("none")).unwrap_err().contains("reading"));
    }

    #[test]
    fn error_text_is_bounded() {
        let mut t = Vec::new();
        keep(&mut t, &[b'x'; 3000]);
        keep(&mut t, &[b'y'; 3000]);
        assert_eq!(t.len(), MAX_ERROR_TEXT);
    }

    #[test]
    fn log_write_errors_are_counted_and_reported_after_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        // A file where the directory should be: opening fails, output is dropped and counted.
        std::fs::write(&logs, "").unwrap();
        let mut log = Log::new(logs.clone(), 0, 3);
        assert!(log.writer.is_none());
        log.write(Stream::Out, b"lost line\n");
        assert_eq!(log.dropped, 10);
        std::fs::remove_file(&logs).unwrap();
        // Retried no sooner than the back-off allows.
        log.retry_at = Some(Instant::now());
        log.write(Stream::Out, b"kept\n");
        log.close();
        let recs = crate::logs::tail(&logs, 10).unwrap();
        assert_eq!(recs.len(), 2, "{recs:?}");
        assert_eq!(recs[0].stream, Stream::Err);
        assert!(recs[0].line.contains("10 bytes"), "{}", recs[0].line);
        assert_eq!((recs[1].stream, recs[1].line.as_str()), (Stream::Out, "kept"));
        assert_eq!(log.dropped, 0);
    }
}
