//! PCI bus 0: configuration mechanism #1 on ports 0xCF8/0xCFC, a host bridge at 00:00.0
//! (Linux's `pci_sanity_check` needs one when there is no DMI), BAR-decoded MMIO dispatch.

pub mod config;
pub mod msix;

use config::{Ids, PciConfig};

/// A function on bus 0.
pub trait PciDevice: Send {
    fn config(&self) -> &PciConfig;
    fn config_write(&mut self, reg: usize, offset: usize, data: &[u8]);
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
    /// Port access through I/O BAR `bar`: `size` is the access width (1, 2, 4) and `data`
    /// holds `size × count` bytes (string I/O). Devices for which the width matters say so.
    fn io_read(&mut self, bar: usize, offset: u64, _size: usize, data: &mut [u8]) {
        self.bar_read(bar, offset, data)
    }
    fn io_write(&mut self, bar: usize, offset: u64, _size: usize, data: &[u8]) {
        self.bar_write(bar, offset, data)
    }
}

/// A function that is only its configuration space: no BAR decodes to it. The host bridge,
/// and the PIIX IDE function (its channels sit at the fixed legacy ports).
pub struct ConfigOnly(pub PciConfig);

impl ConfigOnly {
    /// The host bridge at 00:00.0.
    pub fn host_bridge() -> ConfigOnly {
        ConfigOnly(PciConfig::new(Ids {
            vendor: 0x8086,
            device: 0x0d57,
            class: 0x06,
            subclass: 0x00,
            prog_if: 0,
            revision: 0,
            subsystem_vendor: 0,
            subsystem: 0,
        }))
    }
}

impl PciDevice for ConfigOnly {
    fn config(&self) -> &PciConfig {
        &self.0
    }
    fn config_write(&mut self, reg: usize, offset: usize, data: &[u8]) {
        self.0.write(reg, offset, data)
    }
    fn bar_read(&mut self, _: usize, _: u64, data: &mut [u8]) {
        data.fill(0xff)
    }
    fn bar_write(&mut self, _: usize, _: u64, _: &[u8]) {}
}

/// Functions on bus 0: 32 devices of 8 functions.
pub const FUNCTIONS: usize = 32 * 8;

pub struct PciBus {
    /// Index = device (slot) number × 8 + function.
    slots: Vec<Option<Box<dyn PciDevice>>>,
    address: u32,
}

impl PciBus {
    pub fn new() -> PciBus {
        let mut slots: Vec<Option<Box<dyn PciDevice>>> = (0..FUNCTIONS).map(|_| None).collect();
        slots[0] = Some(Box::new(ConfigOnly::host_bridge()));
        PciBus { slots, address: 0 }
    }

    /// Puts `dev` at function 0 of the lowest free slot, or, when every slot is taken, at
    /// the lowest free function of a slot (making it a multifunction device); returns the
    /// slot or None when all 248 functions besides the host bridge's slot are taken.
    pub fn add(&mut self, dev: Box<dyn PciDevice>) -> Option<u8> {
        let idx = (1..32)
            .map(|d| d * 8)
            .find(|&i| self.slots[i].is_none())
            .or_else(|| (8..FUNCTIONS).find(|&i| self.slots[i].is_none()))?;
        self.slots[idx] = Some(dev);
        Some((idx / 8) as u8)
    }

    /// Does slot `dev` have functions besides 0?
    fn multifunction(&self, dev: usize) -> bool {
        (1..8).any(|f| self.slots[dev * 8 + f].is_some())
    }

    /// Which function answers the current CONFIG_ADDRESS: (index, dword register).
    fn target(&self) -> Option<(usize, usize)> {
        let a = self.address;
        let (enabled, bus, dev, func, reg) = (
            a >> 31 == 1,
            (a >> 16) & 0xff,
            (a >> 11) & 0x1f,
            (a >> 8) & 7,
            (a >> 2) & 0x3f,
        );
        let idx = (dev * 8 + func) as usize;
        // Function 0 must exist for the others to be seen (PCI enumeration rule).
        (enabled
            && bus == 0
            && self.slots[(dev * 8) as usize].is_some()
            && self.slots[idx].is_some())
        .then_some((idx, reg as usize))
    }

    /// Port access at 0xCF8 + `offset` (0..8).
    pub fn pio_read(&mut self, offset: u16, data: &mut [u8]) {
        match offset {
            0..=3 => {
                let v = self.address.to_le_bytes();
                for (i, d) in data.iter_mut().enumerate() {
                    *d = v.get(offset as usize + i).copied().unwrap_or(0xff);
                }
            }
            4..=7 => {
                let v = match self.target() {
                    Some((idx, reg)) => {
                        let mut v = self.slots[idx]
                            .as_ref()
                            .map_or(!0, |d| d.config().read(reg));
                        // Header type bit 7: a multifunction device.
                        if reg == 3 && idx % 8 == 0 && self.multifunction(idx / 8) {
                            v |= 0x0080_0000;
                        }
                        v
                    }
                    None => 0xffff_ffff,
                }
                .to_le_bytes();
                for (i, d) in data.iter_mut().enumerate() {
                    *d = v.get(offset as usize - 4 + i).copied().unwrap_or(0xff);
                }
            }
            _ => data.fill(0xff),
        }
    }

    pub fn pio_write(&mut self, offset: u16, data: &[u8]) {
        match offset {
            0..=3 => {
                let mut v = self.address.to_le_bytes();
                for (i, d) in data.iter().enumerate() {
                    if let Some(b) = v.get_mut(offset as usize + i) {
                        *b = *d;
                    }
                }
                self.address = u32::from_le_bytes(v);
            }
            4..=7 => {
                if let Some((slot, reg)) = self.target() {
                    let off = offset as usize - 4;
                    let data = &data[..data.len().min(4 - off)];
                    if let Some(d) = self.slots[slot].as_mut() {
                        d.config_write(reg, off, data);
                    }
                }
            }
            _ => {}
        }
    }

    fn find_bar(&mut self, addr: u64, len: usize) -> Option<(&mut Box<dyn PciDevice>, usize, u64)> {
        for dev in self.slots.iter_mut().flatten() {
            for bar in 0..6 {
                if let Some((base, size)) = dev.config().mem_bar(bar) {
                    if addr >= base && addr.saturating_add(len as u64) <= base.saturating_add(size)
                    {
                        return Some((dev, bar, addr - base));
                    }
                }
            }
        }
        None
    }

    fn find_io_bar(&mut self, port: u16) -> Option<(&mut Box<dyn PciDevice>, usize, u64)> {
        let port = port as u64;
        for dev in self.slots.iter_mut().flatten() {
            for bar in 0..6 {
                if let Some((base, size)) = dev.config().io_bar(bar) {
                    if port >= base && port < base + size {
                        return Some((dev, bar, port - base));
                    }
                }
            }
        }
        None
    }

    /// Port read of width `size` decoded by an I/O BAR; false when none decodes `port`.
    pub fn io_bar_read(&mut self, port: u16, size: usize, data: &mut [u8]) -> bool {
        match self.find_io_bar(port) {
            Some((dev, bar, off)) => {
                dev.io_read(bar, off, size, data);
                true
            }
            None => false,
        }
    }

    pub fn io_bar_write(&mut self, port: u16, size: usize, data: &[u8]) -> bool {
        match self.find_io_bar(port) {
            Some((dev, bar, off)) => {
                dev.io_write(bar, off, size, data);
                true
            }
            None => false,
        }
    }

    /// MMIO read; false when no BAR decodes `addr`.
    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        match self.find_bar(addr, data.len()) {
            Some((dev, bar, off)) => {
                dev.bar_read(bar, off, data);
                true
            }
            None => false,
        }
    }

    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) -> bool {
        match self.find_bar(addr, data.len()) {
            Some((dev, bar, off)) => {
                dev.bar_write(bar, off, data);
                true
            }
            None => false,
        }
    }
}

impl Default for PciBus {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg_read(bus: &mut PciBus, dev: u32, reg: u32) -> u32 {
        bus.pio_write(0, &(0x8000_0000 | dev << 11 | reg).to_le_bytes());
        let mut d = [0u8; 4];
        bus.pio_read(4, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn functions_beyond_31_devices_make_slots_multifunction() {
        let mut bus = PciBus::new();
        for i in 0..40 {
            let slot = bus.add(Box::new(ConfigOnly::host_bridge())).unwrap();
            assert_eq!(slot, if i < 31 { i + 1 } else { 1 + (i - 31) / 7 });
        }
        // Slot 1 now has functions 0..7, slot 2 functions 0..2.
        assert_eq!(cfg_read(&mut bus, 1, 0x0c) >> 16 & 0x80, 0x80);
        assert_eq!(cfg_read(&mut bus, 3, 0x0c) >> 16 & 0x80, 0);
        assert_eq!(cfg_read(&mut bus, 1, 7 << 8), 0x0d57_8086);
        assert_eq!(cfg_read(&mut bus, 2, 2 << 8), 0x0d57_8086);
        assert_eq!(cfg_read(&mut bus, 2, 3 << 8), 0xffff_ffff);
        for _ in 40..(31 * 8) {
            assert!(bus.add(Box::new(ConfigOnly::host_bridge())).is_some());
        }
        assert!(
            bus.add(Box::new(ConfigOnly::host_bridge())).is_none(),
            "bus full"
        );
    }

    #[test]
    fn host_bridge_and_empty_slots() {
        let mut bus = PciBus::new();
        assert_eq!(cfg_read(&mut bus, 0, 0), 0x0d57_8086);
        assert_eq!(cfg_read(&mut bus, 0, 8) >> 16, 0x0600);
        assert_eq!(cfg_read(&mut bus, 1, 0), 0xffff_ffff);
        // Linux's type-1 probe: write 0x80000000 to 0xCF8 and read it back.
        bus.pio_write(0, &0x8000_0000u32.to_le_bytes());
        let mut d = [0u8; 4];
        bus.pio_read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x8000_0000);
        // Byte access at 0xCFE reads the upper half of the dword.
        bus.pio_write(0, &0x8000_0000u32.to_le_bytes());
        let mut b = [0u8; 2];
        bus.pio_read(6, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0x0d57);
        // Odd sizes and offsets never panic (function 1 of the bridge is absent).
        assert_eq!(cfg_read(&mut bus, 0, 1 << 8), 0xffff_ffff);
        bus.pio_write(3, &[1, 2, 3, 4]);
        bus.pio_write(7, &[1, 2, 3, 4]);
        bus.pio_read(9, &mut d);
    }
}
