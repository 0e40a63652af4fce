//! Ethernet for guest test programs, whatever the NIC: the `Nic` trait its drivers implement,
//! address parsing, and ARP + ICMP echo with a peer (`ping`).

use crate::io::rdtsc;
use crate::{check, println};

/// Largest Ethernet frame without FCS.
pub const MAX_FRAME: usize = 1514;

/// What a NIC driver offers the programs.
pub trait Nic {
    fn mac(&self) -> [u8; 6];
    /// Queues a frame of `len` bytes built in place by `fill`; it leaves at the latest on
    /// `flush` (a driver may batch frames into one doorbell).
    fn send(&mut self, len: usize, fill: impl FnOnce(&mut [u8]));
    fn flush(&mut self);
    /// Hands the next received frame to `f` in place; None when no frame is waiting.
    fn recv<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<R>;
    /// Nothing to do: sleeps until the receive interrupt unless one came since `irq_count(0)`
    /// returned `seen` or a frame is already waiting.
    fn idle(&mut self, seen: u64);
}

pub fn ip(s: &str) -> [u8; 4] {
    let mut out = [0u8; 4];
    for (o, p) in out.iter_mut().zip(s.split('.')) {
        *o = p.parse().unwrap_or(0);
    }
    out
}

pub fn mac(s: &str) -> [u8; 6] {
    let mut out = [0u8; 6];
    for (o, p) in out.iter_mut().zip(s.split(':')) {
        *o = u8::from_str_radix(p, 16).unwrap_or(0);
    }
    out
}

/// Internet checksum (RFC 1071).
pub fn csum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn arp(op: u8, src: ([u8; 6], [u8; 4]), dst: ([u8; 6], [u8; 4]), eth_dst: [u8; 6]) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&eth_dst);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, op]);
    f[22..28].copy_from_slice(&src.0);
    f[28..32].copy_from_slice(&src.1);
    f[32..38].copy_from_slice(&dst.0);
    f[38..42].copy_from_slice(&dst.1);
    f
}

const ECHO_ID: [u8; 4] = [0x12, 0x34, 0, 1];
const ECHO_PAYLOAD: &[u8; 32] = b"ignite guest program icmp echo!!";

fn echo_request(src: ([u8; 6], [u8; 4]), dst: ([u8; 6], [u8; 4])) -> [u8; 74] {
    let mut p = [0u8; 14 + 20 + 8 + 32];
    p[0..6].copy_from_slice(&dst.0);
    p[6..12].copy_from_slice(&src.0);
    p[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ipv4 = &mut p[14..34];
    ipv4[0] = 0x45;
    ipv4[2..4].copy_from_slice(&60u16.to_be_bytes());
    ipv4[4..6].copy_from_slice(&1u16.to_be_bytes());
    ipv4[6] = 0x40;
    ipv4[8] = 64;
    ipv4[9] = 1;
    ipv4[12..16].copy_from_slice(&src.1);
    ipv4[16..20].copy_from_slice(&dst.1);
    let c = csum(ipv4);
    ipv4[10..12].copy_from_slice(&c.to_be_bytes());
    let icmp = &mut p[34..];
    icmp[0] = 8;
    icmp[4..8].copy_from_slice(&ECHO_ID);
    icmp[8..40].copy_from_slice(ECHO_PAYLOAD);
    let c = csum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

fn send_bytes(nic: &mut impl Nic, frame: &[u8]) {
    nic.send(frame.len(), |b| b.copy_from_slice(frame));
    nic.flush();
}

/// What one received frame meant to `ping`.
enum Seen {
    Nothing,
    ArpRequest([u8; 6], [u8; 4]),
    ArpReply([u8; 6]),
    EchoReply,
}

fn classify(f: &[u8], me: [u8; 4], peer: [u8; 4]) -> Seen {
    if f.len() < 14 {
        return Seen::Nothing;
    }
    let ethertype = u16::from_be_bytes([f[12], f[13]]);
    if ethertype == 0x0806 && f.len() >= 42 {
        let (mut sha, mut spa) = ([0u8; 6], [0u8; 4]);
        sha.copy_from_slice(&f[22..28]);
        spa.copy_from_slice(&f[28..32]);
        match f[21] {
            1 if f[38..42] == me => return Seen::ArpRequest(sha, spa),
            2 if spa == peer => return Seen::ArpReply(sha),
            _ => {}
        }
    } else if ethertype == 0x0800 && f.len() >= 74 && f[23] == 1 && f[26..30] == peer {
        let icmp = &f[34..];
        if icmp[0] == 0 && icmp[4..8] == ECHO_ID && icmp[8..40] == ECHO_PAYLOAD[..] {
            return Seen::EchoReply;
        }
    }
    Seen::Nothing
}

/// ARP for `peer` from `me`, then one ICMP echo request and its reply, answering ARP requests
/// for `me` meanwhile. Fails the program after about 20 G TSC cycles.
pub fn ping(nic: &mut impl Nic, me: [u8; 4], peer: [u8; 4]) {
    let mac = nic.mac();
    let deadline = rdtsc() + 20_000_000_000;
    send_bytes(nic, &arp(1, (mac, me), ([0; 6], peer), [0xff; 6]));
    let mut peer_mac = None;
    let mut echo_sent = false;
    loop {
        let Some(seen) = nic.recv(|f| classify(f, me, peer)) else {
            check!(
                rdtsc() < deadline,
                "timed out (ARP reply {}, echo sent {})",
                peer_mac.is_some(),
                echo_sent
            );
            core::hint::spin_loop();
            continue;
        };
        match seen {
            Seen::ArpRequest(sha, spa) => send_bytes(nic, &arp(2, (mac, me), (sha, spa), sha)),
            Seen::ArpReply(m) if peer_mac.is_none() => {
                println!(
                    "ARP reply: peer is at {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                    m[0], m[1], m[2], m[3], m[4], m[5]
                );
                peer_mac = Some(m);
            }
            Seen::EchoReply => {
                println!(
                    "ICMP echo reply from {}.{}.{}.{}",
                    peer[0], peer[1], peer[2], peer[3]
                );
                return;
            }
            _ => {}
        }
        if let (Some(pm), false) = (peer_mac, echo_sent) {
            send_bytes(nic, &echo_request((mac, me), (pm, peer)));
            echo_sent = true;
        }
    }
}
