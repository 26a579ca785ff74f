//! A service's devices, end to end (issue 13): `devices:` makes the host's node in the
//! container with its numbers and lets it be opened (and only as its permissions say); a
//! service without it has no such node, and a node it mknods itself with the same numbers
//! cannot be opened (the attack: read the host's disk through its own node);
//! `device_cgroup_rules:` lets a mknod'ed node be opened; `privileged: true` sees the host's
//! devices, holds CAP_SYS_ADMIN (mounts a tmpfs) and has /proc unmasked (/proc/timer_list: this
//! kernel has no /proc/kcore). (/dev/net/tun opens after a mknod in any container: it is in
//! runc's default allow list, which skiff-runtime keeps.) Real nodes of this
//! host: /dev/fuse, /dev/net/tun and a loop device over a small file of the test's (detached
//! at the end, even on failure). Run as root; `SKIFF_TEST_RUNTIME=runc` or `crun` runs the
//! same checks on those runtimes.

use std::fs;
use std::path::PathBuf;

use skiff_tests::agent::Agent;
use skiff_tests::registry::{Registry, BUSYBOX_OCI};
use skiff_tests::{host, Scratch};

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

fn image() -> String {
    Registry::shared().image(BUSYBOX_OCI)
}

/// A loop device over a 64 KiB file starting with `marker`; detached on drop.
struct Loop {
    dev: String,
    major: u32,
    minor: u32,
    marker: String,
    _dir: Scratch,
}

impl Loop {
    fn new() -> Loop {
        use std::os::unix::fs::MetadataExt;
        let dir = Scratch::new("loop");
        let file = dir.join("disk.img");
        let marker = format!("SKIFF-LOOP-MARKER-{}", std::process::id());
        let mut data = marker.clone().into_bytes();
        data.resize(64 << 10, b'.');
        fs::write(&file, data).unwrap();
        let out = host(&["losetup", "-f", "--show", file.to_str().unwrap()]).ok();
        let dev = out.stdout.trim().to_string();
        let rdev = fs::metadata(&dev).unwrap().rdev();
        Loop { major: libc::major(rdev), minor: libc::minor(rdev), dev, marker, _dir: dir }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = host(&["losetup", "-d", &self.dev]);
    }
}

/// `sh -c SCRIPT` in replica `id` through the runtime: (success, stdout + stderr).
fn sh(a: &Agent, id: &str, script: &str) -> (bool, String) {
    let out = a.rt(&["exec", "--", id, "sh", "-c", script]);
    (out.success(), format!("{}{}", out.stdout, out.stderr))
}

fn service(name: &str, extra: &str) -> String {
    format!(
        "  {name}:\n    image: {img}\n    user: \"0\"\n    command: [sleep, \"1000\"]\n    stop_grace_period: 1s\n{extra}",
        img = image()
    )
}

#[test]
fn devices_are_made_as_asked_and_nothing_else_opens() {
    let lp = Loop::new();
    let mut a = Agent::new(SKIFF);
    a.write_manifest(&format!(
        "services:\n{}{}",
        service(
            "dev",
            &format!(
                "    devices:\n      - /dev/fuse\n      - /dev/net/tun:/dev/net/tun:rw\n      - {}:/dev/disk0:r\n",
                lp.dev
            )
        ),
        service("plain", "")
    ));
    a.start();
    a.wait_running("dev", 1);
    a.wait_running("plain", 1);

    // Present, with the host's numbers (stat prints them in hex).
    let (ok, out) = sh(&a, "dev-1", "stat -c '%F %t:%T' /dev/net/tun /dev/fuse /dev/disk0");
    assert!(ok, "{out}");
    let want = format!(
        "character special file a:c8\ncharacter special file a:e5\nblock special file {:x}:{:x}\n",
        lp.major, lp.minor
    );
    assert_eq!(out, want);
    // Opened: tun answers a read with EBADFD (no interface attached), not ENODEV/EPERM.
    let (ok, out) = sh(&a, "dev-1", "cat /dev/net/tun");
    assert!(!ok && out.contains("File descriptor in bad state"), "{out}");
    let (ok, out) = sh(&a, "dev-1", "head -c 64 /dev/disk0");
    assert!(ok && out.contains(&lp.marker), "the loop device reads: {out}");
    // `:r`: no write.
    let (ok, out) = sh(&a, "dev-1", "echo x | dd of=/dev/disk0 bs=1 count=1 conv=notrunc");
    assert!(!ok && out.contains("Operation not permitted"), "a write to an :r device must fail: {out}");
    assert!(fs::read(&lp.dev).is_ok_and(|d| d.starts_with(lp.marker.as_bytes())), "the disk is unchanged");

    // Without devices: no node, and its own node with the disk's numbers does not open.
    let (ok, out) = sh(&a, "plain-1", "test -e /dev/net/tun || test -e /dev/disk0 || echo absent");
    assert!(ok && out.trim() == "absent", "{out}");
    let attack = format!("mknod /dev/stolen b {} {} && head -c 64 /dev/stolen", lp.major, lp.minor);
    let (ok, out) = sh(&a, "plain-1", &attack);
    assert!(!ok && out.contains("Operation not permitted"), "{out}");
    assert!(!out.contains(&lp.marker), "the host's disk was read: {out}");
    let (ok, out) = sh(&a, "plain-1", "mknod /dev/fuse2 c 10 229 && cat /dev/fuse2");
    assert!(!ok && out.contains("Operation not permitted"), "{out}");
    // Nor in the service with devices, for a device it was not given.
    let (ok, out) = sh(&a, "dev-1", "mknod /dev/kmsg2 c 1 11 && head -c 1 /dev/kmsg2");
    assert!(!ok && out.contains("Operation not permitted"), "{out}");
    a.down();
}

#[test]
fn a_device_cgroup_rule_opens_a_mknoded_node() {
    let lp = Loop::new();
    let mut a = Agent::new(SKIFF);
    a.write_manifest(&format!(
        "services:\n{}",
        service("rules", &format!("    device_cgroup_rules:\n      - 'b {}:* r'\n", lp.major))
    ));
    a.start();
    a.wait_running("rules", 1);
    let (ok, out) = sh(&a, "rules-1", &format!("mknod /dev/d b {} {} && head -c 64 /dev/d", lp.major, lp.minor));
    assert!(ok && out.contains(&lp.marker), "{out}");
    // Read only, and only that major.
    let (ok, out) = sh(&a, "rules-1", "echo x | dd of=/dev/d bs=1 count=1 conv=notrunc");
    assert!(!ok && out.contains("Operation not permitted"), "{out}");
    let (ok, out) = sh(&a, "rules-1", "mknod /dev/fuse2 c 10 229 && cat /dev/fuse2");
    assert!(!ok && out.contains("Operation not permitted"), "{out}");
    a.down();
}

#[test]
fn privileged_is_the_host() {
    let lp = Loop::new();
    let mut a = Agent::new(SKIFF);
    a.write_manifest(&format!("services:\n{}{}", service("priv", "    privileged: true\n"), service("plain", "")));
    a.start();
    a.wait_running("priv", 1);
    a.wait_running("plain", 1);
    // The host's devices (the loop device among them).
    let (ok, out) = sh(&a, "priv-1", &format!("head -c 64 {}", lp.dev));
    assert!(ok && out.contains(&lp.marker), "{out}");
    let (ok, out) = sh(&a, "priv-1", "cat /dev/net/tun");
    assert!(!ok && out.contains("File descriptor in bad state"), "{out}");
    // Its own ptys, not the host's.
    let (ok, out) = sh(&a, "priv-1", "readlink /dev/ptmx");
    assert!(ok && out.trim() == "pts/ptmx", "{out}");
    // Every capability: mount works; /proc/timer_list is the kernel's, not a masked /dev/null.
    // Every capability the agent holds (this test's bounding set).
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let bnd = status.lines().find_map(|l| l.strip_prefix("CapBnd:")).unwrap().trim().to_string();
    let (ok, out) = sh(&a, "priv-1", "grep CapEff /proc/self/status");
    assert!(ok && out.contains(&bnd), "CapEff should be {bnd}: {out}");
    let (ok, out) =
        sh(&a, "priv-1", "mkdir -p /mnt/t && mount -t tmpfs none /mnt/t && touch /mnt/t/x && umount /mnt/t");
    assert!(ok, "{out}");
    let (ok, out) = sh(&a, "priv-1", "stat -c %F /proc/timer_list");
    assert!(ok && out.starts_with("regular"), "{out}");
    let (ok, out) = sh(&a, "priv-1", "grep ' /sys ' /proc/mounts");
    assert!(ok && out.contains(" rw,"), "/sys is writable: {out}");
    let (ok, out) = sh(&a, "priv-1", "grep NoNewPrivs /proc/self/status");
    assert!(ok && out.contains('0'), "{out}");
    // The same in a plain service: none of it.
    let (ok, out) = sh(&a, "plain-1", &format!("test -e {} || echo absent", lp.dev));
    assert!(ok && out.trim() == "absent", "{out}");
    let (ok, out) = sh(&a, "plain-1", "mkdir -p /mnt/t && mount -t tmpfs none /mnt/t");
    assert!(!ok, "{out}");
    let (ok, out) = sh(&a, "plain-1", "stat -c %F /proc/timer_list");
    assert!(ok && out.trim() == "character special file", "{out}");
    a.down();
}

/// A start fails with a clear error in status while the device is missing.
#[test]
fn a_missing_device_fails_the_replica_with_a_clear_error() {
    let mut a = Agent::new(SKIFF);
    let missing = PathBuf::from("/dev/skiff-test-no-such-device");
    a.write_manifest(&format!(
        "services:\n{}",
        service("gone", &format!("    restart: \"no\"\n    devices:\n      - {}\n", missing.display()))
    ));
    a.start();
    let st = a.wait_status("the start error", |st| st.to_string().contains("does not exist on the host"));
    assert!(st.to_string().contains("device /dev/skiff-test-no-such-device does not exist on the host"), "{st:#}");
    a.down();
}
