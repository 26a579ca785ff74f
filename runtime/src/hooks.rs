//! OCI hooks: run each hook with the state JSON on stdin and its timeout.
//!
//! Each hook is spawned with `path`, `args` (`args[0]` is argv0; without args argv0 is `path`)
//! and exactly `env` (an empty environment when absent; entries without `=` are skipped). Its
//! working directory and every other attribute are the caller's. The state JSON goes to its
//! stdin; a hook that does not read it (EPIPE) is fine. Like runc, stdout and stderr are
//! captured (the last 4 KiB of each) and only shown in the error when the hook fails.
//!
//! Waiting is single-threaded: one `poll` over the stdin/stdout/stderr pipes and a pidfd of the
//! hook (Linux >= 5.3), with the remaining timeout. Without pidfds it falls back to polling the
//! pipes in 10 ms steps and `try_wait`. The hook's exit ends the wait even if a process it left
//! behind still holds its stdout or stderr. On timeout the hook gets SIGKILL and is reaped
//! (processes it forked are not followed, as in runc).
//!
//! Writing to a hook that exited must give EPIPE rather than kill the runtime: SIGPIPE must be
//! ignored in the calling process, which the Rust runtime does at startup for every binary.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use oci_spec::runtime::Hook;

/// How much of the end of a hook's stdout and of its stderr is kept for error messages.
const OUTPUT_TAIL: usize = 4096;

/// Poll period when the kernel gives no pidfd.
const FALLBACK_TICK: Duration = Duration::from_millis(10);

/// Reads (of 8 KiB) per stream per wake-up, so that a hook writing without pause cannot hold
/// the loop past its timeout.
const MAX_READS_PER_WAKEUP: usize = 16;

/// Reads per stream once the hook is gone: more than a pipe can hold (1 MiB at most for an
/// unprivileged F_SETPIPE_SZ), yet bounded if a process it left behind keeps writing.
const MAX_READS_AFTER_EXIT: usize = 160;

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The hook in config.json cannot be run as written.
    #[error("{kind} hook {path}: {reason}")]
    Invalid { kind: &'static str, path: String, reason: String },

    /// The hook could not be started (missing, not executable, ...).
    #[error("{kind} hook {path}: cannot start: {source}")]
    Spawn {
        kind: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },

    /// The hook exited with a non-zero status or was killed by a signal.
    #[error("{kind} hook {path}: {status}{output}")]
    Failed {
        kind: &'static str,
        path: String,
        /// "exited with status N" or "killed by signal SIGx".
        status: String,
        /// "; stderr: \"...\"; stdout: \"...\"", empty when the hook printed nothing.
        output: String,
    },

    /// The hook ran past its timeout and was killed.
    #[error("{kind} hook {path}: timed out after {secs} s (killed){output}")]
    Timeout { kind: &'static str, path: String, secs: i64, output: String },

    /// Talking to or waiting for the hook failed.
    #[error("{kind} hook {path}: {what}: {source}")]
    Io {
        kind: &'static str,
        path: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Runs `hooks` in order; the first failure stops and is returned.
/// `kind` is the hook's name in config.json (e.g. "createRuntime"), used in errors.
pub fn run(hooks: &[Hook], kind: &'static str, state_json: &str) -> Result<(), HookError> {
    hooks.iter().try_for_each(|hook| run_hook(hook, kind, state_json))
}

/// Runs every hook in order even when some fail, and returns the failures. For `poststart`
/// and `poststop`, whose failures the runtime spec wants logged as warnings only.
pub fn run_all(hooks: &[Hook], kind: &'static str, state_json: &str) -> Vec<HookError> {
    hooks.iter().filter_map(|hook| run_hook(hook, kind, state_json).err()).collect()
}

/// Runs one hook: spawn, state on stdin, wait with its timeout.
pub fn run_hook(hook: &Hook, kind: &'static str, state_json: &str) -> Result<(), HookError> {
    run_one(hook, kind, state_json, true)
}

fn run_one(hook: &Hook, kind: &'static str, state_json: &str, use_pidfd: bool) -> Result<(), HookError> {
    let path = hook.path();
    let shown = path.display().to_string();
    let invalid = |reason: String| HookError::Invalid { kind, path: shown.clone(), reason };
    if !path.is_absolute() {
        return Err(invalid("path must be absolute".into()));
    }
    let timeout = match hook.timeout() {
        None => None,
        Some(secs) if secs > 0 => Some(secs),
        Some(secs) => return Err(invalid(format!("timeout must be greater than zero, got {secs}"))),
    };

    let mut cmd = Command::new(path);
    if let Some((argv0, rest)) = hook.args().as_deref().and_then(<[String]>::split_first) {
        cmd.arg0(argv0).args(rest);
    }
    cmd.env_clear();
    for entry in hook.env().as_deref().unwrap_or_default() {
        if let Some((key, value)) = entry.split_once('=') {
            cmd.env(key, value);
        }
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());

    let mut child = cmd.spawn().map_err(|source| HookError::Spawn { kind, path: shown.clone(), source })?;
    // A deadline too far to represent is no deadline.
    let deadline = timeout.and_then(|secs| Instant::now().checked_add(Duration::from_secs(secs.unsigned_abs())));

    let outcome = match supervise(&mut child, state_json.as_bytes(), deadline, use_pidfd) {
        Ok(outcome) => outcome,
        Err((what, source)) => {
            // Leave no process behind; it may already be gone.
            let _ = child.kill();
            let _ = child.wait();
            return Err(HookError::Io { kind, path: shown, what, source });
        }
    };
    let output = describe_output(&outcome.stdout, &outcome.stderr);
    match outcome.status {
        None => Err(HookError::Timeout { kind, path: shown, secs: timeout.unwrap_or_default(), output }),
        Some(status) if status.success() => Ok(()),
        Some(status) => Err(HookError::Failed { kind, path: shown, status: describe_status(status), output }),
    }
}

struct Outcome {
    /// `None` when the hook was killed at its deadline.
    status: Option<ExitStatus>,
    stdout: Tail,
    stderr: Tail,
}

type IoFailure = (&'static str, io::Error);

/// Feeds `input` to the child's stdin, collects the tails of its stdout and stderr and waits
/// for it to exit or for `deadline` (then kills it).
fn supervise(
    child: &mut Child,
    input: &[u8],
    deadline: Option<Instant>,
    use_pidfd: bool,
) -> Result<Outcome, IoFailure> {
    let mut stdin = child.stdin.take().filter(|_| !input.is_empty());
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let nonblock = |fd: Option<RawFd>| fd.map_or(Ok(()), set_nonblocking);
    nonblock(stdin.as_ref().map(AsRawFd::as_raw_fd))
        .and(nonblock(stdout.as_ref().map(AsRawFd::as_raw_fd)))
        .and(nonblock(stderr.as_ref().map(AsRawFd::as_raw_fd)))
        .map_err(|e| ("setting up the hook's pipes", e))?;
    let pidfd = if use_pidfd { pidfd_open(child.id()) } else { None };

    let mut out = Tail::default();
    let mut err = Tail::default();
    let mut written = 0;
    let status = loop {
        if pidfd.is_none() {
            if let Some(status) = child.try_wait().map_err(|e| ("waiting for the hook", e))? {
                break Some(status);
            }
        }
        let mut wait = match deadline {
            None => None,
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                // Past the deadline, unless it has just exited.
                _ => break child.try_wait().map_err(|e| ("waiting for the hook", e))?,
            },
        };
        if pidfd.is_none() {
            wait = Some(wait.map_or(FALLBACK_TICK, |w| w.min(FALLBACK_TICK)));
        }

        const IN: PollFlags = PollFlags::POLLIN;
        let mut fds = Vec::with_capacity(4);
        let i_in = watch(&mut fds, stdin.as_ref(), PollFlags::POLLOUT);
        let i_out = watch(&mut fds, stdout.as_ref(), IN);
        let i_err = watch(&mut fds, stderr.as_ref(), IN);
        let i_pid = watch(&mut fds, pidfd.as_ref(), IN);
        match poll(&mut fds, poll_timeout(wait)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(("waiting for the hook", e.into())),
        }
        let ready =
            |i: Option<usize>| i.and_then(|i| fds.get(i)).and_then(|fd| fd.revents()).is_some_and(|r| !r.is_empty());
        let (in_ready, out_ready, err_ready, exited) = (ready(i_in), ready(i_out), ready(i_err), ready(i_pid));
        drop(fds);

        if in_ready {
            if let Some(pipe) = stdin.as_mut() {
                match pipe.write(input.get(written..).unwrap_or_default()) {
                    Ok(n) => written += n,
                    Err(e) if is_transient(&e) => {}
                    // EPIPE: the hook does not read its stdin (or stopped); anything else:
                    // nothing more can be sent. Either way it is the hook's business.
                    Err(_) => written = input.len(),
                }
            }
            if written >= input.len() {
                stdin = None; // EOF for the hook
            }
        }
        if out_ready {
            read_available(&mut stdout, &mut out, MAX_READS_PER_WAKEUP);
        }
        if err_ready {
            read_available(&mut stderr, &mut err, MAX_READS_PER_WAKEUP);
        }
        if exited {
            break Some(child.wait().map_err(|e| ("waiting for the hook", e))?);
        }
    };

    let status = match status {
        Some(status) => Some(status),
        None => {
            child.kill().map_err(|e| ("killing the hook at its timeout", e))?;
            child.wait().map_err(|e| ("waiting for the hook", e))?;
            None
        }
    };
    // Whatever it wrote before exiting is in the pipes; do not wait for an EOF that a process
    // it left behind may hold back.
    read_available(&mut stdout, &mut out, MAX_READS_AFTER_EXIT);
    read_available(&mut stderr, &mut err, MAX_READS_AFTER_EXIT);
    Ok(Outcome { status, stdout: out, stderr: err })
}

/// Adds `fd` (if any) to the poll set; returns its index there.
fn watch<'fd, F: AsFd>(fds: &mut Vec<PollFd<'fd>>, fd: Option<&'fd F>, events: PollFlags) -> Option<usize> {
    fd.map(|fd| {
        fds.push(PollFd::new(fd.as_fd(), events));
        fds.len() - 1
    })
}

/// Reads what `pipe` has (up to `max_reads` reads) without blocking; closes it at EOF or on
/// error.
fn read_available<R: Read>(pipe: &mut Option<R>, tail: &mut Tail, max_reads: usize) {
    let mut buf = [0u8; 8192];
    for _ in 0..max_reads {
        let Some(reader) = pipe.as_mut() else { return };
        match reader.read(&mut buf) {
            Ok(0) => *pipe = None,
            Ok(n) => tail.push(buf.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => *pipe = None,
        }
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted)
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    let flags = fcntl(fd, FcntlArg::F_GETFL)?;
    fcntl(fd, FcntlArg::F_SETFL(OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// A pidfd for the child `pid` (not reaped yet, so the pid cannot be reused), or `None` when
/// the kernel has no pidfd_open (before 5.3) or refuses it.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: pidfd_open(2) takes a pid and flags by value and returns a new descriptor
    // (close-on-exec) or -1; no memory is shared with the kernel.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = RawFd::try_from(ret).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nothing else.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Milliseconds for poll, rounded up so that a wait never ends just before its deadline.
fn poll_timeout(wait: Option<Duration>) -> PollTimeout {
    match wait {
        None => PollTimeout::NONE,
        Some(w) => {
            let ms = w.as_nanos().div_ceil(1_000_000);
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
        }
    }
}

fn describe_status(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    match status.signal() {
        Some(sig) => {
            let name = Signal::try_from(sig).map_or_else(|_| sig.to_string(), |s| s.to_string());
            let core = if status.core_dumped() { " (core dumped)" } else { "" };
            format!("killed by signal {name}{core}")
        }
        None => format!("ended with {status}"),
    }
}

/// `; stderr: "..."; stdout: "..."` for what the hook printed, on one line.
fn describe_output(stdout: &Tail, stderr: &Tail) -> String {
    let mut s = String::new();
    for (name, tail) in [("stderr", stderr), ("stdout", stdout)] {
        if let Some(text) = tail.text() {
            s.push_str(&format!("; {name}: {text:?}"));
        }
    }
    s
}

/// The last `OUTPUT_TAIL` bytes (or so) of a stream.
#[derive(Default)]
struct Tail {
    buf: Vec<u8>,
    cut: bool,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        if self.buf.len() > 2 * OUTPUT_TAIL {
            let excess = self.buf.len() - OUTPUT_TAIL;
            self.buf.drain(..excess);
            self.cut = true;
        }
    }

    /// The kept text, starting at a line boundary when the beginning was cut; `None` if blank.
    fn text(&self) -> Option<String> {
        let mut bytes = self.buf.as_slice();
        let mut cut = self.cut;
        if let Some(start) = bytes.len().checked_sub(OUTPUT_TAIL).filter(|&s| s > 0) {
            bytes = bytes.get(start..).unwrap_or_default();
            cut = true;
        }
        if cut {
            if let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
                if bytes.get(nl + 1..).is_some_and(|rest| !rest.is_empty()) {
                    bytes = bytes.get(nl + 1..).unwrap_or_default();
                }
            }
        }
        // Control characters (binary output) would be escaped at up to 10 bytes each in the
        // message; one replacement character each keeps it bounded and readable.
        let text: String = String::from_utf8_lossy(bytes)
            .chars()
            .map(|c| if c.is_control() && c != '\n' && c != '\t' { char::REPLACEMENT_CHARACTER } else { c })
            .collect();
        let text = text.trim();
        if text.is_empty() {
            None
        } else if cut {
            Some(format!("...{text}"))
        } else {
            Some(text.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const STATE: &str = r#"{"ociVersion":"1.2.0","id":"c1","status":"creating","pid":42,"bundle":"/b"}"#;

    /// A scratch directory, removed when dropped (also when the test fails).
    struct TmpDir(PathBuf);

    impl std::ops::Deref for TmpDir {
        type Target = PathBuf;
        fn deref(&self) -> &PathBuf {
            &self.0
        }
    }

    impl Drop for TmpDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tmpdir(name: &str) -> TmpDir {
        let dir = std::env::temp_dir().join(format!("skiff-hooks-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TmpDir(dir)
    }

    /// A hook running `sh -c script sh extra...`.
    fn sh(script: &str, extra: &[&str]) -> Hook {
        let mut args = vec!["sh".to_string(), "-c".into(), script.into(), "sh".into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut hook = Hook::default();
        hook.set_path("/bin/sh".into());
        hook.set_args(Some(args));
        hook
    }

    fn out_path(dir: &std::path::Path) -> String {
        dir.join("out").display().to_string()
    }

    #[test]
    fn state_goes_to_stdin() {
        let dir = tmpdir("stdin");
        let out = out_path(&dir);
        let hook = sh(r#"cat > "$1""#, &[&out]);
        run(&[hook], "createRuntime", STATE).expect("hook");
        assert_eq!(std::fs::read_to_string(&out).expect("out"), STATE);
    }

    #[test]
    fn large_state_to_a_hook_that_reads_none_or_part() {
        let big = "x".repeat(1 << 20);
        let start = Instant::now();
        run(&[sh("exit 0", &[])], "prestart", &big).expect("no reader");
        run(&[sh("head -c 10 >/dev/null", &[])], "prestart", &big).expect("partial reader");
        let dir = tmpdir("bigstdin");
        let out = out_path(&dir);
        run(&[sh(r#"cat > "$1""#, &[&out])], "prestart", &big).expect("full reader");
        assert_eq!(std::fs::metadata(&out).expect("out").len(), 1 << 20);
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn exit_status_and_stderr_in_error() {
        let hook = sh("echo first >&2; echo 'bad thing' >&2; echo on-stdout; exit 3", &[]);
        let err = run(&[hook], "createRuntime", STATE).expect_err("must fail");
        let msg = err.to_string();
        assert!(matches!(err, HookError::Failed { .. }), "{msg}");
        assert_eq!(
            msg,
            r#"createRuntime hook /bin/sh: exited with status 3; stderr: "first\nbad thing"; stdout: "on-stdout""#
        );
    }

    #[test]
    fn killed_by_signal() {
        let err = run(&[sh("kill -TERM $$", &[])], "poststop", STATE).expect_err("fail");
        assert_eq!(err.to_string(), "poststop hook /bin/sh: killed by signal SIGTERM");
    }

    fn check_timeout(use_pidfd: bool) {
        let mut hook = sh("echo started >&2; sleep 10", &[]);
        hook.set_timeout(Some(1));
        let start = Instant::now();
        let err = run_one(&hook, "prestart", STATE, use_pidfd).expect_err("timeout");
        let took = start.elapsed();
        assert!(matches!(err, HookError::Timeout { secs: 1, .. }), "{err}");
        assert_eq!(err.to_string(), r#"prestart hook /bin/sh: timed out after 1 s (killed); stderr: "started""#);
        assert!(took >= Duration::from_millis(990) && took < Duration::from_millis(1500), "{took:?}");
    }

    #[test]
    fn timeout_kills_with_pidfd() {
        check_timeout(true);
    }

    #[test]
    fn timeout_kills_without_pidfd() {
        check_timeout(false);
    }

    #[test]
    fn without_pidfd_status_and_output() {
        let dir = tmpdir("nopidfd");
        let out = out_path(&dir);
        run_one(&sh(r#"cat > "$1""#, &[&out]), "prestart", STATE, false).expect("ok");
        assert_eq!(std::fs::read_to_string(&out).expect("out"), STATE);
        let err = run_one(&sh("echo nope >&2; exit 7", &[]), "prestart", STATE, false).expect_err("fail");
        assert_eq!(err.to_string(), r#"prestart hook /bin/sh: exited with status 7; stderr: "nope""#);
    }

    #[test]
    fn hook_within_its_timeout_succeeds() {
        let mut hook = sh("sleep 0.2", &[]);
        hook.set_timeout(Some(5));
        let start = Instant::now();
        run(&[hook], "prestart", STATE).expect("ok");
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn env_is_exactly_the_hooks() {
        let dir = tmpdir("env");
        let out = out_path(&dir);
        let mut hook = sh(r#"cat /proc/$$/environ > "$1""#, &[&out]);
        hook.set_env(Some(vec!["FOO=bar".into(), "X=a=b".into(), "NOEQUALS".into(), "EMPTY=".into()]));
        run(&[hook], "createRuntime", STATE).expect("hook");
        let got = std::fs::read(&out).expect("out");
        let mut got: Vec<&[u8]> = got.split(|&b| b == 0).filter(|e| !e.is_empty()).collect();
        got.sort();
        let want: [&[u8]; 3] = [b"EMPTY=", b"FOO=bar", b"X=a=b"];
        assert_eq!(got, want);

        let hook = sh(r#"cat /proc/$$/environ > "$1""#, &[&out]);
        run(&[hook], "createRuntime", STATE).expect("hook");
        assert_eq!(std::fs::read(&out).expect("out"), b"".to_vec());
    }

    #[test]
    fn argv0_from_args_or_path() {
        let dir = tmpdir("argv0");
        let out = out_path(&dir);
        let mut hook = sh(r#"cat /proc/$$/cmdline > "$1""#, &[&out]);
        if let Some(args) = hook.args_mut().as_mut() {
            args[0] = "my-argv0".into();
        }
        run(&[hook], "createContainer", STATE).expect("hook");
        let cmdline = std::fs::read(&out).expect("out");
        assert!(cmdline.starts_with(b"my-argv0\0-c\0"), "{cmdline:?}");

        // No args: argv0 is the path; sh then reads its commands from stdin.
        let mut hook = Hook::default();
        hook.set_path("/bin/sh".into());
        let script = format!(r#"printf %s "$0" > {out}"#);
        run(&[hook], "startContainer", &script).expect("hook");
        assert_eq!(std::fs::read_to_string(&out).expect("out"), "/bin/sh");
    }

    #[test]
    fn invalid_and_missing_hooks() {
        let mut hook = Hook::default();
        hook.set_path("/nonexistent/hook".into());
        let err = run(&[hook], "prestart", STATE).expect_err("missing");
        assert_eq!(
            err.to_string(),
            "prestart hook /nonexistent/hook: cannot start: No such file or directory (os error 2)"
        );

        let mut hook = Hook::default();
        hook.set_path("bin/true".into());
        let err = run(&[hook], "prestart", STATE).expect_err("relative");
        assert_eq!(err.to_string(), "prestart hook bin/true: path must be absolute");

        let mut hook = sh("exit 0", &[]);
        hook.set_timeout(Some(0));
        let err = run(&[hook], "prestart", STATE).expect_err("timeout 0");
        assert_eq!(err.to_string(), "prestart hook /bin/sh: timeout must be greater than zero, got 0");

        // A timeout too large to represent means no limit.
        let mut hook = sh("exit 0", &[]);
        hook.set_timeout(Some(i64::MAX));
        run(&[hook], "prestart", STATE).expect("huge timeout");
    }

    #[test]
    fn a_process_left_behind_does_not_hold_the_wait() {
        // The background sleep keeps stdout and stderr open after the hook exits.
        let mut hook = sh("sleep 3 & exit 0", &[]);
        hook.set_timeout(Some(10));
        let start = Instant::now();
        run(&[hook], "createRuntime", STATE).expect("hook");
        assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
    }

    #[test]
    fn output_is_bounded() {
        let hook = sh(
            r#"i=0; while [ $i -lt 3000 ]; do echo "line $i" >&2; i=$((i+1)); done; yes out | head -c 3000000; exit 1"#,
            &[],
        );
        let err = run(&[hook], "poststart", STATE).expect_err("fail");
        let msg = err.to_string();
        assert!(msg.len() < 3 * OUTPUT_TAIL, "{}", msg.len());
        assert!(
            msg.starts_with(r#"poststart hook /bin/sh: exited with status 1; stderr: "...line "#),
            "{}",
            &msg[..120]
        );
        assert!(msg.contains(r#"line 2999"; stdout: "..."#), "{msg}");
        assert!(!msg.contains('\n'));

        // Binary output stays bounded and on one line.
        let err = run(&[sh("head -c 100000 /dev/urandom >&2; exit 1", &[])], "poststart", STATE).expect_err("fail");
        let msg = err.to_string();
        assert!(msg.chars().count() < 3 * OUTPUT_TAIL, "{}", msg.len());
        assert!(!msg.contains('\n'));

        // Lots of output from a hook that succeeds is fine too.
        run(&[sh("head -c 3000000 /dev/zero; head -c 3000000 /dev/zero >&2", &[])], "poststart", STATE).expect("ok");
    }

    #[test]
    fn run_stops_at_first_failure_and_run_all_does_not() {
        let dir = tmpdir("order");
        let a = dir.join("a").display().to_string();
        let b = dir.join("b").display().to_string();
        let hooks = [sh(r#"touch "$1""#, &[&a]), sh("exit 2", &[]), sh(r#"touch "$1""#, &[&b])];
        let err = run(&hooks, "createRuntime", STATE).expect_err("second fails");
        assert!(err.to_string().contains("exited with status 2"));
        assert!(std::path::Path::new(&a).exists());
        assert!(!std::path::Path::new(&b).exists());

        let errs = run_all(&hooks, "poststop", STATE);
        assert_eq!(errs.len(), 1);
        assert!(std::path::Path::new(&b).exists());
        assert!(run(&[], "prestart", STATE).is_ok());
    }

    #[test]
    fn pidfd_is_available_here() {
        // Kernels >= 5.3; the fallback is tested above without it.
        let mut child = Command::new("/bin/sh").args(["-c", "exit 0"]).spawn().expect("spawn");
        assert!(pidfd_open(child.id()).is_some());
        child.wait().expect("wait");
    }

    #[test]
    fn tail_text() {
        let mut t = Tail::default();
        assert_eq!(t.text(), None);
        t.push(b"  \n");
        assert_eq!(t.text(), None);
        let mut t = Tail::default();
        for i in 0..2000 {
            t.push(format!("line {i}\n").as_bytes());
        }
        let text = t.text().expect("text");
        assert!(text.starts_with("...line "));
        assert!(text.ends_with("line 1999"));
        assert!(text.len() <= OUTPUT_TAIL + 3);
    }
}
