//! Applying tar entries to the layer directory, one at a time, through directory fds.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{self, AtFlags, OFlag};
use nix::sys::stat::{self, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{self, Gid, Uid, UnlinkatFlags};

use super::error::disp;
use super::fsops::{self, ResolveError, Tree};
use super::path::{join, names_dir, normalize, split};
use super::{UnpackError, UnpackOptions, WhiteoutMode, BUF_SIZE};
use crate::tarstream::Entry;

const WH_PREFIX: &[u8] = b".wh.";
const WH_OPAQUE: &[u8] = b".wh..wh..opq";
const MAX_NOTES: usize = 100;

/// Things skipped on purpose, for the caller to log (bounded: a hostile layer cannot grow it).
#[derive(Default)]
pub(crate) struct Notes {
    notes: Vec<String>,
    dropped: usize,
}

impl Notes {
    pub(crate) fn push(&mut self, note: String) {
        if self.notes.len() < MAX_NOTES {
            self.notes.push(note);
        } else {
            self.dropped += 1;
        }
    }

    pub(crate) fn into_vec(mut self) -> Vec<String> {
        if self.dropped > 0 {
            self.notes.push(format!("... and {} more notes", self.dropped));
        }
        self.notes
    }
}

/// Entry metadata from the header and its PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    atime: TimeSpec,
    mtime: TimeSpec,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pax_sparse: bool,
}

/// A directory whose mode and times are set at the end, after its contents are written
/// (writing into a directory changes its mtime; a read-only mode would block writing).
struct DirMeta {
    path: Vec<u8>,
    mode: u32,
    atime: TimeSpec,
    mtime: TimeSpec,
}

/// Where an xattr goes.
#[derive(Clone, Copy)]
enum On<'a> {
    Fd(RawFd),
    At(RawFd, &'a [u8]),
}

pub(super) struct Extractor<'o> {
    opts: &'o UnpackOptions,
    tree: Tree,
    buf: Vec<u8>,
    /// Paths this layer created as symlinks or hardlinks: a later entry of the same layer
    /// may not replace them (it would write or chmod through the link in a naive unpacker).
    links: HashSet<Vec<u8>>,
    /// Apply mode: every path this layer created (and its parents), to tell this layer's
    /// files from lower layers' when applying whiteouts.
    unpacked: Option<HashSet<Vec<u8>>>,
    dirs: Vec<DirMeta>,
    dir_index: HashMap<Vec<u8>, usize>,
    pub(super) notes: Notes,
    pub(super) last: Option<Vec<u8>>,
    pub(super) entries: u64,
    pub(super) files: u64,
    pub(super) file_bytes: u64,
    pub(super) whiteouts: u64,
}

impl<'o> Extractor<'o> {
    pub(super) fn new(root: OwnedFd, opts: &'o UnpackOptions, use_openat2: bool, notes: Notes) -> Self {
        Extractor {
            opts,
            tree: Tree::new(root, use_openat2),
            buf: vec![0; BUF_SIZE],
            links: HashSet::new(),
            unpacked: (opts.whiteouts == WhiteoutMode::Apply).then(HashSet::new),
            dirs: Vec::new(),
            dir_index: HashMap::new(),
            notes,
            last: None,
            entries: 0,
            files: 0,
            file_bytes: 0,
            whiteouts: 0,
        }
    }

    /// Applies one tar entry; `data` reads its data.
    pub(super) fn entry(&mut self, entry: &Entry, data: &mut impl Read) -> Result<(), UnpackError> {
        self.entries += 1;
        let result = self.entry_inner(&entry.path, entry, data);
        self.last = Some(entry.path.clone());
        result
    }

    fn entry_inner(&mut self, raw: &[u8], entry: &Entry, data: &mut impl Read) -> Result<(), UnpackError> {
        let ty = entry.header.entry_type().as_byte();
        match ty {
            // GNU volume labels carry no file (global PAX headers never get here: the reader
            // skips them).
            b'V' => return Ok(()),
            b'0' | b'\0' | b'7' | b'S' | b'1' | b'2' | b'3' | b'4' | b'5' | b'6' => {}
            t => {
                return Err(UnpackError::invalid(
                    raw,
                    format!("unsupported tar entry type {:?}", char::from(t).escape_default().to_string()),
                ))
            }
        }
        let rel = normalize(raw).map_err(|r| UnpackError::unsafe_entry(raw, r))?;
        let is_dir = ty == b'5' || (matches!(ty, b'0' | b'\0' | b'7') && raw.ends_with(b"/"));
        if !is_dir && (rel.is_empty() || names_dir(raw)) {
            // "." as a symlink (umoci CVE-2021-29136), "a/" as a device, ...
            let what = if rel.is_empty() { "name the layer root" } else { "end in \"/\" or \"/.\"" };
            return Err(UnpackError::unsafe_entry(raw, format!("only a directory entry may {what}")));
        }
        let (parent, leaf) = split(&rel);
        if leaf.starts_with(WH_PREFIX) {
            return self.whiteout(raw, parent, leaf);
        }
        match ty {
            b'1' => {
                let target = entry
                    .link
                    .as_deref()
                    .ok_or_else(|| UnpackError::invalid(raw, "hardlink entry without a target"))?;
                self.hardlink(raw, &rel, target)
            }
            b'2' => {
                let target =
                    entry.link.as_deref().ok_or_else(|| UnpackError::invalid(raw, "symlink entry without a target"))?;
                let meta = self.meta(raw, entry)?;
                self.symlink(raw, &rel, target, &meta)
            }
            _ if is_dir => {
                let meta = self.meta(raw, entry)?;
                self.directory(raw, &rel, &meta)
            }
            b'3' | b'4' | b'6' => {
                let h = &entry.header;
                let bad = |e: std::io::Error| UnpackError::invalid(raw, format!("bad device number: {e}"));
                let dev = match ty {
                    b'6' => 0,
                    _ => {
                        // None: a V7 header, which has no device fields.
                        let major = h.device_major().map_err(bad)?.unwrap_or(0);
                        let minor = h.device_minor().map_err(bad)?.unwrap_or(0);
                        stat::makedev(major.into(), minor.into())
                    }
                };
                let kind = match ty {
                    b'3' => SFlag::S_IFCHR,
                    b'4' => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let meta = self.meta(raw, entry)?;
                self.special(raw, &rel, kind, dev, &meta)
            }
            _ => {
                let meta = self.meta(raw, entry)?;
                if meta.pax_sparse {
                    return Err(UnpackError::invalid(raw, "PAX sparse files (GNU.sparse.*) are not supported"));
                }
                self.file(raw, &rel, data, &meta)
            }
        }
    }

    fn meta(&mut self, raw: &[u8], entry: &Entry) -> Result<Meta, UnpackError> {
        let bad = |e: std::io::Error| UnpackError::invalid(raw, format!("bad tar header: {e}"));
        let h = &entry.header;
        let old = h.as_old();
        // An empty numeric field (all NUL/space, as some writers leave uid/gid of devices)
        // reads as 0, as in GNU tar and Go's archive/tar.
        let num = |v: std::io::Result<u64>, field: &[u8]| match v {
            Ok(v) => Ok(v),
            Err(_) if field.iter().all(|&b| b == 0 || b == b' ') => Ok(0),
            Err(e) => Err(bad(e)),
        };
        let mode = num(h.mode().map(u64::from), &old.mode)? as u32 & 0o7777;
        let id = |v: u64, what: &str| {
            u32::try_from(v).map_err(|_| UnpackError::invalid(raw, format!("{what} {v} is out of range")))
        };
        let uid = id(num(h.uid(), &old.uid)?, "uid")?;
        let gid = id(num(h.gid(), &old.gid)?, "gid")?;
        let secs = i64::try_from(num(h.mtime(), &old.mtime)?).unwrap_or(i64::MAX);
        let mut m = Meta {
            mode,
            uid,
            gid,
            atime: timespec(secs, 0),
            mtime: timespec(secs, 0),
            xattrs: Vec::new(),
            pax_sparse: false,
        };
        let mut atime = None;
        for (k, v) in entry.pax() {
            if k == b"mtime" {
                if let Some(t) = pax_time(v) {
                    m.mtime = t;
                }
            } else if k == b"atime" {
                atime = pax_time(v);
            } else if k == b"uid" || k == b"gid" {
                let v = std::str::from_utf8(v).ok().and_then(|s| s.parse::<u64>().ok());
                let v =
                    v.ok_or_else(|| UnpackError::invalid(raw, "bad tar header: a PAX uid or gid is not a number"))?;
                *(if k == b"uid" { &mut m.uid } else { &mut m.gid }) =
                    u32::try_from(v).map_err(|_| UnpackError::invalid(raw, format!("PAX id {v} is out of range")))?;
            } else if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
                m.xattrs.push((name.to_vec(), v.to_vec()));
            } else if k.starts_with(b"GNU.sparse.") {
                m.pax_sparse = true;
            } else if k.starts_with(b"LIBARCHIVE.xattr.") {
                self.notes.push(format!("{}: LIBARCHIVE.xattr record ignored (use SCHILY.xattr)", disp(raw)));
            }
        }
        m.atime = atime.unwrap_or(m.mtime);
        Ok(m)
    }

    // ---- parents and existing leaves -------------------------------------------------

    /// The directory that will hold `rel`'s leaf, created if missing, never via a symlink.
    fn parent(&mut self, raw: &[u8], parent: &[u8]) -> Result<Rc<OwnedFd>, UnpackError> {
        self.tree.dir(parent, true).map_err(|e| resolve_err(raw, e, "parent"))
    }

    /// Makes room for a new entry at `rel` (whose leaf `leaf` exists in `dir`). Returns true
    /// when the existing leaf is a directory and the new entry is one too (they merge).
    fn clear(&mut self, raw: &[u8], rel: &[u8], dir: RawFd, leaf: &[u8], new_dir: bool) -> Result<bool, UnpackError> {
        if self.links.contains(rel) {
            return Err(UnpackError::unsafe_entry(
                raw,
                "an earlier entry of this layer created a link with this name, and a later entry may not \
                 replace it (it would write through the link)",
            ));
        }
        let st = fsops::lstat_at(dir, leaf).map_err(|e| UnpackError::io(raw, "inspecting the existing file", e))?;
        if fsops::is_type(&st, SFlag::S_IFDIR) {
            if new_dir {
                return Ok(true);
            }
            fsops::remove_all_at(dir, leaf)
                .map_err(|e| UnpackError::io(raw, "removing the existing directory it replaces", e))?;
            self.tree.invalidate();
        } else {
            unistd::unlinkat(Some(dir), leaf, UnlinkatFlags::NoRemoveDir)
                .map_err(|e| UnpackError::io(raw, "removing the existing file it replaces", e))?;
        }
        Ok(false)
    }

    fn mark(&mut self, rel: &[u8]) {
        if let Some(set) = &mut self.unpacked {
            let mut p = rel;
            while !p.is_empty() && set.insert(p.to_vec()) {
                p = split(p).0;
            }
        }
    }

    // ---- entry kinds -----------------------------------------------------------------

    fn file(&mut self, raw: &[u8], rel: &[u8], data: &mut impl Read, meta: &Meta) -> Result<(), UnpackError> {
        let (parent, leaf) = split(rel);
        let dir = self.parent(raw, parent)?;
        // O_EXCL|O_NOFOLLOW: never open (and so never write through) anything that exists.
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut replaced = false;
        let fd = loop {
            match fcntl::openat(Some(dir.as_raw_fd()), leaf, flags, Mode::from_bits_truncate(0o600)) {
                Ok(fd) => break fd,
                Err(Errno::EEXIST) if !replaced => {
                    self.clear(raw, rel, dir.as_raw_fd(), leaf, false)?;
                    replaced = true;
                }
                Err(e) => return Err(UnpackError::io(raw, "creating the file", e)),
            }
        };
        let mut file = File::from(fsops::own(fd));
        loop {
            let n = match data.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(UnpackError::Stream { after: Some(disp(raw)), source }),
            };
            file.write_all(&self.buf[..n]).map_err(|e| UnpackError::io(raw, "writing the file", e))?;
            self.file_bytes += n as u64;
        }
        let fd = file.as_raw_fd();
        self.owner_fd(raw, fd, meta)?;
        stat::fchmod(fd, mode(meta.mode)).map_err(|e| UnpackError::io(raw, "setting the mode", e))?;
        self.xattrs(raw, On::Fd(fd), &meta.xattrs)?;
        stat::futimens(fd, &meta.atime, &meta.mtime).map_err(|e| UnpackError::io(raw, "setting the times", e))?;
        self.files += 1;
        self.mark(rel);
        Ok(())
    }

    fn directory(&mut self, raw: &[u8], rel: &[u8], meta: &Meta) -> Result<(), UnpackError> {
        let fd = if rel.is_empty() {
            None
        } else {
            let (parent, leaf) = split(rel);
            let dir = self.parent(raw, parent)?;
            let d = dir.as_raw_fd();
            // 0700 until the end: the final mode may not allow writing the contents.
            match stat::mkdirat(Some(d), leaf, Mode::S_IRWXU) {
                Ok(()) => {}
                Err(Errno::EEXIST) => {
                    if !self.clear(raw, rel, d, leaf, true)? {
                        stat::mkdirat(Some(d), leaf, Mode::S_IRWXU)
                            .map_err(|e| UnpackError::io(raw, "creating the directory", e))?;
                    }
                }
                Err(e) => return Err(UnpackError::io(raw, "creating the directory", e)),
            }
            Some(fsops::open_dir_at(d, leaf).map_err(|e| UnpackError::io(raw, "opening the directory", e))?)
        };
        let root = self.tree.root().clone();
        let fd = fd.as_ref().map_or(root.as_raw_fd(), |f| f.as_raw_fd());
        self.owner_fd(raw, fd, meta)?;
        self.xattrs(raw, On::Fd(fd), &meta.xattrs)?;
        let dm = DirMeta { path: rel.to_vec(), mode: meta.mode, atime: meta.atime, mtime: meta.mtime };
        match self.dir_index.get(rel) {
            Some(&i) => self.dirs[i] = dm,
            None => {
                self.dir_index.insert(rel.to_vec(), self.dirs.len());
                self.dirs.push(dm);
            }
        }
        self.mark(rel);
        Ok(())
    }

    fn symlink(&mut self, raw: &[u8], rel: &[u8], target: &[u8], meta: &Meta) -> Result<(), UnpackError> {
        // Any target is fine to create (absolute ones are normal in images): targets only
        // matter when followed, and nothing here ever follows a symlink.
        if target.is_empty() || target.contains(&0) {
            return Err(UnpackError::invalid(raw, "symlink with an empty or NUL-containing target"));
        }
        let (parent, leaf) = split(rel);
        let dir = self.parent(raw, parent)?;
        let d = dir.as_raw_fd();
        let mut replaced = false;
        loop {
            match unistd::symlinkat(target, Some(d), leaf) {
                Ok(()) => break,
                Err(Errno::EEXIST) if !replaced => {
                    self.clear(raw, rel, d, leaf, false)?;
                    replaced = true;
                }
                Err(e) => return Err(UnpackError::io(raw, "creating the symlink", e)),
            }
        }
        self.links.insert(rel.to_vec());
        self.owner_at(raw, d, leaf, meta)?;
        self.xattrs(raw, On::At(d, leaf), &meta.xattrs)?;
        stat::utimensat(Some(d), leaf, &meta.atime, &meta.mtime, UtimensatFlags::NoFollowSymlink)
            .map_err(|e| UnpackError::io(raw, "setting the times", e))?;
        self.mark(rel);
        Ok(())
    }

    fn hardlink(&mut self, raw: &[u8], rel: &[u8], target_raw: &[u8]) -> Result<(), UnpackError> {
        let target = normalize(target_raw)
            .map_err(|r| UnpackError::unsafe_entry(raw, format!("hardlink target \"{}\": {r}", disp(target_raw))))?;
        if target.is_empty() {
            return Err(UnpackError::unsafe_entry(raw, "hardlink to the layer root"));
        }
        if target == rel {
            return Err(UnpackError::invalid(raw, "hardlink to itself"));
        }
        let not_earlier = || {
            UnpackError::invalid(
                raw,
                format!(
                    "hardlink target \"{}\" is not an earlier entry of this layer (the target must be \
                     unpacked before the link)",
                    disp(target_raw)
                ),
            )
        };
        let (tparent, tleaf) = split(&target);
        let tdir = match self.tree.dir(tparent, false) {
            Ok(d) => d,
            Err(ResolveError::Missing(_)) => return Err(not_earlier()),
            Err(e) => return Err(resolve_err(raw, e, "hardlink target parent")),
        };
        match fsops::lstat_at(tdir.as_raw_fd(), tleaf) {
            Ok(st) if fsops::is_type(&st, SFlag::S_IFDIR) => {
                return Err(UnpackError::invalid(raw, format!("hardlink to a directory \"{}\"", disp(target_raw))))
            }
            Ok(_) => {}
            Err(Errno::ENOENT) => return Err(not_earlier()),
            Err(e) => return Err(UnpackError::io(raw, "inspecting the hardlink target", e)),
        }
        let (parent, leaf) = split(rel);
        let dir = self.parent(raw, parent)?;
        let mut replaced = false;
        loop {
            // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself.
            match unistd::linkat(Some(tdir.as_raw_fd()), tleaf, Some(dir.as_raw_fd()), leaf, AtFlags::empty()) {
                Ok(()) => break,
                Err(Errno::EEXIST) if !replaced => {
                    self.clear(raw, rel, dir.as_raw_fd(), leaf, false)?;
                    replaced = true;
                }
                Err(Errno::ENOENT) => return Err(not_earlier()),
                Err(e) => return Err(UnpackError::io(raw, "creating the hardlink", e)),
            }
        }
        // The link shares the target's inode: its metadata is the target entry's.
        self.links.insert(rel.to_vec());
        self.mark(rel);
        Ok(())
    }

    fn special(&mut self, raw: &[u8], rel: &[u8], kind: SFlag, dev: u64, meta: &Meta) -> Result<(), UnpackError> {
        let (parent, leaf) = split(rel);
        let dir = self.parent(raw, parent)?;
        let d = dir.as_raw_fd();
        let mut replaced = false;
        loop {
            match stat::mknodat(Some(d), leaf, kind, mode(meta.mode & 0o777), dev) {
                Ok(()) => break,
                Err(Errno::EEXIST) if !replaced => {
                    self.clear(raw, rel, d, leaf, false)?;
                    replaced = true;
                }
                Err(Errno::EPERM) if kind != SFlag::S_IFIFO => {
                    // Not root (or in a user namespace): device nodes of images are not needed
                    // (the runtime mounts its own /dev), so skip it like rootless engines do.
                    self.notes.push(format!("{}: device node skipped: mknod not permitted", disp(raw)));
                    return Ok(());
                }
                Err(e) => return Err(UnpackError::io(raw, "creating the device node or fifo", e)),
            }
        }
        self.owner_at(raw, d, leaf, meta)?;
        // mknodat created `leaf` just now (it fails on anything existing) and nothing else
        // writes this private tree, so following here cannot reach anything but our node;
        // the mode is set again because mknodat applied the umask and ignores suid bits.
        stat::fchmodat(Some(d), leaf, mode(meta.mode), stat::FchmodatFlags::FollowSymlink)
            .map_err(|e| UnpackError::io(raw, "setting the mode", e))?;
        self.xattrs(raw, On::At(d, leaf), &meta.xattrs)?;
        stat::utimensat(Some(d), leaf, &meta.atime, &meta.mtime, UtimensatFlags::NoFollowSymlink)
            .map_err(|e| UnpackError::io(raw, "setting the times", e))?;
        self.mark(rel);
        Ok(())
    }

    // ---- whiteouts ---------------------------------------------------------------------

    fn whiteout(&mut self, raw: &[u8], parent: &[u8], leaf: &[u8]) -> Result<(), UnpackError> {
        self.whiteouts += 1;
        if leaf == WH_OPAQUE {
            return self.opaque(raw, parent);
        }
        let name = &leaf[WH_PREFIX.len()..];
        if name.starts_with(WH_PREFIX) {
            // aufs metadata (.wh..wh.plnk, .wh..wh.aufs): not part of the image.
            self.notes.push(format!("{}: aufs metadata entry ignored", disp(raw)));
            return Ok(());
        }
        if name.is_empty() || name == b"." || name == b".." {
            return Err(UnpackError::unsafe_entry(raw, "whiteout names no file in its directory"));
        }
        let target = join(parent, name);
        match self.opts.whiteouts {
            WhiteoutMode::Overlay => {
                let dir = self.parent(raw, parent)?;
                let dev = stat::makedev(0, 0);
                match stat::mknodat(Some(dir.as_raw_fd()), name, SFlag::S_IFCHR, Mode::empty(), dev) {
                    Ok(()) => Ok(()),
                    Err(Errno::EEXIST) => {
                        // Whiteouts only hide lower layers; this layer's own file stays.
                        self.notes.push(format!(
                            "{}: whiteout ignored: this layer has \"{}\"",
                            disp(raw),
                            disp(&target)
                        ));
                        Ok(())
                    }
                    Err(Errno::EPERM) => Err(UnpackError::io(
                        raw,
                        "creating the overlay whiteout (a 0/0 character device) needs CAP_MKNOD; without it \
                         use WhiteoutMode::Apply",
                        Errno::EPERM,
                    )),
                    Err(e) => Err(UnpackError::io(raw, "creating the overlay whiteout", e)),
                }
            }
            WhiteoutMode::Apply => {
                if self.unpacked.as_ref().is_some_and(|s| s.contains(&target)) {
                    self.notes.push(format!("{}: whiteout ignored: this layer has \"{}\"", disp(raw), disp(&target)));
                    return Ok(());
                }
                let dir = match self.tree.dir(parent, false) {
                    Ok(d) => d,
                    Err(ResolveError::Missing(_)) => return Ok(()), // nothing to delete
                    Err(e) => return Err(resolve_err(raw, e, "parent")),
                };
                let removed = fsops::remove_all_at(dir.as_raw_fd(), name)
                    .map_err(|e| UnpackError::io(raw, "applying the whiteout", e))?;
                if removed == Some(true) {
                    self.tree.invalidate();
                }
                Ok(())
            }
        }
    }

    fn opaque(&mut self, raw: &[u8], dir_path: &[u8]) -> Result<(), UnpackError> {
        match self.opts.whiteouts {
            WhiteoutMode::Overlay => {
                let fd = self.open_real_dir(raw, dir_path, true)?.ok_or_else(|| {
                    UnpackError::invalid(raw, "the directory of the opaque whiteout could not be created")
                })?;
                let name = c"trusted.overlay.opaque";
                fsops::fset_xattr(fd.as_raw_fd(), name, b"y").map_err(|e| {
                    let hint = match e {
                        Errno::EPERM => " (needs CAP_SYS_ADMIN; without it use WhiteoutMode::Apply)",
                        Errno::EOPNOTSUPP => " (the filesystem has no trusted xattrs; use WhiteoutMode::Apply)",
                        _ => "",
                    };
                    UnpackError::io(raw, format!("marking the directory opaque (trusted.overlay.opaque){hint}"), e)
                })?;
                self.mark(dir_path);
                Ok(())
            }
            WhiteoutMode::Apply => {
                let Some(fd) = self.open_real_dir(raw, dir_path, false)? else {
                    return Ok(()); // nothing below to hide
                };
                self.clear_lower(raw, fd.as_raw_fd(), dir_path)?;
                self.tree.invalidate();
                Ok(())
            }
        }
    }

    /// Removes everything under `dir` that this layer did not create (apply-mode opaque).
    fn clear_lower(&mut self, raw: &[u8], dir: RawFd, dir_path: &[u8]) -> Result<(), UnpackError> {
        let names = fsops::list_dir(dir).map_err(|e| UnpackError::io(raw, "listing the opaque directory", e))?;
        for name in names {
            let child = join(dir_path, &name);
            let ours = self.unpacked.as_ref().is_some_and(|s| s.contains(&child));
            if !ours {
                fsops::remove_all_at(dir, &name).map_err(|e| {
                    UnpackError::io(raw, format!("hiding \"{}\" below the opaque directory", disp(&child)), e)
                })?;
                continue;
            }
            match fsops::open_dir_at(dir, &name) {
                Ok(sub) => self.clear_lower(raw, sub.as_raw_fd(), &child)?,
                Err(Errno::ENOTDIR) | Err(Errno::ELOOP) => {}
                Err(e) => return Err(UnpackError::io(raw, "opening a directory below the opaque one", e)),
            }
        }
        Ok(())
    }

    /// Opens directory `path` itself (not O_PATH) for xattrs and metadata. None when it is
    /// missing and not to be created.
    fn open_real_dir(&mut self, raw: &[u8], path: &[u8], create: bool) -> Result<Option<OwnedFd>, UnpackError> {
        if path.is_empty() {
            let root = self.tree.root().as_raw_fd();
            return fsops::open_dir_at(root, b".").map(Some).map_err(|e| UnpackError::io(raw, "opening the root", e));
        }
        match self.tree.dir(path, create) {
            Ok(_) => {}
            Err(ResolveError::Missing(_)) if !create => return Ok(None),
            Err(e) => return Err(resolve_err(raw, e, "directory")),
        }
        let (parent, leaf) = split(path);
        let dir = self.tree.dir(parent, false).map_err(|e| resolve_err(raw, e, "parent"))?;
        fsops::open_dir_at(dir.as_raw_fd(), leaf)
            .map(Some)
            .map_err(|e| UnpackError::io(raw, "opening the directory", e))
    }

    // ---- metadata ------------------------------------------------------------------------

    fn owner_fd(&self, raw: &[u8], fd: RawFd, meta: &Meta) -> Result<(), UnpackError> {
        if self.opts.same_owner {
            unistd::fchown(fd, Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)))
                .map_err(|e| UnpackError::io(raw, format!("chown to {}:{}", meta.uid, meta.gid), e))?;
        }
        Ok(())
    }

    fn owner_at(&self, raw: &[u8], dir: RawFd, leaf: &[u8], meta: &Meta) -> Result<(), UnpackError> {
        if self.opts.same_owner {
            let (u, g) = (Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)));
            unistd::fchownat(Some(dir), leaf, u, g, AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| UnpackError::io(raw, format!("chown to {}:{}", meta.uid, meta.gid), e))?;
        }
        Ok(())
    }

    /// Applies PAX xattrs by policy:
    /// - `trusted.overlay.*`, `user.overlay.*`: never (they steer overlayfs; only we set them);
    /// - other `security.*` (selinux, ima, evm, smack, apparmor): never, they are host policy;
    /// - `security.capability` and POSIX ACLs: must apply, else the unpack fails (dropping them
    ///   silently changes what a file grants or who may access it);
    /// - everything else (`user.*`, `trusted.*`): best effort, a note when refused.
    fn xattrs(&mut self, raw: &[u8], on: On<'_>, xattrs: &[(Vec<u8>, Vec<u8>)]) -> Result<(), UnpackError> {
        for (name, value) in xattrs {
            let shown = disp(name);
            if name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.") {
                self.notes.push(format!("{}: xattr {shown} ignored: reserved for overlayfs", disp(raw)));
                continue;
            }
            let required = name == b"security.capability" || name.starts_with(b"system.posix_acl_");
            if name.starts_with(b"security.") && !required {
                self.notes.push(format!("{}: xattr {shown} ignored: security labels come from the host", disp(raw)));
                continue;
            }
            let Ok(cname) = CString::new(name.as_slice()) else {
                self.notes.push(format!("{}: xattr with a NUL in its name ignored", disp(raw)));
                continue;
            };
            let r = match on {
                On::Fd(fd) => fsops::fset_xattr(fd, &cname, value),
                On::At(dir, leaf) => fsops::lset_xattr_at(dir, leaf, &cname, value),
            };
            match r {
                Ok(()) => {}
                Err(e) if required => {
                    return Err(UnpackError::io(
                        raw,
                        format!(
                            "setting xattr {shown} (it must not be dropped: the layer directory's filesystem \
                             must support it, and file capabilities need root)"
                        ),
                        e,
                    ))
                }
                Err(e) => self.notes.push(format!("{}: xattr {shown} not applied: {}", disp(raw), e.desc())),
            }
        }
        Ok(())
    }

    /// Sets the deferred directory modes and times, deepest last-created first.
    pub(super) fn finish(&mut self) -> Result<(), UnpackError> {
        let dirs = std::mem::take(&mut self.dirs);
        for d in dirs.iter().rev() {
            let fd = if d.path.is_empty() {
                None
            } else {
                let (parent, leaf) = split(&d.path);
                let Ok(pdir) = self.tree.dir(parent, false) else { continue };
                match fsops::open_dir_at(pdir.as_raw_fd(), leaf) {
                    Ok(fd) => Some(fd),
                    // Replaced or removed by a later entry: nothing to set.
                    Err(Errno::ENOENT) | Err(Errno::ENOTDIR) | Err(Errno::ELOOP) => continue,
                    Err(e) => return Err(UnpackError::io(&d.path, "opening the directory", e)),
                }
            };
            let root = self.tree.root().clone();
            let fd = fd.as_ref().map_or(root.as_raw_fd(), |f| f.as_raw_fd());
            stat::fchmod(fd, mode(d.mode)).map_err(|e| UnpackError::io(&d.path, "setting the mode", e))?;
            stat::futimens(fd, &d.atime, &d.mtime).map_err(|e| UnpackError::io(&d.path, "setting the times", e))?;
        }
        Ok(())
    }
}

fn mode(m: u32) -> Mode {
    Mode::from_bits_truncate(m & 0o7777)
}

/// PAX time: decimal seconds with an optional fraction, possibly negative.
fn pax_time(v: &[u8]) -> Option<TimeSpec> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let mut secs: i64 = int.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut nanos: i64 = if digits.is_empty() { 0 } else { format!("{digits:0<9}").parse().ok()? };
    if neg {
        secs = -secs;
        if nanos > 0 {
            secs -= 1;
            nanos = 1_000_000_000 - nanos;
        }
    }
    Some(timespec(secs, nanos))
}

/// A time for futimens/utimensat. `time_t` is 32 bits on 32-bit musl targets (armv7: the
/// libc crate still uses musl's old time ABI), so a date past 2038-01-19 (or before 1901-12-13)
/// is clamped to the last (first) second it can hold, never wrapped into the past (future).
/// `nanos` is in 0..1e9 (pax_time makes it so); a clamped time has none. (The libc crate marks
/// the 32-bit musl `time_t` deprecated, announcing the change to 64 bits: this stays right then.)
#[allow(deprecated)]
fn timespec(secs: i64, nanos: i64) -> TimeSpec {
    match libc::time_t::try_from(secs) {
        Ok(s) => TimeSpec::new(s, nanos as _),
        Err(_) if secs < 0 => TimeSpec::new(libc::time_t::MIN, 0),
        Err(_) => TimeSpec::new(libc::time_t::MAX, 0),
    }
}

/// A resolution failure as the entry's error.
fn resolve_err(raw: &[u8], e: ResolveError, what: &str) -> UnpackError {
    match e {
        ResolveError::Symlink(p) => UnpackError::unsafe_entry(
            raw,
            format!("{what} \"{}\" is a symlink, and symlinks are never followed while unpacking", disp(&p)),
        ),
        ResolveError::NotDir(p) => UnpackError::invalid(raw, format!("{what} \"{}\" is not a directory", disp(&p))),
        ResolveError::Missing(p) => UnpackError::invalid(raw, format!("{what} \"{}\" does not exist", disp(&p))),
        ResolveError::CrossesMount(p) => {
            UnpackError::unsafe_entry(raw, format!("{what} \"{}\" crosses a mount point", disp(&p)))
        }
        ResolveError::Sys(p, e) => UnpackError::io(raw, format!("opening {what} \"{}\"", disp(&p)), e),
    }
}

#[cfg(test)]
mod tests {
    use super::{pax_time, timespec};

    #[test]
    fn pax_times() {
        let t = |s: &str| pax_time(s.as_bytes()).map(|t| (t.tv_sec(), t.tv_nsec()));
        assert_eq!(t("1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(t("1700000000.5"), Some((1_700_000_000, 500_000_000)));
        assert_eq!(t("1.123456789123"), Some((1, 123_456_789)));
        assert_eq!(t("-1.5"), Some((-2, 500_000_000)));
        assert_eq!(t("x"), None);
    }

    /// Dates past what `time_t` holds are clamped, never wrapped: on armv7 (32-bit time_t)
    /// 2100 is 2038-01-19T03:14:07Z, not a date in 1964.
    #[test]
    #[allow(deprecated, clippy::useless_conversion)] // time_t and tv_sec are i32 on armv7
    fn times_past_time_t_are_clamped() {
        let max = i64::from(libc::time_t::MAX);
        let min = i64::from(libc::time_t::MIN);
        let t = |s: i64, n: i64| {
            let t = timespec(s, n);
            (i64::from(t.tv_sec()), i64::from(t.tv_nsec()))
        };
        // 2100-01-01, a ustar field's largest value (8^11 - 1 s, year 2242), i64::MAX.
        for secs in [4_102_444_800, 8_589_934_591, i64::MAX] {
            let want = if secs > max { (max, 0) } else { (secs, 7) };
            assert_eq!(t(secs, 7), want, "{secs}");
        }
        // 1900 and i64::MIN: clamped to the earliest second.
        for secs in [-2_208_988_800, i64::MIN] {
            let want = if secs < min { (min, 0) } else { (secs, 7) };
            assert_eq!(t(secs, 7), want, "{secs}");
        }
        // The edges themselves are kept.
        assert_eq!(t(2_147_483_647, 1), (2_147_483_647, 1));
        assert_eq!(t(-2_147_483_648, 1), (-2_147_483_648, 1));
        // Through a PAX record, as a layer would carry it.
        let p = pax_time(b"4102444800.25").map(|t| (i64::from(t.tv_sec()), i64::from(t.tv_nsec())));
        let want = if max < 4_102_444_800 { (max, 0) } else { (4_102_444_800, 250_000_000) };
        assert_eq!(p, Some(want));
    }
}
