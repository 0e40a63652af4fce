//! AVIO removable media: the virtio-scsi controller (1af4:1048) with a CD-ROM at LUN 0, a
//! tape at LUN 1 and CD-ROM drives without media on the other LUNs. Args: `luns=N`.
//! Checks the config space, a LOGICAL UNIT RESET on the control queue, REPORT LUNS (N) and
//! INQUIRY of every LUN (and of LUN N: no such unit); the CD-ROM read whole by READ(10) of
//! 64 KiB with 4 commands in flight (printed as `vscsi: cd N blocks fnv1a X`); on the tape,
//! as Linux's st and mt use it: READ BLOCK LIMITS, MODE SENSE/SELECT, variable records
//! (printed `vscsi: wrote ...`), WRITE FILEMARKS, fixed 512-byte blocks, READ POSITION,
//! REWIND, reads with ILI, filemark and end-of-data sense, SPACE over records and filemarks
//! both ways. The host checks the tape file. `tape=hold`: then keeps the tape until the
//! host takes it away; `tape=read`: waits for a tape (taken from another guest) and only
//! reads it.
#![no_std]
#![no_main]

use rt::pci;
use rt::vscsi::{Done, Scsi, CHECK_CONDITION, GOOD};
use rt::{boot, check, println};

rt::entry!(main);

const BUF: usize = 256 << 10;

#[repr(C, align(4096))]
struct Bufs([u8; BUF], [u8; BUF]);
static mut BUFS: Bufs = Bufs([0; BUF], [0; BUF]);

fn fnv(h: u32, data: &[u8]) -> u32 {
    data.iter()
        .fold(h, |h, &b| (h ^ b as u32).wrapping_mul(0x0100_0193))
}

fn record(len: usize, seed: u8, out: &mut [u8]) {
    for (i, b) in out[..len].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(13) ^ seed;
    }
}

fn good(d: &Done, what: &str) {
    check!(
        d.resp.response == 0 && d.resp.status == GOOD,
        "{}: response {} status {} sense {:?}",
        what,
        d.resp.response,
        d.resp.status,
        d.sense()
    );
}

fn sense(d: &Done, key: u8, what: &str) {
    check!(
        d.resp.status == CHECK_CONDITION && d.sense().0 == key,
        "{}: status {} sense {:?}, want key {}",
        what,
        d.resp.status,
        d.sense(),
        key
    );
}

fn main() {
    let luns = boot::arg_u64("luns", 2) as u16;
    let mut found = [(pci::Bdf { dev: 0, func: 0 }, 0u16, 0u16); 8];
    let n = pci::scan_functions(&mut found);
    let Some(&(bdf, _, _)) = found[..n.min(8)]
        .iter()
        .find(|f| f.1 == 0x1af4 && f.2 == 0x1048)
    else {
        check!(false, "no virtio-scsi function (1af4:1048)");
        return;
    };
    let mut s = Scsi::open(bdf, None);
    check!(s.config_u32(0) == 1, "one request queue");
    check!(
        s.config_u32(24) == 32 && s.config_u32(20) == 96,
        "cdb/sense sizes"
    );
    check!(s.config_u32(32) == 127, "max_lun {}", s.config_u32(32));
    check!(s.lun_reset(0) == 0, "LOGICAL UNIT RESET");
    let bufs = unsafe { &mut *core::ptr::addr_of_mut!(BUFS) };
    let (a, b) = (&mut bufs.0, &mut bufs.1);

    let d = s.cmd(
        0,
        &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0],
        &[],
        &mut a[..4096],
    );
    good(&d, "REPORT LUNS");
    let listed = u32::from_be_bytes([a[0], a[1], a[2], a[3]]) / 8;
    check!(
        listed == luns as u32,
        "REPORT LUNS: {} LUNs, want {}",
        listed,
        luns
    );
    for lun in 0..=luns {
        let d = s.cmd(lun, &[0x12, 0, 0, 0, 36, 0], &[], &mut a[..36]);
        good(&d, "INQUIRY");
        let want = match lun {
            1 => 0x01,
            l if l == luns => 0x7f,
            _ => 0x05,
        };
        check!(
            a[0] == want,
            "LUN {}: peripheral {:#x}, want {:#x}",
            lun,
            a[0],
            want
        );
    }
    if luns > 2 {
        sense(
            &s.cmd(2, &[0x00, 0, 0, 0, 0, 0], &[], &mut []),
            2,
            "an empty drive is not ready",
        );
    }

    // The CD-ROM, 32 blocks per command, 4 in flight.
    let d = s.cmd(0, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], &mut a[..8]);
    good(&d, "READ CAPACITY");
    let blocks = u32::from_be_bytes([a[0], a[1], a[2], a[3]]) + 1;
    let mut h = 0x811c_9dc5u32;
    let (mut next, mut done) = (0u32, 0u32);
    let mut order = [0u32; rt::vscsi::SLOTS];
    while done < blocks {
        while next < blocks && (next - done) < 4 * 32 {
            let k = (blocks - next).min(32);
            let l = next.to_be_bytes();
            let slot_buf = b.as_ptr() as u64 + ((next / 32) % 4) as u64 * (64 << 10);
            let slot = s.submit(
                0,
                &[0x28, 0, l[0], l[1], l[2], l[3], 0, 0, k as u8, 0],
                &[],
                &[(slot_buf, k * 2048)],
            );
            order[slot] = next;
            next += k;
        }
        s.req.notify();
        let d = s.next(false);
        good(&d, "READ(10)");
        // Completions come in order here (one queue, run to completion).
        check!(
            order[d.slot] == done,
            "completion for block {} before {}",
            order[d.slot],
            done
        );
        let k = (blocks - done).min(32);
        check!(
            d.data_in() == k as usize * 2048,
            "READ(10) moved {}",
            d.data_in()
        );
        let at = ((done / 32) % 4) as usize * (64 << 10);
        h = fnv(h, &b[at..at + k as usize * 2048]);
        done += k;
    }
    println!("vscsi: cd {} blocks fnv1a {:08x}", blocks, h);
    let l = blocks.to_be_bytes();
    let d = s.cmd(
        0,
        &[0x28, 0, l[0], l[1], l[2], l[3], 0, 0, 1, 0],
        &[],
        &mut a[..2048],
    );
    sense(&d, 5, "read past the end");
    check!(d.sense().1 == 0x21, "LBA out of range");

    // The tape (LUN 1). `tape=read`: wait until the host puts one in (UNIT ATTENTION), and
    // only read it; otherwise it is blank and written first. `tape=hold`: afterwards, keep
    // it until the host takes it away (NOT READY).
    const T: u16 = 1;
    let mode = boot::arg("tape").unwrap_or("write");
    let ms = [0u8, 0, 0x10, 8, 0, 0, 0, 0, 0, 0, 2, 0];
    if mode == "read" {
        println!("vscsi: waiting for a tape");
        while s.cmd(T, &[0x00, 0, 0, 0, 0, 0], &[], &mut []).sense().0 != 6 {}
    } else {
        write_tape(&mut s, a, &ms);
    }
    read_tape(&mut s, a, b, &ms);
    if mode == "hold" {
        println!("vscsi: holding the tape");
        while s.cmd(T, &[0x00, 0, 0, 0, 0, 0], &[], &mut []).sense() != (2, 0x3a, 0) {}
        println!("vscsi: the tape was taken");
    }
}

/// Writes 3 variable records, a filemark, 8 fixed 512-byte blocks and a filemark on a blank
/// tape.
fn write_tape(s: &mut Scsi, a: &mut [u8], ms: &[u8; 12]) {
    const T: u16 = 1;
    good(
        &s.cmd(T, &[0x00, 0, 0, 0, 0, 0], &[], &mut []),
        "tape TEST UNIT READY",
    );
    good(
        &s.cmd(T, &[0x05, 0, 0, 0, 0, 0], &[], &mut a[..6]),
        "READ BLOCK LIMITS",
    );
    check!(
        a[1..4] == [0xff, 0xff, 0xff] && a[5] == 1,
        "block limits {:?}",
        &a[..6]
    );
    good(
        &s.cmd(T, &[0x1a, 0, 0, 0, 12, 0], &[], &mut a[..12]),
        "MODE SENSE(6)",
    );
    check!(
        a[3] == 8 && a[9..12] == [0, 0, 0],
        "variable block mode at load: {:?}",
        &a[..12]
    );
    for (i, &len) in [1000usize, 3001, 65536].iter().enumerate() {
        record(len, i as u8, a);
        let l = (len as u32).to_be_bytes();
        good(
            &s.cmd(T, &[0x0a, 0, l[1], l[2], l[3], 0], &a[..len], &mut []),
            "WRITE(6) variable",
        );
    }
    good(
        &s.cmd(T, &[0x10, 0, 0, 0, 1, 0], &[], &mut []),
        "WRITE FILEMARKS",
    );
    // Fixed 512-byte blocks: 8 at once.
    good(
        &s.cmd(T, &[0x15, 0x10, 0, 0, 12, 0], ms, &mut []),
        "MODE SELECT(6) 512",
    );
    record(4096, 9, a);
    good(
        &s.cmd(T, &[0x0a, 1, 0, 0, 8, 0], &a[..4096], &mut []),
        "WRITE(6) fixed",
    );
    good(
        &s.cmd(T, &[0x10, 0, 0, 0, 1, 0], &[], &mut []),
        "WRITE FILEMARKS",
    );
    good(
        &s.cmd(T, &[0x34, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], &mut a[..20]),
        "READ POSITION",
    );
    let pos = u32::from_be_bytes([a[4], a[5], a[6], a[7]]);
    check!(
        pos == 13 && a[0] & 0x80 == 0,
        "position {} after 3 + 1 + 8 + 1 objects",
        pos
    );
    println!("vscsi: wrote 3 records, a filemark, 8 blocks of 512, a filemark");
}

/// Reads back what `write_tape` wrote, from the start, and spaces around in it.
fn read_tape(s: &mut Scsi, a: &mut [u8], b: &mut [u8], ms: &[u8; 12]) {
    const T: u16 = 1;
    // Variable mode.
    let ms0 = [0u8, 0, 0x10, 8, 0, 0, 0, 0, 0, 0, 0, 0];
    good(
        &s.cmd(T, &[0x15, 0x10, 0, 0, 12, 0], &ms0, &mut []),
        "MODE SELECT(6) variable",
    );
    good(&s.cmd(T, &[0x01, 0, 0, 0, 0, 0], &[], &mut []), "REWIND");
    for (i, &len) in [1000usize, 3001, 65536].iter().enumerate() {
        let d = s.cmd(T, &[0x08, 0, 0x01, 0, 0, 0], &[], &mut b[..65536]);
        record(len, i as u8, a);
        check!(
            d.data_in() == len && b[..len] == a[..len],
            "record {}: {} bytes back",
            i,
            d.data_in()
        );
        if len < 65536 {
            sense(&d, 0, "short record");
            check!(
                d.resp.sense[2] & 0x20 != 0 && d.sense_info() == (65536 - len) as i32,
                "ILI, residue"
            );
        } else {
            good(&d, "exact record");
        }
    }
    let d = s.cmd(T, &[0x08, 2, 0x01, 0, 0, 0], &[], &mut b[..65536]);
    check!(
        d.data_in() == 0 && d.resp.sense[2] & 0x80 != 0,
        "the filemark"
    );
    // Fixed mode: ask for 10 blocks, get 8 and the filemark.
    good(
        &s.cmd(T, &[0x15, 0x10, 0, 0, 12, 0], ms, &mut []),
        "MODE SELECT(6) 512",
    );
    let d = s.cmd(T, &[0x08, 1, 0, 0, 10, 0], &[], &mut b[..5120]);
    record(4096, 9, a);
    check!(
        d.data_in() == 4096 && b[..4096] == a[..4096],
        "8 fixed blocks back"
    );
    check!(
        d.resp.sense[2] & 0x80 != 0 && d.sense_info() == 2,
        "filemark with 2 blocks left"
    );
    sense(
        &s.cmd(T, &[0x08, 1, 0, 0, 1, 0], &[], &mut b[..512]),
        8,
        "end of data",
    );
    // SPACE: back two filemarks (before the first one), forward one block is then the
    // filemark; back 3 records from there lands at the start of the first.
    good(
        &s.cmd(T, &[0x11, 1, 0xff, 0xff, 0xfe, 0], &[], &mut []),
        "SPACE -2 filemarks",
    );
    sense(
        &s.cmd(T, &[0x11, 0, 0, 0, 1, 0], &[], &mut []),
        0,
        "SPACE 1 block meets the filemark",
    );
    good(
        &s.cmd(T, &[0x11, 1, 0xff, 0xff, 0xff, 0], &[], &mut []),
        "SPACE -1 filemark",
    );
    good(
        &s.cmd(T, &[0x11, 0, 0xff, 0xff, 0xfd, 0], &[], &mut []),
        "SPACE -3 blocks",
    );
    good(
        &s.cmd(T, &[0x34, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], &mut a[..20]),
        "READ POSITION",
    );
    check!(a[0] & 0x80 != 0, "at the beginning of the tape");
    good(
        &s.cmd(T, &[0x11, 3, 0, 0, 0, 0], &[], &mut []),
        "SPACE to end of data",
    );
    good(
        &s.cmd(T, &[0x34, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], &mut a[..20]),
        "READ POSITION",
    );
    check!(
        u32::from_be_bytes([a[4], a[5], a[6], a[7]]) == 13,
        "at the end of data"
    );
    good(&s.cmd(T, &[0x01, 0, 0, 0, 0, 0], &[], &mut []), "REWIND");
    println!("vscsi: read the tape back");
}
