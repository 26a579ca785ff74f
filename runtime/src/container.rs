//! The runtime's side of each lifecycle step: create (clone the init, place it in its
//! cgroup, map ids, run runtime hooks, save state), start, kill, delete, exec, and
//! the foreground wait of `run` and `exec`.

use std::fs;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxIdMapping, LinuxNamespaceType, Process, Spec};

use crate::cgroups::{cgroup_path, Cgroup};
use crate::error::{Context, Error, Result};
use crate::init::{InitCtx, Join, StartGate};
use crate::state::{self, HookKind, Saved, Status, START_SOCK};
use crate::sync::{self, Chan, Msg};

pub struct CreateOpts {
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    pub preserve_fds: i32,
    /// `--systemd-cgroup`: the cgroup is a systemd scope (see [`crate::systemd`]).
    pub systemd_cgroup: bool,
}

#[derive(PartialEq, Eq, Clone, Copy)]
pub enum Mode {
    /// `create`: the init waits for `start` on a socket in the state dir.
    Create,
    /// `run`: we start it ourselves over the sync channel; `detach`: `run --detach`.
    Run { detach: bool },
}

pub struct Created {
    pub saved: Saved,
    chan: Chan,
    /// Foreground `run` with a terminal and no console socket: the pty to relay.
    pub console_master: Option<OwnedFd>,
}

/// Undoes a half-done create: kills what we forked, removes the cgroup and the state dir.
struct Undo {
    dir: Option<PathBuf>,
    cgroup: Option<Cgroup>,
    /// The systemd scope started for the container (`--systemd-cgroup`), stopped on undo.
    scope: Option<crate::systemd::Scope>,
    pids: Vec<i32>,
    /// The container has its own pid namespace: killing its init took every process of
    /// it, so the cgroup is removed only when empty (whatever else is in it is not ours).
    own_pidns: bool,
    /// The rootfs of a container without a mount namespace: what it mounted there went
    /// into the host's mount table.
    host_mounts: Option<PathBuf>,
}

impl Drop for Undo {
    fn drop(&mut self) {
        for &p in &self.pids {
            let _ = nix::sys::signal::kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        for &p in &self.pids {
            let _ = waitpid(Pid::from_raw(p), None);
        }
        if let (Some(scope), Some(cg)) = (self.scope.take(), &self.cgroup) {
            if cg.pids().is_ok_and(|p| p.is_empty()) {
                if let Err(e) = cg.unified_dir().map_or(Ok(()), |d| scope.stop(&d)) {
                    crate::debug!("{e}");
                }
            }
        }
        if let Some(cg) = self.cgroup.take() {
            if self.own_pidns {
                let _ = cg.remove_if_empty();
            } else {
                let _ = cg.remove();
            }
        }
        if let Some(r) = self.host_mounts.take() {
            crate::init::unmount_under(&r);
        }
        if let Some(d) = self.dir.take() {
            let _ = fs::remove_dir_all(d);
        }
    }
}

impl Undo {
    fn disarm(mut self) {
        self.dir = None;
        self.cgroup = None;
        self.scope = None;
        self.pids.clear();
        self.host_mounts = None;
    }
}

fn ns_flag(t: LinuxNamespaceType) -> Result<CloneFlags> {
    Ok(match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => {
            return Err(Error::msg("the time namespace is not supported yet: remove it from linux.namespaces"))
        }
    })
}

/// Duplicates `fd` to a number >= `min` (close-on-exec) so it cannot collide with the
/// fds the caller asked us to pass through (--preserve-fds).
fn lift(fd: OwnedFd, min: RawFd) -> Result<OwnedFd> {
    if fd.as_raw_fd() >= min {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on an fd we own returns a new fd we then own.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    if n < 0 {
        return Err(Error::Io { what: "dup an internal fd".into(), source: std::io::Error::last_os_error() });
    }
    // SAFETY: n is a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// With a terminal: the socket the init sends its pty master on (given by the caller
/// with `--console-socket`, or one end of a pair whose other end, returned second, we
/// keep to relay the pty ourselves). Without a terminal: nothing.
fn terminal_fds(socket: Option<&Path>, terminal: bool, min_fd: RawFd) -> Result<(Option<OwnedFd>, Option<OwnedFd>)> {
    if !terminal {
        return Ok((None, None));
    }
    match socket {
        Some(p) => {
            let s = UnixStream::connect(p).ctx(|| format!("connect to console socket {}", p.display()))?;
            Ok((Some(lift(OwnedFd::from(s), min_fd)?), None))
        }
        None => {
            let (a, b) = UnixStream::pair().ctx(|| "socketpair for the terminal")?;
            Ok((Some(lift(OwnedFd::from(a), min_fd)?), Some(OwnedFd::from(b))))
        }
    }
}

/// fork(2)-like clone with namespace flags, straight into the cgroup2 directory
/// `cgroup` when given (`clone3` + `CLONE_INTO_CGROUP`). Returns 0 in the child, and
/// whether the cgroup2 placement happened (false: the child must enter by itself).
fn clone_process(flags: CloneFlags, cgroup: Option<&OwnedFd>) -> Result<(i32, bool)> {
    if let Some(cg) = cgroup {
        #[repr(C)]
        struct CloneArgs {
            flags: u64,
            pidfd: u64,
            child_tid: u64,
            parent_tid: u64,
            exit_signal: u64,
            stack: u64,
            stack_size: u64,
            tls: u64,
            set_tid: u64,
            set_tid_size: u64,
            cgroup: u64,
        }
        const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
        let args = CloneArgs {
            flags: flags.bits() as u64 | CLONE_INTO_CGROUP,
            pidfd: 0,
            child_tid: 0,
            parent_tid: 0,
            exit_signal: libc::SIGCHLD as u64,
            stack: 0,
            stack_size: 0,
            tls: 0,
            set_tid: 0,
            set_tid_size: 0,
            cgroup: cg.as_raw_fd() as u64,
        };
        // SAFETY: clone3 with a null stack and no CLONE_VM behaves like fork: the child
        // gets a copy of this single-threaded process. `args` outlives the call.
        let pid =
            unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) };
        if pid >= 0 {
            return Ok((pid as i32, true));
        }
        let e = std::io::Error::last_os_error();
        // Older kernels (no clone3 or no CLONE_INTO_CGROUP): the child enters itself.
        if !matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::E2BIG | libc::EINVAL)) {
            return Err(Error::Io {
                what: format!("clone into the container's cgroup with namespaces {flags:?}"),
                source: e,
            });
        }
    }
    // SAFETY: without CLONE_VM and with a null stack, clone behaves like fork: the
    // child gets a copy of this single-threaded process.
    let pid = unsafe {
        libc::syscall(libc::SYS_clone, (flags.bits() | libc::SIGCHLD) as libc::c_ulong, 0usize, 0usize, 0usize, 0usize)
    };
    if pid < 0 {
        let e = std::io::Error::last_os_error();
        return Err(Error::Io { what: format!("clone with namespaces {flags:?}"), source: e });
    }
    Ok((pid as i32, false))
}

/// The cgroup2 directory as an fd for `CLONE_INTO_CGROUP`.
fn open_cgroup_dir(entry: &crate::cgroups::Entry) -> Option<OwnedFd> {
    let dir = entry.v2_dir.as_ref()?;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .ok()
        .map(OwnedFd::from)
}

/// What the child writes to enter its cgroup when `CLONE_INTO_CGROUP` did not place it.
fn entry_for_child(mut entry: crate::cgroups::Entry, placed_v2: bool) -> crate::cgroups::Entry {
    if let (false, Some(d)) = (placed_v2, entry.v2_dir.take()) {
        entry.tasks.push(d.join("cgroup.procs"));
    }
    entry
}

fn write_id_map(pid: i32, file: &str, maps: &[LinuxIdMapping]) -> Result<()> {
    let mut s = String::new();
    for m in maps {
        s.push_str(&format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()));
    }
    let p = format!("/proc/{pid}/{file}");
    fs::write(&p, s).ctx(|| format!("write {file} of the user namespace"))
}

fn write_maps(pid: i32, spec: &Spec) -> Result<()> {
    let linux = spec.linux().as_ref();
    let uids = linux.and_then(|l| l.uid_mappings().clone()).unwrap_or_default();
    let gids = linux.and_then(|l| l.gid_mappings().clone()).unwrap_or_default();
    if uids.is_empty() || gids.is_empty() {
        return Err(Error::msg("a new user namespace needs linux.uidMappings and linux.gidMappings"));
    }
    write_id_map(pid, "uid_map", &uids)?;
    write_id_map(pid, "gid_map", &gids)
}

fn hooks_of(spec: &Spec) -> Option<&oci_spec::runtime::Hooks> {
    spec.hooks().as_ref()
}

/// `create`, and the first half of `run`.
pub fn create(root: &Path, o: &CreateOpts, mode: Mode) -> Result<Created> {
    state::validate_id(&o.id)?;
    let bundle = fs::canonicalize(&o.bundle).ctx(|| format!("bundle {}", o.bundle.display()))?;
    let spec = crate::spec::load(&bundle)?;
    let rootfs = fs::canonicalize(crate::spec::rootfs(&spec, &bundle)).ctx(|| "rootfs")?;
    let process = spec.process().as_ref().ok_or_else(|| Error::msg("config.json has no process"))?;
    let terminal = process.terminal() == Some(true);
    if terminal && o.console_socket.is_none() && mode == Mode::Create {
        return Err(Error::msg(
            "process.terminal is true but no --console-socket was given (set \"terminal\": false in config.json, or pass --console-socket)",
        ));
    }
    if terminal && o.console_socket.is_none() && mode == (Mode::Run { detach: true }) {
        // Nobody would hold the pty master: the container would write into a dead terminal.
        return Err(Error::msg(
            "run --detach with process.terminal true needs --console-socket to hand the terminal to (pass --console-socket, or set \"terminal\": false in config.json)",
        ));
    }
    if !terminal && o.console_socket.is_some() {
        return Err(Error::msg("--console-socket was given but process.terminal is not true"));
    }
    let linux = spec.linux().as_ref().ok_or_else(|| Error::msg("config.json has no linux section"))?;
    // Checked before anything exists: a bad profile or attribute fails create here.
    let seccomp = linux.seccomp().as_ref().map(crate::seccomp::build).transpose()?;
    let attrs = crate::init::attrs::ProcAttrs::for_init(process, Some(linux))?;

    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .ctx(|| format!("create state root {}", root.display()))?;
    let dir = state::dir(root, &o.id);
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(Error::AlreadyExists(o.id.clone())),
        Err(e) => return Err(Error::Io { what: format!("create {}", dir.display()), source: e }),
    }
    let own_mntns =
        linux.namespaces().as_deref().unwrap_or_default().iter().any(|n| n.typ() == LinuxNamespaceType::Mount);
    let host_mounts = (!own_mntns).then(|| rootfs.clone());
    let mut undo = Undo {
        dir: Some(dir.clone()),
        cgroup: None,
        scope: None,
        pids: Vec::new(),
        own_pidns: own_pid_ns(&spec),
        host_mounts,
    };

    let unit_path = if o.systemd_cgroup { Some(systemd_unit_path(&spec, &o.id, &bundle)?) } else { None };
    let mut cg_path = match &unit_path {
        Some(u) => u.cgroup(),
        None => cgroup_path(&spec, &o.id),
    };
    let cgroup = Cgroup::new(&cg_path)?;
    refuse_busy_cgroup(&cgroup)?;
    let resources = linux.resources().as_ref();
    cgroup.check(resources)?;
    // With systemd the scope (and its cgroup) is made once the init exists: the init
    // waits for it before it enters any namespace.
    let cg_entry = if unit_path.is_some() { Default::default() } else { cgroup.prepare(resources)? };
    undo.cgroup = Some(cgroup);
    let cg_fd = open_cgroup_dir(&cg_entry);
    let scope = match &unit_path {
        Some(u) => Some(crate::systemd::Scope::connect(u, &o.id).map_err(|e| Error::msg(e.to_string()))?),
        None => None,
    };

    // Namespaces: new ones are created, ones with a path are joined.
    let min_fd = 3 + o.preserve_fds;
    let mut new_flags = CloneFlags::empty();
    let mut joins = Vec::new();
    let mut pid_join = None;
    for ns in linux.namespaces().as_deref().unwrap_or_default() {
        let flag = ns_flag(ns.typ())?;
        match ns.path() {
            None => new_flags |= flag,
            Some(p) => {
                let f = fs::File::open(p).ctx(|| format!("open {} namespace {}", ns.typ(), p.display()))?;
                let fd = lift(OwnedFd::from(f), min_fd)?;
                if flag == CloneFlags::CLONE_NEWPID {
                    pid_join = Some(fd);
                } else {
                    joins.push(Join { flag, fd });
                }
            }
        }
    }
    let user_join = joins.iter().any(|j| j.flag == CloneFlags::CLONE_NEWUSER);
    let two_stage = user_join || (new_flags.contains(CloneFlags::CLONE_NEWUSER) && !joins.is_empty());
    if let Some(fd) = &pid_join {
        setns(fd.as_fd(), CloneFlags::CLONE_NEWPID).ctx(|| "join the pid namespace")?;
    }

    let gate = match mode {
        Mode::Create => StartGate::Listener(lift(listen_start_socket(&dir)?, min_fd)?),
        Mode::Run { .. } => StartGate::Chan,
    };
    let (console, mut console_local) = terminal_fds(o.console_socket.as_deref(), terminal, min_fd)?;
    let (parent_chan, child_chan) = sync::pair()?;
    let child_chan = Chan(lift(child_chan.0, min_fd)?);

    let runtime_hooks = hooks_of(&spec).is_some_and(|h| {
        h.prestart().as_ref().is_some_and(|v| !v.is_empty())
            || h.create_runtime().as_ref().is_some_and(|v| !v.is_empty())
    });
    let created = crate::log::rfc3339_now();
    let annotations = spec.annotations().clone().unwrap_or_default();
    let mut saved = Saved {
        id: o.id.clone(),
        pid: 0,
        start_time: 0,
        bundle: bundle.clone(),
        created,
        cgroup_path: cg_path.clone(),
        systemd_cgroup: unit_path.as_ref().map(|u| u.spec_form()),
        started: false,
        annotations,
        config: spec.clone(),
    };

    let clone_flags = if two_stage { CloneFlags::empty() } else { new_flags - CloneFlags::CLONE_NEWCGROUP };
    let (child, placed_v2) = clone_process(clone_flags, cg_fd.as_ref())?;
    if child == 0 {
        drop(parent_chan);
        drop(console_local.take());
        let ctx = InitCtx {
            cgroup: entry_for_child(cg_entry, placed_v2),
            wait_for_cgroup: scope.is_some(),
            spec: &spec,
            rootfs,
            bundle: bundle.clone(),
            chan: child_chan,
            gate,
            console,
            no_pivot: o.no_pivot,
            no_new_keyring: o.no_new_keyring,
            preserve_fds: o.preserve_fds,
            joins,
            two_stage,
            new_flags,
            runtime_hooks,
            saved: &saved,
            seccomp,
            attrs,
        };
        crate::init::child_main(ctx);
    }
    drop(child_chan);
    drop(gate);
    drop(console);
    drop(joins);
    undo.pids.push(child);
    drop(cg_fd);
    let chan = parent_chan;
    if let Some(scope) = scope {
        // systemd moves the child (and so everything it forks) into the new scope.
        let started = scope.start(child);
        undo.scope = Some(scope);
        started.map_err(|e| Error::msg(e.to_string()))?;
        // Where systemd really put it (its root cgroup is not `/` inside a container).
        let real = fs::read_to_string(format!("/proc/{child}/cgroup"))
            .ok()
            .and_then(|s| crate::systemd::unified_cgroup_of(&s))
            .ok_or_else(|| Error::msg(format!("read the cgroup of the container's init (pid {child})")))?;
        if real != cg_path {
            crate::debug!("systemd put {} at {}, not {}", saved.id, real.display(), cg_path.display());
            cg_path = real;
            saved.cgroup_path = cg_path.clone();
            undo.cgroup = Some(Cgroup::new(&cg_path)?);
        }
        send_or_child_error(&chan, &Msg::Go)?;
    }
    if new_flags.contains(CloneFlags::CLONE_NEWUSER) && !two_stage {
        write_maps(child, &spec)?;
        send_or_child_error(&chan, &Msg::Go)?;
    }
    let mut init_pid = child;
    if two_stage {
        if new_flags.contains(CloneFlags::CLONE_NEWUSER) {
            chan.expect(&Msg::MapsPlease)?;
            write_maps(child, &spec)?;
            chan.send(&Msg::Go)?;
        }
        if new_flags.contains(CloneFlags::CLONE_NEWPID) {
            if let Msg::InitPid(p) = chan.expect(&Msg::InitPid(0))? {
                init_pid = p;
                undo.pids.push(p);
            }
            let _ = waitpid(Pid::from_raw(child), None);
            undo.pids.retain(|&p| p != child);
        }
    }
    saved.pid = init_pid;
    // The init is not dumpable (init/fds.rs), so in a user namespace its own
    // /proc/self/oom_score_adj belongs to the host's root: write it from here.
    if let Some(adj) = process.oom_score_adj() {
        fs::write(format!("/proc/{init_pid}/oom_score_adj"), adj.to_string())
            .ctx(|| format!("set oomScoreAdj {adj} (lowering it needs CAP_SYS_RESOURCE)"))?;
    }
    // The init mounts its filesystems meanwhile; it waits for this before it creates
    // devices (the device cgroup must already hold its rules) or runs anything else.
    if let Some(cg) = &undo.cgroup {
        let limited = undo
            .scope
            .as_ref()
            .map_or(Ok(()), |scope| cg.set_systemd_properties(scope, resources))
            .and_then(|()| cg.apply_devices(resources))
            .and_then(|()| cg.apply_limits(resources));
        if let Err(e) = limited {
            return Err(died_with(&chan, init_pid).map(Error::Msg).unwrap_or(e.into()));
        }
    }
    send_or_child_error(&chan, &Msg::Go)?;

    loop {
        match chan.recv()? {
            Some(Msg::HooksPlease) => {
                if let Some(h) = hooks_of(&spec) {
                    for (kind, hooks) in
                        [(HookKind::Prestart, h.prestart()), (HookKind::CreateRuntime, h.create_runtime())]
                    {
                        let st = saved.hook_state_json(kind, saved.pid);
                        crate::hooks::run(hooks.as_deref().unwrap_or_default(), kind.name(), &st)?;
                    }
                }
                chan.send(&Msg::Go)?;
            }
            Some(Msg::Ready) => break,
            Some(Msg::Err(e)) => return Err(Error::Msg(e)),
            Some(m) => return Err(Error::msg(format!("sync: unexpected {m:?} from the container's init"))),
            None => return Err(Error::msg("the container's init exited during setup")),
        }
    }
    let console_master = match console_local.take() {
        Some(s) => Some(crate::console::recv_fd(s.as_fd())?),
        None => None,
    };
    saved.start_time = state::proc_start_time(init_pid).map(|t| t.0).unwrap_or(0);
    saved.save(root)?;
    if let Some(pf) = &o.pid_file {
        state::write_atomic(pf, init_pid.to_string().as_bytes(), false, 0o644)?;
    }
    undo.disarm();
    Ok(Created { saved, chan, console_master })
}

/// The checked `slice:prefix:name` of a `--systemd-cgroup` create (`system.slice:skiff:ID`
/// when the spec has no cgroupsPath). A refused path names config.json and the line.
fn systemd_unit_path(spec: &Spec, id: &str, bundle: &Path) -> Result<crate::systemd::UnitPath> {
    let configured =
        spec.linux().as_ref().and_then(|l| l.cgroups_path().as_ref()).filter(|p| !p.as_os_str().is_empty());
    let text = match configured {
        Some(p) => p.to_string_lossy().into_owned(),
        None => crate::systemd::UnitPath::default_for(id),
    };
    let path = crate::systemd::UnitPath::parse(&text).map_err(|e| {
        let file = bundle.join("config.json");
        let line = fs::read_to_string(&file)
            .ok()
            .and_then(|t| t.lines().position(|l| l.contains("\"cgroupsPath\"")))
            .map(|i| format!(":{}", i + 1))
            .unwrap_or_default();
        Error::msg(format!("{}{line}: {e}", file.display()))
    })?;
    crate::systemd::host_support().map_err(Error::Msg)?;
    Ok(path)
}

/// The container's systemd scope, when it was created with `--systemd-cgroup`.
fn scope_of(saved: &Saved) -> Result<Option<crate::systemd::Scope>> {
    let Some(p) = &saved.systemd_cgroup else { return Ok(None) };
    let path = crate::systemd::UnitPath::parse(p).map_err(|e| Error::msg(format!("state of {}: {e}", saved.id)))?;
    crate::systemd::Scope::connect(&path, &saved.id).map(Some).map_err(|e| Error::msg(e.to_string()))
}

/// True when the container gets a pid namespace of its own (a `pid` entry without a path),
/// as runc's `IsPrivate(NEWPID)`: killing its init then kills every process of it.
fn own_pid_ns(spec: &Spec) -> bool {
    let nss = spec.linux().as_ref().and_then(|l| l.namespaces().as_ref());
    nss.is_some_and(|v| v.iter().any(|n| n.typ() == LinuxNamespaceType::Pid && n.path().is_none()))
}

/// Refuses a cgroup that already holds processes (runc's check, and its words): deleting
/// either container would then have to kill the other's processes or leave its own
/// behind. A cgroup left frozen would freeze the new container in the middle of create.
fn refuse_busy_cgroup(cg: &Cgroup) -> Result<()> {
    let pids = cg.pids()?;
    if !pids.is_empty() {
        return Err(Error::msg(format!(
            "container's cgroup is not empty: {} process(es) found in {} (is another container using the same linux.cgroupsPath?)",
            pids.len(),
            cg.path().display()
        )));
    }
    if cg.frozen() {
        return Err(Error::msg(format!(
            "container's cgroup {} is frozen: thaw it, or use another linux.cgroupsPath",
            cg.path().display()
        )));
    }
    Ok(())
}

/// Sends `m`; when the init has already gone, its own last word (an `Err` it sent before
/// exiting) is the better error.
/// The init's own error when it has died during setup: a failure of ours that only followed
/// from its death (systemd drops the scope of a dead init, so setting the scope's properties
/// fails with "unit not found") is reported as the init's error, which says what went wrong.
/// Never blocks on a live init.
fn died_with(chan: &Chan, pid: i32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let dead = stat.rsplit_once(") ").is_none_or(|(_, rest)| rest.starts_with('Z'));
    if !dead {
        return None;
    }
    match chan.recv() {
        Ok(Some(Msg::Err(e))) => Some(e),
        _ => None,
    }
}

fn send_or_child_error(chan: &Chan, m: &Msg) -> Result<()> {
    match chan.send(m) {
        Ok(()) => Ok(()),
        Err(e) => match chan.recv() {
            Ok(Some(Msg::Err(child))) => Err(Error::Msg(child)),
            _ => Err(e),
        },
    }
}

fn listen_start_socket(dir: &Path) -> Result<OwnedFd> {
    use nix::sys::socket::{bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
    let fd = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).ctx(|| "socket")?;
    // Bind through /proc/self/fd so that long state paths never hit the 108-byte limit.
    let d = fs::File::open(dir).ctx(|| format!("open {}", dir.display()))?;
    let addr =
        UnixAddr::new(format!("/proc/self/fd/{}/{}", d.as_raw_fd(), START_SOCK).as_str()).ctx(|| "socket address")?;
    bind(fd.as_raw_fd(), &addr).ctx(|| "bind the start socket")?;
    listen(&fd, Backlog::new(4).unwrap_or(Backlog::MAXCONN)).ctx(|| "listen on the start socket")?;
    Ok(fd)
}

/// `start`: lets a created container's init exec the user's process.
pub fn start(root: &Path, id: &str) -> Result<()> {
    let mut saved = Saved::load(root, id)?;
    match saved.status(root) {
        Status::Created => {}
        Status::Running | Status::Paused => {
            return Err(Error::msg(format!("cannot start container {id}: it is already running")))
        }
        Status::Stopped | Status::Creating => {
            return Err(Error::msg(format!(
                "cannot start container {id}: it has stopped (delete it and create it again)"
            )))
        }
    }
    let dir = state::dir(root, id);
    let d = fs::File::open(&dir).ctx(|| format!("open {}", dir.display()))?;
    let path = format!("/proc/self/fd/{}/{}", d.as_raw_fd(), START_SOCK);
    let mut conn = match UnixStream::connect(&path) {
        Ok(c) => c,
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            return Err(Error::msg(format!("cannot start container {id}: it is already running")))
        }
        Err(e) => return Err(Error::Io { what: "connect to the container's init".into(), source: e }),
    };
    use std::io::{Read, Write};
    conn.write_all(b"S").ctx(|| "signal the container's init")?;
    let mut reply = Vec::new();
    let _ = conn.read_to_end(&mut reply);
    let _ = fs::remove_file(dir.join(START_SOCK));
    if let Some(rest) = reply.strip_prefix(b"E") {
        return Err(Error::Msg(String::from_utf8_lossy(rest).into_owned()));
    }
    if !reply.is_empty() {
        return Err(Error::msg(format!("container {id}: unexpected reply from the init")));
    }
    saved.started = true;
    saved.save(root)?;
    poststart(&saved);
    Ok(())
}

fn poststart(saved: &Saved) {
    if let Some(h) = saved.config.hooks().as_ref().and_then(|h| h.poststart().as_ref()) {
        let st = saved.oci_state_json(Status::Running);
        for e in crate::hooks::run_all(h, "poststart", &st) {
            crate::warn!("{e}");
        }
    }
}

/// Opens a pidfd for `pid` if it is still the process recorded in `saved`.
fn pidfd_of(pid: i32, start_time: u64) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags, returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is new and ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    match state::proc_start_time(pid) {
        Some((t, _)) if t == start_time => Some(fd),
        _ => None,
    }
}

fn signal_pidfd(fd: &OwnedFd, sig: i32) -> std::io::Result<()> {
    // SAFETY: pidfd_send_signal with a pidfd we own and no siginfo.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), sig, 0usize, 0u32) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Waits until the process behind `fd` exits, at most `timeout`.
fn wait_pidfd(fd: &OwnedFd, timeout: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = PollTimeout::try_from(left.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::ZERO);
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(n) if n > 0 => return true,
            Ok(_) => return false,
            Err(nix::Error::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

/// The error of signalling a container whose init has exited. It has runc's words
/// ("container not running"): containerd's shim matches them to tell an already
/// finished process from a failed kill.
fn not_running(id: &str) -> Error {
    Error::msg(format!("cannot signal container {id}: container not running"))
}

/// `kill [--all] ID SIGNAL`. With `--all` every process left in the container's cgroup is
/// signalled, also after its init has exited (as runc does: containerd's shim kills with
/// `--all` when it cleans up a stopped task and takes an error as a failed cleanup), so
/// that none escapes by forking meanwhile: SIGKILL through `cgroup.kill`, other signals
/// with the cgroup frozen (see [`Cgroup::signal_all`]).
pub fn kill(root: &Path, id: &str, sig: i32, all: bool) -> Result<()> {
    let saved = Saved::load(root, id)?;
    let status = saved.status(root);
    if all {
        Cgroup::new(&saved.cgroup_path)?.signal_all(sig)?;
    } else {
        if status == Status::Stopped {
            return Err(not_running(id));
        }
        match pidfd_of(saved.pid, saved.start_time) {
            Some(fd) => signal_pidfd(&fd, sig).ctx(|| format!("signal container {id}"))?,
            None => return Err(not_running(id)),
        }
    }
    // A frozen process cannot act on SIGKILL: thaw it so that it dies (as runc does).
    if status == Status::Paused && sig == libc::SIGKILL {
        Cgroup::new(&saved.cgroup_path)?.freeze(false)?;
    }
    Ok(())
}

/// `pause ID`: freezes every process of a running container (v1 freezer, v2 cgroup.freeze).
pub fn pause(root: &Path, id: &str) -> Result<()> {
    let saved = Saved::load(root, id)?;
    match saved.status(root) {
        Status::Running => {}
        Status::Paused => return Err(Error::msg(format!("cannot pause container {id}: it is already paused"))),
        st => return Err(Error::msg(format!("cannot pause container {id}: it is {}, not running", st.as_str()))),
    }
    Cgroup::new(&saved.cgroup_path)?.freeze(true).map_err(|e| Error::msg(format!("pause container {id}: {e}")))
}

/// `resume ID`: thaws a paused container.
pub fn resume(root: &Path, id: &str) -> Result<()> {
    let saved = Saved::load(root, id)?;
    match saved.status(root) {
        Status::Paused => {}
        st => return Err(Error::msg(format!("cannot resume container {id}: it is {}, not paused", st.as_str()))),
    }
    Cgroup::new(&saved.cgroup_path)?.freeze(false).map_err(|e| Error::msg(format!("resume container {id}: {e}")))
}

/// `update [--resources FILE|-] [flags] ID`: changes the limits of a live container.
/// `changes` holds the new values (only memory, cpu, pids, blockIO, hugepageLimits are
/// taken; devices cannot change after create); they are merged into the container's
/// resources, applied, and saved in its state so `state` and a later update see them.
pub fn update(root: &Path, id: &str, changes: &oci_spec::runtime::LinuxResources) -> Result<()> {
    use oci_spec::runtime::LinuxResources;
    let mut saved = Saved::load(root, id)?;
    if saved.status(root) == Status::Stopped {
        return Err(Error::msg(format!("cannot update container {id}: it is not running")));
    }
    if changes.devices().as_ref().is_some_and(|d| !d.is_empty()) {
        return Err(Error::msg("update: devices cannot be changed on a live container: re-create it"));
    }
    let mut linux = saved.config.linux().clone().unwrap_or_default();
    let mut merged = linux.resources().clone().unwrap_or_default();
    // What is applied: the changed controllers only (re-applying devices would reset
    // the device rules of a running container for a moment).
    let mut apply = LinuxResources::default();
    // Each field `changes` sets, copied onto the current value.
    macro_rules! take {
        ($from:ident => $to:ident: $($get:ident => $set:ident),*) => {
            $( if let Some(v) = $from.$get() { $to.$set(Some(v)); } )*
        };
    }
    if let Some(m) = changes.memory() {
        let mut cur = (*merged.memory()).unwrap_or_default();
        take!(m => cur: limit => set_limit, reservation => set_reservation, swap => set_swap, kernel => set_kernel,
            kernel_tcp => set_kernel_tcp, swappiness => set_swappiness, disable_oom_killer => set_disable_oom_killer,
            use_hierarchy => set_use_hierarchy, check_before_update => set_check_before_update);
        merged.set_memory(Some(cur));
        apply.set_memory(Some(cur));
    }
    if let Some(c) = changes.cpu() {
        let mut cur = merged.cpu().clone().unwrap_or_default();
        take!(c => cur: shares => set_shares, quota => set_quota, burst => set_burst, period => set_period,
            realtime_runtime => set_realtime_runtime, realtime_period => set_realtime_period, idle => set_idle);
        if let Some(v) = c.cpus() {
            cur.set_cpus(Some(v.clone()));
        }
        if let Some(v) = c.mems() {
            cur.set_mems(Some(v.clone()));
        }
        merged.set_cpu(Some(cur.clone()));
        apply.set_cpu(Some(cur));
    }
    if let Some(p) = changes.pids() {
        merged.set_pids(Some(*p));
        apply.set_pids(Some(*p));
    }
    if let Some(b) = changes.block_io() {
        merged.set_block_io(Some(b.clone()));
        apply.set_block_io(Some(b.clone()));
    }
    if let Some(h) = changes.hugepage_limits() {
        merged.set_hugepage_limits(Some(h.clone()));
        apply.set_hugepage_limits(Some(h.clone()));
    }
    let cg = Cgroup::new(&saved.cgroup_path)?;
    cg.check(Some(&apply))?;
    if let Some(scope) = scope_of(&saved)? {
        // Also as unit properties, or systemd would put its own values back on a reload.
        cg.set_systemd_properties(&scope, Some(&apply))
            .map_err(|e| Error::msg(format!("update container {id}: {e}")))?;
    }
    cg.apply_limits(Some(&apply)).map_err(|e| Error::msg(format!("update container {id}: {e}")))?;
    linux.set_resources(Some(merged));
    saved.config.set_linux(Some(linux));
    saved.save(root)
}

/// `delete [--force] ID`.
pub fn delete(root: &Path, id: &str, force: bool) -> Result<()> {
    let saved = match Saved::load(root, id) {
        Ok(s) => s,
        Err(Error::NotExist(_)) => {
            // A create that died before writing state leaves only its directory.
            let d = state::dir(root, id);
            if d.is_dir() && state::validate_id(id).is_ok() {
                let _ = fs::remove_dir_all(&d);
                return Ok(());
            }
            if force {
                return Ok(());
            }
            return Err(Error::NotExist(id.into()));
        }
        Err(Error::Json { path, source }) => {
            // Torn by a crash of the machine mid-create: nothing can be running from it.
            crate::warn!("{}: unreadable state ({source}); removing it", path.display());
            let d = state::dir(root, id);
            fs::remove_dir_all(&d).ctx(|| format!("remove {}", d.display()))?;
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let status = saved.status(root);
    if matches!(status, Status::Running | Status::Paused) && !force {
        return Err(Error::msg(format!(
            "cannot delete container {id} that is not stopped: it is running (stop it with kill, or use delete --force)"
        )));
    }
    let cg = Cgroup::new(&saved.cgroup_path)?;
    // With a pid namespace of its own, the container's processes are exactly those of that
    // namespace: SIGKILL to its init makes the kernel kill the rest, and whatever else is in
    // the cgroup belongs to someone else (another container given the same cgroupsPath).
    // Without one, every process of the cgroup is taken for the container's, as runc does.
    let own_pidns = own_pid_ns(&saved.config);
    let mut pidns = None;
    if status != Status::Stopped {
        if let Some(fd) = pidfd_of(saved.pid, saved.start_time) {
            if own_pidns {
                pidns = ns_ino(saved.pid, "pid");
            } else {
                let _ = cg.signal_all(libc::SIGKILL);
            }
            let _ = signal_pidfd(&fd, libc::SIGKILL);
            if status == Status::Paused {
                cg.freeze(false)?;
            }
            // The init's exit is reported only after the kernel has killed and waited for
            // every other process of its pid namespace.
            if !wait_pidfd(&fd, Duration::from_secs(10)) {
                return Err(Error::msg(format!("container {id}: the init did not die after SIGKILL")));
            }
        }
    }
    // The scope goes once nothing is left in it (systemd removes its cgroup); one that
    // still holds processes of others stays, like a shared cgroup without systemd.
    if saved.systemd_cgroup.is_some() && cg.pids().unwrap_or_default().is_empty() {
        match (scope_of(&saved), cg.unified_dir()) {
            (Ok(Some(scope)), Some(d)) => scope.stop(&d).map_err(|e| Error::msg(e.to_string()))?,
            (Err(e), _) => crate::warn!("{e}; removing the cgroup without systemd"),
            _ => {}
        }
    }
    if own_pidns {
        remove_shared_cgroup(&cg, pidns)?;
    } else {
        // Processes left behind (no pid namespace of its own): kill them too.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = cg.pids().unwrap_or_default();
            if pids.is_empty() {
                break;
            }
            let _ = cg.signal_all(libc::SIGKILL);
            if Instant::now() > deadline {
                return Err(Error::msg(format!("container {id}: processes survive SIGKILL; cgroup not removed")));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        cg.remove()?;
    }
    // Without a mount namespace the container's mounts are in the host's table.
    let own_mntns = saved.config.linux().as_ref().is_some_and(|l| {
        l.namespaces().as_deref().unwrap_or_default().iter().any(|n| n.typ() == LinuxNamespaceType::Mount)
    });
    if !own_mntns {
        crate::init::unmount_under(&crate::spec::rootfs(&saved.config, &saved.bundle));
    }
    let dir = state::dir(root, id);
    fs::remove_dir_all(&dir).ctx(|| format!("remove {}", dir.display()))?;
    if let Some(h) = saved.config.hooks().as_ref().and_then(|h| h.poststop().as_ref()) {
        for e in crate::hooks::run_all(h, "poststop", &saved.oci_state_json(Status::Stopped)) {
            crate::warn!("{e}");
        }
    }
    Ok(())
}

/// The inode of `/proc/PID/ns/NAME` (which namespace it is).
fn ns_ino(pid: i32, name: &str) -> Option<u64> {
    fs::metadata(format!("/proc/{pid}/ns/{name}")).ok().map(|m| std::os::unix::fs::MetadataExt::ino(&m))
}

/// Removes the cgroup of a container whose pid namespace (inode `pidns`, when known) is
/// gone, killing nothing of others: a cgroup that still holds processes of another
/// container stays. Processes on their way into the dead namespace (an `exec` that joined
/// the cgroup and the namespace but could not fork into it) are ours and are killed.
fn remove_shared_cgroup(cg: &Cgroup, pidns: Option<u64>) -> Result<()> {
    for _ in 0..2 {
        if cg.remove_if_empty()? {
            return Ok(());
        }
        let Some(ns) = pidns else { break };
        let entering: Vec<i32> =
            cg.pids()?.into_iter().filter(|&p| ns_ino(p, "pid_for_children") == Some(ns)).collect();
        if entering.is_empty() {
            break;
        }
        for p in &entering {
            let _ = nix::sys::signal::kill(Pid::from_raw(*p), Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while cg.pids()?.iter().any(|p| entering.contains(p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    crate::debug!("cgroup {} still holds processes of others: left in place", cg.path().display());
    Ok(())
}

const FORWARDED: &[Signal] = &[
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGTERM,
    Signal::SIGCONT,
    Signal::SIGTSTP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGWINCH,
];

/// Blocks SIGCHLD and the forwarded signals in the calling thread and returns a signalfd
/// that reads them. Call it before spawning any thread: a thread inherits the mask, while
/// one spawned earlier would take a process-directed signal for itself (SIGCHLD is then
/// lost, being ignored by default) and the wait would hang.
fn block_forwarded() -> Result<SignalFd> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    for s in FORWARDED {
        set.add(*s);
    }
    set.thread_block().ctx(|| "block signals")?;
    SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC).ctx(|| "signalfd")
}

/// Waits for our child `pid`, forwarding the signals `sfd` reads to it (SIGWINCH: our
/// terminal's size to `tty`). Returns its exit status as a shell would: the code, or
/// 128 + signal.
fn wait_forwarding(sfd: &SignalFd, pid: i32, tty: Option<&OwnedFd>) -> Result<i32> {
    loop {
        // Reap everything that has exited; our init may be among them.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(p, code)) if p.as_raw() == pid => return Ok(code),
                Ok(WaitStatus::Signaled(p, sig, _)) if p.as_raw() == pid => return Ok(128 + sig as i32),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        match sfd.read_signal() {
            Ok(Some(info)) => {
                let sig = info.ssi_signo as i32;
                if sig == libc::SIGCHLD {
                    continue;
                }
                if sig == libc::SIGWINCH {
                    if let Some(t) = tty {
                        // SAFETY: TIOCGWINSZ/TIOCSWINSZ on fds we own with a struct we own.
                        unsafe {
                            let mut ws: libc::winsize = std::mem::zeroed();
                            if libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) == 0 {
                                libc::ioctl(t.as_raw_fd(), libc::TIOCSWINSZ, &ws);
                            }
                        }
                    }
                    continue;
                }
                // SAFETY: kill with a signal number we just received.
                unsafe { libc::kill(pid, sig) };
            }
            Ok(None) => {}
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(Error::Sys { what: "read signalfd".into(), source: e }),
        }
    }
}

/// How long a foreground terminal's relay may still copy what the process wrote last
/// after it exited (bounded: a process it left behind may hold the terminal open).
const DRAIN: Duration = Duration::from_secs(1);

/// Relays the pty `master` (when there is one) to our stdio from a helper thread while
/// waiting for our child `pid` (signals blocked first, see [`block_forwarded`]); then runs
/// `after` (a foreground `run` deletes the container there) and lets the relay copy what
/// is left in the terminal. Returns the process's exit status (see [`wait_forwarding`]).
fn wait_foreground(pid: i32, master: Option<OwnedFd>, after: impl FnOnce() -> Result<()>) -> Result<i32> {
    let sfd = block_forwarded()?;
    let mut done = None;
    if let Some(m) = &master {
        let m2 = m.try_clone().ctx(|| "dup the terminal")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            crate::console::relay(m2);
            let _ = tx.send(());
        });
        done = Some(rx);
    }
    let code = wait_forwarding(&sfd, pid, master.as_ref());
    let after = after();
    drop(master);
    if let Some(rx) = done {
        let _ = rx.recv_timeout(DRAIN);
    }
    let code = code?;
    after?;
    Ok(code)
}

/// `run [--detach]`: create, start, and in the foreground wait and delete.
pub fn run(root: &Path, o: &CreateOpts, detach: bool) -> Result<i32> {
    let mut c = create(root, o, Mode::Run { detach })?;
    let id = o.id.clone();
    let fail = |e: Error| -> Result<i32> {
        let _ = delete(root, &id, true);
        Err(e)
    };
    if let Err(e) = c.chan.send(&Msg::Go) {
        return fail(e);
    }
    match c.chan.recv() {
        Ok(None) => {}
        Ok(Some(Msg::Err(e))) => return fail(Error::Msg(e)),
        Ok(Some(m)) => return fail(Error::msg(format!("sync: unexpected {m:?}"))),
        Err(e) => return fail(e),
    }
    c.saved.started = true;
    if let Err(e) = c.saved.save(root) {
        return fail(e);
    }
    poststart(&c.saved);
    if detach {
        return Ok(0);
    }
    wait_foreground(c.saved.pid, c.console_master.take(), || delete(root, &id, true))
}

pub struct ExecOpts {
    pub process_file: Option<PathBuf>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub tty: bool,
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub preserve_fds: i32,
    pub user: Option<String>,
    pub no_new_privs: bool,
    pub caps: Vec<String>,
    /// Exec even into a paused container (the process then waits, frozen, for `resume`).
    pub ignore_paused: bool,
}

fn exec_process(saved: &Saved, o: &ExecOpts) -> Result<Process> {
    if let Some(f) = &o.process_file {
        let data = fs::read(f).ctx(|| format!("read process file {}", f.display()))?;
        return crate::spec::from_json(&data)
            .map_err(|e| Error::msg(format!("{}:{}:{}: invalid process: {e}", f.display(), e.line(), e.column())));
    }
    let mut p = saved.config.process().clone().unwrap_or_default();
    if o.args.is_empty() {
        return Err(Error::msg("exec needs a command: skiff-runtime exec ID -- COMMAND [ARG...] (or --process FILE)"));
    }
    p.set_args(Some(o.args.clone()));
    let mut env = p.env().clone().unwrap_or_default();
    for kv in &o.env {
        let key = kv.split('=').next().unwrap_or("");
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(kv.clone());
    }
    p.set_env(Some(env));
    if let Some(c) = &o.cwd {
        p.set_cwd(c.clone());
    }
    p.set_terminal(Some(o.tty));
    if let Some(u) = &o.user {
        let (uid, gid) = u.split_once(':').unwrap_or((u.as_str(), ""));
        let mut user = p.user().clone();
        user.set_uid(uid.parse().map_err(|_| Error::msg(format!("--user {u:?}: use UID[:GID]")))?);
        if !gid.is_empty() {
            user.set_gid(gid.parse().map_err(|_| Error::msg(format!("--user {u:?}: use UID[:GID]")))?);
        }
        p.set_user(user);
    }
    if o.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    if !o.caps.is_empty() {
        let mut c = p.capabilities().clone().unwrap_or_default();
        let extra: Vec<oci_spec::runtime::Capability> = o
            .caps
            .iter()
            .map(|s| {
                serde_json::from_value(serde_json::Value::String(s.clone()))
                    .map_err(|_| Error::msg(format!("unknown capability {s:?}")))
            })
            .collect::<Result<_>>()?;
        for set in [c.bounding().clone(), c.effective().clone(), c.permitted().clone()].iter().enumerate() {
            let mut s = set.1.clone().unwrap_or_default();
            s.extend(extra.iter().copied());
            match set.0 {
                0 => c.set_bounding(Some(s)),
                1 => c.set_effective(Some(s)),
                _ => c.set_permitted(Some(s)),
            };
        }
        p.set_capabilities(Some(c));
    }
    Ok(p)
}

const NS_ORDER: &[(&str, CloneFlags)] = &[
    ("user", CloneFlags::CLONE_NEWUSER),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// `exec`: runs another process in a running container.
pub fn exec(root: &Path, id: &str, o: &ExecOpts) -> Result<i32> {
    let saved = Saved::load(root, id)?;
    match saved.status(root) {
        Status::Stopped => return Err(Error::msg(format!("cannot exec in container {id}: it is not running"))),
        // The new process would freeze on entering the cgroup, and so would we waiting for it.
        Status::Paused if !o.ignore_paused => {
            return Err(Error::msg(format!(
                "cannot exec in container {id}: it is paused (resume it, or use --ignore-paused to exec anyway)"
            )))
        }
        _ => {}
    }
    let process = exec_process(&saved, o)?;
    if process.terminal() == Some(true) && o.detach && o.console_socket.is_none() {
        return Err(Error::msg("exec --tty --detach needs --console-socket"));
    }
    let seccomp = saved.config.linux().as_ref().and_then(|l| l.seccomp().as_ref());
    let seccomp = seccomp.map(crate::seccomp::build).transpose()?;
    let attrs = crate::init::attrs::ProcAttrs::for_exec(&process, &saved.config)?;
    let min_fd = 3 + o.preserve_fds;
    let init = saved.pid;
    let mut nss = Vec::new();
    let mut in_userns = false;
    for (name, flag) in NS_ORDER {
        let theirs = format!("/proc/{init}/ns/{name}");
        let same = match (fs::metadata(&theirs), fs::metadata(format!("/proc/self/ns/{name}"))) {
            (Ok(a), Ok(b)) => std::os::unix::fs::MetadataExt::ino(&a) == std::os::unix::fs::MetadataExt::ino(&b),
            _ => true,
        };
        if same {
            continue;
        }
        if *flag == CloneFlags::CLONE_NEWUSER {
            in_userns = true;
        }
        let f = fs::File::open(&theirs).ctx(|| format!("open {theirs}"))?;
        nss.push(Join { flag: *flag, fd: lift(OwnedFd::from(f), min_fd)? });
    }
    // Check the init is still the same process now that we hold its namespaces.
    if state::proc_start_time(init).map(|t| t.0) != Some(saved.start_time) {
        return Err(Error::msg(format!("cannot exec in container {id}: it is not running")));
    }
    let (console, console_local) = terminal_fds(o.console_socket.as_deref(), process.terminal() == Some(true), min_fd)?;
    let (parent_chan, child_chan) = sync::pair()?;
    let child_chan = Chan(lift(child_chan.0, min_fd)?);
    let cg_entry = Cgroup::new(&saved.cgroup_path)?.entry();
    let cg_fd = open_cgroup_dir(&cg_entry);
    let (child, placed_v2) = clone_process(CloneFlags::empty(), cg_fd.as_ref())?;
    if child == 0 {
        drop(parent_chan);
        drop(console_local);
        let entry = entry_for_child(cg_entry, placed_v2);
        // Before anything else, as the init does (init/fds.rs): no fd of ours or of our
        // caller but the ones needed, and nothing of this process visible to the container.
        let mut keep: Vec<RawFd> = (3..3 + o.preserve_fds).collect();
        keep.push(child_chan.0.as_raw_fd());
        keep.extend(console.as_ref().map(|c| c.as_raw_fd()));
        keep.extend(nss.iter().map(|j| j.fd.as_raw_fd()));
        let disarmed = crate::init::set_non_dumpable().and_then(|()| {
            crate::log::forward_to_parent(child_chan.0.as_raw_fd());
            crate::init::close_all_but(&keep)
        });
        let r = match disarmed.and_then(|()| {
            entry.enter_self().map_err(|e| Error::Io { what: "join the container's cgroup".into(), source: e })
        }) {
            Ok(()) => {
                let confine = (&attrs, seccomp.as_ref());
                exec_child(child_chan.0.as_raw_fd(), nss, &process, console, in_userns, confine, o.preserve_fds)
            }
            Err(e) => Err(e),
        };
        let msg = match r {
            Ok(never) => match never {},
            Err(e) => e.to_string(),
        };
        let _ = child_chan.send(&Msg::Err(msg));
        // SAFETY: leave without running the parent's exit handlers.
        unsafe { libc::_exit(1) }
    }
    drop(child_chan);
    drop(console);
    drop(nss);
    let kill_child = |e: Error| -> Error {
        let _ = nix::sys::signal::kill(Pid::from_raw(child), Signal::SIGKILL);
        let _ = waitpid(Pid::from_raw(child), None);
        e
    };
    drop(cg_fd);
    parent_chan.send(&Msg::Go).map_err(kill_child)?;
    let pid = match parent_chan.expect(&Msg::InitPid(0)) {
        Ok(Msg::InitPid(p)) => p,
        Ok(_) => return Err(kill_child(Error::msg("sync: no pid from exec"))),
        Err(e) => return Err(kill_child(e)),
    };
    let _ = waitpid(Pid::from_raw(child), None);
    let master = match console_local {
        Some(s) => Some(crate::console::recv_fd(s.as_fd())?),
        None => None,
    };
    match parent_chan.recv()? {
        None => {}
        Some(Msg::Err(e)) => {
            let _ = waitpid(Pid::from_raw(pid), None);
            return Err(Error::Msg(e));
        }
        Some(m) => return Err(Error::msg(format!("sync: unexpected {m:?}"))),
    }
    if let Some(pf) = &o.pid_file {
        state::write_atomic(pf, pid.to_string().as_bytes(), false, 0o644)?;
    }
    if o.detach {
        return Ok(0);
    }
    wait_foreground(pid, master, || Ok(()))
}

enum Never {}

fn exec_child(
    chan_fd: RawFd,
    nss: Vec<Join>,
    process: &Process,
    console: Option<OwnedFd>,
    in_userns: bool,
    (attrs, seccomp): (&crate::init::attrs::ProcAttrs, Option<&libseccomp::ScmpFilterContext>),
    preserve_fds: i32,
) -> Result<Never> {
    // SAFETY: chan_fd stays open for the life of this process (owned by the caller).
    let chan = unsafe { std::os::fd::BorrowedFd::borrow_raw(chan_fd) };
    let chan = Chan(chan.try_clone_to_owned().ctx(|| "dup sync fd")?);
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    chan.expect(&Msg::Go)?;
    for j in &nss {
        setns(j.fd.as_fd(), j.flag).ctx(|| format!("join the container's namespace {:?}", j.flag))?;
    }
    drop(nss);
    // Join the pid namespace for real: fork (the runtime waits for the new process).
    crate::init::hand_over_to_child(&chan, "fork into the container")?;
    if let Some(c) = console {
        nix::unistd::setsid().ctx(|| "setsid")?;
        crate::init::exec_console(c, process)?;
    }
    crate::init::finish_process(process, attrs, seccomp, in_userns, preserve_fds, true)?;
    Err(crate::init::prepare_exec(process)?.exec())
}
