//! Deleting the history a compaction made unreachable, in the background and in bounded steps.
//!
//! A compaction to revision C is one raft entry that only moves the compaction revision: from
//! then on reads below C are refused, on every member alike. The versions it made unreachable
//! are deleted here, on each member by itself, walking `changes` in revision order: the change
//! of key K at revision r < C goes, and with it the version of K before r (r, at most C - 1,
//! supersedes it), and K's version at r itself if it is a deletion (nothing older is left for
//! it to hide). Every version is some change's predecessor, so none is left behind however
//! many compactions pass over it. What a read at C or later sees is never touched, nor is the
//! state at C - 1: the changes at C itself stay, for a watch that starts there, with the
//! versions they replaced, for the previous values it reports. Each step deletes what it found
//! in one batch; the walk restarts from the first change left, so a crash between steps loses
//! nothing and repeats nothing.

use std::sync::Arc;
use std::time::Duration;

use rocksdb::{IteratorMode, ReadOptions, WriteBatch, DB};

use super::codec;
use super::state_machine::read_compacted;
use super::{cf, run_blocking, StoreError, CF_CHANGES, CF_HISTORY};

/// Changes looked at per step: small enough that a step never holds writes up for long.
const STEP: usize = 1_000;
/// How often an idle compactor looks for a new compaction revision.
const IDLE: Duration = Duration::from_millis(500);

/// Deletes up to [`STEP`] changes below the compaction revision, and the versions they made
/// unreachable. Returns how many changes it deleted (0: nothing left to do). Blocking.
pub(crate) fn step(db: &DB) -> Result<usize, StoreError> {
    let compacted = read_compacted(db, &ReadOptions::default())?;
    let (changes, history) = (cf(db, CF_CHANGES)?, cf(db, CF_HISTORY)?);
    let view = db.snapshot();
    let mut batch = WriteBatch::default();
    let mut done = 0;
    for item in view.iterator_cf(changes, IteratorMode::Start).take(STEP) {
        let (change, key) = item?;
        let (revision, _) = codec::decode_change_key(&change)?;
        if revision >= compacted {
            break;
        }
        let mut opts = ReadOptions::default();
        opts.set_snapshot(&view);
        let mut versions = db.raw_iterator_cf_opt(history, opts);
        // The version this change replaced, if it is still there.
        versions.seek_for_prev(codec::history_key(&key, revision.saturating_sub(1)));
        if let Some(older) = versions.key().filter(|k| k.starts_with(&codec::history_prefix(&key))) {
            batch.delete_cf(history, older);
        }
        let version = codec::history_key(&key, revision);
        versions.seek(&version);
        if versions.key() == Some(version.as_slice()) && versions.value() == Some(&[][..]) {
            batch.delete_cf(history, &version);
        }
        versions.status()?;
        batch.delete_cf(changes, &change);
        done += 1;
    }
    if done > 0 {
        // Unsynced: a step lost in a crash is found again by the next walk.
        db.write(batch)?;
    }
    Ok(done)
}

/// Deletes compacted history in the background until stopped.
pub struct Compactor {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Compactor {
    /// Starts on the store `reader` reads. Must be called within a Tokio runtime.
    pub fn start(reader: &super::KvReader) -> Self {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(run(reader.db.clone(), stopped));
        Self { stop, task }
    }

    /// Stops after the step under way, and returns once it holds the store no more: a store
    /// is closed only when nothing holds it.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Runs steps while there is work, and looks again every [`IDLE`], until `stopped`.
async fn run(db: Arc<DB>, mut stopped: tokio::sync::watch::Receiver<bool>) {
    while !*stopped.borrow() {
        let store = db.clone();
        let pause = match run_blocking(move || step(&store)).await {
            Ok(0) => IDLE,
            Ok(_) => Duration::ZERO,
            Err(e) => {
                tracing::warn!(error = %e, "deleting compacted history failed; trying again");
                IDLE
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            // Stopped, or its handle dropped.
            changed = stopped.changed() => if changed.is_err() { return },
        }
    }
}
