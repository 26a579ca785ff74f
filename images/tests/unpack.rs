//! The layer unpacker on normal content, as root: every entry kind and attribute, overlay
//! whiteouts checked through a real overlayfs mount, apply-mode whiteouts, gzip (multi
//! member), zstd and plain tar, diff_id verification. The attack-shaped layers are unit tests
//! in `src/unpack/tests.rs`.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use skiff_images::unpack::{
    sync_dir_tree, unpack_layer, verify_diff_id, Compression, UnpackError, UnpackOptions, WhiteoutMode,
};

const T0: u64 = 1_500_000_000;

fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped {test}: needs root (chown, mknod, trusted xattrs, overlay mounts)");
    false
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("skiff-unpack-test").tempdir().expect("tempdir")
}

/// Builds a layer tar with the `tar` crate (long names, PAX records).
struct Layer(tar::Builder<Vec<u8>>);

struct Attrs {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
}

fn a(mode: u32) -> Attrs {
    Attrs { mode, uid: 0, gid: 0, mtime: T0 }
}

impl Layer {
    fn new() -> Self {
        Layer(tar::Builder::new(Vec::new()))
    }

    fn add(mut self, ty: tar::EntryType, path: &str, link: Option<&str>, at: Attrs, data: &[u8]) -> Self {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(ty);
        h.set_mode(at.mode);
        h.set_uid(at.uid);
        h.set_gid(at.gid);
        h.set_mtime(at.mtime);
        h.set_size(data.len() as u64);
        if let Some(l) = link {
            self.0.append_link(&mut h, path, l).expect("append link");
        } else {
            self.0.append_data(&mut h, path, data).expect("append");
        }
        self
    }

    fn file(self, path: &str, at: Attrs, data: &[u8]) -> Self {
        self.add(tar::EntryType::Regular, path, None, at, data)
    }

    fn dir(self, path: &str, at: Attrs) -> Self {
        self.add(tar::EntryType::Directory, path, None, at, b"")
    }

    fn symlink(self, path: &str, target: &str, at: Attrs) -> Self {
        self.add(tar::EntryType::Symlink, path, Some(target), at, b"")
    }

    fn hardlink(self, path: &str, target: &str) -> Self {
        self.add(tar::EntryType::Link, path, Some(target), a(0o644), b"")
    }

    /// uid/gid fields are left empty, as some writers do: they read as 0.
    fn device(mut self, ty: tar::EntryType, path: &str, mode: u32, major: u32, minor: u32) -> Self {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(ty);
        h.set_mode(mode);
        h.set_mtime(T0);
        h.set_size(0);
        h.set_device_major(major).expect("major");
        h.set_device_minor(minor).expect("minor");
        self.0.append_data(&mut h, path, &b""[..]).expect("append device");
        self
    }

    fn pax(mut self, records: &[(&str, &[u8])]) -> Self {
        self.0.append_pax_extensions(records.iter().map(|(k, v)| (*k, *v))).expect("pax");
        self
    }

    fn tar(self) -> Vec<u8> {
        self.0.into_inner().expect("finish tar")
    }
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

fn lgetxattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let path = CString::new(p.as_os_str().as_bytes()).expect("path");
    let name = CString::new(name).expect("name");
    let mut buf = vec![0u8; 256];
    // SAFETY: NUL-terminated strings and a live buffer of the given length.
    let n = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

fn overlay_opts() -> UnpackOptions {
    UnpackOptions { whiteouts: WhiteoutMode::Overlay, same_owner: true, ..UnpackOptions::default() }
}

fn apply_opts() -> UnpackOptions {
    UnpackOptions { whiteouts: WhiteoutMode::Apply, same_owner: true, ..UnpackOptions::default() }
}

/// vfs_cap_data revision 2: cap_net_raw (13) permitted and effective.
const CAP_NET_RAW: [u8; 20] = [0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

#[test]
fn every_entry_kind_and_attribute() {
    if !root_or_skip("every_entry_kind_and_attribute") {
        return;
    }
    let long = format!("long/{}/file", "n".repeat(150));
    let tar = Layer::new()
        .dir("./", a(0o751))
        .dir("d", Attrs { mode: 0o750, uid: 1000, gid: 1001, mtime: T0 + 1 })
        .file("d/f", Attrs { mode: 0o640, uid: 1000, gid: 1001, mtime: T0 + 2 }, b"hello\n")
        .dir("d/sticky", Attrs { mode: 0o1777, uid: 0, gid: 0, mtime: T0 + 3 })
        .file("suid", Attrs { mode: 0o4755, uid: 1000, gid: 0, mtime: T0 }, b"#!/bin/true\n")
        .file("sgid", Attrs { mode: 0o2711, uid: 0, gid: 50, mtime: T0 }, b"x")
        .dir("ro", a(0o555))
        .file("ro/inside", a(0o444), b"written into a read-only dir")
        .symlink("d/l", "f", Attrs { mode: 0o777, uid: 1000, gid: 1001, mtime: T0 + 4 })
        .symlink("abs", "/etc/passwd", a(0o777))
        .hardlink("d/hl", "d/f")
        .device(tar::EntryType::Char, "dev/null", 0o666, 1, 3)
        .device(tar::EntryType::Block, "dev/loop7", 0o660, 7, 7)
        .device(tar::EntryType::Fifo, "fifo", 0o600, 0, 0)
        .pax(&[
            ("SCHILY.xattr.user.skiff", b"hello"),
            ("SCHILY.xattr.security.capability", &CAP_NET_RAW),
            ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
            ("SCHILY.xattr.security.selinux", b"system_u:object_r:shadow_t:s0"),
        ])
        .file("x", a(0o755), b"\x7fELF")
        .pax(&[("mtime", b"1500000000.25"), ("atime", b"1500000001.5")])
        .file("frac", a(0o644), b"")
        .file(&long, a(0o600), b"long name")
        .tar();
    let t = tmp();
    let dir = t.path().join("layer");
    fs::create_dir(&dir).expect("mkdir");
    let stats = unpack_layer(&tar[..], &dir, &overlay_opts()).expect("unpack");

    assert_eq!(stats.diff_id, sha256(&tar));
    assert_eq!(stats.bytes, tar.len() as u64);
    assert_eq!(stats.compression, Compression::None);
    assert_eq!(stats.files, 7);
    let notes = stats.notes.join("\n");
    assert!(notes.contains("trusted.overlay.redirect ignored"), "{notes}");
    assert!(notes.contains("security.selinux ignored"), "{notes}");

    let md = |p: &str| fs::symlink_metadata(dir.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let root = fs::metadata(&dir).expect("root");
    assert_eq!(root.mode() & 0o7777, 0o751);
    assert_eq!(root.mtime() as u64, T0);

    let d = md("d");
    assert!(d.is_dir());
    assert_eq!((d.mode() & 0o7777, d.uid(), d.gid()), (0o750, 1000, 1001));
    assert_eq!(d.mtime() as u64, T0 + 1, "directory mtime is set after its contents");

    let f = md("d/f");
    assert_eq!((f.mode() & 0o7777, f.uid(), f.gid(), f.mtime() as u64), (0o640, 1000, 1001, T0 + 2));
    assert_eq!(fs::read(dir.join("d/f")).expect("read"), b"hello\n");
    assert_eq!(f.nlink(), 2);
    assert_eq!(md("d/hl").ino(), f.ino());

    assert_eq!(md("d/sticky").mode() & 0o7777, 0o1777);
    assert_eq!(md("suid").mode() & 0o7777, 0o4755, "setuid survives the chown");
    assert_eq!(md("suid").uid(), 1000);
    assert_eq!((md("sgid").mode() & 0o7777, md("sgid").gid()), (0o2711, 50));
    assert_eq!(md("ro").mode() & 0o7777, 0o555);
    assert_eq!(fs::read(dir.join("ro/inside")).expect("read"), b"written into a read-only dir");

    let l = md("d/l");
    assert!(l.file_type().is_symlink());
    assert_eq!(fs::read_link(dir.join("d/l")).expect("readlink"), Path::new("f"));
    assert_eq!((l.uid(), l.gid(), l.mtime() as u64), (1000, 1001, T0 + 4));
    assert_eq!(fs::read_link(dir.join("abs")).expect("readlink"), Path::new("/etc/passwd"));

    let null = md("dev/null");
    assert!(null.file_type().is_char_device());
    assert_eq!((null.rdev(), null.mode() & 0o7777), (nix::sys::stat::makedev(1, 3), 0o666));
    let lp = md("dev/loop7");
    assert!(lp.file_type().is_block_device());
    assert_eq!(lp.rdev(), nix::sys::stat::makedev(7, 7));
    assert!(md("fifo").file_type().is_fifo());
    assert_eq!(md("fifo").mode() & 0o7777, 0o600);

    let x = dir.join("x");
    assert_eq!(lgetxattr(&x, "user.skiff").as_deref(), Some(&b"hello"[..]));
    assert_eq!(lgetxattr(&x, "security.capability").as_deref(), Some(&CAP_NET_RAW[..]));
    assert_eq!(lgetxattr(&x, "trusted.overlay.redirect"), None);
    assert_eq!(lgetxattr(&x, "security.selinux"), None);

    let frac = md("frac");
    assert_eq!((frac.mtime(), frac.mtime_nsec()), (1_500_000_000, 250_000_000));
    assert_eq!((frac.atime(), frac.atime_nsec()), (1_500_000_001, 500_000_000));
    assert_eq!(fs::read(dir.join(&long)).expect("long name"), b"long name");

    sync_dir_tree(&dir).expect("syncfs");
}

fn lower_layer() -> Vec<u8> {
    Layer::new()
        .dir("a", a(0o755))
        .file("a/keep", a(0o644), b"keep")
        .file("a/gone", a(0o644), b"gone")
        .dir("b", a(0o755))
        .file("b/old", a(0o644), b"old")
        .dir("b/sub", a(0o755))
        .file("b/sub/deep", a(0o644), b"deep")
        .file("c", a(0o644), b"c")
        .dir("e", a(0o755))
        .file("e/x", a(0o644), b"x")
        .tar()
}

fn upper_layer() -> Vec<u8> {
    Layer::new()
        .dir("a", a(0o755))
        .file("a/.wh.gone", a(0o644), b"")
        .dir("b", a(0o700))
        .file("b/new", a(0o644), b"new, before the opaque marker")
        .dir("b/sub", a(0o755))
        .file("b/sub/mine", a(0o644), b"mine")
        .file("b/.wh..wh..opq", a(0o644), b"")
        .file("b/new2", a(0o644), b"new, after the opaque marker")
        .file(".wh.c", a(0o644), b"")
        .file(".wh.e", a(0o644), b"")
        .file("g", a(0o644), b"same layer as its whiteout")
        .file(".wh.g", a(0o644), b"")
        .file(".wh.never-existed", a(0o644), b"")
        .file("f", a(0o644), b"f")
        .tar()
}

/// The merged view both modes must produce.
fn check_merged(m: &Path) {
    let exists = |p: &str| fs::symlink_metadata(m.join(p)).is_ok();
    assert!(exists("a/keep"));
    assert!(!exists("a/gone"), "whiteout hides a/gone");
    assert!(!exists("b/old"), "opaque hides b/old");
    assert!(!exists("b/sub/deep"), "opaque hides b/sub/deep");
    assert_eq!(fs::read(m.join("b/sub/mine")).expect("b/sub/mine"), b"mine");
    assert_eq!(fs::read(m.join("b/new")).expect("b/new"), b"new, before the opaque marker");
    assert_eq!(fs::read(m.join("b/new2")).expect("b/new2"), b"new, after the opaque marker");
    assert_eq!(fs::metadata(m.join("b")).expect("b").mode() & 0o7777, 0o700);
    assert!(!exists("c"), "whiteout hides c");
    assert!(!exists("e"), "whiteout hides directory e");
    assert_eq!(fs::read(m.join("g")).expect("g"), b"same layer as its whiteout");
    assert!(!exists("never-existed"));
    assert!(exists("f"));
    let mut top: Vec<_> = fs::read_dir(m).expect("ls").map(|e| e.expect("e").file_name()).collect();
    top.sort();
    assert_eq!(top, ["a", "b", "f", "g"], "no whiteout file is visible");
}

/// Unmounts on drop, so a failing assertion does not leave a mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn overlay_whiteouts_through_a_real_overlay_mount() {
    if !root_or_skip("overlay_whiteouts_through_a_real_overlay_mount") {
        return;
    }
    let t = tmp();
    let (l1, l2, merged) = (t.path().join("l1"), t.path().join("l2"), t.path().join("merged"));
    for d in [&l1, &l2, &merged] {
        fs::create_dir(d).expect("mkdir");
    }
    unpack_layer(&lower_layer()[..], &l1, &overlay_opts()).expect("lower");
    let stats = unpack_layer(&upper_layer()[..], &l2, &overlay_opts()).expect("upper");
    assert_eq!(stats.whiteouts, 6);
    assert!(stats.notes.iter().any(|n| n.contains(".wh.g") && n.contains("whiteout ignored")), "{:?}", stats.notes);

    // The representation overlayfs reads.
    let wh = fs::symlink_metadata(l2.join("a/gone")).expect("whiteout device");
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert_eq!(lgetxattr(&l2.join("b"), "trusted.overlay.opaque").as_deref(), Some(&b"y"[..]));
    assert!(fs::symlink_metadata(l2.join("c")).expect("c").file_type().is_char_device());
    assert!(fs::symlink_metadata(l2.join(".wh.c")).is_err());

    let opts = format!("lowerdir={}:{}", l2.display(), l1.display());
    nix::mount::mount(Some("overlay"), &merged, Some("overlay"), nix::mount::MsFlags::MS_RDONLY, Some(opts.as_str()))
        .expect("mount overlay");
    let guard = Mounted(merged.clone());
    check_merged(&merged);
    drop(guard);
}

#[test]
fn apply_mode_whiteouts_delete() {
    if !root_or_skip("apply_mode_whiteouts_delete") {
        return;
    }
    let t = tmp();
    let dir = t.path().join("rootfs");
    fs::create_dir(&dir).expect("mkdir");
    unpack_layer(&lower_layer()[..], &dir, &apply_opts()).expect("lower");
    let stats = unpack_layer(&upper_layer()[..], &dir, &apply_opts()).expect("upper");
    assert!(stats.notes.iter().any(|n| n.contains(".wh.g")), "{:?}", stats.notes);
    check_merged(&dir);
    assert_eq!(lgetxattr(&dir.join("b"), "trusted.overlay.opaque"), None);
}

#[test]
fn overlay_mode_needs_an_empty_directory() {
    let t = tmp();
    fs::write(t.path().join("stray"), b"").expect("write");
    let tar = Layer::new().file("a", a(0o644), b"a").tar();
    let err = unpack_layer(&tar[..], t.path(), &UnpackOptions::default()).expect_err("not empty");
    assert!(matches!(err, UnpackError::DestNotEmpty { .. }), "{err}");
    // Apply mode stacks on what is there.
    unpack_layer(&tar[..], t.path(), &UnpackOptions { whiteouts: WhiteoutMode::Apply, ..UnpackOptions::default() })
        .expect("apply");
}

fn many_files() -> Vec<u8> {
    let mut l = Layer::new().dir("data", a(0o755));
    for i in 0..200 {
        let body = format!("file {i} ").repeat(i * 7 + 1);
        l = l.file(&format!("data/{i:03}"), a(0o644), body.as_bytes());
    }
    l.tar()
}

fn check_many(dir: &Path) {
    for i in [0usize, 99, 199] {
        let body = format!("file {i} ").repeat(i * 7 + 1);
        assert_eq!(fs::read(dir.join(format!("data/{i:03}"))).expect("file"), body.as_bytes());
    }
    assert_eq!(fs::read_dir(dir.join("data")).expect("ls").count(), 200);
}

#[test]
fn gzip_with_several_members() {
    let tar = many_files();
    // Split mid-entry: a reader that stops after the first member would truncate the layer.
    let cut = tar.len() / 3 + 123;
    let mut blob = gzip(&tar[..cut]);
    blob.extend(gzip(&tar[cut..cut * 2]));
    blob.extend(gzip(&tar[cut * 2..]));
    let t = tmp();
    let opts = UnpackOptions {
        media_type: Some("application/vnd.oci.image.layer.v1.tar+gzip".into()),
        expected_diff_id: Some(sha256(&tar)),
        ..UnpackOptions::default()
    };
    let stats = unpack_layer(&blob[..], t.path(), &opts).expect("unpack");
    assert_eq!(stats.compression, Compression::Gzip);
    assert_eq!((stats.diff_id, stats.bytes), (sha256(&tar), tar.len() as u64));
    assert!(stats.notes.is_empty(), "{:?}", stats.notes);
    check_many(t.path());
}

#[test]
fn zstd_with_several_frames() {
    let tar = many_files();
    let cut = tar.len() / 2 + 7;
    let mut blob = zstd::encode_all(&tar[..cut], 3).expect("zstd");
    blob.extend(zstd::encode_all(&tar[cut..], 3).expect("zstd"));
    let t = tmp();
    let stats = unpack_layer(&blob[..], t.path(), &UnpackOptions::default()).expect("unpack");
    assert_eq!(stats.compression, Compression::Zstd);
    assert_eq!(stats.diff_id, sha256(&tar));
    check_many(t.path());
}

#[test]
fn digest_covers_everything_after_the_tar_end() {
    let mut tar = Layer::new().file("a", a(0o644), b"a").tar();
    tar.extend_from_slice(&[0u8; 10 * 512]); // extra padding, as some tools write
    tar.extend_from_slice(b"trailing bytes after the end of the archive");
    for (blob, comp) in [(tar.clone(), Compression::None), (gzip(&tar), Compression::Gzip)] {
        let t = tmp();
        let stats = unpack_layer(&blob[..], t.path(), &UnpackOptions::default()).expect("unpack");
        assert_eq!(stats.compression, comp);
        assert_eq!(stats.diff_id, sha256(&tar));
        assert_eq!(stats.bytes, tar.len() as u64);
    }
}

#[test]
fn diff_id_mismatch_is_one_clear_line() {
    let tar = Layer::new().file("a", a(0o644), b"a").tar();
    let wrong = sha256(b"something else");
    let t = tmp();
    let opts = UnpackOptions { expected_diff_id: Some(wrong.clone()), ..UnpackOptions::default() };
    let err = unpack_layer(&tar[..], t.path(), &opts).expect_err("mismatch");
    let msg = err.to_string();
    assert!(matches!(err, UnpackError::DiffIdMismatch { .. }), "{msg}");
    assert!(msg.contains(&wrong) && msg.contains(&sha256(&tar)) && !msg.contains('\n'), "{msg}");
    // The caller removes the partial directory.
    fs::remove_dir_all(t.path()).expect("remove");

    assert!(verify_diff_id(&sha256(&tar), &sha256(&tar)).is_ok());
    assert!(matches!(verify_diff_id(&sha256(&tar), &wrong), Err(UnpackError::DiffIdMismatch { .. })));
    assert!(matches!(verify_diff_id(&sha256(&tar), "sha256:ABC"), Err(UnpackError::InvalidDigest(_))));
    assert!(matches!(verify_diff_id(&sha256(&tar), "md5:00"), Err(UnpackError::InvalidDigest(_))));
}

#[test]
fn media_type_is_a_hint() {
    let tar = Layer::new().file("a", a(0o644), b"a").tar();
    let t = tmp();
    let opts = UnpackOptions {
        media_type: Some("application/vnd.oci.image.layer.v1.tar+zstd".into()),
        ..UnpackOptions::default()
    };
    let stats = unpack_layer(&gzip(&tar)[..], t.path(), &opts).expect("magic wins");
    assert_eq!(stats.compression, Compression::Gzip);
    assert!(stats.notes.iter().any(|n| n.contains("media type says zstd")), "{:?}", stats.notes);

    let t = tmp();
    let opts = UnpackOptions {
        media_type: Some("application/vnd.oci.image.config.v1+json".into()),
        ..UnpackOptions::default()
    };
    let err = unpack_layer(&tar[..], t.path(), &opts).expect_err("not a layer");
    assert!(matches!(err, UnpackError::NotALayer(_)), "{err}");
}

#[test]
fn corrupt_and_truncated_streams_fail() {
    let tar = many_files();
    let gz = gzip(&tar);
    // Truncated gzip.
    let t = tmp();
    let err = unpack_layer(&gz[..gz.len() / 2], t.path(), &UnpackOptions::default()).expect_err("truncated");
    assert!(matches!(err, UnpackError::Stream { .. }), "{err}");
    assert!(!err.to_string().contains('\n'));
    // A flipped byte in the gzip trailer (CRC): found only by reading to the end.
    let mut bad = gz.clone();
    let n = bad.len();
    bad[n - 6] ^= 0xff;
    let t = tmp();
    let err = unpack_layer(&bad[..], t.path(), &UnpackOptions::default()).expect_err("bad crc");
    assert!(matches!(err, UnpackError::Stream { .. }), "{err}");
    // Unsupported compression.
    let t = tmp();
    let err = unpack_layer(&b"BZh91AY&SY"[..], t.path(), &UnpackOptions::default()).expect_err("bzip2");
    assert!(matches!(err, UnpackError::UnsupportedCompression("bzip2")), "{err}");
}

#[test]
fn duplicate_entries_follow_the_changeset_rules() {
    // OCI "changeset over existing files": dir+dir merge, anything else is replaced.
    let tar = Layer::new()
        .file("x", a(0o644), b"first")
        .file("x", a(0o600), b"second")
        .dir("d", a(0o755))
        .file("d/in", a(0o644), b"in")
        .dir("d", a(0o700))
        .dir("gone", a(0o755))
        .file("gone/y", a(0o644), b"y")
        .file("gone", a(0o644), b"now a file")
        .tar();
    let t = tmp();
    unpack_layer(&tar[..], t.path(), &UnpackOptions::default()).expect("unpack");
    assert_eq!(fs::read(t.path().join("x")).expect("x"), b"second");
    assert_eq!(fs::metadata(t.path().join("x")).expect("x").mode() & 0o7777, 0o600);
    assert_eq!(fs::read(t.path().join("d/in")).expect("d/in"), b"in");
    assert_eq!(fs::metadata(t.path().join("d")).expect("d").mode() & 0o7777, 0o700);
    assert_eq!(fs::read(t.path().join("gone")).expect("gone"), b"now a file");
}
