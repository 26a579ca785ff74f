//! The content-addressed store under `<root>` (layout in the crate docs). Everything that
//! looks complete is complete: blobs and image records are written temp + fsync + rename +
//! fsync(dir); layers are unpacked under `tmp/` and renamed into `layers/` after a syncfs.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::fsutil::{self, FileLock, LockKind};

/// One layer of an image record.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LayerRecord {
    /// Digest of the (compressed) blob, as in the manifest.
    pub digest: Digest,
    /// Digest of the uncompressed tar: the name of the unpacked directory under `layers/`.
    pub diff_id: Digest,
    /// Size of the blob in bytes.
    pub size: u64,
    pub media_type: String,
}

/// What the store knows of a pulled image (`images/<escaped reference>.json`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    /// The canonical reference it was pulled as (`docker.io/library/busybox:latest`).
    pub reference: String,
    /// Digest of the image manifest (for the chosen platform).
    pub digest: Digest,
    /// Digest of the index the manifest was chosen from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<Digest>,
    pub media_type: String,
    /// `os/arch[/variant]` of the image.
    pub platform: String,
    /// Digest of the image config (the image ID).
    pub config: Digest,
    /// Layers, bottom first.
    pub layers: Vec<LayerRecord>,
    /// Bytes of content: manifest + config + layer blobs (compressed).
    pub size: u64,
    /// `created` of the image config (RFC 3339), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// When it was pulled (RFC 3339, UTC).
    pub pulled: String,
    /// Loaded by `skiff load` or from `<root>/preload/` (an airgapped box may have no way to
    /// get it again): never removed by the image GC on disk pressure, only by `skiff rmi`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pinned: bool,
}

impl ImageRecord {
    /// Every blob the record needs.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        std::iter::once(&self.digest)
            .chain(self.index_digest.iter())
            .chain(std::iter::once(&self.config))
            .chain(self.layers.iter().map(|l| &l.digest))
    }
}

/// Content that must survive a prune besides what image records name (containers' layers,
/// later: see [`Store::prune`]).
#[derive(Debug, Default, Clone)]
pub struct References {
    pub blobs: HashSet<Digest>,
    pub layers: HashSet<Digest>,
}

/// What a prune removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PruneReport {
    pub blobs: usize,
    pub layers: usize,
    /// Leftovers of interrupted pulls (partial downloads, half-unpacked layers).
    pub temp: usize,
    pub bytes: u64,
}

/// What the store keeps directly under its root (the agent's own entries are
/// `skiff::daemon::paths`'): narrowed to 0700/0600 by [`Store::open`].
const STORE_ENTRIES: &[&str] = &[
    "blobs",
    "blobs/sha256",
    "layers",
    "layers/sha256",
    "images",
    "tmp",
    "lock",
    "preload",
    "preload.json",
    "preload.lock",
];

/// A handle on a store directory. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating when needed) the store at `root`. The root and its directories are made
    /// 0700 ([`fsutil::PRIVATE_DIR`]: why not 0710 there), and a store an older skiff left at 0755
    /// is narrowed: the root and the store's own entries directly under it, not a walk (layer
    /// contents keep the image's modes; they are reached only through the private directories).
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root: PathBuf = root.into();
        let store = Store { root };
        fsutil::create_private_dir(&store.root)
            .map_err(|e| Error::io(format!("creating the store directory {}", store.root.display()), &store.root, e))?;
        fsutil::make_private_entries(&store.root, STORE_ENTRIES).map_err(|e| {
            Error::io(format!("making the store {} private (mode 0700)", store.root.display()), &store.root, e)
        })?;
        for d in ["blobs/sha256", "layers/sha256", "images", "tmp"] {
            let p = store.root.join(d);
            fsutil::create_private_dir(&p)
                .map_err(|e| Error::io(format!("creating the store directory {}", p.display()), &store.root, e))?;
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers/sha256").join(diff_id.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    pub fn has_layer(&self, diff_id: &Digest) -> bool {
        self.layer_path(diff_id).is_dir()
    }

    /// Takes the store lock: shared for pulls (many at once), exclusive for rmi and prune.
    /// Calls `waiting` once if someone else holds it.
    pub fn lock(&self, kind: LockKind, waiting: impl FnOnce()) -> Result<FileLock> {
        let path = self.root.join("lock");
        let err = |e| Error::io(format!("locking the store {}", path.display()), &self.root, e);
        if let Some(l) = FileLock::try_lock(&path, kind).map_err(err)? {
            return Ok(l);
        }
        waiting();
        FileLock::lock(&path, kind).map_err(err)
    }

    /// Takes the store lock exclusively if no one holds it (`None`: a pull, a load or another
    /// prune is on; try later).
    pub fn try_lock_exclusive(&self) -> Result<Option<FileLock>> {
        let path = self.root.join("lock");
        FileLock::try_lock(&path, LockKind::Exclusive)
            .map_err(|e| Error::io(format!("locking the store {}", path.display()), &self.root, e))
    }

    /// The size and free space of the store's filesystem.
    // statvfs's fields are 32-bit on some targets (armv7 glibc), 64-bit here.
    #[allow(clippy::useless_conversion)]
    pub fn usage(&self) -> Result<crate::gc::Usage> {
        let st = nix::sys::statvfs::statvfs(&self.root).map_err(|e| {
            Error::io(format!("reading the free space of {}", self.root.display()), &self.root, io::Error::from(e))
        })?;
        let unit = u64::from(st.fragment_size());
        Ok(crate::gc::Usage {
            size: u64::from(st.blocks()).saturating_mul(unit),
            avail: u64::from(st.blocks_available()).saturating_mul(unit),
        })
    }

    /// The bytes a piece of content takes here (apparent sizes; 0 when absent).
    pub fn content_size(&self, c: &crate::gc::Content) -> u64 {
        match c {
            crate::gc::Content::Blob(d) => fs::symlink_metadata(self.blob_path(d)).map(|m| m.len()).unwrap_or(0),
            crate::gc::Content::Layer(d) => fsutil::tree_size(&self.layer_path(d)),
        }
    }

    /// Takes the per-blob lock that serializes concurrent pulls of one blob (async-friendly:
    /// polls without blocking a runtime thread).
    pub async fn lock_blob(&self, d: &Digest) -> Result<FileLock> {
        let path = self.tmp().join(format!("{}.lock", d.hex()));
        loop {
            match FileLock::try_lock(&path, LockKind::Exclusive) {
                Ok(Some(l)) => return Ok(l),
                Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => return Err(Error::io(format!("locking {}", path.display()), &self.root, e)),
            }
        }
    }

    /// Writes a verified blob from memory (manifests, indexes).
    pub fn put_blob(&self, d: &Digest, data: &[u8]) -> Result<()> {
        let actual = Digest::of(data);
        if actual != *d {
            return Err(Error::DigestMismatch { what: format!("blob {d}"), expected: d.clone(), actual });
        }
        if self.has_blob(d) {
            return Ok(());
        }
        fsutil::write_atomic(&self.tmp(), &self.blob_path(d), data)
            .map_err(|e| Error::io(format!("writing blob {d}"), &self.root, e))
    }

    /// Reads a blob, refusing one larger than `limit` bytes.
    pub fn read_blob(&self, d: &Digest, limit: u64) -> Result<Vec<u8>> {
        let p = self.blob_path(d);
        let err = |e| Error::io(format!("reading blob {d}"), &self.root, e);
        let f = fs::File::open(&p).map_err(err)?;
        let mut buf = Vec::new();
        f.take(limit + 1).read_to_end(&mut buf).map_err(err)?;
        if buf.len() as u64 > limit {
            return Err(Error::Invalid { what: format!("blob {d}"), detail: format!("larger than {limit} bytes") });
        }
        Ok(buf)
    }

    /// Moves a finished, verified download into `blobs/` durably (fsync file, rename, fsync dir).
    pub fn commit_blob(&self, file: &fs::File, partial: &Path, d: &Digest) -> Result<()> {
        let err = |e| Error::io(format!("storing blob {d}"), &self.root, e);
        file.sync_all().map_err(err)?;
        fs::rename(partial, self.blob_path(d)).map_err(err)?;
        fsutil::fsync_dir(&self.root.join("blobs/sha256")).map_err(err)
    }

    /// Moves an unpacked layer directory (under `tmp/`) into `layers/` durably: syncfs first
    /// (every file of the layer is on disk), then rename, then fsync of `layers/sha256`. If
    /// another pull committed the same layer meanwhile, ours is dropped.
    pub fn commit_layer(&self, dir: &Path, diff_id: &Digest) -> Result<()> {
        let err = |e| Error::io(format!("storing layer {diff_id}"), &self.root, e);
        fsutil::syncfs(dir).map_err(err)?;
        let dest = self.layer_path(diff_id);
        match fs::rename(dir, &dest) {
            Ok(()) => {}
            Err(e) if dest.is_dir() && matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) => {
                let _ = fsutil::remove_tree(dir);
            }
            Err(e) => return Err(err(e)),
        }
        fsutil::fsync_dir(&self.root.join("layers/sha256")).map_err(err)
    }

    fn image_path(&self, reference: &str) -> PathBuf {
        self.root.join("images").join(format!("{}.json", escape(reference)))
    }

    /// Writes (or replaces) an image record, durably. Called last in a pull.
    pub fn put_image(&self, rec: &ImageRecord) -> Result<()> {
        let mut data = serde_json::to_vec_pretty(rec).map_err(|e| Error::Other(e.to_string()))?;
        data.push(b'\n');
        fsutil::write_atomic(&self.tmp(), &self.image_path(&rec.reference), &data)
            .map_err(|e| Error::io(format!("writing the image record of {}", rec.reference), &self.root, e))
    }

    pub fn image(&self, reference: &str) -> Result<Option<ImageRecord>> {
        let p = self.image_path(reference);
        match fs::read(&p) {
            Ok(data) => serde_json::from_slice(&data).map(Some).map_err(|e| Error::Invalid {
                what: format!("image record {}", p.display()),
                detail: format!("not valid ({e}); remove the file"),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", p.display()), &self.root, e)),
        }
    }

    /// Every image record, sorted by reference. Unreadable records are returned as errors
    /// beside the good ones.
    pub fn images(&self) -> Result<(Vec<ImageRecord>, Vec<String>)> {
        let dir = self.root.join("images");
        let rd = fs::read_dir(&dir).map_err(|e| Error::io(format!("listing {}", dir.display()), &self.root, e))?;
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            match fs::read(&p)
                .map_err(|e| e.to_string())
                .and_then(|d| serde_json::from_slice::<ImageRecord>(&d).map_err(|e| e.to_string()))
            {
                Ok(r) => out.push(r),
                Err(e) => bad.push(format!("{}: {e}", p.display())),
            }
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok((out, bad))
    }

    /// Removes an image record; `false` when there was none.
    pub fn remove_image(&self, reference: &str) -> Result<bool> {
        let p = self.image_path(reference);
        match fs::remove_file(&p) {
            Ok(()) => {
                let _ = fsutil::fsync_dir(&self.root.join("images"));
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(format!("removing {}", p.display()), &self.root, e)),
        }
    }

    /// Removes every blob and unpacked layer that no image record and nothing in `keep` (the
    /// agent's containers, later) references, and every leftover of interrupted pulls in
    /// `tmp/`. The caller holds the exclusive store lock. A layer is first renamed into
    /// `tmp/` (so it never looks complete while half removed), then deleted.
    pub fn prune(&self, keep: &References) -> Result<PruneReport> {
        let (records, bad) = self.images()?;
        if let Some(b) = bad.first() {
            // An unreadable record might reference anything: refuse rather than guess.
            return Err(Error::Other(format!(
                "prune: cannot read the image record {b}: fix or remove it, then prune again"
            )));
        }
        let mut blobs: HashSet<Digest> = keep.blobs.clone();
        let mut layers: HashSet<Digest> = keep.layers.clone();
        for r in &records {
            blobs.extend(r.blobs().cloned());
            layers.extend(r.layers.iter().map(|l| l.diff_id.clone()));
        }
        let mut report = PruneReport::default();
        let err = |what: String| move |e| Error::io(what, &self.root, e);

        let dir = self.root.join("blobs/sha256");
        for e in fs::read_dir(&dir).map_err(err(format!("listing {}", dir.display())))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(d) = Digest::parse(&format!("sha256:{name}")) else { continue };
            if blobs.contains(&d) {
                continue;
            }
            let size = e.metadata().map(|m| m.len()).unwrap_or(0);
            fs::remove_file(e.path()).map_err(err(format!("removing blob {d}")))?;
            report.blobs += 1;
            report.bytes += size;
        }
        let _ = fsutil::fsync_dir(&dir);

        let dir = self.root.join("layers/sha256");
        for e in fs::read_dir(&dir).map_err(err(format!("listing {}", dir.display())))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(d) = Digest::parse(&format!("sha256:{name}")) else { continue };
            if layers.contains(&d) {
                continue;
            }
            let trash = self.tmp().join(format!("trash-{name}-{}", fsutil::unique()));
            fs::rename(e.path(), &trash).map_err(err(format!("removing layer {d}")))?;
            report.bytes += fsutil::tree_size(&trash);
            fsutil::remove_tree(&trash).map_err(err(format!("removing layer {d}")))?;
            report.layers += 1;
        }
        let _ = fsutil::fsync_dir(&dir);

        let tmp = self.tmp();
        for e in fs::read_dir(&tmp).map_err(err(format!("listing {}", tmp.display())))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let p = e.path();
            if name.starts_with("trash-") {
                let _ = fsutil::remove_tree(&p);
                continue;
            }
            let bytes = fsutil::tree_size(&p);
            let res = if p.is_dir() { fsutil::remove_tree(&p) } else { fs::remove_file(&p) };
            res.map_err(err(format!("removing {}", p.display())))?;
            if !name.ends_with(".lock") {
                report.temp += 1;
                report.bytes += bytes;
            }
        }
        Ok(report)
    }
}

/// A reference as a file name: `[A-Za-z0-9._-]` kept, every other byte as `%XX` (injective),
/// or `sha256-<hex of the reference>` when that would be too long for a file name.
fn escape(reference: &str) -> String {
    let mut s = String::new();
    for b in reference.bytes() {
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-' {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    if s.len() > 200 || s.starts_with('.') {
        format!("sha256-{}", Digest::of(reference.as_bytes()).hex())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(escape("docker.io/library/busybox:latest"), "docker.io%2Flibrary%2Fbusybox%3Alatest");
        assert_ne!(escape("a/b"), escape("a%2Fb"));
        assert!(escape(&"x".repeat(300)).starts_with("sha256-"));
    }

    fn d(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    #[test]
    fn records_and_prune() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let blob = b"hello".to_vec();
        let bd = Digest::of(&blob);
        s.put_blob(&bd, &blob).unwrap();
        assert!(matches!(s.put_blob(&d('a'), b"x"), Err(Error::DigestMismatch { .. })));
        fs::create_dir_all(s.layer_path(&d('b')).join("etc")).unwrap();
        fs::write(s.layer_path(&d('b')).join("etc/x"), b"12345").unwrap();
        fs::create_dir_all(s.layer_path(&d('c'))).unwrap();
        let rec = ImageRecord {
            reference: "example.com/a:1".into(),
            digest: bd.clone(),
            index_digest: None,
            media_type: "m".into(),
            platform: "linux/amd64".into(),
            config: bd.clone(),
            layers: vec![LayerRecord { digest: bd.clone(), diff_id: d('c'), size: 5, media_type: "l".into() }],
            size: 5,
            created: None,
            pulled: "2000-01-01T00:00:00Z".into(),
            pinned: false,
        };
        s.put_image(&rec).unwrap();
        assert_eq!(s.image("example.com/a:1").unwrap(), Some(rec.clone()));
        fs::write(s.tmp().join("x.partial"), b"abc").unwrap();
        let r = s.prune(&References::default()).unwrap();
        assert_eq!((r.blobs, r.layers, r.temp), (0, 1, 1));
        assert!(s.has_layer(&d('c')) && !s.has_layer(&d('b')) && s.has_blob(&bd));
        assert!(s.remove_image("example.com/a:1").unwrap());
        assert!(!s.remove_image("example.com/a:1").unwrap());
        let r = s.prune(&References::default()).unwrap();
        assert_eq!((r.blobs, r.layers), (1, 1));
        assert!(r.bytes >= 5);
        assert!(!s.has_blob(&bd));
    }
}
