//! Transactions, etcd's: compares on the keys' current state choose one of two lists of
//! operations — ranges, puts, deletes of key ranges, nested transactions — which apply
//! atomically at one revision. Every key a transaction changes gets that revision as its mod
//! revision; the changes are told apart, in order, by a sub-revision.
//!
//! Keys and key ranges are named as etcd names them: a `key`, and a `range_end` that is empty
//! for `key` alone, `[0]` for every key from `key` on, and otherwise the end of `[key, range_end)`.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::lease::{LeaseRecord, WriteError};
use super::span::Span;
use super::KeyRecord;

/// Most compares, and most operations in each list, one transaction may hold (etcd's default).
pub const MAX_TXN_OPS: usize = 128;
/// How deep transactions may nest: deep enough for any real use, shallow enough that checking
/// and applying one never exhausts a stack.
pub const MAX_TXN_DEPTH: usize = 8;
/// Most bytes of keys and values the ranges of one transaction answer with; a range that would
/// pass it answers what fits, with `more` set.
const MAX_RESPONSE_BYTES: usize = metastore_client::MAX_RANGE_BYTES;

/// A transaction: if every compare holds, `success` applies, otherwise `failure`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

/// A condition on a key, or on every key of a range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
    pub result: CompareResult,
    pub target: CompareTarget,
}

/// How the key's field must relate to the compare's operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// The field compared, with the operand it is compared to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Version(u64),
    CreateRevision(u64),
    ModRevision(u64),
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    Lease(i64),
}

/// One operation of a transaction's chosen list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Reads keys as the transaction's earlier operations left them. `limit` 0: no limit.
    Range {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        range_end: Vec<u8>,
        limit: u64,
        keys_only: bool,
        count_only: bool,
    },
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// The lease to attach the key to; 0 for none.
        lease: i64,
        prev_kv: bool,
    },
    DeleteRange {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        range_end: Vec<u8>,
        prev_kv: bool,
    },
    Txn(Txn),
}

/// What an operation did, in the order of the list that applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResponse {
    Range {
        kvs: Vec<(Vec<u8>, KeyRecord)>,
        /// Every key in the range, however many `kvs` holds.
        count: u64,
        /// Whether keys were left out of `kvs` (the limit, or the response size).
        more: bool,
    },
    Put {
        /// The key before the put, when asked for and it existed.
        prev: Option<(Vec<u8>, KeyRecord)>,
    },
    DeleteRange {
        deleted: u64,
        /// The deleted keys as they were, when asked for.
        prev: Vec<(Vec<u8>, KeyRecord)>,
    },
    Txn(TxnResult),
}

/// What a transaction did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResult {
    /// Whether every compare held, so `success` applied.
    pub succeeded: bool,
    pub responses: Vec<OpResponse>,
}

/// Why a transaction is refused before it is proposed. The messages are etcd's, without its
/// `etcdserver: ` prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxnError {
    #[error("too many operations in txn request")]
    TooManyOps,
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    #[error("key is not provided")]
    EmptyKey,
    #[error("transactions nest at most {MAX_TXN_DEPTH} deep")]
    TooDeep,
}

/// The keys as the transaction sees them: the store with every change applied before it.
pub trait KeySpace {
    type Error;

    fn get(&mut self, key: &[u8]) -> Result<Option<KeyRecord>, Self::Error>;

    /// Visits the keys from `start` (and before `end`, when given) in order, until `visit`
    /// answers false.
    fn scan(
        &mut self,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &KeyRecord) -> bool,
    ) -> Result<(), Self::Error>;

    /// Makes `state` (None: deleted) the key's, as change `sub` of `revision`.
    fn change(&mut self, key: Vec<u8>, state: Option<KeyRecord>, revision: u64, sub: u32);

    fn lease(&mut self, id: i64) -> Result<Option<LeaseRecord>, Self::Error>;

    /// Grants lease `id` (`Some`) or forgets it (`None`).
    fn set_lease(&mut self, id: i64, lease: Option<LeaseRecord>);

    /// Records that `key` is attached to lease `id`, or no longer is.
    fn attach(&mut self, id: i64, key: &[u8], attached: bool);

    /// The keys attached to lease `id`, in order.
    fn attached(&mut self, id: i64) -> Result<Vec<Vec<u8>>, Self::Error>;
}

/// Changes `key` from `before` to `after` as change `sub` of `revision`, keeping the record of
/// which lease it is attached to.
pub(crate) fn set_key<S: KeySpace>(
    space: &mut S,
    key: Vec<u8>,
    before: Option<&KeyRecord>,
    after: Option<KeyRecord>,
    revision: u64,
    sub: u32,
) {
    let (old, new) = (before.map_or(0, |r| r.lease), after.as_ref().map_or(0, |r| r.lease));
    if old != new {
        if old != 0 {
            space.attach(old, &key, false);
        }
        if new != 0 {
            space.attach(new, &key, true);
        }
    }
    space.change(key, after, revision, sub);
}

impl Txn {
    /// Refuses, as etcd does, a transaction with too many operations, an empty key, or two
    /// writes to one key on one path through it: a key put twice, or put and deleted.
    pub fn check(&self) -> Result<(), TxnError> {
        self.check_at(1, MAX_TXN_OPS)?;
        writes(&self.success)?;
        writes(&self.failure)?;
        Ok(())
    }

    /// `ops`: how many operations one list may hold here. As in etcd, a nested transaction may
    /// hold only what its parent's longest list left of the parent's allowance, so a whole
    /// transaction stays small however it nests.
    fn check_at(&self, depth: usize, ops: usize) -> Result<(), TxnError> {
        if depth > MAX_TXN_DEPTH {
            return Err(TxnError::TooDeep);
        }
        let longest = self.compares.len().max(self.success.len()).max(self.failure.len());
        if longest > ops {
            return Err(TxnError::TooManyOps);
        }
        if self.compares.iter().any(|c| c.key.is_empty()) {
            return Err(TxnError::EmptyKey);
        }
        for op in self.success.iter().chain(&self.failure) {
            match op {
                Op::Range { key, .. } | Op::Put { key, .. } | Op::DeleteRange { key, .. }
                    if key.is_empty() =>
                {
                    return Err(TxnError::EmptyKey)
                }
                Op::Txn(nested) => nested.check_at(depth + 1, ops - longest)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// About how many bytes the transaction takes in a log entry.
    pub fn size(&self) -> usize {
        let operand = |c: &Compare| match &c.target {
            CompareTarget::Value(value) => value.len(),
            _ => 8,
        };
        let compares: usize =
            self.compares.iter().map(|c| c.key.len() + c.range_end.len() + operand(c)).sum();
        let ops = |ops: &[Op]| -> usize {
            ops.iter()
                .map(|op| match op {
                    Op::Range { key, range_end, .. } | Op::DeleteRange { key, range_end, .. } => {
                        key.len() + range_end.len()
                    }
                    Op::Put { key, value, .. } => key.len() + value.len(),
                    Op::Txn(nested) => nested.size(),
                })
                .sum()
        };
        compares + ops(&self.success) + ops(&self.failure)
    }
}

impl Txn {
    /// Whether applying it reads ranges of keys (a range, a range delete, a compare on a
    /// range): work that grows with the store, not with the transaction.
    pub fn scans(&self) -> bool {
        self.compares.iter().any(|c| !c.range_end.is_empty())
            || self.success.iter().chain(&self.failure).any(|op| match op {
                Op::Range { range_end, .. } | Op::DeleteRange { range_end, .. } => !range_end.is_empty(),
                Op::Txn(nested) => nested.scans(),
                Op::Put { .. } => false,
            })
    }
}

impl fmt::Display for Txn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "txn of {} compares, {} success and {} failure operations",
            self.compares.len(),
            self.success.len(),
            self.failure.len()
        )
    }
}

/// The keys a list of operations may put and the ranges it may delete, on any path through
/// it; an error when one path writes a key twice. etcd's rule, in its order: a nested
/// transaction's two lists exclude each other, so they may put the same key. One difference:
/// a delete of every key from K on (`range_end` `[0]`) covers those keys here, where etcd's
/// check takes it for an empty interval and lets a put inside it through.
#[derive(Default)]
struct Writes<'a> {
    puts: Vec<&'a [u8]>,
    deletes: Vec<Span<'a>>,
}

impl<'a> Writes<'a> {
    fn deleted(&self, key: &[u8]) -> bool {
        self.deletes.iter().any(|span| span.contains(key))
    }

    fn put(&mut self, key: &'a [u8], exclusive_with: &[&[u8]]) -> Result<(), TxnError> {
        let repeated = self.puts.contains(&key) && !exclusive_with.contains(&key);
        if repeated || self.deleted(key) {
            return Err(TxnError::DuplicateKey);
        }
        self.puts.push(key);
        Ok(())
    }
}

fn writes(ops: &[Op]) -> Result<Writes<'_>, TxnError> {
    let mut found = Writes::default();
    for op in ops {
        if let Op::DeleteRange { key, range_end, .. } = op {
            found.deletes.push(Span::of(key, range_end));
        }
    }
    for op in ops {
        if let Op::Txn(nested) = op {
            let (then, otherwise) = (writes(&nested.success)?, writes(&nested.failure)?);
            for key in &then.puts {
                found.put(key, &[])?;
            }
            for key in &otherwise.puts {
                found.put(key, &then.puts)?;
            }
            found.deletes.extend(then.deletes.into_iter().chain(otherwise.deletes));
        }
    }
    for op in ops {
        if let Op::Put { key, .. } = op {
            found.put(key, &[])?;
        }
    }
    Ok(found)
}

/// Applies `txn` to `space`, a store at `revision`. Returns what it did and the store's
/// revision afterwards: `revision + 1` if it changed anything, else `revision`; or, when a put
/// on its path names a lease that does not exist, why nothing of it applied. The caller checks
/// the transaction ([`Txn::check`]) before proposing it; applying does not rely on it.
pub fn execute<S: KeySpace>(
    txn: Txn,
    space: &mut S,
    revision: u64,
) -> Result<Result<(TxnResult, u64), WriteError>, S::Error> {
    let mut execution = Execution { space, revision: revision + 1, changes: 0, budget: MAX_RESPONSE_BYTES };
    let path = execution.decide(&txn)?;
    if let Some(id) = execution.missing_lease(&txn, &path)? {
        return Ok(Err(WriteError::LeaseNotFound(id)));
    }
    let result = execution.run(txn, path)?;
    let after = if execution.changes > 0 { revision + 1 } else { revision };
    Ok(Ok((result, after)))
}

struct Execution<'s, S> {
    space: &'s mut S,
    /// The revision the transaction's changes get.
    revision: u64,
    /// Changes made so far: the next one's sub-revision.
    changes: u32,
    /// Bytes of keys and values the ranges may still answer with.
    budget: usize,
}

/// Which list a transaction applies, and the same for each transaction nested in that list,
/// in order.
#[derive(Default)]
struct Path {
    succeeded: bool,
    nested: Vec<Path>,
}

impl<S: KeySpace> Execution<'_, S> {
    /// Decides every compare on the way, nested ones included, against the keys as they are
    /// before anything applies: etcd's rule, so a nested compare never sees its parent's writes.
    fn decide(&mut self, txn: &Txn) -> Result<Path, S::Error> {
        let mut succeeded = true;
        for compare in &txn.compares {
            if !self.holds(compare)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded { &txn.success } else { &txn.failure };
        let mut nested = Vec::new();
        for op in ops {
            if let Op::Txn(inner) = op {
                nested.push(self.decide(inner)?);
            }
        }
        Ok(Path { succeeded, nested })
    }

    /// The first lease a put on `path` names that does not exist (etcd checks them all before
    /// anything applies).
    fn missing_lease(&mut self, txn: &Txn, path: &Path) -> Result<Option<i64>, S::Error> {
        let ops = if path.succeeded { &txn.success } else { &txn.failure };
        let mut nested = path.nested.iter();
        for op in ops {
            match op {
                Op::Put { lease, .. } if *lease != 0 && self.space.lease(*lease)?.is_none() => {
                    return Ok(Some(*lease));
                }
                Op::Txn(inner) => {
                    if let Some(id) = match nested.next() {
                        Some(inner_path) => self.missing_lease(inner, inner_path)?,
                        None => None,
                    } {
                        return Ok(Some(id));
                    }
                }
                _ => {}
            }
        }
        Ok(None)
    }

    fn run(&mut self, txn: Txn, path: Path) -> Result<TxnResult, S::Error> {
        let ops = if path.succeeded { txn.success } else { txn.failure };
        // One path per nested transaction of this list, decided above.
        let mut nested = path.nested.into_iter();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(self.op(op, &mut nested)?);
        }
        Ok(TxnResult { succeeded: path.succeeded, responses })
    }

    /// A compare on a range holds when it holds for every key in it; on no key at all, as on a
    /// missing key: fields compare as zero, and a value never matches (etcd's rule).
    fn holds(&mut self, compare: &Compare) -> Result<bool, S::Error> {
        let (mut seen, mut all) = (false, true);
        visit(self.space, Span::of(&compare.key, &compare.range_end), &mut |_, record| {
            seen = true;
            all = compare.target.holds(compare.result, Some(record));
            all
        })?;
        Ok(if seen { all } else { compare.target.holds(compare.result, None) })
    }

    /// Applies one operation; `nested` holds the decided paths of the list's transactions.
    fn op(&mut self, op: Op, nested: &mut impl Iterator<Item = Path>) -> Result<OpResponse, S::Error> {
        match op {
            Op::Range { key, range_end, limit, keys_only, count_only } => {
                let limit =
                    if limit == 0 { usize::MAX } else { usize::try_from(limit).unwrap_or(usize::MAX) };
                let (mut kvs, mut count, mut more) = (Vec::new(), 0u64, false);
                let budget = &mut self.budget;
                visit(self.space, Span::of(&key, &range_end), &mut |key, record| {
                    count += 1;
                    if count_only {
                        return true;
                    }
                    let value = if keys_only { Vec::new() } else { record.value.clone() };
                    let size = key.len() + value.len();
                    // Once one key is left out, so is every later one: the answer is always a
                    // prefix of the range, from which a client may page on.
                    if more || kvs.len() >= limit || size > *budget {
                        more = true;
                    } else {
                        *budget -= size;
                        kvs.push((key.to_vec(), KeyRecord { value, ..record.clone() }));
                    }
                    true
                })?;
                Ok(OpResponse::Range { kvs, count, more })
            }
            Op::Put { key, value, lease, prev_kv } => {
                let current = self.space.get(&key)?;
                let record = KeyRecord {
                    create_revision: current.as_ref().map_or(self.revision, |r| r.create_revision),
                    mod_revision: self.revision,
                    version: current.as_ref().map_or(1, |r| r.version + 1),
                    lease,
                    value,
                };
                self.change(key.clone(), current.as_ref(), Some(record));
                Ok(OpResponse::Put { prev: current.filter(|_| prev_kv).map(|r| (key, r)) })
            }
            Op::DeleteRange { key, range_end, prev_kv } => {
                let mut doomed = Vec::new();
                let budget = &mut self.budget;
                visit(self.space, Span::of(&key, &range_end), &mut |key, record| {
                    // Previous values share the answer's budget: a huge delete still applies
                    // whole, but answers with only as many of them as fit.
                    let size = key.len() + record.value.len();
                    let keep = prev_kv && size <= *budget;
                    if keep {
                        *budget -= size;
                    }
                    doomed.push((key.to_vec(), record.lease, keep.then(|| record.clone())));
                    true
                })?;
                let deleted = doomed.len() as u64;
                let mut prev = Vec::new();
                for (key, lease, record) in doomed {
                    // Only its lease matters to the change: what it leaves it attached to.
                    let before = KeyRecord {
                        lease,
                        create_revision: 0,
                        mod_revision: 0,
                        version: 0,
                        value: Vec::new(),
                    };
                    self.change(key.clone(), Some(&before), None);
                    if let Some(record) = record {
                        prev.push((key, record));
                    }
                }
                Ok(OpResponse::DeleteRange { deleted, prev })
            }
            // `decide` made one path per nested transaction, in this order.
            Op::Txn(inner) => Ok(OpResponse::Txn(self.run(inner, nested.next().unwrap_or_default())?)),
        }
    }

    fn change(&mut self, key: Vec<u8>, before: Option<&KeyRecord>, after: Option<KeyRecord>) {
        set_key(self.space, key, before, after, self.revision, self.changes);
        self.changes += 1;
    }
}

/// Visits the keys of `span` in order, until `visit` answers false.
fn visit<S: KeySpace>(
    space: &mut S,
    span: Span<'_>,
    visit: &mut dyn FnMut(&[u8], &KeyRecord) -> bool,
) -> Result<(), S::Error> {
    match span {
        Span::One(key) => {
            if let Some(record) = space.get(key)? {
                visit(key, &record);
            }
            Ok(())
        }
        Span::Range(start, end) => space.scan(start, end, visit),
    }
}

impl CompareTarget {
    /// Whether `record` (None: no such key) relates to the operand as `result` asks.
    pub fn holds(&self, result: CompareResult, record: Option<&KeyRecord>) -> bool {
        use std::cmp::Ordering;
        let field = |f: fn(&KeyRecord) -> u64| record.map_or(0, f);
        let ordering: Ordering = match self {
            CompareTarget::Version(v) => field(|r| r.version).cmp(v),
            CompareTarget::CreateRevision(v) => field(|r| r.create_revision).cmp(v),
            CompareTarget::ModRevision(v) => field(|r| r.mod_revision).cmp(v),
            CompareTarget::Lease(v) => record.map_or(0, |r| r.lease).cmp(v),
            CompareTarget::Value(v) => match record {
                // A missing key has no value to compare: never equal, never unequal.
                None => return false,
                Some(r) => r.value.as_slice().cmp(v.as_slice()),
            },
        };
        match result {
            CompareResult::Equal => ordering == Ordering::Equal,
            CompareResult::NotEqual => ordering != Ordering::Equal,
            CompareResult::Less => ordering == Ordering::Less,
            CompareResult::Greater => ordering == Ordering::Greater,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::memory::Memory;
    use super::*;

    fn memory(keys: &[(&str, KeyRecord)]) -> Memory {
        Memory {
            keys: keys.iter().map(|(k, r)| (k.as_bytes().to_vec(), r.clone())).collect(),
            ..Memory::default()
        }
    }

    fn put(key: &str, value: &str) -> Op {
        Op::Put { key: key.into(), value: value.into(), lease: 0, prev_kv: true }
    }

    fn delete(key: &str, range_end: &str) -> Op {
        Op::DeleteRange { key: key.into(), range_end: range_end.into(), prev_kv: true }
    }

    fn range(key: &str, range_end: &str, limit: u64) -> Op {
        Op::Range { key: key.into(), range_end: range_end.into(), limit, keys_only: false, count_only: false }
    }

    fn compare(key: &str, result: CompareResult, target: CompareTarget) -> Compare {
        Compare { key: key.into(), range_end: vec![], result, target }
    }

    fn txn(compares: Vec<Compare>, success: Vec<Op>, failure: Vec<Op>) -> Txn {
        Txn { compares, success, failure }
    }

    #[test]
    fn a_transfer_changes_both_keys_at_one_revision_with_ordered_sub_revisions() {
        let mut space = memory(&[("a", KeyRecord::at(1, 4, 3, "10")), ("b", KeyRecord::at(2, 2, 1, "0"))]);
        let transfer = txn(
            vec![compare("a", CompareResult::Equal, CompareTarget::ModRevision(4))],
            vec![put("a", "5"), put("b", "5")],
            vec![range("a", "", 0)],
        );
        let (result, revision) = execute(transfer, &mut space, 6).expect("apply").expect("applies");
        assert!(result.succeeded);
        assert_eq!(revision, 7, "one revision for the whole transaction");
        assert_eq!(space.keys[&b"a".to_vec()], KeyRecord::at(1, 7, 4, "5"));
        assert_eq!(space.keys[&b"b".to_vec()], KeyRecord::at(2, 7, 2, "5"));
        assert_eq!(space.changes, [(7, 0, b"a".to_vec()), (7, 1, b"b".to_vec())]);
        assert_eq!(
            result.responses,
            [
                OpResponse::Put { prev: Some((b"a".to_vec(), KeyRecord::at(1, 4, 3, "10"))) },
                OpResponse::Put { prev: Some((b"b".to_vec(), KeyRecord::at(2, 2, 1, "0"))) }
            ]
        );
    }

    #[test]
    fn a_failed_compare_runs_the_failure_list_and_a_read_only_one_takes_no_revision() {
        let mut space = memory(&[("a", KeyRecord::at(1, 4, 3, "10"))]);
        let stale = txn(
            vec![compare("a", CompareResult::Equal, CompareTarget::ModRevision(3))],
            vec![put("a", "5")],
            vec![range("a", "", 0)],
        );
        let (result, revision) = execute(stale, &mut space, 6).expect("apply").expect("applies");
        assert!(!result.succeeded);
        assert_eq!(revision, 6);
        assert!(space.changes.is_empty());
        let expected = vec![(b"a".to_vec(), KeyRecord::at(1, 4, 3, "10"))];
        assert_eq!(result.responses, [OpResponse::Range { kvs: expected, count: 1, more: false }]);
    }

    #[test]
    fn compares_follow_etcds_rules_for_missing_keys_and_ranges() {
        let record = KeyRecord::at(2, 5, 3, "m");
        let on = |target: CompareTarget, result, r: Option<&KeyRecord>| target.holds(result, r);
        assert!(on(CompareTarget::Version(0), CompareResult::Equal, None), "a missing key has version 0");
        assert!(on(CompareTarget::CreateRevision(0), CompareResult::Equal, None));
        assert!(!on(CompareTarget::Value(vec![]), CompareResult::Equal, None), "nor equal...");
        assert!(!on(CompareTarget::Value(vec![]), CompareResult::NotEqual, None), "...nor unequal");
        assert!(on(CompareTarget::Value(b"a".to_vec()), CompareResult::Greater, Some(&record)));
        assert!(on(CompareTarget::Value(b"z".to_vec()), CompareResult::Less, Some(&record)));
        assert!(on(CompareTarget::ModRevision(4), CompareResult::Greater, Some(&record)));
        assert!(on(CompareTarget::Version(3), CompareResult::Equal, Some(&record)));
        assert!(on(CompareTarget::Lease(1), CompareResult::NotEqual, Some(&record)));

        let mut space = memory(&[("p/a", KeyRecord::at(1, 1, 1, "x")), ("p/b", KeyRecord::at(2, 2, 1, "y"))]);
        let on_range = |result, target, space: &mut Memory| {
            let c = Compare { key: b"p/".to_vec(), range_end: b"p0".to_vec(), result, target };
            execute(txn(vec![c], vec![], vec![]), space, 2).expect("apply").expect("applies").0.succeeded
        };
        assert!(on_range(CompareResult::Less, CompareTarget::ModRevision(3), &mut space), "every key");
        assert!(!on_range(CompareResult::Less, CompareTarget::ModRevision(2), &mut space), "not every key");
        assert!(on_range(CompareResult::Equal, CompareTarget::Version(1), &mut space));
    }

    #[test]
    fn operations_see_the_changes_made_before_them_in_the_transaction() {
        let mut space = memory(&[("k/1", KeyRecord::at(1, 1, 1, "a")), ("k/2", KeyRecord::at(2, 2, 1, "b"))]);
        let ops = vec![delete("k/", "k0"), put("k/3", "c"), range("k/", "k0", 0)];
        let (result, revision) =
            execute(txn(vec![], ops, vec![]), &mut space, 2).expect("apply").expect("applies");
        assert_eq!(revision, 3);
        let listed = vec![(b"k/3".to_vec(), KeyRecord::at(3, 3, 1, "c"))];
        assert_eq!(result.responses[2], OpResponse::Range { kvs: listed, count: 1, more: false });
        let OpResponse::DeleteRange { deleted, prev } = &result.responses[0] else { panic!("{result:?}") };
        assert_eq!((*deleted, prev.len()), (2, 2));
        assert_eq!(
            space.changes.iter().map(|c| c.1).collect::<Vec<_>>(),
            [0, 1, 2],
            "sub-revisions in order"
        );
    }

    #[test]
    fn a_range_counts_every_key_but_answers_only_up_to_its_limit() {
        let keys: Vec<(String, KeyRecord)> =
            (0..5).map(|i| (format!("k{i}"), KeyRecord::at(i + 1, i + 1, 1, "v"))).collect();
        let keys: Vec<(&str, KeyRecord)> = keys.iter().map(|(k, r)| (k.as_str(), r.clone())).collect();
        let mut space = memory(&keys);
        let (result, _) = execute(txn(vec![], vec![range("k", "\0", 2)], vec![]), &mut space, 5)
            .expect("apply")
            .expect("applies");
        let OpResponse::Range { kvs, count, more } = &result.responses[0] else { panic!("{result:?}") };
        assert_eq!((kvs.len(), *count, *more), (2, 5, true));
        let counting = Op::Range {
            key: b"k".to_vec(),
            range_end: vec![0],
            limit: 0,
            keys_only: false,
            count_only: true,
        };
        let (result, _) =
            execute(txn(vec![], vec![counting], vec![]), &mut space, 5).expect("apply").expect("applies");
        assert_eq!(result.responses[0], OpResponse::Range { kvs: vec![], count: 5, more: false });
    }

    #[test]
    fn a_nested_transaction_shares_the_outer_revision_and_decides_before_anything_applies() {
        let mut space = memory(&[]);
        let inner = txn(
            vec![compare("a", CompareResult::Equal, CompareTarget::Version(0))],
            vec![put("b", "a-was-absent")],
            vec![put("b", "a-existed")],
        );
        let (result, revision) =
            execute(txn(vec![], vec![put("a", "1"), Op::Txn(inner)], vec![]), &mut space, 0)
                .expect("apply")
                .expect("applies");
        assert_eq!(revision, 1);
        let OpResponse::Txn(nested) = &result.responses[1] else { panic!("{result:?}") };
        assert!(nested.succeeded, "decided against the keys before the outer put, as etcd does");
        assert_eq!(space.keys[&b"b".to_vec()], KeyRecord::at(1, 1, 1, "a-was-absent"));
    }

    #[test]
    fn a_range_cut_short_answers_a_prefix_of_the_range() {
        let big = "x".repeat(MAX_RESPONSE_BYTES - 10);
        let mut space = memory(&[
            ("k1", KeyRecord::at(1, 1, 1, "small")),
            ("k2", KeyRecord::at(2, 2, 1, &big)),
            ("k3", KeyRecord::at(3, 3, 1, "s")),
        ]);
        let ops = vec![range("k1", "", 0), range("k", "\0", 0)];
        let (result, _) = execute(txn(vec![], ops, vec![]), &mut space, 3).expect("apply").expect("applies");
        let OpResponse::Range { kvs, count, more } = &result.responses[1] else { panic!("{result:?}") };
        let keys: Vec<&[u8]> = kvs.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(
            (keys, *count, *more),
            (vec![&b"k1"[..]], 3, true),
            "k2 does not fit, so k3 is left out too"
        );
    }

    #[test]
    fn a_range_written_backwards_is_empty() {
        let mut space = memory(&[("b", KeyRecord::at(1, 1, 1, "v"))]);
        let (result, revision) =
            execute(txn(vec![], vec![delete("z", "a"), range("z", "a", 0)], vec![]), &mut space, 1)
                .expect("apply")
                .expect("applies");
        assert_eq!(revision, 1);
        assert_eq!(result.responses[1], OpResponse::Range { kvs: vec![], count: 0, more: false });
    }

    #[test]
    fn writing_one_key_twice_on_one_path_is_refused_as_etcd_refuses_it() {
        let refused = |ops: Vec<Op>| txn(vec![], ops, vec![]).check();
        assert_eq!(refused(vec![put("a", "1"), put("a", "2")]), Err(TxnError::DuplicateKey));
        assert_eq!(refused(vec![put("a/x", "1"), delete("a/", "a0")]), Err(TxnError::DuplicateKey));
        assert_eq!(refused(vec![delete("a", ""), put("a", "1")]), Err(TxnError::DuplicateKey));
        let nested_put = Op::Txn(txn(vec![], vec![put("a", "1")], vec![]));
        assert_eq!(refused(vec![put("a", "2"), nested_put.clone()]), Err(TxnError::DuplicateKey));
        let nested_delete = Op::Txn(txn(vec![], vec![delete("a", "\0")], vec![]));
        assert_eq!(refused(vec![nested_delete, put("b", "1")]), Err(TxnError::DuplicateKey));

        assert_eq!(refused(vec![delete("a", "c"), delete("b", "d")]), Ok(()), "deletes may overlap");
        let either = Op::Txn(txn(vec![], vec![put("a", "1")], vec![put("a", "2")]));
        assert_eq!(refused(vec![either]), Ok(()), "a nested transaction's two lists exclude each other");
        assert_eq!(txn(vec![], vec![put("a", "1")], vec![put("a", "2")]).check(), Ok(()));
    }

    #[test]
    fn oversized_empty_keyed_and_too_deep_transactions_are_refused() {
        let many = vec![range("a", "", 0); MAX_TXN_OPS + 1];
        assert_eq!(txn(vec![], many, vec![]).check(), Err(TxnError::TooManyOps));
        let half = vec![range("a", "", 0); MAX_TXN_OPS / 2];
        let nested = Op::Txn(txn(vec![], half.clone(), vec![]));
        let mut outer = half.clone();
        outer.push(nested.clone());
        assert_eq!(
            txn(vec![], outer, vec![]).check(),
            Err(TxnError::TooManyOps),
            "a nested list shares the allowance"
        );
        let fits = vec![range("a", "", 0); MAX_TXN_OPS / 2 - 1];
        let mut outer = fits;
        outer.push(nested);
        assert_eq!(txn(vec![], outer, vec![]).check(), Ok(()));
        assert_eq!(txn(vec![], vec![put("", "v")], vec![]).check(), Err(TxnError::EmptyKey));
        let mut deep = txn(vec![], vec![], vec![]);
        for _ in 0..MAX_TXN_DEPTH {
            deep = txn(vec![], vec![Op::Txn(deep)], vec![]);
        }
        assert_eq!(deep.check(), Err(TxnError::TooDeep));
    }
}
