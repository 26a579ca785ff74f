//! Issue 12: revisions, rolling updates, rollbacks and scaling of a running service, end to end
//! (the semantics in detail are the rollout machine's unit tests: agent/src/rollout/tests.rs).
//! The zero-failed-requests update under a client loop is in network.rs (it needs the bridge).

use serde_json::Value;
use skiff_tests::agent::{metric, parse_metrics, service, Agent, WAIT};
use skiff_tests::registry::{Registry, BUSYBOX_DOCKER, BUSYBOX_OCI};
use skiff_tests::wait_until;

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

/// A web-like service of `replicas` busybox replicas whose definition differs by `gen`; healthy
/// when `/tmp/ok` exists (`bad`: never), checked every 200 ms.
fn manifest(image: &str, replicas: u32, gen: u32, bad: bool, update: &str) -> String {
    let ok = if bad { "" } else { "touch /tmp/ok; " };
    format!(
        r#"services:
  web:
    image: {image}
    command: ["sh", "-c", "{ok}exec sleep 3600"]
    environment: {{GEN: "{gen}"}}
    stop_grace_period: 1s
    healthcheck:
      test: ["CMD", "test", "-e", "/tmp/ok"]
      interval: 200ms
      timeout: 2s
      retries: 1
    deploy:
      replicas: {replicas}
      update_config: {update}
    x-skiff: {{progress_deadline: 4s}}
"#
    )
}

fn replicas(st: &Value) -> Vec<Value> {
    service(st, "web")["replicas"].as_array().cloned().unwrap_or_default()
}

/// Every replica of web running, healthy, on `rev`, `n` of them, and no other.
fn all_on(st: &Value, rev: u64, n: usize) -> bool {
    let rs = replicas(st);
    rs.len() == n
        && rs.iter().all(|r| r["state"] == "running" && r["health"] == "healthy" && r["revision"].as_u64() == Some(rev))
}

fn update_state(st: &Value) -> String {
    service(st, "web")["update"]["state"].as_str().unwrap_or("").to_string()
}

fn agent(image: &str) -> Agent {
    let a = Agent::new(SKIFF);
    let out = a.skiff(&["pull", image]);
    assert!(out.success(), "{out}");
    a
}

#[test]
fn a_bad_update_is_rolled_back_automatically_and_not_tried_again() {
    let image = Registry::shared().image(BUSYBOX_OCI);
    let mut a = agent(&image);
    let cfg = "{parallelism: 1, monitor: 1s, failure_action: rollback}";
    a.write_manifest(&manifest(&image, 3, 1, false, cfg));
    a.start();
    let st = a.wait_status("3 healthy replicas on revision 1", |st| all_on(st, 1, 3));
    let pids: Vec<i64> = replicas(&st).iter().map(|r| r["pid"].as_i64().unwrap_or(0)).collect();
    // Revision 2 never turns healthy: its first replica is not ready within the deadline.
    a.write_manifest(&manifest(&image, 3, 2, true, cfg));
    let st = a.wait_status("the update rolled back", |st| update_state(st) == "rolled_back" && all_on(st, 1, 3));
    let svc = service(&st, "web");
    assert_eq!((svc["revision"].as_u64(), svc["manifest_revision"].as_u64()), (Some(1), Some(2)), "{svc:#}");
    assert!(svc["override"].as_str().is_some_and(|o| o.contains("revision 2 failed")), "{svc:#}");
    assert!(svc["update"]["message"].as_str().is_some_and(|m| m.contains("rolled back to revision 1")), "{svc:#}");
    // Stop-first with parallelism 1: only web-1 was replaced; web-2 and web-3 never stopped.
    let now: Vec<i64> = replicas(&st).iter().map(|r| r["pid"].as_i64().unwrap_or(0)).collect();
    assert_eq!(now[1..], pids[1..], "only the first slot was touched");
    let log = a.log();
    assert!(log.contains("web: update to revision 2:"), "{log}");
    let m = parse_metrics(&a.metrics()).expect("metrics");
    assert_eq!(metric(&m, "skiff_service_revision", &[("service", "web")]), Some(1.0));
    assert_eq!(metric(&m, "skiff_update_state", &[("service", "web"), ("state", "rolled_back")]), Some(1.0));
    assert_eq!(metric(&m, "skiff_update_state", &[("service", "web"), ("state", "updating")]), Some(0.0));
    let text = a.skiff(&["status", "--listen", &a.listen()]);
    assert!(text.stdout.contains("revision 1 in force, manifest wants 2: rolled back: revision 2 failed"), "{text}");
    // The failed revision is not tried again while the manifest wants it...
    std::thread::sleep(std::time::Duration::from_secs(2));
    let st = a.status();
    assert!(all_on(&st, 1, 3) && update_state(&st) == "rolled_back", "{st:#}");
    // ...a new edit is a new revision, rolled out.
    a.write_manifest(&manifest(&image, 3, 3, false, cfg));
    a.wait_status("revision 3 in force", |st| all_on(st, 3, 3) && update_state(st) == "completed");
    a.down();
}

/// Replicas whose hostname is in `bad` fail their check: revision `gen` of 4 replicas, stop-first,
/// one at a time, 25% of failures tolerated.
fn picky(image: &str, gen: u32, bad: &str, flag_dir: &std::path::Path) -> String {
    format!(
        r#"services:
  web:
    image: {image}
    command: ["sh", "-c", "exec sleep 3600"]
    environment: {{GEN: "{gen}", BAD: " {bad} "}}
    volumes: ["{flags}:/flags"]
    stop_grace_period: 1s
    healthcheck:
      test: ["CMD-SHELL", "test -e /flags/ok || ! echo \"$$BAD\" | grep -q \" $$(hostname) \""]
      interval: 200ms
      timeout: 2s
      retries: 1
    deploy:
      replicas: 4
      update_config: {{parallelism: 1, monitor: 500ms, max_failure_ratio: 0.25}}
"#,
        flags = flag_dir.display()
    )
}

#[test]
fn max_failure_ratio_counts_strictly_and_a_paused_update_resumes() {
    let image = Registry::shared().image(BUSYBOX_OCI);
    let mut a = agent(&image);
    let flags = a.dir().join("flags");
    std::fs::create_dir_all(&flags).expect("flags dir");
    a.write_manifest(&picky(&image, 1, "", &flags));
    a.start();
    a.wait_status("4 healthy on revision 1", |st| all_on(st, 1, 4));
    // One failure of 4 is not more than 0.25: the update goes on and completes.
    a.write_manifest(&picky(&image, 2, "web-2", &flags));
    let st = a.wait_status("the update completed with one failure", |st| update_state(st) == "completed");
    let u = &service(&st, "web")["update"];
    assert_eq!((u["failed"].as_u64(), u["to"].as_u64()), (Some(1), Some(2)), "{u:#}");
    assert!(u["message"].as_str().is_some_and(|m| m.contains("1 of 4 replicas failed")), "{u:#}");
    // Two failures are more: the update pauses at the second; slots 3 and 4 keep revision 2.
    a.write_manifest(&picky(&image, 3, "web-1 web-2", &flags));
    let st = a.wait_status("the update paused", |st| update_state(st) == "paused");
    let u = &service(&st, "web")["update"];
    assert_eq!(u["failed"].as_u64(), Some(2), "{u:#}");
    assert!(u["message"].as_str().is_some_and(|m| m.contains("paused")), "{u:#}");
    let revs: Vec<u64> = replicas(&st).iter().filter_map(|r| r["revision"].as_u64()).collect();
    assert!(revs.contains(&2), "slots not reached keep revision 2: {revs:?}");
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(update_state(&a.status()), "paused", "paused stays paused");
    // The cause is fixed (the check passes now); `skiff rollout resume` goes on.
    std::fs::write(flags.join("ok"), "").expect("flag");
    let out = a.skiff(&["rollout", "resume", "web"]);
    assert!(out.success(), "{out}");
    a.wait_status("revision 3 completed after resume", |st| all_on(st, 3, 4) && update_state(st) == "completed");
    let out = a.skiff(&["rollout", "resume", "web"]);
    assert!(!out.success() && out.stderr.contains("no paused update"), "{out}");
    a.down();
}

/// `depends_on: {restart: true}`: the dependent restarts once the whole update of its
/// dependency completed, not once per replaced replica.
#[test]
fn dependents_restart_once_per_completed_update() {
    let image = Registry::shared().image(BUSYBOX_OCI);
    let mut a = agent(&image);
    let m = |gen: u32| {
        format!(
            "{}  app:\n    image: {image}\n    command: [\"sleep\", \"3600\"]\n    stop_grace_period: 1s\n    depends_on:\n      web: {{condition: service_started, restart: true}}\n",
            manifest(&image, 3, gen, false, "{parallelism: 1, monitor: 500ms}")
        )
    };
    a.write_manifest(&m(1));
    a.start();
    a.wait_status("web and app", |st| all_on(st, 1, 3) && skiff_tests::agent::all_running(st, "app", 1));
    a.write_manifest(&m(2));
    a.wait_status("web updated, app running", |st| {
        all_on(st, 2, 3) && update_state(st) == "completed" && skiff_tests::agent::all_running(st, "app", 1)
    });
    std::thread::sleep(std::time::Duration::from_secs(1));
    let restarts = a.log().matches("app-1: a service it depends on (restart: true) was updated").count();
    assert_eq!(restarts, 1, "app restarted once for the whole update:\n{}", a.log());
    a.down();
}

#[test]
fn scale_holds_across_an_agent_restart_and_ends_with_a_manifest_edit() {
    let image = Registry::shared().image(BUSYBOX_OCI);
    let mut a = agent(&image);
    a.write_manifest(&manifest(&image, 1, 1, false, "{}"));
    let out = a.skiff(&["scale", "web=3"]);
    assert!(!out.success() && out.stderr.contains("no agent is running"), "no agent: {out}");
    a.start();
    a.wait_status("1 replica", |st| all_on(st, 1, 1));
    let out = a.skiff(&["scale", "web=3"]);
    assert!(out.success(), "{out}");
    let st = a.wait_status("3 replicas", |st| all_on(st, 1, 3));
    assert_eq!(service(&st, "web")["scale"].as_u64(), Some(3), "{st:#}");
    assert!(service(&st, "web")["override"].as_str().is_some_and(|o| o.contains("skiff scale")), "{st:#}");
    let out = a.skiff(&["scale", "nosuch=2"]);
    assert!(!out.success() && out.stderr.contains("no service"), "{out}");
    // SIGKILL and restart: still 3 (the same containers, adopted).
    a.stop_with(libc::SIGKILL);
    a.start();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let st = a.wait_status("3 replicas after the restart", |st| all_on(st, 1, 3));
    assert_eq!(service(&st, "web")["desired_replicas"].as_u64(), Some(3));
    // The manifest changes the replicas: the override ends.
    a.write_manifest(&manifest(&image, 2, 1, false, "{}"));
    let st = a.wait_status("2 replicas", |st| all_on(st, 1, 2));
    assert!(service(&st, "web")["override"].is_null(), "{st:#}");
    // The service leaves the manifest: its record goes once its replicas are gone.
    let record = a.root().join("services/web.json");
    assert!(record.is_file());
    a.write_manifest("services: {}\n");
    wait_until("web's record removed", WAIT, || !record.exists());
    a.down();
}

#[test]
fn rollback_to_revision_1_works_offline_and_history_tells_the_story() {
    let reg = Registry::start();
    let image = reg.image(BUSYBOX_OCI);
    let mut a = agent(&image);
    a.write_manifest(&manifest(&image, 2, 1, false, "{parallelism: 0, monitor: 500ms}"));
    a.start();
    a.wait_status("revision 1", |st| all_on(st, 1, 2));
    for gen in 2..=3 {
        a.write_manifest(&manifest(&image, 2, gen, false, "{parallelism: 0, monitor: 500ms}"));
        a.wait_status("the next revision", |st| all_on(st, gen as u64, 2) && update_state(st) == "completed");
    }
    drop(reg); // offline from here
    let out = a.skiff(&["rollback", "web", "--to", "1"]);
    assert!(out.success(), "{out}");
    let st = a.wait_status("revision 1 back", |st| all_on(st, 1, 2) && update_state(st) == "rolled_back");
    let svc = service(&st, "web");
    assert_eq!((svc["revision"].as_u64(), svc["manifest_revision"].as_u64()), (Some(1), Some(3)));
    assert!(svc["override"].as_str().is_some_and(|o| o.contains("skiff rollback")), "{svc:#}");
    let out = a.skiff(&["history", "web"]);
    assert!(out.success(), "{out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines.len() >= 4, "{out}");
    assert!(lines[1].trim_start().starts_with('3') && lines[1].contains("environment"), "newest first: {out}");
    assert!(out.stdout.lines().any(|l| l.trim_start().starts_with('1') && l.contains("in force")), "{out}");
    // The default: the one before the one in force (none before 1).
    let out = a.skiff(&["rollback", "web"]);
    assert!(!out.success() && out.stderr.contains("no revision before 1"), "{out}");
    a.down();
}

#[test]
fn a_new_digest_of_the_same_tag_is_rolled_out_by_skiff_update() {
    let reg = Registry::start();
    let src = |name: &str| format!("docker://{}", reg.image(name));
    let out = reg.push(&src(BUSYBOX_OCI), "app:1", &["--src-tls-verify=false"]);
    assert!(out.success(), "{out}");
    let image = reg.image("app:1");
    let mut a = agent(&image);
    a.write_manifest(&manifest(&image, 2, 1, false, "{order: start-first, monitor: 500ms}"));
    a.start();
    let st = a.wait_status("revision 1", |st| all_on(st, 1, 2));
    let first = service(&st, "web")["image_digest"].as_str().unwrap_or_default().to_string();
    // The tag moves (the same busybox as a Docker manifest: another digest).
    let out = reg.push(&src(BUSYBOX_DOCKER), "app:1", &["--src-tls-verify=false"]);
    assert!(out.success(), "{out}");
    let out = a.skiff(&["update", "web"]);
    assert!(out.success(), "{out}");
    let st =
        a.wait_status("revision 2 (the new digest) in force", |st| all_on(st, 2, 2) && update_state(st) == "completed");
    let now = service(&st, "web")["image_digest"].as_str().unwrap_or_default().to_string();
    assert_ne!(now, first, "{st:#}");
    let out = a.skiff(&["history", "web"]);
    assert!(out.stdout.contains("image digest"), "{out}");
    wait_until("nothing left of the old slot containers", WAIT, || {
        replicas(&a.status()).iter().all(|r| r["revision"] == 2)
    });
    a.down();
}

/// The agent SIGKILLed at 10 moments of updates of 4 replicas (5 during a start-first update, 5
/// during a stop-first one), and started again each time: the update goes on from the
/// containers it adopts and completes; at no kill do more than replicas + parallelism
/// containers run (start-first), nor fewer than replicas - parallelism (stop-first).
#[test]
fn an_update_survives_agent_sigkills_at_any_moment() {
    let image = Registry::shared().image(BUSYBOX_OCI);
    let mut a = agent(&image);
    let cfg = |order: &str| format!("{{order: {order}, parallelism: 1, monitor: 500ms}}");
    a.write_manifest(&manifest(&image, 4, 1, false, &cfg("start-first")));
    a.start();
    a.wait_status("4 on revision 1", |st| all_on(st, 1, 4));
    // Moments spread over each update (which takes a few seconds), varied by the clock.
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_millis());
    let running = |a: &Agent| a.rt_list().iter().filter(|c| c["status"] == "running").count();
    for (rev, order) in [(2u32, "start-first"), (3, "stop-first")] {
        a.write_manifest(&manifest(&image, 4, rev, false, &cfg(order)));
        let mut seen = Vec::new();
        for i in 0..5u32 {
            let ms = 100 + (seed * (i + 7) + rev * 131) % 600;
            std::thread::sleep(std::time::Duration::from_millis(ms as u64));
            let during = update_state(&a.status()) == "updating";
            a.stop_with(libc::SIGKILL);
            let n = running(&a);
            seen.push((n, during));
            if order == "start-first" {
                assert!(n <= 5, "{order}, kill {i}: {n} containers run (4 replicas + parallelism 1 at most)");
            } else {
                assert!(n >= 3, "{order}, kill {i}: {n} containers run (4 replicas - parallelism 1 at least)");
            }
            a.start();
        }
        a.wait_status("the update completed after the kills", |st| {
            all_on(st, rev as u64, 4) && update_state(st) == "completed"
        });
        wait_until("only the 4 containers of the new revision left", WAIT, || running(&a) == 4);
        eprintln!("{order}: containers running at each kill, and whether it was mid-update: {seen:?}");
        assert!(seen.iter().filter(|(_, d)| *d).count() >= 3, "{order}: most kills must fall in the update: {seen:?}");
    }
    a.down();
}

/// `pull_policy: every_2s`: a new digest of the tag is found by the HEAD poll, pulled and
/// rolled out with no command; with the registry gone the check fails, status says so (time
/// and error), the log says it once, and what runs keeps running.
#[test]
fn pull_policy_every_polls_the_tag_and_rolls_out_a_new_digest() {
    let reg = Registry::start();
    let src = |name: &str| format!("docker://{}", reg.image(name));
    let out = reg.push(&src(BUSYBOX_OCI), "app:2", &["--src-tls-verify=false"]);
    assert!(out.success(), "{out}");
    let image = reg.image("app:2");
    let mut a = agent(&image);
    let m = manifest(&image, 2, 1, false, "{parallelism: 2, monitor: 500ms}")
        .replace("    stop_grace_period: 1s\n", "    stop_grace_period: 1s\n    pull_policy: every_2s\n");
    a.write_manifest(&m);
    a.start();
    a.wait_status("revision 1", |st| all_on(st, 1, 2));
    let out = reg.push(&src(BUSYBOX_DOCKER), "app:2", &["--src-tls-verify=false"]);
    assert!(out.success(), "{out}");
    let st = a
        .wait_status("the new digest rolled out by the poll", |st| all_on(st, 2, 2) && update_state(st) == "completed");
    let check = &service(&st, "web")["image_check"];
    assert!(check["at"].is_string(), "{check:#}");
    assert!(a.log().contains("now names"), "{}", a.log());
    // The registry goes away: the checks fail, the replicas run on.
    drop(reg);
    let st = a.wait_status("a failed check in status", |st| service(st, "web")["image_check"]["error"].is_string());
    assert!(all_on(&st, 2, 2), "{st:#}");
    std::thread::sleep(std::time::Duration::from_secs(5));
    let st = a.status();
    assert!(all_on(&st, 2, 2), "{st:#}");
    let fails = service(&st, "web")["image_check"]["counts"][3].as_u64().unwrap_or(0);
    assert!(fails >= 2, "checks go on failing: {st:#}");
    let said = a.log().matches("what runs keeps running").count();
    assert_eq!(said, 1, "the log says it once, not at every poll:\n{}", a.log());
    let m = parse_metrics(&a.metrics()).expect("metrics");
    assert!(
        metric(&m, "skiff_image_update_checks_total", &[("service", "web"), ("result", "error")]).unwrap_or(0.0) >= 2.0
    );
    assert!(
        metric(&m, "skiff_image_update_checks_total", &[("service", "web"), ("result", "new")]).unwrap_or(0.0) >= 1.0
    );
    a.down();
}

/// The scheduled checks are HEAD requests (no manifest GET: they are not pulls), and a 429 with
/// `Retry-After: 5` holds the next check back for those 5 s although the schedule says 1 s.
#[test]
fn image_checks_are_heads_and_a_429_is_honoured() {
    use skiff_tests::registry::{Action, Answer, Fault, FaultProxy, Match};
    let reg = Registry::start();
    let proxy = FaultProxy::to(&reg);
    let image = proxy.image(BUSYBOX_OCI);
    let mut a = agent(&image);
    let pulled = proxy.requests().len();
    let m = manifest(&image, 1, 1, false, "{}")
        .replace("    stop_grace_period: 1s\n", "    stop_grace_period: 1s\n    pull_policy: every_1s\n");
    a.write_manifest(&m);
    a.start();
    a.wait_status("running", |st| all_on(st, 1, 1));
    let heads = |p: &FaultProxy| p.requests()[pulled..].iter().filter(|s| s.method == "HEAD").count();
    wait_until("two checks", WAIT, || heads(&proxy) >= 2);
    let since: Vec<String> = proxy.requests()[pulled..].iter().map(|s| format!("{} {}", s.method, s.path)).collect();
    assert!(since.iter().all(|r| r.starts_with("HEAD ") && r.contains("/manifests/")), "checks only HEAD: {since:?}");
    proxy.inject(Fault::new(
        Match::PathContains("/manifests/".into()),
        Action::Answer(Answer::new(429, "slow down").header("Retry-After", "5")),
    ));
    wait_until("the 429", WAIT, || proxy.requests().iter().any(|s| s.status == Some(429)));
    let at = heads(&proxy);
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(heads(&proxy), at, "no check within Retry-After");
    let st = a.status();
    let err = service(&st, "web")["image_check"]["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("429") && err.contains("5s"), "{st:#}");
    wait_until("checks again after Retry-After", WAIT, || heads(&proxy) > at);
    a.wait_status("the error gone", |st| service(st, "web")["image_check"]["error"].is_null());
    a.down();
}

/// A new digest that fails its update is rolled back and remembered: later checks do not pull
/// or try it again, while the replicas run the earlier digest (status and `skiff images` say
/// which); the next digest of the tag is rolled out.
#[test]
fn a_digest_that_failed_is_not_tried_again_until_the_tag_moves() {
    use skiff_tests::registry::LAYERS;
    let reg = Registry::start();
    let src = |name: &str| format!("docker://{}", reg.image(name));
    let push = |name: &str| {
        let out = reg.push(&src(name), "app:3", &["--src-tls-verify=false"]);
        assert!(out.success(), "{out}");
    };
    push(BUSYBOX_OCI);
    let image = reg.image("app:3");
    let mut a = agent(&image);
    // Healthy unless the image has /fixtures (the layers test image does).
    let m = manifest(&image, 2, 1, false, "{parallelism: 2, monitor: 500ms, failure_action: rollback}")
        .replace("touch /tmp/ok; ", "[ -e /fixtures ] || touch /tmp/ok; ")
        .replace("    stop_grace_period: 1s\n", "    stop_grace_period: 1s\n    pull_policy: every_2s\n");
    a.write_manifest(&m);
    a.start();
    let st = a.wait_status("revision 1", |st| all_on(st, 1, 2));
    let good = service(&st, "web")["image_digest"].as_str().unwrap_or_default().to_string();
    push(LAYERS);
    let st = a.wait_status("the bad digest rolled back", |st| update_state(st) == "rolled_back" && all_on(st, 1, 2));
    assert_eq!(service(&st, "web")["image_digest"].as_str(), Some(good.as_str()), "status names what runs");
    for r in replicas(&st) {
        assert_eq!(r["image_digest"].as_str(), Some(good.as_str()), "{r:#}");
    }
    // Several polls later: no new update, no new pull.
    let pulls = a.log().matches("pulling ").count();
    let checks = |st: &Value| service(st, "web")["image_check"]["counts"][0].as_u64().unwrap_or(0);
    let before = checks(&a.status());
    wait_until("two more checks", WAIT, || checks(&a.status()) >= before + 2);
    let st = a.status();
    assert!(all_on(&st, 1, 2) && update_state(&st) == "rolled_back", "{st:#}");
    assert_eq!(a.log().matches("pulling ").count(), pulls, "the failed digest is not pulled again");
    let out = a.skiff(&["images"]);
    assert!(out.stdout.contains("(earlier digest)") && out.stdout.contains("web (revision 1, in force)"), "{out}");
    let out = a.skiff(&["history", "web"]);
    assert!(out.stdout.lines().any(|l| l.starts_with('2') && l.contains("failed")), "{out}");
    // The tag moves again: that digest is rolled out.
    push(BUSYBOX_DOCKER);
    a.wait_status("revision 3 in force", |st| all_on(st, 3, 2) && update_state(st) == "completed");
    a.down();
}

/// `pull_policy: always` checks the registry before each replica start: a replica that dies
/// after the tag moved brings the new digest in (rolled out to every replica).
#[test]
fn pull_policy_always_checks_before_each_start() {
    let reg = Registry::start();
    let src = |name: &str| format!("docker://{}", reg.image(name));
    let out = reg.push(&src(BUSYBOX_OCI), "app:4", &["--src-tls-verify=false"]);
    assert!(out.success(), "{out}");
    let image = reg.image("app:4");
    let mut a = agent(&image);
    let m = manifest(&image, 2, 1, false, "{parallelism: 2, monitor: 500ms}").replace(
        "    stop_grace_period: 1s\n",
        "    stop_grace_period: 1s\n    pull_policy: always\n    restart: always\n",
    );
    a.write_manifest(&m);
    a.start();
    let st = a.wait_status("revision 1", |st| all_on(st, 1, 2));
    let out = reg.push(&src(BUSYBOX_DOCKER), "app:4", &["--src-tls-verify=false"]);
    assert!(out.success(), "{out}");
    // No start, no check: what runs stays. (`always` checks at most every 10 s: the next
    // start comes after that.)
    std::thread::sleep(std::time::Duration::from_secs(10));
    assert!(all_on(&a.status(), 1, 2), "no start, no check");
    let pid = replicas(&st)[0]["pid"].as_i64().unwrap_or(0) as i32;
    skiff_tests::agent::kill(pid, libc::SIGKILL);
    a.wait_status("the new digest rolled out", |st| all_on(st, 2, 2) && update_state(st) == "completed");
    a.down();
}

/// An agent SIGKILLed after it spawned a replica's shim but before it heard the start back:
/// the next agent adopts the running container with the health check and stop signal its
/// preparation found (not "no check", which made it count as ready and take traffic
/// unchecked; found by hack/bench-update), and with its pid, also when it was adopted before
/// the shim's `create` wrote it (a flake of the network test showed a running replica without
/// one).
#[test]
fn a_replica_adopted_mid_start_keeps_its_health_check_and_stop_signal() {
    let work = skiff_tests::Scratch::new("slow-runtime");
    let flag = work.join("slow");
    let wrapper = work.join("runtime");
    // Sleeps 3 s before the runtime command the flag file names (`create` or `start`).
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = \"$(cat {flag} 2>/dev/null)\" ] && sleep 3; done\nexec {real} \"$@\"\n",
            flag = flag.display(),
            real = skiff_tests::runtime_bin().display()
        ),
    )
    .expect("write the wrapper");
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let image = Registry::shared().image(BUSYBOX_OCI);
    let mut a = Agent::with_runtime(SKIFF, &wrapper);
    let out = a.skiff(&["pull", &image]);
    assert!(out.success(), "{out}");
    a.write_manifest(&manifest(&image, 1, 1, false, "{monitor: 500ms}"));
    a.start();
    a.wait_status("revision 1", |st| all_on(st, 1, 1));
    let shim_pid = a.run_dir().join("shims/web-1/shim.pid");
    for (rev, step) in [(2u32, "create"), (3, "start")] {
        std::fs::write(&flag, step).expect("flag");
        let old = std::fs::read_to_string(&shim_pid).unwrap_or_default();
        a.write_manifest(&manifest(&image, 1, rev, false, "{monitor: 500ms}"));
        wait_until("the new shim spawned", WAIT, || {
            std::fs::read_to_string(&shim_pid).is_ok_and(|p| !p.is_empty() && p != old)
        });
        std::thread::sleep(std::time::Duration::from_millis(500));
        a.stop_with(libc::SIGKILL);
        std::fs::remove_file(&flag).expect("unflag");
        a.start();
        a.wait_status(&format!("revision {rev} healthy, with its pid, after adoption mid-{step}"), |st| {
            all_on(st, rev as u64, 1)
                && update_state(st) == "completed"
                && replicas(st)[0]["pid"].as_i64().is_some_and(|p| p > 0)
        });
        let rec: Value =
            serde_json::from_slice(&std::fs::read(a.root().join("containers/web-1/replica.json")).expect("record"))
                .expect("json");
        assert!(rec["healthcheck"].is_object(), "{rec:#}");
        assert_eq!(rec["stop_signal"], "SIGINT", "the image's StopSignal: {rec:#}");
    }
    a.down();
}

#[test]
fn a_replica_neither_healthy_nor_failed_fails_at_the_progress_deadline() {
    let image = Registry::shared().image(BUSYBOX_OCI);
    let mut a = agent(&image);
    a.write_manifest(&manifest(&image, 2, 1, false, "{monitor: 500ms}"));
    a.start();
    a.wait_status("revision 1", |st| all_on(st, 1, 2));
    let stuck = manifest(&image, 2, 2, true, "{monitor: 500ms}")
        .replace("      retries: 1\n", "      retries: 1\n      start_period: 1h\n");
    a.write_manifest(&stuck);
    let st = a.wait_status("the update paused by the deadline", |st| update_state(st) == "paused");
    let msg = service(&st, "web")["update"]["message"].as_str().unwrap_or_default().to_string();
    assert!(msg.contains("paused"), "{st:#}");
    assert!(a.log().contains("not ready within the progress deadline (4s)"), "{}", a.log());
    // The slot not reached still runs revision 1.
    assert!(replicas(&st).iter().any(|r| r["revision"] == 1 && r["state"] == "running"), "{st:#}");
    a.down();
}
