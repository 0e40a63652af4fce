//! HTTP boot service: boot files (with HEAD, Range and streaming, via tower-http's
//! `ServeFile`) under `/files/`, and per-client iPXE scripts under `/ipxe/<mac>`. The `ignite`
//! binary merges its own API routes into [`router`]'s result.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_http::services::ServeFile;

use crate::boot::{ipxe_script, BootEvent, BootProvider, ClientMap};
use crate::files::resolve;
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

async fn file(
    State(s): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(path): Path<String>,
    req: Request,
) -> Response {
    let ip = peer_ip(peer);
    let mac = ip.and_then(|i| s.clients.mac_of(i));
    let method = req.method().clone();
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|r| format!(" range={r}"))
        .unwrap_or_default();
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
            tracing::warn!("HTTP {method} /files/{path}: {e}");
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("{path}: {e}\n")).into_response();
        }
    };
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

/// Serves `app` on `listener` until `shutdown` turns true; peers' addresses reach handlers.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = shutdown.wait_for(|v| *v).await;
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

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
