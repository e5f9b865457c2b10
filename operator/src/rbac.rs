//! Every Kubernetes permission the operator needs, and why. The Helm chart's ClusterRole and
//! Role grant exactly these (a test renders the chart and compares), and the mocked API-server
//! conversations check each request the operator makes against this table.

/// Where a permission is granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// In every namespace (a ClusterRole): the operator reconciles clusters anywhere.
    Cluster,
    /// In the operator's own namespace only (a Role).
    OperatorNamespace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permission {
    pub group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    pub scope: Scope,
    pub why: &'static str,
}

/// Server-side apply needs `patch`, and `create` when the object does not exist yet.
pub const REQUIRED: &[Permission] = &[
    Permission {
        group: "metastore.io",
        resource: "metastoreclusters",
        verbs: &["get", "list", "watch"],
        scope: Scope::Cluster,
        why: "watch the clusters it reconciles; list once at start to check the CRD is installed",
    },
    Permission {
        group: "metastore.io",
        resource: "metastoreclusters/status",
        verbs: &["patch"],
        scope: Scope::Cluster,
        why: "report members, leader and conditions by server-side apply of the status",
    },
    Permission {
        group: "metastore.io",
        resource: "metastorebackups",
        verbs: &["get", "list", "watch", "create", "delete"],
        scope: Scope::Cluster,
        why: "watch the backups it takes; make each scheduled one, and forget old scheduled ones; \
              read the one a new cluster is restored from",
    },
    Permission {
        group: "metastore.io",
        resource: "metastorebackups/status",
        verbs: &["patch"],
        scope: Scope::Cluster,
        why: "report where each backup went, or why it failed",
    },
    Permission {
        group: "apps",
        resource: "statefulsets",
        verbs: &["get", "list", "watch", "create", "patch"],
        scope: Scope::Cluster,
        why: "own each cluster's StatefulSet: read its size, apply it, and react to its changes",
    },
    Permission {
        group: "",
        resource: "services",
        verbs: &["list", "watch", "create", "patch"],
        scope: Scope::Cluster,
        why: "own each cluster's peer and client Services",
    },
    Permission {
        group: "",
        resource: "secrets",
        verbs: &["create", "get", "patch", "delete"],
        scope: Scope::Cluster,
        why: "create each new cluster's peer-token Secret, once, and read it back: members require \
              the token on membership changes and snapshots; read a backup's credentials Secret; \
              apply a restored cluster's restore Secret for its first pod, and delete it once restored",
    },
    Permission {
        group: "",
        resource: "pods",
        verbs: &["get", "list", "watch", "delete"],
        scope: Scope::Cluster,
        why: "reconcile a cluster as soon as one of its member pods starts, becomes ready or fails; \
              read why a restored cluster's first pod is stuck; see which run an outdated template; \
              restart a member of a cluster of one or two, whose disruption budget allows none",
    },
    Permission {
        group: "",
        resource: "pods/eviction",
        verbs: &["create"],
        scope: Scope::Cluster,
        why: "restart members one at a time to roll a new template through them, through the \
              disruption budget",
    },
    Permission {
        group: "",
        resource: "persistentvolumeclaims",
        verbs: &["get", "patch"],
        scope: Scope::Cluster,
        why: "grow each member's volume claim when the cluster's storage size grows",
    },
    Permission {
        group: "policy",
        resource: "poddisruptionbudgets",
        verbs: &["create", "patch"],
        scope: Scope::Cluster,
        why: "keep voluntary disruptions from taking a majority of members",
    },
    Permission {
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        scope: Scope::Cluster,
        why: "record bootstrap, membership changes and quorum warnings on the cluster",
    },
    Permission {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "create", "update"],
        scope: Scope::OperatorNamespace,
        why: "leader election, so that two operator replicas never both act",
    },
];

/// The RBAC verb of an HTTP request to the API server.
pub fn verb(method: &http::Method, path: &str, query: Option<&str>) -> &'static str {
    let watching = query.is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    match *method {
        http::Method::GET if watching => "watch",
        // A collection path ends in the plural resource name: an even number of segments
        // after the group and version.
        http::Method::GET if is_collection(path) => "list",
        http::Method::GET => "get",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "unknown",
    }
}

/// `(group, resource)` of a request path, with the subresource joined as `resource/sub`.
pub fn resource(path: &str) -> Option<(String, String)> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    match rest {
        [resource] | [resource, _] => Some((group.to_string(), resource.to_string())),
        [resource, _, sub] => Some((group.to_string(), format!("{resource}/{sub}"))),
        _ => None,
    }
}

fn is_collection(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segments.as_slice() {
        ["api", _, rest @ ..] | ["apis", _, _, rest @ ..] => rest,
        _ => return false,
    };
    matches!(rest, [_] | ["namespaces", _, _])
}

/// Whether the table grants the request `method path?query`.
pub fn grants(method: &http::Method, path: &str, query: Option<&str>) -> bool {
    let verb = verb(method, path, query);
    resource(path).is_some_and(|(group, resource)| {
        REQUIRED.iter().any(|p| p.group == group && p.resource == resource && p.verbs.contains(&verb))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn requests_map_to_the_verbs_rbac_checks() {
        let cases = [
            (Method::GET, "/apis/apps/v1/namespaces/ns/statefulsets/demo", None, "get"),
            (Method::GET, "/apis/apps/v1/statefulsets", None, "list"),
            (Method::GET, "/apis/apps/v1/statefulsets", Some("watch=true&resourceVersion=1"), "watch"),
            (Method::GET, "/api/v1/namespaces/ns/services", None, "list"),
            (Method::PATCH, "/api/v1/namespaces/ns/services/demo", None, "patch"),
            (Method::POST, "/apis/events.k8s.io/v1/namespaces/ns/events", None, "create"),
            (Method::PUT, "/apis/coordination.k8s.io/v1/namespaces/ops/leases/x", None, "update"),
        ];
        for (method, path, query, expected) in cases {
            assert_eq!(verb(&method, path, query), expected, "{method} {path}");
        }
    }

    #[test]
    fn paths_name_their_group_and_resource() {
        let status = "/apis/metastore.io/v1alpha1/namespaces/ns/metastoreclusters/demo/status";
        assert_eq!(resource(status), Some(("metastore.io".into(), "metastoreclusters/status".into())));
        assert_eq!(resource("/api/v1/namespaces/ns/services/demo"), Some(("".into(), "services".into())));
        assert_eq!(resource("/apis/apps/v1/statefulsets"), Some(("apps".into(), "statefulsets".into())));
        assert_eq!(resource("/healthz"), None);
    }

    #[test]
    fn nothing_outside_the_table_is_granted() {
        assert!(grants(&Method::PATCH, "/apis/apps/v1/namespaces/ns/statefulsets/demo", None));
        assert!(!grants(&Method::DELETE, "/apis/apps/v1/namespaces/ns/statefulsets/demo", None));
        assert!(grants(&Method::GET, "/api/v1/namespaces/ns/secrets/demo-peer-token", None));
        assert!(!grants(&Method::GET, "/api/v1/namespaces/ns/secrets", None), "Secrets are never listed");
        assert!(!grants(&Method::PUT, "/api/v1/namespaces/ns/secrets/demo-peer-token", None));
    }
}
