//! Image GC on disk pressure: every 30 s, and after each pull, the loop looks at the store's
//! filesystem; past the high mark (`x-skiff: {image_gc}`, 85 % by default) a blocking task
//! removes unused images, oldest pull first, down to the low mark ([`skiff_images::gc::plan`]
//! decides), then prunes what no record, container or kept revision needs.
//!
//! It takes the store lock only if free (a pull or `skiff load` in progress holds it shared):
//! when busy it tries again at the next look. Each collection is one log line and is counted in
//! status and `/metrics`; the same "cannot get below the low mark" is said once, not every 30 s.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use skiff_images::gc::{self, Marks, Usage};
use skiff_images::{text, Store};

use super::{canonical, log, Agent, Event};
use crate::daemon::paths::Paths;
use crate::daemon::revisions;
use crate::daemon::status::{ImageGcStatus, StoreStatus};

/// How often the filesystem is looked at without a pull.
const EVERY: Duration = Duration::from_secs(30);

/// What a look at the filesystem found and did.
#[derive(Debug)]
pub enum Outcome {
    /// Not past the high mark (or collection is off): nothing done.
    Below(Usage),
    /// Past it, but the store is in use (a pull, a load): try again later.
    Busy(Usage),
    Collected {
        before: Usage,
        after: Usage,
        marks: Marks,
        removed: Vec<String>,
        freed: u64,
        /// Bytes still above the low mark that no unused image could give back.
        short: u64,
    },
}

/// The loop's side: when to look, and the counts for status.
#[derive(Debug)]
pub struct State {
    /// The references the manifest in force names, kept current by the loop while a
    /// collection runs (a manifest that now names an image it planned to remove saves it).
    protected: Arc<Mutex<HashSet<String>>>,
    next: Instant,
    running: bool,
    usage: Option<Usage>,
    runs: u64,
    removed: u64,
    freed: u64,
    last: Option<String>,
    /// The last collection removed nothing: whether it fell short of the low mark (so the
    /// same fruitless one is said once).
    fruitless: Option<bool>,
}

impl Default for State {
    fn default() -> State {
        State {
            protected: Arc::default(),
            next: Instant::now(),
            running: false,
            usage: None,
            runs: 0,
            removed: 0,
            freed: 0,
            last: None,
            fruitless: None,
        }
    }
}

impl State {
    /// When the loop should look next (`None` while a look is on).
    pub fn next_wake(&self) -> Option<Instant> {
        (!self.running).then_some(self.next)
    }

    /// Look at the next pass (a pull just added to the store).
    pub fn soon(&mut self) {
        self.next = Instant::now();
    }
}

/// Looks at the store's filesystem and, past the high mark, collects (blocking: file system
/// walks and removals). `protected`: the references the manifest's services name, looked at
/// again before each removal.
pub fn collect(
    paths: &Paths,
    store: &Store,
    marks: Option<Marks>,
    protected: &Mutex<HashSet<String>>,
) -> Result<Outcome> {
    let before = store.usage()?;
    let Some(marks) = marks.filter(|m| before.above(*m)) else {
        return Ok(Outcome::Below(before));
    };
    let Some(_lock) = store.try_lock_exclusive()? else {
        return Ok(Outcome::Busy(before));
    };
    // What containers run from, and the images of kept revisions (rollbacks without network).
    let mut keep = crate::cli::run::container_references(&paths.root)?;
    revisions::references(&paths.root, &mut keep)?;
    let (records, bad) = store.images()?;
    if let Some(b) = bad.first() {
        bail!("cannot read the image record {b}: fix or remove it");
    }
    let now_protected = || protected.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut plan = gc::plan(before, marks, &records, &now_protected(), &keep, |c| store.content_size(c));
    let mut removed = Vec::new();
    for r in plan.remove.drain(..) {
        if now_protected().contains(&r) {
            continue;
        }
        store.remove_image(&r)?;
        removed.push(r);
    }
    // Also what interrupted pulls left and content no record names any more.
    let pruned = store.prune(&keep)?;
    let after = store.usage()?;
    Ok(Outcome::Collected { before, after, marks, removed, freed: pruned.bytes, short: plan.short })
}

impl Agent {
    /// Starts a look at the filesystem when one is due (and a manifest is in force: before
    /// one, nothing tells which images are wanted).
    pub(super) fn maybe_collect_images(&mut self, now: Instant) {
        let Some(m) = self.manifest.as_ref() else { return };
        if self.image_gc.running || now < self.image_gc.next {
            return;
        }
        self.image_gc.running = true;
        self.image_gc.next = now + EVERY;
        let marks = m.image_gc.marks();
        let protected = self.image_gc.protected.clone();
        let (paths, store, tx) = (self.paths.clone(), self.store.clone(), self.tx.clone());
        tokio::task::spawn_blocking(move || {
            let result = collect(&paths, &store, marks, &protected).map_err(|e| format!("{e:#}"));
            let _ = tx.send(Event::ImageGc { result });
        });
    }

    /// Keeps the shared set of the manifest's images current (each manifest put in force).
    pub(super) fn protect_manifest_images(&self) {
        let names: HashSet<String> = self
            .manifest
            .as_ref()
            .map(|m| m.services.values().map(|s| canonical(&s.image)).collect())
            .unwrap_or_default();
        *self.image_gc.protected.lock().unwrap_or_else(|e| e.into_inner()) = names;
    }

    pub(super) fn on_image_gc(&mut self, result: Result<Outcome, String>) {
        let s = &mut self.image_gc;
        s.running = false;
        let mut fruitless = None;
        let said = match result {
            Ok(Outcome::Below(u)) | Ok(Outcome::Busy(u)) => {
                s.usage = Some(u);
                return;
            }
            Ok(Outcome::Collected { before, after, marks, removed, freed, short }) => {
                s.usage = Some(after);
                s.runs += 1;
                s.removed += removed.len() as u64;
                s.freed += freed;
                fruitless = removed.is_empty().then_some(short > 0);
                let mut line = format!(
                    "disk pressure: the store's filesystem was {}% full (high mark {}%): removed {} unused image{}{}, freed {}; now {}% full",
                    before.percent(),
                    marks.high,
                    removed.len(),
                    if removed.len() == 1 { "" } else { "s" },
                    if removed.is_empty() { String::new() } else { format!(" ({})", removed.join(", ")) },
                    human(freed),
                    after.percent(),
                );
                if short > 0 {
                    line.push_str(&format!(
                        "; {} more is used by images in use or other files, above the low mark of {}%: free space or add disk",
                        human(short),
                        marks.low
                    ));
                }
                line
            }
            Err(e) => format!("image GC: {e}"),
        };
        // Every collection that removed something is logged; a fruitless one once.
        if fruitless.is_none() || fruitless != s.fruitless {
            log(&text::one_line(&said, text::MESSAGE_MAX));
        }
        s.fruitless = fruitless;
        s.last = Some(said);
    }

    /// The store's part of the status.
    pub(super) fn store_status(&self) -> Option<StoreStatus> {
        let s = &self.image_gc;
        let u = s.usage?;
        let gc = self.manifest.as_ref().map_or(crate::manifest::ImageGc::default(), |m| m.image_gc);
        Some(StoreStatus {
            size_bytes: u.size,
            used_bytes: u.used(),
            image_gc: ImageGcStatus {
                enabled: gc.enabled,
                high_percent: gc.high,
                low_percent: gc.low,
                runs: s.runs,
                images_removed: s.removed,
                bytes_freed: s.freed,
                last: s.last.clone(),
            },
        })
    }
}

fn human(bytes: u64) -> String {
    crate::cli::human_size(bytes)
}
