//! Log storage for a replica's stdout/stderr: size-rotated files that survive agent restarts.
//!
//! # Layout and format
//!
//! A replica's log directory holds `current.log` (being written) and the rotated files `1.log`
//! (newest) … `N.log` (oldest). Each record is one line, greppable and readable with `cat`:
//!
//! ```text
//! 2024-05-01T12:00:00.123456789Z out hello world
//! 2024-05-01T12:00:00.123457000Z err+ first 16 KiB of a long line…
//! 2024-05-01T12:00:00.123457000Z err …and its end
//! ```
//!
//! The timestamp is RFC 3339 UTC with nanoseconds (fixed width), taken when the line's first byte
//! arrived. The stream is `out` or `err`; a trailing `+` (`out+`, `err+`) marks a *fragment*: the
//! original line continues in the next fragment of the same stream, either because it was longer
//! than [`MAX_LINE`] bytes (split on a UTF-8 boundary) or because the writer was flushed while the
//! line had no newline yet. The content is the line's bytes without its newline; invalid UTF-8 is
//! kept on disk as is and read back lossily.
//!
//! # Rotation and crashes
//!
//! `max_size` bounds `current.log` (0 = unlimited); `max_files` counts every file including
//! `current.log`, as compose's `max-file` does (default `10m` × 3). When a record would make
//! `current.log` exceed `max_size`, the files are renamed, oldest first:
//! `(N-2).log → (N-1).log`, …, `1.log → 2.log`, `current.log → 1.log`, then a new `current.log` is
//! created. Renames are atomic and overwrite the target, so at every instant each record is in
//! exactly one file: a crash at any point of a rotation loses nothing from `current.log` and
//! duplicates nothing; at worst the next rotation drops one old file early (a gap left by the
//! interrupted sequence gets filled). Records are written with one `write` call per
//! [`LogWriter::write`] and no user-space buffering beyond an unterminated line, so a crash loses
//! at most that partial line; a record torn by a crash is terminated on reopen so it cannot glue
//! onto the next one.
//!
//! # Following across rotations
//!
//! A [`Position`] is the `(device, inode, offset)` of the last consumed byte's file, plus a hash of
//! that file's first `min(offset, 64)` bytes (already consumed, so immutable). Renames keep
//! inodes, so after `current.log` becomes `1.log` the reader finds its file again by inode,
//! finishes it, then continues with the newer files from offset 0: nothing is lost or read twice
//! as long as the reader polls before its file rotates out of the kept set (if it has, the reader
//! restarts at the oldest file still present). The directory is opened newest-first and files are
//! de-duplicated by inode, so a rotation racing with a read can at worst postpone newer records to
//! the next call. Only complete (newline-terminated) lines of `current.log` are consumed; a record
//! the writer is still writing is left for the next call. Inodes of deleted files are reused at
//! once on most file systems, so the inode alone is not an identity: the head hash (the first
//! record starts with a nanosecond timestamp) tells a new file with a recycled inode from the
//! reader's old one. Known limit: a position at offset 0 (the reader saw its file empty) has no
//! head to check.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub use crate::manifest::units::parse_size;

/// The file being written.
pub const CURRENT: &str = "current.log";
/// Longest record content; longer lines are split into fragments (`out+`/`err+`).
pub const MAX_LINE: usize = 16 * 1024;
/// Compose's defaults for `logging.options`: `max-size: 10m`, `max-file: 3`.
pub const DEFAULT_MAX_SIZE: u64 = 10 << 20;
pub const DEFAULT_MAX_FILES: u32 = 3;

/// Which output of the process a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Out,
    Err,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Out => "out",
            Stream::Err => "err",
        }
    }

    fn index(self) -> usize {
        match self {
            Stream::Out => 0,
            Stream::Err => 1,
        }
    }
}

/// One record read back from the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// RFC 3339 UTC timestamp with nanoseconds, as stored.
    pub time: String,
    pub stream: Stream,
    /// The content, without newline (lossy UTF-8).
    pub line: String,
    /// A fragment: the original line continues in the next record of this stream.
    pub partial: bool,
}

impl Record {
    /// Parses one stored line (without its newline); `None` for a malformed (e.g. torn) line.
    pub fn parse(raw: &[u8]) -> Option<Record> {
        let sp = raw.iter().position(|&b| b == b' ')?;
        let (time, rest) = (&raw[..sp], &raw[sp + 1..]);
        let sp = rest.iter().position(|&b| b == b' ')?;
        let (stream, line) = (&rest[..sp], &rest[sp + 1..]);
        let (stream, partial) = match stream {
            b"out" => (Stream::Out, false),
            b"err" => (Stream::Err, false),
            b"out+" => (Stream::Out, true),
            b"err+" => (Stream::Err, true),
            _ => return None,
        };
        if time.len() < 20 || !time.ends_with(b"Z") {
            return None;
        }
        Some(Record {
            time: String::from_utf8_lossy(time).into_owned(),
            stream,
            line: String::from_utf8_lossy(line).into_owned(),
            partial,
        })
    }
}

/// Path of the `n`th rotated file (`n >= 1`), or of `current.log` for `n == 0`.
fn file_path(dir: &Path, n: u32) -> PathBuf {
    if n == 0 {
        dir.join(CURRENT)
    } else {
        dir.join(format!("{n}.log"))
    }
}

/// The numbers `n` of the rotated files `<n>.log` present in `dir`.
fn rotated_numbers(dir: &Path) -> io::Result<Vec<u32>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(num) = name.strip_suffix(".log") else { continue };
        if !num.is_empty() && num.bytes().all(|b| b.is_ascii_digit()) && !num.starts_with('0') {
            if let Ok(n) = num.parse::<u32>() {
                out.push(n);
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Performs the renames of one rotation, at most `max_steps` of them (`usize::MAX` for all; a
/// smaller number simulates a crash in the middle). Missing files are skipped. Does not create the
/// new `current.log`. With `max_files <= 1` the only "rotation" is dropping `current.log`.
pub(crate) fn rotate_files(dir: &Path, max_files: u32, max_steps: usize) -> io::Result<()> {
    if max_files <= 1 {
        if max_steps > 0 {
            ignore_missing(fs::remove_file(file_path(dir, 0)))?;
        }
        return Ok(());
    }
    // Keep 1..=max_files-1; renaming over the oldest drops it.
    for n in (0..max_files - 1).rev().take(max_steps) {
        ignore_missing(fs::rename(file_path(dir, n), file_path(dir, n + 1)))?;
    }
    Ok(())
}

fn ignore_missing(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// 0600, in a 0700 directory: a service may print its secrets, and only root reads logs (through
/// `skiff logs`). Not 0640 as /var/log often is: the group of a root process is root, which
/// grants nobody anything more, and an `adm`-style group would have to be chosen and documented.
/// A file an older skiff made 0640 is narrowed when the shim reopens it.
fn open_current(dir: &Path) -> io::Result<File> {
    let f = OpenOptions::new().create(true).append(true).read(true).mode(0o600).open(file_path(dir, 0))?;
    let mode = f.metadata()?.mode();
    if mode & 0o077 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7700))?;
    }
    Ok(f)
}

/// Appends a replica's output to `<dir>/current.log`, rotating by size.
#[derive(Debug)]
pub struct LogWriter {
    dir: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    max_files: u32,
    /// Unterminated line of each stream and when its first byte arrived.
    partial: [(Vec<u8>, Option<SystemTime>); 2],
}

impl LogWriter {
    /// Opens (creating `dir` and `current.log` if needed) and continues after what is there.
    /// `max_size == 0` means no rotation; `max_files == 0` is taken as 1. Rotated files beyond
    /// `max_files` (left by a larger earlier setting) are removed.
    pub fn open(dir: &Path, max_size: u64, max_files: u32) -> io::Result<LogWriter> {
        skiff_images::fsutil::create_private_dir(dir)?;
        skiff_images::fsutil::make_private(dir)?; // one an older skiff made 0755
        let max_files = max_files.max(1);
        for n in rotated_numbers(dir)? {
            if n >= max_files {
                ignore_missing(fs::remove_file(file_path(dir, n)))?;
            }
        }
        let mut file = open_current(dir)?;
        let mut size = file.metadata()?.len();
        if size > 0 {
            // A record torn by a crash: terminate it so the next one starts on its own line.
            let mut last = [0u8];
            file.seek(SeekFrom::Start(size - 1))?;
            file.read_exact(&mut last)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
                size += 1;
            }
        }
        Ok(LogWriter {
            dir: dir.to_path_buf(),
            file,
            size,
            max_size,
            max_files,
            partial: [(Vec::new(), None), (Vec::new(), None)],
        })
    }

    /// The directory written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Current size of `current.log` as accounted by the writer.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Writes a chunk of a stream's output: every complete line becomes a record; an unterminated
    /// end is kept until a later chunk completes it (or [`flush`](Self::flush)). Lines longer than
    /// [`MAX_LINE`] are split into fragments.
    pub fn write(&mut self, stream: Stream, bytes: &[u8]) -> io::Result<()> {
        let now = SystemTime::now();
        let mut out = Vec::with_capacity(bytes.len() + 64);
        let mut buf = std::mem::take(&mut self.partial[stream.index()].0);
        let mut since = self.partial[stream.index()].1.take();
        let mut result = Ok(());
        for (i, piece) in bytes.split(|&b| b == b'\n').enumerate() {
            if i > 0 {
                // The previous piece ended with a newline.
                let t = since.take().unwrap_or(now);
                if let Err(e) = self.emit(&mut out, t, stream, &buf, false) {
                    result = Err(e);
                    break;
                }
                buf.clear();
            }
            if !piece.is_empty() && since.is_none() {
                since = Some(now);
            }
            buf.extend_from_slice(piece);
            while buf.len() > MAX_LINE {
                let cut = utf8_cut(&buf, MAX_LINE);
                let t = since.unwrap_or(now);
                if let Err(e) = self.emit(&mut out, t, stream, &buf[..cut], true) {
                    result = Err(e);
                    break;
                }
                buf.drain(..cut);
            }
            if result.is_err() {
                break;
            }
        }
        if buf.is_empty() {
            since = None;
        }
        self.partial[stream.index()] = (buf, since);
        result?;
        self.write_out(&mut out)
    }

    /// Writes the unterminated lines as fragments (`out+`/`err+`); a later chunk continues them.
    pub fn flush(&mut self) -> io::Result<()> {
        let mut out = Vec::new();
        for stream in [Stream::Out, Stream::Err] {
            let (buf, since) = std::mem::take(&mut self.partial[stream.index()]);
            if !buf.is_empty() {
                self.emit(&mut out, since.unwrap_or_else(SystemTime::now), stream, &buf, true)?;
            }
        }
        self.write_out(&mut out)
    }

    /// Appends a record to `out`, first writing `out` and rotating if the record would overflow.
    fn emit(
        &mut self,
        out: &mut Vec<u8>,
        time: SystemTime,
        stream: Stream,
        line: &[u8],
        partial: bool,
    ) -> io::Result<()> {
        let time = humantime::format_rfc3339_nanos(time).to_string();
        let tag = stream.as_str();
        let len = (time.len() + 1 + tag.len() + usize::from(partial) + 1 + line.len() + 1) as u64;
        let pending = self.size + out.len() as u64;
        if self.max_size > 0 && pending > 0 && pending + len > self.max_size {
            self.write_out(out)?;
            self.rotate()?;
        }
        out.extend_from_slice(time.as_bytes());
        out.push(b' ');
        out.extend_from_slice(tag.as_bytes());
        if partial {
            out.push(b'+');
        }
        out.push(b' ');
        out.extend_from_slice(line);
        out.push(b'\n');
        Ok(())
    }

    fn write_out(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        self.file.write_all(out)?;
        self.size += out.len() as u64;
        out.clear();
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        rotate_files(&self.dir, self.max_files, usize::MAX)?;
        self.file = open_current(&self.dir)?;
        self.size = self.file.metadata()?.len();
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Largest cut `<= max` that does not split a UTF-8 sequence (falls back to `max` for binary).
fn utf8_cut(buf: &[u8], max: usize) -> usize {
    let mut cut = max;
    while cut > max.saturating_sub(3) && cut > 0 && (buf[cut] & 0xC0) == 0x80 {
        cut -= 1;
    }
    if (buf[cut] & 0xC0) == 0x80 {
        max
    } else {
        cut
    }
}

/// Where a follower is in the logs; see the module documentation. `Position::default()` is the
/// beginning (of the oldest file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Position {
    pub dev: u64,
    pub ino: u64,
    pub offset: u64,
    /// FNV-1a of the file's first `min(offset, HEAD)` bytes.
    pub head: u64,
}

/// How many leading bytes of a file identify it, with its inode.
const HEAD: u64 = 64;

fn head_hash(file: &File, offset: u64) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; offset.min(HEAD) as usize];
    file.read_exact_at(&mut buf, 0)?;
    Ok(buf.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)))
}

/// An open log file of a snapshot of the directory.
struct Opened {
    file: File,
    dev: u64,
    ino: u64,
    len: u64,
}

/// Opens the log files newest first (so a racing rotation can only repeat a file, which is then
/// dropped by inode), and returns them oldest first.
fn snapshot(dir: &Path) -> io::Result<Vec<Opened>> {
    let mut numbers = match rotated_numbers(dir) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    numbers.insert(0, 0);
    let mut files: Vec<Opened> = Vec::new();
    for n in numbers {
        let file = match File::open(file_path(dir, n)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        if files.iter().any(|f| f.dev == meta.dev() && f.ino == meta.ino()) {
            continue;
        }
        files.push(Opened { file, dev: meta.dev(), ino: meta.ino(), len: meta.len() });
    }
    files.reverse();
    Ok(files)
}

/// Reads `file` from `offset` and returns the records and the number of bytes consumed; with
/// `complete_only`, an unterminated last line is left unconsumed.
fn read_records(file: &mut File, offset: u64, complete_only: bool) -> io::Result<(Vec<Record>, u64)> {
    file.seek(SeekFrom::Start(offset))?;
    let mut data = Vec::new();
    file.read_to_end(&mut data)?;
    let end = if complete_only { data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) } else { data.len() };
    let records = data[..end].split(|&b| b == b'\n').filter(|l| !l.is_empty()).filter_map(Record::parse).collect();
    Ok((records, end as u64))
}

/// The last `n` records across `current.log` and the rotated files, oldest first.
pub fn tail(dir: &Path, n: usize) -> io::Result<Vec<Record>> {
    Ok(tail_with_position(dir, n)?.0)
}

/// [`tail`] plus the position right after the returned records, to [`read_from`] for `-f`.
pub fn tail_with_position(dir: &Path, n: usize) -> io::Result<(Vec<Record>, Position)> {
    let mut files = snapshot(dir)?;
    let mut position = Position::default();
    let mut chunks: Vec<Vec<Record>> = Vec::new();
    let mut count = 0;
    let last = files.len().saturating_sub(1);
    for (i, f) in files.iter_mut().enumerate().rev() {
        if count >= n && i != last {
            break;
        }
        let (records, consumed) = read_records(&mut f.file, 0, i == last)?;
        if i == last {
            position = Position { dev: f.dev, ino: f.ino, offset: consumed, head: head_hash(&f.file, consumed)? };
        }
        count += records.len();
        chunks.push(records);
    }
    let mut all: Vec<Record> = chunks.into_iter().rev().flatten().collect();
    let skip = all.len().saturating_sub(n);
    all.drain(..skip);
    Ok((all, position))
}

/// The records written after `position`, oldest first, and the position to continue from.
/// Polling this is `skiff logs -f`; it tolerates rotations between calls (module docs).
pub fn read_from(dir: &Path, position: Position) -> io::Result<(Vec<Record>, Position)> {
    let mut files = snapshot(dir)?;
    if files.is_empty() {
        return Ok((Vec::new(), position));
    }
    // Resume in the file the position names, or (start, or that file is gone) at the oldest file.
    let mut resume = None;
    for (i, f) in files.iter().enumerate() {
        if position.ino != 0
            && (f.dev, f.ino) == (position.dev, position.ino)
            && position.offset <= f.len
            && head_hash(&f.file, position.offset)? == position.head
        {
            resume = Some(i);
            break;
        }
    }
    let (start, mut offset) = match resume {
        Some(i) => (i, position.offset),
        None => (0, 0),
    };
    let last = files.len() - 1;
    let mut records = Vec::new();
    let mut new_position = position;
    for (i, f) in files.iter_mut().enumerate().skip(start) {
        let (mut r, consumed) = read_records(&mut f.file, offset, i == last)?;
        records.append(&mut r);
        let end = offset + consumed;
        new_position = Position { dev: f.dev, ino: f.ino, offset: end, head: head_hash(&f.file, end)? };
        offset = 0;
    }
    Ok((records, new_position))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(records: &[Record]) -> Vec<String> {
        records.iter().map(|r| r.line.clone()).collect()
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    /// Every stored record, oldest first.
    fn all(dir: &Path) -> Vec<String> {
        lines(&tail(dir, usize::MAX).unwrap())
    }

    /// A record of a `line` of `n` content bytes is 30 (timestamp) + 1 + 3 + 1 + n + 1 bytes.
    const OVERHEAD: u64 = 36;

    #[test]
    fn format_and_parse() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(dir.path(), 0, 3).unwrap();
        w.write(Stream::Out, b"hello world\n").unwrap();
        w.write(Stream::Err, b"oops\n\n").unwrap();
        let text = fs::read_to_string(dir.path().join(CURRENT)).unwrap();
        let raw: Vec<&str> = text.lines().collect();
        assert_eq!(raw.len(), 3);
        assert!(raw[0].ends_with("Z out hello world"), "{}", raw[0]);
        assert_eq!(raw[0].len() as u64, OVERHEAD - 1 + 11);
        assert!(raw[1].ends_with("Z err oops"));
        assert!(raw[2].ends_with("Z err "));
        let recs = tail(dir.path(), 10).unwrap();
        assert_eq!(lines(&recs), ["hello world", "oops", ""]);
        assert_eq!(recs[1].stream, Stream::Err);
        assert!(!recs[0].partial);
        humantime::parse_rfc3339(&recs[0].time).unwrap();
        let mode = fs::metadata(dir.path().join(CURRENT)).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600, "a service's output may hold secrets: mode {mode:o}");
        assert_eq!(w.size(), text.len() as u64);
        assert!(Record::parse(b"2024-01-01T00:0").is_none());
        assert!(Record::parse(b"2024-01-01T00:00:00.000000000Z xx y").is_none());
        // One an older skiff made 0640 is narrowed when the shim opens it again.
        drop(w);
        fs::set_permissions(dir.path().join(CURRENT), fs::Permissions::from_mode(0o640)).unwrap();
        let _w = LogWriter::open(dir.path(), 0, 3).unwrap();
        assert_eq!(fs::metadata(dir.path().join(CURRENT)).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn partial_lines_across_writes_and_streams() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(dir.path(), 0, 3).unwrap();
        w.write(Stream::Out, b"hel").unwrap();
        w.write(Stream::Err, b"e1\ne").unwrap();
        assert_eq!(all(dir.path()), ["e1"]);
        w.write(Stream::Out, b"lo\nwor").unwrap();
        w.write(Stream::Err, b"2\n").unwrap();
        assert_eq!(all(dir.path()), ["e1", "hello", "e2"]);
        // Flush writes the unterminated line as a fragment; a later write continues it.
        w.flush().unwrap();
        w.write(Stream::Out, b"ld\n").unwrap();
        let recs = tail(dir.path(), 10).unwrap();
        assert_eq!(lines(&recs), ["e1", "hello", "e2", "wor", "ld"]);
        assert!(recs[3].partial && !recs[4].partial);
        // Drop flushes too.
        w.write(Stream::Err, b"no newline").unwrap();
        drop(w);
        let recs = tail(dir.path(), 1).unwrap();
        assert_eq!(lines(&recs), ["no newline"]);
        assert!(recs[0].partial);
        assert_eq!(recs[0].stream, Stream::Err);
    }

    #[test]
    fn long_lines_are_split() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(dir.path(), 0, 3).unwrap();
        let long = "x".repeat(MAX_LINE * 2 + 10);
        w.write(Stream::Out, format!("{long}\n").as_bytes()).unwrap();
        // Exactly MAX_LINE stays whole; multibyte characters are not cut.
        let exact = "y".repeat(MAX_LINE);
        w.write(Stream::Out, format!("{exact}\n").as_bytes()).unwrap();
        let multi = format!("a{}", "é".repeat(MAX_LINE));
        // Arrives in small chunks.
        for chunk in format!("{multi}\n").as_bytes().chunks(1000) {
            w.write(Stream::Err, chunk).unwrap();
        }
        let recs = tail(dir.path(), 100).unwrap();
        let parts: Vec<(usize, bool)> = recs.iter().map(|r| (r.line.len(), r.partial)).collect();
        assert_eq!(&parts[..4], [(MAX_LINE, true), (MAX_LINE, true), (10, false), (MAX_LINE, false)]);
        let out: String = recs[..3].iter().map(|r| r.line.as_str()).collect();
        assert_eq!(out, long);
        let err: Vec<&Record> = recs[4..].iter().collect();
        assert!(err.iter().all(|r| r.stream == Stream::Err && !r.line.contains('\u{fffd}')));
        assert!(err[..err.len() - 1].iter().all(|r| r.partial) && !err.last().unwrap().partial);
        assert_eq!(err.iter().map(|r| r.line.as_str()).collect::<String>(), multi);
        assert!(fs::read(dir.path().join(CURRENT)).unwrap().split(|&b| b == b'\n').all(|l| l.len() <= MAX_LINE + 40));
    }

    #[test]
    fn rotation_at_size_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        // Room for exactly 3 records of 4-byte lines per file.
        let max = 3 * (OVERHEAD + 4);
        let mut w = LogWriter::open(dir.path(), max, 3).unwrap();
        for i in 0..3 {
            w.write(Stream::Out, format!("l{i:03}\n").as_bytes()).unwrap();
        }
        assert_eq!(files_in(dir.path()), [CURRENT]);
        assert_eq!(w.size(), max);
        w.write(Stream::Out, b"l003\n").unwrap();
        assert_eq!(files_in(dir.path()), ["1.log", CURRENT]);
        // Many records in one chunk rotate several times.
        let chunk: String = (4..20).map(|i| format!("l{i:03}\n")).collect();
        w.write(Stream::Out, chunk.as_bytes()).unwrap();
        assert_eq!(files_in(dir.path()), ["1.log", "2.log", CURRENT]);
        for f in files_in(dir.path()) {
            assert!(fs::metadata(dir.path().join(f)).unwrap().len() <= max);
        }
        // Oldest kept: 3 files × 3 records, the last file holds 2 (20 = 6×3 + 2).
        let expect: Vec<String> = (12..20).map(|i| format!("l{i:03}")).collect();
        assert_eq!(all(dir.path()), expect);
        assert_eq!(lines(&tail(dir.path(), 4).unwrap()), expect[4..]);
        // A record bigger than max_size still gets written (alone in its file).
        w.write(Stream::Err, format!("{}\n", "z".repeat(max as usize)).as_bytes()).unwrap();
        assert_eq!(all(dir.path()).last().unwrap().len(), max as usize);
    }

    #[test]
    fn max_files_one_and_shrinking() {
        let dir = tempfile::tempdir().unwrap();
        let max = 2 * (OVERHEAD + 4);
        let mut w = LogWriter::open(dir.path(), max, 5).unwrap();
        for i in 0..10 {
            w.write(Stream::Out, format!("l{i:03}\n").as_bytes()).unwrap();
        }
        assert_eq!(files_in(dir.path()), ["1.log", "2.log", "3.log", "4.log", CURRENT]);
        drop(w);
        // Reopened with a smaller max-file: the extra files go.
        let mut w = LogWriter::open(dir.path(), max, 1).unwrap();
        assert_eq!(files_in(dir.path()), [CURRENT]);
        assert_eq!(all(dir.path()), ["l008", "l009"]);
        w.write(Stream::Out, b"l010\n").unwrap();
        assert_eq!(files_in(dir.path()), [CURRENT]);
        assert_eq!(all(dir.path()), ["l010"]);
    }

    #[test]
    fn reopen_continues_and_counts_existing_size() {
        let dir = tempfile::tempdir().unwrap();
        let max = 3 * (OVERHEAD + 4);
        let mut w = LogWriter::open(dir.path(), max, 3).unwrap();
        w.write(Stream::Out, b"l000\nl001\n").unwrap();
        drop(w);
        let mut w = LogWriter::open(dir.path(), max, 3).unwrap();
        assert_eq!(w.size(), 2 * (OVERHEAD + 4));
        w.write(Stream::Out, b"l002\n").unwrap();
        assert_eq!(files_in(dir.path()), [CURRENT]);
        w.write(Stream::Out, b"l003\n").unwrap();
        assert_eq!(files_in(dir.path()), ["1.log", CURRENT]);
        assert_eq!(all(dir.path()), ["l000", "l001", "l002", "l003"]);
    }

    #[test]
    fn reopen_terminates_a_torn_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(dir.path(), 0, 3).unwrap();
        w.write(Stream::Out, b"whole\n").unwrap();
        drop(w);
        // A crash in the middle of writing a record.
        let mut f = OpenOptions::new().append(true).open(dir.path().join(CURRENT)).unwrap();
        f.write_all(b"2024-01-01T00:00:00.000000000Z out tor").unwrap();
        let mut w = LogWriter::open(dir.path(), 0, 3).unwrap();
        w.write(Stream::Out, b"next\n").unwrap();
        assert_eq!(all(dir.path()), ["whole", "tor", "next"]);
    }

    #[test]
    fn crash_mid_rotation_loses_and_duplicates_nothing() {
        // max_files = 4: a rotation is 3 renames; crash after 0, 1, 2 or 3 of them.
        for steps in 0..=3 {
            let dir = tempfile::tempdir().unwrap();
            let max = 2 * (OVERHEAD + 4);
            let mut w = LogWriter::open(dir.path(), max, 4).unwrap();
            // 7 records: 1.log..3.log hold 2 each (l000..l005), current holds l006.
            for i in 0..7 {
                w.write(Stream::Out, format!("l{i:03}\n").as_bytes()).unwrap();
            }
            assert_eq!(files_in(dir.path()), ["1.log", "2.log", "3.log", CURRENT]);
            w.write(Stream::Out, b"l007\n").unwrap();
            let before = all(dir.path());
            // "Crash": part of a rotation, then the agent restarts.
            rotate_files(dir.path(), 4, steps).unwrap();
            drop(w);
            let after_crash = all(dir.path());
            // Renames only drop the oldest file (overwritten), never the current one, never duplicate.
            assert!(after_crash.ends_with(&["l006".to_string(), "l007".to_string()]), "{steps}: {after_crash:?}");
            let lost = before.len() - after_crash.len();
            assert!(lost <= 2, "{steps}: more than one file lost: {after_crash:?}");
            assert!(before.ends_with(&after_crash), "{steps}: {after_crash:?}");

            let mut w = LogWriter::open(dir.path(), max, 4).unwrap();
            for i in 8..12 {
                w.write(Stream::Out, format!("l{i:03}\n").as_bytes()).unwrap();
            }
            let after = all(dir.path());
            let mut sorted = after.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted, after, "{steps}: order or duplicates: {after:?}");
            assert!(after.ends_with(&["l006", "l007", "l008", "l009", "l010", "l011"].map(String::from)));
            assert!(after.len() >= 6, "{steps}: {after:?}");
        }
    }

    #[test]
    fn follow_across_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let max = 2 * (OVERHEAD + 4);
        let mut w = LogWriter::open(dir.path(), max, 3).unwrap();
        // Nothing there yet.
        let (recs, mut pos) = read_from(dir.path(), Position::default()).unwrap();
        assert!(recs.is_empty());
        let (mut seen, mut expect) = (Vec::new(), Vec::new());
        let mut n = 0;
        // Writes of 1..=3 records, so rotations land between polls and inside writes (up to two
        // rotations between polls with 3 files kept); an unterminated line is pending at each poll.
        for round in 0..15 {
            let mut chunk = String::new();
            for _ in 0..round % 3 + 1 {
                chunk.push_str(&format!("l{n:03}\n"));
                expect.push(format!("l{n:03}"));
                n += 1;
            }
            w.write(Stream::Out, chunk.as_bytes()).unwrap();
            w.write(Stream::Err, b"pa").unwrap();
            let (recs, p) = read_from(dir.path(), pos).unwrap();
            seen.extend(lines(&recs));
            pos = p;
            w.write(Stream::Err, b"rt\n").unwrap();
            expect.push("part".to_string());
        }
        let (recs, p) = read_from(dir.path(), pos).unwrap();
        seen.extend(lines(&recs));
        assert_eq!(seen, expect);
        // Nothing new: nothing read twice.
        assert!(read_from(dir.path(), p).unwrap().0.is_empty());
        assert_eq!(files_in(dir.path()), ["1.log", "2.log", CURRENT]);
    }

    #[test]
    fn follow_leaves_a_record_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(dir.path(), 0, 3).unwrap();
        w.write(Stream::Out, b"one\n").unwrap();
        let mut f = OpenOptions::new().append(true).open(dir.path().join(CURRENT)).unwrap();
        f.write_all(b"2024-01-01T00:00:00.000000000Z out tw").unwrap();
        let (recs, pos) = read_from(dir.path(), Position::default()).unwrap();
        assert_eq!(lines(&recs), ["one"]);
        assert_eq!(lines(&tail(dir.path(), 5).unwrap()), ["one"]);
        f.write_all(b"o\n").unwrap();
        let (recs, _) = read_from(dir.path(), pos).unwrap();
        assert_eq!(lines(&recs), ["two"]);
    }

    #[test]
    fn follow_from_tail_position_and_lost_file() {
        let dir = tempfile::tempdir().unwrap();
        let max = 2 * (OVERHEAD + 4);
        let mut w = LogWriter::open(dir.path(), max, 2).unwrap();
        w.write(Stream::Out, b"l000\nl001\nl002\n").unwrap();
        let (recs, pos) = tail_with_position(dir.path(), 2).unwrap();
        assert_eq!(lines(&recs), ["l001", "l002"]);
        w.write(Stream::Out, b"l003\n").unwrap();
        let (recs, pos2) = read_from(dir.path(), pos).unwrap();
        assert_eq!(lines(&recs), ["l003"]);
        // `--tail 0 -f`: only what comes next.
        let (recs, end) = tail_with_position(dir.path(), 0).unwrap();
        assert!(recs.is_empty());
        assert_eq!(end, pos2);
        // The reader falls behind by more than the kept files: it restarts at the oldest kept file.
        w.write(Stream::Out, b"l004\nl005\nl006\nl007\nl008\n").unwrap();
        let (recs, _) = read_from(dir.path(), pos2).unwrap();
        assert_eq!(lines(&recs), ["l006", "l007", "l008"]);
        // Missing directory: nothing, no error.
        assert!(tail(&dir.path().join("nope"), 5).unwrap().is_empty());
        assert!(read_from(&dir.path().join("nope"), Position::default()).unwrap().0.is_empty());
    }

    #[test]
    fn sizes_compose_style() {
        assert_eq!(parse_size("10m"), Ok(10 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("500k"), Ok(500 << 10));
        assert_eq!(parse_size("1234"), Ok(1234));
        assert!(parse_size("ten").is_err());
    }
}
