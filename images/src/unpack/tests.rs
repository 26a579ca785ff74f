//! Attack-shaped layers: each must fail with a one-line error naming the entry and leave
//! everything outside the layer directory as it was. Every case runs with openat2 and with
//! the component-walk fallback, in both whiteout modes. (Normal content, overlay mounts,
//! compression and diff_id checks are in `images/tests/unpack.rs`.)

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{unpack_with, UnpackError, UnpackOptions, WhiteoutMode};

/// A tar written header by header, so names the `tar` crate's builder would refuse
/// (`..`, absolute paths) can be crafted.
struct Tb(Vec<u8>);

impl Tb {
    fn new() -> Self {
        Tb(Vec::new())
    }

    fn entry(mut self, ty: u8, path: &str, link: &str, mode: u32, data: &[u8]) -> Self {
        let mut h = tar::Header::new_gnu();
        {
            let g = h.as_gnu_mut().expect("gnu header");
            assert!(path.len() <= 100 && link.len() <= 100, "test names must fit the header");
            g.name[..path.len()].copy_from_slice(path.as_bytes());
            g.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(tar::EntryType::new(ty));
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        self
    }

    fn file(self, path: &str, data: &[u8]) -> Self {
        self.entry(b'0', path, "", 0o644, data)
    }

    fn dir(self, path: &str, mode: u32) -> Self {
        self.entry(b'5', path, "", mode, b"")
    }

    fn symlink(self, path: &str, target: &str) -> Self {
        self.entry(b'2', path, target, 0o777, b"")
    }

    fn hardlink(self, path: &str, target: &str) -> Self {
        self.entry(b'1', path, target, 0o644, b"")
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0; 1024]);
        self.0
    }
}

/// A temp dir holding the layer directory and a "host" directory with a sentinel file.
struct Host {
    _tmp: tempfile::TempDir,
    top: PathBuf,
    layer: PathBuf,
    host: PathBuf,
    sentinel: PathBuf,
}

const SENTINEL: &[u8] = b"original host content\n";

impl Host {
    fn new() -> Self {
        let tmp = tempfile::Builder::new().prefix("skiff-unpack-attack").tempdir().expect("tempdir");
        let top = tmp.path().to_path_buf();
        let layer = top.join("layer");
        let host = top.join("host");
        fs::create_dir(&layer).expect("mkdir layer");
        fs::create_dir(&host).expect("mkdir host");
        let sentinel = host.join("sentinel");
        fs::write(&sentinel, SENTINEL).expect("write sentinel");
        fs::set_permissions(&sentinel, fs::Permissions::from_mode(0o640)).expect("chmod sentinel");
        Host { _tmp: tmp, top, layer, host, sentinel }
    }

    fn h(&self) -> String {
        self.host.to_string_lossy().into_owned()
    }

    fn assert_untouched(&self, case: &str) {
        let md = fs::symlink_metadata(&self.sentinel).unwrap_or_else(|e| panic!("{case}: sentinel gone: {e}"));
        assert!(md.is_file(), "{case}: sentinel is no longer a file");
        assert_eq!(fs::read(&self.sentinel).expect("read sentinel"), SENTINEL, "{case}: sentinel content changed");
        assert_eq!(md.mode() & 0o7777, 0o640, "{case}: sentinel mode changed");
        assert_eq!(md.uid(), nix::unistd::geteuid().as_raw(), "{case}: sentinel owner changed");
        assert_eq!(md.nlink(), 1, "{case}: sentinel got hardlinked");
        assert_eq!(names(&self.host), ["sentinel"], "{case}: something was created in the host dir");
        assert_eq!(names(&self.top), ["host", "layer"], "{case}: something was created next to the layer");
        let host_md = fs::metadata(&self.host).expect("host dir");
        assert_eq!(host_md.mode() & 0o7777, 0o755, "{case}: host dir mode changed");
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("dirent").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs one attack in every mode; returns the error of the openat2/overlay run.
fn attack(case: &str, entry: &str, build: impl Fn(&Host) -> Vec<u8>) -> String {
    let mut first = None;
    for use_openat2 in [true, false] {
        for mode in [WhiteoutMode::Overlay, WhiteoutMode::Apply] {
            let h = Host::new();
            fs::set_permissions(&h.host, fs::Permissions::from_mode(0o755)).expect("chmod host");
            let tar = build(&h);
            let opts = UnpackOptions { whiteouts: mode, ..UnpackOptions::default() };
            let what = format!("{case} (openat2: {use_openat2}, {mode:?})");
            let res = unpack_with(&tar[..], &h.layer, &opts, use_openat2);
            let err = match res {
                Ok(_) => panic!("{what}: the unpack succeeded"),
                Err(e) => e,
            };
            let msg = err.to_string();
            assert!(!msg.contains('\n'), "{what}: multi-line error: {msg}");
            assert!(msg.contains(&format!("{entry:?}")), "{what}: error does not name entry {entry:?}: {msg}");
            assert!(
                matches!(err, UnpackError::Unsafe { .. } | UnpackError::Invalid { .. }),
                "{what}: unexpected kind: {msg}"
            );
            h.assert_untouched(&what);
            first.get_or_insert(msg);
        }
    }
    let msg = first.unwrap_or_default();
    eprintln!("{case}: {msg}");
    msg
}

#[test]
fn rustsec_2018_0002_write_through_symlink() {
    attack("symlink then file of the same name", "evil", |h| {
        Tb::new().symlink("evil", &format!("{}/sentinel", h.h())).file("evil", b"pwned\n").finish()
    });
}

#[test]
fn rustsec_2018_0002_write_through_hardlink() {
    attack("hardlink then file of the same name", "h", |_| {
        Tb::new().file("target", b"inside\n").hardlink("h", "target").file("h", b"pwned\n").finish()
    });
}

#[test]
fn rustsec_2021_0080_symlink_dotdot_parent() {
    let msg = attack("symlink -> .. used as a parent", "up/sentinel", |_| {
        Tb::new().symlink("up", "..").file("up/sentinel", b"pwned\n").finish()
    });
    assert!(msg.contains("symlink"), "{msg}");
    attack("symlink -> ../host used as a parent", "up/x", |_| {
        Tb::new().symlink("up", "../host").file("up/x", b"pwned\n").finish()
    });
    attack("nested: dir/link -> ../.. then dir/link/x", "d/l/x", |_| {
        Tb::new().dir("d", 0o755).symlink("d/l", "../..").file("d/l/x", b"pwned\n").finish()
    });
}

#[test]
fn absolute_symlink_used_as_parent() {
    // Creating a symlink with an absolute target is fine; using it as a parent is not.
    attack("absolute symlink used as a parent", "abs/x", |h| {
        Tb::new().symlink("abs", &h.h()).file("abs/x", b"pwned\n").finish()
    });
    attack("absolute symlink used as the parent of a directory", "abs/newdir", |h| {
        Tb::new().symlink("abs", &h.h()).dir("abs/newdir", 0o777).finish()
    });
    attack("absolute symlink used as the parent of a symlink", "abs/l", |h| {
        Tb::new().symlink("abs", &h.h()).symlink("abs/l", "/etc/shadow").finish()
    });
    attack("absolute symlink used as a hardlink's parent", "abs/h", |h| {
        Tb::new().file("f", b"x").symlink("abs", &h.h()).hardlink("abs/h", "f").finish()
    });
}

#[test]
fn cve_2021_32760_chmod_through_symlink() {
    attack("symlink to a host file, then a directory entry of the same name", "s", |h| {
        Tb::new().symlink("s", &format!("{}/sentinel", h.h())).dir("s", 0o777).finish()
    });
    attack("symlink to a host dir, then a directory entry of the same name", "s/", |h| {
        Tb::new().symlink("s", &h.h()).entry(b'5', "s/", "", 0o777, b"").finish()
    });
    attack("symlink to a host file, then a fifo of the same name", "s", |h| {
        Tb::new().symlink("s", &format!("{}/sentinel", h.h())).entry(b'6', "s", "", 0o777, b"").finish()
    });
}

#[test]
fn symlink_mode_and_owner_are_not_applied_through_the_link() {
    // Not an attack that fails: a symlink entry with mode 0777 and a foreign owner is
    // legitimate, but its mode must not reach the target, nor its owner.
    for use_openat2 in [true, false] {
        let h = Host::new();
        fs::set_permissions(&h.host, fs::Permissions::from_mode(0o755)).expect("chmod host");
        let target = format!("{}/sentinel", h.h());
        let mut tar = Tb::new().entry(b'2', "s", &target, 0o4777, b"");
        if is_root() {
            // uid/gid 4242 on the symlink entry
            let mut hdr = tar::Header::new_gnu();
            hdr.as_gnu_mut().expect("gnu").name[..2].copy_from_slice(b"s2");
            hdr.as_gnu_mut().expect("gnu").linkname[..target.len()].copy_from_slice(target.as_bytes());
            hdr.set_entry_type(tar::EntryType::Symlink);
            hdr.set_mode(0o777);
            hdr.set_size(0);
            hdr.set_uid(4242);
            hdr.set_gid(4242);
            hdr.set_cksum();
            tar.0.extend_from_slice(hdr.as_bytes());
        }
        let tar = tar.finish();
        let stats = unpack_with(&tar[..], &h.layer, &UnpackOptions::default(), use_openat2).expect("unpack");
        assert_eq!(stats.entries, if is_root() { 2 } else { 1 });
        assert_eq!(fs::read_link(h.layer.join("s")).expect("readlink"), Path::new(&target));
        if is_root() {
            assert_eq!(fs::symlink_metadata(h.layer.join("s2")).expect("lstat").uid(), 4242);
        }
        h.assert_untouched("symlink with mode/owner");
    }
}

#[test]
fn umoci_cve_2021_29136_dot_symlink() {
    attack("\".\" as a symlink", ".", |h| Tb::new().symlink(".", &h.h()).file("x", b"pwned\n").finish());
    attack("\"./\" as a symlink", "./", |h| Tb::new().symlink("./", &h.h()).file("x", b"pwned\n").finish());
    attack("\"/\" as a symlink", "/", |h| Tb::new().symlink("/", &h.h()).file("x", b"pwned\n").finish());
    attack("\".\" as a hardlink", ".", |_| Tb::new().file("f", b"").hardlink(".", "f").finish());
    attack("\"a/.\" as a symlink", "a/.", |h| Tb::new().dir("a", 0o755).symlink("a/.", &h.h()).finish());
}

#[test]
fn whiteout_under_symlinked_parent() {
    let msg = attack("whiteout below a symlink to a host dir", "link/.wh.sentinel", |h| {
        Tb::new().symlink("link", &h.h()).file("link/.wh.sentinel", b"").finish()
    });
    assert!(msg.contains("\"link\" is a symlink"), "{msg}");
    attack("opaque whiteout below a symlink to a host dir", "link/.wh..wh..opq", |h| {
        Tb::new().symlink("link", &h.h()).file("link/.wh..wh..opq", b"").finish()
    });
    attack("whiteout below a symlink -> ..", "up/host/.wh.sentinel", |_| {
        Tb::new().symlink("up", "..").file("up/host/.wh.sentinel", b"").finish()
    });
}

#[test]
fn dotdot_entries() {
    attack("../ entry", "../escape", |_| Tb::new().file("../escape", b"pwned\n").finish());
    attack("a/../../ entry", "a/../../escape", |_| Tb::new().dir("a", 0o755).file("a/../../escape", b"x").finish());
    attack("../ into the host dir", "../host/sentinel", |_| Tb::new().file("../host/sentinel", b"pwned\n").finish());
    attack("../ directory", "../newdir", |_| Tb::new().dir("../newdir", 0o755).finish());
    attack("../ symlink", "../l", |_| Tb::new().symlink("../l", "/").finish());
    attack("../ whiteout", "../host/.wh.sentinel", |_| Tb::new().file("../host/.wh.sentinel", b"").finish());
    attack("whiteout of ..", ".wh...", |_| Tb::new().file(".wh...", b"").finish());
}

#[test]
fn hardlink_outside() {
    attack("hardlink to ../host/sentinel", "h", |_| Tb::new().hardlink("h", "../host/sentinel").finish());
    attack("hardlink to ../../etc/passwd", "h", |_| Tb::new().hardlink("h", "../../etc/passwd").finish());
    attack("hardlink to an absolute host path", "h", |h| {
        Tb::new().hardlink("h", &format!("{}/sentinel", h.h())).finish()
    });
    attack("hardlink to /etc/passwd", "h", |_| Tb::new().hardlink("h", "/etc/passwd").finish());
    attack("hardlink through a symlinked dir", "h", |h| {
        Tb::new().symlink("l", &h.h()).hardlink("h", "l/sentinel").finish()
    });
    attack("hardlink to a symlink's target name", "h2", |h| {
        // h -> the symlink itself is fine; writing through it later is not.
        Tb::new()
            .symlink("s", &format!("{}/sentinel", h.h()))
            .hardlink("h", "s")
            .hardlink("h2", "h")
            .file("h2", b"x")
            .finish()
    });
    attack("hardlink to a directory", "h", |_| Tb::new().dir("d", 0o755).hardlink("h", "d").finish());
}

#[test]
fn hardlink_then_symlink_then_file() {
    attack("file replaced by a symlink, then written", "f", |h| {
        Tb::new().file("f", b"a").symlink("f", &format!("{}/sentinel", h.h())).file("f", b"pwned").finish()
    });
}

#[test]
fn absolute_entry_names_are_contained() {
    for use_openat2 in [true, false] {
        let h = Host::new();
        fs::set_permissions(&h.host, fs::Permissions::from_mode(0o755)).expect("chmod host");
        let abs = format!("{}/sentinel", h.h());
        let tar = Tb::new().file(&abs, b"pwned\n").file("/etc/skiff-unpack-test", b"inside\n").finish();
        unpack_with(&tar[..], &h.layer, &UnpackOptions::default(), use_openat2).expect("unpack");
        let inside = h.layer.join(abs.trim_start_matches('/'));
        assert_eq!(fs::read(inside).expect("contained file"), b"pwned\n");
        assert_eq!(fs::read(h.layer.join("etc/skiff-unpack-test")).expect("file"), b"inside\n");
        assert!(!Path::new("/etc/skiff-unpack-test").exists());
        h.assert_untouched("absolute entry names");
    }
}

#[test]
fn lower_layer_symlink_is_replaced_not_followed_in_apply_mode() {
    // Apply mode: a symlink from a lower layer replaced by a directory/file of an upper layer
    // is legitimate; the replacement must unlink the symlink, never write through it.
    for use_openat2 in [true, false] {
        let h = Host::new();
        fs::set_permissions(&h.host, fs::Permissions::from_mode(0o755)).expect("chmod host");
        let opts = UnpackOptions { whiteouts: WhiteoutMode::Apply, ..UnpackOptions::default() };
        let lower =
            Tb::new().symlink("d", &h.h()).symlink("f", &format!("{}/sentinel", h.h())).symlink("w", &h.h()).finish();
        unpack_with(&lower[..], &h.layer, &opts, use_openat2).expect("lower");
        let upper = Tb::new().dir("d", 0o777).file("d/x", b"x").file("f", b"new").file(".wh.w", b"").finish();
        unpack_with(&upper[..], &h.layer, &opts, use_openat2).expect("upper");
        assert!(fs::symlink_metadata(h.layer.join("d")).expect("d").is_dir());
        assert_eq!(fs::read(h.layer.join("f")).expect("f"), b"new");
        assert!(fs::symlink_metadata(h.layer.join("w")).is_err());
        h.assert_untouched("apply over lower symlinks");
        // ...but a lower-layer symlink is never a parent.
        let lower2 = Tb::new().symlink("l", &h.h()).finish();
        unpack_with(&lower2[..], &h.layer, &opts, use_openat2).expect("lower2");
        let upper2 = Tb::new().file("l/x", b"pwned").finish();
        let err = unpack_with(&upper2[..], &h.layer, &opts, use_openat2).expect_err("through a lower symlink");
        assert!(err.to_string().contains("\"l\" is a symlink"), "{err}");
        h.assert_untouched("apply through lower symlink");
    }
}

#[test]
fn garbage_is_a_clear_stream_error() {
    let h = Host::new();
    // A second "header" that is not one (bad checksum).
    let mut bad = Tb::new().file("a", b"hello").0;
    bad.extend_from_slice(&[b'x'; 512]);
    let err = unpack_with(&bad[..], &h.layer, &UnpackOptions::default(), true).expect_err("garbage header");
    let msg = err.to_string();
    assert!(msg.contains("after entry \"a\""), "{msg}");
    assert!(!msg.contains('\n'));
}

/// A stream of `head`, then `fill` bytes up to `len` in all, produced as read (never held):
/// the 3 GiB bombs of issue 11 cost nothing to make here. Counts what was read.
struct Lazy {
    head: Vec<u8>,
    len: u64,
    pos: u64,
    fill: u8,
}

impl std::io::Read for Lazy {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min((self.len - self.pos).try_into().unwrap_or(usize::MAX));
        for (i, b) in buf[..n].iter_mut().enumerate() {
            let at = self.pos as usize + i;
            *b = if at < self.head.len() { self.head[at] } else { self.fill };
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Each extension record announcing 3 GiB is refused from its header: the unpacker reads
/// a few chunks of the stream, not the record (nor buffers it), and the error is one short
/// line with the size and the limit.
#[test]
fn three_gib_extension_records_are_refused_from_their_header() {
    for (kind, what, limit) in [
        (b'L', "GNU long name", "4096"),
        (b'K', "GNU long link name", "4096"),
        (b'x', "PAX header", "1048576"),
        (b'g', "PAX global header", "1048576"),
    ] {
        let h = Host::new();
        let mut head = Tb::new().file("ok", b"fine").0;
        let mut hdr = tar::Header::new_gnu();
        hdr.as_gnu_mut().expect("gnu").name[..13].copy_from_slice(b"././@LongLink");
        hdr.set_entry_type(tar::EntryType::new(kind));
        hdr.set_size(3 << 30);
        hdr.set_cksum();
        head.extend_from_slice(hdr.as_bytes());
        let mut stream = Lazy { head, len: (3 << 30) + 4096, pos: 0, fill: b'a' };
        let err = unpack_with(&mut stream, &h.layer, &UnpackOptions::default(), true).expect_err(what);
        let msg = err.to_string();
        assert!(msg.contains(what) && msg.contains("3221225472 bytes") && msg.contains(limit), "{msg}");
        assert!(msg.len() < 300 && !msg.contains('\n'), "{msg}");
        // The pump reads ahead a few 256 KiB chunks: far from 3 GiB.
        assert!(stream.pos < 8 << 20, "{what}: read {} bytes of the stream", stream.pos);
        h.assert_untouched(what);
    }
}

/// A long entry name with terminal escapes is quoted escaped and cut in the error.
#[test]
fn hostile_names_are_escaped_and_cut_in_errors() {
    let h = Host::new();
    let name = format!("\u{1b}]0;pwned\u{7}\u{1b}[2J{}/../x", "a".repeat(3000));
    let mut tar = Vec::new();
    let mut l = tar::Header::new_gnu();
    l.as_gnu_mut().expect("gnu").name[..13].copy_from_slice(b"././@LongLink");
    l.set_entry_type(tar::EntryType::new(b'L'));
    l.set_size(name.len() as u64 + 1);
    l.set_cksum();
    tar.extend_from_slice(l.as_bytes());
    tar.extend_from_slice(name.as_bytes());
    tar.push(0);
    tar.resize(tar.len().div_ceil(512) * 512, 0);
    tar.extend_from_slice(&Tb::new().file("placeholder", b"x").finish());
    let err = unpack_with(&tar[..], &h.layer, &UnpackOptions::default(), true).expect_err("..");
    let msg = err.to_string();
    assert!(msg.len() < 400 && !msg.chars().any(char::is_control), "{msg}");
    assert!(msg.contains("\\u{1b}]0;pwned\\u{7}\\u{1b}[2Jaaa") && msg.contains('…'), "{msg}");
    h.assert_untouched("hostile name");
}
