//! Real container engines over the runtime under test: podman (`--runtime`) and containerd
//! (`ctr --runc-binary`, the runc v2 shim with `BinaryName` in its runtime options, and
//! the CRI plugin driven over its gRPC API with a CRI client, as the kubelet drives it).
//! Each fixture keeps everything in a scratch directory of its own (storage, state, the
//! runtime's `--root`, sockets) and one cgroup parent of its own, and its `Drop` removes
//! containers, processes it started (found by that directory in their command line),
//! mounts and cgroups, even when the test panics.

use std::fs::{self, File};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{ImageSpec, ImageStatusRequest};
use tonic::transport::{Channel, Endpoint, Uri};

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

/// The sandbox ("pause") image of the CRI tests: the test image with `Cmd ["sleep",
/// "1000000"]` (its entrypoint execs it), so the sandbox container keeps running. An OCI
/// archive made once per test process with umoci and skopeo, offline.
pub const PAUSE_IMAGE: &str = "docker.io/skiff-test/pause:oci";

pub fn pause_archive() -> &'static Path {
    static ARCHIVE: OnceLock<PathBuf> = OnceLock::new();
    ARCHIVE.get_or_init(|| {
        let layout = base_dir().join("pause-layout");
        let out = base_dir().join("pause-oci.tar");
        let policy = skopeo_policy().to_str().unwrap();
        let src = format!("oci:{}:busybox-oci", test_images().display());
        let tagged = format!("{}:pause", layout.display());
        host(&["skopeo", "--policy", policy, "copy", "-q", &src, &format!("oci:{tagged}")]).ok();
        host(&["umoci", "config", "--image", &tagged, "--config.cmd", "sleep", "--config.cmd", "1000000"]).ok();
        let dst = format!("oci-archive:{}:{PAUSE_IMAGE}", out.display());
        host(&["skopeo", "--policy", policy, "copy", "-q", &format!("oci:{tagged}"), &dst]).ok();
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
/// (cgroups under `/<ns>/`), the runtime's state under `<dir>/runc/<namespace>`; the CRI
/// plugin's (namespace `k8s.io`, [`Containerd::cri`]) under the same root, its pods'
/// cgroups under [`Containerd::cri_cgroup_parent`].
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
        // The CRI plugin's CNI dirs stay empty (its pods use the host's network), and
        // its registry host config sends any pull of docker.io (every test image is one)
        // to a closed port on loopback: images are imported, never pulled.
        for d in ["cni/bin", "cni/net.d", "certs.d/docker.io"] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        fs::write(dir.join("certs.d/docker.io/hosts.toml"), "server = \"http://127.0.0.1:9\"\n").unwrap();
        run_containerd_dirs(true);
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

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Without CAP_SYS_RESOURCE the sandbox's oom_score_adj (-998) cannot be set.
  restrict_oom_score_adj = true

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{d}/cni/bin"
  conf_dir = "{d}/cni/net.d"

[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "{d}/certs.d"

# The default handler (""): a runtimes table replaces containerd's built-in one, and
# without an entry for default_runtime_name ("runc") the CRI plugin does not load.
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  Root = "{d}/runc-default"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.skiff]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.skiff.options]
  BinaryName = "{r}"
  Root = "{d}/runc"
  SystemdCgroup = false
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
        self.ctr_in(&self.ns, args)
    }

    /// `ctr` in containerd namespace `ns` (the CRI plugin's is [`CRI_NAMESPACE`]).
    pub fn ctr_in(&self, ns: &str, args: &[&str]) -> Out {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(self.socket()).args(["--namespace", ns]).args(args).stdin(Stdio::null());
        run_command(cmd, format!("ctr -n {ns} {}", args.join(" ")), self.dir.path(), TIMEOUT)
    }

    /// A CRI client on this containerd's socket, once the test image and the sandbox
    /// image are imported into the CRI plugin's namespace and the plugin knows both
    /// (its image store follows containerd's by events).
    pub fn cri(&self) -> Cri {
        for archive in [image_archive(), pause_archive()] {
            self.ctr_in(CRI_NAMESPACE, &["image", "import", archive.to_str().unwrap()]).ok();
        }
        let cri = Cri::connect(&self.socket(), &self.dir.join("containerd.log"));
        let req = k8s_cri::v1::VersionRequest { version: String::new() };
        if let Err(e) = cri.call(cri.runtime().version(req)) {
            panic!("containerd's CRI plugin does not answer: {e:?}\n--- containerd log ---\n{}", self.log());
        }
        for image in [IMAGE, PAUSE_IMAGE] {
            let mut last = String::new();
            let known = |last: &mut String| {
                let req = ImageStatusRequest {
                    image: Some(ImageSpec { image: image.into(), ..Default::default() }),
                    verbose: false,
                };
                let r = cri.call(cri.images().image_status(req));
                *last = format!("{r:?}");
                r.is_ok_and(|r| r.image.is_some())
            };
            let start = std::time::Instant::now();
            while !known(&mut last) {
                if start.elapsed() > TIMEOUT {
                    panic!("the CRI plugin does not know {image} (ImageStatus: {last})\n{}", self.log());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cri
    }

    /// The cgroup parent the CRI tests give their pods (`LinuxPodSandboxConfig`): below
    /// this fixture's own, so `Drop` removes it.
    pub fn cri_cgroup_parent(&self) -> String {
        format!("/{}/pods", self.ns)
    }

    /// The runtime's `--root` for the containers of containerd namespace `ns` (the runc
    /// v2 shim appends the namespace to the `Root` option).
    pub fn runtime_root(&self, ns: &str) -> PathBuf {
        self.dir.join("runc").join(ns)
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
        // What a failed test left: ctr's containers, and the CRI plugin's (pods included).
        for ns in [self.ns.as_str(), CRI_NAMESPACE] {
            let ids = self.ctr_in(ns, &["containers", "list", "--quiet"]).stdout;
            for id in ids.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let _ = self.ctr_in(ns, &["task", "kill", "--signal", "SIGKILL", id]);
                let _ = self.ctr_in(ns, &["task", "delete", "--force", id]);
                let _ = self.ctr_in(ns, &["containers", "delete", id]);
            }
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
        run_containerd_dirs(false);
    }
}

/// containerd 1.6 makes `/run/containerd/{s,fifo,runc}` (shim sockets, ctr's fifos) whatever
/// its config says. The first fixture to start notes which of them did not exist; when the
/// last one is dropped, those are removed again if empty (a host's own containerd keeps its
/// directories: they existed before).
fn run_containerd_dirs(starting: bool) {
    static LIVE: Mutex<(usize, Vec<PathBuf>)> = Mutex::new((0, Vec::new()));
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    if starting {
        if live.0 == 0 {
            let base = Path::new("/run/containerd");
            live.1 = [base.to_path_buf(), base.join("s"), base.join("fifo"), base.join("runc")]
                .into_iter()
                .filter(|d| !d.exists())
                .collect();
        }
        live.0 += 1;
        return;
    }
    live.0 = live.0.saturating_sub(1);
    if live.0 == 0 {
        // Deepest first; remove_dir only ever removes an empty directory.
        for d in std::mem::take(&mut live.1).iter().rev() {
            let _ = fs::remove_dir(d);
        }
    }
}

// ---------------------------------------------------------------------------------------
// CRI (the kubelet's API of containerd's CRI plugin)
// ---------------------------------------------------------------------------------------

/// The containerd namespace the CRI plugin keeps its images and containers in.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// A CRI v1 client (k8s-cri's tonic clients) on containerd's unix socket, with its own
/// single-threaded tokio runtime so that tests stay synchronous: `cri.call(cri.runtime()
/// .run_pod_sandbox(req))`. Every call gives up after [`TIMEOUT`] (a hang is a failure).
pub struct Cri {
    rt: tokio::runtime::Runtime,
    channel: Channel,
    /// The daemon's log, whose end a timed-out call shows.
    log: PathBuf,
}

impl Cri {
    pub fn connect(socket: &Path, log: &Path) -> Cri {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
        let path = socket.to_path_buf();
        let connector = tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        });
        // The URI is a placeholder: every connection goes to the socket.
        let endpoint = Endpoint::from_static("http://[::]:0");
        let channel = rt
            .block_on(endpoint.connect_with_connector(connector))
            .unwrap_or_else(|e| panic!("connect a CRI client to {}: {e}", socket.display()));
        Cri { rt, channel, log: log.to_path_buf() }
    }

    pub fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
    }

    pub fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone())
    }

    /// Runs one CRI call to its end: its response, or the gRPC status it failed with.
    /// Panics when it does not answer within [`TIMEOUT`].
    pub fn call<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, Box<tonic::Status>> {
        self.try_call(call).unwrap_or_else(|| {
            let log = crate::read(&self.log);
            let tail: Vec<&str> = log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
            panic!("a CRI call did not answer within {TIMEOUT:?}\n--- containerd log (end) ---\n{}", tail.join("\n"))
        })
    }

    /// [`Cri::call`] that never panics (for `Drop`): None when it did not answer in time.
    pub fn try_call<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Option<Result<T, Box<tonic::Status>>> {
        let r = self.rt.block_on(async { tokio::time::timeout(TIMEOUT, call).await }).ok()?;
        Some(r.map(tonic::Response::into_inner).map_err(Box::new))
    }
}
