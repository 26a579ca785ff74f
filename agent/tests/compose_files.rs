//! A manifest made of several files (`include:`, `extends: {file:}`), `profiles:` and
//! `container_name`, run by a real agent: the services of every file run, an edit of an
//! included file (in another directory) or of `.env` is a change of the manifest, profiles
//! turn services on and off, and `container_name` is the replica's host name.

use std::process::Command;

use serde_json::Value;
use skiff_tests::agent::{replica_ids, Agent};
use skiff_tests::registry::{Registry, BUSYBOX_OCI};

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

fn sleeper(name: &str, replicas: u32, extra: &str) -> String {
    format!(
        "  {name}:\n    image: {img}\n    command: [\"sleep\", \"1000\"]\n    stop_grace_period: 1s\n    deploy:\n      replicas: {replicas}\n{extra}",
        img = Registry::shared().image(BUSYBOX_OCI)
    )
}

fn ids(st: &Value, service: &str) -> Vec<String> {
    replica_ids(st, service)
}

#[test]
fn included_files_extends_profiles_and_container_name_run_and_reload() {
    let mut a = Agent::new(SKIFF);
    let extra = a.dir().join("extra");
    std::fs::create_dir_all(&extra).unwrap();
    let included = extra.join("db.yaml");
    std::fs::write(&included, format!("services:\n{}", sleeper("db", 1, ""))).unwrap();
    std::fs::write(extra.join("base.yaml"), format!("services:\n{}", sleeper("base", 1, "    labels: {from: base}\n")))
        .unwrap();
    a.write_manifest(&format!(
        "include: [{inc}]\nservices:\n  web:\n    extends: {{file: {base}, service: base}}\n    container_name: frontdoor\n{debug}",
        inc = included.display(),
        base = extra.join("base.yaml").display(),
        debug = sleeper("debug", 1, "    profiles: [debug]\n"),
    ));
    a.start();
    let st = a.wait_status("web and db running", |st| {
        skiff_tests::agent::all_running(st, "web", 1) && skiff_tests::agent::all_running(st, "db", 1)
    });
    assert!(ids(&st, "debug").is_empty(), "debug's profile is not active: {st:#}");

    // container_name is the host name.
    let pid = skiff_tests::agent::pids(&st, "web")["web-1"];
    let out = Command::new("nsenter").args(["--uts", "--target", &pid.to_string(), "hostname"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "frontdoor");

    // An edit of the included file, in another directory, is a change of the manifest.
    std::fs::write(&included, format!("services:\n{}", sleeper("db", 2, ""))).unwrap();
    a.wait_running("db", 2);

    // So is `.env` next to the manifest: it activates the profile.
    std::fs::write(a.manifest_path().parent().unwrap().join(".env"), "SKIFF_PROFILES=debug\n").unwrap();
    a.wait_running("debug", 1);
    std::fs::write(a.manifest_path().parent().unwrap().join(".env"), "SKIFF_PROFILES=\n").unwrap();
    a.wait_status("debug gone", |st| ids(st, "debug").is_empty());
    a.down();
}
