//! Serving a router on a listener that faces the Internet: every connection and request is
//! bounded, so slow or idle clients cannot hold the process.
//!
//! `axum::serve` reads headers for as long as a client cares to send them and accepts as
//! many connections as arrive; a few dozen clients that never finish their headers then
//! stay open indefinitely and keep a graceful shutdown waiting for them. Here, hyper's
//! header timeout closes a connection whose headers do not arrive in time, a whole request
//! (body included) has its own deadline, connections beyond a cap wait in the kernel's
//! backlog rather than in our memory, and shutdown closes idle connections at once and the
//! rest after a grace period.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The bounds a listener serves within.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// A connection whose request headers have not all arrived by then is closed.
    pub header_timeout: Duration,
    /// A request (reading its body included) not answered by then gets a 503.
    pub request_timeout: Duration,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// After the stop signal, how long requests in flight may still take.
    pub shutdown_grace: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 1_024,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Serves `router` on `listener` until `stop`, within `limits`; then lets requests in
/// flight finish for at most `limits.shutdown_grace`.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: CancellationToken,
    limits: ServeLimits,
) -> std::io::Result<()> {
    let address = listener.local_addr()?;
    let router = router.layer(axum::middleware::from_fn_with_state(
        limits.request_timeout,
        request_deadline,
    ));
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(%address, %error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // Handlers that need the peer's address read it as axum's `ConnectInfo`.
        let service = TowerToHyperService::new(
            router
                .clone()
                .layer(axum::Extension(axum::extract::ConnectInfo(peer))),
        );
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A client that hung up or timed out is not our error.
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(%address, grace = ?limits.shutdown_grace,
                "connections still open after the shutdown grace period; dropping them");
        }
    }
    Ok(())
}

async fn request_deadline(
    axum::extract::State(deadline): axum::extract::State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(?deadline, "a request ran out of time");
            let mut response = (
                StatusCode::SERVICE_UNAVAILABLE,
                "the request took too long; try again\n",
            )
                .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}
