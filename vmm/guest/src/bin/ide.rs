//! VIO disk: the PIIX IDE function and its ATA disks through the legacy ports. Args:
//! `disks=N sectors=S` (every disk has S sectors; the host wrote "VIODISK<i>" at the start of
//! disk i). Checks the PCI function (ids, compatibility mode, IDETIM decode bits), soft reset
//! signature, IDENTIFY of every disk (model, capacities, LBA48), the disk-to-port mapping,
//! then on disk 0: READ/WRITE SECTORS with interrupts (one per DRQ block), SET MULTIPLE +
//! READ/WRITE MULTIPLE (+EXT) above 2^28 sectors when the disk is that large, FLUSH CACHE
//! (+EXT), SET FEATURES, READ NATIVE MAX EXT and the errors (unknown command, DMA mode,
//! out-of-range LBA). Leaves pattern A (see `pattern`) in sectors 64..72 of disk 0 for the host.
#![no_std]
#![no_main]

use rt::ata::{self, Channel, Wait};
use rt::pci;
use rt::{boot, check, println};

rt::entry!(main);

#[repr(C, align(4096))]
struct Bufs([u8; 64 * 512], [u8; 64 * 512]);
static mut BUFS: Bufs = Bufs([0; 64 * 512], [0; 64 * 512]);

fn pattern(buf: &mut [u8], first_lba: u64, seed: u8) {
    for (i, b) in buf.iter_mut().enumerate() {
        let s = first_lba + (i / 512) as u64;
        *b = ((s as usize * 31 + i % 512) as u8) ^ seed;
    }
}

fn word(id: &[u8; 512], w: usize) -> u16 {
    u16::from_le_bytes([id[2 * w], id[2 * w + 1]])
}

fn channel(disk: usize) -> (Channel, u8) {
    (
        if disk < 2 {
            ata::PRIMARY
        } else {
            ata::SECONDARY
        },
        (disk % 2) as u8,
    )
}

fn main() {
    let disks = boot::arg_u64("disks", 1) as usize;
    let sectors = boot::arg_u64("sectors", 0);
    let mut found = [(pci::Bdf { dev: 0, func: 0 }, 0u16, 0u16); 8];
    let n = pci::scan(&mut found);
    let piix = found[..n.min(8)]
        .iter()
        .find(|f| f.1 == 0x8086 && f.2 == 0x7010);
    let Some(&(bdf, _, _)) = piix else {
        check!(false, "no PIIX IDE function (8086:7010) on bus 0");
        return;
    };
    check!(
        pci::read32(bdf, 8) >> 8 == 0x01_01_80,
        "class/prog-if {:#x}, want IDE compatibility mode 0x010180",
        pci::read32(bdf, 8) >> 8
    );
    check!(
        pci::read8(bdf, 0x41) & 0x80 != 0 && pci::read8(bdf, 0x43) & 0x80 != 0,
        "IDETIM decode enable bits (0x41/0x43 bit 7) not set"
    );

    let sig = ata::PRIMARY.soft_reset();
    check!(sig == [1, 1, 0, 0], "ATA signature after reset {:?}", sig);
    let st = ata::PRIMARY.alt_status();
    check!(
        st & ata::DRDY != 0 && st & ata::BSY == 0,
        "status after reset {:#x}",
        st
    );
    if disks > 2 {
        check!(
            ata::SECONDARY.soft_reset() == [1, 1, 0, 0],
            "secondary signature"
        );
    } else {
        check!(
            ata::SECONDARY.alt_status() == 0xff,
            "empty secondary channel must float (0xff)"
        );
    }

    let bufs = unsafe { &mut *core::ptr::addr_of_mut!(BUFS) };
    let mut id = [0u8; 512];
    for d in 0..disks {
        let (ch, unit) = channel(d);
        check!(
            ch.identify(unit, &mut id, Wait::Poll).is_ok(),
            "IDENTIFY disk {}",
            d
        );
        check!(
            word(&id, 0) == 0x0040,
            "disk {}: word 0 {:#x}",
            d,
            word(&id, 0)
        );
        let mut model = [0u8; 16];
        for i in 0..8 {
            model[2 * i] = id[54 + 2 * i + 1];
            model[2 * i + 1] = id[54 + 2 * i];
        }
        check!(
            &model[..15] == b"IGNITE VIO DISK",
            "disk {}: model {:?}",
            d,
            &model
        );
        let lba48 = (0..4).fold(0u64, |a, i| a | (word(&id, 100 + i) as u64) << (16 * i));
        let lba28 = word(&id, 60) as u64 | (word(&id, 61) as u64) << 16;
        check!(
            lba48 == sectors,
            "disk {}: LBA48 capacity {} want {}",
            d,
            lba48,
            sectors
        );
        check!(
            lba28 == sectors.min(0x0fff_ffff),
            "disk {}: LBA28 capacity {}",
            d,
            lba28
        );
        check!(word(&id, 83) & (1 << 10) != 0, "disk {}: no LBA48 bit", d);
        check!(word(&id, 49) & (1 << 8) == 0, "disk {}: advertises DMA", d);
        let b = &mut bufs.0[..512];
        check!(
            ch.transfer(unit, ata::READ_SECTORS, 0, b, 1, Wait::Poll)
                .is_ok(),
            "disk {}: read sector 0",
            d
        );
        let tag = [b'V', b'I', b'O', b'D', b'I', b'S', b'K', b'0' + d as u8];
        check!(
            b[..8] == tag,
            "disk {}: sector 0 starts {:?}, want {:?}",
            d,
            &b[..8],
            &tag
        );
    }
    // An absent drive: status reads 0 on a populated channel.
    if disks == 1 {
        ata::PRIMARY.select(1);
        check!(ata::PRIMARY.alt_status() == 0, "absent drive 1 status");
        ata::PRIMARY.select(0);
    }

    let ch = ata::PRIMARY;
    ata::ioapic_route(ch.irq, rt::start::IRQ_BASE);
    ch.set_irq(true);

    // READ/WRITE SECTORS, interrupt per block.
    let before = rt::irq_count(0);
    pattern(&mut bufs.0[..8 * 512], 64, 0x5a);
    check!(
        ch.transfer(
            0,
            ata::WRITE_SECTORS,
            64,
            &mut bufs.0[..8 * 512],
            1,
            Wait::Irq
        ) == Ok(()),
        "WRITE SECTORS"
    );
    let writes_irqs = rt::irq_count(0) - before;
    check!(
        writes_irqs == 8,
        "WRITE SECTORS of 8: {} interrupts, want 8",
        writes_irqs
    );
    bufs.1[..8 * 512].fill(0);
    check!(
        ch.transfer(
            0,
            ata::READ_SECTORS,
            64,
            &mut bufs.1[..8 * 512],
            1,
            Wait::Irq
        ) == Ok(()),
        "READ SECTORS"
    );
    check!(
        rt::irq_count(0) - before == 16,
        "READ SECTORS of 8: want 8 interrupts"
    );
    check!(
        bufs.0[..8 * 512] == bufs.1[..8 * 512],
        "READ SECTORS returned other data"
    );

    // MULTIPLE needs SET MULTIPLE MODE first.
    check!(
        ch.transfer(0, ata::READ_MULTIPLE, 0, &mut bufs.1[..512], 16, Wait::Irq) == Err(ata::ABRT),
        "READ MULTIPLE without SET MULTIPLE MODE must abort"
    );
    check!(
        ch.simple(0, ata::SET_MULTIPLE, 3, 0, Wait::Irq) == Err(ata::ABRT),
        "multiple 3"
    );
    check!(
        ch.simple(0, ata::SET_MULTIPLE, 16, 0, Wait::Irq).is_ok(),
        "SET MULTIPLE 16"
    );
    check!(
        ch.identify(0, &mut id, Wait::Irq).is_ok(),
        "IDENTIFY after SET MULTIPLE"
    );
    check!(word(&id, 59) == 0x0110, "word 59 {:#x}", word(&id, 59));

    // 40 sectors = blocks of 16, 16, 8.
    let lba = 1000;
    pattern(&mut bufs.0[..40 * 512], lba, 0x33);
    let before = rt::irq_count(0);
    check!(
        ch.transfer(
            0,
            ata::WRITE_MULTIPLE,
            lba,
            &mut bufs.0[..40 * 512],
            16,
            Wait::Irq
        ) == Ok(()),
        "WRITE MULTIPLE"
    );
    check!(
        rt::irq_count(0) - before == 3,
        "WRITE MULTIPLE: one interrupt per block"
    );
    bufs.1[..40 * 512].fill(0);
    check!(
        ch.transfer(
            0,
            ata::READ_SECTORS_EXT,
            lba,
            &mut bufs.1[..40 * 512],
            1,
            Wait::Irq
        ) == Ok(()),
        "READ SECTORS EXT"
    );
    check!(
        bufs.0[..40 * 512] == bufs.1[..40 * 512],
        "WRITE MULTIPLE / READ SECTORS EXT"
    );

    // LBA48 above 2^28 sectors (needs a disk over 128 GiB, sparse) or near the end.
    let high = sectors - 48;
    pattern(&mut bufs.0[..48 * 512], high, 0x77);
    check!(
        ch.transfer(
            0,
            ata::WRITE_MULTIPLE_EXT,
            high,
            &mut bufs.0[..48 * 512],
            16,
            Wait::Irq
        ) == Ok(()),
        "WRITE MULTIPLE EXT at {}",
        high
    );
    bufs.1[..48 * 512].fill(0);
    check!(
        ch.transfer(
            0,
            ata::READ_MULTIPLE_EXT,
            high,
            &mut bufs.1[..48 * 512],
            16,
            Wait::Irq
        ) == Ok(()),
        "READ MULTIPLE EXT"
    );
    check!(
        bufs.0[..48 * 512] == bufs.1[..48 * 512],
        "MULTIPLE EXT data"
    );
    bufs.1[..16 * 512].fill(0);
    check!(
        ch.transfer(
            0,
            ata::WRITE_SECTORS_EXT,
            high,
            &mut bufs.0[..16 * 512],
            1,
            Wait::Irq
        ) == Ok(()),
        "WRITE SECTORS EXT"
    );
    check!(
        ch.transfer(
            0,
            ata::READ_MULTIPLE,
            1000,
            &mut bufs.1[..16 * 512],
            16,
            Wait::Irq
        ) == Ok(()),
        "READ MULTIPLE"
    );
    pattern(&mut bufs.0[..16 * 512], 1000, 0x33);
    check!(
        bufs.0[..16 * 512] == bufs.1[..16 * 512],
        "READ MULTIPLE data"
    );

    // Errors.
    check!(
        ch.transfer(
            0,
            ata::READ_SECTORS_EXT,
            sectors - 1,
            &mut bufs.1[..1024],
            1,
            Wait::Irq
        )
        .err()
        .is_some_and(|e| e & ata::IDNF != 0),
        "read past the end must fail with IDNF"
    );
    check!(
        ch.simple(0, 0x00, 0, 0, Wait::Irq) == Err(ata::ABRT),
        "NOP must abort"
    );
    check!(
        ch.simple(0, ata::SET_FEATURES, 0x0c, 0x03, Wait::Irq)
            .is_ok(),
        "PIO mode 4"
    );
    check!(
        ch.simple(0, ata::SET_FEATURES, 0x45, 0x03, Wait::Irq) == Err(ata::ABRT),
        "UDMA mode 5 must abort (no DMA)"
    );
    check!(
        ch.simple(0, ata::FLUSH, 0, 0, Wait::Irq).is_ok(),
        "FLUSH CACHE"
    );
    check!(
        ch.simple(0, ata::FLUSH_EXT, 0, 0, Wait::Poll).is_ok(),
        "FLUSH CACHE EXT"
    );
    ch.cmd48(0, ata::READ_NATIVE_MAX_EXT, 0, 0);
    check!(ch.wait(Wait::Poll, 0).is_ok(), "READ NATIVE MAX EXT");
    outb_hob(ch, true);
    let max = (0..3).fold(0u64, |a, i| a | (ch.reg(3 + i) as u64) << (24 + 8 * i));
    outb_hob(ch, false);
    let max = (0..3).fold(max, |a, i| a | (ch.reg(3 + i) as u64) << (8 * i));
    check!(
        max == sectors - 1,
        "native max {} want {}",
        max,
        sectors - 1
    );
    println!("ide: {} disk(s), {} interrupts", disks, rt::irq_count(0));
}

fn outb_hob(ch: Channel, hob: bool) {
    rt::io::outb(ch.ctrl, if hob { 0x80 } else { 0 });
}
