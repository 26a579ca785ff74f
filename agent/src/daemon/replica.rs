//! One replica's container on disk: its durable record, its bundle (the OCI config built from
//! the image and the compose service), and the start (through `skiff shim`) and stop of its
//! container.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use skiff_images::bundle::{self, BundleOverrides, ImageRunConfig, NetworkNamespace};
use skiff_images::{fsutil, rootfs, ImageRecord, Store};
use tokio::io::AsyncBufReadExt;

use super::oci::Runtime;
use super::paths::Paths;
use super::proc;
use crate::cli::run::ContainerRecord;
use crate::manifest::{HealthTest, MountKind, NetworkMode, Service};
use crate::supervise::restart::{ExitKind, RestartTracker};
use skiff_images::bundle::ImageHealthcheck;

/// What the agent keeps about a replica across its own restarts and power cuts
/// (`<root>/containers/<id>/replica.json`, written temp + fsync + rename).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplicaRecord {
    pub id: String,
    pub service: String,
    pub index: u32,
    /// The service definition the container was made from: a different one means replace.
    pub spec: Service,
    /// The image's manifest digest the container runs.
    pub image_digest: String,
    /// The stop signal (the service's or the image's), normalised (`SIGTERM`).
    pub stop_signal: String,
    pub tracker: RestartTracker,
    /// RFC 3339, when its current container started (None while not running).
    pub started_at: Option<String>,
    /// The shim of the current container: pid and its start time (names it for good).
    pub shim: Option<(i32, u64)>,
    /// The container's init pid.
    pub pid: Option<i32>,
    /// The agent stopped it on purpose (skiff down, removal): not restarted at start-up.
    #[serde(default)]
    pub stopped: bool,
    /// The health check it runs (the service's, or the image's HEALTHCHECK), once prepared.
    #[serde(default)]
    pub healthcheck: Option<HealthCheck>,
    /// Its address on the bridge network, while it has one (kept for an adopting agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::Ipv4Addr>,
    /// The service's revision it runs ([`super::revisions`]); 0: recorded by a skiff before
    /// revisions (the agent finds or makes its revision at adoption).
    #[serde(default)]
    pub revision: u32,
    /// It passed its last health check (saved when that changes): an adopting agent keeps it
    /// among the published ports' backends until its own first check says otherwise.
    #[serde(default)]
    pub healthy: bool,
}

/// A resolved health check: what runs in the container and when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub args: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
    /// Between checks during the start period until the first success (zero: `interval`).
    #[serde(default)]
    pub start_interval: Duration,
}

/// Docker's test form: `["CMD", args...]`, `["CMD-SHELL", cmd]`; `None` for `["NONE"]`, empty
/// or unknown forms.
fn docker_test(test: &[String]) -> Option<Vec<String>> {
    match test.split_first() {
        Some((kind, rest)) if kind == "CMD" && !rest.is_empty() => Some(rest.to_vec()),
        Some((kind, rest)) if kind == "CMD-SHELL" && !rest.is_empty() => {
            Some(vec!["/bin/sh".into(), "-c".into(), rest.join(" ")])
        }
        _ => None,
    }
}

/// The health check a replica runs, as compose resolves it: the service's `healthcheck`
/// (`disable: true` / `test: NONE` turn it off, even the image's); a service healthcheck
/// without `test` keeps the image's test with the service's timings; no `healthcheck` at
/// all takes the image's HEALTHCHECK with its timings (Docker's defaults where it has none).
pub fn resolve_healthcheck(svc: &Service, image: Option<&ImageHealthcheck>) -> Option<HealthCheck> {
    let image_test = image.and_then(|h| docker_test(&h.test));
    match &svc.healthcheck {
        Some(h) if h.disabled => None,
        Some(h) => {
            let args = match &h.test {
                Some(HealthTest::Cmd(a)) => a.clone(),
                Some(HealthTest::Shell(s)) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
                None => image_test?,
            };
            Some(HealthCheck {
                args,
                interval: h.interval,
                timeout: h.timeout,
                retries: h.retries,
                start_period: h.start_period,
                // Compose: 5s by default, and only where there is a start period.
                start_interval: if h.start_period.is_zero() {
                    Duration::ZERO
                } else {
                    h.start_interval.unwrap_or(Duration::from_secs(5))
                },
            })
        }
        None => {
            let h = image?;
            let or = |d: Duration, dflt: u64| if d.is_zero() { Duration::from_secs(dflt) } else { d };
            Some(HealthCheck {
                args: image_test?,
                interval: or(h.interval, 30),
                timeout: or(h.timeout, 30),
                retries: if h.retries == 0 { 3 } else { h.retries },
                start_period: h.start_period,
                start_interval: if h.start_period.is_zero() { Duration::ZERO } else { or(h.start_interval, 5) },
            })
        }
    }
}

/// What preparing a container found out.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Prepared {
    /// Normalised (`SIGTERM`).
    pub stop_signal: String,
    /// Limits the kernel cannot apply.
    pub warnings: Vec<String>,
    pub healthcheck: Option<HealthCheck>,
    /// Its address on the bridge (set by the start task after `prepare`).
    pub address: Option<std::net::Ipv4Addr>,
}

impl ReplicaRecord {
    pub fn path(paths: &Paths, id: &str) -> PathBuf {
        paths.container(id).join("replica.json")
    }

    pub fn save(&self, paths: &Paths) -> Result<()> {
        let dir = paths.container(&self.id);
        fsutil::create_private_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let data = serde_json::to_vec_pretty(self)?;
        // 0600: it holds the service's definition, environment included.
        fsutil::write_atomic(&dir, &dir.join("replica.json"), &data)
            .with_context(|| format!("writing {}", dir.join("replica.json").display()))
    }

    /// Every record under `<root>/containers`, with the ids whose record is unreadable.
    pub fn load_all(paths: &Paths) -> (Vec<ReplicaRecord>, Vec<(String, String)>) {
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        let Ok(rd) = fs::read_dir(paths.containers()) else { return (ok, bad) };
        for e in rd.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let p = e.path().join("replica.json");
            match fs::read(&p) {
                Ok(data) => {
                    // An older skiff wrote it 0644 (it holds the service's environment); the
                    // 0700 directories around it keep others out even if this chmod fails.
                    let _ = fsutil::make_private(&p);
                    match serde_json::from_slice::<ReplicaRecord>(&data) {
                        Ok(r) if r.id == id => ok.push(r),
                        Ok(_) => bad.push((id, "its record names another replica".into())),
                        Err(e) => bad.push((id, format!("unreadable record: {e}"))),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {} // `skiff run` containers
                Err(e) => bad.push((id, format!("{}: {e}", p.display()))),
            }
        }
        ok.sort_by(|a, b| (&a.service, a.index).cmp(&(&b.service, b.index)));
        (ok, bad)
    }
}

/// What the kernel lacks that a service asks for: (controller, what is dropped).
pub fn missing_controllers(svc: &Service) -> Vec<(&'static str, &'static str)> {
    missing_controllers_in(svc, &crate::hostcheck::CgroupFacts::read())
}

/// [`missing_controllers`] with these cgroup facts: a controller counts when limits of it can
/// be applied here, the rule of [`crate::hostcheck::CgroupFacts::usable`] (v2: the root's
/// `cgroup.controllers`, which lists memory on 6.12+ kernels whose /proc/cgroups does not;
/// v1 and hybrid: a mounted v1 hierarchy of it; either way not disabled in /proc/cgroups).
pub fn missing_controllers_in(svc: &Service, cg: &crate::hostcheck::CgroupFacts) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    let r = &svc.resources;
    let wanted = [
        ("memory", r.memory.is_some(), "memory limit"),
        ("cpu", r.cpus.is_some(), "cpus limit"),
        ("pids", r.pids.is_some_and(|p| p > 0), "pids limit"),
    ];
    for (ctrl, asked, what) in wanted {
        if asked && !cg.usable(ctrl) {
            out.push((ctrl, what));
        }
    }
    out
}

/// Reads env files (`KEY=VALUE` lines, `#` comments, optional `export `, quotes stripped),
/// each at most [`crate::manifest::ENV_FILE_MAX`] bytes of a regular file.
fn env_files(svc: &Service) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for f in &svc.env_file {
        let pairs = match crate::manifest::read_env_file(&f.path) {
            Ok(Some(p)) => p,
            Ok(None) if !f.required => continue,
            Ok(None) => bail!("env_file {} does not exist", f.path.display()),
            Err(e) => bail!("env_file {e}"),
        };
        for (k, v) in pairs {
            match v {
                Some(v) => out.push(format!("{k}={v}")),
                None => {
                    if let Ok(v) = std::env::var(&k) {
                        out.push(format!("{k}={v}"));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Prepares `<root>/containers/<id>`: the record for prune, the rootfs (kept across restarts of
/// the same container: its writable layer survives like `docker restart`'s), the volumes and the
/// bundle. Returns the normalised stop signal and the warnings (limits the kernel cannot apply).
/// `bridged`: the replica was connected to the bridge (daemon::network wrote its hosts and
/// resolv.conf, mounted here at /etc/hosts and /etc/resolv.conf).
pub fn prepare(
    paths: &Paths,
    store: &Store,
    image: &ImageRecord,
    svc: &Service,
    id: &str,
    bridged: bool,
) -> Result<Prepared> {
    let config = ImageRunConfig::load(store, image)?;
    // The image's VOLUME paths, before anything is made for the container.
    skiff_images::volume::check_paths(&config)?;
    let cdir = paths.container(id);
    fsutil::create_private_dir(&cdir).with_context(|| format!("creating {}", cdir.display()))?;
    ContainerRecord::write(&cdir, id, image)?;
    let layers = rootfs::image_layers(store, image);
    rootfs::mount_rootfs(&layers, &cdir).with_context(|| format!("preparing the root filesystem of {id}"))?;
    let rootfs_dir = rootfs::rootfs_path(&cdir);

    let mut warnings = Vec::new();
    let missing = missing_controllers(svc);
    for (ctrl, what) in &missing {
        warnings.push(format!(
            "{what} not applied: the kernel has no {ctrl} cgroup controller usable here \
             (`skiff check` says why and how to enable it)"
        ));
    }
    let lacks = |c: &str| missing.iter().any(|(m, _)| *m == c);

    let mut env = env_files(svc)?;
    for (k, v) in &svc.environment {
        match v {
            Some(v) => env.push(format!("{k}={v}")),
            None => {
                if let Ok(v) = std::env::var(k) {
                    env.push(format!("{k}={v}"));
                }
            }
        }
    }
    // `bridge` (compose's default): the start task connected the namespace to the bridge and
    // wrote the name files (daemon::network) before this (unless --no-bridge); `none`: loopback
    // only.
    let network = match svc.network_mode {
        NetworkMode::Host => NetworkNamespace::Host,
        NetworkMode::None | NetworkMode::Bridge => {
            let ns = paths.netns(id);
            super::netns::ensure(&ns).with_context(|| format!("making the network namespace {}", ns.display()))?;
            NetworkNamespace::Path(ns)
        }
    };
    let mut annotations = BTreeMap::new();
    annotations.insert("io.skiff.service".to_string(), svc.name.clone());
    annotations.insert("io.skiff.replica".to_string(), id.to_string());
    for (k, v) in &svc.labels {
        annotations.insert(k.clone(), v.clone());
    }
    let mut o = BundleOverrides {
        entrypoint: svc.entrypoint.clone(),
        cmd: svc.command.clone(),
        env,
        user: svc.user.clone(),
        working_dir: svc.working_dir.clone(),
        memory_limit: svc.resources.memory.filter(|_| !lacks("memory")).map(|m| m.min(i64::MAX as u64) as i64),
        cpus: svc.resources.cpus.filter(|_| !lacks("cpu")),
        pids_limit: svc.resources.pids.filter(|_| !lacks("pids")),
        hostname: Some(super::network::hostname(svc, id)),
        readonly_rootfs: svc.read_only,
        cap_add: svc.cap_add.clone(),
        cap_drop: svc.cap_drop.clone(),
        network,
        cgroups_path: Some(paths.cgroup(id)),
        annotations,
        rlimits: svc.ulimits.iter().map(|(k, u)| (k.clone(), u.soft.max(0) as u64, u.hard.max(0) as u64)).collect(),
        sysctls: svc.sysctls.clone(),
        ..Default::default()
    };
    (o.devices, o.device_rules) = super::devices::for_service(svc)?;
    o.privileged = svc.privileged;
    o.mounts.extend(super::grants::install(&cdir, svc)?);
    if svc.network_mode == NetworkMode::Host {
        // The host's name files, copied (as Docker does): `localhost` resolves, and so do the
        // host's resolvers. Copies, not binds: a bind would pin the host file's inode.
        for (src, file) in
            [("/etc/hosts", super::network::HOSTS_FILE), ("/etc/resolv.conf", super::network::RESOLV_FILE)]
        {
            let data = host_file(Path::new(src)).with_context(|| format!("reading the host's {src}"))?;
            fsutil::write_atomic_mode(&cdir, &cdir.join(file), &data, 0o644)
                .with_context(|| format!("writing {}", cdir.join(file).display()))?;
        }
    }
    if bridged || svc.network_mode == NetworkMode::Host {
        for (file, target) in
            [(super::network::HOSTS_FILE, "/etc/hosts"), (super::network::RESOLV_FILE, "/etc/resolv.conf")]
        {
            o.mounts.push(bundle::bind_mount(cdir.join(file), target, true));
        }
    }
    let mut anon = 0usize;
    for m in &svc.mounts {
        let mount = match &m.kind {
            MountKind::Volume { name, external, nocopy } => {
                let p = paths.volume(name);
                if *external {
                    if !p.is_dir() {
                        bail!(
                            "external volume {name} does not exist: create {} (skiff never creates external volumes)",
                            p.display()
                        );
                    }
                } else if let Some(w) = named_volume(&p, &rootfs_dir, &m.target, *nocopy)? {
                    // Logged now (the volume is made once; a start that fails later would
                    // not show it) and kept with the service's warnings.
                    super::reconcile::log(&format!("{id}: warning: {w}"));
                    warnings.push(w);
                }
                bundle::bind_mount(p, &m.target, m.read_only)
            }
            MountKind::Anonymous => {
                let p = cdir.join("volumes").join(format!("anon-{anon}"));
                anon += 1;
                fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
                bundle::bind_mount(p, &m.target, m.read_only)
            }
            MountKind::Bind { source, create_host_path } => {
                if !source.exists() {
                    if *create_host_path {
                        fs::create_dir_all(source).with_context(|| format!("creating {}", source.display()))?;
                    } else {
                        bail!("bind mount source {} does not exist on the host", source.display());
                    }
                }
                bundle::bind_mount(source, &m.target, m.read_only)
            }
            MountKind::Tmpfs { size, mode } => bundle::tmpfs_mount(&m.target, *size, *mode),
        };
        o.mounts.push(mount);
    }
    // The image's declared VOLUMEs get an anonymous volume each (docker's behaviour), seeded
    // from the image when first made (kept across restarts of this container).
    let covered: Vec<PathBuf> = o.mounts.iter().map(|m| m.destination().clone()).collect();
    let anonymous = skiff_images::volume::image_volumes(&config, &rootfs_dir, &covered, &cdir.join("volumes"))?;
    o.mounts.extend(anonymous);
    let mut config = config;
    if let Some(s) = &svc.stop_signal {
        config.stop_signal = Some(s.clone());
    }
    let healthcheck = resolve_healthcheck(svc, config.healthcheck.as_ref());
    let (spec, info) = bundle::build_spec(&config, &rootfs_dir, &o)?;
    bundle::write_bundle(&cdir, &spec)?;
    Ok(Prepared { stop_signal: info.stop_signal, warnings, healthcheck, address: None })
}

/// A named volume of the manifest at `p` (`<root>/volumes/NAME`), made when missing and then
/// filled from the image at `target` unless `nocopy` (Docker's copy-up; see
/// [`skiff_images::volume::named_volume`]: once, when made, resolved inside the rootfs). A
/// path of the image that cannot be copied safely gives an empty volume and a warning (the
/// returned line).
fn named_volume(p: &Path, rootfs: &Path, target: &str, nocopy: bool) -> Result<Option<String>> {
    use skiff_images::volume::NamedVolume;
    // `volumes/` is root's alone; an empty volume keeps the usual 0755 (the container's users
    // see it through the bind mount only), a filled one its image directory's owner and mode.
    let (Some(parent), Some(name)) = (p.parent(), p.file_name().and_then(|n| n.to_str())) else {
        bail!("bad volume path {}", p.display());
    };
    fsutil::create_private_dir(parent).with_context(|| format!("creating {}", parent.display()))?;
    let made = skiff_images::volume::named_volume(rootfs, target, parent, name, nocopy)
        .with_context(|| format!("making volume {name}"))?;
    Ok(match made {
        NamedVolume::Refused(why) => {
            Some(format!("volume {name} at {target} was made empty, not filled from the image: {why}"))
        }
        NamedVolume::ExistingEmpty { uid, gid, mode } => Some(format!(
            "volume {name} is empty, while the image has files at {target} (its directory {uid}:{gid}, mode {mode:o}): \
             skiff fills a volume only when it makes it, and earlier versions made volumes empty; if the service \
             needs the image's files (or their owner), stop it and remove the volume ({}) to have it filled at the next start",
            p.display()
        )),
        _ => None,
    })
}

const PREPARED: &str = "prepared.json";

/// A host file for a host-networked container, through the manifest's bounded reader (at most
/// 1 MiB, a regular file: never a FIFO that would block the start); a missing one is empty.
fn host_file(p: &Path) -> Result<Vec<u8>> {
    match crate::manifest::read_bounded(p, 1 << 20, true) {
        Ok(data) => Ok(data),
        Err(e) if e.is_not_found() => Ok(Vec::new()),
        Err(e) => Err(anyhow!("{e}")),
    }
}

/// Keeps what preparing found (and the bridge address) beside the bundle, before the start:
/// an agent killed between the start and hearing back adopts the container with its real
/// health check, stop signal and address.
pub fn save_prepared(paths: &Paths, id: &str, prepared: &Prepared) -> Result<()> {
    let cdir = paths.container(id);
    let data = serde_json::to_vec_pretty(prepared)?;
    fsutil::write_atomic(&cdir, &cdir.join(PREPARED), &data)
        .with_context(|| format!("writing {}", cdir.join(PREPARED).display()))
}

/// What [`prepare`] found out for container `id` (`None`: not prepared, or unreadable).
pub fn read_prepared(paths: &Paths, id: &str) -> Option<Prepared> {
    let data = fs::read(paths.container(id).join(PREPARED)).ok()?;
    serde_json::from_slice(&data).ok()
}

/// What a restart of an unchanged, already prepared replica needs: its rootfs mounted and its
/// network namespace there (both are gone after a reboot; both calls are no-ops otherwise).
pub fn remount(paths: &Paths, store: &Store, image: &ImageRecord, svc: &Service, id: &str) -> Result<()> {
    let cdir = paths.container(id);
    let layers = rootfs::image_layers(store, image);
    rootfs::mount_rootfs(&layers, &cdir).with_context(|| format!("preparing the root filesystem of {id}"))?;
    // Secrets and configs anew (the tmpfs is gone after a reboot; a file source is read again).
    super::grants::install(&cdir, svc)?;
    if svc.network_mode != NetworkMode::Host {
        let ns = paths.netns(id);
        super::netns::ensure(&ns).with_context(|| format!("making the network namespace {}", ns.display()))?;
    }
    Ok(())
}

/// A started container: the init pid and the shim (pid, start time).
#[derive(Clone, Copy, Debug)]
pub struct Started {
    pub pid: i32,
    pub shim: (i32, u64),
}

#[derive(Deserialize)]
struct Report {
    ok: bool,
    #[serde(default)]
    pid: Option<i32>,
    #[serde(default)]
    error: Option<String>,
}

static SHIM_BINARY: std::sync::OnceLock<Option<fs::File>> = std::sync::OnceLock::new();

/// Opens `skiff-shim` next to the agent's binary (once, at agent start), to start every
/// shim from: a small binary of the shim alone ([`crate::shim`]), whose resident memory is a
/// fraction of the agent binary's. It must be a regular file that only root can change (the
/// agent runs it as root); `None` (the shims are `skiff shim`, from the agent's own binary)
/// when it is missing or unsafe, which is said once.
pub fn open_shim_binary() -> Option<&'static fs::File> {
    SHIM_BINARY
        .get_or_init(|| {
            let path = std::env::current_exe().ok()?.with_file_name("skiff-shim");
            let found = (|| -> Result<fs::File> {
                let f =
                    fs::OpenOptions::new().read(true).custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW).open(&path)?;
                let md = f.metadata()?;
                use std::os::unix::fs::MetadataExt;
                if !md.is_file() || md.uid() != 0 || md.mode() & 0o022 != 0 || md.mode() & 0o100 == 0 {
                    bail!(
                        "not a root-owned executable that only root can write (mode {:o}, uid {})",
                        md.mode() & 0o7777,
                        md.uid()
                    );
                }
                Ok(f)
            })();
            match found {
                Ok(f) => Some(f),
                Err(e) => {
                    let not_there =
                        e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound);
                    if !not_there {
                        super::reconcile::log(&format!("{}: {e:#}; shims run from the agent's binary", path.display()));
                    }
                    None
                }
            }
        })
        .as_ref()
}

fn shim_binary() -> Option<&'static fs::File> {
    SHIM_BINARY.get().and_then(Option::as_ref)
}

/// Starts the container of `<root>/containers/<id>` through a new `skiff shim`, which runs
/// the runtime's `create` and `start` and then holds the container's stdio and exit status.
pub async fn start(paths: &Paths, rt: &Runtime, svc: &Service, id: &str) -> Result<Started> {
    let shim_dir = paths.shim(id);
    // Whatever an earlier container of this replica left (its exit status was read already).
    let _ = fs::remove_dir_all(&shim_dir);
    fsutil::create_private_dir(&shim_dir).with_context(|| format!("creating {}", shim_dir.display()))?;
    // The small skiff-shim through the descriptor opened at agent start, else the agent's
    // own binary through /proc/self/exe: either still names the inode the agent started with
    // after an upgrade replaced (or removed) the files, where a path would give
    // "/usr/bin/skiff (deleted)" and no container could start until the agent restarts.
    let (exe, arg0) = match shim_binary() {
        Some(fd) => (PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd))), "skiff-shim"),
        None => (PathBuf::from("/proc/self/exe"), "skiff"),
    };
    let log = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(fsutil::PRIVATE_FILE)
        .open(shim_dir.join("shim.log"))
        .with_context(|| format!("creating {}", shim_dir.display()))?;
    let mut child = tokio::process::Command::new(&exe)
        .arg0(arg0)
        .arg("shim")
        .arg("--runtime")
        .arg(&rt.bin)
        .arg("--runtime-root")
        .arg(&rt.root)
        .arg("--bundle")
        .arg(paths.container(id))
        .arg("--id")
        .arg(id)
        .arg("--run-dir")
        .arg(&shim_dir)
        .arg("--log-dir")
        .arg(paths.logs(id))
        .arg("--log-max-size")
        .arg(svc.logging.max_size.to_string())
        .arg("--log-max-file")
        .arg(svc.logging.max_file.to_string())
        .env_remove(super::notify::NOTIFY_SOCKET)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .context("starting skiff shim")?;
    let shim_pid = child.id().map(|p| p as i32).ok_or_else(|| anyhow!("skiff shim exited at once"))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no pipe from skiff shim"))?;
    let mut line = String::new();
    let read = async {
        let mut r = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(stdout, 64 * 1024));
        r.read_line(&mut line).await
    };
    let got = tokio::time::timeout(Duration::from_secs(150), read).await;
    // The shim lives on after its report; tokio reaps it whenever it exits (it is our child
    // until this agent exits, then init's or a subreaper's).
    drop(child);
    match got {
        Ok(Ok(n)) if n > 0 => {}
        Ok(_) => bail!("skiff shim for {id} ended without a report (see {})", shim_dir.join("shim.log").display()),
        Err(_) => {
            // SAFETY: kill(2) on the pid of the shim we just spawned (not yet reaped: tokio only
            // reaps after the handle is dropped and the process has exited).
            unsafe { libc::kill(shim_pid, libc::SIGKILL) };
            bail!("skiff shim for {id} did not report within 150 s");
        }
    }
    let report: Report = serde_json::from_str(line.trim())
        .with_context(|| format!("skiff shim for {id}: unreadable report {line:?}"))?;
    if !report.ok {
        bail!("{}", report.error.unwrap_or_else(|| "the container did not start".into()));
    }
    let pid = report.pid.ok_or_else(|| anyhow!("skiff shim for {id}: report without a pid"))?;
    let started = proc::start_time(shim_pid).unwrap_or(0);
    Ok(Started { pid, shim: (shim_pid, started) })
}

/// Removes the log directory of container `id` (an earlier container's, before a new one
/// with the same id starts); a missing one is fine.
pub fn remove_logs(paths: &Paths, id: &str) -> Result<()> {
    let dir = paths.logs(id);
    match fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing the earlier logs {}", dir.display())),
    }
}

/// The container's exit as its shim recorded it (`<run>/shims/<id>/exit.json`).
pub fn read_exit(paths: &Paths, id: &str) -> Option<ExitKind> {
    #[derive(Deserialize)]
    struct Exit {
        exit_code: Option<i32>,
        signal: Option<i32>,
    }
    let data = fs::read(paths.shim(id).join("exit.json")).ok()?;
    let e: Exit = serde_json::from_slice(&data).ok()?;
    match (e.exit_code, e.signal) {
        (_, Some(s)) => Some(ExitKind::Signal(s)),
        (Some(c), None) => Some(ExitKind::Code(c)),
        (None, None) => None,
    }
}

/// Waits for the shim of a container to exit (it does once the container has exited and its
/// output is drained) and returns the container's exit. `None`: the shim died without
/// recording one (killed): the exit is unknown.
pub async fn wait(paths: &Paths, id: &str, shim: (i32, u64)) -> Option<ExitKind> {
    if proc::alive(shim.0, Some(shim.1)) {
        proc::wait_exit(shim.0).await;
    }
    read_exit(paths, id)
}

/// Stops a container gracefully: `signal`, up to `grace` for it to exit, then SIGKILL; then
/// deletes it from the runtime. Returns its exit when its shim recorded one.
pub async fn stop(
    paths: &Paths,
    rt: &Runtime,
    id: &str,
    signal: &str,
    grace: Duration,
    shim: Option<(i32, u64)>,
) -> Result<Option<ExitKind>> {
    let deadline = Instant::now() + grace;
    let state = rt.state(id).await?;
    let running = state.as_ref().is_some_and(|s| s.status == "running" || s.status == "created");
    let shim_alive = shim.is_some_and(|s| proc::alive(s.0, Some(s.1)));
    if running {
        if let Err(e) = rt.kill(id, signal).await {
            tracing_warn(&format!("{id}: {e:#}"));
        }
        let waited = tokio::time::timeout_at(deadline.into(), wait_stopped(rt, id, shim.filter(|_| shim_alive))).await;
        if waited.is_err() {
            let _ = rt.kill(id, "SIGKILL").await;
            let _ =
                tokio::time::timeout(Duration::from_secs(10), wait_stopped(rt, id, shim.filter(|_| shim_alive))).await;
        }
    }
    if state.is_some() {
        rt.delete(id, true).await?;
    }
    Ok(read_exit(paths, id))
}

/// Until the container has stopped (its shim gone when there is one, else the runtime says so).
async fn wait_stopped(rt: &Runtime, id: &str, shim: Option<(i32, u64)>) {
    if let Some((pid, _)) = shim {
        proc::wait_exit(pid).await;
        return;
    }
    loop {
        match rt.state(id).await {
            Ok(Some(s)) if s.status == "running" || s.status == "created" => {}
            _ => return,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Removes a replica's container directory (after unmounting its rootfs) and its run files.
pub fn remove(paths: &Paths, id: &str) -> Result<()> {
    let _ = fs::remove_dir_all(paths.shim(id));
    super::network::disconnect(paths, id)?;
    let ns = paths.netns(id);
    super::netns::remove(&ns).with_context(|| format!("removing the network namespace {}", ns.display()))?;
    let dir = paths.container(id);
    if dir.exists() {
        rootfs::remove_container_dir(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    remove_empty_cgroup_parent(&paths.cgroup(id));
    Ok(())
}

/// The runtime removes a container's cgroup on delete; its parent (`/skiff-<hash>`, made by
/// the runtime when it created the first one) is removed here once it is empty, in every
/// hierarchy. rmdir(2) of a cgroup that still has children or tasks fails: nothing else goes.
fn remove_empty_cgroup_parent(cgroup: &str) {
    let Some((parent, _)) = cgroup.rsplit_once('/') else { return };
    let parent = parent.trim_start_matches('/');
    if parent.is_empty() || parent.contains("..") {
        return;
    }
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else { return };
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let fstype = right.split_whitespace().next().unwrap_or_default();
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        if let Some(mount_point) = left.split_whitespace().nth(4) {
            let _ = fs::remove_dir(Path::new(mount_point).join(parent));
        }
    }
}

fn tracing_warn(msg: &str) {
    super::reconcile::log(&format!("warning: {msg}"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::EnvFile;

    /// The limits handed to the runtime follow what the host offers: a Pi 5 on a 6.12 kernel
    /// with the memory controller on lists it in cgroup.controllers but not in /proc/cgroups
    /// (no CONFIG_MEMCG_V1): its limit applies; booted with cgroup_disable=memory it does not.
    /// (The rule before read /proc/cgroups alone and dropped the limit in the first case.)
    #[test]
    fn limits_dropped_are_those_whose_controller_is_not_usable() {
        use crate::hostcheck::CgroupFacts;
        let svc = Service {
            resources: crate::manifest::Resources { memory: Some(32 << 20), cpus: Some(0.5), pids: Some(50) },
            ..Default::default()
        };
        let pi = |controllers: &str| CgroupFacts {
            mountinfo: "27 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n".into(),
            proc_cgroups: Some("#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t0\t70\t1\npids\t0\t70\t1\n".into()),
            root_controllers: Some(controllers.into()),
            unified_controllers: None,
        };
        assert!(missing_controllers_in(&svc, &pi("cpuset cpu io memory pids")).is_empty());
        assert_eq!(missing_controllers_in(&svc, &pi("cpuset cpu io pids")), [("memory", "memory limit")]);
        assert_eq!(
            missing_controllers_in(&svc, &pi("io")),
            [("memory", "memory limit"), ("cpu", "cpus limit"), ("pids", "pids limit")]
        );
        // Nothing asked, nothing missing.
        assert!(missing_controllers_in(&Service::default(), &pi("")).is_empty());
        // v1 with the memory hierarchy unmounted (the e2e test's state).
        let v1 = CgroupFacts {
            mountinfo: "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n\
                        39 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"
                .into(),
            proc_cgroups: Some(
                "#subsys_name\thierarchy\tnum_cgroups\tenabled\nmemory\t4\t86\t1\ncpu\t1\t1\t1\npids\t8\t1\t1\n".into(),
            ),
            root_controllers: None,
            unified_controllers: None,
        };
        assert_eq!(missing_controllers_in(&svc, &v1), [("memory", "memory limit")]);
    }

    #[test]
    fn env_files_as_compose_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.env");
        std::fs::write(&a, "# comment\n\nPLAIN=1\nexport EXPORTED=2\nQUOTED=\"x y\"\nSINGLE='z'\nEMPTY=\n").unwrap();
        let svc = Service {
            env_file: vec![
                EnvFile { path: a, required: true },
                EnvFile { path: dir.path().join("missing.env"), required: false },
            ],
            ..Default::default()
        };
        assert_eq!(env_files(&svc).unwrap(), ["PLAIN=1", "EXPORTED=2", "QUOTED=x y", "SINGLE=z", "EMPTY="]);
        let req = Service {
            env_file: vec![EnvFile { path: dir.path().join("missing.env"), required: true }],
            ..Default::default()
        };
        assert!(env_files(&req).unwrap_err().to_string().contains("missing.env"));
        let bad = dir.path().join("bad.env");
        std::fs::write(&bad, "OK=1\nnot a line\n").unwrap();
        let svc = Service { env_file: vec![EnvFile { path: bad, required: true }], ..Default::default() };
        assert!(env_files(&svc).unwrap_err().to_string().contains("bad.env:2"), "the line is named");
    }
}
