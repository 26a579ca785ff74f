//! skiff-runtime: a runc-compatible OCI runtime.
//!
//! The binary (`main.rs`) parses runc's command line and calls [`commands`].
//! Parent-side work (state, cgroups, hooks, namespaces to join) lives in
//! [`container`]; everything that happens inside the new container before the
//! user's process is exec'ed lives in [`init`].

pub mod bpf;
pub mod cgroups;
pub mod cloned;
pub mod commands;
pub mod console;
pub mod container;
pub mod devfilter;
pub mod error;
pub mod hooks;
pub mod init;
pub mod log;
pub mod mountapi;
pub mod process;
pub mod seccomp;
pub mod signal;
pub mod spec;
pub mod state;
pub mod sync;
pub mod sysctl;
pub mod systemd;

pub use error::{Error, Result};
