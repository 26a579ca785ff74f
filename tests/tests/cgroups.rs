//! cgroups: resources land in the controllers' files, cgroupsPath (absolute and relative),
//! clear errors for controllers the kernel lacks (hugetlb here; memory on a Raspberry Pi).

use std::ffi::CString;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use skiff_tests::*;

const MIB: u64 = 1024 * 1024;

fn resources() -> Value {
    json!({
        "memory": {"limit": 64 * MIB, "reservation": 32 * MIB, "swap": 128 * MIB},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"},
        "pids": {"limit": 64},
        "devices": [{"allow": false, "access": "rwm"}]
    })
}

/// (controller, file, expected value) for [`resources`] on cgroup v1.
const V1_FILES: &[(&str, &str, &str)] = &[
    ("memory", "memory.limit_in_bytes", "67108864"),
    ("memory", "memory.soft_limit_in_bytes", "33554432"),
    ("memory", "memory.memsw.limit_in_bytes", "134217728"),
    ("cpu", "cpu.shares", "512"),
    ("cpu", "cpu.cfs_quota_us", "50000"),
    ("cpu", "cpu.cfs_period_us", "100000"),
    ("cpuset", "cpuset.cpus", "0"),
    ("cpuset", "cpuset.mems", "0"),
    ("pids", "pids.max", "64"),
];

fn v1_or_skip() -> bool {
    let ok = V1_FILES.iter().all(|(c, _, _)| cgroup_v1(c).is_some());
    if !ok {
        skip("needs cgroup v1 memory, cpu, cpuset and pids hierarchies");
    }
    ok
}

#[test]
fn resources_land_in_the_v1_controller_files() {
    if !v1_or_skip() {
        return;
    }
    let rt = Runtime::new();
    let id = rt.id("cglimits");
    let path = format!("/{id}");
    rt.cleanup_cgroup(&path);
    let inside: String = V1_FILES.iter().map(|(c, f, _)| format!("cat /sys/fs/cgroup/{c}/{f}; ")).collect();
    let mut b = Bundle::new();
    b.set("/mounts", standard_mounts())
        .set("/linux/cgroupsPath", json!(path))
        .set("/linux/resources", resources())
        .sh(&inside);
    let c = rt.create(&b, &id).ok();
    let pid = rt.pid(&id);

    for (ctrl, file, want) in V1_FILES {
        let dir = cgroup_dir(&cgroup_v1(ctrl).unwrap(), &path);
        assert_eq!(read(dir.join(file)).trim(), *want, "{}", dir.join(file).display());
        let procs = read(dir.join("cgroup.procs"));
        assert!(procs.lines().any(|l| l == pid.to_string()), "{pid} in {}: {procs}", dir.display());
    }

    rt.start(&id).ok();
    rt.wait_status(&id, "stopped");
    let got: Vec<String> = c.stdout_now().lines().map(String::from).collect();
    let want: Vec<String> = V1_FILES.iter().map(|(_, _, v)| v.to_string()).collect();
    assert_eq!(got, want, "the container sees its own limits under /sys/fs/cgroup\n{}", c.stderr_now());

    rt.delete(&id).ok();
    for (ctrl, _, _) in V1_FILES {
        let dir = cgroup_dir(&cgroup_v1(ctrl).unwrap(), &path);
        assert!(!dir.exists(), "delete removes {}", dir.display());
    }
}

#[test]
fn limits_seen_from_inside_a_cgroup_namespace() {
    if !v1_or_skip() {
        return;
    }
    // runc 1.1 names a v1 hierarchy inside the container after its host mount point's
    // basename, so a hierarchy mounted elsewhere (e.g. /run/hugetlb-v1, the crun
    // workaround) breaks its cgroupfs mount in a cgroup namespace.
    let odd = cgroup_mounts().into_iter().any(|m| !m.v2 && !m.mount_point.starts_with("/sys/fs/cgroup"));
    if odd && skip_unless_skiff("a v1 hierarchy mounted outside /sys/fs/cgroup") {
        return;
    }
    let rt = Runtime::new();
    let id = rt.id("cgns");
    let path = format!("/{id}");
    rt.cleanup_cgroup(&path);
    let mut b = Bundle::new();
    b.set("/mounts", standard_mounts())
        .namespace("cgroup", None)
        .set("/linux/cgroupsPath", json!(path))
        .set("/linux/resources", resources())
        .sh("cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max; \
             grep -qx 1 /sys/fs/cgroup/pids/cgroup.procs && echo init-inside; grep ':memory:' /proc/self/cgroup");
    let out = rt.run(&b, &id).ok();
    assert_eq!(
        out.stdout,
        "67108864\n64\ninit-inside\n4:memory:/\n".replace("4:", &format!("{}:", memory_hierarchy_id())),
        "{out}"
    );
}

/// The hierarchy id of the memory controller (first field of its /proc/self/cgroup line).
fn memory_hierarchy_id() -> String {
    read("/proc/self/cgroup")
        .lines()
        .find(|l| l.split(':').nth(1) == Some("memory"))
        .and_then(|l| l.split(':').next().map(String::from))
        .unwrap_or_default()
}

#[test]
fn pids_limit_is_enforced() {
    if !v1_or_skip() {
        return;
    }
    let rt = Runtime::new();
    let mut b = Bundle::new();
    let id = rt.id("pidsmax");
    b.set("/linux/cgroupsPath", json!(format!("/{id}")))
        .set("/linux/resources/pids", json!({"limit": 5}))
        .sh("for i in 1 2 3 4 5 6 7 8; do sleep 100 & done 2>&1; echo started $(jobs -p | wc -l)");
    rt.cleanup_cgroup(&format!("/{id}"));
    let out = rt.run(&b, &id);
    assert!(out.stdout.contains("can't fork: Resource temporarily unavailable"), "the 5th process is refused:\n{out}");
}

/// Runs the runtime with `args`, first moving it into `cgroup` of every hierarchy
/// (so its own cgroup is that one).
fn run_in_cgroup(rt: &Runtime, parent: &str, args: &[&str]) -> Out {
    let mut procs: Vec<CString> = Vec::new();
    for m in cgroup_mounts() {
        let dir = m.mount_point.join(parent);
        fs::create_dir_all(&dir).unwrap();
        if m.controllers.iter().any(|c| c == "cpuset") {
            for f in ["cpuset.cpus", "cpuset.mems"] {
                fs::write(dir.join(f), read(m.mount_point.join(f)).trim()).unwrap();
            }
        }
        procs.push(CString::new(dir.join("cgroup.procs").to_str().unwrap()).unwrap());
    }
    rt.cmd_with(args, move |c: &mut Command| {
        // SAFETY: only async-signal-safe calls (open/write/close) on prepared C strings.
        unsafe {
            c.pre_exec(move || {
                for p in &procs {
                    let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd >= 0 {
                        libc::write(fd, b"0".as_ptr().cast(), 1);
                        libc::close(fd);
                    }
                }
                Ok(())
            });
        }
    })
}

#[test]
fn relative_and_absolute_cgroups_path() {
    if !v1_or_skip() {
        return;
    }
    let rt = Runtime::new();
    let parent = rt.id("cgparent");
    rt.cleanup_cgroup(&format!("/{parent}"));
    let mut b = Bundle::new();
    b.args(&["sleep", "1000"]).set("/linux/resources/pids", json!({"limit": 10}));

    // Relative: below the runtime's own cgroup.
    let rel = rt.id("cgrel");
    b.set("/linux/cgroupsPath", json!(format!("{rel}/leaf")));
    b.save();
    run_in_cgroup(&rt, &parent, &["create", "--bundle", b.path().to_str().unwrap(), &rel]).ok();
    let pid = rt.pid(&rel);
    for ctrl in ["memory", "pids", "cpu"] {
        let m = cgroup_v1(ctrl).unwrap();
        let dir = m.mount_point.join(&parent).join(&rel).join("leaf");
        let procs = read(dir.join("cgroup.procs"));
        assert!(procs.lines().any(|l| l == pid.to_string()), "{ctrl}: {pid} in {}: {procs:?}", dir.display());
        assert!(!m.mount_point.join(&rel).exists(), "a relative path is not taken from the root");
    }
    assert_eq!(
        read(cgroup_v1("pids").unwrap().mount_point.join(&parent).join(&rel).join("leaf/pids.max")).trim(),
        "10"
    );

    // Absolute: from the hierarchy's root, wherever the runtime runs.
    let abs = rt.id("cgabs");
    rt.cleanup_cgroup(&format!("/{abs}"));
    b.set("/linux/cgroupsPath", json!(format!("/{abs}")));
    b.save();
    run_in_cgroup(&rt, &parent, &["create", "--bundle", b.path().to_str().unwrap(), &abs]).ok();
    let pid = rt.pid(&abs);
    for ctrl in ["memory", "pids", "cpu"] {
        let m = cgroup_v1(ctrl).unwrap();
        let procs = read(m.mount_point.join(&abs).join("cgroup.procs"));
        assert!(procs.lines().any(|l| l == pid.to_string()), "{ctrl}: {pid} in /{abs}: {procs:?}");
    }
    rt.delete_force(&rel).ok();
    rt.delete_force(&abs).ok();
    let m = cgroup_v1("memory").unwrap();
    assert!(!m.mount_point.join(&abs).exists(), "delete removes the absolute cgroup");
    assert!(!m.mount_point.join(&parent).join(&rel).join("leaf").exists(), "delete removes the relative cgroup");
}

#[test]
fn hugepage_limits_without_a_hugetlb_controller_fail_clearly() {
    if cgroup_v1("hugetlb").is_some()
        || cgroup_mounts().iter().any(|m| m.v2 && m.mount_point == Path::new("/sys/fs/cgroup"))
    {
        skip("this host has a usable hugetlb controller");
        return;
    }
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.set("/linux/resources/hugepageLimits", json!([{"pageSize": "2MB", "limit": 4 * MIB}]));
    let id = rt.id("hugetlb");
    rt.create(&b, &id).error_mentions(&["hugetlb"]);
    assert!(!rt.state_entries().contains(&id));
    rt.cmd(&["state", &id]).fails();
}

/// Runs the runtime in a private mount namespace whose /sys/fs/cgroup is the bare
/// cgroup2 hierarchy. On this host that hierarchy has no memory controller (v1 holds it):
/// just what a Raspberry Pi kernel with memory disabled shows.
fn in_v2_without_memory(rt: &Runtime, args: &[&str]) -> Out {
    // It is the host's cgroup2 hierarchy: a runtime enables controllers in its root's
    // cgroup.subtree_control, which would stay (and block moving hugetlb to a v1
    // hierarchy, which crun needs here). Put it back afterwards.
    let _restore = cgroup_mounts().into_iter().find(|m| m.v2).map(|m| SubtreeControl::save(&m.mount_point));
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("umount -R /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup && exec \"$@\"")
        .arg("sh")
        .arg(rt.bin())
        .arg("--root")
        .arg(rt.root())
        .args(args);
    run_command(
        cmd,
        format!("unshare -m (cgroup2 only) {} {}", rt.bin().display(), args.join(" ")),
        rt.io_dir(),
        TIMEOUT,
    )
}

/// Restores a cgroup2 directory's cgroup.subtree_control when dropped.
struct SubtreeControl {
    file: std::path::PathBuf,
    before: Vec<String>,
}

impl SubtreeControl {
    fn save(dir: &std::path::Path) -> SubtreeControl {
        let file = dir.join("cgroup.subtree_control");
        let before = read(&file).split_whitespace().map(str::to_owned).collect();
        SubtreeControl { file, before }
    }
}

impl Drop for SubtreeControl {
    fn drop(&mut self) {
        for c in read(&self.file).split_whitespace() {
            if !self.before.iter().any(|b| b == c) {
                let _ = std::fs::write(&self.file, format!("-{c}"));
            }
        }
    }
}

fn v2_lacks_memory() -> bool {
    let unified = cgroup_mounts().into_iter().find(|m| m.v2);
    let ok = unified
        .is_some_and(|m| !read(m.mount_point.join("cgroup.controllers")).split_whitespace().any(|c| c == "memory"));
    if !ok {
        skip("needs a cgroup2 hierarchy without the memory controller (a hybrid host)");
    }
    ok
}

#[test]
fn without_a_memory_controller_a_memory_limit_fails_and_says_how_to_enable_it() {
    if !v2_lacks_memory() {
        return;
    }
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.set("/linux/resources/memory", json!({"limit": 64 * MIB})).sh("echo should-not-run");
    b.save();
    let id = rt.id("nomem");
    let out = in_v2_without_memory(&rt, &["run", "--bundle", b.path().to_str().unwrap(), &id]);
    out.error_mentions(&["memory"]);
    assert!(!out.stdout.contains("should-not-run"), "{out}");
    if skiff_part("the hint on enabling the memory controller") {
        let err = out.stderr.to_lowercase();
        assert!(
            err.contains("cgroup_enable=memory") && (err.contains("cmdline") || err.contains("command line")),
            "the error says how to enable it (cgroup_enable=memory on the kernel cmdline):\n{out}"
        );
    }
    assert!(!rt.state_entries().contains(&id));
}

#[test]
fn without_a_memory_controller_a_spec_without_limits_runs() {
    if !v2_lacks_memory() {
        return;
    }
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.remove("/linux/resources").sh("echo ran; grep -c '^0::' /proc/self/cgroup");
    b.save();
    let id = rt.id("nomem-ok");
    let out = in_v2_without_memory(&rt, &["run", "--bundle", b.path().to_str().unwrap(), &id]).ok();
    assert_eq!(out.stdout, "ran\n1\n");
    // The devices rule of runc's default spec is no limit: keep it and it must still run.
    let mut b = Bundle::new();
    b.set("/linux/resources", json!({"devices": [{"allow": false, "access": "rwm"}]})).sh("echo ran");
    b.save();
    let id = rt.id("nomem-dev");
    let out = in_v2_without_memory(&rt, &["run", "--bundle", b.path().to_str().unwrap(), &id]).ok();
    assert_eq!(out.stdout, "ran\n");
}
