//! Validation of what clients send: keys, bodies, read and write conditions. Everything here
//! answers bad input with an [`ApiError`]; nothing panics and nothing reaches raft unchecked.

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use metastore_client::ErrorCode;
use metastore_client::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
use percent_encoding::percent_decode_str;
use warp::Filter;

use super::error::ApiError;
use super::query::Query;
use crate::engine::Precondition;
use crate::service::ReadConsistency;

/// Largest request body on the client port: a value, or a JSON document.
pub const MAX_BODY_BYTES: usize = MAX_VALUE_BYTES;

/// A key from its percent-encoded URL path form: any bytes.
pub fn key_from_path(encoded: &str) -> Result<Vec<u8>, ApiError> {
    let key: Vec<u8> = percent_decode_str(encoded).collect();
    check_key(&key)?;
    Ok(key)
}

pub fn check_key(key: &[u8]) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::new(ErrorCode::InvalidKey, "the key is empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::new(
            ErrorCode::KeyTooLarge,
            format!("the key is {} bytes; the limit is {MAX_KEY_BYTES}", key.len()),
        ));
    }
    Ok(())
}

/// How a key is named in messages: as text where it is, else escaped.
pub fn show_key(key: &[u8]) -> String {
    format!("\"{}\"", key.escape_ascii())
}

/// The request body, read up to `MAX_BODY_BYTES`; a larger one is refused without reading it all.
pub fn body() -> impl Filter<Extract = (Result<Bytes, ApiError>,), Error = warp::Rejection> + Clone {
    body_up_to(MAX_BODY_BYTES)
}

/// The request body, read up to `limit` bytes.
pub fn body_up_to(
    limit: usize,
) -> impl Filter<Extract = (Result<Bytes, ApiError>,), Error = warp::Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .then(move |declared: Option<u64>, stream| async move { collect(declared, stream, limit).await })
}

async fn collect<S, B>(declared: Option<u64>, stream: S, limit: usize) -> Result<Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let too_large = |size: u64| {
        ApiError::new(
            ErrorCode::BodyTooLarge,
            format!("the body is at least {size} bytes; the limit is {limit}"),
        )
    };
    if let Some(size) = declared.filter(|s| *s > limit as u64) {
        return Err(too_large(size));
    }
    let mut stream = std::pin::pin!(stream);
    let mut body = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let mut chunk =
            chunk.map_err(|e| ApiError::new(ErrorCode::BadBody, format!("reading the body failed: {e}")))?;
        if body.len() + chunk.remaining() > limit {
            return Err(too_large((body.len() + chunk.remaining()) as u64));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            body.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(body.freeze())
}

/// A JSON request body as `T`; anything else is 400 `invalid_json`.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(ErrorCode::InvalidJson, format!("invalid JSON body: {e}")))
}

/// A `name=true|false` query flag (a bare `name` is true); absent is false.
pub fn flag(query: &Query, name: &str) -> Result<bool, ApiError> {
    match query.text(name)? {
        None | Some("false") => Ok(false),
        Some("true") | Some("") => Ok(true),
        Some(other) => {
            Err(ApiError::new(ErrorCode::BadRequest, format!("{name} must be true or false, not {other:?}")))
        }
    }
}

pub fn consistency(query: &Query) -> Result<ReadConsistency, ApiError> {
    match query.text("consistency")? {
        None | Some("linearizable") | Some("") => Ok(ReadConsistency::Linearizable),
        Some("stale") | Some("serializable") => Ok(ReadConsistency::Stale),
        Some(other) => Err(ApiError::new(
            ErrorCode::InvalidConsistency,
            format!("consistency must be linearizable or stale, not {other:?}"),
        )),
    }
}

/// The revision a read is at: `revision=R`, or the current one when absent (or 0, as etcd).
pub fn read_revision(query: &Query) -> Result<Option<u64>, ApiError> {
    match query.text("revision")? {
        None | Some("") => Ok(None),
        Some(r) => r.parse::<u64>().map(|r| Some(r).filter(|r| *r != 0)).map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidRevision,
                format!("revision must be a revision number, not {r:?}"),
            )
        }),
    }
}

/// The compare-and-swap condition of a write: `if_absent=true` or `if_mod_revision=N`.
pub fn precondition(query: &Query) -> Result<Option<Precondition>, ApiError> {
    let absent = match query.text("if_absent")? {
        None | Some("false") => false,
        Some("true") | Some("") => true,
        Some(other) => {
            return Err(ApiError::new(
                ErrorCode::InvalidPrecondition,
                format!("if_absent must be true or false, not {other:?}"),
            ))
        }
    };
    let revision = query
        .text("if_mod_revision")?
        .map(|r| {
            r.parse::<u64>().map_err(|_| {
                ApiError::new(
                    ErrorCode::InvalidPrecondition,
                    format!("if_mod_revision must be a revision number, not {r:?}"),
                )
            })
        })
        .transpose()?;
    match (absent, revision) {
        (true, Some(_)) => Err(ApiError::new(
            ErrorCode::InvalidPrecondition,
            "give either if_absent or if_mod_revision, not both",
        )),
        (true, None) => Ok(Some(Precondition::Absent)),
        (false, Some(rev)) => Ok(Some(Precondition::ModRevision(rev))),
        (false, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Query {
        let raw: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        Query::parse(&raw.join("&"), &["consistency", "if_absent", "if_mod_revision"]).expect("valid")
    }

    #[test]
    fn keys_are_percent_decoded_to_bytes() {
        assert_eq!(key_from_path("a%2Fb%20c").ok().as_deref(), Some(&b"a/b c"[..]));
        assert_eq!(key_from_path("dir/key").ok().as_deref(), Some(&b"dir/key"[..]));
        assert_eq!(key_from_path("bad%FFkey%00").ok().as_deref(), Some(&b"bad\xffkey\x00"[..]));
    }

    #[test]
    fn keys_that_are_not_text_are_shown_escaped() {
        assert_eq!(show_key(b"a/b"), "\"a/b\"");
        assert_eq!(show_key(b"\xff\x00"), "\"\\xff\\x00\"");
    }

    #[test]
    fn empty_and_oversized_keys_are_refused() {
        assert_eq!(key_from_path("").expect_err("empty").code, ErrorCode::InvalidKey);
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert_eq!(key_from_path("%00").ok().as_deref(), Some(&[0u8][..]), "one zero byte is a key");
        assert_eq!(key_from_path(&long).expect_err("long").code, ErrorCode::KeyTooLarge);
        assert!(key_from_path(&"k".repeat(MAX_KEY_BYTES)).is_ok());
    }

    #[test]
    fn preconditions_parse_and_conflicting_ones_are_refused() {
        assert_eq!(precondition(&q(&[])).ok(), Some(None));
        assert_eq!(precondition(&q(&[("if_absent", "true")])).ok(), Some(Some(Precondition::Absent)));
        assert_eq!(
            precondition(&q(&[("if_mod_revision", "7")])).ok(),
            Some(Some(Precondition::ModRevision(7)))
        );
        assert!(precondition(&q(&[("if_mod_revision", "x")])).is_err());
        assert!(precondition(&q(&[("if_absent", "true"), ("if_mod_revision", "3")])).is_err());
    }

    #[test]
    fn consistency_defaults_to_linearizable() {
        assert_eq!(consistency(&q(&[])).ok(), Some(ReadConsistency::Linearizable));
        assert_eq!(consistency(&q(&[("consistency", "stale")])).ok(), Some(ReadConsistency::Stale));
        assert!(consistency(&q(&[("consistency", "eventual")])).is_err());
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_as_it_streams() {
        let chunks =
            vec![Ok::<_, warp::Error>(Bytes::from(vec![0u8; MAX_BODY_BYTES])), Ok(Bytes::from_static(b"x"))];
        let err = collect(None, futures::stream::iter(chunks), MAX_BODY_BYTES).await.expect_err("refused");
        assert_eq!(err.code, ErrorCode::BodyTooLarge);
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_before_reading() {
        let err =
            collect(Some(u64::MAX), futures::stream::empty::<Result<Bytes, warp::Error>>(), MAX_BODY_BYTES)
                .await
                .expect_err("refused");
        assert_eq!(err.code, ErrorCode::BodyTooLarge);
    }
}
