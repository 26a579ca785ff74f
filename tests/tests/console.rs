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
