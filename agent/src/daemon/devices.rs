//! A service's devices at start: `devices:` (a node, or every node under a directory, as
//! Docker does), `device_cgroup_rules:`, and for `privileged: true` every device node of the
//! host's /dev. Each node is stat'ed on the host now: its type, numbers, mode and owner go
//! into the spec's `linux.devices`, with an allow rule of the device cgroup for it.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use skiff_images::bundle::{DeviceAllow, DeviceNode};

use crate::manifest::Service;

/// The most device nodes one service gets (a directory or the host's /dev walked).
const MAX_NODES: usize = 4096;
/// How deep a directory of devices is walked.
const MAX_DEPTH: usize = 8;

/// What the runtime makes and allows for `svc`.
pub fn for_service(svc: &Service) -> Result<(Vec<DeviceNode>, Vec<DeviceAllow>)> {
    let mut nodes: Vec<DeviceNode> = Vec::new();
    let mut rules = Vec::new();
    for d in &svc.devices {
        let meta = match fs::metadata(&d.source) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "device {} does not exist on the host (is it plugged in?); the replica starts once it does",
                d.source.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("device {}", d.source.display())),
        };
        let found = if meta.is_dir() {
            let mut found = Vec::new();
            walk(&d.source, Path::new(&d.target), &[], 0, &mut found)?;
            found
        } else {
            match node(&meta, PathBuf::from(&d.target)) {
                Some(n) => vec![n],
                None => bail!("device {} is not a device node (nor a directory of them)", d.source.display()),
            }
        };
        for n in found {
            rules.push(DeviceAllow {
                kind: n.kind,
                major: Some(n.major),
                minor: Some(n.minor),
                access: d.permissions.clone(),
            });
            nodes.retain(|x| x.path != n.path);
            nodes.push(n);
        }
    }
    for r in &svc.device_cgroup_rules {
        rules.push(DeviceAllow {
            kind: r.kind,
            major: r.major.map(i64::from),
            minor: r.minor.map(i64::from),
            access: r.access.clone(),
        });
    }
    if svc.privileged {
        let mut host = Vec::new();
        walk(Path::new("/dev"), Path::new("/dev"), HOST_SKIPPED, 0, &mut host)?;
        for n in host {
            if !nodes.iter().any(|x| x.path == n.path) {
                nodes.push(n);
            }
        }
    }
    Ok((nodes, rules))
}

/// What a privileged container does not get of the host's /dev (as runc's and containerd's
/// host device lists): directories that are mounts of their own in the container (`pts`,
/// `shm`, `mqueue`) or not devices, and the nodes the runtime makes itself: `console` (the
/// container's terminal) and `ptmx` (a link to the container's own devpts instance: the host's
/// node would open the host's ptys).
const HOST_SKIPPED: &[&str] = &["pts", "shm", "mqueue", "fd", ".lxc", ".lxd-mounts", ".udev", "console", "ptmx"];

/// The device node `meta` tells of, to be made at `target`; `None` for anything
/// else.
fn node(meta: &fs::Metadata, target: PathBuf) -> Option<DeviceNode> {
    let ft = meta.file_type();
    let kind = if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else {
        return None;
    };
    let rdev = meta.rdev();
    Some(DeviceNode {
        path: target,
        kind,
        major: libc::major(rdev) as i64,
        minor: libc::minor(rdev) as i64,
        file_mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    })
}

/// Every device node under `dir` (symlinks not followed), at the same place under `target`.
/// `skip`: names left out at the top level.
fn walk(dir: &Path, target: &Path, skip: &[&str], depth: usize, out: &mut Vec<DeviceNode>) -> Result<()> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let rd = fs::read_dir(dir).with_context(|| format!("reading the device directory {}", dir.display()))?;
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        if depth == 0 && name.to_str().is_some_and(|n| skip.contains(&n)) {
            continue;
        }
        let path = e.path();
        // The entry itself (a link to a device is the device's business under its own name).
        let Ok(meta) = fs::symlink_metadata(&path) else { continue };
        if meta.is_dir() {
            walk(&path, &target.join(&name), &[], depth + 1, out)?;
        } else if let Some(n) = node(&meta, target.join(&name)) {
            if out.len() >= MAX_NODES {
                bail!("more than {MAX_NODES} device nodes under {}", dir.display());
            }
            out.push(n);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Device, DeviceRule};

    #[test]
    fn nodes_and_rules_from_the_host() {
        let svc = Service {
            devices: vec![
                Device { source: "/dev/null".into(), target: "/dev/mynull".into(), permissions: "r".into() },
                Device { source: "/dev/zero".into(), target: "/dev/zero".into(), permissions: "rwm".into() },
            ],
            device_cgroup_rules: vec![DeviceRule { kind: 'c', major: Some(189), minor: None, access: "rwm".into() }],
            ..Default::default()
        };
        let (nodes, rules) = for_service(&svc).unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(
            (nodes[0].path.as_path(), nodes[0].kind, nodes[0].major, nodes[0].minor),
            (Path::new("/dev/mynull"), 'c', 1, 3)
        );
        assert_eq!(nodes[0].file_mode, 0o666);
        assert_eq!(rules[0], DeviceAllow { kind: 'c', major: Some(1), minor: Some(3), access: "r".into() });
        assert_eq!(rules[2], DeviceAllow { kind: 'c', major: Some(189), minor: None, access: "rwm".into() });

        let missing = Service {
            devices: vec![Device {
                source: "/dev/skiff-none".into(),
                target: "/dev/x".into(),
                permissions: "r".into(),
            }],
            ..Default::default()
        };
        let e = for_service(&missing).unwrap_err().to_string();
        assert!(e.contains("/dev/skiff-none does not exist on the host"), "{e}");
        let file = Service {
            devices: vec![Device { source: "/etc/hostname".into(), target: "/dev/x".into(), permissions: "r".into() }],
            ..Default::default()
        };
        assert!(for_service(&file).unwrap_err().to_string().contains("not a device node"));
    }

    #[test]
    fn privileged_gets_the_host_devices_but_not_its_ptys() {
        let (nodes, rules) = for_service(&Service { privileged: true, ..Default::default() }).unwrap();
        assert!(rules.is_empty(), "privileged allows everything in the bundle, not here");
        let paths: Vec<&Path> = nodes.iter().map(|n| n.path.as_path()).collect();
        assert!(paths.contains(&Path::new("/dev/null")), "{paths:?}");
        for p in paths {
            assert!(
                !p.starts_with("/dev/pts") && p != Path::new("/dev/ptmx") && p != Path::new("/dev/console"),
                "{p:?}"
            );
        }
    }
}
