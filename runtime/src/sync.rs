//! Messages between the runtime (parent) and the container's init (child) over a
//! `SOCK_SEQPACKET` socketpair: one small message per step, so the two sides can
//! never read half a message or two at once.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use crate::error::{Context, Error, Result};
use crate::log::Level;

/// One step of the create handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// parent → child: cgroup placed, id maps written; go on.
    Go,
    /// child → parent (two-stage only): the id maps for my new user namespace, please.
    MapsPlease,
    /// child → parent (two-stage only): the init's pid in the parent's pid namespace.
    InitPid(i32),
    /// child → parent: environment built, about to pivot_root; run createRuntime hooks.
    HooksPlease,
    /// child → parent: setup done; waiting for `start`.
    Ready,
    /// either side: what went wrong, one line.
    Err(String),
    /// child → parent: a line for the runtime's log (the child has no log file open).
    Log(Level, String),
}

/// The longest log line sent over the channel (a message is read into 4 KiB).
const MAX_LOG: usize = 4000;

impl Msg {
    fn encode(&self) -> Vec<u8> {
        match self {
            Msg::Go => b"G".to_vec(),
            Msg::MapsPlease => b"M".to_vec(),
            Msg::InitPid(p) => format!("P{p}").into_bytes(),
            Msg::HooksPlease => b"H".to_vec(),
            Msg::Ready => b"R".to_vec(),
            Msg::Err(e) => {
                let mut v = b"E".to_vec();
                v.extend_from_slice(e.as_bytes());
                v
            }
            Msg::Log(level, text) => {
                let mut v = vec![b'L', level_byte(*level)];
                let mut end = text.len().min(MAX_LOG);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                v.extend_from_slice(&text.as_bytes()[..end]);
                v
            }
        }
    }

    fn decode(b: &[u8]) -> Option<Msg> {
        let (&tag, rest) = b.split_first()?;
        Some(match tag {
            b'G' => Msg::Go,
            b'M' => Msg::MapsPlease,
            b'P' => Msg::InitPid(std::str::from_utf8(rest).ok()?.parse().ok()?),
            b'H' => Msg::HooksPlease,
            b'R' => Msg::Ready,
            b'E' => Msg::Err(String::from_utf8_lossy(rest).into_owned()),
            b'L' => {
                let (&l, text) = rest.split_first()?;
                let level =
                    [Level::Debug, Level::Info, Level::Warn, Level::Error].into_iter().find(|x| level_byte(*x) == l)?;
                Msg::Log(level, String::from_utf8_lossy(text).into_owned())
            }
            _ => return None,
        })
    }
}

/// A connected seqpacket socket end.
pub struct Chan(pub OwnedFd);

fn level_byte(l: Level) -> u8 {
    match l {
        Level::Debug => b'd',
        Level::Info => b'i',
        Level::Warn => b'w',
        Level::Error => b'e',
    }
}

/// Sends a log line to the runtime (see [`crate::log::forward_to_parent`]).
pub fn send_log(chan: BorrowedFd, level: Level, text: &str) -> nix::Result<usize> {
    nix::unistd::write(chan, &Msg::Log(level, text.to_string()).encode())
}

pub fn pair() -> Result<(Chan, Chan)> {
    let (a, b) =
        socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).ctx(|| "socketpair")?;
    Ok((Chan(a), Chan(b)))
}

impl Chan {
    pub fn send(&self, m: &Msg) -> Result<()> {
        let buf = m.encode();
        loop {
            match nix::unistd::write(self.0.as_fd(), &buf) {
                Ok(_) => return Ok(()),
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(Error::Sys { what: "sync: send".into(), source: e }),
            }
        }
    }

    /// Receives one message; `None` when the other side closed (exited or exec'ed).
    ///
    /// A side that exits with a message of ours still unread in its queue (the init fails
    /// and exits while our `Go` is on its way) leaves `ECONNRESET` pending on our end, and
    /// the kernel reports that error *before* the messages queued for us: the init's own
    /// `Err`, its last word, would be lost behind "connection reset". The error is reported
    /// once; the read after it returns what is queued, or end of file.
    pub fn recv(&self) -> Result<Option<Msg>> {
        let mut buf = [0u8; 4096];
        let mut reset = false;
        loop {
            match nix::unistd::read(self.0.as_raw_fd(), &mut buf) {
                Ok(0) => return Ok(None),
                Ok(n) => match Msg::decode(&buf[..n]) {
                    Some(Msg::Log(level, text)) => crate::log::log(level, &text),
                    Some(m) => return Ok(Some(m)),
                    None => return Err(Error::msg("sync: garbled message from the container's init")),
                },
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::ECONNRESET) if !reset => reset = true,
                Err(e) => return Err(Error::Sys { what: "sync: receive".into(), source: e }),
            }
        }
    }

    /// Receives, turning `Err` messages and an early close into errors.
    pub fn expect(&self, want: &Msg) -> Result<Msg> {
        match self.recv()? {
            Some(Msg::Err(e)) => Err(Error::Msg(e)),
            Some(m) if std::mem::discriminant(&m) == std::mem::discriminant(want) => Ok(m),
            Some(m) => Err(Error::msg(format!("sync: expected {want:?}, got {m:?}"))),
            None => Err(Error::msg("the container's init exited during setup")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The init's failure path: our `Go` still unread on its side when it exits after its
    /// `Err`. The kernel then has ECONNRESET pending for us, ahead of the `Err`.
    #[test]
    fn the_last_word_of_a_side_that_exits_with_unread_messages_is_not_lost() {
        let (parent, child) = pair().expect("pair");
        parent.send(&Msg::Go).expect("send Go");
        child.send(&Msg::Err("mount /mnt/y: unknown filesystem type".into())).expect("send Err");
        drop(child); // exits, Go unread
        match parent.recv() {
            Ok(Some(Msg::Err(e))) => assert!(e.contains("/mnt/y"), "{e}"),
            other => panic!("the init's error, not {other:?}"),
        }
        assert_eq!(parent.recv().expect("end of file"), None);
    }

    /// Without a last word, the reset is an end of file, as a plain close is.
    #[test]
    fn a_side_that_exits_silently_with_unread_messages_is_an_end_of_file() {
        let (parent, child) = pair().expect("pair");
        parent.send(&Msg::Go).expect("send Go");
        drop(child);
        assert_eq!(parent.recv().expect("end of file"), None);
        let (parent, child) = pair().expect("pair");
        drop(child);
        assert_eq!(parent.recv().expect("end of file"), None);
    }

    #[test]
    fn messages_round_trip() {
        for m in [
            Msg::Go,
            Msg::MapsPlease,
            Msg::InitPid(4242),
            Msg::HooksPlease,
            Msg::Ready,
            Msg::Err("x y".into()),
            Msg::Log(Level::Warn, "capability X is unknown".into()),
        ] {
            assert_eq!(Msg::decode(&m.encode()), Some(m));
        }
        assert_eq!(Msg::decode(b""), None);
        assert_eq!(Msg::decode(b"Pnot-a-pid"), None);
        assert_eq!(Msg::decode(b"?"), None);
        assert_eq!(Msg::decode(b"L?x"), None);
    }

    /// The child's log lines are taken by the parent's recv, which returns the next step.
    #[test]
    fn log_lines_are_logged_and_skipped() {
        let (parent, child) = pair().expect("pair");
        send_log(child.0.as_fd(), Level::Debug, "from the init").expect("send log");
        child.send(&Msg::Ready).expect("send Ready");
        assert_eq!(parent.recv().expect("recv"), Some(Msg::Ready));
        let long = "é".repeat(5000);
        match Msg::decode(&Msg::Log(Level::Warn, long).encode()) {
            Some(Msg::Log(Level::Warn, t)) => assert!(t.len() <= MAX_LOG && t.chars().all(|c| c == 'é')),
            other => panic!("{other:?}"),
        }
    }
}
