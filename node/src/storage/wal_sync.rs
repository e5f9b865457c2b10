//! Group commit for the raft log.
//!
//! Appends write their entries to RocksDB without syncing (so they are readable at once) and
//! hand their completion callback to this syncer. Its thread takes every callback waiting, makes
//! one `fsync` of the write-ahead log, then completes them all: under load, one fsync covers
//! every batch that arrived while the previous one ran. A callback fires only after the entries
//! it covers are on disk, which is openraft's durability contract for `append`.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use openraft::storage::IOFlushed;
use rocksdb::DB;

use super::StoreError;
use crate::metrics;
use crate::types::TypeConfig;

pub(crate) struct WalSyncer {
    /// `None` only while dropping.
    tx: Option<mpsc::Sender<IOFlushed<TypeConfig>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WalSyncer {
    pub(crate) fn start(db: Arc<DB>) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel::<IOFlushed<TypeConfig>>();
        let thread = std::thread::Builder::new()
            .name("wal-sync".into())
            .spawn(move || {
                // Ends when every sender is gone, i.e. when the log store is dropped.
                while let Ok(first) = rx.recv() {
                    let mut waiting = vec![first];
                    waiting.extend(rx.try_iter());
                    let started = Instant::now();
                    let result = db.flush_wal(true);
                    metrics::storage().observe_log_sync(started.elapsed(), waiting.len());
                    for callback in waiting {
                        let outcome = match &result {
                            Ok(()) => Ok(()),
                            Err(e) => Err(std::io::Error::other(e.to_string())),
                        };
                        callback.io_completed(outcome);
                    }
                }
            })
            .map_err(|e| StoreError::io("wal-sync thread", e))?;
        Ok(Self { tx: Some(tx), thread: Some(thread) })
    }

    /// Completes `callback` once everything written to the store so far is on disk.
    pub(crate) fn sync_then(&self, callback: IOFlushed<TypeConfig>) {
        let sent = match &self.tx {
            Some(tx) => tx.send(callback).map_err(|mpsc::SendError(callback)| callback),
            None => Err(callback),
        };
        if let Err(callback) = sent {
            callback.io_completed(Err(std::io::Error::other("wal-sync thread has stopped")));
        }
    }
}

impl Drop for WalSyncer {
    /// Stops the thread and waits for it, so that its handle on the database is released here
    /// and not while the process exits: RocksDB closing concurrently with exit-time destructors
    /// crashes ("double free").
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
