//! Watches: the changes to a key range from a revision on, on any member — replayed from the
//! store's history, then live as the member applies them, in one path: every watcher reads the
//! `changes` its member has stored, in whole revisions, and waits for the member to announce a
//! newer revision when it has read them all. So events come in revision order with no gap and
//! no duplicate, a transaction's together, the same across a snapshot install (the snapshot
//! carries the history) and a leader change; a restarted member serves a watcher resuming
//! from its last revision like any other. A slow watcher costs only itself: it reads at its
//! own pace through a small buffer, and if compaction overtakes it, it is cancelled with the
//! compaction revision, from which its client re-lists and watches again.
//!
//! Free of raft and of any front end: it needs the store's reader and a runtime.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::engine::{KeyRange, RevisionError};
use crate::storage::{Change, ChangesBudget, KvReader, StoreError};

/// What one read of the changes gathers at most before a watcher sends it.
const BUDGET: ChangesBudget = ChangesBudget { changes: 1_000, bytes: 4 * 1024 * 1024, scanned: 10_000 };
/// Messages a watcher may have waiting for its client before it waits too.
const BUFFERED: usize = 4;

/// What a watch asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchRequest {
    pub keys: KeyRange,
    /// The first revision to report changes of; 0: those after the current revision.
    pub start_revision: u64,
    /// Report each key's state before the change too.
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
    /// Report the revision the watcher is synced to this often, even with nothing to report.
    pub progress_every: Option<Duration>,
}

/// What a watcher tells its client, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMessage {
    /// The watch is running; the store was at `revision`.
    Created { revision: u64 },
    /// Changes of whole revisions, in order; every change up to `through` has been reported.
    Changes { changes: Vec<Change>, through: u64 },
    /// Every change up to `revision` has been reported.
    Progress { revision: u64 },
    /// The watch ended: the changes it needs next are compacted (`compact_revision`, from which
    /// a client may re-list and watch again), or the member cannot serve it (0).
    Canceled { compact_revision: u64, reason: String },
}

/// A member's watchers: each started here, all told to end when the member stops (an open
/// watch would otherwise hold its connection, and the member's shutdown, until the drain ends).
#[derive(Clone)]
pub struct Watches {
    reader: KvReader,
    stop: Arc<watch::Sender<bool>>,
}

impl Watches {
    pub fn new(reader: KvReader) -> Self {
        Self { reader, stop: Arc::new(watch::channel(false).0) }
    }

    /// Starts a watcher; its messages arrive on the receiver, and it stops when the receiver is
    /// dropped or the member stops.
    pub fn start(&self, request: WatchRequest) -> mpsc::Receiver<WatchMessage> {
        self.start_with_progress(request).0
    }

    /// [`Watches::start`], and a handle to ask the watcher for a progress message whenever
    /// wanted.
    pub fn start_with_progress(
        &self,
        request: WatchRequest,
    ) -> (mpsc::Receiver<WatchMessage>, ProgressRequests) {
        let (messages, receiver) = mpsc::channel(BUFFERED);
        let (requests, requested) = watch::channel(());
        tokio::spawn(run(self.reader.clone(), request, messages, requested, self.stop.subscribe()));
        (receiver, ProgressRequests(requests))
    }

    /// Turns true when the member stops: what other long-lived streams end on too.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Ends every watcher, each with a last message saying why.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

/// Asks a watcher for a [`WatchMessage::Progress`]: it answers once it has sent every change
/// stored so far, so the answer never overtakes changes still on their way. Requests made
/// before it answers share one answer.
pub struct ProgressRequests(watch::Sender<()>);

impl ProgressRequests {
    pub fn request(&self) {
        self.0.send_replace(());
    }
}

#[tracing::instrument(level = "debug", skip_all, fields(start = request.start_revision))]
async fn run(
    reader: KvReader,
    request: WatchRequest,
    messages: mpsc::Sender<WatchMessage>,
    progress_requested: watch::Receiver<()>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut applied = reader.applied();
    let mut progress_requested = Some(progress_requested);
    let revision = match reader.revisions().await {
        Ok((revision, _)) => revision,
        Err(e) => {
            let _ = messages.send(cancel(e)).await;
            return;
        }
    };
    let mut next = if request.start_revision == 0 { revision + 1 } else { request.start_revision };
    if messages.send(WatchMessage::Created { revision }).await.is_err() {
        return;
    }
    let mut progress = request.progress_every.map(|every| {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks
    });
    loop {
        let page = match reader.changes(next, request.keys.clone(), request.prev_kv, BUDGET).await {
            Ok(page) => page,
            Err(e) => {
                let _ = messages.send(cancel(e)).await;
                return;
            }
        };
        let through = page.through.max(next - 1);
        let changes: Vec<Change> = page
            .changes
            .into_iter()
            .filter(|c| if c.record.is_some() { !request.no_put } else { !request.no_delete })
            .collect();
        if !changes.is_empty() && messages.send(WatchMessage::Changes { changes, through }).await.is_err() {
            return;
        }
        next = through + 1;
        if through < page.revision {
            // Cut short: more is stored already.
            continue;
        }
        tokio::select! {
            closed = async { applied.wait_for(|revision| *revision >= next).await.is_err() } => {
                if closed {
                    return stopped(&messages).await;
                }
            }
            () = async { let _ = stopping.wait_for(|stop| *stop).await; } => return stopped(&messages).await,
            () = messages.closed() => return,
            () = async {
                tokio::select! {
                    () = tick(&mut progress) => {}
                    () = requested(&mut progress_requested) => {}
                }
            } => {
                // Synced to the store's revision, never beyond: a watch from a future revision
                // has nothing to wait for below it, but the store is not there yet.
                let synced = (next - 1).min(*applied.borrow());
                if messages.send(WatchMessage::Progress { revision: synced }).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The last message of a watcher whose member stops: its client resumes elsewhere.
async fn stopped(messages: &mpsc::Sender<WatchMessage>) {
    let reason = "this member is shutting down".to_string();
    let _ = messages.send(WatchMessage::Canceled { compact_revision: 0, reason }).await;
}

/// The next progress request; never, once nobody can ask any more.
async fn requested(requests: &mut Option<watch::Receiver<()>>) {
    if let Some(receiver) = requests {
        if receiver.changed().await.is_ok() {
            return;
        }
        *requests = None;
    }
    std::future::pending().await
}

/// The next progress tick; never, for a watch that asked for none.
async fn tick(progress: &mut Option<tokio::time::Interval>) {
    match progress {
        Some(ticks) => {
            ticks.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn cancel(error: StoreError) -> WatchMessage {
    match error {
        StoreError::Revision(RevisionError::Compacted { compacted, .. }) => WatchMessage::Canceled {
            compact_revision: compacted,
            reason: format!("the changes it needs are compacted: history begins at revision {compacted}"),
        },
        other => WatchMessage::Canceled {
            compact_revision: 0,
            reason: format!("this member cannot serve it: {other}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::Write;
    use crate::storage::testing::{apply_writes, open_test_db};

    fn put(key: &str, value: &str) -> Write {
        Write::Put { key: key.into(), value: value.into(), precondition: None }
    }

    fn request(start_revision: u64) -> WatchRequest {
        WatchRequest {
            keys: KeyRange::prefix(b"w/"),
            start_revision,
            prev_kv: false,
            no_put: false,
            no_delete: false,
            progress_every: None,
        }
    }

    async fn next(messages: &mut mpsc::Receiver<WatchMessage>) -> WatchMessage {
        tokio::time::timeout(Duration::from_secs(10), messages.recv())
            .await
            .expect("in time")
            .expect("a message")
    }

    fn revisions(message: &WatchMessage) -> Vec<u64> {
        match message {
            WatchMessage::Changes { changes, .. } => changes.iter().map(|c| c.revision).collect(),
            other => panic!("not changes: {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_watch_replays_history_then_follows_what_the_member_applies() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Arc::new(open_test_db(dir.path()));
        apply_writes(&db, vec![put("w/a", "1"), put("x", "1"), put("w/b", "1")]);
        let reader = KvReader::new(db.clone());
        let watches = Watches::new(reader.clone());
        let mut messages = watches.start(request(3));
        assert_eq!(next(&mut messages).await, WatchMessage::Created { revision: 4 });
        assert_eq!(revisions(&next(&mut messages).await), [4], "from revision 3: x is not watched");

        apply_writes(&db, vec![put("w/c", "1"), Write::Delete { key: b"w/a".to_vec(), precondition: None }]);
        reader.announcer().send_replace(6);
        let live = next(&mut messages).await;
        assert_eq!(revisions(&live), [5, 6]);
        let WatchMessage::Changes { changes, through } = live else { unreachable!() };
        assert_eq!((changes[1].record.clone(), through), (None, 6), "a delete, and synced to 6");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_watch_from_now_sees_only_later_changes_and_filters_what_it_was_asked_to() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Arc::new(open_test_db(dir.path()));
        apply_writes(&db, vec![put("w/old", "1")]);
        let reader = KvReader::new(db.clone());
        let watches = Watches::new(reader.clone());
        let mut messages = watches.start(WatchRequest { no_put: true, ..request(0) });
        assert_eq!(next(&mut messages).await, WatchMessage::Created { revision: 2 });
        apply_writes(
            &db,
            vec![put("w/new", "1"), Write::Delete { key: b"w/old".to_vec(), precondition: None }],
        );
        reader.announcer().send_replace(4);
        assert_eq!(revisions(&next(&mut messages).await), [4], "the put is filtered out");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_watch_below_the_compaction_revision_is_cancelled_naming_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Arc::new(open_test_db(dir.path()));
        apply_writes(&db, vec![put("w/a", "1"), put("w/a", "2"), put("w/a", "3")]);
        let sm = db.cf_handle("sm_meta").expect("cf");
        db.put_cf(sm, b"compacted", 3u64.to_be_bytes()).expect("put");
        let watches = Watches::new(KvReader::new(db.clone()));
        let mut messages = watches.start(request(2));
        assert_eq!(next(&mut messages).await, WatchMessage::Created { revision: 4 });
        let WatchMessage::Canceled { compact_revision, .. } = next(&mut messages).await else { panic!() };
        assert_eq!(compact_revision, 3);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn progress_names_the_revision_the_watcher_is_synced_to() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Arc::new(open_test_db(dir.path()));
        apply_writes(&db, vec![put("elsewhere", "1")]);
        let progress = WatchRequest { progress_every: Some(Duration::from_millis(50)), ..request(0) };
        let watches = Watches::new(KvReader::new(db.clone()));
        let mut messages = watches.start(progress);
        assert_eq!(next(&mut messages).await, WatchMessage::Created { revision: 2 });
        assert_eq!(next(&mut messages).await, WatchMessage::Progress { revision: 2 });
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn progress_on_request_comes_after_every_change_stored_before_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Arc::new(open_test_db(dir.path()));
        apply_writes(&db, vec![put("w/a", "1"), put("w/b", "1")]);
        let watches = Watches::new(KvReader::new(db.clone()));
        let (mut messages, progress) = watches.start_with_progress(request(2));
        progress.request();
        assert_eq!(next(&mut messages).await, WatchMessage::Created { revision: 3 });
        assert_eq!(revisions(&next(&mut messages).await), [2, 3], "the changes first");
        assert_eq!(next(&mut messages).await, WatchMessage::Progress { revision: 3 });
        progress.request();
        assert_eq!(next(&mut messages).await, WatchMessage::Progress { revision: 3 }, "and again on request");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn stopping_the_member_ends_every_watch_with_a_reason() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Arc::new(open_test_db(dir.path()));
        let watches = Watches::new(KvReader::new(db.clone()));
        let mut messages = watches.start(request(0));
        assert_eq!(next(&mut messages).await, WatchMessage::Created { revision: 1 }, "an empty store's");
        watches.stop();
        assert!(matches!(next(&mut messages).await, WatchMessage::Canceled { compact_revision: 0, .. }));
        assert_eq!(messages.recv().await, None, "and the watcher is gone");
    }
}
