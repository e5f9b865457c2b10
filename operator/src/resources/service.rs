use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};

use super::{owned_metadata, selector_labels, BuildError, Names, CLIENT_PORT, PEER_PORT};
use crate::crd::MetaStoreCluster;

fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_string()),
        port,
        protocol: Some("TCP".to_string()),
        ..Default::default()
    }
}

/// The headless Service behind the pods' stable DNS names (`demo-0.demo-peer.ns.svc`).
///
/// It publishes pods before they are ready: a joining member is not ready until it has been
/// added and caught up, and the leader must reach it to get it there.
pub fn peer_service(cluster: &MetaStoreCluster) -> Result<Service, BuildError> {
    let names = Names::of(cluster)?;
    Ok(Service {
        metadata: owned_metadata(cluster, &names, names.peer_service())?,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(&names)),
            ports: Some(vec![port("peer", PEER_PORT), port("client", CLIENT_PORT)]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The Service clients use; it routes only to ready members.
pub fn client_service(cluster: &MetaStoreCluster) -> Result<Service, BuildError> {
    let names = Names::of(cluster)?;
    Ok(Service {
        metadata: owned_metadata(cluster, &names, names.client_service())?,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_string()),
            selector: Some(selector_labels(&names)),
            ports: Some(vec![port("client", CLIENT_PORT)]),
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
    fn the_peer_service_is_headless_and_publishes_joining_pods() {
        let svc = peer_service(&cluster(3)).expect("builds");
        assert_eq!(svc.metadata.name.as_deref(), Some("demo-peer"));
        let spec = svc.spec.expect("spec");
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        let ports: Vec<i32> = spec.ports.iter().flatten().map(|p| p.port).collect();
        assert_eq!(ports, [PEER_PORT, CLIENT_PORT]);
    }

    #[test]
    fn the_client_service_exposes_only_the_client_port_and_is_owned() {
        let svc = client_service(&cluster(3)).expect("builds");
        assert_eq!(svc.metadata.name.as_deref(), Some("demo"));
        let owner = &svc.metadata.owner_references.expect("owned")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("MetaStoreCluster", "demo", Some(true))
        );
        let spec = svc.spec.expect("spec");
        assert_eq!(spec.ports.expect("ports").iter().map(|p| p.port).collect::<Vec<_>>(), [CLIENT_PORT]);
        assert_eq!(spec.selector.expect("selector")["app.kubernetes.io/instance"], "demo");
    }
}
