//! The snapshot file format.
//!
//! ```text
//! magic "MSSNAP03" | header_len u32 | header (postcard SnapshotHeader)
//! { family u8 | key_len u32 | key | value_len u32 | value }*   -- kv, history, changes
//! 0 | record_count u64                                         -- end mark: detects truncation
//! ```
//! `family` is [`Family::tag`]: the current keys, their history and the changes by revision,
//! each in key order.
//! All integers big-endian. Snapshots arrive from peers, so the reader bounds every length
//! before allocating and reports a malformed file as an error, never a panic.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::checkpoint::Checkpoint;
use super::codec::{decode, encode};
use super::{run_blocking, Family, StoreError};
use crate::types::SnapshotMeta;

/// A snapshot's data, as openraft hands it around.
#[derive(Debug)]
pub enum SnapshotData {
    /// One of this member's checkpoints: read only when it is sent.
    Checkpoint(Arc<Checkpoint>),
    /// A snapshot received from the leader, in the snapshot format, read through and checked
    /// ([`SnapshotInbox::check`]).
    Received(tokio::fs::File),
}

/// One piece of a snapshot being read.
#[derive(Debug)]
pub struct Piece {
    pub data: Vec<u8>,
    /// The snapshot ends with this piece. Pieces that stop without one (the reader failed
    /// unexpectedly) are a broken snapshot, never a short one.
    pub last: bool,
}

/// Snapshot bytes in one piece, as sent to a member: small enough that no request holds a
/// multi-MiB state in memory, large enough that a fast link is not spent on round trips.
pub const PIECE_BYTES: usize = 4 * 1024 * 1024;

/// Pieces of a snapshot being read, in order; an error ends them.
pub type SnapshotPieces = mpsc::Receiver<Result<Piece, StoreError>>;

/// A snapshot as openraft hands it around: its description and its data.
pub type Snapshot = openraft::type_config::alias::SnapshotOf<crate::types::TypeConfig, SnapshotData>;

impl SnapshotData {
    /// The snapshot in the snapshot format, in pieces of `piece` bytes, read on a blocking
    /// thread a little ahead of the caller: a large store is never held in memory, or copied
    /// to disk, to be sent.
    pub async fn pieces(self, piece: usize) -> SnapshotPieces {
        let (tx, rx) = mpsc::channel(2);
        let source = match self {
            SnapshotData::Checkpoint(checkpoint) => Ok(checkpoint),
            SnapshotData::Received(file) => Err(file.into_std().await),
        };
        tokio::task::spawn_blocking(move || {
            let mut sink = PieceSink { tx: tx.clone(), buffer: Vec::with_capacity(piece), piece };
            let written = match source {
                Ok(checkpoint) => checkpoint.write_to(&mut sink).map(drop),
                Err(mut file) => file
                    .seek(SeekFrom::Start(0))
                    .and_then(|_| io::copy(&mut file, &mut sink))
                    .map(drop)
                    .map_err(|e| StoreError::io("snapshot", e)),
            };
            let last = written.map(|()| Piece { data: std::mem::take(&mut sink.buffer), last: true });
            // A receiver that went away wants no more.
            let _ = tx.blocking_send(last);
        });
        rx
    }
}

/// Gathers written bytes into pieces and hands each full one over.
struct PieceSink {
    tx: mpsc::Sender<Result<Piece, StoreError>>,
    buffer: Vec<u8>,
    piece: usize,
}

impl Write for PieceSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(self.piece - self.buffer.len());
        self.buffer.extend_from_slice(&data[..n]);
        if self.buffer.len() == self.piece {
            let full = std::mem::replace(&mut self.buffer, Vec::with_capacity(self.piece));
            self.tx
                .blocking_send(Ok(Piece { data: full, last: false }))
                .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the snapshot's reader went away"))?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Format 3 (history). Files of formats 1 and 2 (`MSSNAP01`, `MSSNAP02`) are refused as foreign.
const MAGIC: &[u8; 8] = b"MSSNAP03";
/// The family tag that ends the records.
const END: u8 = 0;
const MAX_META: u32 = 16 * 1024 * 1024;
/// An escaped history key can be twice the longest user key, and then some.
const MAX_KEY: u32 = 256 * 1024;
const MAX_RECORD: u32 = 64 * 1024 * 1024;

/// What a snapshot says of the state it holds, besides its records.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct SnapshotHeader {
    /// Raft's description: the last log id applied and the membership.
    pub meta: SnapshotMeta,
    /// The store's revision.
    pub revision: u64,
    /// The compaction revision: history below it is not carried.
    pub compacted: u64,
    /// The cluster's id; `None` from a cluster made before ids. Last, so that a member of an
    /// older version, which decodes the fields before it and ignores the rest, still reads the
    /// header (during a rolling upgrade).
    pub cluster_id: Option<u64>,
}

impl SnapshotHeader {
    /// Decodes a header, of this version or of one before cluster ids.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        /// The header before cluster ids.
        #[derive(serde::Deserialize)]
        struct Earlier {
            meta: SnapshotMeta,
            revision: u64,
            compacted: u64,
        }
        match decode(bytes) {
            Ok(header) => Ok(header),
            Err(_) => {
                let Earlier { meta, revision, compacted } = decode(bytes)?;
                Ok(Self { meta, revision, compacted, cluster_id: None })
            }
        }
    }
}

pub(crate) struct SnapshotWriter<W: Write> {
    out: W,
    count: u64,
}

impl<W: Write> SnapshotWriter<W> {
    pub(crate) fn new(mut out: W, header: &SnapshotHeader) -> Result<Self, StoreError> {
        let meta = encode(header)?;
        out.write_all(MAGIC).map_err(write_err)?;
        write_len(&mut out, meta.len())?;
        out.write_all(&meta).map_err(write_err)?;
        Ok(Self { out, count: 0 })
    }

    pub(crate) fn record(&mut self, family: Family, key: &[u8], record: &[u8]) -> Result<(), StoreError> {
        self.out.write_all(&[family.tag()]).map_err(write_err)?;
        write_len(&mut self.out, key.len())?;
        self.out.write_all(key).map_err(write_err)?;
        write_len(&mut self.out, record.len())?;
        self.out.write_all(record).map_err(write_err)?;
        self.count += 1;
        Ok(())
    }

    /// Writes the end mark and returns the underlying writer.
    pub(crate) fn finish(mut self) -> Result<W, StoreError> {
        self.out.write_all(&[END]).map_err(write_err)?;
        self.out.write_all(&self.count.to_be_bytes()).map_err(write_err)?;
        self.out.flush().map_err(write_err)?;
        Ok(self.out)
    }
}

fn write_len(out: &mut impl Write, len: usize) -> Result<(), StoreError> {
    let len = u32::try_from(len)
        .ok()
        .ok_or_else(|| StoreError::Corrupt(format!("snapshot item of {len} bytes is too large")))?;
    out.write_all(&len.to_be_bytes()).map_err(write_err)
}

fn write_err(e: io::Error) -> StoreError {
    StoreError::io("snapshot", e)
}

/// One entry of a column family: its family, key and value.
pub(crate) type Record = (Family, Vec<u8>, Vec<u8>);

pub(crate) struct SnapshotReader<R: Read> {
    input: R,
    count: u64,
    done: bool,
}

impl<R: Read> SnapshotReader<R> {
    /// Reads the header; returns the reader positioned at the first record.
    pub(crate) fn open(mut input: R) -> Result<(SnapshotHeader, Self), StoreError> {
        let mut magic = [0u8; 8];
        read_exact(&mut input, &mut magic)?;
        if &magic != MAGIC {
            return Err(StoreError::Corrupt("not a metaStore snapshot (bad magic)".into()));
        }
        let meta_len = read_u32(&mut input)?;
        let header = read_bytes(&mut input, meta_len, MAX_META, "snapshot header")?;
        let header = SnapshotHeader::decode(&header)?;
        Ok((header, Self { input, count: 0, done: false }))
    }

    /// The next `(family, key, value)`, or `None` after the end mark.
    pub(crate) fn next_record(&mut self) -> Result<Option<Record>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        read_exact(&mut self.input, &mut tag)?;
        if tag[0] == END {
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
        let family = Family::from_tag(tag[0])
            .ok_or_else(|| StoreError::Corrupt(format!("snapshot record of unknown family {}", tag[0])))?;
        let key_len = read_u32(&mut self.input)?;
        let key = read_bytes(&mut self.input, key_len, MAX_KEY, "snapshot key")?;
        let record_len = read_u32(&mut self.input)?;
        let record = read_bytes(&mut self.input, record_len, MAX_RECORD, "snapshot record")?;
        self.count += 1;
        Ok(Some((family, key, record)))
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

/// Makes the files that snapshots arriving from the leader are written to, and checks them.
#[derive(Clone, Debug)]
pub struct SnapshotInbox {
    pub(crate) dir: PathBuf,
}

impl SnapshotInbox {
    /// An unnamed temporary file beside the snapshots: it disappears by itself if the transfer
    /// is abandoned.
    pub async fn new_file(&self) -> Result<tokio::fs::File, StoreError> {
        let dir = self.dir.clone();
        let file =
            run_blocking(move || tempfile::tempfile_in(&dir).map_err(|e| StoreError::io(&dir, e))).await?;
        Ok(tokio::fs::File::from_std(file))
    }

    /// Reads a received snapshot through and returns it, rewound, if it is one this member can
    /// install: a well-formed file that describes `expected` and whose every record decodes.
    /// openraft treats a failed install as a storage failure and stops, so a snapshot that would
    /// fail must be refused to its sender before raft is given it.
    pub async fn check(
        &self,
        received: tokio::fs::File,
        expected: &SnapshotMeta,
    ) -> Result<tokio::fs::File, StoreError> {
        let mut file = received.into_std().await;
        let expected = expected.clone();
        let file = run_blocking(move || {
            read_received(&mut file, &expected, |_, _, _| Ok(()))?;
            Ok(file)
        })
        .await?;
        Ok(tokio::fs::File::from_std(file))
    }
}

/// Reads the received snapshot in `file` from its start, checks that it describes `expected`
/// and hands each record, decoded once to check it, to `f`; returns its header and leaves the
/// file rewound. Blocking.
pub(crate) fn read_received(
    file: &mut File,
    expected: &SnapshotMeta,
    mut f: impl FnMut(Family, &[u8], &[u8]) -> Result<(), StoreError>,
) -> Result<SnapshotHeader, StoreError> {
    file.seek(SeekFrom::Start(0)).map_err(|e| StoreError::io("received snapshot", e))?;
    let (header, mut reader) = SnapshotReader::open(BufReader::new(&mut *file))?;
    if header.meta.last_log_id != expected.last_log_id
        || header.meta.last_membership != expected.last_membership
    {
        return Err(StoreError::Corrupt(format!(
            "snapshot file describes {:?}, but it was sent as {:?}",
            header.meta.last_log_id, expected.last_log_id
        )));
    }
    while let Some((family, key, record)) = reader.next_record()? {
        family.check(&key, &record)?;
        f(family, &key, &record)?;
    }
    drop(reader);
    file.seek(SeekFrom::Start(0)).map_err(|e| StoreError::io("received snapshot", e))?;
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::StoredMembership;

    fn meta() -> SnapshotHeader {
        let meta = SnapshotMeta { last_log_id: None, last_membership: StoredMembership::default() };
        SnapshotHeader { meta, revision: 42, compacted: 7, cluster_id: Some(99) }
    }

    fn written(records: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut w = SnapshotWriter::new(Vec::new(), &meta()).expect("header");
        for (k, v) in records {
            w.record(Family::Kv, k, v).expect("record");
        }
        w.finish().expect("finish")
    }

    #[test]
    fn a_snapshot_reads_back_as_written() {
        let bytes = written(&[(b"a", b"1"), (b"b", b"22")]);
        let (m, mut r) = SnapshotReader::open(&bytes[..]).expect("open");
        assert_eq!(m, meta());
        assert_eq!(r.next_record().expect("1"), Some((Family::Kv, b"a".to_vec(), b"1".to_vec())));
        assert_eq!(r.next_record().expect("2"), Some((Family::Kv, b"b".to_vec(), b"22".to_vec())));
        assert_eq!(r.next_record().expect("end"), None);
    }

    /// The header as versions before cluster ids wrote and read it.
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct EarlierHeader {
        meta: SnapshotMeta,
        revision: u64,
        compacted: u64,
    }

    #[test]
    fn headers_before_cluster_ids_still_read_and_older_members_read_this_one() {
        let earlier = EarlierHeader { meta: meta().meta, revision: 42, compacted: 7 };
        let read = SnapshotHeader::decode(&encode(&earlier).expect("encode")).expect("decode");
        assert_eq!(read, SnapshotHeader { cluster_id: None, ..meta() });
        let by_older: EarlierHeader = decode(&encode(&meta()).expect("encode")).expect("decode");
        assert_eq!(by_older, earlier);
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

    #[tokio::test(flavor = "multi_thread")]
    async fn a_received_snapshot_is_sent_on_in_pieces_that_join_up_to_it() {
        let bytes = written(&[(b"a", b"1"), (b"b", &[7u8; 100])]);
        let mut file = tempfile::tempfile().expect("temp file");
        file.write_all(&bytes).expect("write");
        let mut pieces = SnapshotData::Received(tokio::fs::File::from_std(file)).pieces(16).await;
        let mut joined = Vec::new();
        while let Some(piece) = pieces.recv().await {
            let piece = piece.expect("a piece");
            assert!(piece.data.len() <= 16);
            joined.extend(piece.data);
            if piece.last {
                break;
            }
        }
        assert_eq!(joined, bytes);
        assert!(pieces.recv().await.is_none(), "nothing after the last piece");
    }

    #[test]
    fn a_huge_declared_length_is_refused_before_allocating() {
        let mut bytes = written(&[]);
        let header_len = bytes.len() - 9;
        bytes.truncate(header_len);
        bytes.push(Family::History.tag());
        bytes.extend_from_slice(&(MAX_KEY + 1).to_be_bytes());
        let (_, mut r) = SnapshotReader::open(&bytes[..]).expect("open");
        assert!(matches!(r.next_record(), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn a_record_of_an_unknown_family_is_refused() {
        let mut bytes = written(&[]);
        let header_len = bytes.len() - 9;
        bytes.truncate(header_len);
        bytes.push(9);
        let (_, mut r) = SnapshotReader::open(&bytes[..]).expect("open");
        assert!(matches!(r.next_record(), Err(StoreError::Corrupt(_))));
    }
}
