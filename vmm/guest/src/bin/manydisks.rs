//! Many AVIO disks on multifunction PCI devices: enumerates every function of bus 0, opens
//! each virtio-blk device in turn (one queue memory, reset after use), reads sector 0 and
//! checks its tag `MANY<nnn>`; every index below `disks=N` must be seen exactly once.
#![no_std]
#![no_main]

use rt::blk::{Blk, S_OK, T_IN};
use rt::pci::{self, Bdf};
use rt::{boot, check, println};

rt::entry!(main);

#[repr(C, align(4096))]
struct Buf([u8; 512]);
static mut BUF: Buf = Buf([0; 512]);

fn main() {
    let want = boot::arg_u64("disks", 128) as usize;
    let mut found = [(Bdf { dev: 0, func: 0 }, 0u16, 0u16); 256];
    let n = pci::scan_functions(&mut found);
    let mut seen = [false; 256];
    let mut disks = 0;
    let mut multi = 0;
    for &(bdf, v, d) in &found[..n.min(256)] {
        if (v, d) != (0x1af4, 0x1042) {
            continue;
        }
        if bdf.func != 0 {
            multi += 1;
        }
        let mut blk = Blk::open(0, bdf, 0, None);
        let buf = unsafe { &mut *core::ptr::addr_of_mut!(BUF) };
        buf.0.fill(0);
        let st = blk.run(T_IN, 0, &[(buf.0.as_ptr() as u64, 512)], true);
        check!(
            st == S_OK,
            "disk at {}.{}: read status {}",
            bdf.dev,
            bdf.func,
            st
        );
        check!(
            &buf.0[..4] == b"MANY",
            "disk at {}.{}: no tag",
            bdf.dev,
            bdf.func
        );
        let idx = (buf.0[4] - b'0') as usize * 100
            + (buf.0[5] - b'0') as usize * 10
            + (buf.0[6] - b'0') as usize;
        check!(
            idx < want && !seen[idx],
            "disk at {}.{}: tag {} twice or out of range",
            bdf.dev,
            bdf.func,
            idx
        );
        seen[idx] = true;
        blk.dev.reset();
        disks += 1;
    }
    check!(
        disks == want,
        "{} virtio-blk functions, want {}",
        disks,
        want
    );
    println!("read {} disks ({} on functions other than 0)", disks, multi);
}
