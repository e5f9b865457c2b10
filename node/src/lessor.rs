//! When leases expire: time as the leader keeps it. Only the leader keeps time — followers
//! keep none, and nothing about time is replicated — so its deadlines live here, in memory:
//! a lease it has not seen yet (granted, or found on taking the lead) gets its whole TTL from
//! the moment it is seen, so a change of leader only ever extends a lease, never cuts it
//! short; a keep-alive starts the whole TTL again. The leader revokes what expired with an
//! ordinary revoke, which every member applies alike.
//!
//! Free of raft and of any front end: it is told the time, the term and the stored leases.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A lease as the store holds it: its id, the grant it was made by (an id may be granted again
/// after a revoke: that is another lease), and its granted TTL in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub id: i64,
    pub grant: u64,
    pub ttl: i64,
}

#[derive(Debug, Default)]
pub struct Lessor {
    /// The term these deadlines were set in; none while not leading.
    term: Option<u64>,
    /// Per lease id: the grant, its granted TTL, and when it expires.
    leases: HashMap<i64, (u64, i64, Instant)>,
}

fn ttl(seconds: i64) -> Duration {
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

impl Lessor {
    /// Leads in `term` with the `stored` leases. A new term starts every lease's whole TTL
    /// from `now`; a lease not seen before (a new grant, even of a known id) starts its own;
    /// one no longer stored is forgotten.
    pub fn lead(&mut self, term: u64, stored: &[Stored], now: Instant) {
        if self.term != Some(term) {
            self.term = Some(term);
            self.leases.clear();
        }
        let mut leases = HashMap::with_capacity(stored.len());
        for lease in stored {
            let deadline = match self.leases.get(&lease.id) {
                Some((grant, _, deadline)) if *grant == lease.grant => *deadline,
                _ => now + ttl(lease.ttl),
            };
            leases.insert(lease.id, (lease.grant, lease.ttl, deadline));
        }
        self.leases = leases;
    }

    /// No longer leading: the next leader keeps time.
    pub fn follow(&mut self) {
        self.term = None;
        self.leases.clear();
    }

    /// The term it keeps time for, while leading.
    pub fn term(&self) -> Option<u64> {
        self.term
    }

    /// Starts the whole TTL of `stored` (the lease as the store has it now) again from `now`;
    /// its granted TTL, or `None` once it has expired: an expired lease is as good as revoked,
    /// and its revoke may already be on its way (etcd refuses to renew one too).
    pub fn keep_alive(&mut self, stored: Stored, now: Instant) -> Option<i64> {
        if self
            .leases
            .get(&stored.id)
            .is_some_and(|(grant, _, deadline)| *grant == stored.grant && *deadline <= now)
        {
            return None;
        }
        self.leases.insert(stored.id, (stored.grant, stored.ttl, now + ttl(stored.ttl)));
        Some(stored.ttl)
    }

    /// The time `stored` has left, as this leader counts it; a lease granted a moment ago has
    /// its whole TTL left.
    pub fn remaining(&self, stored: Stored, now: Instant) -> Duration {
        match self.leases.get(&stored.id) {
            Some((grant, _, deadline)) if *grant == stored.grant => deadline.saturating_duration_since(now),
            _ => ttl(stored.ttl),
        }
    }

    /// Whether the grant `grant` of lease `id` has expired, as this leader counts it.
    pub fn is_expired(&self, id: i64, grant: u64, now: Instant) -> bool {
        self.leases.get(&id).is_some_and(|(g, _, deadline)| *g == grant && *deadline <= now)
    }

    /// The leases whose time is up, oldest deadline first: (id, grant).
    pub fn expired(&self, now: Instant) -> Vec<(i64, u64)> {
        let mut expired: Vec<(Instant, i64, u64)> = self
            .leases
            .iter()
            .filter(|(_, (_, _, deadline))| *deadline <= now)
            .map(|(id, (grant, _, deadline))| (*deadline, *id, *grant))
            .collect();
        expired.sort();
        expired.into_iter().map(|(_, id, grant)| (id, grant)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: i64, grant: u64, ttl: i64) -> Stored {
        Stored { id, grant, ttl }
    }

    #[test]
    fn a_lease_expires_its_ttl_after_it_was_seen_or_last_kept_alive() {
        let start = Instant::now();
        let mut lessor = Lessor::default();
        lessor.lead(1, &[lease(5, 1, 10)], start);
        assert!(lessor.expired(start + Duration::from_secs(9)).is_empty());
        assert_eq!(lessor.keep_alive(lease(5, 1, 10), start + Duration::from_secs(9)), Some(10));
        assert!(lessor.expired(start + Duration::from_secs(18)).is_empty(), "kept alive at 9: good until 19");
        assert_eq!(lessor.expired(start + Duration::from_secs(19)), [(5, 1)]);
        assert_eq!(
            lessor.remaining(lease(5, 1, 10), start + Duration::from_secs(14)),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn an_expired_lease_is_not_kept_alive() {
        let start = Instant::now();
        let mut lessor = Lessor::default();
        lessor.lead(1, &[lease(5, 1, 10)], start);
        let late = start + Duration::from_secs(10);
        assert!(lessor.is_expired(5, 1, late));
        assert_eq!(lessor.keep_alive(lease(5, 1, 10), late), None, "its revoke may be on its way");
        assert!(lessor.is_expired(5, 1, late), "still expired");
    }

    #[test]
    fn a_new_leader_gives_every_lease_its_whole_ttl_again() {
        let start = Instant::now();
        let mut lessor = Lessor::default();
        lessor.lead(1, &[lease(5, 1, 10)], start);
        lessor.follow();
        assert!(lessor.term().is_none() && lessor.expired(start + Duration::from_secs(60)).is_empty());
        let later = start + Duration::from_secs(8);
        lessor.lead(2, &[lease(5, 1, 10)], later);
        assert!(
            lessor.expired(later + Duration::from_secs(9)).is_empty(),
            "never early because of the failover"
        );
        assert_eq!(lessor.expired(later + Duration::from_secs(10)), [(5, 1)]);
    }

    #[test]
    fn leases_come_and_go_with_the_store_and_a_new_grant_of_an_id_is_a_new_lease() {
        let start = Instant::now();
        let mut lessor = Lessor::default();
        lessor.lead(1, &[lease(5, 1, 10)], start);
        lessor.lead(1, &[lease(5, 1, 10), lease(6, 2, 1)], start + Duration::from_secs(5));
        assert_eq!(
            lessor.expired(start + Duration::from_secs(6)),
            [(6, 2)],
            "a new lease counts from when it was seen"
        );
        // Lease 5 revoked and granted again: its old deadline is not the new grant's.
        lessor.lead(1, &[lease(5, 3, 10)], start + Duration::from_secs(9));
        assert!(lessor.expired(start + Duration::from_secs(18)).is_empty());
        assert!(!lessor.is_expired(5, 1, start + Duration::from_secs(30)), "the old grant is gone");
        assert!(lessor.is_expired(5, 3, start + Duration::from_secs(19)));
    }
}
