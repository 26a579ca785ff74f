//! Which namespace a sysctl belongs to: runc's rule, in one place for the two that apply it.
//! skiff-runtime refuses a spec whose sysctl the container would set for the host
//! (`spec::check_sysctls`); `skiff validate` and the agent refuse such a manifest before it
//! ever reaches a runtime. The agent does not depend on skiff-runtime (nor should it, for one
//! table), so it compiles this file in with `#[path]`: it uses nothing but `core`.

/// The namespace a container needs its own of, to set a namespaced sysctl.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SysctlNamespace {
    Network,
    Ipc,
    Uts,
}

impl SysctlNamespace {
    /// `network`, `ipc`, `uts`.
    pub fn name(self) -> &'static str {
        match self {
            SysctlNamespace::Network => "network",
            SysctlNamespace::Ipc => "ipc",
            SysctlNamespace::Uts => "uts",
        }
    }
}

/// The IPC namespace's sysctls under `kernel.` (besides every `fs.mqueue.*`).
pub const IPC_SYSCTLS: &[&str] = &[
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// The namespace `key` (dotted: `net.ipv4.ip_forward`) belongs to; `None` when it is not
/// namespaced, so that setting it from a container would change the host: refused.
pub fn namespace_of(key: &str) -> Option<SysctlNamespace> {
    if key.starts_with("net.") {
        Some(SysctlNamespace::Network)
    } else if IPC_SYSCTLS.contains(&key) || key.starts_with("fs.mqueue.") {
        Some(SysctlNamespace::Ipc)
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        Some(SysctlNamespace::Uts)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_rule() {
        assert_eq!(namespace_of("net.ipv4.ip_forward"), Some(SysctlNamespace::Network));
        assert_eq!(namespace_of("net.core.somaxconn"), Some(SysctlNamespace::Network));
        assert_eq!(namespace_of("kernel.shmmax"), Some(SysctlNamespace::Ipc));
        assert_eq!(namespace_of("fs.mqueue.msg_max"), Some(SysctlNamespace::Ipc));
        assert_eq!(namespace_of("kernel.domainname"), Some(SysctlNamespace::Uts));
        for host in ["kernel.core_pattern", "kernel.panic", "vm.overcommit_memory", "fs.file-max", "kernel.shm_next_id"]
        {
            assert_eq!(namespace_of(host), None, "{host}");
        }
        assert_eq!(namespace_of("net/ipv4/ip_forward"), None, "only the dotted form is recognized (as runc)");
    }
}
