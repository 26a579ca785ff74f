//! What the agent shows about itself: the `/v1/status` JSON model and the `/metrics` text.
//!
//! The reconcile loop builds a [`Status`] after every change and publishes it as a
//! [`Snapshot`] through a `tokio::sync::watch` channel; the HTTP server only ever reads the
//! latest snapshot, so a slow client never holds anything the loop needs.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use skiff_images::text;

/// The whole status document (`GET /v1/status`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub manifest: ManifestStatus,
    pub services: Vec<ServiceStatus>,
    /// What the agent found wrong with the host at start (`skiff check`'s warnings and errors).
    #[serde(default)]
    pub host: HostStatus,
    /// The image store's filesystem and its garbage collection (`None` until first measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreStatus>,
}

/// The host's problems: [`crate::hostcheck`]'s findings of level warning or error, read at the
/// agent's start (the clock's is dropped once the clock is right).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct HostStatus {
    pub findings: Vec<crate::hostcheck::Finding>,
}

/// The image store's filesystem and the image GC on disk pressure.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StoreStatus {
    /// Size of the filesystem the store is on, and the bytes used on it (as `df` counts).
    pub size_bytes: u64,
    pub used_bytes: u64,
    pub image_gc: ImageGcStatus,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ImageGcStatus {
    /// Off by `x-skiff: {image_gc: false}`.
    pub enabled: bool,
    /// The marks in percent: collect above `high_percent`, down to `low_percent`.
    pub high_percent: u8,
    pub low_percent: u8,
    /// Collections since the agent started, the images they removed and the bytes freed.
    pub runs: u64,
    pub images_removed: u64,
    pub bytes_freed: u64,
    /// What the last collection did (or why it could not reach the low mark).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ManifestStatus {
    pub path: String,
    /// `sha256:<hex>` of the file in force (the last good one), `None` before any loaded.
    pub revision: Option<String>,
    /// The error of the newest version of the file, when it could not be used (the last good
    /// revision stays in force); `None` when the newest version is the one in force.
    pub error: Option<String>,
    /// Warnings of the revision in force (`FILE:LINE:COL: warning: ...`).
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ServiceStatus {
    pub name: String,
    /// The image reference as written in the manifest.
    pub image: String,
    /// The manifest digest its running replicas were made from (`None` while none runs); during
    /// an update, that of the revision in force when one runs it.
    pub image_digest: Option<String>,
    pub desired_replicas: u32,
    pub running_replicas: u32,
    /// Running replicas that pass their health check, or run and have none.
    pub healthy_replicas: u32,
    /// E.g. "memory limit not applied: the kernel has no memory cgroup controller".
    pub warnings: Vec<String>,
    pub replicas: Vec<ReplicaStatus>,
    /// Its published ports (bridged services with `ports:`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortStatus>,
    /// Its revisions, overrides and rollout.
    #[serde(flatten)]
    pub revisions: RevisionStatus,
    /// The last check of its image tag against the registry (`pull_policy` daily, weekly,
    /// every_..., always, or `skiff update`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_check: Option<ImageCheckStatus>,
}

/// A service's checks of its image tag.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ImageCheckStatus {
    /// RFC 3339, the last one.
    pub at: Option<String>,
    /// `unchanged`, `new digest ...`, `failed before: ...`, `error`.
    pub result: Option<String>,
    /// The last one's error (what runs keeps running).
    pub error: Option<String>,
    /// Seconds to the next scheduled one.
    pub next_in: Option<u64>,
    /// Checks so far by result, in the order of [`IMAGE_CHECK_RESULTS`].
    pub counts: [u64; 4],
}

/// The results an image check counts, in [`ImageCheckStatus::counts`]'s order (`/metrics`'
/// `result` label).
pub const IMAGE_CHECK_RESULTS: [&str; 4] = ["unchanged", "new", "failed_before", "error"];

/// A service's revision in force, the manifest's, what overrides the manifest, its last rollout.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RevisionStatus {
    /// The revision its replicas converge to (`None` before its image is resolved).
    pub revision: Option<u32>,
    /// The revision the manifest's definition is.
    pub manifest_revision: Option<u32>,
    /// `skiff scale`'s replicas, while they hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<u32>,
    /// What overrides the manifest (`skiff scale`, `skiff rollback`, a rolled back update).
    #[serde(rename = "override")]
    pub override_: Option<String>,
    /// The last rollout (`None`: there has been none).
    pub update: Option<UpdateStatus>,
}

/// A rollout: `state` is `updating`, `paused`, `rolling_back`, `rolled_back` or `completed`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct UpdateStatus {
    pub state: String,
    pub from: u32,
    pub to: u32,
    /// Slots done (only a ready container of `to` left).
    pub updated: u32,
    /// Slots whose new container failed.
    pub failed: u32,
    /// Slots to update when it began.
    pub total: u32,
    /// RFC 3339.
    pub started: String,
    pub message: Option<String>,
}

/// One published host port of a service.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PortStatus {
    /// This port in compose's short syntax (`8080:80/tcp`, `80/udp` for a chosen host port).
    pub mapping: String,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// The host address listened on (`::` is every address of both families).
    pub host_ip: Option<String>,
    /// The host port, once bound (the chosen one for `80` or a range).
    pub host_port: Option<u16>,
    /// The container port.
    pub target: u16,
    /// How many replicas take its traffic now (running, and healthy or without a check).
    pub backends: u32,
    /// Why it is not published (`host port 8080/tcp is already in use`); retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Published, but not as it should be: the kernel's DNAT rules could not be applied, so
    /// the agent's proxy serves IPv4 too (retried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ReplicaStatus {
    /// `SERVICE-N` (or `SERVICE-N.b`: see `slot`).
    pub id: String,
    pub state: ReplicaState,
    /// The container's init pid, while it has one.
    pub pid: Option<i32>,
    pub restarts: u32,
    /// The code of the last exit (128 + signal for a death by signal).
    pub last_exit_code: Option<i32>,
    pub health: Health,
    /// RFC 3339, when the current container started.
    pub started_at: Option<String>,
    /// Seconds until the pending restart (state `backoff`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_restart_in: Option<f64>,
    /// Why the replica is not running, when there is something to say (a pull error, a failed
    /// create, "gave up after 3 restart attempts", the last health check output...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Its address on the bridge network (`network_mode: bridge`), once connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The service's revision it runs.
    #[serde(default)]
    pub revision: Option<u32>,
    /// The image manifest digest its rootfs was made from (whatever the tag names now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// Its slot (`N` of `SERVICE-N`; a start-first update runs `SERVICE-N.b` in the same slot).
    #[serde(default)]
    pub slot: u32,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaState {
    /// Waiting for its image.
    Pulling,
    /// Created, not started (or waiting for its dependencies).
    #[default]
    Created,
    Running,
    /// Exited and not restarted (policy, clean exit, or stopped).
    Exited,
    /// Exited, restart pending.
    Backoff,
    Stopping,
    /// Cannot run: gave up restarting, or create failed for a reason retrying will not fix.
    Failed,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No health check.
    #[default]
    None,
    Starting,
    Healthy,
    Unhealthy,
}

impl Status {
    /// Makes every message one line of at most [`text::MESSAGE_MAX`] bytes with control
    /// characters escaped: they quote registries, images and containers (a pull error can
    /// name a tar entry, a health check prints what the container wrote).
    pub fn bound_texts(&mut self) {
        let bound = |s: &mut String| {
            if s.len() > text::MESSAGE_MAX || s.chars().any(char::is_control) || text::escape(s) != s.as_str() {
                *s = text::one_line(s, text::MESSAGE_MAX);
            }
        };
        let list = |v: &mut Vec<String>| {
            v.truncate(MAX_WARNINGS);
            v.iter_mut().for_each(bound);
        };
        self.manifest.error.iter_mut().for_each(bound);
        if let Some(st) = &mut self.store {
            st.image_gc.last.iter_mut().for_each(bound);
        }
        list(&mut self.manifest.warnings);
        for s in &mut self.services {
            list(&mut s.warnings);
            for r in &mut s.replicas {
                r.message.iter_mut().for_each(bound);
            }
            for p in &mut s.ports {
                p.error.iter_mut().for_each(bound);
                p.warning.iter_mut().for_each(bound);
            }
        }
    }
}

/// The most warnings shown per list (manifest, service).
const MAX_WARNINGS: usize = 100;

/// What the reconcile loop publishes.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub status: Arc<Status>,
    /// A manifest has been loaded at least once (an agent with none is not healthy).
    pub manifest_loaded: bool,
    /// When the reconcile loop last went round (it does at least every few seconds).
    pub tick: Instant,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot { status: Arc::default(), manifest_loaded: false, tick: Instant::now() }
    }
}
