//! Leases as clients use them, on any member: grant and revoke are writes through raft;
//! keep-alive and time-to-live go to the leader, which alone keeps time ([`crate::lessor`]);
//! and the leader revokes what expired ([`run`]).

use std::time::{Duration, Instant};

use super::{forward, Need, ReadConsistency, Service, ServiceError};
use crate::auth::{Access, Caller};
use crate::engine::{LeaseRecord, Write, WriteError, MAX_LEASE_TTL};
use crate::lessor::Stored;
use crate::network::wire::{ForwardError, ForwardRequest, ForwardResponse};

/// Shortest TTL a lease is granted: shorter ones are raised to it (etcd does the same), so a
/// lease outlives an election.
pub const MIN_LEASE_TTL: i64 = 2;
/// How often the leader looks for expired leases.
const TICK: Duration = Duration::from_millis(250);
/// Expired leases revoked per tick, at most: a burst of expiries never crowds out writes.
const REVOKES_PER_TICK: usize = 64;

/// A lease as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseStatus {
    pub id: i64,
    pub granted_ttl: i64,
    /// Seconds left, as the leader counts them.
    pub ttl: i64,
    pub keys: Vec<Vec<u8>>,
}

impl Service {
    /// Grants a lease of `ttl` seconds (at least [`MIN_LEASE_TTL`]) with id `id`, or one
    /// chosen here when `id` is 0. Answers the id, the TTL granted and the store's revision.
    #[tracing::instrument(skip(self), fields(member = self.id()))]
    pub async fn lease_grant(
        &self,
        caller: Option<&Caller>,
        id: i64,
        ttl: i64,
    ) -> Result<(i64, i64, u64), ServiceError> {
        self.authorize(caller, Need::User).await?;
        if id < 0 {
            return Err(ServiceError::Invalid(format!("a lease id is positive, not {id}")));
        }
        if ttl > MAX_LEASE_TTL {
            return Err(ServiceError::Invalid(format!(
                "too large lease TTL: {ttl} s, the most is {MAX_LEASE_TTL}"
            )));
        }
        let ttl = ttl.max(MIN_LEASE_TTL);
        // Random ids: members choose them without asking one another. One taken by chance is
        // chosen again; one the client chose is its to see refused.
        let mut attempts = if id == 0 { 3 } else { 1 };
        loop {
            let chosen = if id == 0 { (rand::random::<u64>() >> 1).max(1) as i64 } else { id };
            let grant = rand::random::<u64>();
            match self.write(caller, Write::LeaseGrant { id: chosen, ttl, grant }).await {
                Ok(written) => return Ok((chosen, ttl, written.revision)),
                Err(ServiceError::Write(WriteError::LeaseExists(_))) if attempts > 1 => attempts -= 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Revokes lease `id`, deleting its keys at one revision; answers the store's revision.
    #[tracing::instrument(skip(self), fields(member = self.id()))]
    pub async fn lease_revoke(&self, caller: Option<&Caller>, id: i64) -> Result<u64, ServiceError> {
        Ok(self.write(caller, Write::LeaseRevoke { id }).await?.revision)
    }

    /// Starts lease `id`'s TTL again; answers its granted TTL.
    #[tracing::instrument(level = "debug", skip(self), fields(member = self.id()))]
    pub async fn lease_keep_alive(&self, caller: Option<&Caller>, id: i64) -> Result<i64, ServiceError> {
        // Keeping a lease alive keeps its keys: only for a caller who may write them.
        self.authorize_lease(caller, id, Access::Write).await?;
        match self.execute(ForwardRequest::LeaseKeepAlive(id)).await? {
            ForwardResponse::LeaseKept(Some(granted)) => Ok(granted),
            ForwardResponse::LeaseKept(None) => Err(ServiceError::Write(WriteError::LeaseNotFound(id))),
            other => Err(forward::unexpected(other)),
        }
    }

    /// Lease `id` as the leader counts it, with its keys when `keys` asks for them.
    pub async fn lease_time_to_live(
        &self,
        caller: Option<&Caller>,
        id: i64,
        keys: bool,
    ) -> Result<LeaseStatus, ServiceError> {
        self.authorize(caller, Need::User).await?;
        let (granted_ttl, left) = match self.execute(ForwardRequest::LeaseTimeToLive(id)).await? {
            ForwardResponse::LeaseRemaining(Some(remaining)) => remaining,
            ForwardResponse::LeaseRemaining(None) => {
                return Err(ServiceError::Write(WriteError::LeaseNotFound(id)))
            }
            other => return Err(forward::unexpected(other)),
        };
        let keys = if keys {
            // As of the leader's answer at least: not keys a revoke already took away.
            self.await_freshness(ReadConsistency::Linearizable).await?;
            self.authorize_lease(caller, id, Access::Read).await?;
            self.reader().lease_keys(id).await?
        } else {
            Vec::new()
        };
        // Rounded up, as etcd reports it: a lease with time left never reads as 0.
        let ttl = left.div_ceil(1000) as i64;
        Ok(LeaseStatus { id, granted_ttl, ttl, keys })
    }

    /// Every lease, as this member's store holds them: for a caller who may read every key
    /// attached to them.
    pub async fn leases(&self, caller: Option<&Caller>) -> Result<Vec<(i64, LeaseRecord)>, ServiceError> {
        self.authorize(caller, Need::User).await?;
        let leases = self.reader().leases().await?;
        for (id, _) in &leases {
            self.authorize_lease(caller, *id, Access::Read).await?;
        }
        Ok(leases)
    }

    /// A keep-alive here, as the leader. Leadership is confirmed and everything committed
    /// applied first, as for a linearizable read: a leader cut off and already replaced must
    /// not acknowledge a keep-alive the new leader never hears of, and a new leader must not
    /// call a lease it has yet to apply unknown.
    pub(super) async fn keep_alive_here(&self, id: i64) -> Result<Option<i64>, ForwardError> {
        let stored = self.stored_lease_here(id).await?;
        let Some(stored) = stored else { return Ok(None) };
        let kept = self.lessor()?.keep_alive(stored, Instant::now());
        if kept.is_none() {
            // Expired by this member's count, which holds only if it still leads: one paused
            // after confirming its leadership wakes to deadlines long past while another has
            // taken over and kept time. Confirmed again, the answer stands; otherwise the
            // keep-alive goes to the leader there is.
            self.confirm_leadership().await?;
        }
        Ok(kept)
    }

    /// A lease's granted TTL and time left here, as the leader.
    pub(super) async fn time_to_live_here(&self, id: i64) -> Result<Option<(i64, Duration)>, ForwardError> {
        let stored = self.stored_lease_here(id).await?;
        let Some(stored) = stored else { return Ok(None) };
        Ok(Some((stored.ttl, self.lessor()?.remaining(stored, Instant::now()))))
    }

    /// Lease `id` as this member, the leader, has applied everything committed: a revoke or a
    /// grant answered to a client is in it, while the lessor may learn of it only at its next
    /// tick.
    async fn stored_lease_here(&self, id: i64) -> Result<Option<Stored>, ForwardError> {
        if !self.leads() || self.lessor()?.term().is_none() {
            return Err(ForwardError::NotLeader { leader: None });
        }
        self.confirm_leadership().await?;
        let stored = self.reader().lease(id).await.map_err(|e| ForwardError::Unavailable(e.to_string()))?;
        Ok(stored.map(|lease| Stored { id, grant: lease.grant, ttl: lease.ttl }))
    }

    /// Confirms this member itself still leads (never through another: a follower's
    /// linearizable read asks the leader) and has applied everything committed then.
    async fn confirm_leadership(&self) -> Result<(), ForwardError> {
        let index = self.read_index().await?;
        self.raft()
            .wait(Some(forward::REQUEST_DEADLINE))
            .applied_index_at_least(Some(index), "lease")
            .await
            .map(drop)
            .map_err(|e| {
                ForwardError::Unavailable(format!("this member did not catch up to index {index}: {e}"))
            })
    }

    fn lessor(&self) -> Result<std::sync::MutexGuard<'_, crate::lessor::Lessor>, ForwardError> {
        self.inner.lessor.lock().map_err(|_| ForwardError::Unavailable("the lessor failed".into()))
    }

    /// One tick: as the leader, bring the lessor up to date with the store and the term and
    /// revoke what expired; otherwise keep no time.
    async fn tick(&self) {
        let leading = self.leads().then(|| self.metrics().current_term);
        let Some(term) = leading else {
            if let Ok(mut lessor) = self.inner.lessor.lock() {
                lessor.follow();
            }
            return;
        };
        let stored = match self.reader().leases().await {
            Ok(leases) => leases
                .into_iter()
                .map(|(id, lease)| Stored { id, grant: lease.grant, ttl: lease.ttl })
                .collect::<Vec<_>>(),
            Err(e) => {
                tracing::warn!(error = %e, "could not read the leases");
                return;
            }
        };
        let expired = match self.inner.lessor.lock() {
            Ok(mut lessor) => {
                let now = Instant::now();
                lessor.lead(term, &stored, now);
                lessor.expired(now)
            }
            Err(_) => return,
        };
        for (id, grant) in expired.into_iter().take(REVOKES_PER_TICK) {
            // Still leading in the term that counted the time, and the lease still expired
            // (not kept alive meanwhile, nor granted anew)?
            let still = self.inner.lessor.lock().is_ok_and(|lessor| {
                lessor.term() == Some(term) && lessor.is_expired(id, grant, Instant::now())
            });
            if !still {
                continue;
            }
            // Proposed here and never forwarded: time counted by a member that no longer
            // leads must not revoke anything through the member that does.
            match self.inner.batcher.write(Write::LeaseExpire { id, grant }).await {
                Ok(_) => tracing::info!(lease = id, "lease expired: revoked"),
                // Revoked meanwhile, by a client: nothing left to do.
                Err(ForwardError::Write(WriteError::LeaseNotFound(_))) => {}
                Err(ForwardError::NotLeader { .. }) => return,
                Err(e) => tracing::warn!(lease = id, error = %e, "could not revoke an expired lease"),
            }
        }
    }
}

/// Keeps the leases' time while this member leads, until the service is dropped.
pub async fn run(service: Service) {
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        service.tick().await;
    }
}
