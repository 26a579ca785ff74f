//! `skiff pull / images / rmi / prune` against a real registry (Debian's docker-registry on
//! 127.0.0.1, from skiff-tests' registry fixture) and its fault-injecting proxy. Run as root.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_tests::registry::{
    Action, Fault, FaultProxy, Match, Registry, BUSYBOX_DOCKER, BUSYBOX_OCI, LAYERS, MULTIARCH, MULTIARCH_DOCKER,
};
use skiff_tests::Scratch;

const TIMEOUT: Duration = Duration::from_secs(120);

/// A `skiff` with its own store and credentials file.
struct Skiff {
    dir: Scratch,
    root: Option<PathBuf>,
    /// Another skiff to run instead of this build's: the command and its first arguments.
    exe: Vec<String>,
}

impl Skiff {
    fn new() -> Skiff {
        skiff_tests::require_root();
        Skiff { dir: Scratch::new("skiff-pull"), root: None, exe: Vec::new() }
    }

    fn root(&self) -> PathBuf {
        self.root.clone().unwrap_or_else(|| self.dir.join("root"))
    }

    fn auth_file(&self) -> PathBuf {
        self.dir.join("auth.json")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = match self.exe.split_first() {
            Some((exe, first)) => {
                let mut c = Command::new(exe);
                c.args(first);
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_skiff")),
        };
        c.arg("--root")
            .arg(self.root())
            .args(args)
            .env("REGISTRY_AUTH_FILE", self.auth_file())
            .env_remove("SKIFF_ROOT")
            .env_remove("SKIFF_INSECURE_REGISTRIES")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        let child = self.command(args).spawn().expect("spawn skiff");
        skiff_tests::skiff_output_within(child, TIMEOUT)
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "skiff {args:?} failed: {}\n{}", o.status, String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs a command that must fail; returns its stderr.
    #[track_caller]
    fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(1), "skiff {args:?} should fail with 1: {}\n{err}", o.status);
        assert!(!err.contains("panicked"), "skiff panicked: {err}");
        err
    }

    fn images(&self) -> Vec<Value> {
        let out = self.ok(&["images", "--json"]);
        match serde_json::from_str(&out) {
            Ok(Value::Array(a)) => a,
            other => panic!("images --json is not an array: {other:?}\n{out}"),
        }
    }

    fn blobs(&self) -> Vec<String> {
        names(&self.root().join("blobs/sha256"))
    }

    fn layers(&self) -> Vec<String> {
        names(&self.root().join("layers/sha256"))
    }

    fn layer(&self, diff_id: &str) -> PathBuf {
        self.root().join("layers/sha256").join(diff_id.trim_start_matches("sha256:"))
    }

    /// The unpacked directories of an image's layers, bottom first.
    fn image_layers(&self, reference: &str) -> Vec<PathBuf> {
        let img = self.images().into_iter().find(|i| i["reference"] == reference).expect("image recorded");
        img["layers"].as_array().unwrap().iter().map(|l| self.layer(l["diff_id"].as_str().unwrap())).collect()
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// The digest of a manifest as the registry has it.
fn manifest_digest(reg: &Registry, image: &str) -> String {
    let (repo, tag) = image.split_once(':').unwrap();
    reg.manifest(repo, tag).2
}

fn blob_digests_of(reg: &Registry, image: &str) -> (String, Vec<String>) {
    let (repo, tag) = image.split_once(':').unwrap();
    let (body, _, _) = reg.manifest(repo, tag);
    let m: Value = serde_json::from_slice(&body).unwrap();
    let config = m["config"]["digest"].as_str().unwrap().to_string();
    let layers = m["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()).collect();
    (config, layers)
}

#[test]
fn pull_oci_then_docker_shares_the_layer() {
    let reg = Registry::shared();
    let s = Skiff::new();
    let out = s.ok(&["pull", &reg.image(BUSYBOX_OCI)]);
    let digest = manifest_digest(reg, BUSYBOX_OCI);
    assert_eq!(out.trim(), digest, "pull prints the manifest digest");

    let imgs = s.images();
    assert_eq!(imgs.len(), 1);
    let img = &imgs[0];
    assert_eq!(img["reference"], format!("{}:oci", reg.image("skiff-test/busybox")));
    assert_eq!(img["digest"], digest);
    assert_eq!(img["platform"], "linux/amd64");
    assert!(img["size"].as_u64().unwrap() > 100_000, "{img}");
    assert_eq!(img["created"], "2000-01-01T00:00:00Z");
    let layer = &s.image_layers(img["reference"].as_str().unwrap())[0];
    assert!(layer.join("bin/busybox").is_file(), "busybox unpacked in {}", layer.display());
    assert_eq!(fs::read_to_string(layer.join("srv/hello.txt")).unwrap(), "hello from /srv\n");
    // Nothing is left in tmp but the per-blob lock files.
    let leftovers: Vec<String> = names(&s.root().join("tmp")).into_iter().filter(|n| !n.ends_with(".lock")).collect();
    assert!(leftovers.is_empty(), "tmp leftovers: {leftovers:?}");

    // The Docker schema2 flavour has another manifest and config, and the same layer.
    let o = s.run(&["pull", &reg.image(BUSYBOX_DOCKER)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), manifest_digest(reg, BUSYBOX_DOCKER));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("already present"), "the layer is shared: {err}");
    assert_eq!(s.images().len(), 2);
    assert_eq!(s.layers().len(), 1);
    let docker = s.images().into_iter().find(|i| i["reference"].as_str().unwrap().ends_with(":docker")).unwrap();
    assert_eq!(docker["media_type"], "application/vnd.docker.distribution.manifest.v2+json");

    // Table output.
    let table = s.ok(&["images"]);
    assert!(table.starts_with("REFERENCE"), "{table}");
    assert!(table.contains(&reg.image(BUSYBOX_OCI)) && table.contains(&digest[..19]), "{table}");

    // Pulling again downloads nothing.
    let o = s.run(&["pull", &reg.image(BUSYBOX_OCI)]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("0 B downloaded"), "{}", String::from_utf8_lossy(&o.stderr));

    // By digest.
    let by_digest = format!("{}@{digest}", reg.image("skiff-test/busybox"));
    assert_eq!(s.ok(&["pull", &by_digest]).trim(), digest);
    assert!(s.images().iter().any(|i| i["reference"] == by_digest));
}

#[test]
fn pull_layers_with_whiteouts() {
    let reg = Registry::shared();
    let s = Skiff::new();
    s.ok(&["pull", &reg.image(LAYERS)]);
    let layers = s.image_layers(&reg.image(LAYERS));
    assert_eq!(layers.len(), 5);
    assert!(layers[0].join("bin/busybox").is_file());
    assert!(layers[1].join("fixtures/hardlink.txt").is_file());
    assert_eq!(fs::read_link(layers[1].join("fixtures/link-rel")).unwrap(), Path::new("keep.txt"));
    // Overlay-style whiteouts: a 0/0 character device for a removed entry...
    let wh = fs::symlink_metadata(layers[2].join("fixtures/delete-me.txt")).unwrap();
    assert!(wh.file_type().is_char_device(), "whiteout of delete-me.txt is a char device");
    assert!(fs::symlink_metadata(layers[2].join("fixtures/gone-dir")).unwrap().file_type().is_char_device());
    // ... and trusted.overlay.opaque=y on an opaque directory.
    let opaque = layers[3].join("fixtures/opaque");
    assert!(opaque.join("new.txt").is_file());
    let mut buf = [0u8; 8];
    let path = std::ffi::CString::new(opaque.as_os_str().as_encoded_bytes()).unwrap();
    let name = c"trusted.overlay.opaque";
    // SAFETY: valid C strings and buffer.
    let n = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(n, 1, "opaque xattr on {}", opaque.display());
    assert_eq!(buf[0], b'y');
    assert_eq!(fs::read_to_string(layers[4].join("fixtures/delete-me.txt")).unwrap(), "resurrected\n");
}

/// The armv7 static build (hack/test-cross builds it and names it in SKIFF_TEST_ARMV7_SKIFF),
/// run under qemu-arm-static with no --platform, picks the arm/v7 image of a multi-arch index
/// that also has arm64 and amd64: the host platform of a 32-bit arm binary (Platform::host,
/// with arm_variant's /proc/cpuinfo or uname fallback) as a Pi 2/3 on a 32-bit OS has it.
#[test]
fn armv7_build_under_qemu_picks_arm_v7() {
    let Some(bin) = std::env::var_os("SKIFF_TEST_ARMV7_SKIFF").filter(|v| !v.is_empty()) else {
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
        assert!(!ci, "SKIFF_TEST_ARMV7_SKIFF is not set: hack/test sets it (hack/test-cross builds it)");
        skiff_tests::skip("SKIFF_TEST_ARMV7_SKIFF is not set (hack/test-cross builds the armv7 skiff and sets it)");
        return;
    };
    let reg = Registry::shared();
    let mut s = Skiff::new();
    s.exe = vec!["qemu-arm-static".to_string(), bin.to_string_lossy().into_owned()];
    let out = s.ok(&["pull", &reg.image(MULTIARCH)]);
    let img = &s.images()[0];
    assert_eq!(img["platform"], "linux/arm/v7", "{img}");
    assert_eq!(img["index_digest"], manifest_digest(reg, MULTIARCH));
    assert_ne!(out.trim(), manifest_digest(reg, BUSYBOX_OCI), "the amd64 manifest was pulled");
    let layers = s.image_layers(&reg.image(MULTIARCH));
    assert_eq!(fs::read_to_string(layers[0].join("arch")).unwrap(), "arm/v7\n");
}

#[test]
fn multiarch_picks_the_platform() {
    let reg = Registry::shared();
    let s = Skiff::new();
    // Default: this machine (amd64), which is the busybox image's manifest.
    let out = s.ok(&["pull", &reg.image(MULTIARCH)]);
    assert_eq!(out.trim(), manifest_digest(reg, BUSYBOX_OCI));
    let img = &s.images()[0];
    assert_eq!(img["platform"], "linux/amd64");
    assert_eq!(img["index_digest"], manifest_digest(reg, MULTIARCH));

    for (image, platform, marker) in [
        (MULTIARCH, "linux/arm/v7", "arm/v7\n"),
        (MULTIARCH, "linux/arm64", "arm64\n"),
        (MULTIARCH_DOCKER, "linux/arm/v7", "arm/v7\n"),
        // An armv8 (64-bit) host takes arm64 first.
        (MULTIARCH, "linux/arm64/v8", "arm64\n"),
    ] {
        let s = Skiff::new();
        let o = s.run(&["pull", "--platform", platform, &reg.image(image)]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{platform}: {err}");
        let layers = s.image_layers(&reg.image(image));
        assert_eq!(fs::read_to_string(layers[0].join("arch")).unwrap(), marker, "{image} {platform}");
        let want = if platform == "linux/arm64/v8" { "linux/arm64" } else { platform };
        assert_eq!(s.images()[0]["platform"], want);
    }

    // A v6 host cannot run the v7 image, and a platform that is not there is a clear error.
    let err = s.fails(&["pull", "--platform", "linux/arm/v6", &reg.image(MULTIARCH)]);
    assert!(err.contains("has no image for linux/arm/v6") && err.contains("linux/arm64"), "{err}");
    let err = s.fails(&["pull", "--platform", "linux//", &reg.image(MULTIARCH)]);
    assert!(err.contains("invalid platform"), "{err}");
}

#[test]
fn basic_auth_with_an_auth_file() {
    let reg = Registry::with_basic_auth("skiff", "s3cret pass");
    let s = Skiff::new();
    let image = reg.image(BUSYBOX_OCI);
    let err = s.fails(&["pull", &image]);
    assert!(err.contains("requires a user name and password") && err.contains("auth.json"), "{err}");

    let entry = |user: &str, pass: &str| {
        use std::io::Write;
        let mut enc = Vec::new();
        // base64 by hand (no dependency for one test).
        let raw = format!("{user}:{pass}");
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        for c in raw.as_bytes().chunks(3) {
            let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
            let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
            for i in 0..4 {
                if i <= c.len() {
                    enc.write_all(&[T[(n >> (18 - 6 * i) & 63) as usize]]).unwrap();
                } else {
                    enc.write_all(b"=").unwrap();
                }
            }
        }
        format!(r#"{{"auths": {{"{}": {{"auth": "{}"}}}}}}"#, reg.host(), String::from_utf8(enc).unwrap())
    };
    fs::write(s.auth_file(), entry("skiff", "wrong")).unwrap();
    let err = s.fails(&["pull", &image]);
    assert!(err.contains("refused"), "{err}");
    assert!(s.images().is_empty());

    fs::write(s.auth_file(), entry("skiff", "s3cret pass")).unwrap();
    let out = s.ok(&["pull", &image]);
    assert!(out.trim().starts_with("sha256:"), "{out}");
    assert_eq!(s.images().len(), 1);
}

#[test]
fn resumes_cut_downloads_with_range() {
    let reg = Registry::shared();
    let proxy = FaultProxy::to(reg);
    // Every blob response of the first six is cut after 100 kB.
    proxy.cut_blobs(100_000, 6);
    let s = Skiff::new();
    let o = s.run(&["pull", "--jobs", "1", &proxy.image(LAYERS)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "pull through the cutting proxy: {err}");
    assert!(err.contains("retrying"), "{err}");
    let gets = proxy.blob_gets();
    let ranged: Vec<_> =
        gets.iter().filter(|g| g.range.as_deref().is_some_and(|r| r.starts_with("bytes=100000-"))).collect();
    assert!(!ranged.is_empty(), "a ranged request resumed the cut download: {gets:#?}");
    let layers = s.image_layers(&proxy.image(LAYERS));
    assert!(layers[0].join("bin/busybox").is_file());
}

#[test]
fn sigkill_mid_pull_then_pull_again() {
    let reg = Registry::shared();
    let proxy = FaultProxy::to(reg);
    let (config, layers) = blob_digests_of(reg, LAYERS);
    let big = layers[0].clone(); // the busybox layer, ~1 MB
    proxy.inject(Fault::new(Match::BlobGet(Some(big.clone())), Action::StallAfter(300_000, Duration::from_secs(60))));
    let s = Skiff::new();
    let image = proxy.image(LAYERS);
    let mut child = s.command(&["pull", &image]).spawn().unwrap();
    let partial = s.root().join("tmp").join(format!("{}.partial", big.trim_start_matches("sha256:")));
    let start = Instant::now();
    // Wait until the stalled blob has its 300 kB on disk and the small layers are done.
    loop {
        let len = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        let done = layers[1..].iter().all(|l| s.blobs().contains(&l.trim_start_matches("sha256:").to_string()));
        if len >= 300_000 && done {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the pull never reached the stall (partial {len} bytes)");
        if let Ok(Some(st)) = child.try_wait() {
            panic!("the pull ended early: {st}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(s.images().is_empty(), "no image record after the kill");
    assert!(!s.blobs().contains(&big.trim_start_matches("sha256:").to_string()), "the cut blob is not in the store");

    proxy.clear_faults();
    proxy.clear_requests();
    let o = s.run(&["pull", &image]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "pull after SIGKILL: {err}");
    assert!(err.contains("resuming at"), "{err}");
    let gets = proxy.blob_gets();
    let paths: Vec<&str> = gets.iter().map(|g| g.path.as_str()).collect();
    // Finished blobs are not downloaded again; the cut one resumes with Range.
    for done in layers[1..].iter().chain(std::iter::once(&config)) {
        assert!(!paths.iter().any(|p| p.ends_with(done.as_str())), "{done} downloaded again: {paths:?}");
    }
    let resumed: Vec<_> = gets.iter().filter(|g| g.path.ends_with(&big)).collect();
    assert_eq!(resumed.len(), 1, "{gets:#?}");
    let range = resumed[0].range.clone().unwrap_or_default();
    let from: u64 = range.trim_start_matches("bytes=").trim_end_matches('-').parse().unwrap_or(0);
    assert!(from >= 300_000, "resumed from the partial: {range:?}");
    assert_eq!(s.images().len(), 1);
    assert!(s.image_layers(&image)[0].join("bin/busybox").is_file());
}

#[test]
fn corrupt_blob_is_rejected_and_nothing_recorded() {
    let reg = Registry::shared();
    let proxy = FaultProxy::to(reg);
    let (_, layers) = blob_digests_of(reg, BUSYBOX_OCI);
    proxy.inject(Fault::new(Match::BlobGet(Some(layers[0].clone())), Action::CorruptAt(1000)));
    let s = Skiff::new();
    let err = s.fails(&["pull", &proxy.image(BUSYBOX_OCI)]);
    assert!(err.contains("digest mismatch") && err.contains(&layers[0]), "{err}");
    assert!(s.images().is_empty());
    assert!(s.layers().is_empty(), "no layer stored: {:?}", s.layers());
    assert!(!s.blobs().contains(&layers[0].trim_start_matches("sha256:").to_string()));
    let tmp: Vec<String> = names(&s.root().join("tmp")).into_iter().filter(|n| !n.ends_with(".lock")).collect();
    assert!(tmp.is_empty(), "nothing left in tmp: {tmp:?}");
    // Served correctly, the same pull works.
    s.ok(&["pull", &proxy.image(BUSYBOX_OCI)]);
}

#[test]
fn bad_digests_and_references_are_refused() {
    let s = Skiff::new();
    for (arg, want) in [
        ("127.0.0.1:1/x@sha256:../../../etc/passwd", "invalid digest"),
        ("127.0.0.1:1/x@sha256:ABCDEF", "invalid digest"),
        ("127.0.0.1:1/x@md5:d41d8cd98f00b204e9800998ecf8427e", "invalid digest"),
        ("Not/A/Valid:Ref", "invalid image reference"),
    ] {
        let err = s.fails(&["pull", arg]);
        assert!(err.contains(want) && err.lines().count() == 1, "{arg}: {err}");
    }
    // Nothing listening: a clear network error, after the retries.
    let port = skiff_tests::registry::free_port();
    let err = s.fails(&["pull", &format!("127.0.0.1:{port}/x:1")]);
    assert!(err.contains("fetching the manifest") && err.contains(&format!("127.0.0.1:{port}")), "{err}");
    // An unknown tag.
    let err = s.fails(&["pull", &Registry::shared().image("skiff-test/busybox:nope")]);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn rmi_and_prune_free_space() {
    let reg = Registry::shared();
    let s = Skiff::new();
    s.ok(&["pull", &reg.image(BUSYBOX_OCI)]);
    s.ok(&["pull", &reg.image(LAYERS)]);
    assert_eq!(s.layers().len(), 5);
    // Leftovers of an interrupted pull.
    fs::write(s.root().join("tmp/0123.partial"), vec![0u8; 1000]).unwrap();

    let out = s.ok(&["rmi", &reg.image(LAYERS)]);
    assert!(out.contains("removed"), "{out}");
    let err = s.fails(&["rmi", &reg.image(LAYERS)]);
    assert!(err.contains("no such image"), "{err}");

    let out = s.ok(&["prune"]);
    // layers' manifest + config + 4 layer blobs; 4 unpacked layers; the partial.
    assert!(out.starts_with("pruned 6 blobs, 4 layers, 1 temporary item:"), "{out}");
    assert_eq!(s.layers().len(), 1, "busybox's layer stays");
    s.ok(&["pull", &reg.image(BUSYBOX_OCI)]); // still complete

    // By digest prefix.
    let digest = manifest_digest(reg, BUSYBOX_OCI);
    s.ok(&["rmi", &digest["sha256:".len()..][..16]]);
    let out = s.ok(&["prune"]);
    assert!(out.starts_with("pruned 3 blobs, 1 layer, 0 temporary items:") && !out.contains(": 0 B freed"), "{out}");
    assert!(s.blobs().is_empty() && s.layers().is_empty());
    assert!(s.images().is_empty());
    let out = s.ok(&["prune"]);
    assert!(out.contains("0 B freed"), "{out}");
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs(Scratch);
impl Tmpfs {
    fn new(size: &str) -> Tmpfs {
        let d = Scratch::new("tmpfs");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(d.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        Tmpfs(d)
    }
}
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

#[test]
fn disk_full_is_a_clear_error() {
    let reg = Registry::shared();
    let fs_ = Tmpfs::new("600k");
    let root = fs_.0.join("store");
    let s = Skiff { root: Some(root.clone()), ..Skiff::new() };
    let o = s.run(&["pull", &reg.image(BUSYBOX_OCI)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no space left on device while") && err.contains(&format!("free space under {}", root.display())),
        "{err}"
    );
    assert!(names(&root.join("images")).is_empty());
    assert!(names(&root.join("layers/sha256")).is_empty());
}
