//! mount_setattr(2) (Linux 5.12), which nix does not wrap: the one definition of its
//! argument, for the read-only clone of our own binary (`cloned.rs`) and the mount
//! attributes of a container's mounts (`init/inroot.rs`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `struct mount_attr`, first version.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Sets `set` and clears `clr` (`MOUNT_ATTR_*`) on the mount whose root `fd` is (and, with
/// `recursive`, on every mount under it). ENOSYS on kernels before 5.12.
pub fn mount_setattr(fd: BorrowedFd, recursive: bool, set: u64, clr: u64) -> io::Result<()> {
    let a = MountAttr { attr_set: set, attr_clr: clr, propagation: 0, userns_fd: 0 };
    let flags = libc::AT_EMPTY_PATH | if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: mount_setattr on a live fd, an empty C string and a struct of the size we pass,
    // which outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags as libc::c_uint,
            &a as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
