//! The reconcile loop: desired state (the manifest in force) against actual state (the
//! replicas), continuously.
//!
//! One task owns all state ([`Agent`]). Everything slow — pulling an image, preparing and
//! starting a container, stopping one, a health check, waiting for an exit — runs in a task of
//! its own that reports back with an [`Event`] carrying the replica's *generation*; an event of
//! an older generation (the replica was stopped or restarted since) is dropped. So the loop
//! never waits, a slow stop never holds up another replica, and there is exactly one actor
//! deciding what happens to a replica.
//!
//! After each event (and at least every second, for back-off timers) [`Agent::reconcile`]
//! stops the replicas of services gone from the manifest and converges each service in
//! dependency order (`rollouts.rs`): the revision in force, the slots, the rolling update
//! between revisions, the starts that are due (dependencies met, image in the store: pulled
//! on demand by `pulls.rs`, checked for new digests by `checks.rs`), and the restarts whose
//! back-off is over. `net.rs` keeps the bridge and the published ports' backends in step.
//!
//! Then it publishes a [`Snapshot`] for the HTTP endpoint.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, Result};
use skiff_images::{text, Client, ImageRecord, Reference, Store};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use super::network::{self, BridgeNet, SetupLock};
use super::oci::Runtime;
use super::paths::Paths;
use super::ports::Ports;
use super::replica::{self, Prepared, ReplicaRecord, Started};
use super::revisions::{self, ServiceRecord};
use super::status::{Health, Snapshot};
use super::{health, proc};

mod checks;
mod imagegc;
mod net;
use net::connect;
mod publish;
mod pulls;
mod rollouts;
use crate::manifest::{self, DependsCondition, Manifest, NetworkMode, NetworkSettings, PullPolicy, Service};
use crate::supervise::restart::{Decision, ExitKind, RestartState, RestartTracker};

/// What the loop reacts to.
#[derive(Debug)]
pub enum Event {
    /// The manifest file changed (inotify) or SIGHUP.
    Reload,
    Pulled {
        reference: String,
        result: Result<ImageRecord, String>,
    },
    Started {
        id: String,
        gen: u64,
        result: Result<(Started, Prepared, String), String>,
    },
    Exited {
        id: String,
        gen: u64,
        exit: Option<ExitKind>,
    },
    Stopped {
        id: String,
        gen: u64,
        result: Result<(), String>,
    },
    Health {
        id: String,
        gen: u64,
        ok: bool,
        output: String,
    },
    /// The nftables ruleset changed; `lost`: tables of ours someone else deleted (a firewall
    /// reload's `flush ruleset`), to be put back while still wanted.
    Nftables {
        lost: Vec<String>,
    },
    /// The check for firewalls that drop forwarded traffic has a new answer (for status).
    FirewallChecked,
    /// A check of a service's image tag against the registry ([`checks`]) answered.
    ImageChecked {
        service: String,
        result: checks::CheckResult,
    },
    /// A look at the store's filesystem (and maybe an image GC) is done ([`imagegc`]).
    ImageGc {
        result: Result<imagegc::Outcome, String>,
    },
    /// A command from the control socket; the answer goes back on `reply`.
    Control {
        req: super::control::Request,
        reply: tokio::sync::oneshot::Sender<super::control::Reply>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Not started: waiting for dependencies or its image.
    Waiting,
    Pulling,
    Starting,
    Running,
    Backoff,
    Exited,
    Failed,
    Stopping,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterStop {
    /// Remove the replica (scale-down, service removed, definition changed).
    Remove,
    /// It was unhealthy: its exit goes to the restart policy.
    Unhealthy,
    /// A dependency with `depends_on.<dep>.restart: true` was updated: start it again (same
    /// container definition, not counted as a restart) once the dependency is back.
    Restart,
}

struct Replica {
    rec: ReplicaRecord,
    gen: u64,
    phase: Phase,
    after_stop: AfterStop,
    backoff_until: Option<Instant>,
    health: Health,
    health_failures: u32,
    health_started: Option<Instant>,
    tasks: Vec<AbortHandle>,
    message: Option<String>,
    /// Deleting the exited container from the runtime, started at the exit so a restart after
    /// the back-off does not wait for it.
    cleanup: Option<tokio::task::JoinHandle<()>>,
    /// The image digest the bundle on disk was prepared with by this agent (a restart of the
    /// same definition reuses it: only the rootfs mount and the netns are checked).
    prepared_for: Option<String>,
    /// When it became ready (its first passing check, or running without one) since its last
    /// start: a rollout's monitor window counts from here.
    ready_at: Option<Instant>,
    /// When this agent first tried to start it (or adopted it): a rollout's progress deadline.
    since: Instant,
    /// Adopted between its shim's `create` and `start` (the earlier agent died before it heard
    /// the start back), at this moment: its failed checks do not count until the shim says it
    /// started (`<run>/shims/<id>/started`), for at most [`START_UNCONFIRMED_MAX`].
    start_unconfirmed: Option<Instant>,
    /// A new container (not adopted, not started yet): its first start begins a new log
    /// directory, so `skiff logs` never shows an earlier, unrelated container that had the
    /// same id (before `skiff down`, or before its service was replaced). Restarts of the same
    /// container continue its logs.
    fresh_logs: bool,
}

/// How long failed checks of a container adopted mid-start are not counted at most.
const START_UNCONFIRMED_MAX: Duration = Duration::from_secs(60);

impl Replica {
    /// Container `id` in slot `index` of `svc`, running `revision` (0: not resolved yet).
    fn new(id: String, svc: &Service, index: u32, revision: u32) -> Replica {
        Replica {
            rec: ReplicaRecord {
                id,
                service: svc.name.clone(),
                index,
                revision,
                spec: svc.clone(),
                image_digest: String::new(),
                stop_signal: "SIGTERM".into(),
                tracker: RestartTracker::new(svc.restart.clone(), replica::resolve_healthcheck(svc, None).is_some()),
                started_at: None,
                shim: None,
                pid: None,
                stopped: false,
                healthcheck: None,
                address: None,
                healthy: false,
            },
            gen: 0,
            phase: Phase::Waiting,
            after_stop: AfterStop::Remove,
            backoff_until: None,
            health: Health::None,
            health_failures: 0,
            health_started: None,
            tasks: Vec::new(),
            message: None,
            cleanup: None,
            prepared_for: None,
            ready_at: None,
            since: Instant::now(),
            start_unconfirmed: None,
            fresh_logs: true,
        }
    }

    fn abort_tasks(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

struct PullState {
    in_flight: bool,
    next_try: Instant,
    failures: u32,
    error: Option<String>,
}

/// The manifest's revision: a digest of its bytes, of the `.env` next to it and of the other
/// files it reads (each file's path and content, or why it could not be read).
/// A manifest alone (no `.env`, no other file) has the digest of its bytes.
fn manifest_revision(data: &[u8], dotenv: Option<&Path>, files: &[PathBuf]) -> String {
    let mut all = data.to_vec();
    let dotenv = dotenv.filter(|p| std::fs::symlink_metadata(p).is_ok());
    for f in dotenv.into_iter().chain(files.iter().map(PathBuf::as_path)) {
        all.extend_from_slice(b"\0");
        all.extend_from_slice(f.as_os_str().as_encoded_bytes());
        all.extend_from_slice(b"\0");
        match manifest::read_manifest(f, true) {
            Ok(d) => all.extend_from_slice(&d),
            Err(e) => all.extend_from_slice(format!("unreadable: {e}").as_bytes()),
        }
    }
    format!("sha256:{}", hex(&sha256(&all)))
}

pub struct Agent {
    paths: Paths,
    rt: Runtime,
    store: Store,
    client: Option<Arc<Client>>,
    manifest_path: PathBuf,
    manifest: Option<Manifest>,
    revision: Option<String>,
    manifest_error: Option<String>,
    manifest_warnings: Vec<String>,
    /// The other files the manifest read (`include:`, `extends: {file:}`), for the watcher
    /// and the revision.
    manifest_files: watch::Sender<Vec<PathBuf>>,
    replicas: BTreeMap<String, Replica>,
    service_warnings: HashMap<String, Vec<String>>,
    pulls: HashMap<String, PullState>,
    tx: mpsc::UnboundedSender<Event>,
    snapshots: watch::Sender<Snapshot>,
    /// The bridge network, once a bridged replica needed it.
    net: Option<Arc<BridgeNet>>,
    /// The user-defined networks opened so far, by key.
    user_nets: BTreeMap<String, Arc<BridgeNet>>,
    /// A user-defined network may be set up (recorded at start, or one was opened since).
    networks_maybe_up: bool,
    /// `--no-bridge`: never set up the bridge network.
    bridge_disabled: bool,
    /// `--bridge`, `--subnet`: where the manifest's `x-skiff` says nothing.
    network_defaults: NetworkSettings,
    /// The published ports' proxies.
    ports: Ports,
    /// Held while the bridge and its NAT rules are set up or torn down.
    setup_lock: SetupLock,
    /// The bridge may be up (recorded at start, or a bridged replica was started since): when
    /// the last bridged service goes it is torn down.
    bridge_maybe_up: bool,
    /// The log directories are to be checked for replicas gone for good ([`Agent::remove_stale_logs`]).
    logs_gc_due: bool,
    /// Each service's revisions, rollout and overrides (durable: [`super::revisions`]).
    records: BTreeMap<String, ServiceRecord>,
    /// The manifest's revision of each service, once its image is resolved.
    manifest_revs: HashMap<String, u32>,
    /// The earliest moment a rollout wants to look again.
    rollout_wake: Option<Instant>,
    /// Each service's checks of its image tag ([`checks`]).
    checks: HashMap<String, checks::Check>,
    /// When each service's manifest revision was last resolved, and whether every one must be
    /// resolved again at the next pass (a new manifest, a pull, a check, a command).
    resolved_at: HashMap<String, Instant>,
    resolve_all: bool,
    /// The host's problems found at start (`skiff check`'s warnings and errors), for status.
    host_findings: Vec<crate::hostcheck::Finding>,
    /// The image GC on disk pressure ([`imagegc`]).
    image_gc: imagegc::State,
}

impl Agent {
    pub fn new(
        paths: Paths,
        rt: Runtime,
        manifest_path: PathBuf,
        tx: mpsc::UnboundedSender<Event>,
        snapshots: watch::Sender<Snapshot>,
    ) -> Result<Agent> {
        let store = Store::open(&paths.root)?;
        let (records, bad) = revisions::load_all(&paths);
        for b in bad {
            log(&format!("{b}; its service starts a new revision history"));
        }
        Ok(Agent {
            ports: Ports::new(&paths.run, network::any_recorded(&paths)),
            rt,
            store,
            client: None,
            manifest_path,
            manifest: None,
            revision: None,
            manifest_error: None,
            manifest_warnings: Vec::new(),
            manifest_files: watch::channel(Vec::new()).0,
            replicas: BTreeMap::new(),
            service_warnings: HashMap::new(),
            pulls: HashMap::new(),
            tx,
            snapshots,
            net: None,
            user_nets: BTreeMap::new(),
            networks_maybe_up: network::any_recorded(&paths),
            bridge_disabled: false,
            network_defaults: NetworkSettings::default(),
            setup_lock: SetupLock::default(),
            bridge_maybe_up: network::record_path(&paths).exists(),
            logs_gc_due: true,
            records,
            manifest_revs: HashMap::new(),
            rollout_wake: None,
            checks: HashMap::new(),
            resolved_at: HashMap::new(),
            resolve_all: true,
            host_findings: Vec::new(),
            image_gc: imagegc::State::default(),
            paths,
        })
    }

    /// `--bridge`, `--subnet`.
    pub fn set_network_defaults(&mut self, n: NetworkSettings) {
        self.network_defaults = n;
    }

    /// `--no-bridge`: bridge-mode services get loopback only (the host's networking is untouched).
    /// The host's warnings and errors found at start (shown in status).
    pub fn set_host_findings(&mut self, findings: Vec<crate::hostcheck::Finding>) {
        self.host_findings = findings;
    }

    pub fn disable_bridge(&mut self) {
        self.bridge_disabled = true;
    }

    pub fn manifest_loaded(&self) -> bool {
        self.manifest.is_some()
    }

    /// Reads the manifest; a bad one keeps the one in force and shows its error.
    pub fn load_manifest(&mut self) {
        let shown = self.manifest_path.display().to_string();
        // Bounded, and never a FIFO or a device (a read of one would block or never end).
        let data = match manifest::read_manifest(&self.manifest_path, true) {
            Ok(d) => d,
            Err(e) => {
                let hint = match e {
                    manifest::ReadError::NotRegular(_) => {
                        ": the manifest must be a regular file (a link to one is fine)"
                    }
                    _ => "",
                };
                self.manifest_error = Some(format!("{shown}: {e}{hint}"));
                log(&format!("manifest {shown}: {e}; keeping the one in force"));
                return;
            }
        };
        let dotenv = self.manifest_path.parent().map(|d| d.join(".env"));
        let revision = manifest_revision(&data, dotenv.as_deref(), &self.manifest_files.borrow());
        if self.revision.as_deref() == Some(&revision) && self.manifest_error.is_none() {
            return;
        }
        let report = manifest::load_bytes(data.clone(), &self.manifest_path);
        // The revision covers the files this version reads (a new include: is read now).
        let revision = manifest_revision(&data, dotenv.as_deref(), &report.files);
        self.manifest_files.send_replace(report.files.clone());
        for d in &report.diagnostics {
            log(&d.render(&shown));
        }
        match report.manifest {
            Some(m) => {
                self.manifest_warnings = report.diagnostics.iter().map(|d| d.render(&shown)).collect();
                self.manifest = Some(m);
                // What a running image collection must keep, and its marks, may have changed.
                self.protect_manifest_images();
                self.image_gc.soon();
                self.logs_gc_due = true;
                self.revision = Some(revision.clone());
                self.manifest_error = None;
                log(&format!("manifest {shown} in force (revision {})", &revision[7..19]));
            }
            None => {
                let err = report.first_error(&shown).unwrap_or_else(|| format!("{shown}: invalid"));
                match &self.revision {
                    Some(r) => log(&format!("keeping the manifest in force (revision {})", &r[7..19])),
                    None => log("no valid manifest yet: nothing runs until the file is fixed"),
                }
                self.manifest_error = Some(err);
            }
        }
    }

    /// The other files the manifest reads, as they change ([`super::watch::watch_files`]).
    pub fn manifest_files(&self) -> watch::Receiver<Vec<PathBuf>> {
        self.manifest_files.subscribe()
    }

    /// Takes over the replicas an earlier agent left (after an agent restart: running ones are
    /// adopted with their pids; after a reboot: none is running, they start afresh).
    pub async fn adopt(&mut self) {
        let (records, bad) = ReplicaRecord::load_all(&self.paths);
        for (id, why) in bad {
            log(&format!("containers/{id}: {why}; leaving it alone"));
        }
        let now = Instant::now();
        for mut rec in records {
            let id = rec.id.clone();
            let shim_dir = self.paths.shim(&id);
            let shim = proc::read_pid_file(&shim_dir.join("shim.pid"))
                .and_then(|p| proc::start_time(p).map(|t| (p, t)))
                .filter(|(p, t)| rec.shim.is_none_or(|s| s == (*p, *t)) && is_shim(*p, &id));
            let mut r = Replica::new(rec.id.clone(), &rec.spec, rec.index, rec.revision);
            r.rec = rec.clone();
            r.fresh_logs = false;
            if let Some(shim) = shim {
                // Running (or just exiting): adopt it.
                let pid = proc::read_pid_file(&shim_dir.join("init.pid")).or(rec.pid);
                match rec.tracker.state() {
                    RestartState::Running => {
                        rec.tracker.resume(now);
                    }
                    // The earlier agent died between spawning the shim and hearing back.
                    _ => rec.tracker.started(now),
                }
                let mid_start = rec.started_at.is_none();
                if mid_start {
                    // The earlier agent died before it heard the start back: what preparing
                    // found (the image's health check, its stop signal) is beside the bundle.
                    match replica::read_prepared(&self.paths, &id) {
                        Some(p) => {
                            rec.healthcheck = p.healthcheck;
                            rec.stop_signal = p.stop_signal;
                            if p.address.is_some() {
                                rec.address = p.address;
                            }
                        }
                        None => rec.healthcheck = replica::resolve_healthcheck(&rec.spec, None),
                    }
                    rec.tracker.set_has_healthcheck(rec.healthcheck.is_some());
                    rec.started_at = Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
                    save(&self.paths, &rec);
                }
                r.rec = rec;
                r.rec.shim = Some(shim);
                r.rec.pid = pid;
                r.phase = Phase::Running;
                if mid_start && !shim_dir.join(crate::shim::STARTED).exists() {
                    r.start_unconfirmed = Some(now);
                }
                if r.rec.healthcheck.is_none() {
                    r.ready_at = Some(now);
                }
                log(&format!("{id}: adopted (pid {})", pid.map_or("?".into(), |p| p.to_string())));
                self.replicas.insert(id.clone(), r);
                // Checked at once when it was running before; one that was just starting is checked
                // as a fresh start is (its first check after the interval).
                self.watch_running(&id, !mid_start);
                continue;
            }
            match rec.tracker.state() {
                RestartState::Exited => r.phase = Phase::Exited,
                RestartState::GaveUp => r.phase = Phase::Failed,
                RestartState::Backoff => {
                    if let Decision::RestartAt(t) = rec.tracker.resume(now) {
                        r.phase = Phase::Backoff;
                        r.backoff_until = Some(t);
                    }
                }
                RestartState::Running | RestartState::Created => {
                    if let Some(exit) = replica::read_exit(&self.paths, &id) {
                        // It exited while no agent was watching: the restart policy decides.
                        r.rec = rec;
                        self.replicas.insert(id.clone(), r);
                        log(&format!("{id}: exited ({exit}) while the agent was down"));
                        self.on_exit(&id, Some(exit));
                        continue;
                    }
                    // No run state: a reboot (or the shim was killed). Start it afresh (its
                    // runtime state, if any, is cleaned up by the start).
                    rec.tracker.boot_reset();
                    r.phase = Phase::Waiting;
                }
            }
            r.rec = rec;
            r.rec.pid = None;
            r.rec.shim = None;
            self.replicas.insert(id, r);
        }
        // Records of a skiff before revisions: the revision each runs.
        self.adopt_revisions();
        // Addresses whose replica has no record (an agent killed between allocating and
        // recording) go back to the pool.
        let known: Vec<String> = self.replicas.keys().cloned().collect();
        match network::release_orphans(&self.paths, |owner| known.iter().any(|k| k == owner)) {
            Ok(0) => {}
            Ok(n) => log(&format!("released {n} address(es) of replicas that no longer exist")),
            Err(e) => log(&format!("checking the address allocations: {e:#}")),
        }
        // Adopted bridged replicas: their networks, for the hosts files of the next ones, and
        // each network's name server (its bridge is up: they run on it) with their names.
        if !self.bridge_disabled {
            if let Some(m) = self.manifest.clone() {
                let specs: Vec<Service> = self
                    .replicas
                    .values()
                    .filter(|r| r.rec.spec.network_mode == NetworkMode::Bridge && r.rec.address.is_some())
                    .map(|r| r.rec.spec.clone())
                    .collect();
                for spec in specs {
                    match self.networks_of(&m, &spec) {
                        Ok(nets) => nets.iter().for_each(|(net, _)| net.start_dns()),
                        Err(e) => log(&format!("the networks of {}: {e:#}", spec.name)),
                    }
                }
                self.refresh_hosts();
            }
        }
    }

    /// Handles one event, then reconciles.
    pub fn handle(&mut self, ev: Event) {
        if matches!(ev, Event::Reload | Event::Pulled { .. } | Event::ImageChecked { .. } | Event::Control { .. }) {
            self.resolve_all = true;
        }
        match ev {
            Event::Reload => self.load_manifest(),
            Event::Pulled { reference, result } => {
                let p = self.pulls.entry(reference.clone()).or_insert(PullState {
                    in_flight: false,
                    next_try: Instant::now(),
                    failures: 0,
                    error: None,
                });
                p.in_flight = false;
                match result {
                    Ok(rec) => {
                        log(&format!("pulled {} ({})", rec.reference, rec.digest));
                        self.image_gc.soon();
                        p.failures = 0;
                        p.error = None;
                    }
                    Err(e) => {
                        p.failures += 1;
                        let delay =
                            Duration::from_secs(2u64.saturating_pow(p.failures.min(6))).min(Duration::from_secs(60));
                        p.next_try = Instant::now() + delay;
                        let e = text::one_line(&e, text::MESSAGE_MAX);
                        if p.error.as_deref() != Some(e.as_str()) {
                            log(&format!("pulling {reference}: {e} (next try in {}s)", delay.as_secs()));
                        } else if p.failures.is_power_of_two() {
                            // The same error again: one short line at the 2nd, 4th, 8th... failure.
                            log(&format!(
                                "pulling {reference}: failed again, same error ({} attempts; next try in {}s)",
                                p.failures,
                                delay.as_secs()
                            ));
                        }
                        p.error = Some(e);
                    }
                }
            }
            Event::Started { id, gen, result } => self.on_started(&id, gen, result),
            Event::Exited { id, gen, exit } => {
                if self.replicas.get(&id).is_some_and(|r| r.gen == gen && r.phase == Phase::Running) {
                    self.on_exit(&id, exit);
                }
            }
            Event::Stopped { id, gen, result } => self.on_stopped(&id, gen, result),
            Event::Health { id, gen, ok, output } => self.on_health(&id, gen, ok, output),
            Event::Nftables { lost } => {
                self.on_tables_lost(&lost);
                self.check_firewall();
            }
            Event::FirewallChecked => {}
            Event::ImageChecked { service, result } => self.on_checked(&service, result),
            Event::ImageGc { result } => self.on_image_gc(result),
            Event::Control { req, reply } => {
                let _ = reply.send(self.on_control(req));
            }
        }
        self.reconcile();
    }

    fn on_started(&mut self, id: &str, gen: u64, result: Result<(Started, Prepared, String), String>) {
        let Some(r) = self.replicas.get_mut(id) else { return };
        if r.gen != gen || r.phase != Phase::Starting {
            return;
        }
        let now = Instant::now();
        match result {
            Ok((started, prepared, digest)) => {
                let Prepared { stop_signal, warnings, healthcheck, address } = prepared;
                if address.is_some() {
                    r.rec.address = address;
                }
                r.rec.tracker.set_has_healthcheck(healthcheck.is_some());
                r.rec.healthcheck = healthcheck;
                r.rec.tracker.started(now);
                r.rec.pid = Some(started.pid);
                r.rec.shim = Some(started.shim);
                r.rec.stop_signal = stop_signal;
                r.prepared_for = Some(digest.clone());
                r.rec.image_digest = digest;
                r.rec.started_at = Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
                r.phase = Phase::Running;
                r.message = None;
                r.ready_at = r.rec.healthcheck.is_none().then_some(now);
                for w in &warnings {
                    log(&format!("{id}: warning: {w}"));
                }
                self.service_warnings.insert(r.rec.service.clone(), warnings);
                log(&format!("{id}: running (pid {})", started.pid));
                save(&self.paths, &r.rec);
                self.watch_running(id, false);
                self.refresh_hosts();
            }
            Err(e) => {
                log(&format!("{id}: start failed: {e}"));
                r.rec.tracker.started(now);
                r.message = Some(e);
                let d = r.rec.tracker.exited(now, ExitKind::Code(127), false);
                Self::apply_decision(r, d, true);
                save(&self.paths, &r.rec);
                self.rollout_failure(id, None, "it failed to start");
            }
        }
    }

    fn apply_decision(r: &mut Replica, d: Decision, start_failed: bool) {
        r.ready_at = None;
        r.rec.healthy = false;
        r.rec.pid = None;
        r.rec.shim = None;
        r.rec.started_at = None;
        r.health = Health::None;
        match d {
            Decision::RestartAt(t) => {
                r.phase = Phase::Backoff;
                r.backoff_until = Some(t);
            }
            Decision::GiveUp(reason) => {
                r.phase = Phase::Failed;
                r.message = Some(match &r.message {
                    Some(m) => format!("{reason}: {m}"),
                    None => reason.to_string(),
                });
            }
            Decision::DoNothing => r.phase = if start_failed { Phase::Failed } else { Phase::Exited },
        }
    }

    fn on_exit(&mut self, id: &str, exit: Option<ExitKind>) {
        let Some(r) = self.replicas.get_mut(id) else { return };
        r.abort_tasks();
        r.gen += 1;
        let exit = exit.unwrap_or_else(|| {
            r.message = Some("exit status unknown (its shim was killed)".into());
            ExitKind::Code(255)
        });
        log(&format!("{id}: exited ({exit})"));
        let (rt, idc) = (self.rt.clone(), id.to_string());
        r.cleanup = Some(tokio::spawn(async move {
            if let Err(e) = rt.delete(&idc, true).await {
                log(&format!("{idc}: {e:#}"));
            }
        }));
        let ready = r.ready_at;
        let d = r.rec.tracker.exited(Instant::now(), exit, false);
        Self::apply_decision(r, d, false);
        if let Decision::RestartAt(t) = d {
            log(&format!("{id}: restarting in {:.1}s", t.saturating_duration_since(Instant::now()).as_secs_f64()));
        }
        save(&self.paths, &r.rec);
        if exit == ExitKind::Code(0) && d == Decision::DoNothing {
            // Done (a one-shot task): that is its success.
            r.ready_at = Some(Instant::now());
        } else {
            self.rollout_failure(id, ready, &format!("it exited ({exit})"));
        }
    }

    fn on_stopped(&mut self, id: &str, gen: u64, result: Result<(), String>) {
        let Some(r) = self.replicas.get_mut(id) else { return };
        if r.gen != gen || r.phase != Phase::Stopping {
            return;
        }
        if let Err(e) = &result {
            log(&format!("{id}: stopping: {e}"));
        }
        match r.after_stop {
            AfterStop::Remove => {
                if result.is_ok() {
                    log(&format!("{id}: removed"));
                    self.logs_gc_due = true;
                    self.replicas.remove(id);
                    self.refresh_hosts();
                } else {
                    // Try again at the next reconcile.
                    r.phase = Phase::Exited;
                    r.message = result.err();
                }
            }
            AfterStop::Unhealthy => {
                r.gen += 1;
                let exit = replica::read_exit(&self.paths, id).unwrap_or(ExitKind::Signal(libc::SIGKILL));
                let d = r.rec.tracker.exited(Instant::now(), exit, false);
                Self::apply_decision(r, d, false);
                r.message = Some("replaced: it was unhealthy".into());
                save(&self.paths, &r.rec);
            }
            AfterStop::Restart => {
                r.gen += 1;
                r.rec.tracker.boot_reset();
                r.rec.pid = None;
                r.rec.shim = None;
                r.rec.started_at = None;
                r.health = Health::None;
                r.phase = Phase::Waiting;
                r.message = Some("restarting: a dependency was updated".into());
                save(&self.paths, &r.rec);
            }
        }
    }

    fn on_health(&mut self, id: &str, gen: u64, ok: bool, output: String) {
        let Some(r) = self.replicas.get_mut(id) else { return };
        if r.gen != gen || r.phase != Phase::Running {
            return;
        }
        let Some(hc) = r.rec.healthcheck.clone() else { return };
        let now = Instant::now();
        if ok {
            if r.health != Health::Healthy {
                log(&format!("{id}: healthy"));
            }
            r.health = Health::Healthy;
            r.health_failures = 0;
            r.start_unconfirmed = None;
            r.rec.tracker.became_healthy(now);
            r.ready_at.get_or_insert(now);
            if !r.rec.healthy {
                r.rec.healthy = true;
                save(&self.paths, &r.rec);
            }
            return;
        }
        if let Some(t) = r.start_unconfirmed {
            // Not counted: the shim has not started it yet; or it just did (or a minute went
            // by), and its checks count from the next one on, as after a fresh start.
            if self.paths.shim(id).join(crate::shim::STARTED).exists() || now.duration_since(t) > START_UNCONFIRMED_MAX
            {
                r.start_unconfirmed = None;
                r.health_started = Some(now);
            }
            r.message = Some(format!("waiting for its start (adopted while starting): {}", output.trim()));
            return;
        }
        let in_start_period = r.health_started.is_some_and(|s| now.duration_since(s) < hc.start_period);
        if in_start_period && r.health != Health::Healthy {
            r.message = Some(format!("health check failed (start period): {}", output.trim()));
            return;
        }
        r.health_failures += 1;
        r.message = Some(format!("health check failed ({}/{}): {}", r.health_failures, hc.retries, output.trim()));
        if r.health_failures >= hc.retries.max(1) {
            log(&format!("{id}: unhealthy after {} failed checks; replacing it", r.health_failures));
            r.health = Health::Unhealthy;
            r.rec.healthy = false;
            r.rec.tracker.unhealthy(now);
            let ready = r.ready_at;
            self.begin_stop(id, AfterStop::Unhealthy);
            self.rollout_failure(id, ready, "it turned unhealthy");
        }
    }

    /// Spawns the exit watcher and the health checks of a running replica. An adopted one is
    /// checked at once (its health was known to the agent before; its published ports wait for
    /// the first check), a started one after the first interval.
    fn watch_running(&mut self, id: &str, adopted: bool) {
        let Some(r) = self.replicas.get_mut(id) else { return };
        r.gen += 1;
        let gen = r.gen;
        let tx = self.tx.clone();
        let paths = self.paths.clone();
        let rt = self.rt.clone();
        let idc = id.to_string();
        let shim = r.rec.shim;
        let pid = r.rec.pid;
        let watcher = tokio::spawn(async move {
            let exit = match shim {
                Some(s) => replica::wait(&paths, &idc, s).await,
                None => {
                    if let Some(p) = pid {
                        proc::wait_exit(p).await;
                    }
                    replica::read_exit(&paths, &idc)
                }
            };
            let _ = rt; // the runtime state is cleaned up by the next start or the stop
            let _ = tx.send(Event::Exited { id: idc, gen, exit });
        });
        r.tasks.push(watcher.abort_handle());
        if let Some(hc) = r.rec.healthcheck.clone() {
            // Adopted and healthy when the earlier agent last looked: still a backend of its
            // ports until the first check (at once) says otherwise, so that an agent restart
            // drops no connection.
            if adopted && r.rec.healthy {
                r.health = Health::Healthy;
                r.ready_at.get_or_insert(Instant::now());
            } else {
                r.health = Health::Starting;
                r.rec.healthy = false;
            }
            r.health_failures = 0;
            r.health_started = Some(Instant::now());
            let task = tokio::spawn(health::run(self.rt.clone(), id.to_string(), gen, hc, adopted, self.tx.clone()));
            r.tasks.push(task.abort_handle());
        } else {
            r.health = Health::None;
        }
    }

    fn begin_stop(&mut self, id: &str, after: AfterStop) {
        let Some(r) = self.replicas.get_mut(id) else { return };
        if r.phase == Phase::Stopping {
            return;
        }
        r.abort_tasks();
        r.gen += 1;
        let gen = r.gen;
        if after == AfterStop::Remove {
            r.rec.tracker.stop();
        }
        r.phase = Phase::Stopping;
        r.after_stop = after;
        let (paths, rt, tx) = (self.paths.clone(), self.rt.clone(), self.tx.clone());
        let barrier = self.ports.dnat_barrier();
        let idc = id.to_string();
        let signal = r.rec.stop_signal.clone();
        let grace = r.rec.spec.stop_timeout();
        let shim = r.rec.shim;
        log(&format!("{id}: stopping ({signal}, grace {}s)", grace.as_secs_f64()));
        let task = tokio::spawn(async move {
            // Polled after this pass of the loop has taken the replica out of the published
            // ports' backends: the kernel's DNAT rules without it go in before the signal.
            barrier.wait(Duration::from_secs(2)).await;
            let mut result = replica::stop(&paths, &rt, &idc, &signal, grace, shim).await.map(|_| ());
            if result.is_ok() && after == AfterStop::Remove {
                let p = paths.clone();
                let i = idc.clone();
                result = tokio::task::spawn_blocking(move || replica::remove(&p, &i))
                    .await
                    .map_err(|e| anyhow!("{e}"))
                    .and_then(|r| r);
            }
            let _ = tx.send(Event::Stopped { id: idc, gen, result: result.map_err(|e| format!("{e:#}")) });
        });
        r.tasks.push(task.abort_handle());
    }

    /// Desired against actual; starts, stops and replaces; then publishes the status.
    pub fn reconcile(&mut self) {
        let now = Instant::now();
        self.maybe_collect_images(now);
        let Some(m) = self.manifest.clone() else {
            self.publish();
            return;
        };
        // The replicas of services gone from the manifest go.
        let gone: Vec<String> = self
            .replicas
            .iter()
            .filter(|(_, r)| !m.services.contains_key(&r.rec.service))
            .filter(|(_, r)| r.phase != Phase::Stopping || r.after_stop != AfterStop::Remove)
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.begin_stop(&id, AfterStop::Remove);
        }
        self.forget_removed_services(&m);
        self.learn_adopted_pids();
        // Each service towards its revision in force (rollouts.rs), dependencies first; a
        // completed update restarts the services that depend on it with `restart: true`.
        self.rollout_wake = None;
        let services: Vec<Service> = m.services.values().cloned().collect();
        self.poll_images(&services, now);
        let mut updated: Vec<String> = Vec::new();
        for name in m.start_order() {
            let svc = &m.services[name];
            if self.converge(&m, svc, now) {
                updated.push(name.to_string());
            }
        }
        self.resolve_all = false;
        if !updated.is_empty() {
            self.restart_dependents(&m, &updated);
        }
        if std::mem::take(&mut self.logs_gc_due) {
            self.remove_stale_logs(&m);
        }
        self.teardown_bridge_if_unused(&m);
        self.sync_ports(&m);
        self.publish();
    }

    /// A replica adopted before its shim's `create` wrote the init pid (the earlier agent died
    /// while starting it) learns its pid once the shim has it.
    fn learn_adopted_pids(&mut self) {
        for r in self.replicas.values_mut().filter(|r| r.phase == Phase::Running && r.rec.pid.is_none()) {
            if let Some(p) = proc::read_pid_file(&self.paths.shim(&r.rec.id).join("init.pid")) {
                r.rec.pid = Some(p);
                save(&self.paths, &r.rec);
            }
        }
    }

    /// `depends_on.<dep>.restart: true`: a completed update of dep restarts the dependents
    /// (compose), once.
    fn restart_dependents(&mut self, m: &Manifest, updated: &[String]) {
        let restart: Vec<String> = self
            .replicas
            .iter()
            .filter(|(_, r)| matches!(r.phase, Phase::Running | Phase::Starting))
            .filter(|(_, r)| {
                m.services
                    .get(&r.rec.service)
                    .is_some_and(|s| s.depends_on.iter().any(|(dep, d)| d.restart && updated.contains(dep)))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in restart {
            log(&format!("{id}: a service it depends on (restart: true) was updated; restarting it"));
            self.begin_stop(&id, AfterStop::Restart);
        }
    }

    /// Removes the log directories (`<root>/logs/<id>/`) of replicas gone for good: no replica
    /// of that id exists (a stopped, exited or failed one keeps its logs for `skiff logs`) and
    /// the manifest in force does not want one (its service was removed, or scaled below its
    /// index). A replaced replica keeps its directory until the next container of that id
    /// starts, which begins it anew (`Replica::fresh_logs`). Checked when a manifest comes into
    /// force and when a replica is removed (and at start), with the manifest in force only: an
    /// agent without a valid manifest removes nothing.
    fn remove_stale_logs(&self, m: &Manifest) {
        let dir = self.paths.logs_dir();
        let Ok(rd) = std::fs::read_dir(&dir) else { return };
        for e in rd.flatten() {
            let Some(id) = e.file_name().to_str().map(str::to_owned) else { continue };
            if self.replicas.contains_key(&id) || log_dir_wanted(&id, m) || !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            match std::fs::remove_dir_all(e.path()) {
                Ok(()) => log(&format!("{id}: removed its logs (the replica is gone from the manifest)")),
                Err(err) => log(&format!("{id}: removing its logs {}: {err}", e.path().display())),
            }
        }
    }

    /// Whether `svc`'s dependencies meet their conditions; else what it waits for.
    fn dependencies_met(&self, m: &Manifest, svc: &Service) -> Result<(), String> {
        for (dep, d) in &svc.depends_on {
            let Some(ds) = m.services.get(dep) else {
                if d.required {
                    return Err(format!("waiting for {dep}, which the manifest does not define"));
                }
                continue;
            };
            // Every slot has a container that meets the condition (during a start-first update,
            // either of its two).
            let want = self.replicas_wanted(ds);
            let reps: Vec<&Replica> = self
                .replicas
                .values()
                .filter(|r| r.rec.service == *dep && r.phase != Phase::Stopping && r.rec.index <= want)
                .collect();
            let all = |f: &dyn Fn(&Replica) -> bool| (1..=want).all(|n| reps.iter().any(|r| r.rec.index == n && f(r)));
            let met = match d.condition {
                DependsCondition::ServiceStarted => all(&|r| r.phase == Phase::Running),
                DependsCondition::ServiceHealthy => {
                    all(&|r| r.phase == Phase::Running && (r.health == Health::Healthy || r.rec.healthcheck.is_none()))
                }
                DependsCondition::ServiceCompletedSuccessfully => all(&|r| {
                    r.phase == Phase::Exited
                        && r.rec.tracker.status(Instant::now()).last_exit == Some(ExitKind::Code(0))
                }),
            };
            if !met {
                let what = match d.condition {
                    DependsCondition::ServiceStarted => "to start",
                    DependsCondition::ServiceHealthy => "to be healthy",
                    DependsCondition::ServiceCompletedSuccessfully => "to complete successfully",
                };
                return Err(format!("waiting for {dep} {what}"));
            }
        }
        Ok(())
    }

    /// Starts replica `id` with its own definition and its revision's image (a service whose
    /// revision is not resolved yet: the manifest's image, pulled if missing).
    fn try_start(&mut self, m: &Manifest, id: &str) {
        let Some(r) = self.replicas.get(id) else { return };
        let svc = &r.rec.spec.clone();
        let revision_image = self.records.get(&svc.name).and_then(|s| s.get(r.rec.revision)).map(|v| v.image.clone());
        if svc.pull_policy == PullPolicy::Always {
            self.check_now(svc, true);
        }
        if let Err(why) = self.dependencies_met(m, svc) {
            if let Some(r) = self.replicas.get_mut(id) {
                if r.phase != Phase::Backoff {
                    r.phase = Phase::Waiting;
                }
                r.message = Some(why);
            }
            return;
        }
        let image = match revision_image.map_or_else(|| self.image_for(svc), |i| Ok(Some(i))) {
            Ok(Some(img)) => img,
            Ok(None) => {
                let err = self.pulls.get(&canonical(&svc.image)).and_then(|p| p.error.clone());
                if let Some(r) = self.replicas.get_mut(id) {
                    if r.phase != Phase::Backoff {
                        r.phase = Phase::Pulling;
                    }
                    r.message = Some(match err {
                        Some(e) => format!("pulling {}: {e}", svc.image),
                        None => format!("pulling {}", svc.image),
                    });
                }
                return;
            }
            Err(e) => {
                if let Some(r) = self.replicas.get_mut(id) {
                    r.phase = Phase::Failed;
                    r.message = Some(e);
                }
                return;
            }
        };
        let nets = match svc.network_mode {
            NetworkMode::Bridge if !self.bridge_disabled => match self.networks_of(m, svc) {
                Ok(n) => n,
                Err(e) => {
                    if let Some(r) = self.replicas.get_mut(id) {
                        r.phase = Phase::Failed;
                        r.message = Some(format!("{e:#}"));
                    }
                    return;
                }
            },
            _ => Vec::new(),
        };
        let Some(r) = self.replicas.get_mut(id) else { return };
        r.gen += 1;
        let gen = r.gen;
        r.phase = Phase::Starting;
        r.message = None;
        r.rec.image_digest = image.digest.to_string();
        save(&self.paths, &r.rec);
        let (paths, rt, store, tx) = (self.paths.clone(), self.rt.clone(), self.store.clone(), self.tx.clone());
        let svc = svc.clone();
        let idc = id.to_string();
        let cleanup = r.cleanup.take();
        let fresh_logs = std::mem::replace(&mut r.fresh_logs, false);
        let digest = image.digest.to_string();
        // A restart of the same definition and image reuses the bundle on disk.
        let reuse = (r.prepared_for.as_deref() == Some(digest.as_str())
            && paths.container(id).join("config.json").is_file())
        .then(|| Prepared {
            stop_signal: r.rec.stop_signal.clone(),
            warnings: self.service_warnings.get(&r.rec.service).cloned().unwrap_or_default(),
            healthcheck: r.rec.healthcheck.clone(),
            address: None,
        });
        let task = tokio::spawn(async move {
            let result = async {
                // A stopped container of an earlier run of this replica goes first: its delete
                // started at the exit; without one (first start, agent restart) ask the runtime.
                match cleanup {
                    Some(h) => {
                        let _ = h.await;
                    }
                    None => {
                        if rt.state(&idc).await?.is_some() {
                            rt.delete(&idc, true).await?;
                        }
                    }
                }
                // Bridged: address, veth and name files first (prepare mounts the files).
                let address = connect(&paths, &svc, &idc, &nets).await?;
                let (p, s, i, sv, bridged) = (paths.clone(), store.clone(), idc.clone(), svc.clone(), !nets.is_empty());
                let mut prepared = tokio::task::spawn_blocking(move || match reuse {
                    Some(kept) => replica::remount(&p, &s, &image, &sv, &i).map(|_| kept),
                    None => replica::prepare(&p, &s, &image, &sv, &i, bridged),
                })
                .await
                .map_err(|e| anyhow!("{e}"))??;
                prepared.address = address;
                replica::save_prepared(&paths, &idc, &prepared)?;
                if fresh_logs {
                    replica::remove_logs(&paths, &idc)?;
                }
                let started = replica::start(&paths, &rt, &svc, &idc).await?;
                Ok::<_, anyhow::Error>((started, prepared, digest))
            }
            .await
            .map_err(|e| format!("{e:#}"));
            let _ = tx.send(Event::Started { id: idc, gen, result });
        });
        r.tasks.push(task.abort_handle());
    }

    /// When the loop must look again without an event: the next back-off or pull retry due,
    /// at most 5 s away (the status endpoint's liveness check wants a recent tick).
    pub fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let mut t = now + Duration::from_secs(5);
        for r in self.replicas.values() {
            if r.phase == Phase::Backoff {
                if let Some(u) = r.backoff_until {
                    t = t.min(u);
                }
            }
        }
        for p in self.pulls.values() {
            if !p.in_flight && p.error.is_some() {
                t = t.min(p.next_try);
            }
        }
        if let Some(retry) = self.ports.next_retry() {
            t = t.min(retry);
        }
        if let Some(w) = self.rollout_wake {
            t = t.min(w);
        }
        for c in self.checks.values() {
            if let Some(n) = c.next {
                t = t.min(n);
            }
        }
        if let Some(n) = self.image_gc.next_wake() {
            t = t.min(n);
        }
        t.max(now + Duration::from_millis(10))
    }
}

/// Whether a replica made from `a` is what `b` asks for: everything but the replica count
/// (scaling never replaces the replicas that stay), how changes roll out and when the image is
/// checked.
pub fn same_definition(a: &Service, b: &Service) -> bool {
    Service { replicas: b.replicas, rollout: b.rollout.clone(), pull_policy: b.pull_policy, ..a.clone() } == *b
}

fn save(paths: &Paths, rec: &ReplicaRecord) {
    if let Err(e) = rec.save(paths) {
        log(&format!("{}: saving its record: {e:#}", rec.id));
    }
}

/// Whether `pid` is the `skiff shim` of replica `id` (a recycled pid is not).
fn is_shim(pid: i32, id: &str) -> bool {
    let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
    args.iter().any(|a| *a == b"shim") && args.windows(2).any(|w| w[0] == b"--id" && w[1] == id.as_bytes())
}

fn canonical(image: &str) -> String {
    Reference::parse(image).map(|r| r.to_string()).unwrap_or_else(|_| image.to_string())
}

fn sha256(data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(data).to_vec()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One line on stderr: escaped and bounded, whatever it quotes; with the time in front
/// ([`stamp`]) unless journald takes it (it stamps each line itself).
pub fn log(msg: &str) {
    eprintln!("{}skiff agent: {}", stamp(), text::one_line(msg, text::MESSAGE_MAX));
}

/// `2026-01-02T03:04:05.678Z ` (RFC 3339, UTC, milliseconds), or nothing when stderr is the
/// journal.
pub fn stamp() -> String {
    if under_journald() {
        String::new()
    } else {
        format!("{} ", humantime::format_rfc3339_millis(std::time::SystemTime::now()))
    }
}

/// Whether stderr is journald's stream: systemd sets `JOURNAL_STREAM=DEV:INODE` of the stream
/// it connects; a variable inherited by a process whose stderr was redirected elsewhere does
/// not match (systemd's own rule for it).
fn under_journald() -> bool {
    static UNDER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *UNDER.get_or_init(|| {
        use std::os::unix::fs::MetadataExt;
        let Some(v) = std::env::var_os("JOURNAL_STREAM") else { return false };
        let Some((dev, ino)) = v.to_str().and_then(|v| v.split_once(':')) else { return false };
        let Ok(st) = std::fs::metadata("/proc/self/fd/2") else { return false };
        dev.parse::<u64>().ok() == Some(st.dev()) && ino.parse::<u64>().ok() == Some(st.ino())
    })
}

/// Whether the manifest wants a replica `id` (`SERVICE-N`, N in 1..=replicas).
fn log_dir_wanted(id: &str, m: &Manifest) -> bool {
    let slot = id.strip_suffix(".b").unwrap_or(id);
    let Some((service, n)) = slot.rsplit_once('-') else { return false };
    let Some(n) = n.parse::<u32>().ok().filter(|n| *n >= 1) else { return false };
    m.services.get(service).is_some_and(|s| n <= s.replicas && rollouts::slot_ids(service, n).iter().any(|x| x == id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_log_directories_the_manifest_still_wants() {
        let m = manifest::parse_str(
            "services:\n  web:\n    image: busybox\n    deploy: {replicas: 2}\n  web-api:\n    image: busybox\n",
            std::path::Path::new("/"),
        )
        .manifest
        .expect("valid");
        for id in ["web-1", "web-2", "web-api-1"] {
            assert!(log_dir_wanted(id, &m), "{id}");
        }
        for id in ["web-3", "web-0", "web-01", "web", "web-api-2", "db-1", "web-x", "web-+1", "-1", ""] {
            assert!(!log_dir_wanted(id, &m), "{id}");
        }
    }

    fn svc(src: &str) -> Service {
        let r = manifest::parse_str(src, std::path::Path::new("/"));
        r.manifest.expect("valid").services["web"].clone()
    }

    #[test]
    fn scaling_is_not_a_new_definition() {
        let a = svc("services:\n  web:\n    image: busybox\n    deploy: {replicas: 2}\n");
        let b = svc("services:\n  web:\n    image: busybox\n    deploy: {replicas: 5}\n");
        let c = svc("services:\n  web:\n    image: busybox\n    deploy: {replicas: 2}\n    command: [\"true\"]\n");
        assert!(same_definition(&a, &b));
        assert!(!same_definition(&a, &c));
        assert!(!same_definition(&b, &c));
    }

    #[test]
    fn health_checks_as_written() {
        use skiff_images::bundle::ImageHealthcheck;
        let image = ImageHealthcheck {
            test: vec!["CMD-SHELL".into(), "test -e /ready".into()],
            interval: Duration::from_secs(5),
            ..Default::default()
        };
        let s = svc("services:\n  web:\n    image: busybox\n    healthcheck:\n      test: \"wget -q localhost\"\n");
        let hc = replica::resolve_healthcheck(&s, Some(&image)).expect("a check");
        assert_eq!(hc.args, ["/bin/sh", "-c", "wget -q localhost"], "the service's test wins");
        let s = svc("services:\n  web:\n    image: busybox\n    healthcheck:\n      test: [\"NONE\"]\n");
        assert!(replica::resolve_healthcheck(&s, Some(&image)).is_none(), "NONE turns off the image's too");
        let s = svc("services:\n  web:\n    image: busybox\n");
        assert!(replica::resolve_healthcheck(&s, None).is_none());
        let hc = replica::resolve_healthcheck(&s, Some(&image)).expect("the image's");
        assert_eq!(hc.args, ["/bin/sh", "-c", "test -e /ready"]);
        assert_eq!((hc.interval, hc.timeout, hc.retries), (Duration::from_secs(5), Duration::from_secs(30), 3));
        let s = svc("services:\n  web:\n    image: busybox\n    healthcheck:\n      interval: 2s\n");
        let hc = replica::resolve_healthcheck(&s, Some(&image)).expect("the image's test, the service's timings");
        assert_eq!((hc.args[2].as_str(), hc.interval), ("test -e /ready", Duration::from_secs(2)));
        let none = ImageHealthcheck { test: vec!["NONE".into()], ..Default::default() };
        assert!(replica::resolve_healthcheck(&svc("services:\n  web:\n    image: busybox\n"), Some(&none)).is_none());
        // start_interval: only with a start period; compose's default 5s.
        assert_eq!(hc.start_interval, Duration::ZERO, "no start period, no start interval");
        let s = svc("services:\n  web:\n    image: busybox\n    healthcheck:\n      start_period: 1m\n");
        let hc = replica::resolve_healthcheck(&s, Some(&image)).expect("a check");
        assert_eq!(hc.start_interval, Duration::from_secs(5));
        let s = svc("services:\n  web:\n    image: busybox\n    healthcheck:\n      start_period: 1m\n      start_interval: 250ms\n");
        let hc = replica::resolve_healthcheck(&s, Some(&image)).expect("a check");
        assert_eq!((hc.start_period, hc.start_interval), (Duration::from_secs(60), Duration::from_millis(250)));
        let timed = ImageHealthcheck {
            start_period: Duration::from_secs(10),
            start_interval: Duration::from_secs(1),
            ..image.clone()
        };
        let hc = replica::resolve_healthcheck(&svc("services:\n  web:\n    image: busybox\n"), Some(&timed)).unwrap();
        assert_eq!(hc.start_interval, Duration::from_secs(1), "the image's StartInterval");
    }
}
