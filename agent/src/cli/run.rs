//! `skiff run`: one container in the foreground, from an image in the store (pulled
//! first when missing), through an OCI runtime's command line (skiff-runtime by
//! default). stdout/stderr pass through; the exit status is the container's.
//!
//! A container lives in `<root>/containers/<name>/`: `rootfs/` (overlay of the image's
//! layers, or a copy), `upper/`, `work/`, `config.json`, `container.json` (the image and
//! layers it uses, so `skiff prune` keeps them) and `volumes/` (anonymous volumes for
//! the image's declared VOLUMEs). `--rm` removes it all afterwards; without it the
//! stopped container stays until `skiff rm NAME`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use skiff_images::bundle::{self, BundleOverrides, ImageRunConfig, NetworkNamespace};
use skiff_images::{rootfs, volume, Digest, Reference, References, Store};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Remove the container (its writable layer and anonymous volumes) when it exits
    #[arg(long)]
    pub rm: bool,
    /// Container name (default: generated)
    #[arg(long)]
    pub name: Option<String>,
    /// Set an environment variable (KEY=VALUE; KEY alone removes it)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Bind mount: SRC:DST[:ro]; SRC is a host path (absolute) or a named volume
    /// (kept under <root>/volumes/NAME)
    #[arg(short = 'v', long = "volume", value_name = "SRC:DST[:ro]")]
    pub volumes: Vec<String>,
    /// Memory limit in bytes (suffixes k, m, g accepted)
    #[arg(long, value_name = "BYTES")]
    pub memory: Option<String>,
    /// Override the image's entrypoint (one executable; the image's CMD is dropped)
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Run as USER[:GROUP] (names from the image's /etc/passwd and /etc/group, or ids)
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// Network: `none` (own namespace, loopback only) or `host`
    #[arg(long, default_value = "none", value_parser = ["none", "host"])]
    pub network: String,
    /// Make the root filesystem read-only
    #[arg(long = "read-only")]
    pub read_only: bool,
    /// Platform to pull when the image is missing
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// OCI runtime to use (default: skiff-runtime next to skiff, else on PATH)
    #[arg(long, env = "SKIFF_RUNTIME", value_name = "PATH")]
    pub runtime: Option<PathBuf>,
    /// Image reference
    pub image: String,
    /// Command and arguments (default: the image's CMD)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// What a container uses, recorded so `skiff prune` keeps it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub name: String,
    pub image: String,
    pub manifest: Digest,
    pub config: Digest,
    pub layers: Vec<Digest>,
    pub created: String,
}

impl ContainerRecord {
    /// Writes `<dir>/container.json` (temp + fsync + rename): container `name` uses `image`.
    pub fn write(dir: &Path, name: &str, image: &skiff_images::ImageRecord) -> Result<()> {
        let record = ContainerRecord {
            name: name.to_string(),
            image: image.reference.clone(),
            manifest: image.digest.clone(),
            config: image.config.clone(),
            layers: image.layers.iter().map(|l| l.diff_id.clone()).collect(),
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        };
        let path = dir.join("container.json");
        skiff_images::fsutil::write_atomic(dir, &path, &serde_json::to_vec_pretty(&record)?)
            .with_context(|| format!("writing {}", path.display()))
    }
}

pub fn containers_dir(root: &Path) -> PathBuf {
    root.join("containers")
}

/// The runtime's state directory: `/run/skiff/runtime` for the default root, else
/// `<root>/run/runtime` (so test roots never share runtime state).
pub fn runtime_root(root: &Path) -> PathBuf {
    if root == Path::new(super::DEFAULT_ROOT) {
        PathBuf::from("/run/skiff/runtime")
    } else {
        root.join("run").join("runtime")
    }
}

/// The layers and blobs of every container, for `skiff prune`.
pub fn container_references(root: &Path) -> Result<References> {
    let mut keep = References::default();
    let dir = containers_dir(root);
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(keep),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in rd {
        let path = entry?.path().join("container.json");
        let Ok(data) = fs::read(&path) else { continue };
        let rec: ContainerRecord = serde_json::from_slice(&data)
            .with_context(|| format!("{}: unreadable container record", path.display()))?;
        keep.blobs.insert(rec.manifest);
        keep.blobs.insert(rec.config);
        keep.layers.extend(rec.layers);
    }
    Ok(keep)
}

/// Finds the OCI runtime: the flag/env, else `skiff-runtime` next to this binary, else PATH.
pub fn find_runtime(flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = flag {
        if p.components().count() == 1 {
            return which(&p.to_string_lossy()).ok_or_else(|| anyhow!("runtime {} not found on PATH", p.display()));
        }
        return Ok(p.to_path_buf());
    }
    if let Ok(exe) = std::env::current_exe() {
        let next = exe.with_file_name("skiff-runtime");
        if next.is_file() {
            return Ok(next);
        }
    }
    which("skiff-runtime").ok_or_else(|| {
        anyhow!("no OCI runtime: install skiff-runtime next to skiff or on PATH, or pass --runtime (crun, runc)")
    })
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn generated_name() -> String {
    let mut b = [0u8; 6];
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    format!("skiff-{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>())
}

/// `64m` → 67108864.
pub fn parse_bytes(s: &str) -> Result<i64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: i64 = num.trim().parse().map_err(|_| anyhow!("{s:?} is not a size (e.g. 67108864, 64m, 1g)"))?;
    n.checked_mul(mult).filter(|v| *v > 0).ok_or_else(|| anyhow!("{s:?} is not a positive size"))
}

/// Gets the image record, pulling the image first when the store lacks it.
fn image_record(root: &Path, store: &Store, a: &RunArgs) -> Result<skiff_images::ImageRecord> {
    let reference = Reference::parse(&a.image)?;
    if let Some(r) = store.image(&reference.to_string())? {
        return Ok(r);
    }
    eprintln!("{reference}: not in the store, pulling it");
    let pull = super::PullArgs {
        image: a.image.clone(),
        platform: a.platform.clone(),
        insecure_registries: std::env::var("SKIFF_INSECURE_REGISTRIES")
            .map(|v| v.split(',').map(str::to_owned).collect())
            .unwrap_or_default(),
        jobs: 3,
        quiet: false,
    };
    super::pull(root, pull)?;
    store.image(&reference.to_string())?.ok_or_else(|| anyhow!("{reference}: pulled, but not found in the store"))
}

pub fn run(root: &Path, a: RunArgs) -> Result<i32> {
    // Check everything the user typed before touching the network or the store.
    let name = match &a.name {
        Some(n) if !valid_name(n) => bail!("invalid container name {n:?}: use letters, digits, '_', '.', '-'"),
        Some(n) => n.clone(),
        None => generated_name(),
    };
    let memory_limit = a.memory.as_deref().map(parse_bytes).transpose()?;
    for v in &a.volumes {
        check_volume_syntax(v)?;
    }
    if containers_dir(root).join(&name).exists() {
        bail!("a container named {name} exists: remove it with `skiff rm {name}`, or pick another --name");
    }
    let store = super::open_store(root)?;
    let runtime = find_runtime(a.runtime.as_deref())?;
    let image = image_record(root, &store, &a)?;
    let config = ImageRunConfig::load(&store, &image)?;
    // The image's VOLUME paths, before anything is made for the container.
    volume::check_paths(&config)?;
    let cdir = containers_dir(root).join(&name);
    skiff_images::fsutil::create_private_dir(&containers_dir(root))
        .with_context(|| format!("creating {}", containers_dir(root).display()))?;
    match fs::create_dir(&cdir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!("a container named {name} exists: remove it with `skiff rm {name}`, or pick another --name")
        }
        Err(e) => return Err(e).with_context(|| format!("creating {}", cdir.display())),
    }
    let guard = Cleanup { dir: cdir.clone(), remove: true };
    ContainerRecord::write(&cdir, &name, &image)?;

    let layers = rootfs::image_layers(&store, &image);
    rootfs::mount_rootfs(&layers, &cdir).with_context(|| format!("preparing the root filesystem of {name}"))?;
    let rootfs_dir = rootfs::rootfs_path(&cdir);

    let mut o = BundleOverrides {
        entrypoint: a.entrypoint.as_ref().map(|e| vec![e.clone()]),
        cmd: (!a.command.is_empty()).then(|| a.command.clone()),
        env: a.env.clone(),
        user: a.user.clone(),
        working_dir: a.workdir.clone(),
        memory_limit,
        readonly_rootfs: a.read_only,
        network: if a.network == "host" { NetworkNamespace::Host } else { NetworkNamespace::New },
        hostname: Some(name.chars().take(63).collect()),
        ..Default::default()
    };
    for v in &a.volumes {
        o.mounts.push(volume_mount(root, v)?);
    }
    // The image's declared VOLUMEs get an anonymous volume each (docker's behaviour), seeded
    // from the image.
    let covered: Vec<PathBuf> = o.mounts.iter().map(|m| m.destination().clone()).collect();
    let anonymous = volume::image_volumes(&config, &rootfs_dir, &covered, &cdir.join("volumes"))?;
    o.mounts.extend(anonymous);
    let (spec, _info) = bundle::build_spec(&config, &rootfs_dir, &o)?;
    bundle::write_bundle(&cdir, &spec)?;

    let rt_root = runtime_root(root);
    let status = run_runtime(&runtime, &rt_root, &cdir, &name)?;
    let _ = rootfs::unmount_rootfs(&cdir);
    let mut guard = guard;
    guard.remove = a.rm;
    drop(guard);
    Ok(status)
}

/// `SRC:DST[:ro]` split and checked (no filesystem access).
fn check_volume_syntax(spec: &str) -> Result<(&str, &str, bool)> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (src, dst, ro) = match parts.as_slice() {
        [s, d] => (*s, *d, false),
        [s, d, "ro"] => (*s, *d, true),
        [s, d, "rw"] => (*s, *d, false),
        _ => bail!("-v {spec:?}: use SRC:DST or SRC:DST:ro"),
    };
    if !dst.starts_with('/') {
        bail!("-v {spec:?}: the destination must be an absolute path in the container");
    }
    if !src.starts_with('/') && !valid_name(src) {
        bail!("-v {spec:?}: {src:?} is neither an absolute host path nor a volume name");
    }
    Ok((src, dst, ro))
}

/// `SRC:DST[:ro]` → a bind mount; a SRC without '/' is a named volume.
fn volume_mount(root: &Path, spec: &str) -> Result<oci_spec::runtime::Mount> {
    let (src, dst, ro) = check_volume_syntax(spec)?;
    let src = if src.starts_with('/') {
        let p = PathBuf::from(src);
        if !p.exists() {
            bail!("-v {spec:?}: {src} does not exist on the host");
        }
        p
    } else {
        let p = root.join("volumes").join(src);
        skiff_images::fsutil::create_private_dir(&root.join("volumes")).context("creating the volumes directory")?;
        fs::create_dir_all(&p).with_context(|| format!("creating volume {}", p.display()))?;
        p
    };
    Ok(bundle::bind_mount(src, dst, ro))
}

/// Runs `RUNTIME --root R run --bundle DIR NAME` in the foreground, forwarding SIGINT,
/// SIGTERM and SIGHUP to it (it forwards them to the container); returns its status.
fn run_runtime(runtime: &Path, rt_root: &Path, bundle: &Path, name: &str) -> Result<i32> {
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut child = tokio::process::Command::new(runtime)
            .arg("--root")
            .arg(rt_root)
            .arg("run")
            .arg("--bundle")
            .arg(bundle)
            .arg(name)
            .stdin(Stdio::inherit())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", runtime.display()))?;
        let pid = child.id().map(|p| p as i32);
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            let sig = tokio::select! {
                st = child.wait() => {
                    let st = st.context("waiting for the runtime")?;
                    use std::os::unix::process::ExitStatusExt;
                    return Ok(st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0)));
                }
                _ = term.recv() => libc::SIGTERM,
                _ = int.recv() => libc::SIGINT,
                _ = hup.recv() => libc::SIGHUP,
            };
            if let Some(p) = pid {
                // SAFETY: kill(2) on the pid of our own, not yet reaped, child.
                unsafe { libc::kill(p, sig) };
            }
        }
    })
}

/// Removes the container directory on the way out unless told to keep it.
struct Cleanup {
    dir: PathBuf,
    remove: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.remove {
            if let Err(e) = rootfs::remove_container_dir(&self.dir) {
                eprintln!("skiff: warning: removing {}: {e}", self.dir.display());
            }
        }
    }
}

#[derive(Args, Debug)]
pub struct RmArgs {
    /// Container names
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// `skiff rm NAME...`: removes stopped containers kept by `skiff run` without --rm.
pub fn rm(root: &Path, a: RmArgs) -> Result<i32> {
    let mut failed = false;
    for n in &a.names {
        let dir = containers_dir(root).join(n);
        if !valid_name(n) || !dir.join("container.json").exists() {
            eprintln!("skiff: error: no such container: {n}");
            failed = true;
            continue;
        }
        if runtime_root(root).join(n).join("state.json").exists() {
            eprintln!("skiff: error: container {n} is running");
            failed = true;
            continue;
        }
        match rootfs::remove_container_dir(&dir) {
            Ok(()) => println!("removed {n}"),
            Err(e) => {
                eprintln!("skiff: error: removing {n}: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("67108864").unwrap(), 67108864);
        assert_eq!(parse_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1G").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("512kb").unwrap(), 512 << 10);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("-1").is_err());
    }

    #[test]
    fn names() {
        assert!(valid_name("web-1"));
        assert!(!valid_name("../x"));
        assert!(!valid_name("-x"));
        assert!(generated_name().starts_with("skiff-"));
    }
}
