//! Issue 12: the agent's control socket (`<run>/control.sock`), the way of `skiff scale`,
//! `skiff rollback`, `skiff rollout resume` and `skiff update`. Transport only: who may
//! connect (root, by the modes and by SO_PEERCRED), what a command says with no agent running,
//! bounded and deadline-bound requests. What the agent does with a request is tested where it
//! is implemented; here a reply — any reply — must come, and refusals must say why.
//!
//! The attacker is `nobody` (`setpriv --reuid=65534 --regid=65534 --clear-groups`), and
//! `nobody` holding CAP_DAC_OVERRIDE (ambient), which the modes do not stop: the agent's
//! SO_PEERCRED check must.
//!
//! `SKIFF_TEST_SKIFF` runs these tests against another skiff binary.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_tests::agent::{all_running, pids, rss_kib, Agent};
use skiff_tests::registry::{Registry, BUSYBOX_OCI};
use skiff_tests::{host, Out};

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

fn skiff_bin() -> PathBuf {
    std::env::var_os("SKIFF_TEST_SKIFF").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(SKIFF))
}

/// An agent running one replica of `web` (busybox, sleeping).
fn running_agent() -> Agent {
    let mut a = Agent::new(skiff_bin());
    let img = Registry::shared().image(BUSYBOX_OCI);
    a.write_manifest(&format!(
        "services:\n  web:\n    image: {img}\n    command: [\"sleep\", \"1000\"]\n    stop_grace_period: 1s\n"
    ));
    a.start();
    a.wait_status("web running", |st| all_running(st, "web", 1));
    a
}

fn socket(a: &Agent) -> PathBuf {
    a.run_dir().join("control.sock")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

const NOBODY: [&str; 5] = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"];
/// nobody, with CAP_DAC_OVERRIDE kept across its execve: past every mode.
const NOBODY_DAC: [&str; 7] = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=+dac_override",
    "--ambient-caps=+dac_override",
    "--",
];

/// `args` under `prefix` (setpriv), through a shell that execs them (see perms.rs: setpriv's
/// own execve still resolves the path with root's rights).
fn as_user(prefix: &[&str], args: &[&str]) -> Out {
    let mut v: Vec<&str> = prefix.to_vec();
    v.extend_from_slice(&["/bin/sh", "-c", "exec \"$@\"", "sh"]);
    v.extend_from_slice(args);
    host(&v)
}

/// Whether a `skiff` control command got the agent's reply: its message on stdout (exit 0) or
/// `skiff: MESSAGE` on stderr (exit 1); not the command's own error (`skiff: error: ...`).
fn replied(out: &Out) -> bool {
    match out.code() {
        0 => !out.stdout.trim().is_empty(),
        1 => out.stderr.starts_with("skiff: ") && !out.stderr.starts_with("skiff: error:"),
        _ => false,
    }
}

/// One request line over a raw connection (as root); the reply line, parsed. Writing may fail
/// half-way (the agent stops reading at its limit and closes): the reply is read all the same.
fn raw(path: &Path, send: &[u8]) -> Value {
    let mut c = UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
    c.set_read_timeout(Some(Duration::from_secs(40))).expect("timeout");
    c.set_write_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let _ = c.write_all(send);
    read_reply(&mut c)
}

/// The reply line on `c` (a read error after it, ECONNRESET of the data the agent left unread,
/// does not matter).
fn read_reply(c: &mut UnixStream) -> Value {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.contains(&b'\n') && out.len() < 1 << 20 {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if out.is_empty() => panic!("no reply: {e}"),
            Err(_) => break,
        }
    }
    let line = out.split(|b| *b == b'\n').next().unwrap_or_default();
    let v: Value = serde_json::from_slice(line)
        .unwrap_or_else(|e| panic!("the reply is not JSON ({e}): {}", String::from_utf8_lossy(&out)));
    assert!(v["ok"].is_boolean() && v["message"].is_string(), "not a reply: {v}");
    v
}

#[track_caller]
fn refused_with(v: &Value, words: &str) {
    assert_eq!(v["ok"], false, "{v}");
    let m = v["message"].as_str().unwrap_or_default();
    assert!(m.contains(words), "the refusal must say `{words}`: {m}");
}

// ---------------------------------------------------------------------------------------

/// A local user cannot reach the socket (0600 root's, in the 0700 run directory): neither a raw
/// connect nor `skiff scale`. nobody with CAP_DAC_OVERRIDE gets past the modes, and is refused
/// by the agent (SO_PEERCRED). Nothing changed.
#[test]
fn a_local_user_cannot_use_the_control_socket() {
    let mut a = running_agent();
    let sock = socket(&a);
    let md = fs::symlink_metadata(&sock).unwrap_or_else(|e| panic!("{}: {e}", sock.display()));
    assert!(md.file_type().is_socket(), "{} is a socket", sock.display());
    assert_eq!(md.mode() & 0o7777, 0o600, "{} is {:o}, want 600", sock.display(), md.mode() & 0o7777);
    assert_eq!((md.uid(), md.gid()), (0, 0), "{} is root:root", sock.display());
    let before = pids(&a.status(), "web");

    // A raw connect: EACCES.
    let connect = "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1]); print('connected')";
    let out = as_user(&NOBODY, &["/usr/bin/python3", "-c", connect, s(&sock)]);
    assert!(!out.success() && out.stderr.contains("Permission denied"), "nobody connected:\n{out}");
    // The CLI says what to do.
    let (bin, root) = (skiff_bin(), a.root());
    let out = as_user(&NOBODY, &[s(&bin), "--root", s(&root), "scale", "web=3"]);
    assert_eq!(out.code(), 1, "{out}");
    assert!(out.stderr.contains("permission denied: run as root"), "{out}");

    // Past the modes: the agent refuses a peer that is not uid 0, before reading its request.
    let out = as_user(&NOBODY_DAC, &["/usr/bin/python3", "-c", connect, s(&sock)]);
    assert!(out.success() && out.stdout.contains("connected"), "CAP_DAC_OVERRIDE reaches the socket:\n{out}");
    for args in [&["scale", "web=3"][..], &["update"][..], &["rollback", "web"][..], &["rollout", "resume", "web"][..]]
    {
        let mut v = vec![s(&bin), "--root", s(&root)];
        v.extend_from_slice(args);
        let out = as_user(&NOBODY_DAC, &v);
        assert_eq!(out.code(), 1, "{out}");
        assert!(out.stderr.starts_with("skiff: only root may use"), "the agent must refuse uid 65534:\n{out}");
    }

    // Nothing changed: the same replica, same pid; the agent serves on.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pids(&a.status(), "web"), before);
    assert!(a.log().contains("control socket: refused a connection of uid 65534"), "{}", a.log_tail());
    let out = a.skiff(&["update"]);
    assert!(replied(&out), "root gets a reply:\n{out}");
    a.down();
}

/// With no agent running a command says so, exits 1 and creates nothing; the same after an
/// agent was SIGKILLed (its socket left behind). A new agent replaces that socket, and removes
/// its own when it stops.
#[test]
fn with_no_agent_a_command_says_so_and_changes_nothing() {
    let a = Agent::new(skiff_bin());
    let no_agent = |a: &Agent| {
        format!(
            "skiff: error: no agent is running for {}: nothing was changed (start it: `skiff agent` or `systemctl start skiff`)",
            a.root().display()
        )
    };
    let root = a.root();
    let listing = |p: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(p).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        v.sort();
        v
    };
    let before = listing(&root);
    for args in [
        &["scale", "web=2"][..],
        &["update"][..],
        &["rollback", "web", "--to", "1"][..],
        &["rollout", "resume", "web"][..],
    ] {
        let out = a.skiff(args);
        assert_eq!(out.code(), 1, "{out}");
        assert_eq!(out.stderr.trim_end(), no_agent(&a), "{out}");
        assert!(out.stdout.is_empty(), "{out}");
    }
    assert_eq!(listing(&root), before, "nothing was created under {}", root.display());
    let missing = a.dir().join("no-such-root");
    let out = host(&[s(&skiff_bin()), "--root", s(&missing), "scale", "web=2"]);
    assert_eq!(out.code(), 1, "{out}");
    assert!(out.stderr.contains("no agent is running for"), "{out}");
    assert!(!missing.exists(), "{} was created", missing.display());

    // A usage error never reaches the socket.
    let out = a.skiff(&["scale", "web=x"]);
    assert_eq!(out.code(), 1, "{out}");
    assert!(out.stderr.contains("web=x: N must be a whole number of replicas"), "{out}");

    // An agent killed with SIGKILL leaves its socket: nothing answers on it.
    drop(a);
    let mut a = running_agent();
    a.stop_with(libc::SIGKILL);
    assert!(socket(&a).exists(), "a SIGKILLed agent cannot remove its socket");
    let out = a.skiff(&["scale", "web=2"]);
    assert_eq!(out.code(), 1, "{out}");
    assert_eq!(out.stderr.trim_end(), no_agent(&a), "{out}");

    // The next agent replaces it.
    a.start();
    let out = a.skiff(&["scale", "web=2"]);
    assert!(replied(&out), "{out}");
    a.down();
    assert!(!socket(&a).exists(), "the agent removes its socket when it stops");
}

/// A 1 MiB line and garbage get error replies; the agent reads no more than its limit (its
/// RSS does not grow by MiBs), serves its status endpoint and the next command.
#[test]
fn oversized_and_garbage_requests_get_error_replies_and_the_agent_serves_on() {
    let mut a = running_agent();
    let sock = socket(&a);
    let pid = a.pid();
    let rss_before = rss_kib(pid);
    let big = vec![b'x'; 1 << 20];
    for _ in 0..16 {
        refused_with(&raw(&sock, &big), "request too long");
    }
    let mut big_json = br#"{"command":"update","services":[""#.to_vec();
    big_json.extend(std::iter::repeat_n(b'a', 1 << 20));
    big_json.extend_from_slice(b"\"]}\n");
    refused_with(&raw(&sock, &big_json), "request too long");
    for garbage in [&b"garbage\n"[..], b"\x00\xff\xfe{{{\n", b"{\"command\":\"format_disk\"}\n", b"[1,2,3]\n", b"\n"] {
        let v = raw(&sock, garbage);
        assert_eq!(v["ok"], false, "{v}");
        let m = v["message"].as_str().unwrap_or_default();
        assert!(m.starts_with("bad request: ") || m.starts_with("empty request"), "{m}");
    }
    // A request without its newline, the client's side shut: still one request.
    let mut c = UnixStream::connect(&sock).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(40))).expect("timeout");
    c.write_all(br#"{"command":"update","services":[]}"#).expect("write");
    c.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let v = read_reply(&mut c);
    let m = v["message"].as_str().unwrap_or_default();
    assert!(!m.starts_with("bad request") && !m.starts_with("empty request"), "a well-formed request: {v}");

    let rss_after = rss_kib(pid);
    assert!(
        rss_after < rss_before + 4096,
        "the agent's RSS grew from {rss_before} KiB to {rss_after} KiB on refused requests"
    );
    assert_eq!(a.get("/healthz").expect("GET /healthz").status, 200);
    assert!(all_running(&a.status(), "web", 1));
    for args in [&["update"][..], &["update", "web"][..], &["rollback", "web"][..], &["rollout", "resume", "web"][..]] {
        let out = a.skiff(args);
        assert!(replied(&out), "{out}");
    }
    a.down();
}

/// A client that connects and says nothing holds nothing: the next command gets its reply at
/// once; a crowd of them fills the agent's few slots, and the next command is told so at once;
/// each silent client is answered when its deadline passes, and the slots come back.
#[test]
fn a_silent_client_does_not_hold_up_another_command() {
    let mut a = running_agent();
    let sock = socket(&a);
    let silent = UnixStream::connect(&sock).expect("connect");
    let t = Instant::now();
    let out = a.skiff(&["scale", "web=2"]);
    assert!(replied(&out), "{out}");
    assert!(!out.stderr.contains("other control connections"), "one silent client took every slot: {out}");
    assert!(t.elapsed() < Duration::from_secs(3), "the reply took {:?}", t.elapsed());

    let crowd: Vec<UnixStream> = (0..20).map(|_| UnixStream::connect(&sock).expect("connect")).collect();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let out = a.skiff(&["update"]);
    assert!(replied(&out), "{out}");
    assert!(t.elapsed() < Duration::from_secs(3), "the reply took {:?}", t.elapsed());
    assert_eq!(a.get("/healthz").expect("GET /healthz").status, 200, "the loop is free meanwhile");

    // The silent ones are told, within the 5 s deadline (and a margin).
    let t = Instant::now();
    let mut first = silent;
    first.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
    refused_with(&read_reply(&mut first), "no request within 5s");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    drop(crowd);
    std::thread::sleep(Duration::from_secs(6));
    let t = Instant::now();
    let out = a.skiff(&["update"]);
    assert!(replied(&out) && !out.stderr.contains("other control connections"), "the slots came back:\n{out}");
    assert!(t.elapsed() < Duration::from_secs(3), "the reply took {:?}", t.elapsed());
    a.down();
}
