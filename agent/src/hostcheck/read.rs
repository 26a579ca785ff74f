//! The thin part: reads this host into a [`HostFacts`]. Every read that fails leaves its fact
//! empty; [`super::assess`] says what that means.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{clock, CgroupFacts, HostFacts, StoreFacts};

/// The most of a kernel config read (they are ~200-300 KiB uncompressed).
const CONFIG_MAX: u64 = 8 << 20;

/// This host, for a store at `root` and the runtime `--runtime` names (or the default search).
pub fn read(root: &Path, runtime: Option<&Path>) -> HostFacts {
    let uts = nix::sys::utsname::uname().ok();
    let field = |f: fn(&nix::sys::utsname::UtsName) -> &std::ffi::OsStr| {
        uts.as_ref().map(|u| f(u).to_string_lossy().into_owned()).unwrap_or_default()
    };
    let kernel_release = field(|u| u.release());
    let systemd = Path::new("/run/systemd/system").is_dir();
    HostFacts {
        machine: field(|u| u.machine()),
        kernel_config: kernel_config(&kernel_release),
        kernel_release,
        namespaces: fs::read_dir("/proc/self/ns")
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default(),
        filesystems: fs::read_to_string("/proc/filesystems").unwrap_or_default(),
        cmdline: fs::read_to_string("/proc/cmdline").unwrap_or_default(),
        board: fs::read("/proc/device-tree/model")
            .ok()
            .map(|b| String::from_utf8_lossy(&b).trim_end_matches('\0').trim().to_string()),
        cmdline_txt: ["/boot/firmware/cmdline.txt", "/boot/cmdline.txt"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file()),
        cgroups: cgroup_facts(),
        nft: which("nft"),
        store: store(root),
        mem_total: fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kib| kib * 1024)
        }),
        page_size: nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .map(|p| p as u64)
            .unwrap_or(4096),
        now: clock::now_epoch(),
        built: clock::BUILD_EPOCH,
        systemd,
        ntp_synchronized: if systemd { ntp_synchronized() } else { None },
        runtime: match crate::cli::run::find_runtime(runtime) {
            Ok(p) if !p.is_file() => Err(format!("the OCI runtime {} does not exist", p.display())),
            Ok(p) => {
                let v = first_line(Command::new(&p).arg("--version"));
                Ok((p, v))
            }
            Err(e) => Err(format!("{e:#}")),
        },
    }
}

/// The cgroup texts of this host.
pub(super) fn cgroup_facts() -> CgroupFacts {
    CgroupFacts {
        mountinfo: fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
        proc_cgroups: fs::read_to_string("/proc/cgroups").ok(),
        root_controllers: fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").ok(),
        unified_controllers: fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers").ok(),
    }
}

fn kernel_config(release: &str) -> Option<(String, String)> {
    if let Ok(f) = fs::File::open("/proc/config.gz") {
        let mut text = String::new();
        if flate2::read::GzDecoder::new(f).take(CONFIG_MAX).read_to_string(&mut text).is_ok() && !text.is_empty() {
            return Some(("/proc/config.gz".into(), text));
        }
    }
    let p = format!("/boot/config-{release}");
    let mut text = String::new();
    fs::File::open(&p).ok()?.take(CONFIG_MAX).read_to_string(&mut text).ok()?;
    Some((p, text))
}

/// A command on PATH, or in the sbin directories a non-root PATH may lack.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .filter(|d| !d.is_empty())
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

fn store(root: &Path) -> Option<StoreFacts> {
    let root = if root.is_absolute() { root.to_path_buf() } else { std::env::current_dir().ok()?.join(root) };
    // The store may not exist yet: its nearest existing ancestor is where it will be.
    let existing = root.ancestors().find(|p| p.exists())?;
    let canonical = fs::canonicalize(existing).ok()?;
    let st = nix::sys::statvfs::statvfs(&canonical).ok()?;
    let frag = st.fragment_size() as u64;
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let (mount_point, fs_type, source) = mount_of(&mountinfo, &canonical).unwrap_or_default();
    Some(StoreFacts {
        path: root,
        mount_point,
        fs_type,
        source,
        avail_bytes: st.blocks_available() as u64 * frag,
        total_bytes: st.blocks() as u64 * frag,
    })
}

/// The mount `path` is on (the longest mount point above it; the last mounted wins a tie):
/// mount point, filesystem type, source.
pub(super) fn mount_of(mountinfo: &str, path: &Path) -> Option<(PathBuf, String, String)> {
    let mut best: Option<(PathBuf, String, String)> = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let Some(mp) = left.split(' ').nth(4) else { continue };
        let mp = PathBuf::from(mp.replace("\\040", " "));
        let mut r = right.split(' ');
        let (Some(fstype), Some(source)) = (r.next(), r.next()) else { continue };
        if path.starts_with(&mp)
            && best.as_ref().is_none_or(|(b, _, _)| mp.components().count() >= b.components().count())
        {
            best = Some((mp, fstype.to_string(), source.to_string()));
        }
    }
    best
}

/// `timedatectl show -p NTPSynchronized --value`: yes/no.
fn ntp_synchronized() -> Option<bool> {
    let line = first_line(Command::new("timedatectl").args(["show", "-p", "NTPSynchronized", "--value"]))?;
    match line.as_str() {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    }
}

/// The first line of a command's stdout, waiting at most 3 s (killed after).
fn first_line(cmd: &mut Command) -> Option<String> {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().ok()?;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let mut out = String::new();
    child.stdout.take()?.take(64 << 10).read_to_string(&mut out).ok()?;
    out.lines().next().map(|l| l.trim().to_string()).filter(|l| !l.is_empty())
}
