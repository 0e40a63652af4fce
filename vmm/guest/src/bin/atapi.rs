//! VIO CD-ROM: an ATAPI drive on the IDE channels. Args: `unit=N` (IDE slot 0..3; disks
//! take the slots before CD-ROMs), `swap=1` (then wait for the host to eject the medium and
//! insert another). Checks the ATAPI signature, IDENTIFY aborting, IDENTIFY PACKET DEVICE,
//! TEST UNIT READY, INQUIRY, READ CAPACITY, READ TOC, GET EVENT STATUS NOTIFICATION,
//! MODE SENSE(10) capabilities, GET CONFIGURATION, the whole medium by READ(10) in 32 KiB
//! commands (printed as `atapi: N blocks fnv1a X` for the host to compare), READ(12), an
//! out-of-range read and its sense, PREVENT refusing the eject, tray open (NOT READY, a media
//! event) and close (UNIT ATTENTION, a media event). Completions by the channel interrupt.
#![no_std]
#![no_main]

use rt::ata::{self, Channel, Wait};
use rt::atapi::Failed;
use rt::{boot, check, println};

rt::entry!(main);

const CHUNK: usize = 32 << 10;

#[repr(C, align(4096))]
struct Buf([u8; CHUNK]);
static mut BUF: Buf = Buf([0; CHUNK]);

fn buf() -> &'static mut [u8; CHUNK] {
    unsafe { &mut (*core::ptr::addr_of_mut!(BUF)).0 }
}

fn cdb(bytes: &[u8]) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[..bytes.len()].copy_from_slice(bytes);
    c
}

struct Cd {
    ch: Channel,
    unit: u8,
}

impl Cd {
    fn run(&self, c: &[u8], out: &mut [u8]) -> Result<usize, Failed> {
        self.ch.packet(self.unit, &cdb(c), out, 0xfffe, Wait::Irq)
    }
    /// (key, asc, ascq) by REQUEST SENSE.
    fn sense(&self) -> (u8, u8, u8) {
        let mut s = [0u8; 18];
        let r = self.run(&[0x03, 0, 0, 0, 18], &mut s);
        check!(r == Ok(18), "REQUEST SENSE: {:?}", r);
        (s[2] & 0xf, s[12], s[13])
    }
    /// A command expected to fail with sense key `key` and ASC `asc`.
    fn expect_check(&self, c: &[u8], key: u8, asc: u8, what: &str) {
        let r = self.run(c, &mut [0u8; 64]);
        check!(
            r.map_err(|f| f.sense_key()) == Err(key),
            "{}: {:?}, want sense key {}",
            what,
            r,
            key
        );
        let s = self.sense();
        check!(
            s.0 == key && s.1 == asc,
            "{}: sense {:?}, want {}/{:#x}",
            what,
            s,
            key,
            asc
        );
    }
    /// GESN media class: (event code, media status).
    fn event(&self) -> (u8, u8) {
        let mut e = [0u8; 8];
        let r = self.run(&[0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8], &mut e);
        check!(r == Ok(8) && e[2] == 4, "GESN: {:?} {:?}", r, e);
        (e[4], e[5])
    }
    fn capacity(&self) -> u32 {
        let mut c = [0u8; 8];
        check!(self.run(&[0x25], &mut c) == Ok(8), "READ CAPACITY");
        check!(
            u32::from_be_bytes([c[4], c[5], c[6], c[7]]) == 2048,
            "block size {:?}",
            c
        );
        u32::from_be_bytes([c[0], c[1], c[2], c[3]]) + 1
    }
}

fn fnv(h: u32, data: &[u8]) -> u32 {
    data.iter()
        .fold(h, |h, &b| (h ^ b as u32).wrapping_mul(0x0100_0193))
}

fn main() {
    let unit = boot::arg_u64("unit", 0) as usize;
    let ch = if unit < 2 {
        ata::PRIMARY
    } else {
        ata::SECONDARY
    };
    let cd = Cd {
        ch,
        unit: (unit % 2) as u8,
    };
    ch.soft_reset();
    ch.select(cd.unit);
    let sig = [ch.reg(2), ch.reg(3), ch.reg(4), ch.reg(5)];
    check!(sig == [1, 1, 0x14, 0xeb], "ATAPI signature {:?}", sig);
    let mut id = [0u8; 512];
    check!(
        ch.identify(cd.unit, &mut id, Wait::Poll) == Err(ata::ABRT),
        "IDENTIFY must abort"
    );
    check!(
        ch.identify_packet(cd.unit, &mut id, Wait::Poll).is_ok(),
        "IDENTIFY PACKET"
    );
    let w0 = u16::from_le_bytes([id[0], id[1]]);
    check!(
        w0 >> 14 == 2 && (w0 >> 8) & 0x1f == 5 && w0 & 3 == 0,
        "word 0 {:#x}: ATAPI CD-ROM, 12-byte packets",
        w0
    );
    ata::ioapic_route(ch.irq, rt::start::IRQ_BASE);
    ch.set_irq(true);

    check!(cd.run(&[0x00], &mut []) == Ok(0), "TEST UNIT READY");
    let b = buf();
    check!(cd.run(&[0x12, 0, 0, 0, 36], b) == Ok(36), "INQUIRY");
    check!(
        b[0] == 5 && b[1] & 0x80 != 0 && &b[8..14] == b"IGNITE",
        "INQUIRY data"
    );
    let blocks = cd.capacity();
    let n = cd.run(&[0x43, 0, 0, 0, 0, 0, 0, 0, 100], b);
    check!(n == Ok(20) && b[14] == 0xaa, "READ TOC {:?}", n);
    check!(
        u32::from_be_bytes([b[16], b[17], b[18], b[19]]) == blocks,
        "lead-out at the capacity"
    );
    check!(cd.event() == (0, 2), "GESN: no event, medium present");
    let n = cd.run(&[0x5a, 0, 0x2a, 0, 0, 0, 0, 0, 64], b);
    check!(
        n == Ok(28) && b[8] == 0x2a,
        "MODE SENSE(10) capabilities {:?}",
        n
    );
    let n = cd.run(&[0x46, 0, 0, 0, 0, 0, 0, 1, 0], b);
    check!(
        n.is_ok() && u16::from_be_bytes([b[6], b[7]]) != 0,
        "GET CONFIGURATION: a current profile"
    );

    // The whole medium, 16 blocks per command.
    let mut h = 0x811c_9dc5u32;
    let mut lba = 0u32;
    while lba < blocks {
        let k = (blocks - lba).min(16);
        let l = lba.to_be_bytes();
        let r = cd.run(&[0x28, 0, l[0], l[1], l[2], l[3], 0, 0, k as u8], b);
        check!(r == Ok(k as usize * 2048), "READ(10) at {}: {:?}", lba, r);
        h = fnv(h, &b[..k as usize * 2048]);
        lba += k;
    }
    println!("atapi: {} blocks fnv1a {:08x}", blocks, h);
    let l = (blocks - 1).to_be_bytes();
    check!(
        cd.run(&[0xa8, 0, l[0], l[1], l[2], l[3], 0, 0, 0, 1], b) == Ok(2048),
        "READ(12)"
    );
    let l = blocks.to_be_bytes();
    cd.expect_check(
        &[0x28, 0, l[0], l[1], l[2], l[3], 0, 0, 1],
        5,
        0x21,
        "read past the end",
    );

    // Tray: locked, then open (NOT READY, removal event), then closed (UNIT ATTENTION, new media).
    check!(cd.run(&[0x1e, 0, 0, 0, 1], &mut []) == Ok(0), "PREVENT");
    cd.expect_check(&[0x1b, 0, 0, 0, 2], 5, 0x53, "eject while locked");
    check!(cd.run(&[0x1e, 0, 0, 0, 0], &mut []) == Ok(0), "ALLOW");
    check!(
        cd.run(&[0x1b, 0, 0, 0, 2], &mut []) == Ok(0),
        "open the tray"
    );
    cd.expect_check(&[0x00], 2, 0x3a, "tray open");
    check!(
        cd.event() == (3, 3),
        "GESN: removal, tray open with the medium in it"
    );
    check!(
        cd.run(&[0x1b, 0, 0, 0, 3], &mut []) == Ok(0),
        "close the tray"
    );
    check!(cd.event() == (2, 2), "GESN: new media");
    cd.expect_check(&[0x00], 6, 0x28, "medium changed");
    check!(cd.run(&[0x00], &mut []) == Ok(0), "ready again");

    if boot::arg("swap") == Some("1") {
        // The host changes the medium while we run; we notice it as Linux's sr does, by
        // polling GESN.
        println!("swap: eject now");
        while cd.event().0 != 3 {}
        cd.expect_check(&[0x25], 2, 0x3a, "no medium");
        println!("swap: insert now");
        while cd.event().0 != 2 {}
        cd.expect_check(&[0x00], 6, 0x28, "new medium");
        let blocks = cd.capacity();
        check!(
            cd.run(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1], b) == Ok(2048),
            "read the new medium"
        );
        println!(
            "swap: {} blocks, first block fnv1a {:08x}",
            blocks,
            fnv(0x811c_9dc5, &b[..2048])
        );
    }
    println!("atapi: {} interrupts", rt::irq_count(0));
}
