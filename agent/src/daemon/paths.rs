//! Where the agent keeps things.
//!
//! * `<root>/containers/<id>/`: a replica's container (rootfs, upper, work, config.json,
//!   container.json for prune, replica.json: the agent's durable record of it).
//! * `<root>/volumes/<name>/`: named volumes.
//! * `<root>/logs/<id>/`: a replica's log files (see [`crate::logs`]).
//! * `<root>/services/<name>.json`: a service's revisions, rollout and overrides
//!   ([`super::revisions`]).
//! * `<run>/`: what a reboot wipes. `/run/skiff` for the default root, `<root>/run` otherwise.
//!   `<run>/runtime/` is the OCI runtime's `--root`; `<run>/shims/<id>/` holds a replica's
//!   `shim.pid`, `init.pid` and `exit.json` (written by `skiff shim`); `<run>/netns/<id>` its
//!   network namespace; `<run>/agent.pid`; `<run>/control.sock`, the socket of imperative
//!   commands (0600, root's: [`crate::daemon::control`]).
//!
//! Every directory here is 0700 and every file skiff writes for itself 0600: only root reaches
//! anything (why 0700 and not Docker's 0710: [`skiff_images::fsutil::PRIVATE_DIR`]). Of the
//! files skiff writes only a bridged replica's `hosts` and `resolv.conf` are 0644: any process
//! of the container reads them, through its bind mounts. The image's files (layers, upper
//! directories) and the volumes keep their own modes for the same reason: a container's users
//! reach them through its mounts, never through these paths. [`Paths::make_private`] narrows
//! what an older skiff left open.

use std::path::{Path, PathBuf};

use crate::cli::DEFAULT_ROOT;

#[derive(Clone, Debug)]
pub struct Paths {
    pub root: PathBuf,
    pub run: PathBuf,
}

/// The agent's entries directly under the root (the store's own: `skiff_images::Store::open`).
const ROOT_ENTRIES: &[&str] = &["containers", "volumes", "logs", "network", "run", "services"];
/// The entries directly under the run directory.
const RUN_ENTRIES: &[&str] = &["runtime", "shims", "netns", "agent.lock", "agent.pid", "ports.json", "control.sock"];

impl Paths {
    pub fn new(root: &Path) -> Paths {
        let run = if root == Path::new(DEFAULT_ROOT) { PathBuf::from("/run/skiff") } else { root.join("run") };
        Paths { root: root.to_path_buf(), run }
    }
    /// Creates the root and the run directory (0700) when missing, and narrows to 0700/0600 what
    /// an older skiff made 0755/0644: both directories and the entries directly under them (not
    /// a walk: what is beneath them is out of reach once they are private).
    pub fn make_private(&self) -> anyhow::Result<()> {
        use anyhow::Context;
        use skiff_images::fsutil;
        for (dir, names) in [(&self.root, ROOT_ENTRIES), (&self.run, RUN_ENTRIES)] {
            fsutil::create_private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
            fsutil::make_private_entries(dir, names)
                .with_context(|| format!("making {} private (mode 0700)", dir.display()))?;
        }
        // Made here, not left to the OCI runtime (whose mode it would be): it holds each
        // container's state, the spec with its environment included.
        let rt = self.runtime_root();
        fsutil::create_private_dir(&rt).with_context(|| format!("creating {}", rt.display()))
    }
    pub fn runtime_root(&self) -> PathBuf {
        self.run.join("runtime")
    }
    pub fn container(&self, id: &str) -> PathBuf {
        self.containers().join(id)
    }
    pub fn containers(&self) -> PathBuf {
        self.root.join("containers")
    }
    pub fn volume(&self, name: &str) -> PathBuf {
        self.root.join("volumes").join(name)
    }
    pub fn logs(&self, id: &str) -> PathBuf {
        self.logs_dir().join(id)
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn shim(&self, id: &str) -> PathBuf {
        self.run.join("shims").join(id)
    }
    /// The network namespace of a replica (a bind mount of an nsfs file).
    pub fn netns(&self, id: &str) -> PathBuf {
        self.run.join("netns").join(id)
    }
    pub fn agent_pid(&self) -> PathBuf {
        self.run.join("agent.pid")
    }
    /// The cgroup (cgroupsPath) of a replica: `/skiff/<id>` for the default root, else
    /// `/skiff-<8 hex of the root path's sha256>/<id>` so that two roots never share one.
    pub fn cgroup(&self, id: &str) -> String {
        if self.root == Path::new(DEFAULT_ROOT) {
            format!("/skiff/{id}")
        } else {
            use sha2::Digest;
            let h = sha2::Sha256::digest(self.root.as_os_str().as_encoded_bytes());
            format!("/skiff-{}/{id}", h[..4].iter().map(|b| format!("{b:02x}")).collect::<String>())
        }
    }
}
