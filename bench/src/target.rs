//! The systems under test, behind one set of operations: metaStore through its client crate,
//! and etcd through its v3 JSON gateway (`/v3/kv/...`, keys and values base64).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use metastore_client::{Client, Consistency, Precondition};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum System {
    Metastore,
    Etcd,
}

/// One connection pool to one member.
#[derive(Clone)]
pub enum Endpoint {
    Metastore(Client),
    Etcd { http: reqwest::Client, base: String },
}

/// What a read returned: the value's revision, for a compare-and-swap that follows.
pub type Revision = Option<u64>;

impl Endpoint {
    pub fn new(system: System, url: &str, http: reqwest::Client) -> Self {
        match system {
            System::Metastore => Endpoint::Metastore(Client::with_http(url, http)),
            System::Etcd => Endpoint::Etcd { http, base: url.trim_end_matches('/').to_string() },
        }
    }

    pub async fn put(&self, key: &str, value: &[u8]) -> anyhow::Result<()> {
        match self {
            Endpoint::Metastore(client) => {
                client.put(key, value.to_vec(), None).await?;
            }
            Endpoint::Etcd { .. } => {
                self.etcd("/v3/kv/put", json!({"key": B64.encode(key), "value": B64.encode(value)})).await?;
            }
        }
        Ok(())
    }

    /// A read, linearizable or (`stale`) served from the member's own state.
    pub async fn get(&self, key: &str, stale: bool) -> anyhow::Result<Revision> {
        match self {
            Endpoint::Metastore(client) => {
                let consistency = if stale { Consistency::Stale } else { Consistency::Linearizable };
                Ok(client.get(key, consistency).await?.map(|kv| kv.mod_revision))
            }
            Endpoint::Etcd { .. } => {
                let answer =
                    self.etcd("/v3/kv/range", json!({"key": B64.encode(key), "serializable": stale})).await?;
                let revision = answer["kvs"][0]["mod_revision"].as_str().and_then(|r| r.parse().ok());
                Ok(revision)
            }
        }
    }

    /// Writes `value` if the key is still at `revision` (absent when `None`); whether it did.
    pub async fn cas(&self, key: &str, revision: Revision, value: &[u8]) -> anyhow::Result<bool> {
        match self {
            Endpoint::Metastore(client) => {
                let precondition = match revision {
                    Some(r) => Precondition::ModRevision(r),
                    None => Precondition::Absent,
                };
                match client.put(key, value.to_vec(), Some(precondition)).await {
                    Ok(_) => Ok(true),
                    Err(e) if e.status() == Some(409) => Ok(false),
                    Err(e) => Err(e.into()),
                }
            }
            Endpoint::Etcd { .. } => {
                let compare =
                    json!({"key": B64.encode(key), "target": "MOD", "mod_revision": revision.unwrap_or(0)});
                let put = json!({"request_put": {"key": B64.encode(key), "value": B64.encode(value)}});
                let answer = self.etcd("/v3/kv/txn", json!({"compare": [compare], "success": [put]})).await?;
                Ok(answer["succeeded"].as_bool().unwrap_or(false))
            }
        }
    }

    async fn etcd(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let Endpoint::Etcd { http, base } = self else { anyhow::bail!("not an etcd endpoint") };
        let answer = http.post(format!("{base}{path}")).json(&body).send().await?;
        let status = answer.status();
        let body: Value = answer.json().await?;
        anyhow::ensure!(status.is_success(), "etcd answered {status}: {body}");
        Ok(body)
    }
}
