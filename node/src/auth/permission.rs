//! Permissions on keys as etcd grants them to roles: read, write or both, on one key, on the
//! range `[key, range_end)`, or on every key from `key` on; and whether a user's grants cover
//! every key a request names.

use serde::{Deserialize, Serialize};

use crate::engine::interval;

/// What a request does to the keys it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// What a permission allows, with etcd's numbering (`authpb.Permission.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PermissionKind {
    Read,
    Write,
    ReadWrite,
}

impl PermissionKind {
    pub fn allows(self, access: Access) -> bool {
        matches!(
            (self, access),
            (PermissionKind::ReadWrite, _)
                | (PermissionKind::Read, Access::Read)
                | (PermissionKind::Write, Access::Write)
        )
    }
}

/// A grant of `kind` on the keys `key` and `range_end` name (etcd's convention: an empty end
/// for `key` alone, `[0]` for every key from `key` on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    pub kind: PermissionKind,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
}

/// Whether the union of `grants` (key and range end each) covers every key that `key` and
/// `range_end` name. A range written backwards names no key to read or write; it is checked as
/// `key` alone, so that it never passes where the key itself would not.
pub fn covers<'a>(
    grants: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    key: &[u8],
    range_end: &[u8],
) -> bool {
    // No key is empty: a range from "" starts at the first key there can be, "\0" (etcd's
    // grant of every key, `--from-key ''`, is stored from there).
    let key = if key.is_empty() && !range_end.is_empty() { &[0u8][..] } else { key };
    let (start, end) = match interval(key, range_end) {
        (start, Some(end)) if end <= start => interval(key, &[]),
        wanted => wanted,
    };
    let mut granted: Vec<_> = grants
        .into_iter()
        .map(|(k, e)| interval(k, e))
        .filter(|(s, e)| e.as_ref().is_none_or(|e| s < e))
        .collect();
    granted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    // Every key in [start, reached) is covered; sweep the grants in order of their starts.
    let mut reached = start;
    for (s, e) in granted {
        if s > reached {
            // A gap at `reached`: no later grant starts before it either.
            return false;
        }
        match e {
            None => return true,
            Some(e) if e > reached => reached = e,
            Some(_) => {}
        }
        if end.as_ref().is_some_and(|end| reached >= *end) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn grants(list: &[(&[u8], &[u8])]) -> Vec<(Vec<u8>, Vec<u8>)> {
        list.iter().map(|(k, e)| (k.to_vec(), e.to_vec())).collect()
    }

    fn covered(list: &[(Vec<u8>, Vec<u8>)], key: &[u8], end: &[u8]) -> bool {
        covers(list.iter().map(|(k, e)| (k.as_slice(), e.as_slice())), key, end)
    }

    #[test]
    fn a_key_is_covered_by_itself_by_a_range_holding_it_and_by_a_range_from_below() {
        assert!(covered(&grants(&[(b"a", b"")]), b"a", b""));
        assert!(!covered(&grants(&[(b"a", b"")]), b"ab", b""));
        assert!(covered(&grants(&[(b"a", b"c")]), b"b", b""));
        assert!(!covered(&grants(&[(b"a", b"c")]), b"c", b""));
        assert!(covered(&grants(&[(b"a", b"\0")]), b"zzz", b""));
        assert!(!covered(&grants(&[]), b"a", b""));
    }

    #[test]
    fn a_range_needs_grants_without_a_gap_from_its_start_to_its_end() {
        let two = grants(&[(b"a", b"c"), (b"c", b"e")]);
        assert!(covered(&two, b"a", b"e"));
        assert!(covered(&two, b"b", b"d"));
        assert!(!covered(&two, b"a", b"f"));
        assert!(!covered(&two, b"a", b"\0"), "every key from a on reaches past e");
        let gap = grants(&[(b"a", b"c"), (b"d", b"e")]);
        assert!(!covered(&gap, b"a", b"e"), "c..d is not granted");
        // A single key's grant ends just after it: it does not reach the keys that follow.
        assert!(!covered(&grants(&[(b"a", b""), (b"b", b"c")]), b"a", b"c"));
        assert!(covered(&grants(&[(b"a", b""), (b"a\0", b"c")]), b"a", b"c"));
        assert!(covered(&grants(&[(b"", b"\0")]), b"", b"\0"), "every key");
        assert!(covered(&grants(&[(b"\0", b"\0")]), b"", b"\0"), "every key, as etcdctl grants it");
        assert!(covered(&grants(&[(b"\0", b"\0")]), b"", b"b"));
    }

    #[test]
    fn a_range_written_backwards_is_checked_as_its_key() {
        assert!(!covered(&grants(&[(b"x", b"")]), b"b", b"a"));
        assert!(covered(&grants(&[(b"b", b"")]), b"b", b"a"));
    }

    /// Keys over a small alphabet that includes the bytes ranges turn on (0, the end of a single
    /// key's interval; 0xff), short enough that a model can list them.
    fn key() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop::sample::select(vec![0u8, 1, 2, 0xff]), 0..3)
    }

    fn range_end() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![Just(Vec::new()), Just(vec![0]), key()]
    }

    fn universe() -> Vec<Vec<u8>> {
        let alphabet = [0u8, 1, 2, 0xff];
        // No key is empty; the empty string only seeds the longer ones.
        let mut keys = vec![Vec::new()];
        for len in 1..=3 {
            let mut next = Vec::new();
            for k in keys.iter().filter(|k| k.len() == len - 1) {
                for b in alphabet {
                    let mut k = k.clone();
                    k.push(b);
                    next.push(k);
                }
            }
            keys.extend(next);
        }
        keys.retain(|k| !k.is_empty());
        keys
    }

    fn names(key: &[u8], range_end: &[u8], candidate: &[u8]) -> bool {
        crate::engine::KeyRange { key: key.to_vec(), range_end: range_end.to_vec() }.contains(candidate)
    }

    proptest! {
        /// No request passes that names a key outside every grant: whatever the grants, each
        /// key the request names (among all short keys) lies in one of them.
        #[test]
        fn nothing_outside_the_grants_is_ever_covered(
            list in prop::collection::vec((key(), range_end()), 0..5),
            key in key(),
            end in range_end(),
        ) {
            if covered(&list, &key, &end) {
                for candidate in universe() {
                    if names(&key, &end, &candidate) {
                        prop_assert!(
                            list.iter().any(|(k, e)| names(k, e, &candidate)),
                            "{candidate:?} is named by the request and by no grant"
                        );
                    }
                }
            }
        }

        /// And every request within a single grant passes.
        #[test]
        fn a_request_within_one_grant_is_covered(
            list in prop::collection::vec((key(), range_end()), 1..5),
            pick in any::<prop::sample::Index>(),
            key in key(),
            end in range_end(),
        ) {
            let (gk, ge) = pick.get(&list).clone();
            let (start, stop) = interval(&key, &end);
            let (gstart, gstop) = interval(&gk, &ge);
            let names_some_key = stop.as_ref().is_none_or(|s| *s > start);
            let inside = names_some_key
                && start >= gstart
                && match (&stop, &gstop) {
                    (_, None) => true,
                    (Some(s), Some(g)) => s <= g,
                    (None, Some(_)) => false,
                };
            if inside {
                prop_assert!(covered(&list, &key, &end));
            }
        }
    }
}
