//! The anonymous volumes of an image's VOLUMEs (docker's behaviour): one directory per
//! declared path, seeded once with what the image has there, bind-mounted over it. `skiff run`
//! and the agent both go through [`image_volumes`].
//!
//! An image is input from outside (a registry, an archive): its VOLUME paths and the layers
//! under them are hostile until checked. So:
//! - every path is checked first, lexically ([`crate::bundle::volume_path`]: absolute, clean,
//!   no `..`), and then resolved *inside the rootfs*, one component at a time with
//!   `openat2(RESOLVE_IN_ROOT)` (never against the host's `/`): a component that is a symlink
//!   in the image, or not a directory, refuses the image with one line naming it and the
//!   volume. Nothing is created before every volume passed.
//! - the copy reads from the directory fd that resolution returned, entry by entry relative
//!   to directory fds opened `O_NOFOLLOW` (the rootfs copier of [`crate::rootfs`]): a symlink
//!   of the image is copied as a symlink, never followed; ownership, modes, xattrs, times and
//!   hardlinks are kept; at most [`crate::rootfs::COPY_MAX_DEPTH`] directories deep.
//! - the copy goes to a hidden temporary directory, synced and renamed into place at the end
//!   (never over an existing one), so a failed or interrupted copy never leaves a half-seeded
//!   volume that a restart would then mount; what a crash left is removed by the next seed.
//! - named volumes of the manifest go through the same resolution and copy
//!   ([`named_volume`]), once, when skiff makes the volume.
//!
//! Why a symlink on the way is refused rather than followed inside the rootfs (docker follows
//! it in scope): a VOLUME is declared by the image's author at the path the image uses; an
//! image whose VOLUME path climbs through a link (`x -> /`, `VOLUME /x/etc/...`) is built to
//! reach the host through a careless copier, and a clear refusal says so. An image that
//! really needs it can still run with a volume of the manifest's (or `-v`) at that path: a
//! covered VOLUME is only checked lexically, never resolved or copied.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{self, OFlag};
use nix::sys::stat::{self, SFlag};
use oci_spec::runtime::Mount;

use crate::bundle::{self, clean_abs, open_in_root, open_root, quoted, BundleError, ImageRunConfig};

/// What a checked VOLUME path is in the image.
enum Source {
    /// The path (or a parent) does not exist in the image: an empty volume.
    Missing,
    /// A real directory of the image, opened (read-only, not a symlink).
    Dir(OwnedFd),
}

/// Checks every VOLUME path of the image lexically (see [`bundle::volume_path`]): what can be
/// refused before the container's directory and rootfs are made.
pub fn check_paths(image: &ImageRunConfig) -> Result<(), BundleError> {
    image.volumes.iter().try_for_each(|v| bundle::volume_path(&image.name, v).map(|_| ()))
}

/// The image's VOLUMEs that `covered` (the destinations of the caller's own mounts) does not
/// cover, as bind mounts of directories `<dir>/<n>` (`n`: the VOLUME's index in the image's
/// sorted list), each seeded from the image when it does not exist yet (an existing one, a
/// restarted container's, is kept as it is). Every VOLUME is checked before anything is
/// written; see the module documentation.
pub fn image_volumes(
    image: &ImageRunConfig,
    rootfs: &Path,
    covered: &[PathBuf],
    dir: &Path,
) -> Result<Vec<Mount>, BundleError> {
    let covered: BTreeSet<String> = covered.iter().filter_map(|p| p.to_str().and_then(clean_abs)).collect();
    let mut wanted = Vec::new();
    for (i, v) in image.volumes.iter().enumerate() {
        let path = bundle::volume_path(&image.name, v)?;
        if !covered.contains(&path) {
            wanted.push((i, v.as_str(), path));
        }
    }
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let root = open_root(rootfs)?;
    let mut resolved = Vec::with_capacity(wanted.len());
    for (i, v, path) in wanted {
        let source = resolve(&root, &image.name, v, &path)?;
        resolved.push((i, v, path, source));
    }

    let io_err = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| BundleError::Io { what, path, source }
    };
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err("creating", dir))?;
    let mut mounts = Vec::with_capacity(resolved.len());
    for (i, v, path, source) in resolved {
        let dest = dir.join(i.to_string());
        match fs::symlink_metadata(&dest) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(BundleError::Io {
                    what: "using the volume",
                    path: dest,
                    source: io::Error::other("not a directory"),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => seed(&source, rootfs, &path, dir, &dest)
                .map_err(|detail| BundleError::Volume { image: image.name.clone(), volume: quoted(v, 200), detail })?,
            Err(e) => return Err(io_err("reading", &dest)(e)),
        }
        mounts.push(bundle::bind_mount(dest, path, false));
    }
    Ok(mounts)
}

/// What [`named_volume`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum NamedVolume {
    /// The volume existed: used as it is (never filled again, even if empty).
    Existing,
    /// The volume existed and is empty, while the image has files at the mount's target (the
    /// owner and mode of its directory there): used as it is, but worth a word — an older skiff
    /// made volumes empty, and such a volume stays empty until it is removed.
    ExistingEmpty { uid: u32, gid: u32, mode: u32 },
    /// Made now, filled with what the image has at the mount's target (content, owners,
    /// modes, xattrs, times; the directory's own owner and mode too).
    Filled,
    /// Made now, empty (0755 root): `nocopy`, or the image has nothing at the target.
    Empty,
    /// Made now, empty, because the image's path cannot be copied safely (the reason, one
    /// line): a symlink or a non-directory on the way, or a target that is not a plain path.
    Refused(String),
}

/// A named volume `<dir>/<name>` for a mount at `target`, made when missing (Docker's copy-up
/// of a new volume): filled with what the container's rootfs has at `target` unless `nocopy`.
/// An existing volume is left as it is, even an empty one: a volume is filled once, when it is
/// made, so one the service emptied on purpose stays empty (Docker refills any empty volume at
/// each container creation; skiff does not).
///
/// `target` comes from the manifest and the rootfs from the image: both are hostile. The path
/// is checked lexically (absolute, no `..`) and resolved inside the rootfs as for VOLUMEs
/// ([`resolve`]: `RESOLVE_IN_ROOT`, a symlink on the way refused); a path that does not pass
/// is not copied (the volume is made empty and the reason returned, for a warning) rather than
/// refusing a service that ran before. The copy goes to a temporary directory in `dir` renamed
/// into place (never over an existing volume): a crash mid-copy leaves no half-filled volume.
pub fn named_volume(
    rootfs: &Path,
    target: &str,
    dir: &Path,
    name: &str,
    nocopy: bool,
) -> Result<NamedVolume, BundleError> {
    let dest = dir.join(name);
    let io_err = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| BundleError::Io { what, path, source }
    };
    match fs::symlink_metadata(&dest) {
        Ok(m) if m.is_dir() => return Ok(existing(rootfs, target, &dest, nocopy)),
        Ok(_) => {
            return Err(BundleError::Io {
                what: "using the volume",
                path: dest,
                source: io::Error::other("not a directory"),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("reading", &dest)(e)),
    }
    let (source, path, outcome) = if nocopy {
        (Source::Missing, String::new(), NamedVolume::Empty)
    } else {
        match bundle::volume_path("", target) {
            Err(e) => (Source::Missing, String::new(), NamedVolume::Refused(refusal(&e))),
            Ok(path) => match resolve(&open_root(rootfs)?, "", target, &path) {
                Ok(Source::Missing) => (Source::Missing, path, NamedVolume::Empty),
                Ok(dir) => (dir, path, NamedVolume::Filled),
                Err(e) => (Source::Missing, path, NamedVolume::Refused(refusal(&e))),
            },
        }
    };
    seed(&source, rootfs, &path, dir, &dest).map_err(|detail| BundleError::Volume {
        image: "(the container's root)".into(),
        volume: quoted(target, 200),
        detail,
    })?;
    Ok(outcome)
}

/// An existing volume: [`NamedVolume::ExistingEmpty`] when it is empty and the image has a
/// non-empty directory at `target` (resolved as for a copy), else [`NamedVolume::Existing`].
fn existing(rootfs: &Path, target: &str, dest: &Path, nocopy: bool) -> NamedVolume {
    let empty = fs::read_dir(dest).map(|mut d| d.next().is_none()).unwrap_or(false);
    if nocopy || !empty {
        return NamedVolume::Existing;
    }
    let Ok(path) = bundle::volume_path("", target) else { return NamedVolume::Existing };
    let Ok(root) = open_root(rootfs) else { return NamedVolume::Existing };
    match resolve(&root, "", target, &path) {
        Ok(Source::Dir(fd)) => {
            let Ok(st) = nix::sys::stat::fstat(fd.as_raw_fd()) else { return NamedVolume::Existing };
            let has_files = nix::dir::Dir::from_fd(fd.into_raw_fd())
                .map(|mut d| d.iter().flatten().any(|e| !matches!(e.file_name().to_bytes(), b"." | b"..")))
                .unwrap_or(false);
            if has_files {
                NamedVolume::ExistingEmpty { uid: st.st_uid, gid: st.st_gid, mode: st.st_mode & 0o7777 }
            } else {
                NamedVolume::Existing
            }
        }
        _ => NamedVolume::Existing,
    }
}

/// The detail of a refused path, without the image and volume the caller names itself.
fn refusal(e: &BundleError) -> String {
    match e {
        BundleError::Volume { detail, .. } => detail.clone(),
        e => e.to_string(),
    }
}

/// Resolves the clean absolute `path` in the rootfs, component by component, each with
/// `RESOLVE_IN_ROOT` and `O_NOFOLLOW`: a symlink or a non-directory on the way is an error
/// naming the image, the VOLUME `v` as declared and the component.
fn resolve(root: &OwnedFd, image: &str, v: &str, path: &str) -> Result<Source, BundleError> {
    let refuse = |detail: String| BundleError::Volume { image: image.to_string(), volume: quoted(v, 200), detail };
    let mut prefix = String::new();
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    for (n, comp) in comps.iter().enumerate() {
        prefix.push('/');
        prefix.push_str(comp);
        let last = n + 1 == comps.len();
        // Every earlier component is a real directory (checked on the way), so resolving the
        // prefix follows no symlink; RESOLVE_IN_ROOT keeps it in the rootfs regardless.
        let fd = match open_in_root(root, &prefix, OFlag::O_PATH | OFlag::O_NOFOLLOW) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(Source::Missing),
            Err(e) => return Err(refuse(format!("resolving {} in the image: {e}", quoted(&prefix, 200)))),
        };
        let st = stat::fstat(fd.as_raw_fd())
            .map_err(|e| refuse(format!("resolving {} in the image: {e}", quoted(&prefix, 200))))?;
        match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFDIR => {}
            SFlag::S_IFLNK => {
                let target = fcntl::readlinkat(Some(fd.as_raw_fd()), "")
                    .map(|t| quoted(&t.to_string_lossy(), 200))
                    .unwrap_or_else(|_| "?".into());
                return Err(refuse(format!(
                    "{} is a symbolic link in the image (to {target}); skiff mounts and seeds volumes only at \
                     real directories of the image: use an image that declares the volume at its real path, \
                     or mount a volume of your own there",
                    quoted(&prefix, 200)
                )));
            }
            _ if last => {
                return Err(refuse("is not a directory in the image (a volume is mounted on a directory)".into()))
            }
            _ => return Err(refuse(format!("{} is not a directory in the image", quoted(&prefix, 200)))),
        }
        if last {
            let dir = open_in_root(root, &prefix, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW)
                .map_err(|e| refuse(format!("opening it in the image: {e}")))?;
            return Ok(Source::Dir(dir));
        }
    }
    // `path` is never `/` (volume_path refuses it).
    Err(refuse("a volume cannot be the root directory".into()))
}

/// Removes the temporary directories an interrupted seed of `name` left in `dir`
/// (`.NAME.seed-PID-N` whose process is gone: killed, or a power cut). Those of a live process
/// (this one's other threads included) are theirs.
fn remove_stale_seeds(dir: &Path, name: &str) {
    let prefix = format!(".{name}.seed-");
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let file = e.file_name();
        let Some(pid) = file
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = crate::fsutil::remove_tree(&e.path());
    }
}

/// Makes `dest` (missing): a temporary directory in `dir`, filled from `source`, renamed to
/// `dest`. On error the temporary directory is removed and nothing is left.
fn seed(source: &Source, rootfs: &Path, path: &str, dir: &Path, dest: &Path) -> Result<(), String> {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    remove_stale_seeds(dir, &name);
    let tmp = dir.join(format!(".{name}.seed-{}-{}", std::process::id(), crate::fsutil::unique()));
    let res = (|| -> Result<(), String> {
        fs::DirBuilder::new().mode(0o700).create(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
        // An empty volume is 0755 root (docker's); a seeded one gets its directory's metadata.
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {}: {e}", tmp.display()))?;
        if let Source::Dir(src) = source {
            let to = fcntl::open(
                &tmp,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                stat::Mode::empty(),
            )
            .map(crate::rootfs::own)
            .map_err(|e| format!("opening {}: {e}", tmp.display()))?;
            let from = rootfs.join(path.trim_start_matches('/'));
            crate::rootfs::copy_dir(src, &from, &to, &tmp)
                .map_err(|e| format!("seeding the volume from the image: {e}"))?;
            // The copy is on disk before its name says it is complete: a power cut after the
            // rename never leaves a volume of empty files taken as filled.
            crate::fsutil::syncfs(&tmp).map_err(|e| format!("syncing {}: {e}", tmp.display()))?;
        }
        // Never over a volume made meanwhile (two replicas starting at once): theirs stays.
        match crate::fsutil::rename_noreplace(&tmp, dest) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                let _ = crate::fsutil::remove_tree(&tmp);
                return Ok(());
            }
            Err(e) => return Err(format!("renaming {} to {}: {e}", tmp.display(), dest.display())),
        }
        crate::fsutil::fsync_dir(dir).map_err(|e| format!("syncing {}: {e}", dir.display()))
    })();
    if res.is_err() {
        let _ = crate::fsutil::remove_tree(&tmp);
    }
    res
}

#[cfg(test)]
mod tests;
