//! skiff-images: the agent's supply line (registry client, content-addressed store,
//! safe layer unpacking, overlay rootfs, OCI bundle generation).
//!
//! Built so far: the registry client ([`client`]), the crash-safe store ([`store`]), the pull
//! pipeline ([`pull`]) and [`unpack`], the safe OCI layer unpacker.
//!
//! # Store layout (`<root>`, default `/var/lib/skiff`)
//!
//! ```text
//! <root>/lock                            flock: shared while a pull runs, exclusive for rmi/prune
//! <root>/blobs/sha256/<hex>              verified content: manifests, indexes, configs, layer blobs (compressed)
//! <root>/layers/sha256/<diff_id hex>/    an unpacked layer (overlay whiteouts), shared by every image that has it
//! <root>/images/<escaped reference>.json an image record: reference → manifest digest, config, layers
//!                                        (blob digest, diff_id, size), platform, size, created, pulled
//! <root>/tmp/<hex>.partial               a blob being downloaded (kept across crashes: a pull resumes it)
//! <root>/tmp/<hex>.lock                  serializes concurrent pulls of one blob
//! <root>/tmp/unpack-<hex>/               a layer being unpacked (redone after a crash)
//! <root>/tmp/write-*                     temp files of atomic writes
//! ```
//!
//! Escaped reference: `[A-Za-z0-9._-]` kept, other bytes `%XX`
//! (`docker.io%2Flibrary%2Fbusybox%3Alatest.json`).
//!
//! Crash safety: nothing looks complete unless it is. A blob is renamed into `blobs/` after
//! its sha256 matched and it was fsynced (then its directory is fsynced); a layer is renamed
//! into `layers/` after its diff_id matched and a syncfs; an image record is written last,
//! temp + fsync + rename + fsync(dir). What a crash leaves is in `tmp/`: partial blobs
//! (resumed by the next pull, re-hashed from disk) and half-unpacked layers (redone).
//! `prune` removes what no record references, and all of `tmp/`.
//!
//! Every digest is validated (`sha256:` + 64 lowercase hex, [`digest::Digest`]) before it
//! names a path.

pub mod archive;
pub mod auth;
pub mod bundle;
pub mod client;
pub mod digest;
pub mod error;
pub mod fsutil;
pub mod gc;
pub mod manifest;
pub mod platform;
pub mod pull;
pub mod reference;
pub mod rootfs;
pub mod store;
pub mod tarstream;
pub mod text;
pub mod unpack;
pub mod volume;

pub use client::{Client, ClientOptions};
pub use digest::Digest;
pub use error::{Error, Result};
pub use platform::Platform;
pub use pull::{pull, Event, Progress, PullOptions, Pulled};
pub use reference::Reference;
pub use store::{ImageRecord, PruneReport, References, Store};
