//! Spec mounts as engines write them (issue 10's defects): recursive read-only binds,
//! options a bind cannot take, `tmpcopyup`, a missing working directory, a user namespace
//! with a cgroup mount, and a container without a mount namespace.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use skiff_tests::*;

/// A tmpfs mounted on the host under a scratch directory (a submount for a recursive
/// bind), unmounted when dropped.
struct HostTmpfs {
    path: std::path::PathBuf,
}

impl HostTmpfs {
    fn at(path: std::path::PathBuf) -> HostTmpfs {
        fs::create_dir_all(&path).unwrap();
        host(&["mount", "-t", "tmpfs", "-o", "size=1m", "skiff-test", path.to_str().unwrap()]).ok();
        HostTmpfs { path }
    }
}

impl Drop for HostTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// `rbind,ro` (Docker's `-v src:dst:ro`) makes every mount of the tree read-only, not
/// only the top one; `rro` on a plain bind does too.
#[test]
fn a_read_only_rbind_is_read_only_all_the_way_down() {
    let rt = Runtime::new();
    let src = Scratch::new("rbind-src");
    let _sub = HostTmpfs::at(src.join("sub"));
    for opts in [vec!["rbind", "ro"], vec!["rbind", "rro"]] {
        let mut b = Bundle::new();
        b.add_mount(json!({"destination": "/mnt", "type": "bind", "source": src.path(), "options": opts}));
        b.sh(
            "touch /mnt/top 2>/dev/null && echo TOP-WRITABLE; touch /mnt/sub/x 2>/dev/null && echo SUB-WRITABLE; true",
        );
        let id = rt.id("rro");
        let out = rt.run(&b, &id);
        if !out.success() && !is_skiff() {
            skip_part(&format!("{:?} refuses {opts:?}: {}", kind(), out.stderr.trim()));
            continue;
        }
        let out = out.ok();
        assert!(!out.stdout.contains("TOP-WRITABLE"), "{opts:?}: the bind is read-only:\n{out}");
        if out.stdout.contains("SUB-WRITABLE") && !is_skiff() {
            skip_part(&format!("{:?} leaves the submounts of {opts:?} writable", kind()));
            continue;
        }
        assert!(!out.stdout.contains("SUB-WRITABLE"), "{opts:?}: the submount is read-only too:\n{out}");
    }
    if is_skiff() {
        assert!(!src.join("top").exists() && !src.join("sub/x").exists());
    }
}

/// An option a bind mount cannot take (a typo of nosuid, a filesystem option) fails the
/// create with a clear error instead of leaving the bind as it would be without it.
#[test]
fn a_bind_mount_with_an_unknown_option_fails_clearly() {
    let rt = Runtime::new();
    let src = Scratch::new("bind-typo");
    for bad in ["nosiud", "size=10m"] {
        let mut b = Bundle::new();
        b.add_mount(
            json!({"destination": "/mnt", "type": "bind", "source": src.path(), "options": ["rbind", "ro", bad]}),
        );
        let id = rt.id("typo");
        let out = rt.run(&b, &id);
        if out.success() && !is_skiff() {
            skip_part(&format!("{:?} ignores the unknown bind option {bad:?}", kind()));
            continue;
        }
        out.fails().error_mentions(&[bad, "bind"]);
        assert!(!rt.state_entries().contains(&id), "no state left");
    }
}

/// `tmpcopyup` (podman's `--tmpfs`, systemd containers): the tmpfs starts with what the
/// image has at its mount point: files with their content, owner and mode, directories,
/// symlinks as symlinks; writes then go to the tmpfs, not to the image.
#[test]
fn tmpcopyup_fills_the_tmpfs_with_the_images_content() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    let data = b.rootfs().join("data");
    fs::create_dir_all(data.join("dir")).unwrap();
    fs::write(data.join("a"), "hello").unwrap();
    fs::set_permissions(data.join("a"), fs::Permissions::from_mode(0o604)).unwrap();
    std::os::unix::fs::chown(data.join("a"), Some(1000), Some(1001)).unwrap();
    fs::write(data.join("dir/b"), "deep").unwrap();
    std::os::unix::fs::symlink("a", data.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", data.join("abs")).unwrap();
    b.add_mount(
        json!({"destination": "/data", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "tmpcopyup"]}),
    );
    b.sh("cat /data/a; echo; cat /data/dir/b; echo; readlink /data/link; readlink /data/abs; \
         stat -c '%a %u %g' /data/a; grep ' /data ' /proc/self/mountinfo | grep -c tmpfs; echo new > /data/new");
    let out = rt.output(&b);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, vec!["hello", "deep", "a", "/etc/passwd", "604 1000 1001", "1"], "{out}");
    assert!(!data.join("new").exists(), "writes go to the tmpfs, not to the image");
    assert_eq!(fs::metadata(data.join("a")).unwrap().uid(), 1000, "the image is untouched");
}

/// A working directory the image does not have is created (Kubernetes' workingDir).
#[test]
fn a_missing_working_directory_is_created() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.set("/process/cwd", json!("/work/dir/deep")).args(&["pwd"]);
    assert_eq!(rt.output(&b), "/work/dir/deep\n");
    assert!(b.rootfs().join("work/dir/deep").is_dir());
}

/// A user namespace without a cgroup namespace cannot mount a cgroup filesystem: the
/// container's cgroup directories of the host are bound instead, as runc does.
#[test]
fn a_user_namespace_without_a_cgroup_namespace_gets_its_cgroup_bound() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.namespace("user", None)
        .without_namespace("cgroup")
        .set("/linux/uidMappings", json!([{"containerID": 0, "hostID": 100000, "size": 65536}]))
        .set("/linux/gidMappings", json!([{"containerID": 0, "hostID": 100000, "size": 65536}]))
        .sh("ls /sys/fs/cgroup | sort | tr '\\n' ' '; echo; cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max");
    b.set("/linux/resources/pids", json!({"limit": 77}));
    let id = rt.id("usercg");
    let out = rt.run(&b, &id);
    let out = out.ok();
    let last = out.stdout.lines().last().unwrap_or_default().trim().to_string();
    assert_eq!(last, "77", "the container sees its own cgroup (its pids limit):\n{out}");
}

/// Without a mount namespace (runtime-tools' linux_ns_itype), the container shares the
/// host's mount table and is chroot'ed into its rootfs; its mounts are removed by
/// `delete`; what would change the host's mounts is refused.
#[test]
fn a_container_without_a_mount_namespace_runs_chrooted() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.without_namespace("mount")
        .remove("/linux/maskedPaths")
        .remove("/linux/readonlyPaths")
        .set("/root/readonly", json!(false))
        .sh("readlink /proc/self/ns/mnt; ls /bin/busybox");
    let id = rt.id("nomnt");
    let out = rt.run(&b, &id).ok();
    let host_mnt = fs::read_link("/proc/self/ns/mnt").unwrap().display().to_string();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines, vec![host_mnt.as_str(), "/bin/busybox"], "{out}");
    let rootfs = b.rootfs();
    let left: Vec<_> = mount_points().into_iter().filter(|m| m.starts_with(&rootfs)).collect();
    if !left.is_empty() && !is_skiff() {
        skip_part(&format!("{:?} leaves the mounts of a container without a mount namespace: {left:?}", kind()));
        for m in left.iter().rev() {
            let _ = std::process::Command::new("umount").arg("-l").arg(m).status();
        }
    }
    assert!(left.is_empty() || !is_skiff(), "the container's mounts are gone after delete: {left:?}");
    // What would change the host's mounts.
    for (at, value) in [("/linux/maskedPaths", json!(["/proc/timer_list"])), ("/root/readonly", json!(true))] {
        let mut b = Bundle::new();
        b.without_namespace("mount").remove("/linux/maskedPaths").remove("/linux/readonlyPaths").set(at, value);
        let id = rt.id("nomnt-bad");
        let out = rt.run(&b, &id);
        if out.success() && !is_skiff() {
            skip_part(&format!("{:?} runs {at} without a mount namespace", kind()));
            continue;
        }
        let out = out.fails();
        if is_skiff() {
            out.error_mentions(&["mount namespace"]);
        }
        let left: Vec<_> = mount_points().into_iter().filter(|m| m.starts_with(b.rootfs())).collect();
        assert!(left.is_empty(), "{at}: nothing left mounted: {left:?}");
    }
}
