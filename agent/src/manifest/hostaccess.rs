//! What in a service reaches the host beyond its container: sysctls the runtime would refuse
//! (an error, as the runtime's rule says it at create: better at validate), and binds and
//! capabilities that hand the host to the container (a warning: the manifest's author may
//! mean it, e.g. a monitoring agent, but should know).

use std::path::{Component, Path, PathBuf};

use super::sysctl::{namespace_of, SysctlNamespace};
use super::NetworkMode;

/// Why the runtime would refuse sysctl `key` in a service with this network mode (a skiff
/// container always has its own ipc and uts namespaces, and its own network namespace
/// unless `network_mode: host`), with what to do; `None` when it is fine.
pub(super) fn sysctl_error(key: &str, network: NetworkMode) -> Option<String> {
    match namespace_of(key) {
        None => Some(format!(
            "`{key}` is not namespaced: a container setting it would change it for the whole host, and the runtime \
             refuses it; remove it (set it on the host, in /etc/sysctl.d, if the host needs it)"
        )),
        Some(SysctlNamespace::Network) if network == NetworkMode::Host => Some(format!(
            "`{key}` is set in the {} namespace, and with network_mode: host that is the host's (the runtime \
             refuses it); remove it, or use network_mode: bridge or none",
            SysctlNamespace::Network.name()
        )),
        Some(_) => None,
    }
}

/// What capability `cap` (`CAP_X` or `ALL`, as parsed) gives a container over the host, when
/// it gives it the host (or near enough).
pub(super) fn capability_warning(cap: &str, network: NetworkMode) -> Option<String> {
    let what = match cap {
        "ALL" => {
            "every capability: with them a container can mount, load kernel modules and read the host's \
                  files by handle, which is root on the host"
        }
        "CAP_SYS_ADMIN" => "CAP_SYS_ADMIN (mount, and much more) is close to root on the host",
        "CAP_SYS_MODULE" => "CAP_SYS_MODULE loads code into the host's kernel",
        "CAP_SYS_RAWIO" => "CAP_SYS_RAWIO gives raw access to the host's I/O ports and memory",
        "CAP_DAC_READ_SEARCH" => {
            "CAP_DAC_READ_SEARCH opens any file of the host's filesystems by handle (the \"shocker\" escape)"
        }
        "CAP_SYS_TIME" => "CAP_SYS_TIME sets the host's clock (there is no time namespace for it)",
        "CAP_BPF" => "CAP_BPF loads BPF programs into the host's kernel",
        "CAP_NET_ADMIN" if network == NetworkMode::Host => {
            "CAP_NET_ADMIN with network_mode: host changes the host's addresses, routes and firewall"
        }
        _ => return None,
    };
    Some(format!("{what}; grant only the capabilities the service needs"))
}

/// Host paths whose bind hands the host (or the means to take it) to a container: the path,
/// whether binding anything below it does too, whether a read-only bind is fine, and what it
/// gives.
const HOST_PATHS: &[(&str, bool, bool, &str)] = &[
    ("/", false, false, "the host's whole filesystem"),
    ("/etc", false, false, "the host's configuration (its accounts, passwords and sudoers)"),
    ("/etc/shadow", false, false, "the host's password hashes"),
    ("/etc/sudoers", false, false, "who is root on the host"),
    ("/etc/sudoers.d", true, false, "who is root on the host"),
    ("/root", true, false, "root's home (its SSH keys)"),
    ("/boot", true, false, "the host's kernel and boot configuration"),
    ("/dev", false, false, "the host's devices and its shared memory (/dev/shm)"),
    ("/proc", true, false, "the host's /proc (/proc/sysrq-trigger reboots or crashes the host)"),
    ("/sys", false, false, "the host's kernel settings"),
    ("/sys/fs/cgroup", true, false, "the host's cgroups (the limits of every container)"),
    ("/var/run/docker.sock", false, false, "the Docker daemon (root on the host)"),
    ("/run/docker.sock", false, false, "the Docker daemon (root on the host)"),
    ("/run/containerd", true, false, "containerd (root on the host)"),
    ("/var/run/containerd", true, false, "containerd (root on the host)"),
    ("/run/podman/podman.sock", false, false, "podman (root on the host)"),
    ("/run/crio/crio.sock", false, false, "CRI-O (root on the host)"),
    ("/run/dbus/system_bus_socket", false, false, "the system bus (systemd and its units)"),
    ("/run/systemd", true, false, "systemd's control sockets"),
    ("/run/skiff", true, false, "this agent's control socket and state"),
    ("/var/run/skiff", true, false, "this agent's control socket and state"),
    ("/run/skiff-runtime", true, false, "the OCI runtime's state of every container"),
    ("/var/lib/skiff", true, false, "skiff's store (every image, container and volume)"),
    ("/var/lib/docker", true, false, "Docker's store"),
    ("/usr", false, true, "the host's programs, writable"),
    ("/bin", false, true, "the host's programs, writable"),
    ("/sbin", false, true, "the host's programs, writable"),
    ("/lib", false, true, "the host's libraries, writable"),
];

/// `p` made absolute-clean (`.` dropped, `..` applied, clamped at `/`), lexically.
fn clean(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// A warning when a bind of host path `source` hands the host to the container: it is one
/// of [`HOST_PATHS`], below one that counts as a whole, or above one (binding `/var` binds
/// `/var/run/docker.sock` too). The path is checked as written and, when it exists, with
/// its symlinks resolved.
pub(super) fn bind_warning(source: &Path, read_only: bool) -> Option<String> {
    let written = clean(source);
    let mut candidates = vec![written.clone()];
    if let Ok(real) = std::fs::canonicalize(source) {
        if real != written {
            candidates.push(real);
        }
    }
    for src in &candidates {
        for (p, subtree, rw_only, what) in HOST_PATHS {
            if *rw_only && read_only {
                continue;
            }
            let p = Path::new(p);
            let shown = if src == &written {
                written.display().to_string()
            } else {
                format!("{} ({})", written.display(), src.display())
            };
            if src == p && p.ends_with("docker.sock") {
                return Some(format!(
                    "binding `{shown}`: there is no Docker API on a skiff box (no dockerd runs here), so a service that talks to Docker (Portainer, Watchtower, Traefik's docker provider) will not find one; where a Docker daemon does run, its socket hands {what} to the container. Remove it"
                ));
            }
            if src == p || (*subtree && src.starts_with(p)) {
                return Some(format!(
                    "binding `{shown}` hands {what} to the container; remove it, or bind only the files the service needs"
                ));
            }
            if p.starts_with(src) {
                return Some(format!(
                    "binding `{shown}` includes `{}`, {what}; remove it, or bind only the files the service needs",
                    p.display()
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctls_as_the_runtime_decides() {
        assert!(sysctl_error("kernel.core_pattern", NetworkMode::Bridge).unwrap().contains("not namespaced"));
        assert!(sysctl_error("vm.swappiness", NetworkMode::None).is_some());
        assert!(sysctl_error("net.ipv4.ip_forward", NetworkMode::Host).unwrap().contains("network_mode: host"));
        assert_eq!(sysctl_error("net.ipv4.ip_forward", NetworkMode::Bridge), None);
        assert_eq!(sysctl_error("net.core.somaxconn", NetworkMode::None), None);
        assert_eq!(sysctl_error("kernel.shmmax", NetworkMode::Host), None, "always its own ipc namespace");
        assert_eq!(sysctl_error("fs.mqueue.queues_max", NetworkMode::Host), None);
        assert_eq!(sysctl_error("kernel.domainname", NetworkMode::Host), None, "always its own uts namespace");
    }

    #[test]
    fn binds_that_hand_over_the_host() {
        let w = |p: &str, ro: bool| bind_warning(Path::new(p), ro);
        for p in [
            "/",
            "/etc",
            "/etc/",
            "/var/run/docker.sock",
            "/run/docker.sock",
            "/run/containerd/containerd.sock",
            "/proc/sysrq-trigger",
            "/proc",
            "/dev",
            "/boot",
            "/boot/firmware/config.txt",
            "/run/skiff",
            "/var/lib/skiff/volumes/x",
            "/var",
            "/run",
            "/srv/../etc",
        ] {
            assert!(w(p, false).is_some(), "{p}");
            assert!(w(p, true).is_some(), "{p} read-only");
        }
        assert!(w("/var", false).unwrap().contains("includes `/var/run/docker.sock`"), "{:?}", w("/var", false));
        assert!(w("/usr", false).is_some() && w("/usr", true).is_none());
        for p in ["/etc/localtime", "/etc/app/secret", "/srv/data", "/home/pi/app", "/dev/ttyUSB0", "/sys/class/gpio"] {
            assert_eq!(w(p, false), None, "{p}");
        }
    }

    #[test]
    fn capabilities_that_hand_over_the_host() {
        assert!(capability_warning("ALL", NetworkMode::Bridge).is_some());
        assert!(capability_warning("CAP_SYS_ADMIN", NetworkMode::Bridge).is_some());
        assert!(capability_warning("CAP_NET_ADMIN", NetworkMode::Host).is_some());
        assert_eq!(capability_warning("CAP_NET_ADMIN", NetworkMode::Bridge), None);
        assert_eq!(capability_warning("CAP_NET_BIND_SERVICE", NetworkMode::Host), None);
    }
}
