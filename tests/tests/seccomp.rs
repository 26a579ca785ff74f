//! seccomp filters from linux.seccomp.

use skiff_tests::*;

/// errno 54 (EXFULL) is one no real mkdir/chmod ever returns, so its message
/// ("Exchange full") can only come from the filter.
const EXFULL: i64 = 54;
const EXFULL_MSG: &str = "Exchange full";

fn filter(syscalls: Value) -> Value {
    json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": syscalls})
}

#[test]
fn a_denied_syscall_returns_the_configured_errno() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.set("/root/readonly", json!(false))
        .set(
            "/linux/seccomp",
            filter(json!([{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": EXFULL}])),
        )
        .sh("{ mkdir /tmp/d; } 2>&1; touch /tmp/f && echo touch-ok; [ -d /tmp/d ] || echo no-dir");
    let out = rt.output(&b);
    assert_eq!(out, format!("mkdir: can't create directory '/tmp/d': {EXFULL_MSG}\ntouch-ok\nno-dir\n"));
}

#[test]
fn errno_defaults_to_eperm() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.set("/root/readonly", json!(false))
        .set("/linux/seccomp", filter(json!([{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}])))
        .sh("{ mkdir /tmp/d; } 2>&1; true");
    assert_eq!(rt.output(&b), "mkdir: can't create directory '/tmp/d': Operation not permitted\n");
}

#[test]
fn argument_conditions() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    // chmod(path, mode) is refused only for mode 0777; fchmodat(dirfd, path, mode) likewise.
    b.set("/root/readonly", json!(false))
        .set(
            "/linux/seccomp",
            filter(json!([
                {"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": EXFULL,
                 "args": [{"index": 1, "value": 0o777, "op": "SCMP_CMP_EQ"}]},
                {"names": ["fchmodat"], "action": "SCMP_ACT_ERRNO", "errnoRet": EXFULL,
                 "args": [{"index": 2, "value": 0o777, "op": "SCMP_CMP_EQ"}]},
                // A masked comparison: refuse any mode with the setuid bit.
                {"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": EXFULL,
                 "args": [{"index": 1, "value": 0o4000, "valueTwo": 0o4000, "op": "SCMP_CMP_MASKED_EQ"}]}
            ])),
        )
        .sh("touch /tmp/f; chmod 755 /tmp/f && echo 755-ok; { chmod 777 /tmp/f; } 2>&1; \
             { chmod 4755 /tmp/f; } 2>&1; chmod 700 /tmp/f && echo 700-ok; stat -c %a /tmp/f");
    let out = rt.output(&b);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "755-ok", "{out}");
    assert!(lines[1].contains(EXFULL_MSG), "chmod 777 refused: {out}");
    assert!(lines[2].contains(EXFULL_MSG), "chmod 4755 refused: {out}");
    assert_eq!(&lines[3..], &["700-ok", "700"], "{out}");
}

#[test]
fn a_kill_rule_kills_the_process() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.set("/linux/seccomp", filter(json!([{"names": ["sync"], "action": "SCMP_ACT_KILL"}])));
    // The busybox applet calls sync(2) in the process itself: it dies of SIGSYS.
    b.args(&["/bin/sync"]);
    let out = rt.run(&b, &rt.id("seckill"));
    assert_eq!(out.code(), 128 + libc::SIGSYS, "{out}");
    // Other syscalls are fine.
    b.args(&["/bin/echo", "alive"]);
    assert_eq!(rt.output(&b), "alive\n");
}

#[test]
fn kill_process_action() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.set("/linux/seccomp", filter(json!([{"names": ["sync"], "action": "SCMP_ACT_KILL_PROCESS"}])))
        .args(&["/bin/sync"]);
    let out = rt.run(&b, &rt.id("seckillp"));
    assert_eq!(out.code(), 128 + libc::SIGSYS, "{out}");
}

#[test]
fn default_action_errno_with_an_allow_list() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    // Only what busybox (and a runtime finishing its setup) needs is allowed: mkdir is not.
    let mut allowed: Vec<&str> = vec![
        "execve",
        "brk",
        "arch_prctl",
        "set_tid_address",
        "set_robust_list",
        "rseq",
        "prlimit64",
        "readlink",
        "readlinkat",
        "getrandom",
        "mprotect",
        "mmap",
        "munmap",
        "write",
        "writev",
        "exit_group",
        "exit",
        "getuid",
        "getgid",
        "geteuid",
        "getegid",
        "getpid",
        "getppid",
        "rt_sigaction",
        "rt_sigprocmask",
        "rt_sigreturn",
        "ioctl",
        "fstat",
        "newfstatat",
        "stat",
        "read",
        "close",
        "fcntl",
        "dup2",
        "dup3",
        "wait4",
        "clone",
        "clone3",
        "fork",
        "vfork",
        "openat",
        "open",
        "getcwd",
        "lseek",
        "uname_not",
        "futex",
        "sigaltstack",
        "statx",
        "access",
        "faccessat",
        "faccessat2",
        "prctl",
        "capget",
        "capset",
        "setgroups",
        "setresuid",
        "setresgid",
        "setuid",
        "setgid",
        "getdents64",
        "chdir",
        "fchdir",
        "select",
        "pselect6",
        "poll",
        "ppoll",
        "pipe",
        "pipe2",
        "epoll_create1",
        "epoll_ctl",
        "epoll_pwait",
        "epoll_wait",
        "nanosleep",
        "clock_nanosleep",
        "sched_getaffinity",
        "getpgrp",
        "setpgid",
        "getpgid",
        "madvise",
        "mremap",
        "close_range",
        "seccomp",
        "setsid",
        "keyctl",
        "sched_yield",
        "kill",
        "tgkill",
        "gettid",
        "socket",
        "connect",
        "statfs",
        "fstatfs",
        "getrlimit",
        "setrlimit",
        "sendmsg",
        "recvmsg",
        "sendto",
        "recvfrom",
        "getsockopt",
        "setsockopt",
        "umask",
        "getpriority",
        "setpriority",
        "unshare",
        "setns",
        "mount",
        "umount2",
        "pivot_root",
        "sethostname",
        "setdomainname",
        "chroot",
        "fchown",
        "fchmod",
        "personality",
        "sysinfo",
        "times",
        "getrusage",
        "gettimeofday",
        "clock_gettime",
        "time",
        "sigreturn",
        "restart_syscall",
        "uname_is_denied",
    ];
    allowed.retain(|s| !s.starts_with("uname"));
    b.set(
        "/linux/seccomp",
        json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": EXFULL,
               "syscalls": [{"names": allowed, "action": "SCMP_ACT_ALLOW"}]}),
    )
    .set("/root/readonly", json!(false))
    .args(&["/bin/echo", "allowed"]);
    assert_eq!(rt.output(&b), "allowed\n");
    b.args(&["/bin/mkdir", "/tmp/d"]);
    let out = rt.run(&b, &rt.id("secdefault"));
    assert_eq!(out.code(), 1, "{out}");
    assert_eq!(out.stderr, format!("mkdir: can't create directory '/tmp/d': {EXFULL_MSG}\n"));
}

/// A profile the filter cannot be built from fails `create` (not `start`), in one line
/// that says seccomp, and leaves no state, cgroup or process. With noNewPrivileges the
/// filter is loaded only after `start`, so it must be built (checked) during create.
#[test]
fn a_bad_profile_fails_create_and_leaves_nothing() {
    let rt = Runtime::new();
    let bad = [
        // Found only when the filter is built.
        (
            "an argument index past the sixth",
            filter(
                json!([{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]),
            ),
        ),
        ("an errno past 16 bits", filter(json!([{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 70000}]))),
        // Found when config.json is read.
        ("an unknown action", json!({"defaultAction": "SCMP_ACT_BOGUS"})),
        ("an unknown architecture", json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_VAX"]})),
        (
            "an unknown operator",
            filter(
                json!([{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 1, "value": 1, "op": "SCMP_CMP_ALMOST"}]}]),
            ),
        ),
    ];
    for (what, profile) in bad {
        for nnp in [true, false] {
            let mut b = Bundle::new();
            let id = rt.id("badseccomp");
            let cg = format!("/{id}");
            // runc cannot mount the "cgroup" filesystem while a second v1 hugetlb hierarchy
            // is mounted (as crun needs on this hybrid host); this test needs no cgroup mount.
            b.without_mount("/sys/fs/cgroup")
                .set("/linux/seccomp", profile.clone())
                .set("/process/noNewPrivileges", json!(nnp))
                .set("/linux/cgroupsPath", json!(cg))
                .args(&["sleep", "1000"]);
            let out = rt.create(&b, &id);
            assert!(!out.success(), "{what} (noNewPrivileges {nnp}): create succeeded:\n{out}");
            if is_skiff() {
                let err = out.stderr.trim();
                assert!(err.contains("seccomp") && !err.contains('\n'), "{what}: one line that says seccomp:\n{out}");
            }
            assert_create_left_nothing(&rt, &id, &cg);
            rt.cmd(&["state", &id]).fails();
        }
    }
}
