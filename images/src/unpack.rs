//! Safe OCI layer unpacking.
//!
//! A layer blob (gzip with any number of members, zstd, or plain tar; told apart by magic
//! bytes) is streamed into a directory while the sha256 of the *uncompressed* stream is
//! computed, so the caller can check it against the image config's `rootfs.diff_ids`.
//!
//! ```no_run
//! use skiff_images::unpack::{unpack_layer, verify_diff_id, sync_dir_tree, UnpackOptions};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let (blob, tmp, expected_diff_id) = (std::fs::File::open("blob")?, std::path::Path::new("t"), "sha256:..");
//! std::fs::create_dir(tmp)?;
//! let stats = unpack_layer(blob, tmp, &UnpackOptions::default())?;
//! if let Err(e) = verify_diff_id(&stats.diff_id, expected_diff_id) {
//!     std::fs::remove_dir_all(tmp)?; // the caller removes the partial directory
//!     return Err(e.into());
//! }
//! sync_dir_tree(tmp)?; // one syncfs instead of an fsync per file, then rename into place
//! # Ok(()) }
//! ```
//!
//! # API
//!
//! - [`unpack_layer`]`(reader, dest, &opts) -> UnpackStats` (`diff_id` = `"sha256:<hex>"`,
//!   entry/file/byte counts, [`Compression`], and `notes`: things skipped on purpose, for the
//!   caller to log at debug level). In [`WhiteoutMode::Overlay`] `dest` must be an existing
//!   empty directory; in [`WhiteoutMode::Apply`] it may hold the layers below.
//! - [`UnpackOptions`]: whiteout mode, `same_owner`, the media type (a hint) and, optionally,
//!   the expected diff_id (then a mismatch fails the unpack after the whole stream is read).
//!   [`UnpackOptions::overlay`]`(media_type, diff_id)` / [`UnpackOptions::apply`] build them.
//! - [`verify_diff_id`]`(actual, expected)`: a clear [`UnpackError::DiffIdMismatch`].
//! - [`sync_dir_tree`]`(dir)`: `syncfs(2)` on the directory's filesystem.
//!
//! On error the directory holds a partial layer: remove it (`std::fs::remove_dir_all` does
//! not follow symlinks).
//!
//! # Whiteouts
//!
//! [`WhiteoutMode::Overlay`] (each layer in its own directory, stacked later as overlayfs
//! lowerdirs): `.wh.NAME` becomes a 0/0 character device `NAME`, and `.wh..wh..opq` sets
//! `trusted.overlay.opaque=y` on its directory. Needs CAP_MKNOD and CAP_SYS_ADMIN (root); a
//! whiteout that cannot be represented is an error, never skipped (a deleted file would
//! reappear). [`WhiteoutMode::Apply`] (the copy fallback, layers applied on top of each other
//! in one directory): `.wh.NAME` deletes NAME, `.wh..wh..opq` deletes everything in its
//! directory that this layer did not create. In both modes a whiteout only hides lower
//! layers, never the layer's own files (OCI image-spec).
//!
//! # Security model
//!
//! Nothing is ever written outside `dest`, whatever the tar holds:
//! - Entry names are normalized: a leading `/` is **stripped** (a layer is a root filesystem,
//!   `/etc/x` means the layer's `etc/x`: what docker, containerd and GNU tar do; it is
//!   contained either way), `.` components dropped, any `..` component **refused**.
//! - Every entry is created relative to a directory fd. The parent directory is opened with
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)` (on kernels without
//!   openat2: one component at a time with `O_NOFOLLOW`), so a parent that is a symlink, in
//!   this layer or (apply mode) a lower one, fails the unpack instead of being followed:
//!   `link/x`, `link/.wh.x` with `link -> /host/dir` or `link -> ..`.
//! - Leaves are created with `O_CREAT|O_EXCL|O_NOFOLLOW`, `mkdirat`, `symlinkat`, `linkat`
//!   (no follow), `mknodat`; an existing leaf is unlinked first (OCI "changeset over existing
//!   files"), so nothing is opened, chmod'ed or chown'ed through a link. Ownership and times of
//!   links use `AT_SYMLINK_NOFOLLOW`; modes are set with `fchmod` on an fd opened `O_NOFOLLOW`.
//! - A name this layer already created as a symlink or hardlink may not be replaced by a later
//!   entry of the same layer (RUSTSEC-2018-0002 and CVE-2021-32760 shapes): the unpack fails.
//! - Only a directory entry may name the root (`.` as a symlink: umoci CVE-2021-29136).
//! - Hardlink targets are normalized like names and must be already unpacked in `dest`
//!   (resolved without following symlinks); links to directories are refused.
//! - Symlink targets are stored as they are (absolute targets are normal in images): they are
//!   only dangerous when followed, and nothing here follows one.
//!
//! Bounded input: the tar stream is read by [`crate::tarstream`], which checks every GNU long
//! name / long link name (at most 4096 bytes) and PAX header, local or global (at most 1 MiB,
//! as Go's archive/tar), against its limit before reading a byte of it, so a layer cannot
//! make the unpacker buffer more than that; an entry name quoted in an error is escaped and
//! cut to [`crate::text::NAME_SHOWN`] bytes.
//!
//! Unverified bytes: a pull unpacks a layer while it downloads, so the unpacker parses bytes
//! whose digest is not verified yet. That is sound because everything it does with them is
//! bounded and private: memory by the caps above, writes to a fresh `tmp/unpack-<hex>`
//! directory that nothing uses and that is renamed into `layers/` only after both the blob's
//! sha256 and the diff_id matched (else removed), and every path is resolved inside it. A
//! stream that fails its digest can do nothing a *verified* hostile layer could not do (the
//! digest proves the bytes are the image's, not that the image is benign), so verifying
//! first would only lose the download/unpack overlap.
//!
//! # Xattrs (PAX `SCHILY.xattr.*`)
//!
//! `trusted.overlay.*` / `user.overlay.*` are never applied (they steer overlayfs: redirects,
//! metacopy, opaque; only this module sets them). `security.*` labels other than
//! `security.capability` are host policy (SELinux, IMA, SMACK) and are skipped with a note.
//! `security.capability` and POSIX ACLs (`system.posix_acl_*`) must be applied: if the
//! filesystem refuses them the unpack fails, since dropping them silently changes what a file
//! grants or who may read it. Other xattrs (`user.*`, `trusted.*`) are best effort: refused
//! ones become a note.
//!
//! # Performance
//!
//! Streaming, nothing buffered beyond a few 128-256 KiB chunks. Two threads, like `tar xzf`
//! and its gzip child: the calling thread reads and decompresses, a scoped worker hashes,
//! parses and writes (the caller's reader needs no `Send`). No per-file fsync (one
//! [`sync_dir_tree`] at the end), one parent-directory fd cached across consecutive entries,
//! directory modes and times set once at the end (after their contents).

mod error;
mod extract;
mod fsops;
mod path;
mod stream;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::mpsc;

use nix::fcntl::{self, OFlag};
use nix::sys::stat::Mode;

use crate::tarstream::{TarError, TarReader};

pub use error::UnpackError;
pub use stream::{decompress, detect as detect_compression};

/// Buffer size of the stream readers and the file copy.
pub const BUF_SIZE: usize = 128 * 1024;

/// How whiteouts are represented (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhiteoutMode {
    /// Each layer in its own directory, stacked with overlayfs: 0/0 char devices and
    /// `trusted.overlay.opaque=y`.
    Overlay,
    /// Layers applied one on top of another in one directory: whiteouts delete.
    Apply,
}

/// Options of [`unpack_layer`].
#[derive(Clone, Debug)]
pub struct UnpackOptions {
    pub whiteouts: WhiteoutMode,
    /// Set entries' uid/gid from the tar (needs root). Default: true when running as root.
    pub same_owner: bool,
    /// The descriptor's media type, as a hint: the magic bytes decide the compression (a
    /// disagreement becomes a note); a media type that is not a layer is refused.
    pub media_type: Option<String>,
    /// The image config's diff_id for this layer: when set, [`unpack_layer`] fails with
    /// [`UnpackError::DiffIdMismatch`] after reading the whole stream if it differs.
    pub expected_diff_id: Option<String>,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            whiteouts: WhiteoutMode::Overlay,
            same_owner: nix::unistd::geteuid().is_root(),
            media_type: None,
            expected_diff_id: None,
        }
    }
}

impl UnpackOptions {
    /// Overlay whiteouts, a media type hint and the diff_id to verify.
    pub fn overlay(media_type: &str, expected_diff_id: &str) -> Self {
        UnpackOptions {
            media_type: Some(media_type.to_string()),
            expected_diff_id: Some(expected_diff_id.to_string()),
            ..UnpackOptions::default()
        }
    }

    /// Apply-mode whiteouts (the copy fallback), a media type hint and the diff_id to verify.
    pub fn apply(media_type: &str, expected_diff_id: &str) -> Self {
        UnpackOptions { whiteouts: WhiteoutMode::Apply, ..UnpackOptions::overlay(media_type, expected_diff_id) }
    }
}

/// The compression of a layer blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        })
    }
}

/// What [`unpack_layer`] did.
#[derive(Clone, Debug)]
pub struct UnpackStats {
    /// `sha256:<hex>` of the uncompressed tar stream, to the end of the stream.
    pub diff_id: String,
    pub compression: Compression,
    /// Length of the uncompressed stream.
    pub bytes: u64,
    /// Tar entries (files, directories, links, whiteouts, ...).
    pub entries: u64,
    /// Regular files written, and their bytes.
    pub files: u64,
    pub file_bytes: u64,
    pub whiteouts: u64,
    /// Things skipped on purpose (refused best-effort xattrs, device nodes without
    /// CAP_MKNOD, ...), at most about a hundred lines: log them at debug level.
    pub notes: Vec<String>,
}

/// Unpacks a layer blob into `dest` and returns the diff_id of its uncompressed stream.
pub fn unpack_layer(reader: impl Read, dest: &Path, opts: &UnpackOptions) -> Result<UnpackStats, UnpackError> {
    unpack_with(reader, dest, opts, true)
}

/// Fails with [`UnpackError::DiffIdMismatch`] unless `actual` is `expected`.
pub fn verify_diff_id(actual: &str, expected: &str) -> Result<(), UnpackError> {
    check_digest(expected)?;
    if actual != expected {
        return Err(UnpackError::DiffIdMismatch { expected: expected.to_string(), actual: actual.to_string() });
    }
    Ok(())
}

fn check_digest(d: &str) -> Result<(), UnpackError> {
    match d.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => Ok(()),
        _ => Err(UnpackError::InvalidDigest(d.to_string())),
    }
}

/// Flushes the filesystem holding `dir` to disk with one `syncfs(2)`: call it once after
/// unpacking, before renaming the layer directory into place.
pub fn sync_dir_tree(dir: &Path) -> Result<(), UnpackError> {
    let err = |source: io::Error| UnpackError::Sync { path: dir.to_path_buf(), source };
    let fd = fcntl::open(dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| err(e.into()))?;
    let fd = fsops::own(fd);
    nix::unistd::syncfs(fd.as_raw_fd()).map_err(|e| err(e.into()))
}

fn unpack_with(
    reader: impl Read,
    dest: &Path,
    opts: &UnpackOptions,
    use_openat2: bool,
) -> Result<UnpackStats, UnpackError> {
    if let Some(expected) = &opts.expected_diff_id {
        check_digest(expected)?;
    }
    let dest_err = |source: io::Error| UnpackError::Dest { path: dest.to_path_buf(), source };
    let root = fcntl::open(dest, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| dest_err(e.into()))?;
    let root = fsops::own(root);
    if opts.whiteouts == WhiteoutMode::Overlay
        && !fsops::dir_is_empty(root.as_raw_fd()).map_err(|e| dest_err(e.into()))?
    {
        return Err(UnpackError::DestNotEmpty { path: dest.to_path_buf() });
    }
    let hint = opts.media_type.as_deref().map(stream::media_type_hint).transpose()?.flatten();
    let mut notes = extract::Notes::default();
    let (mut stream, compression) = stream::open(reader, hint, &mut notes)?;

    // Two stages, like `tar xzf` with its gzip child: this thread reads and decompresses; a
    // scoped worker hashes, parses the tar and writes the files. The caller's reader stays on
    // this thread (no Send bound); chunks and their buffers go round two channels.
    let (full_tx, full_rx) = mpsc::sync_channel(stream::PIPE_CHUNKS);
    let (empty_tx, empty_rx) = mpsc::channel();
    let counts = std::thread::scope(|s| {
        let worker = std::thread::Builder::new()
            .name("skiff-unpack".into())
            .spawn_scoped(s, move || {
                extract_all(stream::ChunkReader::new(full_rx, empty_tx), root, opts, use_openat2, notes)
            })
            .map_err(UnpackError::Spawn)?;
        // Stops early when the worker is gone: its error is the one to report.
        stream::pump(&mut stream, &full_tx, &empty_rx);
        drop(full_tx);
        worker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })?;
    // The worker read to the end of the stream (else it failed), so the digest is complete.
    let (diff_id, bytes) = (counts.diff_id, counts.bytes);
    if let Some(expected) = &opts.expected_diff_id {
        verify_diff_id(&diff_id, expected)?;
    }
    Ok(UnpackStats {
        diff_id,
        compression,
        bytes,
        entries: counts.entries,
        files: counts.files,
        file_bytes: counts.file_bytes,
        whiteouts: counts.whiteouts,
        notes: counts.notes,
    })
}

struct Counts {
    diff_id: String,
    bytes: u64,
    entries: u64,
    files: u64,
    file_bytes: u64,
    whiteouts: u64,
    notes: Vec<String>,
}

/// The worker: every tar entry, then the rest of the stream, then the directories' metadata.
fn extract_all(
    input: stream::ChunkReader,
    root: std::os::fd::OwnedFd,
    opts: &UnpackOptions,
    use_openat2: bool,
    notes: extract::Notes,
) -> Result<Counts, UnpackError> {
    let mut ex = extract::Extractor::new(root, opts, use_openat2, notes);
    let mut tar = TarReader::new(input);
    let after = |last: &Option<Vec<u8>>| last.as_deref().map(error::disp);
    loop {
        let entry = match tar.next_entry() {
            Ok(Some(e)) => e,
            Ok(None) => break,
            Err(TarError::Io(source)) => return Err(UnpackError::Stream { after: after(&ex.last), source }),
            Err(TarError::Invalid(reason)) => return Err(UnpackError::Tar { after: after(&ex.last), reason }),
        };
        ex.entry(&entry, &mut tar)?;
    }
    // Read to the end (tar padding, a gzip trailer with its CRC, anything after): the
    // diff_id covers the whole stream.
    let mut rest = tar.into_inner();
    let stream_err =
        |after: &Option<Vec<u8>>, source| UnpackError::Stream { after: after.as_deref().map(error::disp), source };
    io::copy(&mut rest, &mut io::sink()).map_err(|e| stream_err(&ex.last, e))?;
    ex.finish()?;
    let (diff_id, bytes) = rest.finish();
    Ok(Counts {
        diff_id,
        bytes,
        entries: ex.entries,
        files: ex.files,
        file_bytes: ex.file_bytes,
        whiteouts: ex.whiteouts,
        notes: std::mem::take(&mut ex.notes).into_vec(),
    })
}
