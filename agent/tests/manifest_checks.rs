//! What the manifest makes skiff read and grant, checked where the user sees it (issue 11):
//! - the files it names (`env_file:`, `.env` next to it) and the manifest itself are read
//!   with a bound: `/dev/zero` or a 2 MiB file is one clear error (`FILE:LINE:COLUMN`, the file,
//!   what to do) with bounded memory, from `skiff validate` and from a running agent, which
//!   keeps what runs;
//! - a sysctl the runtime would refuse at create (not namespaced, or a `net.*` one with
//!   `network_mode: host`) is refused by `skiff validate`, by the runtime's own rule;
//! - binds and capabilities that hand the host to a container are warned about (never
//!   refused) by `skiff validate` and in the agent's log at load.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use skiff_tests::agent::{pids, Agent};
use skiff_tests::registry::{Registry, BUSYBOX_OCI};
use skiff_tests::Scratch;

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

/// Peak memory any of these runs may reach: the limits are 1 MiB files.
const MAX_RSS_KIB: i64 = 64 << 10;

struct Validated {
    code: i32,
    stderr: String,
    stdout: String,
    /// Peak RSS of the `skiff validate` process (KiB).
    max_rss_kib: i64,
}

/// `skiff validate FILE`, its peak RSS from wait4(2). Its address space is capped at 1 GiB,
/// so that a reader without a bound fails rather than take the machine's memory.
fn validate(file: &Path) -> Validated {
    let dir = Scratch::new("validate-io");
    let (out, err) = (dir.join("out"), dir.join("err"));
    let mut cmd = Command::new(SKIFF);
    cmd.arg("validate")
        .arg(file)
        .env_remove("SKIFF_MANIFEST")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit { rlim_cur: 1 << 30, rlim_max: 1 << 30 };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Reaped by the wait4 below (which gives its rusage), not by Child::wait.
    #[allow(clippy::zombie_processes)]
    let child = cmd.spawn().expect("spawn skiff validate");
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; both pointers are valid for the call.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4: {}", std::io::Error::last_os_error());
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
    Validated {
        code,
        stderr: fs::read_to_string(&err).unwrap_or_default(),
        stdout: fs::read_to_string(&out).unwrap_or_default(),
        max_rss_kib: usage.ru_maxrss,
    }
}

/// `skiff validate` must refuse `file` with exactly one error line that starts with
/// `<file>:<want>`, in bounded memory.
#[track_caller]
fn refused(file: &Path, want: &str) -> String {
    let v = validate(file);
    let errors: Vec<&str> = v.stderr.lines().filter(|l| l.contains(": error: ")).collect();
    assert_eq!(v.code, 1, "skiff validate must refuse it ({want}): exit {}\n{}{}", v.code, v.stderr, v.stdout);
    assert!(!v.stderr.contains("panicked") && !v.stderr.contains("memory allocation"), "{}", v.stderr);
    assert_eq!(errors.len(), 1, "one error: {}", v.stderr);
    let prefix = format!("{}:{want}", file.display());
    assert!(errors[0].starts_with(&prefix), "want `{prefix}...`, got: {}", errors[0]);
    assert!(v.max_rss_kib < MAX_RSS_KIB, "skiff validate peaked at {} KiB", v.max_rss_kib);
    errors[0].to_string()
}

fn two_mib_env(path: &Path) {
    fs::write(path, format!("BIG={}\n", "x".repeat(2 << 20))).unwrap();
}

// ---------------------------------------------------------------------------------------
// Bounded reads
// ---------------------------------------------------------------------------------------

#[test]
fn validate_reads_env_files_and_the_manifest_with_a_bound() {
    let d = Scratch::new("validate-env");
    let f = d.join("compose.yaml");
    fs::write(d.join("ok.env"), "A=1\n").unwrap();
    two_mib_env(&d.join("big.env"));
    let with_env_file = |env: &str| {
        fs::write(&f, format!("services:\n  web:\n    image: busybox\n    env_file:\n      - ok.env\n      - {env}\n"))
            .unwrap();
    };
    with_env_file("ok.env");
    let v = validate(&f);
    assert_eq!(v.code, 0, "{}", v.stderr);

    with_env_file("big.env");
    let e = refused(&f, "6:9: error: web.env_file: ");
    assert!(e.contains("big.env: larger than 1 MiB, the limit for an env file: keep it to KEY=VALUE lines"), "{e}");
    with_env_file("/dev/zero");
    let e = refused(&f, "6:9: error: web.env_file: /dev/zero: not a regular file (a character device)");
    assert!(e.contains("an env file must be a regular file of KEY=VALUE lines"), "{e}");

    // `.env` next to the manifest, read for ${...}: at the line that needed it.
    let interpolated = "services:\n  web:\n    image: busybox\n    command: [\"sleep\", \"${SKIFF_TEST_NAP:-100}\"]\n";
    fs::write(&f, interpolated).unwrap();
    two_mib_env(&d.join(".env"));
    let e = refused(&f, "4:24: error: web.command[1]: the .env file next to the manifest (");
    assert!(e.contains("larger than 1 MiB, the limit; it must be a regular file of KEY=VALUE lines"), "{e}");
    fs::remove_file(d.join(".env")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", d.join(".env")).unwrap();
    refused(&f, "4:24: error: web.command[1]: the .env file next to the manifest (");

    // The manifest itself.
    let e = refused(Path::new("/dev/zero"), "1:1: error: the manifest is larger than 1 MiB, the limit");
    assert!(e.contains("keep it"), "{e}");
    let big = d.join("big.yaml");
    fs::write(&big, format!("services: {{}}\nx-pad: \"{}\"\n", "a".repeat(2 << 20))).unwrap();
    refused(&big, "1:1: error: the manifest is larger than 1 MiB");
}

/// The agent keeps what runs through every bad edit of the manifest or of a file it reads,
/// and its memory stays bounded.
#[test]
fn a_bad_edit_of_what_the_manifest_reads_keeps_what_runs() {
    let mut a = Agent::new(SKIFF);
    let dir = a.dir().to_path_buf();
    fs::write(dir.join("web.env"), "GREETING=hello\n").unwrap();
    two_mib_env(&dir.join("big.env"));
    let image = Registry::shared().image(BUSYBOX_OCI);
    let manifest = |env_file: &str, extra: &str| {
        format!(
            "services:\n  web:\n    image: {image}\n    command: [\"sleep\", \"1000\"]\n    stop_grace_period: 1s\n    \
             env_file: [{env_file}]\n{extra}"
        )
    };
    let good = manifest("web.env", "");
    a.write_manifest(&good);
    a.start();
    let st = a.wait_running("web", 1);
    let (before, rev) = (pids(&st, "web"), st["manifest"]["revision"].clone());
    let pid = *before.values().next().unwrap() as i32;
    assert_eq!(skiff_tests::agent::environ(pid, "GREETING").as_deref(), Some("hello"));

    let shown = a.manifest_path().display().to_string();
    let check = |a: &mut Agent, what: &str, want: &[&str]| {
        let st = a.wait_status(what, |st| {
            st["manifest"]["error"].as_str().is_some_and(|e| want.iter().all(|w| e.contains(w)))
        });
        let err = st["manifest"]["error"].as_str().unwrap_or_default().to_string();
        assert!(!err.contains('\n'), "{what}: one line: {err:?}");
        assert_eq!(st["manifest"]["revision"], rev, "{what}: the manifest in force stays");
        assert_eq!(pids(&st, "web"), before, "{what}: what runs is not disturbed");
        assert!(a.is_running(), "{what}: the agent lives on\n{}", a.log_tail());
        eprintln!("{what}: {err}");
    };
    // Harmless to an agent without bounds first (it would replace the replica); then what
    // would make it read without end.
    a.write_manifest(&manifest("big.env", ""));
    check(
        &mut a,
        "a 2 MiB env_file",
        &[&format!("{shown}:6:"), "big.env: larger than 1 MiB, the limit for an env file"],
    );
    a.write_manifest(&format!("{good}x-pad: \"{}\"\n", "a".repeat(2 << 20)));
    check(&mut a, "a 2 MiB manifest", &[&format!("{shown}:1:1: error: the manifest is larger than 1 MiB")]);
    a.write_manifest(&manifest("/dev/zero", ""));
    check(
        &mut a,
        "env_file /dev/zero",
        &[&format!("{shown}:6:"), "/dev/zero: not a regular file (a character device)"],
    );
    two_mib_env(&dir.join(".env"));
    a.write_manifest(&good.replace("\"1000\"", "\"${SKIFF_TEST_NAP:-1000}\""));
    check(&mut a, "a 2 MiB .env", &[&format!("{shown}:4:"), "the .env file next to the manifest", "larger than 1 MiB"]);
    fs::remove_file(dir.join(".env")).unwrap();
    let p = a.manifest_path();
    fs::remove_file(&p).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &p).unwrap();
    check(&mut a, "the manifest a link to /dev/zero", &[&format!("{shown}: not a regular file (a character device)")]);

    let hwm = skiff_tests::status_field(&skiff_tests::read(format!("/proc/{}/status", a.pid())), "VmHWM")
        .and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok())
        .unwrap_or(0);
    assert!(hwm > 0 && hwm < MAX_RSS_KIB, "the agent's peak RSS: {hwm} KiB");

    // Fixed: the same manifest as before, so nothing changes.
    fs::remove_file(&p).unwrap();
    a.write_manifest(&good);
    let st = a.wait_status("the error to clear", |st| st["manifest"]["error"].is_null());
    assert_eq!(pids(&st, "web"), before);
    a.down();
}

// ---------------------------------------------------------------------------------------
// Sysctls, binds, capabilities
// ---------------------------------------------------------------------------------------

#[test]
fn validate_refuses_sysctls_the_runtime_would_refuse() {
    let d = Scratch::new("validate-sysctl");
    let f = d.join("compose.yaml");
    let check = |yaml: &str| {
        fs::write(&f, yaml).unwrap();
        validate(&f)
    };
    // Line 5, column 7: the key.
    let e = {
        let v = check("services:\n  a:\n    image: busybox\n    sysctls:\n      kernel.core_pattern: \"|/tmp/x\"\n");
        assert_eq!(v.code, 1, "{}{}", v.stderr, v.stdout);
        v.stderr
    };
    let want = format!("{}:5:7: error: a.sysctls: `kernel.core_pattern` is not namespaced", f.display());
    assert!(e.starts_with(&want), "{e}");
    assert!(e.contains("remove it (set it on the host, in /etc/sysctl.d"), "{e}");
    // The list form, and a network sysctl with the host's network.
    let v = check(
        "services:\n  b:\n    image: busybox\n    network_mode: host\n    sysctls:\n      - net.ipv4.ip_forward=1\n      - kernel.shmmax=1000000\n",
    );
    assert_eq!(v.code, 1, "{}", v.stderr);
    assert!(
        v.stderr.starts_with(&format!(
            "{}:6:9: error: b.sysctls: `net.ipv4.ip_forward` is set in the network namespace",
            f.display()
        )),
        "{}",
        v.stderr
    );
    assert!(v.stderr.contains("use network_mode: bridge or none"), "{}", v.stderr);
    assert_eq!(v.stderr.lines().count(), 1, "kernel.shmmax is the container's own (ipc): {}", v.stderr);
    // What the runtime takes, validate takes.
    let v = check(
        "services:\n  c:\n    image: busybox\n    sysctls:\n      net.ipv4.ip_forward: 1\n      net.core.somaxconn: 1024\n      \
         kernel.shmmax: 1000000\n      fs.mqueue.msg_max: 20\n      kernel.domainname: example\n",
    );
    assert_eq!(v.code, 0, "{}", v.stderr);
}

#[test]
fn binds_and_capabilities_that_hand_over_the_host_are_warned_about() {
    let mut a = Agent::new(SKIFF);
    let yaml = "services:
  spy:
    image: skiff.test/none:1
    pull_policy: never
    deploy: {replicas: 0}
    cap_add: [ALL]
    volumes:
      - /:/host
      - /etc:/host-etc:ro
      - /var/run/docker.sock:/var/run/docker.sock
      - /run/containerd/containerd.sock:/c.sock
      - /proc/sysrq-trigger:/sysrq
      - /boot:/boot
      - type: bind
        source: /var/lib/skiff
        target: /store
      - /var:/var-host
      - /etc/localtime:/etc/localtime:ro
      - ./data:/data
      - /usr:/usr-host:ro
";
    a.write_manifest(yaml);
    let f = a.manifest_path();
    let v = validate(&f);
    assert_eq!(v.code, 0, "warnings never refuse: {}{}", v.stderr, v.stdout);
    let at = |line: u32, col: u32| format!("{}:{line}:{col}: warning: ", f.display());
    let want = [
        (at(6, 15), "spy.cap_add: every capability"),
        (at(8, 9), "spy.volumes: binding `/` hands the host's whole filesystem to the container"),
        (at(9, 9), "binding `/etc` hands the host's configuration"),
        (at(10, 9), "binding `/var/run/docker.sock`: there is no Docker API on a skiff box"),
        (at(11, 9), "binding `/run/containerd/containerd.sock` hands containerd"),
        (
            at(12, 9),
            "binding `/proc/sysrq-trigger` hands the host's /proc (/proc/sysrq-trigger reboots or crashes the host)",
        ),
        (at(13, 9), "binding `/boot` hands the host's kernel"),
        (at(14, 9), "binding `/var/lib/skiff` hands skiff's store"),
        (at(17, 9), "binding `/var` includes `/var/run/docker.sock`"),
    ];
    let lines: Vec<&str> = v.stderr.lines().collect();
    for (prefix, text) in &want {
        assert!(
            lines.iter().any(|l| l.starts_with(prefix) && l.contains(text)),
            "no `{prefix}...{text}` in:\n{}",
            v.stderr
        );
    }
    assert_eq!(lines.len(), want.len(), "nothing about /etc/localtime, ./data, /usr read-only:\n{}", v.stderr);
    assert!(v.stdout.contains(&format!("{}: 1 service, {} warnings", f.display(), want.len())), "{}", v.stdout);

    // The agent says the same in its log when it loads the manifest (and in status).
    a.start();
    let shown = f.display().to_string();
    let st = a.wait_status("the manifest in force", |st| st["manifest"]["revision"].is_string());
    let warnings = st["manifest"]["warnings"].as_array().cloned().unwrap_or_default();
    assert_eq!(warnings.len(), want.len(), "{warnings:#?}");
    let log = a.log();
    for (prefix, text) in &want {
        let prefix = prefix.replace(&f.display().to_string(), &shown);
        assert!(
            log.lines().any(|l| l.contains(&prefix) && l.contains(text)),
            "the agent's log lacks `{prefix}...{text}`:\n{log}"
        );
    }
    a.down();
}
