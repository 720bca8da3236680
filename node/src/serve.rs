//! The accept loop: hyper's HTTP/1 server with a header read timeout, the
//! upgrades WebSockets need, and a graceful stop.
//!
//! `axum::serve` sets no timer, so hyper's header read timeout never fires
//! there: a client that sends its request headers a byte at a time (slowloris)
//! would hold a connection and a task forever. Here every request's headers
//! must arrive within the configured time, or the connection is closed.

use std::future::Future;
use std::io;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// Serves `app` on `listener` until `shutdown` resolves; then stops
/// accepting, lets requests in progress finish and returns. Upgraded
/// (WebSocket) connections are not waited for: the node closes them itself.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let service = TowerToHyperService::new(app);
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Chat frames are small and latency-bound: without TCP_NODELAY,
        // Nagle's algorithm holds a frame back until the previous one is
        // acked, which measured as milliseconds of added latency under load.
        if let Err(e) = tcp.set_nodelay(true) {
            debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let conn = builder
            .serve_connection(TokioIo::new(tcp), service.clone())
            .with_upgrades();
        let stop = stop.clone();
        tasks.spawn(async move {
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// Errors of one connection (reset before accept) are the client's; others
/// (out of file descriptors) last a while, so pause instead of spinning.
async fn accept_failed(e: &io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    warn!(error = %e, "accept failed; pausing 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Listens with a deep accept backlog: after a pod restarts, thousands of
/// clients reconnect at once, and the default backlog (128) overflows, which
/// costs each overflowing client a one-second SYN retry.
pub fn bind(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}
