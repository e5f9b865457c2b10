//! TLS for whoever talks to members: PEM files read into rustls's types, and the one way HTTP
//! clients are built in this workspace.
//!
//! reqwest is compiled without a crypto provider of its own (its choice, aws-lc, would be a
//! second C library to build beside RocksDB), so every client is handed a configured rustls
//! client on ring by [`http`] or [`http_with`]. A reqwest client built any other way panics
//! when built; clippy.toml forbids the other constructors.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore};

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a PEM file of {what}: {reason}")]
    NotPem { path: PathBuf, what: &'static str, reason: String },
    #[error("{path} holds no {what} (expected a PEM block such as \"-----BEGIN {label}-----\")")]
    Missing { path: PathBuf, what: &'static str, label: &'static str },
    #[error("the key in {key} cannot sign with the certificate in {cert}: {reason}")]
    KeyMismatch { cert: PathBuf, key: PathBuf, reason: String },
    #[error("{path}: {rejected} of its certificates cannot be trusted as a CA")]
    BadCa { path: PathBuf, rejected: usize },
    #[error("cannot configure TLS: {0}")]
    Config(String),
}

/// The crypto behind every TLS connection here: ring, shared.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}

/// A file's bytes, for the parsers below (and for telling whether it changed since).
pub fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

/// Every certificate in a PEM file's bytes, in order (a leaf first, then its chain).
pub fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| {
        TlsError::NotPem { path: path.to_path_buf(), what: "certificates", reason: e.to_string() }
    })?;
    if certificates.is_empty() {
        return Err(TlsError::Missing {
            path: path.to_path_buf(),
            what: "certificate",
            label: "CERTIFICATE",
        });
    }
    Ok(certificates)
}

/// The private key in a PEM file's bytes (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            TlsError::Missing { path: path.to_path_buf(), what: "private key", label: "PRIVATE KEY" }
        }
        e => TlsError::NotPem { path: path.to_path_buf(), what: "a private key", reason: e.to_string() },
    })
}

/// A certificate chain with its key, checked to belong together.
pub fn certified_key(cert: (&Path, &[u8]), key: (&Path, &[u8])) -> Result<CertifiedKey, TlsError> {
    let chain = certificates(cert.0, cert.1)?;
    let private = private_key(key.0, key.1)?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|e| TlsError::KeyMismatch {
        cert: cert.0.to_path_buf(),
        key: key.0.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The CAs in a PEM bundle. Every certificate must be usable: a bundle half ignored would
/// trust less than its author thinks, which shows only when a rotation reaches the other half.
pub fn roots(path: &Path, pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let (_, rejected) = roots.add_parsable_certificates(certificates(path, pem)?);
    if rejected > 0 {
        return Err(TlsError::BadCa { path: path.to_path_buf(), rejected });
    }
    Ok(roots)
}

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Identity {
    pub fn load(&self) -> Result<CertifiedKey, TlsError> {
        certified_key((&self.cert, &read(&self.cert)?), (&self.key, &read(&self.key)?))
    }
}

/// How a client trusts members and proves who it is, read from PEM files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// The CAs members' certificates come from; the system's roots when `None`.
    pub ca: Option<PathBuf>,
    /// The certificate presented to members that ask for one (`--client-cert-auth`).
    pub identity: Option<Identity>,
}

impl ClientTls {
    /// The rustls client these files make, read now.
    pub fn config(&self) -> Result<ClientConfig, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &self.ca {
            Some(ca) => builder.with_root_certificates(roots(ca, &read(ca)?)?),
            None => match system_roots() {
                Some(roots) => builder.dangerous().with_custom_certificate_verifier(roots),
                // Nothing to trust: https fails with an unknown issuer, plain http still works.
                None => builder.with_root_certificates(RootCertStore::empty()),
            },
        };
        let mut config = match &self.identity {
            Some(identity) => builder
                .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(identity.load()?))),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// Verifies servers against the system's trusted roots, as a browser would; read once per
/// process (the store is large). `None` on a machine without a store.
fn system_roots() -> Option<Arc<rustls_platform_verifier::Verifier>> {
    static ROOTS: OnceLock<Option<Arc<rustls_platform_verifier::Verifier>>> = OnceLock::new();
    ROOTS.get_or_init(|| rustls_platform_verifier::Verifier::new(provider()).ok().map(Arc::new)).clone()
}

/// A reqwest client builder that speaks https with `config`.
pub fn http_with(config: ClientConfig) -> reqwest::ClientBuilder {
    #[allow(clippy::disallowed_methods)] // this is the sanctioned way
    reqwest::Client::builder().tls_backend_preconfigured(config)
}

/// A reqwest client builder: https trusts what `tls` says (the system's roots when `None`).
pub fn http(tls: Option<&ClientTls>) -> Result<reqwest::ClientBuilder, TlsError> {
    Ok(http_with(tls.cloned().unwrap_or_default().config()?))
}

/// A rustls client that trusts no server: https refused, for clients meant for plain http.
pub fn trusting_nothing() -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(RootCertStore::empty()).with_no_client_auth())
        .expect("ring offers every default TLS version")
}

/// A reqwest client with reqwest's defaults, https trusting the system's roots: for tests and
/// tools that talk plain HTTP.
pub fn default_http() -> reqwest::Client {
    http(None)
        .unwrap_or_else(|_| http_with(trusting_nothing()))
        .build()
        // reqwest fails to build only on TLS, proxy or resolver settings, none of which is set.
        .expect("a reqwest client with a configured rustls and no proxy builds")
}
