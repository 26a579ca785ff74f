//! Memory and CPU use of a container, from its cgroup (for `/metrics`).
//!
//! The cgroup of a pid comes from `/proc/PID/cgroup`, the place of each hierarchy from
//! `/proc/self/mountinfo` (so nothing assumes `/sys/fs/cgroup/<controller>`). Each number is
//! taken from a cgroup v1 controller when the pid is in one (`memory.usage_in_bytes`,
//! `cpuacct.usage`), else from the cgroup v2 hierarchy (`memory.current`, `usage_usec` of
//! `cpu.stat`). That covers v1, v2 and the hybrid layout (v1 controllers next to a cgroup2 mount)
//! alike. A pid in the root of a hierarchy gives nothing from it: the root's numbers are those of
//! the whole machine, not of a container.
//!
//! A kernel without a memory controller (recent Raspberry Pi kernels) still gives the CPU time.
//! These are reads of in-memory files under /proc and /sys; they do not block on a disk.

use std::fs;
use std::path::{Path, PathBuf};

/// What a container's cgroup says about it. A number is `None` when its controller is missing
/// (or its file is unreadable).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    pub memory_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
}

/// The stats of the cgroup of `pid`, `None` when the pid is gone or nothing could be read.
pub fn read(pid: i32) -> Option<Stats> {
    Cgroups::load().stats(pid)
}

/// The cgroup hierarchies mounted here (read once, for the stats of many pids).
#[derive(Debug)]
pub struct Cgroups {
    mounts: Vec<CgroupMount>,
}

impl Cgroups {
    /// From `/proc/self/mountinfo` (none when it is unreadable).
    pub fn load() -> Cgroups {
        let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Cgroups { mounts: parse_mountinfo(&text) }
    }

    /// [`read`] with these mounts.
    pub fn stats(&self, pid: i32) -> Option<Stats> {
        if pid <= 0 {
            return None;
        }
        let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        stats_of(&cgroup, &self.mounts)
    }
}

/// [`read`] from the text of `/proc/PID/cgroup` and `/proc/self/mountinfo`.
pub fn read_from(proc_cgroup: &str, mountinfo: &str) -> Option<Stats> {
    stats_of(proc_cgroup, &parse_mountinfo(mountinfo))
}

fn stats_of(proc_cgroup: &str, mounts: &[CgroupMount]) -> Option<Stats> {
    let memberships = parse_proc_cgroup(proc_cgroup);
    let v1 = |controller: &str, file: &str| {
        let (_, path) = memberships.iter().find(|(c, _)| c.iter().any(|c| c == controller))?;
        let mount = mounts.iter().find(|m| !m.v2 && m.controllers.iter().any(|c| c == controller))?;
        read_file(&mount.dir_of(path)?.join(file))
    };
    let v2 = |file: &str| {
        let (_, path) = memberships.iter().find(|(c, _)| c.is_empty())?;
        let mount = mounts.iter().find(|m| m.v2)?;
        read_file(&mount.dir_of(path)?.join(file))
    };
    let memory_bytes = v1("memory", "memory.usage_in_bytes")
        .or_else(|| v2("memory.current"))
        .and_then(|s| s.trim().parse::<u64>().ok());
    let cpu_seconds = v1("cpuacct", "cpuacct.usage")
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|ns| ns as f64 / 1e9)
        .or_else(|| {
            let stat = v2("cpu.stat")?;
            let usec = stat.lines().find_map(|l| l.strip_prefix("usage_usec "))?.trim().parse::<u64>().ok()?;
            Some(usec as f64 / 1e6)
        });
    if memory_bytes.is_none() && cpu_seconds.is_none() {
        return None;
    }
    Some(Stats { memory_bytes, cpu_seconds })
}

fn read_file(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok()
}

/// A cgroup filesystem mount.
#[derive(Debug, PartialEq)]
pub(crate) struct CgroupMount {
    pub v2: bool,
    /// v1: the controllers of the hierarchy (`memory`, `cpuacct`, `name=systemd`...).
    pub controllers: Vec<String>,
    /// The cgroup of the hierarchy at the mount point (`/` unless a sub-tree is mounted).
    pub root: String,
    pub mount_point: PathBuf,
}

impl CgroupMount {
    /// The directory of the cgroup `path` (as `/proc/PID/cgroup` names it), `None` for the root
    /// of the hierarchy or a cgroup outside what is mounted.
    fn dir_of(&self, path: &str) -> Option<PathBuf> {
        if path == "/" || !path.starts_with('/') || path.split('/').any(|c| c == "..") {
            return None;
        }
        let rel = if self.root == "/" {
            path
        } else {
            let rest = path.strip_prefix(self.root.as_str())?;
            if !(rest.is_empty() || rest.starts_with('/')) {
                return None;
            }
            rest
        };
        Some(self.mount_point.join(rel.trim_start_matches('/')))
    }
}

/// The cgroup mounts of a mountinfo text (the first mount of each hierarchy wins).
pub(crate) fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut mounts: Vec<CgroupMount> = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 5 || right.len() < 3 {
            continue;
        }
        let (root, mount_point) = (unescape(left[3]), unescape(left[4]));
        let m = match right[0] {
            "cgroup2" => CgroupMount { v2: true, controllers: Vec::new(), root, mount_point: mount_point.into() },
            "cgroup" => {
                let known = ["rw", "ro"];
                let controllers =
                    right[2].split(',').filter(|o| !known.contains(o)).map(str::to_string).collect::<Vec<_>>();
                CgroupMount { v2: false, controllers, root, mount_point: mount_point.into() }
            }
            _ => continue,
        };
        let seen = mounts.iter().any(|o| o.v2 == m.v2 && (m.v2 || o.controllers == m.controllers));
        if !seen {
            mounts.push(m);
        }
    }
    mounts
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') as u32 * 64 + (b[i + 2] - b'0') as u32 * 8 + (b[i + 3] - b'0') as u32;
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `/proc/PID/cgroup`: (controllers, path) per hierarchy; the v2 line has no controllers.
pub(crate) fn parse_proc_cgroup(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            let controllers = it.next()?;
            let path = it.next()?;
            let controllers = controllers.split(',').filter(|c| !c.is_empty()).map(str::to_string).collect::<Vec<_>>();
            Some((controllers, path.to_string()))
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod testutil {
    //! A real cgroup with a process in it, removed (process killed by its pid) on drop.

    use std::io::Write;
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::parse_mountinfo;

    pub struct TestCgroup {
        pub dirs: Vec<PathBuf>,
        pub child: Child,
    }

    impl TestCgroup {
        /// A `sh` that burns some CPU then sleeps, in a new cgroup of each hierarchy `pick`
        /// chooses among this machine's cgroup mounts.
        pub fn new(pick: impl Fn(&super::CgroupMount) -> bool) -> std::io::Result<TestCgroup> {
            static N: AtomicU32 = AtomicU32::new(0);
            let name = format!("skiff-cgstats-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
            let mounts = parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo")?);
            // The shell waits for a line before it works, so all its CPU time is spent in the cgroup.
            let child = Command::new("sh")
                .arg("-c")
                .arg("read x; i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; exec sleep 1000")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()?;
            let mut cg = TestCgroup { dirs: Vec::new(), child };
            for m in mounts.iter().filter(|m| pick(m)) {
                let dir = m.mount_point.join(&name);
                std::fs::create_dir(&dir)?;
                cg.dirs.push(dir.clone());
                std::fs::write(dir.join("cgroup.procs"), cg.child.id().to_string())?;
            }
            if let Some(stdin) = cg.child.stdin.as_mut() {
                stdin.write_all(b"go\n")?;
            }
            Ok(cg)
        }

        pub fn pid(&self) -> i32 {
            self.child.id() as i32
        }

        /// Waits until the shell has done its work and became `sleep` (so the cgroup has CPU time
        /// and memory charged to it); panics after a minute.
        pub fn wait_settled(&self) {
            let comm = format!("/proc/{}/comm", self.child.id());
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while std::fs::read_to_string(&comm).map(|c| c.trim() != "sleep").unwrap_or(true) {
                assert!(std::time::Instant::now() < deadline, "the test process never became sleep");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }

    impl Drop for TestCgroup {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            for d in &self.dirs {
                // A cgroup is removable only once its last process is gone (reaped above).
                for _ in 0..100 {
                    if std::fs::remove_dir(d).is_ok() || !d.exists() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::TestCgroup;
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn parses_mountinfo() {
        let m = parse_mountinfo(HYBRID);
        assert_eq!(m.len(), 5);
        assert_eq!(m[0].controllers, ["cpu"]);
        assert_eq!(m[2].mount_point, Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(m[3].controllers, ["xattr", "name=systemd"]);
        assert!(m[4].v2);
        // Escaped spaces, a sub-tree mounted, combined controllers.
        let m = parse_mountinfo("50 1 0:40 /a\\040b /mnt/my\\040cg rw shared:5 - cgroup cg rw,cpu,cpuacct\n");
        assert_eq!(m[0].mount_point, Path::new("/mnt/my cg"));
        assert_eq!(m[0].root, "/a b");
        assert_eq!(m[0].controllers, ["cpu", "cpuacct"]);
        assert_eq!(m[0].dir_of("/a b/c"), Some(PathBuf::from("/mnt/my cg/c")));
        assert_eq!(m[0].dir_of("/a bc"), None);
        assert_eq!(m[0].dir_of("/"), None);
        assert_eq!(m[0].dir_of("/a b/../x"), None);
        assert!(parse_mountinfo("garbage\n\n1 2 3 - cgroup\n").is_empty());
    }

    #[test]
    fn parses_proc_cgroup() {
        let p = parse_proc_cgroup("4:memory:/skiff/web-1\n2:cpu,cpuacct:/x:y\n0::/\n");
        assert_eq!(p[0], (vec!["memory".to_string()], "/skiff/web-1".to_string()));
        assert_eq!(p[1], (vec!["cpu".to_string(), "cpuacct".to_string()], "/x:y".to_string()));
        assert_eq!(p[2], (vec![], "/".to_string()));
    }

    /// Pure cgroup v2 (Raspberry Pi OS), with and without the memory controller, on a fake tree.
    #[test]
    fn v2_from_a_tree() {
        let t = tempfile::tempdir().unwrap();
        let cg = t.path().join("skiff/web-1");
        fs::create_dir_all(&cg).unwrap();
        fs::write(cg.join("cpu.stat"), "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n").unwrap();
        let mountinfo = format!("30 1 0:26 / {} rw - cgroup2 cgroup2 rw\n", t.path().display());
        let proc = "0::/skiff/web-1\n";
        assert_eq!(read_from(proc, &mountinfo), Some(Stats { memory_bytes: None, cpu_seconds: Some(2.5) }));
        fs::write(cg.join("memory.current"), "1048576\n").unwrap();
        assert_eq!(read_from(proc, &mountinfo), Some(Stats { memory_bytes: Some(1048576), cpu_seconds: Some(2.5) }));
        // The root cgroup is the whole machine: nothing.
        fs::write(t.path().join("memory.current"), "1\n").unwrap();
        assert_eq!(read_from("0::/\n", &mountinfo), None);
        // A cgroup that is gone.
        assert_eq!(read_from("0::/skiff/web-2\n", &mountinfo), None);
    }

    /// v1 numbers win over v2 ones on a hybrid layout; the v2 hierarchy fills in what v1 lacks.
    #[test]
    fn hybrid_from_a_tree() {
        let t = tempfile::tempdir().unwrap();
        for d in ["memory/c", "cpuacct/c", "unified/c"] {
            fs::create_dir_all(t.path().join(d)).unwrap();
        }
        fs::write(t.path().join("memory/c/memory.usage_in_bytes"), "4096\n").unwrap();
        fs::write(t.path().join("cpuacct/c/cpuacct.usage"), "1500000000\n").unwrap();
        fs::write(t.path().join("unified/c/cpu.stat"), "usage_usec 7000000\n").unwrap();
        fs::write(t.path().join("unified/c/memory.current"), "8192\n").unwrap();
        let p = t.path().display();
        let mountinfo = format!(
            "1 0 0:1 / {p}/memory rw - cgroup cgroup rw,memory\n2 0 0:2 / {p}/cpuacct rw - cgroup cgroup rw,cpuacct\n\
             3 0 0:3 / {p}/unified rw - cgroup2 cgroup2 rw\n"
        );
        let both = "3:memory:/c\n2:cpuacct:/c\n0::/c\n";
        assert_eq!(read_from(both, &mountinfo), Some(Stats { memory_bytes: Some(4096), cpu_seconds: Some(1.5) }));
        // cpuacct at the root (the machine's): the v2 cgroup's cpu.stat instead.
        let v2_cpu = "3:memory:/c\n2:cpuacct:/\n0::/c\n";
        assert_eq!(read_from(v2_cpu, &mountinfo), Some(Stats { memory_bytes: Some(4096), cpu_seconds: Some(7.0) }));
        assert_eq!(read_from("3:memory:/\n2:cpuacct:/\n0::/\n", &mountinfo), None);
        assert_eq!(read_from("", &mountinfo), None);
        assert_eq!(read_from(both, ""), None);
    }

    fn machine_has(controller: &str) -> bool {
        let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
        parse_mountinfo(&text).iter().any(|m| !m.v2 && m.controllers.iter().any(|c| c == controller))
    }

    /// A real v1 memory + cpuacct cgroup (this machine's layout; skipped where there is no v1).
    #[test]
    fn real_v1_cgroup() {
        if !(machine_has("memory") && machine_has("cpuacct")) {
            eprintln!("no v1 memory and cpuacct controllers here: skipped");
            return;
        }
        let cg = TestCgroup::new(|m| !m.v2 && m.controllers.iter().any(|c| c == "memory" || c == "cpuacct")).unwrap();
        cg.wait_settled();
        let s = read(cg.pid()).expect("stats of the test cgroup");
        let cpu = s.cpu_seconds.unwrap();
        assert!(cpu >= 0.05, "{s:?}");
        let memory = s.memory_bytes.unwrap();
        assert!(memory > 0 && memory < 256 << 20, "{s:?}");
        // It is the cgroup we made, not another one: its own file agrees.
        let acct = cg.dirs.iter().find(|d| d.join("cpuacct.usage").exists()).unwrap();
        let direct = fs::read_to_string(acct.join("cpuacct.usage")).unwrap().trim().parse::<u64>().unwrap();
        assert!(cpu <= direct as f64 / 1e9, "{cpu} > {direct} ns");
        // Gone with its process.
        let pid = cg.pid();
        drop(cg);
        assert_eq!(read(pid), None);
    }

    /// The hybrid fallback for real: the pid's cpuacct cgroup is the root, its cgroup2 one is not.
    #[test]
    fn real_v2_cpu_on_hybrid() {
        let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let v2_mounted = parse_mountinfo(&text).iter().any(|m| m.v2);
        let own = fs::read_to_string("/proc/self/cgroup").unwrap();
        let cpuacct_at_root = parse_proc_cgroup(&own).iter().any(|(c, p)| c.iter().any(|c| c == "cpuacct") && p == "/");
        if !(v2_mounted && cpuacct_at_root) {
            eprintln!("not a hybrid layout with cpuacct at the root: skipped");
            return;
        }
        let cg = TestCgroup::new(|m| m.v2).unwrap();
        cg.wait_settled();
        let s = read(cg.pid()).expect("stats of the test cgroup");
        assert!(s.cpu_seconds.unwrap() >= 0.05, "{s:?}");
        let stat = fs::read_to_string(cg.dirs[0].join("cpu.stat")).unwrap();
        let usec: u64 = stat.lines().find_map(|l| l.strip_prefix("usage_usec ")).unwrap().parse().unwrap();
        assert!(s.cpu_seconds.unwrap() <= usec as f64 / 1e6);
    }

    #[test]
    fn bad_pids() {
        assert_eq!(read(0), None);
        assert_eq!(read(-5), None);
        assert_eq!(read(i32::MAX), None);
    }
}
