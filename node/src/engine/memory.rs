//! The keys in memory, for the engine's tests: a [`KeySpace`] that records every change as the
//! state machine would.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;

use super::{KeyRecord, KeySpace, LeaseRecord};

#[derive(Debug, Default)]
pub struct Memory {
    pub keys: BTreeMap<Vec<u8>, KeyRecord>,
    /// Every change, in order: its revision, sub-revision and key.
    pub changes: Vec<(u64, u32, Vec<u8>)>,
    pub leases: BTreeMap<i64, LeaseRecord>,
    /// (lease, key) for every key attached to a lease.
    pub attached: BTreeSet<(i64, Vec<u8>)>,
}

impl KeySpace for Memory {
    type Error = Infallible;

    fn get(&mut self, key: &[u8]) -> Result<Option<KeyRecord>, Infallible> {
        Ok(self.keys.get(key).cloned())
    }

    fn scan(
        &mut self,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &KeyRecord) -> bool,
    ) -> Result<(), Infallible> {
        if end.is_some_and(|end| end <= start) {
            return Ok(());
        }
        for (key, record) in self.keys.range(start.to_vec()..) {
            if end.is_some_and(|end| key.as_slice() >= end) || !visit(key, record) {
                break;
            }
        }
        Ok(())
    }

    fn change(&mut self, key: Vec<u8>, state: Option<KeyRecord>, revision: u64, sub: u32) {
        self.changes.push((revision, sub, key.clone()));
        match state {
            Some(record) => self.keys.insert(key, record),
            None => self.keys.remove(&key),
        };
    }

    fn lease(&mut self, id: i64) -> Result<Option<LeaseRecord>, Infallible> {
        Ok(self.leases.get(&id).copied())
    }

    fn set_lease(&mut self, id: i64, lease: Option<LeaseRecord>) {
        match lease {
            Some(lease) => self.leases.insert(id, lease),
            None => self.leases.remove(&id),
        };
    }

    fn attach(&mut self, id: i64, key: &[u8], attached: bool) {
        if attached {
            self.attached.insert((id, key.to_vec()));
        } else {
            self.attached.remove(&(id, key.to_vec()));
        }
    }

    fn attached(&mut self, id: i64) -> Result<Vec<Vec<u8>>, Infallible> {
        Ok(self.attached.iter().filter(|(lease, _)| *lease == id).map(|(_, key)| key.clone()).collect())
    }
}
