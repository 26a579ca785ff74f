//! Where the agent keeps things.
//!
//! * `<root>/containers/<id>/`: a replica's container (rootfs, upper, work, config.json,
//!   container.json for prune, replica.json: the agent's durable record of it).
//! * `<root>/volumes/<name>/`: named volumes.
//! * `<root>/logs/<id>/`: a replica's log files (see [`crate::logs`]).
//! * `<run>/`: what a reboot wipes. `/run/skiff` for the default root, `<root>/run` otherwise.
//!   `<run>/runtime/` is the OCI runtime's `--root`; `<run>/shims/<id>/` holds a replica's
//!   `shim.pid`, `init.pid` and `exit.json` (written by `skiff shim`); `<run>/netns/<id>` its
//!   network namespace; `<run>/agent.pid`.

use std::path::{Path, PathBuf};

use crate::cli::DEFAULT_ROOT;

#[derive(Clone, Debug)]
pub struct Paths {
    pub root: PathBuf,
    pub run: PathBuf,
}

impl Paths {
    pub fn new(root: &Path) -> Paths {
        let run = if root == Path::new(DEFAULT_ROOT) { PathBuf::from("/run/skiff") } else { root.join("run") };
        Paths { root: root.to_path_buf(), run }
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
