//! Auth tokens: what `Authenticate` hands a user, presented with each request after it.
//!
//! A token names the user, the auth revision it was issued at and when it expires, signed with
//! HMAC-SHA256 under a key the cluster keeps in its replicated auth state (chosen when auth is
//! enabled), so every member checks a token any member issued, without asking the others —
//! etcd's JWT tokens, without the configuration. A token issued before any change to users,
//! roles or permissions is answered "revision of auth store is old", and clients authenticate
//! again (etcd's rule: a grant or a revoke takes effect on the next request).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use serde::{Deserialize, Serialize};

/// What a token says of its bearer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    #[serde(rename = "u")]
    pub user: String,
    /// The auth revision the token was issued at.
    #[serde(rename = "r")]
    pub revision: u64,
    /// Seconds since the Unix epoch after which the token is refused.
    #[serde(rename = "e")]
    pub expires: u64,
}

/// The token for `claims`, signed with `key`.
pub fn issue(key: &[u8], claims: &Claims) -> String {
    let payload = serde_json::to_vec(claims).unwrap_or_default();
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), &payload);
    format!("{}.{}", URL_SAFE_NO_PAD.encode(&payload), URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// The claims of `token` if `key` signed it and it has not expired at `now` (Unix seconds).
pub fn check(key: &[u8], token: &str, now: u64) -> Option<Claims> {
    let (payload, tag) = token.split_once('.')?;
    let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
    // Constant time: a forger learns nothing from how long a refusal takes.
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, key), &payload, &tag).ok()?;
    let claims: Claims = serde_json::from_slice(&payload).ok()?;
    (now < claims.expires).then_some(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Claims {
        Claims { user: "alice".into(), revision: 7, expires: 1_000 }
    }

    #[test]
    fn a_token_says_who_and_at_which_revision_until_it_expires() {
        let token = issue(b"key", &alice());
        assert_eq!(check(b"key", &token, 999), Some(alice()));
        assert_eq!(check(b"key", &token, 1_000), None, "expired");
    }

    #[test]
    fn a_token_signed_with_another_key_or_altered_is_refused() {
        let token = issue(b"key", &alice());
        assert_eq!(check(b"another key", &token, 0), None);
        let (_, tag) = token.split_once('.').expect("two parts");
        let mallory = Claims { user: "root".into(), ..alice() };
        let forged = format!("{}.{tag}", URL_SAFE_NO_PAD.encode(serde_json::to_vec(&mallory).expect("json")));
        assert_eq!(check(b"key", &forged, 0), None);
        for garbage in ["", ".", "a.b", "no dot", "é.é"] {
            assert_eq!(check(b"key", garbage, 0), None, "{garbage:?}");
        }
    }
}
