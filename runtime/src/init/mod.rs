//! Everything that happens inside the new container before the user's process is
//! exec'ed: namespaces to join, hostname, the root filesystem and its mounts, devices,
//! pivot_root, masked and read-only paths, sysctls, the console, rlimits, user and
//! capabilities, no_new_privs, seccomp, and finally execve.
//!
//! This code runs in a forked copy of the (single-threaded) runtime. Errors are sent
//! to the parent as one line over the sync channel; the parent prints them.

pub mod attrs;
mod devices;
mod exec;
mod mounts;
mod terminal;

use devices::{dev_symlinks, make_device, DEFAULT_DEVICES};
pub use exec::{close_range_cloexec, finish_process, prepare_exec, Prepared};
pub use mounts::secure_join;
use mounts::{locked_flags, mask_path, mount_entry, pivot, propagation_flag, readonly_path};
pub use terminal::exec_console;
use terminal::setup_console;

use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::stat::{umask, Mode};
use nix::unistd::{chdir, Gid, Uid};
use oci_spec::runtime::Spec;

use crate::error::{Context, Error, Result};
use crate::state::HookKind;
use crate::sync::{Chan, Msg};

/// How the init learns that it may exec the user's process.
pub enum StartGate {
    /// `create`: a `start` from another runtime invocation connects to this socket.
    Listener(OwnedFd),
    /// `run`: the parent sends `Go` on the sync channel.
    Chan,
}

/// A namespace the container joins by path (fd opened by the parent).
pub struct Join {
    pub flag: CloneFlags,
    pub fd: OwnedFd,
}

/// Everything the init needs, prepared by the parent before the fork.
pub struct InitCtx<'a> {
    pub spec: &'a Spec,
    /// How to enter the container's cgroup (prepared and limited by the parent).
    pub cgroup: crate::cgroups::Entry,
    pub rootfs: PathBuf,
    pub bundle: PathBuf,
    pub chan: Chan,
    pub gate: StartGate,
    pub console: Option<OwnedFd>,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    pub preserve_fds: i32,
    /// Namespaces joined in the child (never pid: the parent joins that one).
    pub joins: Vec<Join>,
    /// Namespaces still to unshare in the child (two-stage creation only, and cgroup).
    pub two_stage: bool,
    pub new_flags: CloneFlags,
    /// The parent runs prestart/createRuntime hooks: stop before pivot_root and ask.
    pub runtime_hooks: bool,
    /// The container's state (pid not yet known) for the createContainer/startContainer
    /// hooks' stdin.
    pub saved: &'a crate::state::Saved,
    /// The seccomp filter, built (and so checked) by the parent before clone.
    pub seccomp: Option<libseccomp::ScmpFilterContext>,
    /// Scheduler, I/O priority, personality, AppArmor/SELinux, checked by the parent.
    pub attrs: attrs::ProcAttrs,
}

/// The child's entry point after the clone. Never returns.
pub fn child_main(mut ctx: InitCtx) -> ! {
    let r = setup(&mut ctx);
    let msg = match r {
        Ok(never) => match never {},
        Err(e) => e.to_string(),
    };
    let _ = ctx.chan.send(&Msg::Err(msg));
    // SAFETY: _exit is always safe; we must not run atexit handlers of the parent's copy.
    unsafe { libc::_exit(1) }
}

enum Never {}

fn setup(ctx: &mut InitCtx) -> Result<Never> {
    // Die with the runtime while it is setting us up; cleared once we are ready.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    umask(Mode::empty());
    // 1. Enter the cgroup ourselves (cheap, see cgroups::Cgroup::prepare); with a new
    // user namespace, wait until the parent has mapped our ids.
    ctx.cgroup.enter_self().ctx(|| "enter the container's cgroup")?;

    if ctx.two_stage {
        two_stage(ctx)?;
    } else {
        for j in &ctx.joins {
            setns(j.fd.as_fd(), j.flag).ctx(|| format!("join {} namespace", ns_name(j.flag)))?;
        }
        if ctx.new_flags.contains(CloneFlags::CLONE_NEWUSER) {
            // The parent writes our uid/gid maps.
            ctx.chan.expect(&Msg::Go)?;
        }
    }
    ctx.joins.clear();
    let spec = ctx.spec;
    let linux = spec.linux().as_ref().ok_or_else(|| Error::msg("config.json has no linux section"))?;
    let process = spec.process().as_ref().ok_or_else(|| Error::msg("config.json has no process"))?;

    if ctx.new_flags.contains(CloneFlags::CLONE_NEWCGROUP) {
        unshare(CloneFlags::CLONE_NEWCGROUP).ctx(|| "create cgroup namespace")?;
    }
    if ctx.new_flags.contains(CloneFlags::CLONE_NEWUSER) {
        // Become root of the new user namespace (the parent mapped us).
        nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
            .ctx(|| "setgid 0 in the user namespace (is gid 0 mapped?)")?;
        nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
            .ctx(|| "setuid 0 in the user namespace (is uid 0 mapped?)")?;
    }
    nix::unistd::setsid().ctx(|| "setsid")?;
    if !ctx.no_new_keyring {
        // The keyring gets the container's SELinux label (where SELinux is enabled).
        ctx.attrs.apply_keycreate()?;
        // A fresh session keyring so the container cannot see the host's keys.
        // SAFETY: keyctl(JOIN_SESSION_KEYRING, NULL) creates an anonymous keyring.
        unsafe {
            libc::syscall(libc::SYS_keyctl, 1 /* KEYCTL_JOIN_SESSION_KEYRING */, 0usize)
        };
    }
    if let Some(h) = spec.hostname() {
        if !h.is_empty() {
            nix::unistd::sethostname(h).ctx(|| format!("set hostname {h:?} (is there a uts namespace?)"))?;
        }
    }
    if let Some(d) = spec.domainname() {
        if !d.is_empty() {
            // SAFETY: pointer and length of a live byte slice.
            if unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) } != 0 {
                return Err(Error::Io {
                    what: format!("set domainname {d:?}"),
                    source: std::io::Error::last_os_error(),
                });
            }
        }
    }

    // 2. The root filesystem.
    let in_userns = ctx.new_flags.contains(CloneFlags::CLONE_NEWUSER)
        || linux
            .namespaces()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::User);
    let new_netns = linux
        .namespaces()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network && n.path().is_none());
    let propagation = match linux.rootfs_propagation().as_deref() {
        None | Some("") => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        Some(p) => propagation_flag(p).ok_or_else(|| Error::msg(format!("unknown rootfsPropagation {p:?}")))?,
    };
    mount(None::<&str>, "/", None::<&str>, propagation, None::<&str>).ctx(|| "set propagation of /")?;
    let rootfs = ctx.rootfs.clone();
    mount(Some(&rootfs), &rootfs, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .ctx(|| format!("bind mount rootfs {}", rootfs.display()))?;

    let mounts = spec.mounts().as_deref().unwrap_or_default();
    for m in mounts {
        mount_entry(&rootfs, &ctx.bundle, m, in_userns, new_netns)?;
    }
    // Resource limits (and the device cgroup's rules) are in place from here on.
    ctx.chan.expect(&Msg::Go)?;
    let dev_bound = mounts
        .iter()
        .any(|m| m.destination() == Path::new("/dev") && m.typ().as_deref().is_none_or(|t| t == "bind" || t == "none"));
    if !dev_bound {
        let devdir = rootfs.join("dev");
        if devdir.is_dir() {
            for d in DEFAULT_DEVICES {
                make_device(&rootfs, &d.to_device(), in_userns)?;
            }
            dev_symlinks(&devdir)?;
        }
    }
    for d in linux.devices().as_deref().unwrap_or_default() {
        make_device(&rootfs, d, in_userns)?;
    }

    // 3. Hooks that must see the container before pivot_root.
    let hooks = spec.hooks().as_ref();
    if ctx.runtime_hooks {
        ctx.chan.send(&Msg::HooksPlease)?;
        ctx.chan.expect(&Msg::Go)?;
    }
    let host_pid = host_pid();
    if let Some(h) = hooks.and_then(|h| h.create_container().as_ref()) {
        let kind = HookKind::CreateContainer;
        crate::hooks::run(h, kind.name(), &ctx.saved.hook_state_json(kind, host_pid))?;
    }

    // 4. Switch root.
    if ctx.no_pivot {
        chdir(&rootfs).ctx(|| "chdir into rootfs")?;
        mount(Some(&rootfs), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).ctx(|| "move rootfs to /")?;
        nix::unistd::chroot(".").ctx(|| "chroot into rootfs")?;
        chdir("/").ctx(|| "chdir /")?;
    } else {
        pivot(&rootfs)?;
    }

    // 5. Settings that need the container's /proc.
    for (k, v) in linux.sysctl().iter().flatten() {
        let p = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
        fs::write(&p, v.as_bytes()).ctx(|| format!("sysctl {k}={v} (is it namespaced?)"))?;
    }
    if let Some(console) = ctx.console.take() {
        setup_console(console, process, true)?;
    }
    for p in linux.masked_paths().as_deref().unwrap_or_default() {
        mask_path(Path::new(p))?;
    }
    for p in linux.readonly_paths().as_deref().unwrap_or_default() {
        readonly_path(Path::new(p))?;
    }
    if spec.root().as_ref().is_some_and(|r| r.readonly() == Some(true)) {
        let extra = locked_flags(Path::new("/"));
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | extra,
            None::<&str>,
        )
        .ctx(|| "make the root filesystem read-only")?;
    }

    // 6. The process.
    if let Some(adj) = process.oom_score_adj() {
        fs::write("/proc/self/oom_score_adj", adj.to_string())
            .ctx(|| format!("set oomScoreAdj {adj} (lowering it needs CAP_SYS_RESOURCE)"))?;
    }
    let prepared = prepare_exec(process)?;
    let seccomp = ctx.seccomp.as_ref();
    let nnp = process.no_new_privileges() == Some(true);
    finish_process(process, &ctx.attrs, seccomp, in_userns, ctx.preserve_fds, false)?;

    // 7. Ready: wait for start.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0) };
    ctx.chan.send(&Msg::Ready)?;
    let reply: Option<OwnedFd> = match &ctx.gate {
        StartGate::Chan => {
            ctx.chan.expect(&Msg::Go)?;
            None
        }
        StartGate::Listener(l) => Some(wait_for_start(l.as_fd())?),
    };
    let report = |e: Error| -> Result<Never> {
        if let Some(conn) = &reply {
            let _ = nix::unistd::write(conn.as_fd(), format!("E{e}").as_bytes());
        }
        Err(e)
    };
    if let Some(h) = hooks.and_then(|h| h.start_container().as_ref()) {
        let kind = HookKind::StartContainer;
        if let Err(e) = crate::hooks::run(h, kind.name(), &ctx.saved.hook_state_json(kind, host_pid)) {
            return report(e.into());
        }
    }
    if let (Some(s), true) = (seccomp, nnp) {
        if let Err(e) = crate::seccomp::load_filter(s) {
            return report(e.into());
        }
    }
    let e = prepared.exec();
    report(e)
}

/// User namespace with other namespaces to join: join first, then unshare the user
/// namespace, get mapped, unshare the rest, and fork the real init if a pid namespace
/// is new. Only the init returns from here.
fn two_stage(ctx: &mut InitCtx) -> Result<()> {
    // A user namespace to join goes first so the others are joined with its rights.
    ctx.joins.sort_by_key(|j| j.flag != CloneFlags::CLONE_NEWUSER);
    for j in &ctx.joins {
        setns(j.fd.as_fd(), j.flag).ctx(|| format!("join {} namespace", ns_name(j.flag)))?;
    }
    let new = ctx.new_flags;
    if new.contains(CloneFlags::CLONE_NEWUSER) {
        unshare(CloneFlags::CLONE_NEWUSER).ctx(|| "create user namespace")?;
        ctx.chan.send(&Msg::MapsPlease)?;
        ctx.chan.expect(&Msg::Go)?;
    }
    let rest = new - CloneFlags::CLONE_NEWUSER - CloneFlags::CLONE_NEWCGROUP;
    if !rest.is_empty() {
        unshare(rest).ctx(|| format!("create namespaces {rest:?}"))?;
    }
    if new.contains(CloneFlags::CLONE_NEWPID) {
        // The init must be a child to live in the new pid namespace.
        hand_over_to_child(&ctx.chan, "fork the init")?;
    }
    Ok(())
}

/// Forks a process that lives in the pid namespace we joined or created (setns/unshare
/// of a pid namespace only applies to children), with `CLONE_PARENT` so it is the
/// runtime's own child (a foreground `run`/`exec` waits for it). The calling process
/// reports the new pid on `chan` and exits; only the new process returns.
pub fn hand_over_to_child(chan: &Chan, what: &str) -> Result<()> {
    // SAFETY: a fork-like clone (no new stack, no CLONE_VM) of a single-threaded process.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(Error::Io { what: what.into(), source: std::io::Error::last_os_error() });
    }
    if pid > 0 {
        let _ = chan.send(&Msg::InitPid(pid as i32));
        // SAFETY: the intermediate process is done; leave without the parent's exit handlers.
        unsafe { libc::_exit(0) }
    }
    Ok(())
}

fn ns_name(f: CloneFlags) -> &'static str {
    match f {
        CloneFlags::CLONE_NEWNS => "mount",
        CloneFlags::CLONE_NEWUTS => "uts",
        CloneFlags::CLONE_NEWIPC => "ipc",
        CloneFlags::CLONE_NEWNET => "network",
        CloneFlags::CLONE_NEWPID => "pid",
        CloneFlags::CLONE_NEWUSER => "user",
        CloneFlags::CLONE_NEWCGROUP => "cgroup",
        _ => "unknown",
    }
}

/// Our pid as the host sees it: before pivot_root, /proc is still the host's.
fn host_pid() -> i32 {
    fs::read_link("/proc/self").ok().and_then(|p| p.to_str().and_then(|s| s.parse().ok())).unwrap_or(0)
}

fn wait_for_start(listener: BorrowedFd) -> Result<OwnedFd> {
    loop {
        // SAFETY: accept4 on a listening socket we own, no address wanted.
        let fd = unsafe {
            libc::accept4(listener.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC)
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::Io { what: "wait for start".into(), source: e });
        }
        // SAFETY: accept4 returned a new fd that nothing else owns.
        let conn = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut b = [0u8; 1];
        if matches!(nix::unistd::read(conn.as_raw_fd(), &mut b), Ok(1)) && b[0] == b'S' {
            return Ok(conn);
        }
    }
}
