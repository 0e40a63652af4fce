//! The web console: one HTML page, one style sheet, one script and an icon, compiled into
//! the binary and served on the HTTP listener beside `/api/v1`. The page is a static skeleton (a
//! section per view: clients, guests, archives, schedules, jobs, boot log); the script fills
//! it by calling `/api/v1` with the admin token the sysadmin pastes into its login form
//! (kept in the tab's `sessionStorage`, sent as `Authorization: Bearer`), and follows
//! `/api/v1/events` for live install and job progress.
//!
//! ```text
//! GET /                    the page (no token needed: it holds no data)
//! GET /ui/console.css      its style sheet
//! GET /ui/console.js       its script
//! GET /ui/icon.svg         its icon
//! ```
//!
//! Every answer carries a Content-Security-Policy that allows only these files and
//! requests to this server (no inline script, no other origin), so text a hostile client
//! sends (host names, boot log details) can never run as script: the script also writes
//! it only as text, never as HTML.

use axum::extract::Path;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The page's files: URL path, content type, body.
const ASSETS: &[(&str, &str, &str)] = &[
    ("/", "text/html; charset=utf-8", include_str!("index.html")),
    (
        "/ui/console.css",
        "text/css; charset=utf-8",
        include_str!("console.css"),
    ),
    ("/ui/icon.svg", "image/svg+xml", include_str!("icon.svg")),
    (
        "/ui/console.js",
        "text/javascript; charset=utf-8",
        include_str!("console.js"),
    ),
];

/// Only this server's own files and API; no framing by other sites; no inline code.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'";

/// The console's routes (public: the files hold no data; the data is behind `/api/v1`).
pub fn routes() -> Router {
    Router::new()
        .route("/", get(|| async { asset("/") }))
        .route(
            "/ui/{file}",
            get(|Path(file): Path<String>| async move { asset(&format!("/ui/{file}")) }),
        )
}

/// The file at `path` with its headers, or 404.
fn asset(path: &str) -> Response {
    let Some((_, kind, body)) = ASSETS.iter().find(|(p, _, _)| *p == path) else {
        return (
            StatusCode::NOT_FOUND,
            format!("no console file {path}; the console is at /\n"),
        )
            .into_response();
    };
    let headers: [(HeaderName, HeaderValue); 6] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        // The files change with the binary: ask each time (they are small).
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (headers, *body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(path: &str) -> &'static str {
        ASSETS.iter().find(|(p, _, _)| *p == path).unwrap().2
    }

    /// Quoted strings in `s` that start with `prefix` (up to the closing quote).
    fn quoted(s: &str, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        for q in ['"', '\'', '`'] {
            let open = format!("{q}{prefix}");
            let mut rest = s;
            while let Some(i) = rest.find(&open) {
                rest = &rest[i + 1..];
                let end = rest.find(q).unwrap_or(rest.len());
                out.push(rest[..end].to_string());
                rest = &rest[end..];
            }
        }
        out
    }

    /// `path` with its query cut and each `{name}` / `${expr}` part as `{}`.
    fn template(path: &str) -> String {
        let path = path.split('?').next().unwrap_or_default();
        let mut out = String::new();
        let mut rest = path;
        while let Some(i) = rest.find('{') {
            out.push_str(rest[..i].trim_end_matches('$'));
            out.push_str("{}");
            rest = rest[i..].split_once('}').map_or("", |(_, r)| r);
        }
        out + rest
    }

    #[tokio::test]
    async fn every_file_is_served_with_its_type_and_the_policy() {
        for (path, kind, body) in ASSETS {
            let r = asset(path);
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            let h = r.headers();
            assert_eq!(h[header::CONTENT_TYPE], *kind, "{path}");
            assert_eq!(h[header::CONTENT_SECURITY_POLICY], CSP, "{path}");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
            let got = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
            assert_eq!(&got[..], body.as_bytes(), "{path}");
        }
        for missing in ["/ui/nothing.js", "/ui/../mod.rs", "/ui/", "/index.html"] {
            assert_eq!(asset(missing).status(), StatusCode::NOT_FOUND, "{missing}");
        }
    }

    /// The page loads only files that are served, and has no inline code the policy
    /// would block (or that text from the network could turn into).
    #[test]
    fn the_page_refers_only_to_served_files_and_has_no_inline_code() {
        let html = text("/");
        let refs: Vec<String> = [quoted(html, "/ui/"), quoted(html, "http")].concat();
        assert!(refs.len() >= 2, "{refs:?}");
        for r in &refs {
            assert!(
                ASSETS.iter().any(|(p, _, _)| p == r),
                "index.html refers to {r}, which is not served"
            );
        }
        let lower = html.to_ascii_lowercase();
        assert_eq!(lower.matches("<script").count(), 1, "one script");
        assert!(lower.contains("<script src=\"/ui/console.js\"></script>"));
        for inline in [
            " style=",
            " onclick=",
            " onload=",
            " onsubmit=",
            "javascript:",
        ] {
            assert!(
                !lower.contains(inline),
                "index.html has inline code: {inline}"
            );
        }
    }

    #[test]
    fn templates_of_routes_and_calls_compare() {
        assert_eq!(
            template("/api/v1/clients/{client}/action"),
            "/api/v1/clients/{}/action"
        );
        assert_eq!(
            template("/api/v1/clients/${enc(c.mac)}/action?x=1"),
            "/api/v1/clients/{}/action"
        );
        assert_eq!(template("/api/v1/bootlog?mac="), "/api/v1/bootlog");
    }

    /// The script speaks only `/api/v1`, only routes the API has, and writes what it
    /// fetched as text, never as HTML.
    #[test]
    fn the_script_calls_only_routes_of_the_api_and_never_writes_html() {
        let js = text("/ui/console.js");
        let doc: serde_json::Value =
            serde_json::from_str(&crate::server::api_v1::openapi_json()).unwrap();
        let routes: Vec<String> = doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(|p| template(p))
            .collect();
        let called = quoted(js, "/api/");
        assert!(called.len() >= 10, "{called:?}");
        for c in &called {
            assert!(
                routes.contains(&template(c)),
                "console.js calls {c}, which is no route of /api/v1"
            );
        }
        for writer in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!js.contains(writer), "console.js uses {writer}");
        }
    }
}
