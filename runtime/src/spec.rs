//! Reading a bundle's config.json (with clear errors) and the default spec that
//! `skiff-runtime spec` writes.

use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::error::{Error, Result};

/// Loads and checks `<bundle>/config.json`. Errors name the file, line and column.
pub fn load(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    let data = match fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::msg(format!(
                "{}: no such file: a bundle needs a config.json (create one with `skiff-runtime spec`)",
                path.display()
            )))
        }
        Err(e) => return Err(Error::Io { what: format!("read {}", path.display()), source: e }),
    };
    let spec: Spec = from_json(&data).map_err(|e| {
        let at = format!("{}:{}:{}: invalid config", path.display(), e.line(), e.column());
        if let Some(s) = seccomp_hint(&data) {
            // serde's list of every known value would bury the point.
            return Error::msg(format!("{at}: {s}"));
        }
        let hint = unknown_namespace(&data).map(|t| format!(" (unknown namespace type {t:?} in linux.namespaces)"));
        Error::msg(format!("{at}: {}{}", strip_pos(&e), hint.unwrap_or_default()))
    })?;
    check(&spec, bundle)?;
    Ok(spec)
}

/// Parses a config.json (or an `exec --process` file). oci-spec 0.10 spells two scheduler
/// flags unlike the runtime spec ("SCHED_RESET_ON_FORK" and "SCHED_FLAG_D_L_OVERRUN" for
/// "SCHED_FLAG_RESET_ON_FORK" and "SCHED_FLAG_DL_OVERRUN"): a document that fails to parse
/// and holds the spec's names is parsed again with oci-spec's (error path only).
pub fn from_json<T: serde::de::DeserializeOwned>(data: &[u8]) -> serde_json::Result<T> {
    serde_json::from_slice(data).or_else(|e| {
        let mut v: serde_json::Value = serde_json::from_slice(data).map_err(|_| e)?;
        let mut changed = false;
        for ptr in ["/process/scheduler/flags", "/scheduler/flags"] {
            for f in v.pointer_mut(ptr).and_then(|f| f.as_array_mut()).into_iter().flatten() {
                let ours = match f.as_str() {
                    Some("SCHED_FLAG_RESET_ON_FORK") => "SCHED_RESET_ON_FORK",
                    Some("SCHED_FLAG_DL_OVERRUN") => "SCHED_FLAG_D_L_OVERRUN",
                    _ => continue,
                };
                *f = ours.into();
                changed = true;
            }
        }
        if !changed {
            // The first error, with its line and column.
            return serde_json::from_slice(data);
        }
        // Through bytes again, not from_value: that would add a second deserializer of
        // the whole spec to the binary (~200 KB).
        serde_json::from_slice(&serde_json::to_vec(&v)?)
    })
}

/// On the error path only: names a value of `linux.seccomp` the spec does not know, as
/// "seccomp: syscalls[2].action: unknown action \"X\"".
fn seccomp_hint(data: &[u8]) -> Option<String> {
    use oci_spec::runtime::{Arch, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator};
    use serde_json::Value;
    // from_slice (not from_value) reuses the deserializers config.json is read with.
    fn unknown<T: serde::de::DeserializeOwned>(v: &Value) -> bool {
        serde_json::from_slice::<T>(v.to_string().as_bytes()).is_err()
    }
    let v: Value = serde_json::from_slice(data).ok()?;
    let s = v.pointer("/linux/seccomp")?;
    let bad = |field: String, what: &str, v: &Value| Some(format!("seccomp: {field}: unknown {what} {v}"));
    if let Some(a) = s.get("defaultAction").filter(|a| unknown::<LinuxSeccompAction>(a)) {
        return bad("defaultAction".into(), "action", a);
    }
    for (i, a) in s["architectures"].as_array().into_iter().flatten().enumerate() {
        if unknown::<Arch>(a) {
            return bad(format!("architectures[{i}]"), "architecture", a);
        }
    }
    for (i, f) in s["flags"].as_array().into_iter().flatten().enumerate() {
        if unknown::<LinuxSeccompFilterFlag>(f) {
            return bad(format!("flags[{i}]"), "flag", f);
        }
    }
    for (i, c) in s["syscalls"].as_array().into_iter().flatten().enumerate() {
        if let Some(a) = c.get("action").filter(|a| unknown::<LinuxSeccompAction>(a)) {
            return bad(format!("syscalls[{i}].action"), "action", a);
        }
        for (j, arg) in c["args"].as_array().into_iter().flatten().enumerate() {
            if let Some(op) = arg.get("op").filter(|o| unknown::<LinuxSeccompOperator>(o)) {
                return bad(format!("syscalls[{i}].args[{j}].op"), "operator", op);
            }
        }
    }
    None
}

/// On the error path only: names a namespace type the spec does not know.
fn unknown_namespace(data: &[u8]) -> Option<String> {
    const KNOWN: &[&str] = &["mount", "cgroup", "uts", "ipc", "user", "pid", "network", "time"];
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    v["linux"]["namespaces"]
        .as_array()?
        .iter()
        .filter_map(|n| n["type"].as_str())
        .find(|t| !KNOWN.contains(t))
        .map(str::to_owned)
}

fn strip_pos(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// The rootfs directory, resolved against the bundle.
pub fn rootfs(spec: &Spec, bundle: &Path) -> PathBuf {
    let p = spec.root().as_ref().map(|r| r.path().clone()).unwrap_or_else(|| PathBuf::from("rootfs"));
    if p.is_absolute() {
        p
    } else {
        bundle.join(p)
    }
}

fn check(spec: &Spec, bundle: &Path) -> Result<()> {
    if spec.root().is_none() {
        return Err(Error::msg(format!("{}: config.json has no \"root\"", bundle.display())));
    }
    let root = rootfs(spec, bundle);
    match fs::metadata(&root) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(Error::msg(format!("rootfs {} is not a directory", root.display()))),
        Err(_) => {
            return Err(Error::msg(format!(
                "rootfs {} does not exist: put the container's files there",
                root.display()
            )))
        }
    }
    let process = spec.process().as_ref();
    if process.and_then(|p| p.args().as_ref()).is_none_or(|a| a.is_empty()) {
        return Err(Error::msg("config.json: process.args must name the program to run"));
    }
    let linux = spec.linux().as_ref().ok_or_else(|| Error::msg("config.json has no \"linux\" section"))?;
    let nss = linux.namespaces().as_deref().unwrap_or_default();
    let mut seen = Vec::new();
    for ns in nss {
        if seen.contains(&ns.typ()) {
            return Err(Error::msg(format!("config.json: namespace {:?} is listed twice", ns.typ().to_string())));
        }
        seen.push(ns.typ());
    }
    check_sysctls(linux)?;
    Ok(())
}

/// A sysctl is only safe to set when it belongs to a namespace the container does not
/// share with the host; anything else would change the host (runc refuses it too).
fn check_sysctls(linux: &oci_spec::runtime::Linux) -> Result<()> {
    use oci_spec::runtime::LinuxNamespaceType as T;
    let Some(sysctls) = linux.sysctl() else { return Ok(()) };
    let nss = linux.namespaces().as_deref().unwrap_or_default();
    let own = |t: T, proc_name: &str| {
        nss.iter().any(|n| {
            n.typ() == t
                && match n.path() {
                    None => true,
                    Some(p) => {
                        use std::os::unix::fs::MetadataExt;
                        let theirs = fs::metadata(p).map(|m| m.ino()).ok();
                        let ours = fs::metadata(format!("/proc/self/ns/{proc_name}")).map(|m| m.ino()).ok();
                        theirs != ours
                    }
                }
        })
    };
    use crate::sysctl::{namespace_of, SysctlNamespace as N};
    for key in sysctls.keys() {
        let ns = namespace_of(key).ok_or_else(|| {
            Error::msg(format!(
                "config.json: sysctl {key:?} is not namespaced: setting it would change the host; remove it"
            ))
        })?;
        let ok = match ns {
            N::Network => own(T::Network, "net"),
            N::Ipc => own(T::Ipc, "ipc"),
            N::Uts => own(T::Uts, "uts"),
        };
        let ns = ns.name();
        if !ok {
            return Err(Error::msg(format!(
                "config.json: sysctl {key:?} needs the container's own {ns} namespace (without it the host's value would change)"
            )));
        }
    }
    Ok(())
}

/// What `skiff-runtime spec` writes: runc's default, with a cgroup namespace.
pub fn default_json(rootless: bool) -> String {
    let mut v: serde_json::Value = serde_json::from_str(DEFAULT).unwrap_or_default();
    if rootless {
        // As runc: a user namespace mapping the caller, no network/cgroup limits.
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        if let Some(ns) = v["linux"]["namespaces"].as_array_mut() {
            ns.retain(|n| n["type"] != "network");
            ns.push(serde_json::json!({"type": "user"}));
        }
        v["linux"]["uidMappings"] = serde_json::json!([{"containerID": 0, "hostID": uid, "size": 1}]);
        v["linux"]["gidMappings"] = serde_json::json!([{"containerID": 0, "hostID": gid, "size": 1}]);
        if let Some(r) = v["linux"].as_object_mut() {
            r.remove("resources");
        }
    }
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

const DEFAULT: &str = r#"{
  "ociVersion": "1.0.2",
  "process": {
    "terminal": true,
    "user": { "uid": 0, "gid": 0 },
    "args": ["sh"],
    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
    "cwd": "/",
    "capabilities": {
      "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
      "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
      "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    },
    "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }],
    "noNewPrivileges": true
  },
  "root": { "path": "rootfs", "readonly": true },
  "hostname": "skiff",
  "mounts": [
    { "destination": "/proc", "type": "proc", "source": "proc" },
    { "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
    { "destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
    { "destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
    { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"] },
    { "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"] },
    { "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"] }
  ],
  "linux": {
    "resources": { "devices": [{ "allow": false, "access": "rwm" }] },
    "namespaces": [
      { "type": "pid" }, { "type": "network" }, { "type": "ipc" },
      { "type": "uts" }, { "type": "mount" }, { "type": "cgroup" }
    ],
    "maskedPaths": [
      "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
      "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
      "/proc/scsi", "/sys/devices/virtual/powercap"
    ],
    "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
  }
}"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_names_of_scheduler_flags_parse() {
        use oci_spec::runtime::{LinuxSchedulerFlag as F, Process};
        let flags = |p: &Process| p.scheduler().as_ref().and_then(|s| s.flags().clone()).unwrap_or_default();
        let json = r#"{"process":{"cwd":"/","user":{"uid":0,"gid":0},"scheduler":{"policy":"SCHED_DEADLINE",
            "flags":["SCHED_FLAG_RESET_ON_FORK","SCHED_FLAG_DL_OVERRUN","SCHED_FLAG_RECLAIM"]}}}"#;
        let spec: Spec = from_json(json.as_bytes()).expect("config.json");
        let want = vec![F::SchedResetOnFork, F::SchedFlagDLOverrun, F::SchedFlagReclaim];
        assert_eq!(flags(spec.process().as_ref().expect("process")), want);
        let p: Process = from_json(
            br#"{"cwd":"/","user":{"uid":0,"gid":0},"scheduler":{"policy":"SCHED_OTHER","flags":["SCHED_FLAG_RESET_ON_FORK"]}}"#,
        )
        .expect("process.json");
        assert_eq!(flags(&p), vec![F::SchedResetOnFork]);
        // Other errors keep their position.
        let e = from_json::<Spec>(b"{\n\"process\": 1}").expect_err("bad");
        assert_eq!(e.line(), 2);
    }

    #[test]
    fn unknown_seccomp_values_are_named() {
        let hint = |s: &str| seccomp_hint(format!(r#"{{"linux":{{"seccomp":{s}}}}}"#).as_bytes());
        assert_eq!(hint(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#), None);
        assert_eq!(
            hint(r#"{"defaultAction":"SCMP_ACT_BOGUS"}"#).as_deref(),
            Some(r#"seccomp: defaultAction: unknown action "SCMP_ACT_BOGUS""#)
        );
        assert_eq!(
            hint(r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86","SCMP_ARCH_VAX"]}"#).as_deref(),
            Some(r#"seccomp: architectures[1]: unknown architecture "SCMP_ARCH_VAX""#)
        );
        assert_eq!(
            hint(
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["a"],"action":"SCMP_ACT_ERRNO"},
                {"names":["b"],"action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":1,"op":"SCMP_CMP_ALMOST"}]}]}"#
            )
            .as_deref(),
            Some(r#"seccomp: syscalls[1].args[0].op: unknown operator "SCMP_CMP_ALMOST""#)
        );
    }

    #[test]
    fn default_spec_parses() {
        let s: Spec = serde_json::from_str(&default_json(false)).expect("default spec");
        assert_eq!(s.process().as_ref().and_then(|p| p.args().clone()), Some(vec!["sh".to_string()]));
        let r: Spec = serde_json::from_str(&default_json(true)).expect("rootless spec");
        assert!(r.linux().as_ref().and_then(|l| l.uid_mappings().clone()).is_some());
    }
}
