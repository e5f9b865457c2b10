//! The server side of a TLS connection: the handshake bounded in time, and a plain answer to a
//! client that forgot `https://` rather than a connection that hangs or closes unexplained.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::Reloading;

/// The first byte of a TLS record carrying a handshake message: every TLS client's first.
const HANDSHAKE_RECORD: u8 = 0x16;

/// What a plain HTTP request gets (Go's words, which etcd's users know).
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n\
connection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

impl Reloading {
    /// Completes the TLS handshake of a connection from `from`, within `within`, with the
    /// current material; `wrap` gives the raw stream its timeouts once it is known to be TLS.
    /// `None` when the connection is not TLS or the handshake fails, which the log says.
    pub async fn accept<IO>(
        &self,
        tcp: TcpStream,
        wrap: impl FnOnce(TcpStream) -> IO,
        from: SocketAddr,
        within: Duration,
        listener: &'static str,
    ) -> Option<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = TlsAcceptor::from(self.current().server.clone());
        let handshake = async {
            let mut first = [0u8; 1];
            match tcp.peek(&mut first).await {
                Ok(0) => return Err(Refused::Closed),
                Ok(_) if first[0] != HANDSHAKE_RECORD => return Err(Refused::NotTls(tcp)),
                Ok(_) => {}
                Err(e) => return Err(Refused::Failed(e)),
            }
            acceptor.accept(wrap(tcp)).await.map_err(Refused::Failed)
        };
        match tokio::time::timeout(within, handshake).await {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(Refused::Closed)) => None,
            Ok(Err(Refused::NotTls(tcp))) => {
                tracing::warn!(
                    listener,
                    %from,
                    "refused a connection that is not TLS (plain http:// to a TLS port?): the client must use https://"
                );
                let _ = tokio::time::timeout(within, refuse(tcp)).await;
                None
            }
            Ok(Err(Refused::Failed(e))) => {
                tracing::warn!(listener, %from, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::warn!(listener, %from, "TLS handshake not completed within {within:?}");
                None
            }
        }
    }
}

/// Answers a plain HTTP request, then reads what the client still sends until it closes:
/// closing with its request unread would reset the connection, and the answer with it.
async fn refuse(mut tcp: TcpStream) {
    if tcp.write_all(PLAIN_HTTP_ANSWER).await.is_err() || tcp.shutdown().await.is_err() {
        return;
    }
    let mut unread = [0u8; 4096];
    while matches!(tcp.read(&mut unread).await, Ok(n) if n > 0) {}
}

enum Refused {
    /// Closed before sending anything (a port probe).
    Closed,
    NotTls(TcpStream),
    Failed(std::io::Error),
}
