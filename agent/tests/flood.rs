//! Floods against the agent (issue 11): a network client that opens more connections to a
//! published port than the agent has file descriptors, a local user that floods the status
//! endpoint with idle connections, and a burst of `/metrics` requests. In each, the agent
//! must keep what it needs for its own work: its status endpoint answers, a replica killed
//! meanwhile is restarted (a shim, `skiff-runtime` and its pipes, `nft` for the DNAT rules,
//! health checks through `skiff-runtime exec`), and its reconcile loop never waits for an
//! HTTP client.
//!
//! The agent runs with `prlimit --nofile=1024:1024` (this machine's hard limit is far higher),
//! so that a flood of a few hundred connections is enough to reach its limit.
//!
//! The published-port flood runs in a network namespace of the test's own (the agent
//! `nsenter --net=` into it, the clients on threads that joined it), on its `[::1]`: IPv6
//! is served by the agent's L4 proxy, not the kernel's DNAT. The status endpoint flood and
//! the metrics burst use the host's loopback only.
//!
//! Timing: nothing asserted depends on how fast the machine is; the figures (fds, CPU,
//! RSS) are printed for the report.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_tests::agent::{all_running, cpu_seconds, kill, replica, rss_kib, service, Agent, WAIT};
use skiff_tests::netns::{http_get, TestNetns};
use skiff_tests::registry::{http_request, Registry, BUSYBOX_OCI};
use skiff_tests::{read, skip, wait_until, which};

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

/// The agent's RLIMIT_NOFILE in these tests (soft and hard).
const LIMIT: usize = 1024;

fn image() -> String {
    Registry::shared().image(BUSYBOX_OCI)
}

/// Raises this test process's soft RLIMIT_NOFILE to its hard limit, for the flood's own
/// sockets; false when the hard limit is below `need`.
fn raise_own_nofile(need: usize) -> bool {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit of ours.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return false;
        }
        if r.rlim_cur < r.rlim_max {
            let up = libc::rlimit { rlim_cur: r.rlim_max, rlim_max: r.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &up) != 0 {
                return false;
            }
        }
    }
    r.rlim_max as usize >= need
}

/// The file descriptors a process holds.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// [`fds`] once it has not changed for a second (the flood has been taken in).
fn settled_fds(pid: u32) -> usize {
    let start = Instant::now();
    let (mut last, mut same) = (fds(pid), 0);
    while same < 10 && start.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(100));
        let now = fds(pid);
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

/// `syscr` of /proc/PID/io: read(2)-like calls of the process so far (files, pipes: not
/// sockets, whose recv(2) it does not count), all its threads.
fn read_calls(pid: u32) -> u64 {
    read(format!("/proc/{pid}/io"))
        .lines()
        .find_map(|l| l.strip_prefix("syscr:").and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// The `Max open files` line of /proc/PID/limits: (soft, hard).
fn nofile_of(pid: u32) -> (String, String) {
    let limits = read(format!("/proc/{pid}/limits"));
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap_or_default().to_string();
    let f: Vec<&str> = line.split_whitespace().collect();
    (f.get(3).unwrap_or(&"").to_string(), f.get(4).unwrap_or(&"").to_string())
}

/// What a flood did.
#[derive(Debug, Default)]
struct Held {
    /// Connections made.
    connects: usize,
    /// Connections the server closed (over a cap, evicted, timed out), noticed before the end.
    closed_by_server: usize,
    /// Connects that failed.
    failed: usize,
}

/// Whether the server still holds `s` open (nothing to read, no EOF, no reset).
fn still_open(s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    match s.peek(&mut b) {
        Err(e) => e.kind() == ErrorKind::WouldBlock,
        Ok(n) => n > 0,
    }
}

/// Holds `n` idle connections to `addr` (sending nothing) until `stop`; every second, those the
/// server closed are opened again, so the pressure stays. `filled` is set after the first round.
fn hold(addr: SocketAddr, n: usize, stop: &AtomicBool, filled: &AtomicBool) -> Held {
    let mut conns: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
    let mut h = Held::default();
    while !stop.load(Ordering::SeqCst) {
        for slot in conns.iter_mut() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            if slot.as_ref().is_some_and(still_open) {
                continue;
            }
            if slot.take().is_some() {
                h.closed_by_server += 1;
            }
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(s) => {
                    let _ = s.set_nonblocking(true);
                    *slot = Some(s);
                    h.connects += 1;
                }
                Err(_) => h.failed += 1,
            }
        }
        filled.store(true, Ordering::SeqCst);
        for _ in 0..10 {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    h
}

// ---------------------------------------------------------------------------------------
// A published port, through the agent's proxy
// ---------------------------------------------------------------------------------------

/// `GET /v1/status` from inside the namespace: the status, or what went wrong.
fn status_in(ns: &TestNetns, a: &Agent) -> Result<Value, String> {
    let listen = a.listen();
    match ns.enter(move || http_request(&listen, "GET", "/v1/status", &[], b"")) {
        Ok(r) if r.status == 200 => serde_json::from_slice(&r.body).map_err(|e| format!("not JSON: {e}")),
        Ok(r) => Err(format!("status {}", r.status)),
        Err(e) => Err(format!("{e}")),
    }
}

#[track_caller]
fn wait_status_in(ns: &TestNetns, a: &Agent, what: &str, mut cond: impl FnMut(&Value) -> bool) -> Value {
    let start = Instant::now();
    let mut last = Err(String::from("not asked yet"));
    while start.elapsed() < WAIT {
        last = status_in(ns, a);
        if let Ok(st) = &last {
            if cond(st) {
                return st.clone();
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}; last status: {last:?}\n{}", a.log_tail());
}

fn port<'a>(st: &'a Value, mapping: &str) -> &'a Value {
    service(st, "web")["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["mapping"] == mapping))
        .unwrap_or(&Value::Null)
}

fn all_healthy(st: &Value, n: usize) -> bool {
    all_running(st, "web", n)
        && service(st, "web")["replicas"].as_array().is_some_and(|rs| rs.iter().all(|r| r["health"] == "healthy"))
}

/// Connections the flood holds to the published port: more than the agent has fds for (each
/// proxied connection costs it two).
const PORT_FLOOD: usize = 600;

/// 600 idle connections to a published port on `[::1]` (the agent's proxy) of an agent with
/// 1024 fds: the proxy takes what its caps allow and closes the rest at once. Meanwhile the
/// status endpoint answers, a replica killed with SIGKILL is restarted and passes its health
/// checks (shim, runtime, `nft`, `runtime exec`: the agent's own fds), and once the flood ends
/// new connections through the port are served.
#[test]
fn a_flood_of_a_published_port_leaves_the_agent_its_own_fds() {
    for tool in ["ip", "nsenter", "nft", "prlimit"] {
        if which(tool).is_none() {
            skip(&format!("{tool} is not installed"));
            return;
        }
    }
    if !raise_own_nofile(PORT_FLOOD + 512) {
        skip("the hard RLIMIT_NOFILE of the test is too low for the flood");
        return;
    }
    let Some(ns) = TestNetns::new() else {
        skip("ip netns add failed");
        return;
    };
    let mut a = Agent::new(SKIFF);
    let out = a.skiff(&["pull", &image()]);
    assert!(out.success(), "{out}");
    let limit = format!("--nofile={LIMIT}:{LIMIT}");
    a.wrap(["prlimit", limit.as_str(), "nsenter", ns.nsenter_arg().as_str()]).with_bridge();
    a.write_manifest(&format!(
        r#"x-skiff:
  bridge: skflood1
  subnet: 10.123.40.0/24
services:
  web:
    image: {img}
    user: root
    command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"]
    stop_grace_period: 1s
    healthcheck:
      test: ["CMD-SHELL", "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 127.0.0.1 80 | grep -qx $$(hostname)"]
      interval: 1s
      timeout: 5s
      retries: 3
    ports: ["8080:80"]
    deploy:
      replicas: 2
      restart_policy:
        condition: any
        delay: 500ms
"#,
        img = image()
    ));
    a.spawn();
    wait_status_in(&ns, &a, "web (2) healthy behind 8080", |st| {
        all_healthy(st, 2) && port(st, "8080:80/tcp")["backends"] == 2
    });
    let pid = a.pid();
    let (soft, hard) = nofile_of(pid);
    assert_eq!((soft.as_str(), hard.as_str()), ("1024", "1024"), "the agent runs with the test's limit");
    let idle = settled_fds(pid);
    eprintln!("agent: {idle} fds and {} KiB resident before the flood", rss_kib(pid));

    let stop = Arc::new(AtomicBool::new(false));
    let filled = Arc::new(AtomicBool::new(false));
    let (s, f) = (stop.clone(), filled.clone());
    let addr: SocketAddr = "[::1]:8080".parse().expect("an address");
    let flood = ns.spawn(move || hold(addr, PORT_FLOOD, &s, &f));
    let stop_flood = StopOnDrop(stop.clone());
    wait_until("the flood's first round", WAIT, || filled.load(Ordering::SeqCst) || flood.is_finished());
    let at_cap = settled_fds(pid);
    eprintln!("agent: {at_cap} fds held under a flood of {PORT_FLOOD} connections (limit {LIMIT})");

    // The status endpoint answers at once.
    let st = status_in(&ns, &a).unwrap_or_else(|e| panic!("GET /v1/status during the flood: {e}\n{}", a.log_tail()));
    let old = replica(&st, "web-1")["pid"].as_i64().unwrap_or_else(|| panic!("web-1 has no pid: {st:#}"));
    // A replica killed meanwhile is restarted, and its health checks pass again.
    kill(old as i32, libc::SIGKILL);
    wait_status_in(&ns, &a, "web-1 restarted and healthy during the flood", |st| {
        let r = replica(st, "web-1");
        r["pid"].as_i64().is_some_and(|p| p != old)
            && r["restarts"].as_u64().is_some_and(|n| n >= 1)
            && all_healthy(st, 2)
            && port(st, "8080:80/tcp")["backends"] == 2
    });
    // And the DNAT rules followed (nft ran): no warning on the port, both backends in the rule.
    wait_until("the DNAT rule over both replicas", WAIT, || {
        ns.run(&["nft", "list", "table", "ip", "skiff_ports"]).1.contains("tcp dport 8080 dnat to numgen inc mod 2")
    });
    let st = status_in(&ns, &a).unwrap_or_else(|e| panic!("GET /v1/status during the flood: {e}\n{}", a.log_tail()));
    assert!(port(&st, "8080:80/tcp").get("warning").is_none(), "{st:#}");
    let during = fds(pid);

    stop.store(true, Ordering::SeqCst);
    let held = flood.join().expect("the flood thread");
    drop(stop_flood);
    eprintln!("flood: {held:?}; agent fds during the restart {during}");
    assert!(held.closed_by_server > 0, "the proxy refused connections over its cap: {held:?}");
    let log = a.log();
    assert!(!log.contains("Too many open files"), "the agent ran out of fds:\n{}", a.log_tail());
    // The caps leave the agent a reserve: at least a quarter of its limit free.
    assert!(at_cap <= LIMIT * 3 / 4, "the agent held {at_cap} of its {LIMIT} fds under the flood");

    // Once the flood is gone, new connections through the port are served.
    let start = Instant::now();
    let (served, last) = loop {
        let last = ns.enter(move || {
            let mut by = std::collections::BTreeMap::<String, usize>::new();
            let mut errors = Vec::new();
            for _ in 0..10 {
                match http_get(addr) {
                    Ok(b) => *by.entry(b).or_default() += 1,
                    Err(e) => errors.push(e),
                }
            }
            (by, errors)
        });
        if last.1.is_empty() && last.0.len() == 2 {
            break (true, last);
        }
        if start.elapsed() > WAIT {
            break (false, last);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(served, "after the flood, both replicas answer through [::1]:8080: {last:?}\n{}", a.log_tail());
    eprintln!("agent: {} fds after the flood", settled_fds(pid));
    a.down();
}

/// Sets the flag on drop, so a failing test ends its flood thread.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------
// The status endpoint
// ---------------------------------------------------------------------------------------

fn sleeper() -> String {
    format!(
        r#"services:
  web:
    image: {img}
    command: ["sleep", "1000"]
    stop_grace_period: 1s
    deploy:
      replicas: 2
      restart_policy:
        condition: any
        delay: 500ms
"#,
        img = image()
    )
}

/// Kills `id` with SIGKILL and waits until the agent has restarted it (a new pid, running).
#[track_caller]
fn kill_and_wait_restart(a: &mut Agent, id: &str) {
    let st = a.status();
    let old = replica(&st, id)["pid"].as_i64().unwrap_or_else(|| panic!("{id} has no pid: {st:#}"));
    kill(old as i32, libc::SIGKILL);
    a.wait_status(&format!("{id} restarted"), |st| {
        let r = replica(st, id);
        r["state"] == "running" && r["pid"].as_i64().is_some_and(|p| p != old) && all_running(st, "web", 2)
    });
}

/// Connections the flood holds to the status endpoint: twice the agent's fd limit.
const STATUS_FLOOD: usize = 2 * LIMIT;

/// A local user holds 2048 idle connections to the status endpoint of an agent with 1024
/// fds: the endpoint keeps at most its cap of connections (the oldest idle ones go), so the
/// agent keeps its fds, its requests are answered, and a killed replica is restarted.
#[test]
fn a_flood_of_the_status_endpoint_leaves_the_agent_its_fds() {
    if which("prlimit").is_none() {
        skip("prlimit is not installed");
        return;
    }
    if !raise_own_nofile(STATUS_FLOOD + 512) {
        skip("the hard RLIMIT_NOFILE of the test is too low for the flood");
        return;
    }
    let mut a = Agent::new(SKIFF);
    let limit = format!("--nofile={LIMIT}:{LIMIT}");
    a.wrap(["prlimit", limit.as_str()]);
    a.write_manifest(&sleeper());
    a.start();
    a.wait_running("web", 2);
    let pid = a.pid();
    let idle = settled_fds(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let filled = Arc::new(AtomicBool::new(false));
    let (s, f) = (stop.clone(), filled.clone());
    let addr: SocketAddr = a.listen().parse().expect("an address");
    // As `nobody` would: nothing here needs root.
    let flood = std::thread::spawn(move || hold(addr, STATUS_FLOOD, &s, &f));
    let stop_flood = StopOnDrop(stop.clone());
    wait_until("the flood's first round", WAIT, || filled.load(Ordering::SeqCst) || flood.is_finished());
    let at_cap = settled_fds(pid);
    eprintln!("agent: {idle} fds idle, {at_cap} under a flood of {STATUS_FLOOD} status connections");

    // The endpoint answers (the flood's connections are the oldest: they go first).
    let mut tries = 0;
    let answered = loop {
        tries += 1;
        match a.get("/v1/status") {
            Ok(r) if r.status == 200 => break true,
            _ if tries >= 20 => break false,
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert!(answered, "GET /v1/status never answered during the flood\n{}", a.log_tail());
    kill_and_wait_restart(&mut a, "web-1");
    let during = fds(pid);
    stop.store(true, Ordering::SeqCst);
    let held = flood.join().expect("the flood thread");
    drop(stop_flood);
    eprintln!("flood: {held:?}; status answered after {tries} tries; agent fds during the restart {during}");
    assert!(held.closed_by_server > 0, "the endpoint closed connections over its cap: {held:?}");
    assert!(!a.log().contains("Too many open files"), "the agent ran out of fds:\n{}", a.log_tail());
    // 64 connections at most, and the agent's own.
    assert!(at_cap <= idle + 64 + 16, "the agent held {at_cap} fds under the flood ({idle} before)");
    a.down();
}

/// Requests in the `/metrics` burst, at least.
const BURST: usize = 2000;

/// 2000+ `/metrics` requests from four threads, with a replica killed meanwhile: the agent
/// reads the containers' cgroups at most once a second (not once per request), and its
/// reconcile loop restarts the replica during the burst.
///
/// Deterministic measure: the agent's read(2) calls (`syscr` of /proc/PID/io; a cgroup scan
/// reads mountinfo, /proc/PID/cgroup and a few cgroup files per replica, while requests and
/// answers go through recv/send, which it does not count). The CPU the agent used is printed.
#[test]
fn a_burst_of_metrics_requests_reads_the_cgroups_at_most_once_a_second() {
    let mut a = Agent::new(SKIFF);
    a.write_manifest(&sleeper());
    a.start();
    let st = a.wait_running("web", 2);
    let old = replica(&st, "web-1")["pid"].as_i64().unwrap_or_else(|| panic!("web-1 has no pid: {st:#}"));
    let pid = a.pid();
    let (cpu0, reads0, t0) = (cpu_seconds(pid), read_calls(pid), Instant::now());

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let _stop_burst = StopOnDrop(stop.clone());
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (stop, done, failed, listen) = (stop.clone(), done.clone(), failed.clone(), a.listen());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match http_request(&listen, "GET", "/metrics", &[], b"") {
                        Ok(r) if r.status == 200 => done.fetch_add(1, Ordering::SeqCst),
                        _ => failed.fetch_add(1, Ordering::SeqCst),
                    };
                }
            })
        })
        .collect();
    wait_until("the burst to be under way", WAIT, || done.load(Ordering::SeqCst) >= BURST / 10);
    kill(old as i32, libc::SIGKILL);
    a.wait_status("web-1 restarted during the burst", |st| {
        let r = replica(st, "web-1");
        r["state"] == "running" && r["pid"].as_i64().is_some_and(|p| p != old) && all_running(st, "web", 2)
    });
    let restarted_after = done.load(Ordering::SeqCst);
    wait_until("the burst", WAIT, || done.load(Ordering::SeqCst) >= BURST);
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().expect("a burst thread");
    }
    let (cpu, reads, secs) = (cpu_seconds(pid) - cpu0, read_calls(pid) - reads0, t0.elapsed().as_secs_f64());
    let requests = done.load(Ordering::SeqCst);
    eprintln!(
        "metrics burst: {requests} requests ({} failed) in {secs:.1} s; web-1 restarted after {restarted_after}; \
         agent CPU {cpu:.2} s ({:.0} us/request), {reads} read calls",
        failed.load(Ordering::SeqCst),
        cpu * 1e6 / requests as f64
    );
    // A scan per request would be several read calls per request; a scan a second plus the
    // restart's own reads (the runtime's and the shim's pipes, records) are far fewer.
    assert!(
        (reads as usize) < requests / 2,
        "{reads} read calls for {requests} /metrics requests in {secs:.1} s: the cgroups are read per request"
    );
    a.down();
}
