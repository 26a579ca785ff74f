//! The VOLUME checks and the seeding copy on a plain directory as the rootfs (the copy reads
//! through the same fds whether the rootfs is an overlay mount or not). Ownership checks need
//! root (as every test of this crate that touches a rootfs).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::*;

fn image(volumes: &[&str]) -> ImageRunConfig {
    ImageRunConfig {
        name: "example.com/evil:1".into(),
        volumes: volumes.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A host directory only root may read, with a secret in it: the copy must never reach it.
struct Canary {
    _t: tempfile::TempDir,
    dir: PathBuf,
}

impl Canary {
    fn new() -> Canary {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("canary");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("secret"), "CANARY-SECRET\n").unwrap();
        fs::set_permissions(dir.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        Canary { _t: t, dir }
    }
}

/// Every file under `dir` (not following symlinks) whose content is the canary's.
fn canary_copies(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = fs::symlink_metadata(&p) else { continue };
        if m.is_dir() {
            stack.extend(fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
        } else if m.is_file() && fs::read(&p).unwrap_or_default().windows(6).any(|w| w == b"CANARY") {
            out.push(p);
        }
    }
    out
}

struct Setup {
    t: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let s = Setup { t: tempfile::tempdir().unwrap() };
        fs::create_dir(s.rootfs()).unwrap();
        s
    }
    fn rootfs(&self) -> PathBuf {
        self.t.path().join("rootfs")
    }
    fn vols(&self) -> PathBuf {
        self.t.path().join("volumes")
    }
    fn err(&self, img: &ImageRunConfig) -> String {
        let e = image_volumes(img, &self.rootfs(), &[], &self.vols()).unwrap_err().to_string();
        assert!(!self.vols().exists(), "nothing is created when a VOLUME is refused: {e}");
        assert!(!e.contains('\n') && !e.contains('\u{1b}'), "one line, control characters escaped: {e:?}");
        e
    }
}

#[test]
fn a_symlink_on_the_way_is_refused_and_the_host_never_read() {
    let c = Canary::new();
    let s = Setup::new();
    std::os::unix::fs::symlink("/", s.rootfs().join("x\u{1b}[1m")).unwrap();
    let v = format!("/x\u{1b}[1m{}", c.dir.display());
    let e = s.err(&image(&[&v]));
    assert!(e.starts_with("image example.com/evil:1: VOLUME \"/x\\u{1b}[1m"), "{e}");
    assert!(e.contains("\"/x\\u{1b}[1m\" is a symbolic link in the image (to \"/\")"), "{e}");
    assert!(canary_copies(s.t.path()).is_empty());

    // The link as the last component, and a relative link up and out.
    fs::create_dir(s.rootfs().join("d")).unwrap();
    std::os::unix::fs::symlink("../../../../../../../../..", s.rootfs().join("d/up")).unwrap();
    let e = s.err(&image(&["/d/up"]));
    assert!(e.contains("\"/d/up\" is a symbolic link in the image"), "{e}");
    let e = s.err(&image(&[&format!("/d/up{}", c.dir.display())]));
    assert!(e.contains("\"/d/up\" is a symbolic link"), "{e}");
    assert!(canary_copies(s.t.path()).is_empty());
}

#[test]
fn dotdot_and_bad_paths_are_refused_before_anything() {
    let c = Canary::new();
    let s = Setup::new();
    let climb = format!("/../../../../../../../..{}", c.dir.display());
    let e = s.err(&image(&["/ok", &climb]));
    assert!(e.starts_with(&format!("image example.com/evil:1: VOLUME {climb:?}: contains '..'")), "{e}");
    for (v, want) in [
        ("data", "not an absolute path"),
        ("/", "cannot be the root"),
        ("//./", "cannot be the root"),
        ("/a/\0/b", "NUL"),
        ("/a/b/..", "contains '..'"),
    ] {
        let e = s.err(&image(&[v]));
        assert!(e.contains(want), "{v:?}: {e}");
    }
    let long = format!("/{}", "a".repeat(5000));
    let e = s.err(&image(&[&long]));
    assert!(e.contains("longer than 4096 bytes") && e.len() < 400, "{e}");
    // A file where the volume goes, or on the way to it.
    fs::write(s.rootfs().join("f"), "x").unwrap();
    assert!(s.err(&image(&["/f"])).contains("is not a directory in the image"));
    assert!(s.err(&image(&["/f/sub"])).contains("\"/f\" is not a directory in the image"));
    assert!(canary_copies(s.t.path()).is_empty());
}

#[test]
fn a_covered_volume_is_only_checked_lexically() {
    let s = Setup::new();
    std::os::unix::fs::symlink("/", s.rootfs().join("x")).unwrap();
    let covered = [PathBuf::from("/x/etc/")];
    let mounts = image_volumes(&image(&["/x/etc"]), &s.rootfs(), &covered, &s.vols()).unwrap();
    assert!(mounts.is_empty());
    let e = image_volumes(&image(&["/x/../etc"]), &s.rootfs(), &[PathBuf::from("/etc")], &s.vols()).unwrap_err();
    assert!(e.to_string().contains("contains '..'"), "{e}");
}

#[test]
fn seeding_copies_links_as_links_and_keeps_owners_and_modes() {
    let c = Canary::new();
    let s = Setup::new();
    let data = s.rootfs().join("srv/data");
    fs::create_dir_all(data.join("sub/deeper")).unwrap();
    fs::write(data.join("plain"), "plain\n").unwrap();
    fs::write(data.join("sub/deeper/f"), "deep\n").unwrap();
    std::os::unix::fs::symlink(c.dir.join("secret"), data.join("abs-link")).unwrap();
    std::os::unix::fs::symlink(&c.dir, data.join("dir-link")).unwrap();
    std::os::unix::fs::symlink("plain", data.join("rel-link")).unwrap();
    fs::hard_link(data.join("plain"), data.join("hard")).unwrap();
    fs::set_permissions(data.join("plain"), fs::Permissions::from_mode(0o4751)).unwrap();
    fs::set_permissions(data.join("sub"), fs::Permissions::from_mode(0o710)).unwrap();
    fs::set_permissions(&data, fs::Permissions::from_mode(0o750)).unwrap();
    nix::unistd::mkfifo(&data.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o640)).unwrap();
    if is_root() {
        std::os::unix::fs::lchown(data.join("sub/deeper/f"), Some(1000), Some(1001)).unwrap();
        std::os::unix::fs::lchown(data.join("abs-link"), Some(7), Some(8)).unwrap();
        std::os::unix::fs::chown(&data, Some(999), Some(998)).unwrap();
    }

    let img = image(&["/empty", "/srv/./data/", "/var/missing/too"]);
    fs::create_dir(s.rootfs().join("empty")).unwrap();
    let mounts = image_volumes(&img, &s.rootfs(), &[], &s.vols()).unwrap();
    let dests: Vec<_> = mounts.iter().map(|m| m.destination().clone()).collect();
    assert_eq!(dests, [PathBuf::from("/empty"), "/srv/data".into(), "/var/missing/too".into()]);
    let srcs: Vec<_> = mounts.iter().map(|m| m.source().clone().unwrap()).collect();
    assert_eq!(srcs, [s.vols().join("0"), s.vols().join("1"), s.vols().join("2")]);
    let names = |d: &Path| {
        let mut v: Vec<String> =
            fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    };
    assert_eq!(names(&s.vols()), ["0", "1", "2"], "no temporary directory is left");
    assert!(names(&s.vols().join("0")).is_empty() && names(&s.vols().join("2")).is_empty());
    assert_eq!(fs::metadata(s.vols().join("2")).unwrap().mode() & 0o7777, 0o755, "an empty volume is 0755");

    let v = s.vols().join("1");
    assert_eq!(names(&v), ["abs-link", "dir-link", "fifo", "hard", "plain", "rel-link", "sub"]);
    assert_eq!(fs::read_link(v.join("abs-link")).unwrap(), c.dir.join("secret"), "a link stays a link");
    assert_eq!(fs::read_link(v.join("dir-link")).unwrap(), c.dir);
    assert_eq!(fs::read_link(v.join("rel-link")).unwrap(), Path::new("plain"));
    assert_eq!(fs::read_to_string(v.join("sub/deeper/f")).unwrap(), "deep\n");
    assert_eq!(fs::metadata(v.join("plain")).unwrap().ino(), fs::metadata(v.join("hard")).unwrap().ino());
    assert_eq!(fs::metadata(v.join("plain")).unwrap().mode() & 0o7777, 0o4751);
    assert_eq!(fs::metadata(v.join("sub")).unwrap().mode() & 0o7777, 0o710);
    assert_eq!(fs::metadata(&v).unwrap().mode() & 0o7777, 0o750, "the volume gets its directory's mode");
    assert!(fs::symlink_metadata(v.join("fifo")).unwrap().file_type().is_fifo());
    let mt = |p: &Path| fs::symlink_metadata(p).unwrap().mtime();
    assert_eq!(mt(&v.join("sub/deeper/f")), mt(&data.join("sub/deeper/f")));
    if is_root() {
        let own = |p: &Path| {
            let m = fs::symlink_metadata(p).unwrap();
            (m.uid(), m.gid())
        };
        assert_eq!(own(&v.join("sub/deeper/f")), (1000, 1001));
        assert_eq!(own(&v.join("abs-link")), (7, 8), "the link's own owner");
        assert_eq!(own(&v), (999, 998));
    }
    assert!(canary_copies(s.t.path()).is_empty(), "the host's file behind the links is never read");

    // Seeded once: a second call keeps what the container wrote.
    fs::write(v.join("plain"), "changed by the container\n").unwrap();
    fs::remove_file(v.join("hard")).unwrap();
    image_volumes(&img, &s.rootfs(), &[], &s.vols()).unwrap();
    assert_eq!(fs::read_to_string(v.join("plain")).unwrap(), "changed by the container\n");
    assert!(!v.join("hard").exists());
}

use std::os::unix::fs::FileTypeExt;

#[test]
fn a_too_deep_tree_fails_and_leaves_nothing() {
    let s = Setup::new();
    let mut p = s.rootfs().join("data");
    for _ in 0..=crate::rootfs::COPY_MAX_DEPTH {
        p.push("d");
    }
    fs::create_dir_all(&p).unwrap();
    let e = image_volumes(&image(&["/data"]), &s.rootfs(), &[], &s.vols()).unwrap_err().to_string();
    assert!(e.starts_with("image example.com/evil:1: VOLUME \"/data\": seeding the volume from the image: "), "{e}");
    assert!(e.contains(&format!("more than {} nested directories", crate::rootfs::COPY_MAX_DEPTH)), "{e}");
    assert_eq!(fs::read_dir(s.vols()).unwrap().count(), 0, "the half-made copy is removed");
}

/// The agent seeds volumes on a blocking thread of 512 KiB of stack: the deepest copy allowed
/// fits in it (in this build, debug or release).
#[test]
fn the_deepest_copy_fits_a_small_stack() {
    let s = Setup::new();
    let mut p = s.rootfs().join("data");
    for _ in 0..crate::rootfs::COPY_MAX_DEPTH {
        p.push("d");
    }
    fs::create_dir_all(&p).unwrap();
    fs::write(p.join("f"), "bottom").unwrap();
    let (rootfs, vols) = (s.rootfs(), s.vols());
    let h = std::thread::Builder::new()
        .stack_size(512 << 10)
        .spawn(move || image_volumes(&image(&["/data"]), &rootfs, &[], &vols).map(|_| ()).map_err(|e| e.to_string()))
        .unwrap();
    h.join().unwrap().unwrap();
    let mut q = s.vols().join("0");
    for _ in 0..crate::rootfs::COPY_MAX_DEPTH {
        q.push("d");
    }
    assert_eq!(fs::read_to_string(q.join("f")).unwrap(), "bottom");
}

/// A named volume: filled once from the rootfs (owner and mode of the directory too), never
/// again; `nocopy` and a missing path make it empty; nothing half-made is left.
#[test]
fn a_new_named_volume_is_filled_once_from_the_image() {
    let s = Setup::new();
    let data = s.rootfs().join("data");
    fs::create_dir_all(data.join("sub")).unwrap();
    fs::write(data.join("sub/f"), "from the image\n").unwrap();
    fs::set_permissions(&data, fs::Permissions::from_mode(0o700)).unwrap();
    if is_root() {
        std::os::unix::fs::chown(&data, Some(65534), Some(65534)).unwrap();
    }
    let vols = s.vols();
    fs::create_dir(&vols).unwrap();
    // What a seed cut by a crash left (its process is gone: no pid is that high) goes.
    let stale = vols.join(".db.seed-999999999-1");
    fs::create_dir(&stale).unwrap();
    fs::write(stale.join("half"), "half a copy").unwrap();
    assert_eq!(named_volume(&s.rootfs(), "/data/", &vols, "db", false).unwrap(), NamedVolume::Filled);
    let v = vols.join("db");
    assert_eq!(fs::read_to_string(v.join("sub/f")).unwrap(), "from the image\n");
    assert_eq!(fs::metadata(&v).unwrap().mode() & 0o7777, 0o700, "the directory's mode");
    if is_root() {
        assert_eq!(fs::metadata(&v).unwrap().uid(), 65534, "the directory's owner");
    }
    let names: Vec<String> =
        fs::read_dir(&vols).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names, ["db"], "no temporary directory is left");

    // Once: an emptied volume stays empty (with a word, since the image has files there: an
    // older skiff made volumes empty), a volume with anything in it is just used.
    fs::remove_dir_all(v.join("sub")).unwrap();
    let (uid, gid) =
        if is_root() { (65534, 65534) } else { (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw()) };
    assert_eq!(
        named_volume(&s.rootfs(), "/data", &vols, "db", false).unwrap(),
        NamedVolume::ExistingEmpty { uid, gid, mode: 0o700 }
    );
    assert_eq!(fs::read_dir(&v).unwrap().count(), 0);
    assert_eq!(named_volume(&s.rootfs(), "/data", &vols, "db", true).unwrap(), NamedVolume::Existing, "nocopy");
    fs::write(v.join("mine"), "x").unwrap();
    assert_eq!(named_volume(&s.rootfs(), "/data", &vols, "db", false).unwrap(), NamedVolume::Existing);
    fs::remove_file(v.join("mine")).unwrap();

    // nocopy, and a path the image does not have: empty, 0755.
    assert_eq!(named_volume(&s.rootfs(), "/data", &vols, "raw", true).unwrap(), NamedVolume::Empty);
    assert_eq!(named_volume(&s.rootfs(), "/nothing/here", &vols, "none", false).unwrap(), NamedVolume::Empty);
    for n in ["raw", "none"] {
        assert_eq!(fs::read_dir(vols.join(n)).unwrap().count(), 0, "{n}");
        assert_eq!(fs::metadata(vols.join(n)).unwrap().mode() & 0o7777, 0o755, "{n}");
    }
}

/// The attack: a mount target that is a symlink of the image to a host directory (or climbs
/// with `..`) never copies the host's files: the volume is made empty and the reason given.
#[test]
fn a_named_volume_never_copies_through_a_symlink_or_dotdot() {
    let c = Canary::new();
    let s = Setup::new();
    std::os::unix::fs::symlink(&c.dir, s.rootfs().join("data")).unwrap();
    std::os::unix::fs::symlink("/", s.rootfs().join("up")).unwrap();
    let vols = s.vols();
    fs::create_dir(&vols).unwrap();
    let canary = c.dir.to_str().unwrap().to_string();
    for (i, target) in
        ["/data", &format!("/up{canary}"), &format!("/../..{canary}"), &format!("/x/../..{canary}")].iter().enumerate()
    {
        let name = format!("v{i}");
        match named_volume(&s.rootfs(), target, &vols, &name, false).unwrap() {
            NamedVolume::Refused(why) => {
                assert!(why.contains("symbolic link") || why.contains(".."), "{target}: {why}")
            }
            other => panic!("{target}: {other:?}"),
        }
        assert_eq!(fs::read_dir(vols.join(&name)).unwrap().count(), 0, "{target}: empty");
    }
    assert!(canary_copies(&vols).is_empty(), "the host's secret was copied");
}
