//! End to end, as root: layers of a busybox-static userland → a container rootfs (overlay,
//! and the copy fallback) → a bundle from an image config → `skiff-runtime run`. Checks what
//! the process sees (`id`, `pwd`, its environment) and its exit status. Containers, mounts and
//! directories are cleaned up on drop, also when a test fails.
//!
//! The runtime is `SKIFF_TEST_RUNTIME` (a path, or a name on PATH; hack/test sets it), else
//! the workspace's `target/debug/skiff-runtime` (honouring `CARGO_TARGET_DIR`): build it first
//! with `cargo build -p skiff-runtime`. Busybox is `SKIFF_TEST_BUSYBOX`, else /bin/busybox.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use skiff_images::bundle::{build_spec, write_bundle, BundleOverrides, ImageRunConfig};
use skiff_images::rootfs::{
    mount_rootfs_with, mounts_under, remove_container_dir, rootfs_path, unmount_rootfs, RootfsKind, RootfsOptions,
};

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh
user:x:1000:1000:user:/home/user:/bin/sh
other:x:1001:1001:other:/home/other:/bin/sh
";

const GROUP: &str = "root:x:0:
wheel:x:10:user
audio:x:29:user,other
user:x:1000:
other:x:1001:
";

/// The image config: a user by name, a working directory the image lacks, an entrypoint
/// and a Cmd that the test's cmd replaces.
const CONFIG: &str = r#"{
  "architecture": "amd64", "os": "linux",
  "config": {
    "User": "user",
    "Env": ["PATH=/bin", "FROM_IMAGE=yes"],
    "Entrypoint": ["/bin/sh", "-c"],
    "Cmd": ["echo image cmd"],
    "WorkingDir": "/home/user/work",
    "StopSignal": "SIGINT"
  },
  "rootfs": {"type": "layers", "diff_ids": []}
}"#;

fn skip(test: &str, reason: &str) {
    eprintln!("SKIPPED: bundle_run::{test}: {reason}");
    if let Some(log) = std::env::var_os("SKIFF_TEST_SKIP_LOG").filter(|v| !v.is_empty()) {
        use std::io::Write;
        if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = writeln!(f, "bundle_run::{test}: {reason}");
        }
    }
}

fn runtime_bin() -> Option<PathBuf> {
    if let Some(v) = std::env::var_os("SKIFF_TEST_RUNTIME").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(&v);
        if p.components().count() == 1 {
            let path = std::env::var_os("PATH").unwrap_or_default();
            return std::env::split_paths(&path).map(|d| d.join(&p)).find(|c| c.is_file());
        }
        return p.is_file().then_some(p);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut targets = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        let t = PathBuf::from(t);
        targets.push(if t.is_absolute() { t } else { manifest.join("..").join(t) });
    }
    targets.push(manifest.join("../target"));
    targets.iter().map(|t| t.join("debug/skiff-runtime")).find(|p| p.is_file())
}

fn busybox() -> PathBuf {
    std::env::var_os("SKIFF_TEST_BUSYBOX").filter(|v| !v.is_empty()).map(PathBuf::from).unwrap_or("/bin/busybox".into())
}

/// Root, a runtime and busybox, or a reason to skip.
fn prerequisites(test: &str) -> Option<PathBuf> {
    if !nix::unistd::geteuid().is_root() {
        skip(test, "needs root (runs containers)");
        return None;
    }
    if !busybox().is_file() {
        skip(test, &format!("{} not found: install busybox-static (hack/setup)", busybox().display()));
        return None;
    }
    let rt = runtime_bin();
    if rt.is_none() {
        skip(test, "no skiff-runtime binary: run `cargo build -p skiff-runtime` or set SKIFF_TEST_RUNTIME");
    }
    rt
}

/// A scratch directory (layers, container directory, runtime state). Drop: force-deletes the
/// container, unmounts and removes the container directory, then everything else.
struct Scratch {
    tmp: tempfile::TempDir,
    runtime: PathBuf,
    id: String,
}

impl Scratch {
    fn new(runtime: PathBuf, name: &str) -> Scratch {
        let tmp = tempfile::Builder::new().prefix("skiff-bundle-e2e").tempdir().expect("tempdir");
        Scratch { tmp, runtime, id: format!("skiff-images-{name}-{}", std::process::id()) }
    }

    fn path(&self) -> &Path {
        self.tmp.path()
    }

    fn container(&self) -> PathBuf {
        self.path().join("containers").join(&self.id)
    }

    fn runtime(&self) -> Command {
        let mut c = Command::new(&self.runtime);
        c.arg("--root").arg(self.path().join("state"));
        c
    }

    fn run(&self) -> Output {
        self.runtime().arg("run").arg("--bundle").arg(self.container()).arg(&self.id).output().expect("runtime runs")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = self.runtime().args(["delete", "--force", &self.id]).output();
        let c = self.container();
        let _ = unmount_rootfs(&c);
        let _ = remove_container_dir(&c);
        let left = mounts_under(self.path()).unwrap_or_default();
        for m in &left {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        if !std::thread::panicking() {
            assert!(left.is_empty(), "left mounted: {left:?}");
        }
    }
}

/// Layer 0: busybox, its applet links, /etc/passwd and /etc/group, the usual directories.
/// Layer 1: /etc/motd, and a whiteout deleting the `vi` applet link.
fn layers(s: &Scratch) -> Vec<PathBuf> {
    let l0 = s.path().join("layers/l0");
    for (d, m) in [
        ("", 0o755),
        ("bin", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("root", 0o700),
        ("home", 0o755),
        ("home/user", 0o755),
    ] {
        let p = l0.join(d);
        fs::create_dir_all(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(m)).unwrap();
    }
    std::os::unix::fs::chown(l0.join("home/user"), Some(1000), Some(1000)).unwrap();
    fs::copy(busybox(), l0.join("bin/busybox")).unwrap();
    fs::set_permissions(l0.join("bin/busybox"), fs::Permissions::from_mode(0o755)).unwrap();
    let list = Command::new(busybox()).arg("--list").output().expect("busybox --list");
    for name in String::from_utf8_lossy(&list.stdout).lines().map(str::trim) {
        if !name.is_empty() && name != "busybox" && !name.contains('/') {
            symlink("busybox", l0.join("bin").join(name)).unwrap();
        }
    }
    fs::write(l0.join("etc/passwd"), PASSWD).unwrap();
    fs::write(l0.join("etc/group"), GROUP).unwrap();

    let l1 = s.path().join("layers/l1");
    fs::create_dir_all(l1.join("etc")).unwrap();
    fs::create_dir_all(l1.join("bin")).unwrap();
    fs::write(l1.join("etc/motd"), "from layer 1\n").unwrap();
    nix::sys::stat::mknod(
        &l1.join("bin/vi"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        nix::sys::stat::makedev(0, 0),
    )
    .unwrap();
    vec![l0, l1]
}

/// Builds the rootfs the given way, the bundle, runs it, and checks what the process saw.
fn run_image(test: &str, copy: bool) {
    let Some(rt) = prerequisites(test) else { return };
    let s = Scratch::new(rt, if copy { "copy" } else { "overlay" });
    let layers = layers(&s);
    let c = s.container();
    let m = mount_rootfs_with(&layers, &c, &RootfsOptions { copy, ..Default::default() }).expect("rootfs");
    assert_eq!(m.kind, if copy { RootfsKind::Copy } else { RootfsKind::Overlay });
    let rootfs = rootfs_path(&c);

    let image = ImageRunConfig::parse(CONFIG.as_bytes(), "test/busybox:e2e").expect("config");
    let script = "id; pwd; echo \"env=$FROM_IMAGE,$EXTRA,$HOME\"; cat /etc/motd; \
                  test -e /bin/vi || echo vi-gone; echo hi > /tmp/written; exit 3";
    let o = BundleOverrides {
        cmd: Some(vec![script.into()]),
        env: vec!["EXTRA=x".into()],
        hostname: Some("e2e".into()),
        ..Default::default()
    };
    let (spec, info) = build_spec(&image, &rootfs, &o).expect("spec");
    assert_eq!(info.stop_signal, "SIGINT");
    write_bundle(&c, &spec).expect("bundle");

    let out = s.run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "exit status; stdout: {stdout}; stderr: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "stdout: {stdout}; stderr: {stderr}");
    assert!(lines[0].starts_with("uid=1000(user) gid=1000(user) groups="), "id: {}", lines[0]);
    assert!(lines[0].contains("10(wheel)") && lines[0].contains("29(audio)"), "id: {}", lines[0]);
    assert_eq!(lines[1], "/home/user/work", "pwd");
    assert_eq!(lines[2], "env=yes,x,/home/user");
    assert_eq!(lines[3], "from layer 1");
    assert_eq!(lines[4], "vi-gone", "the whiteout of layer 1 hides /bin/vi");

    // The container's write: in upper/ with overlay, in the rootfs with the copy.
    let written = if copy { rootfs.join("tmp/written") } else { c.join("upper/tmp/written") };
    assert_eq!(fs::read_to_string(&written).unwrap_or_default(), "hi\n", "{}", written.display());
    // The working directory the image lacked was created (root-owned, like docker).
    assert!(rootfs.join("home/user/work").is_dir());
    assert!(!layers[0].join("home/user/work").exists(), "layers untouched");

    // A read-only rootfs: the same write fails.
    let o = BundleOverrides {
        cmd: Some(vec!["echo x > /tmp/ro 2>/dev/null && exit 0; exit 7".into()]),
        readonly_rootfs: true,
        ..Default::default()
    };
    let (spec, _) = build_spec(&image, &rootfs, &o).expect("spec");
    write_bundle(&c, &spec).expect("bundle");
    let out = s.run();
    assert_eq!(out.status.code(), Some(7), "stderr: {}", String::from_utf8_lossy(&out.stderr));

    let _ = s.runtime().args(["delete", "--force", &s.id]).output();
    unmount_rootfs(&c).expect("unmount");
    remove_container_dir(&c).expect("remove");
    assert!(mounts_under(s.path()).unwrap().is_empty());
}

#[test]
fn runs_on_an_overlay_rootfs() {
    run_image("runs_on_an_overlay_rootfs", false);
}

#[test]
fn runs_on_a_copied_rootfs() {
    run_image("runs_on_a_copied_rootfs", true);
}
