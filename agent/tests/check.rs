//! End-to-end tests of `skiff check` on this machine: the real kernel, cgroups, nft, store
//! filesystem and runtime. What each finding says about other boxes (a Raspberry Pi, pure v1,
//! a small box, a wrong clock) is unit-tested with their facts (agent/src/hostcheck/tests.rs).

use std::process::{Command, Output};

use serde_json::Value;

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

fn check(args: &[&str]) -> Output {
    let root = tempfile::tempdir().expect("a scratch root");
    let out = Command::new(SKIFF)
        .arg("--root")
        .arg(root.path().join("store"))
        .arg("check")
        .args(args)
        .output()
        .expect("run skiff check");
    // Nothing is made: the store's filesystem is that of its nearest existing directory.
    assert!(!root.path().join("store").exists(), "skiff check created the store");
    out
}

/// The cgroup layout of this machine, from its mounts (independently of skiff's code).
fn layout_here() -> &'static str {
    let mi = skiff_tests::read("/proc/self/mountinfo");
    let fs_at = |p: &str| {
        mi.lines()
            .filter_map(|l| {
                l.split_once(" - ").map(|(a, b)| (a.split(' ').nth(4).unwrap_or("").to_string(), b.to_string()))
            })
            .filter(|(m, _)| m == p)
            .map(|(_, b)| b.split(' ').next().unwrap_or("").to_string())
            .next_back()
    };
    match (fs_at("/sys/fs/cgroup").as_deref(), fs_at("/sys/fs/cgroup/unified").as_deref()) {
        (Some("cgroup2"), _) => "layout v2",
        (_, Some("cgroup2")) => "layout hybrid",
        _ => "layout v1",
    }
}

#[test]
fn skiff_check_on_this_machine_says_it_works_and_finds_the_layout_the_runtime_and_nft() {
    let runtime = skiff_tests::runtime_bin();
    let out = check(&["--runtime", runtime.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "exit status\n{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&format!("ok      cgroups: {}", layout_here())), "{text}");
    assert!(text.contains(&format!("ok      runtime: OCI runtime {}", runtime.display())), "{text}");
    if let Some(nft) = skiff_tests::which("nft") {
        assert!(text.contains(&format!("ok      network: nft: {}", nft.display())), "{text}");
    }
    for c in ["memory", "cpu", "pids"] {
        assert!(text.contains(&format!("ok      cgroups: {c} controller")), "{c}:\n{text}");
    }
    let last = text.lines().last().unwrap_or_default();
    assert!(last.starts_with("skiff will work here"), "the verdict is the last line:\n{text}");
    // Each warning has its fix on the next line.
    let lines: Vec<&str> = text.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if l.starts_with("warning ") || l.starts_with("error ") {
            assert!(lines.get(i + 1).is_some_and(|n| n.starts_with("        fix: ")), "no fix below {l:?}\n{text}");
        }
    }
}

#[test]
fn skiff_check_json_is_the_verdict_and_the_findings() {
    let runtime = skiff_tests::runtime_bin();
    let out = check(&["--json", "--runtime", runtime.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(v["verdict"] == "ok" || v["verdict"] == "warnings", "{v:#}");
    let findings = v["findings"].as_array().expect("findings");
    for f in findings {
        let mut keys: Vec<&String> = f.as_object().expect("an object").keys().collect();
        keys.sort();
        assert_eq!(keys, ["fix", "level", "message", "topic"], "{f}");
        assert!(["ok", "warning"].contains(&f["level"].as_str().unwrap()), "{f}");
        assert_eq!(f["fix"].is_null(), f["level"] == "ok", "a fix for each problem only: {f}");
    }
    let has = |topic: &str, text: &str| {
        findings.iter().any(|f| f["topic"] == topic && f["message"].as_str().is_some_and(|m| m.contains(text)))
    };
    assert!(has("cgroups", layout_here()), "{v:#}");
    assert!(has("runtime", &runtime.display().to_string()), "{v:#}");
    assert!(has("clock", "this skiff was built"), "{v:#}");
    assert!(has("memory", "page size"), "{v:#}");
    assert_eq!(v["verdict"] == "warnings", findings.iter().any(|f| f["level"] == "warning"), "{v:#}");
}

#[test]
fn skiff_check_without_a_runtime_fails_with_exit_1() {
    let out = check(&["--json", "--runtime", "/nonexistent/skiff-runtime"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["verdict"], "fail");
    let e = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["level"] == "error")
        .cloned()
        .unwrap_or_else(|| panic!("no error finding: {v:#}"));
    assert_eq!(e["topic"], "runtime");
    assert!(e["message"].as_str().unwrap().contains("/nonexistent/skiff-runtime does not exist"), "{e}");
    let out = check(&["--runtime", "/nonexistent/skiff-runtime"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .starts_with("skiff cannot work here: 1 error"));
}
