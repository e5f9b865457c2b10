//! The Watch service: one bidirectional stream carries many watches, each with an id unique on
//! the stream. A session task per stream reads the client's requests and forwards what the
//! stream's watchers (`crate::watch`) report, in order:
//!
//! - `created` answers each create in the order the creates came (etcd's Go client binds each
//!   `created` to its oldest pending create), before any event of that watch;
//! - a progress request is answered (watch id -1, as etcd does) once every watch on the stream
//!   has sent every change stored before it: the answer never overtakes queued events;
//! - with `hasleader` set, the stream ends with etcd's "no leader" once the member has known
//!   no leader for a while, so the client moves to a member that does.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use metastore_etcd_proto::etcdserverpb::watch_server::Watch;
use metastore_etcd_proto::etcdserverpb::{
    watch_create_request::FilterType, watch_request::RequestUnion, WatchCreateRequest,
    WatchRequest as WireRequest, WatchResponse,
};
use metastore_etcd_proto::mvccpb::{event::EventType, Event, KeyValue};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{StreamExt, StreamMap};
use tonic::{Request, Response, Status, Streaming};

use super::convert::{key_value, signed};
use super::errors::{status, NO_LEADER};
use super::{Etcd, MAX_REQUEST_BYTES};
use crate::auth::Caller;
use crate::engine::KeyRange;
use crate::service::Need;
use crate::storage::Change;
use crate::watch::{ProgressRequests, WatchMessage, WatchRequest};

/// How long a stream that asked for a leader stays open while the member knows none.
const LEADERLESS_FOR: Duration = Duration::from_secs(3);
/// Responses queued for the client before the session waits for it.
const QUEUED: usize = 16;

type Answer = Result<WatchResponse, Status>;

/// A watcher's messages, and a last `None` when it ends: a watcher gone without saying why
/// (it never should) is still noticed, and its watch ended.
type Messages = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Option<WatchMessage>> + Send + Sync>>;

fn messages(receiver: mpsc::Receiver<WatchMessage>) -> Messages {
    Box::pin(ReceiverStream::new(receiver).map(Some).chain(tokio_stream::once(None)))
}

#[tonic::async_trait]
impl Watch for Etcd {
    type WatchStream = ReceiverStream<Answer>;

    #[tracing::instrument(level = "debug", skip_all, fields(member = self.service.id()))]
    async fn watch(
        &self,
        request: Request<Streaming<WireRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let needs_leader = request.metadata().get("hasleader").is_some_and(|v| v.as_bytes() == b"true");
        // The stream's credentials, for every watch created on it.
        let caller = self.caller(&request)?;
        if needs_leader && self.service.metrics().current_leader.is_none() {
            return Err(Status::unavailable(NO_LEADER));
        }
        let (answers, stream) = mpsc::channel(QUEUED);
        let session = Session {
            etcd: self.clone(),
            answers,
            watches: HashMap::new(),
            messages: StreamMap::new(),
            next_id: 0,
            progress: None,
            caller,
        };
        tokio::spawn(session.run(request.into_inner(), needs_leader));
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}

/// One watch of a stream.
struct Watching {
    progress: ProgressRequests,
    progress_notify: bool,
    fragment: bool,
}

/// A progress request being answered: the watches yet to report, and the lowest revision
/// reported so far.
struct PendingProgress {
    waiting: HashSet<i64>,
    synced: u64,
}

struct Session {
    etcd: Etcd,
    answers: mpsc::Sender<Answer>,
    watches: HashMap<i64, Watching>,
    /// Each watcher's messages, then `None` once it is gone.
    messages: StreamMap<i64, Messages>,
    next_id: i64,
    progress: Option<PendingProgress>,
    caller: Option<Caller>,
}

/// The client is gone: the session ends.
struct Gone;

impl Session {
    async fn run(mut self, mut requests: Streaming<WireRequest>, needs_leader: bool) {
        let mut leader_checks = tokio::time::interval(Duration::from_millis(500));
        let mut leaderless_since: Option<Instant> = None;
        loop {
            let step = tokio::select! {
                request = requests.next() => match request {
                    Some(Ok(request)) => self.handle(request).await,
                    // The client closed its side, or the stream broke: either way, done.
                    Some(Err(_)) | None => Err(Gone),
                },
                Some((id, message)) = self.messages.next(), if !self.messages.is_empty() => {
                    let gone = || WatchMessage::Canceled { compact_revision: 0, reason: "the watcher ended".into() };
                    self.forward(id, message.unwrap_or_else(gone)).await
                }
                stopped = self.etcd.stopped() => {
                    let _ = self.answers.send(Err(stopped)).await;
                    Err(Gone)
                }
                _ = leader_checks.tick(), if needs_leader => {
                    if self.etcd.service.metrics().current_leader.is_some() {
                        leaderless_since = None;
                        Ok(())
                    } else if leaderless_since.get_or_insert_with(Instant::now).elapsed() >= LEADERLESS_FOR {
                        let _ = self.answers.send(Err(Status::unavailable(NO_LEADER))).await;
                        Err(Gone)
                    } else {
                        Ok(())
                    }
                }
                () = self.answers.closed() => Err(Gone),
            };
            if step.is_err() {
                // Dropping the receivers stops the watchers.
                return;
            }
        }
    }

    async fn send(&self, response: WatchResponse) -> Result<(), Gone> {
        self.answers.send(Ok(response)).await.map_err(|_| Gone)
    }

    fn response(&self, watch_id: i64, revision: u64) -> WatchResponse {
        WatchResponse { header: Some(self.etcd.header(revision)), watch_id, ..Default::default() }
    }

    fn current_revision(&self) -> u64 {
        self.etcd.current_revision()
    }

    async fn handle(&mut self, request: WireRequest) -> Result<(), Gone> {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                if self.watches.remove(&cancel.watch_id).is_some() {
                    self.messages.remove(&cancel.watch_id);
                    let response = WatchResponse {
                        canceled: true,
                        ..self.response(cancel.watch_id, self.current_revision())
                    };
                    self.send(response).await?;
                    self.no_longer_waiting_for(cancel.watch_id).await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => self.request_progress().await,
            None => Ok(()),
        }
    }

    async fn create(&mut self, create: WatchCreateRequest) -> Result<(), Gone> {
        let id = if create.watch_id != 0 {
            create.watch_id
        } else {
            while self.watches.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        if self.watches.contains_key(&id) {
            let response = WatchResponse {
                created: true,
                canceled: true,
                cancel_reason: "mvcc: duplicate watch ID provided on the WatchStream".into(),
                ..self.response(id, self.current_revision())
            };
            return self.send(response).await;
        }
        // etcd watches "\0" for an empty key; the watch must be allowed to read what it names.
        let key = if create.key.is_empty() { vec![0] } else { create.key.clone() };
        let allowed =
            self.etcd.service.authorize(self.caller.as_ref(), Need::Read(&key, &create.range_end)).await;
        if let Err(e) = allowed {
            let response = WatchResponse {
                created: true,
                canceled: true,
                cancel_reason: status(e).message().to_owned(),
                ..self.response(-1, self.current_revision())
            };
            return self.send(response).await;
        }
        let request = WatchRequest {
            keys: KeyRange { key: create.key.clone(), range_end: create.range_end.clone() },
            start_revision: u64::try_from(create.start_revision).unwrap_or(0),
            prev_kv: create.prev_kv,
            no_put: create.filters.contains(&(FilterType::Noput as i32)),
            no_delete: create.filters.contains(&(FilterType::Nodelete as i32)),
            progress_every: create.progress_notify.then_some(self.etcd.progress_every),
        };
        let (mut messages, progress) = self.etcd.service.watch_with_progress(request);
        // The watcher's first word says it is running: answer the create with it now, so that
        // creates are answered in order and before any event.
        match messages.recv().await {
            Some(WatchMessage::Created { revision }) => {
                self.send(WatchResponse { created: true, ..self.response(id, revision) }).await?;
            }
            Some(WatchMessage::Canceled { compact_revision, reason }) => {
                let response = WatchResponse {
                    created: true,
                    canceled: true,
                    compact_revision: signed(compact_revision),
                    cancel_reason: reason,
                    ..self.response(id, self.current_revision())
                };
                return self.send(response).await;
            }
            // Never first, and a watcher never ends unannounced: answered all the same, so
            // that the client's creates and answers stay paired.
            Some(_) | None => {
                let response = WatchResponse {
                    created: true,
                    canceled: true,
                    cancel_reason: "the watcher ended as it started".into(),
                    ..self.response(id, self.current_revision())
                };
                return self.send(response).await;
            }
        }
        if create.watch_id == 0 {
            self.next_id = id + 1;
        }
        // A progress request still being answered covers this watch too: the answer goes to
        // every watch on the stream, so it must not overtake this one's events either.
        if let Some(pending) = &mut self.progress {
            progress.request();
            pending.waiting.insert(id);
        }
        let watching =
            Watching { progress, progress_notify: create.progress_notify, fragment: create.fragment };
        self.watches.insert(id, watching);
        self.messages.insert(id, self::messages(messages));
        Ok(())
    }

    async fn request_progress(&mut self) -> Result<(), Gone> {
        if self.watches.is_empty() {
            return self.send(self.response(-1, self.current_revision())).await;
        }
        if self.progress.is_none() {
            for watching in self.watches.values() {
                watching.progress.request();
            }
            let waiting = self.watches.keys().copied().collect();
            self.progress = Some(PendingProgress { waiting, synced: u64::MAX });
        }
        Ok(())
    }

    /// Watch `id` has no more to report for a pending progress request: answer it once no
    /// watch has.
    async fn no_longer_waiting_for(&mut self, id: i64) -> Result<(), Gone> {
        let Some(pending) = &mut self.progress else { return Ok(()) };
        pending.waiting.remove(&id);
        if !pending.waiting.is_empty() {
            return Ok(());
        }
        let synced = pending.synced;
        self.progress = None;
        let revision = if synced == u64::MAX { self.current_revision() } else { synced };
        self.send(self.response(-1, revision)).await
    }

    async fn forward(&mut self, id: i64, message: WatchMessage) -> Result<(), Gone> {
        let Some(watching) = self.watches.get(&id) else { return Ok(()) };
        match message {
            WatchMessage::Changes { changes, through } => {
                let events: Vec<Event> = changes.into_iter().map(event).collect();
                let fragment = watching.fragment;
                let response = WatchResponse { events, ..self.response(id, through) };
                if fragment && response.encoded_len() > MAX_REQUEST_BYTES {
                    for part in fragments(response) {
                        self.send(part).await?;
                    }
                    Ok(())
                } else {
                    self.send(response).await
                }
            }
            WatchMessage::Progress { revision } => {
                if watching.progress_notify {
                    self.send(self.response(id, revision)).await?;
                }
                if let Some(pending) = &mut self.progress {
                    if pending.waiting.contains(&id) {
                        pending.synced = pending.synced.min(revision);
                        return self.no_longer_waiting_for(id).await;
                    }
                }
                Ok(())
            }
            WatchMessage::Canceled { compact_revision, reason } => {
                self.watches.remove(&id);
                self.messages.remove(&id);
                let response = WatchResponse {
                    canceled: true,
                    compact_revision: signed(compact_revision),
                    cancel_reason: reason,
                    ..self.response(id, self.current_revision())
                };
                self.send(response).await?;
                self.no_longer_waiting_for(id).await
            }
            // Only ever a watcher's first message, taken at its create.
            WatchMessage::Created { .. } => Ok(()),
        }
    }
}

/// A response too large for one message, as fragments of whole events, each marked but the
/// last.
fn fragments(response: WatchResponse) -> Vec<WatchResponse> {
    let WatchResponse { events, .. } = &response;
    let mut parts: Vec<WatchResponse> = Vec::new();
    let mut current: Vec<Event> = Vec::new();
    let mut size = 0;
    for event in events {
        let len = event.encoded_len();
        if !current.is_empty() && size + len > MAX_REQUEST_BYTES {
            parts.push(WatchResponse {
                events: std::mem::take(&mut current),
                fragment: true,
                ..response.clone()
            });
            size = 0;
        }
        size += len;
        current.push(event.clone());
    }
    parts.push(WatchResponse { events: current, fragment: false, ..response });
    parts
}

fn event(change: Change) -> Event {
    let prev_kv = change.prev.map(|prev| key_value(change.key.clone(), prev));
    match change.record {
        Some(record) => {
            Event { r#type: EventType::Put as i32, kv: Some(key_value(change.key, record)), prev_kv }
        }
        None => Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue {
                key: change.key,
                mod_revision: signed(change.revision),
                ..Default::default()
            }),
            prev_kv,
        },
    }
}
