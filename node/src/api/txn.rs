//! `POST /v1/txn`: etcd's transactions over JSON. This module translates between the wire
//! types (`metastore_client::txn`) and the engine's, and checks what the engine cannot: key
//! and value sizes. A put naming a lease that does not exist fails the whole transaction in
//! the engine, as etcd's does.

use bytes::Bytes;
use metastore_client::{self as wire, ErrorCode, MAX_KEY_BYTES, MAX_TXN_BODY_BYTES, MAX_VALUE_BYTES};
use warp::reply::Response;
use warp::Filter;

use super::auth::{caller, credentials};
use super::error::{respond, ApiError};
use super::input::{body_up_to, check_key, parse_json};
use super::kv::{json_at, key_value};
use super::query::{params, Query};
use crate::engine::{Compare, CompareResult, CompareTarget, KeyRecord, Op, OpResponse, Txn, TxnResult};
use crate::service::{Credentials, Service};

pub fn routes(service: Service) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::post()
        .and(warp::path!("v1" / "txn"))
        .and(params(&[]))
        .and(body_up_to(MAX_TXN_BODY_BYTES))
        .and(credentials())
        .and(warp::any().map(move || service.clone()))
        .then(|q: Result<Query, ApiError>, body: Result<Bytes, ApiError>, c, s| async move {
            respond(txn(q, body, c, s).await)
        })
}

async fn txn(
    q: Result<Query, ApiError>,
    body: Result<Bytes, ApiError>,
    credentials: Credentials,
    service: Service,
) -> Result<Response, ApiError> {
    q?;
    let request: wire::TxnRequest = parse_json(&body?)?;
    let caller = caller(&service, &credentials)?;
    let result = service.txn(caller.as_ref(), engine_txn(request)?).await?;
    let answer = wire_response(
        TxnResult { succeeded: result.succeeded, responses: result.responses },
        result.revision,
    );
    Ok(json_at(&answer, result.revision))
}

fn engine_txn(request: wire::TxnRequest) -> Result<Txn, ApiError> {
    let ops = |ops: Vec<wire::TxnOp>| ops.into_iter().map(engine_op).collect::<Result<Vec<_>, _>>();
    Ok(Txn {
        compares: request.compare.into_iter().map(engine_compare).collect::<Result<_, _>>()?,
        success: ops(request.success)?,
        failure: ops(request.failure)?,
    })
}

fn engine_compare(compare: wire::TxnCompare) -> Result<Compare, ApiError> {
    check_span(&compare.key, &compare.range_end)?;
    let result = match compare.result {
        wire::CompareResult::Equal => CompareResult::Equal,
        wire::CompareResult::NotEqual => CompareResult::NotEqual,
        wire::CompareResult::Less => CompareResult::Less,
        wire::CompareResult::Greater => CompareResult::Greater,
    };
    let target = match compare.target {
        wire::CompareTarget::Value(value) => CompareTarget::Value(value),
        wire::CompareTarget::Version(v) => CompareTarget::Version(v),
        wire::CompareTarget::CreateRevision(r) => CompareTarget::CreateRevision(r),
        wire::CompareTarget::ModRevision(r) => CompareTarget::ModRevision(r),
        wire::CompareTarget::Lease(id) => CompareTarget::Lease(id),
    };
    Ok(Compare { key: compare.key, range_end: compare.range_end, result, target })
}

fn engine_op(op: wire::TxnOp) -> Result<Op, ApiError> {
    Ok(match op {
        wire::TxnOp::Range(r) => {
            check_span(&r.key, &r.range_end)?;
            let wire::TxnRange { key, range_end, limit, keys_only, count_only } = r;
            Op::Range { key, range_end, limit, keys_only, count_only }
        }
        wire::TxnOp::Put(p) => {
            check_key(&p.key)?;
            if p.value.len() > MAX_VALUE_BYTES {
                return Err(ApiError::new(
                    ErrorCode::ValueTooLarge,
                    format!("the value is {} bytes; the limit is {MAX_VALUE_BYTES}", p.value.len()),
                ));
            }
            Op::Put { key: p.key, value: p.value, lease: p.lease, prev_kv: p.prev_kv }
        }
        wire::TxnOp::DeleteRange(d) => {
            check_span(&d.key, &d.range_end)?;
            Op::DeleteRange { key: d.key, range_end: d.range_end, prev_kv: d.prev_kv }
        }
        wire::TxnOp::Txn(nested) => Op::Txn(engine_txn(nested)?),
    })
}

fn check_span(key: &[u8], range_end: &[u8]) -> Result<(), ApiError> {
    check_key(key)?;
    if range_end.len() > MAX_KEY_BYTES {
        return Err(ApiError::new(
            ErrorCode::KeyTooLarge,
            format!("the range end is {} bytes; the limit is {MAX_KEY_BYTES}", range_end.len()),
        ));
    }
    Ok(())
}

fn key_values(pairs: Vec<(Vec<u8>, KeyRecord)>) -> Vec<wire::KeyValue> {
    pairs.into_iter().map(|(k, r)| key_value(k, r)).collect()
}

/// The answer to a transaction (or a nested one) applied at `revision`.
fn wire_response(result: TxnResult, revision: u64) -> wire::TxnResponse {
    let responses = result
        .responses
        .into_iter()
        .map(|response| match response {
            OpResponse::Range { kvs, count, more } => {
                wire::TxnOpResponse::Range(wire::TxnRangeResponse { kvs: key_values(kvs), count, more })
            }
            OpResponse::Put { prev } => {
                wire::TxnOpResponse::Put(wire::TxnPutResponse { prev_kv: prev.map(|(k, r)| key_value(k, r)) })
            }
            OpResponse::DeleteRange { deleted, prev } => {
                wire::TxnOpResponse::DeleteRange(wire::TxnDeleteRangeResponse {
                    deleted,
                    prev_kvs: key_values(prev),
                })
            }
            OpResponse::Txn(nested) => wire::TxnOpResponse::Txn(wire_response(nested, revision)),
        })
        .collect();
    wire::TxnResponse { succeeded: result.succeeded, revision, responses }
}
