//! bpf(2) for the device program of [`crate::devfilter`]: load it, attach it to a cgroup2
//! directory with `BPF_F_ALLOW_MULTI`, and take off the device programs attached there
//! before (runc does the same, so a reused cgroup does not pile up programs). No libbpf:
//! the few `union bpf_attr` layouts needed are declared here.
//!
//! Every fd (the directory, the programs) is close-on-exec and closed before returning:
//! the attached program lives on in the kernel, held by the cgroup.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::devfilter::Insn;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 1 << 1;

/// The kernel allows 64 programs per cgroup and attach type.
const QUERY_FIRST: usize = 64;
const LICENSE: &[u8] = b"Apache-2.0\0";
const PROG_NAME: &[u8] = b"skiff_devices";
const LOG_SIZE: usize = 64 * 1024;

/// `union bpf_attr` for BPF_PROG_LOAD, up to `prog_name`.
#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// `union bpf_attr` for BPF_PROG_ATTACH and BPF_PROG_DETACH, up to `attach_flags`.
#[repr(C)]
struct Attach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

/// `union bpf_attr` for BPF_PROG_QUERY, up to `prog_cnt`.
#[repr(C)]
struct Query {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

/// `union bpf_attr` for BPF_PROG_GET_FD_BY_ID.
#[repr(C)]
struct GetFdById {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// A failure to install the device program, in one line that says what the kernel lacks
/// when that is the cause.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BpfError(String);

/// bpf(2). Returns the non-negative result (an fd for the commands that make one).
fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is an initialised, `#[repr(C)]` prefix of `union bpf_attr` that lives
    // for the whole call, and its size is passed; the kernel zero-fills the fields after it.
    // Pointers inside it (instructions, license, log, id buffer) point to live buffers of
    // the sizes given next to them.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// bpf(2) for a command that returns a new fd (close-on-exec: the kernel sets it).
fn sys_bpf_fd<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    let fd = sys_bpf(cmd, attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("bpf(2) returned no fd"))?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn no_bpf(e: &io::Error) -> Option<BpfError> {
    (e.raw_os_error() == Some(libc::ENOSYS))
        .then(|| BpfError("the kernel has no bpf(2) system call (build it with CONFIG_BPF_SYSCALL)".into()))
}

/// Loads `prog`, attaches it to the cgroup2 directory `dir` (`BPF_F_ALLOW_MULTI`) and
/// detaches the device programs that were attached there before.
pub fn attach_device_filter(dir: &Path, prog: &[Insn]) -> Result<(), BpfError> {
    let dir_fd = open_dir(dir)?;
    let old = query(&dir_fd, dir)?;
    let fd = load(prog)?;
    let mut attr = Attach {
        target_fd: dir_fd.as_raw_fd() as u32,
        attach_bpf_fd: fd.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
    };
    sys_bpf(BPF_PROG_ATTACH, &mut attr).map_err(|e| {
        no_bpf(&e).unwrap_or_else(|| {
            let lacks = match e.raw_os_error() {
                Some(libc::EINVAL | libc::EOPNOTSUPP) => {
                    " (the kernel cannot attach device programs to cgroups: it needs CONFIG_CGROUP_BPF)"
                }
                _ => "",
            };
            BpfError(format!("attach the device program to {}: {e}{lacks}", dir.display()))
        })
    })?;
    for id in old {
        detach(&dir_fd, dir, id)?;
    }
    Ok(())
}

/// The ids of the device programs attached to the cgroup2 directory `dir` itself.
pub fn attached_device_programs(dir: &Path) -> Result<Vec<u32>, BpfError> {
    let dir_fd = open_dir(dir)?;
    query(&dir_fd, dir)
}

fn open_dir(dir: &Path) -> Result<fs::File, BpfError> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| BpfError(format!("open {}: {e}", dir.display())))
}

/// The ids of the device programs attached to the directory itself.
fn query(dir_fd: &fs::File, dir: &Path) -> Result<Vec<u32>, BpfError> {
    let mut ids = vec![0u32; QUERY_FIRST];
    for _ in 0..4 {
        let mut attr = Query {
            target_fd: dir_fd.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            query_flags: 0,
            attach_flags: 0,
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: ids.len() as u32,
            _pad: 0,
        };
        match sys_bpf(BPF_PROG_QUERY, &mut attr) {
            Ok(_) => {
                ids.truncate(attr.prog_cnt as usize);
                return Ok(ids);
            }
            // More than fit: the kernel said how many there are.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                ids = vec![0u32; (attr.prog_cnt as usize).max(ids.len() * 2)];
            }
            Err(e) => {
                return Err(no_bpf(&e)
                    .unwrap_or_else(|| BpfError(format!("list the device programs of {}: {e}", dir.display()))))
            }
        }
    }
    Err(BpfError(format!("list the device programs of {}: their number keeps changing", dir.display())))
}

fn load_attr(prog: &[Insn], log: Option<&mut [u8]>) -> ProgLoad {
    let mut prog_name = [0u8; 16];
    prog_name[..PROG_NAME.len()].copy_from_slice(PROG_NAME);
    let (log_level, log_size, log_buf) = match log {
        Some(buf) => (1, buf.len() as u32, buf.as_mut_ptr() as u64),
        None => (0, 0, 0),
    };
    ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        log_level,
        log_size,
        log_buf,
        kern_version: 0,
        prog_flags: 0,
        prog_name,
    }
}

fn load(prog: &[Insn]) -> Result<OwnedFd, BpfError> {
    let first = sys_bpf_fd(BPF_PROG_LOAD, &mut load_attr(prog, None));
    let e = match first {
        Ok(fd) => return Ok(fd),
        Err(e) => e,
    };
    if let Some(err) = no_bpf(&e) {
        return Err(err);
    }
    if e.raw_os_error() == Some(libc::EPERM) && raise_memlock() {
        // Kernels before 5.11 charge programs to RLIMIT_MEMLOCK (runc raises it too). Only
        // this short-lived parent is affected; the container's init was cloned before.
        if let Ok(fd) = sys_bpf_fd(BPF_PROG_LOAD, &mut load_attr(prog, None)) {
            return Ok(fd);
        }
    }
    match e.raw_os_error() {
        Some(libc::EPERM) => Err(BpfError(format!(
            "load the device program: {e} (loading BPF programs needs CAP_BPF or CAP_SYS_ADMIN in the \
             initial user namespace; kernel lockdown can forbid it too)"
        ))),
        Some(libc::EINVAL | libc::EACCES) => {
            // Again with the verifier's log, to say why.
            let mut log = vec![0u8; LOG_SIZE];
            let again = sys_bpf_fd(BPF_PROG_LOAD, &mut load_attr(prog, Some(&mut log)));
            if let Ok(fd) = again {
                return Ok(fd);
            }
            let text =
                String::from_utf8_lossy(&log[..log.iter().position(|&b| b == 0).unwrap_or(log.len())]).into_owned();
            let last: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            if last.is_empty() {
                Err(BpfError(format!(
                    "load the device program: {e} (the kernel cannot load cgroup device programs: \
                     BPF_PROG_TYPE_CGROUP_DEVICE needs Linux 4.15 or later built with CONFIG_CGROUP_BPF)"
                )))
            } else {
                let tail = last[last.len().saturating_sub(2)..].join("; ");
                Err(BpfError(format!("load the device program: {e}: the verifier says: {tail}")))
            }
        }
        _ => Err(BpfError(format!("load the device program: {e}"))),
    }
}

/// RLIMIT_MEMLOCK to unlimited (true when it was raised).
fn raise_memlock() -> bool {
    let inf = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit reads the struct we pass; no other effect on memory.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &inf) == 0 }
}

/// Detaches the program `id` from the directory; gone already is fine, and so is a
/// program we may not open (an LSM can keep it from us; it only adds restrictions).
fn detach(dir_fd: &fs::File, dir: &Path, id: u32) -> Result<(), BpfError> {
    let mut attr = GetFdById { prog_id: id, next_id: 0, open_flags: 0 };
    let fd = match sys_bpf_fd(BPF_PROG_GET_FD_BY_ID, &mut attr) {
        Ok(fd) => fd,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT)) => return Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => {
            crate::debug!("{}: leaving device program {id} attached (cannot open it: {e})", dir.display());
            return Ok(());
        }
        Err(e) => return Err(BpfError(format!("open device program {id} of {}: {e}", dir.display()))),
    };
    let mut attr = Attach {
        target_fd: dir_fd.as_raw_fd() as u32,
        attach_bpf_fd: fd.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: 0,
    };
    match sys_bpf(BPF_PROG_DETACH, &mut attr) {
        Ok(_) => {
            crate::debug!("{}: replaced device program {id}", dir.display());
            Ok(())
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(BpfError(format!("detach the old device program {id} from {}: {e}", dir.display()))),
    }
}
