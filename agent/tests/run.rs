//! `skiff run`, `skiff rm` and `skiff load`: an image from a real registry (pulled on
//! demand) or an archive, run in the foreground through the OCI runtime under test
//! (`SKIFF_TEST_RUNTIME`, default the workspace's skiff-runtime). Run as root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use skiff_tests::registry::{Registry, BUSYBOX_DOCKER, BUSYBOX_OCI};
use skiff_tests::Scratch;

struct Skiff {
    dir: Scratch,
}

impl Skiff {
    fn new() -> Skiff {
        skiff_tests::require_root();
        Skiff { dir: Scratch::new("skiff-run") }
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_skiff"))
            .arg("--root")
            .arg(self.root())
            .args(args)
            .env("SKIFF_RUNTIME", skiff_tests::runtime_bin())
            .env_remove("SKIFF_ROOT")
            .env_remove("REGISTRY_AUTH_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("run skiff")
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "skiff {args:?}: {}\n{}", o.status, String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn containers(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root().join("containers"))
            .map(|rd| rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Skiff {
    fn drop(&mut self) {
        // Anything a failed test left mounted under the store (rootfs overlays).
        skiff_tests::unmount_under(&self.root());
    }
}

fn mounted_under(p: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().contains(&*p.to_string_lossy())
}

#[test]
fn run_pulls_on_demand_and_uses_the_image_config() {
    let reg = Registry::shared();
    let s = Skiff::new();
    let image = reg.image(BUSYBOX_OCI);
    let o = s.run(&["run", "--rm", &image]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}\n{}", out, String::from_utf8_lossy(&o.stderr));
    // Entrypoint + Cmd, User app (1000, with its supplementary group), WorkingDir, Env.
    assert!(out.contains("entrypoint: uid=1000 gid=1000 groups=1000 50 cwd=/srv FOO=bar"), "{out}");
    assert!(out.contains("hello from skiff-test"), "{out}");
    assert!(s.containers().is_empty(), "--rm removes the container: {:?}", s.containers());
    assert!(!mounted_under(&s.root()), "no rootfs mount is left");
    // The image is now in the store: a second run does not pull.
    let o = s.run(&["run", "--rm", &image, "true"]);
    assert!(o.status.success());
    assert!(!String::from_utf8_lossy(&o.stderr).contains("pulling"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn run_exit_status_overrides_and_limits() {
    let reg = Registry::shared();
    let s = Skiff::new();
    let image = reg.image(BUSYBOX_DOCKER);
    s.ok(&["pull", "-q", &image]);
    let host_dir = s.dir.join("shared");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("from-host"), "hi").unwrap();
    let vol = format!("{}:/mnt/host:ro", host_dir.display());
    let o = s.run(&[
        "run",
        "--rm",
        "-e",
        "X=42",
        "-v",
        &vol,
        "-v",
        "named:/named",
        "--memory",
        "64m",
        "--entrypoint",
        "sh",
        "-u",
        "0",
        &image,
        "-c",
        "echo X=$X; cat /mnt/host/from-host; echo; touch /mnt/host/x 2>/dev/null || echo ro-ok; \
         echo kept > /named/file; cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max 2>/dev/null; \
         id -u; exit 7",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(7), "the container's exit status: {out}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("X=42"), "{out}");
    assert!(out.contains("hi"), "bind mount: {out}");
    assert!(out.contains("ro-ok"), "read-only bind mount: {out}");
    assert!(out.contains("67108864"), "memory limit: {out}");
    assert!(out.lines().any(|l| l == "0"), "--user 0: {out}");
    assert_eq!(std::fs::read_to_string(s.root().join("volumes/named/file")).unwrap(), "kept\n", "named volume");
}

#[test]
fn a_kept_container_blocks_its_name_until_rm() {
    let reg = Registry::shared();
    let s = Skiff::new();
    let image = reg.image(BUSYBOX_OCI);
    s.ok(&["run", "--name", "keepme", &image, "sh", "-c", "echo data > /tmp/kept"]);
    assert_eq!(s.containers(), vec!["keepme".to_string()]);
    assert!(!mounted_under(&s.root().join("containers/keepme/rootfs")), "stopped: rootfs unmounted");
    let o = s.run(&["run", "--name", "keepme", &image, "true"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("skiff rm keepme"), "{}", String::from_utf8_lossy(&o.stderr));
    // The container's layers survive rmi + prune while it exists.
    s.ok(&["rmi", &image]);
    s.ok(&["prune"]);
    assert!(std::fs::read_dir(s.root().join("layers/sha256")).map(|d| d.count()).unwrap_or(0) > 0);
    s.ok(&["rm", "keepme"]);
    assert!(s.containers().is_empty());
    s.ok(&["prune"]);
    assert_eq!(std::fs::read_dir(s.root().join("layers/sha256")).map(|d| d.count()).unwrap_or(0), 0);
}

#[test]
fn bad_input_is_a_clear_error() {
    let s = Skiff::new();
    for (args, want) in [
        // Checked before any pull: the image name would never be looked up.
        (vec!["run", "--rm", "--memory", "lots", "127.0.0.1:9/x"], "size"),
        (vec!["run", "--rm", "--name", "../evil", "127.0.0.1:9/x"], "name"),
        (vec!["run", "--rm", "-v", "rel/path:/x", "127.0.0.1:9/x"], "volume name"),
        (vec!["rm", "nothere"], "no such container"),
        (vec!["load", "/nonexistent.tar"], "nonexistent"),
    ] {
        let o = s.run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.to_lowercase().contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn load_an_oci_layout_then_run_offline() {
    let s = Skiff::new();
    let layout = skiff_tests::registry::test_images();
    let out = s.ok(&["load", layout.to_str().unwrap()]);
    assert!(out.contains("busybox-oci"), "{out}");
    let o = s.run(&["run", "--rm", "busybox-oci", "echo", "offline"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("offline"));
}
