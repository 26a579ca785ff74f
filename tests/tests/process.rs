//! The container process: env, cwd, user and groups, umask, capabilities,
//! noNewPrivileges, rlimits, oomScoreAdj, sysctl.

use skiff_tests::*;

#[test]
fn env_and_cwd() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.set("/process/env", json!(["PATH=/bin:/usr/bin", "FOO=bar baz", "EMPTY=", "HOME=/home/user"]))
        .set("/process/cwd", json!("/home/user"))
        .sh("echo \"FOO=$FOO\"; echo \"PATH=$PATH\"; echo \"EMPTY=[${EMPTY-unset}]\"; pwd; env | grep -c '^TERM=' || true");
    assert_eq!(rt.output(&b), "FOO=bar baz\nPATH=/bin:/usr/bin\nEMPTY=[]\n/home/user\n0\n");
}

#[test]
fn the_container_process_is_looked_up_in_the_containers_path() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.set("/process/env", json!(["PATH=/usr/bin:/bin"])).args(&["echo", "found-on-path"]);
    assert_eq!(rt.output(&b), "found-on-path\n");
    // An absolute path, with arguments that look like options.
    b.args(&["/bin/sh", "-c", "echo $0 $1", "-x", "--y"]);
    assert_eq!(rt.output(&b), "-x --y\n");
}

#[test]
fn a_missing_executable_fails_clearly() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.args(&["/bin/no-such-program"]);
    let id = rt.id("noexec");
    let out = rt.run(&b, &id);
    out.fails().error_mentions(&["no-such-program"]);
}

#[test]
fn user_group_and_additional_gids() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.set("/process/user", json!({"uid": 1000, "gid": 1000, "additionalGids": [10, 29]})).sh(
        "id -u; id -g; id -un; id -G | tr ' ' '\\n' | sort -n | tr '\\n' ' '; echo; grep '^Groups:' /proc/self/status",
    );
    let out = rt.output(&b);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..3], &["1000", "1000", "user"], "{out}");
    let groups: Vec<u32> = lines[3].split_whitespace().map(|g| g.parse().unwrap()).collect();
    for g in [10, 29, 1000] {
        assert!(groups.contains(&g), "id -G has {g}: {out}");
    }
    let supp: Vec<u32> = status_field(&out, "Groups").unwrap().split_whitespace().map(|g| g.parse().unwrap()).collect();
    assert!(supp.contains(&10) && supp.contains(&29), "supplementary groups are the additionalGids: {out}");
    assert!(!supp.contains(&0), "root's group is dropped: {out}");
}

#[test]
fn umask() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.set("/root/readonly", json!(false))
        .set("/process/user", json!({"uid": 0, "gid": 0, "umask": 0o027}))
        .sh("umask; touch /tmp/f; stat -c %a /tmp/f");
    assert_eq!(rt.output(&b), "0027\n640\n");
}

fn caps(bounding: &[&str], effective: &[&str], permitted: &[&str], inheritable: &[&str], ambient: &[&str]) -> Value {
    json!({"bounding": bounding, "effective": effective, "permitted": permitted,
           "inheritable": inheritable, "ambient": ambient})
}

fn cap_lines(out: &str) -> [String; 5] {
    ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"]
        .map(|k| status_field(out, k).unwrap_or_else(|| panic!("{k} in {out}")).to_string())
}

#[test]
fn capabilities_of_root() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    // For root, exec makes permitted = effective = bounding; so ask for exactly that.
    let set = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE",
        "CAP_SETUID",
        "CAP_SETGID",
        "CAP_AUDIT_WRITE",
    ];
    b.set("/process/capabilities", caps(&set, &set, &set, &[], &[])).sh("cat /proc/self/status");
    let out = rt.output(&b);
    let m = cap_mask(&set);
    assert_eq!(cap_lines(&out), ["0000000000000000".into(), m.clone(), m.clone(), m, "0000000000000000".into()]);
}

#[test]
fn capabilities_of_a_user_with_ambient() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    // For a non-root user, what survives exec is the ambient set (and inheritable).
    let set = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"];
    let bnd = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_AUDIT_WRITE"];
    b.set("/process/user", json!({"uid": 1000, "gid": 1000}))
        .set("/process/capabilities", caps(&bnd, &set, &set, &set, &set))
        .sh("cat /proc/self/status");
    let out = rt.output(&b);
    let m = cap_mask(&set);
    assert_eq!(cap_lines(&out), [m.clone(), m.clone(), m.clone(), cap_mask(&bnd), m]);
}

#[test]
fn no_capabilities() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.set("/process/capabilities", caps(&[], &[], &[], &[], &[])).sh("cat /proc/self/status");
    let out = rt.output(&b);
    assert_eq!(cap_lines(&out), ["0000000000000000"; 5].map(String::from));
}

#[test]
fn no_new_privileges() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.set("/process/noNewPrivileges", json!(true)).sh("cat /proc/self/status");
    assert_eq!(status_field(&rt.output(&b), "NoNewPrivs"), Some("1"));
    b.set("/process/noNewPrivileges", json!(false));
    assert_eq!(status_field(&rt.output(&b), "NoNewPrivs"), Some("0"));
}

#[test]
fn rlimits() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    // This machine's hard nofile limit is 20000 and raising it is not allowed (no CAP_SYS_RESOURCE).
    b.set(
        "/process/rlimits",
        json!([{"type": "RLIMIT_NOFILE", "soft": 1234, "hard": 20000},
               {"type": "RLIMIT_NPROC", "soft": 500, "hard": 600},
               {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}]),
    )
    .sh("ulimit -n; ulimit -Hn; ulimit -u; ulimit -Hu; ulimit -c");
    assert_eq!(rt.output(&b), "1234\n20000\n500\n600\n0\n");
}

#[test]
fn an_rlimit_above_the_hard_limit_fails_clearly() {
    let rt = Runtime::new();
    let hard: u64 = read("/proc/self/limits")
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4).map(|v| v.parse().unwrap_or(u64::MAX)))
        .unwrap();
    // With CAP_SYS_RESOURCE a runtime may raise the hard limit: nothing to refuse then.
    let cap_eff = u64::from_str_radix(status_field(&read("/proc/self/status"), "CapEff").unwrap(), 16).unwrap();
    if cap_eff & (1 << 24) != 0 || hard == u64::MAX {
        skip("this process holds CAP_SYS_RESOURCE or has no hard nofile limit");
        return;
    }
    let mut b = Bundle::new();
    b.set("/process/rlimits", json!([{"type": "RLIMIT_NOFILE", "soft": hard + 1, "hard": hard + 1}]));
    rt.run(&b, &rt.id("rlimit")).error_mentions(&["rlimit"]);
}

#[test]
fn oom_score_adj() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.set("/process/oomScoreAdj", json!(123)).sh("cat /proc/self/oom_score_adj");
    assert_eq!(rt.output(&b), "123\n");
}

#[test]
fn sysctl() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.namespace("network", None)
        .namespace("ipc", None)
        .set(
            "/linux/sysctl",
            json!({"net.ipv4.ip_forward": "1", "kernel.shmmax": "123456789", "kernel.msgmax": "4321"}),
        )
        .sh("cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shmmax /proc/sys/kernel/msgmax");
    let host_fwd = read("/proc/sys/net/ipv4/ip_forward");
    let host_shm = read("/proc/sys/kernel/shmmax");
    assert_eq!(rt.output(&b), "1\n123456789\n4321\n");
    assert_eq!(read("/proc/sys/net/ipv4/ip_forward"), host_fwd, "the host's value is untouched");
    assert_eq!(read("/proc/sys/kernel/shmmax"), host_shm, "the host's value is untouched");
}

#[test]
fn a_sysctl_outside_the_containers_namespaces_is_refused() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    // No network namespace: a net.* sysctl would be the host's. Ask for the value the host
    // already has, so that even a runtime that wrongly writes it changes nothing.
    let current = read("/proc/sys/net/ipv4/ip_forward").trim().to_string();
    b.without_namespace("network").set("/linux/sysctl", json!({"net.ipv4.ip_forward": current}));
    rt.run(&b, &rt.id("sysctl-host")).error_mentions(&["net.ipv4.ip_forward"]);
    // Same for an ipc sysctl without an ipc namespace.
    let current = read("/proc/sys/kernel/msgmax").trim().to_string();
    b.namespace("network", None).without_namespace("ipc").set("/linux/sysctl", json!({"kernel.msgmax": current}));
    rt.run(&b, &rt.id("sysctl-host-ipc")).error_mentions(&["kernel.msgmax"]);
}
