//! The manifest: a Compose Specification subset (`/etc/skiff/compose.yaml`).
//!
//! [`load`] / [`parse_str`] read a compose file into a typed [`Manifest`] and a list of
//! [`Diagnostic`]s (errors and warnings, each with line and column). The manifest is only
//! returned when there is no error; warnings (unknown keys, ignored options) never stop it.
//!
//! Parsing is bounded ([`Limits`]: file size, nesting depth, node count, alias expansion), so a
//! hostile file fails fast with a located error. Every file the manifest makes skiff read is
//! read with a bound too ([`read_bounded`]): the manifest itself (1 MiB), `.env` next to it and
//! each `env_file:` (1 MiB, regular files only: `/dev/zero` or a FIFO is an error, never a
//! read without end). [`load`] (the agent, `skiff validate`) reads and checks the env files
//! as compose does when it loads a project; [`parse_str`] reads none.
//!
//! Beyond the syntax, what would reach the host is checked here: a sysctl the runtime would
//! refuse at create (runc's rule, the runtime's own file) is an error, and binds and
//! capabilities that hand the host to a container are warnings. The typed model is plain data (serde
//! `Serialize`/`Deserialize`, `PartialEq`) so the agent can keep a service's previous revision and
//! compare revisions to decide what to replace.

mod convert;
mod hostaccess;
pub mod keys;
pub mod network;
/// runc's sysctl rule, the very file skiff-runtime applies (see its documentation).
#[path = "../../../runtime/src/sysctl.rs"]
mod sysctl;
pub mod units;
pub mod yaml;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_files;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use network::{
    ExtraHost, NetworkDecl, NetworkOverrides, NetworkSettings, PortMapping, PortRange, Protocol, ServiceNetwork,
    DEFAULT_NETWORK,
};
pub use yaml::{Limits, Pos};

/// The default manifest path.
pub const DEFAULT_MANIFEST: &str = "/etc/skiff/compose.yaml";

/// A validated manifest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Top-level `name:` (the compose project name), if given.
    pub name: Option<String>,
    /// Services by name.
    pub services: BTreeMap<String, Service>,
    /// Top-level named volumes by name.
    pub volumes: BTreeMap<String, VolumeDecl>,
    /// `x-skiff:` (`bridge`, `subnet`): the bridge of `network_mode: bridge` services, over
    /// the agent's defaults.
    #[serde(default)]
    pub network: NetworkOverrides,
    /// `x-skiff: {revision_history: N}`: revisions kept per service (`None`: 10).
    #[serde(default)]
    pub revision_history: Option<u32>,
    /// `x-skiff: {profiles: [...]}`: the profiles active unless `SKIFF_PROFILES` (or
    /// `COMPOSE_PROFILES`) says otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    /// Services not run because none of their `profiles:` is active, with those profiles.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inactive: BTreeMap<String, Vec<String>>,
    /// `x-skiff: {image_gc}`: when unused images are removed for disk space.
    #[serde(default)]
    pub image_gc: ImageGc,
    /// Top-level `networks:` other than `default` (whose settings go to `network`), by key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, NetworkDecl>,
}

impl Manifest {
    /// Revisions kept per service.
    pub fn revision_history(&self) -> u32 {
        self.revision_history.unwrap_or(10)
    }
}

/// `x-skiff: {image_gc: {high: 85%, low: 80%}}` (the kubelet's marks, the default) or
/// `image_gc: false`: when the store's filesystem is fuller than `high` percent, the agent
/// removes unused images, oldest pull first, until it is below `low` ([`skiff_images::gc`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageGc {
    pub enabled: bool,
    pub high: u8,
    pub low: u8,
}

impl Default for ImageGc {
    fn default() -> ImageGc {
        let m = skiff_images::gc::Marks::default();
        ImageGc { enabled: true, high: m.high, low: m.low }
    }
}

impl ImageGc {
    /// The marks, when collection is on.
    pub fn marks(&self) -> Option<skiff_images::gc::Marks> {
        self.enabled.then_some(skiff_images::gc::Marks { high: self.high, low: self.low })
    }
}

/// One service (`services.NAME`), with compose's alternatives already resolved
/// (`mem_limit` vs `deploy.resources.limits.memory`, `restart` vs `deploy.restart_policy`, ...).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    /// The image reference as written (`redis:7`, `registry.local:5000/app@sha256:...`).
    pub image: String,
    /// Overrides the image's Cmd. A string is split into words like a shell would (no shell runs).
    pub command: Option<Vec<String>>,
    /// Overrides the image's Entrypoint (an empty list clears it).
    pub entrypoint: Option<Vec<String>>,
    /// `KEY: value`; `None` means "take KEY from the agent's environment" (`- KEY` or `KEY:`).
    pub environment: BTreeMap<String, Option<String>>,
    /// env files, relative paths resolved against the manifest's directory, in order.
    pub env_file: Vec<EnvFile>,
    pub working_dir: Option<String>,
    /// `user`, `user:group`, `uid`, `uid:gid`.
    pub user: Option<String>,
    pub restart: RestartPolicy,
    /// `deploy.replicas` (default 1; 0 is allowed: defined but not running).
    pub replicas: u32,
    pub resources: Resources,
    /// `None`: the image's HEALTHCHECK (if any) applies.
    pub healthcheck: Option<Healthcheck>,
    /// `volumes:` and `tmpfs:`, in order.
    pub mounts: Vec<Mount>,
    pub read_only: bool,
    /// Normalised to `SIGTERM` form.
    pub stop_signal: Option<String>,
    /// Default 10 s when `None`.
    pub stop_grace_period: Option<Duration>,
    pub hostname: Option<String>,
    /// `container_name` (one replica only): the replica's host name unless `hostname` is
    /// given, and one more name for it on the bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// Normalised to `CAP_X` (or `ALL`).
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub ulimits: BTreeMap<String, Ulimit>,
    pub sysctls: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub depends_on: BTreeMap<String, Dependency>,
    pub logging: Logging,
    pub network_mode: NetworkMode,
    /// `ports:` in order (published by the agent for bridged services).
    pub ports: Vec<PortMapping>,
    /// `extra_hosts:`, in order, for the container's /etc/hosts.
    #[serde(default)]
    pub extra_hosts: Vec<ExtraHost>,
    /// `dns:` nameservers; empty: the host's.
    #[serde(default)]
    pub dns: Vec<std::net::IpAddr>,
    /// `networks:` in order; empty: the `default` network only (a list of just `default`
    /// without settings is stored empty too, so it compares equal to no key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<ServiceNetwork>,
    pub pull_policy: PullPolicy,
    /// `deploy.update_config`, `deploy.rollback_config`, `x-skiff: {progress_deadline}`: how a
    /// change rolls out (not part of the definition: changing it replaces nothing).
    #[serde(default)]
    pub rollout: crate::rollout::Policy,
    /// `privileged: true`: every capability, every host device, no masked or read-only paths,
    /// /sys writable, no no_new_privileges (Docker's meaning).
    #[serde(default)]
    pub privileged: bool,
    /// `devices:`, in order (directories are expanded to their device nodes at start).
    #[serde(default)]
    pub devices: Vec<Device>,
    /// `device_cgroup_rules:`, in order.
    #[serde(default)]
    pub device_cgroup_rules: Vec<DeviceRule>,
    /// `secrets:` and `configs:` of the service, resolved against the top-level declarations.
    #[serde(default)]
    pub files: Vec<FileGrant>,
}

impl Service {
    /// The stop timeout: `stop_grace_period` or 10 s.
    pub fn stop_timeout(&self) -> Duration {
        self.stop_grace_period.unwrap_or(Duration::from_secs(10))
    }
    /// Replica `n` (1-based) is named `SERVICE-n`.
    pub fn replica_name(&self, n: u32) -> String {
        format!("{}-{n}", self.name)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnvFile {
    pub path: PathBuf,
    /// `required: false` in the long form: a missing file is skipped.
    pub required: bool,
}

/// When a replica's container is restarted, resolved from `restart:` and
/// `deploy.restart_policy` (which wins, as in swarm).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RestartPolicy {
    pub condition: RestartCondition,
    /// `on-failure:N` or `max_attempts`; `None` = unlimited.
    pub max_attempts: Option<u32>,
    /// Initial back-off delay (`deploy.restart_policy.delay`); `None` = the agent's default (1 s).
    pub delay: Option<Duration>,
    /// `deploy.restart_policy.window`: how long a start must last to count as successful.
    pub window: Option<Duration>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    /// `restart: no` / `condition: none` (compose's default).
    #[default]
    No,
    /// `restart: always` / `condition: any`.
    Always,
    /// `restart: on-failure` / `condition: on-failure`: only after a non-zero exit.
    OnFailure,
    /// `restart: unless-stopped`: like always, except after an explicit stop.
    UnlessStopped,
}

/// Limits (`deploy.resources.limits` merged with `mem_limit`, `cpus`, `pids_limit`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// Bytes.
    pub memory: Option<u64>,
    /// CPUs (0.5 = half a CPU).
    pub cpus: Option<f64>,
    /// Max processes; -1 = unlimited.
    pub pids: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Healthcheck {
    /// `None`: keep the image's test (only the timings change).
    pub test: Option<HealthTest>,
    /// `disable: true` or `test: ["NONE"]`: no health check, not even the image's.
    pub disabled: bool,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
    /// Between checks during the start period (compose's default: 5s once a start_period is set).
    #[serde(default)]
    pub start_interval: Option<Duration>,
}

impl Default for Healthcheck {
    fn default() -> Self {
        Healthcheck {
            test: None,
            disabled: false,
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(30),
            retries: 3,
            start_period: Duration::ZERO,
            start_interval: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum HealthTest {
    /// `["CMD", "curl", "-f", "http://localhost"]`: run directly.
    Cmd(Vec<String>),
    /// `["CMD-SHELL", "..."]` or a plain string: run with `/bin/sh -c`.
    Shell(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mount {
    pub kind: MountKind,
    /// Absolute path inside the container.
    pub target: String,
    pub read_only: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MountKind {
    /// A named volume declared at top level (`<root>/volumes/NAME`). `name` is the volume's
    /// real name (the top-level `name:` when given, else its key).
    Volume {
        name: String,
        /// `external: true`: skiff never creates it; a missing one stops the replica.
        #[serde(default)]
        external: bool,
        /// `volume: {nocopy: true}` (or the short syntax's `:nocopy`): a new volume starts
        /// empty instead of being filled from the image (see `replica::named_volume`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        nocopy: bool,
    },
    /// A volume without a name (`- /data`): one per container, gone with it.
    Anonymous,
    /// A host path (relative paths resolved against the manifest's directory).
    Bind { source: PathBuf, create_host_path: bool },
    /// A tmpfs (`tmpfs:` or `type: tmpfs`).
    Tmpfs { size: Option<u64>, mode: Option<u32> },
}

/// A `devices:` entry: the host's node (or a directory of nodes) at `target` in the container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Absolute host path.
    pub source: PathBuf,
    /// Absolute path in the container (the source's when not given).
    pub target: String,
    /// A non-empty subset of `rwm`, in that order.
    pub permissions: String,
}

/// A `device_cgroup_rules:` entry (`c 189:* rmw`): an allow rule of the device cgroup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRule {
    /// `a`, `b` or `c`.
    pub kind: char,
    /// `None`: `*`.
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// A non-empty subset of `rwm`, in that order.
    pub access: String,
}

/// A secret or a config given to a service: a file copied into a tmpfs of the container's,
/// owned and moded as asked, mounted read-only at `target`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileGrant {
    pub kind: GrantKind,
    /// The top-level name (`source:`).
    pub name: String,
    pub source: GrantSource,
    /// Absolute path in the container.
    pub target: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GrantKind {
    Secret,
    Config,
}

/// Where a secret's or config's content comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GrantSource {
    /// `file:` (relative to the manifest's directory), read at each start; `digest` (sha256
    /// of the content when the manifest was loaded) makes a changed file a changed definition.
    File { path: PathBuf, digest: Option<String> },
    /// `environment: VAR`: the variable's value (the agent's environment, then `.env`) when
    /// the manifest was loaded.
    Environment { var: String, value: String },
    /// `content:`, as written (interpolated).
    Content(String),
}

/// The largest secret or config (a file source over it is an error).
pub const GRANT_MAX: u64 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    pub soft: i64,
    pub hard: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    pub condition: DependsCondition,
    /// `required: false`: start even if the dependency is not defined/running.
    pub required: bool,
    /// `restart: true`: restart this service when the dependency is restarted.
    pub restart: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DependsCondition {
    #[default]
    ServiceStarted,
    ServiceHealthy,
    ServiceCompletedSuccessfully,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logging {
    /// Rotate a replica's log file at this size (`max-size`, default 10m).
    pub max_size: u64,
    /// Files kept, the current one included (`max-file`, default 3).
    pub max_file: u32,
}

impl Default for Logging {
    fn default() -> Self {
        Logging { max_size: 10 << 20, max_file: 3 }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// Compose's default: an address on the agent's bridge.
    #[default]
    Bridge,
    Host,
    None,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PullPolicy {
    /// Pull only when the image is not in the store (`missing`, `if_not_present`).
    #[default]
    Missing,
    /// Check the registry before each replica start.
    Always,
    Never,
    /// `daily`, `weekly`, `every_<duration>`: check the tag's digest (a HEAD) on this schedule.
    Every(Duration),
}

impl PullPolicy {
    /// How often the tag's digest is checked, for the scheduled policies.
    pub fn interval(self) -> Option<Duration> {
        match self {
            PullPolicy::Every(d) => Some(d),
            _ => None,
        }
    }
}

/// A top-level `volumes.NAME`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VolumeDecl {
    /// `external: true`: must exist already; skiff never creates or removes it.
    pub external: bool,
    /// `name:`: the volume's real name (default: the key).
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
}

impl Manifest {
    /// Service names in an order that starts every dependency before its dependents
    /// (ties by name). The manifest is acyclic once validated.
    pub fn start_order(&self) -> Vec<&str> {
        let mut done: Vec<&str> = Vec::new();
        let mut pending: Vec<&str> = self.services.keys().map(String::as_str).collect();
        while !pending.is_empty() {
            let before = pending.len();
            pending.retain(|name| {
                let ready = self.services[*name]
                    .depends_on
                    .keys()
                    .all(|d| done.contains(&d.as_str()) || !self.services.contains_key(d));
                if ready {
                    done.push(name);
                }
                !ready
            });
            if pending.len() == before {
                done.append(&mut pending); // a cycle (not in a validated manifest)
            }
        }
        done
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// An error or a warning about a place in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The file it is in when that is not the manifest itself (an `include:`d file, the
    /// file of an `extends:`), as the manifest named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub line: u32,
    pub column: u32,
    pub message: String,
}

impl Diagnostic {
    pub fn error(line: u32, column: u32, message: String) -> Diagnostic {
        Diagnostic { severity: Severity::Error, file: None, line, column, message }
    }

    /// `FILE:LINE:COLUMN: error: MESSAGE`, where FILE is `manifest` unless the place is in
    /// another file.
    pub fn render(&self, manifest: &str) -> String {
        format!("{}:{self}", self.file.as_deref().unwrap_or(manifest))
    }
}

impl fmt::Display for Diagnostic {
    /// `LINE:COLUMN: error: MESSAGE`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}:{}: {sev}: {}", self.line, self.column, self.message)
    }
}

/// The outcome of reading a manifest.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// `Some` when there is no error.
    pub manifest: Option<Manifest>,
    /// Sorted by position.
    pub diagnostics: Vec<Diagnostic>,
    /// The other files it read (`include:`, `extends: {file:}`, secret and config files): a
    /// change of any of them is a change of the manifest.
    pub files: Vec<PathBuf>,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.severity == Severity::Error).count()
    }
    pub fn warnings(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.severity == Severity::Warning).count()
    }
    /// The first error, rendered with `file` (for the agent's status).
    pub fn first_error(&self, file: &str) -> Option<String> {
        self.diagnostics.iter().find(|d| d.severity == Severity::Error).map(|d| d.render(file))
    }
}

/// One line of an env file (`.env` next to the manifest, `env_file:`): `None` for a blank line
/// or a comment; `KEY=VALUE` (optional `export `, one pair of matching quotes stripped) as
/// `(KEY, Some(VALUE))`; a bare `KEY` (take it from the environment) as `(KEY, None)`; an error
/// for anything else.
pub fn env_line(line: &str) -> Option<Result<(String, Option<String>), String>> {
    let l = line.trim();
    if l.is_empty() || l.starts_with('#') {
        return None;
    }
    let l = l.strip_prefix("export ").unwrap_or(l);
    let valid = |k: &str| !k.is_empty() && !k.contains(['=', '\0', ' ', '\t']);
    let Some((k, v)) = l.split_once('=') else {
        return Some(if valid(l) { Ok((l.to_string(), None)) } else { Err("expected KEY=VALUE".into()) });
    };
    let k = k.trim();
    if !valid(k) {
        return Some(Err(format!("{k:?} is not a variable name")));
    }
    let v = v.trim();
    let quoted =
        v.len() >= 2 && ((v.starts_with('"') && v.ends_with('"')) || (v.starts_with('\'') && v.ends_with('\'')));
    let v = if quoted { &v[1..v.len() - 1] } else { v };
    Some(Ok((k.to_string(), Some(v.to_string()))))
}

/// Parses and validates manifest text. Relative paths (binds, env files) resolve against `base_dir`.
/// Files the manifest names (env files) are not read: see [`load`].
pub fn parse_str(src: &str, base_dir: &Path) -> Report {
    parse_str_with_limits(src, base_dir, &Limits::default())
}

/// [`parse_str`] with explicit limits.
pub fn parse_str_with_limits(src: &str, base_dir: &Path, limits: &Limits) -> Report {
    parse(src, base_dir, limits, false)
}

fn parse(src: &str, base_dir: &Path, limits: &Limits, check_files: bool) -> Report {
    let mut diagnostics = Vec::new();
    let mut files = Vec::new();
    let manifest = match yaml::parse(src, limits) {
        Ok(root) => convert::manifest(&root, base_dir, check_files, &mut diagnostics, &mut files),
        Err(e) => {
            diagnostics.push(Diagnostic::error(e.pos.line, e.pos.column, e.message));
            None
        }
    };
    diagnostics.sort_by(|a, b| (&a.file, a.line, a.column, a.severity).cmp(&(&b.file, b.line, b.column, b.severity)));
    let failed = diagnostics.iter().any(|d| d.severity == Severity::Error);
    Report { manifest: if failed { None } else { manifest }, diagnostics, files }
}

/// The largest env file read (`.env` next to the manifest, each `env_file:`), as compose
/// files go: a few KEY=VALUE lines.
pub const ENV_FILE_MAX: u64 = 1 << 20;

/// Why a file could not be read by [`read_bounded`].
#[derive(Debug)]
pub enum ReadError {
    Io(std::io::Error),
    /// Not a regular file (what it is instead): a FIFO would block the reader, a device
    /// (`/dev/zero`) never ends.
    NotRegular(&'static str),
    /// Larger than the limit (bytes).
    TooLarge(u64),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::NotRegular(kind) => write!(f, "not a regular file (a {kind})"),
            ReadError::TooLarge(max) if max % (1 << 20) == 0 => {
                write!(f, "larger than {} MiB, the limit", max >> 20)
            }
            ReadError::TooLarge(max) => write!(f, "larger than {max} bytes, the limit"),
        }
    }
}

impl std::error::Error for ReadError {}

impl ReadError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::Io(e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Reads the file at `path` (symlinks followed), never more than `max` bytes: a longer file
/// is [`ReadError::TooLarge`], whatever its size, read or not. With `regular_only`, anything
/// but a regular file is refused before a byte is read; otherwise a pipe or a device is read
/// the same, bounded. The open never blocks (a FIFO without a writer).
pub fn read_bounded(path: &Path, max: u64, regular_only: bool) -> Result<Vec<u8>, ReadError> {
    let buf = read_limited(path, max, regular_only)?;
    if buf.len() as u64 > max {
        return Err(ReadError::TooLarge(max));
    }
    Ok(buf)
}

/// [`read_bounded`], but a longer file gives its first `max + 1` bytes.
fn read_limited(path: &Path, max: u64, regular_only: bool) -> Result<Vec<u8>, ReadError> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(ReadError::Io)?;
    let ft = f.metadata().map_err(ReadError::Io)?.file_type();
    if !ft.is_file() {
        let kind = if ft.is_dir() {
            "directory"
        } else if ft.is_fifo() {
            "FIFO"
        } else if ft.is_char_device() {
            "character device"
        } else if ft.is_block_device() {
            "block device"
        } else if ft.is_socket() {
            "socket"
        } else {
            "special file"
        };
        if regular_only || ft.is_dir() {
            return Err(ReadError::NotRegular(kind));
        }
        // A pipe is read as a pipe: blocking, like any reader of it would.
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        // SAFETY: F_GETFL/F_SETFL on an fd this function owns; no memory is involved.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            if fl >= 0 {
                libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK);
            }
        }
    }
    let mut buf = Vec::new();
    f.take(max + 1).read_to_end(&mut buf).map_err(ReadError::Io)?;
    Ok(buf)
}

/// `KEY=VALUE` as `(KEY, Some(VALUE))`, a bare `KEY` (take it from the environment) as
/// `(KEY, None)`.
pub type EnvPair = (String, Option<String>);

/// Reads and parses an env file (see [`env_line`]): `Ok(None)` when it does not exist; an
/// error names the file and says what to do, in one line.
pub fn read_env_file(path: &Path) -> Result<Option<Vec<EnvPair>>, String> {
    let shown = path.display();
    let data = match read_bounded(path, ENV_FILE_MAX, true) {
        Ok(d) => d,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e @ ReadError::TooLarge(_)) => {
            return Err(format!(
                "{shown}: {e} for an env file: keep it to KEY=VALUE lines (a large value belongs in a file \
                 bind-mounted into the container)"
            ))
        }
        Err(e @ ReadError::NotRegular(_)) => {
            return Err(format!("{shown}: {e}: an env file must be a regular file of KEY=VALUE lines"))
        }
        Err(e) => return Err(format!("{shown}: {e}")),
    };
    let text =
        String::from_utf8(data).map_err(|_| format!("{shown}: not UTF-8 text: an env file holds KEY=VALUE lines"))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        match env_line(line) {
            None => {}
            Some(Ok(kv)) => out.push(kv),
            Some(Err(e)) => return Err(format!("{shown}:{}: {e}", i + 1)),
        }
    }
    Ok(Some(out))
}

/// Reads the manifest file at `path`: at most [`Limits::max_bytes`] and one more (so that
/// [`load_bytes`] tells a larger file). With `regular_only` (the agent), a FIFO or a device
/// is refused rather than read.
pub fn read_manifest(path: &Path, regular_only: bool) -> Result<Vec<u8>, ReadError> {
    read_limited(path, Limits::default().max_bytes as u64, regular_only)
}

/// Validates manifest bytes read from `path` (relative paths resolve against its
/// directory), and reads the files it names (each env file: it must exist unless
/// `required: false`, and be a regular file of at most [`ENV_FILE_MAX`] bytes of KEY=VALUE
/// lines), as compose does when it loads a project.
pub fn load_bytes(data: Vec<u8>, path: &Path) -> Report {
    let limits = Limits::default();
    let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let error = |message: String| Report {
        manifest: None,
        diagnostics: vec![Diagnostic::error(1, 1, message)],
        files: Vec::new(),
    };
    if data.len() > limits.max_bytes {
        return error(format!(
            "the manifest is larger than {} MiB, the limit: keep it to the services (a compose file is a few KiB)",
            limits.max_bytes >> 20
        ));
    }
    match String::from_utf8(data) {
        Ok(src) => parse(&src, base, &limits, true),
        Err(_) => error("the manifest is not UTF-8 text".into()),
    }
}

/// Reads and validates the manifest at `path` ([`read_manifest`], pipes allowed, then
/// [`load_bytes`]).
pub fn load(path: &Path) -> Result<Report, ReadError> {
    Ok(load_bytes(read_manifest(path, false)?, path))
}
