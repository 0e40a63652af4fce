//! Minimal ATA PIO driver for the legacy IDE ports: register access, soft reset, IDENTIFY,
//! LBA28/LBA48 commands, data blocks by `rep insw/outsw`, completion by polling the
//! alternate status or by the channel interrupt (routed through the IOAPIC).

use crate::io::{inb, insw, mmio_write, outb, outsw};

pub const BSY: u8 = 0x80;
pub const DRDY: u8 = 0x40;
pub const DRQ: u8 = 0x08;
pub const ERR: u8 = 0x01;
pub const ABRT: u8 = 0x04;
pub const IDNF: u8 = 0x10;

pub const READ_SECTORS: u8 = 0x20;
pub const READ_SECTORS_EXT: u8 = 0x24;
pub const READ_MULTIPLE: u8 = 0xc4;
pub const READ_MULTIPLE_EXT: u8 = 0x29;
pub const WRITE_SECTORS: u8 = 0x30;
pub const WRITE_SECTORS_EXT: u8 = 0x34;
pub const WRITE_MULTIPLE: u8 = 0xc5;
pub const WRITE_MULTIPLE_EXT: u8 = 0x39;
pub const SET_MULTIPLE: u8 = 0xc6;
pub const IDENTIFY: u8 = 0xec;
pub const FLUSH: u8 = 0xe7;
pub const FLUSH_EXT: u8 = 0xea;
pub const SET_FEATURES: u8 = 0xef;
pub const READ_NATIVE_MAX_EXT: u8 = 0x27;

#[derive(Clone, Copy)]
pub struct Channel {
    pub base: u16,
    pub ctrl: u16,
    pub irq: u8,
}

pub const PRIMARY: Channel = Channel {
    base: 0x1f0,
    ctrl: 0x3f6,
    irq: 14,
};
pub const SECONDARY: Channel = Channel {
    base: 0x170,
    ctrl: 0x376,
    irq: 15,
};

/// Routes IOAPIC input `pin` (edge, active high) to `vector` on CPU 0.
pub fn ioapic_route(pin: u8, vector: u8) {
    const IOAPIC: u64 = 0xfec0_0000;
    mmio_write::<u32>(IOAPIC, 0x11 + 2 * pin as u32);
    mmio_write::<u32>(IOAPIC + 0x10, 0);
    mmio_write::<u32>(IOAPIC, 0x10 + 2 * pin as u32);
    mmio_write::<u32>(IOAPIC + 0x10, vector as u32);
}

/// How a command's completion is awaited.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Spin on the alternate status register.
    Poll,
    /// Sleep until the interrupt on IRQ_BASE, then read the status register.
    Irq,
}

impl Channel {
    pub fn status(&self) -> u8 {
        inb(self.base + 7)
    }
    pub fn alt_status(&self) -> u8 {
        inb(self.ctrl)
    }
    pub fn error(&self) -> u8 {
        inb(self.base + 1)
    }
    pub fn reg(&self, off: u16) -> u8 {
        inb(self.base + off)
    }
    /// Device control: interrupts on (`irq`) or off.
    pub fn set_irq(&self, irq: bool) {
        outb(self.ctrl, if irq { 0 } else { 2 });
    }
    pub fn select(&self, unit: u8) {
        outb(self.base + 6, 0xe0 | (unit & 1) << 4);
    }
    /// SRST pulse; returns the signature (nsect, lbal, lbam, lbah) of drive 0.
    pub fn soft_reset(&self) -> [u8; 4] {
        outb(self.ctrl, 0x06);
        outb(self.ctrl, 0x02);
        [self.reg(2), self.reg(3), self.reg(4), self.reg(5)]
    }

    /// Waits until not busy; Ok(status) or Err(error register) when ERR is set.
    pub fn wait(&self, how: Wait, seen: u64) -> Result<u8, u8> {
        let s = match how {
            Wait::Poll => {
                let mut s;
                loop {
                    s = self.alt_status();
                    if s & BSY == 0 {
                        break;
                    }
                }
                s
            }
            Wait::Irq => {
                while crate::irq_count(0) == seen {
                    crate::wait_irq(seen);
                }
                self.status()
            }
        };
        if s & ERR != 0 {
            Err(self.error())
        } else {
            Ok(s)
        }
    }

    pub fn cmd28(&self, unit: u8, cmd: u8, lba: u64, count: u8, feature: u8) {
        outb(
            self.base + 6,
            0xe0 | (unit & 1) << 4 | ((lba >> 24) as u8 & 0xf),
        );
        outb(self.base + 1, feature);
        outb(self.base + 2, count);
        outb(self.base + 3, lba as u8);
        outb(self.base + 4, (lba >> 8) as u8);
        outb(self.base + 5, (lba >> 16) as u8);
        outb(self.base + 7, cmd);
    }

    pub fn cmd48(&self, unit: u8, cmd: u8, lba: u64, count: u16) {
        outb(self.base + 6, 0x40 | (unit & 1) << 4);
        outb(self.base + 2, (count >> 8) as u8);
        outb(self.base + 3, (lba >> 24) as u8);
        outb(self.base + 4, (lba >> 32) as u8);
        outb(self.base + 5, (lba >> 40) as u8);
        outb(self.base + 2, count as u8);
        outb(self.base + 3, lba as u8);
        outb(self.base + 4, (lba >> 8) as u8);
        outb(self.base + 5, (lba >> 16) as u8);
        outb(self.base + 7, cmd);
    }

    /// A non-data command: Ok(status) or Err(error register).
    pub fn simple(&self, unit: u8, cmd: u8, count: u8, feature: u8, how: Wait) -> Result<u8, u8> {
        let seen = crate::irq_count(0);
        self.cmd28(unit, cmd, 0, count, feature);
        self.wait(how, seen)
    }

    /// IDENTIFY DEVICE into `buf` (512 bytes).
    pub fn identify(&self, unit: u8, buf: &mut [u8; 512], how: Wait) -> Result<(), u8> {
        self.identify_with(IDENTIFY, unit, buf, how)
    }

    /// An IDENTIFY-style command (`cmd`: DEVICE or PACKET DEVICE) reading one block.
    pub fn identify_with(
        &self,
        cmd: u8,
        unit: u8,
        buf: &mut [u8; 512],
        how: Wait,
    ) -> Result<(), u8> {
        let seen = crate::irq_count(0);
        self.select(unit);
        outb(self.base + 7, cmd);
        let s = self.wait(how, seen)?;
        if s & DRQ == 0 {
            return Err(0xff);
        }
        insw(self.base, buf);
        Ok(())
    }

    /// A PIO data command moving `buf` (whole sectors) in DRQ blocks of `block` sectors.
    pub fn transfer(
        &self,
        unit: u8,
        cmd: u8,
        lba: u64,
        buf: &mut [u8],
        block: usize,
        how: Wait,
    ) -> Result<(), u8> {
        let sectors = buf.len() / 512;
        let write = matches!(
            cmd,
            WRITE_SECTORS | WRITE_SECTORS_EXT | WRITE_MULTIPLE | WRITE_MULTIPLE_EXT
        );
        let ext = matches!(
            cmd,
            READ_SECTORS_EXT | READ_MULTIPLE_EXT | WRITE_SECTORS_EXT | WRITE_MULTIPLE_EXT
        );
        let mut seen = crate::irq_count(0);
        if ext {
            self.cmd48(unit, cmd, lba, sectors as u16);
        } else {
            self.cmd28(unit, cmd, lba, sectors as u8, 0);
        }
        let mut done = 0;
        while done < sectors {
            // Writes: the first block is asked for without an interrupt.
            let s = if write && done == 0 {
                self.wait(Wait::Poll, seen)?
            } else {
                self.wait(how, seen)?
            };
            if s & DRQ == 0 {
                return Err(0xfe);
            }
            let n = block.min(sectors - done);
            let chunk = &mut buf[done * 512..(done + n) * 512];
            seen = crate::irq_count(0);
            if write {
                outsw(self.base, chunk);
            } else {
                insw(self.base, chunk);
            }
            done += n;
        }
        if write {
            // The drive interrupts once the last block is on the medium.
            let s = self.wait(how, seen)?;
            if s & DRQ != 0 {
                return Err(0xfd);
            }
        }
        Ok(())
    }
}
