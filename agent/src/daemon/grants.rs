//! A service's secrets and configs at start: their content copied into a tmpfs of the
//! container's own (`<root>/containers/<id>/files`, mounted by the agent: mode 0700, root's,
//! `nosuid,nodev,noexec`, sized to the content), one file each with the owner and mode the
//! manifest asks, each bind-mounted read-only at its target. The content is never on a disk
//! (the tmpfs is RAM) nor readable by another user of the host (the tmpfs's root is 0700 under
//! the container's 0700 directory). Made anew at each start of the container (so a file
//! source is read then), unmounted with the container's directory.

use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::Mount;
use skiff_images::bundle;

use crate::manifest::{FileGrant, GrantKind, GrantSource, ReadError, Service, GRANT_MAX};

/// The directory of the tmpfs under a container's directory.
pub const DIR: &str = "files";

fn what(g: &FileGrant) -> String {
    let k = match g.kind {
        GrantKind::Secret => "secret",
        GrantKind::Config => "config",
    };
    format!("{k} {}", g.name)
}

/// The content of `g` now.
fn content(g: &FileGrant) -> Result<Vec<u8>> {
    match &g.source {
        GrantSource::Content(c) => Ok(c.clone().into_bytes()),
        GrantSource::Environment { value, .. } => Ok(value.clone().into_bytes()),
        GrantSource::File { path, .. } => match crate::manifest::read_bounded(path, GRANT_MAX, true) {
            Ok(d) => Ok(d),
            Err(e) if e.is_not_found() => bail!("{}: its file {} does not exist", what(g), path.display()),
            Err(e @ ReadError::TooLarge(_)) => bail!("{}: its file {}: {e}", what(g), path.display()),
            Err(e) => bail!("{}: its file {}: {e}", what(g), path.display()),
        },
    }
}

/// Whether `dir` is a mount point (its device differs from its parent's).
fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(a), Ok(b)) = (fs::symlink_metadata(dir), fs::symlink_metadata(dir.join(".."))) else { return false };
    a.dev() != b.dev()
}

/// Unmounts the files' tmpfs of container directory `cdir` (every mount stacked there).
pub fn unmount(cdir: &Path) {
    let dir = cdir.join(DIR);
    for _ in 0..8 {
        if !is_mount_point(&dir) {
            break;
        }
        let _ = umount2(&dir, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW);
    }
}

/// Makes the tmpfs of `svc`'s secrets and configs for the container in `cdir` and returns the
/// read-only bind mounts of its files (none, and no tmpfs, when the service has none).
pub fn install(cdir: &Path, svc: &Service) -> Result<Vec<Mount>> {
    unmount(cdir);
    let dir = cdir.join(DIR);
    if svc.files.is_empty() {
        let _ = fs::remove_dir(&dir);
        return Ok(Vec::new());
    }
    // Every content first: a missing file fails the start before anything is made.
    let contents = svc.files.iter().map(content).collect::<Result<Vec<_>>>()?;
    let page = 4096u64;
    let size: u64 = contents.iter().map(|c| (c.len() as u64).div_ceil(page) * page + page).sum::<u64>() + 4 * page;
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).with_context(|| format!("chmod {}", dir.display()))?;
    let opts = format!("mode=0700,uid=0,gid=0,size={size},nr_inodes={}", svc.files.len() + 16);
    mount(
        Some("skiff-files"),
        &dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(opts.as_str()),
    )
    .with_context(|| format!("mounting a tmpfs on {}", dir.display()))?;
    let made = (|| {
        let mut mounts = Vec::with_capacity(contents.len());
        for (i, (g, data)) in svc.files.iter().zip(&contents).enumerate() {
            let p: PathBuf = dir.join(i.to_string());
            write_file(&p, data, g).with_context(|| format!("{}: writing {}", what(g), p.display()))?;
            mounts.push(bundle::bind_mount(p, &g.target, true));
        }
        Ok::<_, anyhow::Error>(mounts)
    })();
    if made.is_err() {
        unmount(cdir);
    }
    made
}

/// Writes `data` to the new file `p` (0600 while written), then gives it its owner and mode.
fn write_file(p: &Path, data: &[u8], g: &FileGrant) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(p)?;
    f.write_all(data)?;
    nix::unistd::fchown(f.as_raw_fd(), Some(g.uid.into()), Some(g.gid.into())).map_err(|e| anyhow!("chown: {e}"))?;
    // After the chown, which clears the set-id bits (none are allowed anyway).
    f.set_permissions(fs::Permissions::from_mode(g.mode & 0o777))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_source_is_a_clear_error() {
        let g = FileGrant {
            kind: GrantKind::Secret,
            name: "db".into(),
            source: GrantSource::File { path: "/nonexistent/skiff/db.txt".into(), digest: None },
            target: "/run/secrets/db".into(),
            uid: 0,
            gid: 0,
            mode: 0o444,
        };
        let e = content(&g).unwrap_err().to_string();
        assert_eq!(e, "secret db: its file /nonexistent/skiff/db.txt does not exist");
    }
}
