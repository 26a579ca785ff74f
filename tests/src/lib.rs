//! Harness for skiff's end-to-end runtime tests.
//!
//! Every test runs real containers as root through an OCI runtime's command line, so the
//! same suite checks skiff-runtime, runc and crun alike:
//!
//! * the runtime binary comes from `SKIFF_TEST_RUNTIME` (a path, or a name looked up on
//!   `PATH`, e.g. `SKIFF_TEST_RUNTIME=runc`); by default the workspace's own
//!   `target/<profile>/skiff-runtime` (honouring `CARGO_TARGET_DIR`);
//! * a busybox rootfs is built once per test process from `/bin/busybox` (busybox-static)
//!   and copied into each [`Bundle`];
//! * a [`Bundle`] starts from the runtime's own `spec` output, then tests edit `spec`
//!   (a `serde_json::Value`) before the container is created;
//! * a [`Runtime`] gives each test its own `--root` state directory and, when dropped
//!   (also while a test panics), force-deletes every container it knows of, kills what is
//!   left in their cgroups, removes the cgroups, network namespaces and scratch
//!   directories it made (unmounting anything found mounted below them first).
//!
//! Tests that count machine-wide things (mounts, cgroups, processes) take
//! [`Runtime::exclusive`], which waits until no other test of the same binary is running.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

pub use serde_json::{json, Value};

pub mod agent;
pub mod engines;
pub mod memcap;
pub mod netns;
pub mod oci;
pub mod registry;

/// Upper bound for any single runtime command. Only there to turn a hang into a failure;
/// no test depends on how fast anything is.
pub const TIMEOUT: Duration = Duration::from_secs(60);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn next() -> usize {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

// ---------------------------------------------------------------------------------------
// The runtime under test
// ---------------------------------------------------------------------------------------

/// Which runtime is under test, judged from its file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Skiff,
    Runc,
    Crun,
    Other,
}

/// Absolute path of the runtime binary under test.
pub fn runtime_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(resolve_runtime)
}

fn resolve_runtime() -> PathBuf {
    if let Some(v) = std::env::var_os("SKIFF_TEST_RUNTIME").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(&v);
        if p.components().count() == 1 && !v.to_string_lossy().contains('/') {
            return which(&v.to_string_lossy())
                .unwrap_or_else(|| panic!("SKIFF_TEST_RUNTIME={}: not found on PATH", p.display()));
        }
        let p = if p.is_absolute() { p } else { std::env::current_dir().unwrap().join(p) };
        assert!(p.is_file(), "SKIFF_TEST_RUNTIME={}: no such file", p.display());
        return p;
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut targets = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        let t = PathBuf::from(t);
        targets.push(if t.is_absolute() { t } else { manifest.join("..").join(t) });
    }
    targets.push(manifest.join("../target"));
    let profiles: &[&str] = if cfg!(debug_assertions) { &["debug", "release"] } else { &["release", "debug"] };
    for t in &targets {
        for p in profiles {
            let c = t.join(p).join("skiff-runtime");
            if c.is_file() {
                return c.canonicalize().unwrap_or(c);
            }
        }
    }
    panic!(
        "skiff-runtime is not built (looked in {targets:?}): run hack/test, or \
         `cargo build -p skiff-runtime`, or set SKIFF_TEST_RUNTIME (e.g. SKIFF_TEST_RUNTIME=runc)"
    )
}

/// Looks `name` up on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// Which runtime is under test.
pub fn kind() -> Kind {
    kind_of(runtime_bin())
}

pub fn kind_of(bin: &Path) -> Kind {
    let name = bin.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    if name.contains("skiff") {
        Kind::Skiff
    } else if name.contains("crun") {
        Kind::Crun
    } else if name.contains("runc") {
        Kind::Runc
    } else {
        Kind::Other
    }
}

/// true when the runtime under test is skiff-runtime (or SKIFF_TEST_ALL=1 asks to hold
/// any runtime to skiff's behaviour).
pub fn is_skiff() -> bool {
    kind() == Kind::Skiff || std::env::var_os("SKIFF_TEST_ALL").is_some_and(|v| v == "1")
}

/// Says a test is skipped (it returns right after): on stderr, and appended to the file
/// named by `SKIFF_TEST_SKIP_LOG` (hack/test lists them in its summary).
pub fn skip(reason: &str) {
    log_skip("", reason);
}

/// Like [`skip`], for a test that skips only some of its checks and runs the rest.
pub fn skip_part(reason: &str) {
    log_skip(" (in part)", reason);
}

fn log_skip(part: &str, reason: &str) {
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let bin = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().to_string()))
        .map(|s| s.rsplit_once('-').map(|(a, _)| a.to_string()).unwrap_or(s))
        .unwrap_or_default();
    eprintln!("SKIPPED: {bin}::{test}{part}: {reason}");
    if let Some(log) = std::env::var_os("SKIFF_TEST_SKIP_LOG").filter(|v| !v.is_empty()) {
        use std::io::Write;
        if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = writeln!(f, "{bin}::{test}{part}: {reason}");
        }
    }
}

/// For tests that check behaviour where skiff deliberately differs from runc: returns true
/// (and says so, see [`skip`]) when the runtime under test is not skiff-runtime, so the
/// test can `return` early. `SKIFF_TEST_ALL=1` runs them anyway against any runtime.
pub fn skip_unless_skiff(what: &str) -> bool {
    if is_skiff() {
        return false;
    }
    skip(&format!("{what}: checks skiff-runtime behaviour, runtime under test is {}", runtime_bin().display()));
    true
}

/// For the checks of a test that hold skiff to behaviour runc lacks: true when they
/// should run; otherwise says they are skipped (see [`skip_part`]).
pub fn skiff_part(what: &str) -> bool {
    if is_skiff() {
        return true;
    }
    skip_part(&format!("{what}: checks skiff-runtime behaviour, runtime under test is {}", runtime_bin().display()));
    false
}

/// Panics with a clear message unless running as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("the skiff end-to-end tests run real containers and must run as root (use sudo hack/test)");
    }
}

// ---------------------------------------------------------------------------------------
// Scratch directories, safe removal
// ---------------------------------------------------------------------------------------

static BASE: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_base_at_exit() {
    if let Some(b) = BASE.get() {
        safe_remove(b);
    }
}

/// This test process's scratch directory (`$TMPDIR/skiff-tests-<pid>`), removed at exit.
pub fn base_dir() -> &'static Path {
    BASE.get_or_init(|| {
        // Leftovers of test processes that were killed before they could clean up.
        for e in fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(pid) = name.strip_prefix("skiff-tests-").and_then(|p| p.parse::<u32>().ok()) {
                if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                    safe_remove(&e.path());
                }
            }
        }
        let d = std::env::temp_dir().join(format!("skiff-tests-{}", std::process::id()));
        safe_remove(&d); // a leftover from an earlier process with the same pid
        fs::create_dir_all(&d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        // SAFETY: registering a plain extern "C" function.
        unsafe { libc::atexit(remove_base_at_exit) };
        d
    })
}

/// A directory under [`base_dir`] (mode 0755, so user-namespaced containers can enter it),
/// removed safely on drop.
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    pub fn new(prefix: &str) -> Scratch {
        let path = base_dir().join(format!("{prefix}-{}", next()));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        Scratch { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        safe_remove(&self.path);
    }
}

/// Mount points from /proc/self/mountinfo (field 5, unescaped).
pub fn mount_points() -> Vec<PathBuf> {
    mountinfo().into_iter().map(|m| m.mount_point).collect()
}

#[derive(Debug, Clone)]
pub struct MountInfo {
    pub mount_point: PathBuf,
    pub mount_options: String,
    pub fstype: String,
    pub source: String,
    pub super_options: String,
    pub root: String,
}

fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a mountinfo text (e.g. /proc/self/mountinfo, or one read inside a container).
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            Some(MountInfo {
                root: unescape_mount(f.get(3)?),
                mount_point: PathBuf::from(unescape_mount(f.get(4)?)),
                mount_options: f.get(5)?.to_string(),
                fstype: f.get(sep + 1)?.to_string(),
                source: unescape_mount(f.get(sep + 2)?),
                super_options: f.get(sep + 3).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

pub fn mountinfo() -> Vec<MountInfo> {
    parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
}

/// Unmounts (lazily) everything mounted at or below `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    let mut mps: Vec<PathBuf> = mount_points().into_iter().filter(|m| m.starts_with(dir)).collect();
    mps.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    mps.dedup();
    for m in mps {
        if let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) {
            // SAFETY: valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Removes a directory tree without ever crossing into another filesystem: anything
/// mounted below is unmounted first, and directories on another device are skipped.
pub fn safe_remove(dir: &Path) {
    let Ok(meta) = fs::symlink_metadata(dir) else { return };
    if !meta.is_dir() {
        let _ = fs::remove_file(dir);
        return;
    }
    unmount_under(dir);
    remove_tree(dir, meta.dev());
}

fn remove_tree(dir: &Path, dev: u64) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => {
                    if m.dev() == dev {
                        remove_tree(&p, dev);
                    }
                }
                Ok(_) => {
                    let _ = fs::remove_file(&p);
                }
                Err(_) => {}
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Copies a tree (directories, regular files with their modes, symlinks, ownership).
pub fn copy_tree(from: &Path, to: &Path) {
    let m = fs::symlink_metadata(from).unwrap();
    fs::create_dir_all(to).unwrap();
    fs::set_permissions(to, fs::Permissions::from_mode(m.mode() & 0o7777)).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        let src = e.path();
        let dst = to.join(e.file_name());
        let m = fs::symlink_metadata(&src).unwrap();
        let ft = m.file_type();
        if ft.is_dir() {
            copy_tree(&src, &dst);
        } else if ft.is_symlink() {
            symlink(fs::read_link(&src).unwrap(), &dst).unwrap();
        } else if ft.is_file() {
            fs::copy(&src, &dst).unwrap();
        } else {
            continue;
        }
        let _ = std::os::unix::fs::lchown(&dst, Some(m.uid()), Some(m.gid()));
    }
    let _ = std::os::unix::fs::chown(to, Some(m.uid()), Some(m.gid()));
}

// ---------------------------------------------------------------------------------------
// The busybox rootfs
// ---------------------------------------------------------------------------------------

pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
user:x:1000:1000:user:/home/user:/bin/sh
other:x:1001:1001:other:/home/other:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
";

pub const GROUP: &str = "root:x:0:
wheel:x:10:user
tty:x:5:
audio:x:29:user,other
user:x:1000:
other:x:1001:
nogroup:x:65534:
";

/// The busybox binary put into rootfs: `SKIFF_TEST_BUSYBOX` or /bin/busybox (must be static).
pub fn busybox() -> PathBuf {
    std::env::var_os("SKIFF_TEST_BUSYBOX")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/bin/busybox"))
}

/// true when the ELF file has no program interpreter (statically linked).
fn is_static_elf(p: &Path) -> bool {
    let Ok(b) = fs::read(p) else { return false };
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return true; // not a 64-bit little-endian ELF: don't judge
    }
    let u16at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u64at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64at(0x20), u16at(0x36), u16at(0x38));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        o + 4 > b.len() || u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) != 3
        // PT_INTERP
    })
}

/// The base busybox rootfs, built once per test process.
pub fn base_rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        let bb = busybox();
        assert!(bb.is_file(), "{} not found: install busybox-static (hack/setup)", bb.display());
        assert!(is_static_elf(&bb), "{} is dynamically linked: install busybox-static (hack/setup)", bb.display());
        let r = base_dir().join("rootfs-base");
        let mode = |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
        for (d, m) in [
            ("", 0o755),
            ("bin", 0o755),
            ("sbin", 0o755),
            ("usr", 0o755),
            ("usr/bin", 0o755),
            ("usr/sbin", 0o755),
            ("etc", 0o755),
            ("tmp", 0o1777),
            ("proc", 0o555),
            ("sys", 0o555),
            ("dev", 0o755),
            ("root", 0o700),
            ("home", 0o755),
            ("home/user", 0o755),
            ("mnt", 0o755),
            ("run", 0o755),
            ("var", 0o755),
            ("var/tmp", 0o1777),
        ] {
            let p = r.join(d);
            fs::create_dir_all(&p).unwrap();
            mode(&p, m);
        }
        std::os::unix::fs::chown(r.join("home/user"), Some(1000), Some(1000)).unwrap();
        fs::copy(&bb, r.join("bin/busybox")).unwrap();
        mode(&r.join("bin/busybox"), 0o755);
        let list = Command::new(&bb).arg("--list").output().expect("busybox --list");
        for name in String::from_utf8_lossy(&list.stdout).lines() {
            let name = name.trim();
            if name.is_empty() || name == "busybox" || name.contains('/') {
                continue;
            }
            symlink("busybox", r.join("bin").join(name)).unwrap();
        }
        fs::write(r.join("etc/passwd"), PASSWD).unwrap();
        fs::write(r.join("etc/group"), GROUP).unwrap();
        fs::write(r.join("etc/hostname"), "skiff-test\n").unwrap();
        fs::write(r.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
        r
    })
}

// ---------------------------------------------------------------------------------------
// Bundles
// ---------------------------------------------------------------------------------------

/// An OCI bundle: a scratch directory with `rootfs/` (a copy of the busybox rootfs) and
/// `config.json`, which starts as the runtime's `spec` output. Edit [`Bundle::spec`]; it
/// is written to config.json by [`Bundle::save`] (which `Runtime::create`/`run` call).
pub struct Bundle {
    dir: Scratch,
    pub spec: Value,
}

impl Bundle {
    /// A bundle from the runtime under test's `spec`.
    pub fn new() -> Bundle {
        Bundle::with_runtime(runtime_bin())
    }

    pub fn with_runtime(bin: &Path) -> Bundle {
        require_root();
        let dir = Scratch::new("bundle");
        let mut cmd = Command::new(bin);
        cmd.arg("spec").current_dir(dir.path());
        let out = run_command(cmd, format!("{} spec", bin.display()), dir.path(), TIMEOUT);
        assert!(out.success(), "`spec` failed:\n{out}");
        let text = fs::read_to_string(dir.join("config.json"))
            .unwrap_or_else(|e| panic!("`spec` wrote no config.json ({e}):\n{out}"));
        let mut spec: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("`spec` wrote invalid JSON ({e}):\n{text}"));
        let _ = fs::remove_file(dir.join(out.stdout_path.file_name().unwrap()));
        let _ = fs::remove_file(dir.join(out.stderr_path.file_name().unwrap()));
        copy_tree(base_rootfs(), &dir.join("rootfs"));
        spec["root"]["path"] = json!("rootfs");
        spec["process"]["terminal"] = json!(false);
        spec["process"]["args"] = json!(["true"]);
        Bundle { dir, spec }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// A path inside the bundle directory (for files the test shares with the container).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn args(&mut self, args: &[&str]) -> &mut Self {
        self.spec["process"]["args"] = json!(args);
        self
    }

    /// The container process is `sh -c SCRIPT`.
    pub fn sh(&mut self, script: &str) -> &mut Self {
        self.args(&["sh", "-c", script])
    }

    /// Sets the value at a JSON pointer (`/linux/resources/memory/limit`), creating
    /// intermediate objects.
    pub fn set(&mut self, pointer: &str, v: Value) -> &mut Self {
        let mut cur = &mut self.spec;
        for key in pointer.trim_start_matches('/').split('/') {
            if !cur.is_object() {
                *cur = json!({});
            }
            cur = cur.as_object_mut().unwrap().entry(key.to_string()).or_insert(Value::Null);
        }
        *cur = v;
        self
    }

    pub fn get(&self, pointer: &str) -> Option<&Value> {
        self.spec.pointer(pointer)
    }

    /// Removes the key at a JSON pointer, if there.
    pub fn remove(&mut self, pointer: &str) -> &mut Self {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        if let Some(Value::Object(o)) = self.spec.pointer_mut(if parent.is_empty() { "" } else { parent }) {
            o.remove(key);
        }
        self
    }

    pub fn namespaces(&self) -> Vec<String> {
        self.spec["linux"]["namespaces"]
            .as_array()
            .map(|a| a.iter().filter_map(|n| n["type"].as_str().map(String::from)).collect())
            .unwrap_or_default()
    }

    /// Adds (or replaces) a namespace entry, with an optional path to join.
    pub fn namespace(&mut self, typ: &str, path: Option<&Path>) -> &mut Self {
        self.without_namespace(typ);
        let mut ns = json!({ "type": typ });
        if let Some(p) = path {
            ns["path"] = json!(p);
        }
        if !self.spec["linux"]["namespaces"].is_array() {
            self.spec["linux"]["namespaces"] = json!([]);
        }
        self.spec["linux"]["namespaces"].as_array_mut().unwrap().push(ns);
        self
    }

    pub fn without_namespace(&mut self, typ: &str) -> &mut Self {
        if let Some(a) = self.spec["linux"]["namespaces"].as_array_mut() {
            a.retain(|n| n["type"] != typ);
        }
        self
    }

    pub fn add_mount(&mut self, m: Value) -> &mut Self {
        if !self.spec["mounts"].is_array() {
            self.spec["mounts"] = json!([]);
        }
        self.spec["mounts"].as_array_mut().unwrap().push(m);
        self
    }

    /// Removes the mount(s) at `destination`.
    pub fn without_mount(&mut self, destination: &str) -> &mut Self {
        if let Some(a) = self.spec["mounts"].as_array_mut() {
            a.retain(|m| m["destination"] != destination);
        }
        self
    }

    pub fn env(&mut self, kv: &str) -> &mut Self {
        if !self.spec["process"]["env"].is_array() {
            self.spec["process"]["env"] = json!([]);
        }
        self.spec["process"]["env"].as_array_mut().unwrap().push(json!(kv));
        self
    }

    /// Adds a hook of `kind` (prestart, createRuntime, ...).
    pub fn hook(&mut self, kind: &str, hook: Value) -> &mut Self {
        if !self.spec["hooks"][kind].is_array() {
            self.spec["hooks"][kind] = json!([]);
        }
        self.spec["hooks"][kind].as_array_mut().unwrap().push(hook);
        self
    }

    /// Writes `spec` to config.json.
    pub fn save(&self) {
        fs::write(self.dir.join("config.json"), serde_json::to_vec_pretty(&self.spec).unwrap()).unwrap();
    }
}

impl Default for Bundle {
    fn default() -> Self {
        Bundle::new()
    }
}

/// A process.json for `exec --process`.
pub fn process_json(args: &[&str], env: &[&str], cwd: &str) -> Value {
    json!({
        "terminal": false,
        "user": { "uid": 0, "gid": 0 },
        "args": args,
        "env": env,
        "cwd": cwd,
    })
}

// ---------------------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------------------

/// What a command did. stdout/stderr are captured through files (never pipes: a
/// container created by the command inherits them and may outlive it), so
/// [`Out::stdout_now`] re-reads what a container wrote later.
pub struct Out {
    pub cmd: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
}

impl Out {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Exit code; 128+N when killed by signal N (as a shell reports it).
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or_else(|| 128 + self.status.signal().unwrap_or(0))
    }

    #[track_caller]
    pub fn ok(self) -> Out {
        if !self.success() {
            panic!("command failed:\n{self}");
        }
        self
    }

    #[track_caller]
    pub fn fails(self) -> Out {
        if self.success() {
            panic!("command succeeded but was expected to fail:\n{self}");
        }
        self
    }

    /// stdout trimmed.
    pub fn out(&self) -> &str {
        self.stdout.trim()
    }

    /// Re-reads stdout from its file (what a created container wrote since).
    pub fn stdout_now(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn stderr_now(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Asserts the command failed with a short error on stderr that mentions every one of
    /// `words` (case-insensitively) on one line.
    #[track_caller]
    pub fn error_mentions(&self, words: &[&str]) -> &Self {
        assert!(!self.success(), "expected failure:\n{self}");
        // Warnings may come first; the error itself is one line.
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter(|l| {
                let l = l.to_lowercase();
                !l.contains("level=warn") && !l.starts_with("warn")
            })
            .collect();
        assert!(!lines.is_empty(), "no error message on stderr:\n{self}");
        let found = lines.iter().any(|l| {
            let l = l.to_lowercase();
            words.iter().all(|w| l.contains(&w.to_lowercase()))
        });
        assert!(found, "no stderr line mentions all of {words:?}:\n{self}");
        assert_eq!(lines.len(), 1, "expected one clear error line on stderr:\n{self}");
        self
    }
}

impl fmt::Display for Out {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "$ {}", self.cmd)?;
        writeln!(f, "exit: {:?} (code {})", self.status, self.code())?;
        writeln!(f, "--- stdout ---\n{}", self.stdout)?;
        write!(f, "--- stderr ---\n{}", self.stderr)
    }
}

impl fmt::Debug for Out {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The output of a `skiff` child (stdout/stderr piped), waited for at most `timeout`; on
/// time-out it is killed (it is ours) and the test panics with its stderr.
pub fn skiff_output_within(mut child: Child, timeout: Duration) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let o = child.wait_with_output().expect("output");
            panic!("skiff timed out after {timeout:?}: {}", String::from_utf8_lossy(&o.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `child` at most `timeout`; on timeout kills it (it is ours) and returns None.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    let mut nap = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) => {}
            Err(_) => return None,
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    }
}

/// Runs `cmd` with stdin from /dev/null and stdout/stderr into fresh files in `io_dir`.
/// Panics (after killing it) if it runs longer than `timeout`.
pub fn run_command(mut cmd: Command, desc: String, io_dir: &Path, timeout: Duration) -> Out {
    let n = next();
    let stdout_path = io_dir.join(format!("{n}.stdout"));
    let stderr_path = io_dir.join(format!("{n}.stderr"));
    cmd.stdout(File::create(&stdout_path).unwrap()).stderr(File::create(&stderr_path).unwrap());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn `{desc}`: {e}"));
    let status = wait_timeout(&mut child, timeout);
    let stdout = fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
    match status {
        Some(status) => Out { cmd: desc, status, stdout, stderr, stdout_path, stderr_path },
        None => panic!(
            "`{desc}` did not finish within {timeout:?} (killed)\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        ),
    }
}

/// Runs a host command (not the runtime) to completion, capturing its output.
pub fn host(args: &[&str]) -> Out {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]).stdin(Stdio::null());
    run_command(cmd, args.join(" "), io_dir(), TIMEOUT)
}

fn io_dir() -> &'static Path {
    static IO: OnceLock<PathBuf> = OnceLock::new();
    IO.get_or_init(|| {
        let d = base_dir().join("io");
        fs::create_dir_all(&d).unwrap();
        d
    })
}

/// Polls `cond` every 10 ms until it holds; panics with `what` after `timeout`.
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------
// The runtime, per test
// ---------------------------------------------------------------------------------------

static GLOBAL: RwLock<()> = RwLock::new(());

#[allow(dead_code)]
enum Lock {
    Shared(RwLockReadGuard<'static, ()>),
    Exclusive(RwLockWriteGuard<'static, ()>),
}

/// A background runtime command (e.g. a foreground `run` the test kills later).
pub struct Bg {
    pub child: Child,
    pub cmd: String,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
}

impl Bg {
    /// Waits for it to exit (at most `timeout`) and returns what it did.
    #[track_caller]
    pub fn wait(mut self, timeout: Duration) -> Out {
        let status = wait_timeout(&mut self.child, timeout)
            .unwrap_or_else(|| panic!("`{}` did not finish within {timeout:?}", self.cmd));
        Out {
            cmd: self.cmd.clone(),
            status,
            stdout: fs::read_to_string(&self.stdout_path).unwrap_or_default(),
            stderr: fs::read_to_string(&self.stderr_path).unwrap_or_default(),
            stdout_path: self.stdout_path.clone(),
            stderr_path: self.stderr_path.clone(),
        }
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// One test's view of the runtime: its own `--root` state directory; cleans up on drop.
pub struct Runtime {
    bin: PathBuf,
    state: Scratch,
    io: Scratch,
    ids: Mutex<Vec<String>>,
    cgroups: Mutex<Vec<String>>,
    netns: Mutex<Vec<String>>,
    _lock: Lock,
}

impl Runtime {
    /// The runtime under test, sharing the machine with other tests of this binary.
    pub fn new() -> Runtime {
        Runtime::build(runtime_bin().to_path_buf(), false)
    }

    /// Waits until no other test of this binary runs and keeps them out until dropped:
    /// for tests that count machine-wide things.
    pub fn exclusive() -> Runtime {
        Runtime::build(runtime_bin().to_path_buf(), true)
    }

    /// A specific runtime binary (e.g. a copy of the runtime under test).
    pub fn with_bin(bin: &Path) -> Runtime {
        Runtime::build(bin.to_path_buf(), false)
    }

    fn build(bin: PathBuf, exclusive: bool) -> Runtime {
        require_root();
        let lock = if exclusive {
            Lock::Exclusive(GLOBAL.write().unwrap_or_else(|e| e.into_inner()))
        } else {
            Lock::Shared(GLOBAL.read().unwrap_or_else(|e| e.into_inner()))
        };
        Runtime {
            bin,
            state: Scratch::new("state"),
            io: Scratch::new("io"),
            ids: Mutex::new(Vec::new()),
            cgroups: Mutex::new(Vec::new()),
            netns: Mutex::new(Vec::new()),
            _lock: lock,
        }
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The `--root` state directory.
    pub fn root(&self) -> &Path {
        self.state.path()
    }

    /// A directory for the files this runtime's commands write their output to.
    pub fn io_dir(&self) -> &Path {
        self.io.path()
    }

    /// A unique container id (registered for cleanup).
    pub fn id(&self, name: &str) -> String {
        let id = format!("skt{}-{}-{}", std::process::id(), next(), name);
        self.ids.lock().unwrap().push(id.clone());
        id
    }

    /// Registers a cgroup path (as in linux.cgroupsPath) to remove on drop.
    pub fn cleanup_cgroup(&self, path: &str) {
        self.cgroups.lock().unwrap().push(path.to_string());
    }

    /// Creates a named network namespace (`ip netns add`), deleted on drop. Returns
    /// its name; its path is /run/netns/NAME (see [`netns_path`]).
    pub fn netns(&self, name: &str) -> String {
        let ns = format!("skt{}-{}-{}", std::process::id(), next(), name);
        self.netns.lock().unwrap().push(ns.clone());
        host(&["ip", "netns", "add", &ns]).ok();
        ns
    }

    /// The runtime command with `--root` and `args`, not yet run.
    pub fn command(&self, args: &[&str]) -> (Command, String) {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--root").arg(self.root()).args(args).stdin(Stdio::null());
        let desc = format!("{} --root {} {}", self.bin.display(), self.root().display(), args.join(" "));
        (cmd, desc)
    }

    /// Runs the runtime with `args` (after `--root DIR`) and returns what it did.
    pub fn cmd(&self, args: &[&str]) -> Out {
        let (cmd, desc) = self.command(args);
        run_command(cmd, desc, self.io.path(), TIMEOUT)
    }

    /// Same, with a chance to adjust the Command (cwd, env, stdin) first.
    pub fn cmd_with(&self, args: &[&str], f: impl FnOnce(&mut Command)) -> Out {
        let (mut cmd, desc) = self.command(args);
        f(&mut cmd);
        run_command(cmd, desc, self.io.path(), TIMEOUT)
    }

    /// Starts the runtime with `args` in the background.
    pub fn spawn(&self, args: &[&str]) -> Bg {
        let (mut cmd, desc) = self.command(args);
        let n = next();
        let stdout_path = self.io.join(format!("{n}.stdout"));
        let stderr_path = self.io.join(format!("{n}.stderr"));
        cmd.stdout(File::create(&stdout_path).unwrap()).stderr(File::create(&stderr_path).unwrap());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn `{desc}`: {e}"));
        Bg { child, cmd: desc, stdout_path, stderr_path }
    }

    pub fn create(&self, b: &Bundle, id: &str) -> Out {
        b.save();
        self.cmd(&["create", "--bundle", b.path().to_str().unwrap(), id])
    }

    pub fn start(&self, id: &str) -> Out {
        self.cmd(&["start", id])
    }

    /// `create` then `start`, both must succeed. The returned Out is create's: its
    /// stdout/stderr files receive the container's output.
    #[track_caller]
    pub fn create_start(&self, b: &Bundle, id: &str) -> Out {
        let c = self.create(b, id).ok();
        self.start(id).ok();
        c
    }

    /// Foreground `run`: waits for the container, exits with its status.
    pub fn run(&self, b: &Bundle, id: &str) -> Out {
        b.save();
        self.cmd(&["run", "--bundle", b.path().to_str().unwrap(), id])
    }

    /// Runs the bundle in the foreground and returns its stdout; it must exit 0.
    #[track_caller]
    pub fn output(&self, b: &Bundle) -> String {
        let id = self.id("run");
        let out = self.run(b, &id);
        if !out.success() {
            panic!("container failed:\n{out}\n--- config.json ---\n{}", serde_json::to_string_pretty(&b.spec).unwrap());
        }
        out.stdout
    }

    pub fn run_detached(&self, b: &Bundle, id: &str) -> Out {
        b.save();
        self.cmd(&["run", "--detach", "--bundle", b.path().to_str().unwrap(), id])
    }

    /// `state ID` parsed (must succeed).
    #[track_caller]
    pub fn state(&self, id: &str) -> Value {
        let out = self.cmd(&["state", id]).ok();
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("state output is not JSON ({e}):\n{out}"))
    }

    /// The container's status, or None when `state` fails (e.g. deleted).
    pub fn status(&self, id: &str) -> Option<String> {
        let out = self.cmd(&["state", id]);
        if !out.success() {
            return None;
        }
        serde_json::from_str::<Value>(&out.stdout).ok()?["status"].as_str().map(String::from)
    }

    /// The container's init pid on the host.
    #[track_caller]
    pub fn pid(&self, id: &str) -> i32 {
        self.state(id)["pid"].as_i64().expect("state has a pid") as i32
    }

    #[track_caller]
    pub fn wait_status(&self, id: &str, status: &str) {
        wait_until(&format!("container {id} to be {status}"), TIMEOUT, || self.status(id).as_deref() == Some(status));
    }

    pub fn kill(&self, id: &str, sig: &str) -> Out {
        self.cmd(&["kill", id, sig])
    }

    pub fn delete(&self, id: &str) -> Out {
        self.cmd(&["delete", id])
    }

    pub fn delete_force(&self, id: &str) -> Out {
        self.cmd(&["delete", "--force", id])
    }

    /// Ids of containers with state in this runtime's root (entries of the root dir).
    pub fn state_entries(&self) -> Vec<String> {
        fs::read_dir(self.root())
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect())
            .unwrap_or_default()
    }

    fn cleanup(&mut self) {
        let mut ids: BTreeSet<String> = self.ids.lock().unwrap().iter().cloned().collect();
        ids.extend(self.state_entries().into_iter().filter(|e| !e.starts_with('.')));
        for id in &ids {
            let (mut cmd, _) = self.command(&["delete", "--force", id]);
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
            if let Ok(mut c) = cmd.spawn() {
                wait_timeout(&mut c, Duration::from_secs(30));
            }
        }
        for id in &ids {
            remove_cgroup(id);
        }
        for cg in self.cgroups.lock().unwrap().iter() {
            remove_cgroup(cg);
        }
        for ns in self.netns.lock().unwrap().iter() {
            let _ = Command::new("ip").args(["netns", "del", ns]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
    }
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime::new()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// /run/netns/NAME
pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

// ---------------------------------------------------------------------------------------
// cgroups
// ---------------------------------------------------------------------------------------

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone)]
pub struct CgroupMount {
    pub mount_point: PathBuf,
    pub v2: bool,
    /// v1: the controllers (and `name=X`) of the hierarchy; v2: empty.
    pub controllers: Vec<String>,
    /// This process's cgroup in the hierarchy (from /proc/self/cgroup).
    pub own: String,
}

/// The cgroup hierarchies mounted in this mount namespace.
pub fn cgroup_mounts() -> Vec<CgroupMount> {
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let own: Vec<(BTreeSet<String>, String)> = own
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _ = it.next()?;
            let ctrls = it.next()?.split(',').filter(|s| !s.is_empty()).map(String::from).collect();
            Some((ctrls, it.next()?.to_string()))
        })
        .collect();
    let mut seen = BTreeSet::new();
    mountinfo()
        .into_iter()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .filter(|m| seen.insert(m.mount_point.clone()))
        .map(|m| {
            let v2 = m.fstype == "cgroup2";
            let controllers: Vec<String> = if v2 {
                Vec::new()
            } else {
                m.super_options
                    .split(',')
                    .filter(|o| {
                        !matches!(*o, "rw" | "ro" | "xattr" | "noprefix" | "clone_children")
                            && !o.starts_with("release_agent=")
                            && !o.starts_with("cpuset_v2_mode")
                    })
                    .map(String::from)
                    .collect()
            };
            let set: BTreeSet<String> = controllers.iter().cloned().collect();
            let own = own
                .iter()
                .find(|(c, _)| if v2 { c.is_empty() } else { *c == set })
                .map(|(_, p)| p.clone())
                .unwrap_or_else(|| "/".into());
            CgroupMount { mount_point: m.mount_point, v2, controllers, own }
        })
        .collect()
}

/// The v1 hierarchy holding `controller`, if mounted.
pub fn cgroup_v1(controller: &str) -> Option<CgroupMount> {
    cgroup_mounts().into_iter().find(|m| !m.v2 && m.controllers.iter().any(|c| c == controller))
}

/// The directory of cgroupsPath `path` where `ctrl`'s files are: its v1 hierarchy, else the
/// cgroup2 mount of a pure v2 host. None when neither has it mounted.
pub fn controller_dir(ctrl: &str, path: &str) -> Option<PathBuf> {
    cgroup_v1(ctrl)
        .or_else(|| cgroup_mounts().into_iter().find(|m| m.v2 && m.mount_point == Path::new("/sys/fs/cgroup")))
        .map(|m| cgroup_dir(&m, path))
}

/// Where a cgroupsPath lands in a hierarchy: absolute paths from the hierarchy's root,
/// relative ones below this process's own cgroup (as runc does).
pub fn cgroup_dir(m: &CgroupMount, cgroups_path: &str) -> PathBuf {
    if cgroups_path.starts_with('/') {
        m.mount_point.join(cgroups_path.trim_start_matches('/'))
    } else {
        m.mount_point.join(m.own.trim_start_matches('/')).join(cgroups_path)
    }
}

/// Kills what is left in a test cgroup (all of its processes are the test's containers),
/// then removes the cgroup, both as an absolute path and relative to our own cgroup, in
/// every hierarchy.
pub fn remove_cgroup(path: &str) {
    if path.trim_matches('/').is_empty() {
        return;
    }
    for m in cgroup_mounts() {
        let rel = path.trim_start_matches('/');
        let mut dirs = vec![m.mount_point.join(rel)];
        if !path.starts_with('/') || m.own != "/" {
            dirs.push(m.mount_point.join(m.own.trim_start_matches('/')).join(rel));
        }
        for d in dirs {
            if d != m.mount_point && d.starts_with(&m.mount_point) && d.is_dir() {
                remove_cgroup_dir(&d);
            }
        }
    }
}

fn remove_cgroup_dir(d: &Path) {
    if let Ok(rd) = fs::read_dir(d) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_dir(&e.path());
            }
        }
    }
    for _ in 0..200 {
        if fs::remove_dir(d).is_ok() || !d.exists() {
            return;
        }
        if let Ok(procs) = fs::read_to_string(d.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: plain kill(2) of a process in the test's own container cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Number of cgroup directories in every hierarchy (for leak checks).
pub fn count_cgroup_dirs() -> usize {
    fn count(d: &Path) -> usize {
        1 + fs::read_dir(d)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                    .map(|e| count(&e.path()))
                    .sum()
            })
            .unwrap_or(0)
    }
    cgroup_mounts().iter().map(|m| count(&m.mount_point)).sum()
}

// ---------------------------------------------------------------------------------------
// Process facts
// ---------------------------------------------------------------------------------------

/// Open fds of this process.
pub fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd").map(|rd| rd.count()).unwrap_or(0)
}

/// Pids of this process's zombie children.
pub fn zombie_children() -> Vec<i32> {
    let me = std::process::id() as i32;
    processes().into_iter().filter(|p| p.ppid == me && p.state == 'Z').map(|p| p.pid).collect()
}

#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub state: char,
    pub comm: String,
}

/// Every process on the host (from /proc/*/stat).
pub fn processes() -> Vec<Proc> {
    let mut v = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else { continue };
        let (Some(l), Some(r)) = (stat.find('('), stat.rfind(')')) else { continue };
        let comm = stat[l + 1..r].to_string();
        let rest: Vec<&str> = stat[r + 1..].split_whitespace().collect();
        if rest.len() < 2 {
            continue;
        }
        v.push(Proc { pid, ppid: rest[1].parse().unwrap_or(0), state: rest[0].chars().next().unwrap_or('?'), comm });
    }
    v
}

/// Inode numbers of every pid namespace some live (not zombie) process is in (for leak
/// checks; an exited container init that the host's init has not reaped yet is no leak).
pub fn pid_namespaces() -> BTreeSet<String> {
    processes()
        .into_iter()
        .filter(|p| p.state != 'Z')
        .filter_map(|p| fs::read_link(format!("/proc/{}/ns/pid", p.pid)).ok())
        .map(|l| l.to_string_lossy().to_string())
        .collect()
}

/// `readlink /proc/self/ns/<ns>` on the host, e.g. "net:[4026531840]".
pub fn host_ns(ns: &str) -> String {
    fs::read_link(format!("/proc/self/ns/{ns}")).unwrap().to_string_lossy().to_string()
}

pub fn sha256(p: &Path) -> String {
    let out = host(&["sha256sum", p.to_str().unwrap()]).ok();
    out.stdout.split_whitespace().next().unwrap_or_default().to_string()
}

/// `sha256:<hex>` of `b`: the digest of a blob of an image a test builds.
pub fn blob_digest(b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let hex: String = Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect();
    format!("sha256:{hex}")
}

/// This machine's architecture as OCI images name it (so a pull has nothing to warn about).
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
}

/// Copies a file (e.g. the runtime binary) into a scratch dir, keeping its mode.
pub fn copy_binary(src: &Path, dir: &Path) -> PathBuf {
    let dst = dir.join(src.file_name().unwrap());
    fs::copy(src, &dst).unwrap();
    fs::set_permissions(&dst, fs::Permissions::from_mode(0o755)).unwrap();
    dst
}

/// Reads a whole file, or "" when it cannot.
pub fn read(p: impl AsRef<Path>) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(p) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// The value of a `Key:\tvalue` line of a /proc/<pid>/status text.
pub fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':').map(str::trim))
}

/// Capability names as in the OCI spec, in bit order (0..=40).
pub const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The /proc/<pid>/status hex mask of a set of capability names.
pub fn cap_mask(names: &[&str]) -> String {
    let mut m: u64 = 0;
    for n in names {
        let i = CAPS.iter().position(|c| c == n).unwrap_or_else(|| panic!("unknown cap {n}"));
        m |= 1 << i;
    }
    format!("{m:016x}")
}

/// Every capability this process may hand on (its bounding set): "all" for a privileged
/// container on this host (which, for one, lacks CAP_SYS_RESOURCE).
pub fn all_caps() -> Vec<&'static str> {
    let bnd =
        status_field(&read("/proc/self/status"), "CapBnd").and_then(|v| u64::from_str_radix(v, 16).ok()).unwrap_or(0);
    CAPS.iter().enumerate().filter(|(i, _)| bnd & (1 << i) != 0).map(|(_, c)| *c).collect()
}

/// The mounts of runc's default spec, for tests that must not depend on the runtime's
/// own `spec` defaults.
pub fn standard_mounts() -> Value {
    json!([
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
    ])
}

// ---------------------------------------------------------------------------------------
// Leak checks
// ---------------------------------------------------------------------------------------

/// The prefix of every container id and cgroup this process makes.
pub fn id_prefix() -> String {
    format!("skt{}-", std::process::id())
}

/// Machine-wide things a runtime could leak, measured before and after.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub mounts: Vec<String>,
    pub cgroups: BTreeSet<PathBuf>,
    pub pid_namespaces: BTreeSet<String>,
    /// Processes whose root, cwd or cgroup is one of this test process's.
    pub our_processes: BTreeSet<i32>,
    pub fds: usize,
    pub zombies: usize,
    pub state_entries: Vec<String>,
}

fn all_cgroup_dirs() -> BTreeSet<PathBuf> {
    fn walk(d: &Path, out: &mut BTreeSet<PathBuf>) {
        out.insert(d.to_path_buf());
        if let Ok(rd) = fs::read_dir(d) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(&e.path(), out);
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    for m in cgroup_mounts() {
        walk(&m.mount_point, &mut out);
    }
    out
}

fn is_ours(s: &str) -> bool {
    s.contains(&id_prefix()) || s.contains(base_dir().to_str().unwrap())
}

fn our_processes() -> BTreeSet<i32> {
    let me = std::process::id() as i32;
    processes()
        .into_iter()
        .filter(|p| p.pid != me)
        // A zombie left to the host's init is reaped by it (lazily, on some hosts).
        .filter(|p| !(p.state == 'Z' && p.ppid != me))
        .filter(|p| {
            let link = |w: &str| {
                fs::read_link(format!("/proc/{}/{w}", p.pid))
                    .map(|l| l.to_string_lossy().to_string())
                    .unwrap_or_default()
            };
            is_ours(&link("root")) || is_ours(&link("cwd")) || is_ours(&read(format!("/proc/{}/cgroup", p.pid)))
        })
        .map(|p| p.pid)
        .collect()
}

impl Snapshot {
    pub fn take(rt: &Runtime) -> Snapshot {
        Snapshot {
            mounts: mountinfo()
                .iter()
                .map(|m| format!("{} {} {}", m.mount_point.display(), m.fstype, m.source))
                .collect(),
            cgroups: all_cgroup_dirs(),
            pid_namespaces: pid_namespaces(),
            our_processes: our_processes(),
            fds: open_fds(),
            zombies: zombie_children().len(),
            state_entries: rt.state_entries(),
        }
    }

    /// Asserts nothing leaked since `self`. Leaks that are recognisably this test's (our
    /// paths, ids, processes, fds, state) always fail; other machine-wide differences
    /// (mount count, cgroup dirs, pid namespaces) fail when `CI` is set or
    /// `SKIFF_TEST_STRICT=1` (the machine is ours alone then) and are reported otherwise,
    /// since other sessions on a shared machine may be mounting things meanwhile.
    #[track_caller]
    pub fn assert_unchanged(&self, after: &Snapshot, what: &str) {
        let strict = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
            || std::env::var("SKIFF_TEST_STRICT").is_ok_and(|v| v == "1");
        let mut ours = Vec::new();
        let mut others = Vec::new();
        let mut note = |s: String, mine: bool| if mine { ours.push(s) } else { others.push(s) };

        let (b, a): (BTreeSet<&String>, BTreeSet<&String>) =
            (self.mounts.iter().collect(), after.mounts.iter().collect());
        for m in a.difference(&b) {
            note(format!("new mount: {m}"), is_ours(m));
        }
        for m in b.difference(&a) {
            note(format!("mount gone: {m}"), is_ours(m));
        }
        if self.mounts.len() != after.mounts.len() {
            note(format!("mountinfo lines: {} -> {}", self.mounts.len(), after.mounts.len()), false);
        }
        for c in after.cgroups.difference(&self.cgroups) {
            let s = c.display().to_string();
            note(format!("new cgroup: {s}"), is_ours(&s));
        }
        for c in self.cgroups.difference(&after.cgroups) {
            let s = c.display().to_string();
            note(format!("cgroup gone: {s}"), is_ours(&s));
        }
        for n in after.pid_namespaces.difference(&self.pid_namespaces) {
            note(format!("new pid namespace with live processes: {n}"), false);
        }
        for p in after.our_processes.difference(&self.our_processes) {
            let cmd = read(format!("/proc/{p}/cmdline")).replace('\0', " ");
            note(format!("leftover container process {p}: {cmd}"), true);
        }
        if after.fds != self.fds {
            note(format!("open fds of the test process: {} -> {}", self.fds, after.fds), true);
        }
        if after.zombies != self.zombies {
            note(format!("zombie children: {} -> {}", self.zombies, after.zombies), true);
        }
        if after.state_entries != self.state_entries {
            note(format!("state dir entries: {:?} -> {:?}", self.state_entries, after.state_entries), true);
        }
        if !others.is_empty() && !strict {
            eprintln!(
                "WARNING ({what}): machine-wide differences (not failing: set CI=true or SKIFF_TEST_STRICT=1):\n  {}",
                others.join("\n  ")
            );
        }
        let mut fail = ours;
        if strict {
            fail.extend(others);
        }
        assert!(fail.is_empty(), "{what} leaked:\n  {}", fail.join("\n  "));
    }
}

/// Takes snapshots until two in a row agree (at most a few seconds): lets processes that
/// are being reaped, and lazily detached mounts, settle before comparing.
pub fn settled_snapshot(rt: &Runtime) -> Snapshot {
    let mut last = Snapshot::take(rt);
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(50));
        let next = Snapshot::take(rt);
        if next.mounts == last.mounts
            && next.cgroups == last.cgroups
            && next.our_processes == last.our_processes
            && next.pid_namespaces == last.pid_namespaces
        {
            return next;
        }
        last = next;
    }
    last
}

/// After a `create` of container `id` that failed: nothing of it is left: no state entry,
/// no cgroup at `cgroups_path` in any hierarchy, no process with the id among its
/// arguments (the runtime's forked init carries the runtime's command line).
#[track_caller]
pub fn assert_create_left_nothing(rt: &Runtime, id: &str, cgroups_path: &str) {
    assert!(!rt.state_entries().iter().any(|e| e == id), "state of {id} left behind: {:?}", rt.state_entries());
    for m in cgroup_mounts() {
        let d = cgroup_dir(&m, cgroups_path);
        assert!(!d.exists(), "cgroup {} left behind", d.display());
    }
    let me = std::process::id() as i32;
    let left: Vec<String> = processes()
        .into_iter()
        .filter(|p| p.pid != me && p.state != 'Z')
        .map(|p| read(format!("/proc/{}/cmdline", p.pid)))
        .filter(|c| c.split('\0').any(|a| a == id))
        .map(|c| c.replace('\0', " "))
        .collect();
    assert!(left.is_empty(), "processes of {id} left behind: {left:?}");
}
