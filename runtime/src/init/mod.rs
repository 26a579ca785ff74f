//! Everything that happens inside the new container before the user's process is
//! exec'ed: namespaces to join, hostname, the root filesystem and its mounts, devices,
//! pivot_root, masked and read-only paths, sysctls, the console, rlimits, user and
//! capabilities, no_new_privs, seccomp, and finally execve.
//!
//! This code runs in a forked copy of the (single-threaded) runtime. Errors are sent
//! to the parent as one line over the sync channel; the parent prints them.

pub mod attrs;
mod copyup;
mod devices;
mod exec;
mod fds;
mod inroot;
mod mountopts;
mod mounts;
mod terminal;

use devices::{dev_symlinks, make_device, DEFAULT_DEVICES};
pub use exec::{finish_process, prepare_exec, Prepared};
pub use fds::{close_all_but, close_range_cloexec, set_non_dumpable};
pub use inroot::unmount_under;
use inroot::{locked_flags, InRoot};
use mountopts::propagation_flag;
use mounts::{mask_path, mount_entry, pivot, readonly_path, MountCtx};
pub use terminal::exec_console;
use terminal::setup_console;

use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
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
    /// `--systemd-cgroup`: wait for `Go` (systemd has moved us into the scope) first.
    pub wait_for_cgroup: bool,
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
    let r = disarm(&ctx).and_then(|()| setup(&mut ctx));
    let msg = match r {
        Ok(never) => match never {},
        Err(e) => e.to_string(),
    };
    let _ = ctx.chan.send(&Msg::Err(msg));
    // SAFETY: _exit is always safe; we must not run atexit handlers of the parent's copy.
    unsafe { libc::_exit(1) }
}

enum Never {}

/// First thing after the clone, before any path is resolved: nothing of the host stays
/// open but what the init needs, and no process of the container can look into the init
/// (see `fds.rs`).
fn disarm(ctx: &InitCtx) -> Result<()> {
    fds::set_non_dumpable()?;
    crate::log::forward_to_parent(ctx.chan.0.as_raw_fd());
    let mut keep: Vec<RawFd> = (3..3 + ctx.preserve_fds).collect();
    keep.push(ctx.chan.0.as_raw_fd());
    if let StartGate::Listener(l) = &ctx.gate {
        keep.push(l.as_raw_fd());
    }
    if let Some(c) = &ctx.console {
        keep.push(c.as_raw_fd());
    }
    keep.extend(ctx.joins.iter().map(|j| j.fd.as_raw_fd()));
    fds::close_all_but(&keep)
}

fn setup(ctx: &mut InitCtx) -> Result<Never> {
    // Die with the runtime while it is setting us up; cleared once we are ready.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    umask(Mode::empty());
    if ctx.wait_for_cgroup {
        ctx.chan.expect(&Msg::Go)?;
    }
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
    // Without a mount namespace the container shares the host's mount table: it is only
    // chroot'ed into its rootfs (as runc does), its spec mounts land in the host's table
    // under the rootfs (`delete` removes them), and nothing may change the host's mounts.
    let own_mntns = linux
        .namespaces()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Mount);
    let requested = match linux.rootfs_propagation().as_deref() {
        None | Some("") => None,
        Some(p) => Some(propagation_flag(p).ok_or_else(|| Error::msg(format!("unknown rootfsPropagation {p:?}")))?),
    };
    let rootfs = ctx.rootfs.clone();
    if own_mntns {
        // Propagation: what the spec asks for (rslave by default) on the whole tree, then
        // the mount holding the rootfs made private, so that on a host whose mounts are
        // shared (systemd's) nothing the container mounts from here on propagates back to
        // the host, and pivot_root (which refuses a shared parent) works. The requested
        // propagation is applied to the container's own root at the end (as runc does;
        // unbindable only then: the binds of the setup need bindable sources).
        let before = match requested {
            None => MsFlags::MS_SLAVE | MsFlags::MS_REC,
            Some(p) if p.contains(MsFlags::MS_UNBINDABLE) => (p - MsFlags::MS_UNBINDABLE) | MsFlags::MS_PRIVATE,
            Some(p) => p,
        };
        mount(None::<&str>, "/", None::<&str>, before, None::<&str>).ctx(|| "set propagation of /")?;
        mounts::make_parent_mount_private(&rootfs)?;
        mount(Some(&rootfs), &rootfs, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .ctx(|| format!("bind mount rootfs {}", rootfs.display()))?;
    } else {
        refuse_without_mntns(spec)?;
    }

    let root = InRoot::open(&rootfs)?;
    let mounts = spec.mounts().as_deref().unwrap_or_default();
    let mc = MountCtx { root: &root, bundle: &ctx.bundle, in_userns, new_netns };
    for m in mounts {
        mount_entry(&mc, m)?;
    }
    // A missing working directory is created, as runc does (Kubernetes' workingDir).
    root.dir(process.cwd()).map_err(|e| Error::msg(format!("cwd {}: {e}", process.cwd().display())))?;
    // Resource limits (and the device cgroup's rules) are in place from here on.
    ctx.chan.expect(&Msg::Go)?;
    let dev_bound = mounts
        .iter()
        .any(|m| m.destination() == Path::new("/dev") && m.typ().as_deref().is_none_or(|t| t == "bind" || t == "none"));
    if !dev_bound {
        let dev = root.find(Path::new("/dev"))?.filter(|d| {
            nix::sys::stat::fstat(d.as_raw_fd()).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
        });
        if let Some(dev) = dev {
            for d in DEFAULT_DEVICES {
                make_device(&root, &d.to_device(), in_userns)?;
            }
            dev_symlinks(&dev)?;
        }
    }
    for d in linux.devices().as_deref().unwrap_or_default() {
        make_device(&root, d, in_userns)?;
    }
    drop(root);

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
    if !own_mntns {
        chdir(&rootfs).ctx(|| "chdir into rootfs")?;
        nix::unistd::chroot(".").ctx(|| "chroot into rootfs")?;
        chdir("/").ctx(|| "chdir /")?;
    } else if ctx.no_pivot {
        chdir(&rootfs).ctx(|| "chdir into rootfs")?;
        mount(Some(&rootfs), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).ctx(|| "move rootfs to /")?;
        nix::unistd::chroot(".").ctx(|| "chroot into rootfs")?;
        chdir("/").ctx(|| "chdir /")?;
    } else {
        pivot(&rootfs)?;
    }
    let root = InRoot::open(Path::new("/"))?;

    // 5. Settings that need the container's /proc.
    write_sysctls(linux)?;
    if let Some(console) = ctx.console.take() {
        setup_console(console, process, Some(&root))?;
    }
    let mut null = None;
    for p in linux.masked_paths().as_deref().unwrap_or_default() {
        mask_path(&root, Path::new(p), &mut null)?;
    }
    drop(null);
    for p in linux.readonly_paths().as_deref().unwrap_or_default() {
        readonly_path(&root, Path::new(p))?;
    }
    drop(root);
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
    // The requested propagation on the container's own root, once nothing more is bound.
    if let Some(p) = requested {
        mount(None::<&str>, "/", None::<&str>, p, None::<&str>)
            .ctx(|| "set rootfsPropagation of the container's root")?;
    }

    // 6. The process.
    // (oomScoreAdj is written by the runtime, through the host's /proc: container::create.)
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

/// Sysctls, written through a procfs instance of our own (pathrs: detached, so no mount
/// in the container can redirect the write to another file, CVE-2025-52881).
fn write_sysctls(linux: &oci_spec::runtime::Linux) -> Result<()> {
    use pathrs::flags::OpenFlags;
    use pathrs::procfs::{ProcfsBase, ProcfsHandleBuilder};
    use std::io::Write;
    let Some(sysctls) = linux.sysctl().as_ref().filter(|s| !s.is_empty()) else { return Ok(()) };
    let proc = ProcfsHandleBuilder::new()
        .unmasked()
        .build()
        .map_err(|e| Error::msg(format!("open a procfs for the sysctls: {e}")))?;
    for (k, v) in sysctls {
        let what = || format!("sysctl {k}={v} (is it namespaced?)");
        let mut f = proc
            .open(
                ProcfsBase::ProcRoot,
                format!("sys/{}", k.replace('.', "/")),
                OpenFlags::O_WRONLY | OpenFlags::O_CLOEXEC,
            )
            .map_err(|e| Error::msg(format!("{}: {e}", what())))?;
        f.write_all(v.as_bytes()).ctx(what)?;
    }
    Ok(())
}

/// Without a mount namespace, what would change the host's mounts is refused.
fn refuse_without_mntns(spec: &Spec) -> Result<()> {
    let linux = spec.linux().as_ref();
    let need = |what: &str| {
        Err(Error::msg(format!(
            "{what} needs a mount namespace (without one the host's mounts would change): add {{\"type\": \"mount\"}} \
             to linux.namespaces"
        )))
    };
    if linux.and_then(|l| l.rootfs_propagation().as_deref()).is_some_and(|p| !p.is_empty()) {
        return need("rootfsPropagation");
    }
    if linux.and_then(|l| l.masked_paths().as_ref()).is_some_and(|p| !p.is_empty())
        || linux.and_then(|l| l.readonly_paths().as_ref()).is_some_and(|p| !p.is_empty())
    {
        return need("maskedPaths/readonlyPaths");
    }
    if spec.root().as_ref().is_some_and(|r| r.readonly() == Some(true)) {
        return need("root.readonly");
    }
    Ok(())
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
