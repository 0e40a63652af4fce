//! A TFTP client (RFC 1350, with the option extension of RFC 2347: blksize 2348, tsize
//! 2349) over a smoltcp UDP socket. Packets from the server are untrusted input.

use super::link::Stack;
use smoltcp::socket::udp;
use smoltcp::wire::IpEndpoint;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// The largest block that fits a 1500-byte MTU (1500 - 20 IP - 8 UDP - 4 TFTP).
pub const BLKSIZE: usize = 1468;
/// Retransmit after this long without an answer, this many times, then give up.
const RETRY: Duration = Duration::from_secs(1);
const TRIES: u32 = 5;

#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    Data {
        block: u16,
        data: &'a [u8],
    },
    Error {
        code: u16,
        msg: String,
    },
    Oack {
        blksize: Option<usize>,
        tsize: Option<u64>,
    },
}

/// A read request for `file` in octet mode, asking for BLKSIZE blocks and the file size.
pub fn rrq(file: &str) -> Vec<u8> {
    let mut p = vec![0, 1];
    for s in [file, "octet", "blksize", &BLKSIZE.to_string(), "tsize", "0"] {
        p.extend_from_slice(s.as_bytes());
        p.push(0);
    }
    p
}

pub fn ack(block: u16) -> [u8; 4] {
    let b = block.to_be_bytes();
    [0, 4, b[0], b[1]]
}

/// A packet from the server; requests (RRQ/WRQ/ACK) and garbage are errors.
pub fn parse(p: &[u8]) -> Result<Packet<'_>, String> {
    let (op, rest) = match p {
        [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]), rest),
        _ => return Err(format!("{}-byte packet", p.len())),
    };
    match op {
        3 if rest.len() >= 2 => Ok(Packet::Data {
            block: u16::from_be_bytes([rest[0], rest[1]]),
            data: &rest[2..],
        }),
        5 if rest.len() >= 2 => {
            let msg = rest[2..].split(|&b| b == 0).next().unwrap_or(&[]);
            Ok(Packet::Error {
                code: u16::from_be_bytes([rest[0], rest[1]]),
                msg: String::from_utf8_lossy(msg).into_owned(),
            })
        }
        6 => {
            let words: Vec<&[u8]> = rest.split(|&b| b == 0).collect();
            // NUL-terminated name/value pairs: the split leaves one empty tail.
            if words.len() % 2 != 1 || words.last() != Some(&&b""[..]) {
                return Err("OACK options are not NUL-terminated pairs".into());
            }
            let (mut blksize, mut tsize) = (None, None);
            for pair in words[..words.len() - 1].chunks(2) {
                let name = String::from_utf8_lossy(pair[0]).to_ascii_lowercase();
                let value = std::str::from_utf8(pair[1])
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok());
                match (name.as_str(), value) {
                    ("blksize", Some(v)) if (8..=BLKSIZE as u64).contains(&v) => {
                        blksize = Some(v as usize)
                    }
                    ("tsize", Some(v)) => tsize = Some(v),
                    ("blksize" | "tsize", _) => {
                        return Err(format!("OACK option {name} has a bad value"))
                    }
                    // RFC 2347: a server may only acknowledge what was asked for.
                    _ => return Err(format!("OACK has option {name:?} we did not ask for")),
                }
            }
            Ok(Packet::Oack { blksize, tsize })
        }
        _ => Err(format!("unexpected opcode {op}")),
    }
}

/// Downloads `file` from `server`, refusing more than `limit` bytes. Errors name the server
/// and file.
pub fn get(
    stack: &mut Stack,
    server: Ipv4Addr,
    file: &str,
    limit: usize,
) -> Result<Vec<u8>, String> {
    let sock = udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 64], vec![0; 64 * 1600]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8 * 1600]),
    );
    let h = stack.sockets.add(sock);
    let port = 49152 + (super::random_u64() % 16000) as u16;
    let r = transfer(stack, h, port, server, file, limit);
    stack.remove(h);
    r.map_err(|e| format!("TFTP {server} file {file:?}: {e}"))
}

fn transfer(
    stack: &mut Stack,
    h: smoltcp::iface::SocketHandle,
    port: u16,
    server: Ipv4Addr,
    file: &str,
    limit: usize,
) -> Result<Vec<u8>, String> {
    stack
        .sockets
        .get_mut::<udp::Socket>(h)
        .bind(port)
        .map_err(|e| format!("cannot bind UDP port {port}: {e}"))?;
    let mut last: Vec<u8> = rrq(file);
    // The server answers from a new port (its transfer id); until then, port 69.
    let mut peer = IpEndpoint::new(server.into(), 69);
    let mut locked = false;
    let (mut blksize, mut expect, mut data) = (512usize, 1u16, Vec::new());
    let mut tries = 0;
    let mut next_send = Instant::now();
    loop {
        if Instant::now() >= next_send {
            if tries == TRIES {
                return Err(format!(
                    "no answer after {TRIES} tries over {} s; is a TFTP server running there and reachable?",
                    (RETRY * TRIES).as_secs()
                ));
            }
            tries += 1;
            let _ = stack
                .sockets
                .get_mut::<udp::Socket>(h)
                .send_slice(&last, peer);
            next_send = Instant::now() + RETRY;
        }
        let got = stack.run_until(next_send, |s| {
            let sock = s.get_mut::<udp::Socket>(h);
            let mut buf = [0u8; BLKSIZE + 4];
            loop {
                let (n, meta) = sock.recv_slice(&mut buf).ok()?;
                let from = meta.endpoint;
                if from.addr != server.into() || (locked && from.port != peer.port) {
                    continue; // not our server, or a stale transfer: RFC 1350 says ignore
                }
                return Some((from, buf[..n].to_vec()));
            }
        });
        let Some((from, pkt)) = got else { continue };
        let pkt = parse(&pkt).map_err(|e| format!("bad packet from the server: {e}"))?;
        if !locked {
            locked = true;
            peer = from;
        }
        match pkt {
            Packet::Error { code, msg } => {
                return Err(format!(
                    "server error {code}: {msg}; check that the file exists in the TFTP root"
                ))
            }
            Packet::Oack { blksize: b, tsize } if expect == 1 && data.is_empty() => {
                if let Some(t) = tsize.filter(|&t| t > limit as u64) {
                    return Err(format!(
                        "{t} bytes (tsize) is more than the {limit} bytes this boot may still load"
                    ));
                }
                blksize = b.unwrap_or(512);
                last = ack(0).to_vec();
            }
            Packet::Oack { .. } => continue,
            Packet::Data { block, data: d } if block == expect => {
                if d.len() > blksize {
                    return Err(format!(
                        "block {block} is {} bytes, more than the block size {blksize}",
                        d.len()
                    ));
                }
                if d.len() > limit - data.len() {
                    return Err(format!(
                        "more than the {limit} bytes this boot may still load"
                    ));
                }
                data.extend_from_slice(d);
                last = ack(block).to_vec();
                if d.len() < blksize {
                    let sock = stack.sockets.get_mut::<udp::Socket>(h);
                    let _ = sock.send_slice(&last, peer);
                    // Let the final ACK leave before the socket goes.
                    stack.run_until(Instant::now(), |_| Some(()));
                    return Ok(data);
                }
                expect = expect.wrapping_add(1);
            }
            // A duplicate of an earlier block: our ACK was lost; the resend below repeats it.
            Packet::Data { .. } => {}
        }
        tries = 0;
        next_send = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets() {
        assert_eq!(
            rrq("a/b"),
            b"\0\x01a/b\0octet\0blksize\x001468\0tsize\x000\0".to_vec()
        );
        assert_eq!(ack(258), [0, 4, 1, 2]);
        assert_eq!(
            parse(b"\0\x03\0\x07xyz").unwrap(),
            Packet::Data {
                block: 7,
                data: b"xyz"
            }
        );
        assert_eq!(
            parse(b"\0\x05\0\x01File not found\0").unwrap(),
            Packet::Error {
                code: 1,
                msg: "File not found".into()
            }
        );
        assert_eq!(
            parse(b"\0\x06blksize\x001468\0tsize\x0099\0").unwrap(),
            Packet::Oack {
                blksize: Some(1468),
                tsize: Some(99)
            }
        );
        assert!(parse(b"\0\x06blksize\x0099999\0").is_err());
        assert!(parse(b"\0\x06foo\x001\0").is_err());
        assert!(parse(b"\0\x06blksize\x00512").is_err());
        assert!(parse(b"\0\x04\0\x01").is_err());
        assert!(parse(b"\0").is_err());
    }

    #[test]
    fn random_packets_never_panic() {
        let mut rng = crate::netboot::tests::Rng(77);
        let seeds: [&[u8]; 3] = [
            b"\0\x06blksize\x001468\0tsize\x0099\0",
            b"\0\x05\0\x01File not found\0",
            b"\0\x03\0\x07xyz",
        ];
        for i in 0..30_000 {
            let p = rng.mutate(seeds[i % 3], None);
            let _ = parse(&p);
        }
    }
}
