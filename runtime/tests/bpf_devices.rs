//! The device program on the real kernel: a scratch cgroup2 directory gets a program, a
//! child process in it tries device nodes. Root only, and needs a cgroup2 mount (on a hybrid
//! host the one at /sys/fs/cgroup/unified: a program attached there denies although that
//! hierarchy has no controllers); skipped with a message otherwise.
//!
//! The child is this test binary again (running only `child_in_cgroup`), placed in the cgroup
//! by writing "0" to cgroup.procs between fork and exec, so every check runs inside it.

use std::ffi::CString;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use skiff_runtime::bpf::{attach_device_filter, attached_device_programs};
use skiff_runtime::devfilter::{self, Kind, Rule, ACC_ALL};

/// Set in the child: the scratch directory for its device nodes.
const CHILD_ENV: &str = "SKIFF_BPF_DEVICES_CHILD";
/// Set in the child: "MAJ:MIN:NODE" of a host block device.
const DISK_ENV: &str = "SKIFF_BPF_DEVICES_DISK";

fn cgroup2_mount() -> Option<PathBuf> {
    let mi = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mounts: Vec<PathBuf> = mi
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            (right.split(' ').next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .collect();
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"].iter().map(PathBuf::from).find(|p| mounts.contains(p))
}

/// Why the kernel tests cannot run here, if they cannot.
fn unsupported() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root");
    }
    if cgroup2_mount().is_none() {
        return Some("no cgroup2 mount at /sys/fs/cgroup or /sys/fs/cgroup/unified");
    }
    None
}

/// A block device this process can open (the root disk first; some hosts let not even
/// root open that one): (major, minor, node), for a control check outside the cgroup.
fn readable_block_device() -> Option<(u64, u64, PathBuf)> {
    let mi = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let root = mi.lines().find(|l| l.split(' ').nth(4) == Some("/")).and_then(|l| l.split(' ').nth(2));
    let mut devs: Vec<String> =
        fs::read_dir("/sys/dev/block").ok()?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    devs.sort_by_key(|d| Some(d.as_str()) != root);
    devs.into_iter().find_map(|dev| {
        let uevent = fs::read_to_string(format!("/sys/dev/block/{dev}/uevent")).ok()?;
        let node = Path::new("/dev").join(uevent.lines().find_map(|l| l.strip_prefix("DEVNAME="))?);
        open(&node, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).ok().map(nix::unistd::close)?.ok()?;
        let (ma, mi) = dev.split_once(':')?;
        Some((ma.parse().ok()?, mi.parse().ok()?, node))
    })
}

/// A scratch cgroup2 directory, removed on drop.
struct ScratchCgroup(PathBuf);

impl ScratchCgroup {
    fn new(name: &str) -> ScratchCgroup {
        let mount = cgroup2_mount().expect("cgroup2 mount");
        let dir = mount.join(format!("skiff-bpf-{name}-{}", std::process::id()));
        let _ = fs::remove_dir(&dir);
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        ScratchCgroup(dir)
    }
}

impl Drop for ScratchCgroup {
    fn drop(&mut self) {
        // Our children have exited (waited for) before this runs.
        if let Err(e) = fs::remove_dir(&self.0) {
            if e.kind() != ErrorKind::NotFound {
                eprintln!("remove {}: {e}", self.0.display());
            }
        }
    }
}

/// A scratch directory on a filesystem that allows device nodes (the target dir).
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(name: &str) -> ScratchDir {
        let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("skiff-bpf-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
        ScratchDir(d)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn char_rule(allow: bool, major: Option<u32>, minor: Option<u32>) -> Rule {
    Rule { allow, kind: Kind::Char, major, minor, access: ACC_ALL }
}

#[test]
fn device_program_denies_in_a_real_cgroup() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    if let Some(why) = unsupported() {
        eprintln!("SKIPPED: device_program_denies_in_a_real_cgroup: {why}");
        return;
    }
    let Some((maj, min, node)) = readable_block_device() else {
        eprintln!("SKIPPED: device_program_denies_in_a_real_cgroup: no block device this process can open");
        return;
    };
    // Controls: outside the cgroup these opens work.
    for n in [node.as_path(), Path::new("/dev/zero")] {
        open(n, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
            .and_then(nix::unistd::close)
            .unwrap_or_else(|e| panic!("open {} outside the cgroup: {e}", n.display()));
    }
    let cg = ScratchCgroup::new("deny");
    let scratch = ScratchDir::new("deny");
    let rules = [
        Rule { allow: false, kind: Kind::All, major: None, minor: None, access: ACC_ALL },
        char_rule(true, Some(1), Some(3)),
        char_rule(true, Some(10), Some(229)),
    ];
    let prog = devfilter::program(&rules).expect("program");
    attach_device_filter(&cg.0, &prog).expect("load and attach");
    // Attaching again replaces the program instead of adding one.
    attach_device_filter(&cg.0, &prog).expect("attach again");
    assert_eq!(attached_device_programs(&cg.0).expect("query").len(), 1, "the second attach replaced the first");

    let procs = CString::new(cg.0.join("cgroup.procs").into_os_string().into_encoded_bytes()).expect("path");
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args(["--exact", "child_in_cgroup", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &scratch.0)
        .env(DISK_ENV, format!("{maj}:{min}:{}", node.display()));
    // SAFETY: between fork and exec the closure only calls open, write and close
    // (async-signal-safe) on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(fd);
            Ok(())
        });
    }
    let out = cmd.output().expect("run the child");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the child's checks failed:\n{text}");
    assert!(text.contains("child_in_cgroup checks done"), "the child ran its checks:\n{text}");
}

/// Runs only as the child of `device_program_denies_in_a_real_cgroup`, inside the cgroup.
#[test]
fn child_in_cgroup() {
    let Some(dir) = std::env::var_os(CHILD_ENV).map(PathBuf::from) else { return };
    let disk = std::env::var(DISK_ENV).expect("disk");
    let mut f = disk.splitn(3, ':');
    let (maj, min, host_node) = (f.next().expect("major"), f.next().expect("minor"), f.next().expect("node"));
    let (maj, min): (u64, u64) = (maj.parse().expect("major"), min.parse().expect("minor"));
    let rw = OFlag::O_RDWR | OFlag::O_CLOEXEC;
    let ro = OFlag::O_RDONLY | OFlag::O_CLOEXEC;

    // Allowed: /dev/null (c 1:3), and making a node of it.
    open("/dev/null", rw, Mode::empty()).expect("open /dev/null");
    let null = dir.join("null");
    mknod(&null, SFlag::S_IFCHR, Mode::from_bits_truncate(0o600), makedev(1, 3)).expect("mknod c 1:3");
    open(&null, rw, Mode::empty()).expect("open the new c 1:3 node");

    // A host block device: no node can be made of it, the existing one cannot be opened.
    let blk = dir.join("disk");
    let e = mknod(&blk, SFlag::S_IFBLK, Mode::from_bits_truncate(0o600), makedev(maj, min));
    assert_eq!(e, Err(Errno::EPERM), "mknod b {maj}:{min}");
    assert_eq!(open(host_node, ro, Mode::empty()).err(), Some(Errno::EPERM), "open {host_node}");

    // A character device not in the rules: /dev/zero (c 1:5).
    let zero = dir.join("zero");
    let e = mknod(&zero, SFlag::S_IFCHR, Mode::from_bits_truncate(0o600), makedev(1, 5));
    assert_eq!(e, Err(Errno::EPERM), "mknod c 1:5");
    assert_eq!(open("/dev/zero", ro, Mode::empty()).err(), Some(Errno::EPERM), "open /dev/zero");
    println!("child_in_cgroup checks done");
}

/// The largest rule list the generator accepts loads: the verifier takes it.
#[test]
fn largest_program_loads() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    if let Some(why) = unsupported() {
        eprintln!("SKIPPED: largest_program_loads: {why}");
        return;
    }
    let cg = ScratchCgroup::new("large");
    // Rules that all differ and mix types, numbers and allow/deny: the verifier's worst
    // case is many distinct states, not length.
    let rules: Vec<Rule> = (0..devfilter::MAX_RULES as u32)
        .map(|i| Rule {
            allow: i % 3 != 0,
            kind: [Kind::All, Kind::Block, Kind::Char][(i % 3) as usize],
            major: (i % 5 != 0).then_some(i % 300),
            minor: (i % 7 != 0).then_some(i),
            access: 1 + (i % 7) as u8,
        })
        .collect();
    let prog = devfilter::program(&devfilter::with_defaults(rules)).expect("program");
    let started = std::time::Instant::now();
    attach_device_filter(&cg.0, &prog).expect("the largest program loads");
    eprintln!("{} instructions loaded and attached in {:?}", prog.len(), started.elapsed());
}

/// A directory that is not a cgroup2 one: one clear line, nothing attached anywhere.
#[test]
fn attach_to_a_plain_directory_fails_clearly() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    if let Some(why) = unsupported() {
        eprintln!("SKIPPED: attach_to_a_plain_directory_fails_clearly: {why}");
        return;
    }
    let scratch = ScratchDir::new("plain");
    let prog = devfilter::program(devfilter::DEFAULT_RULES).expect("program");
    let err = attach_device_filter(&scratch.0, &prog).expect_err("not a cgroup").to_string();
    assert!(
        err.starts_with("list the device programs of ") || err.starts_with("attach the device program to "),
        "{err}"
    );
    assert!(err.contains(&scratch.0.display().to_string()) && !err.contains('\n'), "{err}");
    let missing = scratch.0.join("missing");
    let err = attach_device_filter(&missing, &prog).expect_err("no such dir").to_string();
    assert!(err.starts_with(&format!("open {}: ", missing.display())), "{err}");
}
