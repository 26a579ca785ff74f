//! Terminals: passing the pty master over `--console-socket` (SCM_RIGHTS, as runc),
//! and relaying it to our own stdio for a foreground `run` without a socket.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use crate::error::{Context, Error, Result};

/// Sends `fd` over the unix socket `sock`, with the pty name as payload.
pub fn send_fd(sock: BorrowedFd, fd: BorrowedFd, name: &str) -> Result<()> {
    let fds = [fd.as_raw_fd()];
    let iov = [IoSlice::new(name.as_bytes())];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .ctx(|| "send the terminal to the console socket")?;
    Ok(())
}

/// Receives one fd sent with [`send_fd`].
pub fn recv_fd(sock: BorrowedFd) -> Result<OwnedFd> {
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .ctx(|| "receive the terminal")?;
    for c in msg.cmsgs().ctx(|| "receive the terminal")? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed this fd in our table for us.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(Error::msg("the container's init sent no terminal"))
}

/// Copies between our stdin/stdout and the pty master until the master hangs up.
/// Runs in a helper thread of a foreground `run`.
pub fn relay(master: OwnedFd) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut buf = [0u8; 8192];
    let stdin = 0;
    let mut stdin_open = true;
    loop {
        // SAFETY: fds 0 and the master stay open for the whole loop.
        let in_fd = unsafe { BorrowedFd::borrow_raw(stdin) };
        let m = unsafe { BorrowedFd::borrow_raw(master.as_raw_fd()) };
        let mut fds = vec![PollFd::new(m, PollFlags::POLLIN)];
        if stdin_open {
            fds.push(PollFd::new(in_fd, PollFlags::POLLIN));
        }
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            continue;
        }
        let mrev = fds[0].revents().unwrap_or(PollFlags::empty());
        let irev = fds.get(1).and_then(|f| f.revents()).unwrap_or(PollFlags::empty());
        if mrev.intersects(PollFlags::POLLIN) {
            match nix::unistd::read(master.as_raw_fd(), &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let _ = nix::unistd::write(std::io::stdout(), &buf[..n]);
                }
            }
        } else if mrev.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
            return;
        }
        if irev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
            match nix::unistd::read(stdin, &mut buf) {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => {
                    // SAFETY: the master is open.
                    let _ = nix::unistd::write(unsafe { BorrowedFd::borrow_raw(master.as_raw_fd()) }, &buf[..n]);
                }
            }
        }
    }
}
