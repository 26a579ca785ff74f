//! The process itself: rlimits, seccomp, user and capabilities, no_new_privs, umask,
//! cwd, fds, and the execve.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::stat::{umask, Mode};
use nix::unistd::chdir;
use oci_spec::runtime::{PosixRlimitType, Process};

use crate::error::{Context, Error, Result};

/// rlimits, scheduler/ioprio/personality/LSM attributes, seccomp (early when
/// no_new_privs is off: loading it then needs CAP_SYS_ADMIN), user and capabilities,
/// no_new_privs, umask, cwd, and fds. `seccomp` is the filter the parent built. With
/// `late_seccomp`, a no_new_privs filter is loaded here too (exec); otherwise the
/// init loads it after `start`, just before execve.
pub fn finish_process(
    process: &Process,
    attrs: &super::attrs::ProcAttrs,
    seccomp: Option<&libseccomp::ScmpFilterContext>,
    in_userns: bool,
    preserve_fds: i32,
    late_seccomp: bool,
) -> Result<()> {
    set_rlimits(process)?;
    attrs.apply()?;
    let nnp = process.no_new_privileges() == Some(true);
    if let (Some(s), false) = (seccomp, nnp) {
        crate::seccomp::load_filter(s)?;
    }
    crate::process::set_user_and_caps(process, in_userns)?;
    if nnp {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(Error::Io { what: "set no_new_privs".into(), source: std::io::Error::last_os_error() });
        }
    }
    let mask = process.user().umask().unwrap_or(0o022);
    umask(Mode::from_bits_truncate(mask as libc::mode_t));
    let cwd = process.cwd();
    chdir(cwd).ctx(|| format!("chdir to cwd {} (does it exist in the container?)", cwd.display()))?;
    super::fds::verify_cwd(cwd)?;
    super::fds::close_range_cloexec(3 + preserve_fds);
    if let (Some(s), true, true) = (seccomp, nnp, late_seccomp) {
        crate::seccomp::load_filter(s)?;
    }
    Ok(())
}

pub(super) fn set_rlimits(process: &Process) -> Result<()> {
    for r in process.rlimits().as_deref().unwrap_or_default() {
        let res = rlimit_resource(r.typ());
        let lim = libc::rlimit { rlim_cur: r.soft(), rlim_max: r.hard() };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(res as _, &lim) } != 0 {
            return Err(Error::Io {
                what: format!(
                    "set {:?} to soft {} hard {} (above the runtime's hard limit?)",
                    r.typ(),
                    r.soft(),
                    r.hard()
                ),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

pub(super) fn rlimit_resource(t: PosixRlimitType) -> libc::c_int {
    use PosixRlimitType as T;
    (match t {
        T::RlimitCpu => libc::RLIMIT_CPU,
        T::RlimitFsize => libc::RLIMIT_FSIZE,
        T::RlimitData => libc::RLIMIT_DATA,
        T::RlimitStack => libc::RLIMIT_STACK,
        T::RlimitCore => libc::RLIMIT_CORE,
        T::RlimitRss => libc::RLIMIT_RSS,
        T::RlimitNproc => libc::RLIMIT_NPROC,
        T::RlimitNofile => libc::RLIMIT_NOFILE,
        T::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        T::RlimitAs => libc::RLIMIT_AS,
        T::RlimitLocks => libc::RLIMIT_LOCKS,
        T::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        T::RlimitNice => libc::RLIMIT_NICE,
        T::RlimitRtprio => libc::RLIMIT_RTPRIO,
        T::RlimitRttime => libc::RLIMIT_RTTIME,
    }) as libc::c_int
}

/// The program, argv and environment, resolved before `Ready` so that `create`
/// fails (not `start`) when the program does not exist.
pub struct Prepared {
    path: CString,
    args: Vec<CString>,
    env: Vec<CString>,
}

pub fn prepare_exec(process: &Process) -> Result<Prepared> {
    let args = process.args().as_deref().unwrap_or_default();
    let argv0 = args.first().ok_or_else(|| Error::msg("process.args is empty"))?;
    let mut env: Vec<String> = process.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", home_of(process.user().uid())));
    }
    let path_var = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let path = lookup(argv0, path_var, process.cwd())?;
    let cs = |s: &str| CString::new(s).map_err(|_| Error::msg(format!("NUL byte in {s:?}")));
    Ok(Prepared {
        path: CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::msg("NUL byte in program path"))?,
        args: args.iter().map(|a| cs(a)).collect::<Result<_>>()?,
        env: env.iter().map(|e| cs(e)).collect::<Result<_>>()?,
    })
}

impl Prepared {
    pub fn exec(&self) -> Error {
        // The runtime ignores SIGPIPE (Rust's default) and may block signals; the
        // container's process must start with default dispositions and no mask.
        // SAFETY: resetting a disposition to SIG_DFL and emptying the mask.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        }
        match nix::unistd::execve(&self.path, &self.args, &self.env) {
            Err(e) => Error::Sys { what: format!("exec {:?}", self.path), source: e },
            Ok(never) => match never {},
        }
    }
}

pub(super) fn lookup(argv0: &str, path_var: &str, cwd: &Path) -> Result<PathBuf> {
    let is_exec = |p: &Path| {
        fs::metadata(p).map(|m| m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0)
    };
    if argv0.contains('/') {
        let p = if argv0.starts_with('/') { PathBuf::from(argv0) } else { cwd.join(argv0) };
        return match is_exec(&p) {
            Ok(true) => Ok(p),
            Ok(false) => Err(Error::msg(format!("exec: {argv0:?}: permission denied (not an executable file)"))),
            Err(_) => Err(Error::msg(format!("exec: {argv0:?}: no such file or directory in the container"))),
        };
    }
    for dir in path_var.split(':') {
        let d = if dir.is_empty() { Path::new(".") } else { Path::new(dir) };
        let p = d.join(argv0);
        if let Ok(true) = is_exec(&p) {
            return Ok(p);
        }
    }
    Err(Error::msg(format!("exec: {argv0:?}: executable file not found in $PATH")))
}

pub(super) fn home_of(uid: u32) -> String {
    if let Ok(pw) = fs::read_to_string("/etc/passwd") {
        for line in pw.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid) {
                return f[5].to_string();
            }
        }
    }
    "/".to_string()
}
