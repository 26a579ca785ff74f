//! The unpacker's error type. Every variant renders as one line that names the layer
//! entry (or the destination) and, where there is one, what to do about it.

use std::io;
use std::path::PathBuf;

use crate::text;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnpackError {
    /// The destination directory cannot be opened (missing, not a directory, no access).
    #[error("layer directory {}: {source}", path.display())]
    Dest {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Overlay mode unpacks each layer into its own fresh directory.
    #[error(
        "layer directory {} is not empty: overlay-mode layers are unpacked into a new empty directory",
        path.display()
    )]
    DestNotEmpty { path: PathBuf },
    /// The descriptor's media type says this blob is not a filesystem layer.
    #[error("media type {0:?} is not a tar filesystem layer; refusing to unpack it")]
    NotALayer(String),
    /// The blob starts with the magic bytes of a compression we do not read.
    #[error("layer blob is {0}-compressed; only gzip, zstd and uncompressed tar layers are supported")]
    UnsupportedCompression(&'static str),
    /// Reading, decompressing or parsing the stream failed.
    #[error("reading the layer stream{}: {source} (the blob is corrupt or truncated)", after_entry(.after))]
    Stream {
        after: Option<String>,
        #[source]
        source: io::Error,
    },
    /// The tar stream is malformed, or an extension record (GNU long name, PAX header) is
    /// over its limit: see [`crate::tarstream`].
    #[error("layer is not a tar skiff accepts{}: {reason}; refusing to unpack it", after_entry(.after))]
    Tar { after: Option<String>, reason: String },
    /// An entry tries to write outside the layer directory or through a link: the layer is
    /// malicious (or badly broken). Nothing outside the layer directory was touched.
    #[error("layer entry \"{entry}\": {reason}; refusing to unpack this layer")]
    Unsafe { entry: String, reason: String },
    /// An entry is malformed or conflicts with the tree (not an attack, but not unpackable).
    #[error("layer entry \"{entry}\": {reason}")]
    Invalid { entry: String, reason: String },
    /// A filesystem operation for an entry failed.
    #[error("layer entry \"{entry}\": {op}: {source}")]
    Io {
        entry: String,
        op: String,
        #[source]
        source: io::Error,
    },
    /// The sha256 of the uncompressed stream is not the one the image config lists.
    #[error(
        "layer diff_id mismatch: the uncompressed layer is {actual} but the image config lists {expected}; \
         the blob is corrupt or not this image's layer (remove the unpacked directory and pull it again)"
    )]
    DiffIdMismatch { expected: String, actual: String },
    /// A diff_id that is not `sha256:` + 64 lowercase hex digits.
    #[error("invalid diff_id {0:?}: expected \"sha256:\" followed by 64 lowercase hex digits")]
    InvalidDigest(String),
    /// The extracting thread could not be started (thread limit).
    #[error("starting the layer unpack thread: {0}")]
    Spawn(#[source] io::Error),
    /// syncfs of the layer directory failed.
    #[error("syncing the filesystem of {}: {source}", path.display())]
    Sync {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn after_entry(after: &Option<String>) -> String {
    match after {
        Some(e) => format!(" after entry \"{e}\""),
        None => String::new(),
    }
}

/// A tar path as text for messages: lossy (tar paths are bytes), control characters
/// escaped, at most [`text::NAME_SHOWN`] bytes (a name can be 4096 bytes).
pub(super) fn disp(raw: &[u8]) -> String {
    text::name(raw)
}

/// A reason for a message: escaped and bounded (it may quote the tar crate's header errors,
/// which hold raw header bytes).
fn reason(r: String) -> String {
    match text::escape(&r) {
        std::borrow::Cow::Borrowed(_) if r.len() <= 2 * text::NAME_SHOWN + 200 => r,
        e => text::clip(&e, 2 * text::NAME_SHOWN + 200).into_owned(),
    }
}

impl UnpackError {
    pub(super) fn unsafe_entry(raw: &[u8], reason_text: impl Into<String>) -> Self {
        UnpackError::Unsafe { entry: disp(raw), reason: reason(reason_text.into()) }
    }

    pub(super) fn invalid(raw: &[u8], reason_text: impl Into<String>) -> Self {
        UnpackError::Invalid { entry: disp(raw), reason: reason(reason_text.into()) }
    }

    pub(super) fn io(raw: &[u8], op: impl Into<String>, source: impl Into<io::Error>) -> Self {
        UnpackError::Io { entry: disp(raw), op: reason(op.into()), source: source.into() }
    }
}
