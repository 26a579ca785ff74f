//! `skiff agent`: keeps the services of the manifest running.
//!
//! ```text
//! manifest file ──(watch.rs: inotify, SIGHUP)──► reconcile.rs ──► replica.rs ──► oci.rs ──► runtime CLI
//!                                                  ▲    │                  └──► `skiff shim` (crate::shim)
//!                          health.rs (exec) ───────┘    └──► status.rs ──(watch channel)──► http.rs
//! ```
//!
//! The agent is one tokio current-thread runtime: one task owns the state (reconcile.rs), the
//! rest are small tasks that report back. Containers do not depend on the agent: each has a
//! `skiff shim` holding its stdio and exit status, so the agent can die, be upgraded or be
//! restarted at any time; the next one adopts what runs. See ARCHITECTURE.md.

pub mod cgstats;
pub mod control;
pub mod devices;
pub mod fds;
pub mod grants;
pub mod health;
pub mod http;
pub mod netns;
pub mod network;
pub mod notify;
pub mod oci;
pub mod paths;
pub mod ports;
pub mod proc;
pub mod reconcile;
pub mod replica;
pub mod revisions;
pub mod status;
pub mod watch;

use std::fs;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch as wch};

use self::oci::Runtime;
use self::paths::Paths;
use self::reconcile::{log, Agent, Event};
use self::status::Snapshot;

/// What `skiff agent` needs.
pub struct Options {
    pub root: PathBuf,
    pub manifest: PathBuf,
    pub listen: SocketAddr,
    pub runtime: PathBuf,
    /// `--no-bridge`: bridge-mode services get loopback only.
    pub no_bridge: bool,
    /// `--bridge`, `--subnet`: the bridge network where the manifest's `x-skiff` says nothing.
    pub network: crate::manifest::NetworkSettings,
}

/// Runs the agent until SIGTERM/SIGINT. Containers keep running when it returns.
pub fn run(o: Options) -> Result<i32> {
    // First: the proxies' share of fds (ports.rs) is sized from the raised limit.
    let nofile = fds::raise_nofile();
    let paths = Paths::new(&o.root);
    // 0700 (created so, or narrowed from an older skiff's 0755) before anything else is made.
    paths.make_private()?;
    let _lock = lock(&paths)?;
    let pid_file = paths.agent_pid();
    skiff_images::fsutil::write_atomic(&paths.run, &pid_file, format!("{}\n", std::process::id()).as_bytes())
        .with_context(|| format!("writing {}", pid_file.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(8)
        .thread_stack_size(512 << 10)
        .build()
        .context("starting the async runtime")?;
    let res = rt.block_on(main_loop(o, paths.clone(), nofile));
    let _ = fs::remove_file(&pid_file);
    // Background tasks (a pull, a stop in progress) are dropped here; the next agent picks up.
    rt.shutdown_timeout(Duration::from_millis(200));
    res
}

/// One agent per root: an exclusive flock on `<run>/agent.lock` (0600 in the 0700 run
/// directory: flock works on a read-only fd, so whoever can open it can keep the agent from
/// starting), held for the agent's life.
///
/// An older skiff left the file 0644, and a local user may have opened it then and still hold
/// it: a lock held only by processes that are not root's (or are gone, the fd passed on) is
/// such a leftover, and the file is replaced by a new one, out of their reach. A lock held by a
/// root process (another agent, or an administrator's `flock`), or by holders /proc/locks does
/// not show, is respected.
fn lock(paths: &Paths) -> Result<fs::File> {
    use skiff_images::fsutil::{self, FileLock, LockKind};
    let p = paths.run.join("agent.lock");
    let open = |p: &Path| fsutil::open_lock_file(p).with_context(|| format!("opening {}", p.display()));
    let busy = |holders: &[i32]| {
        let other = proc::read_pid_file(&paths.agent_pid()).map(|p| format!(" (pid {p})")).unwrap_or_default();
        let held = match holders {
            [] => String::new(),
            _ => format!(
                " ({} is held by pid {})",
                p.display(),
                holders.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
            ),
        };
        anyhow!(
            "another skiff agent runs on {}{other}: stop it first (or use another --root){held}",
            paths.root.display()
        )
    };
    // Ok(Ok(file)): taken; Ok(Err(holders)): held by processes that are not root's only (a
    // leftover to replace); Err: busy.
    let attempt = || -> Result<Result<fs::File, Vec<i32>>> {
        let f = open(&p)?;
        if try_flock(&f)? {
            return Ok(Ok(f));
        }
        let holders = lock_holders(&f);
        if holders.is_empty() || holders.iter().any(|&pid| !foreign(pid)) {
            return Err(busy(&holders));
        }
        Ok(Err(holders))
    };
    if let Ok(f) = attempt()? {
        return Ok(f);
    }
    // One replacement at a time: an agent starting meanwhile finds the new file held by us.
    let _guard = FileLock::lock(&paths.run.join("agent.lock.replace"), LockKind::Exclusive)
        .with_context(|| format!("locking {}.replace", p.display()))?;
    let holders = match attempt()? {
        Ok(f) => return Ok(f),
        Err(holders) => holders,
    };
    let tmp = paths.run.join(format!("agent.lock.new-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let nf = open(&tmp)?;
    if !try_flock(&nf)? {
        bail!("cannot lock the new {}", tmp.display());
    }
    fs::rename(&tmp, &p).with_context(|| format!("replacing {}", p.display()))?;
    let held = holders.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ");
    log(&format!(
        "warning: {} was held by pid {held}, not root's (an older skiff left it readable to every user): \
         replaced with a new lock file only root can open",
        p.display()
    ));
    Ok(nf)
}

/// flock(LOCK_EX | LOCK_NB): whether it was taken.
fn try_flock(f: &fs::File) -> Result<bool> {
    loop {
        // SAFETY: flock(2) on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(e).context("flock"),
        }
    }
}

/// The pids /proc/locks names as holders of an flock on `f`'s inode (waiters excluded).
fn lock_holders(f: &fs::File) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = f.metadata() else { return Vec::new() };
    let (major, minor) = (libc::major(md.dev()), libc::minor(md.dev()));
    let Ok(text) = fs::read_to_string("/proc/locks") else { return Vec::new() };
    parse_lock_holders(&text, major as u64, minor as u64, md.ino())
}

/// /proc/locks lines: `1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF` (a waiter has `->`
/// after the number); the device is hex major:minor.
fn parse_lock_holders(text: &str, major: u64, minor: u64, ino: u64) -> Vec<i32> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(1) == Some(&"->") || f.get(1) != Some(&"FLOCK") {
            continue;
        }
        let (Some(pid), Some(id)) = (f.get(4).and_then(|p| p.parse::<i32>().ok()), f.get(5)) else { continue };
        let mut parts = id.split(':');
        let (Some(ma), Some(mi), Some(i)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let matches = u64::from_str_radix(ma, 16).ok() == Some(major)
            && u64::from_str_radix(mi, 16).ok() == Some(minor)
            && i.parse::<u64>().ok() == Some(ino);
        if matches {
            out.push(pid);
        }
    }
    out
}

/// A lock holder that is not root's: alive with a non-zero real uid, or gone (its fd lives on
/// in a child). A pid of another pid namespace (0) is not foreign: it might be an agent.
fn foreign(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(s) => s
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|u| u.split_whitespace().next())
            .is_some_and(|uid| uid != "0"),
        Err(_) => true,
    }
}

/// A current-thread tokio runtime on a thread of its own named `name`, for work that must
/// never wait for the reconcile loop nor make it wait (the proxies, the status endpoint).
pub(crate) fn runtime_thread(name: &str) -> std::io::Result<tokio::runtime::Handle> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(256 << 10)
        .spawn(move || rt.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}

async fn main_loop(o: Options, paths: Paths, (nofile_was, nofile): (u64, u64)) -> Result<i32> {
    let mut endpoint = http::Endpoint::bind(o.listen)
        .with_context(|| format!("cannot listen on {} (--listen / SKIFF_LISTEN)", o.listen))?;
    let (snap_tx, snap_rx) = wch::channel(Snapshot::default());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let runtime = Runtime::new(o.runtime.clone(), paths.runtime_root());
    let mut agent = Agent::new(paths.clone(), runtime, o.manifest.clone(), tx.clone(), snap_tx)?;
    agent.set_network_defaults(o.network.clone());
    if o.no_bridge {
        log("--no-bridge: bridge-mode services get a network namespace with loopback only");
        agent.disable_bridge();
    }
    log(&format!(
        "starting: root {}, manifest {}, runtime {}, status on http://{}",
        paths.root.display(),
        o.manifest.display(),
        o.runtime.display(),
        o.listen
    ));
    // `skiff check`'s warnings and errors, one line each (and in status).
    let (root, rt_path) = (paths.root.clone(), o.runtime.clone());
    let host = tokio::task::spawn_blocking(move || {
        crate::hostcheck::assess(&crate::hostcheck::read(&root, Some(&rt_path)))
            .into_iter()
            .filter(|f| f.level > crate::hostcheck::Level::Ok)
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    for f in &host {
        let level = if f.level == crate::hostcheck::Level::Error { "error" } else { "warning" };
        let fix = f.fix.as_deref().map(|x| format!(" (fix: {x})")).unwrap_or_default();
        log(&format!("host {level}: {}: {}{fix}", f.topic, f.message));
    }
    agent.set_host_findings(host);
    let budget = fds::proxy_budget(nofile);
    log(&format!(
        "open files: limit {nofile}{}; published ports may hold {budget} of them ({} proxied TCP connections), {} are kept for the agent's own work",
        if nofile_was != nofile { format!(" (raised from {nofile_was})") } else { String::new() },
        budget / 2,
        nofile - budget,
    ));

    // Airgap images dropped into <root>/preload.
    let store = skiff_images::Store::open(&paths.root)?;
    let preload = paths.root.join("preload");
    match tokio::task::spawn_blocking(move || {
        skiff_images::archive::load_preload_dir(&store, &preload, &skiff_images::Platform::host())
    })
    .await
    {
        Ok(Ok(loaded)) => {
            for l in loaded {
                log(&format!("preloaded {l:?}"));
            }
        }
        Ok(Err(e)) => log(&format!("preload: {e}")),
        Err(e) => log(&format!("preload: {e}")),
    }

    // Before anything is started: the shim binary the agent started with.
    replica::open_shim_binary();
    agent.load_manifest();
    agent.adopt().await;
    agent.reconcile();

    // Imperative commands (`skiff scale`, ...): served once the state is loaded.
    let control = control::serve(&paths, tx.clone())?;
    endpoint.serve(snap_rx);
    tokio::spawn(watch::watch(o.manifest.clone(), tx.clone()));
    tokio::spawn(watch::watch_files(agent.manifest_files(), tx.clone()));
    if !o.no_bridge {
        watch_tables(tx.clone());
    }
    let _ = notify::notify("READY=1\nSTATUS=reconciling");

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        let wake = agent.next_wake();
        tokio::select! {
            Some(ev) = rx.recv() => agent.handle(ev),
            _ = tokio::time::sleep_until(wake.into()) => agent.reconcile(),
            _ = hup.recv() => {
                log("SIGHUP: re-reading the manifest");
                agent.handle(Event::Reload);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    let _ = notify::notify("STOPPING=1");
    control.stop();
    endpoint.stop();
    log("exiting; the containers keep running (`skiff down` stops them)");
    Ok(0)
}

/// Tells the loop of every change of the nftables ruleset, and which of our tables someone
/// else deleted ([`crate::net::nftwatch`]).
fn watch_tables(tx: mpsc::UnboundedSender<Event>) {
    use crate::net::{nft, nftwatch::TableWatch};
    let mut w = match TableWatch::open(&[nft::TABLE, nft::PORTS_TABLE, &format!("{}*", nft::NETWORK_TABLE_PREFIX)]) {
        Ok(w) => w,
        Err(e) => {
            log(&format!(
                "watching nftables: {e}; tables deleted by someone else (a firewall reload) come back at the next agent start only"
            ));
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            match w.changed().await {
                Ok(lost) => {
                    if tx.send(Event::Nftables { lost }).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    log(&format!("watching nftables: {e}; stopped"));
                    return;
                }
            }
        }
    });
}

/// Whether `pid` is a `skiff agent` process (not a recycled pid).
pub fn is_agent(pid: i32) -> bool {
    let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    cmd.split(|b| *b == 0).any(|a| a == b"agent")
}

/// The agent's pid for a root, when one runs.
pub fn running_agent(root: &Path) -> Option<i32> {
    let paths = Paths::new(root);
    proc::read_pid_file(&paths.agent_pid()).filter(|p| proc::alive(*p, None) && is_agent(*p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_holders_from_proc_locks() {
        let text = "1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF\n\
                    1: -> FLOCK  ADVISORY  WRITE 999 00:1a:5678 0 EOF\n\
                    2: FLOCK  ADVISORY  READ 77 00:1a:5678 0 EOF\n\
                    3: POSIX  ADVISORY  WRITE 55 00:1a:5678 0 EOF\n\
                    4: FLOCK  ADVISORY  WRITE 66 00:1b:5678 0 EOF\n\
                    5: FLOCK  ADVISORY  WRITE 88 fd:01:5678 0 EOF\n";
        assert_eq!(parse_lock_holders(text, 0, 0x1a, 5678), [1234, 77]);
        assert_eq!(parse_lock_holders(text, 0xfd, 1, 5678), [88]);
        assert!(parse_lock_holders(text, 0, 0x1a, 1).is_empty());
    }

    #[test]
    fn the_holder_of_a_lock_is_found_and_judged() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.lock");
        let f = skiff_images::fsutil::open_lock_file(&p).unwrap();
        assert!(try_flock(&f).unwrap());
        let g = skiff_images::fsutil::open_lock_file(&p).unwrap();
        assert!(!try_flock(&g).unwrap(), "held by the first fd");
        assert_eq!(lock_holders(&g), [std::process::id() as i32]);
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert_eq!(foreign(std::process::id() as i32), !root);
        assert!(!foreign(0), "a pid of another namespace may be an agent");
    }
}
