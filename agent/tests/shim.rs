//! `skiff shim` and `skiff logs` end to end (as root): containers of the busybox test image
//! (loaded into a store once per test process with `skiff load`), bundles made with
//! skiff-images as the agent makes them, the OCI runtime under test (`SKIFF_TEST_RUNTIME`).
//!
//! Every shim is started the way it must survive: from a short-lived `sh -c '... &'` that is
//! gone before the container even runs, so each test also checks that the shim needs nobody.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use skiff::logs::{Record, Stream};
use skiff_images::bundle::{self, BundleOverrides, ImageRunConfig};
use skiff_images::{rootfs, Reference, Store};
use skiff_tests::{wait_until, Runtime, Scratch, TIMEOUT};

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");
const IMAGE: &str = "busybox-oci";

/// A store holding the test images, shared by the tests of this process (read only).
fn store_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        skiff_tests::require_root();
        let root = skiff_tests::base_dir().join("shim-store");
        let layout = skiff_tests::registry::test_images();
        let o = Command::new(SKIFF)
            .arg("--root")
            .arg(&root)
            .arg("load")
            .arg(layout)
            .env_remove("SKIFF_ROOT")
            .stdin(Stdio::null())
            .output()
            .expect("run skiff load");
        assert!(o.status.success(), "skiff load: {}", String::from_utf8_lossy(&o.stderr));
        root
    })
}

/// One test: its runtime root (containers force-deleted and cgroups removed on drop) and a
/// scratch directory holding `root/` (for `skiff logs`: `root/logs/<SERVICE-N>/`), the
/// containers' directories and their run dirs.
struct T {
    rt: Runtime,
    dir: Scratch,
}

impl T {
    fn new() -> T {
        skiff_tests::require_root();
        store_root();
        T { rt: Runtime::new(), dir: Scratch::new("shim") }
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    fn log_dir(&self, replica: &str) -> PathBuf {
        self.root().join("logs").join(replica)
    }

    /// A bundle of the test image running `sh -c SCRIPT`, with `ctl` (a host directory) at /ctl.
    fn bundle(&self, name: &str, args: &[&str], ctl: Option<&Path>) -> Bundle {
        let store = Store::open(store_root()).unwrap();
        let reference = Reference::parse(IMAGE).unwrap().to_string();
        let image = store.image(&reference).unwrap().expect("the test image is in the store");
        let dir = self.dir.join(format!("c-{name}"));
        fs::create_dir_all(&dir).unwrap();
        let guard = Bundle { dir: dir.clone() };
        rootfs::mount_rootfs(&rootfs::image_layers(&store, &image), &dir).unwrap();
        let config = ImageRunConfig::load(&store, &image).unwrap();
        let id = self.rt.id(name);
        let cgroup = format!("/{id}");
        self.rt.cleanup_cgroup(&cgroup);
        let mut o = BundleOverrides {
            entrypoint: Some(vec![args[0].to_string()]),
            cmd: Some(args[1..].iter().map(|s| s.to_string()).collect()),
            cgroups_path: Some(cgroup),
            ..Default::default()
        };
        if let Some(c) = ctl {
            o.mounts.push(bundle::bind_mount(c, "/ctl", true));
        }
        let (spec, _) = bundle::build_spec(&config, &rootfs::rootfs_path(&dir), &o).unwrap();
        bundle::write_bundle(&dir, &spec).unwrap();
        fs::write(dir.join("id"), &id).unwrap();
        guard
    }

    fn sh(&self, name: &str, script: &str, ctl: Option<&Path>) -> Bundle {
        self.bundle(name, &["sh", "-c", script], ctl)
    }

    fn shim_args(&self, b: &Bundle, replica: &str, extra: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = vec![
            "shim".into(),
            "--runtime".into(),
            self.rt.bin().display().to_string(),
            "--runtime-root".into(),
            self.rt.root().display().to_string(),
            "--bundle".into(),
            b.dir.display().to_string(),
            "--id".into(),
            b.id(),
            "--run-dir".into(),
            b.run_dir().display().to_string(),
            "--log-dir".into(),
            self.log_dir(replica).display().to_string(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    /// Starts a shim from a short-lived `sh` (gone when this returns) and returns its report,
    /// read from the pipe until EOF: exactly one line, then the shim closes its stdout.
    fn start(&self, b: &Bundle, replica: &str, extra: &[&str]) -> (Value, ShimProc) {
        let mut sh = Command::new("sh")
            .arg("-c")
            .arg(r#""$0" "$@" &"#)
            .arg(SKIFF)
            .args(self.shim_args(b, replica, extra))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = read_all(&mut sh);
        let st = sh.wait().unwrap();
        assert!(st.success(), "sh: {st}");
        let shim = ShimProc::from_run_dir(&b.run_dir());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "exactly one report line, then EOF: {out:?}");
        (serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("report {out:?}: {e}")), shim)
    }

    /// Runs a shim as a direct child (for failures: it exits right after the report).
    fn start_attached(&self, args: Vec<String>) -> (Value, ExitStatus) {
        let mut child = Command::new(SKIFF)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = read_all(&mut child);
        let st = skiff_tests::wait_timeout(&mut child, TIMEOUT * 3).expect("the shim exits after a failure");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "exactly one report line: {out:?}");
        (serde_json::from_str(lines[0]).unwrap(), st)
    }

    fn skiff(&self, args: &[&str]) -> std::process::Output {
        Command::new(SKIFF)
            .arg("--root")
            .arg(self.root())
            .args(args)
            .env_remove("SKIFF_ROOT")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn runtime_state_exists(&self, id: &str) -> bool {
        self.rt.cmd(&["state", id]).success()
    }
}

/// A container directory: its rootfs is unmounted on drop (after the runtime deleted it).
struct Bundle {
    dir: PathBuf,
}

impl Bundle {
    fn id(&self) -> String {
        fs::read_to_string(self.dir.join("id")).unwrap()
    }
    fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }
    fn exit_json(&self) -> Value {
        wait_until("exit.json", TIMEOUT, || self.run_dir().join("exit.json").exists());
        serde_json::from_slice(&fs::read(self.run_dir().join("exit.json")).unwrap()).unwrap()
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = rootfs::unmount_rootfs(&self.dir);
        skiff_tests::unmount_under(&self.dir);
    }
}

/// A shim this test started (through `sh`, so not our child). On drop: the container is
/// force-deleted, the shim then exits by itself; if it has not within the time-out, it is
/// killed by its pid (checked to still be that shim).
struct ShimProc {
    pid: i32,
    runtime: PathBuf,
    runtime_root: PathBuf,
    id: String,
}

impl ShimProc {
    fn from_run_dir(run: &Path) -> ShimProc {
        let pid: i32 = fs::read_to_string(run.join("shim.pid")).unwrap().trim().parse().unwrap();
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let get = |flag: &str| args.iter().position(|a| a == flag).map(|i| args[i + 1].clone()).unwrap_or_default();
        ShimProc { pid, runtime: get("--runtime").into(), runtime_root: get("--runtime-root").into(), id: get("--id") }
    }

    fn alive(&self) -> bool {
        fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
            && self.is_ours()
    }

    fn is_ours(&self) -> bool {
        let c = fs::read(format!("/proc/{}/cmdline", self.pid)).unwrap_or_default();
        let c = String::from_utf8_lossy(&c);
        c.contains("shim") && !self.id.is_empty() && c.contains(&self.id)
    }

    fn rss_kib(&self) -> u64 {
        let s = fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    fn wait_gone(&self) {
        wait_until("the shim to exit", TIMEOUT, || !self.alive());
    }
}

impl Drop for ShimProc {
    fn drop(&mut self) {
        if !self.id.is_empty() {
            let _ = Command::new(&self.runtime)
                .arg("--root")
                .arg(&self.runtime_root)
                .args(["delete", "--force", &self.id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        for _ in 0..1000 {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if self.is_ours() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Reads a child's stdout to EOF (at most 3 × TIMEOUT; a hang kills the child and fails).
fn read_all(child: &mut Child) -> String {
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    match rx.recv_timeout(TIMEOUT * 3) {
        Ok(s) => s,
        Err(_) => {
            let _ = child.kill();
            panic!("no EOF on the shim's report pipe");
        }
    }
}

fn records(dir: &Path) -> Vec<Record> {
    skiff::logs::tail(dir, usize::MAX).unwrap()
}

fn has(dir: &Path, stream: Stream, line: &str) -> bool {
    records(dir).iter().any(|r| r.stream == stream && r.line == line)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Bit of signal `sig` in a /proc/PID/status mask.
fn in_mask(status: &str, field: &str, sig: i32) -> bool {
    let hex = status.lines().find_map(|l| l.strip_prefix(field)).unwrap_or("0").trim();
    u64::from_str_radix(hex, 16).unwrap() & (1 << (sig - 1)) != 0
}

#[test]
fn report_logs_follow_and_exit_code() {
    let t = T::new();
    let ctl = t.dir.join("ctl");
    fs::create_dir_all(&ctl).unwrap();
    let b = t.sh(
        "web1",
        "echo hello-out; echo hello-err >&2; while [ ! -e /ctl/go ]; do sleep 0.05; done; echo after-go; exit 3",
        Some(&ctl),
    );
    let (report, shim) = t.start(&b, "web-1", &[]);
    assert_eq!(report["ok"], true, "{report}");
    let pid = report["pid"].as_i64().expect("a pid") as i32;
    assert_eq!(fs::read_to_string(b.run_dir().join("init.pid")).unwrap().trim(), pid.to_string());
    assert!(shim.alive(), "the shim runs on, its spawner gone");
    assert_ne!(shim.pid, pid);

    // The container's process inherits neither a blocked nor an ignored SIGTERM/SIGINT/SIGHUP.
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD] {
        assert!(!in_mask(&status, "SigBlk:", sig), "signal {sig} blocked in the container:\n{status}");
        assert!(!in_mask(&status, "SigIgn:", sig), "signal {sig} ignored in the container:\n{status}");
    }
    // The shim itself is not stopped by SIGTERM, SIGINT or SIGHUP (the agent's death, a terminal).
    for sig in [nix::sys::signal::Signal::SIGTERM, nix::sys::signal::Signal::SIGINT, nix::sys::signal::Signal::SIGHUP] {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim.pid), sig).unwrap();
    }

    let logs = t.log_dir("web-1");
    wait_until("both lines in the log", TIMEOUT, || {
        has(&logs, Stream::Out, "hello-out") && has(&logs, Stream::Err, "hello-err")
    });
    assert!(shim.alive(), "the shim survived SIGTERM/SIGINT/SIGHUP");
    assert_eq!(records(&logs).len(), 2, "{:?}", records(&logs));

    // skiff logs: stdout records to stdout, stderr records to stderr.
    let o = t.skiff(&["logs", "web/1"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "hello-out\n");
    assert_eq!(text(&o.stderr), "hello-err\n");
    // One replica: no prefix either way.
    let o = t.skiff(&["logs", "web"]);
    assert_eq!((text(&o.stdout).as_str(), text(&o.stderr).as_str()), ("hello-out\n", "hello-err\n"));
    let o = t.skiff(&["logs", "--timestamps", "web/1"]);
    let line = text(&o.stdout);
    let (time, rest) = line.split_once(' ').unwrap();
    humantime::parse_rfc3339(time).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    assert_eq!(rest, "hello-out\n");
    let o = t.skiff(&["logs", "--tail", "0", "web/1"]);
    assert_eq!((text(&o.stdout).as_str(), text(&o.stderr).as_str()), ("", ""));

    // -f prints what is there, then what comes, until SIGTERM.
    let out_file = t.dir.join("follow.out");
    let mut follow = Command::new(SKIFF)
        .arg("--root")
        .arg(t.root())
        .args(["logs", "-f", "web"])
        .env_remove("SKIFF_ROOT")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_file).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("-f prints the existing lines", TIMEOUT, || fs::read_to_string(&out_file).unwrap() == "hello-out\n");
    // A second replica of the service appears while following: picked up, lines now prefixed.
    let b2 = t.sh("web2", "echo from-two", None);
    let (report2, shim2) = t.start(&b2, "web-2", &[]);
    assert_eq!(report2["ok"], true, "{report2}");
    assert_eq!(b2.exit_json()["exit_code"], 0);
    shim2.wait_gone();
    fs::write(ctl.join("go"), "").unwrap();
    wait_until("-f prints the new lines", TIMEOUT, || {
        let s = fs::read_to_string(&out_file).unwrap();
        s.contains("web-2 | from-two\n") && s.contains("web-1 | after-go\n")
    });
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(follow.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let st = skiff_tests::wait_timeout(&mut follow, TIMEOUT).expect("skiff logs -f stops on SIGTERM");
    assert!(st.success(), "skiff logs -f ends cleanly on SIGTERM: {st}");

    // The container exited 3: exit.json says so, and the shim is gone.
    let exit = b.exit_json();
    assert_eq!(exit["exit_code"], 3, "{exit}");
    assert_eq!(exit["signal"], Value::Null, "{exit}");
    assert_eq!(exit["pid"], pid, "{exit}");
    humantime::parse_rfc3339(exit["finished_at"].as_str().unwrap()).unwrap();
    shim.wait_gone();
    assert!(has(&logs, Stream::Out, "after-go"));

    // Both replicas, merged by time, prefixed.
    let o = t.skiff(&["logs", "web"]);
    let out = text(&o.stdout);
    assert_eq!(out.lines().filter(|l| l.starts_with("web-1 | ")).count(), 2, "{out}");
    assert!(out.contains("web-2 | from-two\n"), "{out}");
    assert_eq!(text(&o.stderr), "web-1 | hello-err\n");
    let o = t.skiff(&["logs", "--tail", "1", "web/1"]);
    assert_eq!(text(&o.stdout), "after-go\n");

    // -f stops when its stdout is closed.
    let mut follow = Command::new(SKIFF)
        .arg("--root")
        .arg(t.root())
        .args(["logs", "-f", "web/1"])
        .env_remove("SKIFF_ROOT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = [0u8; 1];
    follow.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
    drop(follow.stdout.take());
    let st = skiff_tests::wait_timeout(&mut follow, TIMEOUT).expect("skiff logs -f stops when stdout closes");
    assert!(st.success(), "{st}");
}

#[test]
fn keeps_logging_without_its_spawner_rotates_and_records_a_kill() {
    let t = T::new();
    let b = t.sh("loop", "i=0; while :; do echo line-$i; i=$((i+1)); sleep 0.01; done", None);
    let (report, shim) = t.start(&b, "loop-1", &["--log-max-size", "4096", "--log-max-file", "2"]);
    assert_eq!(report["ok"], true, "{report}");
    let logs = t.log_dir("loop-1");
    let last = |logs: &Path| -> u64 {
        records(logs).iter().filter_map(|r| r.line.strip_prefix("line-")?.parse().ok()).max().unwrap_or(0)
    };
    wait_until("a rotation", TIMEOUT, || logs.join("1.log").exists());
    let seen = last(&logs);
    wait_until("more lines, written with the spawner long gone", TIMEOUT, || last(&logs) > seen + 20);
    let mut files: Vec<String> =
        fs::read_dir(&logs).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    assert_eq!(files, ["1.log", "current.log"], "--log-max-file 2");
    for f in &files {
        assert!(fs::metadata(logs.join(f)).unwrap().len() <= 4096, "{f} exceeds --log-max-size");
    }
    // The kept records are consecutive lines, all on stdout.
    let recs = records(&logs);
    assert!(recs.iter().all(|r| r.stream == Stream::Out && !r.partial));
    let nums: Vec<u64> = recs.iter().map(|r| r.line.strip_prefix("line-").unwrap().parse().unwrap()).collect();
    assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{nums:?}");

    let o = t.skiff(&["logs", "--tail", "3", "loop/1"]);
    let out = text(&o.stdout);
    let got: Vec<u64> = out.lines().map(|l| l.strip_prefix("line-").unwrap().parse().unwrap()).collect();
    assert_eq!(got.len(), 3, "{out}");
    assert!(got[1] == got[0] + 1 && got[2] == got[1] + 1, "{out}");

    eprintln!("skiff shim RSS while its container runs: {} KiB", shim.rss_kib());

    let o = t.rt.cmd(&["kill", &b.id(), "KILL"]);
    assert!(o.success(), "{o}");
    let exit = b.exit_json();
    assert_eq!(exit["signal"], 9, "{exit}");
    assert_eq!(exit["exit_code"], Value::Null, "{exit}");
    shim.wait_gone();
}

#[test]
fn failures_are_one_line_and_leave_no_runtime_state() {
    let t = T::new();
    // The executable does not exist: create (or start) fails.
    let b = t.bundle("bad", &["/nonexistent-binary"], None);
    let (report, st) = t.start_attached(t.shim_args(&b, "bad-1", &[]));
    assert_eq!(report["ok"], false, "{report}");
    let err = report["error"].as_str().unwrap();
    assert!(err.contains("nonexistent-binary"), "the runtime's message: {err}");
    assert!(!err.contains('\n'));
    assert_eq!(st.code(), Some(1));
    assert!(!t.runtime_state_exists(&b.id()), "no runtime state left: {err}");

    // No config.json at all.
    let empty = t.dir.join("empty-bundle");
    fs::create_dir_all(&empty).unwrap();
    let mut args = t.shim_args(&b, "bad-1", &[]);
    let i = args.iter().position(|a| a == "--bundle").unwrap();
    args[i + 1] = empty.display().to_string();
    let (report, st) = t.start_attached(args);
    assert_eq!(report["ok"], false, "{report}");
    assert!(report["error"].as_str().unwrap().contains("creating container"), "{report}");
    assert_eq!(st.code(), Some(1));
    assert!(!t.runtime_state_exists(&b.id()));

    // An id that is not a name.
    let mut args = t.shim_args(&b, "bad-1", &[]);
    let i = args.iter().position(|a| a == "--id").unwrap();
    args[i + 1] = "../evil".into();
    let (report, st) = t.start_attached(args);
    assert!(report["error"].as_str().unwrap().contains("invalid container id"), "{report}");
    assert_eq!(st.code(), Some(1));

    // The id is taken by a running container: refused, and that container is left alone.
    let ok = t.sh("dup", "sleep 1000", None);
    let (report, shim) = t.start(&ok, "dup-1", &[]);
    assert_eq!(report["ok"], true, "{report}");
    let mut args = t.shim_args(&ok, "dup-1", &[]);
    let i = args.iter().position(|a| a == "--run-dir").unwrap();
    args[i + 1] = t.dir.join("dup-run-2").display().to_string();
    let (report, st) = t.start_attached(args);
    assert_eq!(report["ok"], false, "{report}");
    assert!(report["error"].as_str().unwrap().contains("exists already"), "{report}");
    assert_eq!(st.code(), Some(1));
    assert_eq!(t.rt.status(&ok.id()).as_deref(), Some("running"));
    assert!(shim.alive());
}

#[test]
fn a_full_log_disk_does_not_stop_the_container() {
    let t = T::new();
    let logs = t.log_dir("full-1");
    fs::create_dir_all(&logs).unwrap();
    let o = skiff_tests::host(&["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", logs.to_str().unwrap()]);
    assert!(o.success(), "{o}");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            skiff_tests::unmount_under(&self.0);
        }
    }
    let _unmount = Unmount(logs.clone());
    // ~200 KiB of output into 16 KiB of disk; a shim that stopped reading would block it forever.
    let b = t.sh("full", "i=0; while [ $i -lt 2000 ]; do echo line-$i-padding-padding-padding-padding-padding-padding-padding; i=$((i+1)); done; echo done >&2; exit 0", None);
    let (report, shim) = t.start(&b, "full-1", &["--log-max-size", "0"]);
    assert_eq!(report["ok"], true, "{report}");
    let exit = b.exit_json();
    assert_eq!(exit["exit_code"], 0, "{exit}");
    shim.wait_gone();
    assert!(has(&logs, Stream::Out, "line-0-padding-padding-padding-padding-padding-padding-padding"));
    assert!(!has(&logs, Stream::Out, "line-1999-padding-padding-padding-padding-padding-padding-padding"), "disk full");
}

#[test]
fn logs_bad_input_is_a_clear_error() {
    let t = T::new();
    fs::create_dir_all(t.log_dir("web-1")).unwrap();
    for (args, want) in [
        (vec!["logs", "../etc"], "invalid target"),
        (vec!["logs", "web/x"], "invalid target"),
        (vec!["logs", "web/2"], "no such replica"),
        (vec!["logs", "api"], "no such service"),
    ] {
        let o = t.skiff(&args);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        if want.starts_with("no such") {
            assert!(err.contains(&t.root().join("logs").display().to_string()), "names the dir it looked in: {err}");
        }
    }
}
