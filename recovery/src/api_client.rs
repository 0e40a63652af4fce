//! Requests to `ignite server` from an agent or a client being captured: a bearer token on
//! every request, and retries with backoff while the server is away or busy (connection
//! refused, 408, 429, 5xx) until `give_up_after`; a refusal (another 4xx) ends a request at
//! once with the server's one-line message. The install and capture clients share this.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// Why a request did not get an answer worth keeping.
enum Failure {
    /// The server is away or overloaded: try again.
    Transient(String),
    /// The server no longer knows what the request names (410).
    Gone(String),
    /// The server refused: its message, to show as is.
    Refused(String),
}

/// The error of a request the server answered with 410 Gone (a capture session it lost).
#[derive(Debug)]
pub struct Gone(pub String);

impl std::fmt::Display for Gone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Gone {}

pub struct ApiClient {
    /// `http://IP:PORT`.
    server: String,
    token: String,
    http: ureq::Agent,
    /// Largest answer accepted.
    max_body: u64,
    /// How long to keep retrying while the server cannot be reached.
    pub give_up_after: Duration,
    /// Added to the message when the server stays away (what the operator does next).
    pub when_away: &'static str,
}

impl ApiClient {
    /// `stall`: how long a started answer or upload may stall; `connections`: idle
    /// connections kept for requests in flight.
    pub fn new(
        server: &str,
        token: &str,
        stall: Duration,
        connections: usize,
        max_body: u64,
    ) -> ApiClient {
        let http = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            // A stalled connection (server stopped, cable pulled) must not hang forever.
            .timeout_recv_body(Some(stall))
            .timeout_recv_response(Some(stall))
            .timeout_send_body(Some(stall))
            .max_idle_connections_per_host(connections)
            .build()
            .into();
        ApiClient {
            server: server.trim_end_matches('/').to_string(),
            token: token.trim().to_string(),
            http,
            max_body,
            give_up_after: Duration::from_secs(600),
            when_away: "check that `ignite server` runs and is reachable",
        }
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    fn once(&self, path: &str, body: Option<&[u8]>) -> Result<Vec<u8>, Failure> {
        let auth = format!("Bearer {}", self.token);
        let url = format!("{}{path}", self.server);
        let res = match body {
            Some(b) => self.http.post(&url).header("Authorization", &auth).send(b),
            None => self.http.get(&url).header("Authorization", &auth).call(),
        };
        let mut resp = res.map_err(|e| Failure::Transient(e.to_string()))?;
        let status = resp.status();
        let data = resp
            .body_mut()
            .with_config()
            .limit(self.max_body)
            .read_to_vec()
            .map_err(|e| Failure::Transient(format!("reading the answer: {e}")))?;
        let text = || String::from_utf8_lossy(&data).trim().to_string();
        match status.as_u16() {
            200..=299 => Ok(data),
            410 => Err(Failure::Gone(text())),
            // A request cut off by the server's time limit, too many requests at once, or a
            // store briefly busy: wait and ask again.
            408 | 429 | 500..=599 => Err(Failure::Transient(format!("{status}: {}", text()))),
            code => Err(Failure::Refused(format!("{} ({code})", text()))),
        }
    }

    /// One request (POST with a body, else GET) to `path` (`/api/...`), retried as the
    /// module docs say; `what` names it in messages. A 410 is an error holding [`Gone`].
    pub fn request(&self, what: &str, path: &str, body: Option<&[u8]>) -> Result<Vec<u8>> {
        let mut since: Option<Instant> = None;
        let mut wait = Duration::from_millis(100);
        loop {
            match self.once(path, body) {
                Ok(r) => return Ok(r),
                Err(Failure::Refused(m)) => bail!("server {} refused {what}: {m}", self.server),
                Err(Failure::Gone(m)) => {
                    return Err(anyhow::Error::new(Gone(m))
                        .context(format!("server {} no longer has it ({what})", self.server)))
                }
                Err(Failure::Transient(m)) => {
                    let t0 = *since.get_or_insert_with(Instant::now);
                    if t0.elapsed() >= self.give_up_after {
                        bail!(
                            "{what}: server {} has not answered for {} s (last error: {m}); {}",
                            self.server,
                            self.give_up_after.as_secs(),
                            self.when_away
                        );
                    }
                    if wait >= Duration::from_secs(1) {
                        tracing::warn!("{what}: {m}; retrying");
                    }
                    std::thread::sleep(wait.min(self.give_up_after.saturating_sub(t0.elapsed())));
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// One request without retries: for reports that must not hold up what failed.
    pub fn request_once(&self, path: &str, body: Option<&[u8]>) -> Result<Vec<u8>> {
        self.once(path, body).map_err(|f| match f {
            Failure::Transient(m) | Failure::Gone(m) | Failure::Refused(m) => {
                anyhow::anyhow!("server {}: {m}", self.server)
            }
        })
    }
}
