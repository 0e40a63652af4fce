//! Bulk frame transfer with a host peer, for the network benchmark: full-size frames of
//! ethertype 0x88b5 (IEEE local experimental) with a small header, flow-controlled by a
//! window of unacknowledged frames so that nothing is lost in the tap or the NIC (a lost
//! or reordered frame fails the run). The payload is a pattern both sides can compute; each
//! receiver folds what arrived into a checksum that the host compares with the sender's.
//!
//! Frame: destination, source, ethertype; kind (u32 LE), number (u32 LE), window (u32 LE);
//! data (DATA only, to a full 1514-byte frame). Kinds: DATA (number = sequence from 0), ACK (number =
//! frames received in order so far), SEND_TO_ME (number = frames wanted, with a window).

use crate::eth::{Nic, MAX_FRAME};
use crate::io::outl;
use crate::{check, MARK_PORT};

pub const ETHERTYPE: u16 = 0x88b5;
pub const DATA: u32 = 1;
pub const ACK: u32 = 2;
pub const SEND_TO_ME: u32 = 3;
const DATA_OFF: usize = 14 + 12;
/// The data is folded in 64-bit words.
const _: () = assert!((MAX_FRAME - DATA_OFF) % 8 == 0);
const CHECKSUM_START: u64 = 0xcbf2_9ce4_8422_2325;

/// Word `j` of frame `seq`'s data.
fn pattern(seq: u32, j: usize) -> u64 {
    ((seq as u64) << 32 | j as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// FNV-1a over 64-bit little-endian words.
fn fold(sum: u64, word: u64) -> u64 {
    (sum ^ word).wrapping_mul(0x100_0000_01b3)
}

pub struct Params {
    pub peer: [u8; 6],
    pub frames: u32,
    /// Frames a sender may have unacknowledged.
    pub window: u32,
    /// The receiver acknowledges every `ack_every` frames (and the last).
    pub ack_every: u32,
}

fn header(f: &mut [u8], dst: [u8; 6], src: [u8; 6], kind: u32, number: u32, window: u32) {
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    f[14..18].copy_from_slice(&kind.to_le_bytes());
    f[18..22].copy_from_slice(&number.to_le_bytes());
    f[22..26].copy_from_slice(&window.to_le_bytes());
}

/// (kind, number) of a bench frame addressed to `me`.
fn parse(f: &[u8], me: [u8; 6]) -> Option<(u32, u32)> {
    if f.len() < DATA_OFF || f[0..6] != me || f[12..14] != ETHERTYPE.to_be_bytes() {
        return None;
    }
    let word = |i: usize| u32::from_le_bytes([f[i], f[i + 1], f[i + 2], f[i + 3]]);
    Some((word(14), word(18)))
}

fn control(nic: &mut impl Nic, p: &Params, kind: u32, number: u32) {
    let me = nic.mac();
    nic.send(60, |f| {
        f.fill(0);
        header(f, p.peer, me, kind, number, p.window);
    });
    nic.flush();
}

/// Sends `p.frames` DATA frames as fast as the window allows, between marks 51 and 52 (the
/// second after the peer acknowledged the last). Returns the checksum of the data sent.
pub fn send(nic: &mut impl Nic, p: &Params) -> u64 {
    let me = nic.mac();
    let (mut sent, mut acked, mut sum) = (0u32, 0u32, CHECKSUM_START);
    outl(MARK_PORT, 51);
    while acked < p.frames {
        let seen = crate::irq_count(0);
        let mut busy = false;
        while sent < p.frames && sent - acked < p.window {
            nic.send(MAX_FRAME, |f| {
                header(f, p.peer, me, DATA, sent, 0);
                for (j, w) in f[DATA_OFF..].chunks_exact_mut(8).enumerate() {
                    let v = pattern(sent, j);
                    w.copy_from_slice(&v.to_le_bytes());
                    sum = fold(sum, v);
                }
            });
            sent += 1;
            busy = true;
        }
        nic.flush();
        while let Some(ack) = nic.recv(|f| parse(f, me)) {
            if let Some((ACK, n)) = ack {
                check!(n <= sent, "peer acknowledged {} frames of {} sent", n, sent);
                acked = acked.max(n);
            }
            busy = true;
        }
        if !busy {
            nic.idle(seen);
        }
    }
    outl(MARK_PORT, 52);
    sum
}

/// Asks the peer for `p.frames` DATA frames and takes them in order, acknowledging every
/// `p.ack_every`, between marks 61 and 62. Returns the checksum of the data received.
pub fn receive(nic: &mut impl Nic, p: &Params) -> u64 {
    let me = nic.mac();
    let (mut got, mut acked, mut sum) = (0u32, 0u32, CHECKSUM_START);
    outl(MARK_PORT, 61);
    control(nic, p, SEND_TO_ME, p.frames);
    while got < p.frames {
        let seen = crate::irq_count(0);
        let mut busy = false;
        while let Some(seq) = nic.recv(|f| match parse(f, me) {
            Some((DATA, seq)) if seq == got && f.len() == MAX_FRAME => {
                for w in f[DATA_OFF..].chunks_exact(8) {
                    sum = fold(sum, u64::from_le_bytes(w.try_into().unwrap_or_default()));
                }
                Some(seq)
            }
            Some((DATA, seq)) => {
                check!(
                    false,
                    "DATA frame {} ({} bytes) where {} was due",
                    seq,
                    f.len(),
                    got
                );
                None
            }
            _ => None,
        }) {
            busy = true;
            if seq.is_some() {
                got += 1;
                if got - acked >= p.ack_every || got == p.frames {
                    control(nic, p, ACK, got);
                    acked = got;
                }
            }
        }
        if !busy {
            nic.idle(seen);
        }
    }
    outl(MARK_PORT, 62);
    sum
}
