//! The key-value engine as a whole — apply over RocksDB, history, reads at past revisions, the
//! changes a watch replays, compaction — checked against a plain in-memory model on random
//! sequences of puts, deletes, transactions and compactions, applied in random groupings
//! (several writes per entry, several entries per apply, as group commit makes them).
//!
//! The model keeps every version of every key in a list and answers everything by scanning it:
//! too slow for a store, too simple to be wrong in the same way as the engine.

use std::collections::BTreeMap;
use std::sync::Arc;

use openraft::EntryPayload;
use proptest::prelude::*;

use super::changes::ChangesBudget;
use super::state_machine::tests::answers_of;
use super::{codec, compactor, KvReader, StoreError};
use crate::engine::WriteError;
use crate::engine::{
    Compare, CompareResult, CompareTarget, KeyRange, KeyRecord, Op, OpResponse, Precondition, RevisionError,
    Txn, Write, WriteResult,
};
use crate::types::{Applied, Command, Entry, LogId};

const KEYS: &[&str] = &["a", "b", "d/x", "d/y", "d/z"];

/// Every version of every key: (revision, key, state after; None: deleted).
#[derive(Debug, Default, Clone)]
struct Model {
    versions: Vec<(u64, Vec<u8>, Option<KeyRecord>)>,
    revision: u64,
    compacted: u64,
    /// Granted leases and their TTLs.
    leases: BTreeMap<i64, i64>,
}

impl Model {
    fn state_at(&self, at: u64) -> BTreeMap<Vec<u8>, KeyRecord> {
        let mut state = BTreeMap::new();
        for (revision, key, record) in &self.versions {
            if *revision <= at {
                match record {
                    Some(record) => state.insert(key.clone(), record.clone()),
                    None => state.remove(key),
                };
            }
        }
        state
    }

    fn current(&self) -> BTreeMap<Vec<u8>, KeyRecord> {
        self.state_at(self.revision)
    }

    fn keys_in(
        state: &BTreeMap<Vec<u8>, KeyRecord>,
        key: &[u8],
        range_end: &[u8],
    ) -> Vec<(Vec<u8>, KeyRecord)> {
        let range = KeyRange { key: key.to_vec(), range_end: range_end.to_vec() };
        state.iter().filter(|(k, _)| range.contains(k)).map(|(k, r)| (k.clone(), r.clone())).collect()
    }

    fn holds(state: &BTreeMap<Vec<u8>, KeyRecord>, compare: &Compare) -> bool {
        let keys = Self::keys_in(state, &compare.key, &compare.range_end);
        if keys.is_empty() {
            return match &compare.target {
                CompareTarget::Value(_) => false,
                target => ordered(compare.result, field(target, None), operand(target)),
            };
        }
        keys.iter().all(|(_, record)| match &compare.target {
            CompareTarget::Value(v) => ordered(compare.result, record.value.clone(), v.clone()),
            target => ordered(compare.result, field(target, Some(record)), operand(target)),
        })
    }

    fn apply(&mut self, write: &Write) -> Result<WriteResult, WriteError> {
        let mut state = self.current();
        let next = self.revision + 1;
        let mut changed = Vec::new();
        let answer = |revision, succeeded, prev| WriteResult { revision, succeeded, prev, responses: vec![] };
        let result = match write {
            Write::Put { key, value, precondition } => {
                let current = state.get(key).cloned();
                if !precondition_holds(*precondition, current.as_ref()) {
                    answer(self.revision, false, current)
                } else {
                    changed.push((key.clone(), Some(put_record(current.as_ref(), value, next))));
                    answer(next, true, current)
                }
            }
            Write::Delete { key, precondition } => {
                let current = state.get(key).cloned();
                if !precondition_holds(*precondition, current.as_ref()) {
                    answer(self.revision, false, current)
                } else if current.is_none() {
                    answer(self.revision, true, None)
                } else {
                    changed.push((key.clone(), None));
                    answer(next, true, current)
                }
            }
            Write::LeaseGrant { id, ttl, .. } => {
                if self.leases.contains_key(id) {
                    return Err(WriteError::LeaseExists(*id));
                }
                self.leases.insert(*id, *ttl);
                answer(self.revision, true, None)
            }
            Write::LeaseExpire { .. } | Write::As { .. } => unreachable!("the generator makes neither"),
            Write::LeaseRevoke { id } => {
                if self.leases.remove(id).is_none() {
                    return Err(WriteError::LeaseNotFound(*id));
                }
                for (key, _) in state.iter().filter(|(_, r)| r.lease == *id) {
                    changed.push((key.clone(), None));
                }
                answer(if changed.is_empty() { self.revision } else { next }, true, None)
            }
            Write::Txn(txn) => {
                let succeeded = txn.compares.iter().all(|c| Self::holds(&state, c));
                let ops = if succeeded { &txn.success } else { &txn.failure };
                let missing = ops.iter().find_map(|op| match op {
                    Op::Put { lease, .. } if *lease != 0 && !self.leases.contains_key(lease) => Some(*lease),
                    _ => None,
                });
                if let Some(id) = missing {
                    return Err(WriteError::LeaseNotFound(id));
                }
                let mut responses = Vec::new();
                for op in ops {
                    responses.push(match op {
                        Op::Range { key, range_end, .. } => {
                            let kvs = Self::keys_in(&state, key, range_end);
                            OpResponse::Range { count: kvs.len() as u64, kvs, more: false }
                        }
                        Op::Put { key, value, prev_kv, lease } => {
                            let current = state.get(key).cloned();
                            let record =
                                KeyRecord { lease: *lease, ..put_record(current.as_ref(), value, next) };
                            state.insert(key.clone(), record.clone());
                            changed.push((key.clone(), Some(record)));
                            OpResponse::Put { prev: current.filter(|_| *prev_kv).map(|r| (key.clone(), r)) }
                        }
                        Op::DeleteRange { key, range_end, prev_kv } => {
                            let doomed = Self::keys_in(&state, key, range_end);
                            for (key, _) in &doomed {
                                state.remove(key);
                                changed.push((key.clone(), None));
                            }
                            let deleted = doomed.len() as u64;
                            OpResponse::DeleteRange { deleted, prev: if *prev_kv { doomed } else { vec![] } }
                        }
                        Op::Txn(_) => unreachable!("the generator nests no transactions"),
                    });
                }
                let revision = if changed.is_empty() { self.revision } else { next };
                WriteResult { revision, succeeded, prev: None, responses }
            }
        };
        for (key, record) in changed {
            self.versions.push((next, key, record));
        }
        self.revision = result.revision;
        Ok(result)
    }
}

fn put_record(current: Option<&KeyRecord>, value: &[u8], revision: u64) -> KeyRecord {
    KeyRecord {
        create_revision: current.map_or(revision, |c| c.create_revision),
        mod_revision: revision,
        version: current.map_or(1, |c| c.version + 1),
        lease: 0,
        value: value.to_vec(),
    }
}

fn precondition_holds(precondition: Option<Precondition>, current: Option<&KeyRecord>) -> bool {
    match precondition {
        None => true,
        Some(Precondition::Absent) => current.is_none(),
        Some(Precondition::ModRevision(rev)) => current.map_or(0, |c| c.mod_revision) == rev,
    }
}

fn field(target: &CompareTarget, record: Option<&KeyRecord>) -> i128 {
    let r = |f: fn(&KeyRecord) -> i128| record.map_or(0, f);
    match target {
        CompareTarget::Version(_) => r(|r| r.version as i128),
        CompareTarget::CreateRevision(_) => r(|r| r.create_revision as i128),
        CompareTarget::ModRevision(_) => r(|r| r.mod_revision as i128),
        CompareTarget::Lease(_) => r(|r| r.lease as i128),
        CompareTarget::Value(_) => 0,
    }
}

fn operand(target: &CompareTarget) -> i128 {
    match target {
        CompareTarget::Version(v) | CompareTarget::CreateRevision(v) | CompareTarget::ModRevision(v) => {
            *v as i128
        }
        CompareTarget::Lease(v) => *v as i128,
        CompareTarget::Value(_) => 0,
    }
}

fn ordered<T: Ord>(result: CompareResult, field: T, operand: T) -> bool {
    match result {
        CompareResult::Equal => field == operand,
        CompareResult::NotEqual => field != operand,
        CompareResult::Less => field < operand,
        CompareResult::Greater => field > operand,
    }
}

/// A step of a generated run.
#[derive(Debug, Clone)]
enum Step {
    /// Writes, grouped into entries, applied in one call.
    Apply(Vec<Vec<Write>>),
    /// Compact to `back` revisions behind the current one.
    Compact(u64),
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(KEYS).prop_map(|k| k.as_bytes().to_vec())
}

/// A key alone, the `d/` prefix, or every key from one on.
fn span() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    prop_oneof![
        key().prop_map(|k| (k, vec![])),
        Just((b"d/".to_vec(), b"d0".to_vec())),
        key().prop_map(|k| (k, vec![0])),
    ]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(&["1", "2", "3", ""][..]).prop_map(|v| v.as_bytes().to_vec())
}

fn compare() -> impl Strategy<Value = Compare> {
    let result = prop::sample::select(
        &[CompareResult::Equal, CompareResult::NotEqual, CompareResult::Less, CompareResult::Greater][..],
    );
    let target = prop_oneof![
        (0u64..4).prop_map(CompareTarget::Version),
        (0u64..12).prop_map(CompareTarget::ModRevision),
        (0u64..12).prop_map(CompareTarget::CreateRevision),
        value().prop_map(CompareTarget::Value),
    ];
    (span(), result, target).prop_map(|((key, range_end), result, target)| Compare {
        key,
        range_end,
        result,
        target,
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        span().prop_map(|(key, range_end)| Op::Range {
            key,
            range_end,
            limit: 0,
            keys_only: false,
            count_only: false
        }),
        (key(), value(), any::<bool>()).prop_map(|(key, value, prev_kv)| Op::Put {
            key,
            value,
            lease: 0,
            prev_kv
        }),
        (span(), any::<bool>()).prop_map(|((key, range_end), prev_kv)| Op::DeleteRange {
            key,
            range_end,
            prev_kv
        }),
    ]
}

fn write() -> impl Strategy<Value = Write> {
    let precondition = prop_oneof![
        Just(None),
        Just(Some(Precondition::Absent)),
        (0u64..12).prop_map(|r| Some(Precondition::ModRevision(r))),
    ];
    prop_oneof![
        3 => (key(), value(), precondition.clone()).prop_map(|(key, value, precondition)| Write::Put { key, value, precondition }),
        1 => (key(), precondition).prop_map(|(key, precondition)| Write::Delete { key, precondition }),
        1 => (1i64..3).prop_map(|id| Write::LeaseGrant { id, ttl: 10, grant: id as u64 }),
        1 => (1i64..3).prop_map(|id| Write::LeaseRevoke { id }),
        3 => (prop::collection::vec(compare(), 0..3), prop::collection::vec(op(), 0..4), prop::collection::vec(op(), 0..3))
            .prop_map(|(compares, success, failure)| Write::Txn(Txn { compares, success, failure }))
            // The service refuses what the check refuses; only checked transactions reach apply.
            .prop_filter("etcd refuses it", |w| matches!(w, Write::Txn(t) if t.check().is_ok())),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => prop::collection::vec(prop::collection::vec(write(), 1..4), 1..4).prop_map(Step::Apply),
        1 => (0u64..6).prop_map(Step::Compact),
    ]
}

fn log_id(index: u64) -> LogId {
    LogId::new(openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: 1 }, index)
}

/// Runs `steps` on a real store and on the model, comparing every answer and, after each step,
/// every read the store serves at every revision it keeps.
fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let db =
        Arc::new(super::open_db(&dir.path().join("db")).map_err(|e| TestCaseError::fail(e.to_string()))?);
    let reader = KvReader::new(db.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut model = Model { revision: codec::EMPTY_STORE_REVISION, ..Model::default() };
    let mut index = 0;
    for step in steps {
        match step {
            Step::Apply(entries) => {
                let mut expected = Vec::new();
                let mut batch = Vec::new();
                for writes in entries {
                    index += 1;
                    expected.push(Applied::Writes(writes.iter().map(|w| model.apply(w)).collect()));
                    batch.push(Entry {
                        log_id: log_id(index),
                        payload: EntryPayload::Normal(Command::Writes(writes)),
                    });
                }
                let answers = answers_of(&db, batch).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(answers, expected);
            }
            Step::Compact(back) => {
                index += 1;
                let to = model.revision.saturating_sub(back);
                let outcome = crate::engine::compaction(to, model.revision, model.compacted);
                if let Ok(to) = outcome {
                    model.compacted = to;
                }
                let entry = Entry {
                    log_id: log_id(index),
                    payload: EntryPayload::Normal(Command::Compact { revision: to }),
                };
                let answers = answers_of(&db, vec![entry]).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(answers, vec![Applied::Compaction(outcome)]);
                while compactor::step(&db).map_err(|e| TestCaseError::fail(e.to_string()))? > 0 {}
            }
        }
        runtime.block_on(check_reads(&reader, &model))?;
    }
    Ok(())
}

/// A change as a watch replays it: revision, key, state after, state before.
type Replayed = (u64, Vec<u8>, Option<KeyRecord>, Option<KeyRecord>);

async fn check_reads(reader: &KvReader, model: &Model) -> Result<(), TestCaseError> {
    let fail = |e: StoreError| TestCaseError::fail(e.to_string());
    for at in model.compacted.max(1)..=model.revision {
        let page = reader.range(Vec::new(), None, 100, usize::MAX, Some(at)).await.map_err(fail)?;
        let expected: Vec<(Vec<u8>, KeyRecord)> = model.state_at(at).into_iter().collect();
        prop_assert_eq!(&page.entries, &expected, "the keys at revision {}", at);
        for key in KEYS {
            let read = reader.get(key.as_bytes().to_vec(), Some(at)).await.map_err(fail)?;
            prop_assert_eq!(
                read.record,
                model.state_at(at).get(key.as_bytes()).cloned(),
                "{} at {}",
                key,
                at
            );
        }
    }
    let current = reader.range(Vec::new(), None, 100, usize::MAX, None).await.map_err(fail)?;
    prop_assert_eq!(current.entries, model.current().into_iter().collect::<Vec<_>>());
    prop_assert_eq!(current.revision, model.revision);
    if model.compacted > 1 {
        let below = reader.get(b"a".to_vec(), Some(model.compacted - 1)).await;
        let gone = matches!(below, Err(StoreError::Revision(RevisionError::Compacted { .. })));
        prop_assert!(gone, "below the compaction revision: {:?}", below);
    }
    // Which keys each lease holds, by its index, is what the keys' records say.
    for id in 1..3i64 {
        let attached = reader.lease_keys(id).await.map_err(fail)?;
        let expected: Vec<Vec<u8>> =
            model.current().into_iter().filter(|(_, r)| r.lease == id).map(|(k, _)| k).collect();
        prop_assert_eq!(attached, expected, "the keys of lease {}", id);
    }
    // What a watch of every key from the compaction revision on replays.
    let from = model.compacted.max(1);
    let all = ChangesBudget { changes: usize::MAX, bytes: usize::MAX, scanned: usize::MAX };
    let page = reader.changes(from, KeyRange::prefix(b""), true, all).await.map_err(fail)?;
    let replayed: Vec<Replayed> =
        page.changes.into_iter().map(|c| (c.revision, c.key, c.record, c.prev)).collect();
    let expected: Vec<Replayed> = model
        .versions
        .iter()
        .filter(|(revision, _, _)| *revision >= from)
        .map(|(revision, key, record)| {
            (*revision, key.clone(), record.clone(), model.state_at(revision - 1).get(key).cloned())
        })
        .collect();
    prop_assert_eq!(replayed, expected, "the changes from revision {}", from);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_engine_answers_and_remembers_as_the_model_does(steps in prop::collection::vec(step(), 1..24)) {
        run(steps)?;
    }
}
