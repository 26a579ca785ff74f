//! Hostile layers, end to end: each known tar attack on unpackers, in a hand-made OCI image
//! pushed to a real registry (Debian's docker-registry on 127.0.0.1, from skiff-tests'
//! registry fixture), must fail `skiff pull` with one clear line naming the entry, store
//! nothing (no image record, no unpacked layer) and leave the host untouched: a sentinel
//! directory next to the store, which the malicious links point at by absolute path, keeps
//! its files, contents, modes, times, link counts and xattrs, and gains nothing. The unpacker
//! is unit-tested against the same shapes in `images/src/unpack/tests.rs`; this is the same
//! promise through the whole pull. Run as root.
//!
//! The layers are written header by header (GNU tar headers, names and link names copied
//! into the raw fields, GNU long-name records for long ones), since the `tar` crate's
//! builder refuses `..` in names. A benign image made by the same code must pull fine, so
//! the failures are the attacks', not a broken image's.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use flate2::write::GzEncoder;
use serde_json::{json, Value};
use skiff_tests::registry::{Registry, OCI_INDEX, OCI_MANIFEST};
use skiff_tests::{blob_digest, oci_arch, Scratch};
use tar::{EntryType, Header};

const TIMEOUT: Duration = Duration::from_secs(120);
/// 2000-01-01T00:00:00Z, the mtime of every entry.
const EPOCH: u64 = 946_684_800;
const SECRET: &[u8] = b"secret: must not change\n";
const VICTIM: &[u8] = b"victim: must survive\n";
const PWNED: &[u8] = b"pwned";

/// One registry, empty at first, for every test of this file (each pushes its own repository).
fn registry() -> &'static Registry {
    static REG: OnceLock<Registry> = OnceLock::new();
    REG.get_or_init(Registry::empty)
}

// ---------------------------------------------------------------------------------------
// Layers, written by hand
// ---------------------------------------------------------------------------------------

enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
}

/// A tar entry: a raw name (bytes, copied as they are), what it is and its mode.
struct Entry {
    name: Vec<u8>,
    kind: Kind,
    mode: u32,
}

fn file(name: impl AsRef<[u8]>, data: impl AsRef<[u8]>) -> Entry {
    Entry { name: name.as_ref().to_vec(), kind: Kind::File(data.as_ref().to_vec()), mode: 0o644 }
}

fn dir(name: impl AsRef<[u8]>, mode: u32) -> Entry {
    Entry { name: name.as_ref().to_vec(), kind: Kind::Dir, mode }
}

fn symlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Entry {
    Entry { name: name.as_ref().to_vec(), kind: Kind::Symlink(target.as_ref().to_vec()), mode: 0o777 }
}

fn hardlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Entry {
    Entry { name: name.as_ref().to_vec(), kind: Kind::Hardlink(target.as_ref().to_vec()), mode: 0o644 }
}

fn bytes(p: &Path) -> Vec<u8> {
    p.as_os_str().as_bytes().to_vec()
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Copies `value` into a raw header field. Longer values are truncated here: the caller
/// writes a GNU long-name record first, which readers take instead.
fn set_field(field: &mut [u8], value: &[u8]) {
    field.fill(0);
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// A GNU `././@LongLink` record ('L': the next entry's name, 'K': its link name).
fn long_name(b: &mut tar::Builder<Vec<u8>>, kind: u8, value: &[u8]) {
    let mut h = Header::new_gnu();
    set_field(&mut h.as_old_mut().name, b"././@LongLink");
    h.set_entry_type(EntryType::new(kind));
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(value.len() as u64 + 1);
    h.set_cksum();
    b.append(&h, cat(&[value, b"\0"]).as_slice()).expect("append a long-name record");
}

/// The uncompressed layer: the entries in order, then the end-of-archive blocks.
fn layer_tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = Header::new_gnu();
        let (ty, data, link): (EntryType, &[u8], Option<&[u8]>) = match &e.kind {
            Kind::File(d) => (EntryType::Regular, d, None),
            Kind::Dir => (EntryType::Directory, b"", None),
            Kind::Symlink(t) => (EntryType::Symlink, b"", Some(t)),
            Kind::Hardlink(t) => (EntryType::Link, b"", Some(t)),
        };
        if e.name.len() > h.as_old().name.len() {
            long_name(&mut b, b'L', &e.name);
        }
        set_field(&mut h.as_old_mut().name, &e.name);
        if let Some(t) = link {
            if t.len() > h.as_old().linkname.len() {
                long_name(&mut b, b'K', t);
            }
            set_field(&mut h.as_old_mut().linkname, t);
        }
        h.set_entry_type(ty);
        h.set_mode(e.mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(EPOCH);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).expect("append an entry");
    }
    b.into_inner().expect("finish the tar")
}

/// A one-layer image as an OCI image layout in `dir`, tagged `1`.
struct Image {
    layout: PathBuf,
    manifest_digest: String,
    diff_id: String,
}

fn put_blob(layout: &Path, data: &[u8]) -> (String, usize) {
    let d = blob_digest(data);
    fs::write(layout.join("blobs/sha256").join(d.trim_start_matches("sha256:")), data).unwrap();
    (d, data.len())
}

fn build_image(layout: &Path, entries: &[Entry]) -> Image {
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let tar = layer_tar(entries);
    let diff_id = blob_digest(&tar);
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let (layer, layer_size) = put_blob(layout, &gz);
    let config = json!({
        "created": "2000-01-01T00:00:00Z",
        "architecture": oci_arch(),
        "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "2000-01-01T00:00:00Z", "created_by": "agent/tests/hostile_layers.rs"}],
    });
    let (config, config_size) = put_blob(layout, &serde_json::to_vec(&config).unwrap());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = put_blob(layout, &serde_json::to_vec(&manifest).unwrap());
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": "1"},
        }],
    });
    fs::write(layout.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    Image { layout: layout.to_path_buf(), manifest_digest, diff_id }
}

// ---------------------------------------------------------------------------------------
// The host: a store and, next to it, the sentinel
// ---------------------------------------------------------------------------------------

/// A test's directory: `root/` (the store) and `host/` (the sentinel directory, outside the
/// store) with `victim` and `secret` in it; the image layout and auth file live elsewhere.
struct Host {
    dir: Scratch,
    work: Scratch,
}

impl Host {
    fn new() -> Host {
        skiff_tests::require_root();
        let h = Host { dir: Scratch::new("hostile"), work: Scratch::new("hostile-work") };
        fs::create_dir(h.root()).unwrap();
        fs::create_dir(h.sentinel_dir()).unwrap();
        fs::write(h.victim(), VICTIM).unwrap();
        fs::write(h.secret(), SECRET).unwrap();
        fs::set_permissions(h.victim(), fs::Permissions::from_mode(0o640)).unwrap();
        fs::set_permissions(h.secret(), fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(h.sentinel_dir(), fs::Permissions::from_mode(0o750)).unwrap();
        h
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// The sentinel directory.
    fn sentinel_dir(&self) -> PathBuf {
        self.dir.join("host")
    }

    fn victim(&self) -> PathBuf {
        self.sentinel_dir().join("victim")
    }

    /// The sentinel file.
    fn secret(&self) -> PathBuf {
        self.sentinel_dir().join("secret")
    }

    /// `../` repeated often enough to climb from anywhere in the store to `/`.
    fn climb(&self) -> Vec<u8> {
        b"../".repeat(self.root().components().count() + 4)
    }

    /// `path` (absolute) as a relative path with enough `../` to reach it from the layer.
    fn relative(&self, path: &Path) -> Vec<u8> {
        cat(&[&self.climb(), &bytes(path)[1..]])
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_skiff"));
        c.arg("--root")
            .arg(self.root())
            .args(args)
            .env("REGISTRY_AUTH_FILE", self.work.join("auth.json"))
            .env_remove("SKIFF_ROOT")
            .env_remove("SKIFF_INSECURE_REGISTRIES")
            .current_dir(self.work.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        skiff_tests::skiff_output_within(self.command(args).spawn().expect("spawn skiff"), TIMEOUT)
    }

    fn images(&self) -> Vec<Value> {
        let o = self.run(&["images", "--json"]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "skiff images --json: {}\n{}", o.status, String::from_utf8_lossy(&o.stderr));
        match serde_json::from_str(&out) {
            Ok(Value::Array(a)) => a,
            other => panic!("images --json is not an array: {other:?}\n{out}"),
        }
    }

    /// Builds the image in the work directory and pushes it as `evil/<name>:1`; returns the
    /// reference to pull.
    fn push(&self, name: &str, entries: &[Entry]) -> (String, Image) {
        let img = build_image(&self.work.join("layout"), entries);
        let reg = registry();
        let repo = format!("evil/{name}");
        // --preserve-digests: the registry gets our bytes, not a re-encoding of them.
        reg.push(&format!("oci:{}:1", img.layout.display()), &format!("{repo}:1"), &["--preserve-digests"]).ok();
        assert_eq!(reg.manifest(&repo, "1").2, img.manifest_digest, "the registry serves our manifest");
        (reg.image(&format!("{repo}:1")), img)
    }
}

// ---------------------------------------------------------------------------------------
// Snapshots: what "untouched" means
// ---------------------------------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    /// Octal.
    mode: String,
    uid: u32,
    gid: u32,
    ino: u64,
    nlink: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    /// A file's content or a symlink's target (as text: the sentinels' contents are).
    content: String,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn xattrs(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 64 * 1024];
    // SAFETY: the buffer is valid for its length; the path is NUL-terminated.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return Vec::new();
    }
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).unwrap();
        let mut v = vec![0u8; 64 * 1024];
        // SAFETY: as above.
        let len = unsafe { libc::lgetxattr(c.as_ptr(), cname.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        v.truncate(len.max(0) as usize);
        out.push((name.to_vec(), v));
    }
    out.sort();
    out
}

fn node(p: &Path) -> Node {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    let ft = m.file_type();
    let (kind, content) = if ft.is_symlink() {
        ("symlink", fs::read_link(p).unwrap().to_string_lossy().into_owned())
    } else if ft.is_file() {
        ("file", String::from_utf8_lossy(&fs::read(p).unwrap()).into_owned())
    } else if ft.is_dir() {
        ("dir", String::new())
    } else {
        ("special", String::new())
    };
    Node {
        kind,
        mode: format!("{:04o}", m.mode() & 0o7777),
        uid: m.uid(),
        gid: m.gid(),
        ino: m.ino(),
        nlink: m.nlink(),
        size: if ft.is_dir() { 0 } else { m.size() },
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
        content,
        xattrs: xattrs(p),
    }
}

/// Everything under `dir` (and `dir` itself, as ""), without following symlinks, except the
/// subtree `skip`.
fn snapshot(dir: &Path, skip: &Path) -> BTreeMap<PathBuf, Node> {
    fn walk(base: &Path, p: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, Node>) {
        if p == skip {
            return;
        }
        let n = node(p);
        let is_dir = n.kind == "dir";
        out.insert(p.strip_prefix(base).unwrap().to_path_buf(), n);
        if is_dir {
            for e in fs::read_dir(p).unwrap().flatten() {
                walk(base, &e.path(), skip, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, skip, &mut out);
    out
}

/// What changed between two snapshots, one line each.
fn changes(before: &BTreeMap<PathBuf, Node>, after: &BTreeMap<PathBuf, Node>) -> Vec<String> {
    let mut v = Vec::new();
    for (p, a) in after {
        match before.get(p) {
            None => v.push(format!("new: {} {a:?}", p.display())),
            Some(b) if b != a => v.push(format!("changed: {}\n  before {b:?}\n  after  {a:?}", p.display())),
            Some(_) => {}
        }
    }
    for p in before.keys().filter(|p| !after.contains_key(*p)) {
        v.push(format!("gone: {}", p.display()));
    }
    v
}

/// Entries under `dir` named `pwned` or holding exactly "pwned" (the attacks' payload).
fn payloads(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = fs::symlink_metadata(&p) else { continue };
        if p.file_name().is_some_and(|n| n == "pwned") || (m.is_file() && fs::read(&p).is_ok_and(|c| c == PWNED)) {
            out.push(p.clone());
        }
        if m.is_dir() {
            stack.extend(fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
        }
    }
    out
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------
// The attack runner
// ---------------------------------------------------------------------------------------

/// Pushes a one-layer image made of `entries` as `evil/<name>:1`, pulls it, and checks the
/// pull failed cleanly on entry `offending` with the host untouched.
fn attack(name: &str, layer: impl FnOnce(&Host) -> (Vec<Entry>, Vec<u8>)) {
    let host = Host::new();
    let (entries, offending) = layer(&host);
    let offending = String::from_utf8_lossy(&offending).into_owned();
    let (image, img) = host.push(name, &entries);
    let root = host.root();
    let before = snapshot(host.path(), &root);
    assert_eq!(fs::read(host.victim()).unwrap(), VICTIM);

    let o = host.run(&["pull", "--quiet", &image]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let after = snapshot(host.path(), &root);
    let changed = changes(&before, &after);
    let found = payloads(host.path());

    assert!(
        !o.status.success(),
        "{name}: THE PULL SUCCEEDED (layer {}); host changes: {changed:#?}; payloads: {found:?}; \
         images: {:?}\nstderr: {err}",
        img.diff_id,
        host.images().iter().map(|i| i["reference"].to_string()).collect::<Vec<_>>()
    );
    assert!(!err.contains("panicked"), "{name}: skiff panicked:\n{err}");
    assert_eq!(o.status.code(), Some(1), "{name}: exit status {}\n{err}", o.status);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{name}: one line on stderr, got:\n{err}");
    let line = lines[0];
    assert!(line.starts_with("skiff: error: "), "{name}: {line}");
    let named = format!("layer entry {offending:?}");
    assert!(line.contains(&named), "{name}: the error names {named}: {line}");

    assert!(changed.is_empty(), "{name}: the host changed: {changed:#?}");
    assert!(found.is_empty(), "{name}: the payload is on disk: {found:?}");
    assert_eq!(host.images(), Vec::<Value>::new(), "{name}: no image is recorded");
    let layers = names(&root.join("layers"));
    assert!(layers.is_empty() || layers == ["sha256"], "{name}: layers/ holds {layers:?}");
    assert_eq!(names(&root.join("layers/sha256")), Vec::<String>::new(), "{name}: no layer is stored");
    let partial: Vec<String> = names(&root.join("tmp")).into_iter().filter(|n| n.starts_with("unpack-")).collect();
    assert!(partial.is_empty(), "{name}: partial unpacks left: {partial:?}");
    eprintln!("{name}: {line}");
}

// ---------------------------------------------------------------------------------------
// The attacks
// ---------------------------------------------------------------------------------------

/// RUSTSEC-2018-0002 (tar-rs): a symlink, then a file of the same name written through it.
#[test]
fn rustsec_2018_0002_file_through_symlink() {
    attack("rustsec-2018-0002", |h| (vec![symlink("x", bytes(&h.victim())), file("x", PWNED)], b"x".to_vec()));
}

/// RUSTSEC-2021-0080 (tar-rs): a symlink to `..`, then a file under it.
#[test]
fn rustsec_2021_0080_child_of_symlink_to_parent() {
    attack("rustsec-2021-0080-dotdot", |_| (vec![symlink("up", ".."), file("up/pwned", PWNED)], b"up/pwned".to_vec()));
}

/// RUSTSEC-2021-0080, the symlink pointing at the host directory itself.
#[test]
fn rustsec_2021_0080_child_of_symlink_to_host_dir() {
    attack("rustsec-2021-0080-abs", |h| {
        (vec![symlink("up", bytes(&h.sentinel_dir())), file("up/pwned", PWNED)], b"up/pwned".to_vec())
    });
}

/// CVE-2021-32760 (containerd): a symlink to a host file, then a 0777 directory of the same
/// name (a naive unpacker chmods the target).
#[test]
fn cve_2021_32760_chmod_through_symlink() {
    attack("cve-2021-32760", |h| (vec![symlink("m", bytes(&h.secret())), dir("m/", 0o777)], b"m/".to_vec()));
}

/// umoci CVE-2021-29136: the layer root `.` as a symlink to a host directory, then a file.
#[test]
fn umoci_cve_2021_29136_root_as_symlink() {
    attack("umoci-cve-2021-29136", |h| {
        (vec![symlink(".", bytes(&h.sentinel_dir())), file("pwned", PWNED)], b".".to_vec())
    });
}

/// A whiteout under a symlinked parent: a naive unpacker deletes the host's `victim`.
#[test]
fn whiteout_under_symlinked_parent() {
    attack("whiteout-symlinked-parent", |h| {
        (vec![symlink("link", bytes(&h.sentinel_dir())), file("link/.wh.victim", "")], b"link/.wh.victim".to_vec())
    });
}

/// An opaque whiteout under a symlinked parent: a naive unpacker marks the host directory
/// opaque (or, applying it, empties it).
#[test]
fn opaque_whiteout_under_symlinked_parent() {
    attack("opaque-symlinked-parent", |h| {
        (vec![symlink("link", bytes(&h.sentinel_dir())), file("link/.wh..wh..opq", "")], b"link/.wh..wh..opq".to_vec())
    });
}

/// A name with `..` components that climbs out of the layer into the host directory.
#[test]
fn dotdot_path_escapes() {
    attack("dotdot-path", |h| {
        let name = h.relative(&h.sentinel_dir().join("pwned"));
        (vec![file(&name, PWNED)], name)
    });
}

/// A hardlink whose target climbs out to the host's sentinel file with `..`, then a file of
/// the same name (a naive unpacker writes through the link into the host file).
#[test]
fn hardlink_to_dotdot_target() {
    attack("hardlink-dotdot", |h| (vec![hardlink("x", h.relative(&h.secret())), file("x", PWNED)], b"x".to_vec()));
}

/// A hardlink to the host file's absolute path: it means the layer's own path of that name,
/// which is not in the layer.
#[test]
fn hardlink_to_absolute_target() {
    attack("hardlink-abs", |h| (vec![hardlink("x", bytes(&h.secret())), file("x", PWNED)], b"x".to_vec()));
}

// ---------------------------------------------------------------------------------------
// The control
// ---------------------------------------------------------------------------------------

/// A benign image from the same builder pulls fine: links (an absolute one to the host's
/// sentinel too, stored and never followed), a hardlink, whiteouts, a long name.
#[test]
fn benign_image_from_the_same_builder_pulls() {
    let host = Host::new();
    let long = format!("deep/{}", "a".repeat(150));
    let entries = vec![
        dir("etc/", 0o755),
        file("etc/hello", "hello\n"),
        symlink("etc/link-rel", "hello"),
        symlink("abs-host", bytes(&host.victim())),
        hardlink("etc/hard", "etc/hello"),
        dir("open/", 0o777),
        file("etc/.wh.gone", ""),
        dir("opq/", 0o755),
        file("opq/.wh..wh..opq", ""),
        file("opq/kept", "kept\n"),
        dir("./deep/", 0o755),
        file(&long, "long\n"),
        symlink("deep/long-link", format!("/{long}/{}", "b".repeat(80))),
    ];
    let (image, img) = host.push("control", &entries);
    let before = snapshot(host.path(), &host.root());

    let o = host.run(&["pull", "--quiet", &image]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "the benign image must pull: {}\n{err}", o.status);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), img.manifest_digest);
    assert!(err.is_empty(), "nothing on stderr with --quiet: {err}");

    let imgs = host.images();
    assert_eq!(imgs.len(), 1, "{imgs:?}");
    assert_eq!(imgs[0]["reference"], image);
    let diff_ids: Vec<&str> =
        imgs[0]["layers"].as_array().unwrap().iter().map(|l| l["diff_id"].as_str().unwrap()).collect();
    assert_eq!(diff_ids, [img.diff_id.as_str()]);
    let l = host.root().join("layers/sha256").join(img.diff_id.trim_start_matches("sha256:"));
    assert_eq!(fs::read(l.join("etc/hello")).unwrap(), b"hello\n");
    assert_eq!(fs::read_link(l.join("etc/link-rel")).unwrap(), Path::new("hello"));
    assert_eq!(fs::read_link(l.join("abs-host")).unwrap(), host.victim());
    assert_eq!(fs::metadata(l.join("etc/hard")).unwrap().ino(), fs::metadata(l.join("etc/hello")).unwrap().ino());
    assert_eq!(fs::metadata(l.join("open")).unwrap().mode() & 0o7777, 0o777);
    let wh = fs::symlink_metadata(l.join("etc/gone")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0, "etc/.wh.gone is an overlay whiteout");
    assert_eq!(xattrs(&l.join("opq")), [(b"trusted.overlay.opaque".to_vec(), b"y".to_vec())]);
    assert_eq!(fs::read(l.join("opq/kept")).unwrap(), b"kept\n");
    assert_eq!(fs::read(l.join(&long)).unwrap(), b"long\n");
    assert_eq!(fs::read_link(l.join("deep/long-link")).unwrap(), Path::new(&format!("/{long}/{}", "b".repeat(80))));

    let changed = changes(&before, &snapshot(host.path(), &host.root()));
    assert!(changed.is_empty(), "the host changed: {changed:#?}");
    assert_eq!(fs::read(host.victim()).unwrap(), VICTIM);
}
