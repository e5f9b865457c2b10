//! The client side of calls to other members: this member's peer certificate presented, and
//! the peer's checked against the peer CA, both as the peer listener's files say now.

use std::sync::Arc;

use metastore_client::tls::{self as pem, TlsError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use super::Reloading;

/// A rustls client for peer calls that follows the peer listener's files.
pub fn peer_client_config(peer: Reloading) -> Result<ClientConfig, TlsError> {
    let current = Arc::new(Current(peer));
    let mut config = ClientConfig::builder_with_provider(pem::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(current.clone())
        .with_client_cert_resolver(current);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // A resumed session skips the check of the peer's certificate: after a CA changes, every
    // new connection must be checked against the new one.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

#[derive(Debug)]
struct Current(Reloading);

impl Current {
    fn verifier(&self) -> Result<Arc<WebPkiServerVerifier>, rustls::Error> {
        let roots = self.0.current().trusted.clone().ok_or(rustls::Error::General(
            "the peer listener has no trusted CA to check peers against".into(),
        ))?;
        WebPkiServerVerifier::builder_with_provider(roots, pem::provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))
    }
}

impl ServerCertVerifier for Current {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verifier()?.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &pem::provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &pem::provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        pem::provider().signature_verification_algorithms.supported_schemes()
    }
}

impl ResolvesClientCert for Current {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().identity.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
