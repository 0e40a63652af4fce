//! A running guest's control socket: one JSON request per line, one JSON reply per line.
//! `{"cmd":"status"}` → `{"state":"running","pid":..,"engine":"qemu","started":..,"why":..}`;
//! `{"cmd":"stop","force":false}` → `{"ok":true}` (the guest is then asked to power off, or
//! with `force` ended at once). Later capture hooks become more commands here.

use super::Engine;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    Stop {
        #[serde(default)]
        force: bool,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub state: String,
    pub pid: u32,
    pub engine: Engine,
    /// Unix time the guest started.
    pub started: i64,
    /// Why this engine (`--engine auto`), or what was asked for.
    pub why: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    Status(Status),
    Ok { ok: bool },
    Error { error: String },
}

/// Sends one request; `None` when nothing answers on `path` (no guest running there).
pub fn ask(path: &Path, req: &Request) -> Result<Option<Reply>> {
    let Ok(mut s) = UnixStream::connect(path) else {
        return Ok(None);
    };
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    s.write_all(line.as_bytes())
        .with_context(|| format!("control socket {}", path.display()))?;
    let mut answer = String::new();
    BufReader::new(s)
        .read_line(&mut answer)
        .with_context(|| format!("control socket {}: no answer", path.display()))?;
    if answer.is_empty() {
        return Ok(None);
    }
    let reply: Reply = serde_json::from_str(&answer)
        .with_context(|| format!("control socket {}: bad answer {answer:?}", path.display()))?;
    if let Reply::Error { error } = &reply {
        bail!("{error}");
    }
    Ok(Some(reply))
}

/// The status of the guest whose control socket is `path`, if it is running.
pub fn status(path: &Path) -> Result<Option<Status>> {
    Ok(match ask(path, &Request::Status)? {
        Some(Reply::Status(s)) => Some(s),
        _ => None,
    })
}

/// Serves requests on `listener` from a thread, answering with `handle`.
pub fn serve(listener: UnixListener, handle: impl Fn(Request) -> Reply + Send + 'static) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
            let mut line = String::new();
            let Ok(reader) = conn.try_clone() else {
                continue;
            };
            if BufReader::new(reader).read_line(&mut line).is_err() {
                continue;
            }
            let reply = match serde_json::from_str::<Request>(&line) {
                Ok(req) => handle(req),
                Err(e) => Reply::Error {
                    error: format!("control request {:?} is not valid: {e}", line.trim()),
                },
            };
            if let Ok(mut text) = serde_json::to_string(&reply) {
                text.push('\n');
                let _ = (&conn).write_all(text.as_bytes());
            }
        }
    });
}
