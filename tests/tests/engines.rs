//! The runtime under real container engines: podman with `--runtime`, containerd through
//! `ctr --runc-binary` and through the runc v2 shim's `BinaryName` option (what a k3s
//! RuntimeClass handler configures), and containerd's CRI plugin driven over the CRI API
//! (what the kubelet does) with that handler. Fixtures: tests/src/engines.rs.

use std::path::Path;
use std::process::Command;

use k8s_cri::v1 as cri;
use skiff_tests::engines::{Containerd, Cri, Podman, IMAGE, PAUSE_IMAGE};
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

/// A CRI pod sandbox, stopped and removed on drop when a test fails before it does so
/// itself ([`Pod::remove`]); the fixture's own `Drop` then cleans whatever that could not.
struct Pod<'a> {
    cri: &'a Cri,
    id: Option<String>,
}

impl Pod<'_> {
    /// StopPodSandbox then RemovePodSandbox, as the kubelet does; both must succeed.
    fn remove(mut self) {
        if let Some(id) = self.id.take() {
            let req = cri::StopPodSandboxRequest { pod_sandbox_id: id.clone() };
            self.cri.call(self.cri.runtime().stop_pod_sandbox(req)).expect("StopPodSandbox");
            let req = cri::RemovePodSandboxRequest { pod_sandbox_id: id };
            self.cri.call(self.cri.runtime().remove_pod_sandbox(req)).expect("RemovePodSandbox");
        }
    }
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let req = cri::StopPodSandboxRequest { pod_sandbox_id: id.clone() };
            let _ = self.cri.try_call(self.cri.runtime().stop_pod_sandbox(req));
            let req = cri::RemovePodSandboxRequest { pod_sandbox_id: id };
            let _ = self.cri.try_call(self.cri.runtime().remove_pod_sandbox(req));
        }
    }
}

/// `skiff-runtime --root ROOT state ID` as JSON, or None when the runtime knows no `id`.
fn runtime_state(root: &Path, id: &str) -> Option<Value> {
    let out = Command::new(runtime_bin()).arg("--root").arg(root).args(["state", id]).output().expect("run state");
    out.status.success().then(|| serde_json::from_slice(&out.stdout).expect("state prints JSON"))
}

#[test]
fn cri_runs_a_pod_on_the_skiff_runtime_handler() {
    require_root();
    let Some(c) = Containerd::start() else { return };
    let cri = c.cri();
    let root = c.runtime_root(skiff_tests::engines::CRI_NAMESPACE);
    let parent = c.cri_cgroup_parent();
    let logs = c.dir.join("pods");
    std::fs::create_dir_all(&logs).unwrap();

    // The host's network (no CNI), a pid namespace per container, the fixture's cgroup parent.
    let namespaces = cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    };
    let sandbox_config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "skiff-pod".into(),
            uid: format!("uid-{}", std::process::id()),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: logs.display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: parent.clone(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };

    // RunPodSandbox with the RuntimeClass handler `skiff`: the sandbox container runs on
    // the runtime under test (its state is under the shim's Root for namespace k8s.io).
    let req = cri::RunPodSandboxRequest { config: Some(sandbox_config.clone()), runtime_handler: "skiff".into() };
    let pod_id = cri.call(cri.runtime().run_pod_sandbox(req)).expect("RunPodSandbox").pod_sandbox_id;
    let pod = Pod { cri: &cri, id: Some(pod_id.clone()) };
    let st = runtime_state(&root, &pod_id).unwrap_or_else(|| panic!("the runtime knows no sandbox {pod_id}"));
    assert_eq!(st["status"], "running", "{st}");
    let req = cri::PodSandboxStatusRequest { pod_sandbox_id: pod_id.clone(), verbose: true };
    let status = cri.call(cri.runtime().pod_sandbox_status(req)).expect("PodSandboxStatus");
    let sandbox = status.status.as_ref().expect("a sandbox status");
    assert_eq!(sandbox.state, cri::PodSandboxState::SandboxReady as i32, "{status:?}");
    let info: Value = serde_json::from_str(status.info.get("info").map(String::as_str).unwrap_or("{}")).unwrap();
    assert_eq!(info["runtimeHandler"], "skiff", "{info}");
    assert_eq!(info["runtimeOptions"]["binary_name"], runtime_bin().display().to_string(), "{info}");
    assert_eq!(info["pid"], st["pid"], "the sandbox's pid is the runtime's: {info}");
    assert_eq!(info["image"], PAUSE_IMAGE, "{info}");

    // CreateContainer + StartContainer in it, with a memory limit.
    let script = "trap 'echo got-signal; exit 3' INT TERM; echo started; while :; do sleep 0.1; done";
    let config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: "app".into(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: IMAGE.into(), ..Default::default() }),
        args: ["sh", "-c", script].map(String::from).to_vec(),
        log_path: "app.log".into(),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources { memory_limit_in_bytes: 64 << 20, ..Default::default() }),
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(namespaces),
                ..Default::default()
            }),
        }),
        ..Default::default()
    };
    let req = cri::CreateContainerRequest {
        pod_sandbox_id: pod_id.clone(),
        config: Some(config),
        sandbox_config: Some(sandbox_config),
    };
    let ctr_id = cri.call(cri.runtime().create_container(req)).expect("CreateContainer").container_id;
    cri.call(cri.runtime().start_container(cri::StartContainerRequest { container_id: ctr_id.clone() }))
        .expect("StartContainer");
    let st = runtime_state(&root, &ctr_id).unwrap_or_else(|| panic!("the runtime knows no container {ctr_id}"));
    assert_eq!(st["status"], "running", "{st}");

    // ContainerStatus agrees with the runtime; the log (CRI format) has the entrypoint's
    // line and the script's; the limit is on the container's cgroup under our parent.
    let container_status = |verbose| {
        let req = cri::ContainerStatusRequest { container_id: ctr_id.clone(), verbose };
        cri.call(cri.runtime().container_status(req)).expect("ContainerStatus")
    };
    let status = container_status(true);
    let s = status.status.as_ref().expect("a container status");
    assert_eq!(s.state, cri::ContainerState::ContainerRunning as i32, "{status:?}");
    assert_eq!(s.image.as_ref().map(|i| i.image.as_str()), Some(IMAGE), "{status:?}");
    let info: Value = serde_json::from_str(status.info.get("info").map(String::as_str).unwrap_or("{}")).unwrap();
    assert_eq!(info["pid"], st["pid"], "the container's pid is the runtime's: {info}");
    assert_eq!(info["sandboxID"], pod_id.as_str(), "{info}");
    let log = logs.join("app.log");
    wait_until("the container's first log line", TIMEOUT, || read(&log).contains(" stdout F started"));
    assert!(read(&log).contains(" stdout F entrypoint: uid=1000"), "{}", read(&log));
    if let Some(dir) = controller_dir("memory", &format!("{parent}/{ctr_id}")) {
        let f = if dir.join("memory.limit_in_bytes").exists() { "memory.limit_in_bytes" } else { "memory.max" };
        assert_eq!(read(dir.join(f)).trim(), "67108864", "{}", dir.display());
    }

    // ExecSync: output, exit status, beside the container's own init.
    let exec = |cmd: &[&str]| {
        let req = cri::ExecSyncRequest {
            container_id: ctr_id.clone(),
            cmd: cmd.iter().map(|a| a.to_string()).collect(),
            timeout: TIMEOUT.as_secs() as i64,
        };
        cri.call(cri.runtime().exec_sync(req)).expect("ExecSync")
    };
    let out = exec(&["sh", "-c", "echo exec-ok; cat /proc/1/cmdline"]);
    assert_eq!(out.exit_code, 0, "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("exec-ok\nsh\0-c\0{script}\0"), "{out:?}");
    let out = exec(&["sh", "-c", "echo to-stderr >&2; exit 4"]);
    assert_eq!((out.exit_code, String::from_utf8_lossy(&out.stderr).as_ref()), (4, "to-stderr\n"), "{out:?}");

    // StopContainer sends the stop signal first (the script exits 3 on it), through the
    // runtime's kill; RemoveContainer deletes it from the runtime, and its cgroup.
    let req = cri::StopContainerRequest { container_id: ctr_id.clone(), timeout: TIMEOUT.as_secs() as i64 };
    cri.call(cri.runtime().stop_container(req)).expect("StopContainer");
    let status = container_status(false);
    let s = status.status.as_ref().expect("a container status");
    assert_eq!((s.state, s.exit_code), (cri::ContainerState::ContainerExited as i32, 3), "{status:?}");
    assert!(read(&log).contains(" stdout F got-signal"), "{}", read(&log));
    cri.call(cri.runtime().remove_container(cri::RemoveContainerRequest { container_id: ctr_id.clone() }))
        .expect("RemoveContainer");
    assert!(runtime_state(&root, &ctr_id).is_none(), "the runtime still knows {ctr_id}");
    if let Some(dir) = controller_dir("memory", &format!("{parent}/{ctr_id}")) {
        assert!(!dir.exists(), "{} is left", dir.display());
    }

    // StopPodSandbox + RemovePodSandbox: nothing of the pod is left in the runtime, in
    // containerd, under the fixture's dir (mounts) or among processes (its shim).
    pod.remove();
    assert!(runtime_state(&root, &pod_id).is_none(), "the runtime still knows the sandbox {pod_id}");
    let req = cri::ListPodSandboxRequest { filter: None };
    let pods = cri.call(cri.runtime().list_pod_sandbox(req)).expect("ListPodSandbox").items;
    assert!(pods.is_empty(), "{pods:?}");
    let req = cri::ListContainersRequest { filter: None };
    let containers = cri.call(cri.runtime().list_containers(req)).expect("ListContainers").containers;
    assert!(containers.is_empty(), "{containers:?}");
    let mounts: Vec<_> = mount_points().into_iter().filter(|m| m.starts_with(c.dir.path())).collect();
    assert!(mounts.is_empty(), "{mounts:?}");
    wait_until("the pod's shim to exit", TIMEOUT, || {
        !processes().iter().any(|p| {
            p.state != 'Z'
                && String::from_utf8_lossy(&std::fs::read(format!("/proc/{}/cmdline", p.pid)).unwrap_or_default())
                    .contains(&pod_id)
        })
    });
}
