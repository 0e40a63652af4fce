//! Sequential IDE PIO throughput (VIO disk 0 on the primary channel), the counterpart of
//! blkbench with the same phases and marks: 11/12 write 1 MiB, 21/22 write 4 KiB, 31/32 read
//! 1 MiB, 41/42 read 4 KiB. One command at a time (ATA PIO has no queueing): 1 MiB = READ/WRITE
//! MULTIPLE EXT of 2048 sectors, 4 KiB = 8 sectors, in DRQ blocks of 16 sectors moved by
//! `rep insw/outsw`. Args: `total1m=BYTES total4k=BYTES wait=poll|irq` (irq: sleep until the
//! channel interrupt through the IOAPIC, then read the status register, as a driver does).
#![no_std]
#![no_main]

use rt::ata::{self, Wait};
use rt::{boot, check, io, println, MARK_PORT};

rt::entry!(main);

const BIG: usize = 1 << 20;

#[repr(C, align(4096))]
struct Buf([u8; BIG]);
static mut BUF: Buf = Buf([0; BIG]);

fn phase(how: Wait, write: bool, bs: usize, total: u64, mark: u32) {
    let buf = unsafe { &mut *core::ptr::addr_of_mut!(BUF) };
    let ch = ata::PRIMARY;
    let cmd = if write {
        ata::WRITE_MULTIPLE_EXT
    } else {
        ata::READ_MULTIPLE_EXT
    };
    io::outl(MARK_PORT, mark);
    let mut off = 0u64;
    while off < total {
        let r = ch.transfer(0, cmd, off / 512, &mut buf.0[..bs], 16, how);
        check!(r.is_ok(), "transfer at byte {} failed: {:?}", off, r.err());
        off += bs as u64;
    }
    io::outl(MARK_PORT, mark + 1);
}

fn main() {
    let how = if boot::arg("wait") == Some("irq") {
        Wait::Irq
    } else {
        Wait::Poll
    };
    let ch = ata::PRIMARY;
    let sig = ch.soft_reset();
    check!(
        sig == [1, 1, 0, 0],
        "no ATA disk on the primary channel ({:?})",
        sig
    );
    let mut id = [0u8; 512];
    check!(ch.identify(0, &mut id, Wait::Poll).is_ok(), "IDENTIFY");
    let sectors = (0..4).fold(0u64, |a, i| {
        a | (u16::from_le_bytes([id[200 + 2 * i], id[201 + 2 * i]]) as u64) << (16 * i)
    });
    let total1m = boot::arg_u64("total1m", 64 << 20);
    let total4k = boot::arg_u64("total4k", 16 << 20);
    check!(
        sectors * 512 >= total1m.max(total4k),
        "disk smaller than the transfer"
    );
    check!(
        ch.simple(0, ata::SET_MULTIPLE, 16, 0, Wait::Poll).is_ok(),
        "SET MULTIPLE 16"
    );
    if how == Wait::Irq {
        ata::ioapic_route(ch.irq, rt::start::IRQ_BASE);
        ch.set_irq(true);
    }
    let buf = unsafe { &mut *core::ptr::addr_of_mut!(BUF) };
    for (i, b) in buf.0.iter_mut().enumerate() {
        *b = (i * 7) as u8;
    }
    phase(how, true, BIG, total1m, 11);
    phase(how, true, 4096, total4k, 21);
    phase(how, false, BIG, total1m, 31);
    phase(how, false, 4096, total4k, 41);
    check!(
        ch.simple(0, ata::FLUSH_EXT, 0, 0, Wait::Poll).is_ok(),
        "flush"
    );
    println!("bench done ({} interrupts)", rt::irq_count(0));
}
