//! Namespaces: new ones of each type, and joining existing ones by path.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use skiff_tests::*;

/// Prints `readlink /proc/self/ns/X` for each namespace type, one per line.
fn ns_script(kinds: &[&str]) -> String {
    kinds.iter().map(|k| format!("readlink /proc/self/ns/{k}")).collect::<Vec<_>>().join("; ")
}

#[test]
fn every_namespace_is_new() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    for t in ["pid", "network", "ipc", "uts", "mount", "cgroup"] {
        b.namespace(t, None);
    }
    let kinds = ["pid", "net", "ipc", "uts", "mnt", "cgroup"];
    // (no cgroupfs mount needed here; see cgroups.rs for that inside a cgroup namespace)
    b.without_mount("/sys/fs/cgroup").sh(&ns_script(&kinds));
    let out = rt.output(&b);
    let inside: Vec<&str> = out.lines().collect();
    assert_eq!(inside.len(), kinds.len(), "{out}");
    for (k, line) in kinds.iter().zip(inside) {
        assert!(line.starts_with(&format!("{k}:[")), "{line}");
        assert_ne!(line, host_ns(k), "the container has its own {k} namespace");
    }
}

#[test]
fn without_a_namespace_the_host_one_is_shared() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.without_namespace("network").without_namespace("ipc").without_namespace("cgroup");
    b.sh(&ns_script(&["net", "ipc", "cgroup"]));
    let out = rt.output(&b);
    let inside: Vec<&str> = out.lines().collect();
    assert_eq!(inside, vec![host_ns("net"), host_ns("ipc"), host_ns("cgroup")]);
}

#[test]
fn pid_namespace_makes_the_process_pid_1() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.namespace("pid", None).sh("echo $$; ps");
    let out = rt.output(&b);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("1"), "{out}");
    let pids: Vec<&str> = lines.skip(1).filter_map(|l| l.split_whitespace().next()).collect();
    assert!(pids.contains(&"1"), "ps shows pid 1: {out}");
    // Only the container's processes are visible: sh (1) and ps.
    assert!(pids.len() <= 2, "ps sees only the container's processes: {out}");
}

#[test]
fn uts_namespace_hostname() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.namespace("uts", None).set("/hostname", json!("skiff-box")).sh("hostname; uname -n");
    assert_eq!(rt.output(&b), "skiff-box\nskiff-box\n");
    let host = read("/proc/sys/kernel/hostname");
    assert_ne!(host.trim(), "skiff-box", "the host's hostname is untouched");
}

#[test]
fn uts_namespace_domainname() {
    if skip_unless_skiff("domainname (runc 1.1 ignores it; runc 1.2 sets it)") {
        return;
    }
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.namespace("uts", None)
        .set("/hostname", json!("skiff-box"))
        .set("/domainname", json!("skiff.example"))
        .sh("cat /proc/sys/kernel/domainname");
    assert_eq!(rt.output(&b), "skiff.example\n");
}

#[test]
fn network_namespace_has_only_loopback() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.namespace("network", None).sh("ip -o link show | cut -d: -f2; cat /proc/net/dev | tail -n +3 | cut -d: -f1");
    let out = rt.output(&b);
    let names: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(names, vec!["lo", "lo"], "{out}");
}

#[test]
fn ipc_namespace_is_private() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    // The host's System V shared memory segments are not visible in a new ipc namespace.
    b.namespace("ipc", None).sh("cat /proc/sysvipc/shm | wc -l; readlink /proc/self/ns/ipc");
    let out = rt.output(&b);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0].trim(), "1", "only the header of /proc/sysvipc/shm: {out}");
    assert_ne!(lines[1], host_ns("ipc"));
}

#[test]
fn mount_namespace_keeps_container_mounts_inside() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.namespace("mount", None).sh("readlink /proc/self/ns/mnt; grep -c . /proc/self/mountinfo");
    let out = rt.output(&b);
    let lines: Vec<&str> = out.lines().collect();
    assert_ne!(lines[0], host_ns("mnt"));
    assert!(lines[1].parse::<usize>().unwrap() > 0);
    // Nothing the container mounted shows up on the host.
    let rootfs = b.rootfs();
    assert!(
        mount_points().iter().all(|m| !m.starts_with(&rootfs)),
        "container mounts leaked to the host: {:?}",
        mount_points().iter().filter(|m| m.starts_with(&rootfs)).collect::<Vec<_>>()
    );
}

#[test]
fn user_namespace_maps_ids() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    let shared = Scratch::new("userns-shared");
    fs::create_dir(b.rootfs().join("shared")).unwrap();
    std::os::unix::fs::chown(shared.path(), Some(100000), Some(100000)).unwrap();
    b.namespace("user", None)
        .namespace("network", None)
        .set("/root/readonly", json!(false))
        .set(
            "/process/capabilities",
            json!({"bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"], "permitted": ["CAP_CHOWN"]}),
        )
        .set("/linux/uidMappings", json!([{"containerID": 0, "hostID": 100000, "size": 65536}]))
        .set("/linux/gidMappings", json!([{"containerID": 0, "hostID": 100000, "size": 65536}]))
        // (the container's root cannot create the mount point in a rootfs owned by host root)
        .add_mount(
            json!({"destination": "/shared", "type": "bind", "source": shared.path(), "options": ["rbind", "rw"]}),
        )
        .sh("cat /proc/self/uid_map /proc/self/gid_map; id -u; id -g; touch /shared/made-inside; \
             mkdir -p /shared/dir; chown 1000:1000 /shared/dir; echo done");
    let out = rt.output(&b);
    let lines: Vec<String> = out.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    assert_eq!(lines, vec!["0 100000 65536", "0 100000 65536", "0", "0", "done"], "{out}");
    let m = fs::metadata(shared.join("made-inside")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((m.uid(), m.gid()), (100000, 100000), "container root is host uid 100000");
    let m = fs::metadata(shared.join("dir")).unwrap();
    assert_eq!((m.uid(), m.gid()), (101000, 101000), "container uid 1000 is host uid 101000");
    let _ = fs::Permissions::from_mode(0o755);
}

#[test]
fn cgroup_namespace_roots_the_container_cgroup() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.namespace("cgroup", None).without_mount("/sys/fs/cgroup").sh("cat /proc/self/cgroup");
    let out = rt.output(&b);
    assert!(!out.is_empty());
    for l in out.lines() {
        assert!(l.ends_with(":/"), "every cgroup is / inside the cgroup namespace: {out}");
    }
}

fn add_link(ns: &str, name: &str) {
    // dummy is not always built; a bridge is as good a witness.
    let dummy = host(&["ip", "-n", ns, "link", "add", name, "type", "dummy"]);
    if !dummy.success() {
        host(&["ip", "-n", ns, "link", "add", name, "type", "bridge"]).ok();
    }
}

#[test]
fn join_a_network_namespace_by_path() {
    let rt = Runtime::new();
    let ns = rt.netns("join");
    add_link(&ns, "skt0");
    let mut b = Bundle::new();
    b.namespace("network", Some(&netns_path(&ns))).sh("ip -o link show | cut -d: -f2 | cut -d@ -f1");
    let out = rt.output(&b);
    let names: Vec<&str> = out.lines().map(str::trim).collect();
    assert!(names.contains(&"skt0"), "the joined namespace's interface is visible: {out}");
    assert!(names.contains(&"lo"), "{out}");
    // Joining does not make a new namespace.
    let inode = fs::metadata(netns_path(&ns)).unwrap();
    use std::os::unix::fs::MetadataExt;
    b.sh("readlink /proc/self/ns/net");
    assert_eq!(rt.output(&b).trim(), format!("net:[{}]", inode.ino()));
}

#[test]
fn join_another_containers_namespaces() {
    let rt = Runtime::new();
    let mut a = Bundle::new();
    a.namespace("uts", None).namespace("ipc", None).set("/hostname", json!("container-a")).args(&["sleep", "1000"]);
    let a_id = rt.id("nsa");
    rt.create_start(&a, &a_id);
    let pid = rt.pid(&a_id);

    let mut b = Bundle::new();
    b.remove("/hostname")
        .namespace("uts", Some(format!("/proc/{pid}/ns/uts").as_ref()))
        .namespace("ipc", Some(format!("/proc/{pid}/ns/ipc").as_ref()))
        .namespace("pid", Some(format!("/proc/{pid}/ns/pid").as_ref()))
        .sh("hostname; readlink /proc/self/ns/ipc; cat /proc/1/cmdline | tr '\\0' ' '");
    let out = rt.output(&b);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "container-a", "{out}");
    assert_eq!(lines[1], fs::read_link(format!("/proc/{pid}/ns/ipc")).unwrap().to_str().unwrap());
    assert_eq!(lines[2].trim(), "sleep 1000", "pid 1 is container a's init: {out}");
}
