//! Image updates: the tag of a service's image checked against the registry — on the schedule
//! of `pull_policy: daily | weekly | every_<duration>` (±10% jitter), before each replica start
//! with `pull_policy: always`, and at once by `skiff update` — with a `HEAD` of its manifest
//! (not counted against Docker Hub's pull limit). A new digest is pulled; the store's tag then
//! names it, which makes a new revision that is rolled out like any edit. A digest an update
//! already failed with is not pulled again. A failed check changes nothing that runs: status
//! shows its time and error, the log says it once (not at every poll), and a 429 backs off
//! (at least the registry's `Retry-After`).

use std::time::{Duration, Instant, SystemTime};

use skiff_images::{text, Reference};

use super::{log, Agent, Event};
use crate::manifest::{PullPolicy, Service};

/// `pull_policy: always` checks at most this often (a crash-looping replica must not hammer
/// the registry).
const ALWAYS_MIN: Duration = Duration::from_secs(10);

/// One service's checks.
#[derive(Debug, Default)]
pub(super) struct Check {
    /// When the next one is due (`None`: none scheduled).
    pub next: Option<Instant>,
    pub in_flight: bool,
    /// The last one: when (RFC 3339), what it found.
    pub last_at: Option<String>,
    pub last_result: Option<String>,
    pub error: Option<String>,
    /// Errors in a row (429 back-off).
    pub failures: u32,
    /// Checks by result, in the order of [`crate::daemon::status::IMAGE_CHECK_RESULTS`].
    pub counts: [u64; 4],
    /// When the last one began (`always`'s rate limit).
    pub started: Option<Instant>,
}

/// What a check's answer means (pure).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Found {
    Unchanged,
    /// A new digest: pull it.
    New,
    /// An update to this digest failed before: not tried again until the tag moves.
    FailedBefore,
}

pub(super) fn judge(remote: &str, local: Option<&str>, failed: &[String]) -> Found {
    if local == Some(remote) {
        Found::Unchanged
    } else if failed.iter().any(|f| f == remote) {
        Found::FailedBefore
    } else {
        Found::New
    }
}

/// `every`, ±10%, from a cheap random source (the standard library's hasher keys).
pub(super) fn jittered(every: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(every.as_nanos() as u64);
    let r = (h.finish() % 2001) as f64 / 1000.0 - 1.0; // -1.0 ..= 1.0
    every.mul_f64(1.0 + 0.1 * r)
}

/// When to check again after an error: the schedule, and after a 429 at least `retry_after`,
/// doubling with each 429 in a row (at most 16 times the schedule).
pub(super) fn after_error(every: Duration, retry_after: Option<u64>, rate_limited: bool, failures: u32) -> Duration {
    if !rate_limited {
        return every;
    }
    let backoff = every.saturating_mul(1 << failures.min(4));
    backoff.max(Duration::from_secs(retry_after.unwrap_or(0)))
}

/// The result of a check, for the loop.
#[derive(Debug)]
pub enum CheckResult {
    Digest(String),
    Error { message: String, rate_limited: bool, retry_after: Option<u64> },
}

impl Agent {
    /// Schedules the checks of the manifest's services and starts the due ones.
    pub(super) fn poll_images(&mut self, services: &[Service], now: Instant) {
        for svc in services {
            let c = self.checks.entry(svc.name.clone()).or_default();
            if let Some(every) = svc.pull_policy.interval() {
                // The first one soon after start, then on the schedule.
                c.next.get_or_insert_with(|| now + jittered(every.min(Duration::from_secs(60))));
            }
            if c.next.is_some_and(|t| t <= now) && !c.in_flight {
                self.start_check(svc);
            }
        }
        self.checks.retain(|name, _| services.iter().any(|s| &s.name == name));
    }

    /// `skiff update` (now, any pull_policy) and `pull_policy: always` before a start (at most
    /// every 10 s).
    pub(super) fn check_now(&mut self, svc: &Service, why_always: bool) {
        let now = Instant::now();
        let c = self.checks.entry(svc.name.clone()).or_default();
        if c.in_flight || (why_always && c.started.is_some_and(|s| now.duration_since(s) < ALWAYS_MIN)) {
            return;
        }
        self.start_check(svc);
    }

    fn start_check(&mut self, svc: &Service) {
        let reference = match Reference::parse(&svc.image) {
            Ok(r) => r,
            Err(_) => return, // the start reports a bad reference
        };
        let client = match self.registry_client() {
            Ok(c) => c,
            Err(e) => {
                let _ = self.tx.send(Event::ImageChecked {
                    service: svc.name.clone(),
                    result: CheckResult::Error { message: format!("{e:#}"), rate_limited: false, retry_after: None },
                });
                return;
            }
        };
        let c = self.checks.entry(svc.name.clone()).or_default();
        c.in_flight = true;
        c.next = None;
        c.started = Some(Instant::now());
        let clock = crate::hostcheck::clock::registry_must_wait(
            crate::hostcheck::clock::now_epoch(),
            crate::hostcheck::clock::BUILD_EPOCH,
            client.allows_http(reference.api_host()),
        );
        if let Some(b) = clock {
            // Answered as a failed check: retried on the error schedule.
            let _ = self.tx.send(Event::ImageChecked {
                service: svc.name.clone(),
                result: CheckResult::Error { message: b.waiting(), rate_limited: false, retry_after: None },
            });
            return;
        }
        let (tx, service) = (self.tx.clone(), svc.name.clone());
        tokio::spawn(async move {
            let tag = reference.manifest_ref();
            let result = match client.manifest_digest(&reference, &tag).await {
                Ok(d) => CheckResult::Digest(d.to_string()),
                Err(e) => {
                    let (rate_limited, retry_after) = match &e {
                        skiff_images::Error::RateLimited { retry_after, .. } => (true, *retry_after),
                        _ => (false, None),
                    };
                    CheckResult::Error { message: e.to_string(), rate_limited, retry_after }
                }
            };
            let _ = tx.send(Event::ImageChecked { service, result });
        });
    }

    /// A check's answer.
    pub(super) fn on_checked(&mut self, service: &str, result: CheckResult) {
        let Some(svc) = self.manifest.as_ref().and_then(|m| m.services.get(service)).cloned() else { return };
        let now = Instant::now();
        let every = svc.pull_policy.interval();
        let key = super::canonical(&svc.image);
        let local =
            self.store.image(&key).ok().flatten().map(|r| r.index_digest.as_ref().unwrap_or(&r.digest).to_string());
        let failed: Vec<String> = self
            .records
            .get(service)
            .map(|rec| {
                rec.revisions
                    .iter()
                    .filter(|r| r.failed)
                    .map(|r| r.image.index_digest.as_ref().unwrap_or(&r.image.digest).to_string())
                    .collect()
            })
            .unwrap_or_default();
        let Some(c) = self.checks.get_mut(service) else { return };
        c.in_flight = false;
        c.last_at = Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
        let mut pull = false;
        match result {
            CheckResult::Digest(d) => {
                if c.error.take().is_some() {
                    log(&format!("{service}: checking {key} works again"));
                }
                c.failures = 0;
                let (result, i) = match judge(&d, local.as_deref(), &failed) {
                    Found::Unchanged => ("unchanged".to_string(), 0),
                    Found::New => {
                        log(&format!("{service}: {key} now names {}: pulling it", short(&d)));
                        pull = true;
                        (format!("new digest {}", short(&d)), 1)
                    }
                    Found::FailedBefore => {
                        if c.last_result.as_deref().is_none_or(|r| !r.starts_with("failed")) {
                            log(&format!(
                                "{service}: {key} names {}, which an update already failed with: not tried again until the tag moves",
                                short(&d)
                            ));
                        }
                        (format!("failed before: {}", short(&d)), 2)
                    }
                };
                c.counts[i] += 1;
                c.last_result = Some(result);
                c.next = every.map(|e| now + jittered(e));
            }
            CheckResult::Error { message, rate_limited, retry_after } => {
                let message = text::one_line(&message, text::MESSAGE_MAX);
                c.failures += 1;
                c.counts[3] += 1;
                let wait = every.map(|e| after_error(e, retry_after, rate_limited, c.failures));
                if c.error.as_deref() != Some(message.as_str()) {
                    // Once per distinct error, not at every poll.
                    log(&format!(
                        "{service}: checking {key}: {message}; what runs keeps running{}",
                        wait.map(|w| format!(" (next check in {})", crate::rollout::fmt_duration(round(w))))
                            .unwrap_or_default()
                    ));
                }
                c.error = Some(message);
                c.last_result = Some("error".into());
                c.next = wait.map(|w| now + w);
            }
        }
        if pull {
            if let Ok(r) = Reference::parse(&svc.image) {
                if let Some(p) = self.pulls.get_mut(&key) {
                    p.next_try = now;
                }
                self.pull(r);
            }
        }
    }

    /// What status shows of a service's checks.
    pub(super) fn check_status(
        &self,
        service: &str,
        policy: PullPolicy,
    ) -> Option<super::super::status::ImageCheckStatus> {
        let c = self.checks.get(service)?;
        c.last_at.as_ref()?;
        let now = Instant::now();
        Some(super::super::status::ImageCheckStatus {
            at: c.last_at.clone(),
            result: c.last_result.clone(),
            error: c.error.clone(),
            next_in: c.next.filter(|_| policy.interval().is_some()).map(|t| t.saturating_duration_since(now).as_secs()),
            counts: c.counts,
        })
    }
}

fn short(d: &str) -> String {
    d.strip_prefix("sha256:").unwrap_or(d).chars().take(12).collect()
}

fn round(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_digest_means() {
        let failed = vec!["sha256:bad".to_string()];
        assert_eq!(judge("sha256:a", Some("sha256:a"), &failed), Found::Unchanged);
        assert_eq!(judge("sha256:b", Some("sha256:a"), &failed), Found::New);
        assert_eq!(judge("sha256:b", None, &failed), Found::New);
        assert_eq!(judge("sha256:bad", Some("sha256:a"), &failed), Found::FailedBefore);
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_varies() {
        let d = Duration::from_secs(1000);
        let seen: std::collections::BTreeSet<u64> = (0..200)
            .map(|_| {
                let j = jittered(d);
                assert!(j >= Duration::from_secs(900) && j <= Duration::from_secs(1100), "{j:?}");
                j.as_millis() as u64
            })
            .collect();
        assert!(seen.len() > 100, "the jitter varies: {} values", seen.len());
    }

    #[test]
    fn a_429_backs_off_and_honours_retry_after() {
        let h = Duration::from_secs(3600);
        assert_eq!(after_error(h, None, false, 5), h, "other errors: the schedule");
        assert_eq!(after_error(h, None, true, 1), 2 * h);
        assert_eq!(after_error(h, None, true, 9), 16 * h, "capped");
        assert_eq!(after_error(Duration::from_secs(2), Some(60), true, 1), Duration::from_secs(60), "Retry-After");
    }
}
