//! HTTP for object storage: hyper, with rustls on ring for `https://` endpoints — the TLS stack
//! kube already builds for the operator, trusting the system's certificate authorities.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector as TcpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use object_store::client::{
    ClientOptions, HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpRequestBody,
    HttpResponse, HttpResponseBody, HttpService,
};

/// How long a connection may take to open.
const CONNECT_WITHIN: Duration = Duration::from_secs(10);
/// How long a request may wait for its answer to begin; object_store retries one that times out.
const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// Makes object_store's HTTP clients.
#[derive(Debug, Default, Clone, Copy)]
pub struct HyperConnector;

impl HttpConnector for HyperConnector {
    fn connect(&self, _: &ClientOptions) -> object_store::Result<HttpClient> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = HttpsConnectorBuilder::new().with_provider_and_native_roots(provider).map_err(|e| {
            object_store::Error::Generic { store: "S3", source: format!("no TLS roots: {e}").into() }
        })?;
        let mut tcp = TcpConnector::new();
        tcp.set_connect_timeout(Some(CONNECT_WITHIN));
        tcp.enforce_http(false);
        let https = tls.https_or_http().enable_http1().enable_http2().wrap_connector(tcp);
        Ok(HttpClient::new(HyperService(Client::builder(TokioExecutor::new()).build(https))))
    }
}

#[derive(Debug)]
struct HyperService(Client<HttpsConnector<TcpConnector>, HttpRequestBody>);

#[async_trait::async_trait]
impl HttpService for HyperService {
    async fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let answer = tokio::time::timeout(ANSWER_WITHIN, self.0.request(request))
            .await
            .map_err(|elapsed| HttpError::new(HttpErrorKind::Timeout, elapsed))?
            .map_err(|e| {
                let kind = if e.is_connect() { HttpErrorKind::Connect } else { HttpErrorKind::Request };
                HttpError::new(kind, e)
            })?;
        Ok(answer
            .map(|body| HttpResponseBody::new(body.map_err(|e| HttpError::new(HttpErrorKind::Decode, e)))))
    }
}
