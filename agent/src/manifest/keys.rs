//! Every key of the Compose Specification, and what skiff does with it: the one table the
//! converter's refusals come from ([`refusal`]), that a test checks against the converter
//! key by key, and that the README's list of keys is generated from ([`markdown`]), so the
//! three cannot drift apart.

/// What skiff does with a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    /// As compose does.
    Yes,
    /// Accepted, with what differs from compose.
    Partly(&'static str),
    /// Refused (an error), with what to do instead.
    No(&'static str),
}

use Support::{No, Partly, Yes};

/// The keys of a service (`services.NAME.KEY`).
pub const SERVICE_KEYS: &[(&str, Support)] = &[
    ("annotations", No("annotations are not supported; use labels")),
    ("attach", No("attach is not supported; use `skiff logs`")),
    ("blkio_config", No("blkio_config is not supported; remove it")),
    ("build", Partly("skiff does not build: with `image:` it runs that image (a warning says how to build elsewhere and push, or `skiff load` an archive); without `image:` it is an error")),
    ("cap_add", Partly("a warning for capabilities that hand the host to the container")),
    ("cap_drop", Yes),
    ("cgroup", No("cgroup is not supported; remove it")),
    ("cgroup_parent", No("skiff places containers in its own cgroup; remove cgroup_parent")),
    ("command", Yes),
    ("configs", Partly("short and long syntax (source, target, uid, gid, mode; numeric uid/gid); default target /NAME; copied into a tmpfs of the container's own with that owner and mode, mounted read-only")),
    ("container_name", Partly("one replica only (an error otherwise, as in compose); it is also the replica's host name unless `hostname:` is given")),
    ("cpu_count", No("use cpus: instead of cpu_count")),
    ("cpu_percent", No("use cpus: instead of cpu_percent")),
    ("cpu_period", No("use cpus: instead of cpu_period")),
    ("cpu_quota", No("use cpus: instead of cpu_quota")),
    ("cpu_rt_period", No("real-time CPU scheduling is not supported; remove it")),
    ("cpu_rt_runtime", No("real-time CPU scheduling is not supported; remove it")),
    ("cpu_shares", No("use cpus: (a CPU limit) instead of cpu_shares")),
    ("cpus", Yes),
    ("cpuset", No("cpuset is not supported yet; remove it")),
    ("credential_spec", No("credential_spec is Windows only; remove it")),
    ("depends_on", Partly("conditions service_started, service_healthy, service_completed_successfully, `required` and `restart`; order applies at every start, not only the first")),
    ("deploy", Partly("replicas, mode: replicated, labels, restart_policy, resources.limits (memory, cpus, pids), update_config, rollback_config; reservations, placement and endpoint_mode are refused (one node, limits only)")),
    ("develop", No("develop (watch) is not supported; remove it")),
    ("device_cgroup_rules", Partly("Docker's strict `TYPE MAJOR:MINOR ACCESS`; `a` only as `a *:* rwm` (a warning)")),
    ("devices", Partly("HOST[:CONTAINER][:PERMS] and the long form; directories expanded to their device nodes; a device missing at validate is a warning, at start the replica fails and says so; no CDI names")),
    ("dns", Partly("on a bridge, the container asks the agent's name server on the gateway (service names), which forwards other names to these servers; with host networking they are written to resolv.conf")),
    ("dns_opt", No("dns_opt is not supported yet; remove it")),
    ("dns_search", No("dns_search is not supported yet; remove it")),
    ("domainname", No("domainname is not supported; remove it")),
    ("entrypoint", Yes),
    ("env_file", Partly("read at each start, bounded (1 MiB, regular files); `format` ignored")),
    ("environment", Yes),
    ("expose", Partly("checked, otherwise documentation: every port of a bridged replica is reachable from the other services already")),
    ("extends", Yes),
    ("external_links", No("links are legacy compose; remove it")),
    ("extra_hosts", Yes),
    ("gpus", No("GPUs are not supported; remove it")),
    ("group_add", No("group_add is not supported yet; remove it")),
    ("healthcheck", Yes),
    ("hostname", Yes),
    ("image", Yes),
    ("init", No("init is not supported; use an image with an init (tini, dumb-init) as entrypoint")),
    ("ipc", No("ipc is not supported; remove it")),
    ("isolation", No("isolation is not supported; remove it")),
    ("label_file", No("label_file is not supported; write the labels under labels:")),
    ("labels", Yes),
    ("links", No("links are legacy compose; remove it (with network_mode: host services reach each other on localhost)")),
    ("logging", Partly("drivers json-file and local (skiff's own log files), with max-size and max-file")),
    ("mac_address", No("mac_address is not supported; remove it")),
    ("mem_limit", Yes),
    ("mem_reservation", No("skiff enforces limits only; use mem_limit")),
    ("mem_swappiness", No("mem_swappiness is not supported; remove it")),
    ("memswap_limit", No("memswap_limit is not supported; use mem_limit")),
    ("models", No("models are not supported; remove it")),
    ("network_mode", Partly("bridge (the default), host and none; `service:` and `container:` are refused")),
    ("networks", Partly("a list or a mapping with `aliases` and `ipv4_address` (one replica, a declared subnet); ipv6_address and link_local_ips are refused; the default route goes through the first listed network that is not internal")),
    ("oom_kill_disable", No("oom_kill_disable is not supported; remove it")),
    ("oom_score_adj", No("oom_score_adj is not supported yet; remove it")),
    ("pid", No("pid is not supported; remove it")),
    ("pids_limit", Yes),
    ("platform", No("skiff pulls the image for this machine's platform; remove platform")),
    ("ports", Partly("published by the kernel (DNAT) and an in-agent proxy for IPv6; `mode: host` only")),
    ("post_start", No("lifecycle hooks are not supported yet; remove post_start")),
    ("pre_stop", No("lifecycle hooks are not supported yet; remove pre_stop")),
    ("privileged", Partly("every capability the agent holds, cap_add/cap_drop ignored, the host's /dev (without pts, shm, mqueue, console, ptmx), every device allowed, /proc and /sys unmasked and /sys writable, no seccomp; `skiff validate` warns")),
    ("profiles", Partly("active profiles from SKIFF_PROFILES or COMPOSE_PROFILES (environment or .env), else `x-skiff: {profiles: [...]}`")),
    ("provider", No("providers are not supported; remove it")),
    ("pull_policy", Partly("missing, always, never, and also daily, weekly, every_<duration> (checks of the tag); `build` is refused")),
    ("read_only", Yes),
    ("restart", Yes),
    ("runtime", No("choose the OCI runtime for the whole agent with `skiff agent --runtime`; remove runtime")),
    ("scale", No("use deploy.replicas instead of scale")),
    ("secrets", Partly("short and long syntax (source, target, uid, gid, mode; numeric uid/gid); default /run/secrets/NAME, 0444, 0:0; copied into a tmpfs of the container's own (never a disk file), mounted read-only")),
    ("security_opt", No("security_opt is not supported; remove it")),
    ("shm_size", No("shm_size is not supported; mount a tmpfs on /dev/shm instead (tmpfs: - /dev/shm:size=64m)")),
    ("stdin_open", No("stdin_open is not supported; remove it")),
    ("stop_grace_period", Yes),
    ("stop_signal", Yes),
    ("storage_opt", No("storage_opt is not supported; remove it")),
    ("sysctls", Partly("those runc allows in the container's namespaces; an error for the others")),
    ("tmpfs", Yes),
    ("tty", No("tty is not supported (logs go to files); remove it")),
    ("ulimits", Yes),
    ("use_api_socket", No("skiff has no engine API socket; remove it")),
    ("user", Yes),
    ("userns_mode", No("userns_mode is not supported; remove it")),
    ("uts", No("uts is not supported; remove it")),
    ("volumes", Partly("bind, volume and tmpfs mounts; `~` is the home of the user skiff runs as; a named volume is filled from the image once, when skiff creates it (Docker: whenever it is empty), unless `nocopy`; external volumes are never filled; propagation and SELinux options are ignored (a warning); npipe, cluster and image mounts are refused")),
    ("volumes_from", No("volumes_from is not supported; share a named volume instead")),
    ("working_dir", Yes),
    ("x-skiff", Partly("skiff's own: `progress_deadline`")),
];

/// The keys at the top of the manifest.
pub const TOP_KEYS: &[(&str, Support)] = &[
    ("configs", Partly("`file` (1 MiB; its digest is part of the definition: a change replaces the replicas), `environment`, `content`; `external` is refused (there is no store)")),
    ("include", Partly("one file per entry (a list under `path:` would be merged as overrides: refused), `project_directory`; `env_file` refused (use the .env next to the included file)")),
    ("models", No("models are not supported; remove them")),
    ("name", Yes),
    ("networks", Partly("bridge driver only, one IPv4 subnet per network (ipam.config, else a /24 of 10.89.0.0/16 that no host address uses); `internal`; `external` joins a network this agent made; `default` takes ipam (= `x-skiff: subnet`); enable_ipv6 and ip_range are refused, driver_opts ignored (a warning)")),
    ("secrets", Partly("`file` (1 MiB; its digest is part of the definition: a change replaces the replicas), `environment`, `content`; `external` is refused (there is no secret store)")),
    ("services", Yes),
    ("version", Partly("ignored, as compose does")),
    ("volumes", Partly("named volumes with `name` and `external`; drivers other than local refused")),
    ("x-skiff", Partly("skiff's own: `bridge`, `subnet`, `revision_history`, `profiles`, `image_gc`")),
];

/// What to do instead of `key`, when skiff refuses it (`top`: a top-level key).
pub fn refusal(key: &str, top: bool) -> Option<&'static str> {
    let table = if top { TOP_KEYS } else { SERVICE_KEYS };
    table.iter().find(|(k, _)| *k == key).and_then(|(_, s)| match s {
        No(h) => Some(*h),
        _ => None,
    })
}

/// The README's list of keys: a table each for the top level and for services.
pub fn markdown() -> String {
    let mut out = String::new();
    for (title, table) in [("Top-level keys", TOP_KEYS), ("Service keys", SERVICE_KEYS)] {
        out.push_str(&format!("**{title}**\n\n| key | skiff | notes |\n|---|---|---|\n"));
        for (k, s) in table {
            let (what, note) = match s {
                Yes => ("yes", ""),
                Partly(n) => ("partly", *n),
                No(n) => ("no", *n),
            };
            out.push_str(&format!("| `{k}` | {what} | {} |\n", note.replace('|', "\\|")));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diags(src: &str) -> Vec<String> {
        super::super::parse_str(src, std::path::Path::new("/nonexistent-dir"))
            .diagnostics
            .iter()
            .map(|d| d.to_string())
            .collect()
    }

    /// Each key of the table does what the table says in the converter: refused keys are
    /// errors with their advice, the others are handled (never "unknown key").
    #[test]
    fn the_converter_does_what_the_table_says() {
        for (key, support) in SERVICE_KEYS {
            let d = diags(&format!("services:\n  a:\n    image: busybox\n    {key}: null\n"));
            check(key, support, &d);
        }
        for (key, support) in TOP_KEYS {
            let d = diags(&format!("services:\n  a:\n    image: busybox\n{key}: null\n"));
            check(key, support, &d);
        }
        // Keys outside the table are unknown (a warning), so the table lists every key the
        // converter knows.
        let d = diags("services:\n  a:\n    image: busybox\n    no_such_key: 1\n");
        assert!(d.iter().any(|l| l.contains("unknown key `no_such_key`")), "{d:#?}");
    }

    fn check(key: &str, support: &Support, d: &[String]) {
        assert!(
            !d.iter().any(|l| l.contains(&format!("unknown key `{key}`"))),
            "{key} is in the table but unknown to the converter: {d:#?}"
        );
        match support {
            No(h) => {
                assert!(d.iter().any(|l| l.contains("error") && l.contains(h)), "{key}: refused with `{h}`? {d:#?}")
            }
            _ => assert!(!d.iter().any(|l| l.contains("not supported")), "{key}: supported, yet {d:#?}"),
        }
    }

    /// README.md carries [`markdown`] between its markers; `SKIFF_UPDATE_README=1 cargo
    /// test -p skiff --lib keys` writes it there.
    #[test]
    fn the_readme_lists_the_keys_of_this_table() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
        let readme = std::fs::read_to_string(&path).unwrap();
        let (begin, end) =
            ("<!-- compose-keys:begin (generated from agent/src/manifest/keys.rs) -->\n", "<!-- compose-keys:end -->");
        let (Some(b), Some(e)) = (readme.find(begin), readme.find(end)) else {
            panic!("README.md has no `{begin}` ... `{end}` section")
        };
        let want = markdown();
        let have = &readme[b + begin.len()..e];
        if have != want {
            if std::env::var_os("SKIFF_UPDATE_README").is_some() {
                let new = format!("{}{want}{}", &readme[..b + begin.len()], &readme[e..]);
                std::fs::write(&path, new).unwrap();
            } else {
                panic!("README.md's list of compose keys is not the table's: run SKIFF_UPDATE_README=1 cargo test -p skiff --lib keys");
            }
        }
    }
}
