//! The systemd cgroup driver (`--systemd-cgroup`), as runc's: the container's cgroup is a
//! transient scope unit `<prefix>-<name>.scope` in the slice `<slice>` of a
//! `linux.cgroupsPath` of the form `slice:prefix:name` (what containerd's runc shim passes
//! with `SystemdCgroup = true`: `system.slice:cri-containerd:ID`, kubepods slices for pods).
//!
//! systemd creates the scope through its D-Bus API (`StartTransientUnit` with the init's
//! pid, `Delegate=yes`, `Slice=`, a description and accounting on), then gets the limits it
//! knows as unit properties (`MemoryMax`, `MemoryLow`, `MemorySwapMax`, `CPUWeight`,
//! `CPUQuotaPerSecUSec`, `TasksMax`, `AllowedCPUs`...; `SetUnitProperties`), so a
//! `systemctl daemon-reload` keeps them; everything is then also written through cgroupfs
//! as without systemd (device program, hugetlb, io, unified files), like runc does.
//! `delete` stops the unit. `kill`, `pause`, `resume`, `ps`, `update` and `state` work on
//! the scope's cgroup directory as on any other (`update` also sets the properties).
//!
//! The D-Bus client is libcgroups' own (feature `systemd`: pure Rust over a unix socket, no
//! libdbus), on the system bus or, without a dbus daemon, on systemd's private socket
//! `/run/systemd/private`. Supported on a pure cgroup v2 host booted with systemd; on
//! hybrid and v1 hosts `--systemd-cgroup` is refused with an error that says so.
//!
//! What is decided here is pure: [`UnitPath::parse`] (the path rules, with the reasons a
//! path is refused), [`UnitPath::unit`] and [`UnitPath::cgroup`] (the unit name and where
//! systemd puts its cgroup), [`support`] (whether the driver can work on this host).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[cfg(target_pointer_width = "64")]
use libcgroups::common::CgroupManager;
use libcgroups::common::ControllerOpt;
use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;

/// The slice of a path that names none (`:prefix:name`), as runc and libcgroups.
pub const DEFAULT_SLICE: &str = "system.slice";
/// The prefix of a container's scope when the spec has no cgroupsPath (runc's is "runc").
pub const DEFAULT_PREFIX: &str = "skiff";
/// How long `create` waits for systemd to move the init into the new scope.
#[cfg(target_pointer_width = "64")]
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `delete` waits for a stopped unit's cgroup to go.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A `slice:prefix:name` cgroupsPath, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitPath {
    pub slice: String,
    pub prefix: String,
    pub name: String,
}

/// The reason a cgroupsPath is refused with `--systemd-cgroup` (see [`UnitPath::parse`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("linux.cgroupsPath {path:?}: {reason}; with --systemd-cgroup it must be slice:prefix:name (e.g. system.slice:cri-containerd:ID)")]
pub struct BadPath {
    pub path: String,
    pub reason: String,
}

impl UnitPath {
    /// Checks a cgroupsPath for the systemd driver: three `:`-separated fields (an empty
    /// slice means `system.slice`); no `/`, no `..`, only characters systemd allows in a
    /// unit name (letters, digits, `_`, `-`, `.`, `@`); the slice a valid slice name
    /// (`a-b.slice`, no empty dash-separated part); a non-empty prefix and name; a name
    /// that is not itself a slice (only scopes are made).
    pub fn parse(s: &str) -> Result<UnitPath, BadPath> {
        let bad = |reason: String| BadPath { path: s.to_string(), reason };
        let fields: Vec<&str> = s.split(':').collect();
        if fields.len() != 3 {
            return Err(bad(format!("has {} field(s), not 3", fields.len())));
        }
        for (what, f) in ["slice", "prefix", "name"].iter().zip(&fields) {
            if f.contains('/') {
                return Err(bad(format!("the {what} {f:?} contains a '/'")));
            }
            if f.contains("..") {
                return Err(bad(format!("the {what} {f:?} contains \"..\"")));
            }
            if let Some(c) = f.chars().find(|c| !(c.is_ascii_alphanumeric() || "_-.@".contains(*c))) {
                return Err(bad(format!("the {what} {f:?} contains {c:?} (use letters, digits, '_', '-', '.', '@')")));
            }
        }
        let slice = if fields[0].is_empty() { DEFAULT_SLICE } else { fields[0] };
        expand_slice(slice).ok_or_else(|| {
            bad(format!("{slice:?} is not a slice name (a-b.slice, parts separated by single dashes)"))
        })?;
        let (prefix, name) = (fields[1], fields[2]);
        if prefix.is_empty() {
            return Err(bad("the prefix is empty".into()));
        }
        if name.is_empty() {
            return Err(bad("the name is empty".into()));
        }
        if name.ends_with(".slice") {
            return Err(bad(format!("the name {name:?} is a slice: only scopes are made for containers")));
        }
        let p = UnitPath { slice: slice.to_string(), prefix: prefix.to_string(), name: name.to_string() };
        // systemd's limit on unit names (UNIT_NAME_MAX).
        if p.unit().len() > 255 {
            return Err(bad(format!("the unit name {} is longer than 255 characters", p.unit())));
        }
        Ok(p)
    }

    /// The path of a container whose spec has no cgroupsPath: `system.slice:skiff:ID`.
    pub fn default_for(id: &str) -> String {
        format!("{DEFAULT_SLICE}:{DEFAULT_PREFIX}:{id}")
    }

    /// The scope's unit name: `prefix-name.scope`.
    pub fn unit(&self) -> String {
        format!("{}-{}.scope", self.prefix, self.name)
    }

    /// The path as libcgroups takes it (`slice:prefix:name`, the slice filled in).
    pub fn spec_form(&self) -> String {
        format!("{}:{}:{}", self.slice, self.prefix, self.name)
    }

    /// Where systemd puts the scope's cgroup, relative to its own root cgroup (`/` on a
    /// host): `/a.slice/a-b.slice/prefix-name.scope`.
    pub fn cgroup(&self) -> PathBuf {
        expand_slice(&self.slice).unwrap_or_else(|| PathBuf::from("/")).join(self.unit())
    }
}

/// `a-b.slice` -> `/a.slice/a-b.slice` (systemd's slice nesting); `-.slice` -> `/`.
pub fn expand_slice(slice: &str) -> Option<PathBuf> {
    let stem = slice.strip_suffix(".slice")?;
    let mut path = PathBuf::from("/");
    if stem == "-" {
        return Some(path);
    }
    if stem.is_empty() || stem.split('-').any(str::is_empty) {
        return None;
    }
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    Some(path)
}

/// Whether the systemd driver can work here, from what the host shows: systemd booted
/// (`/run/systemd/system` is a directory) and cgroup v2 alone (`/sys/fs/cgroup` is a
/// cgroup2 mount). `Err` says what is missing.
pub fn support(systemd_booted: bool, unified: bool) -> Result<(), &'static str> {
    match (systemd_booted, unified) {
        (false, _) => Err("this host was not booted with systemd (no /run/systemd/system)"),
        (true, false) => Err("it needs a pure cgroup v2 host (cgroup v1 and hybrid layouts are not supported by it): \
             boot with systemd.unified_cgroup_hierarchy=1, or drop --systemd-cgroup"),
        (true, true) => Ok(()),
    }
}

/// Why a 32-bit build cannot drive systemd at all.
#[cfg(not(target_pointer_width = "64"))]
const UNAVAILABLE: &str =
    "not in 32-bit builds of skiff-runtime yet (libcgroups 0.7's D-Bus client does not build where time_t is 32-bit)";

/// [`support`] for this host.
#[cfg(target_pointer_width = "64")]
pub fn host_support() -> Result<(), String> {
    let booted = libcgroups::systemd::booted();
    let unified = matches!(libcgroups::common::get_cgroup_setup(), Ok(libcgroups::common::CgroupSetup::Unified));
    support(booted, unified).map_err(|e| format!("--systemd-cgroup cannot be used: {e}"))
}

/// [`support`] for this host: never in a 32-bit build ([`UNAVAILABLE`]).
#[cfg(not(target_pointer_width = "64"))]
pub fn host_support() -> Result<(), String> {
    Err(format!("--systemd-cgroup cannot be used: {}", UNAVAILABLE))
}

/// Failures talking to systemd, one line each.
#[derive(Debug, thiserror::Error)]
#[error("systemd unit {unit}: {what}: {msg}")]
pub struct SystemdError {
    pub unit: String,
    pub what: &'static str,
    pub msg: String,
}

#[cfg(target_pointer_width = "64")]
use libcgroups::systemd::manager::Manager;

/// 32-bit builds: no D-Bus client, so no manager is ever made ([`Scope::connect`] refuses).
#[cfg(not(target_pointer_width = "64"))]
struct Manager(std::convert::Infallible);

#[cfg(not(target_pointer_width = "64"))]
impl Manager {
    fn add_task(&self, _: Pid) -> Result<(), String> {
        match self.0 {}
    }
    fn apply(&self, _: &ControllerOpt) -> Result<(), String> {
        match self.0 {}
    }
    fn remove(&self) -> Result<(), String> {
        match self.0 {}
    }
}

/// A container's scope unit, driven over D-Bus.
pub struct Scope {
    path: UnitPath,
    mgr: Manager,
}

impl std::fmt::Debug for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope").field("unit", &self.path.unit()).finish()
    }
}

impl Scope {
    /// Refuses: 32-bit builds have no D-Bus client ([`UNAVAILABLE`]).
    #[cfg(not(target_pointer_width = "64"))]
    pub fn connect(path: &UnitPath, _id: &str) -> Result<Scope, SystemdError> {
        Err(err(path, "connecting to systemd over D-Bus", UNAVAILABLE))
    }

    /// Connects to systemd (system bus, else its private socket) for the unit of `path`.
    #[cfg(target_pointer_width = "64")]
    pub fn connect(path: &UnitPath, id: &str) -> Result<Scope, SystemdError> {
        let mgr = Manager::new(
            PathBuf::from("/sys/fs/cgroup"),
            PathBuf::from(path.spec_form()),
            id.to_string(),
            true,
            START_TIMEOUT,
        )
        .map_err(|e| err(path, "connecting to systemd over D-Bus", e))?;
        Ok(Scope { path: path.clone(), mgr })
    }

    pub fn unit(&self) -> String {
        self.path.unit()
    }

    /// Starts the scope with `pid` in it (`StartTransientUnit`) and waits until systemd has
    /// moved the pid into the scope's cgroup. An existing unit of that name gets the pid
    /// added instead (`AttachProcessesToUnit`).
    pub fn start(&self, pid: i32) -> Result<(), SystemdError> {
        self.mgr.add_task(Pid::from_raw(pid)).map_err(|e| err(&self.path, "starting the scope", e))
    }

    /// Sets the limits systemd knows as unit properties (`SetUnitProperties`).
    pub fn set_properties(&self, resources: &LinuxResources, disable_oom_killer: bool) -> Result<(), SystemdError> {
        let opt = ControllerOpt { resources, disable_oom_killer, oom_score_adj: None, freezer_state: None };
        self.mgr.apply(&opt).map_err(|e| err(&self.path, "setting resource properties", e))
    }

    /// Stops the unit (`StopUnit`; nothing when it is gone already) and waits until its
    /// cgroup `dir` is gone (systemd removes it once the stop job is done).
    pub fn stop(&self, dir: &Path) -> Result<(), SystemdError> {
        self.mgr.remove().map_err(|e| err(&self.path, "stopping the scope", e))?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        while dir.exists() {
            if Instant::now() > deadline {
                return Err(SystemdError {
                    unit: self.unit(),
                    what: "stopping the scope",
                    msg: format!("{} is still there after {}s", dir.display(), STOP_TIMEOUT.as_secs()),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
}

fn err(path: &UnitPath, what: &'static str, e: impl std::fmt::Display) -> SystemdError {
    SystemdError { unit: path.unit(), what, msg: e.to_string().split_whitespace().collect::<Vec<_>>().join(" ") }
}

/// The cgroup2 path of `pid` from the text of `/proc/PID/cgroup` (the `0::` line).
pub fn unified_cgroup_of(proc_cgroup: &str) -> Option<PathBuf> {
    proc_cgroup.lines().find_map(|l| l.strip_prefix("0::")).map(|p| PathBuf::from(p.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> UnitPath {
        UnitPath::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn refused(s: &str) -> String {
        match UnitPath::parse(s) {
            Ok(p) => panic!("{s} accepted as {p:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn containerd_paths() {
        let p = ok("system.slice:cri-containerd:0123abcd");
        assert_eq!(p.unit(), "cri-containerd-0123abcd.scope");
        assert_eq!(p.cgroup(), Path::new("/system.slice/cri-containerd-0123abcd.scope"));
        assert_eq!(p.spec_form(), "system.slice:cri-containerd:0123abcd");
        // A kubelet pod slice (nested slices expand as systemd nests them).
        let p = ok("kubepods-burstable-pod1234_5678.slice:cri-containerd:c1");
        assert_eq!(
            p.cgroup(),
            Path::new(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_5678.slice/cri-containerd-c1.scope"
            )
        );
        // An empty slice is system.slice (runc, libcgroups).
        let p = ok(":docker:abc");
        assert_eq!(p.slice, "system.slice");
        assert_eq!(p.spec_form(), "system.slice:docker:abc");
        assert_eq!(p.cgroup(), Path::new("/system.slice/docker-abc.scope"));
        // The root slice.
        assert_eq!(ok("-.slice:skiff:x").cgroup(), Path::new("/skiff-x.scope"));
        assert_eq!(UnitPath::default_for("web-1"), "system.slice:skiff:web-1");
        assert_eq!(ok(&UnitPath::default_for("web-1")).unit(), "skiff-web-1.scope");
    }

    #[test]
    fn bad_paths_are_refused_with_the_reason() {
        for (path, reason) in [
            ("/sys/fs/cgroup/x", "has 1 field(s), not 3"),
            ("system.slice:x", "has 2 field(s), not 3"),
            ("a.slice:b:c:d", "has 4 field(s), not 3"),
            ("system.slice:p:../../etc", "contains a '/'"),
            ("system.slice:p:..", "contains \"..\""),
            ("..slice:p:n", "contains \"..\""),
            ("system.slice:p:a b", "contains ' '"),
            ("system.slice:p:a\nb", "contains '\\n'"),
            ("system:p:n", "\"system\" is not a slice name"),
            ("a--b.slice:p:n", "is not a slice name"),
            ("-a.slice:p:n", "is not a slice name"),
            (".slice:p:n", "is not a slice name"),
            ("system.slice::n", "the prefix is empty"),
            ("system.slice:p:", "the name is empty"),
            ("system.slice:p:pod.slice", "is a slice"),
        ] {
            let e = refused(path);
            assert!(e.contains(reason), "{path}: {e}");
            assert!(e.contains("slice:prefix:name"), "{path}: {e}");
        }
        let long = format!("system.slice:p:{}", "a".repeat(250));
        assert!(refused(&long).contains("longer than 255"));
    }

    #[test]
    fn support_needs_systemd_and_pure_v2() {
        assert_eq!(support(true, true), Ok(()));
        assert!(support(false, true).unwrap_err().contains("not booted with systemd"));
        assert!(support(false, false).unwrap_err().contains("not booted with systemd"));
        assert!(support(true, false).unwrap_err().contains("pure cgroup v2"));
    }

    #[test]
    fn unified_cgroup_from_proc() {
        let hybrid = "12:pids:/system.slice/x.scope\n1:name=systemd:/system.slice/x.scope\n0::/system.slice/x.scope\n";
        assert_eq!(unified_cgroup_of(hybrid), Some(PathBuf::from("/system.slice/x.scope")));
        assert_eq!(unified_cgroup_of("0::/a/b.scope\n"), Some(PathBuf::from("/a/b.scope")));
        assert_eq!(unified_cgroup_of("3:memory:/a\n"), None);
    }
}
