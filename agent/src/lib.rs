//! skiff: the agent (reconcile loop, supervision, health, logs, status endpoint) and CLI.
//!
//! Built so far: the image commands of the CLI ([`cli`]: `pull`, `images`, `rmi`, `prune`) and the
//! manifest parser and validator ([`manifest`], `skiff validate`).
//! The agent itself comes with issue 4.

pub mod cli;
pub mod daemon;
pub mod hostcheck;
pub mod logs;
pub mod manifest;
pub mod net;
pub mod rollout;
pub mod shim;
pub mod supervise;
