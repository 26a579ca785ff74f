//! The container's terminal: a pty whose master goes to the console socket.

use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::mount::{mount, MsFlags};
use oci_spec::runtime::Process;

use super::mounts::make_mountpoint;
use crate::error::{Context, Error, Result};

/// The terminal of an `exec`ed process.
pub fn exec_console(sock: OwnedFd, process: &Process) -> Result<()> {
    setup_console(sock, process, false)
}

pub(super) fn setup_console(sock: OwnedFd, process: &Process, bind_console: bool) -> Result<()> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .ctx(|| "open /dev/ptmx (is /dev/pts mounted?)")?;
    nix::pty::grantpt(&master).ctx(|| "grantpt")?;
    nix::pty::unlockpt(&master).ctx(|| "unlockpt")?;
    let name = nix::pty::ptsname_r(&master).ctx(|| "ptsname")?;
    if let Some(size) = process.console_size() {
        let ws =
            libc::winsize { ws_row: size.height() as u16, ws_col: size.width() as u16, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads a winsize struct we own.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    let slave = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&name)
        .ctx(|| format!("open {name}"))?;
    // /dev/console is the terminal, as runc does.
    if bind_console && Path::new("/dev").is_dir() {
        let _ = make_mountpoint(Path::new("/dev/console"), false);
        let _ = mount(Some(name.as_str()), "/dev/console", None::<&str>, MsFlags::MS_BIND, None::<&str>);
    }
    crate::console::send_fd(sock.as_fd(), master.as_fd(), &name)?;
    for target in 0..3 {
        nix::unistd::dup2(slave.as_raw_fd(), target).ctx(|| "attach the terminal to stdio")?;
    }
    // SAFETY: TIOCSCTTY on our stdin, which now is the terminal.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
        return Err(Error::Io {
            what: "make the terminal controlling".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}
