//! `skiff exec SERVICE[/N] [-i] [-t] [-u USER] [-w DIR] [-e K=V]... -- CMD...`: runs a
//! command in a running replica of a service, through the OCI runtime the agent uses (`exec
//! --process`), and exits with the command's status.
//!
//! The replica: `SERVICE` is its first running replica (lowest slot), `SERVICE/N` slot N (its
//! running container: `SERVICE-N` or, mid-update, `SERVICE-N.b`), or a container id as status
//! shows it (`web-2`, `web-2.b`). The runtime: `--runtime`/`SKIFF_RUNTIME`, else the one the
//! replica's shim runs (its command line names it), else skiff-runtime as `skiff run` finds it.
//! The process: the container's own (`config.json` of its bundle: environment, user, working
//! directory, capabilities, rlimits) with the command, `-e` added (a KEY without `=` takes the
//! caller's value, as Docker does), `-w`, and `-u` resolved in the container's /etc/passwd and
//! /etc/group. The process file is written 0600 in the replica's private run directory.
//!
//! `-t`: the process gets a pty (`process.terminal` and `--console-socket`, the way containerd
//! and podman run `-t`): the runtime sends the pty master over the socket; this side puts its
//! own terminal in raw mode (restored on every way out) and copies both ways, input only with
//! `-i`; the window size goes with the process (`consoleSize`) and follows SIGWINCH. runc takes
//! a console socket only with `--detach`, so `-t` runs the exec detached (`--pid-file`) with
//! this side a child subreaper: the process is orphaned to it, and it waits for the process
//! and takes its exit status itself (containerd's shim does the same). Without `-t` the
//! runtime runs in the foreground and its exit status is the process's.
//!
//! Signals sent to `skiff exec` (SIGTERM, SIGHUP, SIGINT by `kill`) are passed on (to the
//! runtime, which passes them to the process; with `-t` to the process); a ^C typed on a
//! terminal reaches the process directly (through the pty with `-t`, through the shared
//! process group without).
//!
//! Root only: the containers, their state and the runtime's are root's.

use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use skiff_images::fsutil;

use crate::daemon::paths::Paths;
use crate::daemon::proc;
use crate::daemon::replica::ReplicaRecord;

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// SERVICE (its first running replica), SERVICE/N (replica N) or a replica id (web-2, web-2.b)
    pub target: String,
    /// Keep stdin open (pass it to the command)
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the command a terminal (a pty)
    #[arg(short, long)]
    pub tty: bool,
    /// Run as USER[:GROUP] (names from the container's /etc/passwd and /etc/group, or ids)
    #[arg(short, long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// Working directory in the container (absolute)
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Set an environment variable (KEY=VALUE, or KEY to pass this one's value)
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// OCI runtime (default: the one the agent runs the replica with)
    #[arg(long, env = "SKIFF_RUNTIME", value_name = "PATH")]
    pub runtime: Option<PathBuf>,
    /// The command and its arguments
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// What the user named.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// `SERVICE`, or a replica id (`web-2`, `web-2.b`): which, once the records are known.
    Name(String),
    /// `SERVICE/N`.
    Slot(String, u32),
}

fn parse_target(t: &str) -> Result<Target> {
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    };
    let bad = || anyhow!("invalid target {t:?}: use SERVICE, SERVICE/N (N a replica number) or a replica id (web-2)");
    match t.split_once('/') {
        None if valid(t) => Ok(Target::Name(t.to_string())),
        Some((s, n)) if valid(s) && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(Target::Slot(s.to_string(), n.parse().map_err(|_| bad())?))
        }
        _ => Err(bad()),
    }
}

/// Whether the replica's container runs: not stopped on purpose, started, its shim alive.
fn running(r: &ReplicaRecord) -> bool {
    !r.stopped && r.started_at.is_some() && r.shim.is_some_and(|(pid, t)| proc::alive(pid, Some(t)))
}

/// Picks the replica `target` names among `records`: see the module documentation.
fn pick<'a>(
    records: &'a [ReplicaRecord],
    target: &Target,
    running: impl Fn(&ReplicaRecord) -> bool,
) -> Result<&'a ReplicaRecord> {
    let of = |service: &str| -> Vec<&'a ReplicaRecord> {
        let mut v: Vec<&ReplicaRecord> = records.iter().filter(|r| r.service == service).collect();
        v.sort_by(|a, b| (a.index, &a.id).cmp(&(b.index, &b.id)));
        v
    };
    let ids = |v: &[&ReplicaRecord]| v.iter().map(|r| r.id.as_str()).collect::<Vec<_>>().join(", ");
    let services = || {
        let mut s: Vec<&str> = records.iter().map(|r| r.service.as_str()).collect();
        s.sort();
        s.dedup();
        if s.is_empty() {
            "none has a replica".to_string()
        } else {
            format!("those with replicas: {}", s.join(", "))
        }
    };
    let first_running = |v: Vec<&'a ReplicaRecord>, what: &str| -> Result<&'a ReplicaRecord> {
        let found = v.iter().find(|r| running(r)).copied();
        found.ok_or_else(|| anyhow!("no replica of {what} is running ({} stopped or not started)", ids(&v)))
    };
    match target {
        Target::Name(name) => {
            if let Some(r) = records.iter().find(|r| r.id == *name) {
                if !running(r) {
                    bail!("replica {name} is not running");
                }
                return Ok(r);
            }
            let v = of(name);
            if v.is_empty() {
                bail!("no service or replica {name} in the agent's state ({})", services());
            }
            first_running(v, name)
        }
        Target::Slot(service, n) => {
            let v = of(service);
            if v.is_empty() {
                bail!("no service {service} in the agent's state ({})", services());
            }
            let slots: Vec<String> = {
                let mut s: Vec<u32> = v.iter().map(|r| r.index).collect();
                s.dedup();
                s.iter().map(u32::to_string).collect()
            };
            let in_slot: Vec<&ReplicaRecord> = v.into_iter().filter(|r| r.index == *n).collect();
            if in_slot.is_empty() {
                bail!("service {service} has no replica {n} (its replicas: {})", slots.join(", "));
            }
            first_running(in_slot, &format!("{service}/{n}"))
        }
    }
}

/// The runtime the replica's shim runs (`skiff shim --runtime PATH ...`), when it is alive.
fn shim_runtime(r: &ReplicaRecord) -> Option<PathBuf> {
    let (pid, start) = r.shim?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    // Still the same process (pid reuse) once the command line is read.
    if proc::start_time(pid) != Some(start) {
        return None;
    }
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let i = args.iter().position(|a| *a == b"--runtime")?;
    let p = PathBuf::from(std::str::from_utf8(args.get(i + 1)?).ok()?);
    p.is_absolute().then_some(p)
}

/// The process to run: the container's, with the command and the options of `a`.
fn process(config: &Value, a: &ExecArgs, rootfs: &Path, size: Option<(u16, u16)>) -> Result<Value> {
    let mut p = config.get("process").cloned().unwrap_or_else(|| json!({}));
    let obj = p.as_object_mut().ok_or_else(|| anyhow!("the container's config.json has no process"))?;
    obj.insert("args".into(), json!(a.command));
    let mut env: Vec<String> = obj
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str().map(String::from))
        .collect();
    for e in &a.env {
        let kv = match e.split_once('=') {
            Some(_) => e.clone(),
            None => match std::env::var(e) {
                Ok(v) => format!("{e}={v}"),
                Err(_) => continue,
            },
        };
        let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
        if key.is_empty() || key.contains('\0') || kv.contains('\0') {
            bail!("-e {e:?}: not KEY=VALUE");
        }
        env.retain(|old| old.split_once('=').map_or(old.as_str(), |(k, _)| k) != key);
        env.push(kv);
    }
    obj.insert("env".into(), json!(env));
    if let Some(w) = &a.workdir {
        if !w.starts_with('/') || w.contains('\0') {
            bail!("-w {w:?}: the working directory must be an absolute path in the container");
        }
        obj.insert("cwd".into(), json!(w));
    }
    if let Some(u) = &a.user {
        let (uid, gid, gids) =
            skiff_images::bundle::user_in_rootfs(rootfs, u, "the container").with_context(|| format!("-u {u:?}"))?;
        let umask = obj.get("user").and_then(|x| x.get("umask")).cloned();
        let mut user = json!({"uid": uid, "gid": gid, "additionalGids": gids});
        if let Some(m) = umask {
            user["umask"] = m;
        }
        obj.insert("user".into(), user);
    }
    obj.insert("terminal".into(), json!(a.tty));
    obj.remove("consoleSize");
    if let (true, Some((rows, cols))) = (a.tty, size) {
        obj.insert("consoleSize".into(), json!({"height": rows, "width": cols}));
    }
    Ok(p)
}

pub fn exec(root: &Path, a: ExecArgs) -> Result<i32> {
    if !nix::unistd::geteuid().is_root() {
        bail!("skiff exec needs root: the containers and the runtime's state are root's");
    }
    let target = parse_target(&a.target)?;
    let paths = Paths::new(root);
    if !paths.containers().is_dir() {
        bail!("no agent state in {} (is the agent running with this --root?)", root.display());
    }
    let (records, _) = ReplicaRecord::load_all(&paths);
    let rec = pick(&records, &target, running)?;
    let id = rec.id.clone();
    let runtime = match a.runtime.as_deref() {
        Some(p) => super::run::find_runtime(Some(p))?,
        None => match shim_runtime(rec) {
            Some(p) => p,
            None => super::run::find_runtime(None)?,
        },
    };
    let cdir = paths.container(&id);
    let config: Value = serde_json::from_slice(
        &std::fs::read(cdir.join("config.json")).with_context(|| format!("reading the bundle of {id}"))?,
    )
    .with_context(|| format!("reading the bundle of {id}"))?;
    let tty_in = io::stdin().is_terminal();
    let size =
        if a.tty { window_size(io::stdin().as_fd()).or_else(|| window_size(io::stdout().as_fd())) } else { None };
    let p = process(&config, &a, &skiff_images::rootfs::rootfs_path(&cdir), size)?;

    // The process file and the console socket, in the replica's private run directory.
    let shim_dir = paths.shim(&id);
    let me = std::process::id();
    let pfile = shim_dir.join(format!("exec-{me}.json"));
    fsutil::write_atomic(&shim_dir, &pfile, &serde_json::to_vec(&p)?)
        .with_context(|| format!("writing {}", pfile.display()))?;
    let _pfile = Remove(pfile.clone());
    let console = if a.tty { Some(ConsoleSocket::new(&shim_dir, me)?) } else { None };

    let pid_file = shim_dir.join(format!("exec-{me}.pid"));
    let _pid_file = Remove(pid_file.clone());
    let mut cmd = Command::new(&runtime);
    cmd.arg("--root").arg(paths.runtime_root()).arg("exec").arg("--process").arg(&pfile);
    if let Some(c) = &console {
        // runc takes a console socket only with --detach (in the foreground it relays the pty
        // itself): detached, the process is orphaned to this side, a child subreaper, which
        // waits for it and takes its exit status (as containerd's shim does).
        cmd.arg("--detach").arg("--pid-file").arg(&pid_file).arg("--console-socket").arg(&c.path);
        nix::sys::prctl::set_child_subreaper(true).context("prctl(PR_SET_CHILD_SUBREAPER)")?;
    }
    cmd.arg(&id);
    if a.tty || !a.interactive {
        cmd.stdin(Stdio::null());
    }
    // The signals this side passes on: read from a signalfd (blocked here; a spawned child
    // starts with an empty mask).
    let sigfd = signals()?;
    let mut child = cmd.spawn().with_context(|| format!("running {}", runtime.display()))?;
    let code = match console {
        Some(c) => {
            // Raw mode on this side's terminal from now on, restored on every way out.
            let _raw = if tty_in && a.interactive { RawMode::on(io::stdin().as_fd()) } else { None };
            let Some(master) = c.accept(&mut child, &sigfd)? else {
                // The runtime failed before sending the pty (it said why on stderr).
                return Ok(exit_code(wait_forwarding(&mut child, &sigfd)?));
            };
            let st = wait_forwarding(&mut child, &sigfd)?;
            if !st.success() {
                return Ok(exit_code(st));
            }
            let pid = proc::read_pid_file(&pid_file)
                .ok_or_else(|| anyhow!("{} wrote no pid to {}", runtime.display(), pid_file.display()))?;
            relay(&master, pid, &sigfd, a.interactive)?
        }
        None => exit_code(wait_forwarding(&mut child, &sigfd)?),
    };
    Ok(code)
}

fn exit_code(st: std::process::ExitStatus) -> i32 {
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

/// Removes a file on drop.
struct Remove(PathBuf);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn signals() -> Result<nix::sys::signalfd::SignalFd> {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    let mut mask = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGWINCH] {
        mask.add(s);
    }
    mask.thread_block().context("blocking signals")?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).context("creating a signalfd")
}

/// Handles the signals pending on `sigfd`: SIGWINCH resizes `master`; the others go to the
/// runtime, except those the kernel sent for a terminal's ^C/^\ (the process got them too).
fn on_signals(sigfd: &nix::sys::signalfd::SignalFd, target: i32, master: Option<&OwnedFd>) {
    while let Ok(Some(info)) = sigfd.read_signal() {
        let sig = info.ssi_signo as i32;
        if sig == libc::SIGWINCH {
            if let (Some(m), Some(size)) =
                (master, window_size(io::stdin().as_fd()).or_else(|| window_size(io::stdout().as_fd())))
            {
                set_window_size(m.as_fd(), size);
            }
            continue;
        }
        // From a terminal (SI_KERNEL, no sending pid): the foreground group, the runtime
        // included, had it already.
        if info.ssi_pid == 0 && master.is_none() {
            continue;
        }
        // SAFETY: kill(2) on our own child (the runtime) or the exec'd process orphaned to
        // us, neither reaped yet (waited for only after this).
        unsafe { libc::kill(target, sig) };
    }
}

/// Waits for the runtime, passing signals on.
fn wait_forwarding(child: &mut Child, sigfd: &nix::sys::signalfd::SignalFd) -> Result<std::process::ExitStatus> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        if let Some(st) = child.try_wait().context("waiting for the runtime")? {
            return Ok(st);
        }
        let mut fds = [PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(50u16));
        on_signals(sigfd, child.id() as i32, None);
    }
}

/// The rows and columns of the terminal on `fd`, if it is one.
fn window_size(fd: std::os::fd::BorrowedFd<'_>) -> Option<(u16, u16)> {
    let mut ws: libc::winsize = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct we own.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

fn set_window_size(fd: std::os::fd::BorrowedFd<'_>, (rows, cols): (u16, u16)) {
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize from the struct we own.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

/// This side's terminal in raw mode until dropped (then as it was).
struct RawMode {
    fd: RawFd,
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    fn on(fd: std::os::fd::BorrowedFd<'_>) -> Option<RawMode> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let saved = tcgetattr(fd).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(fd, SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { fd: fd.as_raw_fd(), saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        // SAFETY: fd 0 (stdin) stays open for the life of the process.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd) };
        let _ = tcsetattr(fd, SetArg::TCSADRAIN, &self.saved);
    }
}

/// The socket the runtime sends the pty master over (`--console-socket`), in a private
/// directory; removed on drop.
struct ConsoleSocket {
    path: PathBuf,
    listener: UnixListener,
    dir: Option<PathBuf>,
}

impl ConsoleSocket {
    fn new(shim_dir: &Path, me: u32) -> Result<ConsoleSocket> {
        let mut path = shim_dir.join(format!("exec-{me}.sock"));
        let mut dir = None;
        // A unix socket path has at most 107 bytes: a deep --root gets a private directory
        // of its own in /tmp (made here, never reused).
        if path.as_os_str().len() > 100 {
            let nanos =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
            let d = std::env::temp_dir().join(format!("skiff-exec-{me}-{nanos}"));
            std::fs::DirBuilder::new().mode(0o700).create(&d).with_context(|| format!("creating {}", d.display()))?;
            path = d.join("console.sock");
            dir = Some(d);
        }
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).with_context(|| format!("creating {}", path.display()))?;
        listener.set_nonblocking(true)?;
        Ok(ConsoleSocket { path, listener, dir })
    }

    /// The pty master the runtime sends; `None` when the runtime exited without sending one
    /// (it said why on stderr).
    fn accept(&self, child: &mut Child, sigfd: &nix::sys::signalfd::SignalFd) -> Result<Option<OwnedFd>> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        loop {
            match self.listener.accept() {
                Ok((conn, _)) => {
                    conn.set_nonblocking(false)?;
                    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
                    return receive_fd(&conn).map(Some);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e).context("accepting on the console socket"),
            }
            if child.try_wait()?.is_some() {
                return Ok(None);
            }
            let mut fds =
                [PollFd::new(self.listener.as_fd(), PollFlags::POLLIN), PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(100u16));
            on_signals(sigfd, child.id() as i32, None);
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// The one fd a `SCM_RIGHTS` message on `conn` carries.
fn receive_fd(conn: &std::os::unix::net::UnixStream) -> Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = [0u8; 4096];
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(conn.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .context("receiving the pty from the runtime")?;
    let mut got = None;
    for c in msg.cmsgs().context("receiving the pty from the runtime")? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: the kernel installed these fds in this process just now; each is
                // owned once (the first kept, the others closed).
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                if got.is_none() {
                    got = Some(fd);
                }
            }
        }
    }
    got.ok_or_else(|| anyhow!("the runtime sent no pty on the console socket"))
}

/// Copies the pty both ways (stdin → master with `input`, master → stdout) until the
/// process `pid` (orphaned to this side) exits and the pty has nothing more; signals handled
/// meanwhile. Returns the process's exit code (128 + N for signal N).
fn relay(master: &OwnedFd, pid: i32, sigfd: &nix::sys::signalfd::SignalFd, input: bool) -> Result<i32> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let mut out = io::stdout().lock();
    let mut buf = [0u8; 8192];
    let mut stdin_open = input;
    let mut exited: Option<(i32, Instant)> = None;
    let stdin = io::stdin();
    loop {
        if exited.is_none() {
            match waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, c)) => exited = Some((c, Instant::now())),
                Ok(WaitStatus::Signaled(_, s, _)) => exited = Some((128 + s as i32, Instant::now())),
                Ok(_) => {}
                Err(e) => return Err(e).with_context(|| format!("waiting for the process (pid {pid})")),
            }
        }
        // The process is gone: what the pty still holds is read until it is empty (a
        // background process of the container may keep it open: stop after a short while).
        let timeout = match exited {
            Some((code, t)) if t.elapsed() > Duration::from_millis(500) => return Ok(code),
            Some(_) => PollTimeout::from(50u16),
            None => PollTimeout::from(100u16),
        };
        let mut fds =
            vec![PollFd::new(master.as_fd(), PollFlags::POLLIN), PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
        if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, timeout) {
            Ok(0) => {
                if let Some((code, _)) = exited {
                    return Ok(code);
                }
                continue;
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("poll"),
        }
        let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
        let (m, s, i) = (ready(&fds[0]), ready(&fds[1]), fds.get(2).is_some_and(ready));
        drop(fds);
        if m {
            match nix::unistd::read(master.as_raw_fd(), &mut buf) {
                // EIO: every slave fd is closed (the process exited): its status next.
                Ok(0) | Err(_) => {
                    if let Some((code, _)) = exited {
                        return Ok(code);
                    }
                    return wait_exit(pid);
                }
                Ok(n) => {
                    out.write_all(&buf[..n]).context("writing to stdout")?;
                    out.flush().context("writing to stdout")?;
                }
            }
        }
        if s {
            on_signals(sigfd, pid, Some(master));
        }
        if i {
            match stdin.lock().read(&mut buf) {
                Ok(0) | Err(_) => {
                    // End of input: the process sees it as an end of file (^D) on its terminal.
                    stdin_open = false;
                    let _ = nix::unistd::write(master, &[4u8]);
                }
                Ok(n) => write_all_fd(master, &buf[..n])?,
            }
        }
    }
}

/// The exit code of `pid` (orphaned to this side), waiting for it.
fn wait_exit(pid: i32) -> Result<i32> {
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, c)) => return Ok(c),
            Ok(WaitStatus::Signaled(_, s, _)) => return Ok(128 + s as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).with_context(|| format!("waiting for the process (pid {pid})")),
        }
    }
}

fn write_all_fd(fd: &OwnedFd, mut data: &[u8]) -> Result<()> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("writing to the pty"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Service;
    use crate::supervise::restart::RestartTracker;

    fn rec(id: &str, service: &str, index: u32, up: bool) -> ReplicaRecord {
        ReplicaRecord {
            id: id.into(),
            service: service.into(),
            index,
            spec: Service::default(),
            image_digest: String::new(),
            stop_signal: "SIGTERM".into(),
            tracker: RestartTracker::new(Default::default(), false),
            started_at: up.then(|| "2026-01-01T00:00:00Z".into()),
            shim: None,
            pid: None,
            stopped: false,
            healthcheck: None,
            address: None,
            revision: 1,
            healthy: false,
        }
    }

    #[test]
    fn targets_pick_the_replica() {
        let recs = vec![
            rec("web-2", "web", 2, true),
            rec("web-1", "web", 1, false),
            rec("web-1.b", "web", 1, true),
            rec("db-1", "db", 1, false),
        ];
        let up = |r: &ReplicaRecord| r.started_at.is_some();
        let id = |t: &str| pick(&recs, &parse_target(t).unwrap(), up).map(|r| r.id.clone()).map_err(|e| e.to_string());
        assert_eq!(id("web").unwrap(), "web-1.b", "the first running one, lowest slot");
        assert_eq!(id("web/2").unwrap(), "web-2");
        assert_eq!(id("web/1").unwrap(), "web-1.b", "the slot's running container");
        assert_eq!(id("web-2").unwrap(), "web-2", "a replica id");
        assert!(id("web/3").unwrap_err().contains("service web has no replica 3 (its replicas: 1, 2)"));
        assert!(id("db").unwrap_err().contains("no replica of db is running"));
        assert!(id("db-1").unwrap_err().contains("replica db-1 is not running"));
        assert!(id("nope").unwrap_err().contains("no service or replica nope"));
        assert!(id("nope/1").unwrap_err().contains("no service nope"));
        for bad in ["", "web/", "web/x", "/1", "-web", "web/1/2", "a b"] {
            assert!(parse_target(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_process_is_the_containers_with_the_options() {
        let config = json!({"process": {"args": ["sleep"], "env": ["PATH=/bin", "A=1"], "cwd": "/", "user": {"uid": 0, "gid": 0, "umask": 18}, "terminal": true, "capabilities": {"bounding": ["CAP_KILL"]}}});
        let a = ExecArgs {
            target: "web".into(),
            interactive: false,
            tty: false,
            user: None,
            workdir: Some("/tmp".into()),
            env: vec!["A=2".into(), "B=x=y".into()],
            runtime: None,
            command: vec!["sh".into(), "-c".into(), "true".into()],
        };
        let p = process(&config, &a, Path::new("/nonexistent"), Some((24, 80))).unwrap();
        assert_eq!(p["args"], json!(["sh", "-c", "true"]));
        assert_eq!(p["env"], json!(["PATH=/bin", "A=2", "B=x=y"]));
        assert_eq!(p["cwd"], "/tmp");
        assert_eq!(p["terminal"], false);
        assert!(p.get("consoleSize").is_none());
        assert_eq!(p["capabilities"]["bounding"], json!(["CAP_KILL"]), "the rest is the container's");
        let t = ExecArgs { tty: true, workdir: Some("rel".into()), ..a };
        assert!(process(&config, &t, Path::new("/nonexistent"), None).unwrap_err().to_string().contains("absolute"));
    }
}
