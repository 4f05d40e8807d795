//! Serving HTTP with limits that keep the gateway answering its real clients
//! while someone floods it with connections.
//!
//! - A connection must send a complete request header within
//!   `header_read_timeout` of being opened or of its previous response, or it
//!   is closed: this bounds half-sent headers (slowloris) and idle keep-alive.
//! - At most `max_connections` connections are open at once (clamped below the
//!   process's file-descriptor limit, which is raised to its hard limit at
//!   start-up). When a new connection arrives at the cap, the oldest
//!   connection that has no request in progress is closed to make room: a
//!   flood of idle or half-open connections cannot lock out a POS. Only when
//!   every open connection is busy is the new one answered with a 503 problem
//!   and closed.
//! - A request's body is read before the request counts as in progress: a
//!   connection whose body trickles in stays evictable, and a body that has
//!   not arrived within `body_read_timeout` is answered `408` and its
//!   connection closed. Unauthenticated traffic (provider webhooks are read
//!   before they can be verified) therefore cannot hold slots that a POS,
//!   an operator or a health probe needs.
//! - On shutdown no new connection is accepted; open ones finish their
//!   requests and close.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tower::ServiceExt;

use crate::config::ConnLimits;

/// File descriptors kept for everything but client connections (database
/// pools, provider calls, files).
const FD_RESERVE: u64 = 1024;

/// What reading a body before the request counts as in progress gave.
enum Prefetched {
    /// The whole body (at most `max_body_bytes`).
    Whole(axum::body::Bytes),
    /// More than `max_body_bytes`: what was read, and the rest still to come.
    TooLarge(axum::body::Bytes, hyper::body::Incoming),
    /// The body did not arrive in time, or broke off.
    Failed,
}

async fn prefetch(mut body: hyper::body::Incoming, max: usize) -> Prefetched {
    use http_body_util::BodyExt;
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Prefetched::Failed;
        };
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() > max {
                return Prefetched::TooLarge(buf.into(), body);
            }
        }
    }
    Prefetched::Whole(buf.into())
}

/// The answer to a request whose body did not arrive in time (the
/// connection is closed after it).
fn body_timeout() -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut res = crate::api::ApiError::new(
        axum::http::StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        "the request body did not arrive in time; send it whole and retry",
    )
    .into_response();
    res.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    res
}

impl ConnLimits {
    /// The cap actually applied: below the file-descriptor limit.
    pub fn effective_max(&self) -> usize {
        let fd_room = fd_limit()
            .map(|n| n.saturating_sub(FD_RESERVE).max(64))
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(usize::MAX);
        self.max_connections.clamp(1, fd_room)
    }
}

/// Raises the soft file-descriptor limit to the hard limit; returns the limit now in force.
pub fn raise_fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
                lim.rlim_cur = lim.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
    }
    fd_limit()
}

fn fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct we pass.
        (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim.rlim_cur)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// One open connection, as the eviction queue sees it.
struct Slot {
    in_flight: AtomicUsize,
    closed: AtomicBool,
    evict: Notify,
}

struct Shared {
    open: AtomicUsize,
    /// Open connections, oldest first (entries of closed ones are skipped).
    queue: Mutex<VecDeque<Weak<Slot>>>,
    all_closed: Notify,
}

impl Shared {
    /// Closes the oldest connection with no request in progress; false if
    /// every open connection is busy.
    fn evict_one(&self) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let mut busy = VecDeque::new();
        let mut evicted = false;
        while let Some(w) = q.pop_front() {
            let Some(slot) = w.upgrade() else { continue };
            if slot.closed.load(Ordering::SeqCst) {
                continue;
            }
            if slot.in_flight.load(Ordering::SeqCst) == 0 {
                slot.closed.store(true, Ordering::SeqCst);
                slot.evict.notify_one();
                evicted = true;
                break;
            }
            busy.push_back(w);
        }
        // Busy connections keep their place at the front.
        while let Some(w) = busy.pop_back() {
            q.push_front(w);
        }
        evicted
    }
}

/// Binds the listening socket with a backlog that absorbs bursts of new
/// connections (the default of 128 drops SYNs under a burst, and a dropped SYN
/// costs the client a one-second retransmit).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let max = limits.effective_max();
    let shared = Arc::new(Shared {
        open: AtomicUsize::new(0),
        queue: Mutex::new(VecDeque::new()),
        all_closed: Notify::new(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors or similar: back off briefly.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if shared.open.load(Ordering::SeqCst) >= max && !shared.evict_one() {
            crate::metrics::connection_shed();
            tokio::spawn(shed(stream));
            continue;
        }
        let slot = Arc::new(Slot {
            in_flight: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            evict: Notify::new(),
        });
        let open = shared.open.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() > 2 * open + 1024 {
                q.retain(|w| w.strong_count() > 0);
            }
            q.push_back(Arc::downgrade(&slot));
        }
        tokio::spawn(connection(
            stream,
            peer,
            router.clone(),
            limits,
            slot,
            shared.clone(),
            stop_rx.clone(),
        ));
    }
    let _ = stop_tx.send(true);
    loop {
        let closed = shared.all_closed.notified();
        if shared.open.load(Ordering::SeqCst) == 0 {
            return Ok(());
        }
        closed.await;
    }
}

async fn connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    router: Router,
    limits: ConnLimits,
    slot: Arc<Slot>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let service = {
        let slot = slot.clone();
        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let slot = slot.clone();
            let router = router.clone();
            async move {
                // The body first: until it is here the connection is not busy
                // (it may be evicted), and it must come within the deadline.
                let (mut parts, body) = req.into_parts();
                // Who is on the other end (the console's sign-in limit).
                parts.extensions.insert(axum::extract::ConnectInfo(peer));
                let read = tokio::time::timeout(
                    limits.body_read_timeout,
                    prefetch(body, limits.max_body_bytes),
                )
                .await;
                let body = match read {
                    Ok(Prefetched::Whole(bytes)) => axum::body::Body::from(bytes),
                    Ok(Prefetched::TooLarge(head, rest)) => {
                        use futures_util::StreamExt;
                        let rest = http_body_util::BodyDataStream::new(rest);
                        axum::body::Body::from_stream(
                            futures_util::stream::once(async move { Ok(head) }).chain(rest),
                        )
                    }
                    Ok(Prefetched::Failed) | Err(_) => {
                        // `Connection: close`: hyper closes it after the answer.
                        return Ok(body_timeout());
                    }
                };
                slot.in_flight.fetch_add(1, Ordering::SeqCst);
                let res = router
                    .oneshot(hyper::Request::from_parts(parts, body))
                    .await;
                slot.in_flight.fetch_sub(1, Ordering::SeqCst);
                res
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            _ = slot.evict.notified() => break,
            changed = stop.changed(), if !draining => {
                draining = true;
                if changed.is_err() || *stop.borrow() {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
    slot.closed.store(true, Ordering::SeqCst);
    if shared.open.fetch_sub(1, Ordering::SeqCst) == 1 {
        shared.all_closed.notify_waiters();
    }
}

/// The answer to a connection over the cap while every open one is busy.
async fn shed(mut stream: TcpStream) {
    let body = r#"{"type":"about:blank","title":"Service Unavailable","status":503,"code":"overloaded","detail":"too many open connections; retry shortly"}"#;
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), write).await;
}
