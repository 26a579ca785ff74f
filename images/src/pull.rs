//! The pull pipeline: resolve → manifest (platform) → config → layers (parallel, each
//! downloaded and unpacked at the same time) → image record.
//!
//! Each layer blob is downloaded into `tmp/<hex>.partial`. A blocking thread unpacks it
//! *from that file* while it grows ([`FollowReader`] waits for bytes the download has not
//! written yet), so a layer is unpacked as it arrives, memory stays bounded (the page cache
//! is the buffer, not the heap) and a cut connection needs no special case: the download
//! resumes with `Range: bytes=<len>-` and the unpacker just waits. When a server ignores
//! `Range` (200), the bytes already on disk are skipped in the new body. A pull killed with
//! SIGKILL leaves the partial file; the next pull re-hashes its prefix, resumes the download
//! and restarts that layer's unpack from byte 0 of the file. If a resumed blob then fails its
//! digest (a torn partial after a power cut), it is downloaded once more from scratch.
//!
//! A blob enters `blobs/` only once its digest is verified (fsync + rename); a layer enters
//! `layers/` only once its diff_id is verified (syncfs + rename); the image record is
//! written last.

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use reqwest::header::CONTENT_RANGE;
use reqwest::StatusCode;
use sha2::{Digest as _, Sha256};

use crate::client::{network, Client};
use crate::digest::Digest;
use crate::error::{chain, Error, Result};
use crate::fsutil::{self, LockKind};
use crate::manifest::{self, Descriptor, ImageConfig, Manifest};
use crate::platform::{self, Candidate, Platform};
use crate::reference::Reference;
use crate::store::{ImageRecord, LayerRecord, Store};

/// How to pull.
#[derive(Clone, Debug)]
pub struct PullOptions {
    /// The platform to pick from an index; `None` = this machine's.
    pub platform: Option<Platform>,
    /// Layers downloaded at the same time.
    pub jobs: usize,
    /// Attempts in a row without progress before a download gives up.
    pub retries: u32,
    /// First delay between attempts; doubles on each failure in a row.
    pub backoff: Duration,
    /// Longest delay between attempts.
    pub backoff_max: Duration,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platform: None,
            jobs: 3,
            retries: 6,
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// What a pull reports while it runs.
#[derive(Debug, Clone)]
pub enum Event {
    /// Waiting for another skiff (a prune) to release the store.
    Waiting(String),
    /// The manifest is chosen.
    Resolved {
        reference: String,
        digest: Digest,
        platform: String,
        layers: usize,
    },
    /// A layer already in the store.
    LayerPresent {
        digest: Digest,
        size: u64,
    },
    /// A layer download starts (`offset` > 0 when it resumes a partial download).
    LayerStart {
        digest: Digest,
        size: u64,
        offset: u64,
    },
    /// Bytes of a layer blob on disk so far.
    LayerProgress {
        digest: Digest,
        done: u64,
        size: u64,
    },
    /// A layer is verified, unpacked and stored.
    LayerDone {
        digest: Digest,
    },
    /// A failed attempt; the next starts after `delay`.
    Retry {
        what: String,
        attempt: u32,
        delay: Duration,
        error: String,
    },
    Warning(String),
}

/// Receives [`Event`]s (from several tasks at once).
pub trait Progress: Send + Sync {
    fn event(&self, e: &Event);
}

/// Ignores events.
pub struct NoProgress;
impl Progress for NoProgress {
    fn event(&self, _: &Event) {}
}

/// The outcome of a pull.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub record: ImageRecord,
    /// Bytes downloaded by this pull (blobs only).
    pub downloaded: u64,
    /// Layers this pull downloaded or unpacked.
    pub layers_fetched: usize,
    /// Layers that were already in the store.
    pub layers_present: usize,
}

struct Ctx {
    store: Store,
    client: Arc<Client>,
    reference: Reference,
    opts: PullOptions,
    progress: Arc<dyn Progress>,
}

/// Pulls `reference` into `store`. Holds the store's shared lock while it runs (prune and
/// rmi wait). Safe to run several at once, also for the same image (blobs are locked).
pub async fn pull(
    store: &Store,
    client: Arc<Client>,
    reference: &Reference,
    opts: &PullOptions,
    progress: Arc<dyn Progress>,
) -> Result<Pulled> {
    let _lock = {
        let store = store.clone();
        let p = progress.clone();
        tokio::task::spawn_blocking(move || {
            store.lock(LockKind::Shared, || {
                p.event(&Event::Waiting(format!("waiting for another skiff command on {}", store.root().display())))
            })
        })
        .await
        .map_err(|e| Error::Other(format!("locking the store: {e}")))??
    };
    let ctx =
        Arc::new(Ctx { store: store.clone(), client, reference: reference.clone(), opts: opts.clone(), progress });
    let want = opts.platform.clone().unwrap_or_else(Platform::host);

    // Manifest (through the index when there is one).
    let top_ref = reference.manifest_ref();
    let (bytes, ct) = retry(&ctx, "fetching the manifest", || ctx.client.manifest(reference, &top_ref)).await?;
    let top_digest = Digest::of(&bytes);
    if let Some(want) = &reference.digest {
        if *want != top_digest {
            return Err(Error::DigestMismatch {
                what: format!("the manifest of {reference}"),
                expected: want.clone(),
                actual: top_digest,
            });
        }
    }
    let top = Manifest::parse(&bytes, ct.as_deref(), &format!("the manifest of {reference}"))?;
    let mut index = None;
    let (digest, media_type, config_desc, layers, mbytes) = match top {
        Manifest::Image { media_type, config, layers } => (top_digest, media_type, config, layers, bytes),
        Manifest::Index { manifests, .. } => {
            let pick = platform::select(
                &want,
                manifests.iter().map(|e| {
                    e.platform.as_ref().map(|(os, arch, variant)| Candidate { os, architecture: arch, variant })
                }),
            );
            let Some(i) = pick else {
                let have: Vec<String> = manifests
                    .iter()
                    .filter_map(|e| e.platform.as_ref())
                    .map(|(o, a, v)| Platform::new(o, a, v).to_string())
                    .collect();
                return Err(Error::Invalid {
                    what: reference.to_string(),
                    detail: format!(
                        "has no image for {want} (it has: {}); choose one with --platform",
                        if have.is_empty() { "none".to_string() } else { have.join(", ") }
                    ),
                });
            };
            let entry = manifests[i].descriptor.clone();
            let what = format!("the {want} manifest of {reference}");
            let child_ref = entry.digest.to_string();
            let (b, ct) = retry(&ctx, "fetching the manifest", || ctx.client.manifest(reference, &child_ref)).await?;
            let d = Digest::of(&b);
            if d != entry.digest {
                return Err(Error::DigestMismatch { what, expected: entry.digest, actual: d });
            }
            index = Some((top_digest, bytes));
            match Manifest::parse(&b, ct.as_deref(), &what)? {
                Manifest::Image { media_type, config, layers } => (d, media_type, config, layers, b),
                Manifest::Index { .. } => {
                    return Err(Error::Invalid {
                        what,
                        detail: "is an index inside an index, which skiff does not follow".into(),
                    })
                }
            }
        }
    };
    if let Some((d, b)) = &index {
        store.put_blob(d, b)?;
    }
    store.put_blob(&digest, &mbytes)?;

    // Config.
    if config_desc.size > manifest::MAX_CONFIG {
        return Err(Error::Invalid {
            what: format!("the config of {reference}"),
            detail: format!("is {} bytes, more than the {} skiff accepts", config_desc.size, manifest::MAX_CONFIG),
        });
    }
    let mut downloaded = fetch(&ctx, &config_desc, None, false).await?;
    let config_bytes = store.read_blob(&config_desc.digest, manifest::MAX_CONFIG)?;
    let config = ImageConfig::parse(&config_bytes, &format!("the config of {reference}"))?;
    if config.diff_ids.len() != layers.len() {
        return Err(Error::Invalid {
            what: format!("{reference}"),
            detail: format!(
                "its manifest has {} layers but its config lists {} diff_ids",
                layers.len(),
                config.diff_ids.len()
            ),
        });
    }
    let image_platform =
        Platform::new(if config.os.is_empty() { "linux" } else { &config.os }, &config.architecture, &config.variant);
    if !config.architecture.is_empty() && !want.compatible().contains(&image_platform) {
        ctx.progress.event(&Event::Warning(format!(
            "{reference} is a {image_platform} image, not {want}: its programs may not run here"
        )));
    }
    ctx.progress.event(&Event::Resolved {
        reference: reference.to_string(),
        digest: digest.clone(),
        platform: image_platform.to_string(),
        layers: layers.len(),
    });

    // Layers, `jobs` at a time.
    let sem = Arc::new(tokio::sync::Semaphore::new(opts.jobs.max(1)));
    let mut set: tokio::task::JoinSet<Result<(u64, bool)>> = tokio::task::JoinSet::new();
    // Biggest first: the longest download+unpack starts at once, the small ones fill in.
    let mut order: Vec<(Descriptor, Digest)> = layers.iter().cloned().zip(config.diff_ids.iter().cloned()).collect();
    order.sort_by_key(|x| std::cmp::Reverse(x.0.size));
    for (desc, diff_id) in order {
        let ctx = ctx.clone();
        let sem = sem.clone();
        set.spawn(async move {
            let _permit = sem.acquire().await.map_err(|e| Error::Other(e.to_string()))?;
            if ctx.store.has_blob(&desc.digest) && ctx.store.has_layer(&diff_id) {
                ctx.progress.event(&Event::LayerPresent { digest: desc.digest.clone(), size: desc.size });
                return Ok((0u64, false));
            }
            let n = fetch(&ctx, &desc, Some(&diff_id), true).await?;
            ctx.progress.event(&Event::LayerDone { digest: desc.digest.clone() });
            Ok((n, true))
        });
    }
    let (mut fetched, mut present) = (0, 0);
    while let Some(res) = set.join_next().await {
        let (n, was_fetched) = res.map_err(|e| Error::Other(format!("a layer task failed: {e}")))??;
        downloaded += n;
        if was_fetched {
            fetched += 1;
        } else {
            present += 1;
        }
    }

    // The record, last.
    let record = ImageRecord {
        reference: reference.to_string(),
        digest,
        index_digest: index.map(|(d, _)| d),
        media_type,
        platform: image_platform.to_string(),
        config: config_desc.digest.clone(),
        layers: layers
            .iter()
            .zip(config.diff_ids.iter())
            .map(|(l, id)| LayerRecord {
                digest: l.digest.clone(),
                diff_id: id.clone(),
                size: l.size,
                media_type: l.media_type.clone(),
            })
            .collect(),
        size: mbytes.len() as u64 + config_desc.size + layers.iter().map(|l| l.size).sum::<u64>(),
        created: config.created,
        pulled: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        pinned: false,
    };
    store.put_image(&record)?;
    Ok(Pulled { record, downloaded, layers_fetched: fetched, layers_present: present })
}

/// Runs `f` until it succeeds, a non-transient error, or `retries` failures.
async fn retry<T, F, Fut>(ctx: &Ctx, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut failures = 0;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && failures < ctx.opts.retries => {
                failures += 1;
                let delay = backoff(&ctx.opts, failures);
                ctx.progress.event(&Event::Retry {
                    what: what.to_string(),
                    attempt: failures,
                    delay,
                    error: e.detail(),
                });
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn backoff(opts: &PullOptions, failures: u32) -> Duration {
    let factor = 1u32.checked_shl(failures.saturating_sub(1).min(20)).unwrap_or(u32::MAX);
    opts.backoff.saturating_mul(factor).min(opts.backoff_max)
}

/// Makes sure a blob (and, for a layer, its unpacked directory) is in the store. Returns
/// the bytes downloaded.
async fn fetch(ctx: &Ctx, desc: &Descriptor, diff_id: Option<&Digest>, report: bool) -> Result<u64> {
    let store = &ctx.store;
    let _lock = store.lock_blob(&desc.digest).await?;
    let need_blob = !store.has_blob(&desc.digest);
    let need_layer = diff_id.filter(|id| !store.has_layer(id));
    match (need_blob, need_layer) {
        (false, None) => Ok(0),
        (false, Some(id)) => {
            // The blob is here but not its unpacked layer: unpack from the blob.
            let file = File::open(store.blob_path(&desc.digest))
                .map_err(|e| Error::io(format!("reading blob {}", desc.digest), store.root(), e))?;
            let dir = fresh_unpack_dir(store, &desc.digest)?;
            let (d2, mt, id2, root, what) =
                (dir.clone(), desc.media_type.clone(), id.clone(), store.root().to_path_buf(), layer_what(ctx, desc));
            tokio::task::spawn_blocking(move || unpack_into(file, &d2, &mt, &id2, &root, &what))
                .await
                .map_err(|e| Error::Other(format!("unpacking layer {}: {e}", desc.digest)))??;
            store.commit_layer(&dir, id)?;
            Ok(0)
        }
        (true, layer) => match download(ctx, desc, layer, report, false).await {
            Ok(n) => Ok(n),
            Err(Failed::Fatal(e)) => Err(e),
            Err(Failed::Restart(_)) => {
                ctx.progress.event(&Event::Warning(format!(
                    "the partly downloaded blob {} did not verify: downloading it again from the start",
                    desc.digest
                )));
                download(ctx, desc, layer, report, true).await.map_err(|(Failed::Fatal(e) | Failed::Restart(e))| e)
            }
        },
    }
}

/// How a download failed: for good, or in a way a fresh start (no resumed prefix) may fix.
enum Failed {
    Fatal(Error),
    Restart(Error),
}

impl From<Error> for Failed {
    fn from(e: Error) -> Self {
        Failed::Fatal(e)
    }
}

fn layer_what(ctx: &Ctx, desc: &Descriptor) -> String {
    format!("layer {} of {}", desc.digest, ctx.reference)
}

fn fresh_unpack_dir(store: &Store, blob: &Digest) -> Result<PathBuf> {
    let dir = store.tmp().join(format!("unpack-{}", blob.hex()));
    let err = |e| Error::io(format!("preparing {}", dir.display()), store.root(), e);
    fsutil::remove_tree(&dir).map_err(err)?;
    fs::create_dir(&dir).map_err(err)?;
    Ok(dir)
}

/// Downloads a blob into `tmp/<hex>.partial` (resuming what is there unless `fresh`),
/// unpacking it on the fly into `tmp/unpack-<hex>` when `diff_id` is given; verifies and
/// commits both. Returns the bytes downloaded.
async fn download(
    ctx: &Ctx,
    desc: &Descriptor,
    diff_id: Option<&Digest>,
    report: bool,
    fresh: bool,
) -> Result<u64, Failed> {
    let store = &ctx.store;
    let root = store.root().to_path_buf();
    let digest = &desc.digest;
    let size = desc.size;
    let partial = store.tmp().join(format!("{}.partial", digest.hex()));
    let io_err = |what: &str, e: io::Error| Error::io(format!("{what} blob {digest}"), &root, e);

    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(fsutil::PRIVATE_FILE)
        .open(&partial)
        .map_err(|e| io_err("creating", e))?;
    let mut have = file.metadata().map_err(|e| io_err("reading", e))?.len();
    if fresh || have > size {
        file.set_len(0).map_err(|e| io_err("truncating", e))?;
        have = 0;
    }
    // The hash state of the bytes already there.
    let mut hasher = Sha256::new();
    if have > 0 {
        let mut f = File::open(&partial).map_err(|e| io_err("reading", e))?;
        let n = have;
        hasher = tokio::task::spawn_blocking(move || -> io::Result<Sha256> {
            let mut h = Sha256::new();
            io::copy(&mut (&mut f).take(n), &mut HashWriter(&mut h))?;
            Ok(h)
        })
        .await
        .map_err(|e| Error::Other(format!("hashing blob {digest}: {e}")))?
        .map_err(|e| io_err("reading", e))?;
    }
    file.seek(SeekFrom::Start(have)).map_err(|e| io_err("writing", e))?;
    let resumed = have;
    if report {
        ctx.progress.event(&Event::LayerStart { digest: digest.clone(), size, offset: have });
    }

    // The unpacker follows the file as it grows.
    let tee = Arc::new(Tee::new(have));
    let _guard = TeeGuard(tee.clone());
    let mut unpacker = None;
    if let Some(id) = diff_id {
        let dir = fresh_unpack_dir(store, digest)?;
        let reader =
            FollowReader { file: File::open(&partial).map_err(|e| io_err("reading", e))?, pos: 0, tee: tee.clone() };
        let (d2, mt, id2, root2, what) =
            (dir.clone(), desc.media_type.clone(), id.clone(), root.clone(), layer_what(ctx, desc));
        let t2 = tee.clone();
        let handle = tokio::task::spawn_blocking(move || {
            let res = unpack_into(reader, &d2, &mt, &id2, &root2, &what);
            if res.is_err() {
                t2.unpack_failed.store(true, Ordering::SeqCst);
            }
            res
        });
        unpacker = Some((dir, id.clone(), handle));
    }

    let downloaded = transfer(ctx, desc, &mut file, &mut hasher, &mut have, &tee, report).await;
    let complete = downloaded.is_ok() && have == size;
    let actual = Digest::from_sha256(&hasher.finalize());
    let verified = complete && actual == *digest;

    // Settle the unpacker first: it gets EOF only once the blob is verified and stored.
    if verified {
        if let Err(e) = store.commit_blob(&file, &partial, digest) {
            tee.finish(Err("storing the blob failed".into()));
            let _ = join_unpacker(store, unpacker).await;
            return Err(e.into());
        }
    }
    tee.finish(if verified { Ok(()) } else { Err("the download did not complete".into()) });
    let unpacked = join_unpacker(store, unpacker).await;

    let n = downloaded.map_err(Failed::Fatal)?;
    if !complete {
        // Stopped early because the unpacker failed: its error is the one to report.
        unpacked.map_err(Failed::Fatal)?;
        return Err(Failed::Fatal(Error::Other(format!("downloading blob {digest}: stopped before the end"))));
    }
    if !verified {
        let _ = fs::remove_file(&partial);
        let e = Error::DigestMismatch {
            what: format!("blob {digest} of {}", ctx.reference),
            expected: digest.clone(),
            actual,
        };
        return Err(if resumed > 0 && !fresh { Failed::Restart(e) } else { Failed::Fatal(e) });
    }
    unpacked.map_err(Failed::Fatal)?;
    Ok(n)
}

/// Waits for the unpacker and commits its layer.
async fn join_unpacker(store: &Store, u: Option<(PathBuf, Digest, tokio::task::JoinHandle<Result<()>>)>) -> Result<()> {
    let Some((dir, id, handle)) = u else { return Ok(()) };
    let res = handle.await.map_err(|e| Error::Other(format!("unpacking layer {id}: {e}"))).and_then(|r| r);
    match res {
        Ok(()) => store.commit_layer(&dir, &id),
        Err(e) => {
            let _ = fsutil::remove_tree(&dir);
            Err(e)
        }
    }
}

/// The network part of a download: appends to `file` until `have == size`, resuming with
/// `Range`, retrying with backoff. Returns the bytes received.
async fn transfer(
    ctx: &Ctx,
    desc: &Descriptor,
    file: &mut File,
    hasher: &mut Sha256,
    have: &mut u64,
    tee: &Tee,
    report: bool,
) -> Result<u64> {
    let digest = &desc.digest;
    let size = desc.size;
    let root = ctx.store.root();
    let what = format!("downloading blob {digest} of {}", ctx.reference);
    let mut failures = 0u32;
    let mut use_range = true;
    let mut received = 0u64;
    while *have < size && !tee.unpack_failed.load(Ordering::SeqCst) {
        let before = *have;
        let attempt = async {
            let offset = if use_range { *have } else { 0 };
            let mut resp = ctx.client.blob(&ctx.reference, digest, offset).await?;
            let mut skip = match resp.status() {
                StatusCode::PARTIAL_CONTENT => {
                    let cr = resp.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).unwrap_or("");
                    match parse_content_range(cr) {
                        Some((start, total)) if start == *have && total.is_none_or(|t| t == size) => 0,
                        _ => {
                            use_range = false;
                            return Err(Error::Network {
                                what: what.clone(),
                                detail: format!(
                                    "the registry answered a request for bytes {}- with Content-Range \"{}\": downloading it whole",
                                    *have,
                                    crate::text::one_line(cr, 100)
                                ),
                            });
                        }
                    }
                }
                // A full body: the server ignored Range (or none was sent). Skip what we have.
                StatusCode::OK => *have,
                s => {
                    return Err(Error::Status { what: what.clone(), status: s.as_u16(), detail: String::new() });
                }
            };
            let url = resp.url().clone();
            while let Some(chunk) = resp.chunk().await.map_err(|e| network(&what, &url, &e))? {
                received += chunk.len() as u64;
                let mut c = &chunk[..];
                if skip > 0 {
                    let n = (skip as usize).min(c.len());
                    c = &c[n..];
                    skip -= n as u64;
                }
                if c.is_empty() {
                    continue;
                }
                if *have + c.len() as u64 > size {
                    return Err(Error::Invalid {
                        what: what.clone(),
                        detail: format!("the registry sent more than the {size} bytes the manifest says"),
                    });
                }
                file.write_all(c).map_err(|e| Error::io(format!("writing blob {digest}"), root, e))?;
                hasher.update(c);
                *have += c.len() as u64;
                tee.advance(*have);
                if report {
                    ctx.progress.event(&Event::LayerProgress { digest: digest.clone(), done: *have, size });
                }
                if tee.unpack_failed.load(Ordering::SeqCst) {
                    return Ok(());
                }
            }
            if *have < size {
                return Err(Error::Network {
                    what: what.clone(),
                    detail: format!("the connection closed after {} of {size} bytes", *have),
                });
            }
            Ok(())
        }
        .await;
        match attempt {
            Ok(()) => {}
            Err(e) if e.is_transient() => {
                failures = if *have > before { 1 } else { failures + 1 };
                if failures > ctx.opts.retries {
                    return Err(Error::Network {
                        what: what.clone(),
                        detail: format!("gave up after {} attempts without progress: {e}", ctx.opts.retries + 1),
                    });
                }
                let delay = backoff(&ctx.opts, failures);
                ctx.progress.event(&Event::Retry {
                    what: format!("blob {}", digest.short()),
                    attempt: failures,
                    delay,
                    error: e.detail(),
                });
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(received)
}

/// `bytes START-END/TOTAL` → (START, TOTAL if not `*`).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start, total))
}

struct HashWriter<'a>(&'a mut Sha256);
impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Shared between a download and the unpacker that follows it.
struct Tee {
    state: Mutex<TeeState>,
    cv: Condvar,
    unpack_failed: AtomicBool,
}

struct TeeState {
    /// Bytes of the file that are written.
    written: u64,
    /// Set once the download is over: Ok = the file is complete and verified.
    end: Option<Result<(), String>>,
}

impl Tee {
    fn new(written: u64) -> Tee {
        Tee {
            state: Mutex::new(TeeState { written, end: None }),
            cv: Condvar::new(),
            unpack_failed: AtomicBool::new(false),
        }
    }

    fn advance(&self, written: u64) {
        if let Ok(mut s) = self.state.lock() {
            s.written = written;
        }
        self.cv.notify_all();
    }

    fn finish(&self, end: Result<(), String>) {
        if let Ok(mut s) = self.state.lock() {
            if s.end.is_none() {
                s.end = Some(end);
            }
        }
        self.cv.notify_all();
    }
}

/// Ends the unpacker's wait when a download is dropped (task aborted) without finishing.
struct TeeGuard(Arc<Tee>);
impl Drop for TeeGuard {
    fn drop(&mut self) {
        self.0.finish(Err("the download was cancelled".into()));
    }
}

/// Reads a file that a download is appending to: blocks until more bytes are written, and
/// returns EOF only when the download finished and the blob verified.
struct FollowReader {
    file: File,
    pos: u64,
    tee: Arc<Tee>,
}

impl Read for FollowReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let avail = {
            let mut s = self.tee.state.lock().map_err(|_| io::Error::other("download state poisoned"))?;
            loop {
                if s.written > self.pos {
                    break s.written - self.pos;
                }
                match &s.end {
                    Some(Ok(())) => return Ok(0),
                    Some(Err(e)) => return Err(io::Error::other(e.clone())),
                    None => {}
                }
                s = self.tee.cv.wait(s).map_err(|_| io::Error::other("download state poisoned"))?;
            }
        };
        let want = buf.len().min(avail.min(usize::MAX as u64) as usize);
        let n = self.file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the partial download is shorter than written"));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Unpacks one layer stream into `dir` (overlay whiteouts) and checks its diff_id.
fn unpack_into(
    reader: impl Read,
    dir: &Path,
    media_type: &str,
    diff_id: &Digest,
    root: &Path,
    what: &str,
) -> Result<()> {
    use crate::unpack::{unpack_layer, UnpackOptions};
    let opts = UnpackOptions::overlay(media_type, &diff_id.to_string());
    match unpack_layer(reader, dir, &opts) {
        Ok(stats) => {
            if stats.diff_id != diff_id.to_string() {
                let actual = Digest::parse(&stats.diff_id).unwrap_or_else(|_| Digest::of(stats.diff_id.as_bytes()));
                return Err(Error::DigestMismatch {
                    what: format!("{what} (uncompressed, against the config's diff_id)"),
                    expected: diff_id.clone(),
                    actual,
                });
            }
            Ok(())
        }
        // A full disk anywhere in the chain is reported as such.
        Err(e) if fsutil::caused_by_no_space(&e) => {
            Err(Error::NoSpace { what: format!("unpacking {what}"), root: root.to_path_buf() })
        }
        Err(e) => Err(Error::Unpack { what: format!("unpacking {what}"), detail: chain(&e) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(parse_content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, None)));
        assert_eq!(parse_content_range("bytes 5-4/10"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
        assert_eq!(parse_content_range(""), None);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let o = PullOptions::default();
        let d: Vec<u128> = (1..=8).map(|f| backoff(&o, f).as_millis()).collect();
        assert_eq!(d, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }

    #[test]
    fn follow_reader_waits_for_writes() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        let mut w = File::create(&p).unwrap();
        let tee = Arc::new(Tee::new(0));
        let mut r = FollowReader { file: File::open(&p).unwrap(), pos: 0, tee: tee.clone() };
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            r.read_to_string(&mut s).map(|_| s)
        });
        for part in ["hello ", "follow ", "reader"] {
            std::thread::sleep(Duration::from_millis(20));
            w.write_all(part.as_bytes()).unwrap();
            let len = w.metadata().unwrap().len();
            tee.advance(len);
        }
        tee.finish(Ok(()));
        assert_eq!(reader.join().unwrap().unwrap(), "hello follow reader");

        let tee = Arc::new(Tee::new(0));
        let mut r = FollowReader { file: File::open(&p).unwrap(), pos: 0, tee: tee.clone() };
        drop(TeeGuard(tee));
        assert!(r.read(&mut [0u8; 4]).is_err());
    }
}
