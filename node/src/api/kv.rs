//! The versioned key-value API: `/v1/kv/{key}` and the `/v1/kv` range listing.
//!
//! Keys are bytes: percent-encoded in paths and query parameters, base64 in JSON. Every answer
//! reports the store revision it was served at: in the JSON body where there is one, and in the
//! `x-metastore-revision` header (a missing key's 404 too).

use bytes::Bytes;
use metastore_client::ErrorCode;
use metastore_client::{
    CompactRequest, CompactResponse, DeleteResponse, KeyValue, PutResponse, RangeResponse, MAX_RANGE_LIMIT,
};
use warp::path::Tail;
use warp::reply::{Reply, Response};
use warp::Filter;

use super::auth::{caller, credentials, may_read};
use super::error::{respond, ApiError};
use super::input::{body, consistency, key_from_path, parse_json, precondition, read_revision, show_key};
use super::query::{params, Query};
use crate::auth::Caller;
use crate::engine::{KeyRecord, Op, OpResponse, Precondition, Txn, Write, WriteResult};
use crate::service::{Credentials, Need, Service};

const DEFAULT_RANGE_LIMIT: usize = 1_000;

/// The header naming the store revision an answer was served at.
pub const REVISION_HEADER: &str = "x-metastore-revision";

pub fn routes(service: Service) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let svc = warp::any().map(move || service.clone());
    let key = warp::path!("v1" / "kv" / ..).and(warp::path::tail());
    let get = warp::get()
        .and(key)
        .and(params(&["consistency", "revision"]))
        .and(credentials())
        .and(svc.clone())
        .then(|tail: Tail, q, c, s| async move { respond(get_key(tail.as_str(), q, c, s).await) });
    let put = warp::put()
        .and(key)
        .and(params(&["if_absent", "if_mod_revision", "lease"]))
        .and(body())
        .and(credentials())
        .and(svc.clone())
        .then(|tail: Tail, q, body: Result<Bytes, ApiError>, c, s| async move {
            respond(put_key(tail.as_str(), q, body, c, s).await)
        });
    let delete = warp::delete()
        .and(key)
        .and(params(&["if_absent", "if_mod_revision"]))
        .and(credentials())
        .and(svc.clone())
        .then(|tail: Tail, q, c, s| async move { respond(delete_key(tail.as_str(), q, c, s).await) });
    let range = warp::get()
        .and(warp::path!("v1" / "kv"))
        .and(params(&["prefix", "start", "end", "limit", "consistency", "revision"]))
        .and(credentials())
        .and(svc.clone())
        .then(|q, c, s| async move { respond(range(q, c, s).await) });
    let compact = warp::post()
        .and(warp::path!("v1" / "compact"))
        .and(params(&[]))
        .and(body())
        .and(credentials())
        .and(svc)
        .then(|q: Result<Query, ApiError>, body: Result<Bytes, ApiError>, c, s| async move {
            respond(compact(q, body, c, s).await)
        });
    range.or(get).unify().or(put).unify().or(delete).unify().or(compact).unify()
}

async fn compact(
    q: Result<Query, ApiError>,
    body: Result<Bytes, ApiError>,
    credentials: Credentials,
    service: Service,
) -> Result<Response, ApiError> {
    q?;
    let request: CompactRequest = parse_json(&body?)?;
    let caller = caller(&service, &credentials)?;
    // History is everyone's: only a user may cut it short.
    service.authorize(caller.as_ref(), Need::User).await?;
    let compacted = service.compact(request.revision).await?;
    Ok(warp::reply::json(&CompactResponse { compacted }).into_response())
}

pub fn key_value(key: Vec<u8>, record: KeyRecord) -> KeyValue {
    KeyValue {
        key,
        value: record.value,
        create_revision: record.create_revision,
        mod_revision: record.mod_revision,
        version: record.version,
        lease: record.lease,
    }
}

/// `body` as JSON, with the revision it was served at in the header too.
pub fn json_at<T: serde::Serialize>(value: &T, revision: u64) -> Response {
    with_revision(warp::reply::json(value), revision)
}

pub fn with_revision(reply: impl Reply, revision: u64) -> Response {
    warp::reply::with_header(reply, REVISION_HEADER, revision).into_response()
}

/// The 409 for a write whose precondition did not hold.
pub fn compare_failed(key: &[u8], result: &WriteResult) -> ApiError {
    let current = match &result.prev {
        Some(r) => format!("its mod revision is {}", r.mod_revision),
        None => "it does not exist".to_string(),
    };
    ApiError::new(
        ErrorCode::CompareFailed,
        format!("the precondition on key {} failed: {current}", show_key(key)),
    )
    .at_revision(result.revision)
}

/// The 404 for a key that does not exist at `revision`.
pub fn key_not_found(key: &[u8], revision: u64) -> ApiError {
    ApiError::new(ErrorCode::KeyNotFound, format!("key {} does not exist", show_key(key)))
        .at_revision(revision)
}

async fn get_key(
    tail: &str,
    q: Result<Query, ApiError>,
    credentials: Credentials,
    service: Service,
) -> Result<Response, ApiError> {
    let key = key_from_path(tail)?;
    let q = q?;
    let caller = caller(&service, &credentials)?;
    let read = service.get(caller.as_ref(), key.clone(), consistency(&q)?, read_revision(&q)?).await?;
    match read.record {
        Some(record) => Ok(json_at(&key_value(key, record), read.revision)),
        None => Err(key_not_found(&key, read.revision)),
    }
}

async fn put_key(
    tail: &str,
    q: Result<Query, ApiError>,
    body: Result<Bytes, ApiError>,
    credentials: Credentials,
    service: Service,
) -> Result<Response, ApiError> {
    let key = key_from_path(tail)?;
    let q = q?;
    let precondition = precondition(&q)?;
    let value = body?.to_vec();
    let caller = caller(&service, &credentials)?;
    let readable = readable(&service, caller.as_ref(), &key, precondition).await?;
    if let Some(lease) = lease(&q)? {
        return put_leased(caller.as_ref(), key, value, lease, precondition, readable, service).await;
    }
    let result = service.write(caller.as_ref(), Write::Put { key: key.clone(), value, precondition }).await?;
    if !result.succeeded {
        return Err(compare_failed(&key, &result));
    }
    let prev_kv = result.prev.filter(|_| readable).map(|r| key_value(key, r));
    Ok(json_at(&PutResponse { revision: result.revision, prev_kv }, result.revision))
}

/// `lease=ID` on a put: the lease to attach the key to.
fn lease(q: &Query) -> Result<Option<i64>, ApiError> {
    match q.text("lease")? {
        None | Some("") | Some("0") => Ok(None),
        Some(text) => text.parse::<i64>().ok().filter(|id| *id > 0).map(Some).ok_or_else(|| {
            ApiError::new(ErrorCode::InvalidLease, format!("lease must be a positive lease id, not {text:?}"))
        }),
    }
}

/// Whether the answer to a write may show the key's previous state: a precondition reads the
/// key, so it needs read permission; without one, the answer just leaves it out.
async fn readable(
    service: &Service,
    caller: Option<&Caller>,
    key: &[u8],
    precondition: Option<Precondition>,
) -> Result<bool, ApiError> {
    if precondition.is_some() {
        service.authorize(caller, Need::Read(key, &[])).await?;
        return Ok(true);
    }
    may_read(service, caller, key).await
}

/// A put attached to a lease: a one-put transaction, since only transactions carry leases,
/// its compare the precondition, its failure list a read of the key (for the 409).
async fn put_leased(
    caller: Option<&Caller>,
    key: Vec<u8>,
    value: Vec<u8>,
    lease: i64,
    precondition: Option<Precondition>,
    readable: bool,
    service: Service,
) -> Result<Response, ApiError> {
    let compares = precondition.map(|p| p.compare(&key)).into_iter().collect();
    let put = Op::Put { key: key.clone(), value, lease, prev_kv: readable };
    let read =
        Op::Range { key: key.clone(), range_end: Vec::new(), limit: 1, keys_only: false, count_only: false };
    let failure = if precondition.is_some() { vec![read] } else { Vec::new() };
    let result = service.txn(caller, Txn { compares, success: vec![put], failure }).await?;
    let prev = match result.responses.into_iter().next() {
        Some(OpResponse::Put { prev }) => prev.map(|(_, record)| record),
        Some(OpResponse::Range { kvs, .. }) => kvs.into_iter().next().map(|(_, record)| record),
        _ => None,
    };
    if !result.succeeded {
        let refused =
            WriteResult { revision: result.revision, succeeded: false, prev, responses: Vec::new() };
        return Err(compare_failed(&key, &refused));
    }
    let prev_kv = prev.map(|r| key_value(key, r));
    Ok(json_at(&PutResponse { revision: result.revision, prev_kv }, result.revision))
}

async fn delete_key(
    tail: &str,
    q: Result<Query, ApiError>,
    credentials: Credentials,
    service: Service,
) -> Result<Response, ApiError> {
    let key = key_from_path(tail)?;
    let precondition = precondition(&q?)?;
    let caller = caller(&service, &credentials)?;
    let readable = readable(&service, caller.as_ref(), &key, precondition).await?;
    let result = service.write(caller.as_ref(), Write::Delete { key: key.clone(), precondition }).await?;
    if !result.succeeded {
        return Err(compare_failed(&key, &result));
    }
    let deleted = result.prev.is_some();
    let prev_kv = result.prev.filter(|_| readable).map(|r| key_value(key, r));
    let deleted = DeleteResponse { revision: result.revision, deleted, prev_kv };
    Ok(json_at(&deleted, result.revision))
}

/// The first key after every key that starts with `prefix` (None: no such bound).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The `[start, end)` byte interval a range request asks for.
fn interval(q: &Query) -> Result<(Vec<u8>, Option<Vec<u8>>), ApiError> {
    let param = |name: &str| q.bytes(name).filter(|v| !v.is_empty()).map(<[u8]>::to_vec);
    let (prefix, start, end) = (param("prefix"), param("start"), param("end"));
    if prefix.is_some() && end.is_some() {
        return Err(ApiError::new(ErrorCode::InvalidRange, "give either prefix or end, not both"));
    }
    Ok(match prefix {
        Some(prefix) => {
            let end = prefix_end(&prefix);
            // `start` continues a paginated prefix listing.
            let start = start.filter(|s| *s > prefix).unwrap_or(prefix);
            (start, end)
        }
        None => (start.unwrap_or_default(), end),
    })
}

async fn range(
    q: Result<Query, ApiError>,
    credentials: Credentials,
    service: Service,
) -> Result<Response, ApiError> {
    let q = q?;
    let (start, end) = interval(&q)?;
    let limit = match q.text("limit")? {
        None => DEFAULT_RANGE_LIMIT,
        Some(l) => {
            l.parse::<usize>().ok().filter(|l| (1..=MAX_RANGE_LIMIT).contains(l)).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidLimit,
                    format!("limit must be between 1 and {MAX_RANGE_LIMIT}, not {l:?}"),
                )
            })?
        }
    };
    let caller = caller(&service, &credentials)?;
    let page =
        service.range(caller.as_ref(), start, end, limit, consistency(&q)?, read_revision(&q)?).await?;
    let kvs: Vec<KeyValue> = page.entries.into_iter().map(|(k, r)| key_value(k, r)).collect();
    let listing = RangeResponse {
        kvs,
        more: page.next_key.is_some(),
        next_key: page.next_key,
        revision: page.revision,
    };
    Ok(json_at(&listing, page.revision))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Query {
        let raw: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        Query::parse(&raw.join("&"), &["prefix", "start", "end"]).expect("valid")
    }

    #[test]
    fn a_prefix_covers_exactly_the_keys_that_start_with_it() {
        assert_eq!(prefix_end(b"app/"), Some(b"app0".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }

    #[test]
    fn pagination_continues_inside_the_prefix() {
        let (start, end) = interval(&q(&[("prefix", "a/"), ("start", "a/m")])).expect("valid");
        assert_eq!((start, end), (b"a/m".to_vec(), Some(b"a0".to_vec())));
        let (start, _) = interval(&q(&[("prefix", "a/"), ("start", "0")])).expect("valid");
        assert_eq!(start, b"a/".to_vec(), "a start before the prefix is clamped to it");
    }

    #[test]
    fn prefix_and_end_together_are_refused() {
        assert!(interval(&q(&[("prefix", "a"), ("end", "b")])).is_err());
    }

    #[test]
    fn a_prefix_that_is_not_text_is_a_byte_prefix() {
        let (start, end) = interval(&q(&[("prefix", "%FE%FF")])).expect("valid");
        assert_eq!((start, end), (vec![0xfe, 0xff], Some(vec![0xff])));
    }

    #[test]
    fn no_parameters_list_everything() {
        assert_eq!(interval(&q(&[])).expect("valid"), (Vec::new(), None));
    }
}
