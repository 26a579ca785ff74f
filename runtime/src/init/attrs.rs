//! Process attributes beyond user and capabilities: the AppArmor profile and SELinux
//! label the process takes on at execve, its scheduler (`sched_setattr`), I/O priority
//! (`ioprio_set`) and personality (`process.apparmorProfile`, `process.selinuxLabel`,
//! `process.scheduler`, `process.ioPriority`, `linux.personality`, `linux.mountLabel`).
//!
//! [`ProcAttrs::for_init`] / [`ProcAttrs::for_exec`] run in the parent before clone: every
//! value is checked there, so a bad one fails `create` (or `exec`) before anything exists,
//! and the LSM settings are decided for this host. An AppArmor profile or SELinux label
//! on a host where that LSM is not enabled is refused (as runc and crun do, and the
//! kubelet for a pod: a confinement asked for and not applied must not pass unnoticed);
//! a `mountLabel` is ignored where SELinux is not enabled (runc's rule) and refused
//! where it is (not implemented).
//! [`ProcAttrs::apply`] runs in the child (the init, or the process `exec` forks) before
//! seccomp is loaded and before capabilities are dropped, as runc does: the LSM
//! attributes only take effect at the next execve.
//!
//! The LSM attributes are written to `/proc/thread-self/attr/...` through a private
//! procfs (a detached clone of the /proc mount, else a fresh procfs, wrapped in pathrs'
//! `ProcfsHandle`, which refuses any path that crosses a mount), so a container that
//! controls mounts in its own /proc cannot redirect these writes (CVE-2025-52881).

use std::fs::File;
use std::io::{self, Write};

use oci_spec::runtime::{
    IOPriorityClass, Linux, LinuxPersonalityDomain, LinuxSchedulerFlag, LinuxSchedulerPolicy, Process, Scheduler,
};

#[derive(Debug, thiserror::Error)]
pub enum AttrError {
    /// A value of the configuration cannot be applied as written.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },

    /// The kernel refused to apply a checked value.
    #[error("{what}: {source}{hint}")]
    Apply {
        what: String,
        #[source]
        source: io::Error,
        hint: &'static str,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> AttrError {
    AttrError::Invalid { field, reason: reason.into() }
}

/// `struct sched_attr` of sched_setattr(2), first version (48 bytes, no utilization clamps).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

/// The checked attributes, ready to apply after clone.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProcAttrs {
    /// AppArmor profile to change to at execve (None: unset, or AppArmor not enabled).
    apparmor: Option<String>,
    /// SELinux label for the process (None: unset, or SELinux not enabled).
    selinux: Option<String>,
    sched: Option<SchedAttr>,
    /// `class << 13 | level` for ioprio_set(2).
    ioprio: Option<i32>,
    /// The persona for personality(2).
    personality: Option<libc::c_ulong>,
}

const IOPRIO_WHO_PROCESS: libc::c_int = 1;
const IOPRIO_CLASS_SHIFT: u32 = 13;
const PER_LINUX: libc::c_ulong = 0x0000;
const PER_LINUX32: libc::c_ulong = 0x0008;

impl ProcAttrs {
    /// The attributes of the container's init: `process` and `linux` of config.json.
    pub fn for_init(process: &Process, linux: Option<&Linux>) -> Result<Self, AttrError> {
        Self::build(process, None, linux, &Host::probe())
    }

    /// The attributes of a process `exec`ed into a container created from `config`: the
    /// process's own values, else the container's (as runc does: an exec without a
    /// profile must not run unconfined in a confined container).
    pub fn for_exec(process: &Process, config: &oci_spec::runtime::Spec) -> Result<Self, AttrError> {
        Self::build(process, config.process().as_ref(), config.linux().as_ref(), &Host::probe())
    }

    fn build(
        process: &Process,
        fallback: Option<&Process>,
        linux: Option<&Linux>,
        host: &Host,
    ) -> Result<Self, AttrError> {
        let pick = |own: &Option<String>, theirs: Option<&Option<String>>| -> Option<String> {
            own.as_deref()
                .filter(|s| !s.is_empty())
                .or_else(|| theirs.and_then(|t| t.as_deref()).filter(|s| !s.is_empty()))
                .map(str::to_owned)
        };
        let apparmor = pick(process.apparmor_profile(), fallback.map(|p| p.apparmor_profile()));
        let selinux = pick(process.selinux_label(), fallback.map(|p| p.selinux_label()));
        let scheduler = process.scheduler().as_ref().or_else(|| fallback.and_then(|p| p.scheduler().as_ref()));
        let ioprio = (*process.io_priority()).or_else(|| fallback.and_then(|p| *p.io_priority()));

        if let Some(label) = linux.and_then(|l| l.mount_label().as_deref()).filter(|s| !s.is_empty()) {
            if host.selinux() {
                return Err(invalid(
                    "linux.mountLabel",
                    format!("{label:?}: SELinux mount labels are not supported by this runtime"),
                ));
            }
            crate::debug!("linux.mountLabel {label:?} ignored: SELinux is not enabled on this host");
        }
        let personality = match linux.and_then(|l| l.personality().as_ref()) {
            None => None,
            Some(p) => {
                if let Some(flags) = p.flags().as_ref().filter(|f| !f.is_empty()) {
                    return Err(invalid(
                        "linux.personality.flags",
                        format!("{flags:?}: the runtime spec defines no personality flags"),
                    ));
                }
                Some(match p.domain() {
                    LinuxPersonalityDomain::PerLinux => PER_LINUX,
                    LinuxPersonalityDomain::PerLinux32 => PER_LINUX32,
                })
            }
        };
        Ok(ProcAttrs {
            apparmor: lsm_value("process.apparmorProfile", apparmor, || host.apparmor(), "AppArmor")?,
            selinux: lsm_value("process.selinuxLabel", selinux, || host.selinux(), "SELinux")?,
            sched: scheduler.map(sched_attr).transpose()?,
            ioprio: ioprio.map(|p| ioprio_value(p.class(), p.priority())).transpose()?,
            personality,
        })
    }

    /// Applies the attributes to the calling process (the init, or an exec'ed process),
    /// before seccomp and while capabilities are still held.
    pub fn apply(&self) -> Result<(), AttrError> {
        if let Some(persona) = self.personality {
            // SAFETY: personality(2) takes an integer and changes only this process.
            if unsafe { libc::personality(persona) } < 0 {
                return Err(apply_err(format!("set personality {persona:#x}"), ""));
            }
        }
        if let Some(attr) = &self.sched {
            // SAFETY: sched_setattr(0 = this thread) reads a sched_attr whose size field is
            // its real size; `attr` outlives the call.
            let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, attr as *const SchedAttr, 0u32) };
            if r != 0 {
                let hint = if attr.policy == SCHED_DEADLINE {
                    " (SCHED_DEADLINE needs CAP_SYS_NICE and a cpuset spanning the root domain)"
                } else {
                    ""
                };
                return Err(apply_err(format!("set scheduler {}", sched_name(attr.policy)), hint));
            }
        }
        if let Some(v) = self.ioprio {
            // SAFETY: ioprio_set(IOPRIO_WHO_PROCESS, 0 = this process, value) takes integers only.
            let r = unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, v) };
            if r != 0 {
                return Err(apply_err(format!("set I/O priority {v:#x}"), ""));
            }
        }
        if self.apparmor.is_none() && self.selinux.is_none() {
            return Ok(());
        }
        let procfs = private_procfs()?;
        let open = |sub: &str| open_thread_self(&procfs, sub);
        if let Some(profile) = &self.apparmor {
            write_attr(&open, APPARMOR_EXEC, &format!("exec {profile}")).map_err(|source| AttrError::Apply {
                what: format!("apply AppArmor profile {profile:?}"),
                source,
                hint: "",
            })?;
        }
        if let Some(label) = &self.selinux {
            write_attr(&open, SELINUX_EXEC, label).map_err(|source| AttrError::Apply {
                what: format!("set SELinux label {label:?}"),
                source,
                hint: "",
            })?;
        }
        Ok(())
    }

    /// Sets the SELinux label of keys this process creates (its session keyring first), as
    /// runc does before joining a new session keyring. Nothing without a label.
    pub fn apply_keycreate(&self) -> Result<(), AttrError> {
        let Some(label) = &self.selinux else { return Ok(()) };
        let procfs = private_procfs()?;
        write_attr(&|sub: &str| open_thread_self(&procfs, sub), SELINUX_KEYCREATE, label)
            .map_err(|source| AttrError::Apply { what: format!("set SELinux key label {label:?}"), source, hint: "" })
    }
}

/// Where "exec PROFILE" goes: the AppArmor directory of Linux >= 5.1 (LSM stacking),
/// else the shared file of older kernels (as runc and libapparmor do).
const APPARMOR_EXEC: &[&str] = &["attr/apparmor/exec", "attr/exec"];
const SELINUX_EXEC: &[&str] = &["attr/exec"];
const SELINUX_KEYCREATE: &[&str] = &["attr/keycreate"];

/// Writes `value` with one write(2) to the first of `candidates` (paths under
/// /proc/thread-self) that `open` finds. An LSM attribute must arrive in a single write.
fn write_attr(open: &dyn Fn(&str) -> io::Result<File>, candidates: &[&str], value: &str) -> io::Result<()> {
    let mut last = io::Error::from_raw_os_error(libc::ENOENT);
    for sub in candidates {
        match open(sub) {
            Ok(mut f) => {
                let n = f.write(value.as_bytes())?;
                if n != value.len() {
                    return Err(io::Error::new(io::ErrorKind::WriteZero, format!("short write to {sub}")));
                }
                return Ok(());
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// A procfs handle no other process can change under us: a detached copy of the /proc
/// mount (`open_tree(OPEN_TREE_CLONE)`, without the mounts on top of it), else pathrs' own
/// choice (a fresh `fsopen` procfs, ...). pathrs then refuses any path that crosses a mount.
/// The clone comes first because it costs a fraction of a new procfs instance (about
/// 50 us against 300-500 us here).
fn private_procfs() -> Result<pathrs::procfs::ProcfsHandle, AttrError> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    // SAFETY: open_tree with a NUL-terminated path and flags returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c"/proc".as_ptr(), OPEN_TREE_CLONE | libc::O_CLOEXEC as u32)
    };
    if fd >= 0 {
        // SAFETY: open_tree returned a new fd that nothing else owns.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as libc::c_int) };
        if let Ok(h) = pathrs::procfs::ProcfsHandle::try_from_fd(fd) {
            return Ok(h);
        }
    }
    pathrs::procfs::ProcfsHandle::new().map_err(|e| AttrError::Apply {
        what: "open a private procfs".into(),
        source: pathrs_io(e),
        hint: "",
    })
}

/// Opens `sub` under /proc/thread-self of `procfs` for writing, refusing overmounts.
fn open_thread_self(procfs: &pathrs::procfs::ProcfsHandle, sub: &str) -> io::Result<File> {
    use pathrs::flags::OpenFlags;
    procfs
        .open(pathrs::procfs::ProcfsBase::ProcThreadSelf, sub, OpenFlags::O_WRONLY | OpenFlags::O_CLOEXEC)
        .map_err(pathrs_io)
}

fn pathrs_io(e: pathrs::error::Error) -> io::Error {
    match e.kind() {
        pathrs::error::ErrorKind::OsError(Some(errno)) => io::Error::from_raw_os_error(errno),
        _ => io::Error::other(e.to_string()),
    }
}

fn apply_err(what: String, hint: &'static str) -> AttrError {
    AttrError::Apply { what, source: io::Error::last_os_error(), hint }
}

/// An LSM value to apply; refused when the LSM is not enabled here.
fn lsm_value(
    field: &'static str,
    value: Option<String>,
    enabled: impl FnOnce() -> bool,
    lsm: &str,
) -> Result<Option<String>, AttrError> {
    let Some(v) = value else { return Ok(None) };
    if !enabled() {
        return Err(invalid(
            field,
            format!("{v:?}: {lsm} is not enabled on this host, so the process cannot be confined by it: remove it from the spec, or enable {lsm}"),
        ));
    }
    Ok(Some(v))
}

/// Which LSMs are enabled on this host; probed only when a value asks for one.
struct Host {
    apparmor: fn() -> bool,
    selinux: fn() -> bool,
}

impl Host {
    fn probe() -> Host {
        Host { apparmor: apparmor_enabled, selinux: selinux_enabled }
    }
    fn apparmor(&self) -> bool {
        (self.apparmor)()
    }
    fn selinux(&self) -> bool {
        (self.selinux)()
    }
}

/// AppArmor is enabled when its module parameter says "Y" (as runc and libapparmor check).
fn apparmor_enabled() -> bool {
    std::fs::read("/sys/module/apparmor/parameters/enabled").is_ok_and(|b| b.first() == Some(&b'Y'))
}

/// SELinux is enabled when selinuxfs is mounted (at /sys/fs/selinux, or anywhere in the
/// mount table as on old systems' /selinux).
fn selinux_enabled() -> bool {
    const SELINUX_MAGIC: u32 = 0xf97c_ff8c;
    if let Ok(st) = nix::sys::statfs::statfs("/sys/fs/selinux") {
        // f_type is a 32-bit long on 32-bit arm: compare the low 32 bits.
        if st.filesystem_type().0 as u32 == SELINUX_MAGIC {
            return true;
        }
    }
    std::fs::read_to_string("/proc/self/mountinfo")
        .is_ok_and(|m| m.lines().any(|l| l.split(" - ").nth(1).is_some_and(|t| t.starts_with("selinuxfs "))))
}

const SCHED_OTHER: u32 = 0;
const SCHED_FIFO: u32 = 1;
const SCHED_RR: u32 = 2;
const SCHED_BATCH: u32 = 3;
const SCHED_IDLE: u32 = 5;
const SCHED_DEADLINE: u32 = 6;

fn sched_name(policy: u32) -> &'static str {
    match policy {
        SCHED_OTHER => "SCHED_OTHER",
        SCHED_FIFO => "SCHED_FIFO",
        SCHED_RR => "SCHED_RR",
        SCHED_BATCH => "SCHED_BATCH",
        SCHED_IDLE => "SCHED_IDLE",
        _ => "SCHED_DEADLINE",
    }
}

/// Checks `process.scheduler` as runc and the kernel do (sched_setattr(2), sched(7)), so that
/// a value the kernel would refuse, or silently clamp (nice), fails `create` instead.
fn sched_attr(s: &Scheduler) -> Result<SchedAttr, AttrError> {
    const F: &str = "process.scheduler";
    let policy = match s.policy() {
        LinuxSchedulerPolicy::SchedOther => SCHED_OTHER,
        LinuxSchedulerPolicy::SchedFifo => SCHED_FIFO,
        LinuxSchedulerPolicy::SchedRr => SCHED_RR,
        LinuxSchedulerPolicy::SchedBatch => SCHED_BATCH,
        LinuxSchedulerPolicy::SchedIdle => SCHED_IDLE,
        LinuxSchedulerPolicy::SchedDeadline => SCHED_DEADLINE,
        LinuxSchedulerPolicy::SchedIso => return Err(invalid(F, "policy SCHED_ISO is not implemented by Linux")),
    };
    let name = sched_name(policy);
    let nice = s.nice().unwrap_or(0);
    if !(-20..=19).contains(&nice) {
        return Err(invalid(F, format!("nice {nice} is out of range (-20 to 19)")));
    }
    // The kernel ignores nice for the other policies: refuse rather than drop it.
    if nice != 0 && policy != SCHED_OTHER && policy != SCHED_BATCH {
        return Err(invalid(F, format!("nice {nice} is only for SCHED_OTHER and SCHED_BATCH, not {name}")));
    }
    let priority = s.priority().unwrap_or(0);
    let rt = policy == SCHED_FIFO || policy == SCHED_RR;
    if rt && !(1..=99).contains(&priority) {
        return Err(invalid(F, format!("{name} needs a priority from 1 to 99, got {priority}")));
    }
    if !rt && priority != 0 {
        return Err(invalid(F, format!("priority {priority} is only for SCHED_FIFO and SCHED_RR, not {name}")));
    }
    let (runtime, deadline, period) = (s.runtime().unwrap_or(0), s.deadline().unwrap_or(0), s.period().unwrap_or(0));
    if policy == SCHED_DEADLINE {
        // sched(7): each at least 1024 ns and below 2^63; runtime <= deadline <= period
        // (a period of 0 means the deadline).
        const MIN: u64 = 1024;
        const MAX: u64 = 1 << 63;
        if s.runtime().is_none() || s.deadline().is_none() {
            return Err(invalid(F, "SCHED_DEADLINE needs runtime and deadline (and optionally period), in ns"));
        }
        for (what, v) in [("runtime", runtime), ("deadline", deadline), ("period", period)] {
            if (what != "period" || v != 0) && !(MIN..MAX).contains(&v) {
                return Err(invalid(F, format!("SCHED_DEADLINE {what} {v} is out of range (1024 ns to 2^63)")));
            }
        }
        if runtime > deadline || (period != 0 && deadline > period) {
            return Err(invalid(
                F,
                format!("SCHED_DEADLINE needs runtime <= deadline <= period, got {runtime}, {deadline}, {period}"),
            ));
        }
    } else if runtime != 0 || deadline != 0 || period != 0 {
        return Err(invalid(F, format!("runtime, deadline and period are only for SCHED_DEADLINE, not {name}")));
    }
    let mut flags = 0u64;
    for f in s.flags().as_deref().unwrap_or_default() {
        flags |= match f {
            LinuxSchedulerFlag::SchedResetOnFork => 0x01,
            LinuxSchedulerFlag::SchedFlagReclaim => 0x02,
            LinuxSchedulerFlag::SchedFlagDLOverrun => 0x04,
            LinuxSchedulerFlag::SchedFlagKeepPolicy => 0x08,
            LinuxSchedulerFlag::SchedFlagKeepParams => 0x10,
            LinuxSchedulerFlag::SchedFlagUtilClampMin | LinuxSchedulerFlag::SchedFlagUtilClampMax => {
                return Err(invalid(
                    F,
                    "SCHED_FLAG_UTIL_CLAMP_MIN/MAX need clamp values, which the runtime spec does not carry",
                ))
            }
        };
    }
    Ok(SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy,
        flags,
        nice,
        priority: priority as u32,
        runtime,
        deadline,
        period,
    })
}

/// `process.ioPriority` as the value of ioprio_set(2): class in the top bits, level 0-7.
fn ioprio_value(class: IOPriorityClass, level: i64) -> Result<i32, AttrError> {
    if !(0..=7).contains(&level) {
        return Err(invalid("process.ioPriority", format!("priority {level} is out of range (0 to 7)")));
    }
    let class = match class {
        IOPriorityClass::IoprioClassRt => 1,
        IOPriorityClass::IoprioClassBe => 2,
        IOPriorityClass::IoprioClassIdle => 3,
    };
    Ok((class << IOPRIO_CLASS_SHIFT) | level as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(apparmor: bool, selinux: bool) -> Host {
        fn yes() -> bool {
            true
        }
        fn no() -> bool {
            false
        }
        Host { apparmor: if apparmor { yes } else { no }, selinux: if selinux { yes } else { no } }
    }

    fn process(json: &str) -> Process {
        let mut v: serde_json::Value = serde_json::from_str(json).expect("json");
        v["cwd"] = "/".into();
        v["user"] = serde_json::json!({"uid": 0, "gid": 0});
        serde_json::from_value(v).expect("process")
    }

    fn linux(json: &str) -> Linux {
        serde_json::from_str(json).expect("linux")
    }

    fn attrs(p: &str, l: &str, h: &Host) -> Result<ProcAttrs, String> {
        ProcAttrs::build(&process(p), None, Some(&linux(l)), h).map_err(|e| e.to_string())
    }

    #[test]
    fn lsm_values_apply_where_the_lsm_is_enabled_and_are_refused_elsewhere() {
        let p = r#"{"apparmorProfile":"docker-default","selinuxLabel":"system_u:system_r:container_t:s0"}"#;
        let on = attrs(p, "{}", &host(true, true)).expect("enabled");
        assert_eq!(on.apparmor.as_deref(), Some("docker-default"));
        assert_eq!(on.selinux.as_deref(), Some("system_u:system_r:container_t:s0"));
        let e = attrs(p, "{}", &host(false, true)).expect_err("refused without AppArmor");
        assert!(e.starts_with("process.apparmorProfile: ") && e.contains("AppArmor is not enabled"), "{e}");
        let e = attrs(p, "{}", &host(true, false)).expect_err("refused without SELinux");
        assert!(e.starts_with("process.selinuxLabel: ") && e.contains("SELinux is not enabled"), "{e}");
        // Empty strings are unset.
        let empty = attrs(r#"{"apparmorProfile":"","selinuxLabel":""}"#, "{}", &host(true, true)).expect("empty");
        assert_eq!(empty, ProcAttrs::default());
    }

    #[test]
    fn mount_label_is_refused_where_selinux_is_enabled() {
        let l = r#"{"mountLabel":"system_u:object_r:container_file_t:s0"}"#;
        assert!(attrs("{}", l, &host(false, false)).is_ok());
        let e = attrs("{}", l, &host(false, true)).expect_err("refused");
        assert!(e.starts_with("linux.mountLabel: ") && e.contains("not supported"), "{e}");
    }

    #[test]
    fn exec_falls_back_to_the_container_values() {
        let container = process(
            r#"{"apparmorProfile":"ctr","selinuxLabel":"l","scheduler":{"policy":"SCHED_IDLE"},
                "ioPriority":{"class":"IOPRIO_CLASS_IDLE","priority":0}}"#,
        );
        let h = host(true, true);
        let a = ProcAttrs::build(&process("{}"), Some(&container), None, &h).expect("inherit");
        assert_eq!(a.apparmor.as_deref(), Some("ctr"));
        assert_eq!(a.selinux.as_deref(), Some("l"));
        assert_eq!(a.sched.map(|s| s.policy), Some(SCHED_IDLE));
        assert_eq!(a.ioprio, Some(3 << 13));
        let own = process(r#"{"apparmorProfile":"mine","ioPriority":{"class":"IOPRIO_CLASS_BE","priority":7}}"#);
        let a = ProcAttrs::build(&own, Some(&container), None, &h).expect("own");
        assert_eq!(a.apparmor.as_deref(), Some("mine"));
        assert_eq!(a.ioprio, Some(2 << 13 | 7));
    }

    #[test]
    fn scheduler_values_are_checked_like_runc() {
        let h = host(false, false);
        let sched = |s: &str| attrs(&format!(r#"{{"scheduler":{s}}}"#), "{}", &h).map(|a| a.sched.expect("sched"));
        let batch = sched(r#"{"policy":"SCHED_BATCH","nice":5,"flags":["SCHED_RESET_ON_FORK"]}"#).expect("batch");
        assert_eq!((batch.size, batch.policy, batch.nice, batch.flags), (48, SCHED_BATCH, 5, 1));
        assert_eq!(sched(r#"{"policy":"SCHED_FIFO","priority":10}"#).expect("fifo").priority, 10);
        let dl = sched(r#"{"policy":"SCHED_DEADLINE","runtime":10000000,"deadline":20000000,"period":30000000}"#)
            .expect("deadline");
        assert_eq!((dl.runtime, dl.deadline, dl.period), (10_000_000, 20_000_000, 30_000_000));
        for (s, words) in [
            (r#"{"policy":"SCHED_OTHER","nice":20}"#, "nice 20 is out of range"),
            (r#"{"policy":"SCHED_IDLE","nice":-21}"#, "nice -21 is out of range"),
            (r#"{"policy":"SCHED_IDLE","nice":5}"#, "only for SCHED_OTHER and SCHED_BATCH"),
            (r#"{"policy":"SCHED_FIFO"}"#, "needs a priority from 1 to 99"),
            (r#"{"policy":"SCHED_RR","priority":100}"#, "needs a priority from 1 to 99"),
            (r#"{"policy":"SCHED_BATCH","priority":1}"#, "only for SCHED_FIFO and SCHED_RR"),
            (r#"{"policy":"SCHED_OTHER","runtime":1}"#, "only for SCHED_DEADLINE"),
            (r#"{"policy":"SCHED_DEADLINE","runtime":2000}"#, "needs runtime and deadline"),
            (r#"{"policy":"SCHED_DEADLINE","runtime":100,"deadline":2000}"#, "runtime 100 is out of range"),
            (r#"{"policy":"SCHED_DEADLINE","runtime":3000,"deadline":2000}"#, "runtime <= deadline <= period"),
            (
                r#"{"policy":"SCHED_DEADLINE","runtime":2000,"deadline":3000,"period":2500}"#,
                "runtime <= deadline <= period",
            ),
            (r#"{"policy":"SCHED_ISO"}"#, "SCHED_ISO is not implemented"),
            (r#"{"policy":"SCHED_OTHER","flags":["SCHED_FLAG_UTIL_CLAMP_MAX"]}"#, "UTIL_CLAMP"),
        ] {
            let e = sched(s).expect_err(s);
            assert!(e.starts_with("process.scheduler: ") && e.contains(words), "{s}: {e}");
        }
    }

    #[test]
    fn io_priority_and_personality() {
        let h = host(false, false);
        let io = |c: &str, p: i64| {
            attrs(&format!(r#"{{"ioPriority":{{"class":"{c}","priority":{p}}}}}"#), "{}", &h).map(|a| a.ioprio)
        };
        assert_eq!(io("IOPRIO_CLASS_RT", 0), Ok(Some(1 << 13)));
        assert_eq!(io("IOPRIO_CLASS_BE", 7), Ok(Some(2 << 13 | 7)));
        assert_eq!(io("IOPRIO_CLASS_IDLE", 0), Ok(Some(3 << 13)));
        assert_eq!(io("IOPRIO_CLASS_BE", 8), Err("process.ioPriority: priority 8 is out of range (0 to 7)".into()));
        assert!(io("IOPRIO_CLASS_BE", -1).is_err());

        let pers = |l: &str| attrs("{}", l, &h).map(|a| a.personality);
        assert_eq!(pers(r#"{"personality":{"domain":"LINUX"}}"#), Ok(Some(PER_LINUX)));
        assert_eq!(pers(r#"{"personality":{"domain":"LINUX32"}}"#), Ok(Some(PER_LINUX32)));
        assert_eq!(pers(r#"{"personality":{"domain":"LINUX32","flags":[]}}"#), Ok(Some(PER_LINUX32)));
        let e = pers(r#"{"personality":{"domain":"LINUX","flags":["ADDR_NO_RANDOMIZE"]}}"#).expect_err("flags");
        assert!(e.starts_with("linux.personality.flags: "), "{e}");
    }

    #[test]
    fn lsm_attributes_are_written_once_to_the_first_file_there() {
        let dir = std::env::temp_dir().join(format!("skiff-attrs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("attr")).expect("mkdir");
        let open = |sub: &str| std::fs::OpenOptions::new().write(true).open(dir.join(sub));
        // Older kernels: no attr/apparmor/, the shared attr/exec.
        std::fs::write(dir.join("attr/exec"), "").expect("exec");
        write_attr(&open, APPARMOR_EXEC, "exec docker-default").expect("fallback");
        assert_eq!(std::fs::read_to_string(dir.join("attr/exec")).expect("read"), "exec docker-default");
        // Linux >= 5.1: the AppArmor directory is preferred.
        std::fs::create_dir(dir.join("attr/apparmor")).expect("mkdir");
        std::fs::write(dir.join("attr/apparmor/exec"), "").expect("exec");
        write_attr(&open, APPARMOR_EXEC, "exec other").expect("apparmor dir");
        assert_eq!(std::fs::read_to_string(dir.join("attr/apparmor/exec")).expect("read"), "exec other");
        assert_eq!(std::fs::read_to_string(dir.join("attr/exec")).expect("read"), "exec docker-default");
        // Nothing there: the error says so.
        let e = write_attr(&open, SELINUX_KEYCREATE, "l").expect_err("missing");
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn the_private_procfs_reaches_this_threads_attributes() {
        // Opening (not writing: without an LSM the write fails) this thread's attr/exec and
        // attr/keycreate through the private procfs; as root, through the open_tree clone.
        let procfs = private_procfs().expect("procfs");
        open_thread_self(&procfs, "attr/exec").expect("attr/exec");
        open_thread_self(&procfs, "attr/keycreate").expect("attr/keycreate");
        let e = open_thread_self(&procfs, "attr/no-such-attr").expect_err("missing");
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }

    /// CVE-2025-52881 shape: a file bind-mounted over this thread's attr/exec (as a
    /// container sharing a volume could race in) catches a plain write to
    /// /proc/thread-self/attr/exec, but not the write through the private procfs.
    /// Runs itself again inside `unshare -m` (root only) to mount without touching the host.
    #[test]
    fn writes_through_the_private_procfs_ignore_overmounts() {
        const CHILD: &str = "SKIFF_ATTRS_OVERMOUNT_CHILD";
        if let Some(decoy) = std::env::var_os(CHILD) {
            let decoy = std::path::PathBuf::from(decoy);
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            for target in [format!("/proc/self/task/{tid}/attr/exec"), "/proc/self/attr/exec".to_string()] {
                let target = std::fs::canonicalize(&target).expect("target");
                nix::mount::mount(Some(&decoy), &target, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>)
                    .expect("bind the decoy");
            }
            let procfs = private_procfs().expect("procfs");
            match write_attr(&|sub: &str| open_thread_self(&procfs, sub), SELINUX_EXEC, "exec private") {
                // Reached the real attribute (no LSM here: EINVAL) or refused the overmount.
                Ok(()) | Err(_) => {}
            }
            assert_eq!(std::fs::read_to_string(&decoy).expect("decoy"), "", "the private write hit the overmount");
            // The plain path is caught: the attack is real.
            std::fs::write("/proc/thread-self/attr/exec", "exec plain").expect("plain write");
            assert_eq!(std::fs::read_to_string(&decoy).expect("decoy"), "exec plain");
            return;
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/usr/bin/unshare").exists() {
            eprintln!("skipped: needs root and unshare(1)");
            return;
        }
        let decoy = std::env::temp_dir().join(format!("skiff-attrs-decoy-{}", std::process::id()));
        std::fs::write(&decoy, "").expect("decoy");
        let out = std::process::Command::new("/usr/bin/unshare")
            .args(["-m", "--propagation", "private"])
            .arg(std::env::current_exe().expect("test binary"))
            .args(["--exact", "init::attrs::tests::writes_through_the_private_procfs_ignore_overmounts", "--nocapture"])
            .env(CHILD, &decoy)
            .output()
            .expect("unshare");
        let _ = std::fs::remove_file(&decoy);
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && text.contains("1 passed"), "child run failed:\n{text}");
    }

    #[test]
    fn this_host_refuses_lsm_values_it_cannot_apply() {
        // The machines that run these tests have neither AppArmor nor SELinux enabled;
        // where one is, this test says nothing.
        if apparmor_enabled() || selinux_enabled() {
            return;
        }
        let p = process(r#"{"apparmorProfile":"docker-default"}"#);
        let e = ProcAttrs::for_init(&p, None).expect_err("refused").to_string();
        assert!(e.contains("AppArmor is not enabled"), "{e}");
        let a = ProcAttrs::for_init(&process("{}"), None).expect("nothing asked");
        assert_eq!(a, ProcAttrs::default());
        a.apply().expect("nothing to apply");
    }
}
