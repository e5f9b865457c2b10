//! The clients: each picks a random key of a small set and a random member, and reads,
//! writes, or reads then compare-and-swaps, recording every operation it invokes.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use metastore_client::{Client, ClientError, Consistency};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::history::{History, Op, Operation, Outcome};
use crate::member::{Failure, Member};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Reads and blind writes.
    Register,
    /// Reads, writes and compare-and-swaps.
    Mixed,
}

/// Where operations are recorded, shared by the clients.
#[derive(Clone)]
pub struct Recorder {
    started: Instant,
    history: Arc<Mutex<History>>,
}

impl Recorder {
    pub fn new() -> Self {
        Self { started: Instant::now(), history: Arc::default() }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn record(&self, operation: Operation) {
        if let Ok(mut history) = self.history.lock() {
            history.operations.push(operation);
        }
    }

    /// Records a linearizable read made outside the clients (the final reads after healing).
    pub async fn read_final(&self, member: &Client, key: &str) -> Result<Option<String>, ClientError> {
        let invoked = self.now();
        let value = member.get(key, Consistency::Linearizable).await?;
        let value = value.map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
        let completed = Some(self.now());
        self.record(Operation {
            client: usize::MAX,
            key: key.to_string(),
            op: Op::Read(value.clone()),
            invoked,
            completed,
            outcome: Outcome::Ok,
        });
        Ok(value)
    }

    pub fn history(&self) -> History {
        self.history.lock().map(|h| h.clone()).unwrap_or_default()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

/// A write's outcome from the client's answer: only an answer that says the write was refused
/// (its precondition did not hold) or a request never sent is a definite failure; anything
/// else may have taken effect.
fn write_outcome(result: &Result<(), Failure>) -> Outcome {
    match result {
        Ok(()) => Outcome::Ok,
        Err(Failure::Refused) => Outcome::Refused,
        Err(Failure::NeverSent) => Outcome::Failed,
        Err(_) => Outcome::Unknown,
    }
}

pub struct ClientTask {
    pub id: usize,
    pub keys: usize,
    pub workload: Workload,
    /// The members, all in the protocol this client speaks.
    pub members: Vec<Member>,
    pub recorder: Recorder,
    pub seed: u64,
}

impl ClientTask {
    /// Runs until `stop` says so.
    pub async fn run(self, stop: tokio::sync::watch::Receiver<bool>) {
        let mut rng = StdRng::seed_from_u64(self.seed.wrapping_add(self.id as u64 * 7_919));
        let mut sequence = 0u64;
        while !*stop.borrow() {
            let key = format!("r/{}", rng.random_range(0..self.keys));
            let member = &self.members[rng.random_range(0..self.members.len())];
            sequence += 1;
            let value = format!("c{}-{sequence}", self.id);
            let dice = rng.random_range(0..100);
            if dice < 50 {
                self.read(member, &key).await;
            } else if dice < 80 || self.workload == Workload::Register {
                self.write(member, &key, value).await;
            } else {
                // Compare-and-swap against what a read just saw: the revision it read names
                // the value it read, since every write writes a new value.
                if let Some(seen) = self.read(member, &key).await {
                    self.cas(member, &key, seen, value).await;
                }
            }
        }
    }

    /// A linearizable read; what it saw (value and revision) if it completed.
    async fn read(&self, member: &Member, key: &str) -> Option<Option<(String, u64)>> {
        let invoked = self.recorder.now();
        let result = member.get(key).await;
        let completed = self.recorder.now();
        let seen = match &result {
            Ok(Some(kv)) => Some(Some((String::from_utf8_lossy(&kv.value).into_owned(), kv.mod_revision))),
            Ok(None) => Some(None),
            Err(_) => None,
        };
        let (outcome, completed) =
            if seen.is_some() { (Outcome::Ok, Some(completed)) } else { (Outcome::Unknown, None) };
        let value = seen.clone().flatten().map(|(v, _)| v);
        self.recorder.record(Operation {
            client: self.id,
            key: key.to_string(),
            op: Op::Read(value),
            invoked,
            completed,
            outcome,
        });
        seen
    }

    async fn write(&self, member: &Member, key: &str, value: String) {
        let invoked = self.recorder.now();
        let result = member.put(key, value.clone().into_bytes(), 0).await;
        self.finish(key, Op::Write(value), invoked, write_outcome(&result));
    }

    async fn cas(&self, member: &Member, key: &str, seen: Option<(String, u64)>, value: String) {
        let (expected, revision) = match seen {
            Some((v, revision)) => (Some(v), Some(revision)),
            None => (None, None),
        };
        let invoked = self.recorder.now();
        let result = member.cas(key, revision, value.clone().into_bytes()).await;
        self.finish(key, Op::Cas { expected, new: value }, invoked, write_outcome(&result));
    }

    fn finish(&self, key: &str, op: Op, invoked: u64, outcome: Outcome) {
        let completed = (outcome != Outcome::Unknown).then(|| self.recorder.now());
        self.recorder.record(Operation {
            client: self.id,
            key: key.to_string(),
            op,
            invoked,
            completed,
            outcome,
        });
    }
}
