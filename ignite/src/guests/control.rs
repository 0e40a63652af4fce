//! A running guest's control socket: one JSON request per line, one JSON reply per line.
//! `{"cmd":"status"}` → `{"state":"running","pid":..,"engine":"qemu","started":..,"why":..}`;
//! `{"cmd":"stop","force":false}` → `{"ok":true}` (the guest is then asked to power off, or
//! with `force` ended at once); `{"cmd":"capture"}` turns the connection into a capture
//! session (`guests::capture`). Each connection is served on its own thread, so a long
//! capture does not keep `status` or `stop` waiting.

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
    /// Starts a capture session on this connection (see `guests::capture`).
    Capture,
    /// What each disk's change tracking holds since the last capture, without capturing.
    Changes,
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
    Changes {
        changes: Vec<super::capture::Pending>,
    },
    Ok {
        ok: bool,
    },
    Error {
        error: String,
    },
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
    match BufReader::new(s).read_line(&mut answer) {
        // The supervisor went away between accepting and answering: the guest just stopped.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
        r => {
            r.with_context(|| format!("control socket {}: no answer", path.display()))?;
        }
    }
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

/// One JSON value per line each way on a Unix socket.
pub struct LineConn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl LineConn {
    pub fn new(stream: UnixStream) -> Result<LineConn> {
        Ok(LineConn {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    pub fn send<T: Serialize>(&mut self, v: &T) -> Result<()> {
        let mut text = serde_json::to_string(v)?;
        text.push('\n');
        self.writer.write_all(text.as_bytes())?;
        Ok(())
    }

    /// The next value, `None` at end of stream; waits at most `limit` (forever: `None`).
    pub fn recv<T: serde::de::DeserializeOwned>(
        &mut self,
        limit: Option<Duration>,
    ) -> Result<Option<T>> {
        self.writer.set_read_timeout(limit)?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        Ok(Some(serde_json::from_str(&line).with_context(|| {
            format!("{:?} is not a valid message", line.trim())
        })?))
    }
}

/// Serves requests on `listener`, each connection on its own thread; `handle` answers a
/// request (or, returning `None`, has answered on the connection itself).
pub fn serve(
    listener: UnixListener,
    handle: impl Fn(Request, &mut LineConn) -> Option<Reply> + Send + Sync + 'static,
) {
    let handle = std::sync::Arc::new(handle);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn.map_err(anyhow::Error::from).and_then(LineConn::new) else {
                continue;
            };
            let handle = handle.clone();
            std::thread::spawn(move || {
                let mut conn = conn;
                let reply = match conn.recv::<Request>(Some(Duration::from_secs(10))) {
                    Ok(Some(req)) => handle(req, &mut conn),
                    Ok(None) => None,
                    Err(e) => Some(Reply::Error {
                        error: format!("control request: {e:#}"),
                    }),
                };
                if let Some(r) = reply {
                    let _ = conn.send(&r);
                }
            });
        }
    });
}
