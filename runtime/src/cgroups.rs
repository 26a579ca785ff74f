//! Container cgroups through libcgroups, on cgroup v1, v2 and the hybrid layout.
//!
//! Layouts (as libcgroups detects them from `/sys/fs/cgroup`):
//! - legacy (v1): one mount per controller under `/sys/fs/cgroup/<ctrl>`;
//! - hybrid: legacy plus a cgroup2 mount at `/sys/fs/cgroup/unified` (libcgroups drives
//!   only the v1 controllers there; like runc we also join the cgroup2 hierarchy and the
//!   `name=systemd` hierarchy so systemd does not count the container in our own unit);
//! - unified (v2): one cgroup2 mount at `/sys/fs/cgroup`.
//!
//! What this module adds around libcgroups:
//! - runc's path rules: a relative `cgroupsPath` is relative to the runtime's own cgroup
//!   (v1: the common ancestor of its per-controller cgroups; v2: the parent of its cgroup),
//!   a systemd-style `slice:prefix:name` is mapped to the path systemd would use, `..` is
//!   resolved lexically (never above the hierarchy root) and the root cgroup is refused;
//! - a check, before any process exists, that every controller the spec asks for is there,
//!   with an error that names the controller and says how to enable it; a spec that asks
//!   for nothing on a missing controller runs normally;
//! - undo on failure (the pid goes back to the runtime's cgroup, created dirs are removed);
//! - a removal that also handles nested cgroups and retries while the kernel still reports
//!   the cgroup busy;
//! - building the libcgroups manager only when needed (it costs ~1 ms on v1) and at most
//!   once per process and cgroup path (a foreground `run` creates and deletes);
//! - signalling every process with none escaping by fork (`cgroup.kill`, else freeze,
//!   signal, thaw), and a removal that kills nothing and leaves a cgroup that still holds
//!   processes (for a container whose own pid namespace already took its processes away).
//!
//! Device rules (`linux.resources.devices`, then the defaults every container gets, see
//! [`crate::devfilter::DEFAULT_RULES`]) are checked when the spec is (one clear error for a
//! bad rule) and installed by [`Cgroup::apply_devices`] at create, before the init makes
//! device nodes or runs anything of the container's:
//! - v1 (legacy and hybrid): the devices controller, written by libcgroups after a
//!   "deny all" of ours (as runc: a spec without rules gets the defaults only, not every
//!   device); an `a` rule limited to some numbers or bits is written as a `b` and a `c`
//!   rule, since the kernel reads any `a` rule as "every device, every access";
//! - v2: a `BPF_PROG_TYPE_CGROUP_DEVICE` program ([`crate::devfilter`], loaded by
//!   [`crate::bpf`]) attached to the container's cgroup2 directory with
//!   `BPF_F_ALLOW_MULTI`; failing that, the create fails with what the kernel lacks;
//! - hybrid: both: the v1 controller enforces, and the same program is attached to the
//!   container's directory in the cgroup2 hierarchy (`/sys/fs/cgroup/unified/...`), where
//!   a failure is only a debug note.
//!
//! Device rules of a running container do not change (`update` refuses them).

use std::cell::RefCell;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libcgroups::common::{AnyCgroupManager, CgroupManager, CgroupSetup, ControllerOpt, FreezerState};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxCpu, LinuxMemory, LinuxResources, Spec};

use crate::devfilter;

/// Where every cgroup hierarchy is mounted (libcgroups supports no other root).
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// How long `remove` keeps retrying a cgroup the kernel still reports busy.
const REMOVE_BUDGET: Duration = Duration::from_millis(1000);
/// How long undoing a failed `apply` waits for a busy cgroup.
const UNDO_BUDGET: Duration = Duration::from_millis(500);

/// The v1 controllers libcgroups knows (`libcgroups::v1::controller_type::CONTROLLERS`).
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "hugetlb",
    "memory",
    "pids",
    "perf_event",
    "blkio",
    "net_prio",
    "net_cls",
    "freezer",
];

/// Preferred hierarchies to list a cgroup's pids from (v1).
const PIDS_SOURCES: &[&str] = &["pids", "freezer", "devices", "memory", "cpu", "cpuacct", "cpuset", "blkio"];

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The spec asks for a controller this system does not offer.
    #[error("{message}")]
    ControllerUnavailable { controller: String, message: String },
    /// The cgroup filesystems could not be inspected.
    #[error("cgroups: {0}")]
    Layout(String),
    #[error("cgroup {}: {reason}", path.display())]
    InvalidPath { path: PathBuf, reason: String },
    #[error("cgroup {}: {reason}", path.display())]
    Unsupported { path: PathBuf, reason: String },
    /// An error reported by libcgroups (flattened to one line).
    #[error("cgroup {}: {what}: {msg}", path.display())]
    Libcgroups { path: PathBuf, what: &'static str, msg: String },
    #[error("cgroup {}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("cgroup: {0}")]
    Other(String),
}

/// The cgroup path a container uses: `linux.cgroupsPath` when set (absolute, or relative
/// to the runtime's own cgroup), else `/<id>` like runc.
///
/// The result is always absolute (a relative path is resolved against the cgroup of the
/// calling process), so call this once at `create` and keep the result in the state:
/// `delete` may run from another cgroup.
pub fn cgroup_path(spec: &Spec, id: &str) -> PathBuf {
    let configured =
        spec.linux().as_ref().and_then(|l| l.cgroups_path().as_ref()).filter(|p| !p.as_os_str().is_empty());
    match configured {
        Some(p) => resolve_path(p),
        None => normalize(&Path::new("/").join(id)),
    }
}

/// Absolute, lexically normalized form of a cgroupsPath (see [`cgroup_path`]).
fn resolve_path(p: &Path) -> PathBuf {
    let p = systemd_style_path(p).unwrap_or_else(|| p.to_path_buf());
    if p.is_absolute() {
        return normalize(&p);
    }
    let base = match layout() {
        Ok(l) => l.relative_base(),
        Err(e) => {
            crate::debug!("cgroups: {e}; resolving {} against /", p.display());
            PathBuf::from("/")
        }
    };
    normalize(&base.join(p))
}

/// `slice:prefix:name` (the systemd cgroup driver's format) to the cgroupfs path systemd
/// would give it: `system.slice:docker:abc` -> `/system.slice/docker-abc.scope`.
fn systemd_style_path(p: &Path) -> Option<PathBuf> {
    let s = p.to_str()?;
    if s.contains('/') {
        return None;
    }
    let mut parts = s.split(':');
    let (slice, prefix, name) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || name.is_empty() {
        return None;
    }
    let slice = if slice.is_empty() { "system.slice" } else { slice };
    let mut path = crate::systemd::expand_slice(slice)?;
    if name.ends_with(".slice") {
        return crate::systemd::expand_slice(name);
    }
    if prefix.is_empty() {
        path.push(format!("{name}.scope"));
    } else {
        path.push(format!("{prefix}-{name}.scope"));
    }
    Some(path)
}

/// Lexical normalization to an absolute path; `..` never climbs above `/`.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// A path relative to a hierarchy root ("/a/b" -> "a/b").
fn rel(p: &Path) -> &Path {
    p.strip_prefix("/").unwrap_or(p)
}

// ----------------------------------------------------------------------------------------
// The cgroup layout of this system, read once per process.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Legacy,
    Hybrid,
    Unified,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HierKind {
    /// A v1 controller hierarchy that libcgroups drives.
    V1(&'static str),
    /// The `name=systemd` v1 hierarchy (joined by us, like runc).
    Systemd,
    /// The cgroup2 hierarchy: driven by libcgroups on v2, joined by us on hybrid.
    Unified,
}

/// One hierarchy the container's processes are placed in.
#[derive(Debug, Clone)]
struct Hier {
    kind: HierKind,
    mount: PathBuf,
    /// The calling process's cgroup in this hierarchy.
    own: PathBuf,
}

impl Hier {
    /// True when libcgroups creates/removes this hierarchy's cgroup (the rest is ours).
    fn by_libcgroups(&self, mode: Mode) -> bool {
        match self.kind {
            HierKind::V1(_) => true,
            HierKind::Systemd => false,
            HierKind::Unified => mode == Mode::Unified,
        }
    }

    fn name(&self) -> &str {
        match &self.kind {
            HierKind::V1(n) => n,
            HierKind::Systemd => "name=systemd",
            HierKind::Unified => "cgroup2",
        }
    }
}

#[derive(Debug, Clone)]
struct MountEntry {
    mount_point: PathBuf,
    fstype: String,
    super_opts: Vec<String>,
}

#[derive(Debug, Clone)]
struct OwnEntry {
    hierarchy: String,
    controllers: Vec<String>,
    path: String,
}

#[derive(Debug, Clone)]
struct KernelController {
    name: String,
    hierarchy: u32,
    enabled: bool,
}

#[derive(Debug)]
struct Layout {
    mode: Mode,
    /// Hierarchies we place processes in, deduplicated by mount point.
    hiers: Vec<Hier>,
    /// The v1 controllers libcgroups' v1 manager will find.
    v1_names: Vec<&'static str>,
    /// v2: the controllers of the cgroup2 root (`cgroup.controllers`).
    v2_controllers: Vec<String>,
    /// All cgroup v1 mounts (for error messages).
    v1_mounts: Vec<MountEntry>,
    /// `/proc/cgroups`.
    kernel: Vec<KernelController>,
}

static LAYOUT: OnceLock<Result<Layout, String>> = OnceLock::new();

fn layout() -> Result<&'static Layout, CgroupError> {
    LAYOUT.get_or_init(Layout::detect).as_ref().map_err(|e| CgroupError::Layout(e.clone()))
}

impl Layout {
    fn detect() -> Result<Layout, String> {
        let mode = match libcgroups::common::get_cgroup_setup() {
            Ok(CgroupSetup::Legacy) => Mode::Legacy,
            Ok(CgroupSetup::Hybrid) => Mode::Hybrid,
            Ok(CgroupSetup::Unified) => Mode::Unified,
            Err(e) => return Err(format!("cannot detect the cgroup layout under {CGROUP_ROOT}: {e}")),
        };
        let read = |p: &str| fs::read_to_string(p).map_err(|e| format!("read {p}: {e}"));
        let mountinfo = read("/proc/self/mountinfo")?;
        let own = read("/proc/self/cgroup")?;
        // Absent when the kernel has no cgroup v1 support at all; not needed then.
        let kernel = fs::read_to_string("/proc/cgroups").unwrap_or_default();
        let v2_controllers = if mode == Mode::Unified {
            let p = format!("{CGROUP_ROOT}/cgroup.controllers");
            fs::read_to_string(&p).map_err(|e| format!("read {p}: {e}"))?
        } else {
            String::new()
        };
        Ok(Layout::from_parts(mode, &mountinfo, &own, &kernel, &v2_controllers))
    }

    fn from_parts(mode: Mode, mountinfo: &str, own: &str, kernel: &str, v2_controllers: &str) -> Layout {
        let mounts = parse_mountinfo(mountinfo);
        let own = parse_own_cgroups(own);
        let kernel = parse_proc_cgroups(kernel);
        let unified_own = own.iter().find(|o| o.hierarchy == "0").map(|o| PathBuf::from(&o.path));
        let mut hiers: Vec<Hier> = Vec::new();
        let mut v1_names = Vec::new();
        match mode {
            Mode::Unified => hiers.push(Hier {
                kind: HierKind::Unified,
                mount: PathBuf::from(CGROUP_ROOT),
                own: unified_own.unwrap_or_else(|| PathBuf::from("/")),
            }),
            Mode::Legacy | Mode::Hybrid => {
                for &name in V1_CONTROLLERS {
                    // Exactly the rules libcgroups' v1 Manager uses to find a controller:
                    // the first cgroup mount whose mount point is named after it, and a
                    // line of /proc/self/cgroup that lists it.
                    let Some(m) = mounts
                        .iter()
                        .find(|m| m.fstype == "cgroup" && libcgroups_v1_name_matches(&m.mount_point, name))
                    else {
                        continue;
                    };
                    let Some(o) = own.iter().find(|o| o.controllers.iter().any(|c| c == name)) else {
                        continue;
                    };
                    v1_names.push(name);
                    if hiers.iter().any(|h| h.mount == m.mount_point) {
                        continue; // co-mounted (cpu,cpuacct): same directory
                    }
                    hiers.push(Hier {
                        kind: HierKind::V1(name),
                        mount: m.mount_point.clone(),
                        own: PathBuf::from(&o.path),
                    });
                }
                let systemd_mount =
                    mounts.iter().find(|m| m.fstype == "cgroup" && m.super_opts.iter().any(|o| o == "name=systemd"));
                let systemd_own = own.iter().find(|o| o.controllers.iter().any(|c| c == "name=systemd"));
                if let (Some(m), Some(o)) = (systemd_mount, systemd_own) {
                    if !hiers.iter().any(|h| h.mount == m.mount_point) {
                        hiers.push(Hier {
                            kind: HierKind::Systemd,
                            mount: m.mount_point.clone(),
                            own: PathBuf::from(&o.path),
                        });
                    }
                }
                if mode == Mode::Hybrid {
                    if let Some(o) = unified_own {
                        hiers.push(Hier {
                            kind: HierKind::Unified,
                            mount: Path::new(CGROUP_ROOT).join("unified"),
                            own: o,
                        });
                    }
                }
            }
        }
        Layout {
            mode,
            hiers,
            v1_names,
            v2_controllers: v2_controllers.split_whitespace().map(str::to_string).collect(),
            v1_mounts: mounts.into_iter().filter(|m| m.fstype == "cgroup").collect(),
            kernel,
        }
    }

    /// What a relative cgroupsPath is relative to (runc's rules; see module docs).
    fn relative_base(&self) -> PathBuf {
        if self.mode == Mode::Unified {
            return self
                .hiers
                .first()
                .and_then(|h| h.own.parent())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("/"));
        }
        // runc joins each v1 controller's own cgroup; libcgroups takes one path for all,
        // so use the deepest cgroup that is an ancestor of every own cgroup (identical to
        // runc whenever the runtime's cgroups agree, the usual case).
        let mut common: Option<Vec<Component>> = None;
        for h in &self.hiers {
            let comps: Vec<Component> = h.own.components().collect();
            common = Some(match common {
                None => comps,
                Some(c) => c.iter().zip(comps.iter()).take_while(|(a, b)| a == b).map(|(a, _)| *a).collect(),
            });
        }
        normalize(&common.unwrap_or_default().iter().collect::<PathBuf>())
    }

    fn v1_has(&self, ctrl: &str) -> bool {
        self.v1_names.contains(&ctrl)
    }

    fn has(&self, ctrl: &str) -> bool {
        match self.mode {
            Mode::Unified => self.v2_controllers.iter().any(|c| c == ctrl),
            Mode::Legacy | Mode::Hybrid => self.v1_has(ctrl),
        }
    }

    /// The one-line error for a controller that is needed but missing. `what` (plural)
    /// is what cannot be done; `in_spec` adds "or remove the {what} from the spec".
    fn unavailable(&self, ctrl: &str, what: &str, in_spec: bool) -> CgroupError {
        let kernel_name = if ctrl == "io" { "blkio" } else { ctrl };
        let enable = if ctrl == "memory" {
            "on Raspberry Pi OS append ` cgroup_enable=memory` to the single line of /boot/firmware/cmdline.txt and \
             reboot (some Pi kernels from 6.12 keep it off regardless: raspberrypi/linux#6980)"
                .to_string()
        } else {
            format!(
                "boot with `cgroup_enable={kernel_name}` (on Raspberry Pi OS: add it to /boot/firmware/cmdline.txt \
                 and reboot) or use a kernel built with it"
            )
        };
        let mount_v1 =
            format!("`mkdir -p {CGROUP_ROOT}/{ctrl} && mount -t cgroup -o {ctrl} cgroup {CGROUP_ROOT}/{ctrl}`");
        // When the kernel has the controller enabled, say why it still is not usable here:
        // (reason, fix).
        let cause: Option<(String, String)> = match self.kernel.iter().find(|k| k.name == kernel_name) {
            Some(k) if k.enabled && self.mode != Mode::Unified => {
                let elsewhere = self.v1_mounts.iter().find(|m| m.super_opts.iter().any(|o| o == ctrl));
                Some(match elsewhere {
                    Some(m) => (
                        format!(
                            "it is mounted at {}, and is only found at a mount point named after it",
                            m.mount_point.display()
                        ),
                        format!("mount it at {CGROUP_ROOT}/{ctrl}"),
                    ),
                    None if k.hierarchy == 0 && self.mode == Mode::Hybrid => (
                        format!("this hybrid layout attaches it to the cgroup2 mount at {CGROUP_ROOT}/unified"),
                        format!("mount it as a v1 hierarchy with {mount_v1}"),
                    ),
                    None => ("it is not mounted".to_string(), format!("mount it with {mount_v1}")),
                })
            }
            Some(k) if k.enabled && k.hierarchy != 0 => {
                Some(("it is attached to a cgroup v1 hierarchy".to_string(), "unmount that v1 hierarchy".to_string()))
            }
            _ => None,
        };
        let remove = if in_spec { format!("or remove the {what} from the spec") } else { String::new() };
        let message = match cause {
            None => {
                let sep = if in_spec { ", " } else { "" };
                format!(
                    "the {ctrl} cgroup controller is not available on this kernel, so {what} cannot be applied: \
                     {enable}{sep}{remove}"
                )
            }
            Some((reason, fix)) => {
                let place = if self.mode == Mode::Unified { "in the cgroup2 hierarchy" } else { "to cgroup v1 here" };
                let sep = if in_spec { "; " } else { "" };
                format!(
                    "the {ctrl} cgroup controller is not available {place} ({reason}), so {what} cannot be applied: \
                     {fix}, or, where the kernel has it disabled, {enable}{sep}{remove}"
                )
            }
        };
        CgroupError::ControllerUnavailable { controller: ctrl.to_string(), message }
    }
}

/// libcgroups' `get_subsystem_mount_point` name rule (`Path::ends_with`, per component).
fn libcgroups_v1_name_matches(mount_point: &Path, name: &str) -> bool {
    let candidates: &[&str] = match name {
        "net_cls" => &["net_cls,net_prio", "net_prio,net_cls", "net_cls"],
        "net_prio" => &["net_cls,net_prio", "net_prio,net_cls", "net_prio"],
        "cpu" => &["cpu,cpuacct", "cpu"],
        "cpuacct" => &["cpu,cpuacct", "cpuacct"],
        _ => return mount_point.ends_with(name),
    };
    candidates.iter().any(|c| mount_point.ends_with(c))
}

fn parse_mountinfo(s: &str) -> Vec<MountEntry> {
    s.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let _source = r.next();
            let super_opts = r.next().unwrap_or("").split(',').map(str::to_string).collect();
            Some(MountEntry { mount_point: PathBuf::from(mount_point), fstype: fstype.to_string(), super_opts })
        })
        .collect()
}

fn parse_own_cgroups(s: &str) -> Vec<OwnEntry> {
    s.lines()
        .filter_map(|line| {
            let mut f = line.splitn(3, ':');
            let hierarchy = f.next()?.to_string();
            let controllers = f.next()?;
            let path = f.next()?.to_string();
            let controllers = controllers.split(',').filter(|c| !c.is_empty()).map(str::to_string).collect();
            Some(OwnEntry { hierarchy, controllers, path })
        })
        .collect()
}

fn parse_proc_cgroups(s: &str) -> Vec<KernelController> {
    s.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let name = f.next()?.to_string();
            let hierarchy = f.next()?.parse().ok()?;
            let _num = f.next()?;
            let enabled = f.next()? == "1";
            Some(KernelController { name, hierarchy, enabled })
        })
        .collect()
}

// ----------------------------------------------------------------------------------------
// Resources: what the spec really asks for.

/// The resources handed to libcgroups: empty sections removed (so they do not require a
/// controller), settings the kernel or layout cannot take dropped with a debug note, and
/// the controllers they need.
struct Effective {
    resources: LinuxResources,
    disable_oom_killer: bool,
    /// The spec's device rules, validated (the defaults not added yet).
    devices: Vec<devfilter::Rule>,
    /// (controller, what it is needed for)
    needs: Vec<(String, &'static str)>,
}

fn effective(layout: &Layout, path: &Path, res: Option<&LinuxResources>) -> Result<Effective, CgroupError> {
    let v2 = layout.mode == Mode::Unified;
    let mut out = res.cloned().unwrap_or_default();
    let mut needs: Vec<(String, &'static str)> = Vec::new();
    let mut need = |c: &str, what: &'static str| needs.push((c.to_string(), what));
    let mut disable_oom_killer = false;

    // memory
    let memory = (*out.memory()).and_then(|m| memory_request(layout, m));
    if let Some(m) = &memory {
        disable_oom_killer = m.disable_oom_killer().unwrap_or(false);
        need("memory", "memory limits");
    }
    out.set_memory(memory);

    // cpu, cpuset
    let cpu = out.cpu().clone().and_then(cpu_request);
    if let Some(c) = &cpu {
        let rt = c.realtime_runtime().is_some_and(|v| v > 0) || c.realtime_period().is_some_and(|v| v > 0);
        if v2 && rt {
            return Err(CgroupError::Unsupported {
                path: path.to_path_buf(),
                reason: "cpu realtime settings (realtimeRuntime/realtimePeriod) are not supported on cgroup v2; remove them from the spec".into(),
            });
        }
        if c.shares().is_some()
            || c.quota().is_some()
            || c.period().is_some()
            || c.burst().is_some()
            || c.idle().is_some()
            || c.realtime_runtime().is_some()
            || c.realtime_period().is_some()
        {
            need("cpu", "cpu shares and quotas");
        }
        if c.cpus().is_some() || c.mems().is_some() {
            need("cpuset", "cpuset settings (cpus/mems)");
        }
    }
    out.set_cpu(cpu);

    // pids: a limit <= 0 means "max", the default of a new cgroup.
    let pids = (*out.pids()).filter(|p| p.limit() > 0);
    if pids.is_some() {
        need("pids", "pids limits");
    }
    out.set_pids(pids);

    // hugetlb
    let huge = out.hugepage_limits().clone().filter(|h| !h.is_empty());
    if huge.is_some() {
        need("hugetlb", "hugepage limits");
    }
    out.set_hugepage_limits(huge);

    // block IO
    let blkio = out.block_io().clone().filter(|b| {
        let some = |v: &Option<Vec<_>>| v.as_ref().is_some_and(|v: &Vec<_>| !v.is_empty());
        b.weight().is_some()
            || b.leaf_weight().is_some()
            || b.weight_device().as_ref().is_some_and(|v| !v.is_empty())
            || some(b.throttle_read_bps_device())
            || some(b.throttle_write_bps_device())
            || some(b.throttle_read_iops_device())
            || some(b.throttle_write_iops_device())
    });
    if blkio.is_some() {
        need(if v2 { "io" } else { "blkio" }, "block IO limits");
    }
    out.set_block_io(blkio);

    // network (net_cls/net_prio: v1 only; libcgroups requires both when either is set)
    let network = out
        .network()
        .clone()
        .filter(|n| n.class_id().is_some() || n.priorities().as_ref().is_some_and(|p| !p.is_empty()));
    if network.is_some() {
        if v2 {
            crate::debug!(
                "cgroup {}: network classID/priorities are cgroup v1 only; ignored on cgroup v2",
                path.display()
            );
            out.set_network(None);
        } else {
            need("net_cls", "network classID/priorities");
            need("net_prio", "network classID/priorities");
            out.set_network(network);
        }
    } else {
        out.set_network(None);
    }

    // devices: validated for v1 and v2 alike, before any process exists.
    let devices = devfilter::rules_from_spec(out.devices().as_deref().unwrap_or_default())
        .map_err(|e| CgroupError::Other(e.to_string()))?;
    // Enforced by Cgroup::apply_devices (a BPF program on v2, the rules written to the
    // devices controller on v1), not by libcgroups: so a spec with no other limit needs no
    // libcgroups manager at all (building the v1 one parses the mount table once per
    // controller).
    if !v2 {
        need("devices", "device rules");
    }
    out.set_devices(None);

    // rdma: libcgroups has no rdma controller.
    if out.rdma().as_ref().is_some_and(|r| !r.is_empty()) {
        crate::debug!("cgroup {}: rdma limits are not supported; ignored", path.display());
    }
    out.set_rdma(None);

    // unified (raw cgroup2 files)
    let unified = out.unified().clone().filter(|u| !u.is_empty());
    if let Some(u) = &unified {
        if !v2 {
            return Err(CgroupError::Unsupported {
                path: path.to_path_buf(),
                reason: "linux.resources.unified sets cgroup v2 files, but this system uses cgroup v1".into(),
            });
        }
        for key in u.keys() {
            if let Some((ctrl, _)) = key.split_once('.') {
                if ctrl != "cgroup" && !needs.iter().any(|(c, _)| c == ctrl) {
                    needs.push((ctrl.to_string(), "unified cgroup settings"));
                }
            }
        }
    }
    out.set_unified(unified);

    for (ctrl, what) in &needs {
        if !layout.has(ctrl) {
            return Err(layout.unavailable(ctrl, what, true));
        }
    }
    Ok(Effective { resources: out, disable_oom_killer, devices, needs })
}

/// The rules as lines for the v1 devices controller (`devices.allow` when the bool is true,
/// `devices.deny` else), meaning what they mean on v2: the kernel reads any `a` rule as
/// "every device, every access" (whatever numbers and bits it names), so an `a` rule
/// limited to some is written as a `b` and a `c` rule; "any" is written as `*`.
fn v1_device_lines(rules: &[devfilter::Rule]) -> Vec<(bool, String)> {
    let mut out = Vec::with_capacity(rules.len());
    let num = |n: Option<u32>| n.map(|n| n.to_string()).unwrap_or_else(|| "*".into());
    for r in rules {
        let everything = r.major.is_none() && r.minor.is_none() && r.access == devfilter::ACC_ALL;
        let types: &[char] = match r.kind {
            devfilter::Kind::All if everything => &['a'],
            devfilter::Kind::All => &['b', 'c'],
            devfilter::Kind::Block => &['b'],
            devfilter::Kind::Char => &['c'],
        };
        let access: String = [(devfilter::ACC_READ, 'r'), (devfilter::ACC_WRITE, 'w'), (devfilter::ACC_MKNOD, 'm')]
            .iter()
            .filter(|(bit, _)| r.access & bit != 0)
            .map(|(_, c)| *c)
            .collect();
        for &t in types {
            out.push((r.allow, format!("{t} {}:{} {access}", num(r.major), num(r.minor))));
        }
    }
    out
}

/// True when the resources ask libcgroups for nothing.
fn asks_nothing(r: &LinuxResources) -> bool {
    r.memory().is_none()
        && r.cpu().is_none()
        && r.pids().is_none()
        && r.hugepage_limits().is_none()
        && r.block_io().is_none()
        && r.network().is_none()
        && r.unified().is_none()
        && r.devices().is_none()
}

/// The memory section if it asks for anything this layout can apply.
fn memory_request(layout: &Layout, mut m: LinuxMemory) -> Option<LinuxMemory> {
    #[allow(deprecated)]
    if m.kernel().is_some() {
        // Obsolete since Linux 5.4 and ignored by runc; writing it fails on new kernels.
        crate::debug!("cgroup: memory.kernel (kernel memory limit) is obsolete; ignored");
        m.set_kernel(None);
    }
    if layout.mode == Mode::Unified {
        // libcgroups' v2 memory controller applies limit, reservation and swap only.
        let asks = m.limit().is_some() || m.reservation().is_some() || m.swap().is_some();
        return asks.then_some(m);
    }
    if m.swap().is_some() && !v1_swap_accounting(layout) {
        crate::debug!("cgroup: the kernel has no swap accounting (memory.memsw.*); memory limited without swap");
        m.set_swap(None);
    }
    let asks = m.limit().is_some()
        || m.reservation().is_some()
        || m.swap().is_some()
        || m.kernel_tcp().is_some()
        || m.swappiness().is_some()
        || m.disable_oom_killer() == Some(true)
        || m.use_hierarchy().is_some()
        || m.check_before_update().is_some();
    asks.then_some(m)
}

fn v1_swap_accounting(layout: &Layout) -> bool {
    layout
        .hiers
        .iter()
        .find(|h| h.kind == HierKind::V1("memory"))
        .is_some_and(|h| h.mount.join("memory.memsw.limit_in_bytes").exists())
}

/// The cpu section if it asks for anything (empty cpus/mems strings mean unset).
fn cpu_request(mut c: LinuxCpu) -> Option<LinuxCpu> {
    if c.cpus().as_deref().is_some_and(|s| s.trim().is_empty()) {
        c.set_cpus(None);
    }
    if c.mems().as_deref().is_some_and(|s| s.trim().is_empty()) {
        c.set_mems(None);
    }
    let asks = c.shares().is_some()
        || c.quota().is_some()
        || c.period().is_some()
        || c.burst().is_some()
        || c.idle().is_some()
        || c.realtime_runtime().is_some()
        || c.realtime_period().is_some()
        || c.cpus().is_some()
        || c.mems().is_some();
    asks.then_some(c)
}

// ----------------------------------------------------------------------------------------

/// How a container's first process enters the cgroup that [`Cgroup::prepare`] made.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    /// v1 `tasks` files (every controller hierarchy and name=systemd): the process
    /// writes "0" into each, moving itself.
    pub tasks: Vec<PathBuf>,
    /// The cgroup2 directory (pure v2, or the unified hierarchy of a hybrid host): the
    /// process is cloned into it with `CLONE_INTO_CGROUP`.
    pub v2_dir: Option<PathBuf>,
}

impl Entry {
    /// Called by the new process itself, first thing after the clone.
    pub fn enter_self(&self) -> io::Result<()> {
        for t in &self.tasks {
            fs::write(t, b"0").map_err(|e| io::Error::new(e.kind(), format!("enter cgroup {}: {e}", t.display())))?;
        }
        Ok(())
    }
}

/// One container's cgroup.
pub struct Cgroup {
    path: PathBuf,
    layout: &'static Layout,
}

thread_local! {
    /// libcgroups managers built by this process, by cgroup path. Built on first use only:
    /// on v1, libcgroups' `Manager::new` parses /proc/self/mountinfo and /proc/self/cgroup
    /// once per controller (~1 ms); kept so a foreground `run` (create, then delete in the
    /// same process) builds one, not two. Mounts do not change under the runtime's parent.
    static MANAGERS: RefCell<Vec<(PathBuf, Rc<AnyCgroupManager>)>> = const { RefCell::new(Vec::new()) };
}

impl std::fmt::Debug for Cgroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cgroup").field("path", &self.path).field("mode", &self.layout.mode).finish()
    }
}

/// A directory `apply` placed the pid in, and what it created to do so.
struct Placement {
    hier: Hier,
    dir: PathBuf,
    /// The topmost directory `apply` created (None: the cgroup already existed).
    created: Option<PathBuf>,
}

impl Cgroup {
    /// Opens (does not create) the cgroup at `path` (as returned by [`cgroup_path`]; a
    /// relative path is resolved against the caller's cgroup). Cheap: reads the layout
    /// once per process, touches no cgroup.
    pub fn new(path: &Path) -> Result<Self, CgroupError> {
        let layout = layout()?;
        let resolved = resolve_path(path);
        if resolved == Path::new("/") {
            return Err(CgroupError::InvalidPath {
                path: path.to_path_buf(),
                reason: "refusing to use the root cgroup for a container".into(),
            });
        }
        Ok(Cgroup { path: resolved, layout })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directories of this cgroup, one per hierarchy.
    fn dirs(&self) -> impl Iterator<Item = (&Hier, PathBuf)> + '_ {
        self.layout.hiers.iter().map(|h| (h, h.mount.join(rel(&self.path))))
    }

    fn manager(&self) -> Result<Rc<AnyCgroupManager>, CgroupError> {
        let cached = MANAGERS.with(|c| c.borrow().iter().find(|(p, _)| *p == self.path).map(|(_, m)| m.clone()));
        if let Some(m) = cached {
            return Ok(m);
        }
        let m = match self.layout.mode {
            Mode::Legacy | Mode::Hybrid => libcgroups::v1::Manager::new(&self.path)
                .map(|m| m.any())
                .map_err(|e| self.lib_err("opening the v1 cgroup manager", e))?,
            Mode::Unified => libcgroups::v2::manager::Manager::new(PathBuf::from(CGROUP_ROOT), self.path.clone())
                .map(|m| m.any())
                .map_err(|e| self.lib_err("opening the v2 cgroup manager", e))?,
        };
        let m = Rc::new(m);
        MANAGERS.with(|c| c.borrow_mut().push((self.path.clone(), m.clone())));
        Ok(m)
    }

    fn lib_err(&self, what: &'static str, e: impl std::fmt::Display) -> CgroupError {
        CgroupError::Libcgroups { path: self.path.clone(), what, msg: one_line(&e.to_string()) }
    }

    fn io_err(&self, what: String, source: io::Error) -> CgroupError {
        CgroupError::Io { path: self.path.clone(), what, source }
    }

    /// Fails with a clear error when `resources` asks for a controller this kernel lacks
    /// (or for something this layout cannot do). Reads no cgroup; call it before creating
    /// the container's process.
    pub fn check(&self, resources: Option<&LinuxResources>) -> Result<(), CgroupError> {
        let eff = effective(self.layout, &self.path, resources)?;
        crate::debug!(
            "cgroup {} ({:?}): needs {:?}",
            self.path.display(),
            self.layout.mode,
            eff.needs.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>()
        );
        Ok(())
    }

    /// Creates the cgroup, moves `pid` into it and applies `resources`.
    ///
    /// On error nothing is left behind: `pid` is moved back to the runtime's own cgroup
    /// (killed if that is impossible) and every directory this call created is removed.
    pub fn apply(&self, pid: i32, resources: Option<&LinuxResources>) -> Result<(), CgroupError> {
        let eff = effective(self.layout, &self.path, resources)?;
        let placements: Vec<Placement> = self
            .dirs()
            .map(|(h, dir)| Placement { hier: h.clone(), created: first_missing(&h.mount, &dir), dir })
            .collect();
        let result = self.place_and_limit(pid, &eff, &placements);
        if let Err(e) = result {
            let left = self.undo(Some(pid), &placements);
            if left.is_empty() {
                return Err(e);
            }
            return Err(CgroupError::Other(format!("{e}; cleanup left {}", left.join(", "))));
        }
        Ok(())
    }

    fn place_and_limit(&self, pid: i32, eff: &Effective, placements: &[Placement]) -> Result<(), CgroupError> {
        let mgr = self.manager()?;
        mgr.add_task(Pid::from_raw(pid)).map_err(|e| self.lib_err("adding the process", e))?;
        for p in placements.iter().filter(|p| !p.hier.by_libcgroups(self.layout.mode)) {
            fs::create_dir_all(&p.dir).map_err(|e| self.io_err(format!("create {}", p.dir.display()), e))?;
            let procs = p.dir.join("cgroup.procs");
            fs::write(&procs, pid.to_string()).map_err(|e| self.io_err(format!("write {}", procs.display()), e))?;
        }
        let opt = ControllerOpt {
            resources: &eff.resources,
            disable_oom_killer: eff.disable_oom_killer,
            oom_score_adj: None,
            freezer_state: None,
        };
        mgr.apply(&opt).map_err(|e| self.lib_err("applying resource limits", e))
    }

    /// Undoes a failed `apply`; returns what could not be cleaned up.
    fn undo(&self, pid: Option<i32>, placements: &[Placement]) -> Vec<String> {
        let mut left = Vec::new();
        let mut killed = false;
        for p in placements {
            if !p.dir.exists() {
                continue;
            }
            if let Some(pid) = pid {
                let back = p.hier.mount.join(rel(&p.hier.own)).join("cgroup.procs");
                if fs::write(&back, pid.to_string()).is_err() && p.created.is_some() && !killed {
                    // The pid cannot go back; the create is failing anyway, so end it.
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    killed = true;
                }
            }
            let Some(top) = &p.created else { continue };
            let deadline = Instant::now() + UNDO_BUDGET;
            let mut dir = p.dir.clone();
            loop {
                if let Err(e) = rmdir_retry(&dir, deadline, OnBusy::Wait) {
                    left.push(format!("{} ({e})", dir.display()));
                    break;
                }
                if dir == *top || !dir.pop() {
                    break;
                }
            }
        }
        left
    }

    /// Creates the cgroup directories (every hierarchy) before any process exists; the
    /// limits follow with [`Cgroup::apply_limits`] (the runtime does that while the
    /// container's init sets up its mounts, and the init waits for it before it creates
    /// devices or runs anything of the container's). The first process enters by itself
    /// (see [`Entry`]): a process that writes "0" to a v1 `tasks` file moves only itself
    /// and the kernel skips the global threadgroup lock that a write of a pid to
    /// `cgroup.procs` takes (that lock waits for an RCU grace period: 5-10 ms here, per
    /// container). On cgroup v2 the process is cloned straight into the cgroup
    /// (`CLONE_INTO_CGROUP`). On error everything created is removed.
    pub fn prepare(&self, resources: Option<&LinuxResources>) -> Result<Entry, CgroupError> {
        effective(self.layout, &self.path, resources)?;
        let placements = self.placements();
        let result = self.prepare_dirs(&placements);
        if result.is_err() {
            self.undo(None, &placements);
        }
        result
    }

    fn placements(&self) -> Vec<Placement> {
        self.dirs().map(|(h, dir)| Placement { hier: h.clone(), created: first_missing(&h.mount, &dir), dir }).collect()
    }

    /// `--systemd-cgroup`: the limits of `resources` that systemd knows, as properties of
    /// the container's scope (the same effective resources [`Cgroup::apply_limits`] writes).
    pub fn set_systemd_properties(
        &self,
        scope: &crate::systemd::Scope,
        resources: Option<&LinuxResources>,
    ) -> Result<(), CgroupError> {
        let eff = effective(self.layout, &self.path, resources)?;
        if asks_nothing(&eff.resources) && !eff.disable_oom_killer {
            return Ok(());
        }
        scope.set_properties(&eff.resources, eff.disable_oom_killer).map_err(|e| CgroupError::Other(e.to_string()))
    }

    /// This cgroup's directory in the cgroup2 hierarchy (pure v2, or `unified` on hybrid),
    /// whether it exists or not.
    pub fn unified_dir(&self) -> Option<PathBuf> {
        self.dirs().find(|(h, _)| h.kind == HierKind::Unified).map(|(_, d)| d)
    }

    /// Installs the device rules of `resources` (the spec's, then the defaults; see the
    /// module docs) in the cgroup [`Cgroup::prepare`] created. Once per container, at
    /// create, before [`Cgroup::apply_limits`] (on v1 it starts the devices cgroup from
    /// "deny all", which apply_limits then opens up) and before the init creates devices.
    /// Not at `update`: the rules of a running container stay as they are.
    pub fn apply_devices(&self, resources: Option<&LinuxResources>) -> Result<(), CgroupError> {
        let eff = effective(self.layout, &self.path, resources)?;
        for (h, dir) in self.dirs() {
            match h.kind {
                HierKind::V1("devices") => {
                    // From "deny all", then each rule in order (the spec's, then the defaults).
                    let deny = dir.join("devices.deny");
                    let allow = dir.join("devices.allow");
                    fs::write(&deny, "a").map_err(|e| self.io_err(format!("write {}", deny.display()), e))?;
                    for (is_allow, line) in v1_device_lines(&devfilter::with_defaults(eff.devices.clone())) {
                        let f = if is_allow { &allow } else { &deny };
                        fs::write(f, &line)
                            .map_err(|e| self.io_err(format!("write {line:?} to {}", f.display()), e))?;
                    }
                }
                HierKind::Unified => self.attach_device_program(&dir, eff.devices.clone())?,
                _ => {}
            }
        }
        Ok(())
    }

    /// The device program into the cgroup2 directory `dir`: the enforcement on v2, a second
    /// line behind the v1 controller on hybrid (where a failure is only a debug note).
    fn attach_device_program(&self, dir: &Path, spec_rules: Vec<devfilter::Rule>) -> Result<(), CgroupError> {
        let rules = devfilter::with_defaults(spec_rules);
        let prog = devfilter::program(&rules).map_err(|e| CgroupError::Other(e.to_string()))?;
        let Err(e) = crate::bpf::attach_device_filter(dir, &prog) else {
            crate::debug!("cgroup {}: device program ({} instructions) attached", dir.display(), prog.len());
            return Ok(());
        };
        let p = self.path.display();
        if self.layout.mode != Mode::Unified {
            crate::debug!("cgroup {p}: {e}; the v1 devices controller enforces the device rules");
            return Ok(());
        }
        // As runc and crun: nothing is lost when the rules allow every device anyway, or in
        // a user namespace (no device node can be made there, and bpf(2) is not allowed).
        if allows_every_device(&rules) || in_user_namespace() {
            crate::debug!("cgroup {p}: {e}; ignored: the rules allow every device, or this is a user namespace");
            return Ok(());
        }
        Err(CgroupError::Other(format!("cgroup {p}: the device rules cannot be enforced on cgroup v2: {e}")))
    }

    /// Applies `resources` to the cgroup [`Cgroup::prepare`] created (through libcgroups).
    pub fn apply_limits(&self, resources: Option<&LinuxResources>) -> Result<(), CgroupError> {
        let eff = effective(self.layout, &self.path, resources)?;
        if asks_nothing(&eff.resources) && !eff.disable_oom_killer {
            return Ok(());
        }
        let opt = ControllerOpt {
            resources: &eff.resources,
            disable_oom_killer: eff.disable_oom_killer,
            oom_score_adj: None,
            freezer_state: None,
        };
        let mgr = self.manager()?;
        mgr.apply(&opt).map_err(|e| self.lib_err("applying resource limits", e))
    }

    fn prepare_dirs(&self, placements: &[Placement]) -> Result<Entry, CgroupError> {
        let mut entry = Entry { tasks: Vec::new(), v2_dir: None };
        for p in placements {
            match &p.hier.kind {
                HierKind::Unified => {
                    if self.layout.mode == Mode::Unified {
                        self.enable_v2_controllers(&p.hier.mount)?;
                    }
                    fs::create_dir_all(&p.dir).map_err(|e| self.io_err(format!("create {}", p.dir.display()), e))?;
                    entry.v2_dir = Some(p.dir.clone());
                }
                kind => {
                    fs::create_dir_all(&p.dir).map_err(|e| self.io_err(format!("create {}", p.dir.display()), e))?;
                    if *kind == HierKind::V1("cpuset") {
                        // A new v1 cpuset is empty and refuses tasks: inherit the parent's.
                        for f in ["cpuset.cpus", "cpuset.mems"] {
                            self.inherit_cpuset(&p.hier.mount, &p.dir, f)?;
                        }
                    }
                    entry.tasks.push(p.dir.join("tasks"));
                }
            }
        }
        Ok(entry)
    }

    /// v2: every available controller enabled on the way down to the container's
    /// parent, as libcgroups' add_task does (it needs a pid; we have none yet).
    fn enable_v2_controllers(&self, mount: &Path) -> Result<(), CgroupError> {
        let avail = fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
        let want: Vec<String> = avail.split_whitespace().map(|c| format!("+{c}")).collect();
        if want.is_empty() {
            return Ok(());
        }
        let mut cur = mount.to_path_buf();
        let comps: Vec<_> = rel(&self.path).components().collect();
        for (i, c) in comps.iter().enumerate() {
            // Enabling in a directory lets its children use the controllers.
            let _ = fs::write(cur.join("cgroup.subtree_control"), want.join(" "));
            cur.push(c);
            if i + 1 < comps.len() {
                fs::create_dir_all(&cur).map_err(|e| self.io_err(format!("create {}", cur.display()), e))?;
            }
        }
        Ok(())
    }

    fn inherit_cpuset(&self, mount: &Path, dir: &Path, file: &str) -> Result<(), CgroupError> {
        // Walk from the top so every level gets a value.
        let sub = dir.strip_prefix(mount).unwrap_or(dir);
        let mut cur = mount.to_path_buf();
        let mut parent_val = fs::read_to_string(cur.join(file)).unwrap_or_default();
        for c in sub.components() {
            cur.push(c);
            let f = cur.join(file);
            let v = fs::read_to_string(&f).unwrap_or_default();
            if v.trim().is_empty() {
                fs::write(&f, parent_val.trim()).map_err(|e| self.io_err(format!("write {}", f.display()), e))?;
            } else {
                parent_val = v;
            }
        }
        Ok(())
    }

    /// How a new process enters this existing cgroup (for `exec`): as [`Cgroup::prepare`]
    /// but creating and changing nothing.
    pub fn entry(&self) -> Entry {
        let mut entry = Entry::default();
        for (h, dir) in self.dirs() {
            if !dir.is_dir() {
                continue;
            }
            match h.kind {
                HierKind::Unified => entry.v2_dir = Some(dir),
                _ => entry.tasks.push(dir.join("tasks")),
            }
        }
        entry
    }

    /// Moves `pid` into this existing cgroup (every hierarchy), changing no limit: for
    /// `exec`. Much cheaper than [`Cgroup::apply`] on v1 (no libcgroups manager, no
    /// rewrite of the device rules). Fails if the cgroup does not exist.
    pub fn join(&self, pid: i32) -> Result<(), CgroupError> {
        let mut joined = false;
        for (h, dir) in self.dirs() {
            let procs = dir.join("cgroup.procs");
            match fs::write(&procs, pid.to_string()) {
                Ok(()) => joined |= h.by_libcgroups(self.layout.mode),
                // A hierarchy mounted after the container was created: nothing to join.
                Err(e) if e.kind() == io::ErrorKind::NotFound && !dir.exists() => {}
                Err(e) => return Err(self.io_err(format!("write {}", procs.display()), e)),
            }
        }
        if !joined {
            return Err(self.io_err(
                "join".into(),
                io::Error::new(io::ErrorKind::NotFound, "the cgroup does not exist (container gone?)"),
            ));
        }
        Ok(())
    }

    /// Every pid in the cgroup (host pid namespace), nested cgroups included.
    /// Empty when the cgroup does not exist.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let source = PIDS_SOURCES
            .iter()
            .find_map(|name| self.dirs().find(|(h, _)| h.kind == HierKind::V1(name)))
            .or_else(|| self.dirs().next());
        let Some((_, dir)) = source else { return Ok(Vec::new()) };
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let pids = libcgroups::common::get_all_pids(&dir).map_err(|e| self.lib_err("listing processes", e))?;
        Ok(pids.into_iter().map(Pid::as_raw).collect())
    }

    /// Freezes (true) or thaws (false) every process of the cgroup.
    pub fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        if self.layout.mode != Mode::Unified && !self.layout.v1_has("freezer") {
            return Err(self.layout.unavailable("freezer", "freezing and thawing", false));
        }
        let state = if frozen { FreezerState::Frozen } else { FreezerState::Thawed };
        let what = if frozen { "freezing" } else { "thawing" };
        self.manager()?.freeze(state).map_err(|e| self.lib_err(what, e))
    }

    /// True when the cgroup is frozen (v1 `freezer.state` FROZEN or FREEZING, v2
    /// `cgroup.freeze` 1). False when there is no freezer or no such cgroup. Two small
    /// reads, no libcgroups manager: `state` calls this for every running container.
    pub fn frozen(&self) -> bool {
        for (h, dir) in self.dirs() {
            match (&h.kind, self.layout.mode) {
                (HierKind::V1("freezer"), _) => {
                    let s = fs::read_to_string(dir.join("freezer.state")).unwrap_or_default();
                    return matches!(s.trim(), "FROZEN" | "FREEZING");
                }
                (HierKind::Unified, Mode::Unified) => {
                    return fs::read_to_string(dir.join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1");
                }
                _ => {}
            }
        }
        false
    }

    /// The cgroup's directory in the cgroup2 hierarchy (pure v2, or the unified hierarchy
    /// of a hybrid host), when it exists.
    fn v2_dir(&self) -> Option<PathBuf> {
        self.dirs().find(|(h, _)| h.kind == HierKind::Unified).map(|(_, d)| d).filter(|d| d.is_dir())
    }

    /// Sends `sig` to every process of the cgroup (nested cgroups included) in a way no
    /// process escapes by forking meanwhile, as runc's signalAllProcesses: SIGKILL goes
    /// through `cgroup.kill` (a cgroup2 core file since Linux 5.14, so also there in the
    /// unified hierarchy of a hybrid host, where the container's processes are too);
    /// otherwise the cgroup is frozen, every process signalled, and thawed again (left
    /// frozen when it was frozen before). Without a freezer the processes are signalled one
    /// by one. A cgroup that does not exist has nothing to signal.
    pub fn signal_all(&self, sig: i32) -> Result<(), CgroupError> {
        if sig == libc::SIGKILL {
            if let Some(dir) = self.v2_dir() {
                let f = dir.join("cgroup.kill");
                match fs::write(&f, b"1") {
                    Ok(()) => return Ok(()),
                    // Before Linux 5.14 (or the directory just went away): signal one by one.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(self.io_err(format!("write {}", f.display()), e)),
                }
            }
        }
        if self.pids()?.is_empty() {
            return Ok(()); // also: no cgroup (freezing would create one)
        }
        let froze = !self.frozen()
            && match self.freeze(true) {
                Ok(()) => true,
                Err(e) => {
                    crate::debug!("{e}; signalling the processes one by one");
                    false
                }
            };
        // Listed once frozen: no process can fork after this.
        let pids = self.pids();
        for &p in pids.as_deref().unwrap_or_default() {
            // SAFETY: kill(2) with a pid and a signal number (real-time ones included).
            unsafe { libc::kill(p, sig) };
        }
        if froze {
            self.freeze(false)?;
        }
        pids.map(|_| ())
    }

    /// Removes the cgroup (all hierarchies, nested cgroups included), killing any process
    /// still in it and retrying briefly while the kernel reports it busy. Idempotent.
    pub fn remove(&self) -> Result<(), CgroupError> {
        self.refuse_own()?;
        let existing: Vec<(&Hier, PathBuf)> = self.dirs().filter(|(_, d)| d.exists()).collect();
        if existing.is_empty() {
            return Ok(()); // nothing to do: skip building the manager
        }
        let deadline = Instant::now() + REMOVE_BUDGET;
        // libcgroups removes the leaf only: take nested cgroups away first.
        for (_, dir) in &existing {
            if let Err(e) = sweep_children(dir, deadline, OnBusy::Kill) {
                crate::debug!("cgroup {}: removing nested cgroups of {}: {e}", self.path.display(), dir.display());
            }
        }
        let lib_result = if existing.iter().any(|(h, _)| h.by_libcgroups(self.layout.mode)) {
            self.manager().and_then(|m| m.remove().map_err(|e| self.lib_err("removing", e)))
        } else {
            Ok(())
        };
        // Whatever is left (our own hierarchies, or what libcgroups gave up on).
        let mut left = Vec::new();
        for (_, dir) in &existing {
            if let Err(e) = sweep(dir, deadline, OnBusy::Kill) {
                left.push((dir.clone(), e));
            }
        }
        match (left.into_iter().next(), lib_result) {
            (None, Ok(())) => Ok(()),
            (None, Err(lib)) => {
                crate::debug!("{lib} (recovered: removed on retry)");
                Ok(())
            }
            (Some((dir, e)), Err(lib)) => {
                Err(CgroupError::Other(format!("{lib}; {} is still there: {e}", dir.display())))
            }
            (Some((dir, e)), Ok(())) => Err(self.io_err(format!("remove {}", dir.display()), e)),
        }
    }

    /// Removes the cgroup (all hierarchies, nested cgroups first) unless a process is in
    /// it, killing nothing: a container that has its own pid namespace owns only what is in
    /// that namespace, and the cgroup may also hold processes of others (another container
    /// given the same cgroupsPath). Returns false, leaving the cgroup, when processes are
    /// there. Idempotent.
    pub fn remove_if_empty(&self) -> Result<bool, CgroupError> {
        self.refuse_own()?;
        let existing: Vec<PathBuf> = self.dirs().map(|(_, d)| d).filter(|d| d.exists()).collect();
        if existing.is_empty() {
            return Ok(true);
        }
        if !self.pids()?.is_empty() {
            return Ok(false);
        }
        let deadline = Instant::now() + REMOVE_BUDGET;
        for dir in &existing {
            match sweep(dir, deadline, OnBusy::GiveUpIfPopulated) {
                Ok(()) => {}
                // A process is in it (or, rarely, the kernel still reports it busy).
                Err(e) if e.raw_os_error() == Some(libc_ebusy()) => return Ok(false),
                Err(e) => return Err(self.io_err(format!("remove {}", dir.display()), e)),
            }
        }
        Ok(true)
    }

    /// Refuses to remove a cgroup the runtime itself runs in.
    fn refuse_own(&self) -> Result<(), CgroupError> {
        for (h, dir) in self.dirs() {
            if h.own.starts_with(&self.path) {
                return Err(CgroupError::InvalidPath {
                    path: self.path.clone(),
                    reason: format!(
                        "refusing to remove: the runtime itself runs in it ({} {})",
                        h.name(),
                        dir.display()
                    ),
                });
            }
        }
        Ok(())
    }
}

/// The topmost directory between `mount` (exclusive) and `dir` that does not exist yet.
fn first_missing(mount: &Path, dir: &Path) -> Option<PathBuf> {
    let sub = dir.strip_prefix(mount).ok()?;
    let mut cur = mount.to_path_buf();
    for c in sub.components() {
        cur.push(c);
        if !cur.exists() {
            return Some(cur);
        }
    }
    None
}

/// What a removal does while the kernel still reports a cgroup busy.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OnBusy {
    /// Kill what is in it and retry (a container's own cgroup on delete).
    Kill,
    /// Retry while its processes finish exiting.
    Wait,
    /// Retry while it holds no process; give up (EBUSY) once one is alive in it: it is not
    /// ours to empty (a cgroup shared with another container).
    GiveUpIfPopulated,
}

/// Removes `dir`'s nested cgroups (depth first).
fn sweep_children(dir: &Path, deadline: Instant, busy: OnBusy) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sweep(&entry.path(), deadline, busy)?;
        }
    }
    Ok(())
}

/// Removes `dir` and its nested cgroups.
fn sweep(dir: &Path, deadline: Instant, busy: OnBusy) -> io::Result<()> {
    sweep_children(dir, deadline, busy)?;
    rmdir_retry(dir, deadline, busy)
}

/// `rmdir` with retries while the cgroup is busy, as `busy` says.
fn rmdir_retry(dir: &Path, deadline: Instant, busy: OnBusy) -> io::Result<()> {
    let mut delay = Duration::from_millis(1);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc_ebusy()) && Instant::now() < deadline => {
                match busy {
                    OnBusy::Kill => kill_all(dir),
                    OnBusy::GiveUpIfPopulated if has_procs(dir) => return Err(e),
                    OnBusy::Wait | OnBusy::GiveUpIfPopulated => {}
                }
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

/// True when `dir/cgroup.procs` lists a process.
fn has_procs(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|s| s.lines().any(|l| !l.trim().is_empty()))
}

fn libc_ebusy() -> i32 {
    nix::errno::Errno::EBUSY as i32
}

/// SIGKILL every process listed in `dir/cgroup.procs`.
fn kill_all(dir: &Path) {
    if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()).filter(|p| *p > 0) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// True when the last rule that decides everything allows it and no deny follows.
fn allows_every_device(rules: &[devfilter::Rule]) -> bool {
    let all = |r: &devfilter::Rule| {
        r.kind == devfilter::Kind::All && r.major.is_none() && r.minor.is_none() && r.access == devfilter::ACC_ALL
    };
    rules.iter().rposition(all).is_some_and(|i| rules[i].allow && rules[i..].iter().all(|r| r.allow))
}

/// True when this process is not in the initial user namespace.
fn in_user_namespace() -> bool {
    fs::read_to_string("/proc/self/uid_map")
        .is_ok_and(|map| map.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"])
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO_HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const OWN_HYBRID: &str = "\
9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
5:devices:/
4:memory:/sandbox/abc
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
";
    const PROC_CGROUPS: &str = "\
#subsys_name\thierarchy\tnum_cgroups\tenabled
cpuset\t3\t1\t1
cpu\t1\t1\t1
cpuacct\t2\t1\t1
blkio\t7\t1\t1
memory\t4\t42\t1
devices\t5\t1\t1
freezer\t6\t1\t1
net_cls\t0\t1\t1
perf_event\t0\t1\t1
net_prio\t0\t1\t1
hugetlb\t0\t1\t1
pids\t8\t1\t1
";

    fn hybrid() -> Layout {
        Layout::from_parts(Mode::Hybrid, MOUNTINFO_HYBRID, OWN_HYBRID, PROC_CGROUPS, "")
    }

    fn unified(controllers: &str, kernel: &str) -> Layout {
        Layout::from_parts(
            Mode::Unified,
            "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
            "0::/user.slice/user-0.slice/session-1.scope\n",
            kernel,
            controllers,
        )
    }

    fn res(json: &str) -> LinuxResources {
        serde_json::from_str(json).expect("test resources")
    }

    #[test]
    fn hybrid_layout_mirrors_libcgroups() {
        let l = hybrid();
        let names: Vec<&str> = l.hiers.iter().map(|h| h.name()).collect();
        assert_eq!(
            names,
            ["cpu", "cpuacct", "cpuset", "devices", "memory", "pids", "blkio", "freezer", "name=systemd", "cgroup2"]
        );
        assert!(l.has("memory") && l.has("devices") && !l.has("hugetlb") && !l.has("net_cls"));
        // memory's own cgroup differs: relative paths go under the common ancestor.
        assert_eq!(l.relative_base(), PathBuf::from("/"));
    }

    #[test]
    fn comounted_cpu_cpuacct() {
        let mi = "1 0 0:1 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
                  2 1 0:2 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n";
        let l = Layout::from_parts(Mode::Legacy, mi, "2:cpu,cpuacct:/a/b\n", "", "");
        assert_eq!(l.hiers.len(), 1);
        assert!(l.has("cpu") && l.has("cpuacct"));
        assert_eq!(l.relative_base(), PathBuf::from("/a/b"));
    }

    #[test]
    fn v2_relative_base_is_parent_of_own() {
        let l = unified("cpu memory pids", "");
        assert_eq!(l.relative_base(), PathBuf::from("/user.slice/user-0.slice"));
    }

    #[test]
    fn normalize_paths() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
        assert_eq!(normalize(Path::new("/../../etc")), PathBuf::from("/etc"));
        assert_eq!(normalize(Path::new("x/y")), PathBuf::from("/x/y"));
        assert_eq!(normalize(Path::new("/")), PathBuf::from("/"));
    }

    #[test]
    fn systemd_style() {
        let p = |s: &str| systemd_style_path(Path::new(s));
        assert_eq!(p("system.slice:docker:abc"), Some(PathBuf::from("/system.slice/docker-abc.scope")));
        assert_eq!(
            p("machine-libpod.slice:libpod:x"),
            Some(PathBuf::from("/machine.slice/machine-libpod.slice/libpod-x.scope"))
        );
        assert_eq!(p(":crio:x"), Some(PathBuf::from("/system.slice/crio-x.scope")));
        assert_eq!(p("-.slice::x"), Some(PathBuf::from("/x.scope")));
        assert_eq!(p("a/b"), None);
        assert_eq!(p("plain"), None);
        assert_eq!(p("bad:x:y"), None);
    }

    #[test]
    fn cgroup_path_default_and_absolute() {
        let spec: Spec = serde_json::from_str(r#"{"ociVersion":"1.0.2"}"#).expect("spec");
        assert_eq!(cgroup_path(&spec, "abc"), PathBuf::from("/abc"));
        let spec: Spec =
            serde_json::from_str(r#"{"ociVersion":"1.0.2","linux":{"cgroupsPath":"/x/../y/z"}}"#).expect("spec");
        assert_eq!(cgroup_path(&spec, "abc"), PathBuf::from("/y/z"));
    }

    #[test]
    fn empty_sections_need_nothing() {
        let l = hybrid();
        let r =
            res(r#"{"memory":{},"cpu":{"cpus":""},"pids":{"limit":0},"hugepageLimits":[],"blockIO":{},"network":{}}"#);
        let e = effective(&l, Path::new("/t"), Some(&r)).expect("effective");
        let needs: Vec<&str> = e.needs.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(needs, ["devices"]);
        assert!(e.resources.memory().is_none() && e.resources.cpu().is_none() && e.resources.pids().is_none());
    }

    #[test]
    fn missing_memory_names_controller_and_fix() {
        let mi = MOUNTINFO_HYBRID.lines().filter(|l| !l.contains("memory")).collect::<Vec<_>>().join("\n");
        let kernel = PROC_CGROUPS.replace("memory\t4\t42\t1", "memory\t0\t1\t0");
        let l = Layout::from_parts(Mode::Hybrid, &mi, OWN_HYBRID, &kernel, "");
        let r = res(r#"{"memory":{"limit":67108864}}"#);
        let err = effective(&l, Path::new("/t"), Some(&r)).err().expect("must fail").to_string();
        assert!(err.starts_with("the memory cgroup controller is not available on this kernel"), "{err}");
        assert!(
            err.contains("append ` cgroup_enable=memory` to the single line of /boot/firmware/cmdline.txt"),
            "{err}"
        );
        assert!(err.contains("raspberrypi/linux#6980") && !err.contains("cgroup_memory=1"), "{err}");
        assert!(!err.contains('\n'));
        // Without a memory limit it runs.
        let r = res(r#"{"pids":{"limit":10},"devices":[{"allow":false,"access":"rwm"}]}"#);
        assert!(effective(&l, Path::new("/t"), Some(&r)).is_ok());
    }

    #[test]
    fn hugetlb_on_hybrid_explains_v2_binding() {
        let r = res(r#"{"hugepageLimits":[{"pageSize":"2MB","limit":2097152}]}"#);
        let err = effective(&hybrid(), Path::new("/t"), Some(&r)).err().expect("must fail").to_string();
        assert!(err.starts_with("the hugetlb cgroup controller is not available to cgroup v1 here"), "{err}");
        assert!(err.contains("mount -t cgroup -o hugetlb"), "{err}");
    }

    #[test]
    fn v2_without_memory_pids_cpu() {
        let kernel = "#subsys_name\thierarchy\tnum_cgroups\tenabled\nmemory\t0\t1\t0\npids\t0\t1\t1\n";
        let l = unified("cpuset io hugetlb", kernel);
        for (json, ctrl) in [
            (r#"{"memory":{"limit":1000000}}"#, "memory"),
            (r#"{"pids":{"limit":5}}"#, "pids"),
            (r#"{"cpu":{"shares":512}}"#, "cpu"),
        ] {
            match effective(&l, Path::new("/t"), Some(&res(json))) {
                Err(CgroupError::ControllerUnavailable { controller, message }) => {
                    assert_eq!(controller, ctrl);
                    assert!(message.contains(&format!("the {ctrl} cgroup controller")), "{message}");
                }
                other => panic!("{json}: expected ControllerUnavailable, got {:?}", other.err()),
            }
        }
        // Device rules go to the BPF program on v2, not to libcgroups; cpus are fine
        // (cpuset is there).
        let r = res(r#"{"devices":[{"allow":false,"access":"rwm"}],"cpu":{"cpus":"0"}}"#);
        let e = effective(&l, Path::new("/t"), Some(&r)).expect("ok");
        assert!(e.resources.devices().is_none());
        assert_eq!(e.devices.len(), 1);
        assert!(effective(&l, Path::new("/t"), None).is_ok());
    }

    #[test]
    fn device_rules_are_checked_and_written_for_v1() {
        let r = res(r#"{"devices":[{"allow":false,"access":"rwm"},
            {"allow":true,"type":"a","major":8,"access":"r"},
            {"allow":true,"type":"c","major":-1,"minor":229,"access":"mw"},
            {"allow":true,"type":"a","access":"m"},
            {"allow":true,"access":"rwm"}]}"#);
        let e = effective(&hybrid(), Path::new("/t"), Some(&r)).expect("valid rules");
        assert!(e.resources.devices().is_none(), "libcgroups writes no device rule");
        assert!(asks_nothing(&e.resources), "devices alone need no libcgroups manager");
        let written: Vec<String> = v1_device_lines(&e.devices)
            .into_iter()
            .map(|(allow, line)| format!("{} {line}", if allow { "allow" } else { "deny" }))
            .collect();
        assert_eq!(
            written,
            [
                "deny a *:* rwm",
                // The kernel reads any `a` rule as "everything": limited ones become b and c.
                "allow b 8:* r",
                "allow c 8:* r",
                "allow c *:229 wm",
                "allow b *:* m",
                "allow c *:* m",
                "allow a *:* rwm",
            ]
        );
        for mode in [Mode::Unified, Mode::Hybrid] {
            let l = if mode == Mode::Unified { unified("cpu", "") } else { hybrid() };
            let bad = res(r#"{"devices":[{"allow":true,"type":"c","major":1,"access":"rwx"}]}"#);
            let err = effective(&l, Path::new("/t"), Some(&bad)).err().expect("bad access").to_string();
            assert_eq!(err, "cgroup: linux.resources.devices[0]: access \"rwx\": use a combination of r, w and m");
        }
    }

    #[test]
    fn rules_that_allow_every_device() {
        let r = |allow, kind, access| devfilter::Rule { allow, kind, major: None, minor: None, access };
        let all = r(true, devfilter::Kind::All, devfilter::ACC_ALL);
        let deny_all = r(false, devfilter::Kind::All, devfilter::ACC_ALL);
        assert!(allows_every_device(&devfilter::with_defaults(vec![deny_all, all])));
        assert!(!allows_every_device(&devfilter::with_defaults(vec![all, deny_all])));
        assert!(!allows_every_device(&devfilter::with_defaults(vec![deny_all])));
        assert!(!allows_every_device(&[all, r(false, devfilter::Kind::Block, devfilter::ACC_READ)]));
        assert!(!allows_every_device(&[r(true, devfilter::Kind::All, devfilter::ACC_READ)]));
    }

    #[test]
    fn unified_on_v1_and_realtime_on_v2_are_refused() {
        let r = res(r#"{"unified":{"memory.high":"100000"}}"#);
        assert!(matches!(effective(&hybrid(), Path::new("/t"), Some(&r)), Err(CgroupError::Unsupported { .. })));
        let r = res(r#"{"cpu":{"realtimeRuntime":1000}}"#);
        let l = unified("cpu", "");
        assert!(matches!(effective(&l, Path::new("/t"), Some(&r)), Err(CgroupError::Unsupported { .. })));
    }

    #[test]
    fn first_missing_dir() {
        let tmp = std::env::temp_dir().join(format!("skiff-cg-fm-{}", std::process::id()));
        fs::create_dir_all(tmp.join("a")).expect("mkdir");
        assert_eq!(first_missing(&tmp, &tmp.join("a/b/c")), Some(tmp.join("a/b")));
        assert_eq!(first_missing(&tmp, &tmp.join("a")), None);
        let _ = fs::remove_dir_all(&tmp);
    }

    /// Real cgroups: runs as root on a machine with cgroups (skipped otherwise).
    #[test]
    fn real_remove_if_empty_spares_processes_and_signal_all_reaches_them() {
        if !nix::unistd::geteuid().is_root() || layout().is_err() {
            return;
        }
        let mut child = match std::process::Command::new("sleep").arg("30").spawn() {
            Ok(c) => c,
            Err(_) => return,
        };
        let pid = child.id() as i32;
        let cg = Cgroup::new(Path::new(&format!("/skiff-unit-shared-{}", std::process::id()))).expect("new");
        let applied = cg.apply(pid, None);
        let kept = cg.remove_if_empty();
        let alive = child.try_wait().map(|s| s.is_none()).unwrap_or(false);
        // Not SIGKILL: the freeze, signal, thaw path (cgroup.kill serves SIGKILL only).
        let signalled = cg.signal_all(libc::SIGTERM);
        let status = child.wait();
        let removed = cg.remove_if_empty();
        let _ = cg.remove();
        applied.expect("apply");
        assert!(!kept.expect("remove_if_empty"), "a cgroup holding a process is left");
        assert!(alive, "remove_if_empty kills nothing");
        signalled.expect("signal_all");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.expect("wait").signal(), Some(libc::SIGTERM));
        assert!(removed.expect("remove_if_empty"), "an empty cgroup is removed");
        assert!(cg.dirs().all(|(_, d)| !d.exists()));
        cg.signal_all(libc::SIGTERM).expect("signal_all without a cgroup");
        assert!(cg.dirs().all(|(_, d)| !d.exists()), "signal_all creates no cgroup");
    }

    #[test]
    fn real_create_limit_remove() {
        if !nix::unistd::geteuid().is_root() || layout().is_err() {
            return;
        }
        let mut child = match std::process::Command::new("sleep").arg("30").spawn() {
            Ok(c) => c,
            Err(_) => return,
        };
        let pid = child.id() as i32;
        let path = PathBuf::from(format!("/skiff-unit-{}", std::process::id()));
        let cg = Cgroup::new(&path).expect("new");
        let r = res(r#"{"devices":[{"allow":false,"access":"rwm"}],"pids":{"limit":7}}"#);
        let has_pids = layout().map(|l| l.has("pids")).unwrap_or(false);
        let r = if has_pids { Some(&r) } else { None };
        let applied = cg.apply(pid, r);
        let pids = cg.pids();
        let _ = child.kill();
        let _ = child.wait();
        let removed = cg.remove();
        applied.expect("apply");
        assert_eq!(pids.expect("pids"), vec![pid]);
        removed.expect("remove");
        assert!(cg.dirs().all(|(_, d)| !d.exists()));
        cg.remove().expect("remove is idempotent");
    }
}
