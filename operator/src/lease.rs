//! Leader election over a `coordination.k8s.io/v1` Lease, so that of several operator replicas
//! exactly one reconciles. Updates go through the Lease's resourceVersion: of two replicas that
//! race for it, the API server lets one write win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::Api;

/// One candidate for the lease.
pub struct LeaderLease {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

/// What a round of election found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Election {
    /// This candidate holds the lease (acquired or renewed).
    Leading,
    /// Another holder's lease is still valid.
    Following { holder: String },
}

impl LeaderLease {
    pub fn new(
        api: Api<Lease>,
        name: impl Into<String>,
        identity: impl Into<String>,
        duration: Duration,
    ) -> Self {
        Self { api, name: name.into(), identity: identity.into(), duration }
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }

    fn spec(&self, now: Timestamp, previous: Option<&LeaseSpec>) -> LeaseSpec {
        let ours = previous.and_then(|p| p.holder_identity.as_deref()) == Some(self.identity.as_str());
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX)),
            acquire_time: if ours {
                previous.and_then(|p| p.acquire_time.clone())
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if ours || previous.is_none() { transitions } else { transitions + 1 }),
            ..Default::default()
        }
    }

    /// Acquires, renews or fails to get the lease, once.
    pub async fn try_lead(&self, now: Timestamp) -> Result<Election, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                spec: Some(self.spec(now, None)),
            };
            self.api.create(&PostParams::default(), &lease).await?;
            return Ok(Election::Leading);
        };
        let current = lease.spec.clone().unwrap_or_default();
        let holder = current.holder_identity.clone().unwrap_or_default();
        if !holder.is_empty() && holder != self.identity && !expired(&current, now) {
            return Ok(Election::Following { holder });
        }
        lease.spec = Some(self.spec(now, Some(&current)));
        // Carries the resourceVersion read above: a concurrent writer makes this fail (409).
        self.api.replace(&self.name, &PostParams::default(), &lease).await?;
        Ok(Election::Leading)
    }
}

fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let (Some(renewed), Some(seconds)) = (spec.renew_time.as_ref(), spec.lease_duration_seconds) else {
        return true;
    };
    renewed.0 + SignedDuration::from_secs(i64::from(seconds)) < now
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use kube::Client;
    use tower_test::mock;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).expect("time")
    }

    fn lease_json(holder: &str, renewed: i64) -> String {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some("metastore-operator".into()),
                namespace: Some("ops".into()),
                resource_version: Some("7".into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(at(renewed))),
                ..Default::default()
            }),
        };
        serde_json::to_string(&lease).expect("json")
    }

    async fn elect(answers: Vec<(Method, StatusCode, Option<String>)>, now: i64) -> (Election, Vec<String>) {
        let (service, mut server) = mock::pair::<Request<Body>, Response<Body>>();
        let api = Api::<Lease>::namespaced(Client::new(service, "ops"), "ops");
        let candidate = LeaderLease::new(api, "metastore-operator", "me", Duration::from_secs(15));
        let election = tokio::spawn(async move { candidate.try_lead(at(now)).await });
        let mut bodies = Vec::new();
        for (method, status, answer) in answers {
            let (request, send) = server.next_request().await.expect("a request");
            assert_eq!(request.method(), method);
            let uri = request.uri();
            assert!(
                crate::rbac::grants(&method, uri.path(), uri.query()),
                "RBAC does not allow {method} {uri}"
            );
            let body = String::from_utf8(request.into_body().collect_bytes().await.expect("body").to_vec())
                .expect("utf-8");
            let reply = answer.unwrap_or_else(|| body.clone());
            send.send_response(
                Response::builder().status(status).body(Body::from(reply.into_bytes())).expect("response"),
            );
            bodies.push(body);
        }
        (election.await.expect("task").expect("election"), bodies)
    }

    fn not_found() -> String {
        r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","reason":"NotFound","code":404}"#.into()
    }

    #[tokio::test]
    async fn the_first_candidate_creates_the_lease_and_leads() {
        let (election, bodies) = elect(
            vec![
                (Method::GET, StatusCode::NOT_FOUND, Some(not_found())),
                (Method::POST, StatusCode::CREATED, None),
            ],
            100,
        )
        .await;
        assert_eq!(election, Election::Leading);
        let created: Lease = serde_json::from_str(&bodies[1]).expect("lease");
        assert_eq!(created.spec.and_then(|s| s.holder_identity).as_deref(), Some("me"));
    }

    #[tokio::test]
    async fn a_valid_lease_held_by_another_is_respected() {
        let (election, _) =
            elect(vec![(Method::GET, StatusCode::OK, Some(lease_json("other", 100)))], 110).await;
        assert_eq!(election, Election::Following { holder: "other".into() });
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_with_its_resource_version() {
        let (election, bodies) = elect(
            vec![
                (Method::GET, StatusCode::OK, Some(lease_json("other", 100))),
                (Method::PUT, StatusCode::OK, None),
            ],
            200,
        )
        .await;
        assert_eq!(election, Election::Leading);
        let replaced: Lease = serde_json::from_str(&bodies[1]).expect("lease");
        assert_eq!(replaced.metadata.resource_version.as_deref(), Some("7"), "optimistic concurrency");
        let spec = replaced.spec.expect("spec");
        assert_eq!((spec.holder_identity.as_deref(), spec.lease_transitions), (Some("me"), Some(1)));
    }

    #[tokio::test]
    async fn losing_a_race_for_the_lease_is_an_error_not_leadership() {
        let (service, mut server) = mock::pair::<Request<Body>, Response<Body>>();
        let api = Api::<Lease>::namespaced(Client::new(service, "ops"), "ops");
        let candidate = LeaderLease::new(api, "metastore-operator", "me", Duration::from_secs(15));
        let election = tokio::spawn(async move { candidate.try_lead(at(200)).await });
        let (_, send) = server.next_request().await.expect("get");
        send.send_response(
            Response::builder().body(Body::from(lease_json("other", 100).into_bytes())).expect("response"),
        );
        let (_, send) = server.next_request().await.expect("replace");
        let conflict = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","reason":"Conflict","code":409}"#;
        send.send_response(
            Response::builder()
                .status(StatusCode::CONFLICT)
                .body(Body::from(conflict.as_bytes().to_vec()))
                .expect("response"),
        );
        assert!(election.await.expect("task").is_err());
    }
}
