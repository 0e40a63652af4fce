//! NE2000-compatible NIC as `ne2k-pci` sees it: RTL8029 (PCI 10ec:8029) with a 256-byte I/O
//! BAR holding the DP8390 registers (pages 0–2), the remote-DMA data port (0x10) and the reset
//! port (0x1f); 48 KiB of NIC memory (station-address PROM at 0, packet RAM 16–48 KiB),
//! receive ring between PSTART and PSTOP with the 4-byte 8390 header, transmit from TPSR,
//! ISR/IMR and a level-triggered INTx line (asserted while ISR & IMR has a bit set). Frames go
//! to and come from the same tap backend as virtio-net (its 12-byte virtio-net header is
//! added and stripped here).

use crate::config::NetConfig;
use crate::error::Result;
use crate::pci::config::{BarKind, Ids, PciConfig};
use crate::pci::PciDevice;
use crate::virtio::tap::{Tap, VNET_HDR_LEN};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub const MEM_SIZE: usize = 48 << 10;
const PMEM_START: usize = 16 << 10;
/// Largest Ethernet frame accepted from the tap (no FCS).
const MAX_FRAME: usize = 1514;

pub const CR_STOP: u8 = 0x01;
pub const CR_START: u8 = 0x02;
pub const CR_TRANS: u8 = 0x04;
pub const CR_RREAD: u8 = 0x08;
pub const CR_RWRITE: u8 = 0x10;
pub const CR_NODMA: u8 = 0x20;

pub const ISR_PRX: u8 = 0x01;
pub const ISR_PTX: u8 = 0x02;
pub const ISR_RDC: u8 = 0x40;
pub const ISR_RST: u8 = 0x80;

const RCR_AB: u8 = 0x04;
const RCR_AM: u8 = 0x08;
const RCR_PRO: u8 = 0x10;

/// Where the device sends frames and how it drives its interrupt line.
pub trait NicBackend: Send + Sync {
    fn send(&self, frame: &[u8]);
    fn set_irq(&self, level: bool);
}

/// The 8390 core with NE2000 memory.
pub struct Ne2k {
    pub mac: [u8; 6],
    cmd: u8,
    start: usize,
    stop: usize,
    boundary: u8,
    tpsr: u8,
    tcnt: u16,
    isr: u8,
    rsar: u16,
    rcnt: u16,
    rcr: u8,
    tcr: u8,
    dcr: u8,
    imr: u8,
    tsr: u8,
    rsr: u8,
    phys: [u8; 6],
    curpag: u8,
    mult: [u8; 8],
    pub mem: Vec<u8>,
    irq_level: bool,
    backend: Arc<dyn NicBackend>,
    /// Frames sent and received (tests, benchmarks).
    pub tx_frames: u64,
    pub rx_frames: u64,
}

impl Ne2k {
    pub fn new(mac: [u8; 6], backend: Arc<dyn NicBackend>) -> Ne2k {
        let mut n = Ne2k {
            mac,
            cmd: CR_STOP | CR_NODMA,
            start: 0,
            stop: 0,
            boundary: 0,
            tpsr: 0,
            tcnt: 0,
            isr: 0,
            rsar: 0,
            rcnt: 0,
            rcr: 0,
            tcr: 0,
            dcr: 0,
            imr: 0,
            tsr: 0,
            rsr: 0,
            phys: [0; 6],
            curpag: 0,
            mult: [0; 8],
            mem: vec![0; MEM_SIZE],
            irq_level: false,
            backend,
            tx_frames: 0,
            rx_frames: 0,
        };
        n.reset();
        n
    }

    /// Reset (power on, or a read of the reset port): station-address PROM, ISR.RST.
    fn reset(&mut self) {
        self.isr = ISR_RST;
        self.cmd = CR_STOP | CR_NODMA;
        // PROM: the MAC, then 'W' 'W' at 14/15 (NE2000 signature), each byte doubled so that
        // word-mode reads see it in both halves.
        let mut prom = [0u8; 16];
        prom[..6].copy_from_slice(&self.mac);
        prom[14] = 0x57;
        prom[15] = 0x57;
        for (i, b) in prom.iter().enumerate() {
            self.mem[2 * i] = *b;
            self.mem[2 * i + 1] = *b;
        }
        self.update_irq();
    }

    fn update_irq(&mut self) {
        let level = self.isr & self.imr & 0x7f != 0;
        if level != self.irq_level {
            self.irq_level = level;
            self.backend.set_irq(level);
        }
    }

    pub fn irq_level(&self) -> bool {
        self.irq_level
    }

    /// `page` as a ring address: pages outside PSTART..PSTOP (the driver may write anything
    /// to CURR and BNRY) count as PSTART, where `receive` stores the next frame then.
    fn ring_addr(&self, page: u8) -> usize {
        let a = (page as usize) << 8;
        if (self.start..self.stop).contains(&a) {
            a
        } else {
            self.start
        }
    }

    /// Can a frame of up to MAX_FRAME bytes be stored in the receive ring now?
    pub fn can_receive(&self) -> bool {
        if self.cmd & CR_STOP != 0 || self.stop <= self.start || self.stop > MEM_SIZE {
            return false;
        }
        let index = self.ring_addr(self.curpag);
        let boundary = self.ring_addr(self.boundary);
        let avail = if index < boundary {
            boundary - index
        } else {
            (self.stop - self.start) - (index - boundary)
        };
        avail >= MAX_FRAME + 4 + 256
    }

    fn accepts(&self, f: &[u8]) -> bool {
        if self.rcr & RCR_PRO != 0 {
            return true;
        }
        if f[..6] == [0xff; 6] {
            return self.rcr & RCR_AB != 0;
        }
        if f[0] & 1 != 0 {
            return self.rcr & RCR_AM != 0;
        }
        f[..6] == self.phys
    }

    /// Stores a received frame in the ring (false: dropped — stopped, full or filtered).
    pub fn receive(&mut self, frame: &[u8]) -> bool {
        if frame.len() < 6 || frame.len() > MAX_FRAME || !self.can_receive() || !self.accepts(frame)
        {
            return false;
        }
        let mut padded = [0u8; 60];
        let buf = if frame.len() < 60 {
            padded[..frame.len()].copy_from_slice(frame);
            &padded[..]
        } else {
            frame
        };
        let mut index = self.ring_addr(self.curpag);
        let total = buf.len() + 4;
        let mut next = index + ((total + 4 + 255) & !0xff);
        if next >= self.stop {
            next -= self.stop - self.start;
        }
        self.rsr = 0x01 | if buf[0] & 1 != 0 { 0x20 } else { 0 };
        self.mem[index] = self.rsr;
        self.mem[index + 1] = (next >> 8) as u8;
        self.mem[index + 2] = total as u8;
        self.mem[index + 3] = (total >> 8) as u8;
        index += 4;
        let mut rest = buf;
        while !rest.is_empty() {
            if index >= self.stop {
                index = self.start;
            }
            let n = rest.len().min(self.stop - index);
            self.mem[index..index + n].copy_from_slice(&rest[..n]);
            index += n;
            rest = &rest[n..];
        }
        self.curpag = (next >> 8) as u8;
        self.rx_frames += 1;
        self.isr |= ISR_PRX;
        self.update_irq();
        true
    }

    fn transmit(&mut self) {
        let start = (self.tpsr as usize) << 8;
        let len = (self.tcnt as usize).min(MAX_FRAME);
        if start >= PMEM_START && start + len <= MEM_SIZE && len >= 14 {
            let f = self.mem[start..start + len].to_vec();
            self.backend.send(&f);
            self.tx_frames += 1;
        }
        self.tsr = 0x01; // PTX
        self.isr |= ISR_PTX;
        self.cmd &= !CR_TRANS;
        self.update_irq();
    }

    fn page(&self) -> u8 {
        self.cmd >> 6
    }

    pub fn reg_write(&mut self, off: u8, v: u8) {
        if off == 0 {
            self.cmd = v;
            if v & CR_STOP == 0 {
                self.isr &= !ISR_RST;
                if v & (CR_RREAD | CR_RWRITE) != 0 && self.rcnt == 0 {
                    self.isr |= ISR_RDC;
                    self.update_irq();
                }
                if v & CR_TRANS != 0 {
                    self.transmit();
                }
            }
            return;
        }
        match (self.page(), off) {
            (0, 0x01) => self.start = (v as usize) << 8,
            (0, 0x02) => self.stop = (v as usize) << 8,
            (0, 0x03) => self.boundary = v,
            (0, 0x04) => self.tpsr = v,
            (0, 0x05) => self.tcnt = (self.tcnt & 0xff00) | v as u16,
            (0, 0x06) => self.tcnt = (self.tcnt & 0x00ff) | (v as u16) << 8,
            (0, 0x07) => {
                self.isr &= !(v & 0x7f);
                self.update_irq();
            }
            (0, 0x08) => self.rsar = (self.rsar & 0xff00) | v as u16,
            (0, 0x09) => self.rsar = (self.rsar & 0x00ff) | (v as u16) << 8,
            (0, 0x0a) => self.rcnt = (self.rcnt & 0xff00) | v as u16,
            (0, 0x0b) => self.rcnt = (self.rcnt & 0x00ff) | (v as u16) << 8,
            (0, 0x0c) => self.rcr = v,
            (0, 0x0d) => self.tcr = v,
            (0, 0x0e) => self.dcr = v,
            (0, 0x0f) => {
                self.imr = v;
                self.update_irq();
            }
            (1, 0x01..=0x06) => self.phys[off as usize - 1] = v,
            (1, 0x07) => self.curpag = v,
            (1, 0x08..=0x0f) => self.mult[off as usize - 8] = v,
            _ => {}
        }
    }

    pub fn reg_read(&mut self, off: u8) -> u8 {
        if off == 0 {
            return self.cmd;
        }
        match (self.page(), off) {
            (0, 0x01) => (self.rsar & 0xff) as u8, // CLDA0 (approximation)
            (0, 0x03) => self.boundary,
            (0, 0x04) => self.tsr,
            (0, 0x07) => self.isr,
            (0, 0x08) => self.rsar as u8,
            (0, 0x09) => (self.rsar >> 8) as u8,
            (0, 0x0a) => 0x50, // RTL8029 id 'P'
            (0, 0x0b) => 0x43, // 'C'
            (0, 0x0c) => self.rsr,
            (0, 0x0d..=0x0f) => 0, // tally counters
            (1, 0x01..=0x06) => self.phys[off as usize - 1],
            (1, 0x07) => self.curpag,
            (1, 0x08..=0x0f) => self.mult[off as usize - 8],
            (2, 0x01) => (self.start >> 8) as u8,
            (2, 0x02) => (self.stop >> 8) as u8,
            (2, 0x04) => self.tpsr,
            (2, 0x0c) => self.rcr,
            (2, 0x0d) => self.tcr,
            (2, 0x0e) => self.dcr,
            (2, 0x0f) => self.imr,
            _ => 0,
        }
    }

    /// Advances the remote DMA by `n` bytes (wrapping PSTOP → PSTART); RDC when done.
    fn dma_advance(&mut self, n: u16) {
        self.rsar = self.rsar.wrapping_add(n);
        if self.stop > self.start && self.rsar as usize == self.stop {
            self.rsar = self.start as u16;
        }
        if self.rcnt <= n {
            self.rcnt = 0;
            self.isr |= ISR_RDC;
            self.update_irq();
        } else {
            self.rcnt -= n;
        }
    }

    fn mem_index(&self, a: u16) -> Option<usize> {
        let a = a as usize;
        (a < 32 || (PMEM_START..MEM_SIZE).contains(&a)).then_some(a)
    }

    /// Bytes of NIC memory one data-port access of `len` bytes moves over: in word mode
    /// (DCR.WTS) at least a word, as on the card, where a byte access to the data port still
    /// transfers a word (`ne2k-pci` reads the PROM with `inb` in word mode).
    fn span(&self, len: usize) -> usize {
        if self.dcr & 1 != 0 {
            len.max(2)
        } else {
            len
        }
    }

    /// Data port read: `data` holds `data.len() / size` accesses of `size` bytes (a whole
    /// `rep insw` exit at once).
    pub fn data_read(&mut self, size: usize, data: &mut [u8]) {
        for elem in data.chunks_mut(size.clamp(1, 4)) {
            for (i, b) in elem.iter_mut().enumerate() {
                *b = self
                    .mem_index(self.rsar.wrapping_add(i as u16))
                    .map_or(0xff, |a| self.mem[a]);
            }
            let span = self.span(elem.len());
            self.dma_advance(span as u16);
        }
    }

    /// Data port write; a byte access in word mode writes a word with a zero high byte.
    pub fn data_write(&mut self, size: usize, data: &[u8]) {
        for elem in data.chunks(size.clamp(1, 4)) {
            let span = self.span(elem.len());
            for i in 0..span {
                if let Some(a) = self.mem_index(self.rsar.wrapping_add(i as u16)) {
                    if a >= PMEM_START {
                        self.mem[a] = elem.get(i).copied().unwrap_or(0);
                    }
                }
            }
            self.dma_advance(span as u16);
        }
    }

    /// Access to the I/O BAR at `off` of width `size` (1, 2, 4); `data` holds one access or a
    /// whole string-I/O exit of any length. A wide access to the registers covers the
    /// following ones (wrapping within the 16).
    pub fn io_read(&mut self, off: u64, size: usize, data: &mut [u8]) {
        match off {
            0x00..=0x0f => {
                for elem in data.chunks_mut(size.clamp(1, 4)) {
                    for (i, b) in elem.iter_mut().enumerate() {
                        *b = self.reg_read(reg_at(off, i));
                    }
                }
            }
            0x10..=0x17 => self.data_read(size, data),
            0x18..=0x1f => {
                self.reset();
                data.fill(0);
            }
            _ => data.fill(0xff),
        }
    }

    pub fn io_write(&mut self, off: u64, size: usize, data: &[u8]) {
        match off {
            0x00..=0x0f => {
                for elem in data.chunks(size.clamp(1, 4)) {
                    for (i, b) in elem.iter().enumerate() {
                        self.reg_write(reg_at(off, i), *b);
                    }
                }
            }
            0x10..=0x17 => self.data_write(size, data),
            _ => {}
        }
    }
}

/// Register `i` bytes after register `off` (< 16), wrapping within the 16 registers.
fn reg_at(off: u64, i: usize) -> u8 {
    ((off as usize).wrapping_add(i) & 0x0f) as u8
}

/// The tap side: frames out with a zeroed virtio-net header; INTx through a line setter.
pub struct TapBackend {
    pub tap: Arc<Tap>,
    pub line: Box<dyn Fn(bool) + Send + Sync>,
}

impl NicBackend for TapBackend {
    fn send(&self, frame: &[u8]) {
        let mut b = vec![0u8; VNET_HDR_LEN + frame.len()];
        b[VNET_HDR_LEN..].copy_from_slice(frame);
        if let Err(e) = self.tap.write(&b) {
            tracing::debug!(error = %e, "ne2k: tap write");
        }
    }
    fn set_irq(&self, level: bool) {
        (self.line)(level)
    }
}

/// The PCI function: RTL8029 with the 8390 behind BAR0 (I/O, 256 bytes), INTA.
pub struct Ne2kPci {
    config: PciConfig,
    pub nic: Arc<Mutex<Ne2k>>,
    rx: Option<RxThread>,
}

struct RxThread {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for RxThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Ne2kPci {
    /// `io_base`: where BAR0 is placed (as firmware would have); `gsi`: the IOAPIC input the
    /// INTA line is wired to; `line` drives it.
    pub fn new(
        cfg: &NetConfig,
        io_base: u16,
        gsi: u8,
        line: Box<dyn Fn(bool) + Send + Sync>,
    ) -> Result<Ne2kPci> {
        let tap = Arc::new(Tap::from_backend(&cfg.backend)?);
        let backend = Arc::new(TapBackend {
            tap: tap.clone(),
            line,
        });
        let nic = Arc::new(Mutex::new(Ne2k::new(cfg.mac, backend)));
        let mut config = PciConfig::new(Ids {
            vendor: 0x10ec,
            device: 0x8029,
            class: 0x02,
            subclass: 0x00,
            prog_if: 0,
            revision: 0,
            subsystem_vendor: 0x10ec,
            subsystem: 0x8029,
        });
        config.add_bar(0, 256, BarKind::Io, io_base as u64);
        config.bytes_mut()[0x3c] = gsi;
        config.bytes_mut()[0x3d] = 1; // INTA
        config.set16(0x04, 0x0001);
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let (nic, stop, tap) = (nic.clone(), stop.clone(), tap.clone());
            std::thread::Builder::new()
                .name("ne2k-rx".into())
                .spawn(move || rx_loop(&tap, &nic, &stop))?
        };
        Ok(Ne2kPci {
            config,
            nic,
            rx: Some(RxThread {
                stop,
                handle: Some(handle),
            }),
        })
    }
}

impl Drop for Ne2kPci {
    fn drop(&mut self) {
        self.rx.take();
    }
}

/// Moves frames from the tap into the receive ring while there is room; a full ring leaves
/// frames queued in the tap (the kernel drops beyond its queue), as a real NIC drops.
fn rx_loop(tap: &Tap, nic: &Mutex<Ne2k>, stop: &AtomicBool) {
    use std::os::fd::AsRawFd;
    let mut buf = vec![0u8; VNET_HDR_LEN + 65536];
    while !stop.load(Ordering::Relaxed) {
        let room = nic.lock().unwrap_or_else(|e| e.into_inner()).can_receive();
        if !room {
            std::thread::sleep(std::time::Duration::from_micros(200));
            continue;
        }
        let mut pfd = libc::pollfd {
            fd: tap.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 50) } <= 0 {
            continue;
        }
        match tap.read(&mut buf) {
            Ok(n) if n > VNET_HDR_LEN => {
                let mut g = nic.lock().unwrap_or_else(|e| e.into_inner());
                g.receive(&buf[VNET_HDR_LEN..n]);
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                tracing::warn!(error = %e, "ne2k: tap read failed; receive stopped");
                return;
            }
        }
    }
}

impl PciDevice for Ne2kPci {
    fn config(&self) -> &PciConfig {
        &self.config
    }
    fn config_write(&mut self, reg: usize, offset: usize, data: &[u8]) {
        self.config.write(reg, offset, data)
    }
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        self.io_read(bar, offset, data.len().clamp(1, 4), data)
    }
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        self.io_write(bar, offset, data.len().clamp(1, 4), data)
    }
    fn io_read(&mut self, _: usize, offset: u64, size: usize, data: &mut [u8]) {
        self.nic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .io_read(offset, size, data)
    }
    fn io_write(&mut self, _: usize, offset: u64, size: usize, data: &[u8]) {
        self.nic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .io_write(offset, size, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Rec {
        sent: Mutex<Vec<Vec<u8>>>,
        levels: Mutex<Vec<bool>>,
    }
    impl NicBackend for Rec {
        fn send(&self, f: &[u8]) {
            self.sent.lock().unwrap().push(f.to_vec());
        }
        fn set_irq(&self, level: bool) {
            self.levels.lock().unwrap().push(level);
        }
    }

    const MAC: [u8; 6] = [0x52, 0x54, 0, 1, 2, 3];

    fn nic() -> (Ne2k, Arc<Rec>) {
        let rec = Arc::new(Rec::default());
        (Ne2k::new(MAC, rec.clone()), rec)
    }

    fn w(n: &mut Ne2k, off: u64, v: u8) {
        n.io_write(off, 1, &[v]);
    }
    fn r(n: &mut Ne2k, off: u64) -> u8 {
        let mut b = [0u8];
        n.io_read(off, 1, &mut b);
        b[0]
    }
    fn dma_read(n: &mut Ne2k, addr: u16, len: usize) -> Vec<u8> {
        w(n, 0x0a, len as u8);
        w(n, 0x0b, (len >> 8) as u8);
        w(n, 0x08, addr as u8);
        w(n, 0x09, (addr >> 8) as u8);
        w(n, 0, CR_RREAD | CR_START);
        let mut v = vec![0u8; len];
        n.io_read(0x10, 2, &mut v); // one `rep insw` exit
        v
    }
    fn setup(n: &mut Ne2k) {
        w(n, 0, 0x21);
        w(n, 0x0e, 0x49);
        w(n, 0x01, 0x46);
        w(n, 0x02, 0x80);
        w(n, 0x03, 0x46);
        w(n, 0, 0x61);
        for (i, m) in MAC.iter().enumerate() {
            w(n, 1 + i as u64, *m);
        }
        w(n, 7, 0x47);
        w(n, 0, 0x22);
        w(n, 0x0c, RCR_AB);
        w(n, 0x07, 0xff);
    }

    #[test]
    fn reset_prom_ids_and_remote_dma() {
        let (mut n, _) = nic();
        assert_eq!(r(&mut n, 0x07) & ISR_RST, ISR_RST);
        w(&mut n, 0, 0x21);
        assert_eq!((r(&mut n, 0x0a), r(&mut n, 0x0b)), (0x50, 0x43));
        w(&mut n, 0x0e, 0x49);
        w(&mut n, 0, 0x22);
        assert_eq!(r(&mut n, 0x07) & ISR_RST, 0, "START clears RST");
        let prom = dma_read(&mut n, 0, 32);
        let mac: Vec<u8> = (0..6).map(|i| prom[2 * i]).collect();
        assert_eq!(mac, MAC);
        assert_eq!((prom[28], prom[29]), (0x57, 0x57));
        assert_eq!(r(&mut n, 0x07) & ISR_RDC, ISR_RDC, "remote DMA complete");
        // Remote write into packet RAM and back; writes to the PROM are ignored.
        w(&mut n, 0x0a, 4);
        w(&mut n, 0x0b, 0);
        w(&mut n, 0x08, 0);
        w(&mut n, 0x09, 0x40);
        w(&mut n, 0, CR_RWRITE | CR_START);
        n.io_write(0x10, 2, &[1, 2, 3, 4]);
        assert_eq!(dma_read(&mut n, 0x4000, 4), vec![1, 2, 3, 4]);
        // Reading the reset port resets.
        r(&mut n, 0x1f);
        assert_eq!(r(&mut n, 0x07) & ISR_RST, ISR_RST);
    }

    #[test]
    fn long_string_io_and_pointers_outside_the_ring_do_not_overflow() {
        let (mut n, _) = nic();
        // `rep insb` / `rep outsb` of 300 bytes on a register port: one exit, 300 bytes.
        let mut big = vec![0u8; 300];
        n.io_read(0x07, 1, &mut big);
        n.io_write(0x0d, 1, &[0u8; 300]);
        setup(&mut n);
        // CURR far past PSTOP, BNRY below PSTART: the ring is PSTART..PSTOP whatever the
        // driver wrote; the next frame goes to PSTART.
        w(&mut n, 0, 0x62);
        w(&mut n, 0x07, 0xff);
        w(&mut n, 0, 0x22);
        w(&mut n, 0x03, 0x00);
        w(&mut n, 0x0c, RCR_AB);
        assert!(n.can_receive());
        let mut f = vec![0x11u8; 100];
        f[..6].copy_from_slice(&[0xff; 6]);
        assert!(n.receive(&f));
        assert_eq!(n.mem[0x4604..0x4604 + 100], f[..]);
        // PSTOP beyond the NIC's memory: nothing is received, nothing overflows.
        w(&mut n, 0x02, 0xff);
        assert!(!n.can_receive());
        assert!(!n.receive(&f));
    }

    #[test]
    fn byte_reads_in_word_mode_read_the_prom_as_ne2k_pci_does() {
        // ne2k-pci sets word mode (DCR 0x49), then reads the 32-byte PROM with 32 `inb`s:
        // each transfers a word, so SA_prom[0..6] is the MAC (it read 52:52:54:54:00:00).
        let (mut n, _) = nic();
        w(&mut n, 0, 0x21);
        w(&mut n, 0x0e, 0x49);
        w(&mut n, 0x0a, 32);
        w(&mut n, 0x0b, 0);
        w(&mut n, 0x08, 0);
        w(&mut n, 0x09, 0);
        w(&mut n, 0, CR_RREAD | CR_START);
        let prom: Vec<u8> = (0..32).map(|_| r(&mut n, 0x10)).collect();
        assert_eq!(prom[..6], MAC);
        assert_eq!((prom[14], prom[15]), (0x57, 0x57));
        assert_eq!(
            r(&mut n, 0x07) & ISR_RDC,
            ISR_RDC,
            "the 32-byte count is done"
        );
    }

    #[test]
    fn transmit_receive_ring_wrap_filter_and_level_irq() {
        let (mut n, rec) = nic();
        setup(&mut n);
        w(&mut n, 0x0f, ISR_PRX | ISR_PTX); // IMR
                                            // Transmit 60 bytes from page 0x40.
        let frame: Vec<u8> = (0..60u8).collect();
        w(&mut n, 0x0a, 60);
        w(&mut n, 0x0b, 0);
        w(&mut n, 0x08, 0);
        w(&mut n, 0x09, 0x40);
        w(&mut n, 0, CR_RWRITE | CR_START);
        n.io_write(0x10, 2, &frame);
        w(&mut n, 0x04, 0x40);
        w(&mut n, 0x05, 60);
        w(&mut n, 0x06, 0);
        w(&mut n, 0, CR_NODMA | CR_TRANS | CR_START);
        assert_eq!(
            rec.sent.lock().unwrap().as_slice(),
            std::slice::from_ref(&frame)
        );
        assert!(n.irq_level(), "PTX with IMR.PTX raises the line");
        w(&mut n, 0x07, ISR_PTX | ISR_RDC);
        assert!(!n.irq_level(), "acknowledging ISR lowers the line");
        assert_eq!(rec.levels.lock().unwrap().as_slice(), &[true, false]);
        // Receive: other unicast dropped, broadcast and ours accepted, short frames padded.
        let mut other = vec![0u8; 64];
        other[..6].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        assert!(!n.receive(&other));
        let mut ours = vec![0xabu8; 1000];
        ours[..6].copy_from_slice(&MAC);
        let mut bcast = vec![0xcdu8; 20];
        bcast[..6].copy_from_slice(&[0xff; 6]);
        // Fill the ring until it refuses: 58 pages of 256 bytes hold 14 frames of 4 pages,
        // each frame wrapping correctly past PSTOP.
        let mut bnry = 0x46u8;
        for i in 0..40 {
            let f = if i % 2 == 0 { &ours } else { &bcast };
            assert!(n.receive(f), "frame {i}");
            assert!(n.irq_level());
            // Driver: read the frame at BNRY+1 and advance BNRY.
            let page = if bnry + 1 >= 0x80 { 0x46 } else { bnry + 1 };
            let hdr = dma_read(&mut n, (page as u16) << 8, 4);
            let len = u16::from_le_bytes([hdr[2], hdr[3]]) as usize - 4;
            assert_eq!(len, if i % 2 == 0 { 1000 } else { 60 });
            let data = dma_read(&mut n, ((page as u16) << 8) + 4, len);
            assert_eq!(&data[..f.len()], &f[..]);
            bnry = if hdr[1] == 0x46 { 0x7f } else { hdr[1] - 1 };
            w(&mut n, 0x03, bnry);
            w(&mut n, 0x07, ISR_PRX | ISR_RDC);
        }
        // Without the driver consuming, the ring fills and frames are refused.
        let mut stored = 0;
        while n.receive(&ours) {
            stored += 1;
            assert!(stored < 20, "ring never fills");
        }
        assert!(stored >= 8, "only {stored} frames fit in 58 pages");
        assert_eq!(n.rx_frames, 40 + stored);
    }
}
