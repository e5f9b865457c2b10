//! Peer authentication: a secret shared by the members of one cluster. Every peer request
//! carries it (`Authorization: Bearer`), and a member answers only requests that do, so a
//! stray process cannot vote, append, or forward writes into the cluster.

use std::path::Path;

use subtle::ConstantTimeEq;

/// The shortest token accepted: 128 bits as hex.
pub const MIN_TOKEN_CHARS: usize = 32;

#[derive(Clone, PartialEq, Eq)]
pub struct PeerToken(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the peer token must be at least {MIN_TOKEN_CHARS} characters (got {0})")]
    TooShort(usize),
    #[error("the peer token may hold only printable ASCII without spaces")]
    NotPrintable,
    #[error("cannot read the peer token file {path}: {reason}")]
    Unreadable { path: String, reason: String },
}

impl PeerToken {
    pub fn new(token: &str) -> Result<Self, TokenError> {
        let token = token.trim();
        if token.len() < MIN_TOKEN_CHARS {
            return Err(TokenError::TooShort(token.len()));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::NotPrintable);
        }
        Ok(Self(token.to_string()))
    }

    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|e| TokenError::Unreadable {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::new(&text)
    }

    /// The `Authorization` header value requests carry.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// Whether an `Authorization` header presents this token, in time independent of where
    /// a wrong one differs.
    pub fn admits(&self, header: Option<&str>) -> bool {
        let presented = header.and_then(|h| h.strip_prefix("Bearer ")).unwrap_or("");
        presented.as_bytes().ct_eq(self.0.as_bytes()).into()
    }
}

impl std::fmt::Debug for PeerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerToken(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn only_the_exact_token_is_admitted() {
        let token = PeerToken::new(TOKEN).expect("valid");
        assert!(token.admits(Some(&format!("Bearer {TOKEN}"))));
        assert!(!token.admits(None));
        assert!(!token.admits(Some(TOKEN)), "the scheme is part of the header");
        assert!(!token.admits(Some(&format!("Bearer {TOKEN}0"))));
        assert!(!token.admits(Some("Bearer 0123456789abcdef0123456789abcdeF")));
    }

    #[test]
    fn weak_or_malformed_tokens_are_refused_at_start() {
        assert_eq!(PeerToken::new("short"), Err(TokenError::TooShort(5)));
        assert_eq!(PeerToken::new(&format!("{TOKEN} x")), Err(TokenError::NotPrintable));
        assert!(PeerToken::new(&format!("  {TOKEN}\n")).is_ok(), "a file's trailing newline is fine");
    }

    #[test]
    fn the_token_never_shows_in_logs() {
        let token = PeerToken::new(TOKEN).expect("valid");
        assert!(!format!("{token:?}").contains("0123"));
    }
}
