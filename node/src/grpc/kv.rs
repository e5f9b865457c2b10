//! The KV service: range, put, delete range, transactions, compaction.

use metastore_etcd_proto::etcdserverpb::kv_server::Kv;
use metastore_etcd_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use prost::Message;
use tonic::{Request, Response, Status};

use super::convert::{self, interval, key_value, key_values, signed, unsigned};
use super::errors::{self, invalid, status};
use super::{Etcd, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES};
use crate::auth::Caller;
use crate::engine::{Compare, CompareResult, CompareTarget, KeyRecord, Op, OpResponse, Txn, Write};
use crate::service::{Need, ReadConsistency};

/// How many times a put that keeps the key's value or lease re-reads a key that changed
/// between its read and its write.
const KEEPING_ATTEMPTS: usize = 16;

fn check_size(request: &impl Message) -> Result<(), Status> {
    if request.encoded_len() > MAX_REQUEST_BYTES {
        return Err(invalid(errors::REQUEST_TOO_LARGE));
    }
    Ok(())
}

fn check_key(key: &[u8]) -> Result<(), Status> {
    if key.is_empty() {
        return Err(invalid(errors::KEY_NOT_PROVIDED));
    }
    Ok(())
}

#[tonic::async_trait]
impl Kv for Etcd {
    #[tracing::instrument(level = "debug", skip_all, fields(member = self.service.id()))]
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        check_key(&r.key)?;
        let (start, end) = interval(&r.key, &r.range_end);
        let at = Some(unsigned(r.revision)).filter(|at| *at > 0);
        let consistency = if r.serializable { ReadConsistency::Stale } else { ReadConsistency::Linearizable };
        let (selected, revision) = self
            .service
            .select(caller.as_ref(), start, end, at, convert::selection(&r), consistency, MAX_RESPONSE_BYTES)
            .await
            .map_err(status)?;
        Ok(Response::new(RangeResponse {
            header: Some(self.header(revision)),
            kvs: key_values(selected.kvs),
            more: selected.more,
            count: signed(selected.count),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(member = self.service.id()))]
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let caller = self.caller(&request)?;
        let p = request.into_inner();
        check_size(&p)?;
        check_key(&p.key)?;
        let want_prev = p.prev_kv;
        if want_prev {
            self.service.authorize(caller.as_ref(), Need::Read(&p.key, &[])).await.map_err(status)?;
        }
        let caller = caller.as_ref();
        let (prev, revision) = if p.ignore_value || p.ignore_lease {
            self.put_keeping(caller, p).await?
        } else if p.lease != 0 {
            // Only a transaction's put carries a lease.
            let put = Op::Put { key: p.key, value: p.value, lease: p.lease, prev_kv: want_prev };
            let result = self
                .service
                .txn(caller, Txn { compares: vec![], success: vec![put], failure: vec![] })
                .await
                .map_err(status)?;
            let prev = match result.responses.into_iter().next() {
                Some(OpResponse::Put { prev }) => prev,
                _ => None,
            };
            (prev, result.revision)
        } else {
            let key = p.key.clone();
            let write = Write::Put { key: p.key, value: p.value, precondition: None };
            let result = self.service.write(caller, write).await.map_err(status)?;
            (result.prev.map(|record| (key, record)), result.revision)
        };
        Ok(Response::new(PutResponse {
            header: Some(self.header(revision)),
            prev_kv: prev.filter(|_| want_prev).map(|(k, r)| key_value(k, r)),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(member = self.service.id()))]
    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let caller = self.caller(&request)?;
        let d = request.into_inner();
        check_key(&d.key)?;
        if d.prev_kv {
            self.service
                .authorize(caller.as_ref(), Need::Read(&d.key, &d.range_end))
                .await
                .map_err(status)?;
        }
        let caller = caller.as_ref();
        let (deleted, prev, revision) = if d.range_end.is_empty() {
            let key = d.key.clone();
            let delete = Write::Delete { key: d.key, precondition: None };
            let result = self.service.write(caller, delete).await.map_err(status)?;
            let prev: Vec<_> = result.prev.map(|record| (key, record)).into_iter().collect();
            (prev.len() as u64, prev, result.revision)
        } else {
            let delete = Op::DeleteRange { key: d.key, range_end: d.range_end, prev_kv: d.prev_kv };
            let result = self
                .service
                .txn(caller, Txn { compares: vec![], success: vec![delete], failure: vec![] })
                .await
                .map_err(status)?;
            match result.responses.into_iter().next() {
                Some(OpResponse::DeleteRange { deleted, prev }) => (deleted, prev, result.revision),
                _ => (0, Vec::new(), result.revision),
            }
        };
        Ok(Response::new(DeleteRangeResponse {
            header: Some(self.header(revision)),
            deleted: signed(deleted),
            prev_kvs: if d.prev_kv { key_values(prev) } else { Vec::new() },
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(member = self.service.id()))]
    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        check_size(&request)?;
        let result =
            self.service.txn(caller.as_ref(), convert::txn(request.clone())?).await.map_err(status)?;
        let header = self.header(result.revision);
        let answer = crate::engine::TxnResult { succeeded: result.succeeded, responses: result.responses };
        Ok(Response::new(convert::txn_response(&request, answer, &header)?))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(member = self.service.id()))]
    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        // History is everyone's: only a user may cut it short.
        self.authorize(&request, Need::User).await?;
        let c = request.into_inner();
        self.service.compact(unsigned(c.revision)).await.map_err(status)?;
        let (revision, _) = self.service.reader().revisions().await.map_err(|e| status(e.into()))?;
        Ok(Response::new(CompactionResponse { header: Some(self.header(revision)) }))
    }
}

impl Etcd {
    /// A put that keeps the key's current value or lease: read the key, then write it only if
    /// it is still as read, again while it keeps changing. The key must exist.
    async fn put_keeping(
        &self,
        caller: Option<&Caller>,
        p: PutRequest,
    ) -> Result<(Option<(Vec<u8>, KeyRecord)>, u64), Status> {
        if p.ignore_value && !p.value.is_empty() {
            return Err(invalid("etcdserver: value is provided"));
        }
        if p.ignore_lease && p.lease != 0 {
            return Err(invalid("etcdserver: lease is provided"));
        }
        for _ in 0..KEEPING_ATTEMPTS {
            let read = self
                .service
                .get(caller, p.key.clone(), ReadConsistency::Stale, None)
                .await
                .map_err(status)?;
            let Some(current) = read.record else { return Err(invalid(errors::KEY_NOT_FOUND)) };
            let value = if p.ignore_value { current.value.clone() } else { p.value.clone() };
            let lease = if p.ignore_lease { current.lease } else { p.lease };
            let unchanged = Compare {
                key: p.key.clone(),
                range_end: Vec::new(),
                result: CompareResult::Equal,
                target: CompareTarget::ModRevision(current.mod_revision),
            };
            let put = Op::Put { key: p.key.clone(), value, lease, prev_kv: false };
            let txn = Txn { compares: vec![unchanged], success: vec![put], failure: vec![] };
            let result = self.service.txn(caller, txn).await.map_err(status)?;
            if result.succeeded {
                return Ok((Some((p.key, current)), result.revision));
            }
        }
        Err(Status::unavailable("the key kept changing while the put tried to keep its value or lease"))
    }
}
