//! Process attributes of the spec that are neither user nor capabilities: scheduler,
//! I/O priority, personality, AppArmor profile, SELinux labels. Each is applied or
//! refused with a clear error; none is dropped silently.

use skiff_tests::*;

/// `ionice` prints "best-effort: prio 7"; /proc/PID/sched "policy : 3"; /proc/PID/stat's
/// 19th field is the nice value; /proc/PID/personality the persona in hex.
/// The exec'ed shell reports on itself as "self".
const REPORT: &str = "for p in 1 $$; do w=$p; [ $p = $$ ] && w=self; \
    echo \"$w policy $(grep '^policy' /proc/$p/sched | tr -d ' ' | cut -d: -f2)\"; \
    echo \"$w nice $(cut -d' ' -f19 /proc/$p/stat)\"; \
    echo \"$w ionice $(ionice -p $p)\"; \
    echo \"$w personality $(cat /proc/$p/personality)\"; \
    done; echo \"machine $(uname -m)\"";

/// What the report should say for the container's init (pid 1) and for a process
/// (`self`): SCHED_BATCH (3), nice 5, best-effort level 7, PER_LINUX32.
fn expected(who: &str) -> Vec<(String, &'static str, String)> {
    vec![
        (format!("{who} policy 3"), "process.scheduler policy SCHED_BATCH", who.into()),
        (format!("{who} nice 5"), "process.scheduler nice 5", who.into()),
        (format!("{who} ionice best-effort: prio 7"), "process.ioPriority IOPRIO_CLASS_BE 7", who.into()),
        (format!("{who} personality 00000008"), "linux.personality LINUX32", who.into()),
    ]
}

/// Checks `report` for each expected line: skiff must show them all; a peer that lacks
/// one is noted (skip_part) instead.
fn check(report: &str, want: &[(String, &'static str, String)], context: &str) {
    for (line, what, who) in want {
        if report.lines().any(|l| l == line) {
            continue;
        }
        if is_skiff() {
            panic!("{context}: {what} not applied to {who} (want {line:?}):\n{report}");
        }
        skip_part(&format!("{}: {context}: does not apply {what} to {who}", runtime_bin().display()));
    }
}

#[test]
fn scheduler_io_priority_and_personality_apply_to_the_init_and_to_exec() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.without_mount("/sys/fs/cgroup")
        .set("/process/scheduler", json!({"policy": "SCHED_BATCH", "nice": 5}))
        .set("/process/ioPriority", json!({"class": "IOPRIO_CLASS_BE", "priority": 7}))
        .set("/linux/personality", json!({"domain": "LINUX32"}))
        .args(&["sleep", "1000"]);
    let id = rt.id("attrs");
    rt.run_detached(&b, &id).ok();
    let out = rt.cmd(&["exec", &id, "sh", "-c", REPORT]).ok();
    let report = out.stdout.clone();
    let mut want = expected("1");
    want.extend(expected("self"));
    check(&report, &want, "run + exec");
    // Under PER_LINUX32 a 64-bit machine reports its 32-bit name.
    let host = host(&["uname", "-m"]).ok().stdout.trim().to_string();
    let name32 = match host.as_str() {
        "x86_64" => Some("i686"),
        "aarch64" => Some("armv8l"),
        _ => None,
    };
    if let Some(m) = name32 {
        check(&report, &[(format!("machine {m}"), "linux.personality LINUX32 (uname -m)", "exec".into())], "exec");
    }
    rt.delete_force(&id).ok();
}

#[test]
fn bad_scheduler_io_priority_or_personality_fail_create() {
    let rt = Runtime::new();
    let cases = [
        ("/process/scheduler", json!({"policy": "SCHED_FIFO"}), "priority"),
        ("/process/scheduler", json!({"policy": "SCHED_OTHER", "nice": 42}), "nice"),
        ("/process/scheduler", json!({"policy": "SCHED_IDLE", "nice": 5}), "nice"),
        ("/process/scheduler", json!({"policy": "SCHED_DEADLINE", "runtime": 5000}), "deadline"),
        ("/process/scheduler", json!({"policy": "SCHED_WHENEVER"}), "SCHED_WHENEVER"),
        ("/process/ioPriority", json!({"class": "IOPRIO_CLASS_BE", "priority": 8}), "ioPriority"),
        ("/process/ioPriority", json!({"class": "IOPRIO_CLASS_SOMETIMES", "priority": 0}), "IOPRIO_CLASS_SOMETIMES"),
        ("/linux/personality", json!({"domain": "LINUX64"}), "LINUX64"),
        ("/linux/personality", json!({"domain": "LINUX", "flags": ["ADDR_NO_RANDOMIZE"]}), "personality"),
    ];
    for (at, value, word) in cases {
        let mut b = Bundle::new();
        let id = rt.id("badattr");
        let cg = format!("/{id}");
        b.without_mount("/sys/fs/cgroup").set(at, value.clone()).set("/linux/cgroupsPath", json!(cg)).args(&["true"]);
        let out = rt.create(&b, &id);
        if out.success() {
            if is_skiff() {
                panic!("{at} = {value}: create succeeded:\n{out}");
            }
            skip_part(&format!("{}: accepts {at} = {value}", runtime_bin().display()));
            rt.delete_force(&id).ok();
            continue;
        }
        if is_skiff() {
            let err = out.stderr.trim();
            assert!(err.contains(word) && !err.contains('\n'), "{at} = {value}: one line naming {word:?}:\n{out}");
        }
        assert_create_left_nothing(&rt, &id, &cg);
    }
}

/// This machine has neither AppArmor nor SELinux enabled: a profile or a process label
/// there is refused with one clear line (runc and crun refuse them too: a confinement
/// asked for and not applied must not pass unnoticed), and nothing is left behind; a mount
/// label is ignored with a debug line (runc ignores it too).
#[test]
fn apparmor_and_selinux_settings_are_refused_where_not_enabled() {
    let apparmor = read("/sys/module/apparmor/parameters/enabled").starts_with('Y');
    let selinux = std::path::Path::new("/sys/fs/selinux/enforce").exists();
    if apparmor || selinux {
        skip("AppArmor or SELinux is enabled on this host: the settings would apply");
        return;
    }
    let rt = Runtime::new();
    let settings = [
        ("/process/apparmorProfile", json!("docker-default"), "AppArmor"),
        ("/process/selinuxLabel", json!("system_u:system_r:container_t:s0:c1,c2"), "SELinux"),
    ];
    for (at, value, lsm) in settings {
        let mut b = Bundle::new();
        b.without_mount("/sys/fs/cgroup").set(at, value.clone()).args(&["sleep", "1000"]);
        let id = rt.id("lsm");
        let cg = format!("/{id}");
        let out = rt.run_detached(&b, &id);
        assert!(!out.success(), "{at} = {value}: refused on a host without {lsm}:\n{out}");
        if is_skiff() {
            let err = out.stderr.trim();
            assert!(
                err.contains(lsm) && err.contains("not enabled") && !err.contains('\n'),
                "{at}: one clear line:\n{out}"
            );
            assert_create_left_nothing(&rt, &id, &cg);
        }
    }
    let mut b = Bundle::new();
    b.without_mount("/sys/fs/cgroup")
        .set("/linux/mountLabel", json!("system_u:object_r:container_file_t:s0:c1,c2"))
        .args(&["sleep", "1000"]);
    let id = rt.id("mountlabel");
    let log = rt.io_dir().join(format!("{id}.log"));
    b.save();
    let out = rt.cmd(&[
        "--debug",
        "--log",
        log.to_str().unwrap(),
        "run",
        "--detach",
        "--bundle",
        b.path().to_str().unwrap(),
        &id,
    ]);
    if !out.success() && !is_skiff() {
        skip_part(&format!("{}: refuses linux.mountLabel where SELinux is not enabled", runtime_bin().display()));
        return;
    }
    out.ok();
    if is_skiff() {
        let text = read(&log);
        assert!(
            text.lines().any(|l| l.contains("debug") && l.contains("mountLabel") && l.contains("ignored")),
            "a debug line says the mount label is ignored:\n{text}"
        );
    }
    rt.delete_force(&id).ok();
}
