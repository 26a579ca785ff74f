//! Named volumes filled from the image (issue 13): Docker copies the image's content, owner and
//! mode into a new named volume. A Prometheus-like service (`user: 65534`, `data:/data`, the
//! image's /data owned by 65534 and 0700) can write into its volume, which holds the image's
//! file; a second start does not copy again (what the service removed stays removed);
//! `volume: {nocopy: true}` leaves the volume empty; and a hostile image whose mount target is
//! a symlink to a host directory (or climbs through one) never copies the host's files into
//! the volume. The image is an OCI archive written here and brought in with `skiff load`. Run
//! as root.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::json;
use skiff_tests::agent::{all_running, Agent, WAIT};
use skiff_tests::{blob_digest, oci_arch, Scratch};

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

/// An OCI archive of a one-layer image `reference`: busybox (with the applets the services
/// use) and what `populate` adds, owners and modes as on disk.
fn archive(work: &Scratch, reference: &str, populate: impl FnOnce(&Path)) -> PathBuf {
    let rootfs = work.join("image");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::copy(skiff_tests::busybox(), rootfs.join("bin/busybox")).unwrap();
    for l in ["sh", "sleep", "echo", "cat", "ls"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(l)).unwrap();
    }
    populate(&rootfs);
    let mut layer = tar::Builder::new(Vec::new());
    layer.follow_symlinks(false);
    layer.append_dir_all(".", &rootfs).unwrap();
    let layer = layer.into_inner().unwrap();
    let config = serde_json::to_vec(&json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {"Cmd": ["/bin/sleep", "1000"]},
        "rootfs": {"type": "layers", "diff_ids": [blob_digest(&layer)]},
    }))
    .unwrap();
    let desc = |media: &str, data: &[u8]| json!({"mediaType": media, "digest": blob_digest(data), "size": data.len()});
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": skiff_tests::registry::OCI_MANIFEST,
        "config": desc("application/vnd.oci.image.config.v1+json", &config),
        "layers": [desc("application/vnd.oci.image.layer.v1.tar", &layer)],
    }))
    .unwrap();
    let mut m = desc(skiff_tests::registry::OCI_MANIFEST, &manifest);
    m["annotations"] = json!({"io.containerd.image.name": reference});
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [m]})).unwrap();
    let mut out = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        out.append_data(&mut h, name, data).unwrap();
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json", &index);
    for blob in [&layer, &config, &manifest] {
        add(&format!("blobs/sha256/{}", &blob_digest(blob)[7..]), blob);
    }
    let path = work.join("image.tar");
    fs::write(&path, out.into_inner().unwrap()).unwrap();
    path
}

fn names(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(d)
        .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn a_new_named_volume_is_filled_from_the_image_once() {
    let mut a = Agent::new(SKIFF);
    let work = Scratch::new("copyup");
    // The host directory the hostile mounts aim at: root's, with a secret.
    let canary = work.join("canary");
    fs::create_dir(&canary).unwrap();
    fs::write(canary.join("secret"), "SKIFF-COPYUP-CANARY\n").unwrap();
    fs::set_permissions(&canary, fs::Permissions::from_mode(0o700)).unwrap();
    let image = "skiff.test/copyup/prom:1";
    let tar = archive(&work, image, |r| {
        let data = r.join("data");
        fs::create_dir(&data).unwrap();
        fs::write(data.join("seed"), "from the image\n").unwrap();
        fs::set_permissions(data.join("seed"), fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(data.join("seed"), Some(65534), Some(65534)).unwrap();
        fs::set_permissions(&data, fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&data, Some(65534), Some(65534)).unwrap();
        std::os::unix::fs::symlink(&canary, r.join("etclink")).unwrap();
        std::os::unix::fs::symlink("/", r.join("up")).unwrap();
    });
    a.skiff(&["load", tar.to_str().unwrap()]).ok();
    let svc = |name: &str, extra: &str| {
        format!("  {name}:\n    image: {image}\n    pull_policy: never\n    stop_grace_period: 1s\n{extra}")
    };
    let manifest = format!(
        "services:\n{}{}{}volumes: {{data: {{}}, raw: {{}}, evil: {{}}, evil2: {{}}}}\n",
        svc(
            "prom",
            "    user: \"65534\"\n    command: [\"sh\", \"-c\", \"echo written > /data/new && exec sleep 1000\"]\n    volumes: [\"data:/data\"]\n"
        ),
        svc(
            "raw",
            "    volumes:\n      - type: volume\n        source: raw\n        target: /data\n        volume: {nocopy: true}\n"
        ),
        svc("evil", &format!("    volumes: [\"evil:/etclink\", \"evil2:/up{}\"]\n", canary.display())),
    );
    a.write_manifest(&manifest);
    a.start();
    let vols = a.root().join("volumes");
    a.wait_status("prom and raw run", |st| all_running(st, "prom", 1) && all_running(st, "raw", 1));
    skiff_tests::wait_until("prom wrote into its volume", WAIT, || vols.join("data/new").exists());

    // The image's file, owner and mode; what the service wrote, as 65534.
    let data = vols.join("data");
    assert_eq!(names(&data), ["new", "seed"]);
    assert_eq!(fs::read_to_string(data.join("seed")).unwrap(), "from the image\n");
    let m = fs::metadata(&data).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (65534, 65534, 0o700), "the image directory's owner and mode");
    let s = fs::metadata(data.join("seed")).unwrap();
    assert_eq!((s.uid(), s.mode() & 0o7777), (65534, 0o600));
    assert_eq!(fs::metadata(data.join("new")).unwrap().uid(), 65534);
    // nocopy: empty.
    assert!(names(&vols.join("raw")).is_empty(), "nocopy leaves the volume empty");
    assert!(names(&vols).iter().all(|n| !n.starts_with('.')), "no temporary directory left: {:?}", names(&vols));

    // The hostile targets: the volumes exist (made empty), nothing of the host in them.
    skiff_tests::wait_until("the hostile volumes made", WAIT, || {
        vols.join("evil").exists() && vols.join("evil2").exists()
    });
    for v in ["evil", "evil2"] {
        assert!(names(&vols.join(v)).is_empty(), "{v}: {:?}", names(&vols.join(v)));
    }
    let log = a.log();
    assert!(log.contains("evil-1: warning: volume evil at /etclink was made empty"), "{log}");
    assert!(log.contains("evil-1: warning: volume evil2 at /up"), "{log}");

    // A second start does not copy again: what the service removed stays removed.
    a.down();
    fs::remove_file(data.join("seed")).unwrap();
    a.start();
    a.wait_status("prom runs again", |st| all_running(st, "prom", 1));
    assert_eq!(names(&data), ["new"], "not filled again");
    assert!(!fs::read_dir(&vols).unwrap().flatten().any(|e| {
        let p = e.path();
        p.is_dir() && fs::read_dir(&p).map(|rd| rd.flatten().any(|f| f.file_name() == "secret")).unwrap_or(false)
    }));
    a.down();
}
