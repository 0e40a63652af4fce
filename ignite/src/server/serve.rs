//! Serving the HTTP router (boot files, scripts, install and admin API) so that clients on
//! the boot network cannot exhaust it:
//!
//! - at most `connections` open connections, and `per_address` from one address; a
//!   connection over either limit is closed as soon as it is accepted;
//! - a request's headers must arrive within `header_timeout`, which also ends idle
//!   keep-alive connections (hyper's header read timer starts when it waits for a request);
//! - a request must be read and answered (up to the first byte of its answer's body) within
//!   `request_timeout`, or it gets 408;
//! - a peer that takes none of what we send for `send_timeout` loses its connection.
//!
//! Handlers see the peer's address as axum's `ConnectInfo<SocketAddr>`.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Sleep;
use tower::ServiceExt;

use super::provider::warn_limited;

#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub connections: usize,
    pub per_address: usize,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub send_timeout: Duration,
}

impl HttpLimits {
    pub fn from_config(l: &super::config::Limits) -> HttpLimits {
        HttpLimits {
            connections: l.http_connections,
            per_address: l.http_connections_per_address,
            header_timeout: Duration::from_secs(l.http_header_timeout_secs),
            request_timeout: Duration::from_secs(l.http_request_timeout_secs),
            send_timeout: Duration::from_secs(l.http_send_timeout_secs),
        }
    }
}

/// Largest request head (request line and headers) read.
const MAX_HEAD: usize = 64 << 10;

/// Serves `app` on `listener` until `shutdown` turns true; then accepts nothing more and
/// lets open connections finish the request they are in.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Slots::default());
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors, or a connection reset before accept: try again
                    // shortly rather than spin.
                    warn_limited("HTTP accept", || format!("HTTP accept: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        while conns.try_join_next().is_some() {}
        let Some(slot) = Slots::take(&slots, peer.ip(), &limits) else {
            drop(stream);
            continue;
        };
        let (app, limits, stop) = (app.clone(), limits.clone(), shutdown.clone());
        conns.spawn(async move {
            connection(stream, peer, app, limits, stop).await;
            drop(slot);
        });
    }
    while conns.join_next().await.is_some() {}
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: HttpLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let request_timeout = limits.request_timeout;
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let app = app.clone();
        async move {
            match tokio::time::timeout(request_timeout, app.oneshot(req)).await {
                Ok(r) => r,
                Err(_) => Ok((
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request was not sent and answered within {} s\n",
                        request_timeout.as_secs()
                    ),
                )
                    .into_response()),
            }
        }
    });
    let io = TokioIo::new(SendTimeout::new(stream, limits.send_timeout));
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD);
    let conn = b.serve_connection(io, svc);
    tokio::pin!(conn);
    let r = tokio::select! {
        r = conn.as_mut() => r,
        _ = stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = r {
        tracing::debug!("HTTP connection from {peer}: {e}");
    }
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|v| *v).await;
}

/// Open connections, in all and by address.
#[derive(Default)]
struct Slots {
    inner: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One connection's place in [`Slots`], given back when dropped.
struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
}

impl Slots {
    fn take(slots: &Arc<Slots>, ip: IpAddr, limits: &HttpLimits) -> Option<Slot> {
        let mut g = slots.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_ip) = &mut *g;
        let mine = by_ip.get(&ip).copied().unwrap_or(0);
        if *total >= limits.connections {
            warn_limited("HTTP connection limit", || {
                format!(
                    "HTTP: {} connections open ([limits] http_connections); closed a new one from {ip}",
                    limits.connections
                )
            });
            return None;
        }
        if mine >= limits.per_address {
            warn_limited("HTTP per-address connection limit", || {
                format!(
                    "HTTP: {ip} has {mine} connections open ([limits] http_connections_per_address); closed a new one"
                )
            });
            return None;
        }
        *total += 1;
        by_ip.insert(ip, mine + 1);
        Some(Slot {
            slots: slots.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.slots.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_ip) = &mut *g;
        *total -= 1;
        if let Some(n) = by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

/// A TCP stream whose writes fail once the peer has taken nothing for `limit`.
struct SendTimeout {
    io: TcpStream,
    limit: Duration,
    /// Running while a write waits for the peer.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl SendTimeout {
    fn new(io: TcpStream, limit: Duration) -> SendTimeout {
        SendTimeout {
            io,
            limit,
            stalled: None,
        }
    }

    fn check<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.stalled = None;
            return r;
        }
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer took nothing for {} s", limit.as_secs()),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for SendTimeout {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendTimeout {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.check(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.check(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.check(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get, post};
    use std::io::{Read, Write};
    use std::time::Instant;

    fn app() -> Router {
        Router::new()
            .route(
                "/peer",
                get(|ConnectInfo(p): ConnectInfo<SocketAddr>| async move { p.ip().to_string() }),
            )
            .route("/echo", post(|b: axum::body::Bytes| async move { b }))
            .route("/big", get(|| async { vec![7u8; 64 << 20] }))
    }

    /// A server on 127.0.0.1 with `limits`, on its own runtime thread; its address.
    fn start(limits: HttpLimits) -> (SocketAddr, watch::Sender<bool>) {
        let (tx, rx) = watch::channel(false);
        let (atx, arx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                atx.send(l.local_addr().unwrap()).unwrap();
                serve(l, app(), limits, rx).await;
            });
        });
        (arx.recv().unwrap(), tx)
    }

    fn limits() -> HttpLimits {
        HttpLimits {
            connections: 100,
            per_address: 3,
            header_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(2),
            send_timeout: Duration::from_secs(1),
        }
    }

    fn connect(a: SocketAddr) -> std::net::TcpStream {
        let s = std::net::TcpStream::connect(a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    /// Everything the server sends until it closes (or the read times out).
    fn read_all(s: &mut std::net::TcpStream) -> String {
        let mut v = Vec::new();
        let _ = s.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    }

    /// `GET /peer`'s whole answer; empty when the server closed the connection at once.
    fn get_peer(a: SocketAddr) -> String {
        let mut s = connect(a);
        match s.write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") {
            Ok(()) => read_all(&mut s),
            Err(_) => String::new(),
        }
    }

    #[test]
    fn handlers_see_the_peer() {
        let (a, _stop) = start(limits());
        let r = get_peer(a);
        assert!(
            r.starts_with("HTTP/1.1 200") && r.ends_with("127.0.0.1"),
            "{r}"
        );
    }

    #[test]
    fn slow_headers_and_idle_connections_are_closed() {
        let (a, _stop) = start(limits());
        let mut slow = connect(a);
        slow.write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        let mut idle = connect(a);
        let t = Instant::now();
        let (r1, r2) = (read_all(&mut slow), read_all(&mut idle));
        let took = t.elapsed();
        assert!(
            took < Duration::from_secs(10),
            "closed after {took:?}: {r1:?} {r2:?}"
        );
        assert!(!r1.contains("200") && !r2.contains("200"), "{r1:?} {r2:?}");
    }

    #[test]
    fn one_address_cannot_hold_more_than_its_share() {
        let (a, _stop) = start(limits());
        // Three half-sent requests hold this address's three slots...
        let held: Vec<_> = (0..3)
            .map(|_| {
                let mut s = connect(a);
                s.write_all(b"GET /peer HTTP/1.1\r\n").unwrap();
                s
            })
            .collect();
        // Give the server time to accept them (bounded wait on a loaded machine).
        let t = Instant::now();
        let mut refused = String::from("(none)");
        while t.elapsed() < Duration::from_millis(800) {
            refused = get_peer(a);
            if refused.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(refused, "", "a fourth connection was served");
        // ...until the header timeout frees them.
        wait(|| get_peer(a).starts_with("HTTP/1.1 200"));
        drop(held);
    }

    #[test]
    fn a_trickled_body_gets_408() {
        let (a, _stop) = start(limits());
        let mut s = connect(a);
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhalf")
            .unwrap();
        let t = Instant::now();
        let r = read_all(&mut s);
        assert!(r.starts_with("HTTP/1.1 408"), "{r}");
        assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    }

    #[test]
    fn a_peer_that_reads_nothing_loses_its_connection() {
        let mut l = limits();
        l.per_address = 1;
        let (a, _stop) = start(l);
        let mut s = connect(a);
        s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        // Never read: the socket buffers fill, the server's write stalls and it gives up,
        // which frees this address's one slot.
        let t = Instant::now();
        wait(|| get_peer(a).starts_with("HTTP/1.1 200"));
        assert!(t.elapsed() > Duration::from_millis(500));
        drop(s);
    }

    /// Polls `f` until true; panics after 20 s.
    fn wait(mut f: impl FnMut() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(20), "timed out");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
