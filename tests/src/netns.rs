//! A network namespace of a test's own, for the networking tests: every packet they send stays
//! inside it (its loopback, and the bridge and veths the agent makes there).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

/// `ip netns add skiff-t-<pid>-<n>` with its loopback up; deleted when dropped, also when the
/// test fails.
pub struct TestNetns {
    name: String,
}

impl TestNetns {
    /// `None` when `ip netns add` fails (no `ip`, no permission).
    pub fn new() -> Option<TestNetns> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("skiff-t-{}-{n}", std::process::id());
        let ok = Command::new("ip").args(["netns", "add", &name]).status().is_ok_and(|s| s.success());
        let ns = ok.then_some(TestNetns { name })?;
        let up = Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]).status();
        up.is_ok_and(|s| s.success()).then_some(ns)
    }

    /// The namespace as after a reboot: deleted and made again under the same name, loopback
    /// up, and nothing else (no link, address, route or nftables table of the old one).
    pub fn reboot(&self) {
        let ok = |args: &[&str]| Command::new("ip").args(args).status().is_ok_and(|s| s.success());
        assert!(ok(&["netns", "del", &self.name]), "ip netns del {}", self.name);
        assert!(ok(&["netns", "add", &self.name]), "ip netns add {}", self.name);
        assert!(ok(&["-n", &self.name, "link", "set", "lo", "up"]), "ip -n {} link set lo up", self.name);
    }

    /// Its name, for `ip -n NAME` / `ip netns exec NAME`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `--net=/run/netns/NAME` for nsenter: only the network namespace changes, so the mounts
    /// the agent makes (rootfs, namespace files) are seen by the test and `skiff down`.
    pub fn nsenter_arg(&self) -> String {
        format!("--net={}", self.path())
    }

    /// Runs `args` inside the namespace; (success, stdout).
    pub fn run(&self, args: &[&str]) -> (bool, String) {
        match self.output(args) {
            Ok(o) => (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned()),
            Err(e) => (false, format!("nsenter: {e}")),
        }
    }

    /// Runs `args` inside the namespace (stdin /dev/null); its whole output.
    pub fn output(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        Command::new("nsenter").arg(self.nsenter_arg()).args(args).stdin(Stdio::null()).output()
    }

    /// Runs `f` on a thread that has joined the namespace (the test's own threads never change
    /// namespace).
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f).join().expect("the thread in the test's network namespace panicked")
    }

    /// Starts `f` on a thread that has joined the namespace.
    pub fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
        let ns = std::fs::File::open(self.path()).unwrap_or_else(|e| panic!("open {}: {e}", self.path()));
        std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns into the test's namespace");
            f()
        })
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// `GET /` over HTTP/1.0 on a fresh connection to `addr` (call it inside the namespace): the
/// body, or what went wrong (refused, reset, an empty answer...).
pub fn http_get(addr: SocketAddr) -> Result<String, String> {
    let t = Duration::from_secs(5);
    let mut s = TcpStream::connect_timeout(&addr, t).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(t)).and_then(|_| s.set_write_timeout(Some(t))).map_err(|e| format!("{e}"))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n").map_err(|e| format!("send to {addr}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => Ok(body.trim().to_string()),
        _ if raw.is_empty() => Err(format!("{addr}: connection closed without an answer")),
        _ => Err(format!("{addr}: unexpected answer {text:?}")),
    }
}
