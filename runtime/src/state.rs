//! Container state on disk: `<root>/<id>/state.json`, written temp + fsync + rename,
//! and the live status derived from the init process (pid + its start time, so a
//! reused pid is never mistaken for our container).

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use crate::error::{Context, Error, Result};

pub const OCI_VERSION: &str = "1.2.0";
/// The socket `start` connects to; present while the container is `created`.
pub const START_SOCK: &str = "start.sock";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    /// Running, with every process frozen by `pause` (derived from the freezer).
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

/// What we keep about a container between runtime invocations.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    pub id: String,
    pub pid: i32,
    /// Field 22 of /proc/<pid>/stat when the init was created.
    pub start_time: u64,
    pub bundle: PathBuf,
    pub created: String,
    pub cgroup_path: PathBuf,
    /// `--systemd-cgroup`: the scope's `slice:prefix:name` (`delete` stops the unit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systemd_cgroup: Option<String>,
    /// Set by `start` once the user process was exec'ed.
    #[serde(default)]
    pub started: bool,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    pub config: Spec,
}

/// The OCI runtime-spec state document (what `state` prints and hooks read).
#[derive(Debug, Serialize)]
pub struct OciState<'a> {
    #[serde(rename = "ociVersion")]
    pub oci_version: &'a str,
    pub id: &'a str,
    pub status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub bundle: &'a Path,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub annotations: &'a HashMap<String, String>,
}

/// runc's `state` output adds `rootfs`, `created` and `owner`; callers parse them.
#[derive(Debug, Serialize)]
pub struct RuncState<'a> {
    #[serde(rename = "ociVersion")]
    pub oci_version: &'a str,
    pub id: &'a str,
    pub pid: i32,
    pub status: &'a str,
    pub bundle: &'a Path,
    pub rootfs: PathBuf,
    pub created: &'a str,
    pub owner: &'a str,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub annotations: &'a HashMap<String, String>,
}

/// Container ids become directory names: keep them boring.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_+-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidId(id.to_string()))
    }
}

pub fn dir(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}

impl Saved {
    pub fn load(root: &Path, id: &str) -> Result<Saved> {
        validate_id(id)?;
        let path = dir(root, id).join("state.json");
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::NotExist(id.into())),
            Err(e) => return Err(Error::Io { what: format!("read {}", path.display()), source: e }),
        };
        serde_json::from_slice(&data).map_err(|source| Error::Json { path, source })
    }

    /// Writes state.json atomically (temp file + rename): a reader, or the next
    /// runtime after a crash, sees the old or the new state, never a torn one.
    ///
    /// Not fsynced: this state describes live processes, and a power cut kills them
    /// all (on a normal system the root is a tmpfs that vanishes too). What must hold
    /// after a power cut is that leftover state is recognised and can be deleted,
    /// which `status` and `delete` handle. Durable files (the agent's) use
    /// [`write_atomic`] with `durable = true`.
    pub fn save(&self, root: &Path) -> Result<()> {
        let d = dir(root, &self.id);
        let data = serde_json::to_vec(self).map_err(|source| Error::Json { path: d.join("state.json"), source })?;
        // 0600 (as runc's): it holds the whole spec, the process environment included.
        write_atomic(&d.join("state.json"), &data, false, 0o600)
    }

    /// The live status. `Stopped` when the init is gone, a zombie, or a different process;
    /// `Paused` while the cgroup's freezer holds it (as runc, derived rather than recorded).
    pub fn status(&self, root: &Path) -> Status {
        match proc_start_time(self.pid) {
            Some((t, state)) if t == self.start_time && state != 'Z' && state != 'X' => {
                if !self.started && dir(root, &self.id).join(START_SOCK).exists() {
                    Status::Created
                } else if crate::cgroups::Cgroup::new(&self.cgroup_path).is_ok_and(|c| c.frozen()) {
                    Status::Paused
                } else {
                    Status::Running
                }
            }
            _ => Status::Stopped,
        }
    }

    pub fn oci_state<'a>(&'a self, status: Status) -> OciState<'a> {
        OciState {
            oci_version: OCI_VERSION,
            id: &self.id,
            status: status.as_str(),
            pid: (status != Status::Stopped).then_some(self.pid),
            bundle: &self.bundle,
            annotations: &self.annotations,
        }
    }

    pub fn oci_state_json(&self, status: Status) -> String {
        serde_json::to_string(&self.oci_state(status)).unwrap_or_default()
    }

    /// The state JSON on the stdin of a `kind` hook: this container, with `pid` (the init's
    /// pid as the host sees it) and the status [`HookKind::status`] gives that kind.
    pub fn hook_state_json(&self, kind: HookKind, pid: i32) -> String {
        let status = kind.status();
        let mut st = self.oci_state(status);
        if status != Status::Stopped {
            st.pid = Some(pid);
        }
        serde_json::to_string(&st).unwrap_or_default()
    }
}

/// The six OCI hook kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl HookKind {
    /// The kind's name in config.json.
    pub fn name(self) -> &'static str {
        match self {
            HookKind::Prestart => "prestart",
            HookKind::CreateRuntime => "createRuntime",
            HookKind::CreateContainer => "createContainer",
            HookKind::StartContainer => "startContainer",
            HookKind::Poststart => "poststart",
            HookKind::Poststop => "poststop",
        }
    }

    /// The status a hook of this kind reads on its stdin. The runtime spec defines the
    /// statuses but not which hook sees which, so:
    /// - `prestart`: `created`, which runtime-tools' hooks_stdin test requires (crun passes
    ///   it; runc passes `creating`). prestart was defined as running at `start`.
    /// - `createRuntime`, `createContainer`: `creating`: they run inside the create
    ///   operation (as runc; crun says `created`, runtime-tools does not check).
    /// - `startContainer`: `created`: the container is created, its process not yet
    ///   started (as runc; crun says `starting`, which is no status of the spec).
    /// - `poststart`: `running` (runtime-tools, runc, crun); `poststop`: `stopped`.
    pub fn status(self) -> Status {
        match self {
            HookKind::Prestart | HookKind::StartContainer => Status::Created,
            HookKind::CreateRuntime | HookKind::CreateContainer => Status::Creating,
            HookKind::Poststart => Status::Running,
            HookKind::Poststop => Status::Stopped,
        }
    }
}

/// temp + rename, and with `durable` also fsync of the file and of the directory:
/// after a crash (or, durable, a power cut) the file is either the old one or the
/// new one, never a torn mix. `mode` is the new file's (less the umask).
pub fn write_atomic(path: &Path, data: &[u8], durable: bool, mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .ctx(|| format!("create {}", tmp.display()))?;
    let r = f.write_all(data).ctx(|| format!("write {}", tmp.display())).and_then(|_| {
        if durable {
            f.sync_all().ctx(|| format!("fsync {}", tmp.display()))
        } else {
            Ok(())
        }
    });
    drop(f);
    if let Err(e) =
        r.and_then(|_| fs::rename(&tmp, path).ctx(|| format!("rename {} to {}", tmp.display(), path.display())))
    {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if durable {
        if let Some(parent) = path.parent() {
            if let Ok(d) = fs::File::open(parent) {
                let _ = d.sync_all();
            }
        }
    }
    Ok(())
}

/// (start time in clock ticks, state letter) of a process, from /proc/<pid>/stat.
pub fn proc_start_time(pid: i32) -> Option<(u64, char)> {
    if pid <= 0 {
        return None;
    }
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: parse after the last ')'.
    let after = &s[s.rfind(')')? + 2..];
    let mut it = after.split(' ');
    let state = it.next()?.chars().next()?;
    // `after` starts at field 3 (state); start time is field 22.
    let start = it.nth(18)?.parse().ok()?;
    Some((start, state))
}

/// Every container id under `root` (directories holding a state.json).
pub fn list_ids(root: &Path) -> Result<Vec<String>> {
    let rd = match fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::Io { what: format!("read {}", root.display()), source: e }),
    };
    let mut ids: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("state.json").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    ids.sort();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_id("web-1").is_ok());
        assert!(validate_id("a.b_c+d").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id("../x").is_err());
        assert!(validate_id(".hidden").is_err());
        assert!(validate_id("a/b").is_err());
    }

    #[test]
    fn hook_state_is_built_from_the_state() {
        // Text that a template substitution would have rewritten: the status and pid of
        // the template inside annotations, and the id.
        let mut annotations = HashMap::new();
        annotations.insert("status".to_string(), "creating".to_string());
        annotations.insert("\"pid\":0".to_string(), "\"status\":\"creating\"".to_string());
        let saved = Saved {
            id: "c1".into(),
            pid: 0,
            start_time: 0,
            bundle: "/b".into(),
            created: String::new(),
            cgroup_path: "/c".into(),
            systemd_cgroup: None,
            started: false,
            annotations: annotations.clone(),
            config: Spec::default(),
        };
        for (kind, status) in [
            (HookKind::Prestart, "created"),
            (HookKind::CreateRuntime, "creating"),
            (HookKind::CreateContainer, "creating"),
            (HookKind::StartContainer, "created"),
            (HookKind::Poststart, "running"),
            (HookKind::Poststop, "stopped"),
        ] {
            let v: serde_json::Value = serde_json::from_str(&saved.hook_state_json(kind, 4242)).expect("json");
            assert_eq!(v["status"], status, "{}", kind.name());
            assert_eq!(v["id"], "c1");
            assert_eq!(v["bundle"], "/b");
            assert_eq!(v["ociVersion"], OCI_VERSION);
            let want: serde_json::Value = serde_json::to_value(&annotations).expect("annotations");
            assert_eq!(v["annotations"], want, "{}", kind.name());
            if kind == HookKind::Poststop {
                assert!(v.get("pid").is_none(), "{v}");
            } else {
                assert_eq!(v["pid"], 4242, "{}", kind.name());
            }
        }
    }

    #[test]
    fn own_start_time() {
        let me = std::process::id() as i32;
        let (t, st) = proc_start_time(me).expect("own stat");
        assert!(t > 0);
        assert!(st != 'Z' && st != 'X', "state {st}");
    }
}
