//! Query strings. Each endpoint names the parameters it takes, and a request with any other is
//! refused with a 400 naming it: a misspelt condition (`?prev_revision=` for `?if_mod_revision=`)
//! must never turn a compare-and-swap into a blind write. Values are percent-decoded to bytes,
//! so a range can start at a key that is not text.

use metastore_client::ErrorCode;
use percent_encoding::percent_decode;
use warp::Filter;

use super::error::ApiError;

/// A request's query parameters, each named once.
#[derive(Debug, Default)]
pub struct Query {
    params: Vec<(String, Vec<u8>)>,
}

impl Query {
    /// Parses `raw` (without the `?`), taking only the parameters in `allowed`.
    pub fn parse(raw: &str, allowed: &[&str]) -> Result<Self, ApiError> {
        let mut params: Vec<(String, Vec<u8>)> = Vec::new();
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = String::from_utf8(decode(name)).map_err(|_| {
                ApiError::new(ErrorCode::InvalidQuery, "a query parameter's name is not UTF-8 once decoded")
            })?;
            if !allowed.contains(&name.as_str()) {
                let known = if allowed.is_empty() {
                    "this endpoint takes none".to_string()
                } else {
                    format!("this endpoint takes {}", allowed.join(", "))
                };
                return Err(ApiError::new(
                    ErrorCode::UnknownParameter,
                    format!("unknown query parameter {name:?}: {known}"),
                ));
            }
            if params.iter().any(|(n, _)| *n == name) {
                return Err(ApiError::new(
                    ErrorCode::DuplicateParameter,
                    format!("query parameter {name:?} is given more than once"),
                ));
            }
            params.push((name, decode(value)));
        }
        Ok(Self { params })
    }

    /// The parameter's value as bytes, if given.
    pub fn bytes(&self, name: &str) -> Option<&[u8]> {
        self.params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }

    /// The parameter's value as text, if given; a value that is not UTF-8 is a 400.
    pub fn text(&self, name: &str) -> Result<Option<&str>, ApiError> {
        self.bytes(name)
            .map(|v| {
                std::str::from_utf8(v).map_err(|_| {
                    ApiError::new(ErrorCode::InvalidQuery, format!("query parameter {name:?} is not UTF-8"))
                })
            })
            .transpose()
    }
}

/// Form encoding: `+` is a space, `%XX` a byte.
fn decode(part: &str) -> Vec<u8> {
    let spaced = part.replace('+', " ");
    percent_decode(spaced.as_bytes()).collect()
}

/// The request's query, taking only the parameters in `allowed` (a request without a query
/// string has none).
pub fn params(
    allowed: &'static [&'static str],
) -> impl Filter<Extract = (Result<Query, ApiError>,), Error = std::convert::Infallible> + Clone {
    warp::query::raw()
        .or(warp::any().map(String::new))
        .unify()
        .map(move |raw: String| Query::parse(&raw, allowed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_decode_to_bytes() {
        let q = Query::parse("start=%FF%00a&prefix=a+b%2Fc", &["start", "prefix"]).expect("valid");
        assert_eq!(q.bytes("start"), Some(&b"\xff\x00a"[..]));
        assert_eq!(q.text("prefix").expect("text"), Some("a b/c"));
        assert!(q.text("start").is_err(), "not text");
        assert_eq!(q.bytes("limit"), None);
    }

    #[test]
    fn an_unknown_parameter_is_refused_by_name() {
        let refused = Query::parse("prev_revision=1", &["if_mod_revision"]).expect_err("unknown");
        assert_eq!(refused.code, ErrorCode::UnknownParameter);
        assert!(refused.message.contains("prev_revision"), "{}", refused.message);
        assert!(refused.message.contains("if_mod_revision"), "{}", refused.message);
        assert!(Query::parse("x", &[]).is_err(), "an endpoint without parameters takes none");
    }

    #[test]
    fn a_repeated_parameter_is_refused() {
        let refused = Query::parse("limit=1&limit=2", &["limit"]).expect_err("repeated");
        assert_eq!(refused.code, ErrorCode::DuplicateParameter);
    }

    #[test]
    fn an_empty_query_and_a_bare_name_parse() {
        assert_eq!(Query::parse("", &[]).expect("empty").bytes("a"), None);
        assert_eq!(
            Query::parse("if_absent&", &["if_absent"]).expect("bare").bytes("if_absent"),
            Some(&b""[..])
        );
    }
}
