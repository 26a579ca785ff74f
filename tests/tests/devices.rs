//! Device access: a container with CAP_MKNOD makes a node of the host's root disk and tries
//! to read it (the attack that works wherever device rules are not enforced, e.g. on cgroup
//! v2 without a device program); a device the spec grants (/dev/fuse) still opens.
//!
//! On this hybrid host the v1 devices controller denies as well, so to prove the cgroup v2
//! program itself, one test opens the container's v1 devices cgroup up between `create` and
//! `start`: then only the program in the cgroup2 hierarchy stands in the way. runc and crun
//! use the v1 controller alone on a hybrid host, so that part is skiff-runtime's.

use std::fs;
use std::io::Read;
use std::path::Path;

use skiff_tests::*;

/// runc's default capabilities plus CAP_MKNOD (containerd's and podman's defaults have it).
fn caps() -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_MKNOD"]);
    json!({"bounding": caps, "effective": caps, "permitted": caps})
}

/// A block device the host can read and a container must not, and 16 bytes of its first
/// 4 KiB as the container's `od | tr` would print them (found in the container's output only
/// if it read the device): the host's root disk, or, where not even the host's root may
/// read that (this test machine), a loop device over a file that holds a canary.
struct Target {
    major: u32,
    minor: u32,
    canary: String,
    _loop: Option<LoopDev>,
}

/// A loop device, detached on drop.
struct LoopDev {
    node: String,
    _file: Scratch,
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = host(&["losetup", "-d", &self.node]);
    }
}

impl Target {
    fn new() -> Target {
        if let Some(t) = Target::root_disk() {
            return t;
        }
        let dir = Scratch::new("devices-canary");
        let img = dir.join("disk.img");
        let mut data = vec![0u8; 64 * 1024];
        data[1024..1040].copy_from_slice(b"SKIFF-CANARY-v2!");
        fs::write(&img, &data).unwrap();
        let node = host(&["losetup", "--find", "--show", img.to_str().unwrap()]).ok().stdout.trim().to_string();
        let lo = LoopDev { node, _file: dir };
        let (major, minor) = Target::numbers(Path::new(&lo.node)).expect("the loop device's numbers");
        let canary = Target::canary(Path::new(&lo.node)).expect("read the loop device");
        Target { major, minor, canary, _loop: Some(lo) }
    }

    fn root_disk() -> Option<Target> {
        let mi = fs::read_to_string("/proc/self/mountinfo").ok()?;
        let dev = mi.lines().find(|l| l.split(' ').nth(4) == Some("/"))?.split(' ').nth(2)?.to_string();
        let uevent = fs::read_to_string(Path::new("/sys/dev/block").join(&dev).join("uevent")).ok()?;
        let node = Path::new("/dev").join(uevent.lines().find_map(|l| l.strip_prefix("DEVNAME="))?);
        let (major, minor) = dev.split_once(':')?;
        let canary = Target::canary(&node)?;
        Some(Target { major: major.parse().ok()?, minor: minor.parse().ok()?, canary, _loop: None })
    }

    /// "MAJ:MIN" from sysfs.
    fn numbers(node: &Path) -> Option<(u32, u32)> {
        let name = node.file_name()?.to_str()?;
        let dev = fs::read_to_string(Path::new("/sys/class/block").join(name).join("dev")).ok()?;
        let (major, minor) = dev.trim().split_once(':')?;
        Some((major.parse().ok()?, minor.parse().ok()?))
    }

    fn canary(node: &Path) -> Option<String> {
        let mut buf = vec![0u8; 4096];
        fs::File::open(node).and_then(|mut f| f.read_exact(&mut buf)).ok()?;
        let chunk = buf.chunks(16).find(|c| c.iter().any(|&b| b != 0))?;
        Some(chunk.iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// The container makes a node of the device and reads 4 KiB of it.
fn attack(maj: u32, min: u32) -> String {
    format!(
        "mknod /x b {maj} {min} && echo mknod-ok; \
         head -c 4096 /x > /tmp/d 2> /tmp/e; echo read-rc=$?; cat /tmp/e; \
         echo data=$(od -An -tx1 /tmp/d | tr -d ' \\n')"
    )
}

fn bundle_for(script: &str) -> Bundle {
    let mut b = Bundle::new();
    b.set("/process/capabilities", caps()).set("/root/readonly", json!(false)).sh(script);
    b
}

#[track_caller]
fn assert_denied(out: &str, canary: &str) {
    assert!(!out.contains(canary), "the container read the host's disk:\n{out}");
    assert!(!out.contains("read-rc=0"), "reading the host's disk must fail:\n{out}");
    assert!(out.contains("Operation not permitted"), "the device cgroup refused the read:\n{out}");
}

#[test]
fn host_disk_cannot_be_read() {
    let t = Target::new();
    let rt = Runtime::new();
    // The spec's rules are runc's default: deny all (the defaults allow mknod, not reads).
    let b = bundle_for(&attack(t.major, t.minor));
    let out = rt.output(&b);
    assert_denied(&out, &t.canary);
}

#[test]
fn host_disk_cannot_be_read_without_device_rules() {
    if kind() == Kind::Crun && cgroup_v1("devices").is_some() {
        // crun writes the spec's rules to the v1 controller as they are: no rules, no limit.
        skip("crun enforces no device rule on cgroup v1 when the spec has none");
        return;
    }
    let t = Target::new();
    let rt = Runtime::new();
    // No linux.resources.devices at all: still only the default devices (runc's behaviour).
    let mut b = bundle_for(&attack(t.major, t.minor));
    b.remove("/linux/resources");
    let out = rt.output(&b);
    assert_denied(&out, &t.canary);
}

#[test]
fn cgroup_v2_program_denies_on_its_own() {
    if !skiff_part("the cgroup2 device program on a hybrid host (runc and crun use only the v1 controller here)") {
        return;
    }
    let Some(v1) = cgroup_v1("devices") else {
        skip("no v1 devices controller: host_disk_cannot_be_read already tests the cgroup v2 program alone");
        return;
    };
    let t = Target::new();
    let rt = Runtime::new();
    let id = rt.id("devv2");
    let path = format!("/{id}");
    rt.cleanup_cgroup(&path);
    let mut b = bundle_for(&attack(t.major, t.minor));
    b.set("/linux/cgroupsPath", json!(path));
    let c = rt.create(&b, &id).ok();
    // Open the v1 devices cgroup up: only the cgroup2 program is left to deny.
    let allow = cgroup_dir(&v1, &path).join("devices.allow");
    fs::write(&allow, "a *:* rwm").unwrap_or_else(|e| panic!("write {}: {e}", allow.display()));
    let list = fs::read_to_string(cgroup_dir(&v1, &path).join("devices.list")).unwrap_or_default();
    assert_eq!(list.trim(), "a *:* rwm", "the v1 devices cgroup allows everything now");
    rt.start(&id).ok();
    rt.wait_status(&id, "stopped");
    let out = c.stdout_now() + &c.stderr_now();
    assert_denied(&out, &t.canary);
}

#[test]
fn device_granted_by_the_spec_opens() {
    if !Path::new("/dev/fuse").exists() {
        skip("the host has no /dev/fuse");
        return;
    }
    let rt = Runtime::new();
    let mut b = bundle_for(
        "stat -c '%F %t:%T' /dev/fuse; { : <> /dev/fuse; } 2>&1 && echo fuse-opened; \
         { : < /dev/zero; } 2>&1 && echo zero-opened",
    );
    b.set("/mounts", standard_mounts())
        .set(
            "/linux/devices",
            json!([{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o666, "uid": 0, "gid": 0}]),
        )
        .set(
            "/linux/resources/devices",
            json!([{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rwm"}]),
        );
    let out = rt.output(&b);
    assert!(out.contains("character special file a:e5"), "the node is there: {out}");
    assert!(out.contains("fuse-opened"), "the spec's device opens for reading and writing:\n{out}");
    assert!(out.contains("zero-opened"), "a default device still opens:\n{out}");
}
