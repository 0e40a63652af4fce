//! Console plumbing around the UART: a Unix-socket console (one client at a time) and the
//! input side of the terminal console. Input threads hold only a weak reference to the
//! platform, so a stopped VM is freed even while they block in read/accept.

use super::Platform;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

/// Output side of a Unix-socket console: writes go to the connected client, if any.
#[derive(Clone, Default)]
pub struct SocketOut(Arc<Mutex<Option<UnixStream>>>);

impl Write for SocketOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = g.as_mut() {
            if c.write_all(buf).is_err() {
                *g = None;
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Output to a socket console and a log file: the log gets everything, whether or not a
/// client is attached.
pub struct Tee(pub SocketOut, pub std::fs::File);

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
            if let Ok(reader) = conn.try_clone() {
                *out.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn);
                let p = platform.clone();
                std::thread::spawn(move || pump(reader, p));
            }
        }
    });
}

/// Forwards the monitor's stdin to the guest console.
pub fn forward_stdin(platform: Weak<Platform>) {
    std::thread::spawn(move || pump(std::io::stdin(), platform));
}
