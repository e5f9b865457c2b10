//! The keys in memory, for the engine's tests: a [`KeySpace`] that records every change as the
//! state machine would.

use std::collections::BTreeMap;
use std::convert::Infallible;

use super::{KeyRecord, KeySpace};

#[derive(Debug, Default)]
pub struct Memory {
    pub keys: BTreeMap<Vec<u8>, KeyRecord>,
    /// Every change, in order: its revision, sub-revision and key.
    pub changes: Vec<(u64, u32, Vec<u8>)>,
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
}
