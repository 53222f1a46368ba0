//! The accept loop of each listener (`server.listen`, `server.admin_listen`): HTTP/1.1 with
//! upgrades (the media WebSocket), a header-read deadline and a cap on open connections
//! (README "Security", "Deadlines for idle peers").
//!
//! - **Header-read deadline** (`server.header_read_timeout_secs`): a connection must send a
//!   whole request header within it, or hyper closes it (slowloris). The clock runs from the
//!   moment a request head is awaited, so an idle keep-alive connection is closed after it too;
//!   only a connection that had sent part of a header, or nothing since it opened, is counted in
//!   `warmline_http_header_timeouts_total`.
//! - **Connection cap** (`server.max_connections`, per listener): a connection holds its permit
//!   for as long as its socket lives, through the WebSocket upgrade (a live call is one
//!   connection). Beyond the cap a new connection is accepted, answered `503` if the socket takes
//!   it at once, and closed: the client (Twilio, a load balancer) learns at once instead of
//!   waiting in the kernel's backlog, and the refusal is counted in
//!   `warmline_connections_refused_total`. `warmline_open_connections` is the gauge.
//! - TCP_NODELAY on every connection: audio frames are small and latency-bound.
//! - Graceful shutdown as `axum::serve` does it: when `shutdown` is cancelled the listener stops
//!   accepting, every connection is told to finish the request it serves and close, and this
//!   returns once they have. Upgraded WebSockets are not waited for here: the calls are the task
//!   tracker's (src/app.rs).
//!
//! Only HTTP/1.1 is served (Twilio, browsers and load balancers speak it to an origin); an
//! HTTP/2 connection would escape the header-read deadline.
//!
//! Each request carries `ConnectInfo<SocketAddr>` (the peer's address) in its extensions, as
//! `axum::serve` gives with `into_make_service_with_connect_info`.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, extract::ConnectInfo};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;

use crate::metrics::Metrics;

/// The limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `server.header_read_timeout_secs`.
    pub header_read_timeout: Duration,
    /// `server.max_connections`.
    pub max_connections: usize,
    /// `server.shutdown_grace_secs`: how long shutdown waits for the connections being served.
    pub grace: Duration,
}

impl Limits {
    /// The limits the settings give.
    pub fn from_settings(s: &crate::config::ServerSettings) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(s.header_read_timeout_secs),
            max_connections: s.max_connections,
            grace: Duration::from_secs(s.shutdown_grace_secs),
        }
    }
}

/// How often a refused connection is logged as a warning (each is counted).
const REFUSED_WARN_EVERY: Duration = Duration::from_secs(10);

/// What a connection over the cap is told before it is closed.
const REFUSED: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// Serves `router` on `listener` until `shutdown` is cancelled, then waits for the connections
/// being served to finish (see the module docs).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    // One warning per [`REFUSED_WARN_EVERY`] at most: a flood at the cap must not flood the log.
    let mut warned: Option<std::time::Instant> = None;
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.connections_refused.inc();
            if warned.is_none_or(|at| at.elapsed() >= REFUSED_WARN_EVERY) {
                warned = Some(std::time::Instant::now());
                tracing::warn!(
                    peer = %remote,
                    max_connections = limits.max_connections,
                    "connection refused: server.max_connections reached (warmline_connections_refused_total counts every one)"
                );
            } else {
                tracing::debug!(peer = %remote, "connection refused: server.max_connections reached");
            }
            // Whatever the socket takes now; then it is closed.
            let _ = tcp.try_write(REFUSED);
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let io = Counted::new(tcp, permit, metrics.open_connections.clone());
        let awaiting_head = io.awaiting_head.clone();
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(remote));
            router.clone().oneshot(req)
        });
        let conn = http
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        let shutdown = shutdown.clone();
        let metrics = metrics.clone();
        connections.spawn(async move {
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                if e.is_timeout() {
                    if awaiting_head.load(Ordering::Relaxed) {
                        metrics.http_header_timeouts.inc();
                        tracing::info!(peer = %remote, "connection closed: no request header within server.header_read_timeout_secs");
                    }
                } else {
                    tracing::debug!(peer = %remote, error = %e, "connection ended with an error");
                }
            }
        });
    }
    drop(listener);
    connections.close();
    // Bounded: a client that never reads its answer must not hold the shutdown up (src/app.rs).
    if tokio::time::timeout(limits.grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "shutdown: connections still open after server.shutdown_grace_secs; closing them"
        );
    }
}

/// An accept that failed: the peer's own trouble is skipped; anything else (out of file
/// descriptors) is logged and the loop waits a second, as `axum::serve` does.
async fn accept_failed(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; retrying in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// A connection's socket with its permit and its place in `warmline_open_connections`, both
/// given back when the socket is dropped (after the upgrade, when the WebSocket ends).
struct Counted {
    tcp: TcpStream,
    _permit: OwnedSemaphorePermit,
    open: Gauge,
    /// Whether the peer is in the middle of a request head or has sent nothing yet: set when
    /// bytes are read, cleared when an answer is written. False while a kept-alive connection
    /// waits idle after an answer (its closing at the header deadline is not counted).
    awaiting_head: Arc<AtomicBool>,
}

impl Counted {
    fn new(tcp: TcpStream, permit: OwnedSemaphorePermit, open: Gauge) -> Self {
        open.inc();
        Self {
            tcp,
            _permit: permit,
            open,
            awaiting_head: Arc::new(AtomicBool::new(true)),
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.awaiting_head.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.awaiting_head.store(false, Ordering::Relaxed);
        Pin::new(&mut this.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.awaiting_head.store(false, Ordering::Relaxed);
        Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_counted_socket_gives_its_permit_and_gauge_back_when_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let permits = Arc::new(Semaphore::new(1));
        let gauge = Gauge::default();
        let counted = Counted::new(
            tcp,
            permits.clone().try_acquire_owned().unwrap(),
            gauge.clone(),
        );
        assert_eq!(gauge.get(), 1);
        assert!(permits.clone().try_acquire_owned().is_err(), "at the cap");
        drop(counted);
        assert_eq!(gauge.get(), 0);
        assert!(permits.try_acquire_owned().is_ok());
    }
}
