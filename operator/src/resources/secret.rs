use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;

use super::{owned_metadata, BuildError, Names};
use crate::crd::MetaStoreCluster;

/// The key of the peer token in its Secret.
pub const PEER_TOKEN_KEY: &str = "token";

/// The Secret holding the token members present to each other (peer authentication). Created
/// once with a random `token`, never rewritten: changing it under running members would cut
/// them off from each other.
pub fn peer_token_secret(cluster: &MetaStoreCluster, token: String) -> Result<Secret, BuildError> {
    let names = Names::of(cluster)?;
    Ok(Secret {
        metadata: owned_metadata(cluster, &names, names.peer_token_secret())?,
        type_: Some("Opaque".to_string()),
        string_data: Some(BTreeMap::from([(PEER_TOKEN_KEY.to_string(), token)])),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures::cluster;

    #[test]
    fn the_token_secret_is_owned_by_its_cluster_and_holds_the_token() {
        let secret = peer_token_secret(&cluster(3), "t".repeat(64)).expect("builds");
        assert_eq!(secret.metadata.name.as_deref(), Some("demo-peer-token"));
        assert_eq!(secret.metadata.owner_references.expect("owned")[0].name, "demo");
        assert_eq!(secret.string_data.expect("data")[PEER_TOKEN_KEY].len(), 64);
    }
}
