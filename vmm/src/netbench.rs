//! Network rows of `ignite vm bench avio-vio`: the guest program `netbench` moves full-size
//! frames through virtio-net (AVIO) and then through the NE2000 (VIO), both on the same tap
//! in a network namespace of their own, to and from a host peer: a raw AF_PACKET socket on
//! the tap's host side. The protocol (window, acknowledgements, pattern and checksum) is
//! the guest's `rt::bulk`; every frame is counted and checksummed by its receiver and the two
//! sides' checksums must match the pattern, or the run fails.

use crate::bench::{phase, thread_cpu, Phase};
use crate::config::{NetBackend, NetConfig};
use crate::error::{Error, Result};
use crate::guest::{run_program, ProgramRun};
use crate::netns::Netns;
use crate::StopReason;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Frame size on the wire (Ethernet header + 1500 bytes, no FCS).
pub const FRAME: usize = 1514;
const ETHERTYPE: u16 = 0x88b5;
const DATA: u32 = 1;
const ACK: u32 = 2;
const SEND_TO_ME: u32 = 3;
const DATA_OFF: usize = 26;
const CHECKSUM_START: u64 = 0xcbf2_9ce4_8422_2325;

const TAP: &str = "ignbench0";
/// The tap's own address: the peer's.
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x60];

/// Word `j` of frame `seq`'s data (as `rt::bulk` makes it).
fn pattern(seq: u32, j: usize) -> u64 {
    ((seq as u64) << 32 | j as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// FNV-1a over 64-bit words (as `rt::bulk` folds them).
fn fold(sum: u64, word: u64) -> u64 {
    (sum ^ word).wrapping_mul(0x100_0000_01b3)
}

/// Checksum of the data of frames 0..frames.
fn expected_checksum(frames: u32) -> u64 {
    (0..frames).fold(CHECKSUM_START, |s, seq| {
        (0..(FRAME - DATA_OFF) / 8).fold(s, |s, j| fold(s, pattern(seq, j)))
    })
}

/// How a model is driven: frames a sender may have unacknowledged, and how often the
/// receiver acknowledges. The NE2000's ring holds about 8 full frames and every frame costs
/// a dozen exits, so it gets a smaller window and acknowledges more often per frame.
#[derive(Clone, Copy)]
pub struct Flow {
    pub window: u32,
    pub ack_every: u32,
}
pub const AVIO_FLOW: Flow = Flow {
    window: 128,
    ack_every: 32,
};
pub const VIO_FLOW: Flow = Flow {
    window: 16,
    ack_every: 8,
};

/// AF_PACKET socket for the bench ethertype on one interface.
struct PacketSocket(OwnedFd);

impl PacketSocket {
    fn open(ifname: &str) -> io::Result<PacketSocket> {
        let proto = (ETHERTYPE.to_be()) as libc::c_int;
        // SAFETY: plain socket(2); the fd is owned at once.
        let fd =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let s = PacketSocket(unsafe { OwnedFd::from_raw_fd(fd) });
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETHERTYPE.to_be();
        sll.sll_ifindex = crate::virtio::tap::ifindex(ifname)?;
        // SAFETY: bind with a sockaddr_ll we own, of the size we pass.
        if unsafe {
            libc::bind(
                fd,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        // A window of frames must fit in the receive buffer; a short timeout lets the peer
        // notice that the guest has stopped.
        s.set_opt(libc::SO_RCVBUFFORCE, &(8i32 << 20))?;
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        s.set_opt(libc::SO_RCVTIMEO, &tv)?;
        Ok(s)
    }

    fn set_opt<T>(&self, opt: libc::c_int, v: &T) -> io::Result<()> {
        // SAFETY: setsockopt reads size_of::<T>() bytes from v.
        let r = unsafe {
            libc::setsockopt(
                self.0.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                v as *const T as *const libc::c_void,
                std::mem::size_of::<T>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: frame is a valid buffer of its length.
        let n = unsafe {
            libc::send(
                self.0.as_raw_fd(),
                frame.as_ptr() as *const _,
                frame.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Next frame, None after the receive timeout.
    fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: buf is a valid writable buffer of its length.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr() as *mut _, buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(n as usize))
    }
}

fn frame(buf: &mut [u8], kind: u32, number: u32, window: u32) {
    buf[0..6].copy_from_slice(&GUEST_MAC);
    buf[6..12].copy_from_slice(&PEER_MAC);
    buf[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    buf[14..18].copy_from_slice(&kind.to_le_bytes());
    buf[18..22].copy_from_slice(&number.to_le_bytes());
    buf[22..26].copy_from_slice(&window.to_le_bytes());
}

/// (kind, number, window) of a bench frame from the guest to the peer.
fn parse(f: &[u8]) -> Option<(u32, u32, u32)> {
    if f.len() < DATA_OFF || f[0..6] != PEER_MAC || f[6..12] != GUEST_MAC {
        return None;
    }
    let word = |i: usize| u32::from_le_bytes([f[i], f[i + 1], f[i + 2], f[i + 3]]);
    Some((word(14), word(18), word(22)))
}

/// What the peer saw: checksums of the data it received and sent, and its own CPU time in
/// each phase (it runs in the monitor's process and is subtracted from its CPU time).
struct PeerResult {
    received_sum: u64,
    sent_sum: u64,
    send_cpu: Duration,
    receive_cpu: Duration,
}

struct Peer {
    sock: PacketSocket,
    frames: u32,
    ack_every: u32,
    /// Set when the guest program has ended: a peer still waiting gives up.
    guest_done: Arc<AtomicBool>,
    buf: Vec<u8>,
}

impl Peer {
    /// Next bench frame from the guest: (kind, number, window, length).
    fn next(&mut self, waiting_for: &str) -> std::result::Result<(u32, u32, u32, usize), String> {
        loop {
            match self.sock.recv(&mut self.buf) {
                Ok(Some(n)) => {
                    if let Some((k, num, w)) = parse(&self.buf[..n]) {
                        return Ok((k, num, w, n));
                    }
                }
                Ok(None) if self.guest_done.load(Ordering::Relaxed) => {
                    return Err(format!(
                        "the guest program ended while the peer waited for {waiting_for}"
                    ))
                }
                Ok(None) => {}
                Err(e) => return Err(format!("receiving {waiting_for}: {e}")),
            }
        }
    }

    /// The guest sends: take DATA frames in order, acknowledging every `ack_every`.
    fn take(&mut self) -> std::result::Result<(u64, Duration), String> {
        let (mut next, mut sum, mut cpu0) = (0u32, CHECKSUM_START, None);
        let mut ack = vec![0u8; 60];
        while next < self.frames {
            let (kind, seq, _, len) = self.next(&format!("DATA frame {next}"))?;
            if kind != DATA {
                continue;
            }
            cpu0.get_or_insert_with(thread_cpu);
            if seq != next || len != FRAME {
                return Err(format!(
                    "DATA frame {seq} ({len} bytes) arrived where frame {next} was due: lost or reordered"
                ));
            }
            sum = self.buf[DATA_OFF..FRAME].chunks_exact(8).fold(sum, |s, w| {
                fold(s, u64::from_le_bytes(w.try_into().unwrap_or_default()))
            });
            next += 1;
            if next % self.ack_every == 0 || next == self.frames {
                frame(&mut ack, ACK, next, 0);
                self.sock
                    .send(&ack)
                    .map_err(|e| format!("sending ACK: {e}"))?;
            }
        }
        Ok((sum, thread_cpu() - cpu0.unwrap_or_default()))
    }

    /// The guest asks for frames: send them with its window, until it acknowledged them all.
    fn give(&mut self) -> std::result::Result<(u64, Duration), String> {
        let window = loop {
            let (kind, n, window, _) = self.next("the guest's request for frames")?;
            if kind == SEND_TO_ME {
                if n != self.frames || window == 0 {
                    return Err(format!(
                        "the guest asked for {n} frames with window {window}; expected {} frames",
                        self.frames
                    ));
                }
                break window;
            }
        };
        let cpu0 = thread_cpu();
        let (mut sent, mut acked, mut sum) = (0u32, 0u32, CHECKSUM_START);
        let mut f = vec![0u8; FRAME];
        while acked < self.frames {
            while sent < self.frames && sent - acked < window {
                frame(&mut f, DATA, sent, 0);
                for (j, w) in f[DATA_OFF..].chunks_exact_mut(8).enumerate() {
                    let v = pattern(sent, j);
                    w.copy_from_slice(&v.to_le_bytes());
                    sum = fold(sum, v);
                }
                self.sock
                    .send(&f)
                    .map_err(|e| format!("sending DATA frame {sent}: {e}"))?;
                sent += 1;
            }
            let (kind, n, _, _) = self.next(&format!("ACK of frame {}", acked + 1))?;
            if kind == ACK {
                if n > sent {
                    return Err(format!("the guest acknowledged {n} frames of {sent} sent"));
                }
                acked = acked.max(n);
            }
        }
        Ok((sum, thread_cpu() - cpu0))
    }

    fn run(mut self) -> std::result::Result<PeerResult, String> {
        let (received_sum, send_cpu) = self.take()?;
        let (sent_sum, receive_cpu) = self.give()?;
        Ok(PeerResult {
            received_sum,
            sent_sum,
            send_cpu,
            receive_cpu,
        })
    }
}

/// One model: `netbench` on a NIC of that model on the tap, with the peer on a thread.
/// Runs on a thread inside the namespace. Returns the send and receive phases.
fn run_model(vio: bool, frames: u32, flow: Flow) -> Result<Vec<Phase>> {
    let model = if vio {
        "VIO (NE2000)"
    } else {
        "AVIO (virtio-net)"
    };
    let fail = |msg: String| Error::Bench(format!("network, {model}: {msg}"));
    let sock =
        PacketSocket::open(TAP).map_err(|e| fail(format!("packet socket on tap {TAP}: {e}")))?;
    let guest_done = Arc::new(AtomicBool::new(false));
    let peer = Peer {
        sock,
        frames,
        ack_every: flow.ack_every,
        guest_done: guest_done.clone(),
        buf: vec![0u8; 65536],
    };
    let peer = std::thread::Builder::new()
        .name("netbench-peer".into())
        .spawn(move || peer.run())?;
    let mut run = ProgramRun::new("netbench");
    let nic = NetConfig {
        backend: NetBackend::Tap(TAP.into()),
        mac: GUEST_MAC,
    };
    if vio {
        run.vio_nets = vec![nic];
    } else {
        run.nets = vec![nic];
    }
    let peer_mac = PEER_MAC.map(|b| format!("{b:02x}")).join(":");
    run.args = format!(
        "peer={peer_mac} frames={frames} window={} ack={}",
        flow.window, flow.ack_every
    );
    run.timeout = Duration::from_secs(600);
    let r = run_program(run);
    guest_done.store(true, Ordering::Relaxed);
    let peer = peer
        .join()
        .map_err(|_| fail("the peer thread panicked".into()))?;
    let r = r?;
    if r.outcome.reason != StopReason::TestExit(0) {
        return Err(fail(format!(
            "netbench: {}: {}",
            r.outcome.reason,
            r.last_line()
        )));
    }
    let p = peer.map_err(fail)?;
    // Both directions carry the same pattern: each receiver's checksum must be the sender's.
    let want = expected_checksum(frames);
    let line = format!(
        "sent {frames} frames checksum {want:016x}, received {frames} frames checksum {want:016x}"
    );
    if p.received_sum != want || p.sent_sum != want || !r.serial.contains(&line) {
        return Err(fail(format!(
            "data differs: expected checksum {want:016x} both ways; the peer received {:016x} \
             and sent {:016x}; the guest said: {}",
            p.received_sum,
            p.sent_sum,
            r.last_line()
        )));
    }
    let bytes = frames as u64 * FRAME as u64;
    let marks = &r.outcome.marks;
    let mut send = phase(marks, "net send", 51, bytes)?;
    let mut receive = phase(marks, "net receive", 61, bytes)?;
    send.cpu_secs = (send.cpu_secs - p.send_cpu.as_secs_f64()).max(0.0);
    receive.cpu_secs = (receive.cpu_secs - p.receive_cpu.as_secs_f64()).max(0.0);
    Ok(vec![send, receive])
}

fn frames(bytes: u64) -> Result<u32> {
    u32::try_from(bytes.div_ceil(FRAME as u64))
        .map_err(|_| Error::Bench(format!("network: {bytes} bytes is too many frames")))
}

/// AVIO sends and receives `avio_bytes`, VIO `vio_bytes` (each rounded up to whole frames;
/// VIO's string OUT costs an exit per element, so it gets less), through the same tap in
/// a network namespace: (avio, vio) phases `net send` and `net receive`. Needs root
/// (namespace, tap, packet socket).
pub fn avio_vio_net(avio_bytes: u64, vio_bytes: u64) -> Result<(Vec<Phase>, Vec<Phase>)> {
    let (avio_frames, vio_frames) = (frames(avio_bytes)?, frames(vio_bytes)?);
    let ns_err =
        |e: String| Error::Bench(format!("network namespace: {e} (needs root and iproute2)"));
    let ns = Netns::new("netbench").map_err(ns_err)?;
    ns.ip(&["tuntap", "add", "dev", TAP, "mode", "tap", "vnet_hdr"])
        .map_err(ns_err)?;
    let peer_mac = PEER_MAC.map(|b| format!("{b:02x}")).join(":");
    ns.ip(&["link", "set", TAP, "address", &peer_mac, "up"])
        .map_err(ns_err)?;
    let avio = ns
        .run(move || run_model(false, avio_frames, AVIO_FLOW))
        .map_err(ns_err)??;
    let vio = ns
        .run(move || run_model(true, vio_frames, VIO_FLOW))
        .map_err(ns_err)??;
    Ok((avio, vio))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_parse() {
        let mut f = vec![0u8; FRAME];
        frame(&mut f, DATA, 7, 16);
        // As the guest addresses it: to the peer, from the guest.
        f.copy_within(0..6, 6);
        f[0..6].copy_from_slice(&PEER_MAC);
        assert_eq!(parse(&f), Some((DATA, 7, 16)));
        f[6] ^= 1;
        assert_eq!(parse(&f), None, "frames from other senders are ignored");
    }

    #[test]
    fn checksum_depends_on_order_and_content() {
        let a = expected_checksum(2);
        let swapped = [1u32, 0].iter().fold(CHECKSUM_START, |s, &seq| {
            (0..(FRAME - DATA_OFF) / 8).fold(s, |s, j| fold(s, pattern(seq, j)))
        });
        assert_ne!(a, swapped);
        assert_ne!(a, expected_checksum(1));
    }
}
