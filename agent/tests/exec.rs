//! `skiff exec` end to end (issue 13): a command in a running replica with its output, exit
//! code, `-e`, `-u`, `-w`, `-i`, a pty with `-t` (raw mode restored, window size passed and
//! followed), the errors that help, and nobody being refused. And three small agent bugs of
//! issue 13: `skiff logs` showing an earlier, unrelated container of the same replica id, and
//! the agent's log lines without timestamps when not under journald. Run as root.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_tests::agent::{pids, Agent, WAIT};
use skiff_tests::registry::{Registry, BUSYBOX_OCI};

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

fn image() -> String {
    Registry::shared().image(BUSYBOX_OCI)
}

fn sleeper(name: &str, replicas: u32, extra: &str) -> String {
    format!(
        "  {name}:\n    image: {img}\n    command: [\"sleep\", \"1000\"]\n    stop_grace_period: 1s\n    deploy:\n      replicas: {replicas}\n{extra}",
        img = image()
    )
}

/// `skiff --root ROOT exec ARGS` as `Command`, stdio to be set by the caller; without
/// SKIFF_RUNTIME: the runtime is the one the replica's shim runs.
fn exec_command(a: &Agent, args: &[&str]) -> Command {
    let mut c = Command::new(SKIFF);
    c.env_remove("SKIFF_ROOT").env_remove("SKIFF_RUNTIME").arg("--root").arg(a.root()).arg("exec").args(args);
    c
}

#[test]
fn exec_runs_a_command_in_a_replica_with_its_output_and_exit_code() {
    let mut a = Agent::new(SKIFF);
    a.write_manifest(&format!(
        "services:\n{}",
        sleeper("web", 2, "    environment:\n      GREETING: hello\n      KEEP: kept\n")
    ));
    a.start();
    a.wait_running("web", 2);

    // Output on stdout and stderr, the exit code, the container's environment; SERVICE is
    // the first replica.
    let o = a.skiff(&["exec", "web", "--", "sh", "-c", "echo out-$GREETING $(hostname); echo to-stderr >&2; exit 7"]);
    assert_eq!(o.code(), 7, "{o}");
    assert_eq!(o.stdout, "out-hello web-1\n", "{o}");
    assert!(o.stderr.contains("to-stderr"), "{o}");

    // SERVICE/N and a replica id; -e (overriding and new), -u, -w.
    let o = a
        .skiff(&[
            "exec",
            "-e",
            "GREETING=bye",
            "-e",
            "NEW=1",
            "-u",
            "65534",
            "-w",
            "/tmp",
            "web/2",
            "--",
            "sh",
            "-c",
            "echo $GREETING $NEW $KEEP $(id -u) $(id -g) $(pwd) $(hostname)",
        ])
        .ok();
    assert_eq!(o.stdout, "bye 1 kept 65534 65534 /tmp web-2\n", "{o}");
    let o = a.skiff(&["exec", "-u", "nobody", "web-2", "--", "id", "-un"]).ok();
    assert_eq!(o.stdout, "nobody\n", "a user name from the container's /etc/passwd: {o}");

    // -i passes stdin; without it the command reads nothing.
    let run_with_input = |args: &[&str]| {
        let mut c = exec_command(&a, args);
        let mut child = c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
        child.stdin.take().expect("stdin").write_all(b"piped-in\n").expect("write");
        let out = child.wait_with_output().expect("wait");
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    assert_eq!(run_with_input(&["-i", "web", "--", "cat"]), (Some(0), "piped-in\n".into()));
    assert_eq!(run_with_input(&["web", "--", "cat"]), (Some(0), String::new()));

    // Errors that help, each one line, exit 1.
    for (args, want) in [
        (vec!["nope", "--", "true"], "no service or replica nope"),
        (vec!["web/3", "--", "true"], "service web has no replica 3 (its replicas: 1, 2)"),
        (vec!["web", "-w", "tmp", "--", "true"], "absolute"),
        (vec!["web", "-u", "nosuchuser", "--", "true"], "nosuchuser"),
    ] {
        let mut full = vec!["exec"];
        full.extend(args);
        let o = a.skiff(&full);
        assert_eq!(o.code(), 1, "{o}");
        assert!(o.stderr.contains(want) && o.stderr.trim().lines().count() == 1, "{want}: {o}");
    }
    let o = Command::new(SKIFF)
        .args(["--root", a.dir().join("nothing").to_str().unwrap(), "exec", "web", "--", "true"])
        .output()
        .expect("skiff");
    assert!(String::from_utf8_lossy(&o.stderr).contains("no agent state"), "{o:?}");
    // Nothing left behind in the replica's run directory (process files, sockets).
    let shim = a.run_dir().join("shims/web-1");
    let left: Vec<_> = std::fs::read_dir(&shim)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with("exec-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // A stopped replica cannot be exec'd into: a clear error.
    a.write_manifest(&format!("services:\n{}", sleeper("web", 1, "")));
    a.wait_status("web scaled to 1", |st| skiff_tests::agent::replica_ids(st, "web") == ["web-1"]);
    a.down();
    let o = a.skiff(&["exec", "web", "--", "true"]);
    assert_eq!(o.code(), 1, "{o}");
}

/// nobody runs `skiff exec` (the attack): refused before anything runs in the container.
#[test]
fn nobody_cannot_exec() {
    let mut a = Agent::new(SKIFF);
    a.write_manifest(&format!("services:\n{}", sleeper("web", 1, "")));
    a.start();
    a.wait_running("web", 1);
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(SKIFF)
        .arg("--root")
        .arg(a.root())
        .args(["exec", "web", "--", "touch", "/pwned"])
        .env("SKIFF_RUNTIME", a.runtime())
        .output()
        .expect("setpriv");
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("needs root"), "{o:?}");
    let o = a.skiff(&["exec", "web", "--", "sh", "-c", "test -e /pwned && echo PWNED || echo clean"]).ok();
    assert_eq!(o.stdout, "clean\n", "{o}");
    a.down();
}

/// Reads from the pty master until `want` shows up (panics after `WAIT`, never hangs).
fn read_until(master: &OwnedFd, got: &mut String, want: &str) {
    let deadline = Instant::now() + WAIT;
    while !got.contains(want) {
        assert!(Instant::now() < deadline, "no {want:?} on the terminal: {got:?}");
        read_for(master, got, Duration::from_millis(200));
    }
}

fn write_master(master: &OwnedFd, data: &[u8]) {
    std::fs::File::from(master.try_clone().expect("dup master")).write_all(data).expect("write to the terminal");
}

/// Reads what the pty master has within `d`.
fn read_for(master: &OwnedFd, got: &mut String, d: Duration) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let end = Instant::now() + d;
    let mut buf = [0u8; 1024];
    while Instant::now() < end {
        let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(50u16)).unwrap_or(0) == 0 {
            continue;
        }
        match nix::unistd::read(master.as_raw_fd(), &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => got.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
}

fn winsize(rows: u16, cols: u16) -> libc::winsize {
    libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 }
}

/// `-it` from a user's terminal (a pty of the test, the controlling terminal of skiff): the
/// command runs on a pty of its own (`tty` names /dev/pts/N), its window size is the
/// terminal's and follows a resize, input reaches it, its exit code is skiff's, and the
/// terminal is back in its mode afterwards.
#[test]
fn exec_with_a_tty() {
    let mut a = Agent::new(SKIFF);
    a.write_manifest(&format!("services:\n{}", sleeper("web", 1, "")));
    a.start();
    a.wait_running("web", 1);
    tty_session(&a);
    a.down();
}

/// The same with the agent on crun and on runc (where installed and able to run here): skiff
/// exec finds the runtime through the replica's shim (no SKIFF_RUNTIME) and works with any
/// OCI runtime's `exec --process --console-socket`.
#[test]
fn exec_under_crun_and_runc() {
    for name in ["crun", "runc"] {
        let Some(bin) = skiff_tests::which(name) else {
            skiff_tests::skip_part(&format!("{name} is not installed"));
            continue;
        };
        if name == "runc" {
            if let Some(m) = skiff_tests::agent::odd_v1_hierarchy() {
                skiff_tests::skip_part(&format!(
                    "runc cannot run containers while a v1 hierarchy is at {}",
                    m.display()
                ));
                continue;
            }
        }
        let mut a = Agent::with_runtime(SKIFF, &bin);
        a.write_manifest(&format!("services:\n{}", sleeper("web", 1, "")));
        a.start();
        a.wait_running("web", 1);
        let o =
            exec_command(&a, &["-u", "65534", "web", "--", "sh", "-c", "id -u; exit 9"]).output().expect("skiff exec");
        assert_eq!(o.status.code(), Some(9), "{name}: {o:?}");
        assert_eq!(String::from_utf8_lossy(&o.stdout), "65534\n", "{name}: {o:?}");
        tty_session(&a);
        a.down();
    }
}

/// The terminal part of [`exec_with_a_tty`], on a running `web`.
fn tty_session(a: &Agent) {
    use nix::sys::termios::{tcgetattr, LocalFlags};
    let pty = nix::pty::openpty(Some(&winsize(33, 111)), None).expect("openpty");
    let before = tcgetattr(&pty.slave).expect("tcgetattr");
    let slave = std::fs::File::from(pty.slave.try_clone().expect("dup"));
    let mut c = exec_command(
        a,
        &[
            "-it",
            "web",
            "--",
            "sh",
            "-c",
            "tty; stty size; while read x; do [ \"$x\" = quit ] && exit 5; stty size; done",
        ],
    );
    c.stdin(slave.try_clone().unwrap()).stdout(slave.try_clone().unwrap()).stderr(slave);
    // SAFETY: only async-signal-safe calls between fork and exec: a new session whose
    // controlling terminal is the pty (stdin), as a login shell has it.
    unsafe {
        c.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = c.spawn().expect("spawn skiff exec");
    drop(c);
    let mut got = String::new();
    read_until(&pty.master, &mut got, "33 111");
    assert!(got.contains("/dev/pts/"), "the command's stdin is a pty: {got:?}");
    // Raw mode on the user's terminal while it runs.
    let during = tcgetattr(&pty.slave).expect("tcgetattr");
    assert!(!during.local_flags.contains(LocalFlags::ICANON), "raw mode while it runs");
    // A resize reaches the command's pty (SIGWINCH followed): each line of input makes it
    // print its size again, until the new one shows (the signal takes its own path).
    // SAFETY: TIOCSWINSZ reads one winsize from a struct we own.
    let r = unsafe { libc::ioctl(pty.master.as_raw_fd(), libc::TIOCSWINSZ, &winsize(40, 120)) };
    assert_eq!(r, 0);
    let deadline = Instant::now() + WAIT;
    while !got.contains("40 120") {
        assert!(Instant::now() < deadline, "the new window size never reached the command: {got:?}");
        write_master(&pty.master, b"again\r");
        read_for(&pty.master, &mut got, Duration::from_millis(300));
    }
    write_master(&pty.master, b"quit\r");
    let st = skiff_tests::wait_timeout(&mut child, WAIT).expect("skiff exec exits");
    assert_eq!(st.code(), Some(5), "{got:?}");
    let after = tcgetattr(&pty.slave).expect("tcgetattr");
    assert_eq!(after.local_flags, before.local_flags, "the terminal's mode is restored");
    assert_eq!(after.input_flags, before.input_flags);
}

/// `skiff logs SERVICE` shows the current containers only: after `skiff down` and an `up`
/// with another command, nothing of the earlier container; a restart of the same container
/// keeps its lines.
#[test]
fn logs_show_only_the_current_container_of_a_replica() {
    let mut a = Agent::new(SKIFF);
    let svc = |word: &str| {
        format!(
            "services:\n  db:\n    image: {}\n    command: [\"sh\", \"-c\", \"echo {word}-says-hi; exec sleep 1000\"]\n    restart: always\n    stop_grace_period: 1s\n",
            image()
        )
    };
    a.write_manifest(&svc("first"));
    a.start();
    a.wait_running("db", 1);
    skiff_tests::wait_until("the first container's line", WAIT, || a.logs(&["db"]).contains("first-says-hi"));
    a.down();
    assert!(a.logs(&["db"]).contains("first-says-hi"), "logs stay readable after skiff down");

    a.write_manifest(&svc("second"));
    a.start();
    let st = a.wait_running("db", 1);
    skiff_tests::wait_until("the second container's line", WAIT, || a.logs(&["db"]).contains("second-says-hi"));
    let logs = a.logs(&["db"]);
    assert!(!logs.contains("first-says-hi"), "an earlier, unrelated container's lines: {logs}");

    // A restart of the same container continues its logs.
    let pid = pids(&st, "db")["db-1"];
    skiff_tests::agent::kill(pid as i32, libc::SIGKILL);
    skiff_tests::wait_until("the restarted container's line", WAIT, || {
        a.logs(&["db"]).matches("second-says-hi").count() == 2
    });
    a.down();
}

/// The agent's lines carry an RFC 3339 UTC time when stderr is not journald's; under journald
/// (JOURNAL_STREAM naming stderr) they do not (it stamps them itself).
#[test]
fn agent_log_lines_have_timestamps_unless_journald_stamps_them() {
    let stamped = |l: &str| {
        let (t, rest) = l.split_once(' ').unwrap_or_default();
        t.len() >= 20
            && t.ends_with('Z')
            && t.as_bytes()[4] == b'-'
            && t.as_bytes()[10] == b'T'
            && rest.starts_with("skiff agent: ")
    };
    for journald in [false, true] {
        let mut a = Agent::new(SKIFF);
        if journald {
            a.wrap(["sh", "-c", "JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec \"$@\"", "sh"]);
        } else {
            // Even an inherited JOURNAL_STREAM that is not this stderr means: not journald.
            a.wrap(["env", "JOURNAL_STREAM=1:1"]);
        }
        a.write_manifest(&format!("services:\n{}", sleeper("web", 1, "")));
        a.start();
        a.wait_running("web", 1);
        let log = a.log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("skiff agent: ")).collect();
        assert!(!lines.is_empty(), "{log}");
        for l in &lines {
            if journald {
                assert!(l.starts_with("skiff agent: "), "under journald, as it was: {l:?}");
            } else {
                assert!(stamped(l), "a time first: {l:?}");
            }
        }
        a.down();
    }
}
