//! End-to-end tests of `skiff agent`: a real agent on its own scratch root and port, real
//! containers through the OCI runtime under test (`SKIFF_TEST_RUNTIME`, default the
//! workspace's skiff-runtime; runc and crun once each), images from the test registry.
//! Run as root. Each test ends with `skiff down` (checked to leave nothing behind); the
//! fixture's Drop removes whatever a failing test left (see skiff_tests::agent).
//!
//! Manifests are interpolated as compose does: `$$` is a literal `$` for the shell.
//!
//! Timing: intervals and delays are short (hundreds of ms) so the file runs in a few
//! minutes; no assertion depends on how fast the machine is, except where a configured
//! duration is the behaviour under test (and then with a wide margin).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_tests::agent::{
    alive, all_running, cpu_seconds, environ, kill, metric, parse_metrics, pids, replica, replica_ids, replicas,
    service, v1_cgroup_dir, Agent, WAIT,
};
use skiff_tests::registry::{Registry, BUSYBOX_OCI};
use skiff_tests::{read, skip};

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

fn image() -> String {
    Registry::shared().image(BUSYBOX_OCI)
}

fn agent() -> Agent {
    Agent::new(SKIFF)
}

/// The manifest digest of the test image in the shared registry.
fn image_digest() -> String {
    Registry::shared().manifest("skiff-test/busybox", "oci").2
}

fn pid_of(st: &Value, id: &str) -> i64 {
    replica(st, id)["pid"].as_i64().unwrap_or_else(|| panic!("{id} has no pid: {st:#}"))
}

/// Waits until `pid` is gone (it was SIGKILLed: the kernel takes a moment).
#[track_caller]
fn wait_gone(pid: i32) {
    skiff_tests::wait_until(&format!("process {pid} to die"), WAIT, || !alive(pid));
}

/// Waits until `pid` runs `comm`: a replica starts with the image's entrypoint, a shell that
/// execs the manifest's command a few milliseconds later.
#[track_caller]
fn wait_comm(pid: i64, comm: &str) {
    skiff_tests::wait_until(&format!("process {pid} to run {comm}"), WAIT, || {
        read(format!("/proc/{pid}/comm")).trim() == comm
    });
}

/// A sleeping replica: `sleep` as the container's init (after the image's entrypoint
/// execs it), which ignores every signal but SIGKILL: a short grace period keeps stops quick.
fn sleeper(name: &str, replicas: u32, extra: &str) -> String {
    format!(
        "  {name}:\n    image: {img}\n    command: [\"sleep\", \"1000\"]\n    stop_grace_period: 1s\n    deploy:\n      replicas: {replicas}\n{extra}",
        img = image()
    )
}

// ---------------------------------------------------------------------------------------

#[test]
fn replicas_come_up() {
    let mut a = agent();
    // Root, manifest, listen address and runtime through the environment this time.
    a.use_env(true);
    a.write_manifest(&format!("services:\n{}", sleeper("web", 3, "")));
    a.start();
    let st = a.wait_running("web", 3);

    let web = service(&st, "web");
    assert_eq!(web["image"], image(), "{st:#}");
    assert_eq!(web["image_digest"], image_digest(), "{st:#}");
    assert_eq!(replica_ids(&st, "web"), ["web-1", "web-2", "web-3"], "{st:#}");
    let pids = pids(&st, "web");
    assert_eq!(pids.values().collect::<BTreeSet<_>>().len(), 3, "distinct pids: {pids:?}");
    for r in replicas(&st, "web") {
        assert_eq!(r["restarts"], 0, "{r}");
        assert_eq!(r["health"], "none", "{r}");
        assert!(r["started_at"].is_string(), "{r}");
    }
    // The runtime runs exactly these containers, with these pids, each with its shim,
    // its rootfs mounted and its own pid namespace.
    assert_eq!(a.rt_ids(), ["web-1", "web-2", "web-3"]);
    let shims = a.shim_pids();
    let mut pidns = BTreeSet::new();
    for (id, pid) in &pids {
        assert_eq!(a.rt_pid(id), *pid, "{id}: status pid vs runtime state");
        wait_comm(*pid, "sleep"); // the manifest's command runs
        let shim = shims.get(id).copied().unwrap_or_else(|| panic!("{id} has no shim.pid: {shims:?}"));
        assert!(skiff_tests::agent::is_shim_of(shim, &a.root()), "{id}: shim {shim} is not running");
        let rootfs = a.root().join("containers").join(id).join("rootfs");
        assert!(skiff_tests::mount_points().contains(&rootfs), "{id}: {} is not mounted", rootfs.display());
        pidns.insert(std::fs::read_link(format!("/proc/{pid}/ns/pid")).expect("pid ns"));
    }
    assert_eq!(pidns.len(), 3, "each replica has its own pid namespace");
    assert_eq!(a.get("/healthz").expect("healthz").status, 200);
    a.down();
}

#[test]
fn status_json_and_metrics_match_what_runs() {
    let mut a = agent();
    let img = image();
    // web burns a little CPU before it sleeps (so its CPU counter is above zero); job exits 3
    // and is not restarted (and has an unknown key); ghost's image does not exist.
    let manifest = format!(
        r#"services:
  web:
    image: {img}
    command: ["sh", "-c", "i=0; while [ $$i -lt 20000 ]; do i=$$((i+1)); done; exec sleep 1000"]
    stop_grace_period: 1s
    deploy:
      replicas: 2
  job:
    image: {img}
    command: ["sh", "-c", "exit 3"]
    restart: "no"
    frobnicate: 1
  ghost:
    image: {ghost}
"#,
        ghost = Registry::shared().image("skiff-test/no-such-image:1")
    );
    a.write_manifest(&manifest);
    a.start();
    let st = a.wait_status("web running, job exited 3, ghost pulling", |st| {
        all_running(st, "web", 2)
            && replica(st, "ghost-1")["state"] == "pulling"
            && replica(st, "ghost-1")["message"].is_string()
            && replica(st, "job-1")["state"] == "exited"
            && replica(st, "job-1")["last_exit_code"] == 3
            && pids(st, "web").values().all(|p| read(format!("/proc/{p}/comm")).trim() == "sleep")
    });

    // The manifest.
    let m = &st["manifest"];
    assert_eq!(m["path"], a.manifest_path().to_string_lossy().as_ref(), "{m}");
    assert_eq!(m["revision"], format!("sha256:{}", skiff_tests::sha256(&a.manifest_path())), "{m}");
    assert!(m["error"].is_null(), "{m}");
    // The unknown key: a warning with its place.
    let line = manifest.lines().position(|l| l.contains("frobnicate")).map_or(0, |n| n + 1);
    let warnings = m["warnings"].to_string();
    assert!(warnings.contains(&format!("compose.yaml:{line}:")) && warnings.contains("frobnicate"), "{m}");
    // An image the registry does not have: that replica waits (and says why), the rest runs.
    let ghost = replica(&st, "ghost-1");
    assert!(ghost["pid"].is_null(), "{ghost}");
    assert!(ghost["message"].as_str().is_some_and(|m| m.contains("no-such-image")), "{ghost}");

    // Services and replicas against the runtime.
    let web = service(&st, "web");
    assert_eq!((web["desired_replicas"].as_u64(), web["running_replicas"].as_u64()), (Some(2), Some(2)), "{web}");
    let job = service(&st, "job");
    assert_eq!((job["desired_replicas"].as_u64(), job["running_replicas"].as_u64()), (Some(1), Some(0)), "{job}");
    assert!(replica(&st, "job-1")["pid"].is_null(), "an exited replica has no pid: {st:#}");
    assert_eq!(replica(&st, "job-1")["restarts"], 0, "restart: no");
    let listed: BTreeMap<String, (i64, String)> = a
        .rt_list()
        .iter()
        .filter_map(|c| Some((c["id"].as_str()?.to_string(), (c["pid"].as_i64()?, c["status"].as_str()?.to_string()))))
        .collect();
    for (id, pid) in pids(&st, "web") {
        assert_eq!(listed.get(&id), Some(&(pid, "running".to_string())), "{id} in runtime list: {listed:?}");
        assert_eq!(a.rt_pid(&id), pid);
        let started = replica(&st, &id)["started_at"].as_str().unwrap_or_default().to_string();
        assert!(started.len() >= 20 && started.contains('T'), "{id} started_at is RFC 3339: {started:?}");
    }

    // The metrics.
    let text = a.metrics();
    let samples = parse_metrics(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let svc = |name: &str, s: &str| metric(&samples, name, &[("service", s)]);
    assert_eq!(svc("skiff_service_replicas_desired", "web"), Some(2.0), "{text}");
    assert_eq!(svc("skiff_service_replicas_running", "web"), Some(2.0), "{text}");
    assert_eq!(svc("skiff_service_replicas_desired", "job"), Some(1.0), "{text}");
    assert_eq!(svc("skiff_service_replicas_running", "job"), Some(0.0), "{text}");
    assert_eq!(
        svc("skiff_service_replicas_healthy", "web"),
        web["healthy_replicas"].as_f64(),
        "healthy metric = status: {text}"
    );
    for id in ["web-1", "web-2"] {
        let l = [("service", "web"), ("replica", id)];
        assert_eq!(metric(&samples, "skiff_container_restarts_total", &l), Some(0.0), "{id}: {text}");
        let mem = metric(&samples, "skiff_container_memory_bytes", &l).unwrap_or_else(|| panic!("{id}: {text}"));
        assert!(mem > 0.0 && mem < (1u64 << 30) as f64, "{id} memory {mem}: {text}");
        let cpu = metric(&samples, "skiff_container_cpu_seconds_total", &l).unwrap_or_else(|| panic!("{id}: {text}"));
        assert!(cpu > 0.0 && cpu < 100.0, "{id} cpu {cpu} (it counted to 20000): {text}");
    }

    // `skiff status --json` reads the same endpoint.
    let out = a.skiff(&["status", "--json"]);
    assert!(out.success(), "{out}");
    let cli: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("skiff status --json: {e}\n{out}"));
    assert_eq!(pids(&cli, "web"), pids(&st, "web"), "{out}");
    let out = a.skiff(&["status"]);
    assert!(out.success() && out.stdout.contains("web-1") && out.stdout.contains("job"), "{out}");
    a.down();
}

#[test]
fn a_killed_replica_is_restarted_with_backoff() {
    let mut a = agent();
    a.write_manifest(&format!(
        "services:\n{}",
        sleeper("web", 2, "      restart_policy:\n        condition: any\n        delay: 2s\n")
    ));
    a.start();
    let st = a.wait_running("web", 2);
    let (old1, old2) = (pid_of(&st, "web-1"), pid_of(&st, "web-2"));

    kill(old1 as i32, libc::SIGKILL);
    let mut backoff = None;
    let st = a.wait_status("web-1 restarted", |st| {
        let r = replica(st, "web-1");
        if r["state"] == "backoff" {
            backoff = backoff.max(r["next_restart_in"].as_f64().map(|s| (s * 1000.0) as u64));
        }
        r["state"] == "running" && r["pid"].as_i64().is_some_and(|p| p != old1) && all_running(st, "web", 2)
    });
    let r = replica(&st, "web-1");
    assert_eq!(r["restarts"], 1, "{r}");
    assert_eq!(r["last_exit_code"], 137, "SIGKILL: {r}");
    let ms = backoff.unwrap_or_else(|| panic!("web-1 was never seen in state backoff (delay 2s)\n{}", a.log_tail()));
    assert!(ms > 0 && ms <= 2000, "next_restart_in within the configured 2 s delay: {ms} ms");
    assert!(!alive(old1 as i32));
    // The other replica is untouched; the runtime has no leftover of the dead container.
    assert_eq!(pid_of(&st, "web-2"), old2);
    assert_eq!(replica(&st, "web-2")["restarts"], 0);
    assert_eq!(a.rt_ids(), ["web-1", "web-2"]);
    assert_eq!(a.rt_pid("web-1"), pid_of(&st, "web-1"));
    let samples = parse_metrics(&a.metrics()).expect("metrics");
    assert_eq!(
        metric(&samples, "skiff_container_restarts_total", &[("service", "web"), ("replica", "web-1")]),
        Some(1.0)
    );
    a.down();
}

#[test]
fn a_crash_loop_backs_off() {
    let mut a = agent();
    a.write_manifest(&format!(
        r#"services:
  crash:
    image: {}
    command: ["sh", "-c", "exit 1"]
    deploy:
      restart_policy:
        condition: any
        delay: 500ms
"#,
        image()
    ));
    a.start();
    let agent_pid = a.pid();
    let (t0, cpu0) = (Instant::now(), cpu_seconds(agent_pid));
    // The longest next_restart_in seen in each back-off period (keyed by the restart count).
    let mut periods: BTreeMap<u64, f64> = BTreeMap::new();
    let st = a.wait_status("four back-off periods of the crash loop", |st| {
        let r = replica(st, "crash-1");
        if r["state"] == "backoff" {
            if let (Some(n), Some(next)) = (r["restarts"].as_u64(), r["next_restart_in"].as_f64()) {
                let e = periods.entry(n).or_insert(0.0);
                *e = e.max(next);
            }
        }
        periods.len() >= 4
    });
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(agent_pid) - cpu0;
    let r = replica(&st, "crash-1");
    assert_eq!(r["last_exit_code"], 1, "{r}");
    assert!(r["pid"].is_null(), "no pid while backing off: {r}");
    assert_eq!(service(&st, "crash")["running_replicas"], 0);
    let seen: Vec<f64> = periods.values().copied().collect();
    // Doubling from 0.5 s: 0.5, 1, 2, 4 (each seen a little below its full length).
    assert!(seen.windows(2).all(|w| w[1] > w[0]), "back-off grows: {periods:?}");
    assert!(seen[3] > 2.0 && seen.iter().all(|s| *s <= 300.0), "back-off doubles, capped at 5 min: {periods:?}");
    // Restarts grow slowly: with the delays doubling there were only a few in this time
    // (a fixed 0.5 s delay would have made about 2 a second).
    let restarts = r["restarts"].as_u64().unwrap_or(0);
    eprintln!("crash loop: {restarts} restarts, back-off periods {periods:?}, agent CPU {cpu:.2} s in {wall:.1} s");
    assert!((3..=5).contains(&restarts), "{restarts} restarts in {wall:.1} s: {periods:?}");
    // A crash loop costs the agent next to no CPU (a busy loop would burn the whole time).
    assert!(cpu < 0.25 * wall, "the agent used {cpu:.2} s CPU in {wall:.1} s of crash loop");
    a.down();
}

#[test]
fn scale_up_and_down_on_manifest_edit() {
    let mut a = agent();
    a.write_manifest(&format!("services:\n{}", sleeper("web", 3, "")));
    a.start();
    let st = a.wait_running("web", 3);
    let first = pids(&st, "web");
    let rev1 = st["manifest"]["revision"].clone();

    // Up to 5 (an editor's atomic rename): the three keep their pids.
    a.write_manifest(&format!("services:\n{}", sleeper("web", 5, "")));
    let st = a.wait_running("web", 5);
    assert_eq!(replica_ids(&st, "web"), ["web-1", "web-2", "web-3", "web-4", "web-5"]);
    let five = pids(&st, "web");
    for (id, pid) in &first {
        assert_eq!(five.get(id), Some(pid), "{id} was replaced while scaling up: {first:?} -> {five:?}");
    }
    assert_ne!(st["manifest"]["revision"], rev1, "a new revision is in force");
    assert_eq!(a.rt_ids().len(), 5);

    // Down to 2 (rewritten in place): the highest go, the lowest keep their pids.
    a.write_manifest_in_place(&format!("services:\n{}", sleeper("web", 2, "")));
    let st = a.wait_status("web scaled down to web-1, web-2", |st| {
        all_running(st, "web", 2) && replica_ids(st, "web") == ["web-1", "web-2"]
    });
    let two = pids(&st, "web");
    for id in ["web-1", "web-2"] {
        assert_eq!(two.get(id), first.get(id), "{id} was replaced while scaling down");
    }
    for id in ["web-3", "web-4", "web-5"] {
        let pid = five[id] as i32;
        skiff_tests::wait_until(&format!("{id} ({pid}) to stop"), WAIT, || !alive(pid));
        assert!(!a.root().join("containers").join(id).exists(), "{id}'s container directory is left");
    }
    assert_eq!(a.rt_ids(), ["web-1", "web-2"]);
    let mut shims: Vec<String> = a.shim_pids().into_keys().collect();
    shims.sort();
    assert_eq!(shims, ["web-1", "web-2"], "shims of removed replicas are gone");
    a.down();
}

#[test]
fn a_changed_service_is_replaced_and_an_unchanged_one_untouched() {
    let mut a = agent();
    let manifest = |gen: u32| {
        format!(
            "services:\n{}{}",
            sleeper("a", 2, &format!("    environment:\n      GEN: \"{gen}\"\n")),
            sleeper("b", 1, "    environment:\n      GEN: \"1\"\n")
        )
    };
    a.write_manifest(&manifest(1));
    a.start();
    let st = a.wait_status("a and b running", |st| all_running(st, "a", 2) && all_running(st, "b", 1));
    let (a_old, b_old) = (pids(&st, "a"), pids(&st, "b"));
    let b_shim = a.shim_pids().get("b-1").copied();
    // The replica runs the image's entrypoint, a shell that execs the command: reading a
    // process's environment while it execs finds none, so this waits for the command's.
    for p in a_old.values() {
        let p = *p as i32;
        skiff_tests::wait_until(&format!("GEN=1 in the environment of {p}"), WAIT, || {
            environ(p, "GEN").as_deref() == Some("1")
        });
    }

    a.write_manifest(&manifest(2));
    let st = a.wait_status("a's replicas replaced", |st| {
        all_running(st, "a", 2)
            && all_running(st, "b", 1)
            && pids(st, "a")
                .iter()
                .all(|(id, p)| a_old.get(id) != Some(p) && environ(*p as i32, "GEN").as_deref() == Some("2"))
    });
    assert_eq!(replica_ids(&st, "a"), ["a-1", "a-2"]);
    assert_eq!(pids(&st, "b"), b_old, "b did not change and must not be touched");
    assert_eq!(replica(&st, "b-1")["restarts"], 0);
    assert_eq!(a.shim_pids().get("b-1").copied(), b_shim, "b's shim is the same process");
    for p in a_old.values() {
        wait_gone(*p as i32);
    }
    assert_eq!(a.rt_ids(), ["a-1", "a-2", "b-1"]);
    a.down();
}

#[test]
fn an_invalid_manifest_keeps_the_old_state_and_shows_the_error() {
    let mut a = agent();
    let good = format!("services:\n{}", sleeper("web", 2, ""));
    a.write_manifest(&good);
    a.start();
    let st = a.wait_running("web", 2);
    let (before, rev) = (pids(&st, "web"), st["manifest"]["revision"].clone());

    // Line 7: `replicas: lots`.
    let bad = good.replace("replicas: 2", "replicas: lots");
    assert_eq!(bad.lines().nth(6).map(str::trim), Some("replicas: lots"), "{bad}");
    a.write_manifest(&bad);
    let st = a.wait_status("the manifest error in status", |st| st["manifest"]["error"].is_string());
    let err = st["manifest"]["error"].as_str().unwrap_or_default();
    assert!(err.contains("compose.yaml:7:"), "FILE:LINE:COL of the error: {err:?}");
    assert!(err.contains("replicas"), "{err:?}");
    assert_eq!(st["manifest"]["revision"], rev, "the last good revision stays in force");
    assert_eq!(pids(&st, "web"), before, "nothing was disturbed");
    assert!(all_running(&st, "web", 2), "{st:#}");
    assert_eq!(a.get("/healthz").expect("healthz").status, 200, "still healthy with the old manifest");

    // A YAML syntax error, and SIGHUP (re-read): still the old state, the agent lives on.
    a.write_manifest("services:\n  web: [unclosed\n");
    a.wait_status("the syntax error in status", |st| {
        st["manifest"]["error"].as_str().is_some_and(|e| e.contains("compose.yaml:") && !e.contains("replicas"))
    });
    a.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    assert!(a.is_running(), "SIGHUP re-reads the manifest; it must not end the agent\n{}", a.log_tail());
    let st = a.status();
    assert!(st["manifest"]["error"].is_string(), "{st:#}");
    assert_eq!(pids(&st, "web"), before);
    assert_eq!(a.rt_ids(), ["web-1", "web-2"]);

    // Fixed: the error goes, the new revision is applied (3 replicas), the two stay.
    a.write_manifest(&format!("services:\n{}", sleeper("web", 3, "")));
    let st = a
        .wait_status("the fixed manifest applied", |st| st["manifest"]["error"].is_null() && all_running(st, "web", 3));
    assert_ne!(st["manifest"]["revision"], rev);
    for (id, pid) in &before {
        assert_eq!(pids(&st, "web").get(id), Some(pid));
    }
    a.down();
}

#[test]
fn an_agent_started_on_an_invalid_manifest_waits_for_a_good_one() {
    let mut a = agent();
    a.write_manifest("services:\n  web:\n    image: 42\n    deploy:\n      replicas: -1\n");
    a.spawn();
    // Not healthy (no manifest ever loaded), but up and telling why.
    let start = Instant::now();
    let st = loop {
        assert!(a.is_running(), "the agent must keep running on a bad manifest\n{}", a.log_tail());
        if let Ok(r) = a.get("/healthz") {
            assert_ne!(r.status, 200, "healthy without any manifest loaded");
            if r.status == 503 {
                break a.status();
            }
        }
        assert!(start.elapsed() < WAIT, "no 503 from /healthz\n{}", a.log_tail());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(st["manifest"]["error"].as_str().is_some_and(|e| e.contains("compose.yaml:")), "{st:#}");
    assert!(a.rt_ids().is_empty());
    a.write_manifest(&format!("services:\n{}", sleeper("web", 1, "")));
    a.wait_running("web", 1);
    assert_eq!(a.get("/healthz").expect("healthz").status, 200);
    a.down();
}

#[test]
fn an_unhealthy_replica_is_replaced() {
    let mut a = agent();
    a.write_manifest(&format!(
        r#"services:
  web:
    image: {}
    command: ["sh", "-c", "touch /tmp/ok; exec sleep 1000"]
    stop_grace_period: 1s
    healthcheck:
      test: ["CMD", "test", "-f", "/tmp/ok"]
      interval: 500ms
      timeout: 5s
      retries: 2
    deploy:
      restart_policy:
        condition: any
        delay: 200ms
"#,
        image()
    ));
    a.start();
    let st = a.wait_status("web-1 healthy", |st| {
        replica(st, "web-1")["health"] == "healthy" && service(st, "web")["healthy_replicas"] == 1
    });
    let old = pid_of(&st, "web-1");

    // The check starts failing while the process runs on.
    a.rt(&["exec", "web-1", "rm", "/tmp/ok"]).ok();
    let mut saw_unhealthy = false;
    let st = a.wait_status("web-1 replaced by a healthy container", |st| {
        let r = replica(st, "web-1");
        saw_unhealthy |= r["health"] == "unhealthy";
        r["health"] == "healthy" && r["pid"].as_i64().is_some_and(|p| p != old)
    });
    wait_gone(old as i32);
    assert_eq!(a.rt_ids(), ["web-1"]);
    assert_eq!(a.rt_pid("web-1"), pid_of(&st, "web-1"));
    if !saw_unhealthy {
        eprintln!("note: the unhealthy state was too short to be seen by polling");
    }
    a.down();
}

/// `start_interval`: within the start period, checks run at the short interval until one
/// passes (so a new replica is healthy, and takes published traffic, in moments), then at
/// the long one. With an interval of an hour, only start_interval can make it healthy here.
#[test]
fn start_interval_checks_often_until_healthy() {
    let mut a = agent();
    a.write_manifest(&format!(
        r#"services:
  web:
    image: {}
    command: ["sh", "-c", "sleep 1; touch /tmp/ok; exec sleep 1000"]
    stop_grace_period: 1s
    healthcheck:
      test: ["CMD", "test", "-f", "/tmp/ok"]
      interval: 1h
      start_period: 10m
      start_interval: 200ms
"#,
        image()
    ));
    a.start();
    a.wait_status("web-1 healthy through start_interval", |st| replica(st, "web-1")["health"] == "healthy");
    a.down();
}

#[test]
fn depends_on_orders_start_up() {
    let mut a = agent();
    let img = image();
    // db becomes healthy ~2 s in (its checks fail until then, within its start period); app records whether db's ready file existed when it
    // started. init finishes (exit 0) after ~1 s; worker records what init left.
    a.write_manifest(&format!(
        r#"services:
  app:
    image: {img}
    user: root
    command: ["sh", "-c", "if [ -f /v/db-ready ]; then echo after > /v/app; else echo before > /v/app; fi; exec sleep 1000"]
    stop_grace_period: 1s
    volumes: ["shared:/v"]
    depends_on:
      db:
        condition: service_healthy
  db:
    image: {img}
    user: root
    command: ["sh", "-c", "sleep 2; touch /v/db-ready; exec sleep 1000"]
    stop_grace_period: 1s
    volumes: ["shared:/v"]
    healthcheck:
      test: ["CMD", "test", "-f", "/v/db-ready"]
      interval: 300ms
      timeout: 5s
      retries: 3
      start_period: 20s
  worker:
    image: {img}
    user: root
    command: ["sh", "-c", "cat /v/init-done > /v/worker || echo missing > /v/worker; exec sleep 1000"]
    stop_grace_period: 1s
    volumes: ["shared:/v"]
    depends_on:
      init:
        condition: service_completed_successfully
  init:
    image: {img}
    user: root
    command: ["sh", "-c", "sleep 1; echo done > /v/init-done"]
    restart: "no"
    volumes: ["shared:/v"]
volumes:
  shared: {{}}
"#
    ));
    a.start();
    let mut violations = Vec::new();
    let st = a.wait_status("app and worker running", |st| {
        if replica(st, "app-1")["pid"].as_i64().is_some() && replica(st, "db-1")["health"] != "healthy" {
            violations.push(format!("app-1 has a pid while db-1 is {}", replica(st, "db-1")["health"]));
        }
        if replica(st, "worker-1")["pid"].as_i64().is_some() && replica(st, "init-1")["state"] != "exited" {
            violations.push(format!("worker-1 has a pid while init-1 is {}", replica(st, "init-1")["state"]));
        }
        all_running(st, "app", 1) && all_running(st, "worker", 1) && all_running(st, "db", 1)
    });
    assert!(violations.is_empty(), "{violations:?}");
    let vol = a.root().join("volumes/shared");
    assert_eq!(read(vol.join("app")).trim(), "after", "app started before db was healthy");
    assert_eq!(read(vol.join("worker")).trim(), "done", "worker started before init completed");
    let init = replica(&st, "init-1");
    assert_eq!((init["state"].as_str(), init["last_exit_code"].as_i64()), (Some("exited"), Some(0)), "{init}");
    assert_eq!(init["restarts"], 0);
    a.down();
}

/// Tick numbers (`tick N`) in the log files of a replica, oldest file first.
fn ticks_in_files(dir: &Path) -> Vec<u64> {
    let mut files: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = if name == "current.log" { 0 } else { name.strip_suffix(".log")?.parse().ok()? };
            Some((n, e.path()))
        })
        .collect();
    files.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    files.iter().flat_map(|(_, p)| ticks_in(&read(p))).collect()
}

fn ticks_in(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.split_once("tick ").and_then(|(_, n)| n.split_whitespace().next()?.parse().ok()))
        .collect()
}

#[track_caller]
fn assert_consecutive(ticks: &[u64], what: &str) {
    for w in ticks.windows(2) {
        assert_eq!(w[1], w[0] + 1, "{what}: ticks not consecutive (lost or repeated lines): {ticks:?}");
    }
}

#[test]
fn logs_rotate_and_survive_an_agent_restart() {
    let mut a = agent();
    // A burst of ~150-byte lines (several rotations at 4k), then a tick every 0.2 s.
    a.write_manifest(&format!(
        r#"services:
  talker:
    image: {}
    command: ["sh", "-c", "i=0; while [ $$i -lt 150 ]; do i=$$((i+1)); echo \"burst $$i $$PAD\"; done; j=0; while true; do j=$$((j+1)); echo \"tick $$j\"; sleep 0.2; done"]
    environment:
      PAD: "{}"
    stop_grace_period: 1s
    logging:
      options:
        max-size: 4k
        max-file: "3"
"#,
        image(),
        "x".repeat(120)
    ));
    a.start();
    let st = a.wait_running("talker", 1);
    let pid = pid_of(&st, "talker-1");
    let dir = a.root().join("logs/talker-1");
    skiff_tests::wait_until("rotated logs with ticks", WAIT, || {
        dir.join("2.log").exists() && ticks_in_files(&dir).len() >= 3
    });

    // Rotation: current + 2 rotated files, none over max-size, the oldest burst lines dropped.
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("log dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["1.log", "2.log", "current.log"], "max-file 3");
    let mut all = String::new();
    for n in &names {
        let size = std::fs::metadata(dir.join(n)).map(|m| m.len()).unwrap_or(0);
        assert!(size <= 4096, "{n} is {size} bytes, over max-size 4k");
        all.push_str(&read(dir.join(n)));
    }
    for l in all.lines() {
        let mut f = l.splitn(3, ' ');
        let (ts, stream) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
        assert!(ts.len() >= 20 && ts.ends_with('Z') && ts.contains('T'), "record time: {l:?}");
        assert!(matches!(stream, "out" | "err" | "out+" | "err+"), "record stream: {l:?}");
    }
    assert!(!all.contains("burst 1 "), "the oldest lines were rotated out");
    assert!(all.contains("burst 150 "), "the last burst line is kept");

    // skiff logs: --tail, --timestamps, SERVICE/N.
    let tail = a.logs(&["talker/1", "--tail", "3"]);
    assert_eq!(tail.lines().count(), 3, "{tail}");
    assert!(tail.lines().last().is_some_and(|l| l.contains("tick ")), "{tail}");
    assert!(!tail.contains("out "), "without --timestamps only the text: {tail}");
    let ts = a.logs(&["talker/1", "--tail", "2", "--timestamps"]);
    assert!(ts.lines().count() == 2 && ts.lines().all(|l| l.starts_with("20") && l.contains('T')), "{ts}");

    // skiff logs -f follows new lines.
    let last = *ticks_in_files(&dir).last().expect("ticks");
    let followed = follow_until(&a, "talker/1", last + 3);
    assert!(ticks_in(&followed).contains(&(last + 3)), "{followed}");

    // The agent dies: the shim keeps the container's output flowing into the files.
    a.stop_with(libc::SIGKILL);
    let t0 = *ticks_in_files(&dir).last().expect("ticks");
    skiff_tests::wait_until("ticks logged while no agent runs", WAIT, || {
        ticks_in_files(&dir).last().is_some_and(|t| *t >= t0 + 5)
    });
    assert!(alive(pid as i32), "the container keeps running without the agent");
    let offline = ticks_in(&a.logs(&["talker/1"]));
    assert!(offline.contains(&(t0 + 5)), "skiff logs works without an agent: {offline:?}");

    // A new agent adopts the container; the logs go on in the same files, nothing lost.
    a.start();
    let st = a.wait_running("talker", 1);
    assert_eq!(pid_of(&st, "talker-1"), pid, "adopted, not restarted");
    skiff_tests::wait_until("ticks logged after the restart", WAIT, || {
        ticks_in_files(&dir).last().is_some_and(|t| *t >= t0 + 10)
    });
    let ticks = ticks_in_files(&dir);
    assert_consecutive(&ticks, "log files");
    assert!(ticks.contains(&t0) && ticks.contains(&(t0 + 10)), "{ticks:?}");
    let cli = ticks_in(&a.logs(&["talker"]));
    assert_consecutive(&cli, "skiff logs talker");
    assert!(cli.contains(&(t0 + 10)), "{cli:?}");
    a.down();
}

/// `skiff logs -f TARGET` until a line with `tick N` shows up; returns what it printed.
fn follow_until(a: &Agent, target: &str, n: u64) -> String {
    let mut child = Command::new(SKIFF)
        .arg("--root")
        .arg(a.root())
        .args(["logs", "-f", target])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn skiff logs -f");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let lines = skiff_tests::agent::read_lines_until(stdout, |l| ticks_in(l).contains(&n));
        let _ = tx.send(lines.join("\n"));
    });
    let got = rx.recv_timeout(WAIT);
    // Ours: stop it by its pid (it would follow forever).
    let _ = child.kill();
    let _ = child.wait();
    got.unwrap_or_else(|_| panic!("skiff logs -f {target} printed no `tick {n}` within {WAIT:?}"))
}

#[test]
fn named_volume_data_survives_replacement() {
    let mut a = agent();
    let manifest = |gen: u32| {
        format!(
            r#"services:
  store:
    image: {}
    user: root
    command: ["sh", "-c", "echo gen-$$GEN >> /vol/history; exec sleep 1000"]
    environment:
      GEN: "{gen}"
    stop_grace_period: 1s
    volumes:
      - data:/vol
volumes:
  data: {{}}
"#,
            image()
        )
    };
    a.write_manifest(&manifest(1));
    a.start();
    let st = a.wait_running("store", 1);
    let old = pid_of(&st, "store-1");
    let history = a.root().join("volumes/data/history");
    skiff_tests::wait_until("gen-1 written", WAIT, || read(&history) == "gen-1\n");

    a.write_manifest(&manifest(2));
    let st = a.wait_status("store-1 replaced", |st| {
        all_running(st, "store", 1) && replica(st, "store-1")["pid"].as_i64().is_some_and(|p| p != old)
    });
    let new = pid_of(&st, "store-1");
    skiff_tests::wait_until("gen-2 appended", WAIT, || read(&history).contains("gen-2"));
    assert_eq!(read(&history), "gen-1\ngen-2\n", "the volume kept the first container's data");
    assert_eq!(read(format!("/proc/{new}/root/vol/history")), "gen-1\ngen-2\n", "seen from inside");
    a.down();
    assert_eq!(read(&history), "gen-1\ngen-2\n", "skiff down keeps named volumes");
}

#[test]
fn agent_sigkill_and_restart_adopts_containers() {
    let mut a = agent();
    a.write_manifest(&format!(
        "services:\n{}",
        sleeper("web", 3, "      restart_policy:\n        condition: any\n        delay: 300ms\n")
    ));
    a.start();
    let st = a.wait_running("web", 3);
    // One restart before the agent dies, so there is a count to keep.
    let old2 = pid_of(&st, "web-2");
    kill(old2 as i32, libc::SIGKILL);
    let st = a.wait_status("web-2 restarted", |st| {
        all_running(st, "web", 3) && replica(st, "web-2")["pid"].as_i64().is_some_and(|p| p != old2)
    });
    let before = pids(&st, "web");
    let shims = a.shim_pids();
    assert_eq!(replica(&st, "web-2")["restarts"], 1);

    // SIGKILL: the containers and their shims live on.
    a.stop_with(libc::SIGKILL);
    for (id, p) in &before {
        assert!(alive(*p as i32), "{id} died with the agent");
    }
    for (id, p) in &shims {
        assert!(skiff_tests::agent::is_shim_of(*p, &a.root()), "{id}'s shim died with the agent");
    }
    // web-3 dies while no agent runs: its shim records the exit.
    let old3 = before["web-3"] as i32;
    kill(old3, libc::SIGKILL);
    wait_gone(old3);
    let exit_json = a.run_dir().join("shims/web-3/exit.json");
    skiff_tests::wait_until("the shim's exit.json for web-3", WAIT, || exit_json.exists());
    let exit: Value = serde_json::from_str(&read(&exit_json)).unwrap_or_else(|e| panic!("exit.json: {e}"));
    assert!(exit.to_string().contains("137") || exit.to_string().contains("\"signal\":9"), "{exit}");

    a.start();
    let st = a.wait_status("adopted, web-3 restarted", |st| {
        all_running(st, "web", 3) && replica(st, "web-3")["pid"].as_i64().is_some_and(|p| p != old3 as i64)
    });
    let after = pids(&st, "web");
    assert_eq!(after["web-1"], before["web-1"], "web-1 adopted with the same pid");
    assert_eq!(after["web-2"], before["web-2"], "web-2 adopted with the same pid");
    assert_eq!(replica(&st, "web-1")["restarts"], 0);
    assert_eq!(replica(&st, "web-2")["restarts"], 1, "the restart count survives the agent");
    let r3 = replica(&st, "web-3");
    assert_eq!((r3["restarts"].as_u64(), r3["last_exit_code"].as_i64()), (Some(1), Some(137)), "{r3}");
    assert_eq!(a.rt_ids(), ["web-1", "web-2", "web-3"], "no duplicates");
    let now = a.shim_pids();
    assert_eq!(now.get("web-1"), shims.get("web-1"), "web-1 keeps its shim");
    let live_shims =
        skiff_tests::processes().iter().filter(|p| skiff_tests::agent::is_shim_of(p.pid, &a.root())).count();
    assert_eq!(live_shims, 3, "one shim per replica");

    // SIGTERM: same story, everything adopted again.
    a.stop_with(libc::SIGTERM);
    for (id, p) in &after {
        assert!(alive(*p as i32), "{id} died with the agent's SIGTERM");
    }
    a.start();
    let st = a.wait_running("web", 3);
    assert_eq!(pids(&st, "web"), after);
    assert_eq!(replica(&st, "web-2")["restarts"], 1);
    assert_eq!(replica(&st, "web-3")["restarts"], 1);
    assert_eq!(a.rt_ids(), ["web-1", "web-2", "web-3"]);
    // skiff down with no agent running stops the containers all the same.
    a.stop_with(libc::SIGKILL);
    a.down();
}

#[test]
fn boot_with_no_run_state_and_no_registry_brings_everything_back() {
    let reg = Registry::start();
    let img = reg.image(BUSYBOX_OCI);
    let mut a = agent();
    a.write_manifest(&format!(
        r#"services:
  web:
    image: {img}
    command: ["sleep", "1000"]
    stop_grace_period: 1s
    deploy:
      replicas: 2
  other:
    image: {img}
    command: ["sleep", "1000"]
    stop_grace_period: 1s
"#
    ));
    a.start();
    let st = a.wait_status("web and other running", |st| all_running(st, "web", 2) && all_running(st, "other", 1));
    let digest = service(&st, "web")["image_digest"].clone();
    let old: Vec<i64> = pids(&st, "web").into_values().chain(pids(&st, "other").into_values()).collect();

    // Power cut: the registry is gone, the agent, containers and shims die, the run state
    // (a tmpfs) is wiped, and so are mounts and cgroups.
    let reg_host = reg.host();
    drop(reg);
    assert!(std::net::TcpStream::connect(&reg_host).is_err(), "the registry is stopped");
    let shims = a.shim_pids();
    a.stop_with(libc::SIGKILL);
    for p in &old {
        kill(*p as i32, libc::SIGKILL);
    }
    for p in shims.values() {
        if skiff_tests::agent::is_shim_of(*p, &a.root()) {
            kill(*p, libc::SIGKILL);
        }
    }
    for p in old.iter().map(|p| *p as i32).chain(shims.values().copied()) {
        wait_gone(p);
    }
    skiff_tests::unmount_under(&a.root().join("containers"));
    skiff_tests::safe_remove(&a.run_dir());
    skiff_tests::remove_cgroup(a.cgroup_parent());
    assert!(!a.run_dir().exists());

    a.start();
    let st = a.wait_status("everything back", |st| all_running(st, "web", 2) && all_running(st, "other", 1));
    assert_eq!(service(&st, "web")["image_digest"], digest);
    for (id, p) in pids(&st, "web").into_iter().chain(pids(&st, "other")) {
        assert!(!old.contains(&p), "{id}: pid {p} is a new container");
        assert_eq!(a.rt_pid(&id), p);
    }
    assert_eq!(a.rt_ids(), ["other-1", "web-1", "web-2"]);
    a.down();
}

fn drives_another_runtime(name: &str) {
    let Some(bin) = skiff_tests::which(name) else {
        skip(&format!("{name} is not installed"));
        return;
    };
    let mut a = Agent::with_runtime(SKIFF, &bin);
    if name == "runc" {
        if let Some(m) = skiff_tests::agent::odd_v1_hierarchy() {
            skip(&format!("runc cannot mount the cgroupfs in a container while a v1 hierarchy is at {}", m.display()));
            return;
        }
    }
    a.write_manifest(&format!(
        r#"services:
  web:
    image: {}
    command: ["sleep", "1000"]
    stop_grace_period: 1s
    healthcheck:
      test: ["CMD", "true"]
      interval: 500ms
      timeout: 5s
    deploy:
      replicas: 2
      restart_policy:
        condition: any
        delay: 200ms
"#,
        image()
    ));
    a.start();
    let st = a.wait_status("2 healthy replicas", |st| {
        all_running(st, "web", 2) && service(st, "web")["healthy_replicas"] == 2
    });
    for (id, p) in pids(&st, "web") {
        assert_eq!(a.rt_pid(&id), p, "{name} state {id}");
    }
    let old = pid_of(&st, "web-1");
    kill(old as i32, libc::SIGKILL);
    let st = a.wait_status("web-1 restarted", |st| {
        all_running(st, "web", 2) && replica(st, "web-1")["pid"].as_i64().is_some_and(|p| p != old)
    });
    assert_eq!(replica(&st, "web-1")["restarts"], 1);
    assert_eq!(a.rt_ids(), ["web-1", "web-2"]);
    a.down();
}

#[test]
fn the_agent_drives_runc() {
    drives_another_runtime("runc");
}

#[test]
fn the_agent_drives_crun() {
    drives_another_runtime("crun");
}

#[test]
fn graceful_stop_uses_stop_signal_and_stop_grace_period() {
    let mut a = agent();
    let img = image();
    let svc = |name: &str, extra: &str, script: &str| {
        format!(
            "  {name}:\n    image: {img}\n    user: root\n    volumes: [\"marks:/marks\"]\n{extra}    command: [\"sh\", \"-c\", {script:?}]\n"
        )
    };
    let manifest = format!(
        "services:\n{}{}{}{}volumes:\n  marks: {{}}\n",
        svc(
            "term",
            "    stop_signal: SIGTERM\n    stop_grace_period: 20s\n",
            "trap 'echo term > /marks/term; exit 0' TERM; sleep 1000 & wait"
        ),
        svc(
            "usr1",
            "    stop_signal: SIGUSR1\n    stop_grace_period: 20s\n",
            "trap 'echo usr1 > /marks/usr1; exit 0' USR1; trap 'echo term > /marks/usr1; exit 0' TERM; sleep 1000 & wait"
        ),
        // No stop_signal: the image's StopSignal (SIGINT), as Docker does.
        svc(
            "imagesig",
            "    stop_grace_period: 20s\n",
            "trap 'echo int > /marks/imagesig; exit 0' INT; trap 'echo term > /marks/imagesig; exit 0' TERM; sleep 1000 & wait"
        ),
        // Ignores its stop signal: killed once its 2 s grace period is over.
        svc(
            "stubborn",
            "    stop_signal: SIGTERM\n    stop_grace_period: 2s\n",
            "trap 'echo term > /marks/stubborn; while true; do echo tick >> /marks/after; sleep 0.1; done' TERM; sleep 1000 & wait"
        ),
    );
    a.write_manifest(&manifest);
    a.start();
    a.wait_status("all four running", |st| {
        ["term", "usr1", "imagesig", "stubborn"].iter().all(|s| all_running(st, s, 1))
    });
    let t = Instant::now();
    a.down();
    let took = t.elapsed();
    let marks = a.root().join("volumes/marks");
    assert_eq!(read(marks.join("term")).trim(), "term", "stop_signal SIGTERM");
    assert_eq!(read(marks.join("usr1")).trim(), "usr1", "stop_signal SIGUSR1");
    assert_eq!(read(marks.join("imagesig")).trim(), "int", "the image's StopSignal (SIGINT) when none is set");
    assert_eq!(read(marks.join("stubborn")).trim(), "term", "stubborn got its stop signal first");
    let ticks = read(marks.join("after")).lines().count();
    assert!(ticks >= 2, "stubborn ran on after its stop signal (a grace period), {ticks} ticks");
    // 2 s grace, not the 10 s default (nor the others' 20 s: they exited on their signal).
    assert!(took < Duration::from_secs(9), "skiff down took {took:?}: stop_grace_period 2s not honoured?");
}

#[test]
fn limits_are_applied_to_the_container_cgroup() {
    let mut a = agent();
    a.write_manifest(&format!(
        "services:\n{}",
        sleeper("limited", 1, "    mem_limit: 64m\n    pids_limit: 50\n    cpus: 0.5\n")
    ));
    a.start();
    let st = a.wait_running("limited", 1);
    let pid = pid_of(&st, "limited-1") as i32;
    let warnings = service(&st, "limited")["warnings"].clone();
    match v1_cgroup_dir(pid, "memory") {
        Some(d) => {
            assert_eq!(read(d.join("memory.limit_in_bytes")).trim(), "67108864", "{}", d.display());
            // And from inside the container (its cgroup namespace shows its own cgroup).
            let out = a.rt(&["exec", "limited-1", "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]).ok();
            assert_eq!(out.stdout.trim(), "67108864", "{out}");
            assert!(warnings.as_array().is_some_and(|w| w.is_empty()), "no warnings here: {warnings}");
        }
        None => {
            let v2 = read(format!("/proc/{pid}/cgroup"));
            let unified = read("/sys/fs/cgroup/unified/cgroup.controllers");
            if read("/sys/fs/cgroup/cgroup.controllers").contains("memory") || unified.contains("memory") {
                let path = v2.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("/");
                let base = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
                    "/sys/fs/cgroup"
                } else {
                    "/sys/fs/cgroup/unified"
                };
                let max = read(format!("{base}{path}/memory.max"));
                assert_eq!(max.trim(), "67108864", "cgroup2 memory.max");
            } else {
                // No memory controller (a Pi kernel): runs anyway, and says so.
                assert!(warnings.to_string().contains("memory"), "a warning names the missing controller: {warnings}");
            }
        }
    }
    if let Some(d) = v1_cgroup_dir(pid, "pids") {
        assert_eq!(read(d.join("pids.max")).trim(), "50", "{}", d.display());
    }
    if let Some(d) = v1_cgroup_dir(pid, "cpu") {
        let quota: f64 = read(d.join("cpu.cfs_quota_us")).trim().parse().unwrap_or(0.0);
        let period: f64 = read(d.join("cpu.cfs_period_us")).trim().parse().unwrap_or(1.0);
        assert!((quota / period - 0.5).abs() < 0.01, "cpus 0.5: quota {quota} / period {period}");
    }
    a.down();
}

/// The memory limit of a process's memory cgroup: v1 `memory.limit_in_bytes`, else cgroup2
/// `memory.max` (None when the host has no memory controller to read it from).
fn memory_limit(pid: i32) -> Option<String> {
    if let Some(d) = v1_cgroup_dir(pid, "memory") {
        return Some(read(d.join("memory.limit_in_bytes")).trim().to_string());
    }
    let path = read(format!("/proc/{pid}/cgroup")).lines().find_map(|l| l.strip_prefix("0::").map(String::from))?;
    let base = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .find(|b| read(format!("{b}/cgroup.controllers")).split_whitespace().any(|c| c == "memory"))?;
    Some(read(format!("{base}{path}/memory.max")).trim().to_string())
}

/// An agent that sees `proc_cgroups` as /proc/cgroups: it runs in a private mount namespace
/// (`unshare -m`) where a copy is bind-mounted over the file. Its shims and the runtime it calls
/// see the same; nothing outside that namespace does.
fn agent_seeing_proc_cgroups(proc_cgroups: &str) -> Agent {
    let mut a = agent();
    let file = a.dir().join("proc-cgroups");
    std::fs::write(&file, proc_cgroups).expect("write the copy of /proc/cgroups");
    a.wrap([
        "unshare".as_ref(),
        "--mount".as_ref(),
        "--propagation".as_ref(),
        "private".as_ref(),
        "sh".as_ref(),
        "-c".as_ref(),
        r#"mount --bind "$0" /proc/cgroups && exec "$@""#.as_ref(),
        file.as_os_str(),
    ]);
    a
}

/// Issue 4: on a kernel with the memory cgroup controller disabled (`cgroup_disable=memory`,
/// as Raspberry Pi kernels ship) a service with `mem_limit` still runs, without the limit, and
/// a warning names the controller in the agent's log and in status. Simulated with real kernel
/// features: the agent runs in a mount namespace of its own whose /proc/cgroups is a copy with
/// memory's `enabled` column 0. The control runs the same way with an unmodified copy and must
/// get the limit and no warning (so neither the namespace nor the copy is what drops it).
#[test]
fn a_kernel_without_the_memory_controller_runs_the_service_without_the_limit_and_warns() {
    if skiff_tests::which("unshare").is_none() {
        skip("unshare (util-linux) is not installed");
        return;
    }
    let host = read("/proc/cgroups");
    let enabled = |text: &str| {
        text.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.first() == Some(&"memory"))
            .and_then(|f| f.get(3).map(|e| e.to_string()))
    };
    if enabled(&host).as_deref() != Some("1") || memory_limit(std::process::id() as i32).is_none() {
        skip("this kernel has no memory cgroup controller to take away");
        return;
    }
    let doctored: String = host
        .lines()
        .map(|l| {
            let mut f: Vec<&str> = l.split('\t').collect();
            if f.first() == Some(&"memory") && f.len() >= 4 {
                f[3] = "0";
            }
            f.join("\t") + "\n"
        })
        .collect();
    assert_eq!(enabled(&doctored).as_deref(), Some("0"), "the copy disables memory:\n{doctored}");

    const MIB32: &str = "33554432";
    let manifest = format!("services:\n{}", sleeper("capped", 1, "    mem_limit: 32m\n"));
    let mut control = agent_seeing_proc_cgroups(&host);
    let mut nomem = agent_seeing_proc_cgroups(&doctored);
    for a in [&mut control, &mut nomem] {
        a.write_manifest(&manifest);
        a.start();
    }
    // Each agent sees its copy, in a mount namespace of its own; this process still sees the
    // kernel's file (nothing global changed).
    for (a, want) in [(&mut control, "1"), (&mut nomem, "0")] {
        let pid = a.pid();
        let seen = read(format!("/proc/{pid}/root/proc/cgroups"));
        assert_eq!(enabled(&seen).as_deref(), Some(want), "the agent's /proc/cgroups:\n{seen}");
        let ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).expect("the agent's mount namespace");
        assert_ne!(ns, std::fs::read_link("/proc/self/ns/mnt").expect("our mount namespace"));
    }
    assert_eq!(enabled(&read("/proc/cgroups")).as_deref(), Some("1"), "the host's /proc/cgroups is untouched");

    // The control: the limit is applied, no warning anywhere.
    let st = control.wait_running("capped", 1);
    let pid = pid_of(&st, "capped-1") as i32;
    assert_eq!(memory_limit(pid).as_deref(), Some(MIB32), "control: mem_limit 32m is applied");
    let warnings = service(&st, "capped")["warnings"].clone();
    assert!(warnings.as_array().is_some_and(|w| w.is_empty()), "control: no warnings: {warnings}");
    assert!(!control.log().contains("warning: memory limit"), "control logged a warning:\n{}", control.log());

    // No memory controller: the replica runs (its own command, in the runtime), its memory
    // cgroup has no 32 MiB limit, and status and log name the missing controller.
    let st = nomem.wait_running("capped", 1);
    let pid = pid_of(&st, "capped-1") as i32;
    wait_comm(pid as i64, "sleep"); // the manifest's command runs
    assert_eq!(nomem.rt_pid("capped-1"), pid as i64, "status pid vs runtime state");
    let limit = memory_limit(pid).unwrap_or_else(|| panic!("no memory cgroup for {pid}"));
    assert_ne!(limit, MIB32, "the limit was applied on a kernel that 'lacks' the controller");
    let warnings = service(&st, "capped")["warnings"].clone();
    let named = |w: &str| w.contains("memory limit not applied") && w.contains("no memory cgroup controller");
    assert!(
        warnings.as_array().is_some_and(|w| w.len() == 1 && w[0].as_str().is_some_and(named)),
        "status names the missing controller: {warnings}"
    );
    let log = nomem.log();
    assert!(
        log.lines().any(|l| l.contains("capped-1: warning:") && named(l)),
        "the agent's log names the missing controller:\n{log}"
    );

    // `skiff down` from this (the host's) mount namespace stops everything: afterwards no
    // process is left in the agents' namespaces (so their private mounts are gone with them),
    // no cgroup of the roots, nothing mounted under the scratch dirs. The namespace is held
    // open while it is searched: once its last process is gone the kernel frees its inode
    // number, and the next mount namespace made (a container of a test running beside this
    // one) may get the same number, and so the same `mnt:[N]` name.
    for a in [&mut control, &mut nomem] {
        let path = format!("/proc/{}/ns/mnt", a.pid());
        let _held = std::fs::File::open(&path).expect("open the agent's mount namespace");
        let ns = std::fs::read_link(&path).expect("the agent's mount namespace");
        a.down();
        let left: Vec<i32> = skiff_tests::processes()
            .into_iter()
            .filter(|p| p.state != 'Z' && std::fs::read_link(format!("/proc/{}/ns/mnt", p.pid)).is_ok_and(|l| l == ns))
            .map(|p| p.pid)
            .collect();
        assert!(left.is_empty(), "processes left in the agent's mount namespace {ns:?}: {left:?}");
        let parent = a.cgroup_parent().trim_start_matches('/').to_string();
        for m in skiff_tests::cgroup_mounts() {
            for d in [m.mount_point.join(&parent), m.mount_point.join(m.own.trim_start_matches('/')).join(&parent)] {
                assert!(!d.exists(), "skiff down left the cgroup {}", d.display());
            }
        }
        let mounts: Vec<_> = skiff_tests::mount_points().into_iter().filter(|m| m.starts_with(a.dir())).collect();
        assert!(mounts.is_empty(), "mounts left under {}: {mounts:?}", a.dir().display());
    }
}

/// Issue 14: the memory controller present in the kernel (/proc/cgroups says enabled) but no
/// hierarchy of it mounted, so no runtime can apply a memory limit. The agent runs in a mount
/// namespace of its own (`unshare -m`) where /sys/fs/cgroup/memory is unmounted: a real kernel
/// state, seen alike by the agent, its shims and the runtime, and nowhere else. The service
/// with `mem_limit` must run without the limit (the agent must not hand the runtime a limit it
/// cannot apply: the runtime refuses it, and the replica never started), with the warning on
/// the service, the host's finding (`skiff check`'s) in status, and both in the log.
#[test]
fn an_unmounted_memory_hierarchy_runs_the_service_without_the_limit_and_warns() {
    if skiff_tests::which("unshare").is_none() {
        skip("unshare (util-linux) is not installed");
        return;
    }
    if !Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() {
        skip("no v1 memory hierarchy at /sys/fs/cgroup/memory to hide");
        return;
    }
    const MIB32: &str = "33554432";
    let mut a = agent();
    a.wrap([
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        r#"umount /sys/fs/cgroup/memory && exec "$@""#,
        "sh",
    ]);
    a.write_manifest(&format!("services:\n{}", sleeper("capped", 1, "    mem_limit: 32m\n")));
    a.start();
    // The agent's namespace lacks the mount; this one still has it.
    let agent_mounts = read(format!("/proc/{}/mountinfo", a.pid()));
    assert!(!agent_mounts.contains(" /sys/fs/cgroup/memory "), "the agent still sees the memory hierarchy");
    assert!(read("/proc/self/mountinfo").contains(" /sys/fs/cgroup/memory "), "the host lost its memory hierarchy");

    // Running, or given up on (the old agent: the runtime refused the limit).
    let st = a.wait_status("capped running or failing", |st| {
        let r = &st["services"].as_array().and_then(|s| s.iter().find(|s| s["name"] == "capped")).cloned();
        r.as_ref().is_some_and(|s| {
            s["running_replicas"] == 1
                || s["replicas"].as_array().is_some_and(|rs| {
                    rs.iter().any(|r| {
                        r["restarts"].as_u64().unwrap_or(0) > 0 || r["state"] == "backoff" || r["state"] == "failed"
                    })
                })
        })
    });
    assert!(
        all_running(&st, "capped", 1),
        "the replica does not run without the memory hierarchy:\n{st:#}\n{}",
        a.log()
    );
    let pid = pid_of(&st, "capped-1") as i32;
    wait_comm(pid as i64, "sleep");
    let limit = memory_limit(pid).unwrap_or_else(|| panic!("no memory cgroup for {pid}"));
    assert_ne!(limit, MIB32, "a 32 MiB limit was applied where no memory hierarchy is mounted");

    let named = |w: &str| w.contains("memory limit not applied") && w.contains("no memory cgroup controller");
    let warnings = service(&st, "capped")["warnings"].clone();
    assert!(
        warnings.as_array().is_some_and(|w| w.len() == 1 && w[0].as_str().is_some_and(named)),
        "status names the missing controller on the service: {warnings}"
    );
    let host = st["host"]["findings"].as_array().cloned().unwrap_or_default();
    let finding = host
        .iter()
        .find(|f| {
            f["topic"] == "cgroups" && f["message"].as_str().is_some_and(|m| m.starts_with("no memory controller"))
        })
        .unwrap_or_else(|| panic!("no host finding for the memory controller: {:#}", st["host"]));
    assert_eq!(finding["level"], "warning", "{finding}");
    assert!(finding["message"].as_str().unwrap().contains("no v1 hierarchy of it is mounted"), "{finding}");
    assert!(
        finding["fix"].as_str().unwrap().contains("mount -t cgroup -o memory cgroup /sys/fs/cgroup/memory"),
        "{finding}"
    );
    let log = a.log();
    assert!(
        log.lines().any(|l| l.contains("capped-1: warning:") && named(l)),
        "the log names it for the replica:\n{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("host warning: cgroups: no memory controller")),
        "the log has the host's finding:\n{log}"
    );
    // `skiff status` shows it too.
    let out = Command::new(SKIFF).args(["status", "--listen", &a.listen()]).output().expect("skiff status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("warning: host: cgroups: no memory controller"), "{text}");
    a.down();
    assert!(read("/proc/self/mountinfo").contains(" /sys/fs/cgroup/memory "), "the host lost its memory hierarchy");
}

#[test]
fn an_updated_dependency_restarts_dependents_that_ask_for_it() {
    let mut a = agent();
    let manifest = |gen: u32| {
        format!(
            "services:\n{}{}{}",
            sleeper("db", 1, &format!("    environment:\n      GEN: \"{gen}\"\n")),
            sleeper(
                "app",
                1,
                "    depends_on:\n      db:\n        condition: service_started\n        restart: true\n"
            ),
            sleeper("other", 1, "    depends_on:\n      db:\n        condition: service_started\n"),
        )
    };
    a.write_manifest(&manifest(1));
    a.start();
    let st = a.wait_status("all running", |st| {
        all_running(st, "db", 1) && all_running(st, "app", 1) && all_running(st, "other", 1)
    });
    let (db_old, app_old, other_old) = (pid_of(&st, "db-1"), pid_of(&st, "app-1"), pid_of(&st, "other-1"));
    // Something in app's writable layer: a restart keeps it (a replacement would not).
    let out = a.rt(&["exec", "--", "app-1", "sh", "-c", "echo kept > /tmp/marker"]);
    assert!(out.success(), "{out}");

    a.write_manifest(&manifest(2));
    let st = a.wait_status("db replaced and app restarted", |st| {
        all_running(st, "db", 1)
            && all_running(st, "app", 1)
            && pid_of(st, "db-1") != db_old
            && pid_of(st, "app-1") != app_old
    });
    assert_eq!(pid_of(&st, "other-1"), other_old, "without restart: true a dependent is not touched");
    assert_eq!(replica(&st, "app-1")["restarts"], 0, "an update of a dependency is not a crash restart");
    let out = a.rt(&["exec", "--", "app-1", "cat", "/tmp/marker"]);
    assert!(out.success() && out.stdout.contains("kept"), "app was restarted, not replaced: {out}");
    a.down();
}

/// Issue 13: replacing the `skiff` binary on disk while the agent runs (an upgrade by package
/// or `hack/install`: a new file renamed over the old one) must not stop container starts: a
/// killed replica comes back and a scale-up starts new ones. Before, the shim was started from
/// `current_exe()`, which named `.../skiff (deleted)` by then.
#[test]
fn replacing_the_binary_on_disk_keeps_containers_starting() {
    let bin = skiff_tests::Scratch::new("skiff-bin");
    let exe = bin.join("skiff");
    std::fs::copy(SKIFF, &exe).expect("copy skiff");
    let shim = bin.join("skiff-shim");
    std::fs::copy(env!("CARGO_BIN_EXE_skiff-shim"), &shim).expect("copy skiff-shim");
    let mut a = Agent::new(&exe);
    a.write_manifest(&format!(
        "services:\n{}",
        sleeper("web", 1, "      restart_policy:\n        condition: any\n        delay: 100ms\n")
    ));
    a.start();
    let st = a.wait_running("web", 1);
    let before = pid_of(&st, "web-1");
    // The shims are the small skiff-shim next to the agent's binary.
    let shim_exe = |pid: i32| std::fs::read_link(format!("/proc/{pid}/exe")).expect("readlink shim");
    for (id, pid) in a.shim_pids() {
        assert_eq!(shim_exe(pid), shim, "{id}'s shim runs skiff-shim");
    }
    // The upgrade: new files renamed over the running binaries.
    for (from, to) in [(SKIFF, &exe), (env!("CARGO_BIN_EXE_skiff-shim"), &shim)] {
        let new = bin.join("new");
        std::fs::copy(from, &new).expect("copy");
        std::fs::rename(&new, to).expect("rename over the running binary");
    }
    let target = std::fs::read_link(format!("/proc/{}/exe", a.pid())).expect("readlink");
    assert!(target.to_string_lossy().ends_with("(deleted)"), "the agent's binary is gone from disk: {target:?}");
    skiff_tests::agent::kill(before as i32, libc::SIGKILL);
    a.wait_status("web-1 restarted", |st| {
        all_running(st, "web", 1) && replica(st, "web-1")["pid"].as_i64().is_some_and(|p| p != before)
    });
    let out = a.skiff(&["scale", "web=3"]);
    assert!(out.success(), "{out}");
    a.wait_running("web", 3);
    // Started from the skiff-shim the agent opened at start (its file is gone from disk now).
    for (id, pid) in a.shim_pids() {
        let target = shim_exe(pid).to_string_lossy().to_string();
        assert!(target.contains("skiff-shim"), "{id}'s shim: {target}");
    }
    a.down();
}

/// Issue 13: `network_mode: host` gets the host's /etc/hosts, /etc/resolv.conf and hostname (as
/// Docker gives): `localhost` resolves inside (Homebridge's own check failed on it).
#[test]
fn host_networking_gets_the_hosts_name_files_and_hostname() {
    let mut a = agent();
    a.write_manifest(&format!("services:\n{}", sleeper("web", 1, "    network_mode: host\n")));
    a.start();
    a.wait_running("web", 1);
    let inside = |args: &[&str]| {
        let mut v = vec!["exec", "--", "web-1"];
        v.extend_from_slice(args);
        let out = a.rt(&v);
        assert!(out.success(), "{out}");
        out.stdout
    };
    let host = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    assert_eq!(inside(&["cat", "/etc/hosts"]), host("/etc/hosts"));
    assert_eq!(inside(&["cat", "/etc/resolv.conf"]), host("/etc/resolv.conf"));
    assert_eq!(inside(&["hostname"]).trim(), host("/proc/sys/kernel/hostname").trim());
    // localhost resolves (busybox's getent-less check: ping -c1 would need a capability).
    let out = inside(&["sh", "-c", "grep -qw localhost /etc/hosts && echo ok"]);
    assert_eq!(out.trim(), "ok");
    a.down();
}
