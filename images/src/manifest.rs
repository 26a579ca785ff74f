//! OCI and Docker schema2 manifests, indexes and image configs: the few fields a pull needs,
//! parsed leniently (unknown fields ignored) and validated explicitly (digests, media types).

use serde::Deserialize;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::text;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1";

/// The `Accept` header of a manifest request: the four kinds skiff understands.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest or index accepted (the distribution spec suggests 4 MiB).
pub const MAX_MANIFEST: u64 = 4 << 20;
/// Largest image config accepted.
pub const MAX_CONFIG: u64 = 8 << 20;

/// A descriptor as it stands in a manifest or an index (also an OCI layout's `index.json`,
/// read by the archive importer), before its digest and size are checked.
#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RawDescriptor {
    #[serde(default)]
    pub(crate) media_type: String,
    pub(crate) digest: String,
    pub(crate) size: i64,
    #[serde(default)]
    pub(crate) platform: Option<RawPlatform>,
    #[serde(default)]
    pub(crate) annotations: std::collections::HashMap<String, String>,
}

#[derive(Deserialize, Debug, Clone)]
pub(crate) struct RawPlatform {
    #[serde(default)]
    pub(crate) architecture: String,
    #[serde(default)]
    pub(crate) os: String,
    #[serde(default)]
    pub(crate) variant: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    #[serde(default)]
    schema_version: Option<i64>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Option<Vec<RawDescriptor>>,
    #[serde(default)]
    manifests: Option<Vec<RawDescriptor>>,
}

/// A validated descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// One entry of an index.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    pub descriptor: Descriptor,
    /// (os, architecture, variant) as the index states it.
    pub platform: Option<(String, String, String)>,
}

/// A parsed manifest document.
#[derive(Debug, Clone)]
pub enum Manifest {
    Image { media_type: String, config: Descriptor, layers: Vec<Descriptor> },
    Index { media_type: String, manifests: Vec<IndexEntry> },
}

/// Layer compression, from the media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Manifest {
    /// Parses a manifest or index. The kind comes from the `Content-Type` when it is one of
    /// the four known types, else from the document's `mediaType`, else from its shape.
    /// `what` names the document in errors.
    pub fn parse(data: &[u8], content_type: Option<&str>, what: &str) -> Result<Manifest> {
        let invalid = |detail: String| Error::Invalid { what: what.to_string(), detail };
        let raw: RawManifest =
            serde_json::from_slice(data).map_err(|e| invalid(format!("not a valid manifest ({e})")))?;
        let ct = content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
        let known = |t: &str| [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].contains(&t);
        let kind = match (&ct, &raw.media_type) {
            (Some(c), _) if known(c) => c.clone(),
            (_, Some(m)) if known(m) => m.clone(),
            _ => {
                let schema1 = ct.as_deref().is_some_and(|c| c.starts_with(DOCKER_SCHEMA1))
                    || raw.schema_version == Some(1)
                    || raw.media_type.as_deref().is_some_and(|m| m.starts_with(DOCKER_SCHEMA1));
                if schema1 {
                    return Err(invalid(
                        "is a Docker schema 1 manifest, which skiff does not support: push the image again with a current docker, podman or skopeo".into(),
                    ));
                }
                if raw.manifests.is_some() {
                    OCI_INDEX.to_string()
                } else if raw.layers.is_some() && raw.config.is_some() {
                    OCI_MANIFEST.to_string()
                } else {
                    return Err(invalid(format!(
                        "has media type \"{}\", which is not an image manifest or index",
                        text::one_line(&ct.or(raw.media_type).unwrap_or_default(), 200)
                    )));
                }
            }
        };
        if raw.schema_version != Some(2) {
            return Err(invalid(format!("has schemaVersion {:?}, expected 2", raw.schema_version)));
        }
        if kind == OCI_INDEX || kind == DOCKER_LIST {
            let entries = raw.manifests.ok_or_else(|| invalid("is an index without \"manifests\"".into()))?;
            let manifests = entries
                .into_iter()
                .map(|d| {
                    let platform = d.platform.clone().map(|p| (p.os, p.architecture, p.variant.unwrap_or_default()));
                    Ok(IndexEntry { descriptor: descriptor(d, what)?, platform })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Manifest::Index { media_type: kind, manifests })
        } else {
            let config = descriptor(raw.config.ok_or_else(|| invalid("has no \"config\"".into()))?, what)?;
            let config_ok = config.media_type.is_empty()
                || config.media_type == "application/vnd.oci.image.config.v1+json"
                || config.media_type == "application/vnd.docker.container.image.v1+json";
            if !config_ok {
                return Err(invalid(format!(
                    "is not a container image (its config has media type {}): skiff runs container images only",
                    text::one_line(&config.media_type, 200)
                )));
            }
            let layers = raw
                .layers
                .ok_or_else(|| invalid("has no \"layers\"".into()))?
                .into_iter()
                .map(|d| descriptor(d, what))
                .collect::<Result<Vec<_>>>()?;
            for l in &layers {
                compression(&l.media_type).map_err(|detail| invalid(format!("layer {}: {detail}", l.digest)))?;
            }
            Ok(Manifest::Image { media_type: kind, config, layers })
        }
    }
}

fn descriptor(d: RawDescriptor, what: &str) -> Result<Descriptor> {
    let digest = Digest::parse(&d.digest)
        .map_err(|source| Error::BadDigest { context: format!("{what} names a blob"), source })?;
    let size = u64::try_from(d.size)
        .map_err(|_| Error::Invalid { what: what.to_string(), detail: format!("{} has a negative size", d.digest) })?;
    Ok(Descriptor { media_type: d.media_type, digest, size })
}

/// The compression a layer media type announces; an error for media types that are not
/// filesystem layers.
pub fn compression(media_type: &str) -> std::result::Result<Compression, String> {
    let m = media_type.to_ascii_lowercase();
    if m.is_empty() {
        return Ok(Compression::Gzip);
    }
    let layerish = m.starts_with("application/vnd.oci.image.layer.")
        || m.starts_with("application/vnd.docker.image.rootfs.")
        || m.starts_with("application/vnd.docker.image.layer.");
    if !layerish {
        return Err(format!("media type {} is not a filesystem layer", text::one_line(media_type, 200)));
    }
    Ok(if m.ends_with("+zstd") || m.ends_with(".zstd") {
        Compression::Zstd
    } else if m.ends_with("gzip") {
        Compression::Gzip
    } else if m.ends_with(".tar") {
        Compression::None
    } else {
        return Err(format!(
            "layer media type {} is not supported (tar, tar+gzip or tar+zstd)",
            text::one_line(media_type, 200)
        ));
    })
}

/// The fields of an image config a pull needs.
#[derive(Debug, Clone, Default)]
pub struct ImageConfig {
    pub diff_ids: Vec<Digest>,
    pub created: Option<String>,
    pub os: String,
    pub architecture: String,
    pub variant: String,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
    rootfs: Option<RawRootfs>,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

impl ImageConfig {
    pub fn parse(data: &[u8], what: &str) -> Result<ImageConfig> {
        let invalid = |detail: String| Error::Invalid { what: what.to_string(), detail };
        let raw: RawConfig =
            serde_json::from_slice(data).map_err(|e| invalid(format!("not a valid image config ({e})")))?;
        let rootfs = raw.rootfs.ok_or_else(|| invalid("has no rootfs".into()))?;
        let diff_ids = rootfs
            .diff_ids
            .iter()
            .map(|d| {
                Digest::parse(d)
                    .map_err(|source| Error::BadDigest { context: format!("{what} lists a diff_id"), source })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ImageConfig {
            diff_ids,
            created: raw.created,
            os: raw.os,
            architecture: raw.architecture,
            variant: raw.variant.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn image_manifest() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{}","size":10}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{}","size":20}}]}}"#,
            d('a'),
            d('b')
        );
        match Manifest::parse(m.as_bytes(), Some("application/vnd.docker.distribution.manifest.v2+json"), "m").unwrap()
        {
            Manifest::Image { layers, config, .. } => {
                assert_eq!(config.size, 10);
                assert_eq!(layers[0].digest.to_string(), d('b'));
            }
            _ => panic!("not an image"),
        }
        // Content-Type wins; a generic one falls back to mediaType, then to the shape.
        assert!(matches!(
            Manifest::parse(m.as_bytes(), Some("application/json"), "m").unwrap(),
            Manifest::Image { .. }
        ));
    }

    #[test]
    fn bad_digest_in_manifest() {
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{}","size":10}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:../../../etc/passwd","size":20}}]}}"#,
            d('a')
        );
        let e = Manifest::parse(m.as_bytes(), Some(OCI_MANIFEST), "manifest of x").unwrap_err().to_string();
        assert!(e.contains("invalid digest") && e.contains("../../../etc/passwd"), "{e}");
    }

    #[test]
    fn index_and_schema1() {
        let i = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":5,"platform":{{"os":"linux","architecture":"arm","variant":"v7"}}}}]}}"#,
            d('c')
        );
        match Manifest::parse(i.as_bytes(), None, "i").unwrap() {
            Manifest::Index { manifests, .. } => {
                assert_eq!(manifests[0].platform, Some(("linux".into(), "arm".into(), "v7".into())));
            }
            _ => panic!("not an index"),
        }
        let s1 = br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#;
        let e =
            Manifest::parse(s1, Some("application/vnd.docker.distribution.manifest.v1+prettyjws"), "m").unwrap_err();
        assert!(e.to_string().contains("schema 1"), "{e}");
    }

    #[test]
    fn compressions() {
        assert_eq!(compression("application/vnd.oci.image.layer.v1.tar+zstd"), Ok(Compression::Zstd));
        assert_eq!(compression("application/vnd.oci.image.layer.v1.tar"), Ok(Compression::None));
        assert_eq!(compression("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"), Ok(Compression::Gzip));
        assert!(compression("application/vnd.cncf.helm.chart.content.v1.tar+gzip").is_err());
    }
}
