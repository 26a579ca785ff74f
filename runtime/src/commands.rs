//! The read-only and small commands: `state`, `list`, `ps`, `spec`, `features`.
//! The lifecycle commands live in [`crate::container`].

use std::io::Write;
use std::path::Path;

use crate::cgroups::Cgroup;
use crate::error::{Context, Error, Result};
use crate::state::{self, RuncState, Saved, Status};

/// Prints `text` and a newline on stdout. A reader that went away (`skiff-runtime list | head
/// -n1`: EPIPE) is not an error: it had what it wanted; println! would panic there.
pub fn say(text: impl std::fmt::Display) {
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

fn owner(root: &Path, id: &str) -> String {
    let uid = std::fs::metadata(state::dir(root, id)).map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap_or(0);
    if uid == 0 {
        "root".into()
    } else {
        format!("#{uid}")
    }
}

fn runc_state<'a>(root: &Path, s: &'a Saved, status: Status, owner: &'a str) -> RuncState<'a> {
    RuncState {
        oci_version: state::OCI_VERSION,
        id: &s.id,
        pid: if status == Status::Stopped { 0 } else { s.pid },
        status: status.as_str(),
        bundle: &s.bundle,
        rootfs: crate::spec::rootfs(&s.config, &s.bundle),
        created: &s.created,
        owner,
        annotations: &s.annotations,
    }
    .with_root(root)
}

impl<'a> RuncState<'a> {
    fn with_root(self, _root: &Path) -> Self {
        self
    }
}

/// `state ID`: the OCI state JSON (plus runc's rootfs/created/owner fields).
pub fn state(root: &Path, id: &str) -> Result<()> {
    let s = Saved::load(root, id)?;
    let status = s.status(root);
    let own = owner(root, id);
    let out = serde_json::to_string_pretty(&runc_state(root, &s, status, &own)).unwrap_or_default();
    say(out);
    Ok(())
}

/// `list [--format table|json] [-q]`.
pub fn list(root: &Path, json: bool, quiet: bool) -> Result<()> {
    let mut rows = Vec::new();
    for id in state::list_ids(root)? {
        if let Ok(s) = Saved::load(root, &id) {
            let st = s.status(root);
            rows.push((s, st, owner(root, &id)));
        }
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if quiet {
        for (s, _, _) in &rows {
            let _ = writeln!(out, "{}", s.id);
        }
    } else if json {
        let v: Vec<RuncState> = rows.iter().map(|(s, st, o)| runc_state(root, s, *st, o)).collect();
        let _ = writeln!(out, "{}", serde_json::to_string(&v).unwrap_or_default());
    } else {
        let w = rows.iter().map(|r| r.0.id.len()).max().unwrap_or(2).max(2) + 2;
        let _ = writeln!(out, "{:w$}{:<10}{:<10}{:<40}{:<32}OWNER", "ID", "PID", "STATUS", "BUNDLE", "CREATED");
        for (s, st, o) in &rows {
            let pid = if *st == Status::Stopped { 0 } else { s.pid };
            let _ = writeln!(
                out,
                "{:w$}{:<10}{:<10}{:<40}{:<32}{}",
                s.id,
                pid,
                st.as_str(),
                s.bundle.display(),
                s.created,
                o
            );
        }
    }
    Ok(())
}

/// `ps [--format table|json] ID [ps options]`: the container's processes.
pub fn ps(root: &Path, id: &str, json: bool, ps_args: &[String]) -> Result<()> {
    let s = Saved::load(root, id)?;
    let cg = Cgroup::new(&s.cgroup_path)?;
    let mut pids = cg.pids()?;
    pids.sort_unstable();
    if json {
        say(serde_json::to_string(&pids).unwrap_or_default());
        return Ok(());
    }
    let args: Vec<String> = if ps_args.is_empty() { vec!["-ef".into()] } else { ps_args.to_vec() };
    let out = std::process::Command::new("ps").args(&args).output().ctx(|| "run ps")?;
    if !out.status.success() {
        return Err(Error::msg(format!("ps {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("");
    let col =
        header.split_whitespace().position(|h| h == "PID").ok_or_else(|| Error::msg("ps output has no PID column"))?;
    say(header);
    for l in lines {
        if let Some(p) = l.split_whitespace().nth(col).and_then(|p| p.parse::<i32>().ok()) {
            if pids.contains(&p) {
                say(l);
            }
        }
    }
    Ok(())
}

/// `spec [--bundle DIR] [--rootless]`: writes a default config.json.
pub fn spec(bundle: &Path, rootless: bool) -> Result<()> {
    let p = bundle.join("config.json");
    if p.exists() {
        return Err(Error::msg(format!("{} exists: remove it first", p.display())));
    }
    let text = crate::spec::default_json(rootless);
    std::fs::write(&p, text + "\n").ctx(|| format!("write {}", p.display()))
}

/// `features`: what this runtime supports, in the runtime-spec features format.
pub fn features() -> Result<()> {
    let v = serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": state::OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "sync", "async",
            "dirsync", "remount", "mand", "nomand", "atime", "noatime", "diratime", "nodiratime", "relatime",
            "norelatime", "strictatime", "nostrictatime", "bind", "rbind", "private", "rprivate", "shared",
            "rshared", "slave", "rslave", "unbindable", "runbindable", "tmpcopyup", "nosymfollow", "symfollow",
            "rro", "rrw", "rnosuid", "rsuid", "rnodev", "rdev", "rnoexec", "rexec", "rnoatime", "ratime",
            "rrelatime", "rnorelatime", "rstrictatime", "rnostrictatime", "rnodiratime", "rdiratime",
            "rnosymfollow", "rsymfollow"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": caps::all().iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "cgroup": { "v1": true, "v2": true, "systemd": crate::systemd::host_support().is_ok(), "systemdUser": false },
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                    "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM", "SCMP_ARCH_LOONGARCH64", "SCMP_ARCH_M68K",
                    "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32", "SCMP_ARCH_MIPSEL",
                    "SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL64N32", "SCMP_ARCH_PARISC", "SCMP_ARCH_PARISC64",
                    "SCMP_ARCH_PPC", "SCMP_ARCH_PPC64", "SCMP_ARCH_PPC64LE", "SCMP_ARCH_RISCV64", "SCMP_ARCH_S390",
                    "SCMP_ARCH_S390X", "SCMP_ARCH_SH", "SCMP_ARCH_SHEB", "SCMP_ARCH_X32", "SCMP_ARCH_X86",
                    "SCMP_ARCH_X86_64"]
            },
            // Supported where the host has the LSM enabled (ignored elsewhere, as Docker does).
            "apparmor": { "enabled": true },
            "selinux": { "enabled": true }
        },
        "annotations": {
            "org.opencontainers.runtime-spec.features": "skiff-runtime",
            "io.github.seccomp.libseccomp.version": crate::seccomp::library_version(),
            "run.skiff.runtime.version": env!("CARGO_PKG_VERSION")
        }
    });
    say(serde_json::to_string_pretty(&v).unwrap_or_default());
    Ok(())
}
