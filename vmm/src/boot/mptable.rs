//! Intel MultiProcessor table (spec 1.4): how Linux finds the CPUs, the IOAPIC and the
//! routing of ISA and PCI INTx interrupts without ACPI. Layout follows Firecracker's and
//! kvmtool's.

use crate::error::{Error, Result};
use crate::layout::*;
use crate::memory::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const BUS_PCI: u8 = 0;
const BUS_ISA: u8 = 1;

/// A PCI device whose INTx pin is wired to an IOAPIC input.
#[derive(Clone, Copy, Debug)]
pub struct PciIntx {
    pub slot: u8,
    /// 1 = INTA .. 4 = INTD.
    pub pin: u8,
    pub ioapic_pin: u8,
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// The table's bytes when placed at `base`.
pub fn build(base: u64, cpus: u8, intx: &[PciIntx]) -> Vec<u8> {
    let ioapic_id = cpus;
    let mut entries = Vec::new();
    let mut count = 0u16;
    for id in 0..cpus {
        entries.push(0); // processor
        entries.push(id);
        entries.push(APIC_VERSION);
        entries.push(1 | if id == 0 { 2 } else { 0 }); // enabled, BSP
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // signature: family 6
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // features: FPU, APIC
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    for (id, name) in [(BUS_PCI, b"PCI   "), (BUS_ISA, b"ISA   ")] {
        entries.push(1);
        entries.push(id);
        entries.extend_from_slice(name);
        count += 1;
    }
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    count += 1;
    let mut intsrc = |irqtype: u8, bus: u8, busirq: u8, pin: u8, flags: u16| {
        entries.push(3);
        entries.push(irqtype);
        entries.extend_from_slice(&flags.to_le_bytes());
        entries.extend_from_slice(&[bus, busirq, ioapic_id, pin]);
        count += 1;
    };
    for irq in 0..16 {
        intsrc(0, BUS_ISA, irq, irq, 0);
    }
    for d in intx {
        // PCI INTx: level triggered, active low.
        intsrc(0, BUS_PCI, (d.slot << 2) | (d.pin - 1), d.ioapic_pin, 0x0f);
    }
    for (irqtype, lint, dest) in [(3u8, 0u8, 0u8), (1, 1, 0xff)] {
        entries.push(4);
        entries.push(irqtype);
        entries.extend_from_slice(&0u16.to_le_bytes());
        entries.extend_from_slice(&[BUS_ISA, 0, dest, lint]);
        count += 1;
    }

    let table_addr = base + 16;
    let mut table = Vec::new();
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.push(4); // spec 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"IGNITE  ");
    table.extend_from_slice(b"IGNITE-VMM  ");
    table.extend_from_slice(&[0; 4]); // OEM table pointer
    table.extend_from_slice(&[0; 2]); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    table.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::new();
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(table_addr as u32).to_le_bytes());
    fp.push(1); // length in 16-byte units
    fp.push(4);
    fp.push(0);
    fp.extend_from_slice(&[0; 5]);
    fp[10] = checksum(&fp);
    fp.extend_from_slice(&table);
    fp
}

pub fn write(mem: &GuestMemory, cpus: u8, intx: &[PciIntx]) -> Result<()> {
    let bytes = build(MPTABLE_ADDR, cpus, intx);
    if MPTABLE_ADDR + bytes.len() as u64 > HIMEM_START {
        return Err(Error::Memory(format!(
            "MP table of {} bytes does not fit below 1 MiB",
            bytes.len()
        )));
    }
    mem.write_slice(&bytes, GuestAddress(MPTABLE_ADDR))
        .map_err(|e| Error::Memory(format!("MP table: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_counts() {
        let t = build(
            MPTABLE_ADDR,
            4,
            &[PciIntx {
                slot: 3,
                pin: 1,
                ioapic_pin: 16,
            }],
        );
        assert_eq!(&t[..4], b"_MP_");
        assert_eq!(sum(&t[..16]), 0);
        let len = u16::from_le_bytes([t[20], t[21]]) as usize;
        assert_eq!(sum(&t[16..16 + len]), 0);
        assert_eq!(16 + len, t.len());
        // 4 CPUs + 2 buses + IOAPIC + 16 ISA + 1 PCI + 2 LINT
        assert_eq!(
            u16::from_le_bytes([t[16 + 34], t[16 + 35]]),
            4 + 2 + 1 + 16 + 1 + 2
        );
        assert!(MPTABLE_ADDR as usize + build(MPTABLE_ADDR, MAX_CPUS, &[]).len() <= 0xa0000);
    }
}
