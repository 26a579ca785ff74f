//! `skiff logs SERVICE[/N] [-f] [--tail N] [--timestamps]`.
//!
//! Reads the log files `skiff shim` writes ([`crate::logs`]) under `<root>/logs/<SERVICE>-<N>/`:
//! `SERVICE/N` is one replica, `SERVICE` every `SERVICE-<digits>` directory, their lines merged by
//! time and prefixed `SERVICE-N | ` when there is more than one replica. As `docker logs` does,
//! what the container wrote on stdout goes to stdout and its stderr to stderr. Fragments of a
//! long line (`out+`/`err+` records) are joined back into one line, which carries the time of its
//! first fragment. `--tail N` keeps the last N lines of each replica; `--timestamps` puts the
//! RFC 3339 time before each line. `-f` keeps polling (every 200 ms, with [`read_from`] positions
//! that survive rotation) until SIGINT/SIGTERM or until stdout is closed, and picks up replica
//! directories that appear meanwhile (printed from their beginning).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::daemon::paths::Paths;
use crate::logs::{read_from, tail_with_position, Position, Record, Stream};

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// SERVICE (every replica, interleaved by time) or SERVICE/N (one replica)
    pub target: String,
    /// Keep printing new lines as they come
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines (per replica)
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
    /// Prefix each line with its time (RFC 3339)
    #[arg(short, long)]
    pub timestamps: bool,
}

/// How often `-f` looks for new records.
const POLL: Duration = Duration::from_millis(200);
/// How long `-f` waits for the rest of a line whose fragments stopped coming before printing it.
const OPEN_LINE_WAIT: Duration = Duration::from_secs(1);

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Service(String),
    Replica(String, u32),
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

impl Target {
    fn parse(t: &str) -> Result<Target> {
        let (service, replica) = match t.split_once('/') {
            Some((s, n)) => (s, Some(n)),
            None => (t, None),
        };
        if !valid_name(service) {
            bail!(
                "invalid target {t:?}: use SERVICE or SERVICE/N, where SERVICE is a service name \
                 (letters, digits, '_', '.', '-') and N a replica number"
            );
        }
        match replica {
            None => Ok(Target::Service(service.to_string())),
            Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => match n.parse() {
                Ok(n) => Ok(Target::Replica(service.to_string(), n)),
                Err(_) => bail!("invalid target {t:?}: replica number {n} is too large"),
            },
            Some(n) => bail!("invalid target {t:?}: {n:?} is not a replica number (SERVICE/N, e.g. web/1)"),
        }
    }
}

/// The replica number (slot) of a log directory name `SERVICE-<digits>` of `service`, or
/// `SERVICE-<digits>.b` (the second container of a slot during a start-first update).
fn replica_number(name: &str, service: &str) -> Option<u32> {
    let n = name.strip_prefix(service)?.strip_prefix('-')?;
    let n = n.strip_suffix(".b").unwrap_or(n);
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// The replica log directories of `service`, by replica number (slot) and name.
fn service_dirs(logs: &Path, service: &str) -> Result<BTreeMap<(u32, String), (String, PathBuf)>> {
    let mut out = BTreeMap::new();
    let rd = match std::fs::read_dir(logs) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", logs.display())),
    };
    for entry in rd {
        let entry = entry.with_context(|| format!("reading {}", logs.display()))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        let Some(n) = replica_number(&name, service) else { continue };
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.insert((n, name.clone()), (name, entry.path()));
        }
    }
    Ok(out)
}

/// One line of output: records joined back together.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    /// Time of its first fragment (RFC 3339, fixed width: sorts as text).
    time: String,
    stream: Stream,
    text: String,
    /// Which replica it came from (index into the replicas).
    replica: usize,
    /// Its first fragment may not be in what was read (the start of a `--tail` window).
    maybe_cut: bool,
}

/// Joins fragments (`out+`/`err+`) with what follows them on the same stream.
#[derive(Debug, Default)]
struct Joiner {
    open: [Option<(Line, Instant)>; 2],
}

fn index(s: Stream) -> usize {
    match s {
        Stream::Out => 0,
        Stream::Err => 1,
    }
}

impl Joiner {
    /// Adds a record; returns the line it completes, if any.
    fn push(&mut self, r: Record, replica: usize, maybe_cut: bool) -> Option<Line> {
        let slot = &mut self.open[index(r.stream)];
        let line = match slot.take() {
            Some((mut l, _)) => {
                l.text.push_str(&r.line);
                l
            }
            None => Line { time: r.time, stream: r.stream, text: r.line, replica, maybe_cut },
        };
        if r.partial {
            *slot = Some((line, Instant::now()));
            None
        } else {
            Some(line)
        }
    }

    /// The lines still open, oldest first.
    fn take_open(&mut self) -> Vec<Line> {
        let mut v: Vec<Line> = self.open.iter_mut().filter_map(|s| s.take().map(|(l, _)| l)).collect();
        v.sort_by(|a, b| a.time.cmp(&b.time));
        v
    }

    /// The lines open for longer than `wait`.
    fn take_stale(&mut self, wait: Duration) -> Vec<Line> {
        let mut v = Vec::new();
        for s in &mut self.open {
            if s.as_ref().is_some_and(|(_, since)| since.elapsed() >= wait) {
                if let Some((l, _)) = s.take() {
                    v.push(l);
                }
            }
        }
        v
    }
}

/// Joins `records` of one replica; lines sorted by time, the open ones (fragments whose end
/// is not there yet) included at their place. With `window_cut`, the first line of each stream is
/// marked as maybe missing its start.
fn join(records: Vec<Record>, replica: usize, window_cut: bool, joiner: &mut Joiner) -> Vec<Line> {
    let mut seen = [false; 2];
    let mut lines = Vec::new();
    for r in records {
        let first = !std::mem::replace(&mut seen[index(r.stream)], true);
        if let Some(l) = joiner.push(r, replica, window_cut && first) {
            lines.push(l);
        }
    }
    lines
}

/// The last `n` lines of a replica (open lines are left in `joiner`, and count), and the position
/// after them. Asks for more records while a kept line may be missing its beginning.
fn tail_lines(dir: &Path, n: usize, replica: usize, joiner: &mut Joiner) -> io::Result<(Vec<Line>, Position)> {
    if n == 0 {
        return Ok((Vec::new(), tail_with_position(dir, 0)?.1));
    }
    let mut want = n;
    loop {
        let (records, position) = tail_with_position(dir, want)?;
        let everything = records.len() < want;
        let mut j = Joiner::default();
        let lines = join(records, replica, !everything, &mut j);
        // (line, still open)
        let mut all: Vec<(Line, bool)> =
            lines.into_iter().map(|l| (l, false)).chain(j.take_open().into_iter().map(|l| (l, true))).collect();
        all.sort_by(|a, b| a.0.time.cmp(&b.0.time));
        let kept = all.split_off(all.len().saturating_sub(n));
        if everything || !kept.iter().any(|(l, _)| l.maybe_cut) || want == usize::MAX {
            // The open lines go to the caller's joiner (their end may come); the others are done.
            let mut done = Vec::new();
            for (l, open) in kept {
                if open {
                    let i = index(l.stream);
                    joiner.open[i] = Some((l, Instant::now()));
                } else {
                    done.push(l);
                }
            }
            return Ok((done, position));
        }
        want = want.saturating_mul(2);
    }
}

/// Writes lines to stdout or stderr by their stream.
struct Printer {
    out: io::BufWriter<io::Stdout>,
    err: io::Stderr,
    timestamps: bool,
    /// `SERVICE-N` of each replica; printed as a prefix when `prefix` is on.
    names: Vec<String>,
    prefix: bool,
}

impl Printer {
    /// Err only when stdout is gone (EPIPE and the like): the caller stops quietly.
    fn print(&mut self, l: &Line) -> io::Result<()> {
        let mut s = String::with_capacity(l.text.len() + 64);
        if self.prefix {
            s.push_str(&self.names[l.replica]);
            s.push_str(" | ");
        }
        if self.timestamps {
            s.push_str(&l.time);
            s.push(' ');
        }
        s.push_str(&l.text);
        s.push('\n');
        match l.stream {
            Stream::Out => self.out.write_all(s.as_bytes()),
            Stream::Err => {
                // Keep the order of the two streams on a terminal.
                self.out.flush()?;
                let _ = self.err.write_all(s.as_bytes());
                Ok(())
            }
        }
    }

    fn print_all(&mut self, lines: &mut [Line]) -> io::Result<()> {
        lines.sort_by(|a, b| a.time.cmp(&b.time));
        for l in lines.iter() {
            self.print(l)?;
        }
        self.out.flush()
    }
}

struct Replica {
    dir: PathBuf,
    position: Position,
    joiner: Joiner,
}

pub fn logs(root: &Path, a: LogsArgs) -> Result<i32> {
    let target = Target::parse(&a.target)?;
    let logs_dir = Paths::new(root).logs_dir();
    let found: Vec<(String, PathBuf)> = match &target {
        Target::Replica(service, n) => {
            // The slot's containers: `SERVICE-N`, and `SERVICE-N.b` of start-first updates.
            let found: Vec<(String, PathBuf)> = [format!("{service}-{n}"), format!("{service}-{n}.b")]
                .into_iter()
                .map(|name| (logs_dir.join(&name), name))
                .filter(|(dir, _)| dir.is_dir())
                .map(|(dir, name)| (name, dir))
                .collect();
            if found.is_empty() {
                bail!(
                    "no such replica: {service}/{n} (no log directory {})",
                    logs_dir.join(format!("{service}-{n}")).display()
                );
            }
            found
        }
        Target::Service(service) => {
            let dirs = service_dirs(&logs_dir, service)?;
            if dirs.is_empty() {
                bail!("no such service: {service} (no {service}-<N> log directory in {})", logs_dir.display());
            }
            dirs.into_values().collect()
        }
    };
    // For -f: SIGINT/SIGTERM are read from a signalfd, so they end the loop between two polls.
    let sigfd = if a.follow { Some(stop_signals()?) } else { None };
    let mut printer = Printer {
        out: io::BufWriter::with_capacity(64 * 1024, io::stdout()),
        err: io::stderr(),
        timestamps: a.timestamps,
        names: Vec::new(),
        prefix: found.len() > 1,
    };
    let mut replicas = Vec::new();
    let mut lines = Vec::new();
    for (i, (name, dir)) in found.into_iter().enumerate() {
        let mut joiner = Joiner::default();
        let (mut l, position) = tail_lines(&dir, a.tail.unwrap_or(usize::MAX), i, &mut joiner)
            .with_context(|| format!("reading the logs in {}", dir.display()))?;
        if !a.follow {
            l.extend(joiner.take_open());
        }
        lines.append(&mut l);
        printer.names.push(name);
        replicas.push(Replica { dir, position, joiner });
    }
    if printer.print_all(&mut lines).is_err() || !a.follow {
        return Ok(0);
    }
    let Some(sigfd) = sigfd else { return Ok(0) };
    loop {
        if wait_poll(&sigfd) {
            return Ok(0);
        }
        if let Target::Service(service) = &target {
            for (_, (name, dir)) in service_dirs(&logs_dir, service)? {
                if !replicas.iter().any(|r| r.dir == dir) {
                    printer.names.push(name);
                    replicas.push(Replica { dir, position: Position::default(), joiner: Joiner::default() });
                    printer.prefix = replicas.len() > 1;
                }
            }
        }
        let mut lines = Vec::new();
        for (i, r) in replicas.iter_mut().enumerate() {
            let (records, position) =
                read_from(&r.dir, r.position).with_context(|| format!("reading the logs in {}", r.dir.display()))?;
            r.position = position;
            lines.extend(join(records, i, false, &mut r.joiner));
            lines.extend(r.joiner.take_stale(OPEN_LINE_WAIT));
        }
        if printer.print_all(&mut lines).is_err() {
            return Ok(0);
        }
    }
}

/// Blocks SIGINT and SIGTERM and returns a signalfd that reports them.
fn stop_signals() -> Result<nix::sys::signalfd::SignalFd> {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    mask.thread_block().context("blocking SIGINT/SIGTERM")?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).context("creating a signalfd")
}

/// Sleeps one poll interval; true when it is time to stop (a stop signal, or stdout closed).
fn wait_poll(sigfd: &nix::sys::signalfd::SignalFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let stdout = io::stdout();
    // No events asked of stdout: poll reports POLLERR/POLLHUP when its reader is gone.
    let mut fds = [PollFd::new(sigfd.as_fd(), PollFlags::POLLIN), PollFd::new(stdout.as_fd(), PollFlags::empty())];
    let started = Instant::now();
    match poll(&mut fds, PollTimeout::try_from(POLL).unwrap_or(PollTimeout::MAX)) {
        Ok(0) => false,
        Ok(_) => {
            let closed = fds[1]
                .revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL));
            let signalled = fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLIN));
            signalled || closed
        }
        Err(_) => {
            // EINTR (a stopped and continued process): sleep out the rest, never spin.
            std::thread::sleep(POLL.saturating_sub(started.elapsed()));
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::LogWriter;

    #[test]
    fn targets() {
        assert_eq!(Target::parse("web").unwrap(), Target::Service("web".into()));
        assert_eq!(Target::parse("web/2").unwrap(), Target::Replica("web".into(), 2));
        assert_eq!(Target::parse("web.v2_x-y/02").unwrap(), Target::Replica("web.v2_x-y".into(), 2));
        for bad in ["", "/1", "web/", "web/x", "web/1/2", "../etc", "-web", "web/-1", "a b", "web/99999999999"] {
            let e = Target::parse(bad).unwrap_err().to_string();
            assert!(e.contains("invalid target"), "{bad}: {e}");
        }
    }

    #[test]
    fn replica_dirs_of_a_service() {
        assert_eq!(replica_number("web-1", "web"), Some(1));
        assert_eq!(replica_number("web-12", "web"), Some(12));
        assert_eq!(replica_number("web-1-1", "web"), None);
        assert_eq!(replica_number("web-1-1", "web-1"), Some(1));
        assert_eq!(replica_number("webx-1", "web"), None);
        assert_eq!(replica_number("web-", "web"), None);
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(replica_number("web-2.b", "web"), Some(2));
        assert_eq!(replica_number("web-2.c", "web"), None);
        for d in ["web-2", "web-10", "web-1-1", "api-1", "web-2.b"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("web-3"), "").unwrap();
        let names: Vec<String> = service_dirs(dir.path(), "web").unwrap().into_values().map(|(n, _)| n).collect();
        assert_eq!(names, ["web-2", "web-2.b", "web-10"]);
        assert!(service_dirs(&dir.path().join("none"), "web").unwrap().is_empty());
    }

    fn rec(time: u32, stream: Stream, line: &str, partial: bool) -> Record {
        Record { time: format!("2024-01-01T00:00:{time:02}.000000000Z"), stream, line: line.into(), partial }
    }

    #[test]
    fn fragments_join_per_stream() {
        let mut j = Joiner::default();
        let lines = join(
            vec![
                rec(1, Stream::Out, "hel", true),
                rec(2, Stream::Err, "e1", false),
                rec(3, Stream::Out, "lo", false),
                rec(4, Stream::Err, "tail", true),
            ],
            0,
            false,
            &mut j,
        );
        let got: Vec<(&str, &str)> = lines.iter().map(|l| (l.time.as_str(), l.text.as_str())).collect();
        assert_eq!(got, [("2024-01-01T00:00:02.000000000Z", "e1"), ("2024-01-01T00:00:01.000000000Z", "hello")]);
        let open = j.take_open();
        assert_eq!(open.len(), 1);
        assert_eq!((open[0].stream, open[0].text.as_str()), (Stream::Err, "tail"));
    }

    #[test]
    fn tail_counts_lines_not_fragments() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(dir.path(), 0, 3).unwrap();
        w.write(Stream::Out, b"one\ntwo\n").unwrap();
        // A line of 3 fragments (MAX_LINE splits it), then a short one.
        let long = "x".repeat(crate::logs::MAX_LINE * 2 + 5);
        w.write(Stream::Out, format!("{long}\nthree\n").as_bytes()).unwrap();
        w.write(Stream::Err, b"unterminated").unwrap();
        w.flush().unwrap();
        let mut j = Joiner::default();
        let (lines, _) = tail_lines(dir.path(), 2, 0, &mut j).unwrap();
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        // The last two lines: the joined long line and "three"; the unterminated line is open.
        assert_eq!(texts.len() + j.open.iter().flatten().count(), 2, "{texts:?}");
        let mut j = Joiner::default();
        let (lines, _) = tail_lines(dir.path(), 3, 0, &mut j).unwrap();
        assert_eq!(lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(), [long.as_str(), "three"]);
        assert_eq!(j.take_open()[0].text, "unterminated");
        let mut j = Joiner::default();
        let (lines, _) = tail_lines(dir.path(), 100, 0, &mut j).unwrap();
        assert_eq!(lines.len(), 4);
        assert!(lines.iter().all(|l| !l.maybe_cut || l.text != long));
    }

    #[test]
    fn tail_window_never_starts_inside_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(dir.path(), 0, 3).unwrap();
        let long = "y".repeat(crate::logs::MAX_LINE * 4);
        w.write(Stream::Out, format!("first\n{long}\n").as_bytes()).unwrap();
        // The last line is 4 records: a window of 1 record would cut it.
        let mut j = Joiner::default();
        let (lines, _) = tail_lines(dir.path(), 1, 0, &mut j).unwrap();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].text.len(), long.len());
    }
}
