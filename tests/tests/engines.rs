//! The runtime under real container engines: podman with `--runtime`, containerd through
//! `ctr --runc-binary` and through the runc v2 shim's `BinaryName` option (what a k3s
//! RuntimeClass handler configures). Fixtures: tests/src/engines.rs.

use std::path::Path;
use std::process::Command;

use skiff_tests::engines::{Containerd, Podman, IMAGE};
use skiff_tests::*;

/// Runs `argv` in a detached tmux session on a real terminal (its own server socket in
/// `dir`), types `keys` once `ready` shows on the screen, and returns the screen and the
/// exit status of `argv` once it has exited.
fn through_a_terminal(dir: &Path, argv: &[String], ready: &str, keys: &str) -> (String, String) {
    if which("tmux").is_none() {
        panic!("tmux is not installed: hack/setup installs it");
    }
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let sock = dir.join(format!("tmux{n}.sock"));
    let exit = dir.join(format!("tty-exit{n}"));
    let shell_cmd = format!("{}; echo $? > {}; sleep 600", argv.join(" "), exit.display());
    let tmux = |args: &[&str]| -> Out {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&sock).args(args).env_remove("TMUX");
        run_command(c, format!("tmux {}", args.join(" ")), dir, TIMEOUT)
    };
    tmux(&["new-session", "-d", "-x", "120", "-y", "40", &shell_cmd]).ok();
    let screen = || tmux(&["capture-pane", "-p"]).stdout;
    wait_until(&format!("{ready:?} on the terminal"), TIMEOUT, || screen().contains(ready));
    tmux(&["send-keys", keys, "Enter"]).ok();
    wait_until("the command on the terminal to exit", TIMEOUT, || exit.exists() && !read(&exit).trim().is_empty());
    let s = screen();
    let _ = tmux(&["kill-server"]);
    (s, read(&exit).trim().to_string())
}

#[test]
fn podman_runs_execs_stops_kills_pauses_and_limits() {
    require_root();
    let Some(pm) = Podman::start() else { return };

    // run --rm: output, exit status, nothing left.
    let out = pm.run(&["--rm", IMAGE, "echo", "hello from podman"]).ok();
    assert!(out.stdout.lines().any(|l| l == "hello from podman"), "{out}");
    assert_eq!(pm.run(&["--rm", IMAGE, "sh", "-c", "exit 7"]).code(), 7);

    // A memory limit shows inside (the container's own cgroup under /sys/fs/cgroup).
    let out = pm
        .run(&[
            "--rm",
            "--memory",
            "64m",
            IMAGE,
            "sh",
            "-c",
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max",
        ])
        .ok();
    assert_eq!(out.stdout.lines().last(), Some("67108864"), "{out}");

    // run -d, exec, top, logs, pause/unpause, stop, kill.
    let script = "trap 'echo got-TERM; exit 3' TERM; echo started; while :; do sleep 0.1; done";
    pm.run(&["-d", "--name", "web", "--stop-signal", "TERM", IMAGE, "sh", "-c", script]).ok();
    let out = pm.cmd(&["exec", "web", "sh", "-c", "echo exec-ok $(cat /proc/1/cmdline | tr '\\0' ' '); exit 4"]);
    assert_eq!(out.code(), 4, "{out}");
    assert!(out.stdout.contains("exec-ok sh -c trap"), "exec runs beside the init: {out}");
    let out = pm.cmd(&["top", "web"]).ok();
    assert!(out.stdout.lines().next().is_some_and(|h| h.contains("PID")) && out.stdout.contains("sh -c"), "{out}");
    wait_until("the container's first log line", TIMEOUT, || pm.cmd(&["logs", "web"]).stdout.contains("started"));

    pm.cmd(&["pause", "web"]).ok();
    assert_eq!(pm.cmd(&["inspect", "-f", "{{.State.Status}}", "web"]).ok().out(), "paused");
    if let Some(dir) = pm.cgroup_dir("freezer", "web") {
        let f = if dir.join("freezer.state").exists() { dir.join("freezer.state") } else { dir.join("cgroup.freeze") };
        assert!(matches!(read(&f).trim(), "FROZEN" | "1"), "{}: {}", f.display(), read(&f));
    }
    pm.cmd(&["unpause", "web"]).ok();
    assert_eq!(pm.cmd(&["inspect", "-f", "{{.State.Status}}", "web"]).ok().out(), "running");
    pm.cmd(&["exec", "web", "true"]).ok();

    pm.cmd(&["stop", "--time", "30", "web"]).ok();
    assert_eq!(pm.cmd(&["inspect", "-f", "{{.State.ExitCode}}", "web"]).ok().out(), "3", "stop sends TERM first");
    assert!(pm.cmd(&["logs", "web"]).ok().stdout.contains("got-TERM"));
    pm.cmd(&["rm", "web"]).ok();

    pm.run(&["-d", "--name", "victim", IMAGE, "sleep", "1000"]).ok();
    pm.cmd(&["kill", "victim"]).ok();
    wait_until("the killed container to exit", TIMEOUT, || {
        pm.cmd(&["inspect", "-f", "{{.State.Status}}", "victim"]).out() == "exited"
    });
    assert_eq!(pm.cmd(&["inspect", "-f", "{{.State.ExitCode}}", "victim"]).ok().out(), "137");
    pm.cmd(&["rm", "victim"]).ok();

    // A runtime error reaches the user: podman reads it from the runtime's JSON log.
    let out = pm.run(&["--rm", "--entrypoint", "/no/such/binary", IMAGE]).fails();
    assert!(out.stderr.contains("/no/such/binary"), "{out}");
    assert_eq!(pm.cmd(&["ps", "--all", "--quiet"]).ok().out(), "", "nothing left");
}

#[test]
fn podman_run_it_through_a_terminal() {
    require_root();
    let Some(pm) = Podman::start() else { return };
    let mut argv = pm.argv();
    for a in ["run", "-it", "--rm", "--cgroup-parent", &pm.cgroup_parent, IMAGE, "sh"] {
        argv.push(a.to_string());
    }
    let (screen, code) =
        through_a_terminal(pm.dir.path(), &argv, "built-in shell", "tty; stty size; echo $((6*7)); exit 5");
    assert_eq!(code, "5", "{screen}");
    let lines: Vec<&str> = screen.lines().map(str::trim_end).collect();
    assert!(lines.iter().any(|l| l.starts_with("/dev/pts/")), "a pty inside: {screen}");
    assert!(lines.contains(&"40 120"), "the terminal's size: {screen}");
    assert!(lines.contains(&"42"), "{screen}");

    // exec -it into a running container: `exec --tty --console-socket`.
    pm.run(&["-d", "--name", "bg", IMAGE, "sleep", "1000"]).ok();
    let mut argv = pm.argv();
    argv.extend(["exec", "-it", "bg", "sh"].map(String::from));
    let (screen, code) = through_a_terminal(pm.dir.path(), &argv, "built-in shell", "tty; stty size; exit 3");
    assert_eq!(code, "3", "{screen}");
    let lines: Vec<&str> = screen.lines().map(str::trim_end).collect();
    assert!(lines.iter().any(|l| l.starts_with("/dev/pts/")) && lines.contains(&"40 120"), "{screen}");
    pm.cmd(&["rm", "--force", "--time", "0", "bg"]).ok();
}

#[test]
fn ctr_runs_execs_kills_pauses_and_resumes() {
    require_root();
    let Some(c) = Containerd::start() else { return };

    let out = c.run(&["--rm", IMAGE, "once", "echo", "hello from ctr"]).ok();
    assert_eq!(out.out(), "hello from ctr", "{out}");
    assert_eq!(c.run(&["--rm", IMAGE, "code", "sh", "-c", "exit 6"]).code(), 6);

    c.run(&["--detach", "--memory-limit", "67108864", IMAGE, "svc", "sleep", "1000"]).ok();
    if let Some(dir) = c.cgroup_dir("memory", "svc") {
        let f = if dir.join("memory.limit_in_bytes").exists() { "memory.limit_in_bytes" } else { "memory.max" };
        assert_eq!(read(dir.join(f)).trim(), "67108864");
    }
    let out = c.ctr(&["task", "exec", "--exec-id", "e1", "svc", "sh", "-c", "echo exec-ok; exit 4"]);
    assert_eq!((out.code(), out.out()), (4, "exec-ok"), "{out}");
    // ctr task ps: the shim calls `ps --format json`.
    let out = c.ctr(&["task", "ps", "svc"]).ok();
    assert_eq!(out.stdout.lines().count(), 2, "one process (the init): {out}");

    c.ctr(&["task", "pause", "svc"]).ok();
    let status =
        || c.ctr(&["task", "list"]).ok().stdout.lines().find(|l| l.starts_with("svc ")).unwrap_or("").to_string();
    assert!(status().contains("PAUSED"), "{}", status());
    c.ctr(&["task", "resume", "svc"]).ok();
    assert!(status().contains("RUNNING"), "{}", status());
    c.ctr(&["task", "exec", "--exec-id", "e2", "svc", "true"]).ok();

    c.ctr(&["task", "kill", "--signal", "SIGKILL", "svc"]).ok();
    wait_until("the task to stop", TIMEOUT, || status().contains("STOPPED"));
    c.ctr(&["task", "delete", "svc"]).ok();
    c.ctr(&["containers", "delete", "svc"]).ok();

    // The runtime's error comes back through the shim (which reads its JSON log).
    let out = c.run(&["--rm", IMAGE, "bad", "/no/such/binary"]).fails();
    assert!(out.stderr.contains("/no/such/binary"), "{out}");
}

#[test]
fn ctr_run_t_through_a_terminal() {
    require_root();
    let Some(c) = Containerd::start() else { return };
    let mut argv = c.argv();
    let bin = runtime_bin().display().to_string();
    let root = c.dir.join("runc").display().to_string();
    for a in ["run", "-t", "--rm", "--runc-binary", &bin, "--runc-root", &root, IMAGE, "tty1", "sh"] {
        argv.push(a.to_string());
    }
    let (screen, code) = through_a_terminal(c.dir.path(), &argv, "built-in shell", "tty; echo $((6*7)); exit 5");
    assert_eq!(code, "5", "{screen}");
    let lines: Vec<&str> = screen.lines().map(str::trim_end).collect();
    assert!(lines.iter().any(|l| l.starts_with("/dev/pts/")), "a pty inside: {screen}");
    assert!(lines.contains(&"42"), "{screen}");
}

#[test]
fn containerd_runc_v2_shim_with_binary_name() {
    require_root();
    let Some(c) = Containerd::start() else { return };
    // containerd parsed the CRI runtime handler of its config (what k3s writes for a
    // RuntimeClass): io.containerd.runc.v2 with BinaryName = the runtime under test.
    let cfg = c.dir.join("config.toml");
    let out = host(&["containerd", "--config", cfg.to_str().unwrap(), "config", "dump"]).ok();
    let bin = runtime_bin().display().to_string();
    let dump = out.stdout.replace(' ', "");
    assert!(dump.contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.skiff]"), "{out}");
    assert!(dump.contains(&format!("BinaryName=\"{bin}\"")), "{out}");

    // The shim side of that path: containerd's runc v2 shim given BinaryName (ctr's
    // --runc-binary sets the same field of the shim's options that the CRI plugin fills
    // from the table above) runs the runtime under test, with its state under Root.
    let root = c.dir.join("runc").display().to_string();
    c.ctr(&[
        "run",
        "--detach",
        "--runtime",
        "io.containerd.runc.v2",
        "--runc-binary",
        &bin,
        "--runc-root",
        &root,
        IMAGE,
        "k3s",
        "sleep",
        "1000",
    ])
    .ok();
    let runc_root = c.dir.join("runc").join(&c.ns);
    let state = Command::new(runtime_bin()).arg("--root").arg(&runc_root).args(["state", "k3s"]).output().unwrap();
    let st: Value = serde_json::from_slice(&state.stdout)
        .unwrap_or_else(|e| panic!("state of k3s under {} ({e}): {state:?}", runc_root.display()));
    assert_eq!(st["status"], "running", "{st}");
    let out = c.ctr(&["task", "exec", "--exec-id", "x", "k3s", "sh", "-c", "echo via-shim; cat /proc/1/cmdline"]).ok();
    assert_eq!(out.stdout, "via-shim\nsleep\u{0}1000\u{0}", "{out}");
    c.ctr(&["task", "pause", "k3s"]).ok();
    c.ctr(&["task", "resume", "k3s"]).ok();
    // --all: the shim calls `kill --all`.
    c.ctr(&["task", "kill", "--all", "--signal", "SIGKILL", "k3s"]).ok();
    wait_until("the task to stop", TIMEOUT, || {
        c.ctr(&["task", "list"]).stdout.lines().any(|l| l.starts_with("k3s ") && l.contains("STOPPED"))
    });
    c.ctr(&["task", "delete", "k3s"]).ok();
    c.ctr(&["containers", "delete", "k3s"]).ok();
    assert!(!runc_root.join("k3s").exists(), "the runtime's state is gone");
}
