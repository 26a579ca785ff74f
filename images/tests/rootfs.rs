//! Container root filesystems from overlay-style layer directories, as root: the merged view
//! through overlayfs and through the copy fallback (whiteouts, opaque directories, every
//! entry kind and attribute), writes landing in upper/, remounting over the same upper/,
//! long layer lists (each way of passing them), fallback rules, and cleanup. Every test
//! leaves nothing mounted, even when it fails (the `Container` guard unmounts on drop).

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{self, Mode, SFlag};
use nix::sys::time::TimeSpec;
use skiff_images::rootfs::{
    mount_rootfs, mount_rootfs_with, mounts_under, remove_container_dir, unmount_rootfs, OverlayStrategy, RootfsKind,
    RootfsOptions, COPIED_MARKER,
};

const T0: i64 = 1_500_000_000;

fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let reason = "needs root (mknod, trusted xattrs, overlay mounts)";
    eprintln!("SKIPPED: rootfs::{test}: {reason}");
    if let Some(log) = std::env::var_os("SKIFF_TEST_SKIP_LOG").filter(|v| !v.is_empty()) {
        use std::io::Write;
        if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = writeln!(f, "rootfs::{test}: {reason}");
        }
    }
    false
}

/// A scratch directory holding layers and a container directory. Dropping it unmounts and
/// removes the container directory first (also while a test panics), then the rest.
struct Scratch {
    tmp: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch { tmp: tempfile::Builder::new().prefix("skiff-rootfs-test").tempdir().expect("tempdir") }
    }

    fn path(&self) -> &Path {
        self.tmp.path()
    }

    fn container(&self) -> PathBuf {
        self.path().join("containers/c1")
    }

    fn layer(&self, name: &str) -> PathBuf {
        let p = self.path().join("layers").join(name);
        fs::create_dir_all(&p).expect("mkdir layer");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
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

fn write(p: &Path, data: &str) {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).expect("mkdir parent");
    }
    fs::write(p, data).expect("write");
}

fn whiteout(p: &Path) {
    stat::mknod(p, SFlag::S_IFCHR, Mode::empty(), stat::makedev(0, 0)).expect("mknod whiteout");
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let path = CString::new(p.as_os_str().as_bytes()).unwrap();
    let name = CString::new(name).unwrap();
    // SAFETY: NUL-terminated strings and a live slice, only read during the call.
    let r = unsafe { libc::lsetxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(r, 0, "setxattr {}: {}", p.display(), std::io::Error::last_os_error());
}

fn get_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let path = CString::new(p.as_os_str().as_bytes()).unwrap();
    let name = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: NUL-terminated strings; the kernel writes at most buf.len() bytes.
    let n = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

fn set_mtime(p: &Path, t: i64) {
    let ts = TimeSpec::new(t, 0);
    stat::utimensat(None, p, &ts, &ts, stat::UtimensatFlags::NoFollowSymlink).expect("utimensat");
}

/// Three layers using every overlay convention (see the expectations in `check_merged`).
fn three_layers(s: &Scratch) -> Vec<PathBuf> {
    let l0 = s.layer("l0");
    write(&l0.join("etc/a"), "a0");
    write(&l0.join("etc/b"), "b0");
    write(&l0.join("dir/x"), "x0");
    write(&l0.join("dir/sub/y"), "y0");
    write(&l0.join("opq/old1"), "o1");
    write(&l0.join("opq/olddir/z"), "z");
    std::os::unix::fs::symlink("etc/a", l0.join("link")).unwrap();
    write(&l0.join("hard1"), "h");
    fs::hard_link(l0.join("hard1"), l0.join("hard2")).unwrap();
    stat::mknod(&l0.join("nulldev"), SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), stat::makedev(1, 3)).unwrap();
    fs::set_permissions(l0.join("nulldev"), fs::Permissions::from_mode(0o666)).unwrap();
    nix::unistd::mkfifo(&l0.join("fifo"), Mode::from_bits_truncate(0o640)).unwrap();
    fs::set_permissions(l0.join("fifo"), fs::Permissions::from_mode(0o640)).unwrap();
    write(&l0.join("suid"), "s");
    std::os::unix::fs::chown(l0.join("suid"), Some(1000), Some(1000)).unwrap();
    fs::set_permissions(l0.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    set_mtime(&l0.join("suid"), T0);
    write(&l0.join("xa"), "x");
    set_xattr(&l0.join("xa"), "user.test", b"v");
    set_xattr(&l0.join("xa"), "trusted.skiff", b"t");
    write(&l0.join("keep/k"), "k");
    std::os::unix::fs::chown(l0.join("keep"), Some(1000), Some(1001)).unwrap();
    fs::set_permissions(l0.join("keep"), fs::Permissions::from_mode(0o700)).unwrap();
    set_mtime(&l0.join("keep"), T0);

    let l1 = s.layer("l1");
    write(&l1.join("etc/a"), "a1");
    whiteout(&l1.join("etc/b"));
    write(&l1.join("opq/new1"), "n1");
    set_xattr(&l1.join("opq"), "trusted.overlay.opaque", b"y");
    write(&l1.join("dir/x/inner"), "i");

    let l2 = s.layer("l2");
    fs::create_dir_all(l2.join("dir")).unwrap();
    whiteout(&l2.join("dir/sub"));
    write(&l2.join("newfile"), "n");
    whiteout(&l2.join("ghost"));
    std::os::unix::fs::symlink("/etc/a", l2.join("abslink")).unwrap();
    vec![l0, l1, l2]
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(p).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// Walks the tree: no 0/0 character device (a whiteout) may be visible.
fn no_whiteouts(p: &Path) {
    for e in fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let md = fs::symlink_metadata(e.path()).unwrap();
        assert!(!(md.file_type().is_char_device() && md.rdev() == 0), "whiteout visible: {}", e.path().display());
        if md.is_dir() {
            no_whiteouts(&e.path());
        }
    }
}

fn check_merged(r: &Path, kind: RootfsKind) {
    assert_eq!(
        names(r),
        ["abslink", "dir", "etc", "fifo", "hard1", "hard2", "keep", "link", "newfile", "nulldev", "opq", "suid", "xa"]
    );
    assert_eq!(read(&r.join("etc/a")), "a1");
    assert_eq!(names(&r.join("etc")), ["a"], "etc/b is whited out");
    assert_eq!(names(&r.join("dir")), ["x"], "dir/sub is whited out");
    assert!(r.join("dir/x").is_dir(), "dir/x: a file replaced by a directory");
    assert_eq!(read(&r.join("dir/x/inner")), "i");
    assert_eq!(names(&r.join("opq")), ["new1"], "opaque directory");
    assert_eq!(fs::read_link(r.join("link")).unwrap(), Path::new("etc/a"));
    assert_eq!(read(&r.join("link")), "a1");
    assert_eq!(fs::read_link(r.join("abslink")).unwrap(), Path::new("/etc/a"));
    assert_eq!(read(&r.join("hard2")), "h");
    let (h1, h2) = (fs::metadata(r.join("hard1")).unwrap(), fs::metadata(r.join("hard2")).unwrap());
    assert_eq!(h1.ino(), h2.ino(), "hardlinks");
    assert!(h1.nlink() >= 2);
    let dev = fs::symlink_metadata(r.join("nulldev")).unwrap();
    assert!(dev.file_type().is_char_device());
    assert_eq!(dev.rdev(), stat::makedev(1, 3));
    assert_eq!(dev.mode() & 0o7777, 0o666);
    let fifo = fs::symlink_metadata(r.join("fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o7777, 0o640);
    let suid = fs::metadata(r.join("suid")).unwrap();
    assert_eq!((suid.mode() & 0o7777, suid.uid(), suid.gid(), suid.mtime()), (0o4755, 1000, 1000, T0));
    assert_eq!(get_xattr(&r.join("xa"), "user.test").as_deref(), Some(&b"v"[..]));
    assert_eq!(get_xattr(&r.join("xa"), "trusted.skiff").as_deref(), Some(&b"t"[..]));
    let keep = fs::metadata(r.join("keep")).unwrap();
    assert_eq!((keep.mode() & 0o7777, keep.uid(), keep.gid(), keep.mtime()), (0o700, 1000, 1001, T0));
    if kind == RootfsKind::Copy {
        assert_eq!(get_xattr(&r.join("opq"), "trusted.overlay.opaque"), None, "overlay xattrs are not copied");
    }
    no_whiteouts(r);
}

#[test]
fn overlay_merges_layers_and_keeps_writes_in_upper() {
    if !root_or_skip("overlay_merges_layers_and_keeps_writes_in_upper") {
        return;
    }
    let s = Scratch::new();
    let layers = three_layers(&s);
    let c = s.container();
    let m = mount_rootfs_with(&layers, &c, &RootfsOptions::default()).expect("mount");
    assert_eq!(
        (m.kind, m.strategy, m.fallback.as_deref(), m.reused),
        (RootfsKind::Overlay, Some(OverlayStrategy::MountData), None, false)
    );
    let r = c.join("rootfs");
    assert_eq!(mounts_under(&r).unwrap(), [fs::canonicalize(&r).unwrap()]);
    // The top layer first in lowerdir=, index off (shown only when it differs from the
    // kernel's default), not volatile.
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info.lines().find(|l| l.contains(&format!(" {} ", r.display()))).expect("in mountinfo");
    let lower = format!("lowerdir={}:{}:{}", layers[2].display(), layers[1].display(), layers[0].display());
    assert!(line.contains(&lower) && !line.contains("index=on") && !line.contains("volatile"), "{line}");
    check_merged(&r, RootfsKind::Overlay);

    // Writes go to upper/; the layers stay as they were.
    fs::write(r.join("written"), "w").unwrap();
    fs::remove_file(r.join("etc/a")).unwrap();
    assert_eq!(read(&c.join("upper/written")), "w");
    let wh = fs::symlink_metadata(c.join("upper/etc/a")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0, "a whiteout in upper/");
    assert_eq!(read(&layers[1].join("etc/a")), "a1");

    // Mounting again is a no-op; after an unmount (a reboot) the same upper/ comes back.
    assert!(mount_rootfs_with(&layers, &c, &RootfsOptions::default()).unwrap().reused);
    unmount_rootfs(&c).expect("unmount");
    unmount_rootfs(&c).expect("unmount twice");
    assert!(mounts_under(&c).unwrap().is_empty());
    assert!(names(&r).is_empty());
    assert_eq!(mount_rootfs(&layers, &c).expect("remount"), RootfsKind::Overlay);
    assert_eq!(read(&r.join("written")), "w");
    assert!(!r.join("etc/a").exists());

    remove_container_dir(&c).expect("remove");
    assert!(!c.exists());
    assert!(mounts_under(s.path()).unwrap().is_empty());
    assert_eq!(read(&layers[0].join("etc/a")), "a0", "layers untouched");
}

#[test]
fn copy_fallback_gives_the_same_view() {
    if !root_or_skip("copy_fallback_gives_the_same_view") {
        return;
    }
    let s = Scratch::new();
    let layers = three_layers(&s);
    let c = s.container();
    let opts = RootfsOptions { copy: true, ..Default::default() };
    let m = mount_rootfs_with(&layers, &c, &opts).expect("copy");
    assert_eq!((m.kind, m.strategy, m.reused), (RootfsKind::Copy, None, false));
    let r = c.join("rootfs");
    assert!(mounts_under(&c).unwrap().is_empty(), "a copy mounts nothing");
    check_merged(&r, RootfsKind::Copy);
    assert!(c.join(COPIED_MARKER).is_file());
    assert!(!c.join("upper").exists() && !c.join("work").exists());

    // Writes stay; a second call (even without `copy`) keeps the copy.
    fs::write(r.join("written"), "w").unwrap();
    let m = mount_rootfs_with(&layers, &c, &RootfsOptions::default()).expect("again");
    assert_eq!((m.kind, m.reused), (RootfsKind::Copy, true));
    assert_eq!(read(&r.join("written")), "w");
    unmount_rootfs(&c).expect("unmount of a copy is a no-op");

    // A copy cut short by a crash (no marker) is redone from scratch.
    fs::remove_file(c.join(COPIED_MARKER)).unwrap();
    fs::remove_file(r.join("newfile")).unwrap();
    let m = mount_rootfs_with(&layers, &c, &opts).expect("redo");
    assert_eq!((m.kind, m.reused), (RootfsKind::Copy, false));
    assert!(!r.join("written").exists());
    check_merged(&r, RootfsKind::Copy);

    remove_container_dir(&c).expect("remove");
    assert!(!c.exists());
}

/// `n` layers in store-like directories (long paths): layer i holds `f<i>`, overwrites
/// `common`, and (i even) whites out `f<i-1>`.
fn many_layers(s: &Scratch, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let l = s.layer(&format!("sha256/{:064x}", i + 0xabcdef));
            write(&l.join(format!("f{i}")), &i.to_string());
            write(&l.join("common"), &i.to_string());
            if i > 0 && i % 2 == 0 {
                whiteout(&l.join(format!("f{}", i - 1)));
            }
            l
        })
        .collect()
}

fn check_many(r: &Path, n: usize) {
    let mut want: Vec<String> = (0..n).filter(|i| i % 2 == 0 || *i == n - 1).map(|i| format!("f{i}")).collect();
    want.push("common".into());
    want.sort();
    assert_eq!(names(r), want);
    assert_eq!(read(&r.join("common")), (n - 1).to_string(), "the top layer wins");
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let uts = nix::sys::utsname::uname().expect("uname");
    let release = uts.release().to_string_lossy().into_owned();
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

#[test]
fn long_layer_lists() {
    if !root_or_skip("long_layer_lists") {
        return;
    }
    let s = Scratch::new();
    let n = 120;
    let layers = many_layers(&s, n);
    let c = s.container();
    let total: usize = layers.iter().map(|l| l.as_os_str().len() + 1).sum();
    assert!(total > 4096, "the list must not fit in a page ({total} bytes)");

    let kernel_has_lowerdir_plus = {
        let m = mount_rootfs_with(&layers, &c, &RootfsOptions::default()).expect("auto");
        assert_eq!(m.kind, RootfsKind::Overlay);
        check_many(&c.join("rootfs"), n);
        unmount_rootfs(&c).unwrap();
        if kernel_at_least(6, 8) {
            assert_eq!(m.strategy, Some(OverlayStrategy::LowerdirPlus), "Linux 6.8+ takes lowerdir+");
        }
        m.strategy == Some(OverlayStrategy::LowerdirPlus)
    };
    for strategy in [OverlayStrategy::ShortLinks, OverlayStrategy::LowerdirPlus] {
        if strategy == OverlayStrategy::LowerdirPlus && !kernel_has_lowerdir_plus {
            eprintln!("lowerdir+ not supported by this kernel: not checked");
            continue;
        }
        let opts = RootfsOptions { overlay_strategy: Some(strategy), ..Default::default() };
        let m = mount_rootfs_with(&layers, &c, &opts).unwrap_or_else(|e| panic!("{strategy:?}: {e}"));
        assert_eq!((m.kind, m.strategy), (RootfsKind::Overlay, Some(strategy)));
        check_many(&c.join("rootfs"), n);
        let w = c.join("rootfs").join(format!("w-{strategy:?}"));
        fs::write(&w, "w").unwrap();
        assert!(c.join("upper").join(w.file_name().unwrap()).is_file());
        fs::remove_file(&w).unwrap();
        unmount_rootfs(&c).unwrap();
        assert!(mounts_under(&c).unwrap().is_empty());
    }
    remove_container_dir(&c).unwrap();

    // The copy takes any number of layers.
    let m = mount_rootfs_with(&layers, &c, &RootfsOptions { copy: true, ..Default::default() }).expect("copy");
    assert_eq!(m.kind, RootfsKind::Copy);
    check_many(&c.join("rootfs"), n);
}

#[test]
fn failed_overlay_falls_back_to_a_copy_only_without_writes() {
    if !root_or_skip("failed_overlay_falls_back_to_a_copy_only_without_writes") {
        return;
    }
    let s = Scratch::new();
    let n = 80;
    let layers = many_layers(&s, n);
    let c = s.container();
    // Forced to pass the long list as mount(2) data: refused before the kernel sees it.
    let opts = RootfsOptions { overlay_strategy: Some(OverlayStrategy::MountData), ..Default::default() };
    let m = mount_rootfs_with(&layers, &c, &opts).expect("fallback");
    assert_eq!(m.kind, RootfsKind::Copy);
    assert!(m.fallback.as_deref().unwrap_or_default().contains("does not fit in one mount(2) data page"), "{m:?}");
    check_many(&c.join("rootfs"), n);
    remove_container_dir(&c).unwrap();

    // With writes in upper/, no fallback: an error.
    mount_rootfs(&layers, &c).expect("overlay");
    fs::write(c.join("rootfs/mine"), "m").unwrap();
    unmount_rootfs(&c).unwrap();
    let e = mount_rootfs_with(&layers, &c, &opts).unwrap_err().to_string();
    assert!(e.contains("upper/ holds the container's earlier writes"), "{e}");
    let e = mount_rootfs_with(&layers, &c, &RootfsOptions { copy: true, ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("a copy was asked for, but upper/ holds"), "{e}");
    assert!(mounts_under(&c).unwrap().is_empty());
    assert_eq!(read(&c.join("upper/mine")), "m", "the writes are kept");
}

#[test]
fn image_without_layers_and_busy_unmount() {
    if !root_or_skip("image_without_layers_and_busy_unmount") {
        return;
    }
    let s = Scratch::new();
    let c = s.container();
    assert_eq!(mount_rootfs(&[], &c).expect("no layers"), RootfsKind::Overlay);
    let r = c.join("rootfs");
    assert!(names(&r).is_empty());
    fs::write(r.join("f"), "x").unwrap();
    // A busy mount (an open directory in it) is detached lazily.
    let busy = fs::File::open(&r).unwrap();
    unmount_rootfs(&c).expect("lazy unmount");
    assert!(mounts_under(&c).unwrap().is_empty());
    drop(busy);
    // Something else mounted below the container directory is detached before removal.
    let extra = c.join("extra");
    fs::create_dir(&extra).unwrap();
    nix::mount::mount(Some("tmpfs"), &extra, Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>).unwrap();
    remove_container_dir(&c).expect("remove");
    assert!(!c.exists());
}
