//! The errors of pulling and of the store. Each one reads as one line: what failed, for which
//! image or blob, and what to do.

use std::path::PathBuf;

use crate::digest::{BadDigest, Digest};
use crate::reference::BadReference;

/// Errors of the registry client, the store and the pull pipeline.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Reference(#[from] BadReference),

    #[error("{context}: {source}")]
    BadDigest { context: String, source: BadDigest },

    #[error(transparent)]
    AuthFile(#[from] crate::auth::AuthFileError),

    /// The connection failed (refused, reset, timed out, TLS, ...).
    #[error("{what}: {detail}")]
    Network { what: String, detail: String },

    /// The registry answered with an error status.
    #[error("{what}: the registry answered {status}{detail}")]
    Status { what: String, status: u16, detail: String },

    /// 429 Too Many Requests, with how long the registry asks to wait (`Retry-After`, seconds).
    #[error("{what}: the registry answered 429 (too many requests){}", retry_after.map(|s| format!("; it asks to wait {s}s")).unwrap_or_default())]
    RateLimited { what: String, retry_after: Option<u64> },

    #[error("{what}: {detail}")]
    Unauthorized { what: String, detail: String },

    #[error("{what}: not found in the registry{detail}")]
    NotFound { what: String, detail: String },

    /// Content whose digest is not the one it was asked by.
    #[error("{what}: digest mismatch: expected {expected}, got {actual} (the registry or the network served corrupt data; nothing was stored)")]
    DigestMismatch { what: String, expected: Digest, actual: Digest },

    /// A manifest, index or config the registry served that skiff cannot use.
    #[error("{what}: {detail}")]
    Invalid { what: String, detail: String },

    #[error("no space left on device while {what}: free space under {} (`skiff prune` removes data no image uses)", root.display())]
    NoSpace { what: String, root: PathBuf },

    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },

    /// The layer unpacker refused or failed.
    #[error("{what}: {detail}")]
    Unpack { what: String, detail: String },

    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error while doing `what` under `root`: ENOSPC and EDQUOT become [`Error::NoSpace`].
    pub fn io(what: impl Into<String>, root: &std::path::Path, source: std::io::Error) -> Error {
        if crate::fsutil::is_no_space(&source) {
            Error::NoSpace { what: what.into(), root: root.to_path_buf() }
        } else {
            Error::Io { what: what.into(), source }
        }
    }

    /// The error without the "what" it is about (for retry lines that already say it).
    pub fn detail(&self) -> String {
        match self {
            Error::Network { detail, .. } => detail.clone(),
            Error::Status { status, detail, .. } => format!("the registry answered {status}{detail}"),
            e => e.to_string(),
        }
    }

    /// Whether trying again may help (network trouble, 5xx, 429, a cut body).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Network { .. } => true,
            Error::Status { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            Error::RateLimited { .. } => true,
            _ => false,
        }
    }
}

/// The `source()` chain of an error as one line (`a: b: c`), without repeats.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let m = s.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        cur = s.source();
    }
    out
}
