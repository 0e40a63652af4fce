//! Sequential read of a CD image between marks 71 and 72, the ISO rows of `ignite vm bench
//! avio-vio`. Args: `bus=vio|avio total=BYTES`. VIO: the ATAPI drive on the primary master,
//! READ(10) of 64 KiB per PACKET (one command at a time, 32 KiB chunks by `rep insw`, one
//! interrupt per chunk and one at completion through the IOAPIC). AVIO: virtio-scsi LUN 0,
//! READ(10) of 1 MiB, 4 commands in flight, the MSI-X interrupt. Both sleep in HLT until
//! their interrupt, and fold every byte read into FNV-1a, printed as `cdbench: N bytes fnv1a
//! X` for the host to check. The image is read from its start again when `total` is larger.
#![no_std]
#![no_main]

use rt::ata::{self, Wait};
use rt::pci;
use rt::vscsi::{Scsi, GOOD};
use rt::{boot, check, io, println, MARK_PORT};

rt::entry!(main);

const AVIO_CMD: usize = 1 << 20;
const DEPTH: usize = 4;
const VIO_CMD: usize = 64 << 10;

#[repr(C, align(4096))]
struct Buf([u8; AVIO_CMD * DEPTH]);
static mut BUF: Buf = Buf([0; AVIO_CMD * DEPTH]);

fn fnv(h: u32, data: &[u8]) -> u32 {
    data.iter()
        .fold(h, |h, &b| (h ^ b as u32).wrapping_mul(0x0100_0193))
}

fn read10(lba: u32, blocks: u32) -> [u8; 12] {
    let l = lba.to_be_bytes();
    let n = (blocks as u16).to_be_bytes();
    [0x28, 0, l[0], l[1], l[2], l[3], 0, n[0], n[1], 0, 0, 0]
}

fn vio(total: u64) -> u32 {
    let buf = unsafe { &mut (*core::ptr::addr_of_mut!(BUF)).0 };
    let ch = ata::PRIMARY;
    ch.soft_reset();
    ch.select(0);
    ata::ioapic_route(ch.irq, rt::start::IRQ_BASE);
    ch.set_irq(true);
    let mut c = [0u8; 8];
    let mut cap = [0u8; 12];
    cap[0] = 0x25;
    check!(
        ch.packet(0, &cap, &mut c, 8, Wait::Irq) == Ok(8),
        "READ CAPACITY"
    );
    let blocks = u32::from_be_bytes([c[0], c[1], c[2], c[3]]) + 1;
    let per = (VIO_CMD / 2048) as u32;
    check!(
        blocks % per == 0,
        "image of {} blocks: not a multiple of {}",
        blocks,
        per
    );
    let mut h = 0x811c_9dc5u32;
    let (mut done, mut lba) = (0u64, 0u32);
    io::outl(MARK_PORT, 71);
    while done < total {
        let r = ch.packet(0, &read10(lba, per), &mut buf[..VIO_CMD], 0x8000, Wait::Irq);
        check!(r == Ok(VIO_CMD), "READ(10) at {}: {:?}", lba, r);
        h = fnv(h, &buf[..VIO_CMD]);
        done += VIO_CMD as u64;
        lba = (lba + per) % blocks;
    }
    io::outl(MARK_PORT, 72);
    h
}

fn avio(total: u64) -> u32 {
    let buf = unsafe { &mut (*core::ptr::addr_of_mut!(BUF)).0 };
    let mut found = [(pci::Bdf { dev: 0, func: 0 }, 0u16, 0u16); 8];
    let n = pci::scan_functions(&mut found);
    let Some(&(bdf, _, _)) = found[..n.min(8)].iter().find(|f| f.2 == 0x1048) else {
        check!(false, "no virtio-scsi function");
        return 0;
    };
    let mut s = Scsi::open(bdf, Some(rt::start::IRQ_BASE));
    let d = s.cmd(0, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], &mut buf[..8]);
    check!(d.resp.status == GOOD, "READ CAPACITY");
    let blocks = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) + 1;
    let per = (AVIO_CMD / 2048) as u32;
    check!(
        blocks % per == 0,
        "image of {} blocks: not a multiple of {}",
        blocks,
        per
    );
    let count = total / AVIO_CMD as u64;
    let mut h = 0x811c_9dc5u32;
    let (mut submitted, mut completed) = (0u64, 0u64);
    io::outl(MARK_PORT, 71);
    while completed < count {
        let mut queued = false;
        while submitted < count && submitted - completed < DEPTH as u64 {
            let lba = ((submitted * per as u64) % blocks as u64) as u32;
            let at = buf.as_ptr() as u64 + (submitted % DEPTH as u64) * AVIO_CMD as u64;
            s.submit(0, &read10(lba, per)[..10], &[], &[(at, AVIO_CMD as u32)]);
            submitted += 1;
            queued = true;
        }
        if queued {
            s.req.notify();
        }
        let d = s.next(true);
        check!(
            d.resp.status == GOOD && d.data_in() == AVIO_CMD,
            "READ(10): status {} moved {}",
            d.resp.status,
            d.data_in()
        );
        // One queue, run to completion: commands complete in submission order.
        let at = (completed % DEPTH as u64) as usize * AVIO_CMD;
        h = fnv(h, &buf[at..at + AVIO_CMD]);
        completed += 1;
    }
    io::outl(MARK_PORT, 72);
    h
}

fn main() {
    let total = boot::arg_u64("total", 32 << 20);
    let h = match boot::arg("bus") {
        Some("vio") => vio(total),
        Some("avio") => avio(total),
        other => {
            check!(false, "bus={:?}: use bus=vio or bus=avio", other);
            0
        }
    };
    println!("cdbench: {} bytes fnv1a {:08x}", total, h);
}
