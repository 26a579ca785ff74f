//! Image garbage collection on disk pressure, as the kubelet (and so k3s) does it: when the
//! filesystem of the store is fuller than a high mark, unused images are removed, oldest pull
//! first, until it is expected below a low mark. Which images go is [`plan`], a pure function of
//! the filesystem's figures, the image records and what must stay; the caller removes the
//! records and prunes the content ([`crate::Store::prune`]) under the exclusive store lock.
//!
//! An image stays when anything may need it: a pinned record (`skiff load`, preload: it may
//! not be pullable again, as k3s pins its airgap images), a reference in `protected` (the
//! images the manifest's services name: removing one would only make the agent pull it
//! again), and content
//! in `keep` (what containers run from, and the images of kept revisions, which rollbacks need
//! without a network). A record whose content is all kept frees nothing and stays listed.

use std::collections::{HashMap, HashSet};

use crate::digest::Digest;
use crate::store::{ImageRecord, References};

/// The marks, in percent of the filesystem's size: collect above `high`, down to `low`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marks {
    pub high: u8,
    pub low: u8,
}

impl Default for Marks {
    /// The kubelet's defaults (`imageGCHighThresholdPercent` 85, `imageGCLowThresholdPercent` 80).
    fn default() -> Marks {
        Marks { high: 85, low: 80 }
    }
}

/// The filesystem's size and the bytes an unprivileged writer may still use (statvfs's
/// `f_blocks` and `f_bavail` times `f_frsize`), as `df` counts them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub size: u64,
    pub avail: u64,
}

impl Usage {
    pub fn used(&self) -> u64 {
        self.size.saturating_sub(self.avail)
    }

    /// Whole percent used, rounded up (a filesystem 85.2 % full is past a mark of 85).
    pub fn percent(&self) -> u64 {
        if self.size == 0 {
            return 0;
        }
        (u128::from(self.used()) * 100).div_ceil(u128::from(self.size)) as u64
    }

    /// Fuller than the high mark.
    pub fn above(&self, marks: Marks) -> bool {
        u128::from(self.used()) * 100 > u128::from(self.size) * u128::from(marks.high)
    }
}

/// A piece of content: a blob, or an unpacked layer (by its diff id).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Content {
    Blob(Digest),
    Layer(Digest),
}

/// What to remove.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// References of the image records to remove, in order.
    pub remove: Vec<String>,
    /// Bytes that removing them frees (as `size_of` counts).
    pub freed: u64,
    /// Bytes still above the low mark once every removable image is gone (0: the low mark
    /// is reached): what images in use and other files take.
    pub short: u64,
}

/// The content a record needs.
fn content(r: &ImageRecord) -> impl Iterator<Item = Content> + '_ {
    r.blobs().cloned().map(Content::Blob).chain(r.layers.iter().map(|l| Content::Layer(l.diff_id.clone())))
}

/// Which images to remove to bring `usage` from above `marks.high` to `marks.low` (nothing
/// when it is not above the high mark). Candidates go oldest pull first (`pulled` is RFC 3339
/// UTC, so it sorts as text), then by reference. A candidate is removed even when the content
/// it shares with another candidate frees nothing yet: the next one may free it.
/// `size_of` gives the bytes a piece of content takes (0 when it is not there).
pub fn plan(
    usage: Usage,
    marks: Marks,
    records: &[ImageRecord],
    protected: &HashSet<String>,
    keep: &References,
    mut size_of: impl FnMut(&Content) -> u64,
) -> Plan {
    let mut plan = Plan::default();
    if !usage.above(marks) {
        return plan;
    }
    let target = (u128::from(usage.size) * u128::from(marks.low) / 100) as u64;
    let need = usage.used().saturating_sub(target);
    let kept = |c: &Content| match c {
        Content::Blob(d) => keep.blobs.contains(d),
        Content::Layer(d) => keep.layers.contains(d),
    };
    // How many records name each piece of content (once per record).
    let mut users: HashMap<Content, usize> = HashMap::new();
    for r in records {
        for c in content(r).collect::<HashSet<_>>() {
            *users.entry(c).or_default() += 1;
        }
    }
    let mut candidates: Vec<&ImageRecord> = records
        .iter()
        .filter(|r| !r.pinned && !protected.contains(&r.reference))
        .filter(|r| content(r).any(|c| !kept(&c)))
        .collect();
    candidates.sort_by(|a, b| (&a.pulled, &a.reference).cmp(&(&b.pulled, &b.reference)));
    for r in candidates {
        if plan.freed >= need {
            break;
        }
        plan.remove.push(r.reference.clone());
        for c in content(r).collect::<HashSet<_>>() {
            let n = users.get_mut(&c).expect("counted above");
            *n -= 1;
            if *n == 0 && !kept(&c) {
                plan.freed += size_of(&c);
            }
        }
    }
    plan.short = need.saturating_sub(plan.freed);
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LayerRecord;

    fn d(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    /// A second digest for the same letter (configs, diff ids).
    fn d2(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}0", c.to_string().repeat(63))).unwrap()
    }

    /// An image `name` pulled at second `at`, with manifest and config of its own and the
    /// given layers (blob and diff id named by the same letter).
    fn image(name: &str, at: u32, manifest: char, layers: &[char]) -> ImageRecord {
        ImageRecord {
            reference: format!("example.com/{name}:1"),
            digest: d(manifest),
            index_digest: None,
            media_type: "m".into(),
            platform: "linux/amd64".into(),
            config: d2(manifest),
            layers: layers
                .iter()
                .map(|&l| LayerRecord { digest: d(l), diff_id: d2(l), size: 0, media_type: "l".into() })
                .collect(),
            size: 0,
            created: None,
            pulled: format!("2026-01-01T00:00:{at:02}Z"),
            pinned: false,
        }
    }

    /// Layers (blob + unpacked) take 10 + 10 MB; manifests and configs nothing.
    fn size(c: &Content) -> u64 {
        let hex = match c {
            Content::Blob(d) | Content::Layer(d) => d.hex(),
        };
        if hex.starts_with(|ch: char| ch.is_ascii_digit()) {
            10_000_000
        } else {
            0
        }
    }

    fn usage(percent: u64) -> Usage {
        Usage { size: 1_000_000_000, avail: 1_000_000_000 - percent * 10_000_000 }
    }

    #[test]
    fn the_marks_are_percent_of_the_size() {
        let m = Marks::default();
        assert!(!usage(85).above(m), "at the mark is not above it");
        assert!(Usage { size: 1000, avail: 149 }.above(m));
        assert_eq!(Usage { size: 1000, avail: 149 }.percent(), 86, "85.1 % shows as 86");
        assert_eq!(Usage { size: 0, avail: 0 }.percent(), 0);
        assert!(!Usage { size: 0, avail: 0 }.above(m));
        assert_eq!(Usage { size: 10, avail: 20 }.used(), 0, "avail past the size (a quota) is no underflow");
        assert!(Usage { size: u64::MAX, avail: 0 }.above(m), "no overflow");
    }

    #[test]
    fn below_the_high_mark_nothing_goes() {
        let recs = [image("a", 1, 'a', &['1'])];
        let p = plan(usage(85), Marks::default(), &recs, &HashSet::new(), &References::default(), size);
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn oldest_pull_first_until_the_low_mark() {
        // 90 % used, low mark 80 %: 100 MB to free; each image frees 20 MB.
        let recs: Vec<_> = ['1', '2', '3', '4', '5', '6']
            .iter()
            .enumerate()
            .map(|(i, &l)| image(&format!("i{i}"), 10 - i as u32, (b'a' + i as u8) as char, &[l]))
            .collect();
        let p = plan(usage(90), Marks::default(), &recs, &HashSet::new(), &References::default(), size);
        // Pulled at 10, 9, ... 5: the newest go last; i5 (at 5) first.
        assert_eq!(
            p.remove,
            ["example.com/i5:1", "example.com/i4:1", "example.com/i3:1", "example.com/i2:1", "example.com/i1:1"]
        );
        assert_eq!((p.freed, p.short), (100_000_000, 0));
        // Equal times: by reference.
        let recs = [image("b", 1, 'b', &['2']), image("a", 1, 'a', &['1'])];
        let p = plan(usage(86), Marks { high: 85, low: 84 }, &recs, &HashSet::new(), &References::default(), size);
        assert_eq!(p.remove, ["example.com/a:1"]);
    }

    #[test]
    fn what_the_manifest_names_or_containers_and_revisions_keep_stays() {
        let recs = [
            image("named", 1, 'a', &['1']),
            image("kept", 2, 'b', &['2']),
            image("half-kept", 3, 'c', &['2', '3']),
            image("free", 4, 'd', &['4']),
        ];
        let protected: HashSet<String> = ["example.com/named:1".to_string()].into();
        let mut keep = References::default();
        keep.blobs.extend([d('b'), d2('b'), d('2')]);
        keep.layers.insert(d2('2'));
        let p = plan(usage(99), Marks::default(), &recs, &protected, &keep, size);
        // `kept` frees nothing and stays listed; `half-kept` frees only its own layer 3.
        assert_eq!(p.remove, ["example.com/half-kept:1", "example.com/free:1"]);
        assert_eq!(p.freed, 40_000_000);
        assert_eq!(p.short, 190_000_000 - 40_000_000, "what is left above the low mark is said");
    }

    #[test]
    fn loaded_images_are_pinned() {
        let mut loaded = image("loaded", 1, 'a', &['1']);
        loaded.pinned = true;
        let recs = [loaded, image("pulled", 2, 'b', &['2'])];
        let p = plan(usage(99), Marks::default(), &recs, &HashSet::new(), &References::default(), size);
        assert_eq!(p.remove, ["example.com/pulled:1"]);
    }

    #[test]
    fn shared_layers_free_with_their_last_user() {
        // x and y share layer 1: removing x frees only its layer 2, removing y then frees 1 and 3.
        let recs = [image("x", 1, 'a', &['1', '2']), image("y", 2, 'b', &['1', '3']), image("z", 3, 'c', &['4'])];
        let p = plan(usage(86), Marks::default(), &recs, &HashSet::new(), &References::default(), size);
        assert_eq!(p.remove, ["example.com/x:1", "example.com/y:1"], "60 MB needed: x frees 20, y 40");
        assert_eq!(p.freed, 60_000_000);
        let p = plan(usage(87), Marks::default(), &recs, &HashSet::new(), &References::default(), size);
        assert_eq!(p.remove, ["example.com/x:1", "example.com/y:1", "example.com/z:1"]);
        assert_eq!(p.freed, 80_000_000, "x: 2; y: 1 and 3; z: 4");
    }

    #[test]
    fn content_named_twice_in_one_record_is_counted_once() {
        let recs = [image("x", 1, 'a', &['1', '1'])];
        let p = plan(usage(90), Marks::default(), &recs, &HashSet::new(), &References::default(), size);
        assert_eq!((p.remove.len(), p.freed), (1, 20_000_000));
    }
}
