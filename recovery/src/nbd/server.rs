//! The NBD server: one export, read-only, on a Unix socket — what an instant restore's qcow2
//! overlay names as its backing file (`nbd+unix:///NAME?socket=PATH`).
//!
//! Handshake: fixed newstyle only (greeting with `FIXED_NEWSTYLE | NO_ZEROES`), options
//! `EXPORT_NAME`, `INFO`, `GO` (answering `INFO_EXPORT` and, when asked, `INFO_BLOCK_SIZE`),
//! `STRUCTURED_REPLY`, `LIST`, `ABORT`; meta contexts are answered with none; anything else
//! with `ERR_UNSUP`. Transmission: `READ` (structured replies send holes as `OFFSET_HOLE`
//! without reading them), `FLUSH` and `CACHE` succeed, `WRITE`/`TRIM`/`WRITE_ZEROES` get
//! `EPERM` (the export is read-only and says so), `DISC` ends the session. A connection gets
//! a thread reading its requests and a few answering them, so replies may come out of order
//! (each is written whole; the cookie says which request it answers).
//!
//! Everything a client sends is parsed by the pure functions at the bottom (fuzzed by
//! `recovery/fuzz nbd_request`): option payloads and requests are bounded before anything
//! is allocated, and a read outside the export is refused with `EINVAL`.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};
use ignite_archive::ImageReader;

use super::*;

/// Largest read answered (what `INFO_BLOCK_SIZE` states as the maximum payload).
pub const MAX_REQUEST: u32 = 32 << 20;
/// Largest option payload accepted (an export name is at most 4096 bytes).
const MAX_OPTION: u32 = 16 << 10;
/// Options a client may send before transmission (a handshake needs a handful).
const MAX_OPTIONS: usize = 64;
/// The preferred request size stated to clients (the store's block size).
const PREFERRED_BLOCK: u32 = 64 << 10;
/// Requests of one session answered at once: a guest's read need not wait behind the
/// background copy's.
const WORKERS: usize = 4;

/// What a client asks in transmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

/// What the server does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    /// Answer with this error; a write's payload (`discard` bytes) is read and dropped first.
    Refuse {
        errno: u32,
        discard: u32,
    },
    Ok,
    Disconnect,
}

/// The export and what every session needs to know about it.
struct Shared {
    name: String,
    image: Arc<dyn ImageReader + Send>,
    /// Byte ranges that may hold data; the rest reads as zeros (sent as holes).
    data: Vec<(u64, u64)>,
}

/// A running server; stops (and closes every session) when dropped.
pub struct Server {
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    sessions: Arc<Mutex<Vec<UnixStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves `image` as export `name` on a new socket at `socket` (replacing a stale one).
    pub fn start(socket: &Path, name: &str, image: Arc<dyn ImageReader + Send>) -> Result<Server> {
        let data = image
            .data_ranges()
            .with_context(|| format!("{}: cannot list its data", image.name()))?;
        let shared = Arc::new(Shared {
            name: name.to_string(),
            image,
            data,
        });
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)
            .with_context(|| format!("NBD socket {}: cannot bind", socket.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let sessions = Arc::new(Mutex::new(Vec::<UnixStream>::new()));
        let accept = {
            let (stop, sessions) = (stop.clone(), sessions.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    if let Ok(c) = conn.try_clone() {
                        let mut s = sessions.lock().unwrap_or_else(|e| e.into_inner());
                        s.retain(|c| c.peer_addr().is_ok());
                        s.push(c);
                    }
                    let shared = shared.clone();
                    std::thread::spawn(move || {
                        if let Err(e) = session(conn, &shared) {
                            tracing::debug!("NBD session ended: {e:#}");
                        }
                    });
                }
            })
        };
        Ok(Server {
            socket: socket.to_path_buf(),
            stop,
            sessions,
            accept: Some(accept),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = UnixStream::connect(&self.socket);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for s in self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// One client from greeting to disconnect.
fn session(mut s: UnixStream, shared: &Shared) -> Result<()> {
    let mut greeting = Vec::with_capacity(18);
    greeting.extend(NBDMAGIC.to_be_bytes());
    greeting.extend(IHAVEOPT.to_be_bytes());
    greeting.extend((FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&greeting)?;
    let mut f = [0u8; 4];
    s.read_exact(&mut f)?;
    let client_flags = u32::from_be_bytes(f);
    if client_flags & !u32::from(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES) != 0 {
        bail!("client flags {client_flags:#x} name features this server lacks");
    }
    let no_zeroes = client_flags & u32::from(FLAG_NO_ZEROES) != 0;
    let tx_flags = TX_HAS_FLAGS | TX_READ_ONLY | TX_SEND_FLUSH | TX_CAN_MULTI_CONN;
    let size = shared.image.size();
    let mut structured = false;
    for _ in 0..MAX_OPTIONS {
        let mut h = [0u8; 16];
        s.read_exact(&mut h)?;
        let (opt, len) = parse_option_header(&h)?;
        if len > MAX_OPTION {
            // The payload is not read: the session cannot go on.
            option_reply(&mut s, opt, REP_ERR_TOO_BIG, b"option too large")?;
            bail!("option {opt} of {len} bytes");
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data)?;
        match opt {
            OPT_EXPORT_NAME => {
                if !names_export(&data, &shared.name) {
                    bail!("client asked for an unknown export");
                }
                let mut b = size.to_be_bytes().to_vec();
                b.extend(tx_flags.to_be_bytes());
                if !no_zeroes {
                    b.extend([0u8; 124]);
                }
                s.write_all(&b)?;
                return transmission(s, shared, structured);
            }
            OPT_INFO | OPT_GO => {
                let (name, infos) = match parse_info_request(&data) {
                    Ok(r) => r,
                    Err(e) => {
                        option_reply(&mut s, opt, REP_ERR_INVALID, e.to_string().as_bytes())?;
                        continue;
                    }
                };
                if !names_export(&name, &shared.name) {
                    option_reply(&mut s, opt, REP_ERR_UNKNOWN, b"no such export")?;
                    continue;
                }
                let mut info = INFO_EXPORT.to_be_bytes().to_vec();
                info.extend(size.to_be_bytes());
                info.extend(tx_flags.to_be_bytes());
                option_reply(&mut s, opt, REP_INFO, &info)?;
                if infos.contains(&INFO_BLOCK_SIZE) {
                    let mut b = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                    for v in [1, PREFERRED_BLOCK, MAX_REQUEST] {
                        b.extend(v.to_be_bytes());
                    }
                    option_reply(&mut s, opt, REP_INFO, &b)?;
                }
                option_reply(&mut s, opt, REP_ACK, &[])?;
                if opt == OPT_GO {
                    return transmission(s, shared, structured);
                }
            }
            OPT_STRUCTURED_REPLY if data.is_empty() => {
                structured = true;
                option_reply(&mut s, opt, REP_ACK, &[])?;
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT if structured => {
                // No meta context is offered: the client treats every extent as data.
                option_reply(&mut s, opt, REP_ACK, &[])?;
            }
            OPT_LIST => {
                option_reply(&mut s, opt, REP_SERVER, &name_field(&shared.name))?;
                option_reply(&mut s, opt, REP_ACK, &[])?;
            }
            OPT_ABORT => {
                let _ = option_reply(&mut s, opt, REP_ACK, &[]);
                return Ok(());
            }
            OPT_STRUCTURED_REPLY | OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                option_reply(&mut s, opt, REP_ERR_INVALID, b"not valid here")?
            }
            _ => option_reply(&mut s, opt, REP_ERR_UNSUP, b"unsupported option")?,
        }
    }
    bail!("more than {MAX_OPTIONS} options without a GO")
}

fn option_reply(s: &mut UnixStream, opt: u32, kind: u32, data: &[u8]) -> Result<()> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend(OPT_REPLY_MAGIC.to_be_bytes());
    b.extend(opt.to_be_bytes());
    b.extend(kind.to_be_bytes());
    b.extend((data.len() as u32).to_be_bytes());
    b.extend(data);
    s.write_all(&b)?;
    Ok(())
}

/// Answers requests until the client disconnects: this thread reads them (and skips a
/// refused write's payload), [`WORKERS`] threads answer them, each reply written whole.
fn transmission(mut s: UnixStream, shared: &Shared, structured: bool) -> Result<()> {
    let size = shared.image.size();
    let out = Mutex::new(s.try_clone()?);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Request>(WORKERS);
    let rx = Mutex::new(rx);
    std::thread::scope(|scope| {
        // Owned here: returning drops it, the workers then drain the queue and end, and the
        // scope joins them.
        let tx = tx;
        for _ in 0..WORKERS {
            scope.spawn(|| loop {
                let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                let Ok(req) = next else { return };
                let reply = answer(&req, size, shared, structured);
                let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
                if o.write_all(&reply).is_err() {
                    return;
                }
            });
        }
        loop {
            let mut h = [0u8; 28];
            match s.read_exact(&mut h) {
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                r => r?,
            }
            let req = parse_request(&h)?;
            match action(&req, size) {
                Action::Disconnect => return Ok(()),
                Action::Refuse { discard, .. } if discard > MAX_REQUEST => {
                    bail!("a write of {discard} bytes (the session cannot skip it)")
                }
                Action::Refuse { discard, .. } => {
                    std::io::copy(&mut (&s).take(u64::from(discard)), &mut std::io::sink())?;
                }
                Action::Ok | Action::Read => {}
            }
            if tx.send(req).is_err() {
                bail!("the session's workers ended");
            }
        }
    })
}

/// The whole reply to `req` (an error reply when the read fails).
fn answer(req: &Request, size: u64, shared: &Shared, structured: bool) -> Vec<u8> {
    let mut out = Vec::new();
    match action(req, size) {
        Action::Disconnect => {}
        Action::Ok => simple_reply(&mut out, req.cookie, 0, &[]),
        Action::Refuse { errno, .. } if structured && req.kind == CMD_READ => {
            error_chunk(&mut out, req.cookie, errno, "read outside the export")
        }
        Action::Refuse { errno, .. } => simple_reply(&mut out, req.cookie, errno, &[]),
        Action::Read => {
            let mut buf = vec![0u8; req.length as usize];
            let pieces = if structured {
                pieces(&shared.data, req.offset, req.length)
            } else {
                vec![(req.offset, req.length, true)]
            };
            for &(off, len, data) in &pieces {
                let at = (off - req.offset) as usize;
                if data {
                    if let Err(e) = shared.image.read_at(&mut buf[at..at + len as usize], off) {
                        tracing::error!("NBD read at {off}: {e}");
                        out.clear();
                        if structured {
                            error_chunk(&mut out, req.cookie, EIO, &e.to_string());
                        } else {
                            simple_reply(&mut out, req.cookie, EIO, &[]);
                        }
                        return out;
                    }
                }
                if structured {
                    let done = off + u64::from(len) == req.offset + u64::from(req.length);
                    let flags = if done { REPLY_FLAG_DONE } else { 0 };
                    let mut p = off.to_be_bytes().to_vec();
                    if data {
                        p.extend(&buf[at..at + len as usize]);
                        chunk(&mut out, flags, REPLY_TYPE_OFFSET_DATA, req.cookie, &p);
                    } else {
                        p.extend(len.to_be_bytes());
                        chunk(&mut out, flags, REPLY_TYPE_OFFSET_HOLE, req.cookie, &p);
                    }
                }
            }
            if !structured {
                simple_reply(&mut out, req.cookie, 0, &buf);
            } else if pieces.is_empty() {
                chunk(&mut out, REPLY_FLAG_DONE, REPLY_TYPE_NONE, req.cookie, &[]);
            }
        }
    }
    out
}

fn simple_reply(out: &mut Vec<u8>, cookie: u64, errno: u32, data: &[u8]) {
    out.extend(SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend(errno.to_be_bytes());
    out.extend(cookie.to_be_bytes());
    out.extend(data);
}

fn chunk(out: &mut Vec<u8>, flags: u16, kind: u16, cookie: u64, payload: &[u8]) {
    out.extend(STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out.extend(flags.to_be_bytes());
    out.extend(kind.to_be_bytes());
    out.extend(cookie.to_be_bytes());
    out.extend((payload.len() as u32).to_be_bytes());
    out.extend(payload);
}

fn error_chunk(out: &mut Vec<u8>, cookie: u64, errno: u32, msg: &str) {
    let msg = &msg.as_bytes()[..msg.len().min(1024)];
    let mut p = errno.to_be_bytes().to_vec();
    p.extend((msg.len() as u16).to_be_bytes());
    p.extend(msg);
    chunk(out, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookie, &p)
}

// ---- parsing what the client sends (pure; fuzzed) ----

/// An option header: (option, payload length).
pub fn parse_option_header(h: &[u8; 16]) -> Result<(u32, u32)> {
    if be64(h, 0) != IHAVEOPT {
        bail!("not an NBD option (bad magic)");
    }
    Ok((be32(h, 8), be32(h, 12)))
}

/// `OPT_INFO`/`OPT_GO` payload: (export name, info types asked for).
pub fn parse_info_request(p: &[u8]) -> Result<(Vec<u8>, Vec<u16>)> {
    if p.len() < 6 {
        bail!("payload of {} bytes is too short", p.len());
    }
    let name_len = be32(p, 0) as usize;
    let rest = p.len() - 4;
    if name_len > rest - 2 {
        bail!("export name of {name_len} bytes overruns the payload");
    }
    let name = p[4..4 + name_len].to_vec();
    let n = be16(p, 4 + name_len) as usize;
    let infos = &p[6 + name_len..];
    if infos.len() != 2 * n {
        bail!("{n} info requests in {} bytes", infos.len());
    }
    Ok((name, infos.chunks(2).map(|c| be16(c, 0)).collect()))
}

/// The empty name asks for the default (the only) export.
fn names_export(asked: &[u8], name: &str) -> bool {
    asked.is_empty() || asked == name.as_bytes()
}

/// A transmission request.
pub fn parse_request(h: &[u8; 28]) -> Result<Request> {
    if be32(h, 0) != REQUEST_MAGIC {
        bail!("bad request magic {:#x}", be32(h, 0));
    }
    Ok(Request {
        flags: be16(h, 4),
        kind: be16(h, 6),
        cookie: be64(h, 8),
        offset: be64(h, 16),
        length: be32(h, 24),
    })
}

/// What to do with `req` on an export of `size` bytes.
pub fn action(req: &Request, size: u64) -> Action {
    const CMD_TRIM: u16 = 4;
    const CMD_CACHE: u16 = 5;
    const CMD_WRITE_ZEROES: u16 = 6;
    let inside = req
        .offset
        .checked_add(u64::from(req.length))
        .is_some_and(|end| end <= size);
    match req.kind {
        CMD_DISC => Action::Disconnect,
        CMD_READ if !inside || req.length > MAX_REQUEST => Action::Refuse {
            errno: EINVAL,
            discard: 0,
        },
        CMD_READ => Action::Read,
        CMD_WRITE => Action::Refuse {
            errno: if inside { EPERM } else { ENOSPC },
            discard: req.length,
        },
        CMD_TRIM | CMD_WRITE_ZEROES => Action::Refuse {
            errno: EPERM,
            discard: 0,
        },
        CMD_FLUSH | CMD_CACHE => Action::Ok,
        _ => Action::Refuse {
            errno: EINVAL,
            discard: 0,
        },
    }
}

/// `[offset, offset+length)` cut into (offset, length, holds data) by the export's sorted
/// data ranges; consecutive pieces of one kind are merged.
pub fn pieces(data: &[(u64, u64)], offset: u64, length: u32) -> Vec<(u64, u32, bool)> {
    let end = offset + u64::from(length);
    let mut out: Vec<(u64, u32, bool)> = Vec::new();
    let mut push = |from: u64, to: u64, d: bool| {
        if from >= to {
            return;
        }
        match out.last_mut() {
            Some((o, l, k)) if *k == d && *o + u64::from(*l) == from => *l += (to - from) as u32,
            _ => out.push((from, (to - from) as u32, d)),
        }
    };
    let first = data.partition_point(|&(o, l)| o + l <= offset);
    let mut pos = offset;
    for &(o, l) in &data[first..] {
        if o >= end {
            break;
        }
        push(pos, o.max(pos).min(end), false);
        let (a, b) = (o.max(pos), (o + l).min(end));
        push(a, b, true);
        pos = b.max(pos);
    }
    push(pos, end, false);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_cut_into_data_and_holes() {
        let data = [(0, 10), (20, 10), (40, 5)];
        assert_eq!(
            pieces(&data, 5, 30),
            vec![
                (5, 5, true),
                (10, 10, false),
                (20, 10, true),
                (30, 5, false)
            ]
        );
        assert_eq!(pieces(&data, 12, 4), vec![(12, 4, false)]);
        assert_eq!(pieces(&data, 0, 50).len(), 6);
        assert_eq!(pieces(&data, 46, 4), vec![(46, 4, false)]);
        assert_eq!(pieces(&[(0, 10), (10, 5)], 0, 15), vec![(0, 15, true)]);
        assert!(pieces(&data, 7, 0).is_empty());
    }

    #[test]
    fn requests_outside_the_export_or_writing_are_refused() {
        let r = |kind, offset, length| Request {
            flags: 0,
            kind,
            cookie: 1,
            offset,
            length,
        };
        assert_eq!(action(&r(CMD_READ, 0, 100), 100), Action::Read);
        let einval = Action::Refuse {
            errno: EINVAL,
            discard: 0,
        };
        assert_eq!(action(&r(CMD_READ, 1, 100), 100), einval);
        assert_eq!(action(&r(CMD_READ, u64::MAX, 2), 100), einval);
        assert_eq!(
            action(&r(CMD_WRITE, 0, 10), 100),
            Action::Refuse {
                errno: EPERM,
                discard: 10
            }
        );
        assert_eq!(action(&r(99, 0, 0), 100), einval);
        assert_eq!(action(&r(CMD_DISC, 0, 0), 100), Action::Disconnect);
    }

    /// Reads at 0 wait until a read elsewhere has been answered.
    struct Gate(Mutex<bool>, std::sync::Condvar);

    impl ImageReader for Gate {
        fn size(&self) -> u64 {
            1 << 20
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            let mut open = self.0.lock().unwrap();
            if offset == 0 {
                let limit = std::time::Duration::from_secs(20);
                open = self.1.wait_timeout_while(open, limit, |o| !*o).unwrap().0;
                if !*open {
                    return Err(std::io::Error::other("the other read never came"));
                }
            } else {
                *open = true;
                self.1.notify_all();
            }
            buf.fill(offset as u8 + 1);
            Ok(())
        }
        fn name(&self) -> String {
            "gate".into()
        }
    }

    #[test]
    fn a_slow_read_does_not_hold_up_the_next_request() {
        let dir = tempfile::tempdir().unwrap();
        let gate = Arc::new(Gate(Mutex::new(false), std::sync::Condvar::new()));
        let server = Server::start(&dir.path().join("s"), "x", gate).unwrap();
        let mut c = UnixStream::connect(server.socket()).unwrap();
        let mut greeting = [0u8; 18];
        c.read_exact(&mut greeting).unwrap();
        c.write_all(&u32::from(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes())
            .unwrap();
        let mut go = IHAVEOPT.to_be_bytes().to_vec();
        go.extend(OPT_GO.to_be_bytes());
        go.extend(7u32.to_be_bytes());
        go.extend(name_field("x"));
        go.extend(0u16.to_be_bytes());
        c.write_all(&go).unwrap();
        loop {
            let mut h = [0u8; 20];
            c.read_exact(&mut h).unwrap();
            let mut p = vec![0u8; be32(&h, 16) as usize];
            c.read_exact(&mut p).unwrap();
            if be32(&h, 12) == REP_ACK {
                break;
            }
        }
        // Without structured replies: 16-byte simple replies, then the data.
        for (cookie, offset) in [(1u64, 0u64), (2, 4096)] {
            let mut r = REQUEST_MAGIC.to_be_bytes().to_vec();
            r.extend([0, 0]);
            r.extend(CMD_READ.to_be_bytes());
            r.extend(cookie.to_be_bytes());
            r.extend(offset.to_be_bytes());
            r.extend(16u32.to_be_bytes());
            c.write_all(&r).unwrap();
        }
        let mut order = Vec::new();
        for _ in 0..2 {
            let mut h = [0u8; 32];
            c.read_exact(&mut h).unwrap();
            assert_eq!(be32(&h, 4), 0, "error reply");
            order.push((be64(&h, 8), h[16]));
        }
        assert_eq!(order, vec![(2, 1), (1, 1)]);
    }

    #[test]
    fn info_requests_are_bounded_by_their_payload() {
        let mut p = name_field("disk0");
        p.extend(1u16.to_be_bytes());
        p.extend(INFO_BLOCK_SIZE.to_be_bytes());
        assert_eq!(
            parse_info_request(&p).unwrap(),
            (b"disk0".to_vec(), vec![INFO_BLOCK_SIZE])
        );
        assert!(parse_info_request(&p[..p.len() - 1]).is_err());
        let mut long = u32::MAX.to_be_bytes().to_vec();
        long.extend([0, 0]);
        assert!(parse_info_request(&long).is_err());
    }
}
