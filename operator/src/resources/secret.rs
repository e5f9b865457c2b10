use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;

use super::{owned_metadata, BuildError, Names};
use crate::backup::restore::RestoreSource;
use crate::backup::Credentials;
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

/// The key of the restore source (JSON) in the restore Secret.
pub const RESTORE_SOURCE_KEY: &str = "source";

/// The Secret the first pod's init container reads while the cluster is being restored: the
/// object to fetch and, when the bucket needs them, the keys to sign with (copied from the
/// credentials Secret, which the pods need not be able to read, nor outlive).
pub fn restore_secret(
    cluster: &MetaStoreCluster,
    source: &RestoreSource,
    credentials: Option<&Credentials>,
) -> Result<Secret, BuildError> {
    let names = Names::of(cluster)?;
    let source = serde_json::to_string(source).map_err(|e| BuildError::Unserializable(e.to_string()))?;
    let mut data = BTreeMap::from([(RESTORE_SOURCE_KEY.to_string(), source)]);
    data.extend(credentials.iter().flat_map(|c| c.as_env()).map(|(k, v)| (k.to_string(), v)));
    Ok(Secret {
        metadata: owned_metadata(cluster, &names, names.restore_secret())?,
        type_: Some("Opaque".to_string()),
        string_data: Some(data),
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

    #[test]
    fn the_restore_secret_holds_the_object_and_the_keys_to_read_it() {
        let source = RestoreSource {
            s3: serde_json::from_value(serde_json::json!({"bucket": "b", "credentialsSecret": "s3-keys"}))
                .expect("destination"),
            object: "ns/demo/x.snapshot".into(),
            sha256: Some("ab".repeat(32)),
        };
        let keys =
            Credentials { access_key_id: "id".into(), secret_access_key: "key".into(), session_token: None };
        let secret = restore_secret(&cluster(3), &source, Some(&keys)).expect("builds");
        assert_eq!(secret.metadata.name.as_deref(), Some("demo-restore"));
        assert_eq!(secret.metadata.owner_references.expect("owned")[0].name, "demo");
        let data = secret.string_data.expect("data");
        let back: RestoreSource = serde_json::from_str(&data[RESTORE_SOURCE_KEY]).expect("json");
        assert_eq!(back, source);
        assert_eq!(
            (data["AWS_ACCESS_KEY_ID"].as_str(), data["AWS_SECRET_ACCESS_KEY"].as_str()),
            ("id", "key")
        );
        assert!(!data.contains_key("AWS_SESSION_TOKEN"));
        let anonymous = restore_secret(&cluster(3), &source, None).expect("builds");
        assert_eq!(anonymous.string_data.expect("data").len(), 1, "the object alone");
    }
}
