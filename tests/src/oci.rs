//! Small OCI images made by a test: uncompressed tar layers written by hand, in an OCI layout
//! that `skiff load` takes (the layout's `io.containerd.image.name` names the image).

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::registry::{OCI_INDEX, OCI_MANIFEST};
use crate::{blob_digest, oci_arch};

/// What a layer holds at a path.
pub enum Entry<'a> {
    File { data: &'a [u8], mode: u32 },
    Symlink(&'a str),
    Dir,
}

/// An uncompressed layer (a tar) of `entries`, in order.
pub fn layer(entries: &[(&str, Entry)]) -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    for (path, e) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(1_700_000_000);
        match e {
            Entry::File { data, mode } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                t.append_data(&mut h, path, *data).expect("tar in memory");
            }
            Entry::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                t.append_link(&mut h, path, target).expect("tar in memory");
            }
            Entry::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                t.append_data(&mut h, path, std::io::empty()).expect("tar in memory");
            }
        }
    }
    t.into_inner().expect("tar in memory")
}

/// `n` bytes no compressor can shrink (xorshift64 from `seed`; each seed its own bytes): a
/// layer of a known size on disk.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0x2545_F491_4F6C_DD1D) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// The host's static busybox as `/bin/busybox` with `/bin/sh`, `/bin/sleep`, `/bin/true` links.
pub fn busybox_entries(busybox: &[u8]) -> Vec<(&'static str, Entry<'_>)> {
    vec![
        ("bin", Entry::Dir),
        ("bin/busybox", Entry::File { data: busybox, mode: 0o755 }),
        ("bin/sh", Entry::Symlink("busybox")),
        ("bin/sleep", Entry::Symlink("busybox")),
        ("bin/true", Entry::Symlink("busybox")),
    ]
}

/// An OCI layout in `dir/<escaped name>` of an image named `name` (`localhost/x/y:1`) with
/// these uncompressed layers (bottom first) and `cmd`.
pub fn write_layout(dir: &Path, name: &str, layers: &[Vec<u8>], cmd: &[&str]) -> PathBuf {
    let l = dir.join(name.replace(['/', ':'], "_"));
    fs::create_dir_all(l.join("blobs/sha256")).unwrap();
    let put = |data: &[u8]| {
        let d = blob_digest(data);
        fs::write(l.join("blobs/sha256").join(d.trim_start_matches("sha256:")), data).unwrap();
        (d, data.len())
    };
    let descs: Vec<_> = layers
        .iter()
        .map(|data| {
            let (d, size) = put(data);
            json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": size})
        })
        .collect();
    let diff_ids: Vec<String> = layers.iter().map(|d| blob_digest(d)).collect();
    let config = json!({
        "architecture": oci_arch(), "os": "linux", "config": {"Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let (config, config_size) = put(&serde_json::to_vec(&config).unwrap());
    let manifest = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
        "layers": descs,
    });
    let (m, m_size) = put(&serde_json::to_vec(&manifest).unwrap());
    let tag = name.rsplit_once(':').map_or("latest", |(_, t)| t);
    let index = json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": m, "size": m_size, "annotations": {
            "org.opencontainers.image.ref.name": tag,
            "io.containerd.image.name": name,
        }}],
    });
    fs::write(l.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(l.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    l
}
