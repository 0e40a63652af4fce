//! Read-only TFTP server (RFC 1350) with option negotiation (RFC 2347), blksize (2348),
//! timeout and tsize (2349) and windowsize (7440).
//!
//! Written here rather than taken from `async-tftp` 0.4: that crate runs its own smol
//! executor inside `serve()`, its handler trait uses futures-lite readers, it does not clamp
//! blksize to the interface MTU and does not re-check symlinks after joining the root. What
//! a PXE server needs (virtual per-client files, tsize probes, MTU clamping, the same path
//! rules as HTTP, boot-step logging) is a small state machine on top of tokio sockets.
//!
//! Block numbers roll over from 65535 to 0 (as tftp-hpa and most clients expect), so files
//! of any size can be sent at any block size. Netascii is converted while sending, keeping
//! only the blocks not yet acknowledged, so it works for files of any size too.
//!
//! Against a hostile segment: each client address runs at most `max_per_client` transfers;
//! a client that has not yet acknowledged anything (its source address may be forged) gets
//! the first packet at most `1 + unverified_retries` times and nothing more until it ACKs, so
//! a forged read request is not reflected as a stream of DATA; such unproven transfers take
//! at most half the slots, the rest stay for clients that have ACKed recently. A client's
//! `timeout` option is accepted up to `max_timeout_option` seconds and ignored above it.

use std::collections::HashMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::boot::{virtual_file, BootEvent, BootProvider, ClientMap};
use crate::error::Result;
use crate::files::{resolve, BadPath};
use crate::iface::{std_udp_socket, udp_socket};
use crate::lograte::{info_limited, warn_limited};
use crate::pe::{self, PeSignature, HEADER_BYTES};

pub const OP_RRQ: u16 = 1;
pub const OP_WRQ: u16 = 2;
pub const OP_DATA: u16 = 3;
pub const OP_ACK: u16 = 4;
pub const OP_ERROR: u16 = 5;
pub const OP_OACK: u16 = 6;

/// Largest blksize RFC 2348 allows.
pub const MAX_BLKSIZE: u16 = 65464;

#[derive(Debug, Clone)]
pub struct TftpConfig {
    pub root: PathBuf,
    /// Our address on the boot network; transfers reply from it.
    pub ip: Ipv4Addr,
    pub port: u16,
    pub iface: Option<String>,
    /// Upper bound for blksize; set it to the interface MTU - 32 so blocks never fragment.
    pub max_blksize: u16,
    pub max_window: u16,
    /// First retransmission timeout; doubles on each retry.
    pub timeout: Duration,
    pub max_retries: u32,
    /// Transfers running at once, for everyone.
    pub max_transfers: usize,
    /// Transfers running at once for one client address (16 by default: `ignite netboot
    /// bench tftp` runs 10 clients from one address; guests behind NAT share one too).
    pub max_per_client: usize,
    /// Retransmissions of the first packet to a client that has not ACKed yet.
    pub unverified_retries: u32,
    /// The largest `timeout` option (seconds) accepted from a client.
    pub max_timeout_option: u64,
    pub http_base: String,
}

impl TftpConfig {
    pub fn new(
        root: PathBuf,
        ip: Ipv4Addr,
        iface: Option<String>,
        http_base: String,
    ) -> TftpConfig {
        let mtu = iface
            .as_deref()
            .and_then(crate::iface::mtu_of)
            .unwrap_or(1500);
        TftpConfig {
            root,
            ip,
            port: 69,
            iface,
            max_blksize: mtu.saturating_sub(32).clamp(512, u32::from(MAX_BLKSIZE)) as u16,
            max_window: 64,
            timeout: Duration::from_secs(1),
            max_retries: 6,
            max_transfers: 256,
            max_per_client: 16,
            unverified_retries: 1,
            max_timeout_option: 5,
            http_base,
        }
    }
}

/// A parsed TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Read(Request),
    Write(Request),
    Data { block: u16, len: usize },
    Ack(u16),
    Error { code: u16, msg: String },
    Oack(Vec<(String, String)>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub filename: String,
    /// Lower-cased: `octet` or `netascii` (`mail` is refused).
    pub mode: String,
    /// Option names lower-cased, in the order sent.
    pub options: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadPacket {
    #[error("shorter than 4 bytes")]
    Short,
    #[error("unknown opcode {0}")]
    Opcode(u16),
    #[error("string field not NUL-terminated")]
    Unterminated,
    #[error("string field not UTF-8")]
    NotUtf8,
    #[error("option without value")]
    OddOptions,
    #[error("too many options")]
    TooManyOptions,
}

fn strings(mut b: &[u8]) -> std::result::Result<Vec<String>, BadPacket> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let end = b
            .iter()
            .position(|&c| c == 0)
            .ok_or(BadPacket::Unterminated)?;
        out.push(String::from_utf8(b[..end].to_vec()).map_err(|_| BadPacket::NotUtf8)?);
        b = &b[end + 1..];
        if out.len() > 66 {
            return Err(BadPacket::TooManyOptions);
        }
    }
    Ok(out)
}

/// Parses any TFTP packet. Never panics, whatever the bytes.
pub fn parse(b: &[u8]) -> std::result::Result<Packet, BadPacket> {
    if b.len() < 4 {
        return Err(BadPacket::Short);
    }
    let op = u16::from_be_bytes([b[0], b[1]]);
    let num = u16::from_be_bytes([b[2], b[3]]);
    match op {
        OP_RRQ | OP_WRQ => {
            let s = strings(&b[2..])?;
            if s.len() < 2 {
                return Err(BadPacket::Unterminated);
            }
            if s.len() % 2 != 0 {
                return Err(BadPacket::OddOptions);
            }
            let options = s[2..]
                .chunks(2)
                .map(|c| (c[0].to_ascii_lowercase(), c[1].clone()))
                .collect();
            let r = Request {
                filename: s[0].clone(),
                mode: s[1].to_ascii_lowercase(),
                options,
            };
            Ok(if op == OP_RRQ {
                Packet::Read(r)
            } else {
                Packet::Write(r)
            })
        }
        OP_DATA => Ok(Packet::Data {
            block: num,
            len: b.len() - 4,
        }),
        OP_ACK => Ok(Packet::Ack(num)),
        OP_ERROR => {
            let msg = b[4..].split(|&c| c == 0).next().unwrap_or(&[]);
            Ok(Packet::Error {
                code: num,
                msg: String::from_utf8_lossy(msg).into_owned(),
            })
        }
        OP_OACK => {
            let s = strings(&b[2..])?;
            if s.len() % 2 != 0 {
                return Err(BadPacket::OddOptions);
            }
            Ok(Packet::Oack(
                s.chunks(2).map(|c| (c[0].clone(), c[1].clone())).collect(),
            ))
        }
        n => Err(BadPacket::Opcode(n)),
    }
}

/// Encodes a read request (used by tests and the benchmark client).
pub fn encode_rrq(filename: &str, mode: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut v = OP_RRQ.to_be_bytes().to_vec();
    for s in [filename, mode]
        .into_iter()
        .chain(options.iter().flat_map(|(a, b)| [*a, *b]))
    {
        v.extend_from_slice(s.as_bytes());
        v.push(0);
    }
    v
}

pub fn encode_error(code: u16, msg: &str) -> Vec<u8> {
    let mut v = OP_ERROR.to_be_bytes().to_vec();
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(msg.as_bytes());
    v.push(0);
    v
}

fn encode_oack(opts: &[(&str, String)]) -> Vec<u8> {
    let mut v = OP_OACK.to_be_bytes().to_vec();
    for (k, val) in opts {
        v.extend_from_slice(k.as_bytes());
        v.push(0);
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v
}

/// What a transfer sends from.
enum Source {
    Memory(Vec<u8>),
    File(File, u64),
}

impl Source {
    fn len(&self) -> u64 {
        match self {
            Source::Memory(v) => v.len() as u64,
            Source::File(_, n) => *n,
        }
    }

    /// Fills `buf` from `offset`; returns bytes read (short only at end of file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        match self {
            Source::Memory(v) => {
                let start = (offset as usize).min(v.len());
                let n = buf.len().min(v.len() - start);
                buf[..n].copy_from_slice(&v[start..start + n]);
                Ok(n)
            }
            Source::File(f, _) => {
                let mut done = 0;
                while done < buf.len() {
                    // Page-cache reads of boot files are short; they run on the transfer's
                    // task rather than a blocking pool to keep per-block latency low.
                    match f.read_at(&mut buf[done..], offset + done as u64)? {
                        0 => break,
                        n => done += n,
                    }
                }
                Ok(done)
            }
        }
    }
}

/// netascii: LF -> CR LF, CR -> CR NUL (RFC 764); appends the conversion of `data`.
fn to_netascii(data: &[u8], out: &mut Vec<u8>) {
    for &c in data {
        match c {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            c => out.push(c),
        }
    }
}

/// The size of `src` in netascii, counted in one streaming pass (for the `tsize` option).
fn netascii_len(src: &Source) -> std::io::Result<u64> {
    let mut buf = vec![0u8; READ_AHEAD];
    let (mut pos, mut len) = (0u64, 0u64);
    loop {
        let n = src.read_at(&mut buf, pos)?;
        if n == 0 {
            return Ok(len);
        }
        let wide = buf[..n]
            .iter()
            .filter(|c| matches!(c, b'\n' | b'\r'))
            .count();
        len += (n + wide) as u64;
        pos += n as u64;
    }
}

/// Converts a source to netascii while it is sent, keeping converted bytes only from the
/// first unacknowledged block on: memory stays within a window plus two read-aheads,
/// whatever the file size.
struct NetasciiReader {
    src: Source,
    /// Next raw byte to convert.
    raw_pos: u64,
    raw: Vec<u8>,
    /// Converted bytes for netascii offsets `start..start + out.len()`.
    out: Vec<u8>,
    start: u64,
    /// Nothing before this offset will be asked for again.
    keep_from: u64,
    eof: bool,
}

impl NetasciiReader {
    fn new(src: Source) -> NetasciiReader {
        NetasciiReader {
            src,
            raw_pos: 0,
            raw: vec![0u8; READ_AHEAD],
            out: Vec::new(),
            start: 0,
            keep_from: 0,
            eof: false,
        }
    }

    fn get(&mut self, offset: u64, n: usize) -> std::io::Result<&[u8]> {
        if offset < self.start {
            return Err(std::io::Error::other(
                "netascii: a block before the unacknowledged window was asked for",
            ));
        }
        while self.start + (self.out.len() as u64) < offset + n as u64 && !self.eof {
            // Drop what is acknowledged before converting more: one move per read-ahead.
            let dead = (self.keep_from.min(offset) - self.start) as usize;
            if dead > 0 {
                self.out.drain(..dead.min(self.out.len()));
                self.start += dead as u64;
            }
            let got = self.src.read_at(&mut self.raw, self.raw_pos)?;
            if got == 0 {
                self.eof = true;
            }
            self.raw_pos += got as u64;
            to_netascii(&self.raw[..got], &mut self.out);
        }
        let from = ((offset - self.start) as usize).min(self.out.len());
        let to = (from + n).min(self.out.len());
        Ok(&self.out[from..to])
    }

    /// Bytes before `offset` are acknowledged and will not be asked for again.
    fn release(&mut self, offset: u64) {
        self.keep_from = self.keep_from.max(offset);
    }
}

/// Blocks of a transfer, by offset in what is sent.
enum Reader {
    Octet(BlockReader),
    Netascii(NetasciiReader),
}

impl Reader {
    fn get(&mut self, offset: u64, n: usize) -> std::io::Result<&[u8]> {
        match self {
            Reader::Octet(r) => r.get(offset, n),
            Reader::Netascii(r) => r.get(offset, n),
        }
    }

    /// Bytes before `offset` are acknowledged and will not be asked for again.
    fn release(&mut self, offset: u64) {
        if let Reader::Netascii(r) = self {
            r.release(offset);
        }
    }
}

/// How many clients that have ACKed are remembered, and for how long.
const VERIFIED_CAP: usize = 4096;
const VERIFIED_TTL: Duration = Duration::from_secs(600);

/// Who may start a transfer: slots for everyone, for unproven clients, and per address.
struct Admissions {
    slots: Arc<Semaphore>,
    unverified: Arc<Semaphore>,
    per_client: Mutex<HashMap<Ipv4Addr, usize>>,
    /// Addresses that ACKed a transfer recently, with when.
    verified: Mutex<HashMap<Ipv4Addr, Instant>>,
}

/// A running transfer's claims; released when it ends (or, for `unverified`, at its first
/// ACK).
struct Admission {
    _slot: OwnedSemaphorePermit,
    unverified: Option<OwnedSemaphorePermit>,
    ip: Ipv4Addr,
    shared: Arc<Shared>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut m = lock(&self.shared.admissions.per_client);
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps are updated in single steps; a panic elsewhere leaves them usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Admissions {
    fn new(cfg: &TftpConfig) -> Admissions {
        Admissions {
            slots: Arc::new(Semaphore::new(cfg.max_transfers)),
            unverified: Arc::new(Semaphore::new((cfg.max_transfers / 2).max(1))),
            per_client: Mutex::new(HashMap::new()),
            verified: Mutex::new(HashMap::new()),
        }
    }

    fn is_verified(&self, ip: Ipv4Addr, now: Instant) -> bool {
        lock(&self.verified)
            .get(&ip)
            .is_some_and(|at| now.saturating_duration_since(*at) < VERIFIED_TTL)
    }

    fn verify(&self, ip: Ipv4Addr, now: Instant) {
        let mut v = lock(&self.verified);
        if v.len() >= VERIFIED_CAP && !v.contains_key(&ip) {
            v.retain(|_, at| now.saturating_duration_since(*at) < VERIFIED_TTL);
            if v.len() >= VERIFIED_CAP {
                // Still full of recent clients: this one is served as unproven.
                return;
            }
        }
        v.insert(ip, now);
    }
}

/// Admits a read request from `peer`, or says (rate-limited) why not.
fn admit(shared: &Arc<Shared>, peer: SocketAddrV4) -> Option<Admission> {
    let a = &shared.admissions;
    let ip = *peer.ip();
    let verified = a.is_verified(ip, Instant::now());
    let mut per_client = lock(&a.per_client);
    let running = per_client.get(&ip).copied().unwrap_or(0);
    if running >= shared.cfg.max_per_client {
        warn_limited!(
            "TFTP client over its transfer limit",
            "TFTP: {ip} already runs {running} transfers; request from {peer} dropped"
        );
        return None;
    }
    let Ok(slot) = a.slots.clone().try_acquire_owned() else {
        warn_limited!(
            "TFTP transfer slots full",
            "TFTP: {} transfers running; request from {peer} dropped",
            shared.cfg.max_transfers
        );
        return None;
    };
    let unverified = if verified {
        None
    } else {
        match a.unverified.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                warn_limited!(
                    "TFTP slots for new clients full",
                    "TFTP: the slots for clients that have not ACKed yet are taken \
                     (forged requests?); request from {peer} dropped"
                );
                return None;
            }
        }
    };
    per_client.insert(ip, running + 1);
    Some(Admission {
        _slot: slot,
        unverified,
        ip,
        shared: shared.clone(),
    })
}

struct Shared {
    cfg: TftpConfig,
    provider: Arc<dyn BootProvider>,
    clients: Arc<ClientMap>,
    admissions: Admissions,
    /// Set at shutdown; running transfers end at their next window.
    stop: Arc<AtomicBool>,
}

/// Binds the TFTP listening socket.
pub fn bind(cfg: &TftpConfig) -> Result<UdpSocket> {
    udp_socket(
        cfg.iface.as_deref(),
        SocketAddrV4::new(cfg.ip, cfg.port),
        "TFTP server",
    )
}

/// Serves read requests until `shutdown` turns true; running transfers are abandoned then.
pub async fn run(
    cfg: TftpConfig,
    sock: UdpSocket,
    provider: Arc<dyn BootProvider>,
    clients: Arc<ClientMap>,
    mut shutdown: watch::Receiver<bool>,
) {
    let shared = Arc::new(Shared {
        admissions: Admissions::new(&cfg),
        stop: Arc::new(AtomicBool::new(false)),
        cfg,
        provider,
        clients,
    });
    let mut buf = vec![0u8; 1024];
    let mut tasks = tokio::task::JoinSet::new();
    let mut flusher = crate::lograte::Flusher::new();
    loop {
        let (n, peer) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!("TFTP receive: {e}");
                    continue;
                }
            },
            _ = flusher.tick() => continue,
            _ = shutdown.wait_for(|v| *v) => break,
        };
        while tasks.try_join_next().is_some() {}
        let SocketAddr::V4(peer) = peer else { continue };
        let pkt = match parse(&buf[..n]) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!("TFTP packet from {peer} dropped: {e}");
                continue;
            }
        };
        let shared = shared.clone();
        match pkt {
            Packet::Read(req) => {
                let Some(admission) = admit(&shared, peer) else {
                    continue;
                };
                tasks.spawn(serve_read(shared, peer, req, admission));
            }
            Packet::Write(req) => {
                info_limited!(
                    "TFTP write request refused",
                    "TFTP write request for {:?} from {peer} refused",
                    req.filename
                );
                if let Ok(s) = transfer_socket(&shared.cfg, peer) {
                    let _ = s.send(&encode_error(2, "this server is read-only"));
                }
            }
            // Stray packets on port 69 (not requests) get no answer.
            _ => tracing::debug!("TFTP non-request packet from {peer} ignored"),
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
}

/// A blocking socket for one transfer: a new port (the server's TID), connected to the peer
/// so the kernel drops packets from anyone else.
fn transfer_socket(cfg: &TftpConfig, peer: SocketAddrV4) -> std::io::Result<std::net::UdpSocket> {
    let s = std_udp_socket(
        cfg.iface.as_deref(),
        SocketAddrV4::new(cfg.ip, 0),
        "TFTP transfer",
    )
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    s.connect(peer)?;
    Ok(s)
}

/// The source of a request and whether it is generated (a per-client virtual file), for the
/// client at `peer`.
/// The file a request names: its source, whether it is generated, and (for a file of the
/// boot directory) what kind of PE image it is.
fn open(
    shared: &Shared,
    req: &Request,
    peer: SocketAddrV4,
) -> std::result::Result<(Source, bool, PeSignature), (u16, String)> {
    if req.mode != "octet" && req.mode != "netascii" {
        return Err((
            0,
            format!("transfer mode {:?} not supported; use octet", req.mode),
        ));
    }
    Ok(
        match virtual_file(
            shared.provider.as_ref(),
            &req.filename,
            &shared.cfg.http_base,
            Some(*peer.ip()),
        ) {
            Some((_, text)) => (Source::Memory(text.into_bytes()), true, PeSignature::NotPe),
            None => {
                let path = resolve(&shared.cfg.root, &req.filename).map_err(|e| {
                    let code = match e {
                        BadPath::NotFound | BadPath::NotAFile | BadPath::Empty => 1,
                        _ => 2,
                    };
                    (code, format!("{}: {e}", req.filename))
                })?;
                let f = File::open(&path).map_err(|e| (2, format!("{}: {e}", req.filename)))?;
                let len = f
                    .metadata()
                    .map_err(|e| (2, format!("{}: {e}", req.filename)))?
                    .len();
                let mut head = vec![0; HEADER_BYTES];
                let n = read_head(&f, &mut head);
                (Source::File(f, len), false, pe::signature(&head[..n]))
            }
        },
    )
}

/// Reads the start of `f` into `buf` (without moving its offset); the bytes read.
fn read_head(f: &File, buf: &mut [u8]) -> usize {
    use std::os::unix::fs::FileExt;
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], n as u64) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n
}

struct Negotiated {
    blksize: usize,
    window: u64,
    timeout: Duration,
    oack: Vec<(&'static str, String)>,
    tsize_asked: bool,
}

fn negotiate(cfg: &TftpConfig, req: &Request, size: u64) -> Negotiated {
    let mut n = Negotiated {
        blksize: 512,
        window: 1,
        timeout: cfg.timeout,
        oack: Vec::new(),
        tsize_asked: false,
    };
    for (name, val) in &req.options {
        let v: Option<u64> = val.trim().parse().ok();
        match (name.as_str(), v) {
            ("blksize", Some(b)) if b >= 8 => {
                n.blksize = b.min(u64::from(cfg.max_blksize)) as usize;
                n.oack.push(("blksize", n.blksize.to_string()));
            }
            ("tsize", Some(_)) => {
                n.tsize_asked = true;
                n.oack.push(("tsize", size.to_string()));
            }
            // RFC 2349: acknowledged as asked, or not at all. A long timeout would let one
            // request hold a slot for minutes.
            ("timeout", Some(t)) if (1..=cfg.max_timeout_option.min(255)).contains(&t) => {
                n.timeout = Duration::from_secs(t);
                n.oack.push(("timeout", t.to_string()));
            }
            ("windowsize", Some(w)) if (1..=65535).contains(&w) => {
                n.window = w.min(u64::from(cfg.max_window));
                n.oack.push(("windowsize", n.window.to_string()));
            }
            _ => {}
        }
    }
    n
}

enum Outcome {
    Sent(u64),
    /// The client ended after the OACK (PXE ROMs do this to learn tsize).
    Probe,
    Failed(String),
}

async fn serve_read(shared: Arc<Shared>, peer: SocketAddrV4, req: Request, admission: Admission) {
    // Each transfer runs on a blocking thread of its own, as tftpd-hpa runs a process: in
    // lock-step TFTP every block waits for an ACK, and a thread blocked in recv() wakes
    // sooner than a task woken through the reactor (measured: `ignite netboot bench tftp`).
    let r = tokio::task::spawn_blocking(move || serve_read_blocking(&shared, peer, req, admission))
        .await;
    if let Err(e) = r {
        tracing::error!("TFTP transfer for {peer} failed: {e}");
    }
}

fn serve_read_blocking(
    shared: &Shared,
    peer: SocketAddrV4,
    req: Request,
    mut admission: Admission,
) {
    let ip = Some(*peer.ip());
    let mac = shared.clients.mac_of(*peer.ip());
    let sock = match transfer_socket(&shared.cfg, peer) {
        Ok(s) => s,
        Err(e) => {
            warn_limited!(
                "TFTP transfer socket failed",
                "TFTP transfer socket for {peer}: {e}"
            );
            return;
        }
    };
    let refuse = |code: u16, msg: String| {
        shared.provider.step(&BootEvent {
            mac,
            ip,
            step: "tftp-missing",
            detail: msg.clone(),
        });
        let _ = sock.send(&encode_error(code, &msg));
    };
    let (src, is_virtual, sig) = match open(shared, &req, peer) {
        Ok(s) => s,
        Err((code, msg)) => return refuse(code, msg),
    };
    let netascii = req.mode == "netascii";
    let asks_tsize = req.options.iter().any(|(k, _)| k == "tsize");
    let size = match (netascii, asks_tsize) {
        (false, _) => src.len(),
        (true, true) => match netascii_len(&src) {
            Ok(n) => n,
            Err(e) => return refuse(2, format!("{}: {e}", req.filename)),
        },
        // Only the tsize option needs the converted size up front.
        (true, false) => 0,
    };
    let neg = negotiate(&shared.cfg, &req, size);
    let reader = if netascii {
        Reader::Netascii(NetasciiReader::new(src))
    } else {
        Reader::Octet(BlockReader::new(src))
    };
    let retries = Retries {
        max: shared.cfg.max_retries,
        before_first_ack: if admission.unverified.is_some() {
            shared.cfg.unverified_retries
        } else {
            shared.cfg.max_retries
        },
    };
    let mut first_ack = || {
        // The client answered from its address: it is real, not a forged source.
        shared.admissions.verify(*peer.ip(), Instant::now());
        admission.unverified = None;
    };
    let start = Instant::now();
    let outcome = send_file(sock, reader, &neg, retries, &mut first_ack, &shared.stop);
    let what = if is_virtual { "generated" } else { "file" };
    match outcome {
        Outcome::Sent(len) => {
            if !is_virtual {
                shared.clients.fetched(*peer.ip(), &req.filename, sig);
            }
            let secs = start.elapsed().as_secs_f64();
            shared.provider.step(&BootEvent {
                mac,
                ip,
                step: "tftp",
                detail: format!(
                    "sent {what} {} ({len} bytes, {}, blksize {}, window {}, {:.1} MB/s)",
                    req.filename,
                    req.mode,
                    neg.blksize,
                    neg.window,
                    len as f64 / secs.max(1e-6) / 1e6
                ),
            });
        }
        Outcome::Probe => tracing::debug!("TFTP {} from {peer}: size probe answered", req.filename),
        Outcome::Failed(why) => shared.provider.step(&BootEvent {
            mac,
            ip,
            step: "tftp-failed",
            detail: format!("{}: {why}", req.filename),
        }),
    }
}

/// Reads blocks through a buffer of [`READ_AHEAD`] bytes, so lock-step transfers of small
/// blocks do not cost one read call per block.
struct BlockReader {
    src: Source,
    buf: Vec<u8>,
    start: u64,
    len: usize,
}

const READ_AHEAD: usize = 256 << 10;

impl BlockReader {
    fn new(src: Source) -> BlockReader {
        BlockReader {
            src,
            buf: Vec::new(),
            start: 0,
            len: 0,
        }
    }

    /// Bytes `offset..offset+n` (fewer at end of file).
    fn get(&mut self, offset: u64, n: usize) -> std::io::Result<&[u8]> {
        let end = self.start + self.len as u64;
        if offset < self.start || offset + n as u64 > end {
            let want = READ_AHEAD.max(n);
            if self.buf.len() < want {
                self.buf.resize(want, 0);
            }
            self.len = self.src.read_at(&mut self.buf[..want], offset)?;
            self.start = offset;
        }
        let from = (offset - self.start) as usize;
        let to = (from + n).min(self.len);
        Ok(&self.buf[from.min(to)..to])
    }
}

/// A transfer's socket, remembering its receive timeout so that the lock-step hot path
/// costs one send and one receive per block and no setsockopt.
struct Conn {
    sock: std::net::UdpSocket,
    timeout: Option<Duration>,
}

impl Conn {
    fn send(&self, b: &[u8]) -> std::io::Result<usize> {
        self.sock.send(b)
    }

    fn set_timeout(&mut self, t: Duration) -> std::io::Result<()> {
        // Coarse to the millisecond, so small differences do not cost a syscall.
        let t = Duration::from_millis(t.as_millis().max(1) as u64);
        if self.timeout != Some(t) {
            self.sock.set_read_timeout(Some(t))?;
            self.timeout = Some(t);
        }
        Ok(())
    }

    /// Waits for the next ACK/ERROR from the client, skipping anything else. `Ok(None)` on
    /// timeout.
    fn recv_ack(
        &mut self,
        buf: &mut [u8],
        timeout: Duration,
    ) -> std::result::Result<Option<Packet>, String> {
        let deadline = Instant::now() + timeout;
        let mut left = timeout;
        loop {
            self.set_timeout(left).map_err(|e| e.to_string())?;
            match self.sock.recv(buf) {
                Ok(n) => {
                    if let Ok(p @ (Packet::Ack(_) | Packet::Error { .. })) = parse(&buf[..n]) {
                        return Ok(Some(p));
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // ICMP port unreachable: the client has gone away.
                Err(e) => return Err(format!("client unreachable: {e}")),
            }
            left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
        }
    }
}

/// How often a packet is sent again when no ACK comes.
#[derive(Debug, Clone, Copy)]
struct Retries {
    max: u32,
    /// Before the client's first ACK: its address may be forged, and every packet sent
    /// then may be aimed at someone else.
    before_first_ack: u32,
}

fn send_file(
    sock: std::net::UdpSocket,
    mut reader: Reader,
    neg: &Negotiated,
    retries: Retries,
    first_ack: &mut dyn FnMut(),
    stop: &AtomicBool,
) -> Outcome {
    let mut sock = Conn {
        sock,
        timeout: None,
    };
    let mut rbuf = [0u8; 512];
    let backoff = |t: Duration| (t * 2).min(Duration::from_secs(10));
    let mut acked_once = false;
    let mut ack_seen = |acked_once: &mut bool| {
        if !*acked_once {
            *acked_once = true;
            first_ack();
        }
    };
    let give_up = |tries: u32, acked_once: bool| {
        tries
            > if acked_once {
                retries.max
            } else {
                retries.before_first_ack
            }
    };
    if !neg.oack.is_empty() {
        let oack = encode_oack(&neg.oack);
        let mut timeout = neg.timeout;
        let mut tries = 0;
        loop {
            if let Err(e) = sock.send(&oack) {
                return Outcome::Failed(format!("send: {e}"));
            }
            match sock.recv_ack(&mut rbuf, timeout) {
                Ok(Some(Packet::Ack(0))) => {
                    ack_seen(&mut acked_once);
                    break;
                }
                Ok(Some(Packet::Error { .. })) if neg.tsize_asked => return Outcome::Probe,
                Ok(Some(Packet::Error { code, msg })) => {
                    return Outcome::Failed(format!("client refused options: error {code} {msg}"))
                }
                Ok(Some(_)) => continue,
                Ok(None) => {
                    tries += 1;
                    if give_up(tries, acked_once) || stop.load(Ordering::Relaxed) {
                        return Outcome::Failed("no ACK for the option acknowledgement".into());
                    }
                    timeout = backoff(timeout);
                }
                Err(e) => return Outcome::Failed(e),
            }
        }
    }

    let blk = neg.blksize;
    // Blocks 1..=last; the last one is shorter than blksize (possibly empty). Known once
    // it has been read: a netascii source's size is not known up front.
    let mut last: Option<(u64, u64)> = None;
    let mut acked: u64 = 0;
    let mut tries = 0;
    let mut timeout = neg.timeout;
    let mut pkt = vec![0u8; 4 + blk];
    pkt[..2].copy_from_slice(&OP_DATA.to_be_bytes());
    'send: loop {
        if stop.load(Ordering::Relaxed) {
            let _ = sock.send(&encode_error(0, "server shutting down"));
            return Outcome::Failed("server shutting down".into());
        }
        let mut end = acked;
        while end < acked + neg.window && last.is_none_or(|(l, _)| end < l) {
            let b = end + 1;
            let data = match reader.get((b - 1) * blk as u64, blk) {
                Ok(d) => d,
                Err(e) => return Outcome::Failed(format!("read: {e}")),
            };
            let n = data.len();
            pkt[2..4].copy_from_slice(&(b as u16).to_be_bytes());
            pkt[4..4 + n].copy_from_slice(data);
            if n < blk {
                last = Some((b, (b - 1) * blk as u64 + n as u64));
            }
            if let Err(e) = sock.send(&pkt[..4 + n]) {
                return Outcome::Failed(format!("send: {e}"));
            }
            end = b;
        }
        loop {
            match sock.recv_ack(&mut rbuf, timeout) {
                Ok(Some(Packet::Ack(n))) => {
                    // Map the 16-bit number onto the blocks in flight (rollover-safe).
                    let delta = u64::from(n.wrapping_sub(acked as u16));
                    if delta == 0 {
                        // Duplicate ACK. With a window it asks for a resend from there;
                        // in lock-step, resending would start the Sorcerer's Apprentice
                        // storm (RFC 1123 4.2.3.1), so wait for the timeout instead.
                        if neg.window > 1 {
                            continue 'send;
                        }
                        continue;
                    }
                    if delta > end - acked {
                        continue;
                    }
                    ack_seen(&mut acked_once);
                    acked += delta;
                    reader.release(acked * blk as u64);
                    tries = 0;
                    timeout = neg.timeout;
                    if let Some((l, size)) = last {
                        if acked == l {
                            return Outcome::Sent(size);
                        }
                    }
                    continue 'send;
                }
                Ok(Some(Packet::Error { code, msg })) => {
                    return Outcome::Failed(format!("client error {code}: {msg}"))
                }
                Ok(Some(_)) => continue,
                Ok(None) => {
                    tries += 1;
                    if give_up(tries, acked_once) {
                        return Outcome::Failed(format!("timed out at block {}", acked + 1));
                    }
                    timeout = backoff(timeout);
                    continue 'send;
                }
                Err(e) => return Outcome::Failed(e),
            }
        }
    }
}

#[cfg(test)]
mod tests;
