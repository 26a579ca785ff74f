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
pub mod fds;
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
pub mod status;
pub mod watch;

use std::fs;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
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
    for d in [&paths.root, &paths.run] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
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

/// One agent per root: an exclusive flock on `<run>/agent.lock`, held for the agent's life.
fn lock(paths: &Paths) -> Result<fs::File> {
    let p = paths.run.join("agent.lock");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .with_context(|| format!("opening {}", p.display()))?;
    // SAFETY: flock(2) on an fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let other = proc::read_pid_file(&paths.agent_pid()).map(|p| format!(" (pid {p})")).unwrap_or_default();
        bail!("another skiff agent runs on {}{other}: stop it first (or use another --root)", paths.root.display());
    }
    Ok(f)
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

    agent.load_manifest();
    agent.adopt().await;
    agent.reconcile();

    endpoint.serve(snap_rx);
    tokio::spawn(watch::watch(o.manifest.clone(), tx.clone()));
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
    endpoint.stop();
    log("exiting; the containers keep running (`skiff down` stops them)");
    Ok(0)
}

/// Tells the loop of every change of the nftables ruleset, and which of our tables someone
/// else deleted ([`crate::net::nftwatch`]).
fn watch_tables(tx: mpsc::UnboundedSender<Event>) {
    use crate::net::{nft, nftwatch::TableWatch};
    let mut w = match TableWatch::open(&[nft::TABLE, nft::PORTS_TABLE]) {
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
