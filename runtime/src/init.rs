//! Everything that happens inside the new container before the user's process is
//! exec'ed: namespaces to join, hostname, the root filesystem and its mounts, devices,
//! pivot_root, masked and read-only paths, sysctls, the console, rlimits, user and
//! capabilities, no_new_privs, seccomp, and finally execve.
//!
//! This code runs in a forked copy of the (single-threaded) runtime. Errors are sent
//! to the parent as one line over the sync channel; the parent prints them.

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::stat::{makedev, mknod, umask, Mode, SFlag};
use nix::unistd::{chdir, chown, Gid, Uid};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, PosixRlimitType, Process, Spec};

use crate::error::{Context, Error, Result};
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
    /// State JSON template for createContainer/startContainer hooks ("{pid}" replaced).
    pub hook_state: String,
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
        let state = ctx.hook_state.replace("\"pid\":0", &format!("\"pid\":{host_pid}"));
        crate::hooks::run(h, "createContainer", &state)?;
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
    let seccomp = linux.seccomp().as_ref();
    let nnp = process.no_new_privileges() == Some(true);
    finish_process(process, seccomp, in_userns, ctx.preserve_fds, false)?;

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
        let state = ctx
            .hook_state
            .replace("\"pid\":0", &format!("\"pid\":{host_pid}"))
            .replace("\"status\":\"creating\"", "\"status\":\"created\"");
        if let Err(e) = crate::hooks::run(h, "startContainer", &state) {
            return report(e.into());
        }
    }
    if let (Some(s), true) = (seccomp, nnp) {
        if let Err(e) = crate::seccomp::load(s) {
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

// ---------------------------------------------------------------- mounts

/// Resolves `unsafe_path` inside `root` the way the container will see it: symlinks
/// are followed relative to `root` and `..` never climbs above it.
pub fn secure_join(root: &Path, unsafe_path: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    let mut todo: Vec<std::ffi::OsString> = unsafe_path.components().rev().filter_map(|c| comp(c)).collect();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            out.pop();
            continue;
        }
        let cand = out.join(&c);
        let full = root.join(&cand);
        match fs::symlink_metadata(&full) {
            Ok(md) if md.file_type().is_symlink() => {
                links += 1;
                if links > 255 {
                    return Err(Error::msg(format!("too many symlinks resolving {}", unsafe_path.display())));
                }
                let target = fs::read_link(&full).ctx(|| format!("readlink {}", full.display()))?;
                if target.is_absolute() {
                    out = PathBuf::new();
                }
                for t in target.components().rev().filter_map(|c| comp(c)) {
                    todo.push(t);
                }
            }
            _ => out = cand,
        }
    }
    Ok(root.join(out))
}

fn comp(c: Component) -> Option<std::ffi::OsString> {
    match c {
        Component::Normal(s) => Some(s.to_os_string()),
        Component::ParentDir => Some("..".into()),
        _ => None,
    }
}

struct MountOpts {
    flags: MsFlags,
    clear: MsFlags,
    propagation: Vec<MsFlags>,
    data: Vec<String>,
    bind: bool,
    rec: bool,
}

fn parse_options(opts: &[String]) -> MountOpts {
    let mut o = MountOpts {
        flags: MsFlags::empty(),
        clear: MsFlags::empty(),
        propagation: Vec::new(),
        data: Vec::new(),
        bind: false,
        rec: false,
    };
    for s in opts {
        let (set, clr) = match s.as_str() {
            "ro" | "rdonly" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => {
                o.bind = true;
                continue;
            }
            "rbind" => {
                o.bind = true;
                o.rec = true;
                continue;
            }
            "tmpcopyup" | "idmap" | "ridmap" => continue,
            p => {
                if let Some(f) = propagation_flag(p) {
                    o.propagation.push(f);
                } else {
                    o.data.push(p.to_string());
                }
                continue;
            }
        };
        o.flags |= set;
        o.flags -= clr;
        o.clear |= clr;
    }
    o
}

fn propagation_flag(p: &str) -> Option<MsFlags> {
    Some(match p {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// Flags of the mount at `p` that a bind remount must keep (the kernel refuses to
/// clear locked flags inside a user namespace).
fn locked_flags(p: &Path) -> MsFlags {
    let Ok(st) = nix::sys::statvfs::statvfs(p) else { return MsFlags::empty() };
    use nix::sys::statvfs::FsFlags as F;
    let f = st.flags();
    let mut m = MsFlags::empty();
    for (a, b) in [
        (F::ST_NOSUID, MsFlags::MS_NOSUID),
        (F::ST_NODEV, MsFlags::MS_NODEV),
        (F::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (F::ST_NOATIME, MsFlags::MS_NOATIME),
        (F::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (F::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(a) {
            m |= b;
        }
    }
    m
}

fn mount_entry(rootfs: &Path, bundle: &Path, m: &Mount, in_userns: bool, new_netns: bool) -> Result<()> {
    let typ = m.typ().as_deref().unwrap_or("");
    let o = parse_options(m.options().as_deref().unwrap_or_default());
    let dest = secure_join(rootfs, m.destination())?;
    let what = || format!("mount {} on {}", typ_or_bind(typ, o.bind), m.destination().display());
    let bind = o.bind || typ == "bind";
    if typ == "cgroup" || typ == "cgroup2" {
        return mount_cgroup(&dest, &o, typ == "cgroup2");
    }
    if bind {
        let src = match m.source() {
            Some(s) if s.is_absolute() => s.clone(),
            Some(s) => bundle.join(s),
            None => return Err(Error::msg(format!("{}: a bind mount needs a source", what()))),
        };
        let md = fs::metadata(&src).ctx(|| format!("{}: source {}", what(), src.display()))?;
        make_mountpoint(&dest, md.is_dir())?;
        bind_mount(&src, &dest, &o).ctx(what)?;
    } else {
        make_mountpoint(&dest, true)?;
        let data = o.data.join(",");
        let src = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
        let r = mount(Some(&src), &dest, Some(typ), o.flags, (!data.is_empty()).then_some(data.as_str()));
        match r {
            Ok(()) => {}
            // Without its own network namespace a container may not mount sysfs (and
            // in a user namespace neither mqueue without its own ipc ns): bind the
            // host's instead, as runc does.
            Err(nix::Error::EPERM | nix::Error::EBUSY)
                if typ == "sysfs" && (in_userns || !new_netns) || typ == "mqueue" =>
            {
                let src = if typ == "sysfs" { "/sys" } else { "/dev/mqueue" };
                let mut bo = parse_options(m.options().as_deref().unwrap_or_default());
                bo.rec = true;
                bind_mount(Path::new(src), &dest, &bo).ctx(what)?;
            }
            Err(e) => return Err(Error::Sys { what: what(), source: e }),
        }
    }
    for p in &o.propagation {
        mount(None::<&str>, &dest, None::<&str>, *p, None::<&str>).ctx(|| format!("{}: propagation", what()))?;
    }
    Ok(())
}

fn typ_or_bind(typ: &str, bind: bool) -> &str {
    if bind {
        "bind"
    } else if typ.is_empty() {
        "none"
    } else {
        typ
    }
}

fn bind_mount(src: &Path, dest: &Path, o: &MountOpts) -> nix::Result<()> {
    let rec = if o.rec { MsFlags::MS_REC } else { MsFlags::empty() };
    mount(Some(src), dest, None::<&str>, MsFlags::MS_BIND | rec, None::<&str>)?;
    let wanted = o.flags - MsFlags::MS_REMOUNT;
    if !wanted.is_empty() || !o.clear.is_empty() {
        let keep = locked_flags(dest) - o.clear;
        mount(
            None::<&str>,
            dest,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | rec | wanted | keep,
            None::<&str>,
        )?;
    }
    Ok(())
}

fn make_mountpoint(dest: &Path, dir: bool) -> Result<()> {
    if dir {
        if !dest.is_dir() {
            fs::create_dir_all(dest).ctx(|| format!("create mount point {}", dest.display()))?;
        }
    } else if fs::symlink_metadata(dest).is_err() {
        if let Some(p) = dest.parent() {
            fs::create_dir_all(p).ctx(|| format!("create {}", p.display()))?;
        }
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(dest)
            .ctx(|| format!("create mount point {}", dest.display()))?;
    }
    Ok(())
}

/// `type: cgroup` in the spec: on cgroup v2 the cgroup2 filesystem; on v1 and hybrid
/// hosts a tmpfs with one mount per hierarchy, as runc does. Each shows the container's
/// own cgroup as its root: by itself inside a cgroup namespace, else by a bind mount of
/// that directory over the hierarchy (podman on v1 and containerd use the host's namespace).
fn mount_cgroup(dest: &Path, o: &MountOpts, want_v2: bool) -> Result<()> {
    make_mountpoint(dest, true)?;
    let base = o.flags & (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RELATIME);
    let ro = o.flags & MsFlags::MS_RDONLY;
    let unified = nix::sys::statfs::statfs("/sys/fs/cgroup")
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false);
    // Our own cgroup in each hierarchy: "/" inside a cgroup namespace, the full path
    // without one (then we bind that directory, as runc does, so that the container sees
    // its own limits, not the host's root).
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let own_path = |controllers: &[&str]| -> Option<String> {
        own.lines().find_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, ctrls, path) = (it.next()?, it.next()?, it.next()?);
            let matches = if controllers.is_empty() {
                ctrls.is_empty()
            } else {
                !ctrls.is_empty() && ctrls.split(',').all(|c| controllers.contains(&c))
            };
            (matches && path != "/").then(|| path.to_string())
        })
    };
    let narrow = |sub: &Path, path: Option<String>| -> Result<()> {
        let Some(path) = path else { return Ok(()) };
        let src = sub.join(path.trim_start_matches('/'));
        mount(Some(&src), sub, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .ctx(|| format!("bind the container's cgroup {path} on {}", sub.display()))?;
        mount(None::<&str>, sub, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | base | ro, None::<&str>)
            .ctx(|| format!("remount {}", sub.display()))
    };
    if unified || want_v2 {
        mount(Some("cgroup2"), dest, Some("cgroup2"), base | ro, None::<&str>)
            .ctx(|| format!("mount cgroup2 on {}", dest.display()))?;
        return narrow(dest, own_path(&[]));
    }
    mount(Some("tmpfs"), dest, Some("tmpfs"), base, Some("mode=755"))
        .ctx(|| format!("mount tmpfs on {}", dest.display()))?;
    let info = fs::read_to_string("/proc/self/mountinfo").ctx(|| "read /proc/self/mountinfo")?;
    for line in info.lines() {
        let Some((pre, post)) = line.split_once(" - ") else { continue };
        let mut post = post.split(' ');
        let fstype = post.next().unwrap_or("");
        let _src = post.next();
        let superopts = post.next().unwrap_or("");
        let mountpoint = pre.split(' ').nth(4).unwrap_or("");
        let Some(name) = mountpoint.strip_prefix("/sys/fs/cgroup/") else { continue };
        if name.contains('/') {
            continue;
        }
        let sub = dest.join(name);
        fs::create_dir_all(&sub).ctx(|| format!("create {}", sub.display()))?;
        let data: Vec<&str> = superopts.split(',').filter(|s| *s != "rw" && *s != "ro").collect();
        let (r, path) = match fstype {
            "cgroup" => {
                (mount(Some("cgroup"), &sub, Some("cgroup"), base | ro, Some(data.join(",").as_str())), own_path(&data))
            }
            "cgroup2" => (mount(Some("cgroup2"), &sub, Some("cgroup2"), base | ro, None::<&str>), own_path(&[])),
            _ => continue,
        };
        r.ctx(|| format!("mount cgroup {name} on {}", sub.display()))?;
        narrow(&sub, path)?;
    }
    if !ro.is_empty() {
        mount(None::<&str>, dest, None::<&str>, MsFlags::MS_REMOUNT | base | ro, Some("mode=755"))
            .ctx(|| format!("remount {} read-only", dest.display()))?;
    }
    Ok(())
}

fn pivot(rootfs: &Path) -> Result<()> {
    chdir(rootfs).ctx(|| "chdir into rootfs")?;
    nix::unistd::pivot_root(".", ".").ctx(|| "pivot_root (use --no-pivot on a ramdisk root)")?;
    // The old root is now stacked under the new one at "."; detach it without
    // propagating the unmount to the host.
    mount(None::<&str>, ".", None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>)
        .ctx(|| "make the old root a slave")?;
    umount2(".", MntFlags::MNT_DETACH).ctx(|| "detach the old root")?;
    chdir("/").ctx(|| "chdir /")
}

fn mask_path(p: &Path) -> Result<()> {
    let md = match fs::metadata(p) {
        Ok(md) => md,
        Err(_) => return Ok(()),
    };
    let r = if md.is_dir() {
        mount(Some("tmpfs"), p, Some("tmpfs"), MsFlags::MS_RDONLY, Some("size=0"))
    } else {
        mount(Some("/dev/null"), p, None::<&str>, MsFlags::MS_BIND, None::<&str>)
    };
    match r {
        Ok(()) | Err(nix::Error::ENOENT) => Ok(()),
        Err(e) => Err(Error::Sys { what: format!("mask {}", p.display()), source: e }),
    }
}

fn readonly_path(p: &Path) -> Result<()> {
    match mount(Some(p), p, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>) {
        Ok(()) => {}
        Err(nix::Error::ENOENT) => return Ok(()),
        Err(e) => return Err(Error::Sys { what: format!("make {} read-only", p.display()), source: e }),
    }
    let keep = locked_flags(p);
    mount(
        None::<&str>,
        p,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC | keep,
        None::<&str>,
    )
    .ctx(|| format!("make {} read-only", p.display()))
}

// ---------------------------------------------------------------- devices

struct DefDev {
    path: &'static str,
    major: i64,
    minor: i64,
}

const DEFAULT_DEVICES: &[DefDev] = &[
    DefDev { path: "/dev/null", major: 1, minor: 3 },
    DefDev { path: "/dev/zero", major: 1, minor: 5 },
    DefDev { path: "/dev/full", major: 1, minor: 7 },
    DefDev { path: "/dev/random", major: 1, minor: 8 },
    DefDev { path: "/dev/urandom", major: 1, minor: 9 },
    DefDev { path: "/dev/tty", major: 5, minor: 0 },
];

impl DefDev {
    fn to_device(&self) -> LinuxDevice {
        let mut d = LinuxDevice::default();
        d.set_path(PathBuf::from(self.path));
        d.set_typ(LinuxDeviceType::C);
        d.set_major(self.major);
        d.set_minor(self.minor);
        d.set_file_mode(Some(0o666));
        d.set_uid(Some(0));
        d.set_gid(Some(0));
        d
    }
}

fn make_device(rootfs: &Path, d: &LinuxDevice, in_userns: bool) -> Result<()> {
    let dest = secure_join(rootfs, d.path())?;
    if let Some(p) = dest.parent() {
        fs::create_dir_all(p).ctx(|| format!("create {}", p.display()))?;
    }
    if in_userns {
        // mknod is not allowed in a user namespace: bind the host's node instead.
        make_mountpoint(&dest, false)?;
        return mount(Some(d.path()), &dest, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .ctx(|| format!("bind device {}", d.path().display()));
    }
    let kind = match d.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
        LinuxDeviceType::B => SFlag::S_IFBLK,
        LinuxDeviceType::P => SFlag::S_IFIFO,
        LinuxDeviceType::A => {
            return Err(Error::msg(format!("device {}: type \"a\" cannot be created", d.path().display())))
        }
    };
    let mode = Mode::from_bits_truncate(d.file_mode().unwrap_or(0o666) as libc::mode_t);
    let _ = fs::remove_file(&dest);
    mknod(&dest, kind, mode, makedev(d.major() as u64, d.minor() as u64))
        .ctx(|| format!("create device {}", d.path().display()))?;
    chown(&dest, d.uid().map(Uid::from_raw), d.gid().map(Gid::from_raw))
        .ctx(|| format!("chown device {}", d.path().display()))?;
    Ok(())
}

fn dev_symlinks(devdir: &Path) -> Result<()> {
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let p = devdir.join(link);
        if fs::symlink_metadata(&p).is_ok() {
            if link != "ptmx" {
                continue;
            }
            let _ = fs::remove_file(&p);
        }
        symlink(target, &p).ctx(|| format!("symlink /dev/{link}"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------- console

/// The terminal of an `exec`ed process.
pub fn exec_console(sock: OwnedFd, process: &Process) -> Result<()> {
    setup_console(sock, process, false)
}

fn setup_console(sock: OwnedFd, process: &Process, bind_console: bool) -> Result<()> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .ctx(|| "open /dev/ptmx (is /dev/pts mounted?)")?;
    nix::pty::grantpt(&master).ctx(|| "grantpt")?;
    nix::pty::unlockpt(&master).ctx(|| "unlockpt")?;
    let name = nix::pty::ptsname_r(&master).ctx(|| "ptsname")?;
    if let Some(size) = process.console_size() {
        let ws =
            libc::winsize { ws_row: size.height() as u16, ws_col: size.width() as u16, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads a winsize struct we own.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    let slave = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&name)
        .ctx(|| format!("open {name}"))?;
    // /dev/console is the terminal, as runc does.
    if bind_console && Path::new("/dev").is_dir() {
        let _ = make_mountpoint(Path::new("/dev/console"), false);
        let _ = mount(Some(name.as_str()), "/dev/console", None::<&str>, MsFlags::MS_BIND, None::<&str>);
    }
    crate::console::send_fd(sock.as_fd(), master.as_fd(), &name)?;
    for target in 0..3 {
        nix::unistd::dup2(slave.as_raw_fd(), target).ctx(|| "attach the terminal to stdio")?;
    }
    // SAFETY: TIOCSCTTY on our stdin, which now is the terminal.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
        return Err(Error::Io {
            what: "make the terminal controlling".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------- the process

/// rlimits, seccomp (early when no_new_privs is off: loading it then needs
/// CAP_SYS_ADMIN), user and capabilities, no_new_privs, umask, cwd, and fds. With
/// `late_seccomp`, a no_new_privs filter is loaded here too (exec); otherwise the
/// init loads it after `start`, just before execve.
pub fn finish_process(
    process: &Process,
    seccomp: Option<&oci_spec::runtime::LinuxSeccomp>,
    in_userns: bool,
    preserve_fds: i32,
    late_seccomp: bool,
) -> Result<()> {
    set_rlimits(process)?;
    let nnp = process.no_new_privileges() == Some(true);
    if let (Some(s), false) = (seccomp, nnp) {
        crate::seccomp::load(s)?;
    }
    crate::process::set_user_and_caps(process, in_userns)?;
    if nnp {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(Error::Io { what: "set no_new_privs".into(), source: std::io::Error::last_os_error() });
        }
    }
    let mask = process.user().umask().unwrap_or(0o022);
    umask(Mode::from_bits_truncate(mask as libc::mode_t));
    let cwd = process.cwd();
    chdir(cwd).ctx(|| format!("chdir to cwd {} (does it exist in the container?)", cwd.display()))?;
    close_range_cloexec(3 + preserve_fds);
    if let (Some(s), true, true) = (seccomp, nnp, late_seccomp) {
        crate::seccomp::load(s)?;
    }
    Ok(())
}

fn set_rlimits(process: &Process) -> Result<()> {
    for r in process.rlimits().as_deref().unwrap_or_default() {
        let res = rlimit_resource(r.typ());
        let lim = libc::rlimit { rlim_cur: r.soft(), rlim_max: r.hard() };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(res as _, &lim) } != 0 {
            return Err(Error::Io {
                what: format!(
                    "set {:?} to soft {} hard {} (above the runtime's hard limit?)",
                    r.typ(),
                    r.soft(),
                    r.hard()
                ),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

fn rlimit_resource(t: PosixRlimitType) -> libc::c_int {
    use PosixRlimitType as T;
    (match t {
        T::RlimitCpu => libc::RLIMIT_CPU,
        T::RlimitFsize => libc::RLIMIT_FSIZE,
        T::RlimitData => libc::RLIMIT_DATA,
        T::RlimitStack => libc::RLIMIT_STACK,
        T::RlimitCore => libc::RLIMIT_CORE,
        T::RlimitRss => libc::RLIMIT_RSS,
        T::RlimitNproc => libc::RLIMIT_NPROC,
        T::RlimitNofile => libc::RLIMIT_NOFILE,
        T::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        T::RlimitAs => libc::RLIMIT_AS,
        T::RlimitLocks => libc::RLIMIT_LOCKS,
        T::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        T::RlimitNice => libc::RLIMIT_NICE,
        T::RlimitRtprio => libc::RLIMIT_RTPRIO,
        T::RlimitRttime => libc::RLIMIT_RTTIME,
    }) as libc::c_int
}

/// The program, argv and environment, resolved before `Ready` so that `create`
/// fails (not `start`) when the program does not exist.
pub struct Prepared {
    path: CString,
    args: Vec<CString>,
    env: Vec<CString>,
}

pub fn prepare_exec(process: &Process) -> Result<Prepared> {
    let args = process.args().as_deref().unwrap_or_default();
    let argv0 = args.first().ok_or_else(|| Error::msg("process.args is empty"))?;
    let mut env: Vec<String> = process.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", home_of(process.user().uid())));
    }
    let path_var = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let path = lookup(argv0, path_var, process.cwd())?;
    let cs = |s: &str| CString::new(s).map_err(|_| Error::msg(format!("NUL byte in {s:?}")));
    Ok(Prepared {
        path: CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::msg("NUL byte in program path"))?,
        args: args.iter().map(|a| cs(a)).collect::<Result<_>>()?,
        env: env.iter().map(|e| cs(e)).collect::<Result<_>>()?,
    })
}

impl Prepared {
    pub fn exec(&self) -> Error {
        // The runtime ignores SIGPIPE (Rust's default) and may block signals; the
        // container's process must start with default dispositions and no mask.
        // SAFETY: resetting a disposition to SIG_DFL and emptying the mask.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        }
        match nix::unistd::execve(&self.path, &self.args, &self.env) {
            Err(e) => Error::Sys { what: format!("exec {:?}", self.path), source: e },
            Ok(never) => match never {},
        }
    }
}

fn lookup(argv0: &str, path_var: &str, cwd: &Path) -> Result<PathBuf> {
    let is_exec = |p: &Path| {
        fs::metadata(p).map(|m| m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0)
    };
    if argv0.contains('/') {
        let p = if argv0.starts_with('/') { PathBuf::from(argv0) } else { cwd.join(argv0) };
        return match is_exec(&p) {
            Ok(true) => Ok(p),
            Ok(false) => Err(Error::msg(format!("exec: {argv0:?}: permission denied (not an executable file)"))),
            Err(_) => Err(Error::msg(format!("exec: {argv0:?}: no such file or directory in the container"))),
        };
    }
    for dir in path_var.split(':') {
        let d = if dir.is_empty() { Path::new(".") } else { Path::new(dir) };
        let p = d.join(argv0);
        if let Ok(true) = is_exec(&p) {
            return Ok(p);
        }
    }
    Err(Error::msg(format!("exec: {argv0:?}: executable file not found in $PATH")))
}

fn home_of(uid: u32) -> String {
    if let Ok(pw) = fs::read_to_string("/etc/passwd") {
        for line in pw.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid) {
                return f[5].to_string();
            }
        }
    }
    "/".to_string()
}

/// Marks every fd from `from` up close-on-exec, so only stdio and --preserve-fds
/// reach the container.
pub fn close_range_cloexec(from: i32) {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on our own fds.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            from as libc::c_uint,
            libc::c_uint::MAX,
            4u32, /* CLOSE_RANGE_CLOEXEC */
        )
    };
    if r != 0 {
        // Older kernels: walk /proc/self/fd.
        if let Ok(rd) = fs::read_dir("/proc/self/fd") {
            let fds: Vec<RawFd> = rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
            for fd in fds.into_iter().filter(|&f| f >= from) {
                // SAFETY: setting FD_CLOEXEC on an fd number; harmless if it was closed.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
        }
    }
}

/// For code paths that only have a raw fd from an earlier step.
pub fn borrow(fd: &OwnedFd) -> BorrowedFd<'_> {
    fd.as_fd()
}
