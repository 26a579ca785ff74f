//! Real container engines over the runtime under test: podman (`--runtime`) and containerd
//! (`ctr --runc-binary`, and the runc v2 shim with `BinaryName` in its runtime options).
//! Each fixture keeps everything in a scratch directory of its own (storage, state, the
//! runtime's `--root`, sockets) and one cgroup parent of its own, and its `Drop` removes
//! containers, processes it started (found by that directory in their command line),
//! mounts and cgroups, even when the test panics.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::registry::{skopeo_policy, test_images};
use crate::{base_dir, host, remove_cgroup, run_command, runtime_bin, skip, unmount_under, wait_until, which};
use crate::{Out, Scratch, TIMEOUT};

/// The test image as an OCI archive (`docker.io/skiff-test/busybox:oci`: busybox-static,
/// entrypoint `/entrypoint.sh` that prints one line and execs its arguments), made once per
/// test process from `hack/build-test-images`'s layout with skopeo. Both engines import it.
pub const IMAGE: &str = "docker.io/skiff-test/busybox:oci";

pub fn image_archive() -> &'static Path {
    static ARCHIVE: OnceLock<PathBuf> = OnceLock::new();
    ARCHIVE.get_or_init(|| {
        let out = base_dir().join("busybox-oci.tar");
        let src = format!("oci:{}:busybox-oci", test_images().display());
        let dst = format!("oci-archive:{}:{IMAGE}", out.display());
        host(&["skopeo", "--policy", skopeo_policy().to_str().unwrap(), "copy", "-q", &src, &dst]).ok();
        out
    })
}

/// The engine's binary, or None after saying the test is skipped. Under CI (CI=true)
/// hack/setup installs every engine, so a missing one is a failure there, not a skip.
pub fn engine_or_skip(name: &str) -> Option<PathBuf> {
    match which(name) {
        Some(p) => Some(p),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{name} is not installed, but CI=true: hack/setup installs it")
        }
        None => {
            skip(&format!("{name} is not installed (hack/setup installs it)"));
            None
        }
    }
}

/// Kills (SIGKILL) every process whose command line mentions `dir`: the conmons, shims
/// and daemons a fixture started (they all name its scratch directory), never anything else.
fn kill_processes_naming(dir: &Path) {
    let needle = dir.to_string_lossy().to_string();
    let me = std::process::id() as i32;
    for p in crate::processes() {
        if p.pid == me || p.state == 'Z' {
            continue;
        }
        let cmdline = fs::read(format!("/proc/{}/cmdline", p.pid)).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            // SAFETY: kill(2) with a pid and a signal.
            unsafe { libc::kill(p.pid, libc::SIGKILL) };
        }
    }
}

fn unique(what: &str) -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    format!("skt{}-{what}{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
}

// ---------------------------------------------------------------------------------------
// podman
// ---------------------------------------------------------------------------------------

/// podman with its own containers.conf and storage.conf (storage, run and tmp dirs, event
/// log, network config in a scratch dir), cgroupfs, the runtime under test registered as
/// runtime `skiff` with JSON logs, and the image imported.
pub struct Podman {
    pub dir: Scratch,
    /// `--cgroup-parent` of every container (conmon lands in `<parent>/conmon`).
    pub cgroup_parent: String,
}

impl Podman {
    /// None (after saying so) when podman is not installed.
    pub fn start() -> Option<Podman> {
        engine_or_skip("podman")?;
        let dir = Scratch::new("podman");
        let p = Podman { cgroup_parent: format!("/{}", unique("podman")), dir };
        fs::write(p.dir.join("containers.conf"), Self::containers_conf(p.dir.path(), runtime_bin())).unwrap();
        fs::write(p.dir.join("storage.conf"), Self::storage_conf(p.dir.path())).unwrap();
        p.cmd(&["load", "-q", "-i", image_archive().to_str().unwrap()]).ok();
        Some(p)
    }

    /// The containers.conf the tests use (and README.md shows).
    pub fn containers_conf(dir: &Path, runtime: &Path) -> String {
        let d = dir.display();
        format!(
            r#"[containers]
netns = "none"
default_ulimits = ["nofile=1024:1024", "nproc=1000:1000"]

[engine]
runtime = "skiff"
runtime_supports_json = ["crun", "runc", "skiff"]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{d}/events.log"
tmp_dir = "{d}/tmp"
network_config_dir = "{d}/networks"

[engine.runtimes]
skiff = ["{}"]
"#,
            runtime.display()
        )
    }

    pub fn storage_conf(dir: &Path) -> String {
        let d = dir.display();
        format!("[storage]\ndriver = \"overlay\"\ngraphroot = \"{d}/storage\"\nrunroot = \"{d}/run\"\n")
    }

    /// The podman command line (env + global flags) as words, for a shell or tmux.
    pub fn argv(&self) -> Vec<String> {
        vec![
            "env".into(),
            format!("CONTAINERS_CONF={}", self.dir.join("containers.conf").display()),
            format!("CONTAINERS_STORAGE_CONF={}", self.dir.join("storage.conf").display()),
            "podman".into(),
            // The runtime's own --root, so its state stays in here too.
            "--runtime-flag".into(),
            format!("root={}", self.dir.join("runtime").display()),
        ]
    }

    pub fn command(&self, args: &[&str]) -> (Command, String) {
        let argv = self.argv();
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).args(args).stdin(Stdio::null());
        (cmd, format!("podman {}", args.join(" ")))
    }

    pub fn cmd(&self, args: &[&str]) -> Out {
        let (cmd, desc) = self.command(args);
        run_command(cmd, desc, self.dir.path(), TIMEOUT)
    }

    /// `podman run` with this fixture's cgroup parent, then `args`.
    pub fn run(&self, args: &[&str]) -> Out {
        let mut a = vec!["run", "--cgroup-parent", &self.cgroup_parent];
        a.extend(args);
        self.cmd(&a)
    }

    /// The container's cgroup directory in the v1 hierarchy of `ctrl` (or cgroup2).
    pub fn cgroup_dir(&self, ctrl: &str, name: &str) -> Option<PathBuf> {
        let id = self.cmd(&["inspect", "-f", "{{.Id}}", name]).ok().stdout.trim().to_string();
        crate::controller_dir(ctrl, &format!("{}/libpod-{id}", self.cgroup_parent))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd(&["rm", "--all", "--force", "--time", "0"]);
        kill_processes_naming(self.dir.path());
        unmount_under(self.dir.path());
        remove_cgroup(&self.cgroup_parent);
    }
}

// ---------------------------------------------------------------------------------------
// containerd
// ---------------------------------------------------------------------------------------

/// A containerd started by the test on its own socket, root and state dirs (config
/// written here), with the runtime under test registered for the CRI plugin as runtime
/// class handler `skiff` (`io.containerd.runc.v2` + `options.BinaryName`, as k3s
/// configures one). Containers are made with `ctr` in namespace [`Containerd::ns`]
/// (cgroups under `/<ns>/`), the runtime's state under `<dir>/runc`.
pub struct Containerd {
    pub dir: Scratch,
    pub ns: String,
    daemon: Option<Child>,
}

impl Containerd {
    /// None (after saying so) when containerd is not installed.
    pub fn start() -> Option<Containerd> {
        engine_or_skip("containerd")?;
        engine_or_skip("containerd-shim-runc-v2")?;
        let dir = Scratch::new("containerd");
        let config = dir.join("config.toml");
        fs::write(&config, Self::config(dir.path(), runtime_bin())).unwrap();
        let log = File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let c = Containerd { ns: unique("ctd"), dir, daemon: Some(child) };
        wait_until("containerd to answer on its socket", TIMEOUT, || {
            c.dir.join("containerd.sock").exists() && c.ctr(&["version"]).success()
        });
        c.ctr(&["image", "import", image_archive().to_str().unwrap()]).ok();
        Some(c)
    }

    /// The containerd config the tests use (and README.md shows): own dirs, and the
    /// runtime registered as the CRI runtime handler `skiff`.
    pub fn config(dir: &Path, runtime: &Path) -> String {
        let d = dir.display();
        format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.skiff]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.skiff.options]
  BinaryName = "{r}"
  Root = "{d}/runc"
"#,
            r = runtime.display()
        )
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    pub fn argv(&self) -> Vec<String> {
        vec![
            "ctr".into(),
            "--address".into(),
            self.socket().display().to_string(),
            "--namespace".into(),
            self.ns.clone(),
        ]
    }

    pub fn ctr(&self, args: &[&str]) -> Out {
        let argv = self.argv();
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).args(args).stdin(Stdio::null());
        run_command(cmd, format!("ctr {}", args.join(" ")), self.dir.path(), TIMEOUT)
    }

    /// `ctr run` through the runc v2 shim with `--runc-binary` (the runtime under test)
    /// and `--runc-root` in here, then `args`.
    pub fn run(&self, args: &[&str]) -> Out {
        let bin = runtime_bin().display().to_string();
        let root = self.dir.join("runc").display().to_string();
        let mut a = vec!["run", "--runc-binary", &bin, "--runc-root", &root];
        a.extend(args);
        self.ctr(&a)
    }

    /// The host cgroup directory of container `id` in the v1 hierarchy of `ctrl` (or cgroup2).
    pub fn cgroup_dir(&self, ctrl: &str, id: &str) -> Option<PathBuf> {
        crate::controller_dir(ctrl, &format!("/{}/{id}", self.ns))
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let ids = self.ctr(&["containers", "list", "--quiet"]).stdout;
        for id in ids.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let _ = self.ctr(&["task", "kill", "--signal", "SIGKILL", id]);
            let _ = self.ctr(&["task", "delete", "--force", id]);
            let _ = self.ctr(&["containers", "delete", id]);
        }
        if let Some(mut d) = self.daemon.take() {
            // SAFETY: kill(2) of the daemon we started (our child, not yet reaped).
            unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
            if crate::wait_timeout(&mut d, Duration::from_secs(10)).is_none() {
                let _ = d.kill();
                let _ = d.wait();
            }
        }
        // Shims outlive containerd by design; ours name our socket.
        kill_processes_naming(self.dir.path());
        unmount_under(self.dir.path());
        remove_cgroup(&format!("/{}", self.ns));
    }
}
