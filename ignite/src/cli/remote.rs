//! The CLI's client of the management API: `--server URL` (or `IGNITE_SERVER`) with
//! `--token` (or `IGNITE_TOKEN`; by default the server's `<state>/admin.token`, readable
//! when the CLI runs on the server host); without them, the server's local socket
//! `<state>/api.sock` when it exists (no token: the server checks the caller's uid), for
//! the commands whose local work is on that state directory.
//!
//! A command given a server asks it `GET /api/v1/health` first: when the server cannot be
//! reached, the command says so on stderr and works on the local state directory, as
//! without `--server`. Any answer, including an error, comes from the server from then on.
//! Errors arrive as `{"error": {"code", "message"}}` and are shown as their message.
//!
//! Over the socket the CLI speaks HTTP/1.1 itself, one request per connection
//! (`Connection: close`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;

use crate::server::admin::{socket_path, AdminToken};
use crate::server::api_error::ErrorBody;
use crate::server::api_v1::jobs::{Job, JobState};

/// Where a management command sends its work; flattened into exactly the commands that
/// go through the API (global below them, so `ignite client list --server URL` works), so
/// no other command (one with a `--server` of its own, as `recovery capture`) sees
/// `IGNITE_SERVER`.
#[derive(clap::Args, Clone, Default)]
pub struct ServerOpts {
    /// Do this through the management API of the server at URL (http://HOST:PORT)
    /// instead of on the local state directory (default: the server's local socket
    /// <state-dir>/api.sock, when it exists).
    #[arg(long, env = "IGNITE_SERVER", value_name = "URL", global = true)]
    pub server: Option<String>,
    /// The server's admin token (default: <state-dir>/admin.token, on the server host).
    #[arg(long, env = "IGNITE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

/// A reachable server's API.
pub struct Remote {
    to: To,
}

enum To {
    Http {
        base: String,
        token: String,
        http: ureq::Agent,
    },
    Socket(PathBuf),
}

/// A request body sent as it is (not JSON).
pub enum Upload {
    Text(String),
    File(std::fs::File),
}

/// Longest a request may take: a guest stop waits for the guest; the server cuts any
/// request at 120 s.
const TIMEOUT: Duration = Duration::from_secs(150);
/// The largest answer read.
const MAX_ANSWER: u64 = 64 << 20;

impl ServerOpts {
    /// The server to send this command to: `--server`, else the local socket in
    /// `state_dir` when it exists; None when neither is there, or when the server is not
    /// reachable (said on stderr; the command then works on `state_dir`).
    pub fn remote(&self, state_dir: &Path) -> Result<Option<Remote>> {
        if self.server.is_some() {
            return self.remote_if_asked(state_dir);
        }
        let sock = socket_path(state_dir);
        if !sock.exists() {
            return Ok(None);
        }
        let r = Remote {
            to: To::Socket(sock.clone()),
        };
        Ok(r.reachable(&sock.display().to_string(), state_dir))
    }

    /// The server `--server` names (see [`ServerOpts::remote`]), for commands whose local
    /// work is not on the server's state (a store or file given on the command line).
    pub fn remote_if_asked(&self, state_dir: &Path) -> Result<Option<Remote>> {
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
            .timeout_global(Some(TIMEOUT))
            .build()
            .into();
        let r = Remote {
            to: To::Http { base, token, http },
        };
        Ok(r.reachable(url, state_dir))
    }
}

impl Remote {
    /// Self when the server answers its health route at all (an error answer included).
    fn reachable(self, name: &str, state_dir: &Path) -> Option<Remote> {
        match self.send("GET", "/api/v1/health", None) {
            Ok(_) => Some(self),
            Err(e) => {
                eprintln!(
                    "ignite: server {name} is unreachable ({e:#}); using the local state in {}",
                    state_dir.display()
                );
                None
            }
        }
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
        let body = body
            .map(|b| serde_json::to_string(&b).map(|t| ("application/json", Upload::Text(t))))
            .transpose()?;
        let answer = self.send(method, path, body)?;
        answer.json(method, path)
    }

    /// `POST path` with `body` (of `content_type`) as the request body.
    pub fn post_body<T: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &str,
        body: Upload,
    ) -> Result<T> {
        let answer = self.send("POST", path, Some((content_type, body)))?;
        answer.json("POST", path)
    }

    /// Job `id`'s result once it is done (polled); its error when it failed.
    pub fn wait_job(&self, id: u64) -> Result<serde_json::Value> {
        self.follow_job(id, |_| {})
    }

    /// As [`Remote::wait_job`], printing the job's log lines as they come.
    pub fn wait_job_logged(&self, id: u64) -> Result<serde_json::Value> {
        let mut printed = 0;
        self.follow_job(id, |j| {
            for line in j.log.iter().skip(printed) {
                println!("{}", crate::cli::escape(line));
            }
            printed = printed.max(j.log.len());
        })
    }

    /// Job `id`, polled until it ends, `seen` shown each state on the way.
    fn follow_job(&self, id: u64, mut seen: impl FnMut(&Job)) -> Result<serde_json::Value> {
        loop {
            let j: Job = self.get(&format!("/api/v1/jobs/{id}"))?;
            seen(&j);
            match j.state {
                JobState::Running => std::thread::sleep(Duration::from_millis(200)),
                JobState::Done => return Ok(j.result.unwrap_or_default()),
                JobState::Failed => bail!(
                    "{} (job {id} on the server)",
                    j.error.unwrap_or_else(|| "failed".into())
                ),
            }
        }
    }

    /// The server's status and answer to one request.
    fn send(&self, method: &str, path: &str, body: Option<(&str, Upload)>) -> Result<Answer> {
        match &self.to {
            To::Http { base, token, http } => {
                let url = format!("{base}{path}");
                let mut req = ureq::http::Request::builder()
                    .method(method)
                    .uri(&url)
                    .header("Authorization", format!("Bearer {token}"));
                if let Some((ct, _)) = &body {
                    req = req.header("Content-Type", *ct);
                }
                let sent = match body.map(|(_, b)| b) {
                    None => http.run(req.body(())?),
                    Some(Upload::Text(t)) => http.run(req.body(t)?),
                    Some(Upload::File(f)) => http.run(req.body(f)?),
                };
                let mut resp = sent.with_context(|| format!("{method} {url}"))?;
                let status = resp.status().as_u16();
                let data = resp
                    .body_mut()
                    .with_config()
                    .limit(MAX_ANSWER)
                    .read_to_vec()
                    .with_context(|| format!("{method} {url}: reading the answer"))?;
                Ok(Answer { status, data })
            }
            To::Socket(sock) => socket_request(sock, method, path, body)
                .with_context(|| format!("{method} {path} on {}", sock.display())),
        }
    }
}

/// A status and the body that came with it.
struct Answer {
    status: u16,
    data: Vec<u8>,
}

impl Answer {
    /// The body's JSON as `T`, or the error it carries as its message.
    fn json<T: DeserializeOwned>(self, method: &str, path: &str) -> Result<T> {
        if !(200..300).contains(&self.status) {
            return Err(match serde_json::from_slice::<ErrorBody>(&self.data) {
                Ok(e) => anyhow!("{}", e.error.message),
                Err(_) => anyhow!(
                    "{method} {path}: {}: {}",
                    self.status,
                    String::from_utf8_lossy(&self.data).trim()
                ),
            });
        }
        serde_json::from_slice(&self.data)
            .with_context(|| format!("{method} {path}: the answer is not what this CLI expects"))
    }
}

/// One HTTP/1.1 request on the Unix socket `sock`; the answer (read to the end, the
/// server closing the connection after it).
fn socket_request(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<(&str, Upload)>,
) -> Result<Answer> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    let (len, mut reader): (u64, Box<dyn Read>) = match body {
        None => (0, Box::new(std::io::empty())),
        Some((ct, Upload::Text(t))) => {
            head += &format!("Content-Type: {ct}\r\n");
            (
                t.len() as u64,
                Box::new(std::io::Cursor::new(t.into_bytes())),
            )
        }
        Some((ct, Upload::File(f))) => {
            head += &format!("Content-Type: {ct}\r\n");
            (f.metadata()?.len(), Box::new(f))
        }
    };
    head += &format!("Content-Length: {len}\r\n\r\n");
    s.write_all(head.as_bytes())?;
    std::io::copy(&mut reader.by_ref().take(len), &mut s)?;
    let mut raw = Vec::new();
    (&s).take(MAX_ANSWER + (64 << 10)).read_to_end(&mut raw)?;
    parse_answer(&raw)
}

/// An HTTP/1.1 response as read to its end: status and body (de-chunked).
fn parse_answer(raw: &[u8]) -> Result<Answer> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("the server's answer has no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).context("the answer's headers are not text")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .with_context(|| format!("not an HTTP status line: {:?}", head.lines().next()))?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.eq_ignore_ascii_case("transfer-encoding") && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = &raw[end + 4..];
    let data = match chunked {
        false => body.to_vec(),
        true => dechunk(body)?,
    };
    Ok(Answer { status, data })
}

/// The data of a chunked body (`SIZE\r\nDATA\r\n ... 0\r\n\r\n`).
fn dechunk(mut body: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunk without its size line")?;
        let size_text = std::str::from_utf8(&body[..nl])?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("chunk size {size_text:?}"))?;
        body = &body[nl + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            bail!("the answer ends inside a chunk");
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// The state directory whose admin token a command without `--token` sends, for commands
/// that have no `--state-dir` of their own.
pub fn default_state_dir() -> PathBuf {
    std::env::var_os("IGNITE_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/ignite"))
}

/// A URL's query for the `pairs` that have a value: `?k=v&...` (values as [`segment`]s), or
/// nothing when none has.
pub fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let set: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", segment(v))))
        .collect();
    match set.is_empty() {
        true => String::new(),
        false => format!("?{}", set.join("&")),
    }
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
    fn answers_are_read_plain_or_chunked() {
        let a =
            super::parse_answer(b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((a.status, a.data.as_slice()), (404, &b"{}"[..]));
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let a = super::parse_answer(raw).unwrap();
        assert_eq!((a.status, a.data.as_slice()), (200, &b"abcde"[..]));
        assert!(super::parse_answer(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(super::parse_answer(b"garbage\r\n\r\n").is_err());
        let cut = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nabc";
        assert!(super::parse_answer(cut).is_err());
    }

    #[test]
    fn segments_escape_what_a_path_would_split_or_misread() {
        assert_eq!(super::segment("web1"), "web1");
        assert_eq!(super::segment("52:54:00:aa"), "52%3A54%3A00%3Aaa");
        assert_eq!(super::segment("a/b c@latest?x"), "a%2Fb%20c%40latest%3Fx");
    }

    #[test]
    fn a_query_holds_the_pairs_that_have_values() {
        assert_eq!(super::query(&[("a", None)]), "");
        assert_eq!(
            super::query(&[("a", None), ("b", Some("x@1")), ("c", Some("y"))]),
            "?b=x%401&c=y"
        );
    }
}
