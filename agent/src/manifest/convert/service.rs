//! One service: every key of `services.NAME`, and the keys that are sections of their own
//! (`deploy`, `healthcheck`, `depends_on`, `logging`, `ulimits`, `env_file`).

use super::*;

pub(super) fn service(cx: &mut Ctx, name: &str, key: &Node, n: &Node, sites: Sites) -> Option<Service> {
    let Sites { deps: dep_sites, volumes: volume_sites, ports: port_sites, networks: net_sites } = sites;
    let what = format!("service `{name}`");
    if matches!(n.value, Value::Null) {
        cx.err(key.pos, format!("{what} is empty: it needs at least image:"));
        return None;
    }
    let entries = cx.map(n, &what)?;
    let mut s = Service { name: name.to_string(), replicas: 1, ..Default::default() };
    let mut image = None;
    let mut build_pos: Option<Pos> = None;
    let mut restart_key: Option<Pos> = None;
    let mut deploy_restart: Option<(RestartPolicy, Pos)> = None;
    let mut limits_top = Resources::default();
    let mut limits_deploy = Resources::default();
    let mut limit_pos: BTreeMap<&str, Pos> = BTreeMap::new();
    let mut ports_key: Option<Pos> = None;
    let mut container_name_pos: Option<Pos> = None;
    let mut networks_key: Option<Pos> = None;
    // Checked once network_mode is known (keys come in any order).
    let mut sysctl_sites: Vec<(String, Pos)> = Vec::new();
    let mut cap_sites: Vec<(String, Pos)> = Vec::new();
    for (key, k, v) in &entries {
        let (k, v) = (*k, *v);
        let f = format!("{name}.{key}");
        match key.as_str() {
            "image" => {
                if let Some(i) = cx.nonempty_string(v, &f) {
                    if let Err(e) = skiff_images::Reference::parse(&i) {
                        cx.err(v.pos, format!("{f}: `{i}` is not a valid image reference: {e}"));
                    }
                    image = Some(i);
                }
            }
            "command" => s.command = cx.command(v, &f),
            "entrypoint" => s.entrypoint = cx.command(v, &f),
            "environment" => s.environment = cx.key_values(v, &f, true),
            "env_file" => s.env_file = env_files(cx, v, &f),
            "working_dir" => {
                if let Some(w) = cx.nonempty_string(v, &f) {
                    if !w.starts_with('/') {
                        cx.err(v.pos, format!("{f}: `{w}` must be an absolute path"));
                    }
                    s.working_dir = Some(w);
                }
            }
            "user" => s.user = cx.nonempty_string(v, &f),
            "restart" => {
                restart_key = Some(k.pos);
                if let Some(r) = cx.string(v, &f) {
                    match parse_restart(&r) {
                        Ok(p) => s.restart = p,
                        Err(e) => cx.err(v.pos, format!("{f}: {e}")),
                    }
                }
            }
            "deploy" => deploy(cx, name, v, &mut s, &mut deploy_restart, &mut limits_deploy, &mut limit_pos),
            "mem_limit" => {
                limits_top.memory = cx.size(v, &f);
                limit_pos.insert("mem_limit", v.pos);
            }
            "cpus" => {
                limits_top.cpus = cx.cpus(v, &f);
                limit_pos.insert("cpus", v.pos);
            }
            "pids_limit" => {
                limits_top.pids = cx.int(v, &f, -1, i64::MAX);
                limit_pos.insert("pids_limit", v.pos);
            }
            "healthcheck" => s.healthcheck = healthcheck(cx, v, &f),
            "volumes" => {
                if let Value::Seq(items) = &v.value {
                    for it in items {
                        if let Some(m) = mount(cx, it, &f, volume_sites) {
                            s.mounts.push(m);
                        }
                    }
                } else {
                    cx.err(v.pos, format!("{f} must be a list, not {}", v.kind()));
                }
            }
            "tmpfs" => {
                for (t, pos) in cx.strings(v, &f, true).unwrap_or_default() {
                    if let Some(m) = tmpfs_short(cx, &t, pos, &f) {
                        s.mounts.push(m);
                    }
                }
            }
            "read_only" => s.read_only = cx.bool(v, &f).unwrap_or(false),
            "stop_signal" => {
                if let Some(sig) = cx.string(v, &f) {
                    match units::parse_signal(&sig) {
                        Ok(x) => s.stop_signal = Some(x),
                        Err(e) => cx.err(v.pos, format!("{f}: {e}")),
                    }
                }
            }
            "stop_grace_period" => s.stop_grace_period = cx.duration(v, &f),
            "hostname" => {
                if let Some(h) = cx.nonempty_string(v, &f) {
                    let ok = h.len() <= 253
                        && h.split('.').all(|l| {
                            !l.is_empty()
                                && l.len() <= 63
                                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                                && !l.starts_with('-')
                                && !l.ends_with('-')
                        });
                    if ok {
                        s.hostname = Some(h);
                    } else {
                        cx.err(v.pos, format!("{f}: `{h}` is not a valid hostname"));
                    }
                }
            }
            "cap_add" | "cap_drop" => {
                let mut caps = Vec::new();
                for (c, pos) in cx.strings(v, &f, false).unwrap_or_default() {
                    match units::parse_capability(&c) {
                        Ok(c) => {
                            if key == "cap_add" {
                                cap_sites.push((c.clone(), pos));
                            }
                            caps.push(c)
                        }
                        Err(e) => cx.err(pos, format!("{f}: {e}")),
                    }
                }
                if key == "cap_add" {
                    s.cap_add = caps;
                } else {
                    s.cap_drop = caps;
                }
            }
            "ulimits" => s.ulimits = ulimits(cx, v, &f),
            "sysctls" => {
                s.sysctls = cx.labels(v, &f);
                sysctl_sites = key_sites(v);
            }
            "labels" => s.labels = cx.labels(v, &f),
            "depends_on" => {
                s.depends_on = depends_on(cx, name, v, &f, dep_sites);
            }
            "logging" => s.logging = logging(cx, v, &f),
            "network_mode" => {
                if let Some(m) = cx.string(v, &f) {
                    s.network_mode = match m.as_str() {
                        "host" => NetworkMode::Host,
                        "none" => NetworkMode::None,
                        "bridge" => NetworkMode::Bridge,
                        x if x.starts_with("service:") || x.starts_with("container:") => {
                            cx.err(v.pos, format!("{f}: sharing another container's network (`{x}`) is not supported; use host, none or bridge"));
                            continue;
                        }
                        x => {
                            cx.err(v.pos, format!("{f}: `{x}` is not a network mode (host, none or bridge)"));
                            continue;
                        }
                    }
                }
            }
            "ports" => {
                s.ports = ports(cx, v, &f, port_sites);
                ports_key = Some(k.pos);
            }
            "extra_hosts" => s.extra_hosts = extra_hosts(cx, v, &f),
            "networks" => {
                s.networks = networks::service_networks(cx, name, v, &f, net_sites);
                networks_key = Some(k.pos);
            }
            "dns" => s.dns = dns(cx, v, &f),
            "pull_policy" => {
                if let Some(p) = cx.string(v, &f) {
                    s.pull_policy = match p.as_str() {
                        "missing" | "if_not_present" => PullPolicy::Missing,
                        "always" => PullPolicy::Always,
                        "never" => PullPolicy::Never,
                        "daily" => PullPolicy::Every(Duration::from_secs(86400)),
                        "weekly" => PullPolicy::Every(Duration::from_secs(7 * 86400)),
                        "build" => {
                            cx.err(v.pos, format!("{f}: skiff does not build images; use missing, always, never, daily, weekly or every_<duration>"));
                            continue;
                        }
                        x if x.starts_with("every_") => match units::parse_duration(&x["every_".len()..]) {
                            Ok(d) if d >= Duration::from_secs(1) => PullPolicy::Every(d),
                            Ok(_) => {
                                cx.err(v.pos, format!("{f}: `{x}`: check at most once a second (like every_12h)"));
                                continue;
                            }
                            Err(e) => {
                                cx.err(v.pos, format!("{f}: `{x}`: {e} (like every_12h, every_30m)"));
                                continue;
                            }
                        },
                        x => {
                            cx.err(v.pos, format!("{f}: `{x}` is not supported (use missing, always, never, daily, weekly or every_<duration>)"));
                            continue;
                        }
                    }
                }
            }
            "build" => build_pos = Some(k.pos),
            "profiles" => {
                let mut list = Vec::new();
                for (p, pos) in cx.strings(v, &f, false).unwrap_or_default() {
                    if profiles::valid(&p) {
                        list.push(p);
                    } else {
                        cx.err(pos, format!("{f}: `{p}` is not a profile name (letters, digits, '_', '.', '-')"));
                    }
                }
                cx.files.profiles.insert(name.to_string(), (list, k.pos));
            }
            "container_name" => {
                if let Some(c) = cx.nonempty_string(v, &f) {
                    if valid_container_name(&c) {
                        s.container_name = Some(c);
                        container_name_pos = Some(v.pos);
                    } else {
                        cx.err(v.pos, format!("{f}: `{c}` is not a valid container name (letters, digits, '_', '.', '-', starting with a letter or digit, at most 63: it is also the host name)"));
                    }
                }
            }
            "privileged" => s.privileged = devices::privileged(cx, v, &f),
            "devices" => s.devices = devices::devices(cx, v, &f),
            "device_cgroup_rules" => s.device_cgroup_rules = devices::rules(cx, v, &f),
            "secrets" | "configs" => grants::uses(cx, name, key, v),
            // Documents ports: every port of a bridged replica is reachable from the others
            // already. Checked, not kept (a changed `expose` replaces nothing).
            "expose" => {
                let items = match &v.value {
                    Value::Seq(items) => items.iter().collect::<Vec<_>>(),
                    _ => {
                        cx.err(
                            v.pos,
                            format!("{f} must be a list of ports (like [\"80\", \"8000-8010\", \"53/udp\"])"),
                        );
                        Vec::new()
                    }
                };
                for (i, it) in items.into_iter().enumerate() {
                    let text = match &it.value {
                        Value::Int(n) => n.to_string(),
                        Value::Str(t) => t.clone(),
                        _ => {
                            cx.err(it.pos, format!("{f}[{i}] must be a port (like 80 or \"53/udp\")"));
                            continue;
                        }
                    };
                    let (port, proto) = text.split_once('/').unwrap_or((text.as_str(), "tcp"));
                    if let Err(e) = network::parse_port_range(port) {
                        cx.err(it.pos, format!("{f}[{i}]: {e}"));
                    } else if !matches!(proto, "tcp" | "udp" | "sctp") {
                        cx.err(it.pos, format!("{f}[{i}]: `{proto}` is not a protocol (tcp or udp)"));
                    }
                }
            }
            "x-skiff" => {
                for (key, k2, v2) in cx.map(v, &f).unwrap_or_default() {
                    let f2 = format!("{f}.{key}");
                    match key.as_str() {
                        "progress_deadline" => {
                            if let Some(d) = cx.duration(v2, &f2) {
                                if d.is_zero() {
                                    cx.err(v2.pos, format!("{f2} must be more than 0 (the default is 10m)"));
                                } else {
                                    s.rollout.progress_deadline = d;
                                }
                            }
                        }
                        x if x.starts_with("x-") => {}
                        x => cx.unknown(x, k2, &f),
                    }
                }
            }
            x if x.starts_with("x-") => {}
            x => match super::keys::refusal(x, false) {
                Some(h) => cx.err(k.pos, format!("{f}: {h}")),
                None => cx.unknown(x, k, &what),
            },
        }
    }
    // skiff does not build: with an image: it runs that image (a warning); without, an error.
    // Either way, the two ways to get a built image here.
    let how = |img: &str| {
        format!("build it elsewhere and push it (`docker build -t {img} . && docker push {img}`), or bring it here as an archive (`docker save -o image.tar {img}`, then `skiff load image.tar`)")
    };
    match (image, build_pos) {
        (Some(i), Some(pos)) => {
            cx.warn(
                pos,
                format!(
                    "{name}.build: skiff does not build images: it runs image {i} from its store or registry; {}",
                    how(&i)
                ),
            );
            s.image = i;
        }
        (Some(i), None) => s.image = i,
        (None, Some(pos)) => {
            cx.err(pos, format!("{name}.build: skiff does not build images; add image: NAME and {}", how("NAME")));
            return None;
        }
        (None, None) => {
            cx.err(key.pos, format!("{what} has no image:"));
            return None;
        }
    }
    if let Some(pos) = container_name_pos {
        if s.replicas > 1 {
            cx.err(pos, format!("{name}.container_name: a container name is unique, so the service can have only one replica (it has {}); remove container_name or the replicas", s.replicas));
        }
    }
    if let (Some(pos), false) = (ports_key, s.ports.is_empty()) {
        match s.network_mode {
            NetworkMode::Bridge => {}
            NetworkMode::Host => cx.warn(pos, format!("{name}.ports: not published with network_mode: host (the service listens on the host's ports itself); remove ports or use network_mode: bridge")),
            NetworkMode::None => cx.warn(pos, format!("{name}.ports: not published with network_mode: none (the service has no network); remove ports or use network_mode: bridge")),
        }
    }
    networks::check_service(cx, &s, networks_key, net_sites);
    for (key, pos) in &sysctl_sites {
        if let Some(e) = hostaccess::sysctl_error(key, s.network_mode) {
            cx.err(*pos, format!("{name}.sysctls: {e}"));
        }
    }
    for (cap, pos) in &cap_sites {
        if let Some(w) = hostaccess::capability_warning(cap, s.network_mode) {
            cx.warn(*pos, format!("{name}.cap_add: {w}"));
        }
    }
    if let Some((p, pos)) = deploy_restart {
        if let Some(rk) = restart_key {
            cx.warn(rk, format!("{name}: deploy.restart_policy (line {}) takes precedence over restart:", pos.line));
        }
        s.restart = p;
    }
    // mem_limit / cpus / pids_limit vs deploy.resources.limits: both may be given only if equal.
    macro_rules! merge {
        ($field:ident, $top:literal, $dep:literal) => {
            s.resources.$field = match (limits_top.$field, limits_deploy.$field) {
                (Some(a), Some(b)) if a != b => {
                    let pos = limit_pos.get($top).copied().unwrap_or_default();
                    cx.err(
                        pos,
                        format!("{name}: {} and deploy.resources.limits.{} disagree; give only one", $top, $dep),
                    );
                    None
                }
                (a, b) => a.or(b),
            };
        };
    }
    merge!(memory, "mem_limit", "memory");
    merge!(cpus, "cpus", "cpus");
    merge!(pids, "pids_limit", "pids");
    Some(s)
}

pub(super) fn parse_restart(r: &str) -> Result<RestartPolicy, String> {
    let (cond, max) = match r {
        "no" | "\"no\"" => (RestartCondition::No, None),
        "always" => (RestartCondition::Always, None),
        "unless-stopped" => (RestartCondition::UnlessStopped, None),
        "on-failure" => (RestartCondition::OnFailure, None),
        x => match x.strip_prefix("on-failure:") {
            Some(n) => match n.parse::<u32>() {
                Ok(n) => (RestartCondition::OnFailure, Some(n)),
                Err(_) => return Err(format!("`{x}`: the number of retries must be a non-negative integer")),
            },
            None => return Err(format!("`{x}` is not a restart policy (no, always, on-failure[:N], unless-stopped)")),
        },
    };
    Ok(RestartPolicy { condition: cond, max_attempts: max, ..Default::default() })
}

pub(super) fn env_files(cx: &mut Ctx, n: &Node, what: &str) -> Vec<EnvFile> {
    let items: Vec<&Node> = match &n.value {
        Value::Seq(items) => items.iter().collect(),
        _ => vec![n],
    };
    let mut out = Vec::new();
    for it in items {
        match &it.value {
            Value::Map(_) => {
                let mut path = None;
                let mut required = true;
                for (key, k, v) in cx.map(it, what).unwrap_or_default() {
                    match key.as_str() {
                        "path" => path = cx.nonempty_string(v, &format!("{what}.path")),
                        "required" => required = cx.bool(v, &format!("{what}.required")).unwrap_or(true),
                        "format" => {}
                        x if x.starts_with("x-") => {}
                        x => cx.unknown(x, k, what),
                    }
                }
                match path {
                    Some(p) => {
                        if let Some(path) = cx.path(&p, it.pos) {
                            out.push((EnvFile { path, required }, it.pos))
                        }
                    }
                    None => cx.err(it.pos, format!("{what}: an entry needs path:")),
                }
            }
            _ => {
                if let Some(p) = cx.nonempty_string(it, what) {
                    if let Some(path) = cx.path(&p, it.pos) {
                        out.push((EnvFile { path, required: true }, it.pos));
                    }
                }
            }
        }
    }
    if cx.check_files {
        for (f, pos) in &out {
            match super::read_env_file(&f.path) {
                Ok(Some(_)) => {}
                Ok(None) if !f.required => {}
                Ok(None) => cx.err(
                    *pos,
                    format!("{what}: {} does not exist: create it, or give `required: false`", f.path.display()),
                ),
                Err(e) => cx.err(*pos, format!("{what}: {e}")),
            }
        }
    }
    out.into_iter().map(|(f, _)| f).collect()
}

pub(super) fn deploy(
    cx: &mut Ctx,
    name: &str,
    n: &Node,
    s: &mut Service,
    restart: &mut Option<(RestartPolicy, Pos)>,
    limits: &mut Resources,
    limit_pos: &mut BTreeMap<&'static str, Pos>,
) {
    let what = format!("{name}.deploy");
    for (key, k, v) in cx.map(n, &what).unwrap_or_default() {
        let f = format!("{what}.{key}");
        match key.as_str() {
            "replicas" => s.replicas = cx.int(v, &f, 0, 1000).map(|i| i as u32).unwrap_or(1),
            "mode" => {
                if let Some(m) = cx.string(v, &f) {
                    if m != "replicated" {
                        cx.err(
                            v.pos,
                            format!(
                                "{f}: `{m}` is not supported; skiff runs one node (use replicated, or leave mode: out)"
                            ),
                        );
                    }
                }
            }
            "labels" => {
                cx.labels(v, &f);
            }
            "restart_policy" => {
                let mut p = RestartPolicy { condition: RestartCondition::Always, ..Default::default() };
                for (key, k2, v2) in cx.map(v, &f).unwrap_or_default() {
                    let f2 = format!("{f}.{key}");
                    match key.as_str() {
                        "condition" => {
                            if let Some(c) = cx.string(v2, &f2) {
                                p.condition = match c.as_str() {
                                    "none" => RestartCondition::No,
                                    "on-failure" => RestartCondition::OnFailure,
                                    "any" => RestartCondition::Always,
                                    x => {
                                        cx.err(
                                            v2.pos,
                                            format!("{f2}: `{x}` is not a condition (none, on-failure, any)"),
                                        );
                                        continue;
                                    }
                                }
                            }
                        }
                        "delay" => p.delay = cx.duration(v2, &f2),
                        "max_attempts" => p.max_attempts = cx.u32(v2, &f2),
                        "window" => p.window = cx.duration(v2, &f2),
                        x if x.starts_with("x-") => {}
                        x => cx.unknown(x, k2, &f),
                    }
                }
                *restart = Some((p, k.pos));
            }
            "resources" => {
                for (key, k2, v2) in cx.map(v, &f).unwrap_or_default() {
                    let f2 = format!("{f}.{key}");
                    match key.as_str() {
                        "limits" => {
                            for (key, k3, v3) in cx.map(v2, &f2).unwrap_or_default() {
                                let f3 = format!("{f2}.{key}");
                                match key.as_str() {
                                    "memory" => {
                                        limits.memory = cx.size(v3, &f3);
                                        limit_pos.entry("mem_limit").or_insert(v3.pos);
                                    }
                                    "cpus" => {
                                        limits.cpus = cx.cpus(v3, &f3);
                                        limit_pos.entry("cpus").or_insert(v3.pos);
                                    }
                                    "pids" => {
                                        limits.pids = cx.int(v3, &f3, -1, i64::MAX);
                                        limit_pos.entry("pids_limit").or_insert(v3.pos);
                                    }
                                    "devices" => cx.err(k3.pos, format!("{f3}: device access is not supported yet; remove it")),
                                    x if x.starts_with("x-") => {}
                                    x => cx.unknown(x, k3, &f2),
                                }
                            }
                        }
                        "reservations" => cx.err(k2.pos, format!("{f2}: skiff enforces limits only; move these values to deploy.resources.limits or remove them")),
                        x if x.starts_with("x-") => {}
                        x => cx.unknown(x, k2, &f),
                    }
                }
            }
            "update_config" => s.rollout.update = rollout::update_config(cx, v, &f, false),
            "rollback_config" => s.rollout.rollback = rollout::update_config(cx, v, &f, true),
            "placement" | "endpoint_mode" => cx.err(k.pos, format!("{f}: skiff runs on one node; remove {key}")),
            x if x.starts_with("x-") => {}
            x => cx.unknown(x, k, &what),
        }
    }
}

pub(super) fn healthcheck(cx: &mut Ctx, n: &Node, what: &str) -> Option<Healthcheck> {
    let mut h = Healthcheck::default();
    for (key, k, v) in cx.map(n, what)? {
        let f = format!("{what}.{key}");
        match key.as_str() {
            "test" => match &v.value {
                Value::Str(s) => {
                    if s.trim().is_empty() {
                        cx.err(v.pos, format!("{f} must not be empty"));
                    } else if s == "NONE" {
                        h.disabled = true;
                    } else {
                        h.test = Some(HealthTest::Shell(s.clone()));
                    }
                }
                Value::Seq(_) => {
                    let words: Vec<String> =
                        cx.strings(v, &f, false).unwrap_or_default().into_iter().map(|(s, _)| s).collect();
                    match words.first().map(String::as_str) {
                        Some("NONE") => h.disabled = true,
                        Some("CMD") if words.len() > 1 => h.test = Some(HealthTest::Cmd(words[1..].to_vec())),
                        Some("CMD-SHELL") if words.len() > 1 => h.test = Some(HealthTest::Shell(words[1..].join(" "))),
                        Some("CMD" | "CMD-SHELL") => {
                            cx.err(v.pos, format!("{f}: the command is missing after {}", words[0]))
                        }
                        Some(x) => {
                            cx.err(v.pos, format!("{f}: a list must start with CMD, CMD-SHELL or NONE, not `{x}`"))
                        }
                        None => cx.err(v.pos, format!("{f} must not be empty")),
                    }
                }
                _ => cx.err(v.pos, format!("{f} must be a string or a list, not {}", v.kind())),
            },
            "interval" => h.interval = cx.duration(v, &f).unwrap_or(h.interval),
            "timeout" => h.timeout = cx.duration(v, &f).unwrap_or(h.timeout),
            "start_period" => h.start_period = cx.duration(v, &f).unwrap_or(h.start_period),
            "start_interval" => h.start_interval = cx.duration(v, &f).or(h.start_interval),
            "retries" => h.retries = cx.u32(v, &f).unwrap_or(h.retries),
            "disable" => h.disabled = cx.bool(v, &f).unwrap_or(false),
            x if x.starts_with("x-") => {}
            x => cx.unknown(x, k, what),
        }
    }
    if h.interval.is_zero() {
        cx.err(n.pos, format!("{what}.interval must be longer than 0"));
    }
    if h.timeout.is_zero() {
        cx.err(n.pos, format!("{what}.timeout must be longer than 0"));
    }
    Some(h)
}

pub(super) fn ulimits(cx: &mut Ctx, n: &Node, what: &str) -> BTreeMap<String, Ulimit> {
    let mut out = BTreeMap::new();
    for (key, k, v) in cx.map(n, what).unwrap_or_default() {
        let f = format!("{what}.{key}");
        if !units::ULIMITS.contains(&key.as_str()) {
            cx.err(k.pos, format!("{f}: `{key}` is not a resource limit ({})", units::ULIMITS.join(", ")));
            continue;
        }
        let u = match &v.value {
            Value::Map(_) => {
                let (mut soft, mut hard) = (None, None);
                for (key2, k2, v2) in cx.map(v, &f).unwrap_or_default() {
                    match key2.as_str() {
                        "soft" => soft = cx.int(v2, &format!("{f}.soft"), -1, i64::MAX),
                        "hard" => hard = cx.int(v2, &format!("{f}.hard"), -1, i64::MAX),
                        x => cx.unknown(x, k2, &f),
                    }
                }
                match (soft, hard) {
                    (Some(s), Some(h)) => {
                        if h != -1 && (s == -1 || s > h) {
                            cx.err(v.pos, format!("{f}: soft ({s}) must not exceed hard ({h})"));
                            continue;
                        }
                        Ulimit { soft: s, hard: h }
                    }
                    _ => {
                        cx.err(v.pos, format!("{f}: give both soft: and hard:"));
                        continue;
                    }
                }
            }
            _ => match cx.int(v, &f, -1, i64::MAX) {
                Some(i) => Ulimit { soft: i, hard: i },
                None => continue,
            },
        };
        out.insert(key, u);
    }
    out
}

pub(super) fn depends_on(
    cx: &mut Ctx,
    name: &str,
    n: &Node,
    what: &str,
    sites: &mut Vec<DepSite>,
) -> BTreeMap<String, Dependency> {
    let mut out = BTreeMap::new();
    let plain = Dependency { condition: DependsCondition::ServiceStarted, required: true, restart: false };
    match &n.value {
        Value::Seq(_) => {
            for (d, pos) in cx.strings(n, what, false).unwrap_or_default() {
                sites.push((name.to_string(), d.clone(), pos, true));
                if out.insert(d.clone(), plain).is_some() {
                    cx.err(pos, format!("{what}: `{d}` is listed twice"));
                }
            }
        }
        _ => {
            for (d, k, v) in cx.map(n, what).unwrap_or_default() {
                let f = format!("{what}.{d}");
                let mut dep = plain;
                for (key, k2, v2) in cx.map(v, &f).unwrap_or_default() {
                    match key.as_str() {
                        "condition" => {
                            if let Some(c) = cx.string(v2, &format!("{f}.condition")) {
                                dep.condition = match c.as_str() {
                                    "service_started" => DependsCondition::ServiceStarted,
                                    "service_healthy" => DependsCondition::ServiceHealthy,
                                    "service_completed_successfully" => DependsCondition::ServiceCompletedSuccessfully,
                                    x => {
                                        cx.err(v2.pos, format!("{f}.condition: `{x}` is not a condition (service_started, service_healthy, service_completed_successfully)"));
                                        continue;
                                    }
                                }
                            }
                        }
                        "required" => dep.required = cx.bool(v2, &format!("{f}.required")).unwrap_or(true),
                        "restart" => dep.restart = cx.bool(v2, &format!("{f}.restart")).unwrap_or(false),
                        x if x.starts_with("x-") => {}
                        x => cx.unknown(x, k2, &f),
                    }
                }
                sites.push((name.to_string(), d.clone(), k.pos, dep.required));
                out.insert(d, dep);
            }
        }
    }
    out
}

pub(super) fn logging(cx: &mut Ctx, n: &Node, what: &str) -> Logging {
    let mut l = Logging::default();
    for (key, k, v) in cx.map(n, what).unwrap_or_default() {
        let f = format!("{what}.{key}");
        match key.as_str() {
            "driver" => {
                if let Some(d) = cx.string(v, &f) {
                    if !matches!(d.as_str(), "json-file" | "local") {
                        cx.err(v.pos, format!("{f}: skiff writes logs to rotated files under its root; `{d}` is not supported (use json-file or local, or leave driver: out)"));
                    }
                }
            }
            "options" => {
                for (key2, k2, v2) in cx.map(v, &f).unwrap_or_default() {
                    let f2 = format!("{f}.{key2}");
                    match key2.as_str() {
                        "max-size" => {
                            if let Some(sz) = cx.size(v2, &f2) {
                                if sz < 4096 {
                                    cx.err(v2.pos, format!("{f2}: at least 4k"));
                                } else {
                                    l.max_size = sz;
                                }
                            }
                        }
                        "max-file" => {
                            if let Some(n) = cx.int(v2, &f2, 1, 100) {
                                l.max_file = n as u32;
                            }
                        }
                        x => cx.warn(
                            k2.pos,
                            format!("{f}: the option `{x}` is ignored (skiff supports max-size and max-file)"),
                        ),
                    }
                }
            }
            x if x.starts_with("x-") => {}
            x => cx.unknown(x, k, what),
        }
    }
    l
}
