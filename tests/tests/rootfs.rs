//! The container's filesystem: pivot_root / --no-pivot, read-only root, mounts from the
//! spec, devices, masked and read-only paths.

use std::fs;
use std::path::Path;

use skiff_tests::*;

const ROOT_CHECK: &str = "ls /; [ -e /config.json ] && echo LEAK-config; [ -e /../config.json ] && echo LEAK-up; \
                          [ -e /host-marker ] && echo LEAK-marker; cat /proc/self/mountinfo";

fn check_root_is_the_rootfs(b: &Bundle, out: &str) {
    for leak in ["LEAK-config", "LEAK-up", "LEAK-marker"] {
        assert!(!out.contains(leak), "{leak}: the host is visible from the container:\n{out}");
    }
    let top: Vec<&str> = out.lines().take_while(|l| !l.contains(' ')).collect();
    for d in ["bin", "etc", "proc", "dev", "tmp"] {
        assert!(top.contains(&d), "/ holds {d}: {top:?}");
    }
    let mounts = parse_mountinfo(out);
    assert!(mounts.iter().any(|m| m.mount_point == Path::new("/")), "a mount at /: {out}");
    let bundle = b.path().to_str().unwrap();
    for m in &mounts {
        let mp = m.mount_point.to_string_lossy();
        assert!(!mp.contains(bundle) && !mp.contains("pivot"), "a host-side mount is visible inside: {mp}");
    }
}

#[test]
fn pivot_root_hides_the_host() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    fs::write(b.file("host-marker"), "x").unwrap();
    b.sh(ROOT_CHECK);
    let out = rt.output(&b);
    check_root_is_the_rootfs(&b, &out);
}

#[test]
fn no_pivot_also_hides_the_host() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    fs::write(b.file("host-marker"), "x").unwrap();
    b.sh(ROOT_CHECK);
    b.save();
    let id = rt.id("nopivot");
    let out = rt.cmd(&["run", "--no-pivot", "--bundle", b.path().to_str().unwrap(), &id]).ok();
    check_root_is_the_rootfs(&b, &out.stdout);
}

#[test]
fn readonly_root() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.set("/root/readonly", json!(true)).sh("touch /written 2>&1; echo rc=$?; touch /tmp/x 2>&1; echo rc=$?");
    let out = rt.output(&b);
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(!out.contains("rc=0"), "{out}");
    assert!(!b.rootfs().join("written").exists());

    b.set("/root/readonly", json!(false)).sh("echo data > /written && echo rc=$?");
    assert_eq!(rt.output(&b), "rc=0\n");
    assert_eq!(read(b.rootfs().join("written")), "data\n", "the write landed in the bundle's rootfs");
}

#[test]
fn mounts_from_the_spec() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    let data = Scratch::new("bind-src");
    fs::write(data.join("data.txt"), "from-host\n").unwrap();
    let file = data.join("single-file");
    fs::write(&file, "one file\n").unwrap();
    b.set("/mounts", standard_mounts())
        .namespace("mount", None)
        .namespace("ipc", None)
        .add_mount(json!({"destination": "/data", "type": "bind", "source": data.path(), "options": ["rbind", "ro"]}))
        .add_mount(
            json!({"destination": "/etc/single-file", "type": "bind", "source": file, "options": ["bind", "ro"]}),
        )
        .add_mount(json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
                          "options": ["nosuid", "noexec", "nodev", "size=1m", "mode=1770"]}))
        .sh("cat /data/data.txt /etc/single-file; touch /data/new 2>&1; stat -c %a /scratch; \
             echo x > /scratch/f && echo tmpfs-writable; cat /proc/self/mountinfo");
    let out = rt.output(&b);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("from-host"));
    assert_eq!(lines.next(), Some("one file"));
    assert!(lines.next().unwrap().contains("Read-only file system"), "bind ro refuses writes: {out}");
    assert_eq!(lines.next(), Some("1770"), "tmpfs mode: {out}");
    assert_eq!(lines.next(), Some("tmpfs-writable"));
    assert!(!data.join("new").exists());

    let mounts = parse_mountinfo(&out);
    let at = |p: &str| {
        mounts
            .iter()
            .rev()
            .find(|m| m.mount_point == Path::new(p))
            .unwrap_or_else(|| panic!("nothing mounted at {p}:\n{out}"))
            .clone()
    };
    let has = |opts: &str, o: &str| opts.split(',').any(|x| x == o);

    let scratch = at("/scratch");
    assert_eq!(scratch.fstype, "tmpfs");
    for o in ["nosuid", "nodev", "noexec"] {
        assert!(has(&scratch.mount_options, o), "/scratch has {o}: {scratch:?}");
    }
    assert!(has(&scratch.super_options, "size=1024k"), "tmpfs size=1m: {scratch:?}");
    assert!(has(&scratch.super_options, "mode=1770"), "tmpfs mode: {scratch:?}");
    assert!(has(&at("/data").mount_options, "ro"));
    assert!(has(&at("/etc/single-file").mount_options, "ro"));

    for (p, t) in [
        ("/proc", "proc"),
        ("/sys", "sysfs"),
        ("/dev/pts", "devpts"),
        ("/dev/mqueue", "mqueue"),
        ("/dev/shm", "tmpfs"),
        ("/dev", "tmpfs"),
    ] {
        assert_eq!(at(p).fstype, t, "{p}");
    }
    let sys = at("/sys");
    assert!(has(&sys.mount_options, "ro"), "/sys ro: {sys:?}");
    let mq = at("/dev/mqueue");
    for o in ["nosuid", "nodev", "noexec"] {
        assert!(has(&mq.mount_options, o), "/dev/mqueue has {o}: {mq:?}");
    }
    // cgroup: v1 is a tmpfs with one cgroup mount per hierarchy below it, v2 a cgroup2 mount.
    assert!(
        mounts.iter().any(|m| m.mount_point.starts_with("/sys/fs/cgroup") && m.fstype.starts_with("cgroup")),
        "cgroups mounted under /sys/fs/cgroup:\n{out}"
    );
    for m in mounts.iter().filter(|m| m.mount_point.starts_with("/sys/fs/cgroup") && m.fstype.starts_with("cgroup")) {
        assert!(has(&m.mount_options, "ro"), "cgroup mounts are read-only as asked: {m:?}");
    }
}

#[test]
fn default_devices() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.set("/mounts", standard_mounts()).set("/linux/devices", json!([])).sh(
        "for d in null zero full random urandom tty; do [ -c /dev/$d ] && stat -c \"$d %t:%T %a\" /dev/$d; done; \
         [ -e /dev/ptmx ] && echo ptmx; \
         for l in fd stdin stdout stderr; do echo \"$l -> $(readlink /dev/$l)\"; done; \
         echo x > /dev/null && echo null-writable; head -c 5 /dev/zero | wc -c; head -c 5 /dev/urandom | wc -c; \
         { echo x > /dev/full; } 2>&1; true",
    );
    let out = rt.output(&b);
    for l in [
        "null 1:3 666",
        "zero 1:5 666",
        "full 1:7 666",
        "random 1:8 666",
        "urandom 1:9 666",
        "tty 5:0 666",
        "ptmx",
        "fd -> /proc/self/fd",
        "stdin -> /proc/self/fd/0",
        "stdout -> /proc/self/fd/1",
        "stderr -> /proc/self/fd/2",
        "null-writable",
        "5",
    ] {
        assert!(out.lines().any(|x| x == l), "missing {l:?} in:\n{out}");
    }
    assert!(out.contains("No space left on device"), "/dev/full is the real one: {out}");
}

#[test]
fn spec_devices_are_created() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.set("/mounts", standard_mounts())
        .set(
            "/linux/devices",
            json!([
                {"path": "/dev/skt-urandom", "type": "c", "major": 1, "minor": 9, "fileMode": 0o640, "uid": 1000, "gid": 1001},
                {"path": "/dev/skt-kmsg", "type": "c", "major": 1, "minor": 11}
            ]),
        )
        // Access is the device cgroup's business: allow the first node only (and let
        // root pass file permissions, so only the cgroup can refuse).
        .set("/process/capabilities", json!({"bounding": ["CAP_DAC_OVERRIDE"], "effective": ["CAP_DAC_OVERRIDE"], "permitted": ["CAP_DAC_OVERRIDE"]}))
        .set(
            "/linux/resources/devices",
            json!([{"allow": false, "access": "rwm"},
                   {"allow": true, "type": "c", "major": 1, "minor": 9, "access": "rwm"}]),
        )
        .sh("stat -c '%F %t:%T %a %u %g' /dev/skt-urandom; head -c 7 /dev/skt-urandom | wc -c; \
             stat -c '%F %t:%T' /dev/skt-kmsg; { head -c 7 /dev/skt-kmsg; } 2>&1; true");
    let out = rt.output(&b);
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines[0], "character special file 1:9 640 1000 1001", "{out}");
    assert_eq!(lines[1], "7", "the allowed device can be read: {out}");
    assert_eq!(lines[2], "character special file 1:b", "{out}");
    assert!(lines[3].contains("Operation not permitted"), "the device cgroup refuses the other: {out}");
}

#[test]
fn masked_and_readonly_paths() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    // Mask files that are there and not empty on this host (/proc/kcore needs CONFIG_PROC_KCORE).
    let files: Vec<&str> = ["/proc/kcore", "/proc/timer_list", "/proc/keys"]
        .into_iter()
        .filter(|f| fs::File::open(f).and_then(|mut f| std::io::Read::read(&mut f, &mut [0u8; 1])).unwrap_or(0) > 0)
        .collect();
    assert!(!files.is_empty(), "no maskable file on this host");
    let mut masked: Vec<&str> = files.clone();
    masked.extend(["/sys/firmware", "/proc/does-not-exist"]);
    let script: String = files.iter().map(|f| format!("echo {f}=$(wc -c < {f}); ")).collect();
    b.set("/mounts", standard_mounts())
        .namespace("uts", None)
        .set("/hostname", json!("masked"))
        .set("/linux/maskedPaths", json!(masked))
        .set("/linux/readonlyPaths", json!(["/proc/sys", "/proc/sysrq-trigger"]))
        // Root with the capability to write /proc/sys, so only the read-only mount refuses
        // (and it writes the value already there, so a broken runtime changes nothing).
        .set(
            "/process/capabilities",
            json!({"bounding": ["CAP_SYS_ADMIN"], "effective": ["CAP_SYS_ADMIN"], "permitted": ["CAP_SYS_ADMIN"]}),
        )
        .sh(&format!(
            "{script} echo firmware=$(ls -A /sys/firmware | wc -l); \
             {{ echo masked > /proc/sys/kernel/hostname; }} 2>&1; echo hostname=$(hostname); \
             echo ostype=$(cat /proc/sys/kernel/ostype)"
        ));
    let out = rt.output(&b);
    let mut want: Vec<String> = files.iter().map(|f| format!("{f}=0")).collect();
    want.extend(["firmware=0", "hostname=masked", "ostype=Linux"].map(String::from));
    for l in &want {
        assert!(out.lines().any(|x| x == l), "missing {l:?} in:\n{out}");
    }
    assert!(out.contains("Read-only file system"), "/proc/sys refuses writes: {out}");
}
