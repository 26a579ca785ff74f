//! Image GC on disk pressure, end to end: an agent whose root is a small tmpfs, a store with
//! unused pulled images, an unused loaded one (pinned), an image a kept revision needs and the
//! one in use; the marks are set so that reaching the low mark takes exactly two unused
//! images (measured, not guessed). The agent removes the two oldest pulled ones, keeps the
//! rest, says so in its log, status and /metrics.

use std::fs;
use std::path::Path;

use serde_json::Value;
use skiff_tests::agent::{metric, parse_metrics, service, Agent};
use skiff_tests::host;
use skiff_tests::oci::{busybox_entries, layer, noise, write_layout, Entry};
use skiff_tests::registry::Registry;

/// Bytes of each unused image's one layer.
const FILLER: usize = 6 << 20;

fn skiff_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_skiff"))
}

/// Size and used bytes of the filesystem at `p` (as `df` counts).
fn usage(p: &Path) -> (u64, u64) {
    let st = nix::sys::statvfs::statvfs(p).unwrap();
    let unit = st.fragment_size();
    (st.blocks() * unit, (st.blocks() - st.blocks_available()) * unit)
}

fn manifest(image: &str, marks: (u64, u64)) -> String {
    format!(
        "x-skiff: {{image_gc: {{high: {}%, low: {}%}}}}\nservices:\n  web:\n    image: {image}\n    pull_policy: never\n    stop_grace_period: 1s\n    command: [\"sleep\", \"1000000\"]\n",
        marks.0, marks.1
    )
}

fn images(a: &Agent) -> String {
    let out = a.skiff(&["images"]);
    assert!(out.success(), "{out:?}");
    out.stdout
}

#[test]
fn disk_pressure_removes_the_oldest_unused_images_down_to_the_low_mark() {
    let mut a = Agent::new(skiff_bin());
    let root = a.root();
    fs::create_dir_all(&root).unwrap();
    let mounted = host(&["mount", "-t", "tmpfs", "-o", "size=64m,mode=0711", "skiff-gc-test", root.to_str().unwrap()]);
    assert!(mounted.success(), "{mounted:?}");

    // The images: old (pulled; a kept revision once the service moves on), new (loaded, in
    // use), spare (loaded, unused: pinned), and three unused pulled ones of FILLER bytes
    // each, pulled in the order a, b, c.
    let registry = Registry::empty();
    let busybox = fs::read("/bin/busybox").unwrap();
    let work = a.dir().join("images");
    let load = |name: &str, layers: Vec<Vec<u8>>| {
        let l = write_layout(&work, &format!("localhost/gc/{name}:1"), &layers, &["sleep", "1000000"]);
        let out = a.skiff(&["load", l.to_str().unwrap()]);
        assert!(out.success(), "{out:?}");
    };
    let pull = |name: &str, layers: Vec<Vec<u8>>| -> String {
        let l = write_layout(&work, &format!("localhost/gc/{name}:1"), &layers, &["sleep", "1000000"]);
        let out = registry.push(&format!("oci:{}:1", l.display()), &format!("gc/{name}:1"), &["--preserve-digests"]);
        assert!(out.success(), "{out:?}");
        let image = registry.image(&format!("gc/{name}:1"));
        let out = a.skiff(&["pull", &image]);
        assert!(out.success(), "{out:?}");
        image
    };
    let mut old = busybox_entries(&busybox);
    let old_filler = noise(FILLER / 2, 7);
    old.push(("old-filler", Entry::File { data: &old_filler, mode: 0o644 }));
    let old = pull("old", vec![layer(&old)]);
    load("new", vec![layer(&busybox_entries(&busybox))]);
    let spare = noise(FILLER, 99);
    load("spare", vec![layer(&[("filler", Entry::File { data: &spare, mode: 0o644 })])]);
    let (_, before) = usage(&root);
    let mut unused = Vec::new();
    for (i, n) in ["a", "b", "c"].iter().enumerate() {
        let data = noise(FILLER, 100 + i as u64);
        unused.push(pull(n, vec![layer(&[("filler", Entry::File { data: &data, mode: 0o644 })])]));
    }

    // What one unused image takes on disk (its blob; unpacked at first use only).
    let one = (usage(&root).1 - before) / 3;
    assert!(one >= FILLER as u64, "{one}");

    // The service runs old, then new: old stays as a kept revision (rollbacks need no network).
    let never = (99, 98);
    a.write_manifest(&manifest(&old, never));
    a.start();
    let st = a.wait_running("web", 1);
    let old_digest = service(&st, "web")["image_digest"].clone();
    assert!(old_digest.is_string(), "{st:#}");
    a.write_manifest(&manifest("localhost/gc/new:1", never));
    let st = a.wait_status("web on the new image", |st| {
        let s = service(st, "web");
        s["running_replicas"] == 1 && s["image_digest"].is_string() && s["image_digest"] != old_digest
    });
    assert_eq!(st["store"]["image_gc"]["runs"], 0, "{st:#}");

    // Marks: above the high mark now; the low mark 1.5 unused images below what is used, so
    // one image is not enough and two are.
    let (size, used) = usage(&root);
    let pct = |b: u64| b * 100 / size;
    let high = pct(used) - 1;
    let low = pct(used - one * 3 / 2);
    assert!(low < high && pct(used - one) > low && pct(used - 2 * one) < low, "sizes: {size} {used} {one}");
    a.write_manifest(&manifest("localhost/gc/new:1", (high, low)));
    let st = a.wait_status("an image GC", |st| st["store"]["image_gc"]["runs"].as_u64() >= Some(1));
    let gc = &st["store"]["image_gc"];
    assert_eq!((gc["high_percent"].as_u64(), gc["low_percent"].as_u64()), (Some(high), Some(low)), "{st:#}");
    assert_eq!(gc["images_removed"], 2, "{st:#}\n{}", a.log());
    assert!(gc["bytes_freed"].as_u64() >= Some(2 * FILLER as u64), "{st:#}");

    let list = images(&a);
    let repo = |image: &str| image.rsplit_once(':').unwrap().0.to_string();
    for gone in &unused[..2] {
        assert!(!list.contains(&repo(gone)), "{gone} should be removed (the oldest unused):\n{list}");
    }
    for kept in [repo(&unused[2]), repo(&old), "localhost/gc/new".into(), "localhost/gc/spare".into()] {
        assert!(list.contains(&kept), "{kept} should stay:\n{list}");
    }
    let (_, after) = usage(&root);
    assert!(pct(after) <= low, "{}% used after, low mark {low}%", pct(after));
    let log = a.log();
    let line = log.lines().find(|l| l.contains("disk pressure")).unwrap_or_else(|| panic!("no log line:\n{log}"));
    assert!(line.contains(&format!("removed 2 unused images ({}, {})", unused[0], unused[1])), "{line}");

    // The service never noticed; a rollback to the old revision needs no registry.
    assert_eq!(service(&st, "web")["running_replicas"], 1);
    let out = a.skiff(&["rollback", "web"]);
    assert!(out.success(), "{out:?}");
    a.wait_status("web back on the old image", |st: &Value| {
        let s = service(st, "web");
        s["running_replicas"] == 1 && s["image_digest"] == old_digest
    });

    let samples = parse_metrics(&a.metrics()).unwrap();
    assert_eq!(metric(&samples, "skiff_image_gc_images_removed_total", &[]), Some(2.0));
    assert!(metric(&samples, "skiff_image_gc_runs_total", &[]) >= Some(1.0));
    assert_eq!(metric(&samples, "skiff_store_filesystem_size_bytes", &[]), Some(size as f64));
    a.down();
    let _ = host(&["umount", root.to_str().unwrap()]);
}
