//! Messages between the runtime (parent) and the container's init (child) over a
//! `SOCK_SEQPACKET` socketpair: one small message per step, so the two sides can
//! never read half a message or two at once.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use crate::error::{Context, Error, Result};

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
}

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
            _ => return None,
        })
    }
}

/// A connected seqpacket socket end.
pub struct Chan(pub OwnedFd);

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
                Ok(n) => {
                    return Msg::decode(&buf[..n])
                        .map(Some)
                        .ok_or_else(|| Error::msg("sync: garbled message from the container's init"))
                }
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
        for m in [Msg::Go, Msg::MapsPlease, Msg::InitPid(4242), Msg::HooksPlease, Msg::Ready, Msg::Err("x y".into())] {
            assert_eq!(Msg::decode(&m.encode()), Some(m));
        }
        assert_eq!(Msg::decode(b""), None);
        assert_eq!(Msg::decode(b"Pnot-a-pid"), None);
        assert_eq!(Msg::decode(b"?"), None);
    }
}
