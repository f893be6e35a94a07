//! Serving connections over HTTP/1.1 with a header-read timeout, and the
//! drain at shutdown.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Gateway, GatewayError};
use axum::Router;
use tokio::net::TcpListener;

/// Serves `gateway` on `listener` over HTTP/1.1 until `shutdown` is
/// cancelled, then drains, as `kit::serve` does for the services:
///
/// 1. `/healthz` answers 503 and every answer carries `Connection: close`,
///    while the gateway keeps accepting and serving everything for
///    `shutdown_grace`, so load balancers take it out first;
/// 2. the listener closes: connections the kernel had completed are
///    accepted and served first, so none is reset unanswered;
/// 3. requests in flight finish, for up to `drain_timeout`; connections
///    kept alive from before the shutdown close once idle (hyper's graceful
///    shutdown), those opened during the grace after their one answer; what is
///    still open after `drain_timeout` is closed.
///
/// Not `axum::serve`: it has no header-read timeout, so a client trickling
/// its headers (or idling between requests) would hold its connection for
/// ever. Here each connection gets `header_read_timeout` for each request's
/// headers, counted from the end of the previous answer, so an idle
/// kept-alive connection is closed too; the body's own timeout is the
/// handler's. HTTP/2 is left to the ingress in front (it has no header-read
/// timeout in hyper).
pub async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    shutdown: kit::shutdown::Shutdown,
) -> Result<(), GatewayError> {
    let address = listener.local_addr()?;
    let app = gateway.router()?;
    let config = &gateway.0.config;
    let mut http = hyper::server::conn::http1::Builder::new();
    let header_read_timeout = Some(config.header_read_timeout).filter(|timeout| !timeout.is_zero());
    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_read_timeout);
    let (open, mut all_closed) = tokio::sync::mpsc::channel(1);
    let connections = Connections {
        http,
        app,
        kept_alive: hyper_util::server::graceful::GracefulShutdown::new(),
        open,
        cut_off: kit::shutdown::Shutdown::new(),
    };
    tracing::info!(%address, routes = gateway.route_count(), "gateway listening");
    accept_until(&listener, shutdown.cancelled(), &connections, false).await;

    gateway.0.draining.store(true, Ordering::Relaxed);
    let grace = config.shutdown_grace;
    tracing::info!(?grace, "shutting down: /healthz answers 503; serving every request through the grace");
    accept_until(&listener, tokio::time::sleep(grace), &connections, true).await;
    // What the kernel accepted already is served, not reset by the close.
    match listener.into_std() {
        Ok(listener) => {
            let mut failures = 0u32;
            loop {
                match listener.accept() {
                    Ok((stream, _)) => {
                        match stream.set_nonblocking(true).and_then(|()| tokio::net::TcpStream::from_std(stream)) {
                            Ok(stream) => connections.serve(stream, true),
                            Err(error) => tracing::warn!(%error, "cannot serve a connection accepted at the close"),
                        }
                    }
                    // The queue is empty (the listener is non-blocking).
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                    // One connection aborted, or no descriptor for it: the others queued
                    // behind it still count, but a failure that persists ends the loop.
                    Err(error) => {
                        tracing::warn!(%error, "cannot accept a connection at the close");
                        failures += 1;
                        if failures >= MAX_CLOSING_ACCEPT_FAILURES {
                            break;
                        }
                    }
                }
            }
        }
        Err(error) => tracing::warn!(%error, "cannot take the last connections off the listener"),
    }
    let drain_timeout = config.drain_timeout;
    tracing::info!(?drain_timeout, "listener closed; draining the requests in flight");

    let Connections { kept_alive, open, cut_off, .. } = connections;
    drop(open);
    // Each connection task holds a sender: `recv` answers None once all have ended.
    let drained = async {
        tokio::join!(kept_alive.shutdown(), all_closed.recv());
    };
    if tokio::time::timeout(drain_timeout, drained).await.is_err() {
        tracing::warn!(?drain_timeout, "requests still in flight after the drain timeout; closing them");
        cut_off.cancel();
    }
    tracing::info!("gateway stopped");
    Ok(())
}

/// What every connection of [`serve`] shares.
struct Connections {
    http: hyper::server::conn::http1::Builder,
    app: Router,
    /// Connections accepted before the shutdown began: told to close once
    /// idle when the listener closes. Those accepted during the grace are not:
    /// their first answer closes them, and one accepted just before the close
    /// is still waiting for the request its client has sent.
    kept_alive: hyper_util::server::graceful::GracefulShutdown,
    /// Held by every connection's task.
    open: tokio::sync::mpsc::Sender<()>,
    /// Cancelled when the drain times out: every connection still open closes.
    cut_off: kit::shutdown::Shutdown,
}

impl Connections {
    /// Serves one accepted connection on a task of its own.
    fn serve(&self, stream: tokio::net::TcpStream, draining: bool) {
        // Nagle's algorithm off: a response written in pieces must not wait for the client's delayed ACK.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set on an accepted connection");
        }
        let service = hyper_util::service::TowerToHyperService::new(self.app.clone());
        let connection = self.http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let (open, cut_off) = (self.open.clone(), self.cut_off.clone());
        if draining {
            tokio::spawn(until_closed(connection, open, cut_off));
        } else {
            tokio::spawn(until_closed(self.kept_alive.watch(connection), open, cut_off));
        }
    }
}

/// Runs a connection until it ends or the drain is cut off.
async fn until_closed(
    connection: impl Future<Output = Result<(), hyper::Error>>,
    _open: tokio::sync::mpsc::Sender<()>,
    cut_off: kit::shutdown::Shutdown,
) {
    tokio::select! {
        ended = connection => if let Err(error) = ended {
            // A client that went away, or one too slow with its headers.
            tracing::debug!(%error, "connection ended with an error");
        },
        () = cut_off.cancelled() => tracing::debug!("connection closed at the end of the drain"),
    }
}

/// Accepts connections on `listener` and serves them until `until` resolves.
async fn accept_until(
    listener: &TcpListener,
    until: impl Future<Output = ()>,
    connections: &Connections,
    draining: bool,
) {
    let mut until = std::pin::pin!(until);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut until => return,
        };
        match accepted {
            Ok((stream, _)) => connections.serve(stream, draining),
            Err(error) => {
                // Out of file descriptors, say: the listener stays, and a
                // pause keeps the loop from spinning while none are freed.
                tracing::warn!(%error, "cannot accept a connection");
                tokio::select! {
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                    () = &mut until => return,
                }
            }
        }
    }
}

/// Failed accepts tolerated while serving the connections queued at the close.
const MAX_CLOSING_ACCEPT_FAILURES: u32 = 64;

/// How long the accept loop pauses after an error accepting a connection.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
