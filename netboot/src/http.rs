//! HTTP boot service: boot files (with HEAD, Range and streaming, via tower-http's
//! `ServeFile`) under `/files/`, and per-client iPXE scripts under `/ipxe/<mac>`. The `ignite`
//! binary merges its own API routes into [`router`]'s result and runs it with [`serve`].
//!
//! Range (RFC 9110 section 14.2): one byte range is served as 206 (or 416 when it starts
//! past the end); several ranges, other units and invalid syntax are ignored and the whole
//! file is served with 200, as the RFC allows, instead of tower-http's 416.
//!
//! [`serve`] runs its own accept loop on hyper, because a hostile segment must not be able
//! to hold connections open for nothing ([`HttpLimits`]): a request head must arrive within
//! `header_timeout` (20 s, also between requests on a kept-alive connection), a connection on
//! which no byte moves either way for `idle_timeout` is closed (a client that stops reading
//! a download, or a slow drip of body bytes), and connections are capped per client
//! address and in all; connections over a cap are closed at once. [`serve_tls`] is the same
//! over TLS (the install API's HTTPS port), the handshake bounded by `header_timeout`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tower_http::services::ServeFile;

use crate::boot::{ipxe_script, BootEvent, BootProvider, ClientMap};
use crate::files::resolve;
use crate::lograte::warn_limited;
use crate::pe;
use crate::MacAddr;

pub struct HttpState {
    pub root: PathBuf,
    pub provider: Arc<dyn BootProvider>,
    pub clients: Arc<ClientMap>,
    /// e.g. `http://10.0.0.1:8080`, the prefix of URLs inside generated scripts.
    pub http_base: String,
}

pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/files/{*path}", get(file))
        .route("/ipxe/{mac}", get(script))
        .with_state(state)
}

fn peer_ip(addr: SocketAddr) -> Option<std::net::Ipv4Addr> {
    match addr {
        SocketAddr::V4(a) => Some(*a.ip()),
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped(),
    }
}

/// The one byte range of a `Range` header value, in the form tower-http parses
/// (`bytes=FIRST-LAST`, `bytes=FIRST-`, `bytes=-SUFFIX`); `None` when RFC 9110 says to
/// ignore the header: another unit, several ranges, or invalid syntax (including LAST
/// before FIRST).
pub fn single_byte_range(value: &str) -> Option<String> {
    let (unit, set) = value.trim().split_once('=')?;
    if !unit.trim_end().eq_ignore_ascii_case("bytes") {
        return None;
    }
    // A list may hold empty elements (RFC 9110 section 5.6.1); they do not count.
    let mut specs = set.split(',').map(str::trim).filter(|s| !s.is_empty());
    let (spec, None) = (specs.next()?, specs.next()) else {
        return None;
    };
    let (first, last) = spec.split_once('-')?;
    let num = |s: &str| -> Option<Option<u64>> {
        match s {
            "" => Some(None),
            s if s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok().map(Some),
            _ => None,
        }
    };
    match (num(first)?, num(last)?) {
        (Some(f), Some(l)) if f <= l => Some(format!("bytes={f}-{l}")),
        (Some(f), None) => Some(format!("bytes={f}-")),
        (None, Some(n)) if n > 0 => Some(format!("bytes=-{n}")),
        _ => None,
    }
}

async fn file(
    State(s): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(path): Path<String>,
    mut req: Request,
) -> Response {
    let ip = peer_ip(peer);
    let mac = ip.and_then(|i| s.clients.mac_of(i));
    let method = req.method().clone();
    let range = req
        .headers()
        .get(header::RANGE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let single = range.as_deref().and_then(single_byte_range);
    match single.as_deref().map(HeaderValue::from_str) {
        Some(Ok(v)) => {
            req.headers_mut().insert(header::RANGE, v);
        }
        _ => {
            req.headers_mut().remove(header::RANGE);
        }
    }
    let range = match (range, single) {
        (None, _) => String::new(),
        (Some(r), Some(_)) => format!(" range={r}"),
        (Some(r), None) => format!(" range={r:?} (ignored: not one byte range)"),
    };
    let full = match resolve(&s.root, &path) {
        Ok(p) => p,
        Err(why) => {
            s.provider.step(&BootEvent {
                mac,
                ip,
                step: "http-missing",
                detail: format!("{method} /files/{path}: {why}"),
            });
            return (StatusCode::NOT_FOUND, format!("{path}: {why}\n")).into_response();
        }
    };
    let resp = match ServeFile::new(&full).try_call(req).await {
        Ok(r) => r.map(Body::new),
        Err(e) => {
            warn_limited!("HTTP file error", "HTTP {method} /files/{path}: {e}");
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("{path}: {e}\n")).into_response();
        }
    };
    if method == Method::GET && resp.status().is_success() {
        if let Some(ip) = ip {
            // Four KiB of the file, off the async workers.
            let (clients, file) = (s.clients.clone(), path.clone());
            let _ = tokio::task::spawn_blocking(move || {
                clients.fetched(ip, &file, pe::file_signature(&full));
            })
            .await;
        }
    }
    s.provider.step(&BootEvent {
        mac,
        ip,
        step: "http",
        detail: format!(
            "{method} /files/{path}{range} -> {}",
            resp.status().as_u16()
        ),
    });
    resp
}

/// The URL prefix for links in a generated script: the address the client reached us at
/// (its Host header), so a server on several networks hands each client its own; else
/// the configured one.
fn base_for(headers: &HeaderMap, fallback: &str) -> String {
    match headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        Some(h)
            if !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".:-[]".contains(c)) =>
        {
            format!("http://{h}")
        }
        _ => fallback.to_string(),
    }
}

async fn script(
    State(s): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(mac): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Ok(mac) = mac.trim_end_matches(".ipxe").parse::<MacAddr>() else {
        return (
            StatusCode::NOT_FOUND,
            format!("{mac:?} is not a MAC address; scripts live at /ipxe/<aa-bb-cc-dd-ee-ff>\n"),
        )
            .into_response();
    };
    // The provider may read a database: not on the async workers.
    let (provider, ip) = (s.provider.clone(), peer_ip(peer));
    let plan = match tokio::task::spawn_blocking(move || provider.plan(mac, ip)).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("boot plan for {mac}: {e}");
            return (StatusCode::INTERNAL_SERVER_ERROR, "no boot plan\n").into_response();
        }
    };
    let body = ipxe_script(&plan, &base_for(&headers, &s.http_base));
    s.provider.step(&BootEvent {
        mac: Some(mac),
        ip,
        step: "script",
        detail: format!(
            "iPXE script served ({})",
            body.lines().nth(2).unwrap_or("").trim()
        ),
    });
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// What one client, and everyone together, may hold of the HTTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections open at once, in all.
    pub max_connections: usize,
    /// Connections open at once from one address (an installing agent uses about ten).
    pub max_per_client: usize,
    /// Time for a request head to arrive, from the connection (or the previous response, so
    /// it is also how long a kept-alive connection may wait idle). Longer than the 15 s for
    /// which HTTP clients such as ureq (the install agent's) reuse an idle connection, so
    /// they never send on one the server has just closed.
    pub header_timeout: Duration,
    /// A connection on which no byte moves either way for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 512,
            max_per_client: 64,
            header_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Serves `app` on `listener` with the default [`HttpLimits`] until `shutdown` turns true;
/// peers' addresses reach handlers as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    serve_with(listener, app, shutdown, HttpLimits::default()).await
}

/// [`serve`] with the given limits. At shutdown, connections finish the request in
/// progress and close; the call returns when they have.
pub async fn serve_with(
    listener: TcpListener,
    app: Router,
    shutdown: watch::Receiver<bool>,
    limits: HttpLimits,
) -> std::io::Result<()> {
    serve_on(listener, app, shutdown, limits, None).await
}

/// [`serve_with`] over TLS: each connection's handshake must end within `header_timeout`,
/// and the limits hold as for plain HTTP.
pub async fn serve_tls(
    listener: TcpListener,
    app: Router,
    shutdown: watch::Receiver<bool>,
    limits: HttpLimits,
    tls: TlsAcceptor,
) -> std::io::Result<()> {
    serve_on(listener, app, shutdown, limits, Some(tls)).await
}

async fn serve_on(
    listener: TcpListener,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
    limits: HttpLimits,
    tls: Option<TlsAcceptor>,
) -> std::io::Result<()> {
    let limits = Arc::new(limits);
    let counts = Arc::new(Mutex::new(Counts::default()));
    let (close_tx, close_rx) = watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    let mut flusher = crate::lograte::Flusher::new();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = flusher.tick() => continue,
            _ = shutdown.wait_for(|v| *v) => break,
        };
        while conns.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                warn_limited!("HTTP accept failed", "HTTP accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = ConnSlot::claim(&counts, &limits, peer.ip()) else {
            drop(stream);
            continue;
        };
        conns.spawn(connection(
            stream,
            peer,
            app.clone(),
            limits.clone(),
            close_rx.clone(),
            slot,
            tls.clone(),
        ));
    }
    let _ = close_tx.send(true);
    while conns.join_next().await.is_some() {}
    Ok(())
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// One open connection's place in [`Counts`], given back on drop.
struct ConnSlot {
    counts: Arc<Mutex<Counts>>,
    ip: IpAddr,
}

impl ConnSlot {
    fn claim(counts: &Arc<Mutex<Counts>>, limits: &HttpLimits, ip: IpAddr) -> Option<ConnSlot> {
        let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
        let mine = c.per_client.get(&ip).copied().unwrap_or(0);
        if c.total >= limits.max_connections {
            warn_limited!(
                "HTTP connections full",
                "HTTP: {} connections open; connection from {ip} closed",
                c.total
            );
            return None;
        }
        if mine >= limits.max_per_client {
            warn_limited!(
                "HTTP client over its connection limit",
                "HTTP: {ip} already has {mine} connections open; another one closed"
            );
            return None;
        }
        c.total += 1;
        c.per_client.insert(ip, mine + 1);
        Some(ConnSlot {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total -= 1;
        if let Some(n) = c.per_client.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_client.remove(&self.ip);
            }
        }
    }
}

/// When a byte last moved on a connection, in milliseconds since `base`.
struct Progress {
    base: Instant,
    at_ms: AtomicU64,
}

impl Progress {
    fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.at_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.at_ms.load(Ordering::Relaxed))
    }

    /// Returns once nothing has moved for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let deadline = self.last() + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// A TCP stream that records in [`Progress`] when bytes move.
struct Watched {
    stream: TcpStream,
    progress: Arc<Progress>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.progress.touch();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.progress.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Serves one connection (after its TLS handshake, if any) until it closes, idles out, or
/// the server shuts down.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: Arc<HttpLimits>,
    close: watch::Receiver<bool>,
    _slot: ConnSlot,
    tls: Option<TlsAcceptor>,
) {
    let progress = Arc::new(Progress {
        base: Instant::now(),
        at_ms: AtomicU64::new(0),
    });
    let watched = Watched {
        stream,
        progress: progress.clone(),
    };
    let Some(tls) = tls else {
        let io = TokioIo::new(watched);
        return serve_connection(io, peer, app, &limits, close, &progress).await;
    };
    match tokio::time::timeout(limits.header_timeout, tls.accept(watched)).await {
        Ok(Ok(stream)) => {
            let io = TokioIo::new(stream);
            serve_connection(io, peer, app, &limits, close, &progress).await
        }
        Ok(Err(e)) => tracing::debug!("TLS handshake with {peer} failed: {e}"),
        Err(_) => tracing::debug!(
            "TLS handshake with {peer} not done within {} s",
            limits.header_timeout.as_secs()
        ),
    }
}

async fn serve_connection<IO>(
    io: IO,
    peer: SocketAddr,
    app: Router,
    limits: &HttpLimits,
    mut close: watch::Receiver<bool>,
    progress: &Progress,
) where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("HTTP connection from {peer}: {e}");
                }
                return;
            }
            _ = progress.idle_for(limits.idle_timeout) => {
                tracing::debug!(
                    "HTTP connection from {peer} closed: nothing moved for {} s",
                    limits.idle_timeout.as_secs()
                );
                return;
            }
            _ = close.wait_for(|v| *v), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::{BootPlan, FixedPlan};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn one_byte_range_or_none() {
        let cases = [
            ("bytes=0-1", Some("bytes=0-1")),
            ("bytes=5-", Some("bytes=5-")),
            ("bytes=-5", Some("bytes=-5")),
            ("Bytes = 3-4", Some("bytes=3-4")),
            ("bytes=0-1,", Some("bytes=0-1")),
            ("bytes=0-1,4-5", None),
            ("bytes=0-1, 0-1", None),
            ("items=0-1", None),
            ("bytes=5-2", None),
            ("bytes=-0", None),
            ("bytes=-", None),
            ("bytes=a-b", None),
            ("bytes=+1-2", None),
            ("bytes=99999999999999999999-", None),
            ("bytes", None),
            ("", None),
        ];
        for (v, want) in cases {
            assert_eq!(single_byte_range(v).as_deref(), want, "{v:?}");
        }
    }

    /// A server for `dir` with `limits` on 127.0.0.1; dropping the sender stops it.
    async fn start(
        dir: &std::path::Path,
        limits: HttpLimits,
    ) -> (
        SocketAddr,
        watch::Sender<bool>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(Arc::new(HttpState {
            root: dir.to_path_buf(),
            provider: Arc::new(FixedPlan(BootPlan::Local)),
            clients: Arc::new(ClientMap::default()),
            http_base: format!("http://{addr}"),
        }));
        let (tx, rx) = watch::channel(false);
        let server = tokio::spawn(serve_with(listener, app, rx, limits));
        (addr, tx, server)
    }

    /// Status line, head and body of a GET with extra header lines; the connection closes.
    async fn get(addr: SocketAddr, path: &str, extra: &str) -> (u16, String, Vec<u8>) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{extra}\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
            .await
            .expect("response within 20 s")
            .unwrap();
        let split = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head");
        let head = String::from_utf8_lossy(&out[..split]).into_owned();
        let status = head[9..12].parse().unwrap();
        (status, head, out[split + 4..].to_vec())
    }

    #[tokio::test]
    async fn ranges_rfc_9110_says_to_ignore_get_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100u8).collect();
        std::fs::write(dir.path().join("f"), &data).unwrap();
        let (addr, _stop, _server) = start(dir.path(), HttpLimits::default()).await;
        for ignored in ["bytes=0-1,4-5", "items=0-1", "bytes=5-2", "bytes=x-"] {
            let (status, _, body) = get(addr, "/files/f", &format!("Range: {ignored}\r\n")).await;
            assert_eq!((status, &body[..]), (200, &data[..]), "{ignored}");
        }
        let (status, head, body) = get(addr, "/files/f", "Range: bytes=10-19\r\n").await;
        assert_eq!((status, &body[..]), (206, &data[10..20]));
        assert!(
            head.to_ascii_lowercase()
                .contains("content-range: bytes 10-19/100"),
            "{head}"
        );
        let (status, _, _) = get(addr, "/files/f", "Range: bytes=200-\r\n").await;
        assert_eq!(status, 416, "one range starting past the end");
        let (status, _, body) = get(addr, "/files/f", "").await;
        assert_eq!((status, body.len()), (200, 100));
    }

    /// Reads until the server closes; `Err` if it has not within `within`.
    async fn closed_within(s: &mut TcpStream, within: Duration) -> Result<usize, String> {
        let mut n = 0;
        let mut buf = vec![0u8; 1 << 16];
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Err(_) => return Err(format!("still open after {within:?}, {n} bytes read")),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(n),
                Ok(Ok(k)) => n += k,
            }
        }
    }

    fn quick() -> HttpLimits {
        HttpLimits {
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            ..HttpLimits::default()
        }
    }

    #[tokio::test]
    async fn a_slow_request_head_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, _stop, _server) = start(dir.path(), quick()).await;
        // Silence after connecting.
        let mut s = TcpStream::connect(addr).await.unwrap();
        closed_within(&mut s, Duration::from_secs(10))
            .await
            .unwrap();
        // A head dripped a byte at a time, each in time, never finishing.
        let mut s = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        let mut closed = false;
        for b in b"GET /files/f HTTP/1.1\r\nX-Slow: "
            .iter()
            .chain([b'a'; 200].iter())
        {
            if s.write_all(&[*b]).await.is_err() {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if started.elapsed() > Duration::from_secs(10) {
                break;
            }
        }
        assert!(
            closed || closed_within(&mut s, Duration::from_secs(5)).await.is_ok(),
            "a dripping request head kept its connection for {:?}",
            started.elapsed()
        );
    }

    /// A GET for a sparse file of `len` bytes in `dir`, from a server with 1 s timeouts.
    async fn ask_for_big_file(dir: &std::path::Path, len: u64) -> (TcpStream, watch::Sender<bool>) {
        std::fs::File::create(dir.join("big"))
            .unwrap()
            .set_len(len)
            .unwrap();
        let (addr, stop, _server) = start(dir, quick()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /files/big HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        (s, stop)
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _stop) = ask_for_big_file(dir.path(), 256 << 20).await;
        // Read nothing for a while: the socket buffers fill and the server's writes stall.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let n = closed_within(&mut s, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(n < 256 << 20, "the whole file arrived ({n} bytes)");
    }

    #[tokio::test]
    async fn a_slow_reader_that_keeps_reading_gets_everything() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _stop) = ask_for_big_file(dir.path(), 16 << 20).await;
        // Well under the 1 s idle limit between reads, far slower than the link.
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            match tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
                .await
                .expect("data or EOF")
            {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        assert!(
            n > 16 << 20,
            "a slow but steady reader was cut off after {n} bytes"
        );
    }

    #[tokio::test]
    async fn connections_are_capped_per_client_and_in_all() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"hello").unwrap();
        let limits = HttpLimits {
            max_connections: 3,
            max_per_client: 2,
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
        };
        let (addr, stop, server) = start(dir.path(), limits).await;
        let connect_from = |ip: &str| {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind(format!("{ip}:0").parse().unwrap()).unwrap();
            sock.connect(addr)
        };
        let _a = connect_from("127.0.0.1").await.unwrap();
        let _b = connect_from("127.0.0.1").await.unwrap();
        let mut c = connect_from("127.0.0.1").await.unwrap();
        closed_within(&mut c, Duration::from_secs(10))
            .await
            .expect("a third connection from one address is closed");
        let _d = connect_from("127.0.0.2").await.unwrap();
        let mut e = connect_from("127.0.0.3").await.unwrap();
        closed_within(&mut e, Duration::from_secs(10))
            .await
            .expect("a fourth connection in all is closed");
        drop((_a, _b));
        // Slots come back when connections close; then requests are served again.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut s = connect_from("127.0.0.1").await.unwrap();
            s.write_all(b"GET /files/f HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
            if out.ends_with(b"hello") {
                break;
            }
            assert!(Instant::now() < deadline, "slots were not given back");
        }
        // Shutdown closes the idle connection that is left and returns.
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(20), server)
            .await
            .expect("serve returned after shutdown")
            .unwrap()
            .unwrap();
    }

    #[test]
    fn script_base_follows_host_header() {
        let mut h = HeaderMap::new();
        assert_eq!(base_for(&h, "http://10.0.0.1:80"), "http://10.0.0.1:80");
        h.insert(header::HOST, "10.2.0.1:8080".parse().unwrap());
        assert_eq!(base_for(&h, "http://10.0.0.1:80"), "http://10.2.0.1:8080");
        h.insert(header::HOST, "evil/x?".parse().unwrap());
        assert_eq!(base_for(&h, "http://10.0.0.1:80"), "http://10.0.0.1:80");
    }
}
