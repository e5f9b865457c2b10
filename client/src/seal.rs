//! A snapshot as a file of its own (a backup): the snapshot's bytes, zeros up to a multiple of
//! 512 bytes, then the SHA-256 of everything before it. That is the shape of etcd's snapshot
//! files (a database of whole pages, then its SHA-256), which etcdctl checks before it keeps
//! one; and it lets a restore tell a whole file from a damaged or truncated one.
//!
//! The format is shared by the member that seals a snapshot, the tools that keep one (the
//! operator's backups check a snapshot as it streams past, before they keep it) and the
//! restore that takes one back.

use std::io::{Read, Seek, SeekFrom};

use sha2::{Digest, Sha256};

/// The sealed file's length is a multiple of this, plus the checksum.
const SECTOR: u64 = 512;
const CHECKSUM: usize = 32;

/// Seals a snapshot streamed through it.
#[derive(Default)]
pub struct Seal {
    hasher: Sha256,
    length: u64,
}

impl Seal {
    /// Counts the next bytes of the snapshot in.
    pub fn add(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.length += bytes.len() as u64;
    }

    /// What closes the file after the last bytes: the padding, then the checksum.
    pub fn finish(mut self) -> Vec<u8> {
        let padding = (SECTOR - self.length % SECTOR) % SECTOR;
        let mut tail = vec![0; padding as usize];
        self.hasher.update(&tail);
        tail.extend_from_slice(&self.hasher.finalize());
        tail
    }
}

/// Why a file is not a whole sealed snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "the file is {length} bytes, not whole {SECTOR}-byte sectors and a {CHECKSUM}-byte checksum: \
         it is truncated, or not a metaStore snapshot file"
    )]
    NotWhole { length: u64 },
    #[error("the file is damaged: its SHA-256 does not match the checksum it ends with")]
    Damaged,
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
}

/// A file whose seal holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    /// The snapshot's bytes and their padding: everything before the checksum.
    pub body: u64,
    /// The SHA-256 the file ends with.
    pub checksum: [u8; CHECKSUM],
}

/// Seals what is written through it: [`Sealing::finish`] adds the padding and the checksum.
pub struct Sealing<W: std::io::Write> {
    inner: W,
    seal: Seal,
}

impl<W: std::io::Write> Sealing<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, seal: Seal::default() }
    }

    /// Writes the padding and the checksum after everything written so far.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.inner.write_all(&self.seal.finish())?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: std::io::Write> std::io::Write for Sealing<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.seal.add(&bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Checks a sealed file as it streams past, without holding it: the checksum is the last
/// bytes, so the latest ones are held back from the hash until more arrive.
#[derive(Default)]
pub struct SealCheck {
    hasher: Sha256,
    /// The last bytes seen, up to a checksum's length: the checksum, once the file ends.
    held: Vec<u8>,
    length: u64,
}

impl SealCheck {
    /// Counts the next bytes of the file in.
    pub fn add(&mut self, bytes: &[u8]) {
        self.length += bytes.len() as u64;
        // Of the held bytes and the new ones, all but the last CHECKSUM are body.
        let total = self.held.len() + bytes.len();
        let body = total.saturating_sub(CHECKSUM);
        let from_held = body.min(self.held.len());
        self.hasher.update(&self.held[..from_held]);
        self.held.drain(..from_held);
        let from_new = body - from_held;
        self.hasher.update(&bytes[..from_new]);
        self.held.extend_from_slice(&bytes[from_new..]);
    }

    /// The file's length so far.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// Whether the file that ended here is whole; its checksum if so.
    pub fn finish(self) -> Result<Sealed, SealError> {
        let body = self.length.checked_sub(CHECKSUM as u64).filter(|body| body.is_multiple_of(SECTOR));
        let Some(body) = body else { return Err(SealError::NotWhole { length: self.length }) };
        if self.hasher.finalize().as_slice() != self.held.as_slice() {
            return Err(SealError::Damaged);
        }
        let mut checksum = [0u8; CHECKSUM];
        checksum.copy_from_slice(&self.held);
        Ok(Sealed { body, checksum })
    }
}

/// Reads `file` through and checks its seal; leaves it rewound.
pub fn check(file: &mut (impl Read + Seek)) -> Result<Sealed, SealError> {
    file.seek(SeekFrom::Start(0))?;
    let mut check = SealCheck::default();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        check.add(&buffer[..read]);
    }
    file.seek(SeekFrom::Start(0))?;
    check.finish()
}

/// Whether `file` is a sealed snapshot whose checksum holds.
pub fn is_sealed(file: &[u8]) -> bool {
    check(&mut std::io::Cursor::new(file)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(pieces: &[&[u8]]) -> Vec<u8> {
        let mut seal = Seal::default();
        let mut file = Vec::new();
        for piece in pieces {
            seal.add(piece);
            file.extend_from_slice(piece);
        }
        file.extend(seal.finish());
        file
    }

    #[test]
    fn a_sealed_file_is_whole_sectors_then_its_checksum_as_etcdctl_expects() {
        for pieces in [&[][..], &[&b"MSSNAP03"[..]][..], &[&[7u8; 512][..], &[1u8; 3][..]][..]] {
            let file = sealed(pieces);
            assert_eq!(file.len() % 512, 32, "{} bytes", file.len());
            assert!(is_sealed(&file));
        }
    }

    #[test]
    fn a_damaged_or_truncated_file_is_not_sealed() {
        let file = sealed(&[b"some snapshot bytes"]);
        let mut damaged = file.clone();
        damaged[3] ^= 1;
        assert!(!is_sealed(&damaged));
        assert!(!is_sealed(&file[..file.len() - 1]));
        assert!(!is_sealed(&file[..10]));
        let mut truncated = std::io::Cursor::new(&file[..file.len() - 1]);
        assert!(matches!(check(&mut truncated), Err(SealError::NotWhole { .. })));
        assert!(matches!(check(&mut std::io::Cursor::new(&damaged)), Err(SealError::Damaged)));
    }

    #[test]
    fn a_file_written_through_sealing_is_sealed() {
        let mut out = Sealing::new(Vec::new());
        std::io::Write::write_all(&mut out, b"MSSNAP03 and more").expect("write");
        let file = out.finish().expect("finish");
        assert_eq!(file, sealed(&[b"MSSNAP03 and more"]));
    }

    fn streamed(file: &[u8], piece: usize) -> Result<Sealed, SealError> {
        let mut check = SealCheck::default();
        for chunk in file.chunks(piece.max(1)) {
            check.add(chunk);
        }
        check.finish()
    }

    #[test]
    fn a_file_checked_as_it_streams_past_agrees_with_one_read_whole() {
        let file = sealed(&[&[9u8; 700][..], b"tail"]);
        let whole = check(&mut std::io::Cursor::new(&file)).expect("sealed");
        for piece in [1, 7, 31, 32, 33, 512, file.len()] {
            assert_eq!(streamed(&file, piece).expect("sealed"), whole, "in pieces of {piece}");
        }
        let mut damaged = file.clone();
        damaged[100] ^= 1;
        assert!(matches!(streamed(&damaged, 64), Err(SealError::Damaged)));
        assert!(matches!(streamed(&file[..file.len() - 5], 64), Err(SealError::NotWhole { .. })));
        assert!(matches!(streamed(b"", 64), Err(SealError::NotWhole { length: 0 })));
    }
}
