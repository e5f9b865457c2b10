//! JSON bodies of `POST /v1/txn`: etcd's transactions.
//!
//! A transaction's compares all hold, and its `success` operations apply; otherwise its
//! `failure` ones do. Either way atomically, at one revision. Keys name one key, or with a
//! `range_end` the keys `[key, range_end)` (`range_end` `"AA=="`, one zero byte: every key from
//! `key` on), as in etcd. Keys and values are base64, as everywhere in the API.

use serde::{Deserialize, Serialize};

use crate::types::{base64_bytes, KeyValue};

/// Most bytes a transaction's JSON body may hold: room for a largest value, base64-encoded.
pub const MAX_TXN_BODY_BYTES: usize = 2 * 1024 * 1024;

/// Body of `POST /v1/txn`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRequest {
    #[serde(default)]
    pub compare: Vec<TxnCompare>,
    #[serde(default)]
    pub success: Vec<TxnOp>,
    #[serde(default)]
    pub failure: Vec<TxnOp>,
}

/// A condition on a key (or every key of a range): `{"key", "result", and one of "value",
/// "version", "create_revision", "mod_revision", "lease"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnCompare {
    #[serde(with = "base64_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "base64_bytes", default, skip_serializing_if = "Vec::is_empty")]
    pub range_end: Vec<u8>,
    pub result: CompareResult,
    #[serde(flatten)]
    pub target: CompareTarget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareResult {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// The field a compare reads, with its operand. A missing key's fields are 0, and its value
/// compares neither equal nor unequal to anything (etcd's rule).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareTarget {
    Value(#[serde(with = "base64_bytes")] Vec<u8>),
    Version(u64),
    CreateRevision(u64),
    ModRevision(u64),
    Lease(i64),
}

/// One operation: `{"range": ...}`, `{"put": ...}`, `{"delete_range": ...}` or `{"txn": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnOp {
    Range(TxnRange),
    Put(TxnPut),
    DeleteRange(TxnDeleteRange),
    Txn(TxnRequest),
}

/// Reads keys as the transaction's earlier operations left them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRange {
    #[serde(with = "base64_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "base64_bytes", default, skip_serializing_if = "Vec::is_empty")]
    pub range_end: Vec<u8>,
    /// Most keys to answer with; 0: all.
    #[serde(default)]
    pub limit: u64,
    #[serde(default)]
    pub keys_only: bool,
    #[serde(default)]
    pub count_only: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnPut {
    #[serde(with = "base64_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "base64_bytes")]
    pub value: Vec<u8>,
    /// The lease to attach the key to; 0 for none.
    #[serde(default)]
    pub lease: i64,
    /// Answer with the key as it was before the put.
    #[serde(default)]
    pub prev_kv: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnDeleteRange {
    #[serde(with = "base64_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "base64_bytes", default, skip_serializing_if = "Vec::is_empty")]
    pub range_end: Vec<u8>,
    /// Answer with the deleted keys as they were.
    #[serde(default)]
    pub prev_kv: bool,
}

/// Answer to `POST /v1/txn`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    /// Whether every compare held, so `success` applied.
    pub succeeded: bool,
    /// The store's revision after the transaction: its own if it changed anything.
    pub revision: u64,
    /// One per operation of the list that applied, in order.
    pub responses: Vec<TxnOpResponse>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnOpResponse {
    Range(TxnRangeResponse),
    Put(TxnPutResponse),
    DeleteRange(TxnDeleteRangeResponse),
    Txn(TxnResponse),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRangeResponse {
    pub kvs: Vec<KeyValue>,
    /// Every key in the range, however many `kvs` holds.
    pub count: u64,
    /// Whether keys were left out of `kvs`: the limit, or the transaction's answer size.
    pub more: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnPutResponse {
    pub prev_kv: Option<KeyValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnDeleteRangeResponse {
    pub deleted: u64,
    #[serde(default)]
    pub prev_kvs: Vec<KeyValue>,
}

impl TxnCompare {
    /// A compare on one key.
    pub fn key(key: impl Into<Vec<u8>>, result: CompareResult, target: CompareTarget) -> Self {
        Self { key: key.into(), range_end: Vec::new(), result, target }
    }
}

impl TxnOp {
    /// Reads one key.
    pub fn get(key: impl Into<Vec<u8>>) -> Self {
        TxnOp::Range(TxnRange { key: key.into(), ..TxnRange::default() })
    }

    /// Writes one key, answering with what it replaced.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        TxnOp::Put(TxnPut { key: key.into(), value: value.into(), lease: 0, prev_kv: true })
    }

    /// Deletes one key, answering with what it removed.
    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        TxnOp::DeleteRange(TxnDeleteRange { key: key.into(), range_end: Vec::new(), prev_kv: true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_reads_as_etcd_shaped_json() {
        let txn = TxnRequest {
            compare: vec![TxnCompare::key("k", CompareResult::Equal, CompareTarget::ModRevision(5))],
            success: vec![TxnOp::put("k", "v")],
            failure: vec![TxnOp::get("k")],
        };
        let json = serde_json::to_value(&txn).expect("encode");
        assert_eq!(
            json,
            serde_json::json!({
                "compare": [{"key": "aw==", "result": "equal", "mod_revision": 5}],
                "success": [{"put": {"key": "aw==", "value": "dg==", "lease": 0, "prev_kv": true}}],
                "failure": [{"range": {"key": "aw==", "limit": 0, "keys_only": false, "count_only": false}}],
            })
        );
        assert_eq!(serde_json::from_value::<TxnRequest>(json).expect("decode"), txn);
    }

    #[test]
    fn a_value_compare_carries_base64_and_defaults_may_be_left_out() {
        let json = r#"{"compare":[{"key":"aw==","range_end":"AA==","result":"less","value":"/w=="}],
                       "success":[{"delete_range":{"key":"aw=="}}]}"#;
        let txn: TxnRequest = serde_json::from_str(json).expect("decode");
        assert_eq!(txn.compare[0].target, CompareTarget::Value(vec![0xff]));
        assert_eq!(txn.compare[0].range_end, [0]);
        assert!(matches!(&txn.success[0], TxnOp::DeleteRange(d) if !d.prev_kv && d.range_end.is_empty()));
        assert!(txn.failure.is_empty());
    }

    #[test]
    fn a_compare_without_a_target_is_refused() {
        assert!(
            serde_json::from_str::<TxnRequest>(r#"{"compare":[{"key":"aw==","result":"equal"}]}"#).is_err()
        );
    }
}
