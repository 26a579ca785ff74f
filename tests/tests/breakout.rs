//! Container escapes through what the runtime leaves within the container's reach while it
//! sets it up (issue 10): host fds, the working directory, a dumpable init.
//!
//! CVE-2024-21626 (runc < 1.1.12): a directory fd of the host held by the runtime while it
//! sets the container up, plus a `cwd` (or `exec --cwd`, or an image's WORKDIR) of
//! `/proc/self/fd/N`, put the container's process in a host directory, from which `..`
//! climbs to the host's `/`. Each test puts a canary file on the host and attacks it; the
//! canary must never be read.

use std::fs;
use std::path::PathBuf;

use skiff_tests::*;

/// A file on the host with unique content; the attack tries to read it.
struct Canary {
    _dir: Scratch,
    path: PathBuf,
    secret: String,
}

impl Canary {
    fn new() -> Canary {
        let dir = Scratch::new("canary");
        let secret = format!("host-secret-{}-{}", std::process::id(), rand_u64());
        let path = dir.join("secret");
        fs::write(&path, &secret).unwrap();
        Canary { _dir: dir, path, secret }
    }

    /// A path to the canary relative to any host directory (enough `..` to reach `/`).
    fn relative_path(&self) -> String {
        format!("{}{}", "../".repeat(40), self.path.display().to_string().trim_start_matches('/'))
    }

    #[track_caller]
    fn assert_unread(&self, out: &str, what: &str) {
        assert!(
            !out.contains(&self.secret),
            "{what}: the container read the host's canary {}:\n{out}",
            self.path.display()
        );
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    h.finish()
}

/// The fd numbers an attacker would try.
const FDS: std::ops::RangeInclusive<u32> = 3..=12;

/// `process.cwd: /proc/self/fd/N`: the init must not chdir into a host directory it holds.
#[test]
fn a_cwd_through_a_leaked_fd_does_not_reach_the_host() {
    let rt = Runtime::new();
    let canary = Canary::new();
    for n in FDS {
        let mut b = Bundle::new();
        b.set("/process/cwd", json!(format!("/proc/self/fd/{n}")))
            .sh(&format!("cat {} 2>&1; echo; pwd", canary.relative_path()));
        let id = rt.id(&format!("cwd{n}"));
        let out = rt.run(&b, &id);
        canary.assert_unread(&out.to_string(), &format!("cwd /proc/self/fd/{n}"));
        if !out.success() && is_skiff() {
            // Either the fd is not there (no such directory) or the breakout is named.
            assert!(
                out.stderr.contains("cwd") || out.stderr.contains("breakout"),
                "cwd /proc/self/fd/{n}: a clear error: {out}"
            );
        }
    }
}

/// `exec --cwd /proc/self/fd/N` into a running container.
#[test]
fn an_exec_cwd_through_a_leaked_fd_does_not_reach_the_host() {
    let rt = Runtime::new();
    let canary = Canary::new();
    let mut b = Bundle::new();
    b.args(&["sleep", "300"]);
    let id = rt.id("execcwd");
    rt.run_detached(&b, &id).ok();
    for n in FDS {
        let out = rt.cmd(&[
            "exec",
            "--cwd",
            &format!("/proc/self/fd/{n}"),
            &id,
            "sh",
            "-c",
            &format!("cat {} 2>&1; echo; pwd", canary.relative_path()),
        ]);
        canary.assert_unread(&out.to_string(), &format!("exec --cwd /proc/self/fd/{n}"));
    }
    rt.delete_force(&id).ok();
}

/// While a container is `created`, its init waits for `start` inside the container: a
/// process exec'ed next to it must not reach the init's fds (`/proc/1/fd/N/..`), whatever
/// they are; the init is not dumpable until it execs the container's process.
#[test]
fn the_waiting_init_exposes_no_fd_to_an_exec() {
    let rt = Runtime::new();
    let canary = Canary::new();
    let mut b = Bundle::new();
    b.args(&["sleep", "300"]);
    let id = rt.id("created");
    rt.create(&b, &id).ok();
    let script = format!(
        "for f in /proc/1/fd/*; do cat $f/{} 2>/dev/null; done; echo; for f in /proc/1/fd/*; do readlink $f >/dev/null 2>&1 && echo FD-READ; done; \
         readlink /proc/1/cwd >/dev/null 2>&1 && echo CWD-READ; cat /proc/1/environ >/dev/null 2>&1 && echo ENV-READ; true",
        canary.relative_path()
    );
    let out = rt.cmd(&["exec", &id, "sh", "-c", &script]).ok();
    canary.assert_unread(&out.to_string(), "exec next to the created init");
    if kind() == Kind::Runc {
        skip_part("runc 1.1.5's waiting init is dumpable (an exec in the container reads its fds and cwd)");
    } else {
        // (Listing /proc/1/fd is a permission check on the directory's owner, root; what
        // the fds and the cwd point to takes ptrace access, which a non-dumpable init denies.)
        for what in ["FD-READ", "CWD-READ", "ENV-READ"] {
            assert!(!out.stdout.contains(what), "the waiting init is not dumpable ({what}): {out}");
        }
    }
    rt.delete_force(&id).ok();
}

/// What the host sees: the created init holds nothing of the host but stdio and the
/// runtime's own sockets, even when the caller leaks a directory fd to the runtime; once
/// started, the container's process and an exec'ed one hold only stdio (and
/// `--preserve-fds`).
#[test]
fn no_fd_of_the_runtime_or_its_caller_reaches_the_container() {
    for caller_leaks in [false, true] {
        if caller_leaks && kind() == Kind::Crun {
            skip_part("crun passes the fds its caller leaked to it on to the created init (closed at exec)");
            continue;
        }
        let rt = Runtime::new();
        let mut b = Bundle::new();
        b.sh("ls -l /proc/self/fd/ > /fds; exec sleep 300");
        b.set("/root/readonly", json!(false));
        b.save();
        let id = rt.id("fds");
        // The caller leaks a host directory (fd 7) and a host file (fd 8) to the runtime.
        let leak_dir = Scratch::new("leaked");
        fs::write(leak_dir.join("f"), "x").unwrap();
        let leak = if caller_leaks {
            format!("exec 7<'{dir}' 8<'{dir}/f';", dir = leak_dir.path().display())
        } else {
            String::new()
        };
        let script = format!(
            "{leak} exec '{rt}' --root '{root}' create --bundle '{bundle}' '{id}'",
            rt = rt.bin().display(),
            root = rt.root().display(),
            bundle = b.path().display(),
        );
        let mut cmd = std::process::Command::new("bash");
        cmd.args(["-c", &script]);
        run_command(cmd, format!("create {id}"), rt.io_dir(), TIMEOUT).ok();
        let pid = rt.pid(&id);
        let fd_dir = format!("/proc/{pid}/fd");
        let host_view: Vec<(String, String)> = fs::read_dir(&fd_dir)
            .unwrap()
            .flatten()
            .map(|e| {
                let target = fs::read_link(e.path()).map(|t| t.display().to_string()).unwrap_or_default();
                (e.file_name().to_string_lossy().to_string(), target)
            })
            .collect();
        for (fd, target) in &host_view {
            let n: u32 = fd.parse().unwrap();
            if n <= 2 {
                continue;
            }
            let is_dir = fs::metadata(format!("{fd_dir}/{fd}")).is_ok_and(|m| m.is_dir());
            assert!(!is_dir, "the created init holds a directory of the host: fd {n} -> {target} (all: {host_view:?})");
            let harmless = target.starts_with("socket:")
                || target.starts_with("pipe:")
                || target.starts_with("anon_inode:")
                || target == "/dev/null"
                || target.starts_with("/dev/pts/")
                // runc's and crun's start gate: a fifo in their state directory.
                || (!is_skiff() && target.ends_with("/exec.fifo"));
            assert!(harmless, "the created init holds fd {n} -> {target} (all: {host_view:?})");
        }
        rt.start(&id).ok();
        let fds_file = b.rootfs().join("fds");
        wait_until("the container lists its fds", TIMEOUT, || fs::metadata(&fds_file).is_ok_and(|m| m.len() > 0));
        std::thread::sleep(std::time::Duration::from_millis(100));
        let inside = fs::read_to_string(&fds_file).unwrap();
        assert_only_stdio(&inside, "the container's process");
        let out = rt.cmd(&["exec", &id, "ls", "-l", "/proc/self/fd/"]).ok();
        assert_only_stdio(&out.stdout, "an exec'ed process");
        rt.delete_force(&id).ok();
    }
}

/// `ls -l /proc/self/fd/` lists 0, 1, 2 and the directory ls itself opened (3).
#[track_caller]
fn assert_only_stdio(listing: &str, what: &str) {
    for l in listing.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (Some(fd), Some(target)) = (f.get(8).and_then(|s| s.parse::<u32>().ok()), f.get(10)) else { continue };
        // fd 3: the directory ls itself opened to list.
        let ok = fd <= 2 || (fd == 3 && target.starts_with("/proc/"));
        assert!(ok, "{what} holds fd {fd} -> {target}:\n{listing}");
    }
}

/// CVE-2021-30465 shape: container A shares a volume with container B and keeps swapping
/// a directory of it for a symlink to a host directory while the runtime creates B, whose
/// mounts (and their mount points) lie under that directory. Every mount point must be
/// created and mounted inside B's root: the host directory stays empty.
#[test]
fn a_mount_target_swapped_for_a_symlink_does_not_land_on_the_host() {
    let rt = Runtime::new();
    let volume = Scratch::new("race-volume");
    let host_dir = Scratch::new("race-host");
    // A: swaps /vol/t between a directory and a symlink to the host directory, as fast as
    // a shell can.
    let mut a = Bundle::new();
    a.add_mount(json!({"destination": "/vol", "type": "bind", "source": volume.path(), "options": ["rbind", "rw"]}));
    a.sh(&format!(
        "while :; do rm -rf /vol/t; mkdir /vol/t; rm -rf /vol/t; ln -s '{}' /vol/t; done",
        host_dir.path().display()
    ));
    let a_id = rt.id("swapper");
    rt.run_detached(&a, &a_id).ok();
    // B: the same volume, and ten tmpfs mounts under the swapped directory.
    let mut b = Bundle::new();
    b.add_mount(json!({"destination": "/vol", "type": "bind", "source": volume.path(), "options": ["rbind", "rw"]}));
    for i in 0..10 {
        b.add_mount(json!({"destination": format!("/vol/t/m{i}/x"), "type": "tmpfs", "source": "tmpfs", "options": ["size=64k"]}));
    }
    b.args(&["true"]);
    let rounds = 150;
    let mut created = 0;
    for i in 0..rounds {
        let id = rt.id(&format!("victim{i}"));
        if rt.create(&b, &id).success() {
            created += 1;
        }
        rt.delete_force(&id);
        let landed: Vec<_> = fs::read_dir(host_dir.path()).unwrap().flatten().map(|e| e.path()).collect();
        if !landed.is_empty() && kind() == Kind::Runc {
            // CVE-2024-45310, fixed in runc 1.1.14; Debian's 1.1.5 does not have the fix.
            skip_part(&format!("runc created {landed:?} on the host through the symlink (CVE-2024-45310)"));
            break;
        }
        assert!(landed.is_empty(), "round {i}: the runtime created {landed:?} on the host through the symlink");
    }
    eprintln!("{created} of {rounds} creates succeeded while the volume was being swapped");
    rt.delete_force(&a_id).ok();
}

/// CVE-2025-31133 shape: the container's /dev (here a bind of a directory its image or a
/// neighbour controls) has `null` as a symlink to a procfs file. Masking a path with
/// "/dev/null" must not bind that file over the masked path (where the container could
/// then write it).
#[test]
fn masked_paths_are_never_covered_through_a_fake_dev_null() {
    let rt = Runtime::new();
    let dev = Scratch::new("fake-dev");
    std::os::unix::fs::symlink("/proc/sys/kernel/core_pattern", dev.join("null")).unwrap();
    let mut b = Bundle::new();
    b.without_mount("/dev").without_mount("/dev/pts").without_mount("/dev/shm").without_mount("/dev/mqueue");
    b.add_mount(json!({"destination": "/dev", "type": "bind", "source": dev.path(), "options": ["rbind", "rw"]}));
    b.set("/linux/maskedPaths", json!(["/proc/timer_list"]));
    b.sh("cat /proc/timer_list 2>&1 | head -c 200; echo");
    let id = rt.id("fakenull");
    let out = rt.run(&b, &id);
    let core_pattern = fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    let leaked = out.success() && !core_pattern.trim().is_empty() && out.stdout.contains(core_pattern.trim());
    if leaked && matches!(kind(), Kind::Runc | Kind::Crun) {
        skip_part(&format!(
            "{:?} masks /proc/timer_list with what a fake /dev/null points to (CVE-2025-31133)",
            kind()
        ));
        return;
    }
    assert!(!leaked, "/proc/timer_list shows the core_pattern sysctl through a fake /dev/null:\n{out}");
    if is_skiff() {
        out.fails().error_mentions(&["/dev/null", "null device"]);
    }
}

/// CVE-2025-52565 shape: /dev/console in the container is a symlink to a procfs file; the
/// terminal must be bound on a /dev/console of the container's own, not on that file.
#[test]
fn the_console_is_never_bound_through_a_symlink() {
    let rt = Runtime::new();
    let dev = Scratch::new("console-dev");
    std::os::unix::fs::symlink("/proc/sys/kernel/core_pattern", dev.join("console")).unwrap();
    std::os::unix::fs::symlink("pts/ptmx", dev.join("ptmx")).unwrap();
    host(&["mknod", "-m", "666", dev.join("null").to_str().unwrap(), "c", "1", "3"]).ok();
    let mut b = Bundle::new();
    b.without_mount("/dev").without_mount("/dev/pts").without_mount("/dev/shm").without_mount("/dev/mqueue");
    // A /dev the container's image provides (with a devpts of its own for the terminal).
    b.add_mount(json!({"destination": "/dev", "type": "bind", "source": dev.path(), "options": ["rbind", "rw"]}));
    b.add_mount(json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
        "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}));
    b.set("/process/terminal", json!(true)).sh("grep -c ' /proc/sys/kernel/core_pattern ' /proc/self/mountinfo; true");
    let id = rt.id("console");
    let out = run_with_console(&rt, &b, &id);
    let over_core_pattern = out.lines().any(|l| l.trim().parse::<u32>().is_ok_and(|n| n > 0));
    if over_core_pattern && matches!(kind(), Kind::Runc | Kind::Crun) {
        skip_part(&format!("{:?} binds the terminal through a /dev/console symlink (CVE-2025-52565)", kind()));
        return;
    }
    assert!(!over_core_pattern, "the terminal was bound over /proc/sys/kernel/core_pattern:\n{out}");
    if is_skiff() {
        assert!(
            fs::symlink_metadata(dev.join("console")).is_ok_and(|m| m.is_file()),
            "/dev/console became a file of its own"
        );
    }
}

/// Runs `b` in the foreground with a terminal (`script` gives the runtime one), and
/// returns what the container printed.
fn run_with_console(rt: &Runtime, b: &Bundle, id: &str) -> String {
    b.save();
    let log = rt.io_dir().join(format!("{id}.typescript"));
    let cmd_line = format!(
        "'{}' --root '{}' run --bundle '{}' '{}'",
        rt.bin().display(),
        rt.root().display(),
        b.path().display(),
        id
    );
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-q", "-e", "-c", &cmd_line, log.to_str().unwrap()]);
    let out = run_command(cmd, format!("script -c {cmd_line}"), rt.io_dir(), TIMEOUT);
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(out.success(), "{out}\n{text}");
    text
}

/// CVE-2025-52881 shape: a mount of the spec (a volume whose content a neighbour controls)
/// covers a /proc/sys directory with a symlink where a sysctl is; the sysctl must be
/// written to the kernel's file, never redirected through the symlink to another one.
#[test]
fn a_sysctl_write_is_never_redirected_through_a_mount_over_proc() {
    let rt = Runtime::new();
    let vol = Scratch::new("fake-sysctl");
    std::os::unix::fs::symlink("/proc/sys/kernel/hostname", vol.join("ip_forward")).unwrap();
    let mut b = Bundle::new();
    b.set("/hostname", json!("victim")).set("/linux/sysctl", json!({"net.ipv4.ip_forward": "1"}));
    b.add_mount(
        json!({"destination": "/proc/sys/net/ipv4", "type": "bind", "source": vol.path(), "options": ["rbind", "rw"]}),
    );
    b.sh("hostname");
    let id = rt.id("sysctl");
    let out = rt.run(&b, &id);
    let redirected = out.success() && out.stdout.trim() == "1";
    if redirected && matches!(kind(), Kind::Runc | Kind::Crun) {
        skip_part(&format!(
            "{:?} writes the sysctl through a symlink in a mount over /proc/sys (CVE-2025-52881)",
            kind()
        ));
        return;
    }
    assert!(!redirected, "the sysctl was written to the hostname through the symlink:\n{out}");
    if is_skiff() {
        assert_eq!(out.ok().stdout.trim(), "victim", "the hostname stays");
    }
}
