//! Users' passwords: hashed where a request arrives (Argon2id, a PHC string that records its
//! salt and parameters), so only the hash travels through raft and rests on disk, as etcd keeps
//! only bcrypt hashes. Hashing and checking take tens of milliseconds by design: callers run
//! them on a blocking thread.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// The PHC string of `password` with a fresh salt.
pub fn hash(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default().hash_password(password.as_bytes(), &salt)?.to_string())
}

/// Whether `password` is the one `phc` was made from. A hash that does not parse matches
/// nothing.
pub fn matches(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_matches_its_hash_and_no_other_password_does() {
        let phc = hash("s3cret").expect("hash");
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(matches("s3cret", &phc));
        assert!(!matches("s3cret ", &phc));
        assert!(!matches("", &phc));
        assert_ne!(hash("s3cret").expect("hash"), phc, "each hash has its own salt");
        assert!(!matches("s3cret", "not a hash"));
    }
}
