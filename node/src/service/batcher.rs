//! Group commit at the leader: client writes that arrive while earlier ones are being committed
//! wait, and are then proposed together as one raft entry. One entry costs one log append and
//! one fsync on each member however many writes it carries, so under load the cost of a commit
//! is shared; a lone write is proposed at once. Each write of an entry gets its own revision.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::proposal::{leads, proposed_write_error};
use crate::engine::{Write, WriteResult};
use crate::network::wire::ForwardError;
use crate::raft::Raft;
use crate::types::{Applied, Command, NodeId};

/// Proposals in flight at once. While they are, new writes queue up and form the next batch.
const IN_FLIGHT: usize = 2;
/// At most this many writes in one entry...
const MAX_WRITES: usize = 1024;
/// ...and about this many bytes (a single larger write still goes alone).
const MAX_BYTES: usize = 1024 * 1024;
/// Writes waiting for a proposal; beyond this, callers wait to queue (backpressure).
const QUEUE: usize = 8192;

type Reply = oneshot::Sender<Result<WriteResult, ForwardError>>;

struct Pending {
    write: Write,
    reply: Reply,
}

/// A handle to the member's batcher; clones share it.
#[derive(Clone)]
pub struct WriteBatcher {
    queue: mpsc::Sender<Pending>,
}

impl WriteBatcher {
    /// Starts the batcher of member `id`; it stops when the last handle is dropped.
    pub fn start(id: NodeId, raft: Raft) -> Self {
        let (queue, pending) = mpsc::channel(QUEUE);
        tokio::spawn(run(id, raft, pending));
        Self { queue }
    }

    /// Commits `write` on this member, which must lead, and answers what applying it did.
    ///
    /// `NotLeader` means it was never proposed (safe to send elsewhere); once proposed, a
    /// failure is `OutcomeUnknown`.
    pub async fn write(&self, write: Write) -> Result<WriteResult, ForwardError> {
        let (reply, answer) = oneshot::channel();
        if self.queue.send(Pending { write, reply }).await.is_err() {
            return Err(ForwardError::Unavailable("this member is shutting down".into()));
        }
        answer.await.unwrap_or_else(|_| {
            Err(ForwardError::OutcomeUnknown("this member stopped with the write in flight".into()))
        })
    }
}

async fn run(id: NodeId, raft: Raft, mut pending: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        // Wait for a free slot before taking writes, so they gather while all slots are busy.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let Some(first) = pending.recv().await else { return };
        let batch = gather(first, &mut pending, |p| &p.write);
        tokio::spawn(propose(id, raft.clone(), batch, slot));
    }
}

/// Takes `first` and the writes waiting in `queue` behind it, up to [`MAX_WRITES`] and about
/// [`MAX_BYTES`].
pub(crate) fn gather<T>(first: T, queue: &mut mpsc::Receiver<T>, write: impl Fn(&T) -> &Write) -> Vec<T> {
    let mut bytes = write(&first).size();
    let mut batch = vec![first];
    while batch.len() < MAX_WRITES && bytes < MAX_BYTES {
        let Ok(next) = queue.try_recv() else { break };
        bytes += write(&next).size();
        batch.push(next);
    }
    batch
}

/// Proposes `batch` as one entry and answers each of its writers.
async fn propose(id: NodeId, raft: Raft, batch: Vec<Pending>, _slot: OwnedSemaphorePermit) {
    if !leads(id, &raft) {
        for p in batch {
            let _ = p.reply.send(Err(ForwardError::NotLeader { leader: None }));
        }
        return;
    }
    let (writes, replies): (Vec<Write>, Vec<Reply>) = batch.into_iter().map(|p| (p.write, p.reply)).unzip();
    let command = Command::Writes(writes);
    let writes = replies.len();
    crate::metrics::api().proposed(writes);
    match raft.client_write(command).await {
        Ok(response) => match response.data {
            Applied::Writes(answers) if answers.len() == writes => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(answer.map_err(ForwardError::Write));
                }
            }
            // The state machine answers every write of an entry; anything else is a bug, and
            // the writes did happen in some form: say so rather than guess.
            other => {
                tracing::error!(writes, answers = %other, "an entry's answers do not match its writes");
                for reply in replies {
                    let _ =
                        reply.send(Err(ForwardError::OutcomeUnknown("the entry's answers were lost".into())));
                }
            }
        },
        Err(e) => {
            let error = proposed_write_error(e);
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}
