//! The quorum rules a membership must keep. A member's leader applies them before it removes a
//! voter, and the operator before it plans a removal or reports a cluster available: one rule,
//! so the two never disagree on what is safe.

/// How far behind the leader's log a member may be and still count as healthy (and a learner
/// as caught up enough to promote).
pub const HEALTHY_LAG: u64 = 1_000;

/// Votes needed among `voters` voters.
pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// Whether a member whose log is `lag` entries behind the leader's counts as healthy.
pub fn within_healthy_lag(lag: u64) -> bool {
    lag <= HEALTHY_LAG
}

/// Why removing a voter is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemovalRefused {
    #[error("member {id} is the last voter and cannot be removed")]
    LastVoter { id: u64 },
    #[error(
        "removing member {id} would leave {healthy} healthy of {remaining} voters, below the quorum of {quorum}"
    )]
    WouldLoseQuorum { id: u64, healthy: usize, remaining: usize, quorum: usize },
}

/// Allows removing voter `id` from `voters` only if the voters that remain still hold a
/// majority of healthy members among themselves. `healthy` says which members are.
pub fn check_removal(
    voters: impl IntoIterator<Item = u64>,
    id: u64,
    healthy: impl Fn(u64) -> bool,
) -> Result<(), RemovalRefused> {
    let remaining: Vec<u64> = voters.into_iter().filter(|v| *v != id).collect();
    if remaining.is_empty() {
        return Err(RemovalRefused::LastVoter { id });
    }
    let healthy = remaining.iter().filter(|v| healthy(**v)).count();
    let quorum = quorum(remaining.len());
    if healthy < quorum {
        return Err(RemovalRefused::WouldLoseQuorum { id, healthy, remaining: remaining.len(), quorum });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_majority_is_more_than_half() {
        assert_eq!([1, 2, 3, 4, 5].map(quorum), [1, 2, 2, 3, 3]);
    }

    #[test]
    fn a_voter_may_go_while_the_rest_hold_a_healthy_majority() {
        assert_eq!(check_removal([1, 2, 3], 3, |_| true), Ok(()));
        // Of 1, 2, 3 with 3 unhealthy: removing 3 leaves {1, 2}, both healthy.
        assert_eq!(check_removal([1, 2, 3], 3, |v| v != 3), Ok(()));
    }

    #[test]
    fn a_removal_that_would_lose_quorum_is_refused() {
        // Of 1, 2, 3 with 2 unhealthy: removing 3 would leave {1, 2} with one healthy.
        let refused = check_removal([1, 2, 3], 3, |v| v != 2);
        let lost = RemovalRefused::WouldLoseQuorum { id: 3, healthy: 1, remaining: 2, quorum: 2 };
        assert_eq!(refused, Err(lost));
    }

    #[test]
    fn the_last_voter_never_goes() {
        assert_eq!(check_removal([1], 1, |_| true), Err(RemovalRefused::LastVoter { id: 1 }));
    }
}
