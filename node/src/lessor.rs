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

#[derive(Debug, Default)]
pub struct Lessor {
    /// The term these deadlines were set in; none while not leading.
    term: Option<u64>,
    /// Per lease: its granted TTL in seconds, and when it expires.
    leases: HashMap<i64, (i64, Instant)>,
}

fn ttl(seconds: i64) -> Duration {
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

impl Lessor {
    /// Leads in `term` with `stored` (id, granted TTL) leases. A new term starts every lease's
    /// whole TTL from `now`; a lease not seen before starts its own; one no longer stored is
    /// forgotten.
    pub fn lead(&mut self, term: u64, stored: &[(i64, i64)], now: Instant) {
        if self.term != Some(term) {
            self.term = Some(term);
            self.leases.clear();
        }
        let mut leases = HashMap::with_capacity(stored.len());
        for (id, granted) in stored {
            let deadline = match self.leases.get(id) {
                Some((_, deadline)) => *deadline,
                None => now + ttl(*granted),
            };
            leases.insert(*id, (*granted, deadline));
        }
        self.leases = leases;
    }

    /// No longer leading: the next leader keeps time.
    pub fn follow(&mut self) {
        self.term = None;
        self.leases.clear();
    }

    pub fn leads(&self) -> bool {
        self.term.is_some()
    }

    /// Starts lease `id`'s whole TTL again from `now`; its granted TTL, or `None` for a lease
    /// this leader does not know. `stored`: its granted TTL if the store has it (a grant this
    /// leader has not seen yet).
    pub fn keep_alive(&mut self, id: i64, stored: Option<i64>, now: Instant) -> Option<i64> {
        let granted = self.leases.get(&id).map(|(granted, _)| *granted).or(stored)?;
        self.leases.insert(id, (granted, now + ttl(granted)));
        Some(granted)
    }

    /// Lease `id`'s granted TTL and the time it has left, as this leader counts it; a lease
    /// granted a moment ago (`stored`) has its whole TTL left.
    pub fn remaining(&self, id: i64, stored: Option<i64>, now: Instant) -> Option<(i64, Duration)> {
        match self.leases.get(&id) {
            Some((granted, deadline)) => Some((*granted, deadline.saturating_duration_since(now))),
            None => stored.map(|granted| (granted, ttl(granted))),
        }
    }

    /// Lease `id` is gone from the store (revoked): no more time for it.
    pub fn forget(&mut self, id: i64) {
        self.leases.remove(&id);
    }

    /// The leases whose time is up, oldest deadline first.
    pub fn expired(&self, now: Instant) -> Vec<i64> {
        let mut expired: Vec<(Instant, i64)> = self
            .leases
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(id, (_, d))| (*d, *id))
            .collect();
        expired.sort();
        expired.into_iter().map(|(_, id)| id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_expires_its_ttl_after_it_was_seen_or_last_kept_alive() {
        let start = Instant::now();
        let mut lessor = Lessor::default();
        lessor.lead(1, &[(5, 10)], start);
        assert!(lessor.expired(start + Duration::from_secs(9)).is_empty());
        assert_eq!(lessor.keep_alive(5, None, start + Duration::from_secs(9)), Some(10));
        assert!(lessor.expired(start + Duration::from_secs(18)).is_empty(), "kept alive at 9: good until 19");
        assert_eq!(lessor.expired(start + Duration::from_secs(19)), [5]);
        let (granted, left) = lessor.remaining(5, None, start + Duration::from_secs(14)).expect("known");
        assert_eq!((granted, left), (10, Duration::from_secs(5)));
    }

    #[test]
    fn a_new_leader_gives_every_lease_its_whole_ttl_again() {
        let start = Instant::now();
        let mut lessor = Lessor::default();
        lessor.lead(1, &[(5, 10)], start);
        lessor.follow();
        assert!(
            !lessor.leads() && lessor.expired(start + Duration::from_secs(60)).is_empty(),
            "followers keep no time"
        );
        let later = start + Duration::from_secs(8);
        lessor.lead(2, &[(5, 10)], later);
        assert!(
            lessor.expired(later + Duration::from_secs(9)).is_empty(),
            "never early because of the failover"
        );
        assert_eq!(lessor.expired(later + Duration::from_secs(10)), [5]);
    }

    #[test]
    fn leases_come_and_go_with_the_store() {
        let start = Instant::now();
        let mut lessor = Lessor::default();
        lessor.lead(1, &[(5, 10)], start);
        lessor.lead(1, &[(5, 10), (6, 1)], start + Duration::from_secs(5));
        assert_eq!(
            lessor.expired(start + Duration::from_secs(6)),
            [6],
            "a new lease counts from when it was seen"
        );
        lessor.lead(1, &[(6, 1)], start + Duration::from_secs(6));
        assert_eq!(lessor.remaining(5, None, start), None, "revoked");
        assert_eq!(lessor.keep_alive(9, None, start), None, "unknown");
        assert_eq!(lessor.keep_alive(9, Some(3), start), Some(3), "granted a moment ago");
    }
}
