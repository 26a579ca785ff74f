//! An image's VOLUMEs, end to end (issue 11): a hostile image whose VOLUME path climbs out of
//! the rootfs, through a symlink of the image (`x -> /`, `VOLUME /x/<host dir>`) or with `..`
//! (`VOLUME /../../<host dir>`), must make `skiff run` and an agent service fail with one line
//! naming the image and the volume (control characters escaped), and never read the host
//! directory it aims at: a root-only canary whose file and directory keep their access times
//! (set in the past, so any read on this relatime filesystem would move them) and whose bytes
//! appear nowhere in the store. A benign image from the same builder seeds its volume with
//! links as links, owners and modes kept. The images are OCI archives written here and
//! brought in with `skiff load`. Run as root.

use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{json, Value};
use skiff_tests::agent::{replicas, Agent};
use skiff_tests::{blob_digest, oci_arch, Scratch};

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");
const TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------
// The canary: a root-only host directory the hostile VOLUMEs aim at
// ---------------------------------------------------------------------------------------

struct Canary {
    dir: PathBuf,
    secret: PathBuf,
    marker: String,
    /// Whether this filesystem moves an old atime on a read (relatime, strictatime).
    atime_works: bool,
}

/// Sets the access time of `p` to 1 s after the epoch (and its mtime to now), without reading it.
fn age_atime(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let times = [libc::timespec { tv_sec: 1, tv_nsec: 0 }, libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW }];
    // SAFETY: a NUL-terminated path and an array of two timespecs, as utimensat(2) wants.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    assert_eq!(r, 0, "utimensat {}: {}", p.display(), std::io::Error::last_os_error());
}

fn atime(p: &Path) -> i64 {
    fs::symlink_metadata(p).unwrap().atime()
}

impl Canary {
    fn new(scratch: &Scratch) -> Canary {
        static N: AtomicUsize = AtomicUsize::new(0);
        let host = scratch.join("host");
        fs::create_dir_all(&host).unwrap();
        // Does a read move an old atime here? (A probe of our own, never the canary.)
        let probe = host.join("probe");
        fs::write(&probe, "probe").unwrap();
        age_atime(&probe);
        let _ = fs::read(&probe).unwrap();
        let atime_works = atime(&probe) != 1;

        let dir = host.join("canary");
        let marker = format!("SKIFF-CANARY-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        fs::create_dir(&dir).unwrap();
        let secret = dir.join("secret");
        fs::write(&secret, format!("{marker}\n")).unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        age_atime(&secret);
        age_atime(&dir);
        Canary { dir, secret, marker, atime_works }
    }

    /// The canary was never read (nor its directory listed), and its bytes are nowhere under
    /// `store`.
    #[track_caller]
    fn assert_untouched(&self, store: &Path) {
        if self.atime_works {
            assert_eq!(atime(&self.secret), 1, "THE HOST'S CANARY FILE WAS READ: {}", self.secret.display());
            assert_eq!(atime(&self.dir), 1, "THE HOST'S CANARY DIRECTORY WAS LISTED: {}", self.dir.display());
        } else {
            skiff_tests::skip_part("this filesystem does not move atimes on reads: only the store is searched");
        }
        let found = files_holding(store, self.marker.as_bytes());
        assert!(found.is_empty(), "THE CANARY IS IN THE STORE: {found:?}");
    }
}

/// Regular files under `dir` (symlinks never followed, other filesystems' mounts included)
/// that hold `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = fs::symlink_metadata(&p) else { continue };
        if m.is_dir() {
            stack.extend(fs::read_dir(&p).into_iter().flatten().flatten().map(|e| e.path()));
        } else if m.is_file() {
            let mut data = Vec::new();
            if fs::File::open(&p).and_then(|f| f.take(64 << 20).read_to_end(&mut data)).is_ok()
                && data.windows(needle.len()).any(|w| w == needle)
            {
                out.push(p);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Images: a rootfs on disk, tarred into one layer, written as an OCI archive
// ---------------------------------------------------------------------------------------

/// Writes an OCI archive (a tar of an OCI image layout) of a one-layer image named
/// `reference`: busybox as /bin/busybox (with /bin/sh and /bin/true), what `populate` adds
/// to the rootfs, `Cmd ["/bin/true"]` and these `Volumes`. Returns the archive's path.
fn archive(work: &Scratch, reference: &str, volumes: &[&str], populate: impl FnOnce(&Path)) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let rootfs = work.join(format!("image-{n}"));
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::copy(skiff_tests::busybox(), rootfs.join("bin/busybox")).unwrap();
    for l in ["sh", "true", "sleep"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(l)).unwrap();
    }
    populate(&rootfs);

    let mut layer = tar::Builder::new(Vec::new());
    layer.follow_symlinks(false);
    layer.append_dir_all(".", &rootfs).unwrap();
    let layer = layer.into_inner().unwrap();
    let vols: serde_json::Map<String, Value> = volumes.iter().map(|v| (v.to_string(), json!({}))).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {"Cmd": ["/bin/true"], "Volumes": vols},
        "rootfs": {"type": "layers", "diff_ids": [blob_digest(&layer)]},
    }))
    .unwrap();
    let desc = |media: &str, data: &[u8]| json!({"mediaType": media, "digest": blob_digest(data), "size": data.len()});
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": skiff_tests::registry::OCI_MANIFEST,
        "config": desc("application/vnd.oci.image.config.v1+json", &config),
        "layers": [desc("application/vnd.oci.image.layer.v1.tar", &layer)],
    }))
    .unwrap();
    let mut m = desc(skiff_tests::registry::OCI_MANIFEST, &manifest);
    m["annotations"] = json!({"io.containerd.image.name": reference});
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [m]})).unwrap();

    let mut out = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        out.append_data(&mut h, name, data).unwrap();
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json", &index);
    for blob in [&layer, &config, &manifest] {
        add(&format!("blobs/sha256/{}", &blob_digest(blob)[7..]), blob);
    }
    let path = work.join(format!("image-{n}.tar"));
    fs::write(&path, out.into_inner().unwrap()).unwrap();
    path
}

/// `/../../...<dir>`: enough `..` to climb from any rootfs to `/`, then `dir`.
fn climbing(dir: &Path) -> String {
    format!("{}{}", "/..".repeat(40), dir.display())
}

/// The hostile images, each aimed at `canary`: (reference, the VOLUME as declared, archive).
fn hostile_images(work: &Scratch, canary: &Canary) -> Vec<(String, String, PathBuf)> {
    // The link's name holds an escape sequence: the error must show it escaped.
    let link = "x\u{1b}[1m";
    let through_link = format!("/{link}{}", canary.dir.display());
    let a = archive(work, "skiff.test/evil/symlink:1", &[&through_link], |r| {
        std::os::unix::fs::symlink("/", r.join(link)).unwrap();
    });
    let dotdot = climbing(&canary.dir);
    let b = archive(work, "skiff.test/evil/dotdot:1", &[&dotdot], |_| {});
    vec![("skiff.test/evil/symlink:1".into(), through_link, a), ("skiff.test/evil/dotdot:1".into(), dotdot, b)]
}

/// What the error must say about `volume` of `image`: both named, the path escaped.
#[track_caller]
fn assert_names_the_volume(line: &str, image: &str, volume: &str) {
    let quoted = format!("{:?}", volume.chars().take(200).collect::<String>());
    let quoted = quoted.trim_end_matches('"');
    assert!(line.contains(&format!("image {image}: VOLUME {quoted}")), "names the image and the volume: {line}");
    assert!(!line.chars().any(|c| c.is_control()), "control characters are escaped: {line:?}");
}

// ---------------------------------------------------------------------------------------
// skiff run
// ---------------------------------------------------------------------------------------

struct Skiff {
    dir: Scratch,
}

impl Skiff {
    fn new() -> Skiff {
        skiff_tests::require_root();
        let s = Skiff { dir: Scratch::new("volumes") };
        fs::create_dir(s.root()).unwrap();
        s
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    fn run(&self, args: &[&str]) -> Output {
        let child = Command::new(SKIFF)
            .arg("--root")
            .arg(self.root())
            .args(args)
            .env("SKIFF_RUNTIME", skiff_tests::runtime_bin())
            .env_remove("SKIFF_ROOT")
            .env_remove("REGISTRY_AUTH_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn skiff");
        skiff_tests::skiff_output_within(child, TIMEOUT)
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "skiff {args:?}: {}\n{}", o.status, String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn containers(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.root().join("containers"))
            .map(|rd| rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Skiff {
    fn drop(&mut self) {
        skiff_tests::unmount_under(&self.root());
    }
}

#[test]
fn run_refuses_a_volume_that_leaves_the_rootfs_and_never_reads_the_host() {
    let s = Skiff::new();
    let canary = Canary::new(&s.dir);
    for (image, volume, archive) in hostile_images(&s.dir, &canary) {
        s.ok(&["load", archive.to_str().unwrap()]);
        let o = s.run(&["run", "--rm", "--name", "evil", &image]);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "{image}: THE RUN SUCCEEDED with VOLUME {volume:?}\n{err}");
        assert_eq!(o.status.code(), Some(1), "{image}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{image}: one line on stderr, got:\n{err}");
        assert!(lines[0].starts_with("skiff: error: "), "{}", lines[0]);
        assert_names_the_volume(lines[0], &image, &volume);
        canary.assert_untouched(&s.root());
        assert!(s.containers().is_empty(), "{image}: nothing is left: {:?}", s.containers());
        eprintln!("{image}: {}", lines[0]);
    }
}

#[test]
fn run_seeds_a_volume_with_links_as_links_and_owners_and_modes_kept() {
    let s = Skiff::new();
    let canary = Canary::new(&s.dir);
    let (secret, dir) = (canary.secret.clone(), canary.dir.clone());
    let archive = archive(&s.dir, "skiff.test/good/volume:1", &["/data", "/empty/at/all"], move |r| {
        let d = r.join("data");
        fs::create_dir_all(d.join("private")).unwrap();
        fs::write(d.join("owned"), "owned\n").unwrap();
        fs::write(d.join("suid"), "suid\n").unwrap();
        fs::write(d.join("private/inner"), "inner\n").unwrap();
        std::os::unix::fs::symlink(&secret, d.join("to-canary")).unwrap();
        std::os::unix::fs::symlink(&dir, d.join("to-canary-dir")).unwrap();
        std::os::unix::fs::symlink("owned", d.join("relative")).unwrap();
        std::os::unix::fs::chown(d.join("owned"), Some(1000), Some(1001)).unwrap();
        std::os::unix::fs::chown(d.join("private"), Some(1000), Some(1000)).unwrap();
        fs::set_permissions(d.join("owned"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::set_permissions(d.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::set_permissions(d.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    });
    s.ok(&["load", archive.to_str().unwrap()]);
    s.ok(&["run", "--name", "keep", "skiff.test/good/volume:1"]);
    let v = s.root().join("containers/keep/volumes/0");
    let meta = |p: &str| fs::symlink_metadata(v.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(fs::read_to_string(v.join("owned")).unwrap(), "owned\n");
    assert_eq!((meta("owned").uid(), meta("owned").gid(), meta("owned").mode() & 0o7777), (1000, 1001, 0o640));
    assert_eq!(meta("suid").mode() & 0o7777, 0o4755);
    assert_eq!((meta("private").uid(), meta("private").mode() & 0o7777), (1000, 0o700));
    assert_eq!(fs::read_to_string(v.join("private/inner")).unwrap(), "inner\n");
    assert_eq!(fs::read_link(v.join("to-canary")).unwrap(), canary.secret, "a link of the image stays a link");
    assert_eq!(fs::read_link(v.join("to-canary-dir")).unwrap(), canary.dir);
    assert_eq!(fs::read_link(v.join("relative")).unwrap(), Path::new("owned"));
    let empty = s.root().join("containers/keep/volumes/1");
    assert_eq!(fs::read_dir(&empty).unwrap().count(), 0, "a VOLUME the image lacks is an empty volume");
    canary.assert_untouched(&s.root());
    s.ok(&["rm", "keep"]);
    assert!(s.containers().is_empty());
}

// ---------------------------------------------------------------------------------------
// The agent
// ---------------------------------------------------------------------------------------

#[test]
fn an_agent_service_with_such_a_volume_fails_to_start_and_never_reads_the_host() {
    let mut a = Agent::new(SKIFF);
    let work = Scratch::new("volumes-agent");
    let canary = Canary::new(&work);
    let hostile = hostile_images(&work, &canary);
    let good = archive(&work, "skiff.test/good/sleeper:1", &["/data"], |r| {
        fs::create_dir(r.join("data")).unwrap();
        fs::write(r.join("data/seed"), "seed\n").unwrap();
    });
    for (_, _, archive) in &hostile {
        a.skiff(&["load", archive.to_str().unwrap()]).ok();
    }
    a.skiff(&["load", good.to_str().unwrap()]).ok();
    let mut yaml = String::from("services:\n");
    for (i, (image, _, _)) in hostile.iter().enumerate() {
        yaml.push_str(&format!("  evil{i}:\n    image: {image}\n    pull_policy: never\n"));
    }
    yaml.push_str(
        "  good:\n    image: skiff.test/good/sleeper:1\n    pull_policy: never\n    command: [\"sleep\", \"1000\"]\n    \
         stop_grace_period: 1s\n",
    );
    a.write_manifest(&yaml);
    a.start();
    let st = a.wait_status("the hostile services failed and the good one runs", |st| {
        skiff_tests::agent::all_running(st, "good", 1)
            && (0..hostile.len()).all(|i| {
                replicas(st, &format!("evil{i}")).iter().all(|r| r["state"] == "failed" && r["message"].is_string())
            })
    });
    for (i, (image, volume, _)) in hostile.iter().enumerate() {
        let r = &replicas(&st, &format!("evil{i}"))[0];
        let msg = r["message"].as_str().unwrap_or_default();
        assert!(!msg.contains('\n'), "one line: {msg:?}");
        assert_names_the_volume(msg, image, volume);
        let logged = a.log();
        assert!(logged.contains(&format!("evil{i}-1: start failed: image {image}: VOLUME ")), "{logged}");
        eprintln!("evil{i}: {msg}");
    }
    assert!(
        a.rt_ids().iter().all(|id| id.starts_with("good")),
        "only the good service has a container: {:?}",
        a.rt_ids()
    );
    let seeded = a.root().join("containers/good-1/volumes/0/seed");
    assert_eq!(fs::read_to_string(&seeded).unwrap_or_default(), "seed\n", "{}", seeded.display());
    canary.assert_untouched(&a.root());
    a.down();
}
