//! A running guest's control socket: one JSON request per line, one JSON reply per line.
//! `{"cmd":"status"}` → `{"state":"running","pid":..,"engine":"qemu","started":..,"why":..}`;
//! `{"cmd":"stop","force":false}` → `{"ok":true}` (the guest is then asked to power off, or
//! with `force` ended at once); `{"cmd":"capture"}` turns the connection into a capture
//! session (`guests::capture`); `{"cmd":"mediainsert","drive":"cd0","path":..,"read_only":true}`
//! and `{"cmd":"mediaeject","drive":"cd0"}` change a drive's medium. Each connection is served on its own thread, so a long
//! capture does not keep `status` or `stop` waiting.
//!
//! Only the supervisor's own user (or root) is served: the socket is 0600 in a 0700
//! directory, and each connection's peer credentials are checked as well.

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
    /// Puts a medium into a removable-media drive (`crate::media`), replacing what is there.
    MediaInsert {
        drive: String,
        path: std::path::PathBuf,
        read_only: bool,
    },
    /// Empties a removable-media drive.
    MediaEject {
        drive: String,
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

/// A disk's changes since its last capture, as its change tracking knows them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    pub index: usize,
    /// The capture they are relative to; none: the next capture reads in full (`why`).
    pub base: Option<String>,
    /// Changed regions, when the tracking gives them (the bundled monitor's change log).
    pub ranges: Option<Vec<(u64, u64)>>,
    /// Changed bytes (QEMU's bitmap gives only a count).
    pub bytes: u64,
    pub why: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    Status(Status),
    Changes { changes: Vec<Pending> },
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
    // The supervisor can go away between accepting and answering (the guest just stopped):
    // our write then meets a closed socket, or our read a reset one.
    match s.write_all(line.as_bytes()) {
        Err(e) if super::peer_gone(&e) => return Ok(None),
        r => r.with_context(|| format!("control socket {}", path.display()))?,
    }
    let mut answer = String::new();
    match BufReader::new(s).read_line(&mut answer) {
        Err(e) if super::peer_gone(&e) => return Ok(None),
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

/// Whether the peer runs as our user or as root.
fn peer_allowed(conn: &UnixStream) -> bool {
    match rustix::net::sockopt::socket_peercred(conn) {
        Ok(c) => {
            let uid = c.uid.as_raw();
            uid == 0 || uid == rustix::process::geteuid().as_raw()
        }
        Err(_) => false,
    }
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
            let Ok(conn) = conn else { continue };
            if !peer_allowed(&conn) {
                continue;
            }
            let Ok(conn) = LineConn::new(conn) else {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Connects to `addr` as uid/gid 65534 in a forked child and sends a status request:
    /// exit 0 if it got an answer, 1 if the connection was closed unanswered, 2 if it could
    /// not connect. The child only makes system calls (no allocation after fork).
    fn ask_as_nobody(addr: &rustix::net::SocketAddrUnix) -> i32 {
        use rustix::net::{connect, socket, AddressFamily, SocketType};
        // SAFETY: the child makes only system calls on memory prepared before the fork and
        // ends with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = unsafe {
                if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                    libc::_exit(3);
                }
                match socket(AddressFamily::UNIX, SocketType::STREAM, None) {
                    Ok(fd) if connect(&fd, addr).is_ok() => {
                        let _ = rustix::io::write(&fd, b"{\"cmd\":\"status\"}\n");
                        let mut buf = [0u8; 64];
                        match rustix::io::read(&fd, &mut buf) {
                            Ok(n) if n > 0 => 0,
                            _ => 1,
                        }
                    }
                    _ => 2,
                }
            };
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for the child forked above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        libc::WEXITSTATUS(status)
    }

    /// A guest that stops while we ask closes its end after accepting: whichever of our
    /// write or read meets the closed socket, the answer is "not running", never an error
    /// (`vm show` failed with "Broken pipe" when a guest stopped under it).
    #[test]
    fn a_supervisor_closing_under_a_request_means_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let closer = std::thread::spawn(move || {
            for conn in listener.incoming().take(100) {
                drop(conn.unwrap());
            }
        });
        for i in 0..100 {
            let answer = ask(&path, &Request::Status);
            assert!(
                matches!(answer, Ok(None)),
                "request {i}: {answer:?} instead of Ok(None)"
            );
        }
        closer.join().unwrap();
    }

    #[test]
    fn only_our_own_user_is_served() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root to connect as another user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("control.sock");
        let listener = UnixListener::bind(&path).unwrap();
        // Reachable by anyone as a file: only the credentials check stands in the way.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        serve(listener, |_, _| Some(Reply::Ok { ok: true }));
        assert!(matches!(
            ask(&path, &Request::Status).unwrap(),
            Some(Reply::Ok { ok: true })
        ));
        let addr = rustix::net::SocketAddrUnix::new(&path).unwrap();
        assert_eq!(ask_as_nobody(&addr), 1, "another user was answered");
    }
}
