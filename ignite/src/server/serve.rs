//! Serving the HTTP router (boot files, scripts, install and admin API) so that clients on
//! the boot network cannot exhaust it. netboot's accept loop ([`http::serve_with`]) caps
//! connections (in all and per address), cuts off slow request heads and closes
//! connections on which nothing moves, with the [`HttpLimits`] given in `[limits]`; on top
//! of it every request must be read and answered (up to its body's first byte) within
//! `http_request_timeout_secs`, or it gets 408, so a body trickled in a byte at a time
//! holds its handler and connection for that long at most.
//!
//! Handlers see the peer's address as axum's `ConnectInfo<SocketAddr>`.

use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use ignite_netboot::http::{self, HttpLimits};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::config::Limits;

/// Serves `app` on `listener` with `limits` until `shutdown` turns true; then accepts
/// nothing more and lets open connections finish the request they are in.
/// With `tls`, over HTTPS.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &Limits,
    shutdown: watch::Receiver<bool>,
    tls: Option<TlsAcceptor>,
) -> std::io::Result<()> {
    let limit = Duration::from_secs(limits.http_request_timeout_secs);
    let app = app.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| answered_within(limit, req, next),
    ));
    match tls {
        None => http::serve_with(listener, app, shutdown, http_limits(limits)).await,
        Some(tls) => http::serve_tls(listener, app, shutdown, http_limits(limits), tls).await,
    }
}

/// netboot's HTTP limits as `[limits]` sets them.
pub fn http_limits(l: &Limits) -> HttpLimits {
    HttpLimits {
        max_connections: l.http_connections,
        max_per_client: l.http_connections_per_address,
        header_timeout: Duration::from_secs(l.http_header_timeout_secs),
        idle_timeout: Duration::from_secs(l.http_idle_timeout_secs),
    }
}

/// An archive upload may take longer than any request should: it is held to the idle
/// timeout (bytes must keep moving) and the upload size cap instead.
const UNTIMED_UPLOAD: &str = "/api/v1/archives/import";

async fn answered_within(limit: Duration, req: Request, next: Next) -> Response {
    if req.method() == axum::http::Method::POST && req.uri().path() == UNTIMED_UPLOAD {
        return next.run(req).await;
    }
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request was not sent and answered within {} s\n",
                limit.as_secs()
            ),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::ConnectInfo;
    use axum::routing::{get, post};
    use std::io::{Read, Write};
    use std::net::SocketAddr;
    use std::time::Instant;

    fn app() -> Router {
        Router::new()
            .route(
                "/peer",
                get(|ConnectInfo(p): ConnectInfo<SocketAddr>| async move { p.ip().to_string() }),
            )
            .route("/echo", post(|b: axum::body::Bytes| async move { b }))
            .route(
                UNTIMED_UPLOAD,
                post(|b: axum::body::Bytes| async move { b }),
            )
    }

    /// A server on 127.0.0.1 with `limits`, on its own runtime thread; its address.
    fn start(limits: Limits) -> (SocketAddr, watch::Sender<bool>) {
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
                serve(l, app(), &limits, rx, None).await.unwrap();
            });
        });
        (arx.recv().unwrap(), tx)
    }

    fn limits() -> Limits {
        Limits {
            http_connections_per_address: 3,
            http_header_timeout_secs: 1,
            http_request_timeout_secs: 2,
            http_idle_timeout_secs: 1,
            ..Limits::default()
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

    /// What the server sends up to the end of a response head (or until it closes).
    fn read_head(s: &mut std::net::TcpStream) -> String {
        let mut v = Vec::new();
        let mut buf = [0u8; 1024];
        while !v.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(n) if n > 0 => v.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
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
        // Bytes keep moving, so only the request timeout can end it.
        let l = Limits {
            http_idle_timeout_secs: 60,
            ..limits()
        };
        let (a, _stop) = start(l);
        let mut s = connect(a);
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            .unwrap();
        let t = Instant::now();
        let mut trickle = s.try_clone().unwrap();
        let dripping = std::thread::spawn(move || {
            for _ in 0..99 {
                std::thread::sleep(Duration::from_millis(200));
                if trickle.write_all(b"x").is_err() {
                    return;
                }
            }
        });
        let r = read_head(&mut s);
        assert!(r.starts_with("HTTP/1.1 408"), "{r}");
        assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
        let _ = s.shutdown(std::net::Shutdown::Both);
        dripping.join().unwrap();
    }

    #[test]
    fn an_upload_that_keeps_moving_outlasts_the_request_timeout() {
        let (a, _stop) = start(limits());
        let mut s = connect(a);
        let head =
            format!("POST {UNTIMED_UPLOAD} HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n");
        s.write_all(head.as_bytes()).unwrap();
        let t = Instant::now();
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(200));
            s.write_all(b"x").unwrap();
        }
        let r = read_head(&mut s);
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(t.elapsed() > Duration::from_secs(limits().http_request_timeout_secs));
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
