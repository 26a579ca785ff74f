//! `skiff agent`: keeps the services of the manifest running.
//!
//! ```text
//! manifest file ──(watch.rs: inotify, SIGHUP)──► reconcile.rs ──► replica.rs ──► oci.rs ──► runtime CLI
//!                                                  ▲    │                  └──► `skiff shim` (shim.rs)
//!                          health.rs (exec) ───────┘    └──► status.rs ──(watch channel)──► http.rs
//! ```
//!
//! See ARCHITECTURE.md for the whole flow.

pub mod cgstats;
pub mod http;
pub mod notify;
pub mod paths;
pub mod status;
