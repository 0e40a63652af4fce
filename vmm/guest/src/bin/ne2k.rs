//! VIO NIC: the NE2000 (RTL8029) function through its I/O BAR. Checks ids, the I/O BAR, INTA,
//! reset (ISR.RST), the RTL8029 id bytes, the station-address PROM read by remote DMA (word
//! mode, `rep insw`), then sets up the receive ring and does ARP + ICMP echo with the peer
//! (the kernel of a test network namespace) through the tap: frames written to NIC memory
//! by remote DMA and sent with TRANS, received frames read from the ring (8390 header,
//! BNRY/CURR). The INTx line (IOAPIC input from config 0x3c) must interrupt on receive.
//! Args: `ip=A.B.C.D peer=A.B.C.D mac=52:54:...` (the MAC the PROM must hold).
#![no_std]
#![no_main]

use rt::io::{inb, insw, outb, outsw, rdtsc};
use rt::pci::{self, Bdf};
use rt::{boot, check, println};

rt::entry!(main);

const PSTART: u8 = 0x46;
const PSTOP: u8 = 0x80;
const TPSR: u8 = 0x40;
const ISR: u16 = 7;
const PRX: u8 = 0x01;
const PTX: u8 = 0x02;
const RDC: u8 = 0x40;
const RST: u8 = 0x80;

struct Nic {
    base: u16,
}

fn ip(s: &str) -> [u8; 4] {
    let mut out = [0u8; 4];
    for (o, p) in out.iter_mut().zip(s.split('.')) {
        *o = p.parse().unwrap_or(0);
    }
    out
}

fn parse_mac(s: &str) -> [u8; 6] {
    let mut out = [0u8; 6];
    for (o, p) in out.iter_mut().zip(s.split(':')) {
        *o = u8::from_str_radix(p, 16).unwrap_or(0);
    }
    out
}

fn csum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl Nic {
    fn r(&self, off: u16) -> u8 {
        inb(self.base + off)
    }
    fn w(&self, off: u16, v: u8) {
        outb(self.base + off, v)
    }
    fn wait_isr(&self, bit: u8) {
        let deadline = rdtsc() + 10_000_000_000;
        while self.r(ISR) & bit == 0 {
            check!(rdtsc() < deadline, "ISR bit {:#x} never set (ISR {:#x})", bit, self.r(ISR));
        }
        self.w(ISR, bit);
    }
    fn remote_read(&self, addr: u16, buf: &mut [u8]) {
        let n = (buf.len() + 1) & !1;
        self.w(0x0a, n as u8);
        self.w(0x0b, (n >> 8) as u8);
        self.w(0x08, addr as u8);
        self.w(0x09, (addr >> 8) as u8);
        self.w(0, 0x0a); // RREAD | START
        let mut tmp = [0u8; 1536];
        insw(self.base + 0x10, &mut tmp[..n]);
        buf.copy_from_slice(&tmp[..buf.len()]);
        self.wait_isr(RDC);
    }
    fn send(&self, frame: &[u8]) {
        let mut tmp = [0u8; 1536];
        tmp[..frame.len()].copy_from_slice(frame);
        let len = frame.len().max(60);
        let n = (len + 1) & !1;
        self.w(0x0a, n as u8);
        self.w(0x0b, (n >> 8) as u8);
        self.w(0x08, 0);
        self.w(0x09, TPSR);
        self.w(0, 0x12); // RWRITE | START
        outsw(self.base + 0x10, &tmp[..n]);
        self.wait_isr(RDC);
        self.w(0x04, TPSR);
        self.w(0x05, len as u8);
        self.w(0x06, (len >> 8) as u8);
        self.w(0, 0x26); // NODMA | TRANS | START
        self.wait_isr(PTX);
    }
    /// Next frame from the ring, if any.
    fn recv(&self, out: &mut [u8; 1536]) -> Option<usize> {
        self.w(0, 0x62); // page 1
        let curr = self.r(7);
        self.w(0, 0x22);
        let bnry = self.r(3);
        let mut next = bnry + 1;
        if next >= PSTOP {
            next = PSTART;
        }
        if next == curr {
            if self.r(ISR) & PRX != 0 {
                self.w(ISR, PRX);
            }
            return None;
        }
        let mut hdr = [0u8; 4];
        self.remote_read((next as u16) << 8, &mut hdr);
        let count = (u16::from_le_bytes([hdr[2], hdr[3]]) as usize).saturating_sub(4);
        check!(hdr[0] & 1 != 0 && count <= 1514, "bad receive header {:?}", hdr);
        self.remote_read(((next as u16) << 8) + 4, &mut out[..count]);
        let nb = if hdr[1] == PSTART { PSTOP - 1 } else { hdr[1] - 1 };
        self.w(3, nb);
        Some(count)
    }
}

fn arp(op: u16, src_mac: [u8; 6], src_ip: [u8; 4], dst_mac: [u8; 6], dst_ip: [u8; 4], eth_dst: [u8; 6]) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&eth_dst);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, op as u8]);
    f[22..28].copy_from_slice(&src_mac);
    f[28..32].copy_from_slice(&src_ip);
    f[32..38].copy_from_slice(&dst_mac);
    f[38..42].copy_from_slice(&dst_ip);
    f
}

fn main() {
    let mut found = [(Bdf { dev: 0, func: 0 }, 0u16, 0u16); 8];
    let n = pci::scan(&mut found);
    let Some(&(bdf, _, _)) = found[..n.min(8)]
        .iter()
        .find(|&&(_, v, d)| (v, d) == (0x10ec, 0x8029))
    else {
        check!(false, "no NE2000 (10ec:8029) on bus 0");
        return;
    };
    check!(pci::read32(bdf, 8) >> 16 == 0x0200, "class is not Ethernet");
    let (addr, size, is_mem) = pci::bar(bdf, 0);
    check!(!is_mem && size == 256, "BAR0 must be 256 bytes of I/O ({:#x}, {})", addr, size);
    check!(pci::read8(bdf, 0x3d) == 1, "interrupt pin must be INTA");
    let line = pci::read8(bdf, 0x3c);
    let nic = Nic { base: addr as u16 };

    let _ = nic.r(0x1f); // reset port
    check!(nic.r(ISR) & RST != 0, "no ISR.RST after reset");
    nic.w(0, 0x21); // page 0, stop, no DMA
    check!(nic.r(0x0a) == 0x50 && nic.r(0x0b) == 0x43, "RTL8029 id bytes");
    nic.w(0x0e, 0x49); // DCR: word transfers
    nic.w(0x0a, 0);
    nic.w(0x0b, 0);
    nic.w(0x0c, 0x20); // RCR: monitor while setting up
    nic.w(0x0d, 0x02); // TCR: loopback
    nic.w(ISR, 0xff);
    nic.w(0x0f, 0);
    nic.w(0, 0x22); // start (remote DMA needs it)
    let mut prom = [0u8; 32];
    nic.remote_read(0, &mut prom);
    nic.w(0, 0x21);
    let mut mac = [0u8; 6];
    for (i, m) in mac.iter_mut().enumerate() {
        *m = prom[2 * i];
    }
    let want = parse_mac(boot::arg("mac").unwrap_or("52:54:00:12:34:56"));
    check!(mac == want, "PROM MAC {:02x?} want {:02x?}", mac, want);
    check!(prom[28] == 0x57 && prom[30] == 0x57, "PROM signature 'WW' missing");
    nic.w(0x01, PSTART);
    nic.w(0x02, PSTOP);
    nic.w(0x03, PSTART);
    nic.w(0x04, TPSR);
    nic.w(0, 0x61); // page 1
    for (i, m) in mac.iter().enumerate() {
        nic.w(1 + i as u16, *m);
    }
    nic.w(7, PSTART + 1); // CURR
    for i in 0..8 {
        nic.w(8 + i, 0xff);
    }
    nic.w(0, 0x22); // page 0, start
    nic.w(0x0c, 0x04); // RCR: unicast to us + broadcast
    nic.w(0x0d, 0x00); // TCR: normal
    nic.w(ISR, 0xff);
    // INTA through the IOAPIC (edge-sensitive here so that the program's generic handler,
    // which does not clear the device, is not re-entered while the level line stays high).
    rt::ata::ioapic_route(line, rt::start::IRQ_BASE);
    nic.w(0x0f, PRX); // IMR

    let me = ip(boot::arg("ip").unwrap_or("10.77.0.2"));
    let peer = ip(boot::arg("peer").unwrap_or("10.77.0.1"));
    let deadline = rdtsc() + 20_000_000_000;
    let mut buf = [0u8; 1536];
    nic.send(&arp(1, mac, me, [0; 6], peer, [0xff; 6]));
    let mut peer_mac = None;
    let mut echo_sent = false;
    let payload = *b"ignite guest program icmp echo!!";
    loop {
        let Some(len) = nic.recv(&mut buf) else {
            check!(
                rdtsc() < deadline,
                "timed out (ARP reply {}, echo sent {})",
                peer_mac.is_some(),
                echo_sent
            );
            core::hint::spin_loop();
            continue;
        };
        let f = &buf[..len];
        if len < 14 {
            continue;
        }
        let ethertype = u16::from_be_bytes([f[12], f[13]]);
        if ethertype == 0x0806 && len >= 42 {
            let op = u16::from_be_bytes([f[20], f[21]]);
            if op == 1 && f[38..42] == me {
                let mut sha = [0u8; 6];
                sha.copy_from_slice(&f[22..28]);
                let mut spa = [0u8; 4];
                spa.copy_from_slice(&f[28..32]);
                nic.send(&arp(2, mac, me, sha, spa, sha));
            } else if op == 2 && f[28..32] == peer && peer_mac.is_none() {
                let mut m = [0u8; 6];
                m.copy_from_slice(&f[22..28]);
                println!("ARP reply: peer is at {:02x?}", m);
                peer_mac = Some(m);
            }
        } else if ethertype == 0x0800 && len >= 14 + 20 + 8 + 32 && f[23] == 1 && f[26..30] == peer {
            let icmp = &f[34..];
            if icmp[0] == 0 && icmp[4..8] == [0x12, 0x34, 0, 1] && icmp[8..40] == payload {
                println!("ICMP echo reply from {}.{}.{}.{}", peer[0], peer[1], peer[2], peer[3]);
                break;
            }
        }
        if let (Some(pm), false) = (peer_mac, echo_sent) {
            let mut p = [0u8; 14 + 20 + 8 + 32];
            p[0..6].copy_from_slice(&pm);
            p[6..12].copy_from_slice(&mac);
            p[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
            let ipv4 = &mut p[14..34];
            ipv4[0] = 0x45;
            ipv4[2..4].copy_from_slice(&60u16.to_be_bytes());
            ipv4[4..6].copy_from_slice(&1u16.to_be_bytes());
            ipv4[6] = 0x40;
            ipv4[8] = 64;
            ipv4[9] = 1;
            ipv4[12..16].copy_from_slice(&me);
            ipv4[16..20].copy_from_slice(&peer);
            let c = csum(ipv4);
            ipv4[10..12].copy_from_slice(&c.to_be_bytes());
            let icmp = &mut p[34..];
            icmp[0] = 8;
            icmp[4..8].copy_from_slice(&[0x12, 0x34, 0, 1]);
            icmp[8..40].copy_from_slice(&payload);
            let c = csum(icmp);
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            nic.send(&p);
            echo_sent = true;
        }
    }
    check!(rt::irq_count(0) > 0, "no receive interrupt through INTA (IOAPIC input {})", line);
    println!("ne2k: {} interrupts", rt::irq_count(0));
}
