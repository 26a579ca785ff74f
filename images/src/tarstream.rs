//! A streaming tar reader with bounded extension records, for layers and `skiff load`
//! archives.
//!
//! The `tar` crate's entry iterator reads a GNU long name (`L`), long link name (`K`) or PAX
//! header (`x`) whole into memory, whatever its size field says: a 3 GiB long name in a
//! 3 MB gzipped layer costs gigabytes. Here every extension record is checked against its
//! limit *before* a byte of it is read, and read into a buffer of at most that size:
//!
//! - GNU long names and long link names: at most [`MAX_NAME`] bytes (4096, `PATH_MAX`);
//! - PAX headers, local (`x`) and global (`g`): at most [`MAX_PAX`] bytes (1 MiB, the limit
//!   of Go's archive/tar, so anything Docker or containerd accept passes), and a `path` or
//!   `linkpath` record in them again at most [`MAX_NAME`];
//! - GNU sparse maps: at most [`MAX_SPARSE_EXT`] extension blocks.
//!
//! Over a limit, or malformed: one short [`TarError::Invalid`] line that quotes no name.
//! The `tar` crate still decodes the 512-byte headers ([`tar::Header`]).
//!
//! Semantics are the `tar` crate's (what skiff did before), with Go's where they are
//! stricter: a GNU long name wins over a PAX `path`, which wins over the header's name; a
//! PAX `size`, `uid`, `gid` overrides the header's (size here; uid and gid are the caller's,
//! see [`Entry::pax`]); names end at their first NUL; a global header is skipped and takes
//! the extension records before it with it (as both do); the first all-zero block ends the
//! archive; two long names or two PAX headers for one entry, or extension records with no
//! entry after them, are errors.
//!
//! [`TarReader`] is also a [`Read`] over the current entry's data (sparse holes as zeros):
//! the bytes an entry's data leaves unread are skipped by the next [`TarReader::next_entry`].

use std::io::{self, Read};

/// The longest GNU long name, long link name, PAX `path` or `linkpath`: Linux's `PATH_MAX`.
pub const MAX_NAME: usize = 4096;
/// The largest PAX header, local or global (Go's archive/tar: 1 MiB).
pub const MAX_PAX: u64 = 1 << 20;
/// The most GNU sparse extension blocks for one file (1 MiB of them).
pub const MAX_SPARSE_EXT: usize = 2048;

const BLOCK: u64 = 512;

/// Why a tar stream cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// The underlying stream failed, or ended inside a header or an extension record.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Not a valid tar stream, or an extension record over its limit.
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> TarError {
    TarError::Invalid(msg.into())
}

/// One entry: its header, its effective names, its PAX records and its size.
pub struct Entry {
    /// The entry's own header (the extension records before it are folded into the fields
    /// below; its typeflag is never `L`, `K`, `x` or `g`).
    pub header: tar::Header,
    /// The GNU long name, else the PAX `path`, else the header's name; up to its first NUL.
    pub path: Vec<u8>,
    /// The GNU long link name, else the PAX `linkpath`, else the header's; `None` when empty.
    pub link: Option<Vec<u8>>,
    /// The records of the entry's PAX header (validated), if it had one.
    pax: Option<Vec<u8>>,
    /// The bytes of data [`Read`] gives for it (a sparse file's full size, holes included).
    pub size: u64,
}

impl Entry {
    /// The entry's PAX records, as `(key, value)`.
    pub fn pax(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        PaxRecords(self.pax.as_deref().unwrap_or_default()).map_while(Result::ok)
    }

    /// The type byte of the header.
    pub fn kind(&self) -> tar::EntryType {
        self.header.entry_type()
    }
}

/// Reads the entries of a tar stream one after the other (see the module docs).
pub struct TarReader<R> {
    inner: R,
    /// Archive bytes of the current entry's data, those not read yet, and the padding after.
    stored: u64,
    left: u64,
    pad: u64,
    sparse: Option<Sparse>,
    done: bool,
}

/// Where a sparse file's data lies: `(offset, length)` in the file, in order.
struct Sparse {
    segs: Vec<(u64, u64)>,
    next: usize,
    pos: u64,
    size: u64,
}

/// Extension records seen for the next entry.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

impl Pending {
    fn any(&self) -> bool {
        self.long_name.is_some() || self.long_link.is_some() || self.pax.is_some()
    }
}

impl<R: Read> TarReader<R> {
    pub fn new(inner: R) -> Self {
        TarReader { inner, stored: 0, left: 0, pad: 0, sparse: None, done: false }
    }

    /// The stream, positioned after what was read (after the end-of-archive block once
    /// [`TarReader::next_entry`] returned `None`).
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The next entry, `None` at the end of the archive (an all-zero block, or the end of
    /// the stream at a block boundary). Skips what is left of the current entry first.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, TarError> {
        if self.done {
            return Ok(None);
        }
        let r = self.next_inner();
        if !matches!(r, Ok(Some(_))) {
            self.done = true;
        }
        r
    }

    fn next_inner(&mut self) -> Result<Option<Entry>, TarError> {
        self.skip_rest()?;
        let mut pending = Pending::default();
        loop {
            let mut header = tar::Header::new_old();
            if !self.read_block(header.as_mut_bytes())? {
                return if pending.any() { Err(dangling()) } else { Ok(None) };
            }
            if header.as_bytes().iter().all(|&b| b == 0) {
                return if pending.any() { Err(dangling()) } else { Ok(None) };
            }
            check_sum(&header)?;
            let size = number(&header.as_old().size, "size")?;
            match header.entry_type().as_byte() {
                kind @ (b'L' | b'K') => {
                    let (slot, what) = match kind {
                        b'L' => (&mut pending.long_name, "GNU long name"),
                        _ => (&mut pending.long_link, "GNU long link name"),
                    };
                    if slot.is_some() {
                        return Err(invalid(format!("two {what} records for one entry")));
                    }
                    // The name and its terminating NUL.
                    if size > MAX_NAME as u64 + 1 {
                        return Err(invalid(format!(
                            "a {what} record of {size} bytes (names are at most {MAX_NAME} bytes)"
                        )));
                    }
                    let mut name = self.read_record(size)?;
                    cut_at_nul(&mut name);
                    *slot = Some(name);
                }
                b'x' => {
                    if pending.pax.is_some() {
                        return Err(invalid("two PAX headers for one entry"));
                    }
                    pending.pax = Some(self.pax_header(size, "PAX header")?);
                }
                b'g' => {
                    // Nothing skiff uses; it takes the records before it along (Go, tar-rs).
                    self.pax_header(size, "PAX global header")?;
                    pending = Pending::default();
                }
                _ => return self.entry(header, size, pending).map(Some),
            }
        }
    }

    /// A PAX header's records, read and validated (at most [`MAX_PAX`] bytes).
    fn pax_header(&mut self, size: u64, what: &str) -> Result<Vec<u8>, TarError> {
        if size > MAX_PAX {
            return Err(invalid(format!("a {what} of {size} bytes (at most {MAX_PAX} bytes, as in Go's archive/tar)")));
        }
        let data = self.read_record(size)?;
        for rec in PaxRecords(&data) {
            let (k, v) = rec.map_err(|e| invalid(format!("malformed {what}: {e}")))?;
            if k == b"path" || k == b"linkpath" {
                if v.len() > MAX_NAME {
                    return Err(invalid(format!(
                        "a {what} with a {} record of {} bytes (names are at most {MAX_NAME} bytes)",
                        String::from_utf8_lossy(k),
                        v.len()
                    )));
                }
                if v.contains(&0) {
                    return Err(invalid(format!(
                        "malformed {what}: a NUL in its {} record",
                        String::from_utf8_lossy(k)
                    )));
                }
            } else if k == b"size" {
                decimal(v).ok_or_else(|| invalid(format!("malformed {what}: its size record is not a number")))?;
            }
        }
        Ok(data)
    }

    fn entry(&mut self, header: tar::Header, header_size: u64, p: Pending) -> Result<Entry, TarError> {
        let mut data_size = header_size;
        let mut path = None;
        let mut link = None;
        if let Some(pax) = &p.pax {
            for (k, v) in PaxRecords(pax).map_while(Result::ok) {
                match k {
                    b"size" => data_size = decimal(v).unwrap_or(header_size),
                    b"path" => path = Some(v.to_vec()),
                    b"linkpath" => link = Some(v.to_vec()),
                    _ => {}
                }
            }
        }
        let path = p.long_name.or(path).unwrap_or_else(|| header.path_bytes().into_owned());
        let link = p.long_link.or(link).or_else(|| header.link_name_bytes().map(|l| l.into_owned()));
        let link = link.filter(|l| !l.is_empty());
        self.stored = data_size;
        self.left = data_size;
        self.pad = pad(data_size);
        self.sparse = None;
        let mut size = data_size;
        if header.entry_type().is_gnu_sparse() {
            let sparse = self.sparse_map(&header, data_size)?;
            size = sparse.size;
            self.sparse = Some(sparse);
        }
        Ok(Entry { header, path, link, pax: p.pax, size })
    }

    /// The sparse map of an old-GNU sparse entry: the header's four slots and the extension
    /// blocks after it. Checked as the `tar` crate does: in order, not overlapping, chunks
    /// (but the last) block-aligned, adding up to the data stored and ending at the real size.
    fn sparse_map(&mut self, header: &tar::Header, stored: u64) -> Result<Sparse, TarError> {
        let gnu = header.as_gnu().ok_or_else(|| invalid("a sparse entry without a GNU header"))?;
        let real = number(&gnu.realsize, "sparse real size")?;
        let mut segs = Vec::new();
        let (mut cur, mut remaining) = (0u64, stored);
        let mut add = |s: &tar::GnuSparseHeader| -> Result<(), TarError> {
            if s.is_empty() {
                return Ok(());
            }
            let off = number(&s.offset, "sparse offset")?;
            let len = number(&s.numbytes, "sparse length")?;
            if len != 0 && !(stored - remaining).is_multiple_of(BLOCK) {
                return Err(invalid("a sparse chunk that is not block-aligned"));
            }
            if off < cur {
                return Err(invalid("sparse chunks out of order or overlapping"));
            }
            cur = off.checked_add(len).ok_or_else(|| invalid("a sparse chunk past the largest file size"))?;
            remaining =
                remaining.checked_sub(len).ok_or_else(|| invalid("sparse chunks hold more data than the entry"))?;
            segs.push((off, len));
            Ok(())
        };
        for s in &gnu.sparse {
            add(s)?;
        }
        let mut extended = gnu.is_extended();
        let mut blocks = 0;
        while extended {
            blocks += 1;
            if blocks > MAX_SPARSE_EXT {
                return Err(invalid(format!("a sparse map of more than {MAX_SPARSE_EXT} extension blocks")));
            }
            let mut ext = tar::GnuExtSparseHeader::new();
            if !self.read_block(ext.as_mut_bytes())? {
                return Err(truncated("a sparse map").into());
            }
            for s in ext.sparse() {
                add(s)?;
            }
            extended = ext.is_extended();
        }
        if cur != real || remaining != 0 {
            return Err(invalid("a sparse map that does not match the entry's sizes"));
        }
        Ok(Sparse { segs, next: 0, pos: 0, size: real })
    }

    /// Skips the unread data and the padding of the current entry.
    fn skip_rest(&mut self) -> Result<(), TarError> {
        let n = self.left + self.pad;
        self.left = 0;
        self.pad = 0;
        self.sparse = None;
        self.skip(n)
    }

    fn skip(&mut self, mut n: u64) -> Result<(), TarError> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let want = buf.len().min(n.try_into().unwrap_or(usize::MAX));
            match self.inner.read(&mut buf[..want]) {
                Ok(0) => return Err(truncated("an entry").into()),
                Ok(k) => n -= k as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// An extension record's data (`size` is checked against its limit by the caller), and
    /// its padding skipped.
    fn read_record(&mut self, size: u64) -> Result<Vec<u8>, TarError> {
        let len = usize::try_from(size).map_err(|_| invalid("an extension record too large"))?;
        let mut data = vec![0u8; len];
        read_exact(&mut self.inner, &mut data, "an extension record")?;
        self.skip(pad(size))?;
        Ok(data)
    }

    /// One 512-byte block; `false` at the end of the stream before its first byte.
    fn read_block(&mut self, buf: &mut [u8]) -> Result<bool, TarError> {
        let mut n = 0;
        while n < buf.len() {
            match self.inner.read(&mut buf[n..]) {
                Ok(0) if n == 0 => return Ok(false),
                Ok(0) => return Err(truncated("a tar header").into()),
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    fn read_stored(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min(self.left.try_into().unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            let msg = format!("the stream ends after {} of its {} bytes", self.stored - self.left, self.stored);
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, msg));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// The current entry's data: EOF at its end (a sparse file's holes read as zeros).
impl<R: Read> Read for TarReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let Some(sp) = self.sparse.as_mut() else { return self.read_stored(buf) };
        while sp.next < sp.segs.len() && sp.segs[sp.next].0 + sp.segs[sp.next].1 <= sp.pos {
            sp.next += 1;
        }
        if sp.pos >= sp.size {
            return Ok(0);
        }
        match sp.segs.get(sp.next).copied() {
            Some((off, len)) if off <= sp.pos => {
                let end = off + len;
                let want = buf.len().min((end - sp.pos).try_into().unwrap_or(usize::MAX));
                let n = self.read_stored(&mut buf[..want])?;
                if let Some(sp) = self.sparse.as_mut() {
                    sp.pos += n as u64;
                }
                Ok(n)
            }
            next => {
                let end = next.map_or(sp.size, |(off, _)| off);
                let n = buf.len().min((end - sp.pos).try_into().unwrap_or(usize::MAX));
                buf[..n].fill(0);
                sp.pos += n as u64;
                Ok(n)
            }
        }
    }
}

/// The records of a PAX header: `"<len> <key>=<value>\n"`, one after the other.
struct PaxRecords<'a>(&'a [u8]);

impl<'a> Iterator for PaxRecords<'a> {
    type Item = Result<(&'a [u8], &'a [u8]), &'static str>;

    fn next(&mut self) -> Option<Self::Item> {
        // Some writers pad the header with NULs.
        if self.0.iter().all(|&b| b == 0) {
            return None;
        }
        let r = (|| {
            let sp = self.0.iter().position(|&b| b == b' ').ok_or("a record without a length")?;
            let len = std::str::from_utf8(&self.0[..sp])
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<usize>().ok())
                .ok_or("a record length that is not a number")?;
            if len <= sp + 1 || len > self.0.len() || self.0[len - 1] != b'\n' {
                return Err("a record length that does not fit");
            }
            let body = &self.0[sp + 1..len - 1];
            let eq = body.iter().position(|&b| b == b'=').ok_or("a record without '='")?;
            let (k, v) = (&body[..eq], &body[eq + 1..]);
            if k.is_empty() {
                return Err("a record with an empty key");
            }
            self.0 = &self.0[len..];
            Ok((k, v))
        })();
        if r.is_err() {
            self.0 = &[];
        }
        Some(r)
    }
}

fn decimal(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok().filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))?.parse().ok()
}

/// A numeric header field: octal text (NUL/space padded), or base-256 when the high bit of
/// its first byte is set.
fn number(field: &[u8], what: &str) -> Result<u64, TarError> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let (first, rest) = field.split_first().unwrap_or((&0, &[]));
        if first & 0x40 != 0 {
            return Err(invalid(format!("a negative {what} in a tar header")));
        }
        let mut v: u64 = u64::from(first & 0x3f);
        for &b in rest {
            v = v.checked_mul(256).ok_or_else(|| invalid(format!("a {what} too large in a tar header")))?
                | u64::from(b);
        }
        return Ok(v);
    }
    let text = field.split(|&b| b == 0).next().unwrap_or_default();
    let text = std::str::from_utf8(text).map(str::trim).unwrap_or("?");
    if text.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(text, 8).map_err(|_| invalid(format!("a {what} that is not a number in a tar header")))
}

/// The header checksum (unsigned, or signed as some old writers made it).
fn check_sum(h: &tar::Header) -> Result<(), TarError> {
    let bytes = h.as_bytes();
    let want = number(&h.as_old().cksum, "checksum")?;
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in bytes.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    if want != unsigned && i64::try_from(want).ok() != Some(signed) {
        return Err(invalid("a tar header checksum mismatch (not a tar stream, or a corrupt one)"));
    }
    Ok(())
}

fn cut_at_nul(v: &mut Vec<u8>) {
    if let Some(i) = v.iter().position(|&b| b == 0) {
        v.truncate(i);
    }
}

fn pad(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

fn read_exact(r: &mut impl Read, buf: &mut [u8], what: &str) -> Result<(), TarError> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => return Err(truncated(what).into()),
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn truncated(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, format!("the stream ends inside {what}"))
}

fn dangling() -> TarError {
    invalid("extension records (long name or PAX header) with no entry after them")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &[u8], kind: u8, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        let n = name.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_mode(0o644);
        h.set_size(size);
        h.set_cksum();
        h
    }

    fn push(out: &mut Vec<u8>, h: &tar::Header, data: &[u8]) {
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len() + pad(data.len() as u64) as usize, 0);
    }

    fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in records {
            let body = [k.as_bytes(), b"=", v, b"\n"].concat();
            let mut len = body.len() + 2;
            while format!("{len} ").len() + body.len() != len {
                len += 1;
            }
            out.extend_from_slice(format!("{len} ").as_bytes());
            out.extend_from_slice(&body);
        }
        out
    }

    /// (path, link, data) of an entry.
    type Read3 = (Vec<u8>, Option<Vec<u8>>, Vec<u8>);

    fn all(data: &[u8]) -> Result<Vec<Read3>, TarError> {
        let mut r = TarReader::new(data);
        let mut out = Vec::new();
        while let Some(e) = r.next_entry()? {
            let mut body = Vec::new();
            r.read_to_end(&mut body)?;
            assert_eq!(body.len() as u64, e.size);
            out.push((e.path, e.link, body));
        }
        Ok(out)
    }

    #[test]
    fn plain_long_and_pax_names() {
        let mut t = Vec::new();
        push(&mut t, &header(b"a.txt", b'0', 3), b"abc");
        let long = vec![b'n'; 300];
        push(&mut t, &header(b"././@LongLink", b'L', 301), &[&long[..], b"\0"].concat());
        push(&mut t, &header(b"short", b'0', 0), b"");
        let p = pax(&[("path", b"pax/name"), ("linkpath", b"pax/target"), ("mtime", b"1.5")]);
        push(&mut t, &header(b"PaxHeaders/x", b'x', p.len() as u64), &p);
        push(&mut t, &header(b"ignored", b'2', 0), b"");
        let g = pax(&[("comment", b"git")]);
        push(&mut t, &header(b"pax_global_header", b'g', g.len() as u64), &g);
        push(&mut t, &header(b"b", b'0', 600), &[7u8; 600]);
        t.extend_from_slice(&[0u8; 1024]);
        let got = all(&t).unwrap();
        assert_eq!(got.len(), 4);
        assert_eq!((got[0].0.as_slice(), got[0].2.as_slice()), (&b"a.txt"[..], &b"abc"[..]));
        assert_eq!(got[1].0, long);
        assert_eq!((got[2].0.as_slice(), got[2].1.as_deref()), (&b"pax/name"[..], Some(&b"pax/target"[..])));
        assert_eq!((got[3].0.as_slice(), got[3].2.len()), (&b"b"[..], 600));
    }

    #[test]
    fn pax_size_overrides_the_header() {
        let mut t = Vec::new();
        let p = pax(&[("size", b"5")]);
        push(&mut t, &header(b"x", b'x', p.len() as u64), &p);
        push(&mut t, &header(b"f", b'0', 0), b"hello");
        push(&mut t, &header(b"g", b'0', 1), b"!");
        let got = all(&t).unwrap();
        assert_eq!(got[0].2, b"hello");
        assert_eq!(got[1].2, b"!");
    }

    /// The bombs: a header that announces a huge record is refused before anything is read
    /// (the stream here holds no data at all after the header).
    #[test]
    fn oversized_extension_records_are_refused_before_reading_them() {
        for (kind, size, what) in [
            (b'L', 3u64 << 30, "GNU long name"),
            (b'K', 4098, "GNU long link name"),
            (b'x', (1 << 20) + 1, "PAX header"),
            (b'g', 3 << 30, "PAX global header"),
        ] {
            let t = header(b"././@LongLink", kind, size).as_bytes().to_vec();
            let err = all(&t).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(what) && err.contains(&size.to_string()), "{what}: {err}");
            assert!(matches!(all(&t), Err(TarError::Invalid(_))));
        }
        // At the limits: fine.
        let mut t = Vec::new();
        let name = vec![b'a'; MAX_NAME];
        push(&mut t, &header(b"L", b'L', MAX_NAME as u64 + 1), &[&name[..], b"\0"].concat());
        push(&mut t, &header(b"f", b'0', 0), b"");
        assert_eq!(all(&t).unwrap()[0].0.len(), MAX_NAME);
        // A PAX path over MAX_NAME in a header under MAX_PAX.
        let p = pax(&[("path", &vec![b'p'; MAX_NAME + 1])]);
        let mut t = Vec::new();
        push(&mut t, &header(b"x", b'x', p.len() as u64), &p);
        push(&mut t, &header(b"f", b'0', 0), b"");
        let err = all(&t).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("path record of 4097 bytes"), "{err}");
    }

    #[test]
    fn malformed_streams() {
        let bad = |t: &[u8], what: &str| {
            let err = all(t).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(what), "expected {what:?}, got {err:?}");
        };
        let mut h = header(b"f", b'0', 0);
        h.as_mut_bytes()[0] = b'g';
        bad(h.as_bytes(), "checksum");
        let mut t = Vec::new();
        push(&mut t, &header(b"L", b'L', 2), b"a\0");
        push(&mut t, &header(b"L", b'L', 2), b"b\0");
        push(&mut t, &header(b"f", b'0', 0), b"");
        bad(&t, "two GNU long name");
        let mut t = Vec::new();
        push(&mut t, &header(b"L", b'L', 2), b"a\0");
        bad(&t, "no entry after them");
        let p = b"99 path=x\n";
        let mut t = Vec::new();
        push(&mut t, &header(b"x", b'x', p.len() as u64), p);
        push(&mut t, &header(b"f", b'0', 0), b"");
        bad(&t, "malformed PAX header");
        let mut t = Vec::new();
        push(&mut t, &header(b"f", b'0', 10), b"0123456789");
        t.truncate(512 + 4);
        let mut r = TarReader::new(&t[..]);
        r.next_entry().unwrap();
        assert!(r.read_to_end(&mut Vec::new()).is_err(), "a short entry is an error");
        bad(&header(b"L", b'L', 100).as_bytes()[..], "ends inside an extension record");
    }

    #[test]
    fn sparse_files() {
        // 3 KiB file: data at [0, 512) and [2048, 2560), the rest holes.
        let mut h = header(b"sparse", b'S', 1024);
        {
            let gnu = h.as_gnu_mut().unwrap();
            gnu.sparse[0].set_offset(0);
            gnu.sparse[0].set_length(512);
            gnu.sparse[1].set_offset(2048);
            gnu.sparse[1].set_length(512);
            // GNU tar ends the map with an empty chunk at the real size.
            gnu.sparse[2].set_offset(3072);
            gnu.sparse[2].set_length(0);
            gnu.set_real_size(3072);
        }
        h.set_cksum();
        let mut t = Vec::new();
        push(&mut t, &h, &[[1u8; 512], [2u8; 512]].concat());
        push(&mut t, &header(b"after", b'0', 1), b"z");
        let got = all(&t).unwrap();
        let body = &got[0].2;
        assert_eq!(body.len(), 3072);
        assert!(body[..512].iter().all(|&b| b == 1) && body[512..2048].iter().all(|&b| b == 0));
        assert!(body[2048..2560].iter().all(|&b| b == 2) && body[2560..].iter().all(|&b| b == 0));
        assert_eq!(got[1].2, b"z");
    }
}
