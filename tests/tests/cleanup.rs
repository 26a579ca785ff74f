//! A container that fails halfway through create (or run) leaves nothing behind: no state
//! directory, no cgroup, no process, no mount, no fd. Each test has the machine to itself
//! (Runtime::exclusive) since it compares machine-wide snapshots.

use skiff_tests::*;

const MIB: u64 = 1024 * 1024;

/// Sets the bundle up to fail via `edit`, runs `cmd` (create or run), which must fail
/// with an error mentioning `words`, then checks nothing is left.
fn fails_cleanly(name: &str, cmd: &str, words: &[&str], edit: impl FnOnce(&mut Bundle, &str)) {
    let rt = Runtime::exclusive();
    let id = rt.id(name);
    let mut b = Bundle::new();
    // Limits, so cgroups are made before the failure (those this host's kernel has).
    b.set("/linux/cgroupsPath", json!(format!("/{id}"))).args(&["sleep", "1000"]);
    if has_controller("memory") {
        b.set("/linux/resources/memory", json!({"limit": 64 * MIB}));
    }
    if has_controller("pids") {
        b.set("/linux/resources/pids", json!({"limit": 50}));
    }
    edit(&mut b, &id);
    b.save();
    let before = settled_snapshot(&rt);
    let out = rt.cmd(&[cmd, "--bundle", b.path().to_str().unwrap(), &id]);
    out.error_mentions(words);
    rt.cmd(&["state", &id]).fails();
    let after = settled_snapshot(&rt);
    before.assert_unchanged(&after, &format!("a failed {cmd} ({name})"));
    for m in cgroup_mounts() {
        let d = cgroup_dir(&m, &format!("/{id}"));
        assert!(!d.exists(), "cgroup left: {}", d.display());
    }
}

fn has_controller(c: &str) -> bool {
    cgroup_v1(c).is_some()
        || cgroup_mounts()
            .iter()
            .any(|m| m.v2 && read(m.mount_point.join("cgroup.controllers")).split_whitespace().any(|x| x == c))
}

#[test]
fn failing_create_runtime_hook() {
    fails_cleanly("hook-cr", "create", &["hook"], |b, _| {
        b.hook("createRuntime", json!({"path": "/bin/busybox", "args": ["sh", "-c", "exit 1"]}));
    });
}

#[test]
fn failing_prestart_hook() {
    fails_cleanly("hook-pre", "create", &["hook"], |b, _| {
        b.hook("prestart", json!({"path": "/bin/busybox", "args": ["false"]}));
    });
}

#[test]
fn failing_create_container_hook() {
    // Runs in the container's namespaces, from its init: the failure is in the child.
    fails_cleanly("hook-cc", "create", &["hook"], |b, _| {
        b.hook("createContainer", json!({"path": "/bin/busybox", "args": ["false"]}));
    });
}

#[test]
fn bind_mount_of_a_missing_source() {
    fails_cleanly("badmount", "create", &["skiff-no-such-dir"], |b, _| {
        b.add_mount(
            json!({"destination": "/mnt/x", "type": "bind", "source": "/skiff-no-such-dir", "options": ["rbind"]}),
        );
    });
}

#[test]
fn a_mount_of_an_unknown_filesystem_type() {
    fails_cleanly("badfs", "create", &["/mnt/y"], |b, _| {
        b.add_mount(json!({"destination": "/mnt/y", "type": "skiff-nofs", "source": "none"}));
    });
}

#[test]
fn a_missing_executable() {
    fails_cleanly("noexec", "run", &["skiff-no-such-program"], |b, _| {
        b.args(&["/bin/skiff-no-such-program"]);
    });
}

#[test]
fn a_namespace_path_that_does_not_exist() {
    fails_cleanly("nonspath", "create", &["/proc/0/ns/net"], |b, _| {
        b.namespace("network", Some("/proc/0/ns/net".as_ref()));
    });
}

#[test]
fn a_hugetlb_limit_on_a_host_without_hugetlb() {
    if cgroup_v1("hugetlb").is_some() {
        skip("this host has a v1 hugetlb controller");
        return;
    }
    fails_cleanly("hugetlb", "create", &["hugetlb"], |b, _| {
        b.set("/linux/resources/hugepageLimits", json!([{"pageSize": "2MB", "limit": 4 * MIB}]));
    });
}
