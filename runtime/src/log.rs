//! runc-style logging: `--log FILE`, `--log-format text|json`, `--debug`.
//!
//! The runtime is short-lived and synchronous, so this is a tiny global sink rather
//! than a logging framework. Errors always go to stderr too (that is what callers
//! such as containerd and podman show to users).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::RawFd;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warning",
            Level::Error => "error",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Format {
    Text,
    Json,
}

struct Sink {
    file: Option<File>,
    /// In a container's init or exec child: the sync channel to the runtime, which logs
    /// what arrives there (see [`forward_to_parent`]).
    parent: Option<RawFd>,
    format: Format,
    min: Level,
}

static SINK: Mutex<Sink> = Mutex::new(Sink { file: None, parent: None, format: Format::Text, min: Level::Warn });

/// Sets up logging. `path` None means stderr for warnings only (errors are printed by main).
pub fn init(path: Option<&std::path::Path>, format: Format, debug: bool) -> std::io::Result<()> {
    let file = match path {
        Some(p) => Some(OpenOptions::new().create(true).append(true).open(p)?),
        None => None,
    };
    let mut s = SINK.lock().unwrap_or_else(|e| e.into_inner());
    s.file = file;
    s.format = format;
    s.min = if debug { Level::Debug } else { Level::Info };
    Ok(())
}

/// In a process forked into a container (the init, an exec child): from now on log lines
/// go to the runtime over the sync channel `chan` (the runtime writes them where its own
/// go), and the log file is closed here, so that no host file stays open in the container.
/// Lines sent when the runtime is gone (after `create` returned) are dropped.
pub fn forward_to_parent(chan: RawFd) {
    let mut s = SINK.lock().unwrap_or_else(|e| e.into_inner());
    s.file = None;
    s.parent = Some(chan);
}

/// True when a debug line would be written (lets callers skip formatting).
pub fn debug_enabled() -> bool {
    SINK.lock().map(|s| s.min <= Level::Debug).unwrap_or(false)
}

pub fn log(level: Level, msg: &str) {
    let mut s = SINK.lock().unwrap_or_else(|e| e.into_inner());
    if level < s.min {
        return;
    }
    let format = s.format;
    if let Some(chan) = s.parent {
        // SAFETY: the fd stays open for the life of the forked process (it is its sync
        // channel); a closed or reused number only makes this send fail or go nowhere.
        let chan = unsafe { std::os::fd::BorrowedFd::borrow_raw(chan) };
        let _ = crate::sync::send_log(chan, level, msg);
        return;
    }
    match s.file.as_mut() {
        Some(f) => {
            let line = render(format, level, msg);
            let _ = f.write_all(line.as_bytes());
        }
        None => {
            // Without --log, only warnings go to stderr here; errors are printed by main.
            if level == Level::Warn || (level == Level::Debug && s.min == Level::Debug) {
                let line = render(format, level, msg);
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
        }
    }
}

fn render(format: Format, level: Level, msg: &str) -> String {
    let time = rfc3339_now();
    match format {
        Format::Json => {
            let obj = serde_json::json!({ "level": level.as_str(), "msg": msg, "time": time });
            format!("{obj}\n")
        }
        Format::Text => format!("time=\"{time}\" level={} msg={:?}\n", level.as_str(), msg),
    }
}

/// Current UTC time as RFC 3339 with nanoseconds (what runc/logrus emit).
pub fn rfc3339_now() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    rfc3339(now.as_secs() as i64, now.subsec_nanos())
}

pub fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z", rem / 3600, (rem / 60) % 60, rem % 60)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => {
        if $crate::log::debug_enabled() {
            $crate::log::log($crate::log::Level::Debug, &format!($($arg)*))
        }
    };
}

#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Warn, &format!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(rfc3339(1_795_000_000, 0), "2026-11-18T11:06:40.000000000Z");
    }
}
