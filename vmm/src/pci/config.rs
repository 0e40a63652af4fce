//! A type-0 configuration space: 256 bytes with per-bit write masks, BAR sizing semantics
//! and a capability list builder.

pub const VENDOR_ID: usize = 0x00;
pub const COMMAND: usize = 0x04;
pub const STATUS: usize = 0x06;
pub const BAR0: usize = 0x10;
pub const CAP_PTR: usize = 0x34;
pub const COMMAND_MEMORY: u16 = 0x2;
pub const STATUS_CAP_LIST: u16 = 0x10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    Mem32,
    Mem64,
    Io,
}

#[derive(Clone, Copy, Debug)]
struct Bar {
    size: u64,
    kind: BarKind,
}

pub struct PciConfig {
    bytes: [u8; 256],
    wmask: [u8; 256],
    bars: [Option<Bar>; 6],
    next_cap: usize,
    last_cap_ptr: usize,
}

pub struct Ids {
    pub vendor: u16,
    pub device: u16,
    pub class: u8,
    pub subclass: u8,
    pub prog_if: u8,
    pub revision: u8,
    pub subsystem_vendor: u16,
    pub subsystem: u16,
}

impl PciConfig {
    pub fn new(ids: Ids) -> PciConfig {
        let mut c = PciConfig {
            bytes: [0; 256],
            wmask: [0; 256],
            bars: [None; 6],
            next_cap: 0x40,
            last_cap_ptr: CAP_PTR,
        };
        c.set16(VENDOR_ID, ids.vendor);
        c.set16(0x02, ids.device);
        c.bytes[0x08] = ids.revision;
        c.bytes[0x09] = ids.prog_if;
        c.bytes[0x0a] = ids.subclass;
        c.bytes[0x0b] = ids.class;
        c.set16(0x2c, ids.subsystem_vendor);
        c.set16(0x2e, ids.subsystem);
        // Command: I/O, memory, bus master, INTx disable are writable.
        c.wmask[COMMAND] = 0x07;
        c.wmask[COMMAND + 1] = 0x04;
        c.wmask[0x3c] = 0xff; // interrupt line
        c
    }

    pub fn set16(&mut self, off: usize, v: u16) {
        self.bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    pub fn set32(&mut self, off: usize, v: u32) {
        self.bytes[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    pub fn get16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.bytes[off], self.bytes[off + 1]])
    }
    pub fn get32(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.bytes[off..off + 4].try_into().unwrap())
    }
    pub fn bytes_mut(&mut self) -> &mut [u8; 256] {
        &mut self.bytes
    }

    /// Declares BAR `i` (size a power of two) at `addr`, as firmware would have assigned it.
    pub fn add_bar(&mut self, i: usize, size: u64, kind: BarKind, addr: u64) {
        assert!(size.is_power_of_two() && i < 6 && (kind != BarKind::Mem64 || i < 5));
        self.bars[i] = Some(Bar { size, kind });
        let off = BAR0 + 4 * i;
        let type_bits = match kind {
            BarKind::Mem32 => 0,
            BarKind::Mem64 => 0x4,
            BarKind::Io => 0x1,
        };
        let low_mask = if kind == BarKind::Io {
            !(size as u32 - 1) & !0x3
        } else {
            !((size.min(1 << 31)) as u32 - 1) & !0xf
        };
        self.set32(off, (addr as u32 & low_mask) | type_bits);
        self.wmask[off..off + 4].copy_from_slice(&low_mask.to_le_bytes());
        if kind == BarKind::Mem64 {
            let hi_mask = if size > 1 << 32 {
                !((size >> 32) as u32 - 1)
            } else {
                0xffff_ffff
            };
            self.set32(off + 4, (addr >> 32) as u32);
            self.wmask[off + 4..off + 8].copy_from_slice(&hi_mask.to_le_bytes());
        }
    }

    /// Current (address, size) of memory BAR `i` if memory decoding is on.
    pub fn mem_bar(&self, i: usize) -> Option<(u64, u64)> {
        let bar = self.bars.get(i).copied().flatten()?;
        if self.get16(COMMAND) & COMMAND_MEMORY == 0 || bar.kind == BarKind::Io {
            return None;
        }
        let off = BAR0 + 4 * i;
        let mut addr = (self.get32(off) & !0xf) as u64;
        if bar.kind == BarKind::Mem64 {
            addr |= (self.get32(off + 4) as u64) << 32;
        }
        Some((addr, bar.size))
    }

    /// Current (port, size) of I/O BAR `i` if I/O decoding is on.
    pub fn io_bar(&self, i: usize) -> Option<(u64, u64)> {
        let bar = self.bars.get(i).copied().flatten()?;
        if self.get16(COMMAND) & 1 == 0 || bar.kind != BarKind::Io {
            return None;
        }
        Some(((self.get32(BAR0 + 4 * i) & !0x3) as u64, bar.size))
    }

    /// Appends a capability (`body` starts after the id/next bytes); returns its offset.
    /// `writable` masks (same length as body) say which body bytes the guest may change.
    pub fn add_capability(&mut self, id: u8, body: &[u8], writable: &[u8]) -> usize {
        let off = self.next_cap;
        assert!(off + 2 + body.len() <= 256);
        self.bytes[off] = id;
        self.bytes[off + 1] = 0;
        self.bytes[off + 2..off + 2 + body.len()].copy_from_slice(body);
        for (i, m) in writable.iter().enumerate() {
            self.wmask[off + 2 + i] = *m;
        }
        self.bytes[self.last_cap_ptr] = off as u8;
        self.last_cap_ptr = off + 1;
        self.next_cap = (off + 2 + body.len() + 3) & !3;
        let s = self.get16(STATUS) | STATUS_CAP_LIST;
        self.set16(STATUS, s);
        off
    }

    pub fn read(&self, reg: usize) -> u32 {
        match reg.checked_mul(4).filter(|o| o + 4 <= 256) {
            Some(o) => self.get32(o),
            None => 0xffff_ffff,
        }
    }

    /// Applies a write of `data` at byte `offset` within dword `reg`, honouring write masks.
    pub fn write(&mut self, reg: usize, offset: usize, data: &[u8]) {
        let Some(base) = reg.checked_mul(4) else {
            return;
        };
        for (i, b) in data.iter().enumerate() {
            let o = base + offset + i;
            if o >= 256 {
                return;
            }
            self.bytes[o] = (self.bytes[o] & !self.wmask[o]) | (b & self.wmask[o]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PciConfig {
        PciConfig::new(Ids {
            vendor: 0x1af4,
            device: 0x1042,
            class: 1,
            subclass: 0,
            prog_if: 0,
            revision: 1,
            subsystem_vendor: 0x1af4,
            subsystem: 2,
        })
    }

    #[test]
    fn bar_sizing_reads_back_the_size_mask() {
        let mut c = cfg();
        c.add_bar(0, 0x8000, BarKind::Mem32, 0xc000_0000);
        c.write(4, 0, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(c.read(4), 0xffff_8000);
        c.write(4, 0, &0xc000_0000u32.to_le_bytes());
        assert_eq!(c.mem_bar(0), None, "memory decoding is off");
        c.write(1, 0, &[0x06]);
        assert_eq!(c.mem_bar(0), Some((0xc000_0000, 0x8000)));
        // Read-only ids stay put.
        c.write(0, 0, &[0, 0, 0, 0]);
        assert_eq!(c.read(0), 0x1042_1af4);
        // Out-of-range registers are harmless.
        c.write(200, 3, &[1, 2, 3]);
        assert_eq!(c.read(64), 0xffff_ffff);
    }

    #[test]
    fn capability_chain() {
        let mut c = cfg();
        let a = c.add_capability(0x09, &[1, 2, 3], &[0, 0, 0]);
        let b = c.add_capability(0x11, &[0; 10], &[0; 10]);
        assert_eq!(c.bytes[CAP_PTR] as usize, a);
        assert_eq!(c.bytes[a + 1] as usize, b);
        assert_eq!(c.bytes[b + 1], 0);
        assert_ne!(c.get16(STATUS) & STATUS_CAP_LIST, 0);
    }
}
