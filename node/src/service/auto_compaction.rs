//! etcd's automatic compaction, carried out by the leader through ordinary compactions.
//!
//! Every member samples the store's revision as time passes; the leader compacts to the
//! revision the store had `retention` ago (periodic mode), or to all but the last `retention`
//! revisions (revision mode), whenever that is beyond the current compaction. A member that
//! becomes leader carries on from its own samples, so a failover never compacts early.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::Service;
use crate::config::AutoCompaction;

/// How often revision mode looks: its compactions are incremental, so often is cheap.
const REVISION_TICK: Duration = Duration::from_secs(1);

/// Runs `policy` for as long as the task lives.
pub async fn run(service: Service, policy: AutoCompaction) {
    let tick = match policy {
        // etcd's periodic compactor looks ten times per retention.
        AutoCompaction::Periodic(retention) => {
            (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(3_600))
        }
        AutoCompaction::Revisions(_) => REVISION_TICK,
    };
    let mut samples = Samples::default();
    loop {
        tokio::time::sleep(tick).await;
        let Ok((current, compacted)) = service.reader().revisions().await else { continue };
        let target = match policy {
            AutoCompaction::Revisions(keep) => current.saturating_sub(keep),
            AutoCompaction::Periodic(retention) => {
                samples.revision_before(Instant::now(), current, retention)
            }
        };
        if target <= compacted || !service.leads() {
            continue;
        }
        match service.compact(target).await {
            Ok(to) => tracing::info!(member = service.id(), compacted = to, "auto-compaction"),
            Err(e) => {
                tracing::debug!(member = service.id(), error = %e, "auto-compaction not done this time")
            }
        }
    }
}

/// The store's revision as time passed.
#[derive(Default)]
struct Samples(VecDeque<(Instant, u64)>);

impl Samples {
    /// Records `current` at `now`, and answers the revision the store had `retention` before
    /// `now` (0 while no sample is that old).
    fn revision_before(&mut self, now: Instant, current: u64, retention: Duration) -> u64 {
        self.0.push_back((now, current));
        let old_enough = |sample: &(Instant, u64)| now.duration_since(sample.0) >= retention;
        // Keep the newest sample that is old enough, and everything after it.
        while self.0.len() > 1 && self.0.get(1).is_some_and(old_enough) {
            self.0.pop_front();
        }
        self.0.front().filter(|s| old_enough(s)).map_or(0, |s| s.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_mode_compacts_to_the_revision_of_a_retention_ago() {
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let mut samples = Samples::default();
        let hour = Duration::from_secs(3_600);
        assert_eq!(samples.revision_before(at(0), 10, hour), 0, "nothing is an hour old yet");
        assert_eq!(samples.revision_before(at(1_800), 50, hour), 0);
        assert_eq!(samples.revision_before(at(3_600), 90, hour), 10, "the revision an hour ago");
        assert_eq!(samples.revision_before(at(5_400), 120, hour), 50);
        assert_eq!(samples.revision_before(at(9_000), 130, hour), 120, "the newest sample an hour old");
    }
}
