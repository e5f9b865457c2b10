use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{owned_metadata, selector_labels, BuildError, Names};
use crate::crd::MetaStoreCluster;

/// Voluntary disruptions (drains, evictions) may never take away a majority of `members`: at
/// least `members / 2 + 1` stay available. The reconciler passes the larger of the desired and
/// the current membership, which differ while scaling.
pub fn pod_disruption_budget(
    cluster: &MetaStoreCluster,
    members: i32,
) -> Result<PodDisruptionBudget, BuildError> {
    let names = Names::of(cluster)?;
    let quorum = members.max(1) / 2 + 1;
    Ok(PodDisruptionBudget {
        metadata: owned_metadata(cluster, &names, names.cluster.clone())?,
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(quorum)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&names)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures::cluster;

    #[test]
    fn the_budget_keeps_a_majority_available() {
        for (replicas, quorum) in [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (9, 5)] {
            let pdb = pod_disruption_budget(&cluster(replicas), replicas).expect("builds");
            let min = pdb.spec.expect("spec").min_available;
            assert_eq!(min, Some(IntOrString::Int(quorum)), "{replicas} replicas");
        }
    }
}
