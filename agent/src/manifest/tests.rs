use std::path::Path;
use std::time::{Duration, Instant};

use super::*;

pub(super) fn report(src: &str) -> Report {
    parse_str(src, Path::new("/etc/skiff"))
}

pub(super) fn lines(r: &Report) -> Vec<String> {
    r.diagnostics.iter().map(|d| d.to_string()).collect()
}

/// Asserts that there is a diagnostic starting with `prefix` (`"3:5: error: "`) and containing `text`.
#[track_caller]
pub(super) fn has(src: &str, prefix: &str, text: &str) -> Report {
    let r = report(src);
    let l = lines(&r);
    assert!(l.iter().any(|d| d.starts_with(prefix) && d.contains(text)), "no `{prefix}...{text}` in {l:#?}");
    r
}

#[track_caller]
fn clean(src: &str) -> Manifest {
    let r = report(src);
    assert!(r.diagnostics.is_empty(), "{:#?}", lines(&r));
    r.manifest.unwrap()
}

const WEB_REDIS_WORKER: &str = r#"
name: shop
x-common: &common
  logging:
    driver: json-file
    options:
      max-size: 5m
      max-file: "2"

services:
  web:
    <<: *common
    restart: unless-stopped
    image: registry.local:5000/shop/web:1.4
    command: ["gunicorn", "-b", "0.0.0.0:8000", "app:app"]
    environment:
      REDIS_URL: redis://127.0.0.1:6379/0
      WORKERS: 4
      DEBUG:
    env_file: [web.env]
    network_mode: host
    depends_on:
      redis:
        condition: service_healthy
    deploy:
      replicas: 2
      resources:
        limits: {memory: 256m, cpus: "0.5", pids: 200}
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://127.0.0.1:8000/health"]
      interval: 10s
      timeout: 2s
      retries: 5
      start_period: 1m30s
    volumes:
      - static:/srv/static:ro
      - ./config/web.toml:/etc/web.toml:ro
    tmpfs: /tmp:size=64m,mode=1777
    read_only: true
    stop_signal: SIGINT
    stop_grace_period: 30s
    cap_drop: [ALL]
    cap_add: [net_bind_service]
    ulimits:
      nofile: {soft: 1024, hard: 4096}
    labels:
      tier: front
  redis:
    image: redis:7-alpine
    command: redis-server --appendonly yes --save "60 1"
    mem_limit: 128m
    pids_limit: 100
    restart: always
    ports: ["127.0.0.1:6379:6379"]
    volumes:
      - type: volume
        source: redis-data
        target: /data
    healthcheck:
      test: redis-cli ping
      interval: 5s
    sysctls:
      net.core.somaxconn: 1024
  worker:
    <<: *common
    image: registry.local:5000/shop/worker@sha256:0123456789012345678901234567890123456789012345678901234567890123
    entrypoint: /usr/bin/worker
    environment:
      - QUEUE=default
      - HOME
    depends_on: [redis, web]
    deploy:
      replicas: 3
      restart_policy:
        condition: on-failure
        delay: 5s
        max_attempts: 10
        window: 2m
    pull_policy: never
    user: "1000:1000"
    working_dir: /app
    hostname: worker
volumes:
  static:
  redis-data: {}
"#;

#[test]
fn realistic_web_redis_worker_is_clean() {
    let m = clean(WEB_REDIS_WORKER);
    assert_eq!(m.name.as_deref(), Some("shop"));
    assert_eq!(m.services.len(), 3);
    let web = &m.services["web"];
    assert_eq!(web.replicas, 2);
    assert_eq!(web.command.as_ref().unwrap()[0], "gunicorn");
    assert_eq!(web.environment["WORKERS"].as_deref(), Some("4"));
    assert_eq!(web.environment["DEBUG"], None);
    assert_eq!(web.env_file[0].path, Path::new("/etc/skiff/web.env"));
    assert_eq!(web.restart.condition, RestartCondition::UnlessStopped);
    assert_eq!(web.logging, Logging { max_size: 5 << 20, max_file: 2 });
    assert_eq!(web.resources, Resources { memory: Some(256 << 20), cpus: Some(0.5), pids: Some(200) });
    let hc = web.healthcheck.as_ref().unwrap();
    assert_eq!(
        hc.test,
        Some(HealthTest::Cmd(vec!["wget".into(), "-q".into(), "-O-".into(), "http://127.0.0.1:8000/health".into()]))
    );
    assert_eq!(
        (hc.interval, hc.timeout, hc.retries, hc.start_period),
        (Duration::from_secs(10), Duration::from_secs(2), 5, Duration::from_secs(90))
    );
    assert_eq!(
        web.mounts[0],
        Mount {
            kind: MountKind::Volume { name: "static".into(), external: false, nocopy: false },
            target: "/srv/static".into(),
            read_only: true
        }
    );
    assert_eq!(
        web.mounts[1].kind,
        MountKind::Bind { source: "/etc/skiff/./config/web.toml".into(), create_host_path: true }
    );
    assert_eq!(
        web.mounts[2],
        Mount {
            kind: MountKind::Tmpfs { size: Some(64 << 20), mode: Some(0o1777) },
            target: "/tmp".into(),
            read_only: false
        }
    );
    assert_eq!(web.cap_drop, ["ALL"]);
    assert_eq!(web.cap_add, ["CAP_NET_BIND_SERVICE"]);
    assert_eq!(web.stop_signal.as_deref(), Some("SIGINT"));
    assert_eq!(web.stop_timeout(), Duration::from_secs(30));
    assert_eq!(web.ulimits["nofile"], Ulimit { soft: 1024, hard: 4096 });
    assert_eq!(web.depends_on["redis"].condition, DependsCondition::ServiceHealthy);
    assert_eq!(web.network_mode, NetworkMode::Host);
    let redis = &m.services["redis"];
    assert_eq!(redis.command.as_ref().unwrap(), &["redis-server", "--appendonly", "yes", "--save", "60 1"]);
    assert_eq!(redis.resources.memory, Some(128 << 20));
    assert_eq!(redis.resources.pids, Some(100));
    assert_eq!(redis.healthcheck.as_ref().unwrap().test, Some(HealthTest::Shell("redis-cli ping".into())));
    assert_eq!(redis.sysctls["net.core.somaxconn"], "1024");
    assert_eq!(redis.restart.condition, RestartCondition::Always);
    let worker = &m.services["worker"];
    assert_eq!(worker.replicas, 3);
    assert_eq!(
        worker.restart,
        RestartPolicy {
            condition: RestartCondition::OnFailure,
            max_attempts: Some(10),
            delay: Some(Duration::from_secs(5)),
            window: Some(Duration::from_secs(120))
        }
    );
    assert_eq!(worker.environment["HOME"], None);
    assert_eq!(worker.entrypoint.as_ref().unwrap(), &["/usr/bin/worker"]);
    assert_eq!(worker.pull_policy, PullPolicy::Never);
    assert_eq!(m.start_order(), ["redis", "web", "worker"]);
    assert_eq!(worker.replica_name(3), "worker-3");
    // The model round-trips (the agent keeps revisions).
    let json = serde_json::to_string(&m).unwrap();
    assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), m);
}

#[test]
fn minimal_demo_is_clean() {
    let m = clean(
        "services:\n  demo:\n    image: skiff-demo:latest\n    command: [httpd, -f, -p, \"8080\"]\n    deploy: {replicas: 3}\n    healthcheck:\n      test: [\"CMD-SHELL\", \"wget -q -O- 127.0.0.1:8080 || exit 1\"]\n",
    );
    let d = &m.services["demo"];
    assert_eq!(d.replicas, 3);
    assert_eq!(d.restart.condition, RestartCondition::No);
    assert_eq!(
        d.healthcheck.as_ref().unwrap().test,
        Some(HealthTest::Shell("wget -q -O- 127.0.0.1:8080 || exit 1".into()))
    );
    assert_eq!(d.logging, Logging::default());
}

#[test]
fn missing_image() {
    let r = has("services:\n  web:\n    command: x\n", "2:3: error: ", "service `web` has no image:");
    assert!(r.manifest.is_none());
    has("services:\n  web:\n", "2:3: error: ", "is empty");
}

#[test]
fn unsupported_known_key_is_an_error_with_advice() {
    // build: beside image: runs the image, with a warning that says how to get a build here.
    let r = has(
        "services:\n  web:\n    image: a\n    build: .\n",
        "4:5: warning: ",
        "skiff does not build images: it runs image a",
    );
    assert!(lines(&r)[0].contains("docker push a") && lines(&r)[0].contains("skiff load image.tar"), "{:?}", lines(&r));
    assert!(r.manifest.is_some());
    // build: alone: an error with the same two ways, and no extra "no image" error.
    let r = has("services:\n  web:\n    build: .\n", "3:5: error: ", "add image: NAME");
    assert_eq!(r.errors(), 1, "{:?}", lines(&r));
    has("services:\n  web:\n    image: a\n    networks: [x]\n", "4:16: error: ", "network `x` is not declared");
    has("services:\n  web:\n    image: a\n    gpus: all\n", "4:5: error: ", "GPUs");
    has("services:\n  web:\n    image: a\nmodels: {}\n", "4:1: error: ", "models");
}

#[test]
fn expose_is_accepted_and_checked() {
    clean("services:\n  a:\n    image: a\n    expose: [\"80\", 8080, \"8000-8010\", \"53/udp\"]\n");
    has("services:\n  a:\n    image: a\n    expose: [\"http\"]\n", "4:14: error: ", "not a port number");
    has("services:\n  a:\n    image: a\n    expose: [\"70000\"]\n", "4:14: error: ", "out of range");
    has("services:\n  a:\n    image: a\n    expose: [\"80/icmp\"]\n", "4:14: error: ", "not a protocol");
    has("services:\n  a:\n    image: a\n    expose: \"80\"\n", "4:13: error: ", "must be a list");
}

#[test]
fn update_and_rollback_configs() {
    use crate::rollout::{FailureAction, Order, PROGRESS_DEADLINE};
    let m = clean("services:\n  a:\n    image: a\n    deploy:\n      update_config: {parallelism: 2, delay: 10s, order: start-first, monitor: 2s, failure_action: rollback, max_failure_ratio: 0.25}\n      rollback_config: {parallelism: 0, failure_action: continue}\n    x-skiff: {progress_deadline: 90s}\nx-skiff: {revision_history: 3}\n");
    let p = &m.services["a"].rollout;
    assert_eq!((p.update.parallelism, p.update.delay, p.update.order), (2, Duration::from_secs(10), Order::StartFirst));
    assert_eq!(
        (p.update.monitor, p.update.failure_action, p.update.max_failure_ratio),
        (Duration::from_secs(2), FailureAction::Rollback, 0.25)
    );
    assert_eq!(
        (p.rollback.parallelism, p.rollback.failure_action, p.rollback.order),
        (0, FailureAction::Continue, Order::StopFirst)
    );
    assert_eq!(p.progress_deadline, Duration::from_secs(90));
    assert_eq!(m.revision_history(), 3);
    // Swarm's defaults, skiff's deadline and history.
    let m = clean("services:\n  a:\n    image: a\n");
    let p = &m.services["a"].rollout;
    assert_eq!((p.update.parallelism, p.update.order, p.update.monitor), (1, Order::StopFirst, Duration::from_secs(5)));
    assert_eq!((p.update.failure_action, p.update.max_failure_ratio), (FailureAction::Pause, 0.0));
    assert_eq!((p.progress_deadline, m.revision_history()), (PROGRESS_DEADLINE, 10));
    let dep = "services:\n  a:\n    image: a\n    deploy:\n";
    has(&format!("{dep}      update_config: {{order: random}}\n"), "5:30: error: ", "stop-first or start-first");
    has(&format!("{dep}      rollback_config: {{failure_action: rollback}}\n"), "5:41: error: ", "never rolled back");
    has(
        &format!("{dep}      update_config: {{failure_action: retry}}\n"),
        "5:39: error: ",
        "pause, continue or rollback",
    );
    has(&format!("{dep}      update_config: {{max_failure_ratio: 2}}\n"), "5:42: error: ", "between 0 and 1");
    has(&format!("{dep}      update_config: {{parallelism: -1}}\n"), "5:36: error: ", "between 0 and 1000");
    has(&format!("{dep}      update_config: {{speed: 3}}\n"), "5:23: warning: ", "unknown key `speed`");
    has("services:\n  a:\n    image: a\n    x-skiff: {progress_deadline: 0s}\n", "4:34: error: ", "more than 0");
    has("x-skiff: {revision_history: 0}\nservices:\n  a:\n    image: a\n", "1:29: error: ", "between 1 and 100");
}

#[test]
fn unknown_key_is_a_warning() {
    let r = has("services:\n  web:\n    image: a\n    colour: blue\n", "4:5: warning: ", "unknown key `colour`");
    assert!(r.manifest.is_some());
    has("services:\n  web:\n    image: a\nfoo: 1\n", "4:1: warning: ", "unknown key `foo`");
}

#[test]
fn extensions_and_version_are_ignored() {
    clean("version: \"3.8\"\nx-a: {b: c}\nservices:\n  x-skip: {}\n  web:\n    image: a\n    x-note: hi\n    deploy: {x-z: 1}\n");
}

#[test]
fn invalid_values_have_positions() {
    has("services:\n  a:\n    image: a\n    restart: sometimes\n", "4:14: error: ", "not a restart policy");
    has("services:\n  a:\n    image: a\n    restart: on-failure:x\n", "4:14: error: ", "non-negative");
    let m = clean("services:\n  a:\n    image: a\n    restart: on-failure:5\n");
    assert_eq!(m.services["a"].restart.max_attempts, Some(5));
    has("services:\n  a:\n    image: a\n    stop_grace_period: 10 parsecs\n", "4:24: error: ", "unknown duration unit");
    clean("services:\n  a:\n    image: a\n    stop_grace_period: 10\n");
    has("services:\n  a:\n    image: a\n    mem_limit: lots\n", "4:16: error: ", "is not a size");
    has("services:\n  a:\n    image: a\n    cpus: -1\n", "4:11: error: ", "above 0");
    has("services:\n  a:\n    image: a\n    cpus: many\n", "4:11: error: ", "number of CPUs");
    has("services:\n  a:\n    image: a\n    deploy:\n      replicas: two\n", "5:17: error: ", "must be an integer");
    has("services:\n  a:\n    image: a\n    read_only: yes\n", "4:16: error: ", "true or false");
    has("services:\n  a:\n    image: a\n    stop_signal: SIGNOPE\n", "4:18: error: ", "not a signal");
    has("services:\n  a:\n    image: a\n    cap_add: [NET_FLY]\n", "4:15: error: ", "not a Linux capability");
    has("services:\n  a:\n    image: a\n    network_mode: overlay\n", "4:19: error: ", "host, none or bridge");
    has(
        "services:\n  a:\n    image: a\n    pull_policy: hourly\n",
        "4:18: error: ",
        "daily, weekly or every_<duration>",
    );
    has("services:\n  a:\n    image: a\n    pull_policy: every_x\n", "4:18: error: ", "like every_12h");
    has("services:\n  a:\n    image: a\n    pull_policy: every_10ms\n", "4:18: error: ", "at most once a second");
    for (p, secs) in [("daily", 86400), ("weekly", 604800), ("every_2s", 2), ("every_1h30m", 5400)] {
        let m = clean(&format!("services:\n  a:\n    image: a\n    pull_policy: {p}\n"));
        assert_eq!(m.services["a"].pull_policy.interval(), Some(Duration::from_secs(secs)), "{p}");
    }
    has("services:\n  a:\n    image: \"UPPER CASE\"\n", "3:12: error: ", "not a valid image reference");
    has("services:\n  a:\n    image: a\n    working_dir: app\n", "4:18: error: ", "absolute path");
    has("services:\n  a:\n    image: a\n    command: echo \"unterminated\n", "4:14: error: ", "unterminated");
    has(
        "services:\n  a:\n    image: a\n    ulimits: {nofile: {soft: 10, hard: 5}}\n",
        "4:23: error: ",
        "must not exceed",
    );
    has("services:\n  a:\n    image: a\n    ulimits: {files: 10}\n", "4:15: error: ", "not a resource limit");
    has("services:\n  a:\n    image: a\n    logging: {options: {max-file: 0}}\n", "4:35: error: ", "between 1 and 100");
    has("services:\n  a:\n    image: a\n    environment: 5\n", "4:18: error: ", "must be a mapping");
    has(
        "services:\n  a:\n    image: a\n    mem_limit: 1g\n    deploy: {resources: {limits: {memory: 2g}}}\n",
        "4:16: error: ",
        "disagree",
    );
}

#[test]
fn healthcheck_forms() {
    let m = clean("services:\n  a:\n    image: a\n    healthcheck:\n      test: [NONE]\n");
    assert!(m.services["a"].healthcheck.as_ref().unwrap().disabled);
    let m = clean("services:\n  a:\n    image: a\n    healthcheck: {disable: true}\n");
    assert!(m.services["a"].healthcheck.as_ref().unwrap().disabled);
    has(
        "services:\n  a:\n    image: a\n    healthcheck:\n      test: [RUN, x]\n",
        "5:13: error: ",
        "CMD, CMD-SHELL or NONE",
    );
    has("services:\n  a:\n    image: a\n    healthcheck:\n      test: [CMD]\n", "5:13: error: ", "missing after CMD");
    has("services:\n  a:\n    image: a\n    healthcheck:\n      interval: soon\n", "5:17: error: ", "duration");
}

#[test]
fn service_names() {
    has("services:\n  Web:\n    image: a\n", "2:3: error: ", "not a valid service name");
    has("services:\n  web.1:\n    image: a\n", "2:3: error: ", "not a valid service name");
    has("services:\n  -web:\n    image: a\n", "2:3: error: ", "not a valid service name");
    clean("services:\n  web_1-a:\n    image: a\n");
}

#[test]
fn depends_on_rules() {
    has(
        "services:\n  a:\n    image: a\n    depends_on: [b]\n",
        "4:18: error: ",
        "depends on `b`, which is not a service",
    );
    has(
        "services:\n  a:\n    image: a\n    depends_on:\n      b: {condition: service_started}\n",
        "5:7: error: ",
        "not a service",
    );
    // required: false tolerates a missing dependency.
    clean("services:\n  a:\n    image: a\n    depends_on:\n      b: {required: false}\n");
    has(
        "services:\n  a:\n    image: a\n    depends_on:\n      a2: {condition: service_ready}\n  a2:\n    image: a\n",
        "5:23: error: ",
        "not a condition",
    );
    let r = has(
        "services:\n  a:\n    image: a\n    depends_on: [b]\n  b:\n    image: a\n    depends_on: [c]\n  c:\n    image: a\n    depends_on: [a]\n",
        "10:18: error: ",
        "depends_on cycle: a -> b -> c -> a",
    );
    assert_eq!(r.errors(), 1);
    has("services:\n  a:\n    image: a\n    depends_on: [a]\n", "4:18: error: ", "depends_on cycle: a -> a");
    // Checked even when the dependent service has errors of its own.
    has("services:\n  a:\n    build: .\n    depends_on: [db]\n", "4:18: error: ", "depends on `db`");
}

#[test]
fn volumes_rules() {
    has("services:\n  a:\n    image: a\n    volumes: [data:/data]\n", "4:15: error: ", "volume `data` is not declared");
    has(
        "services:\n  a:\n    image: a\n    volumes:\n      - type: volume\n        source: data\n        target: /data\n",
        "6:17: error: ",
        "volume `data` is not declared",
    );
    has("services:\n  a:\n    image: a\n    volumes: [\"/host:data\"]\n", "4:15: error: ", "absolute path");
    has("services:\n  a:\n    image: a\n    volumes: [\"/h:/c:rx\"]\n", "4:15: error: ", "not a volume mode");
    has(
        "services:\n  a:\n    image: a\n    volumes:\n      - type: npipe\n        target: /x\n",
        "5:15: error: ",
        "not supported",
    );
    has("volumes:\n  bad/name: {}\nservices:\n  a:\n    image: a\n", "2:3: error: ", "not a valid volume name");
    has("volumes:\n  v: {driver: nfs}\nservices:\n  a:\n    image: a\n", "2:15: error: ", "local directories");
    let m = clean("services:\n  a:\n    image: a\n    volumes: [/anon, \"/h:/c:ro\"]\n    tmpfs: [/run]\n");
    let mounts = &m.services["a"].mounts;
    assert_eq!(mounts[0].kind, MountKind::Anonymous);
    assert!(mounts[1].read_only);
    assert_eq!(mounts[2].kind, MountKind::Tmpfs { size: None, mode: None });
}

#[test]
fn key_value_forms() {
    let m = clean("services:\n  a:\n    image: a\n    labels: [a=b, c=]\n    sysctls: {net.ipv4.ip_forward: 1}\n");
    assert_eq!(m.services["a"].labels["c"], "");
    assert_eq!(m.services["a"].sysctls["net.ipv4.ip_forward"], "1");
    has("services:\n  a:\n    image: a\n    labels: [novalue]\n", "4:14: error: ", "KEY=VALUE");
    has("services:\n  a:\n    image: a\n    environment: [A=1, A=2]\n", "4:24: error: ", "given twice");
}

#[test]
fn interpolation_warns() {
    has(
        "services:\n  a:\n    image: \"app:${SKIFF_TEST_UNSET_TAG:-1}-${SKIFF_TEST_UNSET_X}\"\n",
        "3:12: warning: ",
        "SKIFF_TEST_UNSET_X is not set",
    );
}

fn port(target: (u16, u16), published: Option<(u16, u16)>, host_ip: Option<&str>, protocol: Protocol) -> PortMapping {
    PortMapping {
        target: PortRange { start: target.0, end: target.1 },
        published: published.map(|(start, end)| PortRange { start, end }),
        host_ip: host_ip.map(|ip| ip.parse().unwrap()),
        protocol,
    }
}

fn svc_ports(ports_yaml: &str) -> Report {
    report(&format!("services:\n  a:\n    image: a\n    ports:\n{ports_yaml}"))
}

#[test]
fn ports_short_syntax_is_typed() {
    use Protocol::*;
    // Ignored (one warning per service, not per port) where the service is not on the bridge.
    for (mode, why) in [("host", "listens on the host's ports itself"), ("none", "has no network")] {
        let r = has(
            &format!("services:\n  a:\n    image: a\n    network_mode: {mode}\n    ports: [\"80\", \"81\"]\n"),
            "5:5: warning: ",
            why,
        );
        assert_eq!((r.warnings(), r.errors()), (1, 0), "{:?}", lines(&r));
    }
    let r = report(
        "services:\n  a:\n    image: a\n    ports:\n      - 80\n      - \"8080:80\"\n      - 8081:81\n      - \"127.0.0.1:8082:80\"\n      - \"8083:53/udp\"\n      - \"9000-9002:9000-9002\"\n      - \"127.0.0.1::80\"\n      - \"[::1]:8084:80\"\n      - \"[::1]::80/udp\"\n      - \"8000-8010:80\"\n      - \"53/UDP\"\n",
    );
    assert!(r.diagnostics.is_empty(), "published on the bridge, nothing to say: {:?}", lines(&r));
    let got = &r.manifest.unwrap().services["a"].ports;
    assert_eq!(
        got,
        &[
            port((80, 80), None, None, Tcp),
            port((80, 80), Some((8080, 8080)), None, Tcp),
            port((81, 81), Some((8081, 8081)), None, Tcp),
            port((80, 80), Some((8082, 8082)), Some("127.0.0.1"), Tcp),
            port((53, 53), Some((8083, 8083)), None, Udp),
            port((9000, 9002), Some((9000, 9002)), None, Tcp),
            port((80, 80), None, Some("127.0.0.1"), Tcp),
            port((80, 80), Some((8084, 8084)), Some("::1"), Tcp),
            port((80, 80), None, Some("::1"), Udp),
            port((80, 80), Some((8000, 8010)), None, Tcp),
            port((53, 53), None, None, Udp),
        ]
    );
    let shown: Vec<String> = got.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        shown,
        [
            "80",
            "8080:80",
            "8081:81",
            "127.0.0.1:8082:80",
            "8083:53/udp",
            "9000-9002:9000-9002",
            "127.0.0.1::80",
            "[::1]:8084:80",
            "[::1]::80/udp",
            "8000-8010:80",
            "53/udp"
        ]
    );
    // What it shows parses back to itself.
    for (p, s) in got.iter().zip(&shown) {
        assert_eq!(&network::parse_port(s).unwrap(), p);
    }
}

/// A manifest with no error (warnings allowed), and its warnings.
#[track_caller]
fn no_errors(src: &str) -> (Manifest, Vec<String>) {
    let r = report(src);
    assert_eq!(r.errors(), 0, "{:#?}", lines(&r));
    let l = lines(&r);
    (r.manifest.unwrap(), l)
}

#[test]
fn ports_long_syntax() {
    use Protocol::*;
    let (m, warnings) = no_errors(
        "services:\n  a:\n    image: a\n    ports:\n      - {target: 80, published: 8080, host_ip: 127.0.0.1, protocol: tcp, mode: host}\n      - {target: 53, published: \"5353\", protocol: udp, mode: ingress, name: dns, app_protocol: dns}\n      - {target: 90, published: \"9090-9091\"}\n      - {target: 443}\n      - {target: \"7000-7001\", published: 8000-8001, host_ip: \"::1\"}\n      - {target: 22, published: 2222, host_ip: \"[fd00::1]\", x-note: hi}\n",
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        m.services["a"].ports,
        [
            port((80, 80), Some((8080, 8080)), Some("127.0.0.1"), Tcp),
            port((53, 53), Some((5353, 5353)), None, Udp),
            port((90, 90), Some((9090, 9091)), None, Tcp),
            port((443, 443), None, None, Tcp),
            port((7000, 7001), Some((8000, 8001)), Some("::1"), Tcp),
            port((22, 22), Some((2222, 2222)), Some("fd00::1"), Tcp),
        ]
    );
    // Typed ports round-trip, and replica records written when ports were strings still load.
    let json = serde_json::to_string(&m).unwrap();
    assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), m);
    let legacy: Vec<PortMapping> = serde_json::from_str(r#"["8080:80", "53/udp", "127.0.0.1::90"]"#).unwrap();
    assert_eq!(
        legacy,
        [
            port((80, 80), Some((8080, 8080)), None, Tcp),
            port((53, 53), None, None, Udp),
            port((90, 90), None, Some("127.0.0.1"), Tcp)
        ]
    );
    assert!(serde_json::from_str::<Vec<PortMapping>>(r#"["99999:80"]"#).is_err());
}

#[test]
fn ports_errors_are_located() {
    let e = |ports: &str, prefix: &str, text: &str| {
        let r = svc_ports(ports);
        let l = lines(&r);
        assert!(l.iter().any(|d| d.starts_with(prefix) && d.contains(text)), "no `{prefix}...{text}` in {l:#?}");
        assert!(r.manifest.is_none());
    };
    e("      - \"0:80\"\n", "5:9: error: ", "port 0 is out of range (1-65535)");
    e("      - \"8080:65536\"\n", "5:9: error: ", "port 65536 is out of range");
    e("      - 70000\n", "5:9: error: ", "out of range");
    e("      - \"http:80\"\n", "5:9: error: ", "`http` is not a port number");
    e("      - \"8080:80/sctp\"\n", "5:9: error: ", "not a protocol skiff publishes (tcp or udp)");
    e("      - \"9000-9001:9000-9002\"\n", "5:9: error: ", "must have the same length");
    e("      - \"9002-9000:80\"\n", "5:9: error: ", "ends before it starts");
    e("      - \"::1:8080:80\"\n", "5:9: error: ", "in brackets");
    e("      - \"[::1:8080:80\"\n", "5:9: error: ", "without a closing");
    e("      - \"[nope]:8080:80\"\n", "5:9: error: ", "not an IP address");
    e("      - \"300.1.1.1:8080:80\"\n", "5:9: error: ", "not an IP address");
    e("      - \":80\"\n", "5:9: error: ", "published port is empty");
    e("      - [80]\n", "5:9: error: ", "must be a port");
    e("      - {published: 8080}\n", "5:9: error: ", "a port needs target:");
    e("      - {target: 80, protocol: icmp}\n", "5:32: error: ", "tcp or udp");
    e("      - {target: 80, mode: global}\n", "5:28: error: ", "host or ingress");
    e("      - {target: 80, host_ip: localhost}\n", "5:31: error: ", "not an IP address");
    e("      - {target: 0}\n", "5:18: error: ", "out of range");
    e("      - {target: \"80-82\", published: \"80-81\"}\n", "5:9: error: ", "same length");
    has("services:\n  a:\n    image: a\n    ports: \"80\"\n", "4:12: error: ", "must be a list");
    has(
        "services:\n  a:\n    image: a\n    ports: [{target: 80, color: red}]\n",
        "4:26: warning: ",
        "unknown key `color`",
    );
}

#[test]
fn ports_collide_within_and_across_services() {
    // Within a service: named both places.
    let r = svc_ports("      - \"8080:80\"\n      - \"8080:81\"\n");
    let l = lines(&r);
    assert!(
        l.iter().any(|d| d.starts_with("6:9: error: a.ports[1]: host port 8080/tcp on every address is already published by a.ports[0] (at 5:9: `8080:80`)")),
        "{l:#?}"
    );
    assert!(r.manifest.is_none());
    // Across services.
    let r = report(
        "services:\n  a:\n    image: a\n    ports: [\"127.0.0.1:53:53/udp\"]\n  b:\n    image: b\n    ports:\n      - {target: 5353, published: 53, protocol: udp}\n",
    );
    let l = lines(&r);
    assert!(
        l.iter().any(|d| d.starts_with("8:9: error: b.ports[0]: host port 53/udp on every address is already published by a.ports[0] (at 4:13: `127.0.0.1:53:53/udp`)")),
        "{l:#?}"
    );
    // Ranges overlap; a wildcard address covers its family.
    has(
        "services:\n  a:\n    image: a\n    ports: [\"9000-9005:9000-9005\", \"0.0.0.0:9005:1\"]\n",
        "4:36: error: ",
        "already published by a.ports[0]",
    );
    // Not collisions: other protocol, other address, other port, chosen host ports.
    let (m, _) = no_errors(
        "services:\n  a:\n    image: a\n    ports: [\"8080:80\", \"8080:80/udp\", \"80\", \"80\"]\n  b:\n    image: b\n    ports: [\"127.0.0.1:9000:80\", \"127.0.0.2:9000:80\", \"[::1]:9000:80\", \"9001:80\", \"127.0.0.1::80\"]\n",
    );
    assert_eq!(m.services["b"].ports.len(), 5);
    // Wildcard of one family does not cover the other.
    no_errors("services:\n  a:\n    image: a\n    ports: [\"0.0.0.0:80:80\", \"[::]:80:80\"]\n");
    has(
        "services:\n  a:\n    image: a\n    ports: [\"[::]:80:80\", \"[::1]:80:80\"]\n",
        "4:27: error: ",
        "already published",
    );
}

#[test]
fn extra_hosts_and_dns() {
    let (m, warnings) = no_errors(
        "services:\n  a:\n    image: a\n    extra_hosts: [\"printer:192.168.1.9\", \"v6=::1\", \"v6b:fd00::2\", \"br=[fd00::3]\", \"my_host.lan:10.0.0.1\"]\n    dns: 1.1.1.1\n  b:\n    image: b\n    extra_hosts:\n      db: 10.0.0.5\n      multi: [10.0.0.6, \"fd00::6\"]\n    dns: [9.9.9.9, \"2620:fe::fe\"]\n",
    );
    let hosts: Vec<(String, String)> =
        m.services["a"].extra_hosts.iter().map(|h| (h.name.clone(), h.ip.to_string())).collect();
    let pairs = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
    assert_eq!(
        hosts,
        pairs(&[
            ("printer", "192.168.1.9"),
            ("v6", "::1"),
            ("v6b", "fd00::2"),
            ("br", "fd00::3"),
            ("my_host.lan", "10.0.0.1")
        ])
    );
    let hosts: Vec<(String, String)> =
        m.services["b"].extra_hosts.iter().map(|h| (h.name.clone(), h.ip.to_string())).collect();
    assert_eq!(hosts, pairs(&[("db", "10.0.0.5"), ("multi", "10.0.0.6"), ("multi", "fd00::6")]));
    assert_eq!(m.services["a"].dns, ["1.1.1.1".parse::<std::net::IpAddr>().unwrap()]);
    assert_eq!(m.services["b"].dns, ["9.9.9.9".parse::<std::net::IpAddr>().unwrap(), "2620:fe::fe".parse().unwrap()]);
    // Applied on the bridge: nothing to warn about.
    assert!(warnings.is_empty(), "{warnings:?}");
    // Defaults: none.
    let m = clean("services:\n  a:\n    image: a\n");
    assert!(m.services["a"].extra_hosts.is_empty() && m.services["a"].dns.is_empty());
    // Errors.
    let svc = "services:\n  a:\n    image: a\n";
    has(&format!("{svc}    extra_hosts: [\"printer\"]\n"), "4:19: error: ", "NAME:IP or NAME=IP");
    has(&format!("{svc}    extra_hosts: [\"printer:999.1.1.1\"]\n"), "4:19: error: ", "not an IP address");
    has(&format!("{svc}    extra_hosts: [\"-bad:1.2.3.4\"]\n"), "4:19: error: ", "not a valid host name");
    has(&format!("{svc}    extra_hosts: [\"a b:1.2.3.4\"]\n"), "4:19: error: ", "not a valid host name");
    has(&format!("{svc}    extra_hosts:\n      \"bad name\": 1.2.3.4\n"), "5:7: error: ", "not a valid host name");
    has(&format!("{svc}    extra_hosts:\n      db: nowhere\n"), "5:11: error: ", "not an IP address");
    has(&format!("{svc}    extra_hosts: 5\n"), "4:18: error: ", "must be a mapping");
    has(&format!("{svc}    dns: 8.8.8\n"), "4:10: error: ", "not an IP address");
    has(&format!("{svc}    dns: [1.1.1.1, dns.google]\n"), "4:20: error: ", "nameserver addresses");
    has(&format!("{svc}    dns: {{a: b}}\n"), "4:10: error: ", "list of strings");
}

#[test]
fn network_settings_under_x_skiff() {
    let defaults = NetworkSettings::default();
    let m = clean("services:\n  a:\n    image: a\n");
    assert_eq!(
        m.network.resolve(&defaults),
        NetworkSettings { bridge: "skiff0".into(), subnet: "10.88.0.0/16".into() }
    );
    assert_eq!(m.services["a"].network_mode, NetworkMode::Bridge);
    // The agent's defaults (--bridge, --subnet) apply where x-skiff says nothing.
    let agent = NetworkSettings { bridge: "edge0".into(), subnet: "10.77.0.0/16".into() };
    assert_eq!(m.network.resolve(&agent), agent);
    let m = clean("x-skiff:\n  bridge: br-edge.1\n  subnet: 172.30.0.0/24\n  x-later: 1\nx-other: {bridge: ignored}\nservices:\n  a:\n    image: a\n");
    let set = NetworkSettings { bridge: "br-edge.1".into(), subnet: "172.30.0.0/24".into() };
    assert_eq!(m.network.resolve(&defaults), set);
    assert_eq!(m.network.resolve(&agent), set);
    let m = clean("x-skiff: {subnet: 10.99.0.0/30}\nservices:\n  a:\n    image: a\n");
    assert_eq!(m.network.resolve(&agent), NetworkSettings { bridge: "edge0".into(), subnet: "10.99.0.0/30".into() });
    // An older record without `network` still loads.
    let mut json: serde_json::Value = serde_json::to_value(&m).unwrap();
    json.as_object_mut().unwrap().remove("network");
    assert_eq!(serde_json::from_value::<Manifest>(json).unwrap().network, NetworkOverrides::default());
    let top = "services:\n  a:\n    image: a\n";
    has(&format!("{top}x-skiff:\n  bridge: a-very-long-bridge\n"), "5:11: error: ", "not an interface name");
    has(&format!("{top}x-skiff:\n  bridge: \"br/0\"\n"), "5:11: error: ", "not an interface name");
    has(&format!("{top}x-skiff:\n  bridge: \"..\"\n"), "5:11: error: ", "not an interface name");
    has(
        &format!("{top}x-skiff:\n  subnet: 10.88.0.1/16\n"),
        "5:11: error: ",
        "host bits set: did you mean 10.88.0.0/16?",
    );
    has(&format!("{top}x-skiff:\n  subnet: 10.0.0.0/31\n"), "5:11: error: ", "between /8 and /30");
    has(&format!("{top}x-skiff:\n  subnet: 10.0.0.0/7\n"), "5:11: error: ", "between /8 and /30");
    has(&format!("{top}x-skiff:\n  subnet: \"fd00::/64\"\n"), "5:11: error: ", "not an IPv4 address");
    has(&format!("{top}x-skiff:\n  subnet: 10.0.0.0\n"), "5:11: error: ", "ADDRESS/PREFIX");
    has(&format!("{top}x-skiff:\n  mtu: 1400\n"), "5:3: warning: ", "unknown key `mtu` in x-skiff");
    has(&format!("{top}x-skiff: [a]\n"), "4:10: error: ", "must be a mapping");
    let bad = report(&format!("{top}x-skiff:\n  bridge: \"\"\n"));
    assert!(bad.manifest.is_none(), "{:?}", lines(&bad));
}

#[test]
fn yaml_errors_are_located() {
    has("services:\n  a:\n    image: [a\n", "3:12: error: ", "");
    has("services:\n  a:\n    image: a\n    image: b\n", "4:5: error: ", "duplicate mapping key");
    has("", "1:1: error: ", "empty");
    has("- a\n- b\n", "1:1: error: ", "must be a mapping");
    has("services: [a]\n", "1:11: error: ", "must be a mapping");
    has("volumes: {}\n", "1:1: error: ", "no services:");
    has("services: {}\n---\nservices: {}\n", "2:1: error: ", "only one YAML document");
}

#[test]
fn hostile_deep_nesting_fails_fast() {
    let deep = format!("x-deep: {}1{}\nservices: {{}}\n", "[".repeat(10_000), "]".repeat(10_000));
    let t = Instant::now();
    let r = report(&deep);
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(r.errors() >= 1 && r.manifest.is_none(), "{:?}", lines(&r));
    let deep_block: String = (0..200).map(|i| format!("{}k{i}:\n", "  ".repeat(i))).collect();
    let r = report(&deep_block);
    assert!(r.errors() >= 1, "{:?}", lines(&r));
    assert!(
        lines(&r)[0].starts_with("33:") && lines(&r)[0].contains("nesting too deep (more than 32 levels)"),
        "{:?}",
        lines(&r)
    );
}

#[test]
fn hostile_alias_bomb_fails_fast() {
    let mut bomb = String::from("x-a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let p = i - 1;
        bomb.push_str(&format!(
            "x-a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    bomb.push_str("services: {}\n");
    // The guard is a count of expanded aliases, not a clock: the error says it fired (a
    // time bound failed under qemu-user, which is slow, not wrong).
    let r = report(&bomb);
    assert_eq!(r.errors(), 1, "{:?}", lines(&r));
    assert!(lines(&r)[0].contains("alias bomb"), "{:?}", lines(&r));
    assert!(r.manifest.is_none());
}

#[test]
fn oversized_input_is_refused() {
    let big = format!("services: {{}}\nx-pad: \"{}\"\n", "a".repeat(Limits::default().max_bytes));
    has(&big, "1:1: error: ", "more than the limit");
}

#[test]
fn units() {
    use super::units::*;
    assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_duration("1h2m3s").unwrap(), Duration::from_secs(3723));
    assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    assert!(parse_duration("10").is_ok());
    assert!(parse_duration("s").is_err());
    assert!(parse_duration("10x").is_err());
    assert!(parse_duration("1m30").is_err());
    assert_eq!(parse_size("64m").unwrap(), 64 << 20);
    assert_eq!(parse_size("1g").unwrap(), 1 << 30);
    assert_eq!(parse_size("1GB").unwrap(), 1 << 30);
    assert_eq!(parse_size("4096").unwrap(), 4096);
    assert_eq!(parse_size("100b").unwrap(), 100);
    assert!(parse_size("-1").is_err());
    assert!(parse_size("1q").is_err());
    assert_eq!(split_words(r#"sh -c 'echo "a b"' x\ y"#).unwrap(), ["sh", "-c", "echo \"a b\"", "x y"]);
    assert_eq!(split_words("  ").unwrap(), Vec::<String>::new());
    assert_eq!(parse_signal("15").unwrap(), "SIGTERM");
    assert_eq!(parse_signal("quit").unwrap(), "SIGQUIT");
    assert_eq!(parse_signal("SIGRTMIN+3").unwrap(), "SIGRTMIN+3");
    assert_eq!(parse_capability("cap_sys_admin").unwrap(), "CAP_SYS_ADMIN");
}

#[test]
fn diagnostic_rendering() {
    let r = report("services:\n  web:\n    image: a\n    colour: blue\n");
    assert_eq!(
        r.diagnostics[0].render("compose.yaml"),
        "compose.yaml:4:5: warning: unknown key `colour` in service `web` (ignored)"
    );
}

#[test]
fn interpolation_as_compose_does_it() {
    use super::convert::interpolate;
    let vars = |n: &str| match n {
        "A" => Some("alpha".to_string()),
        "EMPTY" => Some(String::new()),
        _ => None,
    };
    let i = |s: &str| interpolate(s, &vars).map(|(v, _)| v);
    assert_eq!(i("$$HOME and $$$$").unwrap(), "$HOME and $$");
    assert_eq!(i("x-$A-${A}y").unwrap(), "x-alpha-alphay");
    assert_eq!(i("${NOPE:-dflt} ${EMPTY:-e} ${EMPTY-e} ${NOPE-${A}}").unwrap(), "dflt e  alpha");
    assert_eq!(i("${A:+set}${NOPE:+no}${EMPTY+yes}").unwrap(), "setyes");
    assert_eq!(i("cost: $5 and a lone $").unwrap(), "cost: $5 and a lone $");
    let (v, unset) = interpolate("[$NOPE]", &vars).unwrap();
    assert_eq!((v.as_str(), unset), ("[]", vec!["NOPE".to_string()]));
    assert!(i("${NOPE:?set NOPE}").unwrap_err().contains("set NOPE"));
    assert!(i("${EMPTY?x}").is_ok());
    assert!(i("${unclosed").is_err());
    assert!(i("${1bad}").is_err());
}

#[test]
fn interpolated_manifest_and_dollar_escapes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".env"), "SKIFF_TEST_TAG=7\n# comment\n").unwrap();
    let src = "services:\n  web:\n    image: \"busybox:${SKIFF_TEST_TAG}\"\n    command: [\"sh\", \"-c\", \"echo $$HOSTNAME\"]\n";
    let r = super::parse_str(src, dir.path());
    let m = r.manifest.expect("valid");
    assert_eq!(m.services["web"].image, "busybox:7");
    assert_eq!(
        m.services["web"].command.as_deref(),
        Some(&["sh".to_string(), "-c".into(), "echo $HOSTNAME".into()][..])
    );
    let bad = super::parse_str("services:\n  web:\n    image: \"${SKIFF_NOPE_X:?give an image}\"\n", dir.path());
    assert!(bad.manifest.is_none());
    assert!(
        bad.diagnostics
            .iter()
            .any(|d| d.render("f") == "f:3:12: error: web.image: variable SKIFF_NOPE_X is required: give an image"),
        "{:?}",
        bad.diagnostics
    );
}

#[test]
fn named_volumes_resolve_to_their_real_names() {
    let r = parse_str(
        "services:\n  web:\n    image: a\n    volumes: [\"data:/data\", \"ext:/ext:ro\"]\nvolumes:\n  data:\n    name: web-data\n  ext:\n    external: true\n",
        Path::new("/"),
    );
    let m = r.manifest.expect("valid");
    let kinds: Vec<_> = m.services["web"].mounts.iter().map(|m| m.kind.clone()).collect();
    assert_eq!(
        kinds,
        [
            MountKind::Volume { name: "web-data".into(), external: false, nocopy: false },
            MountKind::Volume { name: "ext".into(), external: true, nocopy: false }
        ]
    );
}

/// `nocopy` (long syntax `volume: {nocopy: true}`, short `:nocopy`) keeps a new named volume
/// empty; on a bind or an anonymous volume it means nothing and says so.
#[test]
fn volume_nocopy() {
    let r = report(
        "services:\n  web:\n    image: a\n    volumes:\n      - type: volume\n        source: data\n        target: /data\n        volume:\n          nocopy: true\n      - raw:/raw:ro,nocopy\n      - filled:/filled\n      - ./x:/x:nocopy\n      - type: volume\n        target: /anon\n        volume: {nocopy: true}\nvolumes: {data: {}, raw: {}, filled: {}}\n",
    );
    assert_eq!(
        lines(&r),
        [
            "12:9: warning: web.volumes: nocopy applies to named volumes only; ignored",
            "15:18: warning: web.volumes: nocopy applies to named volumes only; ignored"
        ]
    );
    let m = r.manifest.expect("valid");
    let kinds: Vec<_> = m.services["web"].mounts.iter().map(|m| m.kind.clone()).collect();
    assert_eq!(kinds[0], MountKind::Volume { name: "data".into(), external: false, nocopy: true });
    assert_eq!(kinds[1], MountKind::Volume { name: "raw".into(), external: false, nocopy: true });
    assert_eq!(kinds[2], MountKind::Volume { name: "filled".into(), external: false, nocopy: false });
    assert!(m.services["web"].mounts[1].read_only);
    has(
        "services:\n  web:\n    image: a\n    volumes:\n      - type: volume\n        source: data\n        target: /data\n        volume: {nocopy: maybe}\nvolumes: {data: {}}\n",
        "8:",
        "nocopy",
    );
}

/// `load` reads each env file (bounded) and refuses what the agent could not use, at the
/// env_file entry's line and column; `parse_str` reads none.
#[test]
fn env_files_are_read_bounded_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("good.env"), "A=1\n# c\nexport B='two'\n").unwrap();
    std::fs::write(d.join("big.env"), "X=".to_string() + &"y".repeat(2 << 20)).unwrap();
    std::fs::write(d.join("bad.env"), "A=1\nnot a line\n").unwrap();
    nix::unistd::mkfifo(&d.join("fifo.env"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let path = d.join("compose.yaml");
    let load = |env_file: &str| {
        let src =
            format!("services:\n  web:\n    image: busybox\n    env_file:\n      - good.env\n      - {env_file}\n");
        std::fs::write(&path, &src).unwrap();
        let r = load(&path).unwrap();
        assert_eq!(parse_str(&src, d).errors(), 0, "parse_str reads no env file");
        lines(&r)
    };
    assert!(load("good.env").is_empty());
    let cases = [
        ("/dev/zero", "6:9: error: web.env_file: /dev/zero: not a regular file (a character device): an env file must be a regular file"),
        ("big.env", "6:9: error: web.env_file: DIR/big.env: larger than 1 MiB, the limit for an env file: keep it to KEY=VALUE lines"),
        ("fifo.env", "6:9: error: web.env_file: DIR/fifo.env: not a regular file (a FIFO)"),
        ("bad.env", "6:9: error: web.env_file: DIR/bad.env:2: expected KEY=VALUE"),
        (".", "6:9: error: web.env_file: DIR/.: not a regular file (a directory)"),
        ("gone.env", "6:9: error: web.env_file: DIR/gone.env does not exist: create it, or give `required: false`"),
    ];
    for (f, want) in cases {
        let l = load(f);
        let want = want.replace("DIR", &d.display().to_string());
        assert!(l.len() == 1 && l[0].starts_with(&want), "{f}: {l:#?}");
    }
    assert!(load("{path: gone.env, required: false}").is_empty());

    // What the replica's start reads: the same rules.
    let pairs = read_env_file(&d.join("good.env")).unwrap().unwrap();
    assert_eq!(pairs, [("A".to_string(), Some("1".to_string())), ("B".into(), Some("two".into()))]);
    assert!(read_env_file(&d.join("gone.env")).unwrap().is_none());
    assert!(read_env_file(Path::new("/dev/zero")).unwrap_err().contains("not a regular file"));
}

/// `.env` next to the manifest: bounded too, its error at the first string that needed it.
#[test]
fn a_bad_dot_env_is_an_error_where_it_is_needed() {
    let dir = tempfile::tempdir().unwrap();
    let src = "services:\n  web:\n    image: \"busybox:${SKIFF_TEST_UNSET_TAG_X:-1}\"\n    command: \"echo ${SKIFF_TEST_UNSET_Y:-x}\"\n";
    std::fs::write(dir.path().join(".env"), "A=".to_string() + &"y".repeat(2 << 20)).unwrap();
    let l = lines(&parse_str(src, dir.path()));
    assert_eq!(l.len(), 1, "reported once: {l:#?}");
    assert!(l[0].starts_with("3:12: error: web.image: the .env file next to the manifest ("), "{l:#?}");
    assert!(l[0].contains("larger than 1 MiB, the limit; it must be a regular file of KEY=VALUE lines"), "{l:#?}");
    std::fs::remove_file(dir.path().join(".env")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.path().join(".env")).unwrap();
    let l = lines(&parse_str(src, dir.path()));
    assert!(l.len() == 1 && l[0].contains("not a regular file (a character device)"), "{l:#?}");
    // Without a variable to look up, .env is never read.
    assert!(lines(&parse_str("services:\n  web:\n    image: busybox\n", dir.path())).is_empty());
}

/// The manifest file itself: bounded for `skiff validate` (which may read a pipe), and a
/// FIFO or device is refused outright for the agent.
#[test]
fn the_manifest_is_read_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let r = load(Path::new("/dev/zero")).unwrap();
    assert_eq!(lines(&r), ["1:1: error: the manifest is larger than 1 MiB, the limit: keep it to the services (a compose file is a few KiB)"]);
    let e = read_manifest(Path::new("/dev/zero"), true).unwrap_err().to_string();
    assert_eq!(e, "not a regular file (a character device)");
    let fifo = dir.path().join("compose.yaml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let e = read_manifest(&fifo, true).unwrap_err().to_string();
    assert_eq!(e, "not a regular file (a FIFO)", "refused without blocking on the open");
    let big = dir.path().join("big.yaml");
    std::fs::write(&big, "x".repeat(3 << 20)).unwrap();
    assert_eq!(read_manifest(&big, true).unwrap().len(), (1 << 20) + 1, "never more than the limit and a byte");
    assert!(lines(&load(&big).unwrap())[0].contains("larger than 1 MiB"));
}

#[test]
fn image_gc_marks() {
    use crate::manifest::ImageGc;
    let on = |high, low| ImageGc { enabled: true, high, low };
    assert_eq!(clean("services:\n  a:\n    image: a\n").image_gc, on(85, 80), "the kubelet's marks by default");
    let m = clean("x-skiff: {image_gc: {high: 70%, low: \"50 %\"}}\nservices:\n  a:\n    image: a\n");
    assert_eq!(m.image_gc, on(70, 50));
    assert_eq!(m.image_gc.marks(), Some(skiff_images::gc::Marks { high: 70, low: 50 }));
    let m = clean("x-skiff: {image_gc: {high: 95}}\nservices:\n  a:\n    image: a\n");
    assert_eq!(m.image_gc, on(95, 80), "one mark given, the other the default's");
    let m = clean("x-skiff: {image_gc: false}\nservices:\n  a:\n    image: a\n");
    assert_eq!((m.image_gc.enabled, m.image_gc.marks()), (false, None));
    has("x-skiff: {image_gc: {high: 100%}}\nservices:\n  a:\n    image: a\n", "1:28: error: ", "between 1% and 99%");
    has("x-skiff: {image_gc: {low: -5}}\nservices:\n  a:\n    image: a\n", "1:27: error: ", "between 1% and 99%");
    has("x-skiff: {image_gc: {low: lots}}\nservices:\n  a:\n    image: a\n", "1:27: error: ", "like 85%");
    has(
        "x-skiff: {image_gc: {high: 60, low: 60}}\nservices:\n  a:\n    image: a\n",
        "1:21: error: ",
        "low (60%) must be below high (60%)",
    );
    has("x-skiff: {image_gc: {low: 90}}\nservices:\n  a:\n    image: a\n", "1:21: error: ", "must be below high (85%)");
    has("x-skiff: {image_gc: {hgih: 90}}\nservices:\n  a:\n    image: a\n", "1:22: warning: ", "unknown key `hgih`");
    has("x-skiff: {image_gc: 80}\nservices:\n  a:\n    image: a\n", "1:21: error: ", "must be a mapping");
}
