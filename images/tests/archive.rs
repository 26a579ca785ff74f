//! Airgap import (`skiff_images::archive`), as root: OCI layouts from `hack/build-test-images`
//! (as a directory, and tarred plain, gzip and zstd), skopeo's oci-archive and docker-archive,
//! `docker save` archives crafted here (old layout with symlinked layers; Docker 25+ layout),
//! platform selection through nested indexes, sharing with a pulled copy (a real
//! docker-registry on 127.0.0.1), corrupt and truncated archives (nothing stored), and the
//! preload directory.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use skiff_images::archive::{self, LoadOptions, PreloadOutcome};
use skiff_images::manifest::Manifest;
use skiff_images::pull::NoProgress;
use skiff_images::{Client, ClientOptions, ImageRecord, Platform, PullOptions, Reference, Store};

const HACK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../hack/build-test-images");

fn ready(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped {test}: needs root (umoci, overlay whiteouts)");
        return false;
    }
    for tool in ["umoci", "skopeo", "jq", "tar", "gzip"] {
        if !Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().unwrap().status.success() {
            eprintln!("skipped {test}: {tool} is missing (hack/setup)");
            return false;
        }
    }
    true
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Scratch space of this test process, removed when it exits (each test uses its own
/// subdirectory).
fn scratch(name: &str) -> PathBuf {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    extern "C" fn remove_base() {
        if let Some(b) = BASE.get() {
            let _ = fs::remove_dir_all(b);
        }
    }
    let base = BASE.get_or_init(|| {
        let dir = tempfile::Builder::new().prefix("skiff-archive-test").tempdir().unwrap().keep();
        // SAFETY: registers a plain function to run at exit.
        unsafe { libc::atexit(remove_base) };
        dir
    });
    let p = base.join(name);
    let _ = fs::remove_dir_all(&p);
    fs::create_dir_all(&p).unwrap();
    p
}

/// The OCI layout of hack/build-test-images, built once per process.
fn layout() -> &'static Path {
    static L: OnceLock<PathBuf> = OnceLock::new();
    L.get_or_init(|| {
        let dir = scratch("layout-build").join("layout");
        run(Command::new(HACK).arg("--quiet").arg(&dir));
        dir
    })
}

fn policy() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let p = scratch("policy").join("policy.json");
        fs::write(&p, r#"{"default":[{"type":"insecureAcceptAnything"}]}"#).unwrap();
        p
    })
}

fn skopeo(args: &[&str]) {
    let mut c = Command::new("skopeo");
    c.arg("--policy").arg(policy()).arg("copy").arg("-q").args(args);
    run(&mut c);
}

/// `tar` of a directory's content (entries `./...`, sorted).
fn tar_dir(dir: &Path, out: &Path) {
    run(Command::new("tar").arg("--sort=name").arg("-C").arg(dir).arg("-cf").arg(out).arg("."));
}

fn gzip(src: &Path, out: &Path) {
    let data = fs::read(src).unwrap();
    let mut e = flate2::write::GzEncoder::new(fs::File::create(out).unwrap(), flate2::Compression::fast());
    e.write_all(&data).unwrap();
    e.finish().unwrap();
}

fn zstd_file(src: &Path, out: &Path) {
    let data = fs::read(src).unwrap();
    fs::write(out, zstd::stream::encode_all(&data[..], 3).unwrap()).unwrap();
}

fn store(dir: &Path) -> Store {
    Store::open(dir.join("root")).unwrap()
}

fn host() -> Platform {
    Platform::host()
}

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", skiff_images::digest::hex(&Sha256::digest(b)))
}

/// The digest index.json gives a tag of the layout.
fn tag_digest(layout: &Path, tag: &str) -> String {
    let idx: serde_json::Value = serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    idx["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no tag {tag}"))["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

fn blob_json(layout: &Path, digest: &str) -> serde_json::Value {
    let hex = digest.strip_prefix("sha256:").unwrap();
    serde_json::from_slice(&fs::read(layout.join("blobs/sha256").join(hex)).unwrap()).unwrap()
}

fn refs(images: &[ImageRecord]) -> BTreeSet<(String, String)> {
    images.iter().map(|r| (r.reference.clone(), r.digest.to_string())).collect()
}

fn count(dir: &Path) -> usize {
    fs::read_dir(dir).map(|rd| rd.count()).unwrap_or(0)
}

/// Nothing of a load is left: no record, no blob, no layer, no spool.
fn assert_empty(s: &Store) {
    let (images, bad) = s.images().unwrap();
    assert!(images.is_empty() && bad.is_empty(), "records were written: {images:?} {bad:?}");
    assert_eq!(count(&s.root().join("blobs/sha256")), 0, "blobs were stored");
    assert_eq!(count(&s.root().join("layers/sha256")), 0, "layers were stored");
    assert_no_spool(s);
}

fn assert_no_spool(s: &Store) {
    let left: Vec<String> = fs::read_dir(s.tmp())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "left in tmp/: {left:?}");
}

/// Flips a byte `at` bytes into the data of the tar entry whose name ends with `suffix`.
fn flip_in_tar(tar_path: &Path, suffix: &str, at: u64) {
    let pos = {
        let mut a = tar::Archive::new(fs::File::open(tar_path).unwrap());
        let mut found = None;
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            if e.path().unwrap().to_string_lossy().ends_with(suffix) {
                assert!(e.size() > at, "entry too small");
                found = Some(e.raw_file_position() + at);
                break;
            }
        }
        found.unwrap_or_else(|| panic!("no entry {suffix} in {}", tar_path.display()))
    };
    flip_at(tar_path, pos);
}

fn flip_at(path: &Path, pos: u64) {
    let mut data = fs::read(path).unwrap();
    data[pos as usize] ^= 0x55;
    fs::write(path, data).unwrap();
}

fn err_of(r: skiff_images::Result<impl std::fmt::Debug>) -> String {
    let e = r.expect_err("the load should fail").to_string();
    assert!(!e.contains('\n'), "one line: {e}");
    e
}

// ---- OCI layouts ------------------------------------------------------------------------------

const LAYOUT_TAGS: [&str; 5] = ["busybox-oci", "layers", "multiarch", "multiarch-arm64", "multiarch-armv7"];

fn canon(tag: &str) -> String {
    Reference::parse(tag).unwrap().to_string()
}

#[test]
fn oci_layout_directory() {
    if !ready("oci_layout_directory") {
        return;
    }
    let l = layout();
    let t = scratch("layout-dir");
    let s = store(&t);
    // The spool of a crashed load is cleaned up by the next one.
    let stale = s.tmp().join("load-999999-1");
    fs::create_dir_all(stale.join("layer-x")).unwrap();
    fs::write(stale.join("f1"), b"junk").unwrap();

    let loaded = archive::load_with(&s, l, &LoadOptions::new(host())).unwrap();
    assert_eq!(loaded.format, "OCI layout directory");
    let got: BTreeSet<String> = loaded.images.iter().map(|r| r.reference.clone()).collect();
    let want: BTreeSet<String> = LAYOUT_TAGS.iter().map(|t| canon(t)).collect();
    assert_eq!(got, want);
    assert!(!stale.exists(), "the stale spool was not removed");
    assert_no_spool(&s);

    let rec = |tag: &str| s.image(&canon(tag)).unwrap().unwrap();
    let bb = rec("busybox-oci");
    assert_eq!(bb.digest.to_string(), tag_digest(l, "busybox-oci"));
    assert_eq!(bb.index_digest, None);
    assert_eq!(bb.platform, host().to_string());
    assert_eq!(bb.layers.len(), 1);
    let layer = s.layer_path(&bb.layers[0].diff_id);
    assert!(layer.join("bin/busybox").is_file() && layer.join("srv/hello.txt").is_file());
    for d in bb.blobs() {
        assert!(s.has_blob(d), "blob {d} missing");
    }
    let size: u64 = bb.blobs().map(|d| fs::metadata(s.blob_path(d)).unwrap().len()).sum();
    assert_eq!(bb.size, size);

    // The multi-arch index gives this platform's manifest, recorded through the index.
    let ma = rec("multiarch");
    assert_eq!(ma.digest, bb.digest);
    assert_eq!(ma.index_digest.as_ref().map(|d| d.to_string()), Some(tag_digest(l, "multiarch")));
    assert!(s.has_blob(ma.index_digest.as_ref().unwrap()));

    // Five layers, whiteouts as overlay char devices.
    let ly = rec("layers");
    assert_eq!(ly.layers.len(), 5);
    assert!(ly.layers.iter().all(|l| s.has_layer(&l.diff_id)));
    assert_eq!(ly.layers[0].diff_id, bb.layers[0].diff_id, "the busybox layer is shared");
    use std::os::unix::fs::FileTypeExt;
    let wh = fs::symlink_metadata(s.layer_path(&ly.layers[2].diff_id).join("fixtures/delete-me.txt")).unwrap();
    assert!(wh.file_type().is_char_device());

    // The single-platform arm images are loaded, with a warning.
    assert_eq!(rec("multiarch-arm64").platform, "linux/arm64");
    assert!(loaded.warnings.iter().any(|w| w.contains("linux/arm64 image")), "{:?}", loaded.warnings);
    assert!(loaded.warnings.iter().any(|w| w.contains("linux/arm/v7 image")), "{:?}", loaded.warnings);

    // Loading again changes nothing but the records' time.
    let layers_before = count(&s.root().join("layers/sha256"));
    let blobs_before = count(&s.root().join("blobs/sha256"));
    let again = archive::load(&s, l, &host()).unwrap();
    assert_eq!(refs(&again), refs(&loaded.images));
    assert_eq!(count(&s.root().join("layers/sha256")), layers_before);
    assert_eq!(count(&s.root().join("blobs/sha256")), blobs_before);
    assert_no_spool(&s);
}

#[test]
fn oci_archives_plain_gzip_zstd() {
    if !ready("oci_archives_plain_gzip_zstd") {
        return;
    }
    let l = layout();
    let t = scratch("oci-archives");
    let from_dir = archive::load(&store(&t.join("dir")), l, &host()).unwrap();
    let tar = t.join("layout.tar");
    tar_dir(l, &tar);
    gzip(&tar, &t.join("layout.tar.gz"));
    zstd_file(&tar, &t.join("layout.tar.zst"));
    // The name does not matter, the magic does.
    fs::copy(t.join("layout.tar.gz"), t.join("images.bin")).unwrap();
    for (file, format) in [
        ("layout.tar", "OCI archive"),
        ("layout.tar.gz", "OCI archive (gzip)"),
        ("layout.tar.zst", "OCI archive (zstd)"),
        ("images.bin", "OCI archive (gzip)"),
    ] {
        let s = store(&t.join(format!("s-{file}")));
        let loaded = archive::load_with(&s, &t.join(file), &LoadOptions::new(host())).unwrap();
        assert_eq!(loaded.format, format);
        assert_eq!(refs(&loaded.images), refs(&from_dir), "{file}");
        for r in &loaded.images {
            assert!(r.layers.iter().all(|l| s.has_layer(&l.diff_id) && s.has_blob(&l.digest)));
        }
        assert_no_spool(&s);
    }
}

#[test]
fn base_name_for_tag_only_and_unnamed_images() {
    if !ready("base_name_for_tag_only_and_unnamed_images") {
        return;
    }
    let l = layout();
    let t = scratch("base-name");
    let s = store(&t);
    let opts = LoadOptions { name: Some("example.com/base".into()), ..LoadOptions::new(host()) };
    let loaded = archive::load_with(&s, l, &opts).unwrap();
    let got: BTreeSet<String> = loaded.images.iter().map(|r| r.reference.clone()).collect();
    let want: BTreeSet<String> = LAYOUT_TAGS.iter().map(|t| format!("example.com/base:{t}")).collect();
    assert_eq!(got, want);

    // An index.json entry without a name: skipped with a warning, or named by --name.
    let copy = t.join("unnamed");
    run(Command::new("cp").arg("-a").arg(l).arg(&copy));
    let d = tag_digest(l, "busybox-oci");
    fs::write(
        copy.join("index.json"),
        format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","size":349}}]}}"#),
    )
    .unwrap();
    let s2 = store(&t.join("s2"));
    let e = err_of(archive::load(&s2, &copy, &host()));
    assert!(e.contains("holds no named image") && e.contains("--name"), "{e}");
    assert_empty(&s2);
    let opts = LoadOptions { name: Some("example.com/named:v2".into()), ..LoadOptions::new(host()) };
    let loaded = archive::load_with(&s2, &copy, &opts).unwrap();
    assert_eq!(loaded.images[0].reference, "example.com/named:v2");
    assert_eq!(loaded.images[0].digest.to_string(), d);
}

// ---- platforms --------------------------------------------------------------------------------

#[test]
fn platform_selection_and_nested_indexes() {
    if !ready("platform_selection_and_nested_indexes") {
        return;
    }
    let l = layout();
    let t = scratch("platforms");
    let ma = tag_digest(l, "multiarch");
    let ma_size = fs::metadata(l.join("blobs/sha256").join(&ma[7..])).unwrap().len();
    for (p, tag, arch) in
        [("linux/arm64", "multiarch-arm64", "arm64\n"), ("linux/arm/v7", "multiarch-armv7", "arm/v7\n")]
    {
        let s = store(&t.join(tag));
        let platform = Platform::parse(p).unwrap();
        archive::load(&s, l, &platform).unwrap();
        let r = s.image(&canon("multiarch")).unwrap().unwrap();
        assert_eq!(r.platform, p);
        assert_eq!(r.digest.to_string(), tag_digest(l, tag));
        assert_eq!(r.index_digest.as_ref().unwrap().to_string(), ma);
        assert_eq!(fs::read_to_string(s.layer_path(&r.layers[0].diff_id).join("arch")).unwrap(), arch);
    }

    // No image for the platform: a clear error, nothing stored.
    let s = store(&t.join("riscv"));
    let e = err_of(archive::load(&s, l, &Platform::parse("linux/riscv64").unwrap()));
    assert!(e.contains("has no linux/riscv64 image of docker.io/library/multiarch:latest"), "{e}");
    assert!(e.contains("linux/arm64") && e.contains("linux/amd64"), "{e}");
    assert_empty(&s);

    // An index of the index (entries without a platform), named only at the top.
    let nested = t.join("nested");
    run(Command::new("cp").arg("-a").arg(l).arg(&nested));
    let outer = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"{ma}","size":{ma_size}}}]}}"#
    );
    let outer_d = sha(outer.as_bytes());
    fs::write(nested.join("blobs/sha256").join(&outer_d[7..]), &outer).unwrap();
    fs::write(
        nested.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"{outer_d}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"example.com/nested:1"}}}}]}}"#,
            outer.len()
        ),
    )
    .unwrap();
    let s = store(&t.join("nested-store"));
    let loaded = archive::load(&s, &nested, &Platform::parse("linux/arm/v7").unwrap()).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].reference, "example.com/nested:1");
    assert_eq!(loaded[0].digest.to_string(), tag_digest(l, "multiarch-armv7"));
    assert_eq!(loaded[0].index_digest.as_ref().unwrap().to_string(), outer_d);

    // An archive that lists platforms but lacks their content (saved for one platform only):
    // the best of what is there (an arm64 host runs arm/v7, as in containerd), else a clear
    // error.
    let partial = t.join("partial");
    run(Command::new("cp").arg("-a").arg(l).arg(&partial));
    let arm64 = tag_digest(l, "multiarch-arm64");
    fs::remove_file(partial.join("blobs/sha256").join(&arm64[7..])).unwrap();
    let ma_entry = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"{ma}","size":{ma_size},"annotations":{{"org.opencontainers.image.ref.name":"example.com/ma:1"}}}}]}}"#
    );
    fs::write(partial.join("index.json"), ma_entry).unwrap();
    let tar = t.join("partial.tar");
    tar_dir(&partial, &tar);
    let s = store(&t.join("partial-store"));
    let got = archive::load(&s, &tar, &Platform::parse("linux/arm64").unwrap()).unwrap();
    assert_eq!(got[0].digest.to_string(), tag_digest(l, "multiarch-armv7"));
    assert_eq!(got[0].platform, "linux/arm/v7");
    let armv7 = tag_digest(l, "multiarch-armv7");
    fs::remove_file(partial.join("blobs/sha256").join(&armv7[7..])).unwrap();
    let s = store(&t.join("partial-store2"));
    let e = err_of(archive::load(&s, &partial, &Platform::parse("linux/arm64").unwrap()));
    assert!(e.contains("the archive holds: linux/amd64; listed but not included: linux/arm64, linux/arm/v7"), "{e}");
    assert_empty(&s);
    let got = archive::load(&s, &partial, &Platform::parse("linux/amd64").unwrap()).unwrap();
    assert_eq!(got[0].digest.to_string(), tag_digest(l, "busybox-oci"));
}

// ---- skopeo archives, docker save ----------------------------------------------------------

#[test]
fn skopeo_oci_and_docker_archives_share_layers() {
    if !ready("skopeo_oci_and_docker_archives_share_layers") {
        return;
    }
    let l = layout();
    let t = scratch("skopeo");
    let src = format!("oci:{}:busybox-oci", l.display());
    let oa = t.join("bb-oci.tar");
    let da = t.join("bb-docker.tar");
    skopeo(&[&src, &format!("oci-archive:{}:example.com/skiff/bb:oci", oa.display())]);
    skopeo(&[
        "--additional-tag",
        "example.com/skiff/bb:extra",
        &src,
        &format!("docker-archive:{}:example.com/skiff/bb:docker", da.display()),
    ]);
    let s = store(&t);
    let oci = archive::load_with(&s, &oa, &LoadOptions::new(host())).unwrap();
    assert_eq!(oci.format, "OCI archive");
    assert_eq!(oci.images.len(), 1);
    let o = &oci.images[0];
    assert_eq!(o.reference, "example.com/skiff/bb:oci");
    assert_eq!(o.digest.to_string(), tag_digest(l, "busybox-oci"));
    assert_eq!(count(&s.root().join("layers/sha256")), 1);

    let docker = archive::load_with(&s, &da, &LoadOptions::new(host())).unwrap();
    assert_eq!(docker.format, "docker save archive");
    let names: Vec<&str> = docker.images.iter().map(|r| r.reference.as_str()).collect();
    assert_eq!(names, ["example.com/skiff/bb:docker", "example.com/skiff/bb:extra"]);
    let d = &docker.images[0];
    assert_eq!(d.digest, docker.images[1].digest);
    assert_eq!(d.config, o.config, "the same image config");
    assert_eq!(d.layers[0].diff_id, o.layers[0].diff_id);
    assert_eq!(d.layers[0].digest, d.layers[0].diff_id, "an uncompressed layer blob");
    assert_eq!(d.layers[0].media_type, "application/vnd.docker.image.rootfs.diff.tar");
    assert_eq!(count(&s.root().join("layers/sha256")), 1, "the unpacked layer is shared");
    // The synthesized manifest is in the store and describes the image.
    let m = s.read_blob(&d.digest, 1 << 20).unwrap();
    match Manifest::parse(&m, None, "m").unwrap() {
        Manifest::Image { config, layers, media_type } => {
            assert_eq!(media_type, skiff_images::manifest::DOCKER_MANIFEST);
            assert_eq!(config.digest, d.config);
            assert_eq!(layers[0].digest, d.layers[0].digest);
        }
        Manifest::Index { .. } => panic!("an index"),
    }
    // Deterministic: the same archive gives the same digest.
    let again = archive::load(&s, &da, &host()).unwrap();
    assert_eq!(again[0].digest, d.digest);

    // A 5-layer image through docker-archive.
    let dl = t.join("layers-docker.tar");
    skopeo(&[
        &format!("oci:{}:layers", l.display()),
        &format!("docker-archive:{}:example.com/skiff/layers:1", dl.display()),
    ]);
    let s2 = store(&t.join("s2"));
    let r = archive::load(&s2, &dl, &host()).unwrap();
    assert_eq!(r[0].layers.len(), 5);
    assert!(s2.layer_path(&r[0].layers[1].diff_id).join("fixtures/keep.txt").is_file());
    assert_no_spool(&s2);
}

/// A layer tar built with the tar crate.
fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_mtime(1_000_000_000);
        h.set_size(data.len() as u64);
        if name.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
        }
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

enum Ent<'a> {
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
}

/// An outer archive (docker save) with entries in the given order.
fn archive_tar(entries: &[Ent]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(0);
        match e {
            Ent::File(name, data) => {
                h.set_mode(0o444);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, name, *data).unwrap();
            }
            Ent::Symlink(name, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, name, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn config_json(diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": host().architecture, "os": "linux", "created": "2000-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

struct Crafted {
    tar: Vec<u8>,
    l1: Vec<u8>,
    l2: Vec<u8>,
    l2gz: Vec<u8>,
}

/// The old `docker save` layout, entries out of order, a layer as a symlink that comes before
/// its target, a gzip layer, `<id>/json` and `VERSION` files, `repositories`.
fn crafted_docker_save(tags: &str, l2_override: Option<&[u8]>) -> Crafted {
    let l1 = layer_tar(&[("etc/", b""), ("etc/hello", b"hello\n"), ("etc/gone", b"x")]);
    let l2 = layer_tar(&[("etc/second", b"second\n"), ("etc/.wh.gone", b"")]);
    let l2gz = gz(l2_override.unwrap_or(&l2));
    let cfg = config_json(&[sha(&l1), sha(&l2)]);
    let cfg_name = format!("{}.json", &sha(&cfg)[7..]);
    let (id1, id2, id3) = ("1".repeat(64), "2".repeat(64), "3".repeat(64));
    let manifest =
        format!(r#"[{{"Config":"{cfg_name}","RepoTags":{tags},"Layers":["{id3}/layer.tar","{id2}/layer.tar"]}}]"#);
    let tar = archive_tar(&[
        Ent::File("repositories", b"{}"),
        Ent::File(&format!("{id2}/layer.tar"), &l2gz),
        Ent::Symlink(&format!("{id3}/layer.tar"), &format!("../{id1}/layer.tar")),
        Ent::File("manifest.json", manifest.as_bytes()),
        Ent::File(&format!("{id1}/VERSION"), b"1.0"),
        Ent::File(&format!("{id1}/json"), b"{}"),
        Ent::File(&format!("{id1}/layer.tar"), &l1),
        Ent::File(&cfg_name, &cfg),
    ]);
    Crafted { tar, l1, l2, l2gz }
}

#[test]
fn docker_save_old_layout_crafted() {
    if !ready("docker_save_old_layout_crafted") {
        return;
    }
    let t = scratch("docker-save");
    let c = crafted_docker_save(r#"["example.com/crafted:1","crafted"]"#, None);
    let file = t.join("save.tar");
    fs::write(&file, &c.tar).unwrap();
    let s = store(&t);
    let loaded = archive::load_with(&s, &file, &LoadOptions::new(host())).unwrap();
    assert_eq!(loaded.format, "docker save archive");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let names: Vec<&str> = loaded.images.iter().map(|r| r.reference.as_str()).collect();
    assert_eq!(names, ["example.com/crafted:1", "docker.io/library/crafted:latest"]);
    let r = &loaded.images[0];
    assert_eq!(r.layers[0].digest.to_string(), sha(&c.l1));
    assert_eq!(r.layers[0].diff_id.to_string(), sha(&c.l1));
    assert_eq!(r.layers[1].digest.to_string(), sha(&c.l2gz));
    assert_eq!(r.layers[1].diff_id.to_string(), sha(&c.l2));
    assert_eq!(r.layers[1].media_type, "application/vnd.docker.image.rootfs.diff.tar.gzip");
    assert_eq!(r.created.as_deref(), Some("2000-01-01T00:00:00Z"));
    assert_eq!(fs::read(s.layer_path(&r.layers[0].diff_id).join("etc/hello")).unwrap(), b"hello\n");
    assert_eq!(fs::read(s.layer_path(&r.layers[1].diff_id).join("etc/second")).unwrap(), b"second\n");
    for d in r.blobs() {
        assert!(s.has_blob(d));
    }
    // Compressed outer archives too.
    let s2 = store(&t.join("gz"));
    fs::write(t.join("save.tar.gz"), gz(&c.tar)).unwrap();
    let again = archive::load_with(&s2, &t.join("save.tar.gz"), &LoadOptions::new(host())).unwrap();
    assert_eq!(again.format, "docker save archive (gzip)");
    assert_eq!(refs(&again.images), refs(&loaded.images));

    // Untagged (docker save IMAGE_ID): skipped with a warning, or named by --name.
    let c = crafted_docker_save("null", None);
    fs::write(&file, &c.tar).unwrap();
    let s3 = store(&t.join("untagged"));
    let e = err_of(archive::load(&s3, &file, &host()));
    assert!(e.contains("holds no named image"), "{e}");
    assert_empty(&s3);
    let opts = LoadOptions { name: Some("local/app:7".into()), ..LoadOptions::new(host()) };
    let named = archive::load_with(&s3, &file, &opts).unwrap();
    assert_eq!(named.images[0].reference, "docker.io/local/app:7");
}

#[test]
fn docker25_archive_is_read_as_oci() {
    if !ready("docker25_archive_is_read_as_oci") {
        return;
    }
    let t = scratch("docker25");
    let l1 = layer_tar(&[("hello.txt", b"hi\n")]);
    let cfg = config_json(&[sha(&l1)]);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}]}}"#,
        sha(&cfg),
        cfg.len(),
        sha(&l1),
        l1.len()
    );
    let md = sha(manifest.as_bytes());
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{md}","size":{},"annotations":{{"io.containerd.image.name":"docker.io/library/crafted25:latest","org.opencontainers.image.ref.name":"latest"}}}}]}}"#,
        manifest.len()
    );
    let dj = format!(
        r#"[{{"Config":"blobs/sha256/{}","RepoTags":["crafted25:latest"],"Layers":["blobs/sha256/{}"]}}]"#,
        &sha(&cfg)[7..],
        &sha(&l1)[7..]
    );
    let b = |d: &str| format!("blobs/sha256/{}", &d[7..]);
    let tar = archive_tar(&[
        Ent::File(&b(&sha(&l1)), &l1),
        Ent::File(&b(&sha(&cfg)), &cfg),
        Ent::File(&b(&md), manifest.as_bytes()),
        Ent::File("index.json", index.as_bytes()),
        Ent::File("manifest.json", dj.as_bytes()),
        Ent::File("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        Ent::File("repositories", b"{}"),
    ]);
    let file = t.join("d25.tar");
    fs::write(&file, &tar).unwrap();
    let s = store(&t);
    let loaded = archive::load_with(&s, &file, &LoadOptions::new(host())).unwrap();
    assert_eq!(loaded.format, "OCI archive");
    assert_eq!(loaded.images.len(), 1);
    assert_eq!(loaded.images[0].reference, "docker.io/library/crafted25:latest");
    assert_eq!(loaded.images[0].digest.to_string(), md, "the archive's own manifest, not a synthesized one");
    assert_eq!(fs::read(s.layer_path(&loaded.images[0].layers[0].diff_id).join("hello.txt")).unwrap(), b"hi\n");
}

// ---- sharing with a pulled copy -------------------------------------------------------------

/// Debian's docker-registry on a free 127.0.0.1 port, killed on drop.
struct Registry {
    child: Child,
    port: u16,
}

impl Registry {
    fn start(dir: &Path) -> Option<Registry> {
        let bin = Path::new("/usr/bin/docker-registry");
        if !bin.is_file() {
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = dir.join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: skiff-archive-test\n\
                 health:\n  storagedriver:\n    enabled: false\n",
                dir.join("storage").display()
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("registry.log")).unwrap())
            .spawn()
            .unwrap();
        let reg = Registry { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = c.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut buf = [0u8; 12];
                if c.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/") {
                    return Some(reg);
                }
            }
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn loaded_images_share_blobs_and_layers_with_a_pulled_copy() {
    if !ready("loaded_images_share_blobs_and_layers_with_a_pulled_copy") {
        return;
    }
    let l = layout();
    let t = scratch("pulled");
    let Some(reg) = Registry::start(&t) else {
        eprintln!("skipped: docker-registry is missing (hack/setup)");
        return;
    };
    let host_port = format!("127.0.0.1:{}", reg.port);
    run(Command::new(HACK).args(["--quiet", "--no-build", "--push", &host_port]).arg(l));
    let s = store(&t);
    let client = Arc::new(Client::new(ClientOptions::default()).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let reference = Reference::parse(&format!("{host_port}/skiff-test/busybox:oci")).unwrap();
    let pulled =
        rt.block_on(skiff_images::pull(&s, client, &reference, &PullOptions::default(), Arc::new(NoProgress))).unwrap();
    let (blobs, layers) = (count(&s.root().join("blobs/sha256")), count(&s.root().join("layers/sha256")));

    // The same image from an OCI archive: same manifest, same blobs, same layer.
    let oa = t.join("bb.tar");
    skopeo(&[&format!("oci:{}:busybox-oci", l.display()), &format!("oci-archive:{}:example.com/bb:1", oa.display())]);
    let r = archive::load(&s, &oa, &host()).unwrap();
    assert_eq!(r[0].digest, pulled.record.digest);
    assert_eq!(r[0].layers, pulled.record.layers);
    assert_eq!(count(&s.root().join("blobs/sha256")), blobs, "no new blob");
    assert_eq!(count(&s.root().join("layers/sha256")), layers, "no new layer");

    // From a docker-archive: the uncompressed blob is new (plus a synthesized manifest), the
    // unpacked layer is the pulled one.
    let da = t.join("bb-docker.tar");
    skopeo(&[
        &format!("oci:{}:busybox-oci", l.display()),
        &format!("docker-archive:{}:example.com/bb:2", da.display()),
    ]);
    let r = archive::load(&s, &da, &host()).unwrap();
    assert_eq!(r[0].layers[0].diff_id, pulled.record.layers[0].diff_id);
    assert_eq!(r[0].config, pulled.record.config);
    assert_eq!(count(&s.root().join("layers/sha256")), layers, "the unpacked layer is shared");
    assert_eq!(count(&s.root().join("blobs/sha256")), blobs + 2);
    drop(reg);
}

// ---- corrupt and truncated archives ------------------------------------------------------------

#[test]
fn corrupt_archives_are_rejected_and_store_nothing() {
    if !ready("corrupt_archives_are_rejected_and_store_nothing") {
        return;
    }
    let l = layout();
    let t = scratch("corrupt");
    let bb_layer = blob_json(l, &tag_digest(l, "busybox-oci"))["layers"][0]["digest"].as_str().unwrap().to_string();

    // A flipped byte in a layer blob of an OCI archive.
    let tar = t.join("layout.tar");
    tar_dir(l, &tar);
    let good = fs::read(&tar).unwrap();
    flip_in_tar(&tar, &bb_layer[7..], 5000);
    let s = store(&t.join("a"));
    let e = err_of(archive::load(&s, &tar, &host()));
    assert!(e.contains("digest mismatch") && e.contains(&bb_layer[7..]) && e.contains("layout.tar"), "{e}");
    assert!(e.contains("corrupt"), "{e}");
    assert_empty(&s);

    // The same, gzip-compressed: the flipped byte is in the compressed stream.
    let gzf = t.join("layout.tar.gz");
    gzip(&t.join("layout.tar"), &gzf);
    let s = store(&t.join("b"));
    let e = err_of(archive::load(&s, &gzf, &host()));
    assert!(e.contains("digest mismatch"), "{e}");
    assert_empty(&s);
    fs::write(&tar, &good).unwrap();
    gzip(&tar, &gzf);
    let len = fs::metadata(&gzf).unwrap().len();
    flip_at(&gzf, len / 2);
    let e = err_of(archive::load(&s, &gzf, &host()));
    assert!(e.contains("corrupt"), "{e}");
    assert_empty(&s);

    // A layout directory with a corrupt blob.
    let dir = t.join("layout-copy");
    run(Command::new("cp").arg("-a").arg(l).arg(&dir));
    flip_at(&dir.join("blobs/sha256").join(&bb_layer[7..]), 100);
    let s = store(&t.join("c"));
    let e = err_of(archive::load(&s, &dir, &host()));
    assert!(e.contains("digest mismatch") && e.contains(&bb_layer[7..]), "{e}");
    assert_empty(&s);

    // A docker-archive layer (uncompressed, named by its digest) with a flipped byte.
    let da = t.join("docker.tar");
    skopeo(&[
        &format!("oci:{}:busybox-oci", l.display()),
        &format!("docker-archive:{}:example.com/bb:1", da.display()),
    ]);
    let config = blob_json(l, &tag_digest(l, "busybox-oci"))["config"]["digest"].as_str().unwrap().to_string();
    let diff_id = blob_json(l, &config)["rootfs"]["diff_ids"][0].as_str().unwrap().to_string();
    flip_in_tar(&da, &format!("{}.tar", &diff_id[7..]), 70_000);
    let s = store(&t.join("d"));
    let e = err_of(archive::load(&s, &da, &host()));
    assert!(e.contains("digest mismatch"), "{e}");
    assert_empty(&s);

    // A crafted docker save whose second (gzip) layer is not the one the config lists: found
    // only once it is decompressed, after the first layer was unpacked. Still nothing stored.
    let other = layer_tar(&[("etc/second", b"tampered\n")]);
    let c = crafted_docker_save(r#"["example.com/crafted:1"]"#, Some(&other));
    let file = t.join("crafted.tar");
    fs::write(&file, &c.tar).unwrap();
    let s = store(&t.join("e"));
    let e = err_of(archive::load(&s, &file, &host()));
    assert!(e.contains("digest mismatch of the uncompressed layer") && e.contains(&sha(&c.l2)), "{e}");
    assert!(e.contains(&sha(&other)), "{e}");
    assert_empty(&s);

    // The same tampered layer when the store already has the real one unpacked: the new blob
    // is still checked against the diff_id (decompressed, not unpacked), and the record of the
    // good image stays as it was.
    let good = crafted_docker_save(r#"["example.com/crafted:1"]"#, None);
    fs::write(&file, &good.tar).unwrap();
    let before = archive::load(&s, &file, &host()).unwrap();
    let blobs = count(&s.root().join("blobs/sha256"));
    fs::write(&file, &c.tar).unwrap();
    let e = err_of(archive::load(&s, &file, &host()));
    assert!(e.contains("digest mismatch of the uncompressed layer") && e.contains(&sha(&other)), "{e}");
    assert_eq!(s.image("example.com/crafted:1").unwrap().unwrap().digest, before[0].digest);
    assert_eq!(count(&s.root().join("blobs/sha256")), blobs);
    assert!(!s.has_blob(&skiff_images::Digest::parse(&sha(&c.l2gz)).unwrap()));
    assert_no_spool(&s);
}

#[test]
fn truncated_and_foreign_files_are_rejected() {
    if !ready("truncated_and_foreign_files_are_rejected") {
        return;
    }
    let l = layout();
    let t = scratch("truncated");
    let tar = t.join("layout.tar");
    tar_dir(l, &tar);
    let data = fs::read(&tar).unwrap();
    let s = store(&t);

    // Cut in the middle of an entry (the biggest: the busybox layer), and in a header.
    let (big_data, big_header) = {
        let mut a = tar::Archive::new(&data[..]);
        let mut big = (0, 0, 0);
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            if e.size() > big.0 {
                big = (e.size(), e.raw_file_position(), e.raw_header_position());
            }
        }
        (big.1 as usize, big.2 as usize)
    };
    let cut = t.join("cut.tar");
    fs::write(&cut, &data[..big_data + 1000]).unwrap();
    let e = err_of(archive::load(&s, &cut, &host()));
    assert!(e.contains("truncated") && e.contains("cut.tar") && e.contains("copy it again"), "{e}");
    assert!(e.contains("in the entry blobs/sha256/") && e.contains("ends after 1000 of its"), "{e}");
    assert_empty(&s);
    fs::write(&cut, &data[..big_header + 100]).unwrap();
    let e = err_of(archive::load(&s, &cut, &host()));
    assert!(e.contains("truncated"), "{e}");
    assert_empty(&s);

    // Cut exactly between two entries (before the last one's header): no end-of-archive marker.
    let last_header = {
        let mut a = tar::Archive::new(&data[..]);
        let mut last = 0;
        for e in a.entries().unwrap() {
            last = e.unwrap().raw_header_position();
        }
        last as usize
    };
    fs::write(&cut, &data[..last_header]).unwrap();
    let e = err_of(archive::load(&s, &cut, &host()));
    assert!(e.contains("truncated") && e.contains("end-of-archive marker"), "{e}");
    assert_empty(&s);

    // A cut gzip and zstd stream.
    for (name, packed) in [("cut.tar.gz", gz(&data)), ("cut.tar.zst", zstd::stream::encode_all(&data[..], 3).unwrap())]
    {
        let f = t.join(name);
        fs::write(&f, &packed[..packed.len() * 2 / 3]).unwrap();
        let e = err_of(archive::load(&s, &f, &host()));
        assert!(e.contains("truncated"), "{name}: {e}");
        assert_empty(&s);
    }

    // Not archives at all.
    for (name, content, expect) in [
        ("empty.tar", &b""[..], "is not a tar archive"),
        ("text.tar", &b"hello, this is not a tar archive at all\n"[..], "is not a tar archive"),
        ("x.tar.xz", &[0xfd, b'7', b'z', b'X', b'Z', 0, 0, 0][..], "xz-compressed"),
    ] {
        let f = t.join(name);
        fs::write(&f, content).unwrap();
        let e = err_of(archive::load(&s, &f, &host()));
        assert!(e.contains(expect) && e.contains(name), "{name}: {e}");
    }
    // A tar without image metadata.
    let plain = archive_tar(&[Ent::File("hello.txt", b"hi")]);
    fs::write(t.join("plain.tar"), plain).unwrap();
    let e = err_of(archive::load(&s, &t.join("plain.tar"), &host()));
    assert!(e.contains("is not an image archive"), "{e}");
    let e = err_of(archive::load(&s, &t.join("missing.tar"), &host()));
    assert!(e.contains("missing.tar"), "{e}");
    assert_empty(&s);
}

// ---- killed loads ------------------------------------------------------------------------------

/// Run by [`a_killed_load_leaves_a_consistent_store`] in a child process (this test binary
/// again): loads `$SKIFF_ARCHIVE_CHILD_FILE` into `$SKIFF_ARCHIVE_CHILD_ROOT`. Does nothing in
/// a normal test run.
#[test]
fn child_load() {
    let (Ok(file), Ok(root)) = (std::env::var("SKIFF_ARCHIVE_CHILD_FILE"), std::env::var("SKIFF_ARCHIVE_CHILD_ROOT"))
    else {
        return;
    };
    let s = Store::open(root).unwrap();
    archive::load(&s, Path::new(&file), &host()).unwrap();
}

#[test]
fn a_killed_load_leaves_a_consistent_store() {
    if !ready("a_killed_load_leaves_a_consistent_store") {
        return;
    }
    let l = layout();
    let t = scratch("killed");
    let tar = t.join("layout.tar.gz");
    tar_dir(l, &t.join("layout.tar"));
    gzip(&t.join("layout.tar"), &tar);
    let exe = std::env::current_exe().unwrap();
    let mut killed_mid = 0;
    for (i, delay_ms) in [5u64, 20, 40, 80, 120, 200, 400].into_iter().enumerate() {
        let root = t.join(format!("root{i}"));
        let mut child = Command::new(&exe)
            .args(["--exact", "child_load", "--test-threads=1"])
            .env("SKIFF_ARCHIVE_CHILD_FILE", &tar)
            .env("SKIFF_ARCHIVE_CHILD_ROOT", &root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let finished = child.try_wait().unwrap().is_some();
        let _ = child.kill();
        child.wait().unwrap();
        let s = Store::open(&root).unwrap();
        // Whatever was recorded is complete.
        let (images, bad) = s.images().unwrap();
        assert!(bad.is_empty(), "{bad:?}");
        if !finished && images.is_empty() {
            killed_mid += 1;
        }
        for r in &images {
            assert!(r.blobs().all(|d| s.has_blob(d)) && r.layers.iter().all(|l| s.has_layer(&l.diff_id)));
        }
        // The next load completes and removes the killed one's spool.
        let loaded = archive::load(&s, &tar, &host()).unwrap();
        assert_eq!(loaded.len(), LAYOUT_TAGS.len());
        assert_no_spool(&s);
    }
    assert!(killed_mid > 0, "no load was killed before its records: use longer archives or shorter delays");
}

// ---- preload ----------------------------------------------------------------------------------

#[test]
fn preload_dir_imports_all_and_skips_repeats() {
    if !ready("preload_dir_imports_all_and_skips_repeats") {
        return;
    }
    let l = layout();
    let t = scratch("preload");
    let s = store(&t);
    let dir = s.root().join("preload");
    fs::create_dir_all(&dir).unwrap();
    skopeo(&[
        &format!("oci:{}:busybox-oci", l.display()),
        &format!("oci-archive:{}:example.com/a:1", dir.join("a.tar").display()),
    ]);
    let b = t.join("b.tar");
    skopeo(&[&format!("oci:{}:layers", l.display()), &format!("docker-archive:{}:example.com/b:1", b.display())]);
    gzip(&b, &dir.join("b.tar.gz"));
    run(Command::new("cp").arg("-a").arg(l).arg(dir.join("c-layout")));
    fs::write(dir.join("d-bad.tar"), b"garbage garbage").unwrap();
    fs::write(dir.join("notes.txt"), b"not an archive").unwrap();
    fs::write(dir.join(".e.tar.part"), b"being copied").unwrap();

    let names = |out: &[archive::Preloaded]| -> Vec<(String, &'static str)> {
        out.iter()
            .map(|p| {
                let kind = match &p.outcome {
                    PreloadOutcome::Loaded(_) => "loaded",
                    PreloadOutcome::Unchanged(_) => "unchanged",
                    PreloadOutcome::Failed(_) => "failed",
                };
                (p.path.file_name().unwrap().to_string_lossy().into_owned(), kind)
            })
            .collect()
    };
    let own = |v: &[(&str, &'static str)]| v.iter().map(|(a, b)| (a.to_string(), *b)).collect::<Vec<_>>();

    let out = archive::load_preload_dir(&s, &dir, &host()).unwrap();
    assert_eq!(
        names(&out),
        own(&[("a.tar", "loaded"), ("b.tar.gz", "loaded"), ("c-layout", "loaded"), ("d-bad.tar", "failed")])
    );
    let PreloadOutcome::Failed(e) = &out[3].outcome else { unreachable!() };
    assert!(e.to_string().contains("d-bad.tar"), "{e}");
    assert!(s.image("example.com/a:1").unwrap().is_some());
    assert_eq!(s.image("example.com/b:1").unwrap().unwrap().layers.len(), 5);
    assert!(s.image(&canon("multiarch")).unwrap().is_some());

    // Again: nothing to do but the bad one.
    let out = archive::load_preload_dir(&s, &dir, &host()).unwrap();
    assert_eq!(
        names(&out),
        own(&[("a.tar", "unchanged"), ("b.tar.gz", "unchanged"), ("c-layout", "unchanged"), ("d-bad.tar", "failed")])
    );
    let PreloadOutcome::Unchanged(r) = &out[0].outcome else { unreachable!() };
    assert_eq!(r, &["example.com/a:1".to_string()]);

    // An image removed from the store comes back; a replaced archive is loaded again; a
    // fixed bad one too.
    assert!(s.remove_image("example.com/a:1").unwrap());
    fs::remove_file(&b).unwrap();
    skopeo(&[&format!("oci:{}:busybox-oci", l.display()), &format!("docker-archive:{}:example.com/b:2", b.display())]);
    gzip(&b, &dir.join("b.tar.gz.new"));
    fs::rename(dir.join("b.tar.gz.new"), dir.join("b.tar.gz")).unwrap();
    fs::rename(dir.join("a.tar"), dir.join("d-bad.tar")).unwrap();
    let out = archive::load_preload_dir(&s, &dir, &host()).unwrap();
    assert_eq!(names(&out), own(&[("b.tar.gz", "loaded"), ("c-layout", "unchanged"), ("d-bad.tar", "loaded")]));
    assert!(s.image("example.com/a:1").unwrap().is_some());
    assert!(s.image("example.com/b:2").unwrap().is_some());
    let state: serde_json::Value = serde_json::from_slice(&fs::read(s.root().join("preload.json")).unwrap()).unwrap();
    assert_eq!(state["files"].as_object().unwrap().len(), 3, "{state}");

    // A missing directory is empty.
    assert!(archive::load_preload_dir(&s, &t.join("nope"), &host()).unwrap().is_empty());
    assert_no_spool(&s);
}
