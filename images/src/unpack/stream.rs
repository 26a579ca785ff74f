//! The byte stream under the tar parser: compression detection, decompression, the pipe
//! between the reading thread and the extracting worker, and the sha256 of the uncompressed
//! stream (the layer's diff_id).

use std::io::{self, BufReader, Read};
use std::sync::mpsc::{Receiver, Sender, SyncSender};

use sha2::{Digest, Sha256};

use super::{Compression, UnpackError, BUF_SIZE};

/// What the media type says about the compression; `Ok(None)` when it says nothing usable.
pub(super) fn media_type_hint(media_type: &str) -> Result<Option<Compression>, UnpackError> {
    let mt = media_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if mt.ends_with("+gzip") || mt.ends_with(".tar.gzip") || mt.ends_with(".tar.gz") {
        Ok(Some(Compression::Gzip))
    } else if mt.ends_with("+zstd") || mt.ends_with(".tar.zstd") {
        Ok(Some(Compression::Zstd))
    } else if mt.ends_with(".tar") {
        Ok(Some(Compression::None))
    } else if mt.contains(".tar") || mt.contains("layer") || mt.contains("rootfs") {
        // A layer media type we do not know (e.g. a new compression suffix): the magic decides.
        Ok(None)
    } else {
        Err(UnpackError::NotALayer(media_type.to_string()))
    }
}

/// Reads the first bytes, picks the decompressor by magic (the bytes are authoritative, the
/// media type only a hint, as in containerd), and returns the uncompressed stream.
pub(super) fn open<'a, R: Read + 'a>(
    mut reader: R,
    hint: Option<Compression>,
    notes: &mut super::extract::Notes,
) -> Result<(Box<dyn Read + 'a>, Compression), UnpackError> {
    let mut magic = [0u8; 6];
    let n = read_up_to(&mut reader, &mut magic).map_err(|source| UnpackError::Stream { after: None, source })?;
    let detected = detect(&magic[..n])?;
    if let Some(h) = hint {
        if h != detected {
            notes.push(format!("media type says {h} but the blob is {detected}; unpacking it as {detected}"));
        }
    }
    let prefixed = io::Cursor::new(magic).take(n as u64).chain(reader);
    let stream = decompress(BufReader::with_capacity(BUF_SIZE, prefixed), detected)
        .map_err(|source| UnpackError::Stream { after: None, source })?;
    Ok((stream, detected))
}

/// The uncompressed stream of `reader`, compressed as `compression` says.
pub fn decompress<'a, R: io::BufRead + 'a>(reader: R, compression: Compression) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
    })
}

/// The compression of a blob from its first bytes (at least 6 for xz to be recognised).
pub fn detect(magic: &[u8]) -> Result<Compression, UnpackError> {
    Ok(match magic {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
        // zstd skippable frame (0x184D2A50..=0x184D2A5F, little endian)
        [m, 0x2a, 0x4d, 0x18, ..] if m & 0xf0 == 0x50 => Compression::Zstd,
        [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => return Err(UnpackError::UnsupportedCompression("xz")),
        [b'B', b'Z', b'h', ..] => return Err(UnpackError::UnsupportedCompression("bzip2")),
        [0x04, 0x22, 0x4d, 0x18, ..] => return Err(UnpackError::UnsupportedCompression("lz4")),
        _ => Compression::None,
    })
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Chunks in flight between the reading thread and the extracting worker, and their size
/// (about 1.5 MiB in all).
pub(super) const PIPE_CHUNKS: usize = 4;
const CHUNK_SIZE: usize = 256 * 1024;

/// A chunk of the uncompressed stream (buffer, bytes used), or the error that ended it.
pub(super) type Chunk = io::Result<(Vec<u8>, usize)>;

/// Reads `src` to its end in chunks into `tx`, reusing the buffers that come back on `back`.
/// A read error is passed on (the worker reports it with the entry it was in); a closed
/// channel (the worker stopped) ends the pump.
pub(super) fn pump(src: &mut impl Read, tx: &SyncSender<Chunk>, back: &Receiver<Vec<u8>>) {
    loop {
        let mut buf = back.try_recv().unwrap_or_else(|_| vec![0; CHUNK_SIZE]);
        let n = match read_up_to(src, &mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        if tx.send(Ok((buf, n))).is_err() {
            return;
        }
    }
}

/// The worker's end of [`pump`]: a `Read` over the chunks (EOF when the pump is done) that
/// hashes and counts every chunk it receives. Hashing here rather than in the pump balances
/// the two threads: decompression on one, sha256 and the filesystem work on the other.
pub(super) struct ChunkReader {
    rx: Receiver<Chunk>,
    back: Sender<Vec<u8>>,
    cur: Vec<u8>,
    len: usize,
    pos: usize,
    done: bool,
    sha: Sha256,
    bytes: u64,
}

impl ChunkReader {
    pub(super) fn new(rx: Receiver<Chunk>, back: Sender<Vec<u8>>) -> Self {
        ChunkReader { rx, back, cur: Vec::new(), len: 0, pos: 0, done: false, sha: Sha256::new(), bytes: 0 }
    }

    /// `("sha256:<hex>", bytes)` of everything received. Complete only after reading to EOF.
    pub(super) fn finish(self) -> (String, u64) {
        (format!("sha256:{:x}", self.sha.finalize()), self.bytes)
    }
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.len {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok((buf, n))) => {
                    self.sha.update(&buf[..n]);
                    self.bytes += n as u64;
                    let old = std::mem::replace(&mut self.cur, buf);
                    if !old.is_empty() {
                        let _ = self.back.send(old);
                    }
                    (self.len, self.pos) = (n, 0);
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => self.done = true,
            }
        }
        let n = out.len().min(self.len - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints() {
        let h = |s| media_type_hint(s).ok().flatten();
        assert_eq!(h("application/vnd.oci.image.layer.v1.tar+gzip"), Some(Compression::Gzip));
        assert_eq!(h("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"), Some(Compression::Zstd));
        assert_eq!(h("application/vnd.docker.image.rootfs.diff.tar.gzip"), Some(Compression::Gzip));
        assert_eq!(h("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"), Some(Compression::Gzip));
        assert_eq!(h("application/vnd.oci.image.layer.v1.tar"), Some(Compression::None));
        assert!(matches!(media_type_hint("application/vnd.oci.image.layer.v1.tar+lz9"), Ok(None)));
        assert!(matches!(media_type_hint("application/vnd.oci.image.config.v1+json"), Err(UnpackError::NotALayer(_))));
    }

    #[test]
    fn magic() {
        assert_eq!(detect(&[0x1f, 0x8b, 8, 0, 0, 0]).ok(), Some(Compression::Gzip));
        assert_eq!(detect(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0]).ok(), Some(Compression::Zstd));
        assert_eq!(detect(b"etc/pa").ok(), Some(Compression::None));
        assert_eq!(detect(b"").ok(), Some(Compression::None));
        assert!(matches!(detect(b"BZh91A"), Err(UnpackError::UnsupportedCompression("bzip2"))));
        assert!(matches!(detect(&[0xfd, b'7', b'z', b'X', b'Z', 0]), Err(UnpackError::UnsupportedCompression("xz"))));
    }
}
