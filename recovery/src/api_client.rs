//! Requests to `ignite server` from an agent or a client being captured: a bearer token on
//! every request, and retries with backoff while the server is away or busy (connection
//! refused, 408, 429, 5xx) until `give_up_after`; a refusal (another 4xx) ends a request at
//! once with the server's one-line message. The install and capture clients share this.
//! An `https://` server is trusted only through its pinned authority ([`crate::tls`]).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

/// Why a request did not get an answer worth keeping.
enum Failure {
    /// The server is away or overloaded: try again.
    Transient(String),
    /// The server no longer knows what the request names (410).
    Gone(String),
    /// The server refused: its message, to show as is.
    Refused(String),
    /// An HTTPS server whose authority is not the pinned one.
    Untrusted(String),
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

/// Where a server's API is: its base URL, and for `https://` the pin of the server's
/// certificate authority (see [`crate::tls`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    url: String,
    pin: Option<String>,
}

impl Endpoint {
    /// `url` (`http://HOST:PORT` or `https://HOST:PORT`) and the pin an HTTPS server needs.
    pub fn new(url: &str, pin: Option<&str>) -> Result<Endpoint> {
        let url = url.trim().trim_end_matches('/').to_string();
        let tls = url.starts_with("https://");
        if !tls && !url.starts_with("http://") {
            bail!("server address {url:?} must begin with http:// or https://");
        }
        match pin {
            None if tls => bail!(
                "{url} is HTTPS: pin the server's certificate authority (ignite.tls= on the kernel \
                 command line, --tls-pin on the command line; `ignite server` logs it at start)"
            ),
            Some(_) if !tls => bail!("a TLS pin was given for {url}, which is plain HTTP"),
            Some(p) if !crate::tls::is_pin(p) => {
                bail!("TLS pin {p:?} is not a SHA-256 (64 hex digits)")
            }
            _ => {}
        }
        Ok(Endpoint {
            url,
            pin: pin.map(|p| p.to_ascii_lowercase()),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

pub struct ApiClient {
    server: Endpoint,
    token: String,
    /// Plain HTTP: made at once. HTTPS: made once the server's authority matched the pin.
    http: OnceLock<ureq::Agent>,
    stall: Duration,
    connections: usize,
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
        server: &Endpoint,
        token: &str,
        stall: Duration,
        connections: usize,
        max_body: u64,
    ) -> ApiClient {
        let c = ApiClient {
            server: server.clone(),
            token: token.trim().to_string(),
            http: OnceLock::new(),
            stall,
            connections,
            max_body,
            give_up_after: Duration::from_secs(600),
            when_away: "check that `ignite server` runs and is reachable",
        };
        if server.pin.is_none() {
            let _ = c.http.set(c.agent(TlsConfig::default()));
        }
        c
    }

    pub fn server(&self) -> &str {
        &self.server.url
    }

    fn agent(&self, tls: TlsConfig) -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            // A stalled connection (server stopped, cable pulled) must not hang forever.
            .timeout_recv_body(Some(self.stall))
            .timeout_recv_response(Some(self.stall))
            .timeout_send_body(Some(self.stall))
            .max_idle_connections_per_host(self.connections)
            .tls_config(tls)
            .build()
            .into()
    }

    /// The agent requests go through; for HTTPS, the first call fetches the server's
    /// authority and checks it against the pin (see [`crate::tls`]).
    fn http(&self) -> Result<&ureq::Agent, Failure> {
        if let Some(a) = self.http.get() {
            return Ok(a);
        }
        let pin = self.server.pin.as_deref().unwrap_or_default();
        let tls = || {
            TlsConfig::builder()
                .provider(TlsProvider::Rustls)
                .unversioned_rustls_crypto_provider(crate::tls::crypto())
        };
        let probe = self.agent(tls().disable_verification(true).build());
        let url = format!("{}{}", self.server.url, crate::tls::CA_PATH);
        let mut resp = probe
            .get(&url)
            .call()
            .map_err(|e| Failure::Transient(format!("fetching its certificate authority: {e}")))?;
        if !resp.status().is_success() {
            return Err(Failure::Transient(format!(
                "fetching its certificate authority: {}",
                resp.status()
            )));
        }
        let der = resp
            .body_mut()
            .with_config()
            .limit(64 << 10)
            .read_to_vec()
            .map_err(|e| Failure::Transient(format!("fetching its certificate authority: {e}")))?;
        let got = crate::tls::pin(&der);
        if got != pin {
            return Err(Failure::Untrusted(format!(
                "its certificate authority has SHA-256 {got}, not the pinned {pin}: \
                 this is not the server the boot configuration names"
            )));
        }
        let ca = Certificate::from_der(&der).to_owned();
        // Requests racing here each check the pin; the first agent made is kept.
        let a = self.agent(
            tls()
                .root_certs(RootCerts::Specific(Arc::new(vec![ca])))
                .build(),
        );
        Ok(self.http.get_or_init(|| a))
    }

    fn once(&self, path: &str, body: Option<&[u8]>) -> Result<Vec<u8>, Failure> {
        let http = self.http()?;
        let auth = format!("Bearer {}", self.token);
        let url = format!("{}{path}", self.server.url);
        let res = match body {
            Some(b) => http.post(&url).header("Authorization", &auth).send(b),
            None => http.get(&url).header("Authorization", &auth).call(),
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
                Err(Failure::Refused(m)) => bail!("server {} refused {what}: {m}", self.server.url),
                Err(Failure::Untrusted(m)) => bail!("{what}: server {}: {m}", self.server.url),
                Err(Failure::Gone(m)) => {
                    return Err(anyhow::Error::new(Gone(m)).context(format!(
                        "server {} no longer has it ({what})",
                        self.server.url
                    )))
                }
                Err(Failure::Transient(m)) => {
                    let t0 = *since.get_or_insert_with(Instant::now);
                    if t0.elapsed() >= self.give_up_after {
                        bail!(
                            "{what}: server {} has not answered for {} s (last error: {m}); {}",
                            self.server.url,
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
            Failure::Transient(m)
            | Failure::Gone(m)
            | Failure::Refused(m)
            | Failure::Untrusted(m) => {
                anyhow::anyhow!("server {}: {m}", self.server.url)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_is_plain_or_pinned() {
        let pin = "AB".repeat(32);
        let e = Endpoint::new("https://10.0.0.1:8443/", Some(&pin)).unwrap();
        assert_eq!(e.url(), "https://10.0.0.1:8443");
        assert_eq!(e.pin.as_deref(), Some("ab".repeat(32).as_str()));
        assert!(Endpoint::new("http://10.0.0.1:8080", None).is_ok());
        let err = |u: &str, p: Option<&str>| format!("{:#}", Endpoint::new(u, p).unwrap_err());
        assert!(err("https://10.0.0.1:8443", None).contains("pin the server's"));
        assert!(err("http://10.0.0.1:8080", Some(&pin)).contains("plain HTTP"));
        assert!(err("https://10.0.0.1:8443", Some("abc")).contains("64 hex digits"));
        assert!(err("10.0.0.1:8080", None).contains("must begin with http://"));
    }
}
