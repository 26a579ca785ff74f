//! Terminals: `process.terminal` with `--console-socket` (how containerd and podman run
//! `-t` containers): the runtime sends the pty master over the socket with SCM_RIGHTS,
//! the container's stdio is the pty slave and it is the controlling terminal.

use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use skiff_tests::*;

/// Accepts one connection on `listener` and receives the fd it carries.
fn receive_master(listener: &UnixListener) -> OwnedFd {
    let (conn, _) = listener.accept().expect("the runtime connects to the console socket");
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(conn.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .expect("recvmsg on the console socket");
    for c in msg.cmsgs().expect("control messages") {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the kernel installed this fd for us just now.
            return unsafe { OwnedFd::from_raw_fd(fds[0]) };
        }
    }
    panic!("no fd received on the console socket");
}

/// Reads from the pty master until `want` shows up or the process side hangs up.
fn read_until(master: &OwnedFd, want: &str) -> String {
    let mut f = std::fs::File::from(master.try_clone().expect("dup master"));
    let mut out = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 1024];
    while Instant::now() < deadline && !out.contains(want) {
        match f.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    out
}

#[test]
fn terminal_over_console_socket() {
    let rt = Runtime::new();
    let dir = Scratch::new("console");
    let sock = dir.join("console.sock");
    let listener = UnixListener::bind(&sock).expect("bind console socket");
    let mut b = Bundle::new();
    b.set("/process/terminal", json!(true))
        .set("/process/consoleSize", json!({"height": 33, "width": 111}))
        .sh("tty; stty size; [ -t 0 ] && echo stdin-is-a-tty; read line; echo got:$line");
    b.save();
    let id = rt.id("tty");
    let create = std::thread::scope(|s| {
        let h = s.spawn(|| {
            rt.cmd(&["create", "--bundle", b.path().to_str().unwrap(), "--console-socket", sock.to_str().unwrap(), &id])
        });
        let master = receive_master(&listener);
        let out = h.join().expect("create thread");
        (out, master)
    });
    let (out, master) = create;
    out.ok();
    rt.start(&id).ok();
    let text = read_until(&master, "stdin-is-a-tty");
    assert!(text.contains("/dev/pts/"), "the process's tty is a pts: {text:?}");
    assert!(text.contains("33 111"), "consoleSize is applied: {text:?}");
    assert!(text.contains("stdin-is-a-tty"), "stdin is the terminal: {text:?}");
    let mut w = std::fs::File::from(master.try_clone().expect("dup master"));
    w.write_all(b"hello-through-the-pty\n").expect("write to the pty");
    let text = read_until(&master, "got:hello-through-the-pty");
    assert!(text.contains("got:hello-through-the-pty"), "input reaches the process: {text:?}");
    wait_until("the container exits", Duration::from_secs(20), || rt.state(&id)["status"] == "stopped");
    rt.cmd(&["delete", &id]).ok();
}

#[test]
fn terminal_without_console_socket_is_refused_by_create() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.set("/process/terminal", json!(true)).args(&["true"]);
    let id = rt.id("notty");
    rt.create(&b, &id).error_mentions(&["console"]);
    assert!(!rt.state_entries().contains(&id));
}

/// `run --detach` with a terminal and no console socket would leave the container on a
/// pty nobody reads: refused before anything is made, as runc and crun do.
#[test]
fn run_detach_with_a_terminal_needs_a_console_socket() {
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.set("/process/terminal", json!(true)).args(&["sleep", "1000"]);
    let id = rt.id("detachtty");
    rt.run_detached(&b, &id).error_mentions(&["console"]);
    assert!(!rt.state_entries().contains(&id), "the refused run left state behind");
    assert!(rt.status(&id).is_none());
}

/// Runs the runtime with `args` with stdin, stdout and stderr on a new pty, as from a
/// user's terminal, and reads what it writes there until it closes the terminal. Returns
/// its exit code and output; panics when it has not finished within `limit`.
fn on_a_terminal(rt: &Runtime, args: &[&str], limit: Duration) -> (i32, String) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let slave = std::fs::File::from(pty.slave);
    let (mut cmd, desc) = rt.command(args);
    cmd.stdin(slave.try_clone().expect("dup pty")).stdout(slave.try_clone().expect("dup pty")).stderr(slave);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn `{desc}`: {e}"));
    drop(cmd); // our copies of the pty's slave side: the master reports EOF once the runtime's are closed
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`{desc}` on a terminal did not finish within {limit:?}; it wrote {:?}",
                String::from_utf8_lossy(&out)
            );
        }
        let mut fds = [PollFd::new(pty.master.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(100u16)).unwrap_or(0) == 0 {
            continue;
        }
        match nix::unistd::read(pty.master.as_raw_fd(), &mut buf) {
            Ok(0) | Err(_) => break, // EIO: every slave fd is closed
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    let status = wait_timeout(&mut child, deadline.saturating_duration_since(Instant::now()))
        .unwrap_or_else(|| panic!("`{desc}` closed its terminal but did not exit within {limit:?}"));
    (status.code().unwrap_or(-1), String::from_utf8_lossy(&out).into_owned())
}

/// A foreground `run` or `exec` with a terminal relays the pty from a helper thread while
/// it waits for the process. It used to hang about one time in four: the thread was spawned
/// before the signals were blocked, so SIGCHLD could go to it and be lost. Each of many
/// runs and execs must finish, with the process's output and exit code.
#[test]
fn foreground_run_and_exec_with_a_terminal_always_finish() {
    const ROUNDS: usize = 40;
    let limit = Duration::from_secs(30);
    let rt = Runtime::new();
    let mut b = Bundle::new();
    b.set("/process/terminal", json!(true)).sh("echo fg-run-ok; exit 3");
    b.save();
    let bundle = b.path().to_str().unwrap().to_string();
    for i in 0..ROUNDS {
        let id = rt.id("fgtty");
        let (code, out) = on_a_terminal(&rt, &["run", "--bundle", &bundle, &id], limit);
        assert!(out.contains("fg-run-ok"), "run {i}: the process's output reaches the terminal: {out:?}");
        assert_eq!(code, 3, "run {i}: the process's exit code: {out:?}");
        assert!(rt.status(&id).is_none(), "run {i}: a foreground run deletes its container");
    }

    let mut c = Bundle::new();
    c.args(&["sleep", "1000"]);
    let id = rt.id("fgexec");
    rt.create_start(&c, &id);
    for i in 0..ROUNDS {
        let (code, out) = on_a_terminal(&rt, &["exec", "--tty", &id, "sh", "-c", "echo fg-exec-ok; exit 4"], limit);
        assert!(out.contains("fg-exec-ok"), "exec {i}: the process's output reaches the terminal: {out:?}");
        assert_eq!(code, 4, "exec {i}: the process's exit code: {out:?}");
    }
    rt.delete_force(&id).ok();
}
