//! Airgap image import (`skiff load FILE`, and `<root>/preload/` at agent start, as k3s does).
//!
//! # Formats
//!
//! - `docker save` archives: a tar with `manifest.json` (`[{Config, RepoTags, Layers}]`). The old
//!   layout (`<id>/layer.tar`, often symlinks to `<hex>.tar` as skopeo writes them, `<id>.json`
//!   configs) and the layout of Docker 25+ (`blobs/sha256/...`, which is also an OCI layout and
//!   is read as one: it has the real manifests). Layers may be plain tar, gzip or zstd.
//! - OCI image archives: a tar of an OCI image layout (`oci-layout`, `index.json`,
//!   `blobs/sha256/...`), as `skopeo copy ... oci-archive:`, `ctr export`, `buildah push` write.
//! - OCI image layout directories (the same, not tarred), and an unpacked `docker save`.
//! - Any of the tars compressed with gzip or zstd (told by magic bytes, not by file name).
//!
//! # Names
//!
//! OCI: an `index.json` entry is named by its `io.containerd.image.name` annotation (a full
//! reference), else by `org.opencontainers.image.ref.name` read as an image reference with
//! skiff's short-name rules (`busybox` → `docker.io/library/busybox:latest`, so `skiff run
//! busybox` finds it). [`LoadOptions::name`] names unnamed images and serves as the repository of
//! tag-only `ref.name`s (containerd's `--base-name`). `docker save`: every `RepoTags` entry.
//! Entries of `index.json` that share a name are the platforms of one image; an index (also
//! nested) gives the manifest for [`LoadOptions::platform`] among those the archive holds
//! (containerd's matching, as in a pull). An unnamed image is skipped with a warning.
//!
//! # Integrity and crash safety
//!
//! A tar archive is read once, as a stream: its entries come in any order, so every file in it
//! is spooled into `<root>/tmp/load-<pid>-<n>/` while its sha256 is computed (a layer is never
//! held in memory); a `blobs/sha256/<hex>` entry must hash to `<hex>` or the load stops. Blobs
//! the store already has are only hashed. A directory is read on demand, each blob copied into
//! the spool and verified likewise; every file of it is opened beneath it (openat2
//! `RESOLVE_BENEATH`, see [`open_beneath`]): a symlink may point inside the directory (skopeo's
//! `<id>/layer.tar -> ../<hex>.tar`), never out of it, so a layout cannot make skiff store a file
//! of the host. Then the images are assembled and checked as a pull does
//! (manifest → config → `rootfs.diff_ids`, one per layer), the missing layers unpacked into the
//! spool (each verified against its diff_id; a layer already unpacked in the store is verified
//! by hashing its decompressed blob when that blob is new), and only when *every* image of the
//! archive verified is anything moved into the store: blobs (fsync + rename + fsync(dir)),
//! layers (syncfs + rename), then the image records, last. A failed load stores nothing; a
//! crash leaves only the spool in `tmp/` (removed by the next load or `prune`). Layers are keyed
//! by diff_id, so a loaded image shares unpacked layers with a pulled copy of the same image.
//! `docker save` archives carry no manifest: one is synthesized (Docker schema2) from the config
//! and the layers, deterministically, so loading the same archive twice gives the same digest.
//!
//! The store's shared lock is held throughout (a `prune` waits).
//!
//! # Preload
//!
//! [`load_preload_dir`] loads every archive of a directory (names ending in `.tar`, `.tar.gz`,
//! `.tgz`, `.tar.zst`, `.tzst` ... and OCI layout directories; hidden names are ignored), in name
//! order, continuing past a bad one. `<root>/preload.json` remembers what each file gave (its
//! size, mtime and inode, and the references and digests loaded); an unchanged file whose images
//! are all still in the store is skipped. A failed file is tried again next time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use nix::errno::Errno;
use nix::fcntl::{self, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::error::{chain, Error, Result};
use crate::fsutil::{self, FileLock, LockKind};
use crate::manifest::{self, Descriptor, ImageConfig, Manifest, RawDescriptor};
use crate::platform::{self, Candidate, Platform};
use crate::reference::Reference;
use crate::store::{ImageRecord, LayerRecord, Store};
use crate::tarstream::{TarError, TarReader};
use crate::text;
use crate::unpack::{self, UnpackError, UnpackOptions};

/// Largest `index.json`, `manifest.json` or `repositories` accepted.
const MAX_META: u64 = 16 << 20;
/// Deepest nesting of indexes followed.
const MAX_DEPTH: usize = 4;
const ANN_CONTAINERD_NAME: &str = "io.containerd.image.name";
const ANN_REF_NAME: &str = "org.opencontainers.image.ref.name";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// How to load.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The platform to pick from an index (and to warn about other images).
    pub platform: Platform,
    /// Names the images the archive leaves unnamed, and is the repository of OCI `ref.name`s
    /// that are only a tag (`latest` → `NAME:latest`), like containerd's `--base-name`.
    pub name: Option<String>,
    /// Layers unpacked at the same time.
    pub jobs: usize,
}

impl LoadOptions {
    pub fn new(platform: Platform) -> LoadOptions {
        LoadOptions { platform, name: None, jobs: 3 }
    }
}

/// What a load did.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The image records written, in archive order.
    pub images: Vec<ImageRecord>,
    /// What the file was (`OCI archive (gzip)`, `docker save archive`, `OCI layout directory`).
    pub format: String,
    /// Things a user should hear of (an image for another platform, a skipped unnamed image).
    pub warnings: Vec<String>,
}

/// Loads the images of an archive or layout directory (see the module docs) into `store`.
pub fn load(store: &Store, path: &Path, platform: &Platform) -> Result<Vec<ImageRecord>> {
    load_with(store, path, &LoadOptions::new(platform.clone())).map(|l| l.images)
}

/// [`load`] with options; also returns the format and warnings.
pub fn load_with(store: &Store, path: &Path, opts: &LoadOptions) -> Result<Loaded> {
    let base = match &opts.name {
        Some(n) => Some(Reference::parse(n)?),
        None => None,
    };
    let md = fs::metadata(path)
        .map_err(|e| Error::io(format!("reading the archive {}", path.display()), store.root(), e))?;
    let _lock = store.lock(LockKind::Shared, || {})?;
    let spool = Spool::new(store)?;
    let src = if md.is_dir() {
        let fd = open_layout_dir(path)
            .map_err(|e| Error::io(format!("reading the directory {}", path.display()), store.root(), e))?;
        Source::Dir { root: path.to_path_buf(), fd, cache: HashMap::new() }
    } else {
        Source::Tar(TarIndex::default())
    };
    let mut ctx = Ctx { store, file: path, opts, base, spool, src, warnings: Vec::new(), needed: BTreeMap::new() };
    let packing = if md.is_dir() {
        "directory"
    } else {
        let (idx, packing) = scan(&mut ctx)?;
        ctx.src = Source::Tar(idx);
        packing
    };
    let (plans, format) = if ctx.meta("index.json")?.is_some() {
        let f = match packing {
            "directory" => "OCI layout directory".to_string(),
            p => format!("OCI archive{}", if p == "tar" { String::new() } else { format!(" ({p})") }),
        };
        (resolve_oci(&mut ctx)?, f)
    } else if ctx.meta("manifest.json")?.is_some() {
        let f = match packing {
            "directory" => "unpacked docker save directory".to_string(),
            p => format!("docker save archive{}", if p == "tar" { String::new() } else { format!(" ({p})") }),
        };
        (resolve_docker(&mut ctx)?, f)
    } else {
        return Err(ctx.invalid(
            "is not an image archive (it has no index.json or manifest.json): skiff load takes a `docker save` \
             archive, an OCI archive or OCI layout directory, optionally gzip- or zstd-compressed",
        ));
    };
    if plans.is_empty() {
        return Err(ctx
            .invalid("holds no named image: give the image a name with --name (or tag it before saving the archive)"));
    }
    let layers = unpack_layers(&ctx, &plans)?;
    let images = commit(&ctx, plans, layers)?;
    Ok(Loaded { images, format, warnings: ctx.warnings })
}

// ---- spool ------------------------------------------------------------------------------------

/// `<root>/tmp/load-<pid>-<n>/`: the archive's files while a load runs, removed when dropped.
/// `<root>/tmp/load-<pid>-<n>.lock` is held from before the directory exists until after it is
/// gone, so a directory whose lock is free is the leftover of a crashed load (removed by the
/// next load, or by `prune`).
struct Spool {
    dir: PathBuf,
    lock_path: PathBuf,
    _lock: FileLock,
    next: u64,
}

impl Spool {
    fn new(store: &Store) -> Result<Spool> {
        let tmp = store.tmp();
        // A killed load may also have left the temp file of a record it was writing.
        fsutil::remove_stale_writes(&tmp);
        if let Ok(rd) = fs::read_dir(&tmp) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("load-") && !name.ends_with(".lock") && e.path().is_dir() {
                    let lock_path = tmp.join(format!("{name}.lock"));
                    if let Ok(Some(_l)) = FileLock::try_lock(&lock_path, LockKind::Exclusive) {
                        if fsutil::remove_tree(&e.path()).is_ok() {
                            let _ = fs::remove_file(&lock_path);
                        }
                    }
                }
            }
        }
        loop {
            let name = format!("load-{}-{}", std::process::id(), fsutil::unique());
            let (dir, lock_path) = (tmp.join(&name), tmp.join(format!("{name}.lock")));
            let err = |e| Error::io(format!("creating {}", dir.display()), store.root(), e);
            // Taken (a pid reused after a crash, with a cleanup running): try another name.
            let Some(lock) = FileLock::try_lock(&lock_path, LockKind::Exclusive).map_err(err)? else { continue };
            match fs::create_dir(&dir) {
                Ok(()) => return Ok(Spool { dir, lock_path, _lock: lock, next: 0 }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    // A crashed load's spool under this name: ours now, since we hold its lock.
                    fsutil::remove_tree(&dir).map_err(err)?;
                    fs::create_dir(&dir).map_err(err)?;
                    return Ok(Spool { dir, lock_path, _lock: lock, next: 0 });
                }
                Err(e) => return Err(err(e)),
            }
        }
    }

    fn next_file(&mut self) -> PathBuf {
        self.next += 1;
        self.dir.join(format!("f{}", self.next))
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if fsutil::remove_tree(&self.dir).is_ok() {
            let _ = fs::remove_file(&self.lock_path);
        }
    }
}

/// A file of the archive, hashed: spooled (not yet in the store) or already in the store.
#[derive(Clone, Debug)]
struct Item {
    digest: Digest,
    size: u64,
    at: At,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum At {
    Spool(PathBuf),
    Store,
}

/// Where a copy failed: reading the archive or writing the spool.
enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Copies `r` into a new file `dest` (or nowhere), returning the sha256 and length.
fn hash_copy(mut r: impl Read, dest: Option<&Path>) -> std::result::Result<(Digest, u64), CopyError> {
    let mut out = match dest {
        Some(p) => Some(
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(fsutil::PRIVATE_FILE)
                .open(p)
                .map_err(CopyError::Write)?,
        ),
        None => None,
    };
    let mut h = Sha256::new();
    let mut buf = vec![0u8; unpack::BUF_SIZE];
    let mut n = 0u64;
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        h.update(&buf[..k]);
        if let Some(f) = &mut out {
            f.write_all(&buf[..k]).map_err(CopyError::Write)?;
        }
        n += k as u64;
    }
    Ok((Digest::from_sha256(&h.finalize()), n))
}

/// A path inside an archive, normalized: no leading `/` or `./`, no `.` components; `None`
/// when it is empty or has a `..` component.
fn clean(p: &str) -> Option<String> {
    let mut parts = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// A symlink target resolved against the directory of the link (`..` may climb, but not out
/// of the archive).
fn resolve_link(link: &str, target: &str) -> Option<String> {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        let mut v: Vec<&str> = link.split('/').collect();
        v.pop();
        v
    };
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// `blobs/sha256/<hex>` → the digest.
fn blob_path_digest(p: &str) -> Option<Digest> {
    Digest::parse(&format!("sha256:{}", p.strip_prefix("blobs/sha256/")?)).ok()
}

/// The digest a docker-save file name claims: `<hex>.tar`, `<hex>.json` or `blobs/sha256/<hex>`.
fn named_digest(p: &str) -> Option<Digest> {
    if let Some(d) = blob_path_digest(p) {
        return Some(d);
    }
    let base = p.rsplit('/').next()?;
    let stem = base.strip_suffix(".tar").or_else(|| base.strip_suffix(".json"))?;
    Digest::parse(&format!("sha256:{stem}")).ok()
}

/// The files of a tar archive, after one pass.
#[derive(Default)]
struct TarIndex {
    files: HashMap<String, Item>,
    /// Symlinks and hard links: name → target (normalized, relative to the archive root).
    links: HashMap<String, String>,
    /// Small top-level metadata files, in memory.
    meta: HashMap<String, Vec<u8>>,
}

impl TarIndex {
    fn lookup(&self, p: &str) -> Option<&Item> {
        let mut p = p.to_string();
        for _ in 0..16 {
            if let Some(i) = self.files.get(&p) {
                return Some(i);
            }
            p = self.links.get(&p)?.clone();
        }
        None
    }
}

/// Where the archive's files are.
enum Source {
    Tar(TarIndex),
    /// A layout directory: `fd` (O_PATH) is what every file is opened beneath ([`open_beneath`]).
    Dir {
        root: PathBuf,
        fd: OwnedFd,
        cache: HashMap<String, Item>,
    },
}

/// The layout directory `skiff load DIR` reads (the path given may be a symlink itself).
fn open_layout_dir(path: &Path) -> io::Result<OwnedFd> {
    let fd = fcntl::open(path, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
    // SAFETY: open(2) just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Set once openat2(2) turned out to be missing (Linux < 5.6, or filtered by seccomp).
static NO_OPENAT2: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Opens `rel` (a [`clean`] path) for reading beneath the layout directory `dir`, as the tar path
/// resolves an archive's links inside the archive: a symlink is followed only while it stays
/// beneath the directory (openat2 `RESOLVE_BENEATH`; `RESOLVE_NO_MAGICLINKS`), so a layout
/// cannot make skiff read a file of the host (`blobs/sha256/x -> /etc/shadow`, `../../x`) into
/// the store: that fails with EXDEV. Without openat2 no symlink is followed at all (ELOOP).
/// Non-blocking, so a FIFO in the layout cannot hang the load; the caller checks it is a file.
fn open_beneath(dir: &OwnedFd, rel: &str) -> io::Result<File> {
    use std::sync::atomic::Ordering;
    let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK;
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let how =
            OpenHow::new().flags(flags).resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        match fcntl::openat2(dir.as_raw_fd(), rel, how) {
            // SAFETY: openat2(2) just returned this fd and nothing else owns it.
            Ok(fd) => return Ok(unsafe { File::from_raw_fd(fd) }),
            Err(Errno::ENOSYS) | Err(Errno::EPERM) => NO_OPENAT2.store(true, Ordering::Relaxed),
            Err(e) => return Err(e.into()),
        }
    }
    // One component at a time, never following a symlink (`rel` has no `..`: see `clean`).
    let mut cur: Option<OwnedFd> = None;
    let mut comps = rel.split('/').peekable();
    while let Some(c) = comps.next() {
        let at = cur.as_ref().map_or(dir.as_raw_fd(), |f| f.as_raw_fd());
        let last = comps.peek().is_none();
        let f = if last { flags } else { OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC } | OFlag::O_NOFOLLOW;
        let fd = fcntl::openat(Some(at), c, f, Mode::empty())?;
        // SAFETY: openat(2) just returned this fd and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if last {
            return Ok(File::from(fd));
        }
        cur = Some(fd);
    }
    Err(io::Error::from(io::ErrorKind::NotFound))
}

/// The error of a layout file [`open_beneath`] refused, or could not open.
fn beneath_error(ctx_file: &Path, store_root: &Path, rel: &str, e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::EXDEV) => Error::Invalid {
            what: ctx_file.display().to_string(),
            detail: format!(
                "{rel} leads out of the directory (a symlink to an absolute path or through ..): refused, skiff load \
                 reads only files beneath the directory (nothing was stored)"
            ),
        },
        Some(libc::ELOOP) => Error::Invalid {
            what: ctx_file.display().to_string(),
            detail: format!(
                "{rel} is a symlink, which this kernel (no openat2) cannot follow safely: replace it with the file \
                 (nothing was stored)"
            ),
        },
        _ => Error::io(format!("reading {}", ctx_file.join(rel).display()), store_root, e),
    }
}

/// The compression of a file, by magic (the unpacker's table); Err names an unsupported one.
fn sniff(head: &[u8]) -> std::result::Result<unpack::Compression, &'static str> {
    unpack::detect_compression(head).map_err(|e| match e {
        UnpackError::UnsupportedCompression(c) => c,
        _ => "unknown",
    })
}

fn read_head(path: &Path, n: usize) -> io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// Reads a tar (maybe compressed) archive once, spooling every file. Returns the index and
/// what the packing was (`tar`, `gzip`, `zstd`).
fn scan(ctx: &mut Ctx) -> Result<(TarIndex, &'static str)> {
    let path = ctx.file;
    let root = ctx.store.root();
    let open_err = |e| Error::io(format!("reading the archive {}", path.display()), root, e);
    let head = read_head(path, 512).map_err(open_err)?;
    let compression = sniff(&head).map_err(|c| {
        let tool = match c {
            "xz" => "xz -d",
            "bzip2" => "bzip2 -d",
            _ => "lz4 -d",
        };
        ctx.invalid(format!(
            "is {c}-compressed, which skiff does not read: decompress it first ({tool} {}) or use gzip or zstd",
            path.display()
        ))
    })?;
    let file = File::open(path).map_err(open_err)?;
    let buffered = BufReader::with_capacity(unpack::BUF_SIZE, file);
    let packing = match compression {
        unpack::Compression::None => {
            if head.len() < 512 || (&head[257..262] != b"ustar" && !tar_checksum_ok(&head)) {
                return Err(ctx.invalid(
                    "is not a tar archive, nor gzip or zstd: skiff load takes a `docker save` archive, an OCI \
                     archive or an OCI layout directory",
                ));
            }
            "tar"
        }
        unpack::Compression::Gzip => "gzip",
        unpack::Compression::Zstd => "zstd",
    };
    let mut stream = unpack::decompress(buffered, compression)
        .map_err(|e| ctx.invalid(format!("cannot start {packing} decompression ({e})")))?;
    let mut idx = TarIndex::default();
    let mut last: Option<String> = None;
    let mut counted = ZeroTail { inner: &mut stream, zeros: 0 };
    {
        // Bounded extension records (GNU long names, PAX headers): see tarstream.
        let mut archive = TarReader::new(&mut counted);
        loop {
            let entry = match archive.next_entry() {
                Ok(Some(e)) => e,
                Ok(None) => break,
                Err(TarError::Io(e)) => return Err(truncated(ctx, &after(&last), &e)),
                Err(TarError::Invalid(reason)) => {
                    return Err(ctx.invalid(format!("is not a tar archive skiff accepts{}: {reason}", after(&last))))
                }
            };
            let raw = String::from_utf8_lossy(&entry.path).into_owned();
            let Some(name) = clean(&raw) else {
                last = Some(raw);
                continue;
            };
            last = Some(name.clone());
            let kind = entry.kind();
            if kind.is_symlink() || kind.is_hard_link() {
                let target = entry.link.as_deref().map(|b| String::from_utf8_lossy(b).into_owned());
                let resolved = target.and_then(|t| if kind.is_symlink() { resolve_link(&name, &t) } else { clean(&t) });
                if let Some(t) = resolved {
                    idx.files.remove(&name);
                    idx.links.insert(name, t);
                }
                continue;
            }
            if !(kind.is_file() || kind == tar::EntryType::Continuous) {
                continue;
            }
            idx.links.remove(&name);
            let expected_size = entry.size;
            let inside = format!(" (in the entry {})", text::name(name.as_bytes()));
            if matches!(name.as_str(), "index.json" | "manifest.json" | "oci-layout" | "repositories") {
                if expected_size > MAX_META {
                    return Err(ctx.invalid(format!("its {name} is larger than {MAX_META} bytes")));
                }
                let mut buf = Vec::new();
                (&mut archive).take(MAX_META).read_to_end(&mut buf).map_err(|e| truncated(ctx, &inside, &e))?;
                if buf.len() as u64 != expected_size {
                    let e = io::Error::new(io::ErrorKind::UnexpectedEof, "the stream ends inside it");
                    return Err(truncated(ctx, &inside, &e));
                }
                idx.meta.insert(name, buf);
                continue;
            }
            let claimed = blob_path_digest(&name);
            let in_store = claimed.as_ref().is_some_and(|d| ctx.store.has_blob(d));
            let dest = (!in_store).then(|| ctx.spool.next_file());
            let (digest, size) = match hash_copy(&mut archive, dest.as_deref()) {
                Ok(v) => v,
                Err(CopyError::Read(e)) => return Err(truncated(ctx, &inside, &e)),
                Err(CopyError::Write(e)) => {
                    return Err(Error::io(format!("spooling {name} of {}", path.display()), root, e))
                }
            };
            if size != expected_size {
                // The entry's data stops early: the stream ended.
                if let Some(p) = &dest {
                    let _ = fs::remove_file(p);
                }
                let e = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the stream ends after {size} of its {expected_size} bytes"),
                );
                return Err(truncated(ctx, &inside, &e));
            }
            if let Some(want) = &claimed {
                if *want != digest {
                    return Err(corrupt(ctx, &name, want, &digest));
                }
            }
            let at = match dest {
                Some(p) if ctx.store.has_blob(&digest) => {
                    let _ = fs::remove_file(&p);
                    At::Store
                }
                Some(p) => At::Spool(p),
                None => At::Store,
            };
            if let Some(Item { at: At::Spool(old), .. }) = idx.files.insert(name, Item { digest, size, at }) {
                let _ = fs::remove_file(old);
            }
        }
    }
    // The tar parser stops at the first zero block (the end-of-archive marker) or at the end
    // of the stream: the latter is an archive cut at an entry boundary.
    if counted.zeros < 512 {
        let e = io::Error::new(io::ErrorKind::UnexpectedEof, "it ends without the end-of-archive marker");
        return Err(truncated(ctx, &after(&last), &e));
    }
    // The rest of the stream (tar padding, the gzip trailer and its CRC): a torn compressed
    // archive fails here.
    io::copy(&mut stream, &mut io::sink()).map_err(|e| truncated(ctx, &after(&last), &e))?;
    Ok((idx, packing))
}

/// A reader that counts the zero bytes at the end of what it has read so far.
struct ZeroTail<R> {
    inner: R,
    zeros: u64,
}

impl<R: Read> Read for ZeroTail<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let data = &buf[..n];
        match data.iter().rposition(|b| *b != 0) {
            Some(i) => self.zeros = (n - i - 1) as u64,
            None => self.zeros += n as u64,
        }
        Ok(n)
    }
}

/// A v7 tar header without the ustar magic: its checksum still adds up.
fn tar_checksum_ok(h: &[u8]) -> bool {
    let field = String::from_utf8_lossy(&h[148..156]);
    let Ok(want) = u32::from_str_radix(field.trim_matches(|c: char| c == '\0' || c == ' '), 8) else { return false };
    let sum: u32 = h[..512].iter().enumerate().map(|(i, b)| if (148..156).contains(&i) { 32 } else { *b as u32 }).sum();
    sum == want
}

/// Where in the archive: `" (after the entry X)"`, or nothing before the first entry.
fn after(last: &Option<String>) -> String {
    match last {
        Some(l) => format!(" (after the entry {})", text::name(l.as_bytes())),
        None => String::new(),
    }
}

fn truncated(ctx: &Ctx, place: &str, e: &io::Error) -> Error {
    ctx.invalid(format!("the archive is truncated or corrupt{place}: {e}; copy it again"))
}

fn corrupt(ctx: &Ctx, what: &str, expected: &Digest, actual: &Digest) -> Error {
    ctx.invalid(format!(
        "{what}: digest mismatch: expected {expected}, got {actual}: the archive is corrupt, copy it again \
         (nothing was stored)"
    ))
}

// ---- assembling images ------------------------------------------------------------------------

/// One image to record.
struct Plan {
    reference: String,
    index: Option<Digest>,
    manifest: Digest,
    media_type: String,
    manifest_size: u64,
    /// A manifest made for a `docker save` image (stored with `put_blob`).
    synthesized: Option<Vec<u8>>,
    config: Digest,
    config_size: u64,
    layers: Vec<LayerRecord>,
    platform: String,
    created: Option<String>,
    /// Names the layers in messages.
    label: String,
}

struct Ctx<'a> {
    store: &'a Store,
    file: &'a Path,
    opts: &'a LoadOptions,
    base: Option<Reference>,
    spool: Spool,
    src: Source,
    warnings: Vec<String>,
    /// Blobs the records need that are not in the store yet, by digest.
    needed: BTreeMap<Digest, PathBuf>,
}

impl Ctx<'_> {
    fn invalid(&self, detail: impl Into<String>) -> Error {
        Error::Invalid { what: self.file.display().to_string(), detail: detail.into() }
    }

    fn warn(&mut self, w: String) {
        self.warnings.push(w);
    }

    /// A top-level metadata file (`index.json`, `manifest.json`).
    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match &self.src {
            Source::Tar(idx) => Ok(idx.meta.get(name).cloned()),
            Source::Dir { root, fd, .. } => {
                let p = root.join(name);
                match open_beneath(fd, name) {
                    Ok(f) => {
                        if !f.metadata().is_ok_and(|m| m.is_file()) {
                            return Err(self.invalid(format!("its {name} is not a regular file")));
                        }
                        let mut buf = Vec::new();
                        f.take(MAX_META + 1)
                            .read_to_end(&mut buf)
                            .map_err(|e| Error::io(format!("reading {}", p.display()), self.store.root(), e))?;
                        if buf.len() as u64 > MAX_META {
                            return Err(self.invalid(format!("its {name} is larger than {MAX_META} bytes")));
                        }
                        Ok(Some(buf))
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(beneath_error(self.file, self.store.root(), name, e)),
                }
            }
        }
    }

    /// Whether the archive (or the store) has a blob, without reading it.
    fn has(&self, d: &Digest) -> bool {
        let p = format!("blobs/sha256/{}", d.hex());
        self.store.has_blob(d)
            || match &self.src {
                Source::Tar(idx) => idx.lookup(&p).is_some(),
                Source::Dir { fd, .. } => open_beneath(fd, &p).and_then(|f| f.metadata()).is_ok_and(|m| m.is_file()),
            }
    }

    /// A file of the archive by its path, hashed (a directory's file is copied into the spool).
    fn get(&mut self, raw: &str) -> Result<Option<Item>> {
        let Some(p) = clean(raw) else {
            return Err(self.invalid(format!("names the file {raw:?}, which is not a path inside the archive")));
        };
        let store = self.store;
        let file = self.file;
        let (root, fd, cache) = match &mut self.src {
            Source::Tar(idx) => return Ok(idx.lookup(&p).cloned()),
            Source::Dir { root, fd, cache } => (root, fd, cache),
        };
        if let Some(i) = cache.get(&p) {
            return Ok(Some(i.clone()));
        }
        let claimed = blob_path_digest(&p);
        if let Some(d) = claimed.as_ref().filter(|d| store.has_blob(d)) {
            let size = fs::metadata(store.blob_path(d)).map(|m| m.len()).unwrap_or(0);
            let item = Item { digest: d.clone(), size, at: At::Store };
            cache.insert(p, item.clone());
            return Ok(Some(item));
        }
        let src = root.join(&p);
        let f = match open_beneath(fd, &p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(beneath_error(file, store.root(), &p, e)),
        };
        match f.metadata() {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                let what = file.display().to_string();
                return Err(Error::Invalid { what, detail: format!("{p} is not a regular file") });
            }
            Err(e) => return Err(Error::io(format!("reading {}", src.display()), store.root(), e)),
        }
        let dest = self.spool.next_file();
        let (digest, size) = match hash_copy(BufReader::with_capacity(unpack::BUF_SIZE, f), Some(&dest)) {
            Ok(v) => v,
            Err(CopyError::Read(e)) => return Err(Error::io(format!("reading {}", src.display()), store.root(), e)),
            Err(CopyError::Write(e)) => return Err(Error::io(format!("spooling {}", src.display()), store.root(), e)),
        };
        if let Some(want) = &claimed {
            if *want != digest {
                return Err(Error::Invalid {
                    what: src.display().to_string(),
                    detail: format!(
                        "digest mismatch: expected {want}, got {digest}: the layout is corrupt, copy it again \
                         (nothing was stored)"
                    ),
                });
            }
        }
        let item = Item { digest, size, at: At::Spool(dest) };
        cache.insert(p, item.clone());
        Ok(Some(item))
    }

    /// A blob by digest, verified, of the size a descriptor states.
    fn blob(&mut self, d: &Digest, size: Option<u64>, what: &str) -> Result<Item> {
        let Some(item) = self.get(&format!("blobs/sha256/{}", d.hex()))? else {
            return Err(self.invalid(format!(
                "it has no blob {d} ({what}): the archive is incomplete (truncated, or saved without this \
                 content); save or copy it again"
            )));
        };
        if item.digest != *d {
            return Err(corrupt(self, &format!("blobs/sha256/{}", d.hex()), d, &item.digest));
        }
        if let Some(s) = size {
            if s != item.size {
                return Err(self.invalid(format!(
                    "blob {d} ({what}) is {} bytes but its descriptor says {s}: the archive is inconsistent",
                    item.size
                )));
            }
        }
        Ok(item)
    }

    fn path_of(&self, item: &Item) -> PathBuf {
        match &item.at {
            At::Spool(p) => p.clone(),
            At::Store => self.store.blob_path(&item.digest),
        }
    }

    /// Reads a small file (manifest, config) into memory.
    fn read(&self, item: &Item, limit: u64, what: &str) -> Result<Vec<u8>> {
        if item.size > limit {
            return Err(self.invalid(format!("{what} is {} bytes, more than the {limit} skiff accepts", item.size)));
        }
        let p = self.path_of(item);
        let mut buf = Vec::new();
        File::open(&p)
            .and_then(|f| f.take(limit + 1).read_to_end(&mut buf))
            .map_err(|e| Error::io(format!("reading {what}"), self.store.root(), e))?;
        Ok(buf)
    }

    /// Marks a blob as needed by a record.
    fn need(&mut self, item: &Item) {
        if let At::Spool(p) = &item.at {
            self.needed.entry(item.digest.clone()).or_insert_with(|| p.clone());
        }
    }

    /// The reference an OCI index entry names, canonical.
    fn oci_name(&mut self, ann: &HashMap<String, String>) -> Option<String> {
        if let Some(n) = ann.get(ANN_CONTAINERD_NAME) {
            match Reference::parse(n) {
                Ok(r) => return Some(r.to_string()),
                Err(e) => self.warn(format!("{}: ignoring the name annotation: {e}", self.file.display())),
            }
        }
        if let Some(n) = ann.get(ANN_REF_NAME) {
            let tag_only = !n.contains(['/', ':', '@']);
            if let (true, Some(base)) = (tag_only, &self.base) {
                let r = Reference::parse(&format!("{}:{n}", base.name()));
                match r {
                    Ok(r) => return Some(r.to_string()),
                    Err(e) => self.warn(format!("{}: ignoring the ref.name {n:?}: {e}", self.file.display())),
                }
            } else {
                match Reference::parse(n) {
                    Ok(r) => return Some(r.to_string()),
                    Err(e) => self.warn(format!("{}: ignoring the ref.name {n:?}: {e}", self.file.display())),
                }
            }
        }
        self.base.as_ref().map(|b| b.to_string())
    }

    /// Warns when an image is not for this platform (as a pull does).
    fn check_platform(&mut self, reference: &str, cfg: &ImageConfig) -> String {
        let p = Platform::new(if cfg.os.is_empty() { "linux" } else { &cfg.os }, &cfg.architecture, &cfg.variant);
        if !cfg.architecture.is_empty() && !self.opts.platform.compatible().contains(&p) {
            self.warn(format!("{reference} is a {p} image, not {}: its programs may not run here", self.opts.platform));
        }
        p.to_string()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIndex {
    #[serde(default)]
    schema_version: Option<i64>,
    #[serde(default)]
    manifests: Vec<RawDescriptor>,
}

/// An index entry: descriptor and platform.
type Entry = (Descriptor, Option<(String, String, String)>);

/// The images of an OCI layout (`index.json`).
fn resolve_oci(ctx: &mut Ctx) -> Result<Vec<Plan>> {
    let raw = ctx.meta("index.json")?.unwrap_or_default();
    let idx: RawIndex = serde_json::from_slice(&raw)
        .map_err(|e| ctx.invalid(format!("its index.json is not a valid OCI index ({e})")))?;
    if idx.schema_version != Some(2) {
        return Err(ctx.invalid(format!("its index.json has schemaVersion {:?}, expected 2", idx.schema_version)));
    }
    // Entries grouped by name, in order: one name's entries are the platforms of one image.
    let mut groups: Vec<(String, Vec<Entry>)> = Vec::new();
    for e in idx.manifests {
        let digest = Digest::parse(&e.digest).map_err(|source| Error::BadDigest {
            context: format!("{}: index.json names a blob", ctx.file.display()),
            source,
        })?;
        let size =
            u64::try_from(e.size).map_err(|_| ctx.invalid(format!("index.json: {digest} has a negative size")))?;
        let desc = Descriptor { media_type: e.media_type, digest, size };
        let plat = e.platform.map(|p| (p.os, p.architecture, p.variant.unwrap_or_default()));
        let Some(name) = ctx.oci_name(&e.annotations) else {
            let w = format!(
                "{}: skipping the unnamed image {}: name it with --name to load it",
                ctx.file.display(),
                desc.digest
            );
            ctx.warn(w);
            continue;
        };
        match groups.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.push((desc, plat)),
            None => groups.push((name, vec![(desc, plat)])),
        }
    }
    let mut plans = Vec::new();
    for (name, entries) in groups {
        let desc = if entries.len() == 1 {
            entries[0].0.clone()
        } else {
            let i = pick(ctx, &name, &entries)?;
            entries[i].0.clone()
        };
        plans.push(resolve_desc(ctx, &name, &desc, None, 0)?);
    }
    Ok(plans)
}

/// The entry for the wanted platform among those whose blob the archive has.
fn pick(ctx: &Ctx, name: &str, entries: &[Entry]) -> Result<usize> {
    let want = &ctx.opts.platform;
    let present: Vec<bool> = entries.iter().map(|(d, _)| ctx.has(&d.digest)).collect();
    let cands = entries.iter().zip(&present).map(|((_, p), ok)| {
        p.as_ref().filter(|_| *ok).map(|(os, arch, variant)| Candidate { os, architecture: arch, variant })
    });
    if let Some(i) = platform::select(want, cands) {
        return Ok(i);
    }
    // As containerd: an entry that states no platform (an index of indexes, say) is a
    // candidate after every matching one.
    if let Some(i) = entries.iter().zip(&present).position(|((_, p), ok)| *ok && p.is_none()) {
        return Ok(i);
    }
    let list = |keep: bool| {
        let v: Vec<String> = entries
            .iter()
            .zip(&present)
            .filter(|(_, ok)| **ok == keep)
            .filter_map(|((_, p), _)| p.as_ref())
            .map(|(o, a, v)| Platform::new(o, a, v).to_string())
            .collect();
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    Err(ctx.invalid(format!(
        "has no {want} image of {name} (the archive holds: {}; listed but not included: {})",
        list(true),
        list(false)
    )))
}

/// Follows a descriptor (through indexes) to an image manifest and checks its content.
fn resolve_desc(ctx: &mut Ctx, name: &str, desc: &Descriptor, top: Option<&Digest>, depth: usize) -> Result<Plan> {
    let what = format!("the manifest of {name}");
    let item = ctx.blob(&desc.digest, Some(desc.size), &what)?;
    let bytes = ctx.read(&item, manifest::MAX_MANIFEST, &what)?;
    let ct = (!desc.media_type.is_empty()).then_some(desc.media_type.as_str());
    match Manifest::parse(&bytes, ct, &format!("{}: {what}", ctx.file.display()))? {
        Manifest::Image { media_type, config, layers } => {
            ctx.need(&item);
            image_plan(ctx, name, top.cloned(), desc.digest.clone(), media_type, bytes.len() as u64, &config, &layers)
        }
        Manifest::Index { manifests, .. } => {
            if depth >= MAX_DEPTH {
                return Err(ctx.invalid(format!("{name}: indexes nested more than {MAX_DEPTH} deep")));
            }
            let entries: Vec<Entry> = manifests.into_iter().map(|e| (e.descriptor, e.platform)).collect();
            let i = pick(ctx, name, &entries)?;
            // Only the top index is recorded (the one the name points to, as in a pull).
            let top = match top {
                Some(t) => t.clone(),
                None => {
                    ctx.need(&item);
                    desc.digest.clone()
                }
            };
            resolve_desc(ctx, name, &entries[i].0, Some(&top), depth + 1)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn image_plan(
    ctx: &mut Ctx,
    name: &str,
    index: Option<Digest>,
    manifest: Digest,
    media_type: String,
    manifest_size: u64,
    config: &Descriptor,
    layers: &[Descriptor],
) -> Result<Plan> {
    let what = format!("the config of {name}");
    let citem = ctx.blob(&config.digest, Some(config.size), &what)?;
    let cbytes = ctx.read(&citem, manifest::MAX_CONFIG, &what)?;
    let cfg = ImageConfig::parse(&cbytes, &format!("{}: {what}", ctx.file.display()))?;
    if cfg.diff_ids.len() != layers.len() {
        return Err(ctx.invalid(format!(
            "{name}: its manifest has {} layers but its config lists {} diff_ids",
            layers.len(),
            cfg.diff_ids.len()
        )));
    }
    ctx.need(&citem);
    let mut recs = Vec::new();
    for (i, (l, id)) in layers.iter().zip(&cfg.diff_ids).enumerate() {
        let item = ctx.blob(&l.digest, Some(l.size), &format!("layer {} of {name}", i + 1))?;
        ctx.need(&item);
        recs.push(LayerRecord {
            digest: l.digest.clone(),
            diff_id: id.clone(),
            size: item.size,
            media_type: l.media_type.clone(),
        });
    }
    let platform = ctx.check_platform(name, &cfg);
    Ok(Plan {
        reference: name.to_string(),
        index,
        manifest,
        media_type,
        manifest_size,
        synthesized: None,
        config: config.digest.clone(),
        config_size: citem.size,
        layers: recs,
        platform,
        created: cfg.created,
        label: name.to_string(),
    })
}

#[derive(Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// The images of a `docker save` archive without an OCI index (`manifest.json`).
fn resolve_docker(ctx: &mut Ctx) -> Result<Vec<Plan>> {
    let raw = ctx.meta("manifest.json")?.unwrap_or_default();
    let entries: Vec<DockerEntry> = serde_json::from_slice(&raw)
        .map_err(|e| ctx.invalid(format!("its manifest.json is not a docker save manifest ({e})")))?;
    let mut plans = Vec::new();
    for (n, e) in entries.into_iter().enumerate() {
        let mut names = Vec::new();
        for t in e.repo_tags.unwrap_or_default() {
            match Reference::parse(&t) {
                Ok(r) => names.push(r.to_string()),
                Err(err) => ctx.warn(format!("{}: ignoring the tag {t:?}: {err}", ctx.file.display())),
            }
        }
        if names.is_empty() {
            match &ctx.base {
                Some(b) => names.push(b.to_string()),
                None => {
                    let w = format!(
                        "{}: skipping image {} of manifest.json ({}): it has no tag; name it with --name to load it",
                        ctx.file.display(),
                        n + 1,
                        e.config
                    );
                    ctx.warn(w);
                    continue;
                }
            }
        }
        let label = names[0].clone();
        let Some(citem) = ctx.get(&e.config)? else {
            return Err(ctx.invalid(format!(
                "manifest.json names the config {} of {label}, which the archive does not contain: the archive is \
                 incomplete; save or copy it again",
                e.config
            )));
        };
        if let Some(want) = named_digest(&e.config).filter(|d| *d != citem.digest) {
            return Err(corrupt(ctx, &e.config, &want, &citem.digest));
        }
        let what = format!("the config of {label}");
        let cbytes = ctx.read(&citem, manifest::MAX_CONFIG, &what)?;
        let cfg = ImageConfig::parse(&cbytes, &format!("{}: {what}", ctx.file.display()))?;
        if cfg.diff_ids.len() != e.layers.len() {
            return Err(ctx.invalid(format!(
                "{label}: manifest.json lists {} layers but its config lists {} diff_ids",
                e.layers.len(),
                cfg.diff_ids.len()
            )));
        }
        ctx.need(&citem);
        let mut layers = Vec::new();
        for (i, (lp, id)) in e.layers.iter().zip(&cfg.diff_ids).enumerate() {
            let Some(item) = ctx.get(lp)? else {
                return Err(ctx.invalid(format!(
                    "manifest.json names the layer {lp} of {label}, which the archive does not contain: the archive \
                     is incomplete; save or copy it again"
                )));
            };
            if let Some(want) = named_digest(lp).filter(|d| *d != item.digest) {
                return Err(corrupt(ctx, lp, &want, &item.digest));
            }
            let head = read_head(&ctx.path_of(&item), 6)
                .map_err(|e| Error::io(format!("reading layer {lp}"), ctx.store.root(), e))?;
            let media_type = match sniff(&head) {
                Ok(unpack::Compression::None) => {
                    // The file is the uncompressed layer: its digest is the diff_id.
                    if item.digest != *id {
                        return Err(ctx.invalid(format!(
                            "{lp} (layer {} of {label}): digest mismatch: the config's diff_id is {id}, the layer \
                             is {}: the archive is corrupt, copy it again (nothing was stored)",
                            i + 1,
                            item.digest
                        )));
                    }
                    "application/vnd.docker.image.rootfs.diff.tar"
                }
                Ok(unpack::Compression::Gzip) => "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Ok(unpack::Compression::Zstd) => "application/vnd.docker.image.rootfs.diff.tar.zstd",
                Err(c) => {
                    return Err(ctx.invalid(format!(
                        "{lp} (layer {} of {label}) is {c}-compressed: skiff reads plain, gzip and zstd layers",
                        i + 1
                    )))
                }
            };
            ctx.need(&item);
            layers.push(LayerRecord {
                digest: item.digest.clone(),
                diff_id: id.clone(),
                size: item.size,
                media_type: media_type.to_string(),
            });
        }
        // A Docker schema2 manifest for the image (serde_json sorts keys: deterministic).
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest::DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "digest": citem.digest.to_string(), "size": citem.size},
            "layers": layers.iter().map(|l| serde_json::json!({
                "mediaType": l.media_type, "digest": l.digest.to_string(), "size": l.size
            })).collect::<Vec<_>>(),
        });
        let bytes = serde_json::to_vec(&m).map_err(|e| Error::Other(e.to_string()))?;
        let platform = ctx.check_platform(&label, &cfg);
        for name in names {
            plans.push(Plan {
                reference: name,
                index: None,
                manifest: Digest::of(&bytes),
                media_type: manifest::DOCKER_MANIFEST.to_string(),
                manifest_size: bytes.len() as u64,
                synthesized: Some(bytes.clone()),
                config: citem.digest.clone(),
                config_size: citem.size,
                layers: layers.clone(),
                platform: platform.clone(),
                created: cfg.created.clone(),
                label: label.clone(),
            });
        }
    }
    Ok(plans)
}

// ---- layers and commit --------------------------------------------------------------------------

enum Task {
    /// Unpack the blob into a new directory of the spool.
    Unpack { blob: PathBuf, layer: LayerRecord, what: String, dir: PathBuf },
    /// The layer is in the store but the blob is new: check its uncompressed digest.
    Verify { blob: PathBuf, layer: LayerRecord, what: String },
}

/// Unpacks (into the spool) every layer the store lacks, and verifies every new blob against
/// its diff_id. Returns the unpacked directories.
fn unpack_layers(ctx: &Ctx, plans: &[Plan]) -> Result<Vec<(Digest, PathBuf)>> {
    let mut seen = HashSet::new();
    let mut tasks = Vec::new();
    for p in plans {
        for (i, l) in p.layers.iter().enumerate() {
            if !seen.insert(l.diff_id.clone()) {
                continue;
            }
            let new_blob = ctx.needed.get(&l.digest).cloned();
            let blob = new_blob.clone().unwrap_or_else(|| ctx.store.blob_path(&l.digest));
            let what = format!("layer {} of {} ({})", i + 1, p.label, l.digest);
            if !ctx.store.has_layer(&l.diff_id) {
                let dir = ctx.spool.dir.join(format!("layer-{}", l.diff_id.hex()));
                tasks.push(Task::Unpack { blob, layer: l.clone(), what, dir });
            } else if new_blob.is_some() && l.digest != l.diff_id {
                tasks.push(Task::Verify { blob, layer: l.clone(), what });
            }
        }
    }
    let queue = Mutex::new(tasks.into_iter());
    let done = Mutex::new(Vec::new());
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    let jobs = ctx.opts.jobs.max(1);
    let (store, file) = (ctx.store, ctx.file);
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                if failed.lock().map(|f| f.is_some()).unwrap_or(true) {
                    return;
                }
                let Some(task) = queue.lock().ok().and_then(|mut q| q.next()) else { return };
                match run_task(store, file, task) {
                    Ok(Some(d)) => {
                        if let Ok(mut v) = done.lock() {
                            v.push(d)
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        if let Ok(mut f) = failed.lock() {
                            f.get_or_insert(e);
                        }
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    Ok(done.into_inner().unwrap_or_else(|p| p.into_inner()))
}

fn run_task(store: &Store, file: &Path, task: Task) -> Result<Option<(Digest, PathBuf)>> {
    let root = store.root();
    let mismatch = |what: &str, expected: &Digest, actual: &str| Error::Invalid {
        what: file.display().to_string(),
        detail: format!(
            "{what}: digest mismatch of the uncompressed layer: the config's diff_id is {expected}, the layer is \
             {actual}: the archive is corrupt, copy it again (nothing was stored)"
        ),
    };
    match task {
        Task::Unpack { blob, layer, what, dir } => {
            fs::create_dir(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), root, e))?;
            let f = File::open(&blob).map_err(|e| Error::io(format!("reading {what}"), root, e))?;
            let opts = UnpackOptions::overlay(&layer.media_type, &layer.diff_id.to_string());
            match unpack::unpack_layer(f, &dir, &opts) {
                Ok(_) => Ok(Some((layer.diff_id, dir))),
                Err(UnpackError::DiffIdMismatch { actual, .. }) => Err(mismatch(&what, &layer.diff_id, &actual)),
                Err(e) if fsutil::caused_by_no_space(&e) => {
                    Err(Error::NoSpace { what: format!("unpacking {what}"), root: root.into() })
                }
                Err(e) => {
                    Err(Error::Unpack { what: format!("{}: unpacking {what}", file.display()), detail: chain(&e) })
                }
            }
        }
        Task::Verify { blob, layer, what } => {
            let actual = uncompressed_digest(&blob).map_err(|e| Error::Invalid {
                what: file.display().to_string(),
                detail: format!("{what}: cannot decompress it ({e}): the archive is corrupt, copy it again"),
            })?;
            if actual != layer.diff_id {
                return Err(mismatch(&what, &layer.diff_id, &actual.to_string()));
            }
            Ok(None)
        }
    }
}

/// The sha256 of a layer blob's uncompressed stream.
fn uncompressed_digest(path: &Path) -> io::Result<Digest> {
    let head = read_head(path, 6)?;
    let buffered = BufReader::with_capacity(unpack::BUF_SIZE, File::open(path)?);
    let compression = sniff(&head).map_err(|c| io::Error::other(format!("{c}-compressed layers are not supported")))?;
    let stream = unpack::decompress(buffered, compression)?;
    match hash_copy(stream, None) {
        Ok((d, _)) => Ok(d),
        Err(CopyError::Read(e) | CopyError::Write(e)) => Err(e),
    }
}

/// Moves everything into the store: blobs, layers, then the records.
fn commit(ctx: &Ctx, plans: Vec<Plan>, layers: Vec<(Digest, PathBuf)>) -> Result<Vec<ImageRecord>> {
    let store = ctx.store;
    for (d, p) in &ctx.needed {
        if store.has_blob(d) {
            continue;
        }
        let f = File::open(p).map_err(|e| Error::io(format!("storing blob {d}"), store.root(), e))?;
        store.commit_blob(&f, p, d)?;
    }
    for p in &plans {
        if let Some(b) = &p.synthesized {
            store.put_blob(&p.manifest, b)?;
        }
    }
    for (id, dir) in &layers {
        store.commit_layer(dir, id)?;
    }
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let mut out = Vec::new();
    for p in plans {
        let size = p.manifest_size + p.config_size + p.layers.iter().map(|l| l.size).sum::<u64>();
        let rec = ImageRecord {
            reference: p.reference,
            digest: p.manifest,
            index_digest: p.index,
            media_type: p.media_type,
            platform: p.platform,
            config: p.config,
            layers: p.layers,
            size,
            created: p.created,
            pulled: now.clone(),
            pinned: true,
        };
        store.put_image(&rec)?;
        out.push(rec);
    }
    Ok(out)
}

// ---- preload ----------------------------------------------------------------------------------

/// What became of one file of the preload directory.
#[derive(Debug)]
pub struct Preloaded {
    pub path: PathBuf,
    pub outcome: PreloadOutcome,
}

#[derive(Debug)]
pub enum PreloadOutcome {
    Loaded(Loaded),
    /// Loaded before, unchanged since, and its images are still in the store: these references.
    Unchanged(Vec<String>),
    Failed(Error),
}

#[derive(Serialize, Deserialize, Default)]
struct PreloadState {
    files: BTreeMap<String, PreloadEntry>,
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
struct Fingerprint {
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
    ino: u64,
}

#[derive(Serialize, Deserialize, Clone)]
struct PreloadEntry {
    #[serde(flatten)]
    fingerprint: Fingerprint,
    images: Vec<PreloadImage>,
}

#[derive(Serialize, Deserialize, Clone)]
struct PreloadImage {
    reference: String,
    digest: Digest,
}

const ARCHIVE_SUFFIXES: &[&str] =
    &[".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.zstd", ".tzst", ".tar.xz", ".txz", ".tar.bz2", ".tar.lz4"];

/// Loads every archive in `dir` (`<root>/preload`, see the module docs), skipping the ones
/// loaded before and unchanged. A missing directory is empty. Errors are per file, in the
/// outcomes; the `Err` of the whole call is only for an unreadable directory or store.
pub fn load_preload_dir(store: &Store, dir: &Path, platform: &Platform) -> Result<Vec<Preloaded>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("listing {}", dir.display()), store.root(), e)),
    };
    let mut found: Vec<(PathBuf, Fingerprint)> = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = e.path();
        let Ok(md) = fs::metadata(&path) else { continue };
        let fp_of = |md: &fs::Metadata| Fingerprint {
            size: md.len(),
            mtime: md.mtime(),
            mtime_nsec: md.mtime_nsec(),
            ino: md.ino(),
        };
        if md.is_file() {
            let lower = name.to_ascii_lowercase();
            if ARCHIVE_SUFFIXES.iter().any(|s| lower.ends_with(s)) {
                found.push((path, fp_of(&md)));
            }
        } else if md.is_dir() {
            // An OCI layout (or unpacked docker save): its index tells whether it changed.
            let meta = ["index.json", "manifest.json"].iter().find_map(|m| fs::metadata(path.join(m)).ok());
            if let Some(m) = meta {
                found.push((path, fp_of(&m)));
            }
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));

    let state_path = store.root().join("preload.json");
    let _lock = FileLock::lock(&store.root().join("preload.lock"), LockKind::Exclusive)
        .map_err(|e| Error::io("locking the preload record", store.root(), e))?;
    let mut state: PreloadState =
        fs::read(&state_path).ok().and_then(|d| serde_json::from_slice(&d).ok()).unwrap_or_default();
    let present: HashSet<String> = found.iter().map(|(p, _)| p.display().to_string()).collect();
    let before = state.files.len();
    state.files.retain(|k, _| present.contains(k));
    let mut dirty = state.files.len() != before;

    let mut out = Vec::new();
    for (path, fp) in found {
        let key = path.display().to_string();
        if let Some(prev) = state.files.get(&key).filter(|p| p.fingerprint == fp) {
            let all_there = prev.images.iter().all(|i| {
                matches!(store.image(&i.reference), Ok(Some(r)) if r.digest == i.digest) && store.has_blob(&i.digest)
            });
            if all_there {
                let refs = prev.images.iter().map(|i| i.reference.clone()).collect();
                out.push(Preloaded { path, outcome: PreloadOutcome::Unchanged(refs) });
                continue;
            }
        }
        match load_with(store, &path, &LoadOptions::new(platform.clone())) {
            Ok(loaded) => {
                let images = loaded
                    .images
                    .iter()
                    .map(|r| PreloadImage { reference: r.reference.clone(), digest: r.digest.clone() })
                    .collect();
                state.files.insert(key, PreloadEntry { fingerprint: fp, images });
                // Best effort now (a crash later keeps what is done); retried at the end.
                dirty = write_state(store, &state_path, &state).is_err();
                out.push(Preloaded { path, outcome: PreloadOutcome::Loaded(loaded) });
            }
            Err(e) => {
                dirty |= state.files.remove(&key).is_some();
                out.push(Preloaded { path, outcome: PreloadOutcome::Failed(e) });
            }
        }
    }
    if dirty {
        write_state(store, &state_path, &state)?;
    }
    Ok(out)
}

fn write_state(store: &Store, path: &Path, state: &PreloadState) -> Result<()> {
    let mut data = serde_json::to_vec_pretty(state).map_err(|e| Error::Other(e.to_string()))?;
    data.push(b'\n');
    fsutil::write_atomic(&store.tmp(), path, &data)
        .map_err(|e| Error::io(format!("writing {}", path.display()), store.root(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(clean("./blobs/sha256/ab").as_deref(), Some("blobs/sha256/ab"));
        assert_eq!(clean("/index.json").as_deref(), Some("index.json"));
        assert_eq!(clean("a//b/./c").as_deref(), Some("a/b/c"));
        assert_eq!(clean("a/../b"), None);
        assert_eq!(clean("./"), None);
        assert_eq!(resolve_link("id/layer.tar", "../abc.tar").as_deref(), Some("abc.tar"));
        assert_eq!(resolve_link("id/layer.tar", "/x/y").as_deref(), Some("x/y"));
        assert_eq!(resolve_link("id/layer.tar", "../../etc/passwd"), None);
        assert_eq!(resolve_link("a/b/c", "./d").as_deref(), Some("a/b/d"));
    }

    #[test]
    fn digests_in_names() {
        let hex = "a".repeat(64);
        assert_eq!(
            blob_path_digest(&format!("blobs/sha256/{hex}")).map(|d| d.to_string()),
            Some(format!("sha256:{hex}"))
        );
        assert!(blob_path_digest(&format!("blobs/sha512/{hex}")).is_none());
        assert!(named_digest(&format!("{hex}.tar")).is_some());
        assert!(named_digest(&format!("{hex}.json")).is_some());
        assert!(named_digest(&format!("{hex}/layer.tar")).is_none());
        assert!(named_digest("manifest.json").is_none());
    }

    #[test]
    fn magic() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8, 0]), Ok(unpack::Compression::Gzip));
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0]), Ok(unpack::Compression::Zstd));
        assert_eq!(sniff(&[0xfd, b'7', b'z', b'X', b'Z', 0]), Err("xz"));
        assert_eq!(sniff(b"hello"), Ok(unpack::Compression::None));
        let mut h = tar::Header::new_old();
        h.set_path("x").unwrap();
        h.set_size(0);
        h.set_cksum();
        assert!(tar_checksum_ok(h.as_bytes()));
        assert!(!tar_checksum_ok(&[b'x'; 512]));
    }
}
