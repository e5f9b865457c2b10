//! Append streams: a leader pipelines openraft's AppendEntries requests to a follower over one
//! long-lived connection, and the follower answers each, in order, on the same connection.
//!
//! One HTTP request per append cost a round trip 200–300 µs more than the follower's own work
//! on this project's test machine, a quarter of a single client's write; on a stream a request
//! is one length-prefixed postcard frame. A session pipelines requests (sends the next before
//! this one is answered), up to [`PIPELINE`] deep.
//! A stream begins as an HTTP upgrade of a peer request (`POST /raft/append-stream`), so it
//! passes the same peer-token and storage-incarnation checks as every other peer request, on the
//! same port.
//!
//! Frames: leader → follower `AppendEntriesRequest`, follower → leader [`StreamAnswer`], one per
//! request. An error answer, or any failure, ends the stream on both sides; a stream whose
//! requests were all answered carries the next session's (openraft starts a session per payload,
//! and one per heartbeat).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, Stream, StreamExt};
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio_util::codec::{Framed, FramedRead, FramedWrite, LengthDelimitedCodec};

use super::wire::{self, FrameError, StreamAnswer};
use crate::raft::Raft;
use crate::types::{LogId, TypeConfig};

/// Requests a member sends on a stream and has not had answered yet, at most.
///
/// Deep enough that a burst of appends never waits for a round trip (64 deep gave 0–20 % more
/// writes at C = 64 than one deep on this project's test machine). Pipelining brought the two
/// lease hazards [`Session::release`] describes, each found by the pause-leader nemesis as a
/// stale read; with both fixed, every nemesis ran clean 64 deep (docs/robustness.md).
pub const PIPELINE: usize = 64;

/// A follower closes a stream that has carried nothing for this long...
const FOLLOWER_IDLE: Duration = Duration::from_secs(60);
/// ...and a leader starts a new one rather than reuse one idle for this long, so that it never
/// sends on a stream the follower is closing.
const LEADER_IDLE: Duration = Duration::from_secs(30);

/// Why an append stream ended before every request on it was answered.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("append stream failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("append stream closed by the peer with requests unanswered")]
    Closed,
    #[error("append stream made no progress for {0:?}")]
    Stalled(Duration),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the peer's raft has stopped: {0}")]
    Stopped(String),
}

/// The connection an append stream runs on.
pub trait Io: AsyncRead + AsyncWrite + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + 'static> Io for T {}

type Frames = Framed<Box<dyn Io + Unpin>, LengthDelimitedCodec>;

/// The leader's end of an append stream, between sessions.
pub struct AppendStream {
    frames: Frames,
    idle_since: Instant,
}

impl AppendStream {
    pub fn new(io: impl Io + Unpin) -> Self {
        let io: Box<dyn Io + Unpin> = Box::new(io);
        Self { frames: Framed::new(io, wire::stream_codec()), idle_since: Instant::now() }
    }

    /// Whether the follower still keeps this stream open.
    pub fn is_fresh(&self) -> bool {
        self.idle_since.elapsed() < LEADER_IDLE
    }
}

/// What one session yields: the follower's answers, in request order.
pub type Answers<'s> = futures::stream::BoxStream<'s, Result<StreamAppendResult<TypeConfig>, StreamError>>;

/// Sends `requests` on `stream` as they come, up to `depth` unanswered, and yields the
/// follower's answers in order. An answer must come within `ttl` of its request being sent or of
/// the answer before it, whichever is later. Once `requests` has ended and every request was
/// answered, the stream is handed back through `idle` for the next session; after an error, or
/// if the answers are dropped unfinished, it is closed.
///
/// Requests are taken from `requests` only while the answers are polled, in the same task, so
/// that which requests exist when an answer is handed over is known exactly (see
/// [`Session::release`]).
pub fn session<'s, S>(
    stream: AppendStream,
    requests: S,
    ttl: Duration,
    depth: usize,
    idle: &'s mut Option<AppendStream>,
) -> Answers<'s>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 's,
{
    let session = Session {
        frames: stream.frames,
        requests,
        requests_ended: false,
        unanswered: VecDeque::new(),
        held: VecDeque::new(),
        progress: Instant::now(),
        ttl,
        depth: depth.max(1),
        idle,
    };
    Box::pin(futures::stream::unfold(Some(session), |session| async move {
        let mut session = session?;
        match session.next_answer().await {
            Some(Ok(answer)) if answer.is_ok() => Some((Ok(answer), Some(session))),
            Some(last) => Some((last, None)),
            None => {
                *session.idle = Some(AppendStream { frames: session.frames, idle_since: Instant::now() });
                None
            }
        }
    }))
}

/// A request on its way: when it was sent and the last log id it carries.
struct Sent {
    at: Instant,
    last: Option<LogId>,
}

struct Session<'s, S> {
    frames: Frames,
    requests: S,
    requests_ended: bool,
    /// In the order sent.
    unanswered: VecDeque<Sent>,
    /// Answers received and not yet handed over, in order (see [`Session::release`]).
    held: VecDeque<StreamAppendResult<TypeConfig>>,
    /// When the last answer came.
    progress: Instant,
    ttl: Duration,
    depth: usize,
    idle: &'s mut Option<AppendStream>,
}

impl<S> Session<'_, S>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin,
{
    /// The next answer to hand over; `None` once every request was sent and answered.
    async fn next_answer(&mut self) -> Option<Result<StreamAppendResult<TypeConfig>, StreamError>> {
        loop {
            if let Some(answer) = self.release() {
                return Some(Ok(answer));
            }
            if self.requests_ended && self.unanswered.is_empty() {
                return None;
            }
            // No new request while an answer is held: it is released when the requests before
            // it are answered, and new ones must not keep it waiting.
            let may_send = !self.requests_ended && self.held.is_empty() && self.unanswered.len() < self.depth;
            let deadline = self.unanswered.front().map(|sent| sent.at.max(self.progress) + self.ttl);
            let stalled = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
                    None => std::future::pending().await,
                }
            };
            let step = tokio::select! {
                request = self.requests.next(), if may_send => match request {
                    Some(request) => self.send(request).await,
                    None => {
                        self.requests_ended = true;
                        Ok(())
                    }
                },
                frame = self.frames.next(), if !self.unanswered.is_empty() => self.receive(frame),
                () = stalled => Err(StreamError::Stalled(self.ttl)),
            };
            if let Err(e) = step {
                return Some(Err(e));
            }
        }
    }

    /// Hands over the first answer held, unless openraft would take it to answer a request the
    /// follower may not have received yet.
    ///
    /// openraft takes an answer acknowledging log id `m` as the answer to every request it made
    /// whose last log id is at most `m`, and credits the follower with the latest of their send
    /// times (`InflightAppendQueue::drain_acked`): the start of the leader's read lease, which
    /// rests on the follower having received that request. A request without entries (a new
    /// commit index) made while an earlier one is unanswered has the same last log id as that
    /// one. Answering the earlier one then would credit the follower with the later request's
    /// send time though it may not have received it, and a leader paused in between would wake
    /// with a lease it does not have: a stale read, which the pause nemesis found. Once that
    /// request is answered, the answers held go with its answer if it acknowledges it, and are
    /// dropped if it refuses it ([`Session::receive`]): a leader that resumes after a pause has
    /// its requests refused for a newer term, and handing over what was held would credit it
    /// with them all the same (the nemesis found that too).
    fn release(&mut self) -> Option<StreamAppendResult<TypeConfig>> {
        if let Ok(matching) = self.held.front()? {
            if self.unanswered.iter().any(|sent| sent.last <= *matching) {
                return None;
            }
        }
        self.held.pop_front()
    }

    async fn send(&mut self, mut request: AppendEntriesRequest<TypeConfig>) -> Result<(), StreamError> {
        let (frame, whole) = encode_fitting(&mut request)?;
        let last = request.entries.last().map(|entry| entry.log_id).or(request.prev_log_id);
        self.unanswered.push_back(Sent { at: Instant::now(), last });
        match tokio::time::timeout(self.ttl, self.frames.send(frame)).await {
            Ok(sent) => sent?,
            Err(_) => return Err(StreamError::Stalled(self.ttl)),
        }
        if !whole {
            // The follower's answer says where this request ended; openraft resumes from there
            // in its next session, which later requests of this one would not follow on from.
            self.requests_ended = true;
        }
        Ok(())
    }

    fn receive(&mut self, frame: Option<Result<bytes::BytesMut, std::io::Error>>) -> Result<(), StreamError> {
        let frame = frame.ok_or(StreamError::Closed)??;
        self.unanswered.pop_front();
        self.progress = Instant::now();
        match wire::decode(&frame)? {
            StreamAnswer::Appended(answer) => {
                if answer.is_err() {
                    // The answers held are waiting for this request (or later ones, which will
                    // never be answered now): handed over, they would credit the follower with
                    // it. The refusal goes alone; the acknowledgements are only progress, and
                    // the next session finds it again.
                    self.held.clear();
                }
                self.held.push_back(answer);
                Ok(())
            }
            StreamAnswer::Stopped(why) => Err(StreamError::Stopped(why)),
        }
    }
}

/// `request` as one frame, with as many of its entries as fit in one; `false` if some were left
/// out (they were removed from `request`).
fn encode_fitting(request: &mut AppendEntriesRequest<TypeConfig>) -> Result<(Bytes, bool), FrameError> {
    let whole = request.entries.len();
    loop {
        match wire::encode(request) {
            Ok(frame) => return Ok((frame.into(), request.entries.len() == whole)),
            Err(FrameError::TooLarge(_)) if request.entries.len() > 1 => {
                let keep = request.entries.len() / 2;
                request.entries.truncate(keep);
            }
            Err(e) => return Err(e),
        }
    }
}

/// The follower's end: passes the requests arriving on `io` to `raft` and writes back its
/// answers, until the leader closes the stream, an answer is an error, or `stop` is set.
/// `_permit` is this stream's place among those the member accepts at once.
pub async fn serve(
    raft: Raft,
    io: impl Io + Unpin,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let (read, write) = tokio::io::split(io);
    let mut writer = FramedWrite::new(write, wire::stream_codec());
    let requests =
        futures::stream::unfold(FramedRead::new(read, wire::stream_codec()), |mut reader| async move {
            let frame = match tokio::time::timeout(FOLLOWER_IDLE, reader.next()).await {
                Ok(Some(Ok(frame))) => frame,
                Ok(Some(Err(e))) => {
                    tracing::debug!(error = %e, "append stream: cannot read from the leader");
                    return None;
                }
                Ok(None) | Err(_) => return None,
            };
            match wire::decode(&frame) {
                Ok(request) => Some((request, reader)),
                Err(e) => {
                    tracing::warn!(error = %e, "append stream: malformed request; closing the stream");
                    None
                }
            }
        });
    let mut answers = std::pin::pin!(raft.stream_append(requests));
    loop {
        let answer = tokio::select! {
            answer = answers.next() => match answer {
                Some(Ok(answer)) => StreamAnswer::Appended(answer),
                Some(Err(fatal)) => StreamAnswer::Stopped(fatal.to_string()),
                None => return,
            },
            _ = stop.wait_for(|stop| *stop) => return,
        };
        let last = !matches!(answer, StreamAnswer::Appended(Ok(_)));
        let frame = match wire::encode(&answer) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::error!(error = %e, "append stream: cannot encode an answer");
                return;
            }
        };
        if let Err(e) = writer.send(Bytes::from(frame)).await {
            tracing::debug!(error = %e, "append stream: cannot answer the leader");
            return;
        }
        if last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::impls::leader_id_adv::LeaderId;
    use openraft::raft::StreamAppendError;
    use openraft::EntryPayload;
    use tokio::io::DuplexStream;

    use super::*;
    use crate::engine::Write;
    use crate::types::{Command, Entry, LogId};

    fn log_id(index: u64) -> LogId {
        LogId::new(LeaderId { term: 1, node_id: 1 }, index)
    }

    fn put(index: u64, value_bytes: usize) -> Entry {
        let put = Command::Writes(vec![Write::Put {
            key: format!("k{index}").into_bytes(),
            value: vec![7; value_bytes],
            precondition: None,
        }]);
        Entry { log_id: log_id(index), payload: EntryPayload::Normal(put) }
    }

    /// Entries `first..=last`, following on from the entry before `first`.
    fn append(first: u64, last: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: openraft::Vote::new_committed(1, 1),
            prev_log_id: first.checked_sub(1).map(log_id),
            leader_commit: None,
            entries: (first..=last).map(|index| put(index, 16)).collect(),
        }
    }

    fn appended(index: u64) -> StreamAnswer {
        StreamAnswer::Appended(Ok(Some(log_id(index))))
    }

    /// The far end of a stream, played by the test.
    struct Follower {
        frames: Framed<DuplexStream, LengthDelimitedCodec>,
    }

    impl Follower {
        async fn request(&mut self) -> Option<AppendEntriesRequest<TypeConfig>> {
            let frame = self.frames.next().await?.expect("a frame");
            Some(wire::decode(&frame).expect("a request"))
        }

        async fn answer(&mut self, answer: StreamAnswer) {
            let frame = wire::encode(&answer).expect("encode");
            self.frames.send(Bytes::from(frame)).await.expect("answer");
        }
    }

    fn stream_pair() -> (AppendStream, Follower) {
        let (leader, follower) = tokio::io::duplex(1 << 20);
        (AppendStream::new(leader), Follower { frames: Framed::new(follower, wire::stream_codec()) })
    }

    const TTL: Duration = Duration::from_secs(5);
    /// Deeper than members pipeline, so that the tests also pin what deeper pipelines need.
    const DEPTH: usize = 64;

    /// Requests as openraft would make them, one at a time.
    fn requests(
        requests: impl IntoIterator<Item = AppendEntriesRequest<TypeConfig>>,
    ) -> impl Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static {
        futures::stream::iter(requests.into_iter().collect::<Vec<_>>())
    }

    /// What a session yields, once it has ended.
    async fn all(answers: Answers<'_>) -> Vec<Result<StreamAppendResult<TypeConfig>, String>> {
        answers.map(|answer| answer.map_err(|e| e.to_string())).collect().await
    }

    #[tokio::test]
    async fn requests_go_out_before_earlier_ones_are_answered_and_answers_come_in_order() {
        let (stream, mut follower) = stream_pair();
        let follower = tokio::spawn(async move {
            // All three arrive before any is answered.
            let mut lasts = Vec::new();
            for _ in 0..3 {
                let request = follower.request().await.expect("a request");
                lasts.push(request.entries.last().expect("entries").log_id.index);
            }
            for last in &lasts {
                follower.answer(appended(*last)).await;
            }
            lasts
        });
        let mut kept = None;
        let answers =
            session(stream, requests([append(1, 2), append(3, 3), append(4, 6)]), TTL, DEPTH, &mut kept);
        let answers = all(answers).await;
        assert_eq!(follower.await.expect("follower"), [2, 3, 6]);
        assert_eq!(answers, [Ok(Ok(Some(log_id(2)))), Ok(Ok(Some(log_id(3)))), Ok(Ok(Some(log_id(6))))]);
    }

    #[tokio::test]
    async fn one_deep_a_request_is_made_only_once_the_answer_before_it_was_handed_over() {
        let (stream, mut follower) = stream_pair();
        let follower = tokio::spawn(async move {
            follower.request().await.expect("the first request");
            let early = tokio::time::timeout(Duration::from_millis(200), follower.request()).await;
            follower.answer(appended(1)).await;
            follower.request().await.expect("the second request, after the answer");
            follower.answer(appended(2)).await;
            early.is_err()
        });
        let mut kept = None;
        let answers = all(session(stream, requests([append(1, 1), append(2, 2)]), TTL, 1, &mut kept)).await;
        assert!(follower.await.expect("follower"), "the second request waited for the first answer");
        assert_eq!(answers, [Ok(Ok(Some(log_id(1)))), Ok(Ok(Some(log_id(2))))]);
    }

    #[tokio::test]
    async fn an_answer_is_held_while_a_request_it_would_be_taken_to_answer_is_unanswered() {
        let (stream, mut follower) = stream_pair();
        let (answer_the_second, second) = tokio::sync::oneshot::channel::<()>();
        let follower = tokio::spawn(async move {
            follower.request().await.expect("entries 1..2");
            follower.request().await.expect("the commit index, no entries");
            follower.answer(appended(2)).await;
            let _ = second.await;
            follower.answer(appended(2)).await;
        });
        let mut commit = append(3, 2);
        commit.leader_commit = Some(log_id(2));
        let mut kept = None;
        let mut answers = session(stream, requests([append(1, 2), commit]), TTL, DEPTH, &mut kept);
        let early = tokio::time::timeout(Duration::from_millis(200), answers.next()).await;
        assert!(early.is_err(), "the first answer waits for the second: {early:?}");
        answer_the_second.send(()).expect("follower waiting");
        assert_eq!(all(answers).await, [Ok(Ok(Some(log_id(2)))), Ok(Ok(Some(log_id(2))))]);
        follower.await.expect("follower");
    }

    #[tokio::test]
    async fn a_held_answer_is_dropped_when_the_request_it_waits_for_is_refused() {
        let (stream, mut follower) = stream_pair();
        let newer = openraft::Vote::new_committed(2, 2);
        tokio::spawn(async move {
            follower.request().await.expect("entries 1..2");
            follower.request().await.expect("the commit index, no entries");
            follower.answer(appended(2)).await;
            follower.answer(StreamAnswer::Appended(Err(StreamAppendError::HigherVote(newer)))).await;
        });
        let mut commit = append(3, 2);
        commit.leader_commit = Some(log_id(2));
        let mut kept = None;
        let answers = all(session(stream, requests([append(1, 2), commit]), TTL, DEPTH, &mut kept)).await;
        // Handing over the first answer would credit the follower with the refused request.
        assert_eq!(answers, [Ok(Err(StreamAppendError::HigherVote(newer)))]);
    }

    #[tokio::test]
    async fn a_stream_whose_requests_were_all_answered_carries_the_next_session() {
        let (stream, mut follower) = stream_pair();
        let follower = tokio::spawn(async move {
            follower.request().await.expect("a request");
            follower.answer(appended(1)).await;
            let second = follower.request().await.expect("a request on the same stream");
            follower.answer(appended(2)).await;
            second.prev_log_id
        });
        let mut kept = None;
        assert_eq!(all(session(stream, requests([append(1, 1)]), TTL, DEPTH, &mut kept)).await.len(), 1);
        let stream = kept.take().expect("the stream is kept for the next session");
        let answers = all(session(stream, requests([append(2, 2)]), TTL, DEPTH, &mut kept)).await;
        assert_eq!(answers, [Ok(Ok(Some(log_id(2))))]);
        assert_eq!(follower.await.expect("follower"), Some(log_id(1)));
    }

    #[tokio::test]
    async fn an_error_answer_is_the_last_and_closes_the_stream() {
        let (stream, mut follower) = stream_pair();
        tokio::spawn(async move {
            follower.request().await.expect("a request");
            follower.answer(StreamAnswer::Appended(Err(StreamAppendError::Conflict(log_id(4))))).await;
            follower.request().await
        });
        let mut kept = None;
        let answers =
            all(session(stream, requests([append(5, 5), append(6, 6)]), TTL, DEPTH, &mut kept)).await;
        assert_eq!(answers, [Ok(Err(StreamAppendError::Conflict(log_id(4))))], "nothing after an error");
        assert!(kept.is_none(), "a stream with requests unanswered is not reused");
    }

    #[tokio::test]
    async fn a_follower_that_stops_answering_fails_the_session() {
        let (stream, mut follower) = stream_pair();
        let follower = tokio::spawn(async move {
            follower.request().await.expect("a request");
            follower // kept open, and silent
        });
        let mut kept = None;
        let ttl = Duration::from_millis(50);
        let answers = all(session(stream, requests([append(1, 1)]), ttl, DEPTH, &mut kept)).await;
        assert_eq!(answers, [Err(StreamError::Stalled(ttl).to_string())]);
        drop(follower);
    }

    #[tokio::test]
    async fn a_follower_that_hangs_up_with_requests_unanswered_fails_the_session() {
        let (stream, mut follower) = stream_pair();
        tokio::spawn(async move { follower.request().await });
        let mut kept = None;
        let answers = all(session(stream, requests([append(1, 1)]), TTL, DEPTH, &mut kept)).await;
        assert_eq!(answers, [Err(StreamError::Closed.to_string())]);
    }

    #[tokio::test]
    async fn a_follower_whose_raft_stopped_says_so() {
        let (stream, mut follower) = stream_pair();
        tokio::spawn(async move {
            follower.request().await.expect("a request");
            follower.answer(StreamAnswer::Stopped("shutting down".into())).await;
        });
        let mut kept = None;
        let answers = all(session(stream, requests([append(1, 1)]), TTL, DEPTH, &mut kept)).await;
        assert_eq!(answers, [Err(StreamError::Stopped("shutting down".into()).to_string())]);
    }

    #[tokio::test]
    async fn entries_that_do_not_fit_one_frame_go_in_part_and_end_the_session() {
        let (stream, mut follower) = stream_pair();
        let follower = tokio::spawn(async move {
            let sent = follower.request().await.expect("a request");
            let last = sent.entries.last().expect("entries").log_id.index;
            follower.answer(appended(last)).await;
            last
        });
        // 80 entries of 1 MiB: more than one frame holds.
        let mut big = append(1, 0);
        big.entries = (1..=80).map(|index| put(index, 1 << 20)).collect();
        let mut kept = None;
        let answers = all(session(stream, requests([big, append(81, 81)]), TTL, DEPTH, &mut kept)).await;
        let last = follower.await.expect("follower");
        assert!((20..80).contains(&last), "sent the first {last} entries");
        assert_eq!(answers, [Ok(Ok(Some(log_id(last))))], "the rest waits for the next session");
        assert!(kept.is_some());
    }
}
