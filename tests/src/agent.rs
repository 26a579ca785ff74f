//! Fixture for the end-to-end tests of `skiff agent`.
//!
//! An [`Agent`] is one agent under test: its own scratch root (`<scratch>/root`), manifest
//! file (`<scratch>/compose.yaml`), free `127.0.0.1` port and OCI runtime (the runtime under
//! test by default). It starts the agent in the background (stderr and stdout into a log
//! file per start, reaped by a thread so that `skiff down` sees it go), talks to its status
//! endpoint, drives the runtime with the agent's runtime root, and runs `skiff` commands on
//! the same root.
//!
//! Every test ends with [`Agent::down`] (which checks that `skiff down` leaves nothing
//! running or mounted). Whatever a failing test leaves, the `Drop` of [`Agent`] removes: it
//! kills the agent by its pid, `delete --force`s every container in the runtime root, kills
//! the shims (by the pids in their pid files) and any process whose root is in the scratch
//! root, removes the agent's cgroups (killing what is left in them), and unmounts everything
//! under the scratch directory before it is removed.
//!
//! crun refuses the hybrid cgroup layout of this kind of host while the cgroup2 mount holds
//! hugetlb; an agent on crun ([`Agent::with_runtime`]) moves hugetlb to a v1 hierarchy at
//! `/run/hugetlb-v1` while it exists (and puts it back after). An agent on any runtime but
//! skiff-runtime holds every other agent of the test process off meanwhile (runc, for one,
//! cannot mount the cgroupfs of a container while a v1 hierarchy sits outside /sys/fs/cgroup).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::registry::{free_port, http_request, HttpResponse};
use crate::{cgroup_v1, kind_of, read, remove_cgroup, require_root, run_command, unmount_under, Kind, Out, Scratch};

/// Upper bound for anything the agent is waited for. Only there to turn a hang into a
/// failure: no test depends on how fast the agent is.
pub const WAIT: Duration = Duration::from_secs(90);

/// How often status is polled while waiting.
const POLL: Duration = Duration::from_millis(100);

static AGENTS: RwLock<()> = RwLock::new(());

#[allow(dead_code)]
enum Lock {
    Shared(RwLockReadGuard<'static, ()>),
    Exclusive(RwLockWriteGuard<'static, ()>),
}

/// The agent process of one start.
struct Proc {
    pid: u32,
    exited: mpsc::Receiver<ExitStatus>,
    status: Option<ExitStatus>,
}

impl Proc {
    fn poll(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.exited.recv_timeout(timeout).ok();
        }
        self.status
    }
}

/// One agent under test (see the module docs).
pub struct Agent {
    skiff: PathBuf,
    runtime: PathBuf,
    port: u16,
    proc: Option<Proc>,
    starts: usize,
    logs: Vec<PathBuf>,
    use_env: bool,
    wrapper: Vec<OsString>,
    bridge: bool,
    cgroup_parent: String,
    dir: Scratch,
    _hugetlb: Option<HugetlbV1>,
    _lock: Lock,
}

impl Agent {
    /// An agent on the runtime under test ([`crate::runtime_bin`]); `skiff` is the skiff
    /// binary (`env!("CARGO_BIN_EXE_skiff")` in the agent's tests).
    pub fn new(skiff: impl AsRef<Path>) -> Agent {
        Agent::with_runtime(skiff, crate::runtime_bin())
    }

    /// An agent on a given OCI runtime (e.g. runc or crun).
    pub fn with_runtime(skiff: impl AsRef<Path>, runtime: impl AsRef<Path>) -> Agent {
        require_root();
        let runtime = runtime.as_ref().to_path_buf();
        let crun = kind_of(&runtime) == Kind::Crun;
        // crun moves hugetlb around (see the module docs), which runc cannot stand: agents on
        // another runtime than skiff-runtime run alone.
        let lock = if kind_of(&runtime) != Kind::Skiff {
            Lock::Exclusive(AGENTS.write().unwrap_or_else(|e| e.into_inner()))
        } else {
            Lock::Shared(AGENTS.read().unwrap_or_else(|e| e.into_inner()))
        };
        let hugetlb = if crun { Some(HugetlbV1::apply()) } else { None };
        let dir = Scratch::new("agent");
        fs::create_dir_all(dir.join("root")).expect("create the agent's root");
        fs::create_dir_all(dir.join("io")).expect("create the io dir");
        let cgroup_parent = cgroup_parent_of(&dir.join("root"), &dir.join("io"));
        Agent {
            skiff: skiff.as_ref().to_path_buf(),
            runtime,
            port: free_port(),
            proc: None,
            starts: 0,
            logs: Vec::new(),
            use_env: false,
            wrapper: Vec::new(),
            bridge: false,
            cgroup_parent,
            dir,
            _hugetlb: hugetlb,
            _lock: lock,
        }
    }

    /// Pass root, manifest, listen address and runtime through SKIFF_ROOT, SKIFF_MANIFEST,
    /// SKIFF_LISTEN and SKIFF_RUNTIME instead of flags.
    pub fn use_env(&mut self, yes: bool) -> &mut Self {
        self.use_env = yes;
        self
    }

    /// Lets the agent set up its bridge network (it runs with `SKIFF_NO_BRIDGE=1` otherwise, so
    /// no test touches the host's networking): only for an agent wrapped into a network
    /// namespace of the test's own.
    pub fn with_bridge(&mut self) -> &mut Self {
        self.bridge = true;
        self
    }

    /// Starts the agent through `prefix`: a command and its arguments, followed by the agent's
    /// own command line (e.g. `unshare -m sh -c '... && exec "$@"' sh`). The prefix must exec
    /// the agent in the end, so that the pid the fixture waits for and kills is the agent's.
    pub fn wrap<S: AsRef<OsStr>>(&mut self, prefix: impl IntoIterator<Item = S>) -> &mut Self {
        self.wrapper = prefix.into_iter().map(|s| s.as_ref().to_os_string()).collect();
        self
    }

    /// The scratch directory (root, manifest, logs of the agent).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `--root` of the agent.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// The agent's run state (`<root>/run`).
    pub fn run_dir(&self) -> PathBuf {
        self.root().join("run")
    }

    /// The OCI runtime's `--root` as the agent uses it.
    pub fn runtime_root(&self) -> PathBuf {
        self.run_dir().join("runtime")
    }

    pub fn runtime(&self) -> &Path {
        &self.runtime
    }

    pub fn manifest_path(&self) -> PathBuf {
        self.dir.join("compose.yaml")
    }

    /// `127.0.0.1:PORT`
    pub fn listen(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Replaces the manifest the way editors do: a new file renamed over the old one.
    pub fn write_manifest(&self, yaml: &str) {
        let path = self.manifest_path();
        let tmp = self.dir.join(".compose.yaml.tmp");
        let mut f = File::create(&tmp).unwrap_or_else(|e| panic!("create {}: {e}", tmp.display()));
        f.write_all(yaml.as_bytes()).and_then(|_| f.sync_all()).expect("write the manifest");
        drop(f);
        fs::rename(&tmp, &path).expect("rename the manifest into place");
    }

    /// Rewrites the manifest in place (truncate + write, like `cat > compose.yaml`).
    pub fn write_manifest_in_place(&self, yaml: &str) {
        let path = self.manifest_path();
        let mut f = OpenOptions::new()
            .write(true)
            .truncate(true)
            .create(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        f.write_all(yaml.as_bytes()).and_then(|_| f.sync_all()).expect("write the manifest");
    }

    fn agent_command(&self) -> Command {
        let mut cmd = match self.wrapper.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(&self.skiff);
                c
            }
            None => Command::new(&self.skiff),
        };
        for v in
            ["SKIFF_ROOT", "SKIFF_MANIFEST", "SKIFF_LISTEN", "SKIFF_RUNTIME", "NOTIFY_SOCKET", "REGISTRY_AUTH_FILE"]
        {
            cmd.env_remove(v);
        }
        if self.use_env {
            cmd.env("SKIFF_ROOT", self.root())
                .env("SKIFF_MANIFEST", self.manifest_path())
                .env("SKIFF_LISTEN", self.listen())
                .env("SKIFF_RUNTIME", &self.runtime)
                .arg("agent");
        } else {
            cmd.arg("--root")
                .arg(self.root())
                .arg("agent")
                .arg("--manifest")
                .arg(self.manifest_path())
                .arg("--listen")
                .arg(self.listen())
                .arg("--runtime")
                .arg(&self.runtime);
        }
        if !self.bridge {
            cmd.env("SKIFF_NO_BRIDGE", "1");
        }
        cmd.env("RUST_BACKTRACE", "1").current_dir("/").stdin(Stdio::null());
        cmd
    }

    /// Starts the agent and waits until `GET /healthz` answers 200.
    #[track_caller]
    pub fn start(&mut self) {
        self.spawn();
        let start = Instant::now();
        loop {
            if let Some(st) = self.proc.as_mut().and_then(|p| p.poll(Duration::ZERO)) {
                panic!("the agent exited before it was ready: {st}\n{}", self.log_tail());
            }
            if let Ok(r) = self.get("/healthz") {
                if r.status == 200 {
                    return;
                }
            }
            if start.elapsed() > WAIT {
                panic!("the agent did not answer 200 on /healthz within {WAIT:?}\n{}", self.log_tail());
            }
            std::thread::sleep(POLL);
        }
    }

    /// Starts the agent without waiting for it.
    pub fn spawn(&mut self) {
        assert!(!self.is_running(), "the agent is running already");
        self.starts += 1;
        let log = self.dir.join(format!("agent-{}.log", self.starts));
        let f = File::create(&log).expect("create the agent's log");
        let mut cmd = self.agent_command();
        cmd.stdout(f.try_clone().expect("dup")).stderr(f);
        // The agent gets its own process group: a terminal's ^C to the test process does
        // not reach it (it must be stopped by the test or its Drop, like under systemd).
        cmd.process_group(0);
        let mut child: Child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", self.skiff.display()));
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("reap-agent-{pid}"))
            .spawn(move || {
                if let Ok(st) = child.wait() {
                    let _ = tx.send(st);
                }
            })
            .expect("spawn the reaper thread");
        self.logs.push(log);
        self.proc = Some(Proc { pid, exited: rx, status: None });
    }

    /// The agent's pid (panics when it is not running).
    #[track_caller]
    pub fn pid(&mut self) -> u32 {
        assert!(self.is_running(), "the agent is not running\n{}", self.log_tail());
        self.proc.as_ref().map(|p| p.pid).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        match self.proc.as_mut() {
            Some(p) => p.poll(Duration::ZERO).is_none(),
            None => false,
        }
    }

    /// Sends `sig` to the agent (by its pid, while it has not exited).
    pub fn signal(&mut self, sig: i32) {
        if self.is_running() {
            if let Some(p) = &self.proc {
                // SAFETY: kill(2) of our own child, which has not been reaped yet.
                unsafe { libc::kill(p.pid as i32, sig) };
            }
        }
    }

    /// Waits for the agent to exit; None when it still runs after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.as_mut().and_then(|p| p.poll(timeout))
    }

    /// Sends `sig` and waits for the agent to exit.
    #[track_caller]
    pub fn stop_with(&mut self, sig: i32) -> ExitStatus {
        self.signal(sig);
        match self.wait_exit(WAIT) {
            Some(st) => st,
            None => panic!("the agent did not exit within {WAIT:?} of signal {sig}\n{}", self.log_tail()),
        }
    }

    /// Everything the agent logged, every start, with a header per start.
    pub fn log(&self) -> String {
        let mut s = String::new();
        for (i, l) in self.logs.iter().enumerate() {
            s.push_str(&format!("--- agent log, start {} ({}) ---\n", i + 1, l.display()));
            s.push_str(&read(l));
        }
        s
    }

    /// The end of [`Agent::log`], for failure messages.
    pub fn log_tail(&self) -> String {
        let s = self.log();
        let cut = s.len().saturating_sub(6000);
        let cut = (cut..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(s.len());
        s[cut..].to_string()
    }

    /// One request to the status endpoint.
    pub fn get(&self, path: &str) -> std::io::Result<HttpResponse> {
        http_request(&self.listen(), "GET", path, &[], b"")
    }

    /// `GET /v1/status`, parsed.
    #[track_caller]
    pub fn status(&self) -> Value {
        let r = self.get("/v1/status").unwrap_or_else(|e| panic!("GET /v1/status: {e}\n{}", self.log_tail()));
        assert_eq!(r.status, 200, "GET /v1/status: {r}\n{}", self.log_tail());
        serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("GET /v1/status is not JSON ({e}): {}\n{}", r.text(), self.log_tail()))
    }

    /// `GET /metrics` (must be 200).
    #[track_caller]
    pub fn metrics(&self) -> String {
        let r = self.get("/metrics").unwrap_or_else(|e| panic!("GET /metrics: {e}\n{}", self.log_tail()));
        assert_eq!(r.status, 200, "GET /metrics: {r}");
        r.text()
    }

    /// Polls the status until `cond` holds; returns that status. Panics (with the last
    /// status and the agent's log) after [`WAIT`], or when the agent exits.
    #[track_caller]
    pub fn wait_status(&mut self, what: &str, mut cond: impl FnMut(&Value) -> bool) -> Value {
        let start = Instant::now();
        let mut last = Value::Null;
        loop {
            if !self.is_running() {
                panic!("the agent exited while waiting for {what}\nlast status: {last:#}\n{}", self.log_tail());
            }
            if let Ok(r) = self.get("/v1/status") {
                if r.status == 200 {
                    if let Ok(v) = serde_json::from_slice::<Value>(&r.body) {
                        if cond(&v) {
                            return v;
                        }
                        last = v;
                    }
                }
            }
            if start.elapsed() > WAIT {
                panic!("timed out after {WAIT:?} waiting for {what}\nlast status: {last:#}\n{}", self.log_tail());
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until `service` has exactly `n` replicas, all running with a pid, and the
    /// counts say so.
    #[track_caller]
    pub fn wait_running(&mut self, service: &str, n: usize) -> Value {
        self.wait_status(&format!("{n} running replicas of {service}"), |st| all_running(st, service, n))
    }

    /// The runtime with `--root <agent's runtime root>` and `args`.
    pub fn rt(&self, args: &[&str]) -> Out {
        let mut cmd = Command::new(&self.runtime);
        cmd.arg("--root").arg(self.runtime_root()).args(args).stdin(Stdio::null());
        let desc = format!("{} --root {} {}", self.runtime.display(), self.runtime_root().display(), args.join(" "));
        run_command(cmd, desc, &self.dir.join("io"), crate::TIMEOUT)
    }

    /// `list --format json` of the runtime: one `{id, pid, status, ...}` per container.
    #[track_caller]
    pub fn rt_list(&self) -> Vec<Value> {
        if !self.runtime_root().exists() {
            return Vec::new();
        }
        let out = self.rt(&["list", "--format", "json"]).ok();
        match serde_json::from_str::<Value>(out.stdout.trim()) {
            Ok(Value::Array(v)) => v,
            Ok(Value::Null) => Vec::new(),
            _ if out.stdout.trim().is_empty() => Vec::new(),
            other => panic!("runtime list --format json: not a list: {other:?}\n{out}"),
        }
    }

    /// The ids the runtime lists, sorted.
    pub fn rt_ids(&self) -> Vec<String> {
        let mut v: Vec<String> =
            self.rt_list().iter().filter_map(|c| c.get("id").and_then(Value::as_str).map(String::from)).collect();
        v.sort();
        v
    }

    /// The init pid of a container as the runtime's `state` reports it.
    #[track_caller]
    pub fn rt_pid(&self, id: &str) -> i64 {
        let out = self.rt(&["state", id]).ok();
        let v: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("state {id}: {e}\n{out}"));
        v["pid"].as_i64().unwrap_or_else(|| panic!("state {id} has no pid: {v}"))
    }

    /// `skiff --root ROOT ARGS` with SKIFF_RUNTIME set to the agent's runtime.
    pub fn skiff(&self, args: &[&str]) -> Out {
        let mut cmd = Command::new(&self.skiff);
        cmd.env_remove("SKIFF_ROOT")
            .env_remove("SKIFF_MANIFEST")
            .env_remove("REGISTRY_AUTH_FILE")
            .env("SKIFF_RUNTIME", &self.runtime)
            .env("SKIFF_LISTEN", self.listen())
            .arg("--root")
            .arg(self.root())
            .args(args)
            .stdin(Stdio::null());
        let desc = format!("skiff --root {} {}", self.root().display(), args.join(" "));
        run_command(cmd, desc, &self.dir.join("io"), crate::TIMEOUT)
    }

    /// `skiff logs ARGS` must succeed; its stdout.
    #[track_caller]
    pub fn logs(&self, args: &[&str]) -> String {
        let mut a = vec!["logs"];
        a.extend_from_slice(args);
        let out = self.skiff(&a);
        assert!(out.success(), "{out}");
        out.stdout
    }

    /// `skiff down --runtime RT`, then checks that it left nothing: the agent exited, the
    /// runtime lists no container, every container process is gone, nothing is mounted
    /// under the root, no container directory is left.
    #[track_caller]
    pub fn down(&mut self) {
        let before: Vec<i64> = self.rt_list().iter().filter_map(|c| c["pid"].as_i64()).filter(|p| *p > 0).collect();
        let shims: Vec<i32> = self.shim_pids().into_values().collect();
        let rt = self.runtime.display().to_string();
        let out = self.skiff(&["down", "--runtime", &rt]);
        assert!(out.success(), "skiff down failed:\n{out}\n{}", self.log_tail());
        if self.proc.is_some() {
            assert!(
                self.wait_exit(Duration::from_secs(10)).is_some(),
                "skiff down returned but the agent still runs\n{}",
                self.log_tail()
            );
        }
        let left = self.rt_ids();
        assert!(left.is_empty(), "skiff down left containers in the runtime: {left:?}");
        for p in before {
            assert!(!self.is_container_process(p as i32), "skiff down left container process {p} running");
        }
        for p in shims {
            assert!(!is_shim_of(p, &self.root()), "skiff down left shim {p} running");
        }
        // Strictly under: a filesystem mounted at the root itself is a test's (a small disk).
        let mounts: Vec<PathBuf> =
            crate::mount_points().into_iter().filter(|m| m.starts_with(self.root()) && *m != self.root()).collect();
        assert!(mounts.is_empty(), "skiff down left mounts under the root: {mounts:?}");
        let containers: Vec<String> = fs::read_dir(self.root().join("containers"))
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        assert!(containers.is_empty(), "skiff down left container directories: {containers:?}");
    }

    /// Shim pids by replica id, from `<run>/shims/<id>/shim.pid`.
    pub fn shim_pids(&self) -> BTreeMap<String, i32> {
        let mut m = BTreeMap::new();
        for e in fs::read_dir(self.run_dir().join("shims")).into_iter().flatten().flatten() {
            if let Ok(p) = read(e.path().join("shim.pid")).trim().parse::<i32>() {
                m.insert(e.file_name().to_string_lossy().into_owned(), p);
            }
        }
        m
    }

    /// `/skiff-<8 hex>`: the cgroup parent of this root's containers (as the agent names it).
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// Whether a live process belongs to a container of this root: its root directory is
    /// under the root, or it is in one of the root's cgroups.
    pub fn is_container_process(&self, pid: i32) -> bool {
        alive(pid)
            && (fs::read_link(format!("/proc/{pid}/root")).is_ok_and(|r| r.starts_with(self.root()))
                || read(format!("/proc/{pid}/cgroup")).contains(&format!("{}/", self.cgroup_parent)))
    }

    fn cleanup(&mut self) {
        let root = self.root();
        // 1. The agent, by its pid (our child).
        if self.is_running() {
            self.signal(libc::SIGKILL);
            let _ = self.wait_exit(Duration::from_secs(20));
        }
        // 2. Every container the runtime knows of.
        for e in fs::read_dir(self.runtime_root()).into_iter().flatten().flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = self.rt(&["delete", "--force", &id]);
            }
        }
        // 3. Shims (by their pid files, then any left whose command line or environment
        //    names this root) and any process whose root is under this root.
        for (_, p) in self.shim_pids() {
            if is_shim_of(p, &root) {
                kill(p, libc::SIGKILL);
            }
        }
        for p in crate::processes() {
            if p.pid as u32 != std::process::id() && (self.is_container_process(p.pid) || is_shim_of(p.pid, &root)) {
                kill(p.pid, libc::SIGKILL);
            }
        }
        // 4. The cgroups of this root (remove_cgroup kills what is left in them).
        remove_cgroup(&self.cgroup_parent.clone());
        // 5. Mounts (rootfs overlays, volumes).
        unmount_under(self.dir.path());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
        self.cleanup();
        // Then: the scratch directory, the hugetlb hierarchy (if ours), the lock.
    }
}

// ---------------------------------------------------------------------------------------
// Reading the status
// ---------------------------------------------------------------------------------------

/// `services[name]` of a status (Null when absent).
pub fn service<'a>(st: &'a Value, name: &str) -> &'a Value {
    st["services"].as_array().and_then(|s| s.iter().find(|s| s["name"] == name)).unwrap_or(&Value::Null)
}

/// The replicas of a service (empty when the service is absent).
pub fn replicas(st: &Value, name: &str) -> Vec<Value> {
    service(st, name)["replicas"].as_array().cloned().unwrap_or_default()
}

/// A replica by id, in any service.
pub fn replica<'a>(st: &'a Value, id: &str) -> &'a Value {
    st["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["replicas"].as_array())
        .flatten()
        .find(|r| r["id"] == id)
        .unwrap_or(&Value::Null)
}

/// The replica ids of a service, in the order of the status.
pub fn replica_ids(st: &Value, name: &str) -> Vec<String> {
    replicas(st, name).iter().filter_map(|r| r["id"].as_str().map(String::from)).collect()
}

/// Pid by replica id, for the replicas of `name` that have one.
pub fn pids(st: &Value, name: &str) -> BTreeMap<String, i64> {
    replicas(st, name).iter().filter_map(|r| Some((r["id"].as_str()?.to_string(), r["pid"].as_i64()?))).collect()
}

/// `service` has exactly `n` replicas, all `running` with a live pid, and its counts say
/// `n` desired and `n` running.
pub fn all_running(st: &Value, name: &str, n: usize) -> bool {
    let s = service(st, name);
    let r = replicas(st, name);
    s["desired_replicas"] == n
        && s["running_replicas"] == n
        && r.len() == n
        && r.iter().all(|r| r["state"] == "running" && r["pid"].as_i64().is_some_and(|p| p > 0 && alive(p as i32)))
}

// ---------------------------------------------------------------------------------------
// Prometheus text
// ---------------------------------------------------------------------------------------

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the samples of a Prometheus text exposition (comments skipped; timestamps
/// ignored). Lines that do not parse are returned as errors.
pub fn parse_metrics(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let bad = || format!("not a sample line: {line:?}");
        let (name, labels, rest) = match line.find('{') {
            Some(b) => {
                let e = line.rfind('}').ok_or_else(bad)?;
                (&line[..b], parse_labels(&line[b + 1..e]).ok_or_else(bad)?, &line[e + 1..])
            }
            None => {
                let sp = line.find(' ').ok_or_else(bad)?;
                (&line[..sp], BTreeMap::new(), &line[sp..])
            }
        };
        let v = rest.split_whitespace().next().ok_or_else(bad)?;
        let value = match v {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse::<f64>().map_err(|_| bad())?,
        };
        out.push(Sample { name: name.trim().to_string(), labels, value });
    }
    Ok(out)
}

fn parse_labels(s: &str) -> Option<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_string();
        let after = rest[eq + 1..].trim_start().strip_prefix('"')?;
        let mut val = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => val.push('\n'),
                    c => val.push(c),
                },
                '"' => break i,
                c => val.push(c),
            }
        };
        m.insert(key, val);
        rest = after[end + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Some(m)
}

/// The value of the sample `name` whose labels include `labels`.
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v)))
        .map(|s| s.value)
}

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

/// The process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    let stat = read(format!("/proc/{pid}/stat"));
    match stat.rfind(')') {
        Some(r) => !matches!(stat[r + 1..].trim_start().chars().next(), Some('Z') | Some('X') | None),
        None => false,
    }
}

/// kill(2), ignoring errors (the process may be gone).
pub fn kill(pid: i32, sig: i32) {
    if pid > 0 {
        // SAFETY: kill(2) of one positive pid (never a group or -1).
        unsafe { libc::kill(pid, sig) };
    }
}

/// `/skiff-<first 8 hex of sha256(root path)>`, as the agent names a root's cgroup parent.
fn cgroup_parent_of(root: &Path, scratch: &Path) -> String {
    let f = scratch.join("root-path");
    let _ = fs::write(&f, root.as_os_str().as_encoded_bytes());
    let hex = crate::sha256(&f);
    let _ = fs::remove_file(&f);
    format!("/skiff-{}", hex.get(..8).unwrap_or("00000000"))
}

/// Whether a live process is a `skiff shim` of `root` (its command line or environment
/// names the root).
pub fn is_shim_of(pid: i32, root: &Path) -> bool {
    if !alive(pid) {
        return false;
    }
    let cmdline = read(format!("/proc/{pid}/cmdline"));
    if !cmdline.split('\0').any(|a| a == "shim") {
        return false;
    }
    let r = root.to_string_lossy();
    cmdline.contains(&*r) || read(format!("/proc/{pid}/environ")).contains(&*r)
}

/// User + system CPU seconds a process used so far (its own threads, not its children).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = read(format!("/proc/{pid}/stat"));
    let Some(r) = stat.rfind(')') else { return 0.0 };
    let f: Vec<&str> = stat[r + 1..].split_whitespace().collect();
    // After the comm: state is field 3, utime field 14, stime field 15.
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

/// VmRSS of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    crate::status_field(&read(format!("/proc/{pid}/status")), "VmRSS")
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The value of `KEY=` in a process's environment.
pub fn environ(pid: i32, key: &str) -> Option<String> {
    let env = read(format!("/proc/{pid}/environ"));
    env.split('\0').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=').map(String::from))
}

/// The path of a process's cgroup in the v1 hierarchy of `controller` (from /proc/PID/cgroup).
pub fn v1_cgroup_dir(pid: i32, controller: &str) -> Option<PathBuf> {
    let m = cgroup_v1(controller)?;
    let text = read(format!("/proc/{pid}/cgroup"));
    let line = text.lines().find(|l| {
        let mut f = l.splitn(3, ':');
        let _ = f.next();
        f.next().is_some_and(|c| c.split(',').any(|c| c == controller))
    })?;
    let path = line.splitn(3, ':').nth(2)?;
    Some(m.mount_point.join(path.trim_start_matches('/')))
}

/// Lines of a file (or command output) that `skiff logs -f` prints, read as they come.
pub fn read_lines_until(r: impl std::io::Read, mut done: impl FnMut(&str) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    for line in BufReader::new(r).lines() {
        let Ok(line) = line else { break };
        let stop = done(&line);
        out.push(line);
        if stop {
            break;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// crun on a hybrid host
// ---------------------------------------------------------------------------------------

/// A v1 cgroup hierarchy mounted outside /sys/fs/cgroup (e.g. someone's /run/hugetlb-v1),
/// which runc 1.1 cannot mount inside a container with a cgroup namespace.
pub fn odd_v1_hierarchy() -> Option<PathBuf> {
    crate::cgroup_mounts()
        .into_iter()
        .find(|m| !m.v2 && !m.mount_point.starts_with("/sys/fs/cgroup"))
        .map(|m| m.mount_point)
}

/// crun's work-around on a host whose cgroup2 mount holds hugetlb: a v1 hugetlb hierarchy
/// at `/run/hugetlb-v1` while this exists (unmounted on drop if this mounted it).
pub struct HugetlbV1 {
    mounted: Option<PathBuf>,
}

impl HugetlbV1 {
    pub fn apply() -> HugetlbV1 {
        let unified = Path::new("/sys/fs/cgroup/unified");
        // An earlier agent's hierarchy, unmounted by its Drop, lives on unmounted for some
        // seconds (the kernel frees a v1 root lazily): hugetlb is then neither on the cgroup2
        // mount nor on a mounted v1 hierarchy, and comes back to cgroup2 later, under the next
        // agent's crun. Wait for it first.
        let lingering = || {
            cgroup_v1("hugetlb").is_none()
                && read("/proc/cgroups").lines().any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.first() == Some(&"hugetlb") && f.get(1).is_some_and(|h| *h != "0")
                })
        };
        let start = Instant::now();
        while lingering() && start.elapsed() < WAIT {
            std::thread::sleep(POLL);
        }
        let on_v2 = read(unified.join("cgroup.controllers")).split_whitespace().any(|c| c == "hugetlb");
        if !on_v2 || cgroup_v1("hugetlb").is_some() {
            return HugetlbV1 { mounted: None };
        }
        // The controller can only move while no cgroup2 subtree has it enabled.
        if read(unified.join("cgroup.subtree_control")).split_whitespace().any(|c| c == "hugetlb") {
            let _ = fs::write(unified.join("cgroup.subtree_control"), "-hugetlb");
        }
        let dir = PathBuf::from("/run/hugetlb-v1");
        let _ = fs::create_dir_all(&dir);
        let out = crate::host(&["mount", "-t", "cgroup", "-o", "hugetlb", "none", "/run/hugetlb-v1"]);
        assert!(out.success(), "crun needs hugetlb on a v1 hierarchy here, and mounting one failed:\n{out}");
        HugetlbV1 { mounted: Some(dir) }
    }
}

impl Drop for HugetlbV1 {
    fn drop(&mut self) {
        if let Some(d) = self.mounted.take() {
            // Our cgroups there are gone by now (the agent's Drop removed them).
            let out = crate::host(&["umount", &d.to_string_lossy()]);
            if !out.success() {
                eprintln!("WARNING: could not unmount the hugetlb hierarchy at {}:\n{out}", d.display());
            }
            let _ = fs::remove_dir(&d);
        }
    }
}
