//! The admin API and its authentication: a bearer token in `<state>/admin.token` (0600,
//! made at the server's first start), sent as `Authorization: Bearer TOKEN` by scripts and
//! the CLI. Whoever can read the state directory is the admin; nobody on the boot network is.
//!
//! ```text
//! GET  /api/clients                  the registry (JSON)
//! POST /api/clients/{mac}/installed  the client's install is over: boot its disk next
//! GET  /api/stats                    chunk cache counters (install_api.rs)
//! /api/v1/...                        the management API (api_v1)
//! ```
//!
//! A refusal is 401 with the JSON error shape of `/api/v1` (api_error.rs).
//!
//! The management API is also served on the local socket `<state>/api.sock` (mode 0660,
//! group: the state directory's), without a token: the kernel names the caller
//! (SO_PEERCRED), and root and the state directory's owner are the admin; anyone else who
//! may connect gets 403.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use axum::extract::{self, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ignite_netboot::MacAddr;
use tokio::net::UnixListener;

use super::api_error::V1Error;

pub const TOKEN_FILE: &str = "admin.token";
pub const SOCKET_FILE: &str = "api.sock";

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_FILE)
}

pub fn token_path(state_dir: &Path) -> PathBuf {
    state_dir.join(TOKEN_FILE)
}

pub struct AdminToken {
    token: String,
    path: PathBuf,
}

impl AdminToken {
    /// The token in `state_dir`, made (256 random bits, mode 0600) when there is none.
    pub fn load_or_create(state_dir: &Path) -> Result<AdminToken> {
        let path = token_path(state_dir);
        let made = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path);
        match made {
            Ok(mut f) => {
                let t = ignite_recovery::random::hex(32)?;
                f.write_all(format!("{t}\n").as_bytes())
                    .and_then(|_| f.sync_all())
                    .with_context(|| format!("admin token {}: cannot write it", path.display()))?;
                tracing::info!("made the admin API token {}", path.display());
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("admin token {}: cannot create it", path.display()))
            }
        }
        let meta = std::fs::metadata(&path)?;
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("admin token {}: cannot make it 0600", path.display()))?;
            tracing::warn!(
                "admin token {} was readable by others: made it 0600; replace it (delete it and restart) if others may have read it",
                path.display()
            );
        }
        Ok(AdminToken {
            token: Self::read(state_dir)?,
            path,
        })
    }

    /// The token a client sends, read from `state_dir`.
    pub fn read(state_dir: &Path) -> Result<String> {
        let path = token_path(state_dir);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "admin token {}: cannot read it (it is made when `ignite server` first starts; the admin API needs it)",
                path.display()
            )
        })?;
        let t = text.trim();
        if t.len() < 32 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!(
                "admin token {} is not 32 or more hex digits; delete it and restart `ignite server` to make a new one",
                path.display()
            );
        }
        Ok(t.to_string())
    }
}

/// The registry routes (see the module doc); SQLite work runs off the async workers.
pub fn routes(state: Arc<crate::state::State>) -> Router {
    Router::new()
        .route(
            "/api/clients",
            get(|State(s): State<Arc<crate::state::State>>| async move {
                blocking(move || s.list()).await.map(Json)
            }),
        )
        .route(
            "/api/clients/{mac}/installed",
            post(
                |State(s): State<Arc<crate::state::State>>,
                 extract::Path(mac): extract::Path<String>| async move {
                    let mac: MacAddr = mac
                        .parse()
                        .map_err(|e| (StatusCode::BAD_REQUEST, format!("{e}\n")))?;
                    let c = blocking(move || s.install_finished(mac))
                        .await
                        .map_err(|(_, e)| (StatusCode::CONFLICT, e))?;
                    tracing::info!(
                        "client {} ({}) installed; next boot: local disk",
                        c.name,
                        c.mac
                    );
                    Ok::<_, (StatusCode, String)>(Json(c))
                },
            ),
        )
        .with_state(state)
}

/// `f` on a blocking thread; an error as a 500 with its message.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> std::result::Result<T, (StatusCode, String)> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err((StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n"))),
        Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))),
    }
}

/// `routes`, refusing every request without the admin token. On the routes only
/// (`route_layer`): a path no route has stays a 404 for everyone, not an admin 401.
pub fn protect(routes: Router, token: Arc<AdminToken>) -> Router {
    routes.route_layer(axum::middleware::from_fn_with_state(token, check))
}

async fn check(State(t): State<Arc<AdminToken>>, req: Request, next: Next) -> Response {
    match bearer(req.headers()) {
        Some(b) if constant_time_eq(b.as_bytes(), t.token.as_bytes()) => next.run(req).await,
        given => V1Error::new(
            StatusCode::UNAUTHORIZED,
            format!(
                "admin API: {}; send `Authorization: Bearer TOKEN` with the token in {} on the server",
                if given.is_some() { "wrong token" } else { "no token" },
                t.path.display()
            ),
        )
        .into_response(),
    }
}

/// The token of an `Authorization: Bearer TOKEN` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Compares secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The uid of a caller on the local socket, as the kernel gave it.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub uid: Option<u32>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, UnixListener>>
    for Peer
{
    fn connect_info(s: axum::serve::IncomingStream<'_, UnixListener>) -> Peer {
        Peer {
            uid: s.io().peer_cred().ok().map(|c| c.uid()),
        }
    }
}

/// Listens on `<state_dir>/api.sock`: mode 0660, its group the state directory's. A
/// socket file left by a server that is gone is replaced; one a running server answers on
/// is an error.
pub fn bind_socket(state_dir: &Path) -> Result<UnixListener> {
    let path = socket_path(state_dir);
    if std::os::unix::net::UnixStream::connect(&path).is_ok() {
        bail!(
            "{} answers: another `ignite server` uses this state directory; stop it first",
            path.display()
        );
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("{}: cannot replace it", path.display())),
    }
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("{}: cannot make it 0660", path.display()))?;
    let gid = std::fs::metadata(state_dir)?.gid();
    if let Err(e) = std::os::unix::fs::chown(&path, None, Some(gid)) {
        tracing::warn!(
            "{}: cannot give it the state directory's group {gid} ({e}); only this user and root can use it",
            path.display()
        );
    }
    Ok(listener)
}

/// Serves `app` on the local socket until `shutdown` turns true, each request checked
/// against `owner` (the state directory's); then removes the socket file.
pub async fn serve_socket(
    listener: UnixListener,
    path: PathBuf,
    app: Router,
    owner: u32,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = app.layer(axum::middleware::from_fn_with_state(owner, local_peer));
    let r = axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
        .with_graceful_shutdown(async move {
            while !*shutdown.borrow() {
                if shutdown.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
    let _ = std::fs::remove_file(&path);
    r
}

/// Whether `uid` may use the local socket: root, or the state directory's owner.
pub fn local_admin(uid: Option<u32>, owner: u32) -> bool {
    uid.is_some_and(|u| u == 0 || u == owner)
}

async fn local_peer(
    State(owner): State<u32>,
    extract::ConnectInfo(peer): extract::ConnectInfo<Peer>,
    req: Request,
    next: Next,
) -> Response {
    if local_admin(peer.uid, owner) {
        return next.run(req).await;
    }
    let who = peer
        .uid
        .map_or("an unknown user".to_string(), |u| format!("uid {u}"));
    V1Error::new(
        StatusCode::FORBIDDEN,
        format!(
            "local API: {who} is neither root nor the owner of the server's state directory (uid {owner}); \
             run the command as one of them, or use --server URL with the admin token"
        ),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_made_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = AdminToken::load_or_create(dir.path()).unwrap();
        let mode = || {
            std::fs::metadata(token_path(dir.path()))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(), 0o600);
        assert_eq!(a.token.len(), 64);
        let b = AdminToken::load_or_create(dir.path()).unwrap();
        assert_eq!(a.token, b.token);
        assert_eq!(AdminToken::read(dir.path()).unwrap(), a.token);
        // A token left readable by others is made private again.
        std::fs::set_permissions(
            token_path(dir.path()),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        AdminToken::load_or_create(dir.path()).unwrap();
        assert_eq!(mode(), 0o600);
        std::fs::write(token_path(dir.path()), "short\n").unwrap();
        let e = AdminToken::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not 32 or more hex digits"), "{e}");
    }

    #[tokio::test]
    async fn the_socket_is_private_and_replaces_only_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let first = bind_socket(dir.path()).unwrap();
        let mode = std::fs::metadata(socket_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o660);
        let e = bind_socket(dir.path()).unwrap_err().to_string();
        assert!(e.contains("another `ignite server`"), "{e}");
        // Its server gone, the file left behind is replaced.
        drop(first);
        assert!(socket_path(dir.path()).exists());
        bind_socket(dir.path()).unwrap();
    }

    #[test]
    fn only_root_and_the_owner_use_the_socket() {
        assert!(local_admin(Some(0), 1000));
        assert!(local_admin(Some(1000), 1000));
        assert!(!local_admin(Some(65534), 1000));
        assert!(!local_admin(None, 0));
    }

    #[test]
    fn secrets_compare_by_content() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
