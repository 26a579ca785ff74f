//! Clock sanity: a clock before the date this skiff was built is surely wrong (a board without
//! a battery-backed clock before NTP has set it, a Raspberry Pi at boot), and TLS to a registry
//! then fails with "certificate not yet valid". Pulls and registry checks wait for the clock
//! rather than fail with that; `skiff check` names it with the fix.

use std::time::{SystemTime, UNIX_EPOCH};

/// When this binary was built (seconds since 1970, UTC): `agent/build.rs`.
pub const BUILD_EPOCH: i64 = parse_epoch(env!("SKIFF_BUILD_EPOCH"));

const fn parse_epoch(s: &str) -> i64 {
    let b = s.as_bytes();
    let mut i = 0;
    let mut n: i64 = 0;
    while i < b.len() {
        if b[i] < b'0' || b[i] > b'9' {
            return 0;
        }
        n = n * 10 + (b[i] - b'0') as i64;
        i += 1;
    }
    n
}

/// Now, in seconds since 1970 (negative before it).
pub fn now_epoch() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// The clock is before the build date: (now, build date), both seconds since 1970.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockBehind {
    pub now: i64,
    pub built: i64,
}

/// The decision: `Some` when `now` is before `built` (by any amount: the build date is a
/// commit's date, so a right clock is never before it).
pub fn check(now: i64, built: i64) -> Option<ClockBehind> {
    (now < built).then_some(ClockBehind { now, built })
}

/// [`check`] of this host's clock against this binary's build date.
pub fn check_now() -> Option<ClockBehind> {
    check(now_epoch(), BUILD_EPOCH)
}

/// Whether a pull or registry check must wait for the clock: it is before the build date and
/// the registry is reached over TLS (a plain-HTTP registry, local or marked insecure, checks
/// no certificate dates).
pub fn registry_must_wait(now: i64, built: i64, plain_http: bool) -> Option<ClockBehind> {
    check(now, built).filter(|_| !plain_http)
}

/// `2026-01-02T03:04:05Z`, or the number for a date humantime cannot show.
pub fn date(epoch: i64) -> String {
    if epoch >= 0 {
        humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(epoch as u64)).to_string()
    } else {
        format!("{epoch} s since 1970")
    }
}

/// What to do about it (one line).
pub const FIX: &str = "set the time (`timedatectl set-time 'YYYY-MM-DD hh:mm:ss'` or `date -s ...`) or enable NTP \
     (`timedatectl set-ntp true`, or run an NTP client such as systemd-timesyncd or chrony)";

impl ClockBehind {
    /// The one-line problem.
    pub fn message(&self) -> String {
        format!(
            "the clock says {}, before this skiff was built ({}): TLS to registries fails with \"certificate not yet valid\"",
            date(self.now),
            date(self.built)
        )
    }

    /// Why a pull or registry check of an HTTPS registry waits (the same text while it
    /// waits, so a retried wait is logged once).
    pub fn waiting(&self) -> String {
        format!(
            "waiting for the clock: it is before this skiff's build date ({}), so TLS would fail with \"certificate not yet valid\"; {FIX}",
            date(self.built)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_the_build_date_is_wrong_after_it_is_fine() {
        let built = 1_780_000_000; // 2026-05-28
        assert_eq!(check(0, built), Some(ClockBehind { now: 0, built })); // 1970, an RTC-less board
        assert_eq!(check(built - 1, built), Some(ClockBehind { now: built - 1, built }));
        assert_eq!(check(built, built), None);
        assert_eq!(check(built + 86_400 * 365 * 5, built), None);
        assert!(check(-5, built).is_some());
    }

    #[test]
    fn the_message_names_the_dates_the_tls_error_and_the_fix() {
        let b = check(0, 1_780_000_000).unwrap();
        let m = b.message();
        assert!(m.contains("1970-01-01T00:00:00Z") && m.contains("2026-05-28"), "{m}");
        assert!(m.contains("certificate not yet valid"), "{m}");
        let w = b.waiting();
        assert!(w.starts_with("waiting for the clock: ") && w.contains("timedatectl set-ntp true"), "{w}");
        assert!(w.contains("2026-05-28") && w.contains("certificate not yet valid"), "{w}");
        assert_eq!(w, check(1_000, 1_780_000_000).unwrap().waiting(), "the same text while it waits");
    }

    #[test]
    fn only_tls_registries_wait_for_the_clock() {
        let built = 1_780_000_000;
        assert!(registry_must_wait(0, built, false).is_some());
        assert!(registry_must_wait(0, built, true).is_none(), "plain HTTP checks no certificate dates");
        assert!(registry_must_wait(built + 1, built, false).is_none());
    }

    #[test]
    fn the_build_date_is_embedded_and_plausible() {
        // build.rs: SOURCE_DATE_EPOCH, the last commit's date or the build time; after this
        // code was written (2026) and not in the future of the machine building it.
        let built: i64 = env!("SKIFF_BUILD_EPOCH").parse().expect("a number");
        assert_eq!(built, BUILD_EPOCH);
        assert!(built > 1_767_225_600, "{built}"); // 2026-01-01
        assert!(built <= now_epoch() + 86_400, "{built}");
        assert_eq!(parse_epoch("123"), 123);
        assert_eq!(parse_epoch("12x"), 0);
    }
}
