//! TLS on a member's two listeners and on its calls to peers, with certificates and CAs read
//! again whenever their files change, so that a renewed certificate is used without a restart.
//!
//! The client listener takes a certificate, and optionally (`--client-cert-auth`) demands
//! certificates from a CA of its own; the peer listener always demands one from the peer CA,
//! and the member presents its peer certificate when it calls other members. Every new
//! connection uses the files' latest readable contents; connections already open keep theirs.

mod accept;
mod peer;
mod reload;

use std::path::PathBuf;
use std::sync::Arc;

use metastore_client::tls::{self as pem, TlsError};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{RootCertStore, ServerConfig};

pub use peer::peer_client_config;
pub use reload::Reloading;

/// The common name of the certificate a client connected with, where the client listener
/// demands certificates: the user its requests come from when they carry no token (etcd's
/// rule). Set on every request of the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientName(pub String);

impl ClientName {
    /// The common name of the certificate the client presented on `stream`, which rustls
    /// verified against the client CA during the handshake; none without one.
    pub fn of<IO>(stream: &tokio_rustls::server::TlsStream<IO>) -> Option<Self> {
        let der = stream.get_ref().1.peer_certificates()?.first()?;
        let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
        let name = certificate.subject().iter_common_name().next()?.as_str().ok()?;
        Some(Self(name.to_owned()))
    }
}

/// The protocols both listeners speak: gRPC needs `h2` offered (grpc-go refuses TLS without
/// it), the HTTP API and the peer protocol are HTTP/1.1.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Where one listener's TLS material lives, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CAs whose certificates clients (or peers) present; `None`: none asked for.
    pub client_ca: Option<PathBuf>,
    /// Whether every client must present one (else it is checked only when presented).
    pub require_client_cert: bool,
}

impl TlsFiles {
    fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.cert, &self.key].into_iter().chain(self.client_ca.as_ref())
    }
}

/// What one reading of a listener's files makes: the server side of its connections, and
/// for the peer listener the client side of calls to other members too.
#[derive(Debug)]
pub struct Material {
    /// This member's certificate chain and key.
    pub identity: Arc<CertifiedKey>,
    /// The CAs trusted for certificates presented to this member, and by this member's calls.
    pub trusted: Option<Arc<RootCertStore>>,
    pub server: Arc<ServerConfig>,
}

impl Material {
    /// Parses and checks the contents of `files` (in [`TlsFiles::paths`] order).
    fn build(files: &TlsFiles, contents: &[Vec<u8>]) -> Result<Self, TlsError> {
        let (cert, key) = (&contents[0], &contents[1]);
        let identity = Arc::new(pem::certified_key((&files.cert, cert), (&files.key, key))?);
        let trusted = match (&files.client_ca, contents.get(2)) {
            (Some(path), Some(ca)) => Some(Arc::new(pem::roots(path, ca)?)),
            _ if files.require_client_cert => {
                return Err(TlsError::Config(
                    "client certificates demanded, but no CA to check them against".into(),
                ))
            }
            _ => None,
        };
        let builder = ServerConfig::builder_with_provider(pem::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &trusted {
            Some(roots) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), pem::provider());
                let verifier =
                    if files.require_client_cert { verifier } else { verifier.allow_unauthenticated() };
                builder
                    .with_client_cert_verifier(verifier.build().map_err(|e| TlsError::Config(e.to_string()))?)
            }
            None => builder.with_no_client_auth(),
        };
        let mut server = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(identity.clone())));
        server.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Self { identity, trusted, server: Arc::new(server) })
    }
}
