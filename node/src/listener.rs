//! Serving HTTP on a listener within limits, so that slow or numerous clients cannot take a
//! member down: at most `max_connections` connections at once (the rest wait in the kernel's
//! accept queue); a connection that does not send a request's headers within `header_timeout`
//! (slow-loris, or idle keep-alive) is closed, freeing its place; a client that stops taking
//! its answer for as long (never reading a large response) is closed too; and a request not
//! answered within `request_timeout` (a body sent a byte at a time, say) has its connection
//! closed. At shutdown, connections still open after the drain are closed.
//!
//! Connections speak HTTP/1.1 or HTTP/2 (told apart by the HTTP/2 preface), as etcd serves its
//! JSON and gRPC APIs on one port. An HTTP/2 connection between requests is left open (a gRPC
//! client keeps one for its lifetime), as long as it answers this member's pings; one that
//! has not begun a single request within `header_timeout` of connecting is closed, whatever it
//! speaks.
//!
//! On a TLS listener the handshake must also complete within `header_timeout`, with the
//! certificates its files hold at that moment (see [`crate::tls`]).
//!
//! warp's own server has neither limit and cannot be given them, so the filter is served here
//! with hyper directly. A request may upgrade its connection (see [`Upgrade`]); the upgraded
//! connection is the route's to bound from then on, and no longer counts here.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_io_timeout::TimeoutStream;

use crate::tls::Reloading;

/// How often an HTTP/2 connection is pinged, and how long its answer may take.
const H2_PING: Duration = Duration::from_secs(30);

/// How long in-flight requests get to finish once shutdown begins.
const DRAIN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    /// Also how long a write of the answer may wait for the client to read.
    pub header_timeout: Duration,
    /// Longer than any request takes when served normally: adding a learner waits up to 20 s
    /// for it to catch up, a snapshot chunk up to 10 s.
    pub request_timeout: Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A listener, with TLS if it speaks it, and the name the log gives it.
pub struct Listener {
    pub socket: TcpListener,
    pub tls: Option<Reloading>,
    pub name: &'static str,
}

/// A connection's byte stream, TLS or not.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send> Io for T {}

/// Serves `service` (a `warp::service(filter)`) on `listener` until `shutdown` completes, then
/// lets in-flight requests finish for a while.
pub async fn serve<S, B>(service: S, listener: Listener, limits: Limits, shutdown: impl Future<Output = ()>)
where
    S: tower_service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    // As many places as can be waited for at once at shutdown.
    let max_connections = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let places = Arc::new(Semaphore::new(max_connections));
    // Set when shutdown begins: connections finish the request in hand, then close.
    let (closing, closing_rx) = watch::channel(false);
    // Dropped once the drain is over, which closes every connection left.
    let (draining, drained) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let place = tokio::select! {
            place = places.clone().acquire_owned() => match place {
                Ok(place) => place,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, from) = tokio::select! {
            accepted = listener.socket.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: wait instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let with_timeouts = move |stream| {
            let mut stream = TimeoutStream::new(stream);
            stream.set_write_timeout(Some(limits.header_timeout));
            Box::pin(stream)
        };
        let (service, tls, name) = (service.clone(), listener.tls.clone(), listener.name);
        let (mut closing, mut drained) = (closing_rx.clone(), drained.clone());
        tokio::spawn(async move {
            let (stream, client): (std::pin::Pin<Box<dyn Io>>, _) = match tls {
                None => (with_timeouts(stream), None),
                Some(tls) => {
                    let handshake = tls.accept(stream, with_timeouts, from, limits.header_timeout, name);
                    let accepted = tokio::select! {
                        accepted = handshake => accepted,
                        // Shutting down: a connection that has not begun a request is done.
                        _ = closing.wait_for(|closing| *closing) => None,
                    };
                    match accepted {
                        Some(stream) => {
                            let client = crate::tls::ClientName::of(&stream);
                            (Box::pin(stream), client)
                        }
                        // Said why in the log; the place goes back with the task.
                        None => return,
                    }
                }
            };
            let begun = Arc::new(AtomicBool::new(false));
            let service = Upgradable {
                inner: Deadline { inner: service, limit: limits.request_timeout },
                begun: begun.clone(),
                client,
            };
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
            // A gRPC client keeps its connection for its lifetime, idle between requests: pings
            // tell one that is gone (no FIN: a host that died) from one that is only quiet.
            builder.http2().timer(TokioTimer::new()).keep_alive_interval(H2_PING).keep_alive_timeout(H2_PING);
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
                .into_owned();
            let header_timeout = limits.header_timeout;
            let mut connection = std::pin::pin!(connection);
            let first_request_overdue = async {
                tokio::time::sleep(header_timeout).await;
                if begun.load(Ordering::Relaxed) {
                    std::future::pending::<()>().await;
                }
            };
            let ended = tokio::select! {
                ended = connection.as_mut() => Some(ended),
                () = first_request_overdue => {
                    tracing::debug!("connection closed: no request began within {header_timeout:?}");
                    None
                }
                () = async { let _ = closing.wait_for(|closing| *closing).await; } => {
                    connection.as_mut().graceful_shutdown();
                    tokio::select! {
                        ended = connection.as_mut() => Some(ended),
                        _ = drained.changed() => None,
                    }
                }
            };
            match ended {
                // A client that hung up or timed out: its business, not this member's.
                Some(Err(e)) => tracing::debug!(error = %e, "connection ended with an error"),
                Some(Ok(())) => {}
                None => tracing::debug!("connection closed by this member"),
            }
            drop(place);
        });
    }
    drop(listener);
    let _ = closing.send(true);
    // Every place back means every connection has ended.
    let all_places = places.acquire_many(max_connections as u32);
    if tokio::time::timeout(DRAIN, all_places).await.is_err() {
        tracing::warn!("requests still in flight after {DRAIN:?}; closing them");
    }
    drop(draining);
}

/// A connection's pending upgrade, for the route that accepts it to take.
///
/// hyper hands a request that asks to upgrade its connection an `OnUpgrade` extension, which
/// warp filters cannot extract (`warp::ext` clones what it extracts); this can be extracted
/// with `warp::ext::optional::<Upgrade>()`, and the upgrade taken from it once.
#[derive(Clone)]
pub struct Upgrade(Arc<Mutex<Option<OnUpgrade>>>);

impl Upgrade {
    pub fn take(&self) -> Option<OnUpgrade> {
        self.0.lock().ok()?.take()
    }
}

/// Offers each request's upgrade, if it asks for one, as an [`Upgrade`], and the name on the
/// client's certificate, if it presented one; and notes that the connection has begun a
/// request.
#[derive(Clone)]
struct Upgradable<S> {
    inner: S,
    begun: Arc<AtomicBool>,
    client: Option<crate::tls::ClientName>,
}

impl<S> tower_service::Service<http::Request<hyper::body::Incoming>> for Upgradable<S>
where
    S: tower_service::Service<http::Request<hyper::body::Incoming>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<hyper::body::Incoming>) -> Self::Future {
        self.begun.store(true, Ordering::Relaxed);
        if let Some(upgrade) = request.extensions_mut().remove::<OnUpgrade>() {
            request.extensions_mut().insert(Upgrade(Arc::new(Mutex::new(Some(upgrade)))));
        }
        if let Some(client) = &self.client {
            request.extensions_mut().insert(client.clone());
        }
        self.inner.call(request)
    }
}

/// A service whose every call must finish within `limit`; otherwise it fails, and hyper closes
/// the connection. The call includes reading the request body.
#[derive(Clone)]
struct Deadline<S> {
    inner: S,
    limit: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("request not served within {0:?}")]
struct DeadlineExceeded(Duration);

impl<S, Request> tower_service::Service<Request> for Deadline<S>
where
    S: tower_service::Service<Request>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // Boxed at once, so that from here on only a pointer moves, however large the call.
        let (call, limit) = (Box::pin(self.inner.call(request)), self.limit);
        Box::pin(async move {
            match tokio::time::timeout(limit, call).await {
                Ok(answer) => answer.map_err(Into::into),
                Err(_) => Err(Box::new(DeadlineExceeded(limit)) as BoxError),
            }
        })
    }
}
