//! One container's lifecycle step must never reach another container, nor hang:
//! a cgroup shared by two containers (create refuses a busy one; delete and a failed
//! create kill only their own processes), `kill --all` against a container that forks
//! all the time, and `exec` into a paused container.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use skiff_tests::*;

/// A container that stays up until killed.
const SLEEP: &[&str] = &["sleep", "1000"];

fn alive(pid: i32) -> bool {
    let stat = read(format!("/proc/{pid}/stat"));
    !stat.is_empty() && !stat.split(") ").nth(1).unwrap_or("").starts_with('Z')
}

/// The directory of cgroupsPath `cg` to list its processes from: the v1 pids hierarchy,
/// else the cgroup2 mount (pure v2), as the runtimes list them.
fn procs_dir(cg: &str) -> PathBuf {
    controller_dir("pids", cg)
        .or_else(|| cgroup_mounts().into_iter().find(|m| m.v2).map(|m| cgroup_dir(&m, cg)))
        .expect("a cgroup hierarchy to list processes from")
}

/// The processes in cgroup `cg` (not its nested cgroups), sorted; empty when it does not
/// exist.
fn procs(cg: &str) -> Vec<i32> {
    let mut v: Vec<i32> =
        read(procs_dir(cg).join("cgroup.procs")).lines().filter_map(|l| l.trim().parse().ok()).collect();
    v.sort_unstable();
    v
}

/// An absolute cgroupsPath of its own for this test (removed when `rt` is dropped).
fn test_cgroup(rt: &Runtime, name: &str) -> String {
    let cg = format!("/{}", rt.id(name));
    rt.cleanup_cgroup(&cg);
    cg
}

/// Kills, on drop, every process in a test cgroup with `cgroup.kill` where there is one
/// (nothing escapes it), so a runtime that lets processes escape `kill --all` leaves none
/// running after the test. [`Runtime`]'s own cleanup then removes the cgroup.
struct KillCgroup(String);

impl Drop for KillCgroup {
    fn drop(&mut self) {
        for m in cgroup_mounts().into_iter().filter(|m| m.v2) {
            let _ = fs::write(cgroup_dir(&m, &self.0).join("cgroup.kill"), "1");
        }
    }
}

/// A host process of the test's own (not a container's), killed and reaped on drop.
struct Other(Child);

impl Drop for Other {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A second container cannot be created into a cgroup that holds the processes of a
/// first: delete of either would have to kill the other's processes or leave its own
/// behind. runc 1.2+ refuses with "container's cgroup is not empty"; runc 1.1 only warns
/// and crun accepts it. The refused create must leave the first container as it was.
#[test]
fn create_refuses_a_cgroup_that_holds_another_containers_processes() {
    let rt = Runtime::new();
    let cg = test_cgroup(&rt, "busy");
    let mut a = Bundle::new();
    a.args(SLEEP).set("/linux/cgroupsPath", json!(cg));
    let ida = rt.id("a");
    rt.create_start(&a, &ida);
    let pida = rt.pid(&ida);

    let mut b = Bundle::new();
    b.args(SLEEP).set("/linux/cgroupsPath", json!(cg));
    let idb = rt.id("b");
    let out = rt.create(&b, &idb);
    if out.success() && !is_skiff() {
        skip_part(&format!(
            "{} creates a container into a cgroup that holds another's processes (runc < 1.2 warns, crun accepts)",
            runtime_bin().display()
        ));
    } else {
        out.error_mentions(&["cgroup", "not empty"]);
        assert!(!rt.state_entries().contains(&idb), "the refused container left state behind");
        assert_eq!(procs(&cg), vec![pida], "the refused create changed what is in the cgroup");
    }
    assert!(alive(pida), "the first container's init was killed");
    assert_eq!(rt.status(&ida).as_deref(), Some("running"));
}

/// A create that fails after it made its cgroup undoes only what it made: a process
/// someone else put into that cgroup meanwhile (here a createRuntime hook moves one of
/// the test's own processes in, then fails the create) is not killed, and the cgroup
/// holding it stays.
#[test]
fn a_failed_create_spares_processes_of_others_in_its_cgroup() {
    let rt = Runtime::new();
    let cg = test_cgroup(&rt, "undo");
    let other = Other(Command::new("sleep").arg("1000").stdin(Stdio::null()).spawn().expect("spawn sleep"));
    let other_pid = other.0.id() as i32;
    let into = procs_dir(&cg).join("cgroup.procs");
    let mut b = Bundle::new();
    b.args(SLEEP).set("/linux/cgroupsPath", json!(cg)).hook(
        "createRuntime",
        json!({"path": "/bin/sh", "args": ["sh", "-c", format!("echo {other_pid} > {}; exit 1", into.display())]}),
    );
    let id = rt.id("undo");
    rt.create(&b, &id).fails();
    assert!(!rt.state_entries().contains(&id), "the failed create left state behind");
    if !alive(other_pid) && !is_skiff() {
        skip_part(&format!(
            "{}: a failed create kills every process of its cgroup, others' too",
            runtime_bin().display()
        ));
        return;
    }
    assert!(alive(other_pid), "the failed create killed a process that was not its own");
    assert_eq!(procs(&cg), vec![other_pid], "the cgroup holding another's process was removed");
    drop(other);
}

/// Two containers may share a cgroupsPath one after the other: B is created into the
/// cgroup A's (exited) process left. Deleting A, forced or not, must not touch B: B's
/// processes live on and the cgroup holding them stays; deleting B then removes it.
#[test]
fn deleting_a_container_spares_another_in_the_same_cgroup() {
    let rt = Runtime::new();
    let cg = test_cgroup(&rt, "shared");
    for force in [false, true] {
        let mut a = Bundle::new();
        a.args(&["true"]).set("/linux/cgroupsPath", json!(cg));
        let ida = rt.id("a");
        rt.create_start(&a, &ida);
        rt.wait_status(&ida, "stopped");

        let mut b = Bundle::new();
        b.sh("sleep 1000 & exec sleep 1000").set("/linux/cgroupsPath", json!(cg));
        let idb = rt.id("b");
        rt.create_start(&b, &idb);
        let pidb = rt.pid(&idb);
        wait_until("B's two processes", TIMEOUT, || procs(&cg).len() == 2);
        let bs = procs(&cg);

        if force {
            rt.delete_force(&ida).ok();
        } else {
            rt.delete(&ida).ok();
        }
        assert!(rt.status(&ida).is_none(), "A is deleted");
        if !alive(pidb) && !is_skiff() {
            skip_part(&format!(
                "{}: deleting a container kills every process of its cgroup, another container's too",
                runtime_bin().display()
            ));
            return;
        }
        assert!(bs.iter().all(|&p| alive(p)), "deleting A (force: {force}) killed B's processes");
        assert_eq!(procs(&cg), bs, "deleting A (force: {force}) changed B's cgroup");
        assert_eq!(rt.status(&idb).as_deref(), Some("running"));

        rt.delete_force(&idb).ok();
        wait_until("B's processes to go", TIMEOUT, || bs.iter().all(|&p| !alive(p)));
        assert!(!procs_dir(&cg).exists(), "deleting the last container removes the cgroup");
    }
}

/// `kill --all` reaches every process of a container that forks all the time, none
/// escapes by being forked after the runtime listed the cgroup: with SIGKILL (cgroup.kill)
/// and with another signal (frozen while signalled). The container has no pid namespace
/// of its own, where `--all` matters (killing an init of its own pid namespace takes the
/// rest with it). Signalling the pids one by one lets some escape nearly every time.
#[test]
fn kill_all_leaves_nothing_of_a_forking_container() {
    let rt = Runtime::new();
    // 300 idle processes first (killed first: the listing is in pid order), then four
    // loops that fork a process every millisecond or so.
    let script = "i=0; while [ $i -lt 300 ]; do sleep 1000 & i=$((i+1)); done; \
                  for c in 1 2 3 4; do ( while :; do sleep 1000 & usleep 1000; done ) 2>/dev/null & done; \
                  exec sleep 1000";
    for sig in ["KILL", "TERM", "KILL", "TERM"] {
        let cg = test_cgroup(&rt, "forks");
        let _guard = KillCgroup(cg.clone());
        let mut b = Bundle::new();
        b.without_namespace("pid")
            .sh(script)
            .set("/linux/cgroupsPath", json!(cg))
            .set("/linux/resources/pids", json!({"limit": 4000}));
        let id = rt.id("forks");
        rt.create_start(&b, &id);
        wait_until("the loops to fork", TIMEOUT, || procs(&cg).len() > 400);
        rt.cmd(&["kill", "--all", &id, sig]).ok();
        // Nothing is left once the signal has done its work; an escaped `sleep 1000` stays.
        let left = || procs(&cg);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !left().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let left = left();
        assert!(left.is_empty(), "kill --all {sig}: {} process(es) escaped: {left:?}", left.len());
        rt.delete_force(&id).ok();
    }
}

/// `exec` into a paused container is refused at once (runc's behaviour; it used to hang
/// with its child frozen in the cgroup), and nothing of it is left in the container;
/// `--ignore-paused` (runc's flag) goes ahead, the process runs once the container resumes.
#[test]
fn exec_into_a_paused_container_is_refused_unless_ignore_paused() {
    let rt = Runtime::new();
    let cg = test_cgroup(&rt, "paused");
    let mut b = Bundle::new();
    b.args(SLEEP).set("/linux/cgroupsPath", json!(cg));
    let id = rt.id("paused");
    rt.create_start(&b, &id);
    let pid = rt.pid(&id);
    let out = rt.cmd(&["pause", &id]);
    if !out.success() {
        skip(&format!("pause does not work here:\n{out}"));
        return;
    }
    let (cmd, desc) = rt.command(&["exec", &id, "echo", "exec-ran"]);
    let out = run_command(cmd, desc, rt.io_dir(), Duration::from_secs(30));
    out.error_mentions(&["paused"]);
    assert_eq!(procs(&cg), vec![pid], "the refused exec left a process in the container");
    assert_eq!(rt.status(&id).as_deref(), Some("paused"));

    if kind() == Kind::Crun {
        skip_part("crun has no exec --ignore-paused");
    } else {
        let bg = rt.spawn(&["exec", "--ignore-paused", &id, "echo", "exec-ran"]);
        // Its process enters the frozen cgroup and freezes there until the resume.
        wait_until("the exec's process in the paused container", TIMEOUT, || procs(&cg).len() > 1);
        rt.cmd(&["resume", &id]).ok();
        let out = bg.wait(TIMEOUT);
        assert!(out.success() && out.stdout.contains("exec-ran"), "exec --ignore-paused after resume:\n{out}");
    }
    rt.delete_force(&id).ok();
}
