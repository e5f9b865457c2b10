//! A linearizability checker for a map of registers, in the style of Wing & Gong with Lowe's
//! memoization (the algorithm Porcupine and Knossos use): per key, search for a total order of
//! the operations that respects real time (an operation that completed before another was
//! invoked comes first) and in which every read sees the latest write.
//!
//! Operations whose outcome is unknown have no completion: they may be placed anywhere after
//! their invocation, or nowhere (they never took effect). A refused compare-and-swap is a read
//! that saw another value than the one it expected.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::history::{History, Op, Operation, Outcome};

/// How many search steps one key may take before the checker gives up on it.
const STEP_BUDGET: u64 = 20_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Verdict {
    Linearizable,
    /// No linearization exists. `stuck_at` is the operation the longest partial linearization
    /// could not get past.
    NotLinearizable {
        key: String,
        stuck_at: Operation,
    },
    /// The search ran out of budget: neither proven nor refuted.
    Inconclusive {
        key: String,
    },
}

/// Checks every key of `history`: the first key proven not linearizable decides; otherwise the
/// first key the search gave up on makes the whole inconclusive.
pub fn check(history: &History) -> Verdict {
    check_within(history, STEP_BUDGET)
}

fn check_within(history: &History, budget: u64) -> Verdict {
    let mut verdict = Verdict::Linearizable;
    for (key, operations) in history.by_key() {
        match check_key_within(key, &operations, budget) {
            Verdict::Linearizable => {}
            gave_up @ Verdict::Inconclusive { .. } => {
                if verdict == Verdict::Linearizable {
                    verdict = gave_up;
                }
            }
            violation @ Verdict::NotLinearizable { .. } => return violation,
        }
    }
    verdict
}

/// Values as small integers (0 is "absent"), so that states are cheap to copy and hash.
#[derive(Default)]
struct Values(HashMap<String, u32>);

impl Values {
    fn id(&mut self, value: Option<&String>) -> u32 {
        match value {
            None => 0,
            Some(v) => {
                let next = self.0.len() as u32 + 1;
                *self.0.entry(v.clone()).or_insert(next)
            }
        }
    }
}

/// One operation in the register model.
#[derive(Clone, Copy)]
enum Step {
    /// A read that saw this value, or a refused CAS that saw anything but it.
    Read(u32),
    NotEqual(u32),
    Write(u32),
    Cas {
        expected: u32,
        new: u32,
    },
}

impl Step {
    fn apply(self, state: u32) -> Option<u32> {
        match self {
            Step::Read(seen) => (state == seen).then_some(state),
            Step::NotEqual(expected) => (state != expected).then_some(state),
            Step::Write(value) => Some(value),
            Step::Cas { expected, new } => (state == expected).then_some(new),
        }
    }
}

const HEAD: usize = 0;

/// A doubly linked list of call and return events, with O(1) removal and LIFO re-insertion
/// (the search lifts an operation's two events out, and puts them back when it backtracks).
struct Events {
    op: Vec<usize>,
    is_call: Vec<bool>,
    prev: Vec<usize>,
    next: Vec<usize>,
    /// Event index of each operation's call and return.
    call: Vec<usize>,
    ret: Vec<usize>,
}

impl Events {
    /// `times[i]` is operation i's (invoked, completed); `u64::MAX` completes never.
    fn new(times: &[(u64, u64)]) -> Self {
        let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(times.len() * 2);
        for (i, (invoked, completed)) in times.iter().enumerate() {
            // At equal times a call sorts before a return: the operations count as concurrent,
            // the permissive reading of a clock tie.
            order.push((*invoked, false, i));
            order.push((*completed, true, i));
        }
        order.sort();
        let n = order.len();
        let mut events = Self {
            op: vec![usize::MAX; n + 1],
            is_call: vec![false; n + 1],
            prev: (0..=n).map(|i| i.saturating_sub(1)).collect(),
            next: (1..=n + 1).collect(),
            call: vec![0; times.len()],
            ret: vec![0; times.len()],
        };
        for (position, (_, is_return, op)) in order.into_iter().enumerate() {
            let index = position + 1;
            events.op[index] = op;
            events.is_call[index] = !is_return;
            if is_return {
                events.ret[op] = index;
            } else {
                events.call[op] = index;
            }
        }
        events
    }

    fn end(&self) -> usize {
        self.op.len()
    }

    fn unlink(&mut self, i: usize) {
        let (p, n) = (self.prev[i], self.next[i]);
        self.next[p] = n;
        if n < self.end() {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, i: usize) {
        let (p, n) = (self.prev[i], self.next[i]);
        self.next[p] = i;
        if n < self.end() {
            self.prev[n] = i;
        }
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.call[op]);
        self.unlink(self.ret[op]);
    }

    fn unlift(&mut self, op: usize) {
        self.relink(self.ret[op]);
        self.relink(self.call[op]);
    }
}

/// The operations worth searching, each with whether it is an interchangeable "unseen" write.
///
/// - What never reached a member, and a read whose answer never came, had no effect.
/// - A write of unknown outcome whose value nobody needed (no read returned it, no
///   compare-and-swap that must have happened expected it) can only matter by replacing the
///   value with one nobody sees: that explains a refused compare-and-swap, nothing else. All such
///   writes have the same effect, so the search treats them as interchangeable and only ever
///   places the earliest-invoked unused one (any linearization using a later one works with an
///   earlier one, whose invocation constrains less). Without this, each unknown write would
///   double the search, and a run with kill -9 has thousands.
fn relevant<'a>(operations: &[&'a Operation]) -> Vec<(&'a Operation, bool)> {
    let effective: Vec<&Operation> = operations
        .iter()
        .copied()
        .filter(|o| o.outcome != Outcome::Failed)
        .filter(|o| !(matches!(o.op, Op::Read(_)) && o.outcome == Outcome::Unknown))
        .collect();
    let mut needed: HashSet<&str> = HashSet::new();
    for o in &effective {
        match (&o.op, o.outcome) {
            (Op::Read(Some(v)), _) => {
                needed.insert(v);
            }
            (Op::Cas { expected: Some(v), .. }, Outcome::Ok) => {
                needed.insert(v);
            }
            _ => {}
        }
    }
    // An unknown CAS whose new value is needed must have happened, so its expected value is
    // needed too; follow such chains to the end.
    loop {
        let before = needed.len();
        for o in &effective {
            if let (Op::Cas { expected: Some(e), new }, Outcome::Unknown) = (&o.op, o.outcome) {
                if needed.contains(new.as_str()) {
                    needed.insert(e);
                }
            }
        }
        if needed.len() == before {
            break;
        }
    }
    effective
        .into_iter()
        .map(|o| {
            let unseen = matches!((&o.op, o.outcome), (Op::Write(v), Outcome::Unknown) if !needed.contains(v.as_str()));
            (o, unseen)
        })
        .collect()
}

/// The value of every unseen write: no read returns it, no expectation matches it.
const UNSEEN: u32 = u32::MAX;

/// Checks the operations on one key.
pub fn check_key(key: &str, operations: &[&Operation]) -> Verdict {
    check_key_within(key, operations, STEP_BUDGET)
}

fn check_key_within(key: &str, operations: &[&Operation], mut budget: u64) -> Verdict {
    let relevant = relevant(operations);
    let operations: Vec<&Operation> = relevant.iter().map(|(o, _)| *o).collect();
    let unseen: Vec<bool> = relevant.iter().map(|(_, unseen)| *unseen).collect();
    // The unseen writes in the order they may be used: by invocation.
    let mut unseen_order: Vec<usize> = (0..operations.len()).filter(|i| unseen[*i]).collect();
    unseen_order.sort_by_key(|i| operations[*i].invoked);
    let mut unseen_used = 0usize;
    let mut values = Values::default();
    let steps: Vec<Step> = operations
        .iter()
        .zip(&unseen)
        .map(|(o, unseen)| match (&o.op, o.outcome) {
            (Op::Write(_), _) if *unseen => Step::Write(UNSEEN),
            (Op::Read(seen), _) => Step::Read(values.id(seen.as_ref())),
            (Op::Write(v), _) => Step::Write(values.id(Some(v))),
            (Op::Cas { expected, .. }, Outcome::Refused) => Step::NotEqual(values.id(expected.as_ref())),
            (Op::Cas { expected, new }, _) => {
                Step::Cas { expected: values.id(expected.as_ref()), new: values.id(Some(new)) }
            }
        })
        .collect();
    let required: Vec<bool> = operations.iter().map(|o| o.must_happen()).collect();
    let times: Vec<(u64, u64)> = operations
        .iter()
        .map(|o| (o.invoked, if o.must_happen() { o.completed.unwrap_or(u64::MAX) } else { u64::MAX }))
        .collect();
    let mut events = Events::new(&times);

    let words = operations.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, u32)> = HashSet::new();
    let mut stack: Vec<(usize, u32)> = Vec::new();
    let mut state = 0u32;
    let mut remaining = required.iter().filter(|r| **r).count();
    let mut deepest = (0usize, None::<usize>);
    let mut cursor = events.next[HEAD];

    while remaining > 0 {
        budget = match budget.checked_sub(1) {
            Some(b) => b,
            None => return Verdict::Inconclusive { key: key.to_string() },
        };
        let at_call = cursor < events.end() && events.is_call[cursor];
        if at_call {
            let op = events.op[cursor];
            // Of the interchangeable unseen writes, only the earliest unused one is a candidate.
            let candidate = !unseen[op] || unseen_order.get(unseen_used) == Some(&op);
            if let Some(next) = steps[op].apply(state).filter(|_| candidate) {
                linearized[op / 64] |= 1 << (op % 64);
                if seen.insert((linearized.clone(), next)) {
                    stack.push((op, state));
                    state = next;
                    events.lift(op);
                    if required[op] {
                        remaining -= 1;
                    }
                    if unseen[op] {
                        unseen_used += 1;
                    }
                    cursor = events.next[HEAD];
                    continue;
                }
                linearized[op / 64] &= !(1 << (op % 64));
            }
            cursor = events.next[cursor];
        } else {
            // An operation completed (or the events ran out) before it could be placed: undo
            // the last choice and try the next candidate after it.
            if stack.len() >= deepest.0 && cursor < events.end() {
                deepest = (stack.len(), Some(events.op[cursor]));
            }
            let Some((op, previous)) = stack.pop() else {
                let stuck = deepest.1.unwrap_or(0);
                return Verdict::NotLinearizable {
                    key: key.to_string(),
                    stuck_at: operations[stuck].clone(),
                };
            };
            linearized[op / 64] &= !(1 << (op % 64));
            events.unlift(op);
            state = previous;
            if required[op] {
                remaining += 1;
            }
            if unseen[op] {
                unseen_used -= 1;
            }
            cursor = events.next[events.call[op]];
        }
    }
    Verdict::Linearizable
}

/// Acknowledged writes that the final state does not reflect: for each key, the value a final
/// read (after every fault healed) returned must not come from a write that completed before
/// an acknowledged write to that key was invoked.
pub fn lost_writes(history: &History, finals: &BTreeMap<String, Option<String>>) -> Vec<Operation> {
    let mut lost = Vec::new();
    for (key, operations) in history.by_key() {
        let Some(last) = finals.get(key) else { continue };
        let writes = operations.iter().filter(|o| matches!(o.op, Op::Write(_) | Op::Cas { .. }));
        let written = |o: &&&Operation| match &o.op {
            Op::Write(v) | Op::Cas { new: v, .. } => Some(v) == last.as_ref(),
            Op::Read(_) => false,
        };
        // The write the final value came from; `None` if it is absent or came from no write.
        let source = writes.clone().find(written);
        for write in writes.filter(|o| o.outcome == Outcome::Ok) {
            let superseded = match source {
                Some(source) => source.completed.is_some_and(|done| done < write.invoked),
                None => true,
            };
            if superseded && Some(write) != source {
                lost.push((*write).clone());
            }
        }
    }
    lost
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An operation on key "k" by `client` during [invoked, completed].
    fn op(client: usize, op: Op, invoked: u64, completed: Option<u64>, outcome: Outcome) -> Operation {
        Operation { client, key: "k".into(), op, invoked, completed, outcome }
    }
    fn write(v: &str, from: u64, to: u64) -> Operation {
        op(0, Op::Write(v.into()), from, Some(to), Outcome::Ok)
    }
    fn read(seen: Option<&str>, from: u64, to: u64) -> Operation {
        op(1, Op::Read(seen.map(str::to_string)), from, Some(to), Outcome::Ok)
    }
    fn history(operations: Vec<Operation>) -> History {
        History { operations }
    }
    fn linearizable(operations: Vec<Operation>) -> bool {
        match check(&history(operations)) {
            Verdict::Linearizable => true,
            Verdict::NotLinearizable { .. } => false,
            Verdict::Inconclusive { .. } => panic!("inconclusive"),
        }
    }

    #[test]
    fn a_violation_on_any_key_outweighs_a_key_the_search_gave_up_on() {
        // Keys are checked in order: "k" before "z".
        let mut on_z = vec![write("a", 0, 1), read(None, 2, 3)];
        for o in &mut on_z {
            o.key = "z".into();
        }
        // Key "k" takes at least 40 steps: 20 writes each read back.
        let mut operations: Vec<Operation> = (0..20u64)
            .flat_map(|i| {
                [write(&i.to_string(), 4 * i, 4 * i + 1), read(Some(&i.to_string()), 4 * i + 2, 4 * i + 3)]
            })
            .collect();
        assert!(matches!(check_within(&history(operations.clone()), 10), Verdict::Inconclusive { .. }));
        operations.extend(on_z);
        let verdict = check_within(&history(operations), 10);
        assert!(matches!(verdict, Verdict::NotLinearizable { ref key, .. } if key == "z"), "{verdict:?}");
    }

    #[test]
    fn sequential_reads_see_the_latest_write() {
        assert!(linearizable(vec![read(None, 0, 1), write("a", 2, 3), read(Some("a"), 4, 5)]));
        assert!(!linearizable(vec![write("a", 0, 1), read(None, 2, 3)]), "a stale read after the write");
        assert!(!linearizable(vec![write("a", 0, 1), write("b", 2, 3), read(Some("a"), 4, 5)]));
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // The read overlaps the write: it may see the value before or after.
        assert!(linearizable(vec![write("a", 0, 10), read(None, 1, 2)]));
        assert!(linearizable(vec![write("a", 0, 10), read(Some("a"), 1, 2)]));
        // But two reads in sequence cannot see the write and then not see it.
        assert!(!linearizable(vec![write("a", 0, 10), read(Some("a"), 1, 2), read(None, 3, 4)]));
    }

    #[test]
    fn a_read_cannot_see_a_value_nobody_wrote() {
        assert!(!linearizable(vec![write("a", 0, 1), read(Some("ghost"), 2, 3)]));
    }

    #[test]
    fn a_write_of_unknown_outcome_may_take_effect_late_or_never() {
        let lost_in_flight = op(0, Op::Write("a".into()), 0, None, Outcome::Unknown);
        assert!(linearizable(vec![lost_in_flight.clone(), read(None, 5, 6)]), "never took effect");
        assert!(
            linearizable(vec![lost_in_flight.clone(), read(None, 5, 6), read(Some("a"), 7, 8)]),
            "took effect late"
        );
        assert!(
            !linearizable(vec![lost_in_flight, read(Some("a"), 5, 6), read(None, 7, 8)]),
            "but not undone once seen"
        );
    }

    #[test]
    fn an_operation_that_never_reached_a_member_has_no_effect() {
        let failed = op(0, Op::Write("a".into()), 0, None, Outcome::Failed);
        assert!(linearizable(vec![failed.clone(), read(None, 5, 6)]));
        assert!(!linearizable(vec![failed, read(Some("a"), 5, 6)]), "nobody else wrote a");
    }

    #[test]
    fn a_refusal_explained_by_a_write_of_unknown_outcome_is_no_anomaly() {
        // Client 2 read a, someone's write of b timed out, and the CAS from a was refused:
        // b may well have taken effect between them.
        let cas =
            op(2, Op::Cas { expected: Some("a".into()), new: "c".into() }, 6, Some(7), Outcome::Refused);
        let timed_out = op(0, Op::Write("b".into()), 3, None, Outcome::Unknown);
        assert!(linearizable(vec![write("a", 0, 1), read(Some("a"), 2, 3), timed_out, cas]));
    }

    #[test]
    fn a_wrong_refusal_is_caught_even_after_a_write_of_unknown_outcome() {
        // The refusal saw a, the value it expected, unless u took effect before it; but then the
        // last read could not see a again. Not linearizable either way.
        let timed_out = op(0, Op::Write("u".into()), 2, None, Outcome::Unknown);
        let cas =
            op(2, Op::Cas { expected: Some("a".into()), new: "c".into() }, 5, Some(6), Outcome::Refused);
        let h = vec![write("a", 0, 1), timed_out, read(Some("a"), 3, 4), cas, read(Some("a"), 7, 8)];
        assert!(!linearizable(h));
    }

    #[test]
    fn hundreds_of_writes_of_unknown_outcome_are_checked_quickly() {
        // A writer whose every write timed out, readers seeing only the acknowledged ones.
        let mut operations = vec![write("base", 0, 1)];
        for i in 0..400u64 {
            operations.push(op(3, Op::Write(format!("lost{i}")), 10 + i, None, Outcome::Unknown));
            operations.push(read(Some("base"), 10 + i, 11 + i));
        }
        assert_eq!(check(&history(operations)), Verdict::Linearizable);
        // And one of them observed: it must have happened, so later reads cannot go back.
        let mut operations = vec![write("base", 0, 1)];
        for i in 0..400u64 {
            operations.push(op(3, Op::Write(format!("lost{i}")), 10 + i, None, Outcome::Unknown));
        }
        operations.push(read(Some("lost7"), 500, 501));
        operations.push(read(Some("base"), 502, 503));
        assert!(matches!(check(&history(operations)), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn compare_and_swap_succeeds_only_on_the_expected_value() {
        let cas = |expected: Option<&str>, new: &str, from, to, outcome| {
            let op_ = Op::Cas { expected: expected.map(str::to_string), new: new.into() };
            op(2, op_, from, Some(to), outcome)
        };
        assert!(linearizable(vec![
            write("a", 0, 1),
            cas(Some("a"), "b", 2, 3, Outcome::Ok),
            read(Some("b"), 4, 5)
        ]));
        assert!(!linearizable(vec![write("a", 0, 1), cas(None, "b", 2, 3, Outcome::Ok)]), "expected absent");
        assert!(linearizable(vec![
            write("a", 0, 1),
            cas(None, "b", 2, 3, Outcome::Refused),
            read(Some("a"), 4, 5)
        ]));
        assert!(
            !linearizable(vec![write("a", 0, 1), cas(Some("a"), "b", 2, 3, Outcome::Refused)]),
            "refused although the value was the expected one"
        );
        // Two clients swap from the same value, both acknowledged: one must have seen the other.
        assert!(!linearizable(vec![
            write("a", 0, 1),
            cas(Some("a"), "b", 2, 5, Outcome::Ok),
            cas(Some("a"), "c", 2, 5, Outcome::Ok)
        ]));
    }

    #[test]
    fn keys_are_independent_registers() {
        let mut other = write("x", 0, 1);
        other.key = "other".into();
        assert!(linearizable(vec![write("a", 0, 1), other, read(Some("a"), 2, 3)]));
    }

    #[test]
    fn a_long_concurrent_history_is_checked_without_running_out_of_budget() {
        // Ten clients, each writing its own values and reading, heavily overlapped.
        let mut operations = Vec::new();
        let mut last = None::<String>;
        for round in 0..200u64 {
            let value = format!("v{round}");
            operations.push(op(
                (round % 10) as usize,
                Op::Write(value.clone()),
                round * 10,
                Some(round * 10 + 25),
                Outcome::Ok,
            ));
            operations.push(op(
                99,
                Op::Read(last.clone()),
                round * 10 + 1,
                Some(round * 10 + 30),
                Outcome::Ok,
            ));
            last = Some(value);
        }
        assert_eq!(check(&history(operations)), Verdict::Linearizable);
    }

    #[test]
    fn the_report_names_where_the_history_broke() {
        let Verdict::NotLinearizable { key, stuck_at } =
            check(&history(vec![write("a", 0, 1), read(None, 2, 3)]))
        else {
            panic!("not linearizable");
        };
        assert_eq!(key, "k");
        assert_eq!(stuck_at.op, Op::Read(None));
    }

    #[test]
    fn acknowledged_writes_must_survive_into_the_final_state() {
        let h = history(vec![write("a", 0, 1), write("b", 2, 3)]);
        let finals = |v: Option<&str>| BTreeMap::from([("k".to_string(), v.map(str::to_string))]);
        assert!(lost_writes(&h, &finals(Some("b"))).is_empty());
        let lost = lost_writes(&h, &finals(Some("a")));
        assert_eq!(lost.len(), 1, "b was acknowledged after a completed: {lost:?}");
        assert_eq!(lost[0].op, Op::Write("b".into()));
        assert_eq!(lost_writes(&h, &finals(None)).len(), 2, "everything is gone");
        // A concurrent write may be ordered either way.
        let concurrent = history(vec![write("a", 0, 10), write("b", 2, 3)]);
        assert!(lost_writes(&concurrent, &finals(Some("a"))).is_empty());
    }
}
