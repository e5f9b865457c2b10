//! The snapshot file format.
//!
//! ```text
//! magic "MSSNAP01" | meta_len u32 | meta (postcard SnapshotMeta)
//! { key_len u32 | key | record_len u32 | record }*      -- kv column family, in key order
//! u32::MAX | record_count u64                           -- end mark: detects truncation
//! ```
//! All integers big-endian. Snapshots arrive from peers, so the reader bounds every length
//! before allocating and reports a malformed file as an error, never a panic.

use std::io::{self, Read, Write};

use super::codec::{decode, encode};
use super::StoreError;
use crate::types::SnapshotMeta;

const MAGIC: &[u8; 8] = b"MSSNAP01";
const END: u32 = u32::MAX;
const MAX_META: u32 = 16 * 1024 * 1024;
const MAX_KEY: u32 = 64 * 1024;
const MAX_RECORD: u32 = 64 * 1024 * 1024;

pub(crate) struct SnapshotWriter<W: Write> {
    out: W,
    count: u64,
}

impl<W: Write> SnapshotWriter<W> {
    pub(crate) fn new(mut out: W, meta: &SnapshotMeta) -> Result<Self, StoreError> {
        let meta = encode(meta)?;
        out.write_all(MAGIC).map_err(write_err)?;
        write_len(&mut out, meta.len())?;
        out.write_all(&meta).map_err(write_err)?;
        Ok(Self { out, count: 0 })
    }

    pub(crate) fn record(&mut self, key: &[u8], record: &[u8]) -> Result<(), StoreError> {
        write_len(&mut self.out, key.len())?;
        self.out.write_all(key).map_err(write_err)?;
        write_len(&mut self.out, record.len())?;
        self.out.write_all(record).map_err(write_err)?;
        self.count += 1;
        Ok(())
    }

    /// Writes the end mark and returns the underlying writer.
    pub(crate) fn finish(mut self) -> Result<W, StoreError> {
        self.out.write_all(&END.to_be_bytes()).map_err(write_err)?;
        self.out.write_all(&self.count.to_be_bytes()).map_err(write_err)?;
        self.out.flush().map_err(write_err)?;
        Ok(self.out)
    }
}

fn write_len(out: &mut impl Write, len: usize) -> Result<(), StoreError> {
    let len = u32::try_from(len)
        .ok()
        .filter(|l| *l != END)
        .ok_or_else(|| StoreError::Corrupt(format!("snapshot item of {len} bytes is too large")))?;
    out.write_all(&len.to_be_bytes()).map_err(write_err)
}

fn write_err(e: io::Error) -> StoreError {
    StoreError::io("snapshot", e)
}

/// One key with its encoded record.
pub(crate) type Record = (Vec<u8>, Vec<u8>);

pub(crate) struct SnapshotReader<R: Read> {
    input: R,
    count: u64,
    done: bool,
}

impl<R: Read> SnapshotReader<R> {
    /// Reads the header; returns the reader positioned at the first record.
    pub(crate) fn open(mut input: R) -> Result<(SnapshotMeta, Self), StoreError> {
        let mut magic = [0u8; 8];
        read_exact(&mut input, &mut magic)?;
        if &magic != MAGIC {
            return Err(StoreError::Corrupt("not a metaStore snapshot (bad magic)".into()));
        }
        let meta_len = read_u32(&mut input)?;
        let meta = read_bytes(&mut input, meta_len, MAX_META, "snapshot meta")?;
        let meta = decode(&meta)?;
        Ok((meta, Self { input, count: 0, done: false }))
    }

    /// The next `(key, record)`, or `None` after the end mark.
    pub(crate) fn next_record(&mut self) -> Result<Option<Record>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let key_len = read_u32(&mut self.input)?;
        if key_len == END {
            let mut count = [0u8; 8];
            read_exact(&mut self.input, &mut count)?;
            let expected = u64::from_be_bytes(count);
            if expected != self.count {
                return Err(StoreError::Corrupt(format!(
                    "snapshot holds {} records but its end mark says {expected}",
                    self.count
                )));
            }
            self.done = true;
            return Ok(None);
        }
        let key = read_bytes(&mut self.input, key_len, MAX_KEY, "snapshot key")?;
        let record_len = read_u32(&mut self.input)?;
        let record = read_bytes(&mut self.input, record_len, MAX_RECORD, "snapshot record")?;
        self.count += 1;
        Ok(Some((key, record)))
    }
}

fn read_exact(input: &mut impl Read, buf: &mut [u8]) -> Result<(), StoreError> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => StoreError::Corrupt("snapshot is truncated".into()),
        _ => StoreError::io("snapshot", e),
    })
}

fn read_u32(input: &mut impl Read) -> Result<u32, StoreError> {
    let mut b = [0u8; 4];
    read_exact(input, &mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_bytes(input: &mut impl Read, len: u32, max: u32, what: &str) -> Result<Vec<u8>, StoreError> {
    if len > max {
        return Err(StoreError::Corrupt(format!("{what} of {len} bytes exceeds the limit of {max}")));
    }
    let mut buf = vec![0u8; len as usize];
    read_exact(input, &mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::StoredMembership;

    fn meta() -> SnapshotMeta {
        SnapshotMeta { last_log_id: None, last_membership: StoredMembership::default() }
    }

    fn written(records: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut w = SnapshotWriter::new(Vec::new(), &meta()).expect("header");
        for (k, v) in records {
            w.record(k, v).expect("record");
        }
        w.finish().expect("finish")
    }

    #[test]
    fn a_snapshot_reads_back_as_written() {
        let bytes = written(&[(b"a", b"1"), (b"b", b"22")]);
        let (m, mut r) = SnapshotReader::open(&bytes[..]).expect("open");
        assert_eq!(m, meta());
        assert_eq!(r.next_record().expect("1"), Some((b"a".to_vec(), b"1".to_vec())));
        assert_eq!(r.next_record().expect("2"), Some((b"b".to_vec(), b"22".to_vec())));
        assert_eq!(r.next_record().expect("end"), None);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = written(&[(b"a", b"1"), (b"b", b"22")]);
        for cut in 0..bytes.len() {
            let outcome = SnapshotReader::open(&bytes[..cut]).and_then(|(_, mut r)| {
                while r.next_record()?.is_some() {}
                Ok(())
            });
            assert!(outcome.is_err(), "truncated at {cut} of {} was accepted", bytes.len());
        }
    }

    #[test]
    fn a_huge_declared_length_is_refused_before_allocating() {
        let mut bytes = written(&[]);
        let header_len = bytes.len() - 12;
        bytes.truncate(header_len);
        bytes.extend_from_slice(&(MAX_KEY + 1).to_be_bytes());
        let (_, mut r) = SnapshotReader::open(&bytes[..]).expect("open");
        assert!(matches!(r.next_record(), Err(StoreError::Corrupt(_))));
    }
}
