//! What clients saw: every operation with the times it was invoked and completed, and its
//! outcome. An operation whose outcome is unknown (a timeout, a broken connection, an error
//! that does not say the write was refused) may or may not have taken effect.

use serde::Serialize;

/// A value written; every write writes a value never written before, so a read names the write
/// it observed.
pub type Value = String;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Op {
    /// A linearizable read, and what it returned (`None`: the key was absent).
    Read(Option<Value>),
    Write(Value),
    /// Compare-and-swap: replace the value if it is `expected` (`None`: if absent).
    Cas {
        expected: Option<Value>,
        new: Value,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Outcome {
    /// It took effect (a read returned, a write or CAS was acknowledged).
    Ok,
    /// It definitely did not take effect: a CAS whose precondition did not hold.
    Refused,
    /// It definitely did not take effect and saw nothing: it never reached a member.
    Failed,
    /// It may or may not have taken effect.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Operation {
    pub client: usize,
    pub key: String,
    pub op: Op,
    /// Nanoseconds since the run started.
    pub invoked: u64,
    /// `None` while the outcome is unknown: it may take effect at any time after `invoked`.
    pub completed: Option<u64>,
    pub outcome: Outcome,
}

impl Operation {
    /// Whether it must appear in a linearization: what completed took effect (a refused CAS is
    /// a read of the key that saw another value); what is unknown may or may not have.
    pub fn must_happen(&self) -> bool {
        matches!(self.outcome, Outcome::Ok | Outcome::Refused)
    }
}

/// A run's record, in the order operations were invoked.
#[derive(Debug, Default, Clone, Serialize)]
pub struct History {
    pub operations: Vec<Operation>,
}

impl History {
    /// The operations on each key, keyed by key: linearizability of a register map is
    /// linearizability of each register (it is a local property), so keys are checked apart.
    pub fn by_key(&self) -> std::collections::BTreeMap<&str, Vec<&Operation>> {
        let mut keys: std::collections::BTreeMap<&str, Vec<&Operation>> = Default::default();
        for operation in &self.operations {
            keys.entry(operation.key.as_str()).or_default().push(operation);
        }
        keys
    }
}
