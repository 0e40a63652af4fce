//! NE2000 (RTL8029) driver through its I/O BAR, with the 8390's own programming model: frames
//! move by remote DMA through the data port (word mode, 32-bit `rep insd/outsd` as Linux's
//! ne2k-pci does on this chip: a string OUT exits once per element), the receive ring
//! lies between PSTART and PSTOP (4-byte 8390 header, BNRY/CURR), one transmit buffer at
//! TPSR. Every register access is a port-I/O exit, so the driver keeps them few: CURR is
//! read only once the ring looks empty, BNRY given back once per batch, TBCR written only
//! when the frame length changes, and a transmit's completion (ISR.PTX) checked just before
//! the next one needs the buffer.

use crate::eth::{Nic, MAX_FRAME};
use crate::io::{inb, insl, insw, outb, outsl};
use crate::pci::{self, Bdf};
use crate::{check, start};

const PSTART: u8 = 0x46;
const PSTOP: u8 = 0x80;
const TPSR: u8 = 0x40;
const CR: u16 = 0x00;
const BNRY: u16 = 0x03;
const ISR: u16 = 0x07;
const CURR: u16 = 0x07; // page 1
const DATA: u16 = 0x10;
const RESET: u16 = 0x1f;
const PRX: u8 = 0x01;
const PTX: u8 = 0x02;
const RDC: u8 = 0x40;
const RST: u8 = 0x80;
// CR values: page 0 or 1, started, with the remote DMA command.
const CR_P0_NODMA: u8 = 0x22;
const CR_P1_NODMA: u8 = 0x62;
const CR_RREAD: u8 = 0x0a;
const CR_RWRITE: u8 = 0x12;
const CR_TRANS: u8 = 0x26;

/// Frame buffer for the data port, page-aligned so that a frame is one string-I/O exit.
#[repr(C, align(4096))]
struct Buf([u8; 2048]);
static mut BUF: Buf = Buf([0; 2048]);

pub struct Ne2k {
    base: u16,
    mac: [u8; 6],
    /// IOAPIC input of INTA (config 0x3c).
    pub line: u8,
    /// Ring page of the next frame to read, and CURR as last read.
    next: u8,
    curr: u8,
    /// Ring pages consumed but not yet given back through BNRY.
    unreturned: bool,
    tx_len: usize,
    tx_busy: bool,
}

impl Ne2k {
    fn r(&self, off: u16) -> u8 {
        inb(self.base + off)
    }
    fn w(&self, off: u16, v: u8) {
        outb(self.base + off, v)
    }

    /// Sets up the remote DMA (count, address) and starts it with `cmd`.
    fn dma(&self, cmd: u8, addr: u16, count: usize) {
        self.w(0x0a, count as u8);
        self.w(0x0b, (count >> 8) as u8);
        self.w(0x08, addr as u8);
        self.w(0x09, (addr >> 8) as u8);
        self.w(CR, cmd);
    }

    /// Remote read of `buf.len()` (even) bytes at `addr`, waiting for ISR.RDC.
    fn remote_read(&self, addr: u16, buf: &mut [u8]) {
        self.dma(CR_RREAD, addr, buf.len());
        insw(self.base + DATA, buf);
        check!(self.r(ISR) & RDC != 0, "remote DMA read did not complete");
        self.w(ISR, RDC);
    }

    /// Checks the function at `bdf` (class, 256-byte I/O BAR0, INTA), resets it (ISR.RST),
    /// checks the RTL8029 id bytes and the PROM's 'WW' signature, reads the station address
    /// from the PROM, sets up the ring, accepts unicast to it and broadcast, and routes INTA
    /// (receive only) through the IOAPIC to vector IRQ_BASE.
    pub fn open(bdf: Bdf) -> Ne2k {
        check!(pci::read32(bdf, 8) >> 16 == 0x0200, "class is not Ethernet");
        let (addr, size, is_mem) = pci::bar(bdf, 0);
        check!(
            !is_mem && size == 256,
            "BAR0 must be 256 bytes of I/O ({:#x}, {})",
            addr,
            size
        );
        check!(pci::read8(bdf, 0x3d) == 1, "interrupt pin must be INTA");
        let mut n = Ne2k {
            base: addr as u16,
            mac: [0; 6],
            line: pci::read8(bdf, 0x3c),
            next: PSTART,
            curr: PSTART,
            unreturned: false,
            tx_len: 0,
            tx_busy: false,
        };
        let _ = n.r(RESET);
        check!(n.r(ISR) & RST != 0, "no ISR.RST after reset");
        n.w(CR, 0x21); // page 0, stop, no DMA
        check!(n.r(0x0a) == 0x50 && n.r(0x0b) == 0x43, "RTL8029 id bytes");
        n.w(0x0e, 0x49); // DCR: word transfers
        n.w(0x0a, 0);
        n.w(0x0b, 0);
        n.w(0x0c, 0x20); // RCR: monitor while setting up
        n.w(0x0d, 0x02); // TCR: loopback
        n.w(ISR, 0xff);
        n.w(0x0f, 0);
        n.w(CR, CR_P0_NODMA); // remote DMA needs the chip started
        let mut prom = [0u8; 32];
        n.remote_read(0, &mut prom);
        n.w(CR, 0x21);
        for (i, m) in n.mac.iter_mut().enumerate() {
            *m = prom[2 * i];
        }
        check!(
            prom[28] == 0x57 && prom[30] == 0x57,
            "PROM signature 'WW' missing"
        );
        n.w(0x01, PSTART);
        n.w(0x02, PSTOP);
        n.w(BNRY, PSTOP - 1);
        n.w(0x04, TPSR);
        n.w(CR, 0x61); // page 1
        for (i, m) in n.mac.iter().enumerate() {
            n.w(1 + i as u16, *m);
        }
        n.w(CURR, PSTART);
        for i in 0..8 {
            n.w(8 + i, 0xff);
        }
        n.w(CR, CR_P0_NODMA);
        n.w(0x0c, 0x04); // RCR: unicast to us + broadcast
        n.w(0x0d, 0x00); // TCR: normal
        n.w(ISR, 0xff);
        // Edge-triggered at the IOAPIC so that the program's generic handler, which does not
        // clear the device, is not re-entered while the level line stays high; `idle` acks
        // ISR.PRX before sleeping, so each new frame makes a new edge.
        crate::ata::ioapic_route(n.line, start::IRQ_BASE);
        n.w(0x0f, PRX); // IMR
        n
    }

    fn read_curr(&mut self) {
        self.w(CR, CR_P1_NODMA);
        self.curr = self.r(CURR);
        self.w(CR, CR_P0_NODMA);
    }

    /// Gives the pages up to (not including) `next` back to the NIC.
    fn return_pages(&mut self) {
        if self.unreturned {
            self.w(
                BNRY,
                if self.next == PSTART {
                    PSTOP - 1
                } else {
                    self.next - 1
                },
            );
            self.unreturned = false;
        }
    }
}

impl Nic for Ne2k {
    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn send(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) {
        let buf = unsafe { &mut (*core::ptr::addr_of_mut!(BUF)).0 };
        fill(&mut buf[..len]);
        let wire = len.max(60);
        buf[len..wire].fill(0);
        if self.tx_busy {
            // The buffer at TPSR is free once the previous frame is out (and its DMA done).
            check!(
                self.r(ISR) & (PTX | RDC) == PTX | RDC,
                "previous transmit not complete"
            );
            self.w(ISR, PTX | RDC);
        }
        let dwords = (wire + 3) & !3;
        buf[wire..dwords].fill(0);
        self.dma(CR_RWRITE, (TPSR as u16) << 8, dwords);
        outsl(self.base + DATA, &buf[..dwords]);
        if wire != self.tx_len {
            self.w(0x05, wire as u8);
            self.w(0x06, (wire >> 8) as u8);
            self.tx_len = wire;
        }
        self.w(CR, CR_TRANS);
        self.tx_busy = true;
    }

    /// The transmit command itself sends; nothing is batched.
    fn flush(&mut self) {}

    fn recv<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        if self.next == self.curr {
            self.return_pages();
            self.read_curr();
            if self.next == self.curr {
                return None;
            }
        }
        let page = (self.next as u16) << 8;
        let buf = unsafe { &mut (*core::ptr::addr_of_mut!(BUF)).0 };
        // The 8390 header, then the frame: the second remote read goes on where the first
        // stopped (RSAR is not written again), wrapping at PSTOP as the ring does.
        self.dma(CR_RREAD, page, 4);
        insl(self.base + DATA, &mut buf[..4]);
        let (status, next) = (buf[0], buf[1]);
        let count = (u16::from_le_bytes([buf[2], buf[3]]) as usize).saturating_sub(4);
        check!(
            status & 1 != 0 && (14..=MAX_FRAME).contains(&count) && (PSTART..PSTOP).contains(&next),
            "bad receive header {:02x?} at page {:#x}",
            &buf[..4],
            self.next
        );
        let dwords = (count + 3) & !3;
        self.w(0x0a, dwords as u8);
        self.w(0x0b, (dwords >> 8) as u8);
        self.w(CR, CR_RREAD);
        insl(self.base + DATA, &mut buf[..dwords]);
        self.next = next;
        self.unreturned = true;
        Some(f(&buf[..count]))
    }

    fn idle(&mut self, seen: u64) {
        self.return_pages();
        self.w(ISR, PRX);
        self.read_curr();
        if self.next == self.curr {
            crate::wait_irq(seen);
        }
    }
}
