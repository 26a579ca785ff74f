//! `linux.rootfsPropagation` on a host whose mounts are shared (every systemd host; here a
//! mount namespace made by `unshare -m --propagation shared` plays the host): the
//! container's mounts never appear on the host, `create` works with every value, the
//! container's root has the propagation asked for, and a shared bind carries mounts as
//! Kubernetes' HostToContainer (`rslave`) and Bidirectional (`rshared`) expect.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use skiff_tests::*;

/// A mount namespace with shared propagation, alive while this lives, with a tmpfs of its
/// own (shared too) that holds the bundle: so a non-recursive `private` on `/` cannot hide
/// a leak.
struct SharedHost {
    pid: u32,
    child: std::process::Child,
    /// A tmpfs mounted in the namespace only.
    dir: Scratch,
}

impl SharedHost {
    fn new() -> SharedHost {
        let dir = Scratch::new("shared-host");
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "shared", "sleep", "3600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare");
        let pid = child.id();
        let h = SharedHost { pid, child, dir };
        wait_until("the shared namespace", TIMEOUT, || {
            std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok() != std::fs::read_link("/proc/self/ns/mnt").ok()
        });
        h.sh(&format!("mount -t tmpfs -o mode=755 shared-tmpfs '{}'", h.dir.path().display())).ok();
        h
    }

    fn sh(&self, script: &str) -> Out {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.pid.to_string(), "-m", "sh", "-c", script]);
        run_command(cmd, format!("(shared host) {script}"), self.dir_out(), TIMEOUT)
    }

    fn dir_out(&self) -> &Path {
        Path::new("/tmp")
    }

    /// Mount points in the namespace at or under `under`.
    fn mounts_under(&self, under: &Path) -> Vec<String> {
        let info = std::fs::read_to_string(format!("/proc/{}/mountinfo", self.pid)).unwrap();
        parse_mountinfo(&info)
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(under))
            .map(|p| p.display().to_string())
            .collect()
    }
}

impl Drop for SharedHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A copy of a bundle inside the shared namespace's tmpfs.
fn bundle_in(h: &SharedHost, b: &Bundle, name: &str) -> PathBuf {
    b.save();
    let dest = h.dir.join(name);
    h.sh(&format!("cp -a '{}' '{}'", b.path().display(), dest.display())).ok();
    dest
}

fn runtime_in(h: &SharedHost, rt: &Runtime, args: &str) -> Out {
    h.sh(&format!("exec '{}' --root '{}' {args}", rt.bin().display(), rt.root().display()))
}

/// The optional fields of the root mount in a mountinfo text ("shared:5 master:3", ...).
fn root_tags(mountinfo: &str) -> String {
    mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .map(|l| {
            let pre = l.split(" - ").next().unwrap_or("");
            pre.split(' ').skip(6).collect::<Vec<_>>().join(" ")
        })
        .unwrap_or_default()
}

#[test]
fn every_root_propagation_works_on_a_shared_host_and_leaks_no_mount() {
    let rt = Runtime::new();
    let h = SharedHost::new();
    let mut problems = Vec::new();
    for prop in ["", "private", "rprivate", "slave", "rslave", "shared", "rshared", "unbindable", "runbindable"] {
        let mut b = Bundle::new();
        b.set("/root/readonly", json!(false)).sh("cat /proc/self/mountinfo > /mountinfo; exec sleep 300");
        if !prop.is_empty() {
            b.set("/linux/rootfsPropagation", json!(prop));
        }
        let name = if prop.is_empty() { "default" } else { prop };
        let bundle = bundle_in(&h, &b, name);
        let id = rt.id(name);
        let out = runtime_in(&h, &rt, &format!("create --bundle '{}' '{id}'", bundle.display()));
        let leaked = h.mounts_under(&bundle.join("rootfs"));
        if !leaked.is_empty() {
            problems.push(format!("rootfsPropagation {prop:?}: the container's mounts appear on the host: {leaked:?}"));
        }
        if !out.success() {
            if prop == "runbindable" && matches!(kind(), Kind::Runc | Kind::Crun) {
                skip_part(&format!("{:?} fails rootfsPropagation runbindable: {}", kind(), out.stderr.trim()));
            } else {
                problems.push(format!("rootfsPropagation {prop:?}: create failed: {}", out.stderr.trim()));
            }
            rt.delete_force(&id);
            continue;
        }
        runtime_in(&h, &rt, &format!("start '{id}'")).ok();
        let file = bundle.join("rootfs/mountinfo");
        let mut info = String::new();
        wait_until("the container's mountinfo", TIMEOUT, || {
            info = h.sh(&format!("cat '{}' 2>/dev/null", file.display())).stdout;
            !info.is_empty()
        });
        let tags = root_tags(&info);
        let want_shared = prop.ends_with("shared");
        if kind() == Kind::Runc && !prop.is_empty() {
            // runc 1.1.5 does not apply rootfsPropagation to the container's root after
            // pivot_root (newer runc does).
            skip_part(&format!("runc leaves the container's root {tags:?} with rootfsPropagation {prop:?}"));
        } else {
            if (is_skiff() || want_shared) && tags.contains("shared:") != want_shared {
                problems.push(format!("rootfsPropagation {prop:?}: the container's root has the tags {tags:?}"));
            }
            if prop.ends_with("unbindable") && !tags.contains("unbindable") {
                problems.push(format!("rootfsPropagation {prop:?}: the container's root has the tags {tags:?}"));
            }
        }
        let leaked = h.mounts_under(&bundle.join("rootfs"));
        if !leaked.is_empty() {
            problems.push(format!("rootfsPropagation {prop:?}: after start, on the host: {leaked:?}"));
        }
        rt.delete_force(&id).ok();
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Kubernetes' mount propagation through containerd's CRI: HostToContainer is
/// rootfsPropagation rslave + bind option rslave; Bidirectional is rshared + rshared.
#[test]
fn a_shared_bind_carries_mounts_as_kubernetes_expects() {
    let rt = Runtime::new();
    let h = SharedHost::new();
    for (prop, bind_prop) in [("rslave", "rslave"), ("rshared", "rshared")] {
        let src = h.dir.join(format!("src-{prop}"));
        h.sh(&format!("mkdir -p '{0}' && mount --bind '{0}' '{0}' && mount --make-shared '{0}'", src.display())).ok();
        let mut b = Bundle::new();
        b.set("/root/readonly", json!(false)).args(&["sleep", "300"]).set("/linux/rootfsPropagation", json!(prop));
        b.add_mount(json!({"destination": "/mnt/s", "type": "bind", "source": src, "options": ["rbind", bind_prop]}));
        let bundle = bundle_in(&h, &b, &format!("bind-{prop}"));
        let id = rt.id(&format!("bind-{prop}"));
        runtime_in(&h, &rt, &format!("run -d --bundle '{}' '{id}'", bundle.display())).ok();
        // Host to container.
        h.sh(&format!("mkdir -p '{0}/fromhost' && mount -t tmpfs fromhost '{0}/fromhost'", src.display())).ok();
        let out = runtime_in(&h, &rt, &format!("exec '{id}' cat /proc/self/mountinfo")).ok();
        assert!(
            out.stdout.lines().any(|l| l.split(' ').nth(4) == Some("/mnt/s/fromhost")),
            "{prop}/{bind_prop}: a mount made on the host under the shared bind shows in the container:\n{}",
            out.stdout
        );
        if bind_prop == "rshared" {
            // Container to host (needs CAP_SYS_ADMIN in the container for the mount).
            runtime_in(
                &h,
                &rt,
                &format!("exec --cap CAP_SYS_ADMIN '{id}' sh -c 'mkdir -p /mnt/s/fromc && mount -t tmpfs fromc /mnt/s/fromc'"),
            )
            .ok();
            let on_host = h.mounts_under(&src.join("fromc"));
            assert!(!on_host.is_empty(), "{prop}/{bind_prop}: a mount made in the container shows on the host");
        }
        let leaked = h.mounts_under(&bundle.join("rootfs"));
        assert!(leaked.is_empty(), "{prop}/{bind_prop}: the container's own mounts appear on the host: {leaked:?}");
        rt.delete_force(&id).ok();
    }
}
