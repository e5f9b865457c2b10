//! Keys and key ranges as etcd names them: a `key`, and a `range_end` that is empty for `key`
//! alone, `[0]` for every key from `key` on, and otherwise the end of `[key, range_end)`.

use serde::{Deserialize, Serialize};

/// The keys a watch (or a delete, a compare) names, owned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRange {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

impl KeyRange {
    /// Every key that starts with `prefix` (every key at all for an empty one).
    pub fn prefix(prefix: &[u8]) -> Self {
        let mut end = prefix.to_vec();
        while let Some(last) = end.pop() {
            if last < u8::MAX {
                end.push(last + 1);
                return Self { key: prefix.to_vec(), range_end: end };
            }
        }
        // No key after them all: every key from the prefix on.
        let key = if prefix.is_empty() { vec![0] } else { prefix.to_vec() };
        Self { key, range_end: vec![0] }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        Span::of(&self.key, &self.range_end).contains(key)
    }
}

/// The `[start, end)` interval a key and range end name (`None`: no end, every key from `start`
/// on). A single key `k` is `[k, k\0)`: no key lies between the two.
pub fn interval(key: &[u8], range_end: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    match range_end {
        [] => {
            let mut end = key.to_vec();
            end.push(0);
            (key.to_vec(), Some(end))
        }
        [0] => (key.to_vec(), None),
        end => (key.to_vec(), Some(end.to_vec())),
    }
}

/// The keys a key and range end name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Span<'a> {
    One(&'a [u8]),
    /// `[start, end)`, or every key from `start` on when `end` is `None`.
    Range(&'a [u8], Option<&'a [u8]>),
}

impl<'a> Span<'a> {
    pub(crate) fn of(key: &'a [u8], range_end: &'a [u8]) -> Self {
        match range_end {
            [] => Span::One(key),
            [0] => Span::Range(key, None),
            end => Span::Range(key, Some(end)),
        }
    }

    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        match *self {
            Span::One(one) => one == key,
            Span::Range(start, end) => start <= key && end.is_none_or(|end| key < end),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_end_names_one_key_every_key_from_one_or_an_interval() {
        let one = KeyRange { key: b"a".to_vec(), range_end: vec![] };
        assert!(one.contains(b"a") && !one.contains(b"ab"));
        let from = KeyRange { key: b"b".to_vec(), range_end: vec![0] };
        assert!(from.contains(b"b") && from.contains(b"\xff\xff") && !from.contains(b"a"));
        let interval = KeyRange { key: b"b".to_vec(), range_end: b"d".to_vec() };
        assert!(interval.contains(b"c") && !interval.contains(b"d"));
    }

    #[test]
    fn a_prefix_covers_exactly_the_keys_that_start_with_it() {
        let app = KeyRange::prefix(b"app/");
        assert_eq!(app.range_end, b"app0");
        assert!(app.contains(b"app/x") && !app.contains(b"app0") && !app.contains(b"apo"));
        let high = KeyRange::prefix(b"\xff\xff");
        assert!(high.contains(b"\xff\xff\x01") && !high.contains(b"\xff\xfe"));
        let all = KeyRange::prefix(b"");
        assert!(all.contains(b"\x00") && all.contains(b"anything"));
    }
}
