//! What a range read answers, as etcd decides it: the keys of a range, read in key order, go
//! through revision filters, a sort and a limit; `count` is every key in the range, however
//! many the answer holds.
//!
//! etcd's order of work, kept because clients see its effects: with neither a sort order nor a
//! filter, the limit applies to the keys in key order (so a read of 10 keys out of a million
//! holds 11 in memory, and counts the rest); with either, every key of the range is held,
//! filtered, sorted, then cut to the limit. A sort target other than the key with no order
//! sorts ascending, but only among the keys the limit kept.

use std::cmp::Ordering;

use super::KeyRecord;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SortOrder {
    #[default]
    None,
    Ascend,
    Descend,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// The options of a range read beyond its keys and revision. Revision bounds of 0 are no bound.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// 0: no limit.
    pub limit: u64,
    pub keys_only: bool,
    pub count_only: bool,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    pub min_mod_revision: u64,
    pub max_mod_revision: u64,
    pub min_create_revision: u64,
    pub max_create_revision: u64,
}

/// A range read's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selected {
    pub kvs: Vec<(Vec<u8>, KeyRecord)>,
    /// Whether the limit left keys out.
    pub more: bool,
    /// Every key in the range.
    pub count: u64,
}

/// The keys an answer would hold come to more than the answer may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the range holds more than {max_bytes} bytes of keys and values; read it in pages with a limit")]
pub struct TooLarge {
    pub max_bytes: usize,
}

impl Selection {
    fn filters(&self) -> bool {
        self.min_mod_revision != 0
            || self.max_mod_revision != 0
            || self.min_create_revision != 0
            || self.max_create_revision != 0
    }

    /// Whether the answer is more than the range's first keys in key order: sorted otherwise,
    /// or filtered.
    pub fn has_post_processing(&self) -> bool {
        self.sort_order != SortOrder::None || self.sort_target != SortTarget::Key || self.filters()
    }

    /// Whether every key must be held before the limit applies.
    fn holds_all(&self) -> bool {
        self.sort_order != SortOrder::None || self.filters()
    }

    fn passes(&self, record: &KeyRecord) -> bool {
        let within =
            |value: u64, min: u64, max: u64| (min == 0 || value >= min) && (max == 0 || value <= max);
        within(record.mod_revision, self.min_mod_revision, self.max_mod_revision)
            && within(record.create_revision, self.min_create_revision, self.max_create_revision)
    }

    fn order(&self, a: &(Vec<u8>, KeyRecord), b: &(Vec<u8>, KeyRecord)) -> Ordering {
        match self.sort_target {
            SortTarget::Key => a.0.cmp(&b.0),
            SortTarget::Version => a.1.version.cmp(&b.1.version),
            SortTarget::Create => a.1.create_revision.cmp(&b.1.create_revision),
            SortTarget::Mod => a.1.mod_revision.cmp(&b.1.mod_revision),
            SortTarget::Value => a.1.value.cmp(&b.1.value),
        }
    }

    /// A selector taking keys in key order, for an answer of at most `max_bytes`.
    pub fn selector(self, max_bytes: usize) -> Selector {
        Selector { selection: self, held: Vec::new(), count: 0, bytes: 0, max_bytes }
    }
}

/// Takes a range's keys one at a time, in key order, and answers the read.
#[derive(Debug)]
pub struct Selector {
    selection: Selection,
    held: Vec<(Vec<u8>, KeyRecord)>,
    count: u64,
    bytes: usize,
    max_bytes: usize,
}

impl Selector {
    /// Whether the next key's record is needed, or only counted.
    pub fn wants_more(&self) -> bool {
        let s = &self.selection;
        !s.count_only && (s.holds_all() || s.limit == 0 || (self.held.len() as u64) <= s.limit)
    }

    /// Counts a key the selector did not want the record of (see [`Selector::wants_more`]).
    pub fn count(&mut self) {
        self.count += 1;
    }

    /// Takes the next key of the range.
    pub fn offer(&mut self, key: &[u8], record: KeyRecord) -> Result<(), TooLarge> {
        self.count += 1;
        if !self.wants_more() {
            return Ok(());
        }
        let mut record = record;
        // A sort by value needs the values; they go once sorted.
        if self.selection.keys_only && self.selection.sort_target != SortTarget::Value {
            record.value = Vec::new();
        }
        self.bytes += key.len() + record.value.len();
        if self.bytes > self.max_bytes {
            return Err(TooLarge { max_bytes: self.max_bytes });
        }
        self.held.push((key.to_vec(), record));
        Ok(())
    }

    /// The answer, once every key of the range was offered.
    pub fn finish(self) -> Selected {
        let Selector { selection, mut held, count, .. } = self;
        if selection.filters() {
            held.retain(|(_, record)| selection.passes(record));
        }
        let order = match (selection.sort_order, selection.sort_target) {
            (SortOrder::None, SortTarget::Key) => SortOrder::None,
            (SortOrder::None, _) => SortOrder::Ascend,
            (order, _) => order,
        };
        match order {
            SortOrder::None => {}
            SortOrder::Ascend => held.sort_by(|a, b| selection.order(a, b)),
            SortOrder::Descend => held.sort_by(|a, b| selection.order(b, a)),
        }
        let limit = usize::try_from(selection.limit).unwrap_or(usize::MAX);
        let more = selection.limit > 0 && held.len() > limit;
        if more {
            held.truncate(limit);
        }
        if selection.keys_only {
            held.iter_mut().for_each(|(_, record)| record.value = Vec::new());
        }
        Selected { kvs: held, more, count }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(create: u64, modified: u64, version: u64, value: &str) -> KeyRecord {
        KeyRecord {
            create_revision: create,
            mod_revision: modified,
            version,
            lease: 0,
            value: value.as_bytes().to_vec(),
        }
    }

    /// Keys a..e: a was created first and written most.
    fn range() -> Vec<(&'static str, KeyRecord)> {
        vec![
            ("a", record(1, 9, 5, "v5")),
            ("b", record(2, 2, 1, "z")),
            ("c", record(3, 7, 3, "m")),
            ("d", record(4, 4, 1, "a")),
            ("e", record(5, 8, 2, "q")),
        ]
    }

    fn select(selection: Selection) -> Selected {
        let mut selector = selection.selector(usize::MAX);
        for (key, record) in range() {
            if selector.wants_more() {
                selector.offer(key.as_bytes(), record).expect("fits");
            } else {
                selector.count();
            }
        }
        selector.finish()
    }

    fn keys(selected: &Selected) -> Vec<&str> {
        selected.kvs.iter().map(|(k, _)| std::str::from_utf8(k).expect("text")).collect()
    }

    #[test]
    fn a_limit_keeps_the_first_keys_and_counts_them_all() {
        let selected = select(Selection { limit: 2, ..Default::default() });
        assert_eq!((keys(&selected), selected.more, selected.count), (vec!["a", "b"], true, 5));
        let all = select(Selection { limit: 5, ..Default::default() });
        assert!(!all.more, "a limit the range fits in leaves nothing out");
    }

    #[test]
    fn a_sort_orders_the_whole_range_before_the_limit() {
        let by_mod = Selection {
            sort_order: SortOrder::Descend,
            sort_target: SortTarget::Mod,
            limit: 2,
            ..Default::default()
        };
        assert_eq!(keys(&select(by_mod)), ["a", "e"]);
        let by_value =
            Selection { sort_order: SortOrder::Ascend, sort_target: SortTarget::Value, ..Default::default() };
        assert_eq!(keys(&select(by_value)), ["d", "c", "e", "a", "b"]);
        let reversed = Selection { sort_order: SortOrder::Descend, ..Default::default() };
        assert_eq!(keys(&select(reversed)), ["e", "d", "c", "b", "a"]);
    }

    #[test]
    fn a_target_without_an_order_sorts_ascending_among_the_keys_the_limit_kept() {
        // a, b, c and d kept (the limit and one more), then sorted and cut to the limit.
        let selection = Selection { sort_target: SortTarget::Version, limit: 3, ..Default::default() };
        assert_eq!(keys(&select(selection)), ["b", "d", "c"]);
    }

    #[test]
    fn filters_apply_to_the_answer_not_to_the_count() {
        let selection = Selection { min_mod_revision: 5, max_create_revision: 4, ..Default::default() };
        let selected = select(selection);
        assert_eq!((keys(&selected), selected.count), (vec!["a", "c"], 5));
        let limited = select(Selection { min_create_revision: 2, limit: 2, ..Default::default() });
        assert_eq!((keys(&limited), limited.more), (vec!["b", "c"], true));
    }

    #[test]
    fn count_only_and_keys_only_leave_out_what_they_say() {
        let counted = select(Selection { count_only: true, ..Default::default() });
        assert_eq!((counted.kvs.len(), counted.count, counted.more), (0, 5, false));
        let keys_only = select(Selection { keys_only: true, ..Default::default() });
        assert!(keys_only.kvs.iter().all(|(_, r)| r.value.is_empty()));
        let by_value = Selection {
            keys_only: true,
            sort_order: SortOrder::Ascend,
            sort_target: SortTarget::Value,
            ..Default::default()
        };
        assert_eq!(keys(&select(by_value)), ["d", "c", "e", "a", "b"], "sorted by the values it leaves out");
        assert_eq!(keys_only.kvs[0].1.version, 5, "everything but the value is kept");
    }

    #[test]
    fn an_answer_too_large_is_refused_not_cut() {
        let mut selector = Selection::default().selector(3);
        selector.offer(b"a", record(1, 1, 1, "v")).expect("two bytes fit");
        assert_eq!(selector.offer(b"b", record(2, 2, 1, "v")), Err(TooLarge { max_bytes: 3 }));
    }
}
