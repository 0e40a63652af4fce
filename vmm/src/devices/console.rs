//! Console plumbing around the UART: a Unix-socket console (one client at a time), the
//! console log, and the input side of the terminal console. Input threads hold only a weak
//! reference to the platform, so a stopped VM is freed even while they block in read/accept.
//!
//! The UART is written on the vCPU thread, so nothing here may block on a reader: output for
//! the socket client goes through a bounded buffer drained by a thread of its own (what does
//! not fit while the client is not reading is dropped, counted and reported to the client
//! when it reads again), and the log rotates to `<log>.1` at a size cap.

use super::Platform;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, Weak};

/// Console output a client has not read yet, at most.
pub const CLIENT_BUFFER: usize = 256 << 10;
/// The console log moves to `<log>.1` (replacing it) when it would pass this size.
pub const LOG_CAP: u64 = 16 << 20;

/// One client's output queue and the thread writing it to the client.
struct Pipe {
    state: Mutex<PipeState>,
    ready: Condvar,
    /// Shut down to wake the writer out of a blocked write when the client is replaced.
    conn: UnixStream,
}

#[derive(Default)]
struct PipeState {
    buf: Vec<u8>,
    dropped: u64,
    closed: bool,
}

impl Pipe {
    fn lock(&self) -> std::sync::MutexGuard<'_, PipeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues what fits; never blocks.
    fn push(&self, data: &[u8]) {
        let mut s = self.lock();
        if s.closed {
            return;
        }
        let n = (CLIENT_BUFFER - s.buf.len()).min(data.len());
        s.buf.extend_from_slice(&data[..n]);
        s.dropped += (data.len() - n) as u64;
        self.ready.notify_one();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
        let _ = self.conn.shutdown(std::net::Shutdown::Both);
    }

    /// The writer thread: queued output to the client, in order, with a note where output
    /// was dropped; ends when the client goes or is replaced.
    fn drain(&self, mut conn: UnixStream) {
        loop {
            let (data, dropped) = {
                let mut s = self.lock();
                while s.buf.is_empty() && s.dropped == 0 && !s.closed {
                    s = self.ready.wait(s).unwrap_or_else(|e| e.into_inner());
                }
                if s.closed {
                    return;
                }
                (std::mem::take(&mut s.buf), std::mem::take(&mut s.dropped))
            };
            let note = (dropped > 0).then(|| {
                format!(
                    "\r\n[ignite: {dropped} bytes of console output dropped while this client was not reading]\r\n"
                )
            });
            let sent = conn
                .write_all(&data)
                .and_then(|()| note.map_or(Ok(()), |n| conn.write_all(n.as_bytes())));
            if sent.is_err() {
                self.close();
                return;
            }
        }
    }
}

/// The current client's pipe; closing it when the console goes lets the writer end.
#[derive(Default)]
struct Client(Mutex<Option<Arc<Pipe>>>);

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(p) = self.0.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            p.close();
        }
    }
}

/// Output side of a Unix-socket console: writes go to the connected client, if any, without
/// ever blocking the writer.
#[derive(Clone, Default)]
pub struct SocketOut(Arc<Client>);

impl SocketOut {
    /// Makes `conn` the client (replacing the previous one): a thread of its own writes to it.
    pub fn attach(&self, conn: UnixStream) -> std::io::Result<()> {
        let pipe = Arc::new(Pipe {
            state: Mutex::default(),
            ready: Condvar::new(),
            conn: conn.try_clone()?,
        });
        let old = self
            .0
             .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(pipe.clone());
        if let Some(old) = old {
            old.close();
        }
        std::thread::Builder::new()
            .name("console-out".into())
            .spawn(move || pipe.drain(conn))?;
        Ok(())
    }
}

impl Write for SocketOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(p) = self.0 .0.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            p.push(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An append-only log that moves to `<path>.1` when it would pass `cap` bytes, so a guest
/// printing forever costs at most twice the cap on disk.
pub struct RotatingLog {
    path: PathBuf,
    file: std::fs::File,
    len: u64,
    cap: u64,
}

impl RotatingLog {
    pub fn open(path: &Path, cap: u64) -> std::io::Result<RotatingLog> {
        let file = Self::open_append(path)?;
        let len = file.metadata()?.len();
        Ok(RotatingLog {
            path: path.to_owned(),
            file,
            len,
            cap,
        })
    }

    fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    }

    /// `<path>.1`.
    pub fn rotated_path(path: &Path) -> PathBuf {
        let mut p = path.as_os_str().to_owned();
        p.push(".1");
        PathBuf::from(p)
    }

    pub fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.len > 0 && self.len.saturating_add(buf.len() as u64) > self.cap {
            std::fs::rename(&self.path, Self::rotated_path(&self.path))?;
            self.file = Self::open_append(&self.path)?;
            self.len = 0;
        }
        self.file.write_all(buf)?;
        self.len += buf.len() as u64;
        Ok(())
    }
}

/// Output to a socket console and a log: the log gets everything, whether or not a client
/// is attached.
pub struct Tee(pub SocketOut, pub RotatingLog);

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // A full disk must not stall the guest's UART: the log is best effort.
        let _ = self.1.write_all(buf);
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Binds `path` (replacing a stale socket file).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path)
}

fn pump(mut src: impl Read, platform: Weak<Platform>) {
    let mut buf = [0u8; 256];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        match platform.upgrade() {
            Some(p) if p.stop.get().is_none() => p.serial_input(&buf[..n]),
            _ => return,
        }
    }
}

/// Accepts clients on `listener`; each new client replaces the previous one.
pub fn serve_socket(listener: UnixListener, out: SocketOut, platform: Weak<Platform>) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            if platform.upgrade().is_none_or(|p| p.stop.get().is_some()) {
                return;
            }
            let Ok(reader) = conn.try_clone() else {
                continue;
            };
            if let Err(e) = out.attach(conn) {
                tracing::warn!(error = %e, "console client refused");
                continue;
            }
            let p = platform.clone();
            std::thread::spawn(move || pump(reader, p));
        }
    });
}

/// Forwards the monitor's stdin to the guest console.
pub fn forward_stdin(platform: Weak<Platform>) {
    std::thread::spawn(move || pump(std::io::stdin(), platform));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A socket console as the VM serves it, with a connected client; output written
    /// before `serve_socket` attached the client would be lost, so a probe byte is written
    /// until the client sees one.
    fn console() -> (
        SocketOut,
        UnixStream,
        Arc<Platform>,
        vmm_sys_util::tempdir::TempDir,
    ) {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/ign-con").unwrap();
        let path = dir.as_path().join("console.sock");
        let platform = Arc::new(Platform::new(
            Box::new(std::io::sink()),
            vmm_sys_util::eventfd::EventFd::new(0).unwrap(),
            crate::pci::PciBus::new(),
            Arc::default(),
        ));
        let out = SocketOut::default();
        serve_socket(bind(&path).unwrap(), out.clone(), Arc::downgrade(&platform));
        let mut client = UnixStream::connect(&path).unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut w = out.clone();
        loop {
            w.write_all(b".").unwrap();
            if client.read(&mut [0u8]).is_ok_and(|n| n == 1) {
                break;
            }
            assert!(Instant::now() < deadline, "console client never attached");
        }
        (out, client, platform, dir)
    }

    #[test]
    fn a_client_that_stops_reading_never_blocks_the_writer() {
        let (out, mut client, _platform, _dir) = console();
        // 16 MiB into a client that reads nothing: the socket buffer holds a few hundred
        // KiB, the console CLIENT_BUFFER; the rest is dropped rather than waited for. The
        // old console blocked in write_all here, on the vCPU thread.
        let (tx, rx) = std::sync::mpsc::channel();
        let mut w = out.clone();
        std::thread::spawn(move || {
            w.write_all(b"BEGIN").unwrap();
            for i in 0..(16u32 << 10) {
                w.write_all(&[(i % 26) as u8 + b'a'; 1024]).unwrap();
            }
            let _ = tx.send(());
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(60)).is_ok(),
            "writing to a client that does not read blocked"
        );
        // When the client reads again it gets what fit, then a note saying how much was
        // dropped; output written after that arrives whole.
        client
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut read_until = |seen: &mut Vec<u8>, want: &[u8]| {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !seen.ends_with(want) {
                assert!(
                    Instant::now() < deadline,
                    "no {want:?} in {} bytes",
                    seen.len()
                );
                let n = client.read(&mut buf).unwrap();
                assert!(n > 0, "client closed after {} bytes", seen.len());
                seen.extend_from_slice(&buf[..n]);
            }
        };
        read_until(&mut seen, b"not reading]\r\n");
        out.clone().write_all(b"NEWER").unwrap();
        read_until(&mut seen, b"NEWER");
        let text = String::from_utf8_lossy(&seen);
        let begin = text.find("BEGIN").expect("BEGIN") + 5;
        let body = &text[begin..text.len() - 5];
        // Data, then one or more notes each followed by data.
        let mut parts = body.split("\r\n[ignite: ");
        let mut arrived = parts.next().unwrap().len() as u64;
        let mut dropped = 0u64;
        for p in parts {
            let (n, rest) = p.split_once(' ').unwrap();
            dropped += n.parse::<u64>().unwrap();
            arrived += rest.split_once("]\r\n").unwrap().1.len() as u64;
        }
        assert!(dropped > 0, "nothing dropped?");
        assert_eq!(
            arrived + dropped,
            16 << 20,
            "what arrived plus what was dropped is what was written"
        );
    }

    #[test]
    fn a_new_client_replaces_a_stuck_one() {
        let (a, _a_peer) = UnixStream::pair().unwrap();
        let (b, mut b_peer) = UnixStream::pair().unwrap();
        let out = SocketOut::default();
        out.attach(a).unwrap();
        let mut w = out.clone();
        w.write_all(&vec![1u8; 4 << 20]).unwrap();
        out.attach(b).unwrap();
        w.write_all(b"for b").unwrap();
        b_peer
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut got = [0u8; 5];
        b_peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"for b");
    }

    #[test]
    fn the_log_rotates_at_its_cap() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/ign-log").unwrap();
        let path = dir.as_path().join("console.log");
        std::fs::write(&path, b"from before\n").unwrap();
        let mut log = RotatingLog::open(&path, 100).unwrap();
        let mut all = b"from before\n".to_vec();
        for i in 0..50u8 {
            let line = format!("line {i:02}\n");
            log.write_all(line.as_bytes()).unwrap();
            all.extend_from_slice(line.as_bytes());
        }
        let cur = std::fs::read(&path).unwrap();
        let old = std::fs::read(RotatingLog::rotated_path(&path)).unwrap();
        assert!(
            cur.len() <= 100 && old.len() <= 100,
            "{} {}",
            cur.len(),
            old.len()
        );
        let mut tail = old.clone();
        tail.extend_from_slice(&cur);
        assert!(
            all.ends_with(&tail),
            "the two files hold the latest output in order"
        );
        assert!(cur.ends_with(b"line 49\n"));
    }
}
