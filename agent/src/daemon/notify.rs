//! sd_notify(3): tells systemd (a `Type=notify` unit) how the agent is doing.
//!
//! The agent sends `READY=1` once its status endpoint listens and it has adopted what was running,
//! `STATUS=...` when something worth a line in `systemctl status` changes, and `STOPPING=1` on
//! SIGTERM. Outside systemd (`$NOTIFY_SOCKET` unset) every call is a no-op.
//!
//! The containers the agent starts must not inherit `NOTIFY_SOCKET` (systemd would take their
//! messages for the agent's with `NotifyAccess=all`, and ignores them otherwise): whoever spawns
//! processes calls `Command::env_remove(NOTIFY_SOCKET)`.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;

/// The environment variable systemd sets for a `Type=notify` service.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends `state` (newline-separated `KEY=VALUE` assignments, e.g. `"READY=1\nSTATUS=running 3
/// services"`) to `$NOTIFY_SOCKET` as one datagram. `Ok(false)` when the variable is unset or
/// empty (not run by systemd).
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os(NOTIFY_SOCKET) {
        Some(socket) if !socket.is_empty() => notify_to(&socket, state).map(|()| true),
        _ => Ok(false),
    }
}

/// Sends `state` to `socket`: a filesystem path, or `@name` for an abstract socket.
pub fn notify_to(socket: &OsStr, state: &str) -> io::Result<()> {
    let bytes = socket.as_bytes();
    let sock = UnixDatagram::unbound()?;
    let sent = match bytes.first() {
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(&bytes[1..])?;
            sock.send_to_addr(state.as_bytes(), &addr)?
        }
        Some(b'/') => sock.send_to(state.as_bytes(), socket)?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{NOTIFY_SOCKET}={}: not an absolute path nor an abstract socket (@name)",
                    socket.to_string_lossy()
                ),
            ))
        }
    };
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sd_notify: sent {sent} of {} bytes", state.len()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::linux::net::SocketAddrExt;
    use std::time::Duration;

    fn recv(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn to_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        notify_to(path.as_os_str(), "READY=1\nSTATUS=running 2 services").unwrap();
        assert_eq!(recv(&rx), "READY=1\nSTATUS=running 2 services");
        notify_to(path.as_os_str(), "STOPPING=1").unwrap();
        assert_eq!(recv(&rx), "STOPPING=1");
    }

    #[test]
    fn to_an_abstract_socket() {
        let name = format!("skiff-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(OsStr::new(&format!("@{name}")), "READY=1").unwrap();
        assert_eq!(recv(&rx), "READY=1");
    }

    #[test]
    fn errors() {
        let e = notify_to(OsStr::new("relative/path"), "READY=1").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("relative/path"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        // Nobody listens there.
        assert!(notify_to(dir.path().join("none.sock").as_os_str(), "READY=1").is_err());
    }

    #[test]
    fn unset_is_a_no_op() {
        // The test harness never runs under systemd's notify socket; if it did, do not touch it.
        if std::env::var_os(NOTIFY_SOCKET).is_none() {
            assert!(!notify("READY=1").unwrap());
        }
    }
}
