//! The leader's lease on linearizable reads.
//!
//! A read index costs a heartbeat round to a quorum ([`crate::service`]). But a confirmation
//! proves more than that this member led when it ended: openraft's followers refuse to vote for
//! anyone for `election_timeout_max` after they last heard from their leader, and a member
//! counts that from its start when it restarts. So no other leader can be elected until
//! `election_timeout_max` after the confirmation *began*. Until then this leader's commit index
//! is the cluster's: every write it acknowledged is committed here, and every entry of an
//! earlier term lies at or below the confirmation's read index.
//!
//! The lease runs for `election_timeout_min` from that beginning, leaving a third of the
//! followers' lease for clocks that run at different rates. Clocks need not agree, only advance
//! alike; a process paused by a signal or a scheduler stall still sees its monotonic clock move
//! on. A virtual machine that can be frozen whole cannot promise that; run it with
//! `--linearizable-reads read-index`.
//!
//! A lease is used by [`ReadLease::confirm`], which judges it inside openraft's core task — the
//! one that also decides votes — so "still the leader of the same term, under the same
//! membership, and the lease has not run out" is true at one instant, after the read began.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openraft::{LogId, ServerState};

use crate::types::{NodeId, Raft};

/// What a leadership confirmation proved, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    term: u64,
    /// The effective membership the confirmation's quorum was counted in.
    membership: Option<LogId<NodeId>>,
    /// The confirmation's read index: at least the first entry of `term`.
    read_index: u64,
    expires: Instant,
    /// Past this, reads still use the lease but a new confirmation is started.
    renew_after: Instant,
}

pub struct ReadLease {
    /// `None` when lease reads are turned off.
    length: Option<Duration>,
    held: Mutex<Option<Lease>>,
    renewing: AtomicBool,
}

impl ReadLease {
    /// A lease of `length` per confirmation, or none at all.
    pub fn new(length: Option<Duration>) -> Self {
        Self { length, held: Mutex::new(None), renewing: AtomicBool::new(false) }
    }

    /// The lease held now, if one is.
    pub fn current(&self) -> Option<Lease> {
        let held = *self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.filter(|lease| Instant::now() < lease.expires)
    }

    /// Records what a confirmation that `began` before any of its heartbeats were sent proved:
    /// a leader of `term` under `membership`, reads at or after `read_index`.
    pub fn record(&self, began: Instant, term: u64, membership: Option<LogId<NodeId>>, read_index: u64) {
        let Some(length) = self.length else { return };
        let lease =
            Lease { term, membership, read_index, expires: began + length, renew_after: began + length / 2 };
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_none_or(|h| h.expires < lease.expires) {
            *held = Some(lease);
        }
    }

    /// The read index `lease` grants now, if it still holds: this member is still the leader
    /// of its term, under its membership, and it has not run out. The answer is at least the
    /// commit index, so a read that waits for it reflects every acknowledged write.
    pub async fn confirm(&self, raft: &Raft, lease: Lease) -> Option<u64> {
        let judged = raft
            .with_raft_state(move |st| {
                let holds = st.server_state == ServerState::Leader
                    && st.vote_ref().leader_id().get_term() == lease.term
                    && *st.membership_state.effective().log_id() == lease.membership
                    && Instant::now() < lease.expires;
                holds.then(|| lease.read_index.max(st.committed.map_or(0, |id| id.index)))
            })
            .await;
        judged.ok().flatten()
    }

    /// True once for a lease past its renewal time, until [`ReadLease::renewed`]: the caller
    /// then starts one confirmation, so that reads keep a lease without waiting for one.
    pub fn start_renewal(&self, lease: &Lease) -> bool {
        Instant::now() >= lease.renew_after
            && self.renewing.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// The renewal started by [`ReadLease::start_renewal`] ended, well or not.
    pub fn renewed(&self) {
        self.renewing.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn membership() -> Option<LogId<NodeId>> {
        Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), 1))
    }

    #[test]
    fn a_lease_runs_from_the_beginning_of_its_confirmation() {
        let lease = ReadLease::new(Some(Duration::from_millis(300)));
        lease.record(Instant::now() - Duration::from_millis(301), 2, membership(), 7);
        assert_eq!(lease.current(), None, "a confirmation that began 301 ms ago proves nothing now");
        lease.record(Instant::now(), 2, membership(), 9);
        assert_eq!(lease.current().map(|l| l.read_index), Some(9));
    }

    #[test]
    fn an_older_confirmation_never_replaces_a_newer_lease() {
        let lease = ReadLease::new(Some(Duration::from_millis(300)));
        let now = Instant::now();
        lease.record(now, 2, membership(), 9);
        lease.record(now - Duration::from_millis(100), 2, membership(), 5);
        assert_eq!(lease.current().map(|l| l.read_index), Some(9));
    }

    #[test]
    fn without_a_length_nothing_is_ever_held() {
        let lease = ReadLease::new(None);
        lease.record(Instant::now(), 2, membership(), 9);
        assert_eq!(lease.current(), None);
    }

    #[test]
    fn one_renewal_at_a_time_and_only_past_half_the_lease() {
        let lease = ReadLease::new(Some(Duration::from_millis(300)));
        lease.record(Instant::now(), 2, membership(), 9);
        let fresh = lease.current().expect("just recorded");
        assert!(!lease.start_renewal(&fresh), "a fresh lease needs no renewal");

        let aging = ReadLease::new(Some(Duration::from_millis(300)));
        aging.record(Instant::now() - Duration::from_millis(200), 3, membership(), 9);
        let old = aging.current().expect("100 ms left");
        assert!(aging.start_renewal(&old));
        assert!(!aging.start_renewal(&old), "one renewal is already running");
        aging.renewed();
        assert!(aging.start_renewal(&old));
    }
}
