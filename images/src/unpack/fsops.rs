//! Directory-fd based filesystem primitives. Nothing here takes a host path: every
//! operation is relative to a directory fd inside the layer, names are single components,
//! and symlinks are never followed.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{self, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{self, FileStat, Mode, SFlag};
use nix::unistd::{self, UnlinkatFlags};

/// Set once openat2(2) turned out to be missing (Linux < 5.6, or filtered by seccomp).
static OPENAT2_MISSING: AtomicBool = AtomicBool::new(false);

/// Takes ownership of a descriptor a syscall just returned.
pub(super) fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open-like syscall; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Why a directory inside the layer could not be opened. Each carries the offending prefix.
#[derive(Debug)]
pub(super) enum ResolveError {
    /// This prefix is a symlink (never followed).
    Symlink(Vec<u8>),
    /// This prefix exists but is not a directory.
    NotDir(Vec<u8>),
    /// This prefix does not exist (only when not creating).
    Missing(Vec<u8>),
    /// Reaching this prefix would cross a mount point.
    CrossesMount(Vec<u8>),
    Sys(Vec<u8>, Errno),
}

/// The layer directory: its fd, and a one-entry cache of the last parent directory opened
/// (tar streams are mostly sorted, so consecutive entries share a parent).
pub(super) struct Tree {
    root: Rc<OwnedFd>,
    use_openat2: bool,
    cache: Option<(Vec<u8>, Rc<OwnedFd>)>,
}

impl Tree {
    /// `root` must be a real (not O_PATH) directory fd: metadata of the root is set through it.
    pub(super) fn new(root: OwnedFd, use_openat2: bool) -> Self {
        Tree { root: Rc::new(root), use_openat2, cache: None }
    }

    pub(super) fn root(&self) -> &Rc<OwnedFd> {
        &self.root
    }

    /// Forgets the cached parent: call after removing any directory.
    pub(super) fn invalidate(&mut self) {
        self.cache = None;
    }

    /// Opens directory `path` (normalized, relative to the root) as an O_PATH fd without
    /// following any symlink or leaving the root. With `create`, missing components are
    /// created (mode 0755), as tar does for entries whose parents were not listed.
    pub(super) fn dir(&mut self, path: &[u8], create: bool) -> Result<Rc<OwnedFd>, ResolveError> {
        if path.is_empty() {
            return Ok(self.root.clone());
        }
        if let Some((p, fd)) = &self.cache {
            if p == path {
                return Ok(fd.clone());
            }
        }
        let fd = Rc::new(self.open_dir(path, create)?);
        self.cache = Some((path.to_vec(), fd.clone()));
        Ok(fd)
    }

    fn open_dir(&self, path: &[u8], create: bool) -> Result<OwnedFd, ResolveError> {
        if self.use_openat2 && !OPENAT2_MISSING.load(Ordering::Relaxed) {
            let how = OpenHow::new().flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC).resolve(
                ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_XDEV,
            );
            match fcntl::openat2(self.root.as_raw_fd(), path, how) {
                Ok(fd) => return Ok(own(fd)),
                Err(Errno::ENOSYS) => OPENAT2_MISSING.store(true, Ordering::Relaxed),
                Err(Errno::EXDEV) => return Err(ResolveError::CrossesMount(path.to_vec())),
                // ELOOP (a symlink), ENOTDIR, ENOENT (create), EAGAIN, seccomp's EPERM, ...:
                // the component walk below creates what is missing and names what is wrong.
                Err(_) => {}
            }
        }
        self.walk(path, create)
    }

    /// The fallback (and the diagnosis): one component at a time with O_NOFOLLOW.
    /// Components are never `..` or `.` (see `path::normalize`), so each step stays inside.
    fn walk(&self, path: &[u8], create: bool) -> Result<OwnedFd, ResolveError> {
        let mut cur: Option<OwnedFd> = None;
        let mut end = 0usize;
        for comp in path.split(|&b| b == b'/') {
            end += comp.len();
            let prefix = &path[..end];
            end += 1;
            let at = cur.as_ref().map_or(self.root.as_raw_fd(), |f| f.as_raw_fd());
            let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let next = match fcntl::openat(Some(at), comp, flags, Mode::empty()) {
                Ok(fd) => own(fd),
                Err(Errno::ENOENT) if create => {
                    match stat::mkdirat(Some(at), comp, Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(ResolveError::Sys(prefix.to_vec(), e)),
                    }
                    let fd = open_dir_at(at, comp).map_err(|e| classify(at, comp, prefix, e))?;
                    // mkdirat applied the umask; implicit parents are 0755 like tar's.
                    stat::fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(0o755))
                        .map_err(|e| ResolveError::Sys(prefix.to_vec(), e))?;
                    fd
                }
                Err(e) => return Err(classify(at, comp, prefix, e)),
            };
            cur = Some(next);
        }
        cur.ok_or(ResolveError::Missing(Vec::new()))
    }
}

/// Turns an open error on `comp` into the reason, looking at what is there.
fn classify(at: RawFd, comp: &[u8], prefix: &[u8], e: Errno) -> ResolveError {
    let p = prefix.to_vec();
    match e {
        Errno::ENOENT => ResolveError::Missing(p),
        Errno::ENOTDIR | Errno::ELOOP => match lstat_at(at, comp) {
            Ok(st) if is_type(&st, SFlag::S_IFLNK) => ResolveError::Symlink(p),
            Ok(_) => ResolveError::NotDir(p),
            Err(e) => ResolveError::Sys(p, e),
        },
        e => ResolveError::Sys(p, e),
    }
}

pub(super) fn is_type(st: &FileStat, t: SFlag) -> bool {
    st.st_mode & SFlag::S_IFMT.bits() == t.bits()
}

pub(super) fn lstat_at(dir: RawFd, name: &[u8]) -> nix::Result<FileStat> {
    stat::fstatat(Some(dir), name, AtFlags::AT_SYMLINK_NOFOLLOW)
}

/// Opens directory `name` in `dir` for reading and metadata changes; never a symlink.
pub(super) fn open_dir_at(dir: RawFd, name: &[u8]) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    fcntl::openat(Some(dir), name, flags, Mode::empty()).map(own)
}

/// Names in a directory (without `.` and `..`).
pub(super) fn list_dir(dir: RawFd) -> nix::Result<Vec<Vec<u8>>> {
    let mut d = Dir::openat(Some(dir), ".", OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
    let mut names = Vec::new();
    for e in d.iter() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    Ok(names)
}

/// Removes `name` from `dir`, recursively if it is a directory, without following
/// symlinks. Returns whether something was removed, and whether it was a directory.
pub(super) fn remove_all_at(dir: RawFd, name: &[u8]) -> nix::Result<Option<bool>> {
    match unistd::unlinkat(Some(dir), name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) => return Ok(Some(false)),
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::EISDIR) | Err(Errno::EPERM) => {}
        Err(e) => return Err(e),
    }
    let st = lstat_at(dir, name)?;
    if !is_type(&st, SFlag::S_IFDIR) {
        // unlink refused something that is not a directory: report that.
        return unistd::unlinkat(Some(dir), name, UnlinkatFlags::NoRemoveDir).map(|()| Some(false));
    }
    let sub = open_dir_at(dir, name)?;
    for child in list_dir(sub.as_raw_fd())? {
        remove_all_at(sub.as_raw_fd(), &child)?;
    }
    drop(sub);
    unistd::unlinkat(Some(dir), name, UnlinkatFlags::RemoveDir)?;
    Ok(Some(true))
}

/// Sets an xattr on an open file or directory.
pub(super) fn fset_xattr(fd: RawFd, name: &CStr, value: &[u8]) -> nix::Result<()> {
    // SAFETY: `name` is NUL-terminated, `value` is a live slice of the given length; the
    // kernel only reads them during the call.
    let r = unsafe { libc::fsetxattr(fd, name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    Errno::result(r).map(drop)
}

/// Sets an xattr on `leaf` in directory `dir` without following a symlink at `leaf`
/// (for symlinks and device nodes, which cannot be opened for fsetxattr). The path goes
/// through /proc/self/fd/<dir>, so `dir` is the resolved fd, not a host path.
pub(super) fn lset_xattr_at(dir: RawFd, leaf: &[u8], name: &CStr, value: &[u8]) -> nix::Result<()> {
    let mut path = format!("/proc/self/fd/{dir}/").into_bytes();
    path.extend_from_slice(leaf);
    let path = std::ffi::CString::new(path).map_err(|_| Errno::EINVAL)?;
    // SAFETY: both strings are NUL-terminated, `value` is a live slice of the given length;
    // the kernel only reads them during the call. lsetxattr does not follow the last component.
    let r = unsafe { libc::lsetxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    Errno::result(r).map(drop)
}

/// True when the directory has no entries.
pub(super) fn dir_is_empty(dir: RawFd) -> nix::Result<bool> {
    let mut d = Dir::openat(Some(dir), ".", OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
    for e in d.iter() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            return Ok(false);
        }
    }
    Ok(true)
}
