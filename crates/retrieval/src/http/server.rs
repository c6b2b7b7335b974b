//! One accept loop for both servers: hyper's connection builder with a header-read deadline and
//! a bound on open connections, in place of `axum::serve`.
//!
//! `axum::serve` hands each accepted socket to hyper without a timer, so hyper's
//! `header_read_timeout` never fires: a client that sends half its headers and stops (a
//! slowloris) holds its connection and its task for as long as it likes, and enough of them
//! exhaust file descriptors. Here each connection is served by
//! `hyper_util::server::conn::auto::Builder` (HTTP/1.1 and HTTP/2, as `axum::serve`) with a tokio
//! timer and [`ConnLimits::header_read_timeout`]; a connection that has not delivered a request's
//! headers by then is closed. A semaphore of [`ConnLimits::max_connections`] permits is taken
//! before each `accept`, so past the bound new clients wait in the kernel's backlog rather than
//! in the server's memory. Shutdown is graceful: the loop stops accepting when `shutdown`
//! resolves and waits for the connections in flight (hyper-util's `GracefulShutdown`).
//!
//! Source: hyper's `http1::Builder::header_read_timeout` (hyper 1.x: it needs a `Timer`), and
//! the accept loop axum's own `serve` is built on (axum 0.8 `serve/mod.rs`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};

/// What one server holds at most. `Default` gives the documented defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnLimits {
    /// Seconds a client has to send a request's headers, from the first byte it sends (or from
    /// the end of its previous request on a kept-alive connection); then the connection is
    /// closed. Default 10.
    pub header_read_timeout_s: u64,
    /// Connections held open at once; past it, new clients wait to be accepted. Default 1024.
    pub max_connections: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            header_read_timeout_s: 10,
            max_connections: 1024,
        }
    }
}

impl ConnLimits {
    /// [`Self::header_read_timeout_s`] as a duration (at least 1 s).
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_s.max(1))
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then waits for the connections in
/// flight to finish their requests.
///
/// # Errors
/// Only what cannot be retried: accepting fails with anything but a per-connection error
/// (those, such as a client resetting before it was accepted or running out of descriptors for a
/// moment, are logged and the loop goes on after a short pause).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout());
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break, // the semaphore is never closed
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) if transient(&e) => {
                    tracing::warn!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(e),
            },
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    graceful.shutdown().await;
    Ok(())
}

/// Accept errors that concern one connection or a passing shortage (EMFILE / ENFILE / ENOMEM),
/// after which accepting again can succeed.
fn transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    ) || matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS)
    )
}

/// The address a listener is bound to, for logs (`0.0.0.0:0` if the OS will not say).
pub fn local_addr(listener: &tokio::net::TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A client that sends half its headers and stops is cut off after the deadline, while a
    /// well-behaved client is answered meanwhile.
    #[test]
    fn a_stalled_header_is_cut_off_and_others_are_served() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let limits = ConnLimits {
            header_read_timeout_s: 1,
            max_connections: 8,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = rt.spawn(serve(listener, router, limits, async {
            let _ = stopped.await;
        }));

        let mut slow = std::net::TcpStream::connect(addr).unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow")
            .unwrap();
        let t0 = std::time::Instant::now();

        let mut good = std::net::TcpStream::connect(addr).unwrap();
        good.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        good.read_to_string(&mut answer).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"),
            "{answer}"
        );

        slow.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut rest = Vec::new();
        let read = slow.read_to_end(&mut rest);
        let waited = t0.elapsed();
        // Closed: an end of stream (or a reset); still open after 10 s: a read timeout.
        let closed = match &read {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        assert!(closed, "the stalled connection was not closed: {read:?}");
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
            "closed after {waited:?}"
        );

        let _ = stop.send(());
        rt.block_on(server).unwrap().unwrap();
    }
}
