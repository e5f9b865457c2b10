//! The cluster's id: one number every member of a cluster reports (etcd's cluster id, in every
//! response header), and no other cluster does unless it was made from the same start.
//!
//! It is state-machine data, so it is replicated as the data is: each member derives it from the
//! first entry of the log (the initial membership, identical wherever it is applied), a member
//! that catches up from a snapshot receives it in the snapshot's header, and a restore gives
//! the new cluster its own, derived from the snapshot it starts from and its new members.
//! A cluster made before ids existed has none stored and reports [`LEGACY_CLUSTER_ID`] on
//! every member, as all of them did then.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rocksdb::{ReadOptions, DB};
use sha2::{Digest, Sha256};

use super::codec::{self, encode};
use super::{cf, StoreError, CF_SM};
use crate::types::{LogId, Member, NodeId};

/// What every member of a cluster made before cluster ids reports.
pub const LEGACY_CLUSTER_ID: u64 = 0x6d65_7461_5374_6f72;

/// The id of the cluster whose first log entry, `first`, set `members` as the membership.
pub(crate) fn of_first_entry<N: serde::Serialize>(first: &LogId, members: &N) -> Result<u64, StoreError> {
    Ok(digest(&[b"metaStore cluster", &encode(first)?, &encode(members)?]))
}

/// The id of a cluster restored from the sealed snapshot whose checksum is `snapshot`, with
/// `members`: every member restored from the same file into the same membership agrees on it.
pub(crate) fn of_restore(snapshot: &[u8], members: &BTreeMap<NodeId, Member>) -> Result<u64, StoreError> {
    Ok(digest(&[b"metaStore restored cluster", snapshot, &encode(members)?]))
}

/// The first eight bytes of the SHA-256 of `parts`, each length-prefixed; never 0, which
/// means "none" where ids are stored.
fn digest(parts: &[&[u8]]) -> u64 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    let hash = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    u64::from_be_bytes(first).max(1)
}

/// The id stored in `db`, if any.
pub(crate) fn read(db: &DB) -> Result<Option<u64>, StoreError> {
    db.get_pinned_cf_opt(cf(db, CF_SM)?, codec::CLUSTER_ID, &ReadOptions::default())?
        .map(|bytes| codec::decode_u64(&bytes, "cluster id"))
        .transpose()
}

/// The cluster id as this member's store holds it, shared between the state machine (which
/// sets it) and whoever answers clients (who read it on every response, so never from disk).
#[derive(Debug, Clone, Default)]
pub struct ClusterId(Arc<AtomicU64>);

impl ClusterId {
    /// Loaded from `db`; [`LEGACY_CLUSTER_ID`]'s absence (0) until a first entry or a snapshot
    /// sets one.
    pub(crate) fn load(db: &DB) -> Result<Self, StoreError> {
        let id = Self::default();
        id.refresh(db)?;
        Ok(id)
    }

    /// Reads the id from `db` again: after an apply that may have set it, or an install.
    pub(crate) fn refresh(&self, db: &DB) -> Result<(), StoreError> {
        self.0.store(read(db)?.unwrap_or(0), Ordering::Relaxed);
        Ok(())
    }

    /// The cluster's id: the stored one, or [`LEGACY_CLUSTER_ID`] where none is.
    pub fn get(&self) -> u64 {
        match self.0.load(Ordering::Relaxed) {
            0 => LEGACY_CLUSTER_ID,
            id => id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(urls: &[&str]) -> BTreeMap<NodeId, Member> {
        urls.iter()
            .enumerate()
            .map(|(i, url)| (i as u64 + 1, Member { peer_url: url.to_string(), ..Member::default() }))
            .collect()
    }

    #[test]
    fn clusters_started_alike_agree_and_others_differ() {
        let first = LogId::new(openraft::impls::leader_id_adv::LeaderId { term: 0, node_id: 0 }, 0);
        let three = members(&["http://a:1", "http://b:1", "http://c:1"]);
        let one = of_first_entry(&first, &three).expect("id");
        assert_eq!(one, of_first_entry(&first, &three.clone()).expect("id"));
        assert_ne!(one, of_first_entry(&first, &members(&["http://a:1"])).expect("id"));
    }

    #[test]
    fn a_restore_differs_from_its_origin_and_from_other_restores() {
        let three = members(&["http://a:1", "http://b:1", "http://c:1"]);
        let restored = of_restore(&[7; 32], &three).expect("id");
        assert_eq!(restored, of_restore(&[7; 32], &three).expect("id"));
        assert_ne!(restored, of_restore(&[8; 32], &three).expect("id"));
        assert_ne!(restored, of_restore(&[7; 32], &members(&["http://a:1"])).expect("id"));
    }
}
