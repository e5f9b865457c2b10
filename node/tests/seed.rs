//! The seed test report, replayed with real processes: three members started with the report's
//! flags, raw PUTs through each member, every key read back from every member, data in
//! `data/N`, and all of it back after a clean restart and after kill -9 of all three.

mod common;

use std::time::Duration;

use common::{eventually, Cluster};

const KEYS: [(&str, &str); 3] = [("key1", "value1"), ("key2", "value2"), ("key3", "value3")];

async fn raw_put(http: &reqwest::Client, port: u16, key: &str, value: &str) -> Result<(), String> {
    let resp = http
        .put(format!("http://127.0.0.1:{port}/{key}"))
        .body(value.to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("PUT {key} via {port}: {}", resp.status()))
    }
}

async fn raw_get(http: &reqwest::Client, port: u16, key: &str) -> Result<(u16, String), String> {
    let resp = http.get(format!("http://127.0.0.1:{port}/{key}")).send().await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await.map_err(|e| e.to_string())?))
}

async fn every_key_on_every_member(cluster: &Cluster, http: &reqwest::Client) {
    for node in cluster.running() {
        for (key, value) in KEYS {
            let got = raw_get(http, node.client_port, key).await.expect("GET answered");
            assert_eq!(got, (200, value.to_string()), "{key} on member {}", node.id);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_report_holds_and_survives_restart_and_kill_9() {
    let mut cluster = Cluster::start(3, &[]);
    let http = metastore_client::tls::default_http();
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    for id in 1..=3 {
        let status = cluster.status(id).await;
        assert_eq!(status.leader_id, Some(leader), "member {id} follows the agreed leader");
        assert_eq!(status.members.len(), 3);
    }

    // Writes through every member, as in the report: key N through member N.
    for (i, (key, value)) in KEYS.iter().enumerate() {
        let port = cluster.nodes[i].client_port;
        eventually(Duration::from_secs(10), || raw_put(&http, port, key, value)).await;
    }
    every_key_on_every_member(&cluster, &http).await;
    for id in 1..=3 {
        assert!(cluster.data_dir(id).is_dir(), "data/{id} exists");
    }
    // Each member publishes its client URL and storage incarnation into the membership, which
    // starts with peer URLs only.
    let mut incarnations = std::collections::BTreeMap::new();
    for id in 1..=3 {
        incarnations.insert(id, cluster.status(id).await.incarnation);
    }
    eventually(Duration::from_secs(10), || async {
        let members = cluster.status(1).await.members;
        let published = members
            .iter()
            .all(|m| m.client_url == cluster.node(m.id).client_url() && m.incarnation == incarnations[&m.id]);
        if published {
            Ok(())
        } else {
            Err(format!("{members:?}"))
        }
    })
    .await;
    let missing = raw_get(&http, cluster.nodes[0].client_port, "no-such-key").await.expect("answered");
    assert_eq!(missing.0, 404);

    // Stop all three cleanly, start them again with the same flags: everything is back.
    for id in 1..=3 {
        cluster.stop(id);
    }
    for id in 1..=3 {
        cluster.restart(id);
    }
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    every_key_on_every_member(&cluster, &http).await;

    // The same after kill -9 of all three.
    for id in 1..=3 {
        cluster.kill(id);
    }
    for id in 1..=3 {
        cluster.restart(id);
    }
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    every_key_on_every_member(&cluster, &http).await;
}
