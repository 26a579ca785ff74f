//! The container's terminal: a pty whose master goes to the console socket.

use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::mount::{mount, MsFlags};
use oci_spec::runtime::Process;

use super::inroot::{procfd, InRoot};
use crate::error::{Context, Error, Result};

/// The terminal of an `exec`ed process.
pub fn exec_console(sock: OwnedFd, process: &Process) -> Result<()> {
    setup_console(sock, process, None)
}

/// A new pty whose master goes to `sock` and whose slave becomes stdio; for the init
/// (`root`: the container's root after pivot_root), also bound on /dev/console.
pub(super) fn setup_console(sock: OwnedFd, process: &Process, root: Option<&InRoot>) -> Result<()> {
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
    // /dev/console is the terminal, as runc does: bound from the pty we hold (not by its
    // name) onto a /dev/console resolved in the container's root (CVE-2025-52565).
    if let Some(root) = root {
        let dev_is_dir = root.find(Path::new("/dev"))?.is_some_and(|d| {
            nix::sys::stat::fstat(d.as_raw_fd()).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
        });
        if dev_is_dir {
            let target = console_target(root)?;
            mount(
                Some(procfd(&slave).as_str()),
                procfd(&target).as_str(),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .ctx(|| "bind the terminal on /dev/console")?;
        }
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

/// /dev/console as a mount point: a regular file or a character device there, never
/// followed through a symlink (one is replaced by an empty file).
fn console_target(root: &InRoot) -> Result<OwnedFd> {
    let path = Path::new("/dev/console");
    if let Some(fd) = root.find_nofollow(path)? {
        let st = nix::sys::stat::fstat(fd.as_raw_fd()).ctx(|| "stat /dev/console")?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG | libc::S_IFCHR => return Ok(fd),
            _ => {
                let dev = root.dir(Path::new("/dev"))?;
                nix::unistd::unlinkat(Some(dev.as_raw_fd()), "console", nix::unistd::UnlinkatFlags::NoRemoveDir)
                    .ctx(|| "replace /dev/console (not a file or a character device)")?;
            }
        }
    }
    root.file(path)
}
