//! The `skiff` command line: image commands (`pull`, `images`, `rmi`, `prune`, `load`) and
//! `run`/`rm` (one container in the foreground, see [`run`]); `exec` (a command in a running
//! replica, see [`exec`]); the imperative commands to the
//! running agent (`scale`, `rollback`, `rollout resume`, `update`: see [`control`]).
//!
//! Every command takes `--root DIR` (env `SKIFF_ROOT`, default /var/lib/skiff). Errors are
//! one line on stderr (`skiff: error: ...`) and exit status 1; usage errors exit 2.

pub mod agent;
pub mod check;
pub mod control;
pub mod down;
pub mod exec;
pub mod history;
pub mod logs;
mod progress;
pub mod run;
pub mod status;
pub mod validate;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use skiff_images::auth::AuthConfig;
use skiff_images::fsutil::LockKind;
use skiff_images::{text, Client, ClientOptions, Digest, ImageRecord, Platform, PullOptions, Reference, Store};

/// The default store.
pub const DEFAULT_ROOT: &str = "/var/lib/skiff";

#[derive(Parser, Debug)]
#[command(name = "skiff", version, about = "skiff: a lightweight edge orchestrator", propagate_version = true)]
pub struct Cli {
    /// State directory (images, layers, containers)
    #[arg(long, global = true, env = "SKIFF_ROOT", default_value = DEFAULT_ROOT, value_name = "DIR")]
    pub root: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Pull an image from a registry into the store (prints its manifest digest)
    Pull(PullArgs),
    /// List the images in the store
    Images(ImagesArgs),
    /// Remove images from the store (their data goes with the next `skiff prune`)
    Rmi(RmiArgs),
    /// Remove every blob and unpacked layer no image or container uses, and leftovers of interrupted pulls
    Prune,
    /// Import images from `docker save` or OCI archives (or an OCI layout directory)
    Load(LoadArgs),
    /// Run one container in the foreground (pulls the image if missing); exits with its status
    Run(Box<run::RunArgs>),
    /// Remove stopped containers kept by `skiff run` without --rm
    Rm(run::RmArgs),
    /// Check a manifest (compose file): prints its errors and warnings, exits 1 on errors
    Validate(validate::ValidateArgs),
    /// Tell whether skiff will work on this host, and what to do (exit 1 when it cannot)
    Check(check::CheckArgs),
    /// Run the agent: keep the services of the manifest running (foreground)
    Agent(agent::AgentArgs),
    /// Show what the agent runs (from its status endpoint)
    Status(status::StatusArgs),
    /// Show the logs of a service's replicas (SERVICE) or of one replica (SERVICE/N)
    Logs(logs::LogsArgs),
    /// Stop the agent and every container it runs, gracefully
    Down(down::DownArgs),
    /// Run a command in a running replica of a service (SERVICE, SERVICE/N or a replica id)
    Exec(exec::ExecArgs),
    /// Show a service's revisions, newest first (what changed, which is in force, which failed)
    History(history::HistoryArgs),
    /// Set the replicas of services (SERVICE=N ...), over the manifest's, in the running agent
    Scale(control::ScaleArgs),
    /// Run an earlier revision of a service (until the manifest changes it)
    Rollback(control::RollbackArgs),
    /// Act on a service's update (rollout): `skiff rollout resume SERVICE`
    Rollout(control::RolloutArgs),
    /// Check the registry for new image digests now (all services, or those given)
    Update(control::UpdateArgs),
    /// Internal: keeps one container's stdout/stderr and exit status (started by the agent)
    #[command(hide = true)]
    Shim(crate::shim::ShimArgs),
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Archive files (tar, tar.gz, tar.zst) or OCI layout directories
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Platform to pick from multi-platform archives
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Name for an image the archive does not name (an untagged `docker save`)
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// Image reference: NAME[:TAG] or NAME@sha256:DIGEST (`busybox` = docker.io/library/busybox:latest)
    pub image: String,
    /// Platform to pull from a multi-platform image: os/arch[/variant] (default: this machine's)
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// A registry (host or host:port) to reach over plain HTTP (localhost and 127.0.0.0/8 always are)
    #[arg(
        long = "insecure-registry",
        env = "SKIFF_INSECURE_REGISTRIES",
        value_delimiter = ',',
        value_name = "HOST[:PORT]"
    )]
    pub insecure_registries: Vec<String>,
    /// Layers downloaded at the same time
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub jobs: u16,
    /// No progress output (only the digest, and errors)
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct ImagesArgs {
    /// JSON output: an array of {reference, digest, size, created, ...}
    #[arg(long)]
    pub json: bool,
    /// Only the references
    #[arg(long, short, conflicts_with = "json")]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct RmiArgs {
    /// Image references (as pulled), or manifest digests (or a unique prefix of 12+ hex digits)
    #[arg(required = true)]
    pub images: Vec<String>,
}

/// Runs a command; returns the exit status.
pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Pull(a) => pull(&cli.root, a),
        Command::Images(a) => images(&cli.root, a),
        Command::Rmi(a) => rmi(&cli.root, a),
        Command::Prune => prune(&cli.root),
        Command::Load(a) => load(&cli.root, a),
        Command::Run(a) => run::run(&cli.root, *a),
        Command::Rm(a) => run::rm(&cli.root, a),
        Command::Validate(a) => validate::validate(a),
        Command::Check(a) => check::check(&cli.root, a),
        Command::Agent(a) => agent::agent(&cli.root, a),
        Command::Status(a) => status::status(a),
        Command::Logs(a) => logs::logs(&cli.root, a),
        Command::Down(a) => down::down(&cli.root, a),
        Command::Exec(a) => exec::exec(&cli.root, a),
        Command::History(a) => history::run(&cli.root, a),
        Command::Scale(a) => control::scale(&cli.root, a),
        Command::Rollback(a) => control::rollback(&cli.root, a),
        Command::Rollout(a) => control::rollout(&cli.root, a),
        Command::Update(a) => control::update(&cli.root, a),
        Command::Shim(a) => crate::shim::shim(a),
    }
}

/// Opens the store (0700, created so or narrowed: see `Store::open`), and narrows what an
/// older skiff left open of the agent's directories beside it.
pub(crate) fn open_store(root: &std::path::Path) -> Result<Store> {
    let store = Store::open(root)?;
    crate::daemon::paths::Paths::new(root).make_private()?;
    Ok(store)
}

fn pull(root: &std::path::Path, a: PullArgs) -> Result<i32> {
    let reference = Reference::parse(&a.image)?;
    let platform = a.platform.as_deref().map(Platform::parse).transpose()?;
    let store = open_store(root)?;
    let auth = AuthConfig::load_default()?;
    let client = Arc::new(Client::new(ClientOptions {
        auth,
        insecure_registries: a
            .insecure_registries
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        ..Default::default()
    })?);
    let clock = crate::hostcheck::clock::registry_must_wait(
        crate::hostcheck::clock::now_epoch(),
        crate::hostcheck::clock::BUILD_EPOCH,
        client.allows_http(reference.api_host()),
    );
    if let Some(b) = clock {
        // One pull in the foreground: tried anyway (a registry may take it), with the reason
        // it will likely fail said first.
        eprintln!("skiff: warning: {}; {}", b.message(), crate::hostcheck::clock::FIX);
    }
    let opts = PullOptions { platform, jobs: a.jobs as usize, ..Default::default() };
    let tty = std::io::stderr().is_terminal();
    let reporter = Arc::new(progress::Reporter::new(tty, a.quiet));
    if !a.quiet && !tty {
        eprintln!("pulling {reference}");
    }
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(a.jobs as usize + 4)
        .thread_stack_size(1 << 20)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let res = rt.block_on(skiff_images::pull(&store, client, &reference, &opts, reporter.clone()));
    reporter.finish();
    let pulled = res?;
    if !a.quiet {
        eprintln!(
            "pulled {} ({}, {} layer{}: {} downloaded, {} already present) in {:.1}s",
            pulled.record.reference,
            pulled.record.platform,
            pulled.record.layers.len(),
            if pulled.record.layers.len() == 1 { "" } else { "s" },
            human_size(pulled.downloaded),
            pulled.layers_present,
            started.elapsed().as_secs_f64()
        );
    }
    println!("{}", pulled.record.digest);
    Ok(0)
}

fn images(root: &std::path::Path, a: ImagesArgs) -> Result<i32> {
    let store = open_store(root)?;
    let (mut records, bad) = store.images()?;
    for b in &bad {
        eprintln!("skiff: warning: unreadable image record {b}");
    }
    // The agent's services: which revision uses which digest. A tag that moved on keeps its
    // old digest in the store for the revisions that use it: listed too, untagged.
    let (services, _) = crate::daemon::revisions::load_all(&crate::daemon::paths::Paths::new(root));
    let used_by = |digest: &Digest| -> Vec<String> {
        let mut v = Vec::new();
        for (name, rec) in &services {
            for r in rec.revisions.iter().filter(|r| &r.image.digest == digest) {
                let tag = if r.n == rec.in_force { ", in force" } else { "" };
                v.push(format!("{name} (revision {}{tag})", r.n));
            }
        }
        v
    };
    let tagged = records.len();
    for rec in services.values() {
        for r in &rec.revisions {
            if !records.iter().any(|x| x.digest == r.image.digest) {
                records.push(r.image.clone());
            }
        }
    }
    let mut out = std::io::stdout().lock();
    if a.json {
        let list: Vec<serde_json::Value> = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut v = image_json(r);
                v["used_by"] = serde_json::json!(used_by(&r.digest));
                v["tagged"] = serde_json::json!(i < tagged);
                v
            })
            .collect();
        serde_json::to_writer_pretty(&mut out, &list)?;
        writeln!(out)?;
    } else if a.quiet {
        for r in &records[..tagged] {
            writeln!(out, "{}", r.reference)?;
        }
    } else {
        let rows: Vec<[String; 6]> = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let used = used_by(&r.digest);
                [
                    if i < tagged { r.reference.clone() } else { format!("{} (earlier digest)", r.reference) },
                    r.digest.short(),
                    r.platform.clone(),
                    human_size(r.size),
                    r.created.as_deref().map(ago).unwrap_or_else(|| "-".into()),
                    if used.is_empty() { "-".into() } else { used.join(", ") },
                ]
            })
            .collect();
        let header = ["REFERENCE", "DIGEST", "PLATFORM", "SIZE", "CREATED", "USED BY"].map(String::from);
        let mut widths = header.clone().map(|h| h.len());
        for row in &rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        for row in std::iter::once(&header).chain(rows.iter()) {
            let line: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
            writeln!(out, "{}", line.join("   ").trim_end())?;
        }
    }
    Ok(if bad.is_empty() { 0 } else { 1 })
}

fn image_json(r: &ImageRecord) -> serde_json::Value {
    serde_json::json!({
        "reference": r.reference,
        "digest": r.digest,
        "index_digest": r.index_digest,
        "config": r.config,
        "platform": r.platform,
        "media_type": r.media_type,
        "size": r.size,
        "created": r.created,
        "pulled": r.pulled,
        "layers": r.layers,
    })
}

fn rmi(root: &std::path::Path, a: RmiArgs) -> Result<i32> {
    let store = open_store(root)?;
    let mut failed = false;
    for arg in &a.images {
        match rmi_one(&store, arg) {
            Ok(removed) => {
                for r in removed {
                    println!("removed {r}");
                }
            }
            Err(e) => {
                eprintln!("skiff: error: {}", text::one_line(&format!("{e:#}"), text::MESSAGE_MAX));
                failed = true;
            }
        }
    }
    if !failed {
        eprintln!("(run `skiff prune` to free the space of data no image uses any more)");
    }
    Ok(if failed { 1 } else { 0 })
}

fn rmi_one(store: &Store, arg: &str) -> Result<Vec<String>> {
    // A reference as pulled.
    if let Ok(r) = Reference::parse(arg) {
        if store.remove_image(&r.to_string())? {
            return Ok(vec![r.to_string()]);
        }
    }
    // A manifest digest, or a prefix of one.
    let hex = arg.strip_prefix("sha256:").unwrap_or(arg);
    if hex.len() >= 12 && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        let (records, _) = store.images()?;
        let hits: Vec<&ImageRecord> = records.iter().filter(|r| r.digest.hex().starts_with(hex)).collect();
        let digests: std::collections::HashSet<_> = hits.iter().map(|r| &r.digest).collect();
        if digests.len() > 1 {
            bail!("{arg} matches several images: give more of the digest");
        }
        if !hits.is_empty() {
            let mut removed = Vec::new();
            for r in hits {
                if store.remove_image(&r.reference)? {
                    removed.push(r.reference.clone());
                }
            }
            return Ok(removed);
        }
    }
    bail!("no such image: {arg} (see `skiff images`)")
}

fn prune(root: &std::path::Path) -> Result<i32> {
    let store = open_store(root)?;
    let _lock = store.lock(LockKind::Exclusive, || {
        eprintln!("waiting for other skiff commands (a pull?) on {} to finish", root.display())
    })?;
    // Containers keep their images' layers (and the agent's will, with issue 4).
    let mut keep = run::container_references(root)?;
    crate::daemon::revisions::references(root, &mut keep)?;
    let r = store.prune(&keep)?;
    println!(
        "pruned {} blob{}, {} layer{}, {} temporary item{}: {} freed",
        r.blobs,
        plural(r.blobs),
        r.layers,
        plural(r.layers),
        r.temp,
        plural(r.temp),
        human_size(r.bytes)
    );
    Ok(0)
}

fn load(root: &std::path::Path, a: LoadArgs) -> Result<i32> {
    let store = open_store(root)?;
    let platform = match a.platform.as_deref() {
        Some(p) => Platform::parse(p)?,
        None => Platform::host(),
    };
    let mut opts = skiff_images::archive::LoadOptions::new(platform);
    opts.name = a.name.clone();
    let mut failed = false;
    for f in &a.files {
        match skiff_images::archive::load_with(&store, f, &opts) {
            Ok(l) if l.images.is_empty() => {
                eprintln!("skiff: error: {}: no image found in it", f.display());
                failed = true;
            }
            Ok(l) => {
                for w in &l.warnings {
                    eprintln!("skiff: warning: {}: {}", f.display(), text::one_line(w, text::MESSAGE_MAX));
                }
                for r in l.images {
                    println!("loaded {} {} ({})", r.reference, r.digest, l.format);
                }
            }
            Err(e) => {
                eprintln!("skiff: error: {}: {}", f.display(), text::one_line(&e.to_string(), text::MESSAGE_MAX));
                failed = true;
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `1.2 MB` (decimal units, like docker).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `3 days ago` for an RFC 3339 time.
fn ago(t: &str) -> String {
    let Ok(then) = humantime::parse_rfc3339_weak(t.get(..19).unwrap_or(t)) else { return t.to_string() };
    let d = SystemTime::now().duration_since(then).unwrap_or(Duration::ZERO).as_secs();
    let (n, unit) = match d {
        0..=59 => return "just now".into(),
        60..=3599 => (d / 60, "minute"),
        3600..=86399 => (d / 3600, "hour"),
        86400..=2_591_999 => (d / 86400, "day"),
        2_592_000..=31_535_999 => (d / 2_592_000, "month"),
        _ => (d / 31_536_000, "year"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(1_234_567), "1.2 MB");
    }

    #[test]
    fn ages() {
        assert!(ago("2000-01-01T00:00:00Z").ends_with("years ago"));
        assert_eq!(ago("nonsense"), "nonsense");
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let c =
            Cli::try_parse_from(["skiff", "--root", "/x", "pull", "--platform", "linux/arm/v7", "busybox"]).unwrap();
        assert_eq!(c.root, PathBuf::from("/x"));
        let c = Cli::try_parse_from(["skiff", "images", "--json", "--root", "/y"]).unwrap();
        assert_eq!(c.root, PathBuf::from("/y"));
        let c = Cli::try_parse_from(["skiff", "rollout", "resume", "web", "--root", "/z"]).unwrap();
        match c.command {
            Command::Rollout(control::RolloutArgs { command: control::RolloutCommand::Resume { service } }) => {
                assert_eq!(service, "web")
            }
            other => panic!("{other:?}"),
        }
        let c = Cli::try_parse_from(["skiff", "rollback", "web", "--to", "2"]).unwrap();
        assert!(matches!(c.command, Command::Rollback(control::RollbackArgs { to: Some(2), .. })));
        assert!(Cli::try_parse_from(["skiff", "rollback", "web", "--to", "0"]).is_err());
        assert!(Cli::try_parse_from(["skiff", "scale"]).is_err(), "SERVICE=N is required");
        let c = Cli::try_parse_from(["skiff", "update"]).unwrap();
        assert!(matches!(c.command, Command::Update(control::UpdateArgs { ref services }) if services.is_empty()));
    }
}
