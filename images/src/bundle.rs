//! OCI runtime bundles: a `config.json` built from an image's config merged with the caller's
//! overrides, on runc's secure defaults.
//!
//! ```no_run
//! use skiff_images::bundle::{build_spec, write_bundle, BundleOverrides, ImageRunConfig};
//! use skiff_images::rootfs::{image_layers, mount_rootfs, rootfs_path};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let store = skiff_images::Store::open("/var/lib/skiff")?;
//! # let record = store.image("docker.io/library/busybox:latest")?.ok_or("no image")?;
//! let dir = std::path::Path::new("/var/lib/skiff/containers/web-1");
//! mount_rootfs(&image_layers(&store, &record), dir)?;
//! let image = ImageRunConfig::load(&store, &record)?;
//! let overrides = BundleOverrides { cmd: Some(vec!["id".into()]), ..Default::default() };
//! let (spec, info) = build_spec(&image, &rootfs_path(dir), &overrides)?;
//! write_bundle(dir, &spec)?; // then: skiff-runtime run --bundle <dir> <id>; stop with info.stop_signal
//! # Ok(()) }
//! ```
//!
//! # What the spec holds
//!
//! - `process.args`: Entrypoint + Cmd with docker's rules: an overridden entrypoint drops the
//!   image's Cmd (unless a cmd is given too); an empty one (`Some(vec![])`) clears it.
//! - `process.env`: the image's, then the overrides (`K=V` replaces K in place, a bare `K`
//!   removes it); `PATH` (docker's default), `HOME` (from /etc/passwd, else `/`), `HOSTNAME`,
//!   and `TERM=xterm` with a terminal, when missing.
//! - `process.user`: `name`, `uid`, `name:group`, `uid:gid` (also `uid:group`, `name:gid`),
//!   resolved with runc's rules in the image's /etc/passwd and /etc/group, read *inside* the
//!   rootfs (symlinks resolved against the rootfs, never the host): numeric ids need no
//!   entry; a name that is missing is an error naming the user and the image. Without an
//!   explicit group, `additionalGids` are the groups listing the user as a member (docker's
//!   `id` output).
//! - `process.cwd`: the override, else the image's WorkingDir, else `/`. Created in the
//!   rootfs when missing (0755, root), as docker and runc do.
//! - runc's defaults: capabilities (docker's 14: CHOWN, DAC_OVERRIDE, FSETID, FOWNER, MKNOD,
//!   NET_RAW, SETGID, SETUID, SETFCAP, SETPCAP, NET_BIND_SERVICE, SYS_CHROOT, KILL,
//!   AUDIT_WRITE; bounding, effective, permitted; inheritable and ambient empty), cap_add /
//!   cap_drop (`ALL` too), no_new_privs, RLIMIT_NOFILE 1024:1024 (never above this process's
//!   hard limit), namespaces pid, network, ipc, uts, mount, cgroup, mounts proc, /dev tmpfs,
//!   devpts, shm, mqueue, sysfs (ro), cgroup (ro), runc's masked and read-only paths, the
//!   device cgroup deny-all plus the standard allow list.
//! - Caller mounts replace a default mount at the same destination (a mount on /dev drops
//!   the default /dev/* ones, as docker does), sorted parents first.
//! - The StopSignal in the annotation `org.opencontainers.image.stopSignal` (the runtime spec
//!   has no field for it; containerd uses the same key), and in [`BundleInfo`] with the
//!   image's Volumes (for the caller to mount named volumes on), ExposedPorts and Labels.
//!
//! No seccomp profile is set (runc's `spec` sets none either).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{self, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{self, Mode};
use oci_spec::runtime::{Mount, Spec};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::rootfs::own;
use crate::store::{ImageRecord, Store};

/// Where the stop signal goes in the spec's annotations (as containerd does).
pub const STOP_SIGNAL_ANNOTATION: &str = "org.opencontainers.image.stopSignal";

/// docker's PATH for images that set none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// docker's and runc's default capabilities.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability Linux knows (6.x), for `cap_add: [ALL]` and name checks.
const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// runc's masked paths.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
    "/sys/devices/virtual/powercap",
];

/// runc's read-only paths.
pub const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// The largest /etc/passwd or /etc/group read.
const ACCOUNT_FILE_MAX: u64 = 8 << 20;
/// The largest image config read from the store.
const IMAGE_CONFIG_MAX: u64 = 8 << 20;

/// Errors of building or writing a bundle, one line each.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("image config of {image}: {detail}")]
    ImageConfig { image: String, detail: String },

    /// A VOLUME of the image that cannot be used; `volume` is quoted and escaped already.
    #[error("image {image}: VOLUME {volume}: {detail}")]
    Volume { image: String, volume: String, detail: String },

    #[error("nothing to run: image {image} has neither Entrypoint nor Cmd; give a command")]
    NoCommand { image: String },

    #[error("user {user:?} not found in /etc/passwd of image {image}")]
    UnknownUser { user: String, image: String },

    #[error("group {group:?} not found in /etc/group of image {image}")]
    UnknownGroup { group: String, image: String },

    #[error("user {user:?} for image {image}: {detail}")]
    BadUser { user: String, image: String, detail: String },

    /// An override the caller gave that cannot be used.
    #[error("{what}: {detail}")]
    Invalid { what: String, detail: String },

    #[error("{what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: io::Error },

    #[error(transparent)]
    Store(#[from] crate::error::Error),

    #[error("building the OCI spec: {0}")]
    Spec(String),
}

fn invalid(what: impl Into<String>, detail: impl Into<String>) -> BundleError {
    BundleError::Invalid { what: what.into(), detail: detail.into() }
}

/// The run-time defaults an image config carries (its `config` object).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageRunConfig {
    /// The image's name, for messages.
    pub name: String,
    pub user: Option<String>,
    pub env: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub stop_signal: Option<String>,
    /// Keys of `Volumes`, sorted.
    pub volumes: Vec<String>,
    /// Keys of `ExposedPorts` (`80/tcp`, `53/udp`, `8080`), sorted.
    pub exposed_ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// Docker's `Healthcheck` (OCI configs have no such field; images built by docker carry it).
    pub healthcheck: Option<ImageHealthcheck>,
}

/// An image's HEALTHCHECK. `test` is Docker's form: `["CMD", args...]`, `["CMD-SHELL", cmd]`
/// or `["NONE"]`; an empty test inherits (nothing, for an image). Durations of 0 mean "the
/// default".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageHealthcheck {
    pub test: Vec<String>,
    pub interval: std::time::Duration,
    pub timeout: std::time::Duration,
    pub start_period: std::time::Duration,
    /// Between checks during the start period (Docker 25+); zero: `interval`.
    pub start_interval: std::time::Duration,
    pub retries: u32,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawHealthcheck {
    #[serde(default)]
    test: Option<Vec<String>>,
    /// Nanoseconds.
    #[serde(default)]
    interval: Option<i64>,
    #[serde(default)]
    timeout: Option<i64>,
    #[serde(default)]
    start_period: Option<i64>,
    #[serde(default)]
    start_interval: Option<i64>,
    #[serde(default)]
    retries: Option<i64>,
}

#[derive(Deserialize)]
struct RawImage {
    #[serde(default)]
    config: Option<RawConfig>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawConfig {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    exposed_ports: Option<BTreeMap<String, IgnoredAny>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    volumes: Option<BTreeMap<String, IgnoredAny>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, Option<String>>>,
    #[serde(default)]
    stop_signal: Option<String>,
    #[serde(default)]
    healthcheck: Option<RawHealthcheck>,
}

impl ImageRunConfig {
    /// Parses an image config blob (OCI image config or Docker's container config JSON).
    /// `name` only names the image in messages.
    pub fn parse(data: &[u8], name: &str) -> Result<ImageRunConfig, BundleError> {
        let raw: RawImage = serde_json::from_slice(data).map_err(|e| BundleError::ImageConfig {
            image: label(name),
            detail: format!("not a valid image config ({e})"),
        })?;
        let c = raw.config.unwrap_or_default();
        Ok(ImageRunConfig {
            name: name.to_string(),
            user: c.user.filter(|u| !u.is_empty()),
            env: c.env.unwrap_or_default(),
            entrypoint: c.entrypoint,
            cmd: c.cmd,
            working_dir: c.working_dir.filter(|w| !w.is_empty()),
            stop_signal: c.stop_signal.filter(|s| !s.is_empty()),
            volumes: c.volumes.unwrap_or_default().into_keys().collect(),
            exposed_ports: c.exposed_ports.unwrap_or_default().into_keys().collect(),
            labels: c.labels.unwrap_or_default().into_iter().map(|(k, v)| (k, v.unwrap_or_default())).collect(),
            healthcheck: c.healthcheck.map(|h| {
                let ns = |v: Option<i64>| std::time::Duration::from_nanos(v.unwrap_or(0).max(0) as u64);
                ImageHealthcheck {
                    test: h.test.unwrap_or_default(),
                    interval: ns(h.interval),
                    timeout: ns(h.timeout),
                    start_period: ns(h.start_period),
                    start_interval: ns(h.start_interval),
                    retries: h.retries.unwrap_or(0).clamp(0, u32::MAX as i64) as u32,
                }
            }),
        })
    }

    /// Reads and parses the config blob of a pulled image.
    pub fn load(store: &Store, image: &ImageRecord) -> Result<ImageRunConfig, BundleError> {
        let data = store.read_blob(&image.config, IMAGE_CONFIG_MAX)?;
        ImageRunConfig::parse(&data, &image.reference)
    }
}

fn label(name: &str) -> String {
    if name.is_empty() {
        "(unnamed image)".into()
    } else {
        name.to_string()
    }
}

/// The network namespace of the container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NetworkNamespace {
    /// A new, empty one (loopback only until the caller configures it).
    #[default]
    New,
    /// The host's (compose `network_mode: host`).
    Host,
    /// Join this one (`/run/netns/NAME`, `/proc/PID/ns/net`).
    Path(PathBuf),
}

/// What the caller sets on top of the image (compose / `skiff run` options).
#[derive(Debug, Clone, Default)]
pub struct BundleOverrides {
    /// Replaces the image's Entrypoint (and drops its Cmd unless `cmd` is given too).
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// `K=V` sets K (overriding the image's), a bare `K` removes it.
    pub env: Vec<String>,
    pub user: Option<String>,
    /// Absolute.
    pub working_dir: Option<String>,
    /// Added after the default mounts; see [`bind_mount`].
    pub mounts: Vec<Mount>,
    /// Bytes (memory cgroup limit).
    pub memory_limit: Option<i64>,
    /// Default `skiff`.
    pub hostname: Option<String>,
    pub readonly_rootfs: bool,
    pub terminal: bool,
    /// Capability names with or without `CAP_`, any case, or `ALL`; drops apply first.
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub network: NetworkNamespace,
    pub cgroups_path: Option<String>,
    pub annotations: BTreeMap<String, String>,
    /// CPUs (0.5 = half a CPU): a CFS quota over a 100 ms period.
    pub cpus: Option<f64>,
    /// Max processes (pids cgroup); -1 or 0 = unlimited.
    pub pids_limit: Option<i64>,
    /// `(name, soft, hard)`, name as compose writes it (`nofile`, `nproc`, ...) or `RLIMIT_X`.
    /// Replaces the default `RLIMIT_NOFILE` when it names nofile.
    pub rlimits: Vec<(String, u64, u64)>,
    /// `linux.sysctl` (the runtime refuses those that are not namespaced).
    pub sysctls: BTreeMap<String, String>,
    /// `linux.devices`: nodes the runtime makes in the container (compose `devices:`).
    pub devices: Vec<DeviceNode>,
    /// Allow rules of the device cgroup, after its deny-all and the standard list (each
    /// [`DeviceNode`] needs one too: it is not added for it).
    pub device_rules: Vec<DeviceAllow>,
    /// Docker's privileged: every capability, the device cgroup allows everything, no masked
    /// or read-only paths, /sys and /sys/fs/cgroup writable, no no_new_privileges.
    /// `cap_add`/`cap_drop` are ignored, as Docker does. (The host's device nodes are the
    /// caller's to list in `devices`.)
    pub privileged: bool,
}

/// A device node in the container (`linux.devices`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// Absolute path in the container.
    pub path: PathBuf,
    /// `c` or `b`.
    pub kind: char,
    pub major: i64,
    pub minor: i64,
    /// Permission bits of the node (the host's).
    pub file_mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// An allow rule of the device cgroup (`linux.resources.devices`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAllow {
    /// `a`, `b` or `c`.
    pub kind: char,
    /// `None`: any.
    pub major: Option<i64>,
    pub minor: Option<i64>,
    /// From `rwm`.
    pub access: String,
}

/// A port the image exposes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ExposedPort {
    pub port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
}

/// What the spec cannot hold and the caller needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleInfo {
    /// The signal that stops the container, normalized (`SIGTERM`, `SIGRTMIN+3`); `SIGTERM`
    /// when the image names none. `skiff-runtime kill ID <it>` takes it as is.
    pub stop_signal: String,
    pub stop_signal_number: i32,
    /// The image's Volumes (absolute paths): mount named volumes or empty directories there.
    pub volumes: Vec<String>,
    pub ports: Vec<ExposedPort>,
    pub labels: BTreeMap<String, String>,
}

/// A bind mount (`rbind`, `rprivate`, and `ro` when read-only), as `-v SRC:DST[:ro]` gives.
pub fn bind_mount(source: impl Into<PathBuf>, destination: impl Into<PathBuf>, readonly: bool) -> Mount {
    let mut m = Mount::default();
    m.set_destination(destination.into());
    m.set_typ(Some("bind".into()));
    m.set_source(Some(source.into()));
    let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
    if readonly {
        options.push("ro".into());
    }
    m.set_options(Some(options));
    m
}

/// The resource limits a spec's `process.rlimits` may name.
const RLIMITS: &[&str] = &[
    "RLIMIT_AS",
    "RLIMIT_CORE",
    "RLIMIT_CPU",
    "RLIMIT_DATA",
    "RLIMIT_FSIZE",
    "RLIMIT_LOCKS",
    "RLIMIT_MEMLOCK",
    "RLIMIT_MSGQUEUE",
    "RLIMIT_NICE",
    "RLIMIT_NOFILE",
    "RLIMIT_NPROC",
    "RLIMIT_RSS",
    "RLIMIT_RTPRIO",
    "RLIMIT_RTTIME",
    "RLIMIT_SIGPENDING",
    "RLIMIT_STACK",
];

/// A tmpfs at `destination` (`nosuid`, `nodev`, optional `size=` bytes and `mode=`), as
/// compose's `tmpfs:` gives.
pub fn tmpfs_mount(destination: impl Into<PathBuf>, size: Option<u64>, mode: Option<u32>) -> Mount {
    let mut m = Mount::default();
    m.set_destination(destination.into());
    m.set_typ(Some("tmpfs".into()));
    m.set_source(Some("tmpfs".into()));
    let mut options = vec!["nosuid".to_string(), "nodev".to_string()];
    if let Some(s) = size {
        options.push(format!("size={s}"));
    }
    if let Some(mode) = mode {
        options.push(format!("mode={mode:o}"));
    }
    m.set_options(Some(options));
    m
}

/// Builds the spec of a container of `image` whose root filesystem is at `rootfs` (an
/// existing directory: the users and groups are read from it, the working directory is
/// created in it). `root.path` is `rootfs` as given.
pub fn build_spec(
    image: &ImageRunConfig,
    rootfs: &Path,
    o: &BundleOverrides,
) -> Result<(Spec, BundleInfo), BundleError> {
    let name = label(&image.name);
    let args = args(image, o)?;
    let hostname = o.hostname.clone().unwrap_or_else(|| "skiff".into());
    if hostname.is_empty() || hostname.len() > 64 || hostname.contains(['/', '\0', ' ']) {
        return Err(invalid("hostname", format!("{hostname:?} is not a valid hostname")));
    }
    let cwd = working_dir(image, o)?;
    let caps = if o.privileged { privileged_capabilities() } else { capabilities(&o.cap_add, &o.cap_drop)? };
    let mut mounts = mounts(&o.mounts)?;
    if o.privileged {
        // /sys and the cgroup mount writable (Docker's privileged).
        for m in &mut mounts {
            let d = m["destination"].as_str().unwrap_or_default();
            if (d == "/sys" || d == "/sys/fs/cgroup") && m["type"] != "bind" {
                if let Some(opts) = m["options"].as_array_mut() {
                    opts.retain(|x| x != "ro");
                }
            }
        }
    }
    let devices = device_nodes(&o.devices)?;
    let stop =
        parse_signal(image.stop_signal.as_deref().unwrap_or("SIGTERM")).ok_or_else(|| BundleError::ImageConfig {
            image: name.clone(),
            detail: format!("StopSignal {:?} is not a signal", image.stop_signal.as_deref().unwrap_or_default()),
        })?;
    let volumes =
        image.volumes.iter().map(|v| volume_path(&name, v)).collect::<Result<BTreeSet<_>, _>>()?.into_iter().collect();
    let ports =
        ports(&image.exposed_ports).map_err(|detail| BundleError::ImageConfig { image: name.clone(), detail })?;

    if let Some(m) = o.memory_limit.filter(|m| *m <= 0) {
        return Err(invalid("memory limit", format!("{m} bytes: give a positive number of bytes")));
    }
    // What reads the rootfs, then what writes it, once everything else is known to be valid.
    let root = open_root(rootfs)?;
    let user_spec = o.user.clone().or_else(|| image.user.clone()).unwrap_or_default();
    let user = resolve_user(&root, rootfs, &user_spec, &name)?;
    let env = merge_env(&image.env, &o.env, &user, &hostname, o.terminal)?;
    ensure_dir(&root, rootfs, &cwd)?;

    let (soft, hard) = nofile_limit();
    let mut namespaces = vec![json!({"type": "pid"})];
    match &o.network {
        NetworkNamespace::New => namespaces.push(json!({"type": "network"})),
        NetworkNamespace::Host => {}
        NetworkNamespace::Path(p) => namespaces.push(json!({"type": "network", "path": p})),
    }
    namespaces.extend([
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
        json!({"type": "cgroup"}),
    ]);

    let mut resources = json!({ "devices": device_rules(o.privileged, &o.device_rules)? });
    if let Some(m) = o.memory_limit {
        resources["memory"] = json!({ "limit": m });
    }
    if let Some(c) = o.cpus {
        if !(c.is_finite() && c > 0.0 && c <= 1024.0) {
            return Err(invalid("cpus", format!("{c} is not a CPU count (e.g. 0.5, 2)")));
        }
        let period: u64 = 100_000;
        let quota = ((c * period as f64).round() as i64).max(1000);
        resources["cpu"] = json!({ "quota": quota, "period": period });
    }
    if let Some(p) = o.pids_limit.filter(|p| *p > 0) {
        resources["pids"] = json!({ "limit": p });
    }
    let mut rlimits = vec![json!({ "type": "RLIMIT_NOFILE", "hard": hard, "soft": soft })];
    for (name, soft, hard) in &o.rlimits {
        let up = name.trim().to_ascii_uppercase();
        let typ = if up.starts_with("RLIMIT_") { up } else { format!("RLIMIT_{up}") };
        if !RLIMITS.contains(&typ.as_str()) {
            return Err(invalid("ulimit", format!("{name:?} is not a resource limit (e.g. nofile, nproc, core)")));
        }
        if soft > hard {
            return Err(invalid("ulimit", format!("{name}: soft limit {soft} is above the hard limit {hard}")));
        }
        rlimits.retain(|r| r["type"] != typ.as_str());
        rlimits.push(json!({ "type": typ, "hard": hard, "soft": soft }));
    }
    let mut annotations: BTreeMap<String, String> = o.annotations.clone();
    annotations.insert(STOP_SIGNAL_ANNOTATION.into(), stop.0.clone());

    let mut user_json = json!({ "uid": user.uid, "gid": user.gid });
    if !user.additional_gids.is_empty() {
        user_json["additionalGids"] = json!(user.additional_gids);
    }
    let (masked, readonly): (&[&str], &[&str]) = if o.privileged { (&[], &[]) } else { (MASKED_PATHS, READONLY_PATHS) };
    let mut linux = json!({
        "resources": resources,
        "namespaces": namespaces,
        "maskedPaths": masked,
        "readonlyPaths": readonly,
    });
    if !devices.is_empty() {
        linux["devices"] = json!(devices);
    }
    if let Some(p) = &o.cgroups_path {
        linux["cgroupsPath"] = json!(p);
    }
    if !o.sysctls.is_empty() {
        linux["sysctl"] = json!(o.sysctls);
    }
    let v = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": o.terminal,
            "user": user_json,
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": { "bounding": caps, "effective": caps, "permitted": caps },
            "rlimits": rlimits,
            "noNewPrivileges": !o.privileged,
        },
        "root": { "path": rootfs, "readonly": o.readonly_rootfs },
        "hostname": hostname,
        "mounts": mounts,
        "annotations": annotations,
        "linux": linux,
    });
    let spec: Spec = serde_json::from_value(v).map_err(|e| BundleError::Spec(e.to_string()))?;
    let info =
        BundleInfo { stop_signal: stop.0, stop_signal_number: stop.1, volumes, ports, labels: image.labels.clone() };
    Ok((spec, info))
}

/// Writes `<dir>/config.json` atomically and durably (temp file, fsync, rename, fsync of
/// `dir`), mode 0600 (the environment may hold secrets). Creates `dir` when missing.
pub fn write_bundle(dir: &Path, spec: &Spec) -> Result<(), BundleError> {
    let io_err = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| BundleError::Io { what, path, source }
    };
    fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    let mut data = serde_json::to_vec_pretty(spec).map_err(|e| BundleError::Spec(e.to_string()))?;
    data.push(b'\n');
    let dest = dir.join("config.json");
    let tmp = dir.join(format!(".config.json.{}.{}", std::process::id(), crate::fsutil::unique()));
    let res = (|| {
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &dest)?;
        crate::fsutil::fsync_dir(dir)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res.map_err(io_err("writing", &dest))
}

// ----------------------------------------------------------------------------- args, env

fn args(image: &ImageRunConfig, o: &BundleOverrides) -> Result<Vec<String>, BundleError> {
    let (entrypoint, cmd) = match &o.entrypoint {
        Some(ep) => (ep.clone(), o.cmd.clone().unwrap_or_default()),
        None => (
            image.entrypoint.clone().unwrap_or_default(),
            o.cmd.clone().or_else(|| image.cmd.clone()).unwrap_or_default(),
        ),
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    match args.first() {
        None => Err(BundleError::NoCommand { image: label(&image.name) }),
        Some(a) if a.is_empty() => Err(invalid("command", "the program to run is an empty string")),
        Some(_) => Ok(args),
    }
}

fn env_key(e: &str) -> &str {
    e.split_once('=').map_or(e, |(k, _)| k)
}

fn merge_env(
    image: &[String],
    overrides: &[String],
    user: &User,
    hostname: &str,
    terminal: bool,
) -> Result<Vec<String>, BundleError> {
    fn set(env: &mut Vec<String>, e: String) {
        match env.iter_mut().find(|x| env_key(x) == env_key(&e)) {
            Some(x) => *x = e,
            None => env.push(e),
        }
    }
    let mut env: Vec<String> = Vec::with_capacity(image.len() + overrides.len() + 4);
    // An image entry without '=' means nothing to a process: dropped.
    for e in image.iter().filter(|e| e.contains('=') && !e.starts_with('=')) {
        set(&mut env, e.clone());
    }
    for e in overrides {
        if env_key(e).is_empty() || e.contains('\0') {
            return Err(invalid("environment", format!("{e:?} is not NAME=VALUE")));
        }
        if e.contains('=') {
            set(&mut env, e.clone());
        } else {
            env.retain(|x| env_key(x) != e);
        }
    }
    let has = |env: &[String], k: &str| env.iter().any(|e| env_key(e) == k);
    if !has(&env, "PATH") {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    if !has(&env, "HOSTNAME") {
        env.push(format!("HOSTNAME={hostname}"));
    }
    if !has(&env, "HOME") {
        env.push(format!("HOME={}", user.home.as_deref().unwrap_or("/")));
    }
    if terminal && !has(&env, "TERM") {
        env.push("TERM=xterm".into());
    }
    Ok(env)
}

/// The longest VOLUME path taken (PATH_MAX).
const VOLUME_PATH_MAX: usize = 4096;

/// The path of an image's VOLUME `v`, checked and made clean (`//` and `.` dropped): absolute,
/// not `/`, no `..` (docker's builder writes clean paths: a `..` is a hand-made config climbing
/// out of somewhere), no NUL, at most 4096 bytes. `image` names the image in the error. Whether
/// it is a real directory of the image is [`crate::volume`]'s business (it needs the rootfs).
pub fn volume_path(image: &str, v: &str) -> Result<String, BundleError> {
    let bad =
        |detail: &str| BundleError::Volume { image: label(image), volume: quoted(v, 200), detail: detail.to_string() };
    if !v.starts_with('/') {
        return Err(bad("not an absolute path"));
    }
    if v.len() > VOLUME_PATH_MAX {
        return Err(bad("longer than 4096 bytes"));
    }
    if v.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    if v.split('/').any(|c| c == "..") {
        return Err(bad("contains '..': a volume path must be a plain absolute path inside the image"));
    }
    match clean_abs(v) {
        Some(c) if c == "/" => Err(bad("a volume cannot be the root directory")),
        Some(c) => Ok(c),
        None => Err(bad("not a valid path")),
    }
}

/// `s` quoted for a one-line message: control and invisible characters escaped
/// (`crate::text::escape`: `\n`, `\u{1b}`), cut after `max` bytes (marked with `…`).
pub(crate) fn quoted(s: &str, max: usize) -> String {
    format!("\"{}\"", crate::text::clip(&crate::text::escape(s), max))
}

/// `p` made absolute and lexically clean (`.`/`..` resolved, clamped at `/`); `None` for a
/// relative path.
pub(crate) fn clean_abs(p: &str) -> Option<String> {
    if !p.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    Some(format!("/{}", parts.join("/")))
}

fn working_dir(image: &ImageRunConfig, o: &BundleOverrides) -> Result<String, BundleError> {
    if let Some(w) = &o.working_dir {
        return clean_abs(w).ok_or_else(|| invalid("working directory", format!("{w:?} is not an absolute path")));
    }
    // docker takes a relative WorkingDir of an image from /.
    Ok(image.working_dir.as_deref().and_then(|w| clean_abs(&format!("/{w}"))).unwrap_or_else(|| "/".into()))
}

// ----------------------------------------------------------------------------- rootfs access

pub(crate) fn open_root(rootfs: &Path) -> Result<OwnedFd, BundleError> {
    fcntl::open(rootfs, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map(own)
        .map_err(|e| BundleError::Io { what: "opening the rootfs", path: rootfs.to_path_buf(), source: e.into() })
}

/// Opens `path` (absolute, inside the container) with symlinks resolved as the container
/// would see them: against the rootfs, never escaping it.
pub(crate) fn open_in_root(root: &OwnedFd, path: &str, flags: OFlag) -> nix::Result<OwnedFd> {
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match fcntl::openat2(root.as_raw_fd(), rel, how) {
        Err(Errno::ENOSYS) => open_no_symlinks(root, rel, flags),
        r => r.map(own),
    }
}

/// Kernels without openat2 (before 5.6): one component at a time, refusing symlinks.
fn open_no_symlinks(root: &OwnedFd, rel: &str, flags: OFlag) -> nix::Result<OwnedFd> {
    let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    if comps.contains(&"..") {
        return Err(Errno::EXDEV);
    }
    let Some((last, dirs)) = comps.split_last() else {
        return fcntl::openat(Some(root.as_raw_fd()), ".", flags | OFlag::O_CLOEXEC, Mode::empty()).map(own);
    };
    let mut cur: Option<OwnedFd> = None;
    for d in dirs {
        let at = cur.as_ref().map_or(root.as_raw_fd(), |f| f.as_raw_fd());
        let fd = fcntl::openat(
            Some(at),
            *d,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        cur = Some(own(fd));
    }
    let at = cur.as_ref().map_or(root.as_raw_fd(), |f| f.as_raw_fd());
    fcntl::openat(Some(at), *last, flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty()).map(own)
}

/// Reads a small text file of the image (`/etc/passwd`); `None` when it does not exist.
fn read_in_root(root: &OwnedFd, rootfs: &Path, path: &str) -> Result<Option<String>, BundleError> {
    let err =
        |e: io::Error| BundleError::Io { what: "reading", path: rootfs.join(path.trim_start_matches('/')), source: e };
    let fd = match open_in_root(root, path, OFlag::O_RDONLY) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(err(e.into())),
    };
    let mut data = Vec::new();
    fs::File::from(fd).take(ACCOUNT_FILE_MAX).read_to_end(&mut data).map_err(err)?;
    Ok(Some(String::from_utf8_lossy(&data).into_owned()))
}

/// Creates directory `path` (absolute, clean) in the rootfs when missing: 0755, root-owned,
/// each component resolved inside the rootfs.
fn ensure_dir(root: &OwnedFd, rootfs: &Path, path: &str) -> Result<(), BundleError> {
    let err = |source: io::Error| BundleError::Io {
        what: "creating the working directory",
        path: rootfs.join(path.trim_start_matches('/')),
        source,
    };
    let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
    if open_in_root(root, path, dir_flags).is_ok() {
        return Ok(());
    }
    let mut prefix = String::new();
    let mut parent = open_in_root(root, "/", dir_flags).map_err(|e| err(e.into()))?;
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        prefix.push('/');
        prefix.push_str(comp);
        parent = match open_in_root(root, &prefix, dir_flags) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                // EEXIST here is a dangling symlink: it is left alone (an error).
                stat::mkdirat(Some(parent.as_raw_fd()), comp, Mode::from_bits_truncate(0o755))
                    .map_err(|e| err(e.into()))?;
                let fd = fcntl::openat(
                    Some(parent.as_raw_fd()),
                    comp,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map(own)
                .map_err(|e| err(e.into()))?;
                // mkdirat applied the umask.
                stat::fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(0o755)).map_err(|e| err(e.into()))?;
                fd
            }
            Err(e) => return Err(err(e.into())),
        };
    }
    Ok(())
}

// ----------------------------------------------------------------------------- users

#[derive(Debug, Clone, PartialEq, Eq)]
struct User {
    uid: u32,
    gid: u32,
    additional_gids: Vec<u32>,
    home: Option<String>,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn passwd_entries(data: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    data.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 || f[0].is_empty() || f[0].starts_with(['#', '+', '-']) {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].trim().parse().ok()?,
            gid: f[3].trim().parse().ok()?,
            home: f.get(5).copied().unwrap_or(""),
        })
    })
}

fn group_entries(data: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    data.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 3 || f[0].is_empty() || f[0].starts_with(['#', '+', '-']) {
            return None;
        }
        let members =
            f.get(3).map(|m| m.split(',').map(str::trim).filter(|m| !m.is_empty()).collect()).unwrap_or_default();
        Some(GroupEntry { name: f[0], gid: f[2].trim().parse().ok()?, members })
    })
}

/// A uid or gid as runc takes it: 0..=2^31-1.
fn parse_id(s: &str) -> Option<Result<u32, String>> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(match s.parse::<u32>() {
        Ok(n) if n <= i32::MAX as u32 => Ok(n),
        _ => Err(format!("{s} is out of range (0 to {})", i32::MAX)),
    })
}

/// `USER[:GROUP]` (names or ids) as a running container's rootfs defines them (its
/// /etc/passwd and /etc/group, read inside it with runc's rules, as for the image's USER):
/// uid, gid and supplementary gids. For `skiff exec -u`.
pub fn user_in_rootfs(rootfs: &Path, spec: &str, image: &str) -> Result<(u32, u32, Vec<u32>), BundleError> {
    let root = open_root(rootfs)?;
    let u = resolve_user(&root, rootfs, spec, image)?;
    Ok((u.uid, u.gid, u.additional_gids))
}

/// runc's `GetExecUser`: see the module documentation.
fn resolve_user(root: &OwnedFd, rootfs: &Path, spec: &str, image: &str) -> Result<User, BundleError> {
    let (user_arg, group_arg) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let bad = |detail: String| BundleError::BadUser { user: spec.to_string(), image: image.to_string(), detail };
    let uid_arg = parse_id(user_arg).transpose().map_err(bad)?;
    let passwd = read_in_root(root, rootfs, "/etc/passwd")?;
    let matched = passwd.as_deref().and_then(|p| {
        passwd_entries(p).find(|e| match (user_arg, uid_arg) {
            ("", _) => e.uid == 0,
            (_, Some(uid)) => e.uid == uid,
            (name, None) => e.name == name,
        })
    });
    let mut user = User { uid: 0, gid: 0, additional_gids: Vec::new(), home: None };
    let matched_name = match &matched {
        Some(e) => {
            user.uid = e.uid;
            user.gid = e.gid;
            user.home = Some(e.home.to_string()).filter(|h| !h.is_empty());
            Some(e.name.to_string())
        }
        None => {
            match uid_arg {
                Some(uid) => user.uid = uid,
                None if user_arg.is_empty() => {}
                None => return Err(BundleError::UnknownUser { user: user_arg.to_string(), image: image.to_string() }),
            }
            None
        }
    };
    let group = read_in_root(root, rootfs, "/etc/group")?;
    let groups: Vec<GroupEntry> = group.as_deref().map(|g| group_entries(g).collect()).unwrap_or_default();
    match group_arg.filter(|g| !g.is_empty()) {
        Some(g) => {
            let gid_arg = parse_id(g).transpose().map_err(bad)?;
            user.gid = match (gid_arg, groups.iter().find(|e| gid_arg.map_or(e.name == g, |gid| e.gid == gid))) {
                (_, Some(e)) => e.gid,
                (Some(gid), None) => gid,
                (None, None) => {
                    return Err(BundleError::UnknownGroup { group: g.to_string(), image: image.to_string() })
                }
            };
        }
        None => {
            if let Some(name) = &matched_name {
                let mut gids: Vec<u32> =
                    groups.iter().filter(|e| e.members.contains(&name.as_str())).map(|e| e.gid).collect();
                gids.dedup();
                user.additional_gids = gids;
            }
        }
    }
    Ok(user)
}

// ----------------------------------------------------------------------------- the rest

/// Every capability this process may pass on: [`ALL_CAPABILITIES`] (in the kernel's
/// numbering) within this process's bounding set (`CapBnd` of /proc/self/status), as a
/// runtime cannot grant more (Docker's privileged is every capability its daemon holds).
/// Unreadable: every one.
fn privileged_capabilities() -> Vec<String> {
    let bounding = fs::read_to_string("/proc/self/status").ok().and_then(|t| {
        t.lines().find_map(|l| l.strip_prefix("CapBnd:")).and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
    });
    ALL_CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(i, _)| bounding.is_none_or(|b| b & (1u64 << i) != 0))
        .map(|(_, c)| c.to_string())
        .collect()
}

fn capabilities(add: &[String], drop: &[String]) -> Result<Vec<String>, BundleError> {
    let norm = |c: &String| -> Result<String, BundleError> {
        let up = c.trim().to_ascii_uppercase();
        if up == "ALL" {
            return Ok(up);
        }
        let name = if up.starts_with("CAP_") { up } else { format!("CAP_{up}") };
        if ALL_CAPABILITIES.contains(&name.as_str()) {
            Ok(name)
        } else {
            Err(invalid("capability", format!("{c:?} is not a Linux capability")))
        }
    };
    let mut caps: BTreeSet<String> = DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    for c in drop {
        match norm(c)?.as_str() {
            "ALL" => caps.clear(),
            n => {
                caps.remove(n);
            }
        }
    }
    for c in add {
        match norm(c)?.as_str() {
            "ALL" => caps.extend(ALL_CAPABILITIES.iter().map(|c| c.to_string())),
            n => {
                caps.insert(n.to_string());
            }
        }
    }
    Ok(caps.into_iter().collect())
}

fn default_mounts() -> Value {
    json!([
        { "destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"] },
        { "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
        { "destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
        { "destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
        { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"] },
        { "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"] },
        { "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"] }
    ])
}

fn mounts(user: &[Mount]) -> Result<Vec<Value>, BundleError> {
    let mut dests = BTreeSet::new();
    let mut own_mounts = Vec::with_capacity(user.len());
    for m in user {
        let d = m.destination().to_str().and_then(clean_abs).ok_or_else(|| {
            invalid("mount", format!("destination {} is not an absolute path", m.destination().display()))
        })?;
        if m.destination().components().any(|c| c == Component::ParentDir) {
            return Err(invalid("mount", format!("destination {} contains '..'", m.destination().display())));
        }
        let mut m = m.clone();
        m.set_destination(PathBuf::from(&d));
        dests.insert(d);
        own_mounts.push(m);
    }
    // Parents before children (a stable sort keeps the caller's order otherwise).
    own_mounts.sort_by_key(|m| m.destination().components().count());
    let over_dev = dests.contains("/dev");
    let mut out: Vec<Value> = default_mounts()
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| {
            let d = m["destination"].as_str().unwrap_or_default();
            let replaced = dests.contains(d) || (over_dev && d.starts_with("/dev/"));
            !replaced
        })
        .collect();
    for m in own_mounts {
        out.push(serde_json::to_value(&m).map_err(|e| BundleError::Spec(e.to_string()))?);
    }
    Ok(out)
}

/// `linux.devices` entries, checked: absolute clean paths, not twice, `c` or `b`.
fn device_nodes(nodes: &[DeviceNode]) -> Result<Vec<Value>, BundleError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(nodes.len());
    for d in nodes {
        let p = d.path.to_str().and_then(clean_abs).filter(|p| p != "/").ok_or_else(|| {
            invalid("device", format!("{} is not an absolute path in the container", d.path.display()))
        })?;
        if d.path.components().any(|c| c == Component::ParentDir) {
            return Err(invalid("device", format!("{} contains '..'", d.path.display())));
        }
        if !matches!(d.kind, 'c' | 'b') {
            return Err(invalid("device", format!("{p}: type {:?} is not c or b", d.kind)));
        }
        if !seen.insert(p.clone()) {
            return Err(invalid("device", format!("{p} is given twice")));
        }
        out.push(json!({
            "path": p,
            "type": d.kind.to_string(),
            "major": d.major,
            "minor": d.minor,
            "fileMode": d.file_mode & 0o7777,
            "uid": d.uid,
            "gid": d.gid,
        }));
    }
    Ok(out)
}

/// The device cgroup: deny everything, then what every container needs (runc's list), then
/// the caller's rules (everything when privileged).
fn device_rules(privileged: bool, extra: &[DeviceAllow]) -> Result<Value, BundleError> {
    let mut rules = standard_device_rules();
    let list = rules.as_array_mut().expect("a list");
    if privileged {
        list.push(json!({ "allow": true, "access": "rwm" }));
    }
    for r in extra {
        if !matches!(r.kind, 'a' | 'b' | 'c')
            || r.access.is_empty()
            || !r.access.chars().all(|c| matches!(c, 'r' | 'w' | 'm'))
        {
            return Err(invalid("device rule", format!("{r:?} is not a device cgroup rule")));
        }
        list.push(json!({ "allow": true, "type": r.kind.to_string(), "major": r.major, "minor": r.minor, "access": r.access }));
    }
    Ok(rules)
}

fn standard_device_rules() -> Value {
    let c = |major: i64, minor: Option<i64>| json!({ "allow": true, "type": "c", "major": major, "minor": minor, "access": "rwm" });
    json!([
        { "allow": false, "access": "rwm" },
        // mknod of any device (reading or writing it stays denied)
        { "allow": true, "type": "c", "access": "m" },
        { "allow": true, "type": "b", "access": "m" },
        c(1, Some(3)),   // /dev/null
        c(1, Some(5)),   // /dev/zero
        c(1, Some(7)),   // /dev/full
        c(1, Some(8)),   // /dev/random
        c(1, Some(9)),   // /dev/urandom
        c(5, Some(0)),   // /dev/tty
        c(5, Some(1)),   // /dev/console
        c(5, Some(2)),   // /dev/ptmx
        c(136, None),    // /dev/pts/*
    ])
}

/// RLIMIT_NOFILE 1024:1024, lowered to this process's hard limit (a runtime cannot raise it).
fn nofile_limit() -> (u64, u64) {
    use nix::sys::resource::{getrlimit, Resource};
    #[allow(clippy::useless_conversion)] // rlim_t is 32 bits on armv7
    let hard = getrlimit(Resource::RLIMIT_NOFILE).map(|(_, h)| u64::from(h)).unwrap_or(1024);
    let v = 1024.min(hard);
    (v, v)
}

/// A signal as docker takes it (`SIGTERM`, `TERM`, `15`, `SIGRTMIN+3`, `RTMAX-1`): its
/// canonical name and number.
pub fn parse_signal(s: &str) -> Option<(String, i32)> {
    use nix::sys::signal::Signal;
    let s = s.trim().to_ascii_uppercase();
    let (rtmin, rtmax) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    let rt_name = |n: i32| {
        if n - rtmin <= rtmax - n {
            if n == rtmin {
                "SIGRTMIN".to_string()
            } else {
                format!("SIGRTMIN+{}", n - rtmin)
            }
        } else if n == rtmax {
            "SIGRTMAX".to_string()
        } else {
            format!("SIGRTMAX-{}", rtmax - n)
        }
    };
    let by_number = |n: i32| match Signal::try_from(n) {
        Ok(sig) => Some((sig.as_str().to_string(), n)),
        Err(_) if (rtmin..=rtmax).contains(&n) => Some((rt_name(n), n)),
        Err(_) => None,
    };
    if let Ok(n) = s.parse::<i32>() {
        return by_number(n);
    }
    let name = s.strip_prefix("SIG").unwrap_or(&s);
    let rt = |rest: &str, base: i32, sign: i32| -> Option<i32> {
        let off = match rest {
            "" => 0,
            r => {
                let (op, num) = r.split_at(1);
                let n: i32 = num.parse().ok()?;
                match (op, sign) {
                    ("+", 1) | ("-", -1) => n,
                    _ => return None,
                }
            }
        };
        let n = base + sign * off;
        (rtmin..=rtmax).contains(&n).then_some(n)
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return rt(rest, rtmin, 1).and_then(by_number);
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return rt(rest, rtmax, -1).and_then(by_number);
    }
    let sig: Signal = format!("SIG{name}").parse().ok()?;
    Some((sig.as_str().to_string(), sig as i32))
}

fn ports(exposed: &[String]) -> Result<Vec<ExposedPort>, String> {
    let mut out = BTreeSet::new();
    for p in exposed {
        let (range, proto) = p.split_once('/').unwrap_or((p, "tcp"));
        let proto = proto.to_ascii_lowercase();
        if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
            return Err(format!("exposed port {p:?}: unknown protocol {proto:?}"));
        }
        let bad = || format!("exposed port {p:?} is not PORT[-PORT][/PROTOCOL]");
        let (lo, hi) = range.split_once('-').unwrap_or((range, range));
        let lo: u16 = lo.parse().map_err(|_| bad())?;
        let hi: u16 = hi.parse().map_err(|_| bad())?;
        if lo == 0 || hi < lo {
            return Err(bad());
        }
        for port in lo..=hi {
            out.insert(ExposedPort { port, protocol: proto.clone() });
        }
    }
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests;
