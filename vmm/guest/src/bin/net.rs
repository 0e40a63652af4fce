//! virtio-net through the tap: ARP for the peer (`peer=A.B.C.D`) from `ip=A.B.C.D`, then an
//! ICMP echo request and its reply; answers ARP requests for its own address meanwhile.
#![no_std]
#![no_main]

use rt::pci::{self, Bdf};
use rt::virtio::{Device, Queue, QueueMem, F_VERSION_1};
use rt::{boot, check, io, println};

rt::entry!(main);

const F_MAC: u64 = 1 << 5;
const HDR: usize = 12;
const NBUF: usize = 16;
const BUFSZ: usize = 2048;

#[repr(C, align(4096))]
struct Bufs([[u8; BUFSZ]; NBUF]);
static mut RX: Bufs = Bufs([[0; BUFSZ]; NBUF]);
static mut TX: [u8; BUFSZ] = [0; BUFSZ];
static mut QRX: QueueMem = QueueMem::new();
static mut QTX: QueueMem = QueueMem::new();

struct Nic {
    rx: Queue,
    tx: Queue,
    head_buf: [u8; rt::virtio::QSIZE],
}

fn ip(s: &str) -> [u8; 4] {
    let mut out = [0u8; 4];
    for (o, p) in out.iter_mut().zip(s.split('.')) {
        *o = p.parse().unwrap_or(0);
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
    fn post(&mut self, i: usize) {
        let rx = unsafe { &*core::ptr::addr_of!(RX) };
        let head = self
            .rx
            .push(&[(rx.0[i].as_ptr() as u64, BUFSZ as u32, true)]);
        self.head_buf[head as usize] = i as u8;
    }

    fn send(&mut self, frame: &[u8]) {
        let tx = unsafe { &mut *core::ptr::addr_of_mut!(TX) };
        tx[..HDR].fill(0);
        tx[HDR..HDR + frame.len()].copy_from_slice(frame);
        self.tx
            .push(&[(tx.as_ptr() as u64, (HDR + frame.len()) as u32, false)]);
        self.tx.notify();
        check!(self.tx.wait(1 << 32).is_some(), "transmit not completed");
    }

    /// Next received frame (without the virtio-net header) into `out`; None on timeout.
    fn recv(&mut self, out: &mut [u8; BUFSZ], deadline: u64) -> Option<usize> {
        loop {
            if let Some((head, len)) = self.rx.poll() {
                let i = self.head_buf[head as usize] as usize;
                let rx = unsafe { &*core::ptr::addr_of!(RX) };
                let n = (len as usize).saturating_sub(HDR).min(BUFSZ - HDR);
                out[..n].copy_from_slice(&rx.0[i][HDR..HDR + n]);
                self.post(i);
                self.rx.notify();
                return Some(n);
            }
            if io::rdtsc() > deadline {
                return None;
            }
            core::hint::spin_loop();
        }
    }
}

fn arp(
    op: u16,
    src_mac: [u8; 6],
    src_ip: [u8; 4],
    dst_mac: [u8; 6],
    dst_ip: [u8; 4],
    eth_dst: [u8; 6],
) -> [u8; 42] {
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
    let Some(&(bdf, _, _)) = found[..n]
        .iter()
        .find(|&&(_, v, d)| (v, d) == (0x1af4, 0x1041))
    else {
        check!(false, "no virtio-net device");
        return;
    };
    let mut dev = Device::probe(bdf).unwrap();
    let f = dev.init(F_VERSION_1 | F_MAC);
    check!(f == Some(F_VERSION_1 | F_MAC), "feature negotiation failed");
    let mut mac = [0u8; 6];
    for (i, m) in mac.iter_mut().enumerate() {
        *m = dev.config::<u8>(i as u64);
    }
    println!(
        "MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    );
    let rx = dev.setup_queue(0, unsafe { &mut *core::ptr::addr_of_mut!(QRX) }, 0xffff);
    let tx = dev.setup_queue(1, unsafe { &mut *core::ptr::addr_of_mut!(QTX) }, 0xffff);
    dev.driver_ok();
    let mut nic = Nic {
        rx,
        tx,
        head_buf: [0; rt::virtio::QSIZE],
    };
    nic.rx.suppress_interrupts(true);
    nic.tx.suppress_interrupts(true);
    for i in 0..NBUF {
        nic.post(i);
    }
    nic.rx.notify();

    let me = ip(boot::arg("ip").unwrap_or("10.77.0.2"));
    let peer = ip(boot::arg("peer").unwrap_or("10.77.0.1"));
    let deadline = io::rdtsc() + 20_000_000_000;
    let mut buf = [0u8; BUFSZ];

    // ARP: who has `peer`?
    nic.send(&arp(1, mac, me, [0; 6], peer, [0xff; 6]));
    let mut peer_mac = None;
    let mut echo_sent = false;
    let payload = *b"ignite guest program icmp echo!!";
    loop {
        let Some(len) = nic.recv(&mut buf, deadline) else {
            check!(
                false,
                "timed out (ARP reply {}, echo sent {})",
                peer_mac.is_some(),
                echo_sent
            );
            return;
        };
        let f = &buf[..len];
        if len < 14 {
            continue;
        }
        let ethertype = u16::from_be_bytes([f[12], f[13]]);
        if ethertype == 0x0806 && len >= 42 {
            let op = u16::from_be_bytes([f[20], f[21]]);
            if op == 1 && f[38..42] == me {
                // The peer asks for us: answer.
                let mut sha = [0u8; 6];
                sha.copy_from_slice(&f[22..28]);
                let mut spa = [0u8; 4];
                spa.copy_from_slice(&f[28..32]);
                nic.send(&arp(2, mac, me, sha, spa, sha));
            } else if op == 2 && f[28..32] == peer && peer_mac.is_none() {
                let mut m = [0u8; 6];
                m.copy_from_slice(&f[22..28]);
                println!(
                    "ARP reply: peer is at {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                    m[0], m[1], m[2], m[3], m[4], m[5]
                );
                peer_mac = Some(m);
            }
        } else if ethertype == 0x0800 && len >= 14 + 20 + 8 + 32 && f[23] == 1 && f[26..30] == peer
        {
            let icmp = &f[34..];
            if icmp[0] == 0 && icmp[4..8] == [0x12, 0x34, 0, 1] && icmp[8..40] == payload {
                println!(
                    "ICMP echo reply from {}.{}.{}.{}",
                    peer[0], peer[1], peer[2], peer[3]
                );
                return;
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
}
