//! Hostile input against a real member: random methods, paths (bad percent-encoding, invalid
//! UTF-8, huge keys), queries and bodies. Every answer must be a clear client error or a
//! success, never a server error, and the member must keep serving.

mod common;

use std::time::Duration;

use common::Cluster;
use proptest::prelude::*;

/// Path pieces that have broken HTTP servers before, mixed with random text.
fn path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("%".to_string()),
        Just("%ff%fe".to_string()),
        Just("%zz".to_string()),
        Just("%00".to_string()),
        Just("..".to_string()),
        Just("//".to_string()),
        Just("k".repeat(5_000)),
        "[a-z0-9/._~-]{0,20}",
        "\\PC{0,8}",
    ];
    let prefix = prop_oneof![Just("/v1/kv/"), Just("/v1/kv"), Just("/"), Just("/v1/cluster/"), Just("/v1/")];
    (prefix, proptest::collection::vec(piece, 0..4)).prop_map(|(p, pieces)| format!("{p}{}", pieces.concat()))
}

fn query() -> impl Strategy<Value = String> {
    let pair = prop_oneof![
        Just("limit=-1".to_string()),
        Just("limit=99999999999999999999".to_string()),
        Just("prefix=%ff".to_string()),
        Just("consistency=sometimes".to_string()),
        Just("mod_revision=abc".to_string()),
        "[a-z_]{1,12}=[a-zA-Z0-9%]{0,12}",
    ];
    proptest::collection::vec(pair, 0..3).prop_map(|pairs| pairs.join("&"))
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        Just(b"{\"members\": [{\"id\": -1}]}".to_vec()),
        Just(b"{\"id\": 18446744073709551616}".to_vec()),
        Just(vec![b'x'; 1_200_000]),
    ]
}

#[test]
fn hostile_requests_get_client_errors_and_the_member_keeps_serving() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _context = runtime.enter();
    let cluster = Cluster::start(1, &[]);
    runtime.block_on(cluster.wait_for_leader(Duration::from_secs(20)));
    let base = cluster.node(1).client_url();
    let http = metastore_client::tls::http(None)
        .expect("tls")
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let methods =
        [reqwest::Method::GET, reqwest::Method::PUT, reqwest::Method::POST, reqwest::Method::DELETE];

    let config = ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |(method in 0usize..4, path in path(), query in query(), body in body())| {
        let url = if query.is_empty() { format!("{base}{path}") } else { format!("{base}{path}?{query}") };
        let request = http.request(methods[method].clone(), &url).body(body);
        let answer = runtime.block_on(request.send());
        // A URL the client library itself refuses never reached the member.
        let Ok(answer) = answer else { return Ok(()) };
        let status = answer.status();
        prop_assert!(status.as_u16() < 500, "{} {url} -> {status}", methods[method]);
        if status.is_client_error() {
            let text = runtime.block_on(answer.text()).unwrap_or_default();
            let json: Result<serde_json::Value, _> = serde_json::from_str(&text);
            prop_assert!(
                json.as_ref().is_ok_and(|j| j["error"].is_string() && j["message"].is_string()),
                "{} {url} -> {status} without a JSON error: {text:.200}", methods[method]
            );
        }
    });

    let client = cluster.node(1).client();
    runtime
        .block_on(client.put("after-the-storm", b"fine".to_vec(), None))
        .expect("the member still serves writes");
}
