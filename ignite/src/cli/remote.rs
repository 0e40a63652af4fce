//! The CLI's client of the management API: `--server URL` (or `IGNITE_SERVER`) with
//! `--token` (or `IGNITE_TOKEN`; by default the server's `<state>/admin.token`, readable
//! when the CLI runs on the server host).
//!
//! A command given a server asks it `GET /api/v1/health` first: when the server cannot be
//! reached, the command says so on stderr and works on the local state directory, as
//! without `--server`. Any answer, including an error, comes from the server from then on.
//! Errors arrive as `{"error": {"code", "message"}}` and are shown as their message.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;

use crate::server::admin::AdminToken;
use crate::server::api_error::ErrorBody;

/// Where a management command sends its work; flattened into exactly the commands that
/// go through the API (global below them, so `ignite client list --server URL` works), so
/// no other command (one with a `--server` of its own, as `recovery capture`) sees
/// `IGNITE_SERVER`.
#[derive(clap::Args, Clone, Default)]
pub struct ServerOpts {
    /// Do this through the management API of the server at URL (http://HOST:PORT)
    /// instead of on the local state directory.
    #[arg(long, env = "IGNITE_SERVER", value_name = "URL", global = true)]
    pub server: Option<String>,
    /// The server's admin token (default: <state-dir>/admin.token, on the server host).
    #[arg(long, env = "IGNITE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

/// A reachable server's API.
pub struct Remote {
    base: String,
    token: String,
    http: ureq::Agent,
}

impl ServerOpts {
    /// The server to send this command to: None without `--server`, or when it is not
    /// reachable (said on stderr; the command then works on `state_dir`).
    pub fn remote(&self, state_dir: &Path) -> Result<Option<Remote>> {
        let Some(url) = &self.server else {
            return Ok(None);
        };
        let base = url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--server {url:?}: give a URL, e.g. http://10.77.0.1:8080");
        }
        let token = match &self.token {
            Some(t) => t.trim().to_string(),
            None => AdminToken::read(state_dir)
                .context("no --token (IGNITE_TOKEN) given, and the local one cannot be read")?,
        };
        let http = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            // A guest stop waits for the guest; the server cuts any request at 120 s.
            .timeout_global(Some(Duration::from_secs(150)))
            .build()
            .into();
        let r = Remote { base, token, http };
        match r.http.get(r.url("/api/v1/health")).call() {
            Ok(_) => Ok(Some(r)),
            Err(e) => {
                eprintln!(
                    "ignite: server {url} is unreachable ({e}); using the local state in {}",
                    state_dir.display()
                );
                Ok(None)
            }
        }
    }
}

impl Remote {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call("GET", path, None)
    }

    /// `method` on `path` (`/api/v1/...`), with `body` as JSON; the answer's JSON as `T`.
    pub fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T> {
        let url = self.url(path);
        let auth = format!("Bearer {}", self.token);
        let sent = match (method, body) {
            ("GET", _) => self.http.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => self.http.delete(&url).header("Authorization", &auth).call(),
            ("PUT", Some(b)) => self
                .http
                .put(&url)
                .header("Authorization", &auth)
                .send_json(b),
            ("POST", Some(b)) => self
                .http
                .post(&url)
                .header("Authorization", &auth)
                .send_json(b),
            ("POST", None) => self
                .http
                .post(&url)
                .header("Authorization", &auth)
                .send_empty(),
            (m, _) => bail!("internal: no {m} requests with this body"),
        };
        self.answer(method, &url, sent)
    }

    /// `POST path` with `body` (of `content_type`) streamed as the request body.
    pub fn post_body<T: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &str,
        body: impl ureq::AsSendBody,
    ) -> Result<T> {
        let url = self.url(path);
        let sent = self
            .http
            .post(&url)
            .header("Authorization", &format!("Bearer {}", self.token))
            .header("Content-Type", content_type)
            .send(body);
        self.answer("POST", &url, sent)
    }

    /// The answer's JSON as `T`, or the error it carries as its message.
    fn answer<T: DeserializeOwned>(
        &self,
        method: &str,
        url: &str,
        sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T> {
        let mut resp = sent.with_context(|| format!("{method} {url}"))?;
        let status = resp.status();
        let data = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .with_context(|| format!("{method} {url}: reading the answer"))?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&data) {
                Ok(e) => anyhow!("{}", e.error.message),
                Err(_) => anyhow!(
                    "{method} {url}: {status}: {}",
                    String::from_utf8_lossy(&data).trim()
                ),
            });
        }
        serde_json::from_slice(&data)
            .with_context(|| format!("{method} {url}: the answer is not what this CLI expects"))
    }
}

/// The state directory whose admin token a command without `--token` sends, for commands
/// that have no `--state-dir` of their own.
pub fn default_state_dir() -> PathBuf {
    std::env::var_os("IGNITE_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/ignite"))
}

/// `s` as one path segment of a URL (names and MACs carry `:`, snapshots `@`).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn segments_escape_what_a_path_would_split_or_misread() {
        assert_eq!(super::segment("web1"), "web1");
        assert_eq!(super::segment("52:54:00:aa"), "52%3A54%3A00%3Aaa");
        assert_eq!(super::segment("a/b c@latest?x"), "a%2Fb%20c%40latest%3Fx");
    }
}
