//! Certificates made up per test: a CA, and leaves for the names a member answers to, valid now
//! or already expired.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority, its key kept to issue leaves.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A certificate and its private key, PEM.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

/// Where a leaf (and the CA that checks it) were written.
#[derive(Clone, Debug)]
pub struct Files {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn key_pair() -> KeyPair {
    KeyPair::generate().expect("an ECDSA P-256 key")
}

impl Authority {
    /// A new CA named `name`, valid from an hour ago for a year.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::new()).expect("no names to check");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3_600)).into();
        params.not_after = (now + Duration::from_secs(365 * 86_400)).into();
        let key = key_pair();
        let certificate = params.self_signed(&key).expect("a self-signed CA");
        Self { issuer: Issuer::new(params, key), pem: certificate.pem() }
    }

    /// The CA's certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A leaf for `names` (DNS names or IP addresses), good for servers and clients alike, as
    /// a member's peer certificate must be; `common_name` is who it says it is. Valid from an
    /// hour ago for a day.
    pub fn issue(&self, common_name: &str, names: &[&str]) -> Leaf {
        let now = SystemTime::now();
        self.issue_valid(
            common_name,
            names,
            now - Duration::from_secs(3_600),
            now + Duration::from_secs(86_400),
        )
    }

    /// A leaf like [`Authority::issue`]'s that expired an hour ago.
    pub fn issue_expired(&self, common_name: &str, names: &[&str]) -> Leaf {
        let now = SystemTime::now();
        self.issue_valid(
            common_name,
            names,
            now - Duration::from_secs(2 * 86_400),
            now - Duration::from_secs(3_600),
        )
    }

    fn issue_valid(&self, common_name: &str, names: &[&str], from: SystemTime, until: SystemTime) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("names a certificate can hold");
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = from.into();
        params.not_after = until.into();
        let key = key_pair();
        let certificate = params.signed_by(&key, &self.issuer).expect("a leaf signed by the CA");
        Leaf { cert: certificate.pem(), key: key.serialize_pem() }
    }
}

impl Leaf {
    /// Writes the leaf as `<name>.crt` and `<name>.key` in `dir`, each replaced whole (as a
    /// renewal replaces them), the certificate first.
    pub fn write(&self, dir: &Path, name: &str) -> Files {
        let files = Files { cert: dir.join(format!("{name}.crt")), key: dir.join(format!("{name}.key")) };
        replace(&files.cert, &self.cert);
        replace(&files.key, &self.key);
        files
    }
}

/// Replaces `path`'s contents at once: written beside it, then renamed over it.
pub fn replace(path: &Path, contents: &str) {
    let fresh = path.with_extension("new");
    std::fs::write(&fresh, contents).expect("write a certificate file");
    std::fs::rename(&fresh, path).expect("rename a certificate file into place");
}
