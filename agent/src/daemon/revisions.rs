//! A service's revisions and what is in force: `<root>/services/<name>.json`, written temp +
//! fsync + rename (0600: definitions hold environments), after every change.
//!
//! A revision is a distinct definition of the service (after interpolation; replicas and the
//! rollout keys are not part of it) together with the image it resolved to (its whole record:
//! a rollback needs no registry, and the store keeps those images' content from `skiff prune`).
//! Numbers go 1, 2, 3... per service and are never reused; the newest `revision_history`
//! (`x-skiff`, default 10) are kept, and never the one in force, the ones a rollout or a
//! rollback names.
//!
//! The record also holds what overrides the manifest: `skiff scale` (until the manifest
//! changes the service's replicas) and `skiff rollback` (until the manifest changes the
//! service), and the service's last rollout ([`crate::rollout::Rollout`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use skiff_images::{fsutil, ImageRecord, References};

use super::paths::Paths;
use crate::manifest::Service;
use crate::rollout::Rollout;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    pub n: u32,
    /// RFC 3339, when it came into being.
    pub at: String,
    /// The definition (its `replicas` and rollout keys are not part of the revision).
    pub spec: Service,
    /// The image it resolved to.
    pub image: ImageRecord,
    /// The keys that differ from the revision before it (`image digest` for a new digest).
    #[serde(default)]
    pub changed: Vec<String>,
    /// An update to it failed: the manifest's wanting it again does not start a new update
    /// (a new edit, or a new digest, is a new revision).
    #[serde(default)]
    pub failed: bool,
}

/// `skiff rollback`: `revision` in force while the manifest wants `manifest`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub revision: u32,
    pub manifest: u32,
}

/// `skiff scale`: `replicas` while the manifest says `manifest`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scale {
    pub replicas: u32,
    pub manifest: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// Ascending.
    pub revisions: Vec<Revision>,
    /// The last number given.
    pub last: u32,
    /// The revision the service's replicas converge to (0: none yet).
    pub in_force: u32,
    #[serde(default)]
    pub rollout: Option<Rollout>,
    #[serde(default)]
    pub pin: Option<Pin>,
    #[serde(default)]
    pub scale: Option<Scale>,
}

impl ServiceRecord {
    pub fn get(&self, n: u32) -> Option<&Revision> {
        self.revisions.iter().find(|r| r.n == n)
    }
    fn get_mut(&mut self, n: u32) -> Option<&mut Revision> {
        self.revisions.iter_mut().find(|r| r.n == n)
    }

    /// The revision of `spec` on `image`: a kept one that matches, else a new one (`true`).
    pub fn revision_for(&mut self, spec: &Service, image: &ImageRecord, now: &str) -> (u32, bool) {
        let same = |r: &Revision| r.image.digest == image.digest && super::reconcile::same_definition(&r.spec, spec);
        // The newest match: an older identical one may have been rolled back from.
        if let Some(r) = self.revisions.iter().rev().find(|r| same(r)) {
            return (r.n, false);
        }
        let changed = match self.revisions.last() {
            Some(prev) => changed_keys(&prev.spec, &prev.image, spec, image),
            None => Vec::new(),
        };
        self.last += 1;
        let mut spec = spec.clone();
        spec.rollout = Default::default();
        self.revisions.push(Revision {
            n: self.last,
            at: now.to_string(),
            spec,
            image: image.clone(),
            changed,
            failed: false,
        });
        (self.last, true)
    }

    /// Keeps the newest `keep` revisions and every one still named (in force, a rollout's ends,
    /// a pin, and `also`: the ones containers run).
    pub fn trim(&mut self, keep: u32, also: &BTreeSet<u32>) {
        let mut named: BTreeSet<u32> = also.clone();
        named.insert(self.in_force);
        if let Some(r) = &self.rollout {
            named.extend([r.from, r.to]);
        }
        if let Some(p) = &self.pin {
            named.extend([p.revision, p.manifest]);
        }
        let newest: BTreeSet<u32> = self.revisions.iter().rev().take(keep as usize).map(|r| r.n).collect();
        self.revisions.retain(|r| newest.contains(&r.n) || named.contains(&r.n));
    }

    pub fn mark_failed(&mut self, n: u32) -> bool {
        match self.get_mut(n) {
            Some(r) if !r.failed => {
                r.failed = true;
                true
            }
            _ => false,
        }
    }

    /// The revision before `n` that is kept (a manual rollback's default).
    pub fn before(&self, n: u32) -> Option<u32> {
        self.revisions.iter().rev().map(|r| r.n).find(|r| *r < n)
    }
}

/// The top-level keys that differ between two definitions, and `image digest` when only the
/// image's content moved.
pub fn changed_keys(a: &Service, ai: &ImageRecord, b: &Service, bi: &ImageRecord) -> Vec<String> {
    let strip = |s: &Service| {
        let s = Service { replicas: 0, rollout: Default::default(), pull_policy: Default::default(), ..s.clone() };
        serde_json::to_value(s).unwrap_or_default()
    };
    let (va, vb) = (strip(a), strip(b));
    let mut out = Vec::new();
    if let (Some(ma), Some(mb)) = (va.as_object(), vb.as_object()) {
        let keys: BTreeSet<&String> = ma.keys().chain(mb.keys()).collect();
        for k in keys {
            if ma.get(k) != mb.get(k) {
                out.push(k.clone());
            }
        }
    }
    if ai.digest != bi.digest && !out.iter().any(|k| k == "image") {
        out.push("image digest".into());
    }
    out
}

/// `<root>/services/<name>.json`.
pub fn path(paths: &Paths, service: &str) -> PathBuf {
    paths.root.join("services").join(format!("{service}.json"))
}

pub fn save(paths: &Paths, service: &str, rec: &ServiceRecord) -> Result<()> {
    let dir = paths.root.join("services");
    fsutil::create_private_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let data = serde_json::to_vec_pretty(rec)?;
    let p = path(paths, service);
    fsutil::write_atomic(&dir, &p, &data).with_context(|| format!("writing {}", p.display()))
}

pub fn load(p: &Path) -> Result<ServiceRecord> {
    let data = fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_slice(&data).with_context(|| format!("{}: not a service record", p.display()))
}

/// Every service record under the root, with the unreadable ones' errors.
pub fn load_all(paths: &Paths) -> (BTreeMap<String, ServiceRecord>, Vec<String>) {
    let mut ok = BTreeMap::new();
    let mut bad = Vec::new();
    let Ok(rd) = fs::read_dir(paths.root.join("services")) else { return (ok, bad) };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(service) = name.strip_suffix(".json") else { continue };
        match load(&e.path()) {
            Ok(r) => {
                ok.insert(service.to_string(), r);
            }
            Err(err) => bad.push(format!("{err:#}")),
        }
    }
    (ok, bad)
}

/// The content of every kept revision's image, for `skiff prune` (a rollback needs no network).
pub fn references(root: &Path, keep: &mut References) -> Result<()> {
    let dir = root.join("services");
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for e in rd {
        let p = e?.path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        // Unreadable: refuse rather than prune what a rollback may need.
        let rec = load(&p).context("skiff prune keeps the images of kept revisions")?;
        for r in &rec.revisions {
            keep.blobs.extend(r.image.blobs().cloned());
            keep.layers.extend(r.image.layers.iter().map(|l| l.digest.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(src: &str) -> Service {
        let r = crate::manifest::parse_str(src, Path::new("/"));
        r.manifest.expect("valid").services["web"].clone()
    }

    fn image(digest: &str) -> ImageRecord {
        serde_json::from_value(serde_json::json!({
            "reference": "docker.io/library/busybox:latest",
            "digest": format!("sha256:{}", digest.repeat(64 / digest.len())),
            "config": format!("sha256:{}", "c".repeat(64)),
            "media_type": "application/vnd.oci.image.manifest.v1+json",
            "platform": "linux/amd64",
            "layers": [],
            "size": 1,
            "pulled": "2026-12-07T00:00:00Z",
        }))
        .unwrap_or_else(|e| panic!("image record: {e}"))
    }

    #[test]
    fn revisions_are_numbered_by_definition_and_digest_and_trimmed() {
        let mut r = ServiceRecord::default();
        let a = svc("services:\n  web:\n    image: busybox\n");
        let (one, new) = r.revision_for(&a, &image("a"), "t1");
        assert_eq!((one, new), (1, true));
        // Scaling and rollout keys are not a new revision.
        let scaled =
            svc("services:\n  web:\n    image: busybox\n    deploy: {replicas: 3, update_config: {parallelism: 2}}\n");
        assert_eq!(r.revision_for(&scaled, &image("a"), "t2"), (1, false));
        // A new digest is.
        assert_eq!(r.revision_for(&a, &image("b"), "t3"), (2, true));
        assert_eq!(r.get(2).map(|x| x.changed.clone()), Some(vec!["image digest".to_string()]));
        let b = svc("services:\n  web:\n    image: busybox\n    command: [sleep, \"9\"]\n    environment: {A: b}\n");
        assert_eq!(r.revision_for(&b, &image("b"), "t4"), (3, true));
        assert_eq!(r.get(3).map(|x| x.changed.clone()), Some(vec!["command".to_string(), "environment".to_string()]));
        // Back to the first definition: that revision again, no new number.
        assert_eq!(r.revision_for(&a, &image("a"), "t5"), (1, false));
        for i in 0..20 {
            let s = svc(&format!("services:\n  web:\n    image: busybox\n    command: [sleep, \"{i}\"]\n"));
            r.revision_for(&s, &image("b"), "t");
        }
        r.in_force = 2;
        r.trim(10, &BTreeSet::from([3]));
        let kept: Vec<u32> = r.revisions.iter().map(|x| x.n).collect();
        assert_eq!(kept, [2, 3, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23], "the newest 10 and the named");
        assert_eq!(r.before(14), Some(3));
        assert_eq!(r.before(2), None);
        let (n, _) = r.revision_for(&a, &image("a"), "t");
        assert_eq!(n, 24, "numbers are never reused");
    }

    #[test]
    fn a_record_survives_a_round_trip_and_its_images_are_kept_from_prune() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = Paths::new(dir.path());
        let mut r = ServiceRecord::default();
        r.revision_for(&svc("services:\n  web:\n    image: busybox\n"), &image("a"), "t");
        r.in_force = 1;
        r.scale = Some(Scale { replicas: 3, manifest: 1 });
        save(&paths, "web", &r).expect("save");
        let (all, bad) = load_all(&paths);
        assert!(bad.is_empty());
        assert_eq!(all.get("web"), Some(&r));
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path(&paths, "web")).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mut keep = References::default();
        references(dir.path(), &mut keep).expect("references");
        assert!(keep.blobs.contains(&image("a").digest));
        fs::write(path(&paths, "db"), b"{torn").expect("write");
        assert!(references(dir.path(), &mut keep).is_err(), "an unreadable record stops a prune");
        assert_eq!(load_all(&paths).1.len(), 1);
    }
}
