//! OCI hooks: each kind runs at its point of the lifecycle with the state JSON on stdin;
//! failures and timeouts.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use skiff_tests::*;

/// A hook that runs a busybox shell script on the host.
fn sh_hook(script: &str) -> Value {
    json!({"path": "/bin/busybox", "args": ["sh", "-c", script]})
}

const HOST_HOOKS: &[&str] = &["prestart", "createRuntime", "createContainer", "poststart", "poststop"];

#[test]
fn every_hook_runs_with_the_state_on_stdin() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    let out = Scratch::new("hooks-out");
    let o = out.path().to_str().unwrap();
    for k in HOST_HOOKS {
        b.hook(k, sh_hook(&format!("cat > {o}/{k}.json; echo {k} >> {o}/order")));
    }
    // startContainer runs in the container: its path is resolved in the container's rootfs
    // (this script does not exist on the host), and it sees the container's mounts.
    let script = b.rootfs().join("bin/skiff-hook");
    fs::write(&script, "#!/bin/sh\ncat > /hooks/startContainer.json\necho startContainer >> /hooks/order\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    assert!(!Path::new("/bin/skiff-hook").exists());
    b.hook("startContainer", json!({"path": "/bin/skiff-hook"}));
    // A hook's args and env are its own.
    b.hook("prestart", json!({"path": "/bin/busybox", "args": ["sh", "-c", format!("echo \"$0 $1 $HOOK_VAR\" > {o}/args"), "arg0", "arg1"],
                              "env": ["HOOK_VAR=from-hook-env"]}));
    fs::create_dir(b.rootfs().join("hooks")).unwrap();
    b.add_mount(json!({"destination": "/hooks", "type": "bind", "source": o, "options": ["rbind", "rw"]}))
        .sh("echo container >> /hooks/order");
    let id = rt.id("hooks");
    rt.run(&b, &id).ok();

    let order: Vec<String> = read(out.join("order")).lines().map(String::from).collect();
    let pos = |k: &str| order.iter().position(|x| x == k).unwrap_or_else(|| panic!("{k} did not run: {order:?}"));
    for (before, after) in [
        ("prestart", "createContainer"),
        ("createRuntime", "createContainer"),
        ("createContainer", "startContainer"),
        ("createContainer", "poststart"),
        ("startContainer", "container"),
        ("container", "poststop"),
        ("poststart", "poststop"),
    ] {
        assert!(pos(before) < pos(after), "{before} runs before {after}: {order:?}");
    }
    assert_eq!(order.len(), 7, "each hook ran once: {order:?}");
    assert_eq!(read(out.join("args")), "arg0 arg1 from-hook-env\n");

    let bundle = b.path().canonicalize().unwrap();
    let mut host_pid = None;
    for k in ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"] {
        let k: &str = k;
        let text = read(out.join(format!("{k}.json")));
        let st: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{k} got no state JSON ({e}): {text:?}"));
        // A JSON object with a key twice parses, but hooks with strict parsers reject it.
        for key in ["\"ociVersion\"", "\"id\"", "\"status\"", "\"pid\"", "\"bundle\""] {
            assert!(text.matches(key).count() <= 1, "{k}: {key} appears more than once: {text}");
        }
        assert!(st["ociVersion"].as_str().is_some_and(|v| !v.is_empty()), "{k}: {st}");
        assert_eq!(st["id"], id.as_str(), "{k}: {st}");
        assert_eq!(
            Path::new(st["bundle"].as_str().unwrap_or("")).canonicalize().ok().as_ref(),
            Some(&bundle),
            "{k}: {st}"
        );
        let status = st["status"].as_str().unwrap_or("");
        let allowed: &[&str] = match k {
            "prestart" | "createRuntime" | "createContainer" => &["creating", "created"],
            "startContainer" => &["created"],
            // runc 1.1 says "created" here; "running" is what a reader would expect.
            "poststart" => &["created", "running"],
            _ => &["stopped"],
        };
        assert!(allowed.contains(&status), "{k} status {status:?} not in {allowed:?}");
        if k != "poststop" {
            let pid = st["pid"].as_i64().unwrap_or(0);
            assert!(pid > 0, "{k} has the container pid: {st}");
            // Hooks run in the runtime's namespaces see the host pid.
            if ["prestart", "createRuntime", "poststart"].contains(&k) {
                assert!(pid > 1, "{k}: {st}");
                assert_eq!(*host_pid.get_or_insert(pid), pid, "{k} sees the same host pid: {st}");
            }
        }
    }
}

#[test]
fn a_failing_create_runtime_hook_fails_create() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    let out = Scratch::new("hooks-fail");
    let marker = out.join("container-ran");
    b.hook("createRuntime", sh_hook("echo hook-says-no >&2; exit 3"))
        .hook("poststart", sh_hook(&format!("touch {}", marker.display())));
    b.args(&["sleep", "1000"]);
    let id = rt.id("hookfail");
    let res = rt.create(&b, &id);
    // skiff names the hook kind; runc 1.1 only says "error running hook #0".
    res.error_mentions(if is_skiff() { &["createRuntime", "hook"] } else { &["hook"] });
    assert!(res.stderr.contains("hook-says-no") || !is_skiff(), "the hook's stderr is in the error:\n{res}");
    assert!(rt.cmd(&["state", &id]).fails().stderr.to_lowercase().contains("not exist"));
    assert!(!rt.state_entries().contains(&id), "state left behind: {:?}", rt.state_entries());
    assert!(!marker.exists());
}

#[test]
fn a_hook_that_hangs_is_stopped_by_its_timeout() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    // A unique argument, to find the hook's process on the host.
    let secs = format!("{}.{}", 40 + std::process::id() % 10, std::process::id() % 997);
    b.hook("createRuntime", json!({"path": "/bin/busybox", "args": ["sleep", secs], "timeout": 1}));
    let id = rt.id("hooktimeout");
    let start = Instant::now();
    let res = rt.create(&b, &id);
    let took = start.elapsed();
    let res = res.fails();
    let err = res.stderr.to_lowercase();
    assert!(err.contains("timeout") || err.contains("timed out"), "the error says it timed out:\n{res}");
    assert!(err.contains("createruntime") || !is_skiff(), "the error names the hook kind:\n{res}");
    assert!(took < Duration::from_secs(35), "create gave up on the hook after its 1 s timeout (took {took:?})");
    assert!(!rt.state_entries().contains(&id));
    let cmdline = format!("sleep\0{secs}\0");
    wait_until("the timed-out hook process to be killed", TIMEOUT, || {
        !processes().iter().any(|p| read(format!("/proc/{}/cmdline", p.pid)) == cmdline)
    });
}

#[test]
fn a_failing_poststop_hook_does_not_stop_delete() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    let out = Scratch::new("hooks-poststop");
    let second = out.join("second-ran");
    b.hook("poststop", sh_hook("exit 1")).hook("poststop", sh_hook(&format!("touch {}", second.display())));
    let id = rt.id("poststop");
    rt.create_start(&b, &id);
    rt.wait_status(&id, "stopped");
    rt.delete(&id).ok();
    rt.cmd(&["state", &id]).fails();
    // The spec: a failing poststop hook is logged, "the remaining hooks and lifecycle
    // continue". runc 1.1 stops at the first failure.
    if skiff_part("poststop hooks after a failing one") {
        assert!(second.exists(), "the poststop hooks after a failing one still run");
    }
}

/// Each hook reads the container's state on stdin: its id, bundle, annotations, the init's
/// pid as the host sees it, and the status of its kind (built from the state, not by
/// editing a JSON text: an annotation that looks like a status stays as it is).
/// runtime-tools' hooks_stdin requires prestart `created` and poststart `running` with the
/// init's pid; the other kinds follow the lifecycle (createRuntime/createContainer run
/// inside `create`: `creating`; startContainer: `created`).
#[test]
fn each_hook_reads_the_containers_state() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    let out = Scratch::new("hooks-state");
    let o = out.path().to_str().unwrap();
    for k in HOST_HOOKS {
        b.hook(k, sh_hook(&format!("cat > {o}/{k}.json")));
    }
    let script = b.rootfs().join("bin/skiff-hook");
    fs::write(&script, "#!/bin/sh\ncat > /hooks/startContainer.json\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    b.hook("startContainer", json!({"path": "/bin/skiff-hook"}));
    fs::create_dir(b.rootfs().join("hooks")).unwrap();
    let annotations = json!({"org.skiff.test": "hook stdin", "status": "creating", "pid": "0"});
    b.add_mount(json!({"destination": "/hooks", "type": "bind", "source": o, "options": ["rbind", "rw"]}))
        .without_mount("/sys/fs/cgroup")
        .set("/annotations", annotations.clone())
        .args(&["true"]);
    let id = rt.id("hookstate");
    rt.create(&b, &id).ok();
    let pid = rt.pid(&id);
    rt.start(&id).ok();
    rt.wait_status(&id, "stopped");
    rt.delete(&id).ok();

    let bundle = b.path().canonicalize().unwrap();
    let peer_differs = |what: String| {
        if is_skiff() {
            panic!("{what}");
        }
        skip_part(&format!("{}: {what}", runtime_bin().display()));
    };
    for (k, status) in [
        ("prestart", "created"),
        ("createRuntime", "creating"),
        ("createContainer", "creating"),
        ("startContainer", "created"),
        ("poststart", "running"),
        ("poststop", "stopped"),
    ] {
        let text = read(out.join(format!("{k}.json")));
        let st: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{k} got no state JSON ({e}): {text:?}"));
        assert_eq!(st["id"], id.as_str(), "{k}: {st}");
        assert_eq!(st["annotations"], annotations, "{k}: {st}");
        if Path::new(st["bundle"].as_str().unwrap_or("")).canonicalize().ok().as_ref() != Some(&bundle) {
            peer_differs(format!("{k} hook gets bundle {} (expected {})", st["bundle"], bundle.display()));
        }
        if st["status"] != status {
            peer_differs(format!("{k} hook gets status {} (expected {status:?})", st["status"]));
        }
        if k != "poststop" && st["pid"] != pid {
            peer_differs(format!("{k} hook gets pid {} (expected the init's host pid {pid})", st["pid"]));
        }
    }
}
