//! Between etcd's messages and the engine's types. etcd's numbers are signed (revisions,
//! versions, lease ids); the engine's revisions are unsigned, and no revision reaches 2^63.

use metastore_etcd_proto::etcdserverpb::{
    compare, range_request, request_op, response_op, Compare as WireCompare, DeleteRangeResponse,
    PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use metastore_etcd_proto::mvccpb::KeyValue;
use tonic::Status;

use super::errors;
use crate::engine::{
    Compare, CompareResult, CompareTarget, KeyRecord, Op, OpResponse, Selection, SortOrder, SortTarget, Txn,
    TxnResult,
};

pub fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A revision or bound from a request: 0 or less means none.
pub fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

pub fn key_value(key: Vec<u8>, record: KeyRecord) -> KeyValue {
    KeyValue {
        key,
        create_revision: signed(record.create_revision),
        mod_revision: signed(record.mod_revision),
        version: signed(record.version),
        value: record.value,
        lease: record.lease,
    }
}

pub fn key_values(pairs: Vec<(Vec<u8>, KeyRecord)>) -> Vec<KeyValue> {
    pairs.into_iter().map(|(k, r)| key_value(k, r)).collect()
}

pub use crate::engine::interval;

/// A range request's options beyond its keys and revision.
pub fn selection(r: &RangeRequest) -> Selection {
    Selection {
        limit: unsigned(r.limit),
        keys_only: r.keys_only,
        count_only: r.count_only,
        sort_order: match r.sort_order() {
            range_request::SortOrder::None => SortOrder::None,
            range_request::SortOrder::Ascend => SortOrder::Ascend,
            range_request::SortOrder::Descend => SortOrder::Descend,
        },
        sort_target: match r.sort_target() {
            range_request::SortTarget::Key => SortTarget::Key,
            range_request::SortTarget::Version => SortTarget::Version,
            range_request::SortTarget::Create => SortTarget::Create,
            range_request::SortTarget::Mod => SortTarget::Mod,
            range_request::SortTarget::Value => SortTarget::Value,
        },
        min_mod_revision: unsigned(r.min_mod_revision),
        max_mod_revision: unsigned(r.max_mod_revision),
        min_create_revision: unsigned(r.min_create_revision),
        max_create_revision: unsigned(r.max_create_revision),
    }
}

/// A transaction as the engine runs it. A range inside one reads the keys as the transaction
/// finds them; its sort and filters are applied to the answer afterwards ([`txn_response`]).
pub fn txn(request: TxnRequest) -> Result<Txn, Status> {
    let ops = |ops: Vec<RequestOp>| ops.into_iter().map(op).collect::<Result<Vec<_>, _>>();
    Ok(Txn {
        compares: request.compare.into_iter().map(compare).collect::<Result<_, _>>()?,
        success: ops(request.success)?,
        failure: ops(request.failure)?,
    })
}

fn compare(c: WireCompare) -> Result<Compare, Status> {
    let result = match c.result() {
        compare::CompareResult::Equal => CompareResult::Equal,
        compare::CompareResult::NotEqual => CompareResult::NotEqual,
        compare::CompareResult::Less => CompareResult::Less,
        compare::CompareResult::Greater => CompareResult::Greater,
    };
    // The target names which operand field counts; a missing one compares with its zero value.
    let union = c.target_union.clone();
    let target = match c.target() {
        compare::CompareTarget::Version => Revisionish::Version(match union {
            Some(compare::TargetUnion::Version(v)) => v,
            _ => 0,
        }),
        compare::CompareTarget::Create => Revisionish::Create(match union {
            Some(compare::TargetUnion::CreateRevision(v)) => v,
            _ => 0,
        }),
        compare::CompareTarget::Mod => Revisionish::Mod(match union {
            Some(compare::TargetUnion::ModRevision(v)) => v,
            _ => 0,
        }),
        compare::CompareTarget::Value => {
            let value = match union {
                Some(compare::TargetUnion::Value(v)) => v,
                _ => Vec::new(),
            };
            return Ok(Compare {
                key: c.key,
                range_end: c.range_end,
                result,
                target: CompareTarget::Value(value),
            });
        }
        compare::CompareTarget::Lease => {
            let lease = match union {
                Some(compare::TargetUnion::Lease(v)) => v,
                _ => 0,
            };
            return Ok(Compare {
                key: c.key,
                range_end: c.range_end,
                result,
                target: CompareTarget::Lease(lease),
            });
        }
    };
    let (result, target) = target.unsigned(result);
    Ok(Compare { key: c.key, range_end: c.range_end, result, target })
}

/// A compare on a version or revision, whose operand etcd takes as signed.
enum Revisionish {
    Version(i64),
    Create(i64),
    Mod(i64),
}

impl Revisionish {
    /// The engine's compare, on unsigned numbers. A key's versions and revisions are never
    /// negative, so against a negative operand `>` and `!=` always hold and `=` and `<` never
    /// do: compared with a number no key reaches instead.
    fn unsigned(self, result: CompareResult) -> (CompareResult, CompareTarget) {
        let (operand, target): (i64, fn(u64) -> CompareTarget) = match self {
            Revisionish::Version(n) => (n, CompareTarget::Version),
            Revisionish::Create(n) => (n, CompareTarget::CreateRevision),
            Revisionish::Mod(n) => (n, CompareTarget::ModRevision),
        };
        match u64::try_from(operand) {
            Ok(n) => (result, target(n)),
            Err(_) => {
                let holds = matches!(result, CompareResult::Greater | CompareResult::NotEqual);
                let result = if holds { CompareResult::NotEqual } else { CompareResult::Equal };
                (result, target(u64::MAX))
            }
        }
    }
}

fn op(op: RequestOp) -> Result<Op, Status> {
    Ok(match op.request {
        Some(request_op::Request::RequestRange(r)) => {
            if r.revision > 0 {
                return Err(errors::invalid(
                    "a range inside a transaction reads the keys as the transaction finds them; \
                     metaStore does not read past revisions there",
                ));
            }
            let sorted_or_filtered = selection(&r).has_post_processing();
            Op::Range {
                key: r.key,
                range_end: r.range_end,
                // Every key, when the answer is sorted or filtered afterwards.
                limit: if sorted_or_filtered { 0 } else { unsigned(r.limit) },
                keys_only: r.keys_only,
                count_only: r.count_only,
            }
        }
        Some(request_op::Request::RequestPut(p)) => {
            if p.ignore_value || p.ignore_lease {
                return Err(errors::invalid(
                    "ignore_value and ignore_lease are not supported inside a transaction",
                ));
            }
            Op::Put { key: p.key, value: p.value, lease: p.lease, prev_kv: p.prev_kv }
        }
        Some(request_op::Request::RequestDeleteRange(d)) => {
            Op::DeleteRange { key: d.key, range_end: d.range_end, prev_kv: d.prev_kv }
        }
        Some(request_op::Request::RequestTxn(nested)) => Op::Txn(txn(nested)?),
        None => return Err(errors::invalid("etcdserver: a transaction operation names no request")),
    })
}

/// The answer to `request`, which the engine ran to `result`, with `header`. Every response in
/// it, nested ones included, carries a header naming the revision, and only that, as etcd's
/// do (Kubernetes reads a write's revision from there).
pub fn txn_response(
    request: &TxnRequest,
    result: TxnResult,
    header: &ResponseHeader,
) -> Result<TxnResponse, Status> {
    let nested = ResponseHeader { revision: header.revision, ..Default::default() };
    let ops = if result.succeeded { &request.success } else { &request.failure };
    let responses = ops
        .iter()
        .zip(result.responses)
        .map(|(op, response)| {
            let response = match response {
                OpResponse::Range { kvs, count, more } => {
                    let (kvs, more) = match &op.request {
                        Some(request_op::Request::RequestRange(r)) => reselect(r, kvs, more)?,
                        _ => (kvs, more),
                    };
                    response_op::Response::ResponseRange(RangeResponse {
                        header: Some(nested),
                        kvs: key_values(kvs),
                        more,
                        count: signed(count),
                    })
                }
                OpResponse::Put { prev } => response_op::Response::ResponsePut(PutResponse {
                    header: Some(nested),
                    prev_kv: prev.map(|(k, r)| key_value(k, r)),
                }),
                OpResponse::DeleteRange { deleted, prev } => {
                    response_op::Response::ResponseDeleteRange(DeleteRangeResponse {
                        header: Some(nested),
                        deleted: signed(deleted),
                        prev_kvs: key_values(prev),
                    })
                }
                OpResponse::Txn(result) => {
                    let empty = TxnRequest::default();
                    let request = match &op.request {
                        Some(request_op::Request::RequestTxn(request)) => request,
                        _ => &empty,
                    };
                    response_op::Response::ResponseTxn(txn_response(request, result, &nested)?)
                }
            };
            Ok(ResponseOp { response: Some(response) })
        })
        .collect::<Result<_, Status>>()?;
    Ok(TxnResponse { header: Some(*header), succeeded: result.succeeded, responses })
}

/// A transaction's range answer through the request's sort, filters and limit, which the
/// engine's range does not apply. The engine read every key for it; one it had to cut short
/// cannot be sorted or filtered truthfully, and is refused.
type Kvs = Vec<(Vec<u8>, KeyRecord)>;

fn reselect(r: &RangeRequest, kvs: Kvs, more: bool) -> Result<(Kvs, bool), Status> {
    let selection = selection(r);
    if !selection.has_post_processing() {
        return Ok((kvs, more));
    }
    if more {
        return Err(Status::resource_exhausted(
            "a sorted or filtered range inside a transaction holds more than a transaction may \
             answer; read it outside the transaction",
        ));
    }
    let mut selector = selection.selector(usize::MAX);
    for (key, record) in kvs {
        // Cannot fail: no bound on the size.
        let _ = selector.offer(&key, record);
    }
    let selected = selector.finish();
    Ok((selected.kvs, selected.more))
}
