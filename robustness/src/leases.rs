//! Leases under faults. Holders each grant a short lease, attach a key to it, keep it alive
//! for a while through any member, then let it go and watch the key. The key must not vanish
//! before the lease's TTL has passed since the last keep-alive the holder sent and saw
//! acknowledged (or since it asked for the grant, before any), whatever the nemesis does to
//! the leader; and once let go, it must vanish. (That it vanishes exactly once, with every
//! member agreeing, the watchers check: their streams are the committed history.)

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::member::{Failure, Member, Protocol};

/// Each lease's TTL, in seconds: short, so that many expire in a run.
const TTL: i64 = 3;
/// How long a let-go key may take to vanish beyond its TTL, faults and elections included.
const GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Clone, Serialize)]
pub struct LeaseReport {
    pub leases: usize,
    /// Of the leases, those held through etcd's gRPC API.
    pub grpc_leases: usize,
    pub keep_alives: usize,
    /// Let go and seen gone.
    pub expired: usize,
    pub violations: Vec<String>,
}

pub struct Holder {
    pub id: usize,
    /// The members, all in the protocol this holder speaks.
    pub members: Vec<Member>,
    pub seed: u64,
    pub report: Arc<Mutex<LeaseReport>>,
}

impl Holder {
    fn note(&self, change: impl FnOnce(&mut LeaseReport)) {
        if let Ok(mut report) = self.report.lock() {
            change(&mut report);
        }
    }

    fn member(&self, rng: &mut StdRng) -> &Member {
        &self.members[rng.random_range(0..self.members.len())]
    }

    /// Holds leases one after another until `stop` says so.
    pub async fn run(self, stop: tokio::sync::watch::Receiver<bool>) {
        let mut rng = StdRng::seed_from_u64(self.seed.wrapping_add(self.id as u64 * 104_729));
        let mut round = 0u64;
        while !*stop.borrow() {
            round += 1;
            let asked = Instant::now();
            let Ok(lease) = self.member(&mut rng).lease_grant(TTL).await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let grpc = self.members.first().map(Member::protocol) == Some(Protocol::Grpc);
            self.note(|r| {
                r.leases += 1;
                r.grpc_leases += usize::from(grpc);
            });
            let key = format!("lease/{}-{round}", self.id);
            if self.member(&mut rng).put(&key, b"held".to_vec(), lease).await.is_err() {
                // Perhaps written, perhaps not: it is left to expire, unjudged.
                continue;
            }
            // The lease's time counts from no earlier than each acknowledged keep-alive's sending.
            let mut since = asked;
            let hold = Duration::from_millis(rng.random_range(0..6_000));
            let held = Instant::now();
            while held.elapsed() < hold && !*stop.borrow() {
                tokio::time::sleep(Duration::from_millis(700)).await;
                let sent = Instant::now();
                match self.member(&mut rng).lease_keep_alive(lease).await {
                    Ok(_) => {
                        since = sent;
                        self.note(|r| r.keep_alives += 1);
                    }
                    // Gone. Judged by when the answer came, not when the keep-alive was sent:
                    // one held up (by a partition, say) may reach the leader after the TTL has
                    // rightly run out. Only an answer before then proves the lease cut short.
                    Err(Failure::LeaseNotFound) => {
                        let answered = Instant::now();
                        let deadline = since + Duration::from_secs(TTL as u64);
                        if answered < deadline {
                            let left = deadline - answered;
                            self.note(|r| {
                                r.violations
                                    .push(format!("{key}'s lease was gone with {left:?} of its TTL left"))
                            });
                        }
                        break;
                    }
                    Err(_) => {}
                }
            }
            self.let_go(&key, since, &stop, &mut rng).await;
        }
    }

    /// Reads `key` until it is gone, judging when it went.
    async fn let_go(
        &self,
        key: &str,
        since: Instant,
        stop: &tokio::sync::watch::Receiver<bool>,
        rng: &mut StdRng,
    ) {
        let earliest = since + Duration::from_secs(TTL as u64);
        loop {
            let read = self.member(rng).get(key).await;
            let answered = Instant::now();
            if let Ok(None) = read {
                if answered < earliest {
                    let early = earliest - answered;
                    self.note(|r| {
                        r.violations
                            .push(format!("{key} was gone {early:?} before its lease's TTL had passed"))
                    });
                } else {
                    self.note(|r| r.expired += 1);
                }
                return;
            }
            if answered > earliest + GRACE {
                if !*stop.borrow() {
                    self.note(|r| r.violations.push(format!("{key} outlived its lease by {GRACE:?}")));
                }
                return;
            }
            if *stop.borrow() && answered > earliest {
                // The run is over: the healed cluster's expiry is not waited for.
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
